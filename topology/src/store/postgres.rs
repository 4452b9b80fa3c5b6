//! The postgres store (in progress).

use shardgate_config::Shard;

use super::{ProxyVersion, StoreError};
use crate::{Job, ShardMap};

pub(super) struct PgStore {
    config: tokio_postgres::Config,
}

fn todo_err() -> StoreError {
    StoreError::Database("the postgres topology store is not implemented yet".into())
}

impl PgStore {
    pub(super) async fn open(url: &str, _seed: ShardMap) -> Result<Self, StoreError> {
        let _ = url.parse::<tokio_postgres::Config>();
        Err(todo_err())
    }
    pub(super) fn connect_config(&self) -> &tokio_postgres::Config {
        &self.config
    }
    pub(super) async fn shard_map(&self) -> Result<ShardMap, StoreError> {
        Err(todo_err())
    }
    pub(super) async fn publish(&self, _e: u64, _s: Vec<Shard>) -> Result<ShardMap, StoreError> {
        Err(todo_err())
    }
    pub(super) async fn job(&self) -> Result<Option<Job>, StoreError> {
        Err(todo_err())
    }
    pub(super) async fn try_start_job(&self, _job: &Job) -> Result<(), StoreError> {
        Err(todo_err())
    }
    pub(super) async fn save_job(&self, _job: &Job) -> Result<(), StoreError> {
        Err(todo_err())
    }
    pub(super) async fn request_abort(&self) -> Result<Option<Job>, StoreError> {
        Err(todo_err())
    }
    pub(super) async fn report_version(&self, _p: &str, _v: u64) -> Result<(), StoreError> {
        Err(todo_err())
    }
    pub(super) async fn proxies(&self) -> Result<Vec<ProxyVersion>, StoreError> {
        Err(todo_err())
    }
}
