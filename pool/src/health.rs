//! What shardgate knows about each server host, read on the hot path without locks:
//! whether it answers (a host that fails is banned with exponential backoff), whether a
//! replica is fresh enough to serve reads (the lag monitor decides), its replay position (for
//! read-your-writes), and how many queries it is running (for balancing).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use shardgate_config::{Config, Host};
use tracing::{info, warn};

use crate::pool::Role;

/// Milliseconds since the first call (a monotonic clock that fits in an atomic).
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Lag figures of a replica at its last check.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Lag {
    pub seconds: f64,
    pub bytes: u64,
}

/// One server host (a shard's primary or one of its replicas).
#[derive(Debug)]
pub struct HostHealth {
    pub shard: String,
    pub host: Host,
    pub role: Role,
    /// Answered its last check or connection attempt.
    up: AtomicBool,
    /// Checked at least once.
    checked: AtomicBool,
    /// Replicas: up and within the lag limits. Primaries: up.
    pub(crate) in_rotation: AtomicBool,
    banned_until_ms: AtomicU64,
    failures: AtomicU32,
    /// Replicas: `pg_last_wal_replay_lsn()` at the last check; primaries: unused.
    replay_lsn: AtomicU64,
    outstanding: AtomicU64,
    queries: AtomicU64,
    lag: Mutex<Option<Lag>>,
    /// Why the last check failed, for the admin API.
    last_error: Mutex<Option<String>>,
    /// What the last check found the server to be: [`UNKNOWN`], [`PRIMARY`] or [`STANDBY`].
    pub(crate) discovered: AtomicU8,
    /// A primary's WAL timeline, a standby's WAL receiver's (0: unknown).
    pub(crate) timeline: AtomicU32,
    /// A primary that is not the shard's writer (split brain): no writes go to it.
    pub(crate) fenced: AtomicBool,
}

/// [`HostHealth::discovered`] values.
pub(crate) const UNKNOWN: u8 = 0;
pub(crate) const PRIMARY: u8 = 1;
pub(crate) const STANDBY: u8 = 2;

/// How a host stands, for the admin API.
#[derive(Clone, Debug, PartialEq)]
pub struct HostSnapshot {
    pub shard: String,
    pub host: Host,
    pub role: Role,
    /// "ok", "lagging", "down" or "unknown".
    pub state: &'static str,
    pub in_rotation: bool,
    pub lag: Option<Lag>,
    pub replay_lsn: Option<u64>,
    pub queries: u64,
    pub outstanding: u64,
    pub banned_for: Option<Duration>,
    pub last_error: Option<String>,
    /// At its last check: `Some(true)` in recovery, `Some(false)` a primary.
    pub in_recovery: Option<bool>,
    /// Its timeline at the last check (a standby's needs `pg_read_all_stats`).
    pub timeline: Option<u32>,
    /// A primary that is not its shard's writer: no writes go to it (split brain).
    pub fenced: bool,
    /// It takes its shard's writes now (the configured primary, or a promoted host).
    pub writer: bool,
}

