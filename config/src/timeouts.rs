//! `[timeouts]`: how long a client may hold a server connection (query, idle in transaction,
//! transaction) and how long a write to a client may take.

use std::time::Duration;

use serde::Deserialize;

use crate::duration;

/// How long a client may hold a server connection in each way, as PgBouncer's and PgDog's
/// settings of the same names (0 = no limit).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// A request running longer is canceled on the server (the client gets 57014).
    #[serde(with = "duration")]
    pub query_timeout: Duration,
    /// A client idle inside a transaction this long is disconnected (25P03) and its
    /// transaction rolled back.
    #[serde(with = "duration")]
    pub idle_in_transaction_timeout: Duration,
    /// A transaction open this long is ended by disconnecting the client (25P04, as
    /// PostgreSQL 17's `transaction_timeout`) and rolled back.
    #[serde(with = "duration")]
    pub transaction_timeout: Duration,
    /// A write to a client that does not complete in this long (the client stopped reading)
    /// drops the client (08006); a server connection it held is closed, not kept waiting.
    #[serde(with = "duration")]
    pub client_write_timeout: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            query_timeout: Duration::ZERO,
            idle_in_transaction_timeout: Duration::ZERO,
            transaction_timeout: Duration::ZERO,
            client_write_timeout: Duration::from_secs(60),
        }
    }
}
