//! SKELETON — helper B fills in the engine. The public types and signatures are the contract
//! the HTTP server, the CLI and the proxy rely on.
//!
//! The rebalancer: adds or removes a shard while traffic flows, moving the ring slots that
//! change owner with PostgreSQL's logical replication (DESIGN.md, "Live rebalancing").

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shardgate_config::Config;
use shardgate_topology::{Job, ProxyVersion, Store};

/// How the rebalancer reads the proxy's current configuration (sharded tables, seed,
/// `[rebalance]`); the shard list itself comes from the store.
pub type ConfigSource = Arc<dyn Fn() -> Arc<Config> + Send + Sync>;

/// `POST /api/v1/shards`, `shardgate admin shards add`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddShardRequest {
    pub name: String,
    /// `postgres://[user[:password]@]host[:port][?sslmode=…]` or `host[:port]`; a user and
    /// password in it are the shard's admin login unless `admin_user` is given.
    pub primary: String,
    #[serde(default)]
    pub replicas: Vec<String>,
    #[serde(default)]
    pub admin_user: Option<String>,
    #[serde(default)]
    pub admin_password: Option<String>,
}

/// `GET /api/v1/rebalance`, `shardgate admin rebalance status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RebalanceStatus {
    /// The running job, or the last one (terminal phase), or none.
    pub job: Option<Job>,
    /// The newest shard-map version in the store.
    pub topology_version: u64,
    /// Every proxy following the store and the version it routes by.
    pub proxies: Vec<ProxyVersion>,
}

/// A refused or failed request, with the HTTP status it maps to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RebalanceError {
    /// 400 bad request, 404 no such shard / no running job, 409 a job is running,
    /// 422 pre-flight refused, 503 store or shard unreachable.
    pub status: u16,
    /// Short machine-readable reason: "bad_request", "not_found", "busy", "preflight", "store".
    pub code: String,
    pub message: String,
    pub hint: String,
    /// The running job's id, for 409.
    pub job_id: Option<String>,
}

/// Runs rebalance jobs for one proxy. At most one job runs across every proxy sharing the store.
pub struct Rebalancer {
    _private: (),
}

impl Rebalancer {
    /// `proxy_id` names this proxy as a job's owner.
    pub fn new(store: Arc<Store>, config: ConfigSource, proxy_id: String) -> Arc<Rebalancer> {
        let _ = (store, config, proxy_id);
        unimplemented!()
    }

    /// Validates the request, runs the pre-flight checks (refusing with 422 and the reason),
    /// records the job (409 if one is running) and starts it in the background.
    pub async fn add_shard(self: &Arc<Self>, req: AddShardRequest) -> Result<Job, RebalanceError> {
        let _ = req;
        unimplemented!()
    }

    /// As `add_shard`, for taking shard `name` out (404 if there is none).
    pub async fn remove_shard(self: &Arc<Self>, name: &str) -> Result<Job, RebalanceError> {
        let _ = name;
        unimplemented!()
    }

    pub async fn status(&self) -> Result<RebalanceStatus, RebalanceError> {
        unimplemented!()
    }

    /// Asks the running job to abort (404 when none runs, 409 once it has committed); returns
    /// the job as it is now. The undo runs in the background; `status` shows it.
    pub async fn abort(self: &Arc<Self>) -> Result<Job, RebalanceError> {
        unimplemented!()
    }

    /// At proxy start: an unfinished job whose runner is gone (stale heartbeat) is taken over —
    /// aborted if it had not committed, finished if it had.
    pub async fn resume(self: &Arc<Self>) {
        unimplemented!()
    }
}
