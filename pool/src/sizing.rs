//! Self-sizing of a pool under its fixed ceiling (`max_size`).
//!
//! A [`Gate`] holds a semaphore whose permits are the pool's current *target* size: a checkout
//! takes a permit before it takes a connection, and the permit travels with the connection
//! until it is returned. Growing adds permits; shrinking forgets an available permit or, when
//! all are out, one of the next permits to come back (its connection is then closed, as it is
//! above the target). The connection store never opens more than `max_size`, the ceiling.
//!
//! [`Sizer`] decides each round from the peaks since the last round: grow by a quarter (at
//! least one) when demand (permits held plus checkouts waiting for one) went above
//! `scale_up_at` × target; shrink by one per round toward `min_size` once the connections in
//! use have stayed under `scale_down_at` × target for `idle_timeout`. The band between the two
//! keeps a pool from flapping.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Connections a checkout may hold: the pool's target, as semaphore permits, and the
/// counters the sizing rounds read.
pub(crate) struct Gate {
    sem: Arc<Semaphore>,
    /// The pool's current size. Only the sizing task changes it.
    target: AtomicU32,
    /// Permits to forget as they come back (shrinks that found every permit checked out).
    /// Invariant: permits in existence (available + held) = target + owed.
    owed: AtomicU32,
    /// Permits held by checkouts and the connections they got.
    held: AtomicU32,
    /// Checkouts waiting for a permit.
    permit_waiters: AtomicU32,
    /// Checkouts in progress (no connection yet): the admin API's "waiting".
    checking_out: AtomicU32,
    /// Highest held + permit_waiters, and highest held, since the last sizing round.
    peak_demand: AtomicU32,
    peak_held: AtomicU32,
    pub(crate) grown: AtomicU64,
    pub(crate) shrunk: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    /// Wakes the sizing task when a checkout has to wait, so growth does not wait for a tick.
    pub(crate) wake: Notify,
}

impl Gate {
    pub(crate) fn new(target: u32) -> Arc<Gate> {
        Arc::new(Gate {
            sem: Arc::new(Semaphore::new(target as usize)),
            target: AtomicU32::new(target),
            owed: AtomicU32::new(0),
            held: AtomicU32::new(0),
            permit_waiters: AtomicU32::new(0),
            checking_out: AtomicU32::new(0),
            peak_demand: AtomicU32::new(0),
            peak_held: AtomicU32::new(0),
            grown: AtomicU64::new(0),
            shrunk: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            wake: Notify::new(),
        })
    }

    pub(crate) fn target(&self) -> u32 {
        self.target.load(Ordering::Acquire)
    }

    pub(crate) fn owed(&self) -> u32 {
        self.owed.load(Ordering::Acquire)
    }

    pub(crate) fn waiting(&self) -> u64 {
        u64::from(self.checking_out.load(Ordering::Relaxed))
    }

