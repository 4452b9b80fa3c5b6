//! The connections of one pool: a stack of idle ones and the counts around it, behind one
//! short-held mutex. This replaces bb8, whose `get` arms a timer on every call (it wraps the
//! whole checkout in `timeout(connection_timeout, ..)`), so a checkout that finds an idle
//! connection can cost no timer, no channel and no syscall (see [`Store::take_idle`]).
//!
//! - Idle connections are a LIFO stack: the most recently used one is handed out first, so a
//!   lone client keeps one warm server backend, and the ones at the bottom stay idle long
//!   enough for the sizing task to close them.
//! - Liveness: a connection idle for less than `server_check_delay` (as the sizing round,
//!   every 250 ms, sees it: checkouts read no clock) is trusted unless tokio already knows its
//!   socket is readable (an idle server connection has nothing to say, so a FATAL or EOF from
//!   a terminated backend shows up as readiness once the runtime has polled for events); only
//!   then, or after a longer idle spell, does a `recv(MSG_PEEK)` confirm it (as PgBouncer's
//!   `server_check_delay`). A connection that dies in between is found at use and handled
//!   there (the proxy answers 08006, or retries before anything was sent).
//! - New connections are opened in spawned tasks for checkouts that wait, so a cancelled
//!   checkout does not waste a connect; a connect error is broadcast to every checkout
//!   waiting at the time (they would all meet the same server).
//! - Each connect first reserves a slot in its host's connection count (see
//!   [`crate::budget`]), given back once the connection is closed or the connect failed; a
//!   connect the host's budget puts off waits for a slot to be freed (or a connection to be
//!   returned, whichever comes first).

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shardgate_wire::backend::TransactionStatus;
use tokio::sync::{broadcast, Notify};
use tracing::{debug, warn};

use crate::budget::HostConnections;
use crate::conn::{ConnectTarget, ServerConn};
use crate::error::ServerError;
use crate::sizing::jittered;

/// A connection with what the pool knows of it. Boxed: a `ServerConn` is a few hundred
/// bytes, and a checkout and return would otherwise copy it several times.
pub(crate) struct Entry {
    pub(crate) conn: Box<ServerConn>,
    /// When it is to be closed (`max_lifetime` ±10% after it opened); `None`: never.
    pub(crate) expires: Option<Instant>,
    /// When it was last returned to the idle stack.
    since: Instant,
    /// Idle longer than the check delay (set by [`Store::sweep_idle`]): check it with a
    /// syscall before handing it out.
    stale: bool,
}

/// Counts and the idle stack, under [`Store::slots`].
#[derive(Default)]
struct Slots {
    /// Most recently returned last.
    idle: VecDeque<Entry>,
    /// Open connections: idle and checked out (not the ones still connecting).
    open: u32,
    /// Connects in flight.
    connecting: u32,
    /// Checkouts holding a permit and waiting for a connection.
    waiters: u32,
}

/// Where and how a pool opens connections, and when it checks them.
pub(crate) struct StoreConfig {
    pub(crate) name: Arc<str>,
    pub(crate) target: ConnectTarget,
    pub(crate) prepared_capacity: usize,
    pub(crate) max_lifetime: Duration,
    /// The ceiling: open plus connecting never exceed it.
    pub(crate) max_size: u32,
    /// Idle longer than this, a connection is checked with a syscall before it is handed out.
    pub(crate) check_delay: Duration,
    /// The count of this process's connections on the host, limited by its budget.
    pub(crate) host: HostConnections,
}

/// The connections of one pool (see the module docs).
pub(crate) struct Store {
    name: Arc<str>,
    target: ConnectTarget,
    prepared_capacity: usize,
    lifetimes: Lifetimes,
    max_size: u32,
    check_delay: Duration,
    host: HostConnections,
    slots: Mutex<Slots>,
    /// Wakes one registered waiter when a connection goes idle or a place frees up.
    available: Notify,
    /// Connect errors, for the checkouts waiting when one happens.
    errors: broadcast::Sender<Arc<ServerError>>,
    created: AtomicU64,
    closed_broken: AtomicU64,
}

/// Open, idle and connecting, read together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) open: u32,
    pub(crate) idle: u32,
    pub(crate) connecting: u32,
    pub(crate) created: u64,
    pub(crate) closed_broken: u64,
}

