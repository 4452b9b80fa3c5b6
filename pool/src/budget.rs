//! Per-host connection budgets: all pools of this process on one server together may hold at
//! most `floor((max_connections − host_reserve) × host_share)` connections, where
//! `max_connections` is what the server itself reports (read by the monitor). The reserve keeps
//! room for superusers and maintenance; the share lets a fleet of sidecars split one server.
//!
//! Two counts per host:
//! - the pools' *targets* (the permits each may hand out): growth claims budget, a shrink gives
//!   it back. This is how the pools share a host: one grows only into budget the others left.
//! - the *connections* themselves, open or being opened ([`HostConnections`]): a pool
//!   reserves a slot before it connects and gives it back once the connection is closed (its
//!   socket dropped), so together they never hold more than the budget, not even for a moment.
//!   (The server may list a closed connection's backend a little longer, until it has exited.)
//!   Targets alone did not ensure that: a shrinking pool gives budget back at once, while the
//!   connection above its new target closes only when it is idle (a checked-out one when it is
//!   returned), and a removed pool's checked-out connections outlive it; another pool could
//!   grow into that budget and connect before then.
//!
//! The connection limit is the budget, or the sum of the targets when that is higher: pools
//! keep their floors (`min_size`) whatever the budget, and after the budget went down they
//! shrink to it one step per round (connections above the new budget close as they come back
//! rather than being refused a replacement meanwhile).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shardgate_config::Host;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tracing::{debug, info};

/// How a host's budget follows from its `max_connections` (`pool.host_reserve`,
/// `pool.host_share`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HostPolicy {
    /// Connections left free on every server.
    pub reserve: u32,
    /// Share (0..=1) of what is left that this process may use.
    pub share: f64,
}

impl HostPolicy {
    pub fn from_config(pool: &shardgate_config::Pool) -> Self {
        HostPolicy {
            reserve: pool.host_reserve,
            share: pool.host_share,
        }
    }

    /// `floor((max_connections − reserve) × share)`.
    pub fn budget(&self, max_connections: u32) -> u32 {
        // Validation keeps the share in 0..=1; a NaN that slipped through must not starve
        // every pool, so it counts as the whole server.
        let share = if self.share.is_nan() {
            1.0
        } else {
            self.share.clamp(0.0, 1.0)
        };
        (f64::from(max_connections.saturating_sub(self.reserve)) * share).floor() as u32
    }
}

impl Default for HostPolicy {
    fn default() -> Self {
        Self::from_config(&shardgate_config::Pool::default())
    }
}

#[derive(Default)]
struct HostEntry {
    /// Sum of the targets of this process's pools on the host.
    allocated: u32,
    /// As reported by the server; `None` until the monitor has read it.
    max_connections: Option<u32>,
    /// Set by an operator or a test; wins over the computed budget.
    fixed: Option<u32>,
    /// A refused growth was logged; cleared once a claim is granted in full again.
    limited: bool,
    /// Connections of this process on the host, open or being opened.
    connections: u32,
    /// Connects put off because `connections` was at the limit.
    deferred: u64,
    /// Wakes every connect put off on this host when a connection is gone.
    freed: Arc<Notify>,
}

struct State {
    policy: HostPolicy,
    hosts: HashMap<Host, HostEntry>,
}

impl State {
    fn budget(&self, host: &Host) -> Option<u32> {
        let entry = self.hosts.get(host)?;
        entry
            .fixed
            .or_else(|| entry.max_connections.map(|m| self.policy.budget(m)))
    }
}

/// The budgets of every host this process has pools on. Shared by [`crate::Pools`] (which
/// hands it to each pool) and the monitor (which records `max_connections`).
pub struct HostBudgets {
    state: Mutex<State>,
}

impl Default for HostBudgets {
    fn default() -> Self {
        Self::new(HostPolicy::default())
    }
}

impl std::fmt::Debug for HostBudgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("HostBudgets")
            .field("policy", &state.policy)
            .field("hosts", &state.hosts.len())
            .finish()
    }
}

