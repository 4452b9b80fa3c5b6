//! The server side of shardgate: raw connections to PostgreSQL servers and their pools.
//!
//! - [`ServerConn`] opens a connection (TCP or unix socket), runs the startup and
//!   authentication exchange as a client (SCRAM-SHA-256, md5, cleartext, trust), and then
//!   carries whole messages as bytes for the proxy, tracking only the transaction status,
//!   fatal errors and the prepared statements it holds.
//! - [`ServerPool`] is a pool of them for one (database, user, shard, role, host), with a
//!   checkout that costs no timer, channel or syscall when a connection is idle; [`Pools`]
//!   holds every pool of the process. A connection never goes back to a pool broken, inside
//!   a transaction or past its lifetime (`max_lifetime` ±10% per connection).
//! - Each pool sizes itself between `min_size` and `max_size` by its use, and the pools on one
//!   host together stay within that host's [`HostBudgets`] (from its `max_connections`).
//! - [`Health`] is what is known of every host (up, banned, lag, load) and picks the host
//!   for a read; [`spawn_monitor`] keeps it current with health and replication-lag checks.
//! - Each shard's writer is discovered (`failover`): a promoted host takes writes when the
//!   configured primary is gone, and a primary that is not the writer is fenced.
//! - [`send_cancel`] forwards a client's CancelRequest to the server running its query.

mod auth;
mod autosize;
mod budget;
mod cancel;
mod conn;
mod error;
mod failover;
mod health;
mod monitor;
mod pool;
mod pools;
mod prepared;
mod sizing;
mod store;
mod tls;

pub use budget::{HostBudgets, HostPolicy};
pub use cancel::{send_cancel, CANCEL_TIMEOUT};
pub use conn::{ConnectTarget, ServerConn, DEFAULT_PREPARED_CAPACITY, MAX_SERVER_FRAME};
pub use error::{CheckoutError, ServerError};
pub use failover::Observed;
pub use health::{Health, HostChoice, HostHealth, HostSnapshot, Lag, QueryGuard, ShardHealth};
pub use monitor::{spawn_monitor, spawn_monitor_with_budgets, MonitorLogin};
pub use pool::{
    PoolKey, PoolSettings, PoolState, PooledConn, Role, ServerPool, DEFAULT_SERVER_CHECK_DELAY,
};
pub use pools::Pools;
pub use prepared::PreparedSet;
pub use shardgate_wire::backend::TransactionStatus;
pub use tls::{connect_control, ControlConnectError};

/// Compile-time checks: the proxy runs these futures in spawned tasks.
#[cfg(test)]
#[allow(dead_code)]
fn futures_are_send(pool: &ServerPool, pools: &Pools, conn: &mut ServerConn, t: &ConnectTarget) {
    fn is_send<T: Send>(_: &T) {}
    fn is_send_sync<T: Send + Sync>(_: &T) {}
    is_send_sync(pool);
    is_send_sync(pools);
    is_send(&pool.checkout());
    is_send(&ServerConn::connect(t));
    is_send(&send_cancel(&t.host, 1, 2));
    is_send(&conn.read_frame());
    is_send(&conn.run_internal(";"));
}
