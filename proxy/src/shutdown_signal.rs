//! A session's wait for the proxy's shutdown, kept for the whole session.
//!
//! The relay's `select!` builds every branch's future on each turn; a fresh
//! `watch::Receiver::changed()` registers with the channel's notifier and unregisters again
//! (a lock each time), twice per transaction. This future is registered once and polled in
//! place.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;

pub(crate) struct ShutdownSignal {
    wait: Pin<Box<dyn Future<Output = ()> + Send + Sync>>,
    fired: bool,
}

impl ShutdownSignal {
    /// Fires when `shutdown` changes (or its sender is gone), as `changed()` would.
    pub(crate) fn new(mut shutdown: watch::Receiver<bool>) -> ShutdownSignal {
        ShutdownSignal {
            wait: Box::pin(async move {
                let _ = shutdown.changed().await;
            }),
            fired: false,
        }
    }

    /// Resolves once the signal fired (at once when it already had).
    pub(crate) async fn fired(&mut self) {
        if !self.fired {
            self.wait.as_mut().await;
            self.fired = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn fires_on_change_and_stays_fired() {
        let (tx, rx) = watch::channel(false);
        let mut signal = ShutdownSignal::new(rx);
        // Not fired: a wait that is dropped keeps the registration for the next one.
        for _ in 0..3 {
            assert!(
                tokio::time::timeout(Duration::from_millis(5), signal.fired())
                    .await
                    .is_err()
            );
        }
        tx.send(true).unwrap();
        signal.fired().await;
        signal.fired().await;
    }

    #[tokio::test]
    async fn fires_when_the_sender_is_gone() {
        let (tx, rx) = watch::channel(false);
        let mut signal = ShutdownSignal::new(rx);
        drop(tx);
        signal.fired().await;
    }
}
