//! A client or server socket: TCP, unix, or TLS over TCP; one type for both sides of the proxy.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

/// A TCP, unix-socket or TLS stream. A `match` per poll costs nothing next to the syscall.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// TLS over TCP, either side: a client that sent SSLRequest, or a server we asked. Boxed
    /// because the TLS state is a few hundred bytes the plaintext variants should not carry.
    Tls(Box<TlsConn>),
    /// What is left after a failed TLS handshake consumed the socket: every operation fails.
    Closed,
}

/// An encrypted connection, and what channel binding needs to know about it.
pub struct TlsConn {
    pub stream: TlsStream<TcpStream>,
    /// The certificate file (PEM) this side presented, when it is the TLS server: SCRAM's
    /// `tls-server-end-point` channel binding hashes it. Kept per connection, so a certificate
    /// reloaded after the handshake does not change what this client's login binds to.
    pub local_cert_pem: Option<Arc<[u8]>>,
}

fn not_connected() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl Stream {
    /// Asks the kernel (not tokio's cached readiness, which lags until the runtime next polls
    /// for events) whether the server sent anything or closed the connection. An idle server
    /// connection has nothing to say, so either means it is no longer usable (typically a
    /// FATAL from `pg_terminate_backend` or a server restart). One `recv(MSG_PEEK)` syscall.
    ///
    /// Over TLS the same peek sees the encrypted bytes, which is as good: any record (data,
    /// a close_notify or another alert) means the server spoke. Bytes TLS has already
    /// decrypted but nobody read, or a close_notify it already processed, count too. A partial
    /// record TLS has taken off the socket and is still waiting to complete is not seen (a
    /// server sends records whole, so that is a few microseconds of a record in flight).
    pub fn has_input_or_eof(&self) -> bool {
        let sock = match self {
            Stream::Tcp(s) => socket2::SockRef::from(s),
            Stream::Unix(s) => socket2::SockRef::from(s),
            Stream::Tls(s) => {
                let (tcp, tls) = s.stream.get_ref();
                // Established: wants_read is false only with plaintext pending or after a
                // close_notify.
                if !tls.is_handshaking() && !tls.wants_read() {
                    return true;
                }
                socket2::SockRef::from(tcp)
            }
            Stream::Closed => return true,
        };
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        // tokio's sockets are non-blocking: no data gives WouldBlock at once.
        match sock.peek(&mut buf) {
            Ok(_) => true,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        }
    }

    /// Whether the peer closed the connection (or it failed), asked of the kernel without
    /// consuming anything: one `recv(MSG_PEEK)`. Bytes still unread in front of the end are
    /// seen first, so a peer that sent more before closing reads as open until they are read.
    /// Over TLS this sees the TCP end only (a close_notify alone is unread data).
    pub fn peer_closed(&self) -> bool {
        let sock = match self {
            Stream::Tcp(s) => socket2::SockRef::from(s),
            Stream::Unix(s) => socket2::SockRef::from(s),
            Stream::Tls(s) => socket2::SockRef::from(s.stream.get_ref().0),
            Stream::Closed => return true,
        };
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        match sock.peek(&mut buf) {
            Ok(n) => n == 0,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ),
        }
    }

    /// Writes without waiting; for best-effort messages from `Drop`. Over TLS the bytes are
    /// encrypted and whatever the socket takes at once is sent; the rest is dropped.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(buf),
            Stream::Unix(s) => s.try_write(buf),
            Stream::Tls(s) => {
                let mut cx = Context::from_waker(Waker::noop());
                let mut s = Pin::new(&mut s.stream);
                match s.as_mut().poll_write(&mut cx, buf) {
                    Poll::Ready(Ok(n)) => {
                        let _ = s.poll_flush(&mut cx);
                        Ok(n)
                    }
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
            Stream::Closed => Err(not_connected()),
        }
    }

    /// Whether the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Whether the stream is a unix socket (where PostgreSQL never uses TLS).
    pub fn is_unix(&self) -> bool {
        matches!(self, Stream::Unix(_))
    }

    /// The TLS session, once encrypted (its certificates, protocol version).
    pub fn tls_state(&self) -> Option<&tokio_rustls::rustls::CommonState> {
        match self {
            Stream::Tls(s) => Some(s.stream.get_ref().1),
            _ => None,
        }
    }

    /// The certificate (PEM) presented as TLS server on this connection, for channel binding.
    pub fn tls_local_cert_pem(&self) -> Option<Arc<[u8]>> {
        match self {
            Stream::Tls(s) => s.local_cert_pem.clone(),
            _ => None,
        }
    }

    /// Runs the server side of a TLS handshake on a TCP stream (after answering `S` to an
    /// SSLRequest) and becomes the TLS stream; `cert_pem` is the certificate the acceptor
    /// presents (see [`TlsConn::local_cert_pem`]). On failure the socket is gone
    /// ([`Stream::Closed`]).
    pub async fn accept_tls(
        &mut self,
        acceptor: &TlsAcceptor,
        cert_pem: Option<Arc<[u8]>>,
    ) -> io::Result<()> {
        let tcp = self.take_tcp()?;
        let tls = acceptor.accept(tcp).await?;
        *self = Stream::Tls(Box::new(TlsConn {
            stream: tls.into(),
            local_cert_pem: cert_pem,
        }));
        Ok(())
    }

    /// Runs the client side of a TLS handshake on a TCP stream (after the server answered `S`
    /// to our SSLRequest) and becomes the TLS stream. On failure the socket is gone.
    pub async fn connect_tls(
        &mut self,
        connector: &TlsConnector,
        name: ServerName<'static>,
    ) -> io::Result<()> {
        let tcp = self.take_tcp()?;
        let tls = connector.connect(name, tcp).await?;
        *self = Stream::Tls(Box::new(TlsConn {
            stream: tls.into(),
            local_cert_pem: None,
        }));
        Ok(())
    }

    /// Takes the TCP socket out, leaving [`Stream::Closed`]; anything else stays as it was.
    fn take_tcp(&mut self) -> io::Result<TcpStream> {
        match std::mem::replace(self, Stream::Closed) {
            Stream::Tcp(tcp) => Ok(tcp),
            other => {
                *self = other;
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "TLS is only negotiated on a plaintext TCP connection",
                ))
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut s.stream).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Err(not_connected())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut s.stream).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(not_connected())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut s.stream).poll_write_vectored(cx, bufs),
            Stream::Closed => Poll::Ready(Err(not_connected())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.stream.is_write_vectored(),
            Stream::Closed => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut s.stream).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            // Sends close_notify, then shuts the socket down.
            Stream::Tls(s) => Pin::new(&mut s.stream).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}
