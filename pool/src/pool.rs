//! Pools of server connections, one per (database, user, shard, role, host).
//!
//! A checkout takes a place (a permit of the pool's [`Gate`], whose permits are the current
//! self-sized target, see [`crate::sizing`]) and then a connection from the pool's
//! [`Store`]. When both are free it returns at once: no timer, no channel, no syscall. Only a
//! checkout that has to wait arms its deadline and listens for connect errors, so a refused
//! login (28P01, 3D000, ...) reaches every checkout waiting on that pool at once with the
//! server's own SQLSTATE instead of a timeout.
//!
//! A background task per pool moves the target, closes idle connections above it and past
//! their lifetime, and keeps `min_size` connections open (see [`crate::autosize`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::autosize::spawn_sizer;
use crate::budget::HostBudgets;
use crate::conn::{ConnectTarget, ServerConn};
use crate::error::{CheckoutError, ServerError};
use crate::sizing::{Gate, Permit, Sizer};
use crate::store::{Entry, Store, StoreConfig};

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
    /// A connection idle longer than this is checked with a syscall (`recv(MSG_PEEK)`)
    /// before it is handed out; one idle for less is trusted unless tokio already saw its
    /// socket become readable (as PgBouncer's `server_check_delay`). Zero checks every time.
    pub server_check_delay: Duration,
}

/// Default [`PoolSettings::server_check_delay`] (PgBouncer's default is 30 s; a shorter delay
/// costs one syscall per checkout only on pools idle that long).
pub const DEFAULT_SERVER_CHECK_DELAY: Duration = Duration::from_secs(1);

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
            server_check_delay: pool.server_check_delay,
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
    /// Connections being opened (each already counted against its host's budget).
    pub connecting: u32,
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

/// A checked-out connection: derefs to [`ServerConn`]; dropping it returns it to the pool
/// (or closes it if it is broken, not idle, past its lifetime, or above a shrunk target),
/// then frees its place for the next checkout.
pub struct PooledConn {
    /// `Some` until dropped.
    conn: Option<Box<ServerConn>>,
    expires: Option<Instant>,
    store: Arc<Store>,
    // Dropped after the connection is back on the idle stack (in `drop`), so the permit lets
    // the next checkout in only once it can find the connection instead of opening another.
    permit: Permit,
}

impl PooledConn {
    fn new(entry: Entry, permit: Permit, store: &Arc<Store>) -> PooledConn {
        PooledConn {
            conn: Some(entry.conn),
            expires: entry.expires,
            store: Arc::clone(store),
            permit,
        }
    }
}

const HELD: &str = "a PooledConn holds its connection until it is dropped";

impl std::ops::Deref for PooledConn {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        self.conn.as_ref().expect(HELD)
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn.as_mut().expect(HELD)
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let retire = self.permit.retire_if_owed();
            self.store.put_back(conn, self.expires, retire);
        }
    }
}

impl std::fmt::Debug for PooledConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("PooledConn");
        if let Some(conn) = &self.conn {
            d.field("pid", &conn.backend_key().0)
                .field("host", conn.host());
        }
        d.finish()
    }
}

/// A pool's shared state; the sizing task (`autosize`) holds it weakly.
pub(crate) struct Inner {
    pub(crate) key: PoolKey,
    pub(crate) name: Arc<str>,
    target: ConnectTarget,
    pub(crate) settings: PoolSettings,
    checkout_timeout: Duration,
    pub(crate) store: Arc<Store>,
    pub(crate) gate: Arc<Gate>,
    pub(crate) budgets: Arc<HostBudgets>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.budgets.release(&self.key.host, self.gate.target());
    }
}

/// The pool of [`ServerConn`] for one [`PoolKey`]. Cheap to clone.
#[derive(Clone)]
pub struct ServerPool {
    inner: Arc<Inner>,
}

