//! Errors of server connections and pool checkouts.

use std::time::Duration;

use shardgate_wire::sqlstate;

/// Why a server connection could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out connecting to server {host}")]
    ConnectTimeout { host: String },
    #[error("could not connect to server {host}: {source}")]
    Connect {
        host: String,
        source: std::io::Error,
    },
    /// The server refused us with an ErrorResponse during startup/auth: keep its SQLSTATE.
    #[error("server refused the connection: {message} (SQLSTATE {code})")]
    Refused { code: String, message: String },
    /// Unsupported auth method, a bad SCRAM exchange, a missing password.
    #[error("server authentication failed: {0}")]
    Auth(String),
    /// An unexpected message or a malformed frame from the server.
    #[error("server protocol error: {0}")]
    Protocol(String),
    /// The server answered a proxy-internal query with an ErrorResponse.
    #[error("internal query failed: {message} (SQLSTATE {code})")]
    Query { code: String, message: String },
    #[error("server closed the connection")]
    Closed,
}

impl ServerError {
    /// The SQLSTATE to report to a client: the server's own code when it sent one, else
    /// 08006 (connection failure).
    pub fn sqlstate(&self) -> &str {
        match self {
            ServerError::Refused { code, .. } | ServerError::Query { code, .. } => code,
            _ => sqlstate::CONNECTION_FAILURE,
        }
    }

    /// A copy of this error (io errors keep their kind and message), so one connect failure
    /// can be reported to every checkout waiting on it.
    pub(crate) fn duplicate(&self) -> ServerError {
        fn io(e: &std::io::Error) -> std::io::Error {
            std::io::Error::new(e.kind(), e.to_string())
        }
        match self {
            ServerError::Io(e) => ServerError::Io(io(e)),
            ServerError::ConnectTimeout { host } => {
                ServerError::ConnectTimeout { host: host.clone() }
            }
            ServerError::Connect { host, source } => ServerError::Connect {
                host: host.clone(),
                source: io(source),
            },
            ServerError::Refused { code, message } => ServerError::Refused {
                code: code.clone(),
                message: message.clone(),
            },
            ServerError::Auth(m) => ServerError::Auth(m.clone()),
            ServerError::Protocol(m) => ServerError::Protocol(m.clone()),
            ServerError::Query { code, message } => ServerError::Query {
                code: code.clone(),
                message: message.clone(),
            },
            ServerError::Closed => ServerError::Closed,
        }
    }
}

/// Why a checkout from a [`crate::ServerPool`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// No connection became free within the checkout timeout (report 53300 naming the pool).
    #[error("no server connection available in pool {pool} after {waited:?}")]
    Timeout { pool: String, waited: Duration },
    /// Opening a new server connection failed (report [`ServerError::sqlstate`]).
    #[error(transparent)]
    Connect(ServerError),
}

impl CheckoutError {
    /// The SQLSTATE to report to a client: 53300 for a timeout, else the connect error's.
    pub fn sqlstate(&self) -> &str {
        match self {
            CheckoutError::Timeout { .. } => sqlstate::TOO_MANY_CONNECTIONS,
            CheckoutError::Connect(e) => e.sqlstate(),
        }
    }
}