    /// Counts a checkout as waiting until the guard drops.
    pub(crate) fn checking_out(&self) -> Counted<'_> {
        Counted::new(&self.checking_out)
    }

    fn note_demand(&self) {
        let held = self.held.load(Ordering::Relaxed);
        let waiters = self.permit_waiters.load(Ordering::Relaxed);
        // Read first: in a steady state the peaks do not move, and a load leaves the cache
        // line shared where fetch_max would always write it.
        raise(&self.peak_demand, held.saturating_add(waiters));
        raise(&self.peak_held, held);
    }

    /// (demand, held) peaks since the last call; starts the next window at the current values.
    pub(crate) fn take_peaks(&self) -> (u32, u32) {
        let held = self.held.load(Ordering::Relaxed);
        let waiters = self.permit_waiters.load(Ordering::Relaxed);
        let demand = self
            .peak_demand
            .swap(held.saturating_add(waiters), Ordering::Relaxed);
        let peak_held = self.peak_held.swap(held, Ordering::Relaxed);
        (
            demand.max(held.saturating_add(waiters)),
            peak_held.max(held),
        )
    }

    /// A permit for a client checkout if one is free now: no waiting, no timer.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        // Forgotten here and added back when the `Permit` drops (unless a shrink takes it):
        // no `OwnedSemaphorePermit`, so no second reference count to move on the hot path.
        self.sem.try_acquire().ok()?.forget();
        Some(self.held())
    }

    /// A permit for a client checkout, waiting at most until `deadline`; `None` on timeout.
    pub(crate) async fn acquire(self: &Arc<Self>, deadline: Instant) -> Option<Permit> {
        if let Some(permit) = self.try_acquire() {
            return Some(permit);
        }
        {
            let _waiting = Counted::new(&self.permit_waiters);
            self.note_demand();
            self.wake.notify_one();
            tokio::time::timeout_at(deadline.into(), self.sem.acquire())
                .await
                .ok()?
                // The semaphore is never closed.
                .ok()?
                .forget();
        }
        Some(self.held())
    }

    /// Counts a permit just taken from the semaphore as held by a checkout.
    fn held(self: &Arc<Self>) -> Permit {
        self.held.fetch_add(1, Ordering::AcqRel);
        self.note_demand();
        Permit {
            gate: Arc::clone(self),
            retire: false,
        }
    }

    /// A permit for the pool's own use (opening `min_size` connections), not counted as
    /// demand; `None` if none is free.
    pub(crate) fn try_internal(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.sem).try_acquire_owned().ok()
    }

    /// Raises the target by `n`: first cancels forgets still owed, then adds permits.
    pub(crate) fn grow(&self, n: u32) {
        self.target.fetch_add(n, Ordering::AcqRel);
        let mut paid = 0;
        while paid < n && self.take_owed() {
            paid += 1;
        }
        self.sem.add_permits((n - paid) as usize);
    }

    /// Lowers the target by `n`, forgetting available permits or owing the rest.
    pub(crate) fn shrink(&self, n: u32) {
        let n = n.min(self.target());
        self.target.fetch_sub(n, Ordering::AcqRel);
        let forgotten = self.sem.forget_permits(n as usize) as u32;
        self.owed.fetch_add(n - forgotten, Ordering::AcqRel);
    }

    /// Pays owed forgets from permits that became available without passing through a
    /// returned connection (a checkout that failed, the min_size warm-up).
    pub(crate) fn settle(&self) {
        while self.owed() > 0 {
            if self.sem.forget_permits(1) == 0 {
                return;
            }
            if !self.take_owed() {
                // Grown in between: the forgotten permit was needed after all.
                self.sem.add_permits(1);
                return;
            }
        }
    }

    fn take_owed(&self) -> bool {
        self.owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| o.checked_sub(1))
            .is_ok()
    }
}

/// A checkout's permit; returns to the semaphore on drop unless a shrink claimed it.
pub(crate) struct Permit {
    gate: Arc<Gate>,
    retire: bool,
}

impl Permit {
    /// True if a pending shrink takes this permit: the connection it covered is above the
    /// target and must be closed rather than returned idle.
    pub(crate) fn retire_if_owed(&mut self) -> bool {
        if !self.retire && self.gate.take_owed() {
            self.retire = true;
        }
        self.retire
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.held.fetch_sub(1, Ordering::AcqRel);
        if !self.retire && !self.gate.take_owed() {
            self.gate.sem.add_permits(1);
        }
    }
}

/// Raises `peak` to `value` if it is higher.
fn raise(peak: &AtomicU32, value: u32) {
    if value > peak.load(Ordering::Relaxed) {
        peak.fetch_max(value, Ordering::Relaxed);
    }
}

/// Increments a counter for as long as it lives.
pub(crate) struct Counted<'a>(&'a AtomicU32);

