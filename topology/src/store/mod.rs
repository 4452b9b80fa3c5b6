//! The stores that hold the shard map, the job record, the proxies' reported versions and the
//! commit decisions of two-phase commits: [`file`] (one proxy) and [`postgres`] (a fleet
//! sharing a metadata database). Both make publishing a compare-and-swap on the version and
//! starting a job a test-and-set, so two writers can never both win.

mod file;
mod follow;
mod postgres;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shardgate_config::{Config, Shard};
use tokio::sync::watch;

use crate::{CommitDecision, Job, ShardMap};

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Publishing found another version than expected: someone else changed the map.
    #[error("the shard map changed underneath (expected version {expected}, found {found})")]
    Conflict { expected: u64, found: u64 },
    /// `try_start_job` found a job that has not finished.
    #[error("rebalance job {} is running ({})", .0.id, .0.phase)]
    Busy(Box<Job>),
    #[error("topology state file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("topology store database: {0}")]
    Database(String),
}

/// A proxy and the shard-map version it last reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyVersion {
    pub proxy_id: String,
    pub version: u64,
    /// Seconds since it last reported (proxies report every poll interval).
    pub seen_seconds_ago: f64,
}

enum Backend {
    File(Box<file::FileStore>),
    Postgres(Box<postgres::PgStore>),
}

/// Where the shard map and the job record live (`[topology] store`).
pub struct Store {
    backend: Backend,
    /// The newest map this store has read or published. Followers start from it, and an
    /// in-process publish wakes them through it at once. It is dropped with the store, which
    /// is what ends the follower tasks.
    latest: watch::Sender<Arc<ShardMap>>,
    poll_interval: Duration,
}

impl Store {
    /// Opens the store named by `config.topology` (creating its tables or state file on first
    /// use, seeded with version 1 = `config.shards`). `state_file` is the file store's path
    /// (`None`: in memory only).
    pub async fn open(
        config: &Config,
        state_file: Option<PathBuf>,
    ) -> Result<Arc<Store>, StoreError> {
        let seed = ShardMap::new(1, config.shards.clone(), &crate::IdLanes::default());
        let backend = if config.topology.store == "file" {
            Backend::File(Box::new(file::FileStore::open(state_file, seed).await?))
        } else {
            Backend::Postgres(Box::new(
                postgres::PgStore::open(&config.topology.store, seed).await?,
            ))
        };
        let current = match &backend {
            Backend::File(f) => f.shard_map().await?,
            Backend::Postgres(p) => p.shard_map().await?,
        };
        let (latest, _) = watch::channel(Arc::new(current));
        Ok(Arc::new(Store {
            backend,
            latest,
            poll_interval: config.topology.poll_interval,
        }))
    }

    /// "file" or "postgres".
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::File(_) => "file",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The current shard map, read from the store.
    pub async fn shard_map(&self) -> Result<ShardMap, StoreError> {
        let map = match &self.backend {
            Backend::File(f) => f.shard_map().await?,
            Backend::Postgres(p) => p.shard_map().await?,
        };
        self.observe(&map);
        Ok(map)
    }

    /// Publishes `shards` as version `expected_version + 1` if the stored version is still
    /// `expected_version` (else `Conflict`), and wakes every follower. Finding exactly this
    /// map at `expected_version + 1` already (an earlier attempt landed but its reply was lost)
    /// is success, so a retry is always safe.
    pub async fn publish(
        &self,
        expected_version: u64,
        shards: Vec<Shard>,
    ) -> Result<ShardMap, StoreError> {
        self.publish_inner(expected_version, shards, None).await
    }

    /// As `publish`, and writes `job` (its phase and `to_version` saying the map is out) in
    /// the same transaction (postgres) or the same atomic rename (file): no crash can leave
    /// the new map without the job record that says it was published.
    pub async fn publish_with_job(
        &self,
        expected_version: u64,
        shards: Vec<Shard>,
        job: &Job,
    ) -> Result<ShardMap, StoreError> {
        self.publish_inner(expected_version, shards, Some(job))
            .await
    }

    async fn publish_inner(
        &self,
        expected_version: u64,
        shards: Vec<Shard>,
        job: Option<&Job>,
    ) -> Result<ShardMap, StoreError> {
        let map = match &self.backend {
            Backend::File(f) => f.publish(expected_version, shards, job).await?,
            Backend::Postgres(p) => p.publish(expected_version, shards, job).await?,
        };
        tracing::info!(version = map.version, shards = ?map.names(), "published shard map");
        self.observe(&map);
        Ok(map)
    }

