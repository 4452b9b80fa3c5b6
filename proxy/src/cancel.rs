//! CancelRequest routing: each client gets its own BackendKeyData from the proxy, and a cancel
//! for it reaches only the server connection running that client's query.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use shardgate_config::Host;

/// The server backend a client is attached to right now, if any.
#[derive(Clone, Debug)]
pub struct CancelTarget {
    pub host: Arc<Host>,
    pub pid: i32,
    pub secret: i32,
}

/// Shared between the client's session (which aims and disarms it) and cancel requests.
/// While a cancel is being sent, disarming waits for it: the session disarms the slot before
/// the server connection goes back to the pool, so a late cancel can never hit the next
/// client's query.
pub type CancelSlot = Arc<CancelCell>;

/// `CancelCell::state`: cancels go to the target.
const ARMED: u32 = 1;
/// `CancelCell::state`: one cancel being sent (the count is the bits above `ARMED`).
const ONE_SENDING: u32 = 2;

/// Where a client's cancels go. A session aims it and disarms it at every checkout and
/// release, so that path is one atomic operation (and a lock only when the server connection
/// differs from the last one aimed at); a `Notify` wakes a session waiting on cancels in
/// flight.
#[derive(Default)]
pub struct CancelCell {
    /// `ARMED`, plus `ONE_SENDING` per cancel being sent. A cancel counts itself only while the
    /// cell is armed, and the session disarms only when none is being sent, so a disarmed cell
    /// has no cancel in flight.
    state: AtomicU32,
    /// The server backend cancels go to while armed. The session changes it only while the
    /// cell is disarmed (no cancel reads it then).
    target: Mutex<Option<CancelTarget>>,
    sent: tokio::sync::Notify,
}

impl CancelCell {
    fn target(&self) -> std::sync::MutexGuard<'_, Option<CancelTarget>> {
        self.target.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Disarms the cell unless a cancel is being sent; whether it is disarmed.
    fn try_disarm(&self) -> bool {
        match self
            .state
            .compare_exchange(ARMED, 0, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == 0,
        }
    }

    /// Cancels go nowhere from now on (before the client's connection goes back), once the
    /// cancels being sent are sent.
    pub async fn disarm(&self) {
        if self.try_disarm() {
            return;
        }
        loop {
            // Made before looking: it receives a `notify_waiters` from then on, so a send that
            // ends right after the look still wakes us.
            let sent = self.sent.notified();
            if self.try_disarm() {
                return;
            }
            sent.await;
        }
    }

    /// Cancels go to the backend `pid` (key `secret`) on `host` from now on.
    pub async fn aim(&self, host: &Arc<Host>, pid: i32, secret: i32) {
        self.disarm().await;
        {
            let mut target = self.target();
            let same = target
                .as_ref()
                .is_some_and(|t| t.pid == pid && t.secret == secret && Arc::ptr_eq(&t.host, host));
            if !same {
                *target = Some(CancelTarget {
                    host: Arc::clone(host),
                    pid,
                    secret,
                });
            }
        }
        self.state.store(ARMED, Ordering::Release);
    }

    /// The target, counted as being sent to until the guard drops; `None` when disarmed.
    fn begin_send(&self) -> Option<(CancelTarget, Sending<'_>)> {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & ARMED == 0 {
                return None;
            }
            // Bounded by the clients' cancel requests in flight at once, far below the count's
            // 2^31: still, never wrap into the armed bit.
            let counted = state.checked_add(ONE_SENDING)?;
            match self.state.compare_exchange_weak(
                state,
                counted,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => state = now,
            }
        }
        let sending = Sending(self);
        let target = self.target().clone()?;
        Some((target, sending))
    }
}

/// A cancel being sent; dropping it (sent, failed or abandoned) lets a waiting session go on.
struct Sending<'a>(&'a CancelCell);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        let before = self.0.state.fetch_sub(ONE_SENDING, Ordering::AcqRel);
        if before >> 1 == 1 {
            self.0.sent.notify_waiters();
        }
    }
}

#[derive(Default)]
pub struct CancelRegistry {
    clients: Mutex<HashMap<i32, (i32, CancelSlot)>>,
}