impl HostHealth {
    pub(crate) fn new(shard: &str, host: &Host, role: Role) -> HostHealth {
        HostHealth {
            shard: shard.to_owned(),
            host: host.clone(),
            role,
            up: AtomicBool::new(true),
            checked: AtomicBool::new(false),
            // A primary serves until proven down; a replica joins after its first good check.
            in_rotation: AtomicBool::new(role == Role::Primary),
            banned_until_ms: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            replay_lsn: AtomicU64::new(0),
            outstanding: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            lag: Mutex::new(None),
            last_error: Mutex::new(None),
            discovered: AtomicU8::new(UNKNOWN),
            timeline: AtomicU32::new(0),
            fenced: AtomicBool::new(false),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn is_banned(&self) -> bool {
        self.banned_until_ms.load(Ordering::Relaxed) > now_ms()
    }

    pub fn ban_expired(&self) -> bool {
        !self.is_banned()
    }

    pub fn in_rotation(&self) -> bool {
        self.in_rotation.load(Ordering::Relaxed) && !self.is_banned()
    }

    pub fn replay_lsn(&self) -> u64 {
        self.replay_lsn.load(Ordering::Relaxed)
    }

    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// The host refused a connection or failed a check: out of rotation and banned, for
    /// `initial` doubled per consecutive failure, at most `max`.
    pub fn report_failure(&self, initial: Duration, max: Duration, reason: &str) {
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let ban = initial.saturating_mul(factor).min(max);
        self.banned_until_ms
            .store(now_ms() + ban.as_millis() as u64, Ordering::Relaxed);
        self.checked.store(true, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_owned());
        let was_up = self.up.swap(false, Ordering::Relaxed);
        let was_in = self.in_rotation.swap(false, Ordering::Relaxed);
        if was_up {
            warn!(shard = %self.shard, host = %self.host, role = %self.role, banned_ms = ban.as_millis() as u64,
                error = reason, "server host is down; banned");
        }
        if was_in {
            self.count_transition("out");
        }
    }

    /// The host answered: the ban and the failure count are cleared.
    pub fn report_up(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.banned_until_ms.store(0, Ordering::Relaxed);
        self.checked.store(true, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if !self.up.swap(true, Ordering::Relaxed) {
            info!(shard = %self.shard, host = %self.host, role = %self.role, "server host is back");
        }
        if self.role == Role::Primary && !self.is_fenced() {
            self.set_rotation(true, "answering again");
        }
    }

    /// A replica's replay position and lag after a check; `eligible` says whether it is
    /// within the limits.
    pub fn report_lag(&self, replay_lsn: u64, lag: Lag, eligible: bool, why: &str) {
        self.replay_lsn.store(replay_lsn, Ordering::Relaxed);
        *self.lag.lock().unwrap_or_else(|e| e.into_inner()) = Some(lag);
        self.set_rotation(eligible, why);
    }

    /// Takes the host out of rotation without banning it (e.g. a "replica" not in recovery).
    pub fn set_rotation(&self, eligible: bool, why: &str) {
        let was = self.in_rotation.swap(eligible, Ordering::Relaxed);
        if was != eligible {
            if eligible {
                info!(shard = %self.shard, host = %self.host, role = %self.role, reason = why, "host joins the read rotation");
                self.count_transition("in");
            } else {
                warn!(shard = %self.shard, host = %self.host, role = %self.role, reason = why, "host leaves the read rotation");
                self.count_transition("out");
            }
        }
    }

    fn count_transition(&self, to: &'static str) {
        metrics::counter!("shardgate_replica_transitions_total",
            "shard" => self.shard.clone(), "host" => self.host.to_string(), "to" => to)
        .increment(1);
    }

    /// Counts a query starting on this host; the guard counts it finished when dropped.
    pub fn start_query(self: &Arc<Self>) -> QueryGuard {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        QueryGuard {
            host: Arc::clone(self),
        }
    }

    pub fn snapshot(&self) -> HostSnapshot {
        let banned_until = self.banned_until_ms.load(Ordering::Relaxed);
        let now = now_ms();
        let lag = *self.lag.lock().unwrap_or_else(|e| e.into_inner());
        let in_rotation = self.in_rotation();
        let state = if !self.checked.load(Ordering::Relaxed) {
            "unknown"
        } else if !self.is_up() {
            "down"
        } else if !in_rotation {
            "lagging"
        } else {
            "ok"
        };
        HostSnapshot {
            shard: self.shard.clone(),
            host: self.host.clone(),
            role: self.role,
            state,
            in_rotation,
            lag,
            replay_lsn: (self.role == Role::Replica && lag.is_some()).then(|| self.replay_lsn()),
            queries: self.queries.load(Ordering::Relaxed),
            outstanding: self.outstanding(),
            banned_for: (banned_until > now).then(|| Duration::from_millis(banned_until - now)),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            in_recovery: match self.discovered.load(Ordering::Relaxed) {
                PRIMARY => Some(false),
                STANDBY => Some(true),
                _ => None,
            },
            timeline: Some(self.timeline()).filter(|t| *t != 0),
            fenced: self.is_fenced(),
            writer: false,
        }
    }
}

/// A query running on a host (see [`HostHealth::start_query`]).
#[derive(Debug)]
pub struct QueryGuard {
    host: Arc<HostHealth>,
}

impl QueryGuard {
    pub fn host(&self) -> &Arc<HostHealth> {
        &self.host
    }
}

impl Drop for QueryGuard {
    fn drop(&mut self) {
        self.host.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Which server of a shard serves a unit of work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostChoice {
    Primary,
    /// Index into the shard's replicas.
    Replica(usize),
}

/// A shard's hosts, which of them takes writes, and the writer's WAL positions over time (to
/// tell how long ago it first reached a position a replica has not replayed yet).
#[derive(Debug)]
pub struct ShardHealth {
    pub name: String,
    /// The primary the configuration (the shard map) names.
    pub primary: Arc<HostHealth>,
    pub replicas: Vec<Arc<HostHealth>>,
    pub(crate) wal_history: Mutex<WalHistory>,
    next: AtomicUsize,
    /// Which host takes writes: 0 the configured primary, `i + 1` `replicas[i]` (promoted).
    pub(crate) writer: AtomicUsize,
    /// The writer's timeline when last seen as a primary (0: unknown).
    pub(crate) writer_timeline: AtomicU32,
    /// Failovers followed since this state was built (or carried over).
    pub(crate) failovers: AtomicU64,
    /// Two promoted hosts on one timeline was logged (once per occurrence).
    pub(crate) ambiguous_logged: AtomicBool,
}

impl ShardHealth {
    pub(crate) fn new(name: &str, primary: &Host, replicas: &[Host]) -> ShardHealth {
        ShardHealth {
            name: name.to_owned(),
            primary: Arc::new(HostHealth::new(name, primary, Role::Primary)),
            replicas: replicas
                .iter()
                .map(|h| Arc::new(HostHealth::new(name, h, Role::Replica)))
                .collect(),
            wal_history: Mutex::new(WalHistory::default()),
            next: AtomicUsize::new(0),
            writer: AtomicUsize::new(0),
            writer_timeline: AtomicU32::new(0),
            failovers: AtomicU64::new(0),
            ambiguous_logged: AtomicBool::new(false),
        }
    }

    /// `Primary` is the shard's writer: the configured primary until a failover.
    pub fn host(&self, choice: HostChoice) -> Option<&Arc<HostHealth>> {
        match choice {
            HostChoice::Primary => Some(self.writer()),
            HostChoice::Replica(i) => self.replicas.get(i),
        }
    }

    /// The host for a read: among replicas in rotation that have replayed `min_lsn` (and the
    /// primary when `include_primary`), the one running the fewest queries, round-robin on
    /// ties. `skip` lists hosts already tried for this read. `None`: no host is eligible.
    pub fn pick_read(
        &self,
        min_lsn: u64,
        include_primary: bool,
        skip: &[HostChoice],
    ) -> Option<HostChoice> {
        let n = self.replicas.len() + usize::from(include_primary);
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(u64, HostChoice)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let (choice, host) = match self.replicas.get(i) {
                Some(h) => (HostChoice::Replica(i), h),
                None => (HostChoice::Primary, self.writer()),
            };
            // The writer serves reads while it answers (a promoted one is not "in rotation":
            // that is for standbys).
            let eligible = match choice {
                HostChoice::Primary => host.is_up() && !host.is_banned(),
                HostChoice::Replica(_) => host.in_rotation(),
            };
            if skip.contains(&choice) || !eligible {
                continue;
            }
            if choice != HostChoice::Primary && host.replay_lsn() < min_lsn {
                continue;
            }
            let load = host.outstanding();
            if best.is_none_or(|(b, _)| load < b) {
                best = Some((load, choice));
            }
        }
        best.map(|(_, c)| c)
    }

    /// Records the primary's current WAL position (at a check).
    pub fn record_primary_lsn(&self, lsn: u64) {
        self.wal_history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(Instant::now(), lsn);
    }

    /// The lag of a replica that replayed up to `replay_lsn`.
    pub fn lag_of(&self, replay_lsn: u64) -> Lag {
        self.wal_history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lag(Instant::now(), replay_lsn)
    }
}

/// The primary's WAL positions, each with the time it was first seen (one entry per change).
#[derive(Debug, Default)]
pub(crate) struct WalHistory {
    entries: std::collections::VecDeque<(Instant, u64)>,
}

/// Entries kept: at one check a second, over an hour of a busy primary.
const WAL_HISTORY_LEN: usize = 4096;

impl WalHistory {
    pub(crate) fn record(&mut self, at: Instant, lsn: u64) {
        if self.entries.back().is_some_and(|&(_, last)| last >= lsn) {
            return;
        }
        if self.entries.len() == WAL_HISTORY_LEN {
            self.entries.pop_front();
        }
        self.entries.push_back((at, lsn));
    }

    /// Lag in bytes (behind the primary's latest position) and seconds (since the primary
    /// was first seen past `replay_lsn`). A replica that has replayed everything the primary
    /// wrote lags 0 s however long the primary has been idle.
    fn lag(&self, now: Instant, replay_lsn: u64) -> Lag {
        let Some(&(_, latest)) = self.entries.back() else {
            return Lag::default();
        };
        if replay_lsn >= latest {
            return Lag::default();
        }
        let ahead_since = self
            .entries
            .iter()
            .find(|&&(_, lsn)| lsn > replay_lsn)
            .map_or(now, |&(t, _)| t);
        Lag {
            seconds: now.saturating_duration_since(ahead_since).as_secs_f64(),
            bytes: latest - replay_lsn,
        }
    }
}

/// Every shard's hosts, in the router's shard order.
#[derive(Debug)]
pub struct Health {
    pub shards: Vec<Arc<ShardHealth>>,
}

impl Health {
    pub fn from_config(config: &Config) -> Arc<Health> {
        Health::from_config_after(config, None)
    }

    /// As `from_config`, keeping what `previous` learnt of each shard whose hosts did not
    /// change (a failover followed, fenced hosts): only a new hosts list for a shard (the
    /// operator's word) resets it. See `failover`.
    pub fn from_config_after(config: &Config, previous: Option<&Health>) -> Arc<Health> {
        let shards = config
            .shards
            .iter()
            .map(|s| {
                let shard = ShardHealth::new(&s.name, &s.primary, &s.replicas);
                if let Some(old) = previous.and_then(|p| p.shards.iter().find(|o| o.name == s.name))
                {
                    shard.carry_over(old);
                }
                Arc::new(shard)
            })
            .collect();
        Arc::new(Health { shards })
    }

    /// Moves with every failover this state follows (with the proxy's reload generation it
    /// tells when cached pools may point at a former writer).
    pub fn role_epoch(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.failovers.load(Ordering::Relaxed))
            .sum()
    }

    pub fn shard(&self, index: usize) -> Option<&Arc<ShardHealth>> {
        self.shards.get(index)
    }

    pub fn snapshot(&self) -> Vec<HostSnapshot> {
        self.shards
            .iter()
            .flat_map(|s| {
                let writer = s.writer_index();
                s.hosts().enumerate().map(move |(i, h)| HostSnapshot {
                    writer: i == writer,
                    ..h.snapshot()
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(replicas: usize) -> ShardHealth {
        let host = |port| Host {
            host: "127.0.0.1".into(),
            port,
            ..Default::default()
        };
        let replicas: Vec<Host> = (0..replicas).map(|i| host(10 + i as u16)).collect();
        ShardHealth::new("s0", &host(1), &replicas)
    }

    fn fresh(h: &HostHealth, lsn: u64) {
        h.report_up();
        h.report_lag(lsn, Lag::default(), true, "test");
    }

    #[test]
    fn replicas_join_after_a_good_check_and_balance_by_load() {
        let s = shard(2);
        assert_eq!(s.pick_read(0, false, &[]), None, "unchecked replicas");
        assert_eq!(s.pick_read(0, true, &[]), Some(HostChoice::Primary));
        fresh(&s.replicas[0], 100);
        fresh(&s.replicas[1], 100);
        let picks: Vec<_> = (0..4).map(|_| s.pick_read(0, false, &[])).collect();
        assert!(picks.contains(&Some(HostChoice::Replica(0))));
        assert!(picks.contains(&Some(HostChoice::Replica(1))), "ties rotate");
        let _busy = s.replicas[0].start_query();
        for _ in 0..4 {
            assert_eq!(s.pick_read(0, false, &[]), Some(HostChoice::Replica(1)));
        }
        assert_eq!(
            s.pick_read(0, false, &[HostChoice::Replica(1)]),
            Some(HostChoice::Replica(0))
        );
    }

    #[test]
    fn read_your_writes_needs_the_replay_position() {
        let s = shard(2);
        fresh(&s.replicas[0], 100);
        fresh(&s.replicas[1], 200);
        for _ in 0..4 {
            assert_eq!(s.pick_read(150, false, &[]), Some(HostChoice::Replica(1)));
        }
        assert_eq!(s.pick_read(300, false, &[]), None);
        assert_eq!(s.pick_read(300, true, &[]), Some(HostChoice::Primary));
    }

    #[test]
    fn failures_ban_with_backoff_and_recover() {
        let s = shard(1);
        let r = &s.replicas[0];
        fresh(r, 1);
        let ms = Duration::from_millis;
        r.report_failure(ms(100), ms(300), "refused");
        assert!(r.is_banned() && !r.in_rotation());
        assert_eq!(s.pick_read(0, false, &[]), None);
        r.report_failure(ms(100), ms(300), "refused");
        r.report_failure(ms(100), ms(300), "refused");
        let left = r.snapshot().banned_for.unwrap_or_default();
        assert!(left > ms(200) && left <= ms(300), "capped at max: {left:?}");
        assert_eq!(r.snapshot().state, "down");
        fresh(r, 1);
        assert!(!r.is_banned());
        assert_eq!(s.pick_read(0, false, &[]), Some(HostChoice::Replica(0)));
    }

    #[test]
    fn lag_is_zero_when_caught_up_however_idle_the_primary() {
        let mut h = WalHistory::default();
        let t0 = Instant::now();
        h.record(t0, 100);
        h.record(t0 + Duration::from_secs(1), 100);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(h.lag(later, 100), Lag::default());
        h.record(t0 + Duration::from_secs(10), 150);
        h.record(t0 + Duration::from_secs(12), 180);
        let lag = h.lag(t0 + Duration::from_secs(13), 120);
        assert_eq!(lag.bytes, 60);
        assert!((lag.seconds - 3.0).abs() < 1e-6, "{lag:?}");
        assert_eq!(h.lag(t0 + Duration::from_secs(13), 180), Lag::default());
    }
}
