//! bb8 pools of server connections, one per (database, user, shard, role, host).
//!
//! bb8 0.9 opens connections in background tasks and never hands a connect error to the
//! waiting `get()`: the error goes to the pool's error sink and `get()` waits until its
//! timeout. So each pool's sink broadcasts connect errors, and [`ServerPool::checkout`] races
//! `get()` against that broadcast: a refused login (28P01, 3D000, ...) reaches the waiting
//! client at once with the server's own SQLSTATE instead of a timeout. A connect error fails
//! every checkout waiting on that pool at the time, since they would all meet the same server.
//!
//! Each pool sizes itself between `min_size` and `max_size` (see [`crate::sizing`]): a
//! checkout first takes a permit from the pool's [`Gate`], whose permits are the current
//! target, and a background task per pool moves the target, closes idle connections above it
//! and keeps `min_size` connections open. bb8's own `max_size` is the fixed ceiling, its
//! `min_idle` and idle reaping are off (they count idle connections only and would open or
//! close connections behind the target's back).

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bb8::{ErrorSink, ManageConnection, RunError};
use shardgate_wire::backend::TransactionStatus;
use tokio::sync::broadcast;
use tracing::warn;

use crate::autosize::spawn_sizer;
use crate::budget::HostBudgets;
use crate::conn::{ConnectTarget, ServerConn};
use crate::error::{CheckoutError, ServerError};
use crate::sizing::{jittered, Gate, Permit, Sizer};

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
#[derive(Clone, Debug, PartialEq)]
pub struct PoolSettings {
    /// The ceiling: the pool never holds more connections.
    pub max_size: u32,
    /// The floor: the pool starts at this size (at least 1) and keeps this many open.
    pub min_size: u32,
    /// Grow when more than this share of the target is in use (or checkouts wait).
    pub scale_up_at: f64,
    /// Shrink toward `min_size` when use stays under this share for `idle_timeout`.
    pub scale_down_at: f64,
    pub checkout_timeout: Duration,
    pub idle_timeout: Duration,
    /// A connection is closed when next returned after this age, ±10% per connection.
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
            scale_up_at: pool.scale_up_at,
            scale_down_at: pool.scale_down_at,
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
    /// The current self-sized target (connections the pool may hold right now).
    pub target: u32,
    /// Times the pool grew and shrank since it was created.
    pub grown: u64,
    pub shrunk: u64,
}

/// The bb8 manager: opens [`ServerConn`]s and decides which may go back to the pool.
pub struct Manager {
    target: ConnectTarget,
    prepared_capacity: usize,
    lifetimes: Lifetimes,
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
            || self.lifetimes.of(conn).is_some_and(|l| conn.age() >= l)
    }
}

/// A checked-out connection: derefs to [`ServerConn`]; dropping it returns it to the pool
/// (or closes it if [`Manager::has_broken`] says so, or if the pool shrank below it), then
/// frees its place for the next checkout.
pub struct PooledConn {
    // Dropped before `permit`: the connection is back in bb8's idle list before the permit
    // lets the next checkout in, which then finds it instead of opening another.
    conn: bb8::PooledConnection<'static, Manager>,
    permit: Permit,
}

impl std::ops::Deref for PooledConn {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        &self.conn
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut ServerConn {
        &mut self.conn
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if self.permit.retire_if_owed() {
            self.conn.mark_broken();
        }
    }
}

impl std::fmt::Debug for PooledConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledConn")
            .field("pid", &self.conn.backend_key().0)
            .field("host", self.conn.host())
            .finish()
    }
}

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

/// A pool's shared state; the sizing task (`autosize`) holds it weakly.
pub(crate) struct Inner {
    pub(crate) key: PoolKey,
    pub(crate) name: Arc<str>,
    target: ConnectTarget,
    pub(crate) settings: PoolSettings,
    checkout_timeout: Duration,
    pub(crate) pool: bb8::Pool<Manager>,
    errors: broadcast::Sender<Arc<ServerError>>,
    pub(crate) gate: Arc<Gate>,
    pub(crate) budgets: Arc<HostBudgets>,
    lifetimes: Lifetimes,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.budgets.release(&self.key.host, self.gate.target());
    }
}

/// A bb8 pool of [`ServerConn`] for one [`PoolKey`]. Cheap to clone.
#[derive(Clone)]
pub struct ServerPool {
    inner: Arc<Inner>,
}

impl ServerPool {
    /// A pool with a host budget of its own (so only `max_size` limits it); [`Pools`] builds
    /// its pools with [`ServerPool::with_budgets`] instead.
    pub fn new(key: PoolKey, target: ConnectTarget, settings: PoolSettings) -> ServerPool {
        Self::with_budgets(key, target, settings, Arc::default())
    }

