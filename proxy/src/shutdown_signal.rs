//! Sessions' waits for the proxy's shutdown.
//!
//! Every session waits for the shutdown each time it waits for its client (twice per
//! transaction: the idle read and the hard stop around the whole session). A tokio `watch`
//! or `Notify` wait takes a lock on every poll, even when nothing changed; here a session
//! registers its task's waker once (again only if the waker changes), and each poll after
//! that is one atomic load. [`ShutdownHub::follow`] relays the proxy's `watch` to the hub.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::watch;

/// No shutdown yet.
const RUNNING: u8 = 0;
/// `true` was sent: shutting down, and the hard stop's clock runs.
const REQUESTED: u8 = 1;
/// The sender is gone without a shutdown (the handle was dropped): idle sessions leave, no
/// hard stop.
const ABANDONED: u8 = 2;

/// The shutdown state of one proxy and the wakers of the sessions waiting for it.
pub(crate) struct ShutdownHub {
    state: AtomicU8,
    /// By signal id; each session's signals register once.
    waiting: Mutex<HashMap<u64, Waker, foldhash::fast::RandomState>>,
    next_id: AtomicU64,
}

impl ShutdownHub {
    /// A hub that follows `shutdown` (fired by `true` or by the sender going away).
    pub(crate) fn follow(mut shutdown: watch::Receiver<bool>) -> Arc<ShutdownHub> {
        let hub = Arc::new(ShutdownHub {
            state: AtomicU8::new(RUNNING),
            waiting: Mutex::default(),
            next_id: AtomicU64::new(0),
        });
        let relay = Arc::downgrade(&hub);
        tokio::spawn(async move {
            let state = loop {
                if *shutdown.borrow_and_update() {
                    break REQUESTED;
                }
                if shutdown.changed().await.is_err() {
                    break ABANDONED;
                }
            };
            if let Some(hub) = relay.upgrade() {
                hub.fire(state);
            }
        });
        hub
    }

    fn waiting(&self) -> MutexGuard<'_, HashMap<u64, Waker, foldhash::fast::RandomState>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the state, then wakes everyone registered (a session registering after the lock
    /// is released sees the state when it looks next).
    fn fire(&self, state: u8) {
        self.state.store(state, Ordering::SeqCst);
        let wakers: Vec<Waker> = self.waiting().drain().map(|(_, w)| w).collect();
        for w in wakers {
            w.wake();
        }
    }

    /// A new wait on this hub (unregistered until first polled).
    pub(crate) fn signal(self: &Arc<Self>) -> ShutdownSignal {
        ShutdownSignal {
            hub: Arc::clone(self),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            waker: None,
        }
    }
}

/// One session's wait for the shutdown, kept for the whole session.
pub(crate) struct ShutdownSignal {
    hub: Arc<ShutdownHub>,
    id: u64,
    /// The waker registered in the hub, if any.
    waker: Option<Waker>,
}

impl ShutdownSignal {
    /// Resolves once the proxy shuts down or its handle is gone (at once if it already did).
    pub(crate) fn fired(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_state(cx, |s| s != RUNNING))
    }

    /// Resolves once a shutdown was requested; never when the handle is only dropped.
    pub(crate) fn requested(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_state(cx, |s| s == REQUESTED))
    }

    fn poll_state(&mut self, cx: &mut Context<'_>, done: impl Fn(u8) -> bool) -> Poll<()> {
        // Registered before looking, so a shutdown that fires in between still wakes us.
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let waker = cx.waker().clone();
            let state = self.hub.state.load(Ordering::SeqCst);
            if state == RUNNING {
                self.hub.waiting().insert(self.id, waker.clone());
            }
            self.waker = Some(waker);
        }
        if done(self.hub.state.load(Ordering::SeqCst)) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for ShutdownSignal {
    fn drop(&mut self) {
        if self.waker.is_some() {
            self.hub.waiting().remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waker that counts its wakes.
    struct Counting(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Polls `f` once with `waker`: whether it finished.
    fn poll_once(f: impl Future<Output = ()>, waker: &Waker) -> bool {
        let f = std::pin::pin!(f);
        f.poll(&mut Context::from_waker(waker)).is_ready()
    }

    #[tokio::test]
    async fn fires_on_shutdown_and_wakes_the_waiting() {
        let (tx, rx) = watch::channel(false);
        let hub = ShutdownHub::follow(rx);
        let mut signal = hub.signal();
        let mut hard = hub.signal();
        let counter = Arc::new(Counting(Default::default()));
        let waker = Waker::from(Arc::clone(&counter));
        // Not fired: polled again and again, registered once.
        for _ in 0..3 {
            assert!(!poll_once(signal.fired(), &waker));
            assert!(!poll_once(hard.requested(), &waker));
        }
        assert_eq!(hub.waiting().len(), 2);
        tx.send(true).unwrap();
        // (Polled with the same waker: the relay task runs on this runtime in between.)
        while !poll_once(signal.fired(), &waker) {
            tokio::task::yield_now().await;
        }
        assert!(poll_once(hard.requested(), &waker));
        assert_eq!(counter.0.load(Ordering::SeqCst), 2, "both waits were woken");
        // Stays fired.
        assert!(poll_once(signal.fired(), &waker));
        drop((signal, hard));
        assert!(hub.waiting().is_empty());
    }

    #[tokio::test]
    async fn a_dropped_handle_sends_idle_sessions_away_without_a_hard_stop() {
        let (tx, rx) = watch::channel(false);
        let hub = ShutdownHub::follow(rx);
        let mut signal = hub.signal();
        let mut hard = hub.signal();
        drop(tx);
        signal.fired().await;
        assert!(!poll_once(hard.requested(), Waker::noop()));
    }

    #[tokio::test]
    async fn a_signal_made_after_the_shutdown_is_fired_at_once() {
        let (tx, rx) = watch::channel(false);
        let hub = ShutdownHub::follow(rx);
        tx.send(true).unwrap();
        hub.signal().requested().await;
        hub.signal().fired().await;
    }
}