impl HostBudgets {
    pub fn new(policy: HostPolicy) -> Self {
        HostBudgets {
            state: Mutex::new(State {
                policy,
                hosts: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is one step.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn policy(&self) -> HostPolicy {
        self.lock().policy
    }

    /// A new reserve/share (e.g. on reload). Pools over the new budget shrink on their own.
    pub fn set_policy(&self, policy: HostPolicy) {
        self.lock().policy = policy;
    }

    /// What the server says it allows; called by the monitor after each successful check.
    pub fn record_max_connections(&self, host: &Host, max_connections: u32) {
        let mut state = self.lock();
        let policy = state.policy;
        let entry = state.hosts.entry(host.clone()).or_default();
        if entry.max_connections != Some(max_connections) {
            entry.max_connections = Some(max_connections);
            info!(
                %host,
                max_connections,
                budget = policy.budget(max_connections),
                reserve = policy.reserve,
                share = policy.share,
                "host connection budget"
            );
        }
    }

    /// Fixes a host's budget regardless of `max_connections` (`None` goes back to computing
    /// it).
    pub fn set_budget(&self, host: &Host, budget: Option<u32>) {
        self.lock().hosts.entry(host.clone()).or_default().fixed = budget;
    }

    /// The connections this process may hold on `host`; `None` while unknown (then each
    /// pool's `max_size` is the only limit).
    pub fn budget(&self, host: &Host) -> Option<u32> {
        self.lock().budget(host)
    }

    /// Sum of the targets of the pools on `host`.
    pub fn allocated(&self, host: &Host) -> u32 {
        self.lock().hosts.get(host).map_or(0, |e| e.allocated)
    }

    /// Counts a pool's starting target; never refused, since a pool cannot serve with less
    /// than its floor (a budget smaller than the floors only stops growth).
    pub(crate) fn register(&self, host: &Host, n: u32) {
        let mut state = self.lock();
        let entry = state.hosts.entry(host.clone()).or_default();
        entry.allocated = entry.allocated.saturating_add(n);
    }

    /// Grants up to `want` more connections on `host`; logs once at info when the budget
    /// stops a pool from growing.
    pub(crate) fn claim(&self, host: &Host, want: u32, pool: &str) -> u32 {
        let mut state = self.lock();
        let budget = state.budget(host);
        let entry = state.hosts.entry(host.clone()).or_default();
        let room = budget.map_or(want, |b| b.saturating_sub(entry.allocated));
        let granted = want.min(room);
        entry.allocated = entry.allocated.saturating_add(granted);
        if granted == want {
            entry.limited = false;
        } else if !entry.limited {
            entry.limited = true;
            info!(
                %host,
                pool,
                budget = budget.unwrap_or_default(),
                allocated = entry.allocated,
                "host connection budget reached: pools on this host stop growing"
            );
        }
        granted
    }

    /// Gives back `n` connections a pool no longer targets.
    pub(crate) fn release(&self, host: &Host, n: u32) {
        if let Some(entry) = self.lock().hosts.get_mut(host) {
            entry.allocated = entry.allocated.saturating_sub(n);
        }
    }

    /// Connections of this process's pools on `host`, open or being opened: what the budget
    /// limits.
    pub fn connections(&self, host: &Host) -> u32 {
        self.lock().hosts.get(host).map_or(0, |e| e.connections)
    }

    /// Connects on `host` put off (until a connection there closed) because the pools held
    /// as many connections as its budget allows; a total since start.
    pub fn deferred_connects(&self, host: &Host) -> u64 {
        self.lock().hosts.get(host).map_or(0, |e| e.deferred)
    }

    /// A pool's handle for counting its connections on `host`.
    pub(crate) fn connections_on(self: &Arc<Self>, host: &Host) -> HostConnections {
        let freed = Arc::clone(&self.lock().hosts.entry(host.clone()).or_default().freed);
        HostConnections {
            budgets: Arc::clone(self),
            host: host.clone(),
            freed,
        }
    }

    /// Counts one more connection on `host` if it stays within the limit (the budget, or the
    /// targets' sum if higher; no limit while the budget is unknown).
    fn try_reserve(&self, host: &Host) -> bool {
        let mut state = self.lock();
        let budget = state.budget(host);
        let entry = state.hosts.entry(host.clone()).or_default();
        let limit = budget.map(|b| b.max(entry.allocated));
        if limit.is_some_and(|l| entry.connections >= l) {
            entry.deferred += 1;
            debug!(%host, connections = entry.connections, limit = limit.unwrap_or_default(),
                "connect put off: the host's connection budget is in use");
            return false;
        }
        entry.connections += 1;
        true
    }

    fn release_connections(&self, host: &Host, n: u32) {
        if let Some(entry) = self.lock().hosts.get_mut(host) {
            entry.connections = entry.connections.saturating_sub(n);
        }
    }

    /// How far the pools on `host` are over its budget (after the budget went down).
    pub(crate) fn excess(&self, host: &Host) -> u32 {
        let state = self.lock();
        match (state.budget(host), state.hosts.get(host)) {
            (Some(budget), Some(entry)) => entry.allocated.saturating_sub(budget),
            _ => 0,
        }
    }
}

/// One pool's count of its connections on its host (see the module docs). The store reserves
/// a slot before each connect and releases it once that connection is closed, or the connect
/// failed.
pub(crate) struct HostConnections {
    budgets: Arc<HostBudgets>,
    host: Host,
    freed: Arc<Notify>,
}

impl HostConnections {
    /// A slot for one more connection; false if the host's connections are at the limit (then
    /// wait on [`HostConnections::freed`], enabled before trying, and try again).
    pub(crate) fn try_reserve(&self) -> bool {
        self.budgets.try_reserve(&self.host)
    }

    /// Gives back the slots of `n` connections that are closed (dropped) or never opened.
    pub(crate) fn release(&self, n: u32) {
        if n > 0 {
            self.budgets.release_connections(&self.host, n);
            self.freed.notify_waiters();
        }
    }

    /// Resolves when a slot on the host is released after this was enabled.
    pub(crate) fn freed(&self) -> Notified<'_> {
        self.freed.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host {
            host: "db1".into(),
            port: 5432,
            ..Default::default()
        }
    }

    #[test]
    fn budget_is_max_connections_minus_reserve_times_share() {
        let p = HostPolicy {
            reserve: 5,
            share: 0.25,
        };
        assert_eq!(p.budget(40), 8); // floor(35 × 0.25 = 8.75)
        assert_eq!(p.budget(3), 0);
        let whole = HostPolicy {
            reserve: 5,
            share: 1.0,
        };
        assert_eq!(whole.budget(100), 95);
        let nan = HostPolicy {
            reserve: 0,
            share: f64::NAN,
        };
        assert_eq!(nan.budget(10), 10);
    }

    #[test]
    fn claims_stop_at_the_budget_and_releases_make_room() {
        let b = HostBudgets::new(HostPolicy {
            reserve: 5,
            share: 0.5,
        });
        let h = host();
        b.register(&h, 2);
        assert_eq!(b.budget(&h), None);
        assert_eq!(b.claim(&h, 50, "p"), 50, "unknown budget: no limit here");
        b.release(&h, 50);
        b.record_max_connections(&h, 25); // (25 − 5) × 0.5 = 10
        assert_eq!(b.budget(&h), Some(10));
        assert_eq!(b.claim(&h, 5, "p"), 5);
        assert_eq!(b.claim(&h, 5, "p"), 3);
        assert_eq!(b.claim(&h, 1, "p"), 0);
        assert_eq!(b.allocated(&h), 10);
        assert_eq!(b.excess(&h), 0);
        b.release(&h, 4);
        assert_eq!(b.claim(&h, 1, "p"), 1);

        b.set_budget(&h, Some(4));
        assert_eq!(b.excess(&h), 3);
        b.set_budget(&h, None);
        assert_eq!(b.budget(&h), Some(10));
        b.set_policy(HostPolicy {
            reserve: 5,
            share: 1.0,
        });
        assert_eq!(b.budget(&h), Some(20));
    }

    #[test]
    fn connection_slots_stop_at_the_budget_or_the_targets_sum() {
        let b = Arc::new(HostBudgets::default());
        let h = host();
        let slots = b.connections_on(&h);
        // Unknown budget: counted, never refused.
        assert!((0..5).all(|_| slots.try_reserve()));
        assert_eq!(b.connections(&h), 5);
        slots.release(5);

        b.register(&h, 2);
        b.set_budget(&h, Some(3));
        assert!((0..3).all(|_| slots.try_reserve()));
        assert!(!slots.try_reserve(), "at the budget");
        assert_eq!((b.connections(&h), b.deferred_connects(&h)), (3, 1));
        slots.release(1);
        assert!(slots.try_reserve(), "a closed connection's slot");

        // Floors above the budget: the targets' sum is the limit.
        b.set_budget(&h, Some(1));
        b.register(&h, 2);
        assert!(slots.try_reserve());
        assert!(!slots.try_reserve());
        assert_eq!(b.connections(&h), 4);
    }

    #[tokio::test]
    async fn a_released_slot_wakes_who_waits_for_one() {
        let b = Arc::new(HostBudgets::default());
        let h = host();
        b.set_budget(&h, Some(1));
        let slots = b.connections_on(&h);
        assert!(slots.try_reserve());
        let freed = slots.freed();
        let mut freed = std::pin::pin!(freed);
        freed.as_mut().enable();
        assert!(!slots.try_reserve());
        slots.release(1);
        freed.await;
        assert!(slots.try_reserve());
    }
}