impl ServerPool {
    /// A pool with a host budget of its own (so only `max_size` limits it); [`Pools`] builds
    /// its pools with [`ServerPool::with_budgets`] instead.
    ///
    /// [`Pools`]: crate::Pools
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
        let max_size = settings.max_size.max(1);
        let floor = settings.min_size.clamp(1, max_size);
        let checkout_timeout = settings.checkout_timeout.max(Duration::from_millis(1));
        let store = Store::new(StoreConfig {
            name: name.clone(),
            target: target.clone(),
            prepared_capacity: settings.prepared_capacity,
            max_lifetime: settings.max_lifetime,
            max_size,
            check_delay: settings.server_check_delay,
            host: budgets.connections_on(&key.host),
        });
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
            store,
            gate: Gate::new(floor),
            budgets,
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
        self.inner.store.lifetime_of(conn)
    }

    /// Checks a connection out, waiting at most the checkout timeout (first for a place
    /// within the pool's current size, then for a connection). A connection found closed
    /// while idle (the server terminated it) is dropped and another is taken.
    ///
    /// When a place and an idle connection are free, this returns at once without arming a
    /// timer, subscribing to anything or making a syscall; only a checkout that has to wait
    /// pays for those.
    ///
    /// Errors: [`CheckoutError::Timeout`] (report 53300 naming the pool) or
    /// [`CheckoutError::Connect`] with the reason a new connection could not be opened (at
    /// once, with the server's SQLSTATE, to every checkout waiting when a connect fails).
    pub async fn checkout(&self) -> Result<PooledConn, CheckoutError> {
        let inner = &self.inner;
        let permit = inner.gate.try_acquire();
        if let Some(permit) = permit {
            if let Some(entry) = inner.store.take_idle() {
                return Ok(PooledConn::new(entry, permit, &inner.store));
            }
            // Boxed: the slow path's state (timers, a channel receiver) stays out of the
            // future every checkout builds.
            return Box::pin(self.checkout_waiting(Some(permit))).await;
        }
        Box::pin(self.checkout_waiting(None)).await
    }

    /// [`ServerPool::checkout`]'s fast path alone: a connection when a place and an idle
    /// connection are free, else `None` (nothing waited for, nothing held). A caller that
    /// times checkouts reads no clock for this one: it did not wait.
    pub fn try_checkout(&self) -> Option<PooledConn> {
        let inner = &self.inner;
        let permit = inner.gate.try_acquire()?;
        // Without an idle connection the permit goes back as it drops.
        let entry = inner.store.take_idle()?;
        Some(PooledConn::new(entry, permit, &inner.store))
    }

    /// [`ServerPool::checkout`]'s slow path alone, for a caller whose
    /// [`ServerPool::try_checkout`] just found nothing: the fast path is not tried twice.
    pub async fn checkout_slow(&self) -> Result<PooledConn, CheckoutError> {
        Box::pin(self.checkout_waiting(None)).await
    }

    /// The slow path: waits by the deadline for a permit (unless it has one) and then a
    /// connection, and fails at once if a connect fails meanwhile.
    async fn checkout_waiting(&self, permit: Option<Permit>) -> Result<PooledConn, CheckoutError> {
        let inner = &self.inner;
        let start = Instant::now();
        let deadline = start + inner.checkout_timeout;
        let _waiting = inner.gate.checking_out();
        // Subscribed before any connect this checkout may start, so its error is heard.
        let mut errors = inner.store.subscribe_errors();
        let got = tokio::select! {
            biased;
            got = self.acquire(permit, deadline) => got,
            error = next_error(&mut errors) => return Err(CheckoutError::Connect(error)),
        };
        got.ok_or_else(|| {
            inner.gate.timed_out.fetch_add(1, Ordering::Relaxed);
            CheckoutError::Timeout {
                pool: self.name(),
                waited: start.elapsed(),
            }
        })
    }

    /// A permit, then a sound connection, both by `deadline`; `None` on timeout.
    async fn acquire(&self, permit: Option<Permit>, deadline: Instant) -> Option<PooledConn> {
        let inner = &self.inner;
        let permit = match permit {
            // `checkout` found no idle connection with this permit a moment ago.
            Some(permit) => permit,
            None => {
                let permit = inner.gate.acquire(deadline).await?;
                // A permit is usually freed by a return that put its connection back just
                // before: take it without registering as a waiter (locks, a notification).
                if let Some(entry) = inner.store.take_idle() {
                    return Some(PooledConn::new(entry, permit, &inner.store));
                }
                permit
            }
        };
        let entry = inner.store.wait_for(deadline).await?;
        Some(PooledConn::new(entry, permit, &inner.store))
    }

    /// Connection counts and sizing (for metrics and the admin API).
    pub fn state(&self) -> PoolState {
        let counts = self.inner.store.counts();
        let gate = &self.inner.gate;
        PoolState {
            connections: counts.open,
            connecting: counts.connecting,
            idle: counts.idle,
            in_use: counts.open.saturating_sub(counts.idle),
            waiting: gate.waiting(),
            checkouts_timed_out: gate.timed_out.load(Ordering::Relaxed),
            connections_created: counts.created,
            connections_closed_broken: counts.closed_broken,
            target: gate.target(),
            grown: gate.grown.load(Ordering::Relaxed),
            shrunk: gate.shrunk.load(Ordering::Relaxed),
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