impl CancelRegistry {
    /// Registers a new client and returns its (pid, secret) and slot.
    pub fn register(&self) -> (i32, i32, CancelSlot) {
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            if pid == 0 || map.contains_key(&pid) {
                continue;
            }
            let secret = rand::random::<i32>();
            let slot = CancelSlot::default();
            map.insert(pid, (secret, Arc::clone(&slot)));
            return (pid, secret, slot);
        }
    }

    pub fn unregister(&self, pid: i32) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
    }

    /// Forwards a cancel for the client with this key, if the key is right and the client is
    /// running something.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let slot = {
            let map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&pid) {
                Some((s, slot)) if *s == secret => Arc::clone(slot),
                _ => {
                    tracing::debug!(pid, "cancel request with an unknown key ignored");
                    return;
                }
            }
        };
        let Some((t, sending)) = slot.begin_send() else {
            return;
        };
        tracing::debug!(pid, server = %t.host, server_pid = t.pid, "forwarding cancel request");
        if let Err(e) = shardgate_pool::send_cancel(&t.host, t.pid, t.secret).await {
            tracing::warn!(pid, error = %e, "could not forward cancel request");
        }
        drop(sending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Waker};

    /// Polls once: whether `f` finished without waiting.
    fn ready_now(f: std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
        f.poll(&mut Context::from_waker(Waker::noop())).is_ready()
    }

    fn host(port: u16) -> Arc<Host> {
        Arc::new(Host {
            host: "127.0.0.1".into(),
            port,
            ..Host::default()
        })
    }

    /// Where a cancel sent now goes: (port, pid).
    fn aimed_at(slot: &CancelCell) -> Option<(u16, i32)> {
        slot.begin_send().map(|(t, _)| (t.host.port, t.pid))
    }

    #[tokio::test]
    async fn a_new_target_waits_for_the_cancel_being_sent() {
        let slot = CancelSlot::default();
        assert_eq!(aimed_at(&slot), None, "nowhere before the first checkout");
        slot.aim(&host(5432), 1, 7).await;
        let (sending_to, sending) = slot.begin_send().expect("a target is set");
        assert_eq!(sending_to.pid, 1);
        // The session's connection must not go back while the cancel is on its way.
        let cleared = slot.disarm();
        tokio::pin!(cleared);
        assert!(!ready_now(cleared.as_mut()));
        drop(sending);
        cleared.await;
        assert_eq!(aimed_at(&slot), None, "no target after clearing");
    }

    #[tokio::test]
    async fn two_cancels_in_flight_both_hold_the_target() {
        let slot = CancelSlot::default();
        slot.aim(&host(5432), 2, 7).await;
        let first = slot.begin_send().unwrap();
        let second = slot.begin_send().unwrap();
        drop(first);
        let next_host = host(5433);
        let set = slot.aim(&next_host, 3, 7);
        tokio::pin!(set);
        assert!(!ready_now(set.as_mut()));
        assert_eq!(second.0.pid, 2, "the cancel in flight keeps its target");
        drop(second);
        set.await;
        assert_eq!(aimed_at(&slot), Some((5433, 3)));
    }

    /// Aimed again at the connection it was last aimed at, the cell keeps its target; at
    /// another backend, or the same backend key on another host, it takes the new one.
    #[tokio::test]
    async fn aiming_again_takes_exactly_the_new_backend() {
        let slot = CancelSlot::default();
        let a = host(5432);
        slot.aim(&a, 4, 9).await;
        slot.disarm().await;
        slot.aim(&a, 4, 9).await;
        assert_eq!(aimed_at(&slot), Some((5432, 4)));
        slot.disarm().await;
        slot.aim(&host(5434), 4, 9).await;
        assert_eq!(aimed_at(&slot), Some((5434, 4)));
        slot.disarm().await;
        slot.aim(&a, 5, 9).await;
        assert_eq!(aimed_at(&slot), Some((5432, 5)));
        let (target, _sending) = slot.begin_send().unwrap();
        assert_eq!(target.secret, 9);
    }
}
