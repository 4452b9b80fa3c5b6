//! The client's socket: TCP or unix, framed reads with the size limit, buffered writes, and
//! proxy-made errors.

use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use shardgate_wire::backend::{self, Severity, TransactionStatus};
use shardgate_wire::stream::Stream;
use shardgate_wire::{Frame, FrameError, FrameReader};
use tokio::io::AsyncWriteExt;

use crate::SessionError;

/// Framed, buffered I/O with one client. The socket lives in the reader; writes go through
/// it too (the session never reads and writes the client at the same time).
pub struct ClientIo {
    pub reader: FrameReader<Stream>,
    /// Bytes for the client, written out at the next flush.
    pub out: BytesMut,
    /// `timeouts.client_write_timeout`: a flush that takes longer drops the client (zero:
    /// no limit).
    pub write_timeout: Duration,
    /// While a cross-shard batch runs: the rows and first error of what is sent to the client
    /// (`query_stats`), read at each flush.
    /// The tally and where its part of `out` starts (bytes before were queued earlier).
    tally: Option<(crate::query_stats::tally::Tally, usize)>,
    /// While a cross-shard result is held for reading in parts (`held`): what the read writes
    /// stays here, unsent.
    capture: Option<crate::held::Capture>,
}

/// Flush the client buffer early once it holds this much, so large results stream.
const FLUSH_THRESHOLD: usize = 64 * 1024;

impl ClientIo {
    pub fn new(stream: Stream, max_message_size: usize) -> Self {
        if let Stream::Tcp(s) = &stream {
            let _ = s.set_nodelay(true);
        }
        ClientIo {
            reader: FrameReader::new(stream, max_message_size),
            // Small to start: an idle client should cost little (thousands may sit idle);
            // the buffer grows to what the client's results need and keeps that capacity.
            out: BytesMut::with_capacity(512),
            write_timeout: Duration::ZERO,
            tally: None,
            capture: None,
        }
    }

