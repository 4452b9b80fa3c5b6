//! The client's socket: TCP or unix, framed reads with the size limit, buffered writes, and
//! proxy-made errors.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use shardgate_wire::backend::{self, Severity, TransactionStatus};
use shardgate_wire::{Frame, FrameError, FrameReader};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

use crate::SessionError;

/// Read half of a client connection.
pub enum ClientRead {
    Tcp(tcp::OwnedReadHalf),
    Unix(unix::OwnedReadHalf),
}

/// Write half of a client connection.
pub enum ClientWrite {
    Tcp(tcp::OwnedWriteHalf),
    Unix(unix::OwnedWriteHalf),
}

impl AsyncRead for ClientRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientRead::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientRead::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientWrite::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientWrite::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientWrite::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientWrite::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientWrite::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientWrite::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A client socket after accept.
pub enum ClientStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Framed, buffered I/O with one client.
pub struct ClientIo {
    pub reader: FrameReader<ClientRead>,
    writer: ClientWrite,
    /// Bytes for the client, written out at the next flush.
    pub out: BytesMut,
}

/// Flush the client buffer early once it holds this much, so large results stream.
const FLUSH_THRESHOLD: usize = 64 * 1024;

impl ClientIo {
    pub fn new(stream: ClientStream, max_message_size: usize) -> Self {
        let (r, w) = match stream {
            ClientStream::Tcp(s) => {
                let _ = s.set_nodelay(true);
                let (r, w) = s.into_split();
                (ClientRead::Tcp(r), ClientWrite::Tcp(w))
            }
            ClientStream::Unix(s) => {
                let (r, w) = s.into_split();
                (ClientRead::Unix(r), ClientWrite::Unix(w))
            }
        };
        ClientIo {
            reader: FrameReader::new(r, max_message_size),
            writer: w,
            out: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// Reads the next client message; `Ok(None)` when the client closed the connection.
    /// An oversized or malformed header is answered with 08P01 here.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, SessionError> {
        match self.reader.read_frame().await {
            Ok(f) => Ok(f),
            Err(e) => Err(self.frame_error(e).await),
        }
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
        self.writer
            .write_all(bytes)
            .await
            .map_err(|_| SessionError::ClientGone)
    }

    /// Writes out everything buffered in `out`.
    pub async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.out.is_empty() {
            let res = self.writer.write_all(&self.out).await;
            self.out.clear();
            res.map_err(|_| SessionError::ClientGone)?;
        }
        Ok(())
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
        backend::write_error(&mut self.out, Severity::Error, code, message, hint);
    }

    pub fn push_ready(&mut self, status: TransactionStatus) {
        backend::write_ready_for_query(&mut self.out, status);
    }

    /// Sends a FATAL error and flushes; the caller then closes the connection. Failures to
    /// write are ignored: the client is being dropped anyway.
    pub async fn fatal(&mut self, code: &str, message: &str, hint: Option<&str>) {
        backend::write_error(&mut self.out, Severity::Fatal, code, message, hint);
        let _ = self.flush().await;
    }

    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.writer.shutdown().await;
    }
}
