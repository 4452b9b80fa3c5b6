//! The state a running job shares between its runner and its heartbeat: the job record (saved
//! to the store at every phase change and at least every second), and the abort and
//! lost-ownership flags.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shardgate_config::Config;
use shardgate_topology::{now_ms, Job, Phase, ShardMap, Store, StoreError};

use super::error::EngineError;
use super::plan::Plan;

/// How often the heartbeat saves the job (and reads the abort flag from the store).
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(500);

/// Why the forward path stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    /// `rebalance abort` (here or on another proxy).
    Abort,
    /// An error: undo, then Failed with this message.
    Fail(EngineError),
    /// Another proxy took the job over: stop without touching anything.
    Lost,
    /// The new map was published and the job then failed; it is recorded as Failed and the
    /// sources keep their rows (a committed job is never undone).
    Committed,
}

impl From<super::schema_copy::CopyError> for Stop {
    fn from(e: super::schema_copy::CopyError) -> Stop {
        Stop::Fail(EngineError::from(e))
    }
}

impl From<super::error::ShardError> for Stop {
    fn from(e: super::error::ShardError) -> Stop {
        Stop::Fail(EngineError::from(e))
    }
}

impl From<EngineError> for Stop {
    fn from(e: EngineError) -> Stop {
        Stop::Fail(e)
    }
}

pub(crate) struct Ctx {
    pub store: Arc<Store>,
    pub config: Arc<Config>,
    pub plan: Plan,
    pub job: tokio::sync::Mutex<Job>,
    abort: AtomicBool,
    /// Set when a revert failed: the committed move then finishes, whatever is requested.
    no_abort: AtomicBool,
    lost: AtomicBool,
    /// Serializes saves, so a heartbeat cannot write an older copy over a newer one.
    saving: tokio::sync::Mutex<()>,
    /// Taken over after a restart: the cleanup re-verifies before deleting anything.
    pub resumed: bool,
}

impl Ctx {
    pub fn new(
        store: Arc<Store>,
        config: Arc<Config>,
        plan: Plan,
        job: Job,
        resumed: bool,
    ) -> Arc<Ctx> {
        let abort = job.abort_requested;
        Arc::new(Ctx {
            store,
            config,
            plan,
            job: tokio::sync::Mutex::new(job),
            abort: AtomicBool::new(abort),
            no_abort: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            saving: tokio::sync::Mutex::new(()),
            resumed,
        })
    }

    /// Publishes `shards` as version `expected + 1` together with the job as `change` leaves
    /// it, in one store write (no heartbeat can interleave an older copy). The in-memory job
    /// takes the change only when the publish succeeded.
    pub async fn publish(
        &self,
        expected: u64,
        shards: Vec<shardgate_config::Shard>,
        change: impl FnOnce(&mut Job),
    ) -> Result<ShardMap, StoreError> {
        let _one = self.saving.lock().await;
        let mut next = self.job.lock().await.clone();
        change(&mut next);
        next.heartbeat_ms = now_ms();
        let map = self.store.publish_with_job(expected, shards, &next).await?;
        #[cfg(feature = "failpoints")]
        if crate::failpoints::triggered("rebalance-publish-reply-lost") {
            return Err(StoreError::Database(
                "failpoint rebalance-publish-reply-lost: the reply was lost".into(),
            ));
        }
        // Only the runner changes the job, and it is waiting here.
        *self.job.lock().await = next;
        Ok(map)
    }

    pub async fn id(&self) -> String {
        self.job.lock().await.id.clone()
    }

    pub fn request_abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
    }

    /// Ignores aborts from now on: one could not be carried out, and the move finishes instead.
    pub fn clear_abort(&self) {
        self.no_abort.store(true, Ordering::SeqCst);
    }

    pub fn abort_requested(&self) -> bool {
        self.abort.load(Ordering::SeqCst) && !self.no_abort.load(Ordering::SeqCst)
    }

    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Stops the forward path when the job was aborted or taken over.
    pub fn check(&self) -> Result<(), Stop> {
        if self.lost() {
            return Err(Stop::Lost);
        }
        if self.abort_requested() {
            return Err(Stop::Abort);
        }
        Ok(())
    }

    /// Sleeps `d`, waking early (with the reason) on abort.
    pub async fn pause(&self, d: Duration) -> Result<(), Stop> {
        let until = tokio::time::Instant::now() + d;
        loop {
            self.check()?;
            let now = tokio::time::Instant::now();
            if now >= until {
                return Ok(());
            }
            tokio::time::sleep((until - now).min(Duration::from_millis(100))).await;
        }
    }

    /// Changes the job in memory (the heartbeat saves it within a second).
    pub async fn update(&self, f: impl FnOnce(&mut Job)) {
        f(&mut *self.job.lock().await);
    }

    /// Changes the job and saves it now.
    pub async fn update_save(&self, f: impl FnOnce(&mut Job)) {
        self.update(f).await;
        self.save().await;
    }

    pub async fn set_phase(&self, phase: Phase, message: &str) {
        crate::failpoint!(crate::failpoints::before_save(phase));
        let message = message.to_owned();
        self.update_save(|j| {
            j.phase = phase;
            j.progress.message = message;
        })
        .await;
        let job = self.job.lock().await;
        tracing::info!(job = %job.id, phase = %phase, shard = job.shard_name(), "rebalance phase");
    }

    pub async fn phase(&self) -> Phase {
        self.job.lock().await.phase
    }

    /// Saves the job with a fresh heartbeat. First reads the stored copy: an abort requested
    /// through the store (possibly by another proxy) is kept and acted on, and a job now owned
    /// by someone else is left alone.
    pub async fn save(&self) {
        let _one = self.saving.lock().await;
        if self.lost() {
            return;
        }
        let stored = self.store.job().await;
        let mut job = self.job.lock().await;
        match stored {
            Ok(Some(s)) if s.id == job.id => {
                if s.owner != job.owner {
                    tracing::warn!(job = %job.id, owner = %s.owner, "rebalance job taken over by another proxy; this runner stops");
                    self.lost.store(true, Ordering::SeqCst);
                    return;
                }
                if s.abort_requested && !job.phase.is_terminal() {
                    self.abort.store(true, Ordering::SeqCst);
                }
            }
            Ok(Some(s)) => {
                tracing::warn!(job = %job.id, other = %s.id, "another rebalance job replaced this one in the store; this runner stops");
                self.lost.store(true, Ordering::SeqCst);
                return;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "cannot read the rebalance job from the topology store")
            }
        }
        if self.abort_requested() && !job.phase.is_terminal() {
            job.abort_requested = true;
        }
        job.heartbeat_ms = now_ms();
        if let Err(e) = self.store.save_job(&job).await {
            tracing::warn!(job = %job.id, error = %e, "cannot save the rebalance job to the topology store");
        }
    }

    /// Saves the job every `HEARTBEAT` until the returned task is aborted.
    pub fn spawn_heartbeat(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let ctx = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                ctx.save().await;
                if ctx.lost() {
                    return;
                }
            }
        })
    }
}