    /// Reads the next client message; `Ok(None)` when the client closed the connection.
    /// An oversized or malformed header is answered with 08P01 here.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, SessionError> {
        match self.reader.read_frame().await {
            Ok(f) => {
                if let Some(frame) = &f {
                    crate::stats::bytes_received(frame.len());
                }
                Ok(f)
            }
            Err(e) => Err(self.frame_error(e).await),
        }
    }

    /// The next client message if it is already buffered whole: no I/O and no future (a
    /// driver's pipelined batch arrives in one read, and its messages are taken from here).
    pub fn buffered_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let frame = self.reader.try_frame()?;
        if let Some(frame) = &frame {
            crate::stats::bytes_received(frame.len());
        }
        Ok(frame)
    }

    pub async fn frame_error(&mut self, e: FrameError) -> SessionError {
        match e {
            FrameError::TooLarge { claimed, limit } => {
                let msg = format!("message of {claimed} bytes exceeds the limit of {limit} bytes");
                self.fatal(
                    shardgate_wire::sqlstate::PROTOCOL_VIOLATION,
                    &msg,
                    Some("send smaller messages or raise listen.max_message_size"),
                )
                .await;
                SessionError::Protocol(msg)
            }
            FrameError::BadLength(n) => {
                let msg = format!("invalid message length {n}");
                self.fatal(shardgate_wire::sqlstate::PROTOCOL_VIOLATION, &msg, None)
                    .await;
                SessionError::Protocol(msg)
            }
            FrameError::UnexpectedEof => SessionError::ClientGone,
            FrameError::Io(_) => SessionError::ClientGone,
        }
    }

    /// Writes bytes now (used during startup, where every step waits for an answer).
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.reader
            .get_mut()
            .write_all(bytes)
            .await
            .map_err(|_| SessionError::ClientGone)
    }

    /// Writes out everything buffered in `out` (nothing while a result is being captured).
    pub async fn flush(&mut self) -> Result<(), SessionError> {
        if self.capture.is_some() {
            return Ok(());
        }
        if let Some((tally, from)) = &mut self.tally {
            tally.scan(self.out.get(*from..).unwrap_or_default());
            *from = 0;
        }
        if !self.out.is_empty() {
            crate::stats::bytes_sent(self.out.len());
            let write = self.reader.get_mut().write_all(&self.out);
            let mut write = std::pin::pin!(write);
            // A client that reads keeps up: the first attempt completes and no timer is armed.
            let first =
                std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx))).await;
            let res = if let std::task::Poll::Ready(r) = first {
                r
            } else if self.write_timeout.is_zero() {
                write.await
            } else {
                match tokio::time::timeout(self.write_timeout, write).await {
                    Ok(r) => r,
                    Err(_) => {
                        // The client stopped reading: it cannot be told (its socket is full).
                        self.out.clear();
                        crate::stats::count_error(shardgate_wire::sqlstate::CONNECTION_FAILURE);
                        crate::timeouts::count("client_write");
                        tracing::info!(
                            timeout = ?self.write_timeout,
                            "client_write_timeout: the client stopped reading; disconnecting it"
                        );
                        return Err(SessionError::Timeout("client_write"));
                    }
                }
            };
            self.out.clear();
            res.map_err(|_| SessionError::ClientGone)?;
        }
        Ok(())
    }

    /// From now on, reads what is sent to the client for rows and errors (until
    /// [`ClientIo::take_tally`]).
    pub(crate) fn start_tally(&mut self) {
        self.tally = Some((Default::default(), self.out.len()));
    }

    /// What was sent since [`ClientIo::start_tally`], including what is still buffered.
    pub(crate) fn take_tally(&mut self) -> crate::query_stats::tally::Tally {
        let Some((mut tally, from)) = self.tally.take() else {
            return Default::default();
        };
        tally.scan(self.out.get(from..).unwrap_or_default());
        tally
    }

    /// From now on, what is written for the client is captured, not sent (see `held`), up to
    /// the limits.
    pub(crate) fn start_capture(&mut self, max_rows: u64, max_bytes: u64) {
        self.capture = Some(crate::held::Capture::new(
            self.out.len(),
            max_rows,
            max_bytes,
        ));
    }

    /// Ends a capture: what was written since [`ClientIo::start_capture`], taken out of the
    /// buffer. `None` when no capture was running.
    pub(crate) fn finish_capture(&mut self) -> Option<crate::held::Captured> {
        let capture = self.capture.take()?;
        let captured = self.out.split_off(capture.from().min(self.out.len()));
        if let Some((_, from)) = &mut self.tally {
            *from = (*from).min(self.out.len());
        }
        Some(capture.finish(captured))
    }

    /// A row was written for the client: written out when the buffer is large, or counted
    /// by the capture.
    pub(crate) async fn row_written(&mut self) -> Result<(), SessionError> {
        if let Some(capture) = &mut self.capture {
            capture.row_written(&mut self.out);
            return Ok(());
        }
        self.flush_if_large().await
    }

    /// Flushes only when the buffer is large, so big results stream without piling up.
    pub async fn flush_if_large(&mut self) -> Result<(), SessionError> {
        if self.out.len() >= FLUSH_THRESHOLD {
            self.flush().await?;
        }
        Ok(())
    }

    /// Queues a proxy-made ErrorResponse (severity ERROR).
    pub fn push_error(&mut self, code: &str, message: &str, hint: Option<&str>) {
        crate::stats::count_error(code);
        backend::write_error(&mut self.out, Severity::Error, code, message, hint);
    }

    pub fn push_ready(&mut self, status: TransactionStatus) {
        backend::write_ready_for_query(&mut self.out, status);
    }

    /// Sends a FATAL error and flushes; the caller then closes the connection. Failures to
    /// write are ignored: the client is being dropped anyway.
    pub async fn fatal(&mut self, code: &str, message: &str, hint: Option<&str>) {
        crate::stats::count_error(code);
        backend::write_error(&mut self.out, Severity::Fatal, code, message, hint);
        let _ = self.flush().await;
    }

    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.reader.get_mut().shutdown().await;
    }
}