    /// Builds the pool without connecting (connections open on demand, and `min_size` of them
    /// in the background), counting its target against `budgets` for its host. Must be called
    /// inside a tokio runtime: it spawns the pool's sizing task.
    pub fn with_budgets(
        key: PoolKey,
        target: ConnectTarget,
        settings: PoolSettings,
        budgets: Arc<HostBudgets>,
    ) -> ServerPool {
        let name: Arc<str> = format!(
            "{}/{}@{} ({} {})",
            key.database, key.user, key.shard, key.role, key.host
        )
        .into();
        let (errors, _) = broadcast::channel(16);
        let max_size = settings.max_size.max(1);
        let floor = settings.min_size.clamp(1, max_size);
        let checkout_timeout = settings.checkout_timeout.max(Duration::from_millis(1));
        let lifetimes = Lifetimes {
            max: settings.max_lifetime,
            jitter: RandomState::new(),
        };
        let manager = Manager {
            target: target.clone(),
            prepared_capacity: settings.prepared_capacity,
            lifetimes: lifetimes.clone(),
        };
        // bb8 only reaps idle connections past this, as a backstop for ones that sit idle:
        // returned ones are closed earlier, at their own jittered lifetime (has_broken).
        let reap_after = (!settings.max_lifetime.is_zero())
            .then(|| {
                settings
                    .max_lifetime
                    .checked_add(settings.max_lifetime / 10)
            })
            .flatten();
        let pool = bb8::Pool::builder()
            .max_size(max_size)
            .min_idle(None)
            .test_on_check_out(false)
            .connection_timeout(checkout_timeout)
            .idle_timeout(None)
            .max_lifetime(reap_after)
            .retry_connection(false)
            // The most recently used connection first: a lone client keeps one warm server
            // backend instead of rotating over all of them (FIFO), and idle ones stay idle
            // long enough for the sizer to close them.
            .queue_strategy(bb8::QueueStrategy::Lifo)
            .error_sink(Box::new(ConnectErrors {
                pool: name.clone(),
                tx: errors.clone(),
            }))
            .build_unchecked(manager);
        budgets.register(&key.host, floor);
        let sizer = Sizer::new(
            floor,
            max_size,
            settings.scale_up_at,
            settings.scale_down_at,
            settings.idle_timeout,
        );
        let inner = Arc::new(Inner {
            key,
            name,
            target,
            settings,
            checkout_timeout,
            pool,
            errors,
            gate: Gate::new(floor),
            budgets,
            lifetimes,
        });
        spawn_sizer(Arc::downgrade(&inner), Arc::clone(&inner.gate), sizer);
        ServerPool { inner }
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

    /// The lifetime this pool gives `conn`: `max_lifetime` ±10%; `None` if unlimited.
    pub fn lifetime_of(&self, conn: &ServerConn) -> Option<Duration> {
        self.inner.lifetimes.of(conn)
    }

    /// Checks a connection out, waiting at most the checkout timeout (first for a place
    /// within the pool's current size, then for a connection). A connection found closed
    /// while idle (the server terminated it) is dropped and another is taken.
    ///
    /// Errors: [`CheckoutError::Timeout`] (report 53300 naming the pool) or
    /// [`CheckoutError::Connect`] with the reason a new connection could not be opened.
    pub async fn checkout(&self) -> Result<PooledConn, CheckoutError> {
        let start = Instant::now();
        let deadline = start + self.inner.checkout_timeout;
        let _waiting = self.inner.gate.checking_out();
        let mut errors = self.inner.errors.subscribe();
        let got = tokio::select! {
            biased;
            got = self.acquire(deadline) => got,
            error = next_error(&mut errors) => return Err(CheckoutError::Connect(error)),
        };
        match got {
            Ok(conn) => Ok(conn),
            Err(RunError::TimedOut) => {
                self.inner.gate.timed_out.fetch_add(1, Ordering::Relaxed);
                Err(CheckoutError::Timeout {
                    pool: self.name(),
                    waited: start.elapsed(),
                })
            }
            Err(RunError::User(e)) => Err(CheckoutError::Connect(e)),
        }
    }

    /// A permit, then a sound connection from bb8, both by `deadline`.
    async fn acquire(&self, deadline: Instant) -> Result<PooledConn, RunError<ServerError>> {
        let permit = self
            .inner
            .gate
            .acquire(deadline)
            .await
            .ok_or(RunError::TimedOut)?;
        loop {
            let mut conn = tokio::time::timeout_at(deadline.into(), self.inner.pool.get_owned())
                .await
                .unwrap_or(Err(RunError::TimedOut))?;
            if conn.check_idle() {
                return Ok(PooledConn { conn, permit });
            }
            // Dropping it closes it (it is marked broken); try again.
        }
    }

    /// Connection counts and sizing (for metrics and the admin API).
    pub fn state(&self) -> PoolState {
        let state = self.inner.pool.state();
        let stats = &state.statistics;
        let gate = &self.inner.gate;
        PoolState {
            connections: state.connections,
            idle: state.idle_connections,
            in_use: state.connections.saturating_sub(state.idle_connections),
            waiting: gate.waiting(),
            checkouts_timed_out: gate.timed_out.load(Ordering::Relaxed),
            connections_created: stats.connections_created,
            connections_closed_broken: stats.connections_closed_broken,
            target: gate.target(),
            grown: gate.grown.load(Ordering::Relaxed),
            shrunk: gate.shrunk.load(Ordering::Relaxed),
        }
    }
}

/// Per-connection lifetimes: `max_lifetime` ±10%, drawn from a hash of the connection's
/// backend key under a per-pool random key (fixed per connection, no state to keep).
#[derive(Clone)]
struct Lifetimes {
    max: Duration,
    jitter: RandomState,
}

impl Lifetimes {
    fn of(&self, conn: &ServerConn) -> Option<Duration> {
        (!self.max.is_zero()).then(|| jittered(self.max, self.jitter.hash_one(conn.backend_key())))
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
