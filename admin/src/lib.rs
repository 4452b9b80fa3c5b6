//! shardgate's operator surface: the admin HTTP server (probes now; the API, metrics and the
//! rebalancer come with their issues) and, later, the admin CLI client.

pub mod control;

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr} (admin.listen): {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// A running admin HTTP server.
pub struct AdminServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` and serves `GET /health`.
    pub async fn start(addr: &str) -> Result<AdminServer, AdminError> {
        let err = |source| AdminError::Listen {
            addr: addr.to_owned(),
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(err)?;
        let local = listener.local_addr().map_err(err)?;
        let app = Router::new().route("/health", get(|| async { "ok\n" }));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "admin server stopped");
            }
        });
        tracing::info!(addr = %local, "admin server listening");
        Ok(AdminServer { addr: local, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(self) {
        self.task.abort();
    }
}