    /// The current (or last finished) job.
    pub async fn job(&self) -> Result<Option<Job>, StoreError> {
        match &self.backend {
            Backend::File(f) => f.job().await,
            Backend::Postgres(p) => p.job().await,
        }
    }

    /// Records `job` as the one job, unless a job that is not terminal is stored (`Busy`).
    pub async fn try_start_job(&self, job: &Job) -> Result<(), StoreError> {
        match &self.backend {
            Backend::File(f) => f.try_start_job(job).await,
            Backend::Postgres(p) => p.try_start_job(job).await,
        }
    }

    /// Overwrites the stored job with `job` (same id; the runner's progress and phase).
    pub async fn save_job(&self, job: &Job) -> Result<(), StoreError> {
        match &self.backend {
            Backend::File(f) => f.save_job(job).await,
            Backend::Postgres(p) => p.save_job(job).await,
        }
    }

    /// Sets `abort_requested` on the stored job if it is not terminal; returns it.
    pub async fn request_abort(&self) -> Result<Option<Job>, StoreError> {
        match &self.backend {
            Backend::File(f) => f.request_abort().await,
            Backend::Postgres(p) => p.request_abort().await,
        }
    }

    /// Records that `proxy_id` now routes by `version`.
    pub async fn report_version(&self, proxy_id: &str, version: u64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::File(f) => {
                f.report_version(proxy_id, version);
                Ok(())
            }
            Backend::Postgres(p) => p.report_version(proxy_id, version).await,
        }
    }

    /// Every proxy that has reported, most recent first.
    pub async fn proxies(&self) -> Result<Vec<ProxyVersion>, StoreError> {
        match &self.backend {
            Backend::File(f) => Ok(f.proxies()),
            Backend::Postgres(p) => p.proxies().await,
        }
    }

    /// Records that two-phase transaction `txid` of `proxy` commits on `participants`: durable
    /// before `Ok` (fsynced to the file store's decision log; committed with
    /// `synchronous_commit = on` in the postgres store). This is the commit point of a
    /// two-phase commit. Recording a decision again is success (a retry after a lost reply).
    ///
    /// An `Err` leaves the outcome unknown (the record may have landed and its reply been
    /// lost): the prepared transactions must then be left to recovery, which commits them if
    /// the record is there and rolls them back otherwise, never rolled back by the caller.
    pub async fn record_commit(
        &self,
        proxy: &str,
        txid: u64,
        participants: &[String],
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::File(f) => f.decisions().record(proxy, txid, participants).await,
            Backend::Postgres(p) => p.record_commit(proxy, txid, participants).await,
        }
    }

    /// Whether a commit decision is recorded for `txid` of `proxy`.
    pub async fn commit_decided(&self, proxy: &str, txid: u64) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::File(f) => Ok(f.decisions().decided(proxy, txid).await),
            Backend::Postgres(p) => p.commit_decided(proxy, txid).await,
        }
    }

    /// Drops the decision for `txid` of `proxy`, once every participant committed: the
    /// record is no longer needed. Forgetting one that is not recorded is success.
    pub async fn forget_commit(&self, proxy: &str, txid: u64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::File(f) => f.decisions().forget(proxy, txid).await,
            Backend::Postgres(p) => p.forget_commit(proxy, txid).await,
        }
    }

    /// Every recorded commit decision, oldest first.
    pub async fn commit_decisions(&self) -> Result<Vec<CommitDecision>, StoreError> {
        match &self.backend {
            Backend::File(f) => Ok(f.decisions().all().await),
            Backend::Postgres(p) => p.commit_decisions().await,
        }
    }

    /// A receiver that always holds the newest shard map: woken at once by `publish` on this
    /// store, by NOTIFY from other processes (postgres), and by polling every
    /// `poll_interval` as a fallback. The follower task stops when the store is dropped.
    pub fn follow(self: &Arc<Self>) -> watch::Receiver<Arc<ShardMap>> {
        follow::spawn(self)
    }

    /// Remembers `map` as the newest one if its version differs from the last seen.
    fn observe(&self, map: &ShardMap) {
        self.latest.send_if_modified(|current| {
            if current.version == map.version {
                return false;
            }
            *current = Arc::new(map.clone());
            true
        });
    }

    /// The connection settings a follower LISTENs with (postgres store only).
    fn listen_config(&self) -> Option<tokio_postgres::Config> {
        match &self.backend {
            Backend::File(_) => None,
            Backend::Postgres(p) => Some(p.connect_config().clone()),
        }
    }
}
