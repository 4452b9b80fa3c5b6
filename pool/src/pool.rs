//! bb8 pools of server connections, one per (database, user, shard, role, host).
//!
//! bb8 0.9 opens connections in background tasks and never hands a connect error to the
//! waiting `get()`: the error goes to the pool's error sink and `get()` waits until its
//! timeout. So each pool's sink broadcasts connect errors, and [`ServerPool::checkout`] races
//! `get()` against that broadcast: a refused login (28P01, 3D000, ...) reaches the waiting
//! client at once with the server's own SQLSTATE instead of a timeout. A connect error fails
//! every checkout waiting on that pool at the time, since they would all meet the same server.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bb8::{ErrorSink, ManageConnection, RunError};
use shardgate_wire::backend::TransactionStatus;
use tokio::sync::broadcast;
use tracing::warn;

use crate::conn::{ConnectTarget, ServerConn};
use crate::error::{CheckoutError, ServerError};

/// Identifies one pool.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub database: String,
    pub user: String,
    pub shard: String,
    pub role: Role,
    /// The server this pool connects to (a shard's primary or one of its replicas).
    pub host: shardgate_config::Host,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Primary,
    Replica,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        })
    }
}

/// Sizing and timeouts of one pool. Zero `idle_timeout` / `max_lifetime` mean "never".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    pub max_size: u32,
    pub min_size: u32,
    pub checkout_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub prepared_capacity: usize,
}

impl PoolSettings {
    /// Settings from the `[pool]` section (`pool.size` as `max_size`; a user's `pool_size`
    /// override is the caller's to apply).
    pub fn from_config(pool: &shardgate_config::Pool) -> Self {
        PoolSettings {
            max_size: pool.size,
            min_size: pool.min_size,
            checkout_timeout: pool.checkout_timeout,
            idle_timeout: pool.idle_timeout,
            max_lifetime: pool.max_lifetime,
            prepared_capacity: pool.prepared_statements_per_connection,
        }
    }
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self::from_config(&shardgate_config::Pool::default())
    }
}

/// Connection counts of a pool, for metrics and the admin API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolState {
    /// Open connections (idle and in use).
    pub connections: u32,
    pub idle: u32,
    pub in_use: u32,
    /// Checkouts waiting right now.
    pub waiting: u64,
    /// Totals since the pool was created.
    pub checkouts_timed_out: u64,
    pub connections_created: u64,
    pub connections_closed_broken: u64,
}

/// The bb8 manager: opens [`ServerConn`]s and decides which may go back to the pool.
pub struct Manager {
    target: ConnectTarget,
    prepared_capacity: usize,
    max_lifetime: Duration,
}

impl ManageConnection for Manager {
    type Connection = ServerConn;
    type Error = ServerError;

    async fn connect(&self) -> Result<ServerConn, ServerError> {
        ServerConn::connect_with(&self.target, self.prepared_capacity).await
    }

    /// Only used if checkout testing is on (it is off: a round trip per checkout).
    async fn is_valid(&self, conn: &mut ServerConn) -> Result<(), ServerError> {
        conn.run_internal(";").await
    }

    /// Called when a connection is returned: a broken one, one not idle (never hand a
    /// connection out mid-transaction) or one past its lifetime is closed.
    fn has_broken(&self, conn: &mut ServerConn) -> bool {
        conn.is_broken()
            || conn.status() != TransactionStatus::Idle
            || (!self.max_lifetime.is_zero() && conn.age() >= self.max_lifetime)
    }
}

/// A checked-out connection: derefs to [`ServerConn`]; dropping it returns it to the pool
/// (or closes it if [`Manager::has_broken`] says so).
pub type PooledConn = bb8::PooledConnection<'static, Manager>;

/// Broadcasts connect errors to the checkouts waiting on the pool.
#[derive(Clone)]
struct ConnectErrors {
    pool: Arc<str>,
    tx: broadcast::Sender<Arc<ServerError>>,
}

impl std::fmt::Debug for ConnectErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectErrors")
            .field("pool", &self.pool)
            .finish()
    }
}

impl ErrorSink<ServerError> for ConnectErrors {
    fn sink(&self, error: ServerError) {
        warn!(pool = %self.pool, %error, "could not open a server connection");
        // No receiver means no checkout is waiting: nothing to tell.
        let _ = self.tx.send(Arc::new(error));
    }

    fn boxed_clone(&self) -> Box<dyn ErrorSink<ServerError>> {
        Box::new(self.clone())
    }
}

struct Inner {
    key: PoolKey,
    name: Arc<str>,
    target: ConnectTarget,
    settings: PoolSettings,
    checkout_timeout: Duration,
    pool: bb8::Pool<Manager>,
    errors: broadcast::Sender<Arc<ServerError>>,
}

/// A bb8 pool of [`ServerConn`] for one [`PoolKey`]. Cheap to clone.
#[derive(Clone)]
pub struct ServerPool {
    inner: Arc<Inner>,
}

