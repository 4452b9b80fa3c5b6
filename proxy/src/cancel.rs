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
/// A tokio mutex: a cancel holds it while sending, and the session clears it before the server
/// connection goes back to the pool, so a late cancel can never hit the next client's query.
pub type CancelSlot = Arc<tokio::sync::Mutex<Option<CancelTarget>>>;

/// Sets where the client's cancels go (`None`: nowhere, before its connection goes back).
/// Without a cancel in flight the lock is free: taken at once, no future polled.
pub async fn set_target(slot: &CancelSlot, target: Option<CancelTarget>) {
    match slot.try_lock() {
        Ok(mut guard) => *guard = target,
        Err(_) => *slot.lock().await = target,
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
        let guard = slot.lock().await;
        if let Some(t) = guard.as_ref() {
            tracing::debug!(pid, server = %t.host, server_pid = t.pid, "forwarding cancel request");
            if let Err(e) = shardgate_pool::send_cancel(&t.host, t.pid, t.secret).await {
                tracing::warn!(pid, error = %e, "could not forward cancel request");
            }
        }
    }
}