impl<'a> Counted<'a> {
    fn new(counter: &'a AtomicU32) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Counted(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a sizing round does to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Grow(u32),
    Shrink(u32),
    Hold,
}

/// The sizing policy of one pool and what it remembers between rounds.
pub(crate) struct Sizer {
    /// Smallest target (`min_size`, at least 1) and largest (`max_size`).
    pub(crate) floor: u32,
    pub(crate) ceiling: u32,
    pub(crate) scale_up_at: f64,
    pub(crate) scale_down_at: f64,
    /// How long use must stay under `scale_down_at` before shrinking; zero never shrinks.
    pub(crate) idle_timeout: Duration,
    /// Since when use has been under `scale_down_at`.
    low_since: Option<Instant>,
}

impl Sizer {
    pub(crate) fn new(
        floor: u32,
        ceiling: u32,
        scale_up_at: f64,
        scale_down_at: f64,
        idle_timeout: Duration,
    ) -> Sizer {
        Sizer {
            floor,
            ceiling,
            scale_up_at,
            scale_down_at,
            idle_timeout,
            low_since: None,
        }
    }

    /// One round: `demand` and `held` are the peaks since the last round; `over_budget` says
    /// the host's pools together hold more than its budget (which went down).
    pub(crate) fn decide(
        &mut self,
        now: Instant,
        target: u32,
        demand: u32,
        held: u32,
        over_budget: bool,
    ) -> Step {
        let t = f64::from(target.max(1));
        if over_budget && target > self.floor {
            self.low_since = None;
            return Step::Shrink(1);
        }
        if f64::from(demand) > self.scale_up_at * t {
            self.low_since = None;
            if target >= self.ceiling || over_budget {
                return Step::Hold;
            }
            let step = target.div_ceil(4).max(1).min(self.ceiling - target);
            return Step::Grow(step);
        }
        if target > self.floor
            && !self.idle_timeout.is_zero()
            && f64::from(held) < self.scale_down_at * t
        {
            // The low period is not restarted by a shrink: once use has been low for
            // idle_timeout, the pool steps down one connection per round until use is back
            // inside the band or it reaches min_size.
            let since = *self.low_since.get_or_insert(now);
            if now.duration_since(since) >= self.idle_timeout {
                return Step::Shrink(1);
            }
            return Step::Hold;
        }
        self.low_since = None;
        Step::Hold
    }
}

/// `base` moved by up to ±10% according to `draw` (uniform over u64), so connections opened
/// together — a fleet started at once — do not all reconnect at the same moment.
pub(crate) fn jittered(base: Duration, draw: u64) -> Duration {
    let unit = draw as f64 / u64::MAX as f64; // 0..=1
    let factor = 1.0 + 0.2 * (unit - 0.5);
    Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_a_quarter_and_shrinks_one_per_round_after_idle_timeout() {
        let idle = Duration::from_millis(300);
        let mut s = Sizer::new(2, 10, 0.8, 0.2, idle);
        let t0 = Instant::now();
        assert_eq!(s.decide(t0, 2, 2, 2, false), Step::Grow(1));
        assert_eq!(s.decide(t0, 5, 30, 5, false), Step::Grow(2));
        assert_eq!(
            s.decide(t0, 9, 30, 9, false),
            Step::Grow(1),
            "capped at max"
        );
        assert_eq!(s.decide(t0, 10, 30, 10, false), Step::Hold);
        assert_eq!(
            s.decide(t0, 10, 8, 8, false),
            Step::Hold,
            "80% is not above"
        );
        assert_eq!(s.decide(t0, 10, 5, 5, false), Step::Hold, "inside the band");
        // Low use: nothing until idle_timeout has passed, then one per round.
        assert_eq!(s.decide(t0, 10, 1, 1, false), Step::Hold);
        let later = t0 + idle;
        assert_eq!(s.decide(later, 10, 1, 1, false), Step::Shrink(1));
        assert_eq!(s.decide(later, 9, 1, 1, false), Step::Shrink(1));
        // Use back in the band restarts the clock.
        assert_eq!(s.decide(later, 8, 2, 2, false), Step::Hold);
        assert_eq!(s.decide(later, 8, 1, 1, false), Step::Hold);
        assert_eq!(s.decide(later + idle, 8, 0, 0, false), Step::Shrink(1));
        assert_eq!(s.decide(later + idle, 2, 0, 0, false), Step::Hold, "at min");
    }

    #[test]
    fn over_budget_shrinks_and_blocks_growth() {
        let mut s = Sizer::new(1, 10, 0.8, 0.2, Duration::ZERO);
        let now = Instant::now();
        assert_eq!(s.decide(now, 4, 40, 4, true), Step::Shrink(1));
        assert_eq!(s.decide(now, 1, 40, 1, true), Step::Hold);
        assert_eq!(
            s.decide(now, 4, 0, 0, false),
            Step::Hold,
            "zero idle_timeout"
        );
    }

    #[tokio::test]
    async fn shrinking_owes_permits_that_are_checked_out() {
        let gate = Gate::new(2);
        let far = Instant::now() + Duration::from_secs(5);
        let mut a = gate.acquire(far).await.unwrap();
        let b = gate.acquire(far).await.unwrap();
        assert_eq!(gate.take_peaks(), (2, 2));
        gate.shrink(1);
        assert_eq!((gate.target(), gate.owed()), (1, 1));
        assert!(a.retire_if_owed(), "the first one back pays the debt");
        drop(a);
        drop(b);
        assert_eq!(gate.owed(), 0);
        assert_eq!(gate.sem.available_permits(), 1);

        // Growing cancels what is still owed before adding permits.
        let c = gate.acquire(far).await.unwrap();
        gate.shrink(1);
        assert_eq!((gate.target(), gate.owed()), (0, 1));
        gate.grow(3);
        assert_eq!((gate.target(), gate.owed()), (3, 0));
        assert_eq!(gate.sem.available_permits(), 2);
        drop(c);
        assert_eq!(gate.sem.available_permits(), 3);

        // A shrink with permits free forgets them at once.
        gate.shrink(2);
        assert_eq!(
            (gate.target(), gate.owed(), gate.sem.available_permits()),
            (1, 0, 1)
        );
        // Waiting past the deadline gives up.
        let _held = gate.acquire(far).await.unwrap();
        assert!(gate
            .acquire(Instant::now() + Duration::from_millis(20))
            .await
            .is_none());
        assert_eq!(gate.take_peaks().0, 2, "the waiter counted as demand");
    }

    #[test]
    fn settle_pays_owed_permits_from_free_ones() {
        let gate = Gate::new(3);
        let internal = gate.try_internal().unwrap();
        gate.shrink(3);
        assert_eq!(gate.owed(), 1);
        drop(internal);
        gate.settle();
        assert_eq!((gate.owed(), gate.sem.available_permits()), (0, 0));
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_spreads() {
        let base = Duration::from_secs(3600);
        assert_eq!(jittered(base, 0), base.mul_f64(0.9));
        assert_eq!(jittered(base, u64::MAX), base.mul_f64(1.1));
        let hasher = std::hash::RandomState::new();
        let all: Vec<Duration> = (0..10_000u64)
            .map(|i| jittered(base, std::hash::BuildHasher::hash_one(&hasher, i)))
            .collect();
        let (lo, hi) = (base.mul_f64(0.9), base.mul_f64(1.1));
        assert!(all.iter().all(|d| *d >= lo && *d <= hi));
        let min = all.iter().min().copied().unwrap_or_default();
        let max = all.iter().max().copied().unwrap_or_default();
        assert!(
            min < base.mul_f64(0.91) && max > base.mul_f64(1.09),
            "{min:?}..{max:?}"
        );
        assert_eq!(
            jittered(Duration::MAX, u64::MAX),
            Duration::MAX,
            "no overflow panic"
        );
    }
}
