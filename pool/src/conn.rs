//! One authenticated raw server connection: bytes are forwarded, only the few messages the
//! proxy must track (ReadyForQuery, fatal errors) are looked into.

use std::future::Future;
use std::io;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use shardgate_config::Host;
use shardgate_wire::backend::{self, TransactionStatus};
use shardgate_wire::stream::Stream;
use shardgate_wire::{frontend, Frame, FrameError, FrameReader};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};
use tracing::debug;

use crate::auth;
use crate::error::ServerError;
use crate::prepared::PreparedSet;

/// Largest message accepted from a server. Servers are trusted, but a corrupt length must not
/// make us allocate without bound.
pub const MAX_SERVER_FRAME: usize = 1 << 30;

/// Prepared-statement cap of a connection opened with [`ServerConn::connect`] (the config
/// default of `pool.prepared_statements_per_connection`).
pub const DEFAULT_PREPARED_CAPACITY: usize = 500;

/// Where and how to open one server connection.
#[derive(Clone, PartialEq)]
pub struct ConnectTarget {
    /// Host (IP or hostname, or a unix socket directory starting with '/') and port.
    pub host: Host,
    /// Server role.
    pub user: String,
    /// Plaintext password, for SCRAM-SHA-256, md5 or cleartext.
    pub password: Option<String>,
    pub database: String,
    /// Sent in the startup packet ("shardgate" by default).
    pub application_name: String,
    /// Bounds TCP connect and authentication together; zero means no limit.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for ConnectTarget {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectTarget")
            .field("host", &self.host)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("database", &self.database)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Opens a stream to `host`: a unix socket `{dir}/.s.PGSQL.{port}` when the host starts with
/// '/', else TCP with TCP_NODELAY.
pub(crate) async fn open_stream(host: &Host) -> io::Result<Stream> {
    if host.host.starts_with('/') {
        let path = format!("{}/.s.PGSQL.{}", host.host.trim_end_matches('/'), host.port);
        Ok(Stream::Unix(UnixStream::connect(path).await?))
    } else {
        // Accept a bracketed IPv6 literal as well as a bare one.
        let name = host
            .host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&host.host);
        let tcp = TcpStream::connect((name, host.port)).await?;
        tcp.set_nodelay(true)?;
        Ok(Stream::Tcp(tcp))
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One authenticated raw server connection. Bytes are forwarded, not decoded.
pub struct ServerConn {
    id: u64,
    /// Shared: a session hands it to its cancel slot at every checkout, without a copy.
    host: Arc<Host>,
    reader: FrameReader<Stream>,
    backend_key: (i32, i32),
    parameters: Vec<(String, String)>,
    status: TransactionStatus,
    broken: bool,
    created: Instant,
    prepared: PreparedSet,
    session_fingerprint: u64,
}

impl ServerConn {
    /// Opens and authenticates a connection, with [`DEFAULT_PREPARED_CAPACITY`].
    pub async fn connect(target: &ConnectTarget) -> Result<ServerConn, ServerError> {
        Self::connect_with(target, DEFAULT_PREPARED_CAPACITY).await
    }

    /// Opens and authenticates a connection whose prepared-statement set holds at most
    /// `prepared_capacity` names. TCP connect and authentication together are bounded by
    /// `target.connect_timeout`.
    pub async fn connect_with(
        target: &ConnectTarget,
        prepared_capacity: usize,
    ) -> Result<ServerConn, ServerError> {
        let attempt = async {
            let connect_err = |source| ServerError::Connect {
                host: target.host.to_string(),
                source,
            };
            let mut stream = open_stream(&target.host).await.map_err(connect_err)?;
            // SSLRequest and the TLS handshake, as the host's sslmode says.
            crate::tls::negotiate(&mut stream, &target.host)
                .await
                .map_err(connect_err)?;
            let mut reader = FrameReader::new(stream, MAX_SERVER_FRAME);
            let startup = auth::startup(&mut reader, target).await?;
            Ok::<_, ServerError>((reader, startup))
        };
        let (reader, startup) = if target.connect_timeout.is_zero() {
            attempt.await?
        } else {
            tokio::time::timeout(target.connect_timeout, attempt)
                .await
                .map_err(|_| ServerError::ConnectTimeout {
                    host: target.host.to_string(),
                })??
        };
        let conn = ServerConn {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            host: Arc::new(target.host.clone()),
            reader,
            backend_key: startup.backend_key,
            parameters: startup.parameters,
            status: startup.status,
            broken: false,
            created: Instant::now(),
            prepared: PreparedSet::new(prepared_capacity),
            session_fingerprint: 0,
        };
        debug!(
            conn = conn.id,
            host = %conn.host,
            pid = conn.backend_key.0,
            user = %target.user,
            database = %target.database,
            "server connection opened"
        );
        Ok(conn)
    }

    /// Process-unique id for logs.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// (pid, secret) from BackendKeyData; (0, 0) if the server sent none.
    pub fn backend_key(&self) -> (i32, i32) {
        self.backend_key
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The host, to keep (e.g. where the client's cancel requests go).
    pub fn shared_host(&self) -> &Arc<Host> {
        &self.host
    }

    /// ParameterStatus values seen at startup, as (name, value), in the order received.
    pub fn parameters(&self) -> &[(String, String)] {
        &self.parameters
    }

    /// Writes all bytes; marks the connection broken on error.
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), ServerError> {
        match self.reader.get_mut().write_all(bytes).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.broken = true;
                Err(ServerError::Io(e))
            }
        }
    }

    /// Next whole message from the server. Cancel-safe (a frame leaves the buffer only when it
    /// is complete). EOF or an I/O error marks the connection broken, and so does a FATAL or
    /// PANIC ErrorResponse (which is still returned, to be forwarded). A ReadyForQuery updates
    /// [`ServerConn::status`].
    pub async fn read_frame(&mut self) -> Result<Frame, ServerError> {
        let result = self.reader.read_frame().await;
        self.accept(result)
    }

    /// The next message if it is already buffered whole (no I/O), tracked as by
    /// [`ServerConn::read_frame`]: a relay handles a reply's messages in one go.
    pub fn try_frame(&mut self) -> Result<Option<Frame>, ServerError> {
        match self.reader.try_frame() {
            Ok(None) => Ok(None),
            other => self.accept(other).map(Some),
        }
    }

    /// Moves the whole DataRow and CopyData messages buffered now to `out` as they are (see
    /// `FrameReader::forward_run`): a result's rows go to the client without a frame each.
    /// They change nothing [`ServerConn::read_frame`] tracks. Returns their bytes.
    pub fn forward_rows(&mut self, out: &mut BytesMut) -> usize {
        self.reader.forward_run(
            |tag| tag == backend::DATA_ROW || tag == backend::COPY_DATA,
            out,
        )
    }

    /// Whether a whole message is already buffered, so reading it needs no I/O. The proxy
    /// delays flushing to the client while more replies are at hand.
    pub fn has_buffered_frame(&self) -> bool {
        self.reader.has_buffered_frame()
    }

    fn accept(&mut self, result: Result<Option<Frame>, FrameError>) -> Result<Frame, ServerError> {
        match result {
            Ok(Some(frame)) => {
                self.observe(&frame)?;
                Ok(frame)
            }
            Ok(None) | Err(FrameError::UnexpectedEof) => {
                self.broken = true;
                Err(ServerError::Closed)
            }
            Err(FrameError::Io(e)) => {
                self.broken = true;
                Err(ServerError::Io(e))
            }
            Err(e @ (FrameError::TooLarge { .. } | FrameError::BadLength(_))) => {
                self.broken = true;
                Err(ServerError::Protocol(e.to_string()))
            }
        }
    }

    /// Tracks the transaction status and fatal errors. Cheap for every other message.
    fn observe(&mut self, frame: &Frame) -> Result<(), ServerError> {
        match frame.tag() {
            backend::READY_FOR_QUERY => match backend::ready_for_query_status(frame) {
                Ok(status) => self.status = status,
                Err(e) => {
                    self.broken = true;
                    return Err(ServerError::Protocol(format!("bad ReadyForQuery: {e}")));
                }
            },
            backend::ERROR_RESPONSE => match backend::error_fields(frame) {
                Ok(fields) => {
                    if fields.severity == "FATAL" || fields.severity == "PANIC" {
                        debug!(
                            conn = self.id,
                            host = %self.host,
                            pid = self.backend_key.0,
                            code = %fields.code,
                            "server sent a fatal error"
                        );
                        self.broken = true;
                    }
                }
                Err(e) => {
                    self.broken = true;
                    return Err(ServerError::Protocol(format!("bad ErrorResponse: {e}")));
                }
            },
            _ => {}
        }
        Ok(())
    }

    /// Runs a proxy-internal simple query and swallows every response until ReadyForQuery.
    /// Returns `Err(ServerError::Query{..})` if the server answered ErrorResponse (the
    /// connection is then still usable, at ReadyForQuery). Updates the transaction status.
    pub async fn run_internal(&mut self, sql: &str) -> Result<(), ServerError> {
        let replies = self.query_frames(sql).await?;
        match replies.iter().find(|f| f.tag() == backend::ERROR_RESPONSE) {
            // `read_frame` already checked it parses.
            Some(e) => {
                let fields = backend::error_fields(e).unwrap_or_default();
                Err(ServerError::Query {
                    code: fields.code,
                    message: fields.message,
                })
            }
            None => Ok(()),
        }
    }

    /// Runs a proxy-internal query and returns the first column of its first row as text
    /// (`None` for no row or NULL).
    pub async fn query_value(&mut self, sql: &str) -> Result<Option<String>, ServerError> {
        let replies = self.query_frames(sql).await?;
        if let Some(e) = replies.iter().find(|f| f.tag() == backend::ERROR_RESPONSE) {
            let fields = backend::error_fields(e).unwrap_or_default();
            return Err(ServerError::Query {
                code: fields.code,
                message: fields.message,
            });
        }
        let Some(row) = replies.iter().find(|f| f.tag() == backend::DATA_ROW) else {
            return Ok(None);
        };
        // The first value, as text (NULL, malformed or not UTF-8: none).
        let first = shardgate_wire::row::data_row_values(row)
            .ok()
            .and_then(|values| values.into_iter().next().flatten());
        Ok(first.and_then(|v| String::from_utf8(v.to_vec()).ok()))
    }

    /// Runs a proxy-internal simple query and returns every reply up to and including
    /// ReadyForQuery (for internal queries, whose results are small). A COPY FROM STDIN is
    /// refused with CopyFail so the server reaches ReadyForQuery.
    pub async fn query_frames(&mut self, sql: &str) -> Result<Vec<Frame>, ServerError> {
        let mut out = BytesMut::with_capacity(sql.len() + 6);
        frontend::write_query(&mut out, sql);
        self.write_all(&out).await?;
        let mut replies = Vec::new();
        loop {
            let frame = self.read_frame().await?;
            match frame.tag() {
                backend::READY_FOR_QUERY => {
                    replies.push(frame);
                    return Ok(replies);
                }
                backend::COPY_IN_RESPONSE => {
                    let mut fail = BytesMut::new();
                    frontend::write_message(&mut fail, frontend::COPY_FAIL, |b| {
                        frontend::put_cstr(b, "COPY FROM STDIN is not supported here")
                    });
                    self.write_all(&fail).await?;
                }
                backend::COPY_BOTH_RESPONSE => {
                    self.broken = true;
                    return Err(ServerError::Protocol(
                        "internal query started a COPY BOTH stream".into(),
                    ));
                }
                _ => {}
            }
            replies.push(frame);
        }
    }

    /// Whether an idle connection may be handed out. Without `deep`, this costs no syscall:
    /// it trusts the connection unless something is buffered or tokio already saw its socket
    /// become readable (an idle server has nothing to say, so readiness means a FATAL, EOF or
    /// an unasked message, once the runtime has polled for events). Readiness can also be a
    /// leftover from a full read buffer; either way [`ServerConn::check_idle`] (one
    /// `recv(MSG_PEEK)`) then decides, and always does with `deep` (a long idle spell).
    pub fn idle_check(&mut self, deep: bool) -> bool {
        if self.broken {
            return false;
        }
        if !deep && self.reader.buffered().is_empty() && !self.maybe_readable() {
            return true;
        }
        self.check_idle()
    }

    /// tokio's cached read readiness of the socket, without a syscall: `try_read` into an
    /// empty buffer returns `WouldBlock` from the cached state when the socket is not known to
    /// be readable (the usual case), and reads nothing when it is. (`poll_read_ready` stored a
    /// waker under a lock at every checkout.)
    fn maybe_readable(&self) -> bool {
        let readable = |r: std::io::Result<usize>| !matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        match self.reader.get_ref() {
            Stream::Tcp(s) => readable(s.try_read(&mut [])),
            Stream::Unix(s) => readable(s.try_read(&mut [])),
            Stream::Tls(s) => {
                let (tcp, tls) = s.stream.get_ref();
                // Plaintext TLS already decrypted, or a close_notify it processed.
                if !tls.is_handshaking() && !tls.wants_read() {
                    return true;
                }
                readable(tcp.try_read(&mut []))
            }
            Stream::Closed => true,
        }
    }

    /// Checks, without waiting, that an idle connection is still sound: if the server closed
    /// it or sent anything unasked (a FATAL on termination, a notification), it is marked
    /// broken and `false` is returned. Costs one `recv(MSG_PEEK)` syscall.
    pub fn check_idle(&mut self) -> bool {
        if self.broken {
            return false;
        }
        if self.reader.buffered().is_empty() && !self.reader.get_ref().has_input_or_eof() {
            return true;
        }
        // Read what is there for the log; tokio may not know yet that it is readable, in
        // which case the tag is simply unknown. Either way the connection is not reusable.
        let mut cx = Context::from_waker(Waker::noop());
        let tag = {
            let read = self.reader.read_frame();
            let mut read = std::pin::pin!(read);
            match read.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(Some(frame))) => Some(frame.tag() as char),
                _ => None,
            }
        };
        debug!(
            conn = self.id,
            host = %self.host,
            pid = self.backend_key.0,
            ?tag,
            "idle server connection closed or sent an unexpected message"
        );
        self.broken = true;
        false
    }

    /// Transaction status from the last ReadyForQuery seen.
    pub fn status(&self) -> TransactionStatus {
        self.status
    }

    pub fn set_status(&mut self, s: TransactionStatus) {
        self.status = s;
    }

    /// Never hand this connection out again: it is closed when returned to its pool.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }

    /// Named prepared statements this connection holds (global names like `sg_12`).
    pub fn prepared(&mut self) -> &mut PreparedSet {
        &mut self.prepared
    }

    /// Which client session state (SETs) was applied; 0 = none.
    pub fn session_fingerprint(&self) -> u64 {
        self.session_fingerprint
    }

    pub fn set_session_fingerprint(&mut self, f: u64) {
        self.session_fingerprint = f;
    }
}

impl Drop for ServerConn {
    fn drop(&mut self) {
        debug!(
            conn = self.id,
            host = %self.host,
            pid = self.backend_key.0,
            broken = self.broken,
            "server connection closed"
        );
        if !self.broken {
            // Best effort: a Terminate lets the server end the session cleanly. If the socket
            // buffer is full the server sees EOF instead, which it handles the same way.
            let _ = self
                .reader
                .get_mut()
                .try_write(&[frontend::TERMINATE, 0, 0, 0, 4]);
        }
    }
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConn")
            .field("id", &self.id)
            .field("host", &self.host)
            .field("pid", &self.backend_key.0)
            .field("status", &self.status)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}
