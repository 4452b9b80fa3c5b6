//! The sizing task each pool runs: every [`SIZING_INTERVAL`], and at once when a checkout has
//! to wait, it moves the pool's target (within its bounds and its host's budget), closes idle
//! connections above the target and past their lifetime, and keeps `min_size` connections
//! open.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::debug;

use crate::pool::Inner;
use crate::sizing::{Gate, Sizer, Step};
use crate::store::Opened;

/// How often a pool reconsiders its size.
const SIZING_INTERVAL: Duration = Duration::from_millis(250);
/// Shortest gap between two rounds woken by waiting checkouts, so a queue of clients cannot
/// keep the sizing task spinning while the pool is at its ceiling or budget.
const WAKE_GAP: Duration = Duration::from_millis(25);

impl Inner {
    /// One sizing round: move the target, close idle connections above it, keep `min_size`.
    async fn resize(&self, sizer: &mut Sizer, warm: &mut WarmUp) {
        let gate = &self.gate;
        let host = &self.key.host;
        let (demand, held) = gate.take_peaks();
        let from = gate.target();
        let over_budget = self.budgets.excess(host) > 0;
        let mut give_back = 0;
        match sizer.decide(Instant::now(), from, demand, held, over_budget) {
            Step::Grow(n) => {
                let granted = self.budgets.claim(host, n, &self.name);
                if granted > 0 {
                    gate.grow(granted);
                    gate.grown.fetch_add(1, Ordering::Relaxed);
                    debug!(pool = %self.name, shard = %self.key.shard, %host, from,
                        to = from + granted, demand, "pool grew");
                }
            }
            Step::Shrink(n) => {
                gate.shrink(n);
                give_back = n;
                gate.shrunk.fetch_add(1, Ordering::Relaxed);
                debug!(pool = %self.name, shard = %self.key.shard, %host, from,
                    to = gate.target(), held, over_budget, "pool shrank");
            }
            Step::Hold => {}
        }
        gate.settle();
        self.close_idle_above_target();
        // After the idle connections above the new target closed, so another pool's growth
        // into this budget is not put off by them (a checked-out one above the target still
        // holds its host slot until it is returned and closed).
        if give_back > 0 {
            self.budgets.release(host, give_back);
        }
        self.store.sweep_idle(Instant::now());
        self.keep_min_size(warm).await;
    }

    /// Closes idle connections (least recently used first) while the pool holds more than
    /// its target (plus the checked-out ones already due to close on return).
    fn close_idle_above_target(&self) {
        let allowed = self.gate.target().saturating_add(self.gate.owed());
        let closed = self.store.close_idle_above(allowed);
        if closed > 0 {
            debug!(pool = %self.name, shard = %self.key.shard, host = %self.key.host, closed,
                "closed idle connections above the target");
        }
    }

    /// Opens connections until `min_size` are open, under permits so that clients checking
    /// out meanwhile cannot push the pool past its target. Backs off after a failure (the
    /// error was logged and sent to any checkout waiting).
    async fn keep_min_size(&self, warm: &mut WarmUp) {
        let min = self.settings.min_size.min(self.gate.target());
        let counts = self.store.counts();
        let have = counts.open.saturating_add(counts.connecting);
        if min == 0 || have >= min || Instant::now() < warm.next {
            return;
        }
        let permits: Vec<_> = (0..min - have)
            .map_while(|_| self.gate.try_internal())
            .collect();
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..permits.len() {
            let store = Arc::clone(&self.store);
            opening.spawn(async move { store.open_one().await });
        }
        // No room (the host's budget is in use) is not a failure: the next round tries again.
        let mut failed = false;
        while let Some(done) = opening.join_next().await {
            failed |= done.unwrap_or(Opened::Failed) == Opened::Failed;
        }
        // The new connections are idle before the permits let checkouts in.
        drop(permits);
        if failed {
            warm.backoff =
                (warm.backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
            warm.next = Instant::now() + warm.backoff;
        } else {
            warm.backoff = Duration::ZERO;
        }
    }
}

/// When the next `min_size` warm-up may run.
struct WarmUp {
    next: Instant,
    backoff: Duration,
}

/// Runs sizing rounds every [`SIZING_INTERVAL`] and whenever a checkout has to wait, until
/// the pool is dropped.
pub(crate) fn spawn_sizer(pool: Weak<Inner>, gate: Arc<Gate>, mut sizer: Sizer) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SIZING_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warm = WarmUp {
            next: Instant::now(),
            backoff: Duration::ZERO,
        };
        loop {
            let woken = tokio::select! {
                _ = tick.tick() => false,
                _ = gate.wake.notified() => true,
            };
            let Some(inner) = pool.upgrade() else {
                return;
            };
            inner.resize(&mut sizer, &mut warm).await;
            drop(inner);
            if woken {
                tokio::time::sleep(WAKE_GAP).await;
            }
        }
    });
}
