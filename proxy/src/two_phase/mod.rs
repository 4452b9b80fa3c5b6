//! Two-phase commit across shards: transaction ids and the gids that carry them ([`gid`]),
//! the registry of this proxy's transactions in flight, and the recovery of in-doubt
//! prepared transactions ([`recovery`]).
//!
//! The commit path: [`Coordinator::start`] gives a transaction id, registered as in flight
//! until the [`InFlight`] guard drops; the session prepares on each shard that wrote with
//! `PREPARE TRANSACTION '<InFlight::gid(shard)>'`, records the decision with
//! `Store::record_commit(coordinator.proxy_token(), txid, participants)` (the commit point),
//! runs `COMMIT PREPARED` everywhere, then `Store::forget_commit`, then drops the guard.
//! Recovery leaves this proxy's in-flight transactions alone and resolves every other
//! prepared transaction of this proxy (and, after `topology.lease`, of a proxy that is gone):
//! commit when the decision is stored, roll back otherwise (presumed abort).

pub(crate) mod gid;
mod preflight;
pub(crate) mod recovery;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Transaction ids of this proxy whose commit is under way.
type Registry = Arc<Mutex<HashSet<u64>>>;

/// This proxy's two-phase commit state: its gid token, the transaction-id clock and the
/// transactions in flight (plus the recovery round's state).
pub(crate) struct Coordinator {
    token: Arc<str>,
    /// The last transaction id handed out.
    clock: AtomicU64,
    in_flight: Registry,
    pub(crate) recovery: recovery::RecoveryState,
}

impl Coordinator {
    /// The coordinator of the proxy called `proxy_id` (`topology.proxy_id`, or the default
    /// the proxy computes).
    pub(crate) fn new(proxy_id: &str) -> Coordinator {
        Coordinator {
            token: gid::token(proxy_id).into(),
            clock: AtomicU64::new(0),
            in_flight: Registry::default(),
            recovery: recovery::RecoveryState::default(),
        }
    }

    /// A new transaction id, registered as in flight until the guard drops: recovery leaves
    /// this proxy's in-flight transactions alone.
    ///
    /// Ids come from a hybrid clock, `max(now in µs since 1970, last + 1)`: unique within the
    /// process, and a restarted proxy does not hand out an id whose decision may still be
    /// stored (unless the system clock went back across the restart).
    pub(crate) fn start(&self) -> InFlight {
        let now = now_micros();
        let previous = self
            .clock
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(now.max(last.saturating_add(1)))
            })
            .unwrap_or_else(|last| last);
        let txid = now.max(previous.saturating_add(1));
        lock(&self.in_flight).insert(txid);
        InFlight {
            txid,
            token: Arc::clone(&self.token),
            registry: Arc::clone(&self.in_flight),
        }
    }

    /// This proxy's token in gids (its id sanitized), which is also the `proxy` of its
    /// commit decisions in the store.
    pub(crate) fn proxy_token(&self) -> &str {
        &self.token
    }

    /// Whether transaction `txid` of this proxy is in flight now.
    pub(crate) fn is_in_flight(&self, txid: u64) -> bool {
        lock(&self.in_flight).contains(&txid)
    }

    /// The transactions in flight now.
    pub(crate) fn in_flight_now(&self) -> HashSet<u64> {
        lock(&self.in_flight).clone()
    }
}

/// A transaction of this proxy whose two-phase commit is under way; recovery leaves it alone
/// while this lives.
pub(crate) struct InFlight {
    txid: u64,
    token: Arc<str>,
    registry: Registry,
}

impl InFlight {
    pub(crate) fn txid(&self) -> u64 {
        self.txid
    }

    /// The gid of this transaction's branch on `shard_name`: `sg_<proxy>_<txid>_<shard>`.
    pub(crate) fn gid(&self, shard_name: &str) -> String {
        gid::format(&self.token, self.txid, shard_name)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.registry).remove(&self.txid);
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("proxy", &self.token)
            .field("txid", &self.txid)
            .finish()
    }
}

fn lock(registry: &Registry) -> std::sync::MutexGuard<'_, HashSet<u64>> {
    registry.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_are_in_flight_while_held() {
        let c = Coordinator::new("host.example:6432");
        assert_eq!(c.proxy_token(), "host-example-6432");
        let a = c.start();
        let b = c.start();
        assert!(b.txid() > a.txid());
        assert!(
            a.txid() >= now_micros() - 60_000_000,
            "ids follow the clock"
        );
        assert!(c.is_in_flight(a.txid()) && c.is_in_flight(b.txid()));
        assert_eq!(
            a.gid("orders_1"),
            format!("sg_host-example-6432_{}_orders_1", a.txid())
        );
        let (ta, tb) = (a.txid(), b.txid());
        drop(a);
        assert!(!c.is_in_flight(ta));
        assert_eq!(c.in_flight_now(), HashSet::from([tb]));
        drop(b);
        assert!(c.in_flight_now().is_empty());
    }

    #[test]
    fn ids_stay_unique_when_the_clock_stands_still_or_goes_back() {
        let c = Coordinator::new("p");
        // As if ids had been handed out up to an hour ahead of the clock.
        let ahead = now_micros() + 3_600_000_000;
        c.clock.store(ahead, Ordering::Release);
        let ids: Vec<u64> = (0..1000).map(|_| c.start().txid()).collect();
        assert_eq!(ids[0], ahead + 1);
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1));
    }

    #[test]
    fn ids_are_unique_across_threads() {
        let c = Arc::new(Coordinator::new("p"));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || (0..2000).map(|_| c.start().txid()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = HashSet::new();
        for t in threads {
            for id in t.join().unwrap() {
                assert!(all.insert(id), "id {id} handed out twice");
            }
        }
    }
}
