//! Accepting clients on TCP and an optional unix socket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use shardgate_config::Config;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::session::handle_client;
use crate::shutdown_signal::ShutdownHub;
use crate::Shared;
use shardgate_wire::stream::Stream;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr} (listen.addr): {source}")]
    Tcp {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot create unix socket {path} (listen.unix_socket_dir): {source}")]
    Unix {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Listeners {
    pub addr: SocketAddr,
    pub unix_path: Option<PathBuf>,
    tcp: TcpListener,
    unix: Option<UnixListener>,
}

/// A TCP listener with SO_REUSEPORT, so a new shardgate can bind the same port while the old
/// one drains (zero-downtime restarts); the kernel spreads new connections over both.
fn bind_tcp(addr: &str) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

pub async fn bind(config: &Config) -> Result<Listeners, ListenError> {
    let tcp_err = |source| ListenError::Tcp {
        addr: config.listen.addr.clone(),
        source,
    };
    let tcp = bind_tcp(&config.listen.addr).map_err(tcp_err)?;
    let addr = tcp.local_addr().map_err(tcp_err)?;
    let (unix, unix_path) = match &config.listen.unix_socket_dir {
        Some(dir) => {
            // libpq looks for <dir>/.s.PGSQL.<port>.
            let path = dir.join(format!(".s.PGSQL.{}", addr.port()));
            if path.exists() {
                // A stale socket from a previous run; if another process still listens there
                // the bind below fails for it, as it should.
                let _ = std::fs::remove_file(&path);
            }
            let l = UnixListener::bind(&path).map_err(|source| ListenError::Unix {
                path: path.clone(),
                source,
            })?;
            (Some(l), Some(path))
        }
        None => (None, None),
    };
    Ok(Listeners {
        addr,
        unix_path,
        tcp,
        unix,
    })
}

impl Listeners {
    pub fn spawn(
        self,
        shared: Arc<Shared>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        let shutdown = ShutdownHub::follow(shutdown);
        let (s, hub) = (Arc::clone(&shared), Arc::clone(&shutdown));
        let tcp = self.tcp;
        tasks.push(tokio::spawn(async move {
            loop {
                match tcp.accept().await {
                    Ok((stream, _peer)) => {
                        tokio::spawn(handle_client(
                            Stream::Tcp(stream),
                            Arc::clone(&s),
                            Arc::clone(&hub),
                        ));
                    }
                    Err(e) => accept_error(e).await,
                }
            }
        }));
        if let Some(unix) = self.unix {
            tasks.push(tokio::spawn(async move {
                loop {
                    match unix.accept().await {
                        Ok((stream, _)) => {
                            tokio::spawn(handle_client(
                                Stream::Unix(stream),
                                Arc::clone(&shared),
                                Arc::clone(&shutdown),
                            ));
                        }
                        Err(e) => accept_error(e).await,
                    }
                }
            }));
        }
        tasks
    }
}

/// Out of file descriptors and similar: log, back off briefly, keep accepting.
async fn accept_error(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}
