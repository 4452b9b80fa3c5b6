//! CancelRequest routing: each client gets its own BackendKeyData from the proxy, and a cancel
//! for it reaches only the server connection running that client's query.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shardgate_config::Host;

/// The server backend a client is attached to right now, if any.
#[derive(Clone, Debug)]
pub struct CancelTarget {
    pub host: Arc<Host>,
    pub pid: i32,
    pub secret: i32,
}

/// Shared between the client's session (which sets and clears it) and cancel requests.
/// While a cancel is being sent, setting a new target waits for it: the session clears the
/// target before the server connection goes back to the pool, so a late cancel can never hit
/// the next client's query.
pub type CancelSlot = Arc<CancelCell>;

/// Where a client's cancels go. A std mutex held only to read or swap the target (a session
/// sets it twice per transaction, so that path takes no async lock and arms nothing), with a
/// count of cancels being sent and a `Notify` for a session waiting on them.
#[derive(Default)]
pub struct CancelCell {
    state: Mutex<CellState>,
    sent: tokio::sync::Notify,
}

#[derive(Default)]
struct CellState {
    target: Option<CancelTarget>,
    /// Cancels being sent to `target` right now.
    sending: u32,
}

impl CancelCell {
    fn state(&self) -> std::sync::MutexGuard<'_, CellState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the target unless a cancel is being sent (then gives it back).
    fn try_set(&self, target: Option<CancelTarget>) -> Result<(), Option<CancelTarget>> {
        let mut state = self.state();
        if state.sending > 0 {
            return Err(target);
        }
        state.target = target;
        Ok(())
    }

    /// The target, counted as being sent to until the guard drops.
    fn begin_send(&self) -> Option<(CancelTarget, Sending<'_>)> {
        let mut state = self.state();
        let target = state.target.clone()?;
        state.sending += 1;
        Some((target, Sending(self)))
    }
}

/// A cancel being sent; dropping it (sent, failed or abandoned) lets a waiting session go on.
struct Sending<'a>(&'a CancelCell);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.sending = state.sending.saturating_sub(1);
        if state.sending == 0 {
            drop(state);
            self.0.sent.notify_waiters();
        }
    }
}

/// Sets where the client's cancels go (`None`: nowhere, before its connection goes back).
/// Without a cancel in flight: one uncontended lock, no future made.
pub async fn set_target(slot: &CancelCell, target: Option<CancelTarget>) {
    let Err(mut target) = slot.try_set(target) else {
        return;
    };
    loop {
        // Made before looking: it receives a `notify_waiters` from then on, so a send that
        // ends right after the look still wakes us.
        let sent = slot.sent.notified();
        match slot.try_set(target) {
            Ok(()) => return,
            Err(t) => target = t,
        }
        sent.await;
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

    fn target(pid: i32) -> CancelTarget {
        CancelTarget {
            host: Arc::new(Host {
                host: "127.0.0.1".into(),
                port: 5432,
                ..Host::default()
            }),
            pid,
            secret: 7,
        }
    }

    #[tokio::test]
    async fn a_new_target_waits_for_the_cancel_being_sent() {
        let slot = CancelSlot::default();
        set_target(&slot, Some(target(1))).await;
        let (sending_to, sending) = slot.begin_send().expect("a target is set");
        assert_eq!(sending_to.pid, 1);
        // The session's connection must not go back while the cancel is on its way.
        let cleared = set_target(&slot, None);
        tokio::pin!(cleared);
        assert!(!ready_now(cleared.as_mut()));
        drop(sending);
        cleared.await;
        assert!(slot.begin_send().is_none(), "no target after clearing");
    }

    #[tokio::test]
    async fn two_cancels_in_flight_both_hold_the_target() {
        let slot = CancelSlot::default();
        set_target(&slot, Some(target(2))).await;
        let first = slot.begin_send().unwrap();
        let second = slot.begin_send().unwrap();
        drop(first);
        let set = set_target(&slot, Some(target(3)));
        tokio::pin!(set);
        assert!(!ready_now(set.as_mut()));
        drop(second);
        set.await;
        let now = slot.begin_send().map(|(t, _)| t.pid);
        assert_eq!(now, Some(3));
    }
}