impl Store {
    pub(crate) fn new(config: StoreConfig) -> Arc<Store> {
        let (errors, _) = broadcast::channel(16);
        Arc::new(Store {
            name: config.name,
            target: config.target,
            prepared_capacity: config.prepared_capacity,
            lifetimes: Lifetimes {
                max: config.max_lifetime,
                jitter: RandomState::new(),
            },
            max_size: config.max_size.max(1),
            check_delay: config.check_delay,
            host: config.host,
            slots: Mutex::default(),
            available: Notify::new(),
            errors,
            created: AtomicU64::new(0),
            closed_broken: AtomicU64::new(0),
        })
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        // Nothing under the lock can panic half-way through an update; recover regardless.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn counts(&self) -> Counts {
        let slots = self.slots();
        Counts {
            open: slots.open,
            idle: u32::try_from(slots.idle.len()).unwrap_or(u32::MAX),
            connecting: slots.connecting,
            created: self.created.load(Ordering::Relaxed),
            closed_broken: self.closed_broken.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn lifetime_of(&self, conn: &ServerConn) -> Option<Duration> {
        self.lifetimes.of(conn)
    }

    pub(crate) fn subscribe_errors(&self) -> broadcast::Receiver<Arc<ServerError>> {
        self.errors.subscribe()
    }

    /// The most recently returned idle connection that is still sound, if any: the fast path.
    /// No timer, no channel, not even a clock read; a syscall only for a connection idle
    /// longer than the check delay or whose socket tokio already saw become readable.
    /// (Connections that expire while idle are closed by [`Store::sweep_idle`].)
    pub(crate) fn take_idle(&self) -> Option<Entry> {
        loop {
            let entry = self.slots().idle.pop_back()?;
            if let Some(entry) = self.sound(entry) {
                return Some(entry);
            }
        }
    }

    /// [`Store::take_idle`] for a checkout registered as a waiter: it stops counting as one
    /// under the same lock that pops the connection. Counted as a waiter and holding a
    /// connection at once, it let another waiter start a connect that the pool's permits did
    /// not cover (one connection above the target until the next sizing round closed it).
    fn take_idle_for(&self, waiter: &mut Waiter<'_>) -> Option<Entry> {
        loop {
            let entry = {
                let mut slots = self.slots();
                let entry = slots.idle.pop_back()?;
                waiter.unregister(&mut slots);
                entry
            };
            if let Some(entry) = self.sound(entry) {
                return Some(entry);
            }
            // Closed while idle: waiting again, for another or for a connect.
            waiter.register_again();
        }
    }

    /// `entry` if its connection is still sound (see the module docs), else closes it.
    fn sound(&self, mut entry: Entry) -> Option<Entry> {
        let deep = entry.stale || self.check_delay.is_zero();
        if entry.conn.idle_check(deep) {
            return Some(entry);
        }
        debug!(pool = %self.name, conn = entry.conn.id(), pid = entry.conn.backend_key().0,
            "an idle server connection was found closed; taking another");
        self.close(entry.conn);
        None
    }

    /// Takes a connection back from a checkout. It goes back on the idle stack unless it is
    /// broken, not idle (never hand a connection out mid-transaction), past its lifetime, or
    /// `retire` says the pool shrank below it; then it is closed.
    pub(crate) fn put_back(&self, conn: Box<ServerConn>, expires: Option<Instant>, retire: bool) {
        let now = Instant::now();
        let reusable = !retire
            && !conn.is_broken()
            && conn.status() == TransactionStatus::Idle
            && expires.is_none_or(|at| now < at);
        if !reusable {
            self.close(conn);
            return;
        }
        let wake = {
            let mut slots = self.slots();
            slots.idle.push_back(Entry {
                conn,
                expires,
                since: now,
                stale: false,
            });
            slots.waiters > 0
        };
        if wake {
            self.available.notify_one();
        }
    }

    /// Closes a connection that counted as open (dropping it sends Terminate unless it is
    /// broken), and lets a waiter open another in its place.
    fn close(&self, conn: Box<ServerConn>) {
        let wake = {
            let mut slots = self.slots();
            slots.open = slots.open.saturating_sub(1);
            slots.waiters > 0
        };
        self.closed_broken.fetch_add(1, Ordering::Relaxed);
        drop(conn);
        self.host.release(1);
        if wake {
            self.available.notify_one();
        }
    }

    /// Waits until `deadline` for a sound connection, opening new ones (in spawned tasks)
    /// while there are fewer connects in flight than waiters and room under the ceiling.
    /// `None` on timeout. Connect errors are not reported here: the caller listens to
    /// [`Store::subscribe_errors`], subscribed before calling this.
    pub(crate) async fn wait_for(self: &Arc<Self>, deadline: Instant) -> Option<Entry> {
        // Registered before the first look, so a connection returned from then on wakes us.
        let mut waiter = Waiter::register(self);
        loop {
            let notified = self.available.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(entry) = self.take_idle_for(&mut waiter) {
                return Some(entry);
            }
            let freed = self.host.freed();
            let mut freed = std::pin::pin!(freed);
            let mut put_off = false;
            let connect = {
                let mut slots = self.slots();
                let room = slots.open.saturating_add(slots.connecting) < self.max_size;
                let start = room && slots.connecting < slots.waiters && slots.idle.is_empty();
                if start {
                    // Enabled before asking, so a slot freed right after a refusal wakes us.
                    freed.as_mut().enable();
                    put_off = !self.host.try_reserve();
                }
                (start && !put_off).then(|| Connecting::count(self, &mut slots))
            };
            if let Some(counted) = connect {
                tokio::spawn(counted.open());
            }
            let woken = async {
                if put_off {
                    tokio::select! {
                        _ = notified.as_mut() => {}
                        _ = freed.as_mut() => {}
                    }
                } else {
                    notified.as_mut().await;
                }
            };
            if tokio::time::timeout_at(deadline.into(), woken)
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// Opens one connection onto the idle stack if there is room under the ceiling and the
    /// host's budget (for the `min_size` warm-up).
    pub(crate) async fn open_one(self: &Arc<Self>) -> Opened {
        let counted = {
            let mut slots = self.slots();
            if slots.open.saturating_add(slots.connecting) >= self.max_size
                || !self.host.try_reserve()
            {
                return Opened::NoRoom;
            }
            Connecting::count(self, &mut slots)
        };
        counted.open().await
    }

    /// Closes the least recently used idle connections while more than `allowed` are open.
    pub(crate) fn close_idle_above(&self, allowed: u32) -> u32 {
        let mut closed = Vec::new();
        {
            let mut slots = self.slots();
            while slots.open > allowed {
                let Some(entry) = slots.idle.pop_front() else {
                    break;
                };
                slots.open -= 1;
                closed.push(entry);
            }
        }
        for entry in &closed {
            debug!(pool = %self.name, pid = entry.conn.backend_key().0,
                "closed an idle connection above the target");
        }
        self.closed_broken
            .fetch_add(closed.len() as u64, Ordering::Relaxed);
        let n = u32::try_from(closed.len()).unwrap_or(u32::MAX);
        drop(closed);
        self.host.release(n);
        n
    }

    /// The sizing round's look at the idle stack: closes connections past their lifetime
    /// (returned ones are checked on return) and marks the ones idle longer than the check
    /// delay for a syscall check at their next checkout, so that checkouts need no clock.
    pub(crate) fn sweep_idle(&self, now: Instant) {
        let mut expired = Vec::new();
        {
            let mut slots = self.slots();
            let mut kept = VecDeque::with_capacity(slots.idle.len());
            for mut entry in slots.idle.drain(..) {
                if entry.expires.is_some_and(|at| now >= at) {
                    expired.push(entry);
                } else {
                    entry.stale |= now.saturating_duration_since(entry.since) >= self.check_delay;
                    kept.push_back(entry);
                }
            }
            slots.idle = kept;
            slots.open = slots
                .open
                .saturating_sub(u32::try_from(expired.len()).unwrap_or(u32::MAX));
        }
        if !expired.is_empty() {
            debug!(pool = %self.name, closed = expired.len(),
                "closed idle connections past their lifetime");
            let n = u32::try_from(expired.len()).unwrap_or(u32::MAX);
            drop(expired);
            self.host.release(n);
        }
    }
}

impl Drop for Store {
    /// The idle connections close with the store (a checked-out connection and a connect in
    /// flight each keep it alive, so every open one is idle here); their slots go back.
    fn drop(&mut self) {
        let slots = self.slots.get_mut().unwrap_or_else(|e| e.into_inner());
        let open = slots.open;
        slots.idle.clear();
        self.host.release(open);
    }
}

/// What a warm-up connect came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Opened {
    Yes,
    /// The pool's ceiling or the host's budget left no room: nothing was tried.
    NoRoom,
    /// The connect failed (logged and broadcast to waiting checkouts).
    Failed,
}

/// Counts a checkout (holding a permit, no connection yet) as waiting for a connection while
/// it lives, unless it took one.
///
/// Connects start only while fewer are in flight than waiters, so that open plus connecting
/// never exceed the permits held: every waiter and every checked-out connection holds one.
/// That holds only if no checkout counts as both, see [`Store::take_idle_for`].
struct Waiter<'a> {
    store: &'a Store,
    counted: bool,
}

impl<'a> Waiter<'a> {
    fn register(store: &'a Store) -> Self {
        store.slots().waiters += 1;
        Waiter {
            store,
            counted: true,
        }
    }

    /// Stops counting, under the lock the caller holds to take a connection.
    fn unregister(&mut self, slots: &mut Slots) {
        if self.counted {
            slots.waiters = slots.waiters.saturating_sub(1);
            self.counted = false;
        }
    }

    fn register_again(&mut self) {
        if !self.counted {
            self.store.slots().waiters += 1;
            self.counted = true;
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.counted {
            let mut slots = self.store.slots();
            slots.waiters = slots.waiters.saturating_sub(1);
        }
    }
}

/// A connect counted in `connecting` and holding a slot of the host's connections: both are
/// given back on drop while armed (a failed connect, or its task dropped, even before it ran);
/// a connect that succeeded hands them to the connection it adds.
struct Connecting {
    store: Arc<Store>,
    armed: bool,
}

impl Connecting {
    /// Counts a connect whose host slot the caller has reserved.
    fn count(store: &Arc<Store>, slots: &mut Slots) -> Connecting {
        slots.connecting += 1;
        Connecting {
            store: Arc::clone(store),
            armed: true,
        }
    }

    /// Opens the connection; on success it goes on the idle stack and wakes a waiter, on
    /// failure the error is logged and broadcast.
    async fn open(mut self) -> Opened {
        let store = Arc::clone(&self.store);
        match ServerConn::connect_with(&store.target, store.prepared_capacity).await {
            Ok(conn) => {
                let now = Instant::now();
                let expires = store.lifetimes.of(&conn).and_then(|l| now.checked_add(l));
                store.created.fetch_add(1, Ordering::Relaxed);
                let wake = {
                    let mut slots = store.slots();
                    slots.open += 1;
                    slots.connecting = slots.connecting.saturating_sub(1);
                    slots.idle.push_back(Entry {
                        conn: Box::new(conn),
                        expires,
                        since: now,
                        stale: false,
                    });
                    slots.waiters > 0
                };
                self.armed = false;
                if wake {
                    store.available.notify_one();
                }
                Opened::Yes
            }
            Err(error) => {
                drop(self);
                warn!(pool = %store.name, %error, "could not open a server connection");
                // No receiver means no checkout is waiting: nothing to tell.
                let _ = store.errors.send(Arc::new(error));
                Opened::Failed
            }
        }
    }
}

impl Drop for Connecting {
    fn drop(&mut self) {
        if self.armed {
            {
                let mut slots = self.store.slots();
                slots.connecting = slots.connecting.saturating_sub(1);
            }
            self.store.host.release(1);
        }
    }
}

/// Per-connection lifetimes: `max_lifetime` ±10%, drawn from a hash of the connection's
/// backend key under a per-pool random key (fixed per connection, no state to keep).
struct Lifetimes {
    max: Duration,
    jitter: RandomState,
}

impl Lifetimes {
    fn of(&self, conn: &ServerConn) -> Option<Duration> {
        (!self.max.is_zero()).then(|| jittered(self.max, self.jitter.hash_one(conn.backend_key())))
    }
}
