//! The follower task behind [`Store::follow`]: one per receiver. It forwards in-process
//! publishes at once, re-reads the store every poll interval, and (postgres store) LISTENs on
//! a dedicated connection so another proxy's publish arrives within milliseconds.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, NoTls};

use super::Store;
use crate::ShardMap;

/// The NOTIFY channel a publish signals on (postgres store).
pub(super) const CHANNEL: &str = "shardgate_topology";

/// Backoff between attempts to re-open a dead LISTEN connection.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub(super) fn spawn(store: &Arc<Store>) -> watch::Receiver<Arc<ShardMap>> {
    let local = store.latest.subscribe();
    let (tx, rx) = watch::channel(local.borrow().clone());
    let task = Follower {
        store: Arc::downgrade(store),
        listen: store.listen_config(),
        poll_interval: store.poll_interval,
        local,
        tx,
    };
    tokio::spawn(task.run());
    rx
}

struct Follower {
    /// Weak, so the task never keeps the store alive.
    store: Weak<Store>,
    listen: Option<tokio_postgres::Config>,
    poll_interval: Duration,
    /// The store's own `latest`: changes on in-process publishes and reads; closed when the
    /// store is dropped, which ends the task.
    local: watch::Receiver<Arc<ShardMap>>,
    tx: watch::Sender<Arc<ShardMap>>,
}

impl Follower {
    async fn run(mut self) {
        let mut listener: Option<Listener> = None;
        let mut backoff = MIN_BACKOFF;
        let mut retry_at = Instant::now();
        // Read at once: the receiver started from the last map the store knew.
        let mut next_poll = Instant::now();
        let mut failing = false;
        loop {
            if let Some(config) = &self.listen {
                if listener.is_none() && Instant::now() >= retry_at {
                    match Listener::open(config).await {
                        Ok(l) => {
                            listener = Some(l);
                            backoff = MIN_BACKOFF;
                            // Notifications sent while it was down are lost: read now.
                            next_poll = Instant::now();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?backoff, "topology follower cannot LISTEN; polling meanwhile");
                            retry_at = Instant::now() + backoff;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
            }
            let mut deadline = next_poll;
            if self.listen.is_some() && listener.is_none() {
                deadline = deadline.min(retry_at);
            }
            let mut read_now = false;
            tokio::select! {
                changed = self.local.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let map = self.local.borrow_and_update().clone();
                    self.forward(map);
                }
                note = next_notification(&mut listener) => {
                    if note {
                        read_now = true;
                    } else {
                        tracing::warn!("topology LISTEN connection lost; reconnecting");
                        listener = None;
                        retry_at = Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.tx.closed() => return,
            }
            if read_now || Instant::now() >= next_poll {
                let Some(store) = self.store.upgrade() else {
                    return;
                };
                match store.shard_map().await {
                    Ok(map) => {
                        if failing {
                            tracing::info!("topology follower reads the store again");
                            failing = false;
                        }
                        self.forward(Arc::new(map));
                    }
                    // Warn once per outage, not on every poll.
                    Err(e) if !failing => {
                        tracing::warn!(error = %e, "topology follower cannot read the store; keeping the last shard map");
                        failing = true;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "topology follower still cannot read the store")
                    }
                }
                drop(store);
                next_poll = Instant::now() + self.poll_interval;
            }
        }
    }

    /// Sends `map` if its version differs from the one the receivers hold.
    fn forward(&self, map: Arc<ShardMap>) {
        self.tx.send_if_modified(|current| {
            if current.version == map.version {
                return false;
            }
            *current = map;
            true
        });
    }
}

/// Waits for the next notification: `true` for one, `false` when the connection died; never
/// returns without a listener.
async fn next_notification(listener: &mut Option<Listener>) -> bool {
    match listener {
        Some(l) => l.notes.recv().await.is_some(),
        None => std::future::pending().await,
    }
}

/// A dedicated connection that has run `LISTEN shardgate_topology`.
struct Listener {
    /// Keeps the connection open (it closes when its last client is dropped).
    _client: tokio_postgres::Client,
    notes: mpsc::UnboundedReceiver<()>,
    driver: JoinHandle<()>,
}

impl Listener {
    async fn open(config: &tokio_postgres::Config) -> Result<Listener, tokio_postgres::Error> {
        let (client, mut connection) = config.connect(NoTls).await?;
        let (tx, notes) = mpsc::unbounded_channel();
        // The connection must be polled by hand (not awaited as a future) to see notifications.
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => {
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "topology LISTEN connection failed");
                        return;
                    }
                }
            }
        });
        let listener = Listener {
            _client: client,
            notes,
            driver,
        };
        listener
            ._client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await?;
        Ok(listener)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.driver.abort();
    }
}