impl ServerPool {
    /// Builds the pool without connecting (connections open on demand, and `min_size` of them
    /// in the background). Must be called inside a tokio runtime: bb8 spawns its reaper.
    pub fn new(key: PoolKey, target: ConnectTarget, settings: PoolSettings) -> ServerPool {
        let name: Arc<str> = format!(
            "{}/{}@{} ({} {})",
            key.database, key.user, key.shard, key.role, key.host
        )
        .into();
        let (errors, _) = broadcast::channel(16);
        let max_size = settings.max_size.max(1);
        let checkout_timeout = settings.checkout_timeout.max(Duration::from_millis(1));
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        let manager = Manager {
            target: target.clone(),
            prepared_capacity: settings.prepared_capacity,
            max_lifetime: settings.max_lifetime,
        };
        let pool = bb8::Pool::builder()
            .max_size(max_size)
            .min_idle((settings.min_size > 0).then_some(settings.min_size.min(max_size)))
            .test_on_check_out(false)
            .connection_timeout(checkout_timeout)
            .idle_timeout(nonzero(settings.idle_timeout))
            .max_lifetime(nonzero(settings.max_lifetime))
            .retry_connection(false)
            .error_sink(Box::new(ConnectErrors {
                pool: name.clone(),
                tx: errors.clone(),
            }))
            .build_unchecked(manager);
        ServerPool {
            inner: Arc::new(Inner {
                key,
                name,
                target,
                settings,
                checkout_timeout,
                pool,
                errors,
            }),
        }
    }

    pub fn key(&self) -> &PoolKey {
        &self.inner.key
    }

    /// "database/user@shard (role)", for messages.
    pub fn name(&self) -> String {
        self.inner.name.to_string()
    }

    pub fn target(&self) -> &ConnectTarget {
        &self.inner.target
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.inner.settings
    }

    /// Checks a connection out, waiting at most the checkout timeout. A connection found
    /// closed while idle (the server terminated it) is dropped and another is taken.
    ///
    /// Errors: [`CheckoutError::Timeout`] (report 53300 naming the pool) or
    /// [`CheckoutError::Connect`] with the reason a new connection could not be opened.
    pub async fn checkout(&self) -> Result<PooledConn, CheckoutError> {
        let start = Instant::now();
        let deadline = start + self.inner.checkout_timeout;
        let mut errors = self.inner.errors.subscribe();
        let mut retry = false;
        loop {
            let got = tokio::select! {
                biased;
                got = self.get(retry.then_some(deadline)) => got,
                error = next_error(&mut errors) => return Err(CheckoutError::Connect(error)),
            };
            match got {
                Ok(mut conn) => {
                    if conn.check_idle() {
                        return Ok(conn);
                    }
                    // Dropping it closes it (it is marked broken); try again.
                    retry = true;
                }
                Err(RunError::TimedOut) => {
                    return Err(CheckoutError::Timeout {
                        pool: self.name(),
                        waited: start.elapsed(),
                    })
                }
                Err(RunError::User(e)) => return Err(CheckoutError::Connect(e)),
            }
        }
    }

    /// bb8's `get` (bounded by its own timeout), also bounded by `deadline` on retries.
    async fn get(&self, deadline: Option<Instant>) -> Result<PooledConn, RunError<ServerError>> {
        let get = self.inner.pool.get_owned();
        match deadline {
            None => get.await,
            Some(deadline) => tokio::time::timeout_at(deadline.into(), get)
                .await
                .unwrap_or(Err(RunError::TimedOut)),
        }
    }

    /// Connection counts (for metrics and the admin API).
    pub fn state(&self) -> PoolState {
        let state = self.inner.pool.state();
        let stats = &state.statistics;
        PoolState {
            connections: state.connections,
            idle: state.idle_connections,
            in_use: state.connections.saturating_sub(state.idle_connections),
            waiting: stats.pending_gets(),
            checkouts_timed_out: stats.get_timed_out,
            connections_created: stats.connections_created,
            connections_closed_broken: stats.connections_closed_broken,
        }
    }
}

impl std::fmt::Debug for ServerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerPool")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .finish()
    }
}

/// The next connect error broadcast by the pool; never resolves if there is none.
async fn next_error(rx: &mut broadcast::Receiver<Arc<ServerError>>) -> ServerError {
    loop {
        match rx.recv().await {
            Ok(error) => return error.duplicate(),
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// All pools of the process, created on first use.
#[derive(Default)]
pub struct Pools {
    pools: RwLock<HashMap<PoolKey, ServerPool>>,
}

impl Pools {
    /// The pool for `key`, built from `make()` if there is none yet.
    pub fn get_or_create(
        &self,
        key: PoolKey,
        make: impl FnOnce() -> (ConnectTarget, PoolSettings),
    ) -> ServerPool {
        if let Some(pool) = self
            .pools
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return pool.clone();
        }
        let mut pools = self.pools.write().unwrap_or_else(|e| e.into_inner());
        pools
            .entry(key)
            .or_insert_with_key(|key| {
                let (target, settings) = make();
                ServerPool::new(key.clone(), target, settings)
            })
            .clone()
    }

    /// The pool for `key`, if it exists.
    pub fn get(&self, key: &PoolKey) -> Option<ServerPool> {
        self.pools
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Forgets a pool (e.g. its shard was removed). Its connections close once the last clone
    /// of it and the last connection checked out of it are dropped.
    pub fn remove(&self, key: &PoolKey) -> Option<ServerPool> {
        self.pools
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key)
    }

    pub fn all(&self) -> Vec<ServerPool> {
        self.pools
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
