//! SKELETON — helper A replaces the bodies. The public signatures are the contract.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shardgate_config::{Config, Shard};
use tokio::sync::watch;

use crate::{Job, ShardMap};

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

/// Where the shard map and the job record live (`[topology] store`).
pub struct Store {
    _private: (),
}

impl Store {
    /// Opens the store named by `config.topology` (creating its tables or state file on first
    /// use, seeded with version 1 = `config.shards`). `state_file` is the file store's path
    /// (`None`: in memory only).
    pub async fn open(
        config: &Config,
        state_file: Option<PathBuf>,
    ) -> Result<Arc<Store>, StoreError> {
        let _ = (config, state_file);
        unimplemented!()
    }

    /// "file" or "postgres".
    pub fn kind(&self) -> &'static str {
        unimplemented!()
    }

    /// The current shard map, read from the store.
    pub async fn shard_map(&self) -> Result<ShardMap, StoreError> {
        unimplemented!()
    }

    /// Publishes `shards` as version `expected_version + 1` if the stored version is still
    /// `expected_version` (else `Conflict`), and wakes every follower.
    pub async fn publish(
        &self,
        expected_version: u64,
        shards: Vec<Shard>,
    ) -> Result<ShardMap, StoreError> {
        let _ = (expected_version, shards);
        unimplemented!()
    }

    /// The current (or last finished) job.
    pub async fn job(&self) -> Result<Option<Job>, StoreError> {
        unimplemented!()
    }

    /// Records `job` as the one job, unless a job that is not terminal is stored (`Busy`).
    pub async fn try_start_job(&self, job: &Job) -> Result<(), StoreError> {
        let _ = job;
        unimplemented!()
    }

    /// Overwrites the stored job with `job` (same id; the runner's progress and phase).
    pub async fn save_job(&self, job: &Job) -> Result<(), StoreError> {
        let _ = job;
        unimplemented!()
    }

    /// Sets `abort_requested` on the stored job if it is not terminal; returns it.
    pub async fn request_abort(&self) -> Result<Option<Job>, StoreError> {
        unimplemented!()
    }

    /// Records that `proxy_id` now routes by `version`.
    pub async fn report_version(&self, proxy_id: &str, version: u64) -> Result<(), StoreError> {
        let _ = (proxy_id, version);
        unimplemented!()
    }

    /// Every proxy that has reported, most recent first.
    pub async fn proxies(&self) -> Result<Vec<ProxyVersion>, StoreError> {
        unimplemented!()
    }

    /// A receiver that always holds the newest shard map: woken at once by `publish` on this
    /// store, by NOTIFY from other processes (postgres), and by polling every
    /// `poll_interval` as a fallback. The follower task stops when the store is dropped.
    pub fn follow(self: &Arc<Self>) -> watch::Receiver<Arc<ShardMap>> {
        unimplemented!()
    }
}
