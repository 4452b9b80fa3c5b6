//! The rebalancer: adds or removes a shard while traffic flows, moving the ring slots that
//! change owner with PostgreSQL's logical replication (DESIGN.md, "Live rebalancing").
//!
//! - `plan`: which slots move from which shard to which, and the SQL that selects them;
//! - `preflight`: the checks before anything changes;
//! - `runner`: Preparing → Copying → CatchingUp ⇄ Cutover → (commit) → Cleanup → Done;
//! - `stream`: the Copying and CatchingUp phases;
//! - `ddl`: table DDL with short lock waits, so writers never queue long behind it;
//! - `teardown`: the undo after an abort or failure, and the cleanup after the commit;
//! - `sql`, `conn`, `dsn`, `schema_copy`: statements, control connections, addresses,
//!   `pg_dump | psql`.
//!
//! Unqualified names in `sharding.tables` mean schema `public` to the rebalancer.

/// A place where a crash test may stop the runner (see `failpoints`); nothing without the
/// `failpoints` feature.
macro_rules! failpoint {
    ($name:expr) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoints::crash($name).await;
    };
}
pub(crate) use failpoint;

mod commit;
mod conn;
mod ctx;
mod ddl;
mod dsn;
mod error;
#[cfg(feature = "failpoints")]
pub mod failpoints;
mod plan;
mod preflight;
mod references;
mod revert;
mod runner;
mod schema_copy;
mod sequences;
mod sql;
mod stream;
mod teardown;
mod verify;

#[cfg(test)]
mod fence_bypass_tests;

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use shardgate_config::{Config, Shard};
use shardgate_topology::{
    now_ms, Job, JobKind, Phase, Progress, ProxyVersion, ShardMap, Store, StoreError,
};

pub use dsn::DsnError;
pub use error::EngineError;

/// A server address an operator gave (`host[:port]`, `[v6]:port`, a unix-socket directory, or
/// a `postgres://` URL) that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AddressError {
    #[error(transparent)]
    Unreadable(#[from] dsn::DsnError),
    /// Not echoed: the text holds a password.
    #[error("a host address carries no login here (the shard's admin login is kept)")]
    HasLogin,
}

/// Parses a server address of `PUT /api/v1/shards/{name}/hosts`: as `shards add` reads
/// `--primary`, without a login (the hosts of a shard carry none).
pub fn parse_address(text: &str) -> Result<shardgate_config::Host, AddressError> {
    let parsed = dsn::parse(text)?;
    if parsed.user.is_some() || parsed.password.is_some() {
        return Err(AddressError::HasLogin);
    }
    Ok(parsed.host)
}
pub use references::{verify_references, ReferenceCopy, ReferenceTableCheck, ReferencesReport};
pub use sequences::{
    apply_id_lanes, decode_unique_id, inspect_sequences, SequenceInfo, SequencesReport,
};

use ctx::Ctx;
use plan::Plan;

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
    store: Arc<Store>,
    config: ConfigSource,
    proxy_id: String,
    /// The job this proxy runs, if any.
    running: Mutex<Option<Arc<Ctx>>>,
}

/// A job whose heartbeat is older than this has lost its runner.
const STALE_MS: u64 = 5_000;

fn error(status: u16, code: &str, message: String, hint: impl Into<String>) -> RebalanceError {
    RebalanceError {
        status,
        code: code.into(),
        message,
        hint: hint.into(),
        job_id: None,
    }
}

fn store_error(e: StoreError) -> RebalanceError {
    error(
        503,
        "store",
        format!("the topology store cannot be used: {e}"),
        "check the [topology] store (its database or state file) and retry",
    )
}

fn busy(job: &Job) -> RebalanceError {
    RebalanceError {
        status: 409,
        code: "busy".into(),
        message: format!(
            "rebalance job {} ({} shard {}) is still running ({})",
            job.id,
            match job.kind {
                JobKind::Add { .. } => "add",
                JobKind::Remove { .. } => "remove",
            },
            job.shard_name(),
            job.phase
        ),
        hint: "wait for it to finish (`shardgate admin rebalance status --watch`) or abort it \
               (`shardgate admin rebalance abort`)"
            .into(),
        job_id: Some(job.id.clone()),
    }
}

/// Passwords stay in the store (a restarted runner needs them) but not in status answers.
fn redact(mut job: Job) -> Job {
    let hide = |s: &mut Shard| {
        if s.admin_password.is_some() {
            s.admin_password = Some("********".into());
        }
    };
    job.old_shards.iter_mut().for_each(hide);
    job.new_shards.iter_mut().for_each(hide);
    if let JobKind::Add { shard } = &mut job.kind {
        hide(shard);
    }
    job
}

impl Rebalancer {
    /// `proxy_id` names this proxy as a job's owner.
    pub fn new(store: Arc<Store>, config: ConfigSource, proxy_id: String) -> Arc<Rebalancer> {
        Arc::new(Rebalancer {
            store,
            config,
            proxy_id,
            running: Mutex::new(None),
        })
    }

    /// Validates the request, runs the pre-flight checks (refusing with 422 and the reason),
    /// records the job (409 if one is running) and starts it in the background.
    pub async fn add_shard(self: &Arc<Self>, req: AddShardRequest) -> Result<Job, RebalanceError> {
        if let Err(e) = shardgate_config::check_shard_name(&req.name) {
            return Err(error(
                400,
                "bad_request",
                format!("shard name {e}"),
                "choose another name",
            ));
        }
        let bad = |what: &str, e: dsn::DsnError| {
            error(
                400,
                "bad_request",
                format!("{what}: {e}"),
                "give postgres://user:password@host:port?sslmode=… or host[:port]",
            )
        };
        let primary = dsn::parse(&req.primary).map_err(|e| bad("--primary", e))?;
        let mut replicas = Vec::new();
        for r in &req.replicas {
            replicas.push(dsn::parse(r).map_err(|e| bad("--replica", e))?.host);
        }
        let map = self.store.shard_map().await.map_err(store_error)?;
        if map.shard(&req.name).is_some() {
            return Err(error(
                409,
                "exists",
                format!("shard {} already exists", req.name),
                "choose another name, or remove that shard first",
            ));
        }
        self.refuse_if_busy().await?;
        let shard = Shard {
            name: req.name.clone(),
            primary: primary.host,
            replicas,
            admin_user: req.admin_user.clone().or(primary.user),
            admin_password: req.admin_password.clone().or(primary.password),
        };
        let mut new_shards = map.shards.clone();
        new_shards.push(shard.clone());
        self.start(map, JobKind::Add { shard }, new_shards).await
    }

    /// As `add_shard`, for taking shard `name` out (404 if there is none).
    pub async fn remove_shard(self: &Arc<Self>, name: &str) -> Result<Job, RebalanceError> {
        let map = self.store.shard_map().await.map_err(store_error)?;
        if map.shard(name).is_none() {
            return Err(error(
                404,
                "not_found",
                format!("there is no shard {name}"),
                format!("the shards are: {}", map.names().join(", ")),
            ));
        }
        if map.shards.len() == 1 {
            return Err(preflight::refuse(
                format!("shard {name} is the last shard"),
                "add another shard first; the data needs somewhere to go",
            ));
        }
        let config = (self.config)();
        let default = config
            .sharding
            .default_shard
            .clone()
            .or_else(|| map.shards.first().map(|s| s.name.clone()));
        if default.as_deref() == Some(name) {
            return Err(preflight::refuse(
                format!("shard {name} is the default shard: it holds the unsharded tables"),
                "set sharding.default_shard to another shard and move the unsharded tables there \
                 first",
            ));
        }
        self.refuse_if_busy().await?;
        let new_shards = map
            .shards
            .iter()
            .filter(|s| s.name != name)
            .cloned()
            .collect();
        self.start(
            map,
            JobKind::Remove {
                shard: name.to_owned(),
            },
            new_shards,
        )
        .await
    }

    async fn refuse_if_busy(&self) -> Result<(), RebalanceError> {
        match self.store.job().await.map_err(store_error)? {
            Some(job) if !job.phase.is_terminal() => Err(busy(&job)),
            _ => Ok(()),
        }
    }

    async fn start(
        self: &Arc<Self>,
        map: ShardMap,
        kind: JobKind,
        new_shards: Vec<Shard>,
    ) -> Result<Job, RebalanceError> {
        let config = (self.config)();
        let now = now_ms();
        let mut job = Job {
            id: format!("rb-{now}"),
            kind,
            phase: Phase::Preparing,
            stopped_in: None,
            from_version: map.version,
            old_shards: map.shards,
            new_shards,
            to_version: None,
            owner: self.proxy_id.clone(),
            heartbeat_ms: now,
            started_ms: now,
            finished_ms: None,
            abort_requested: false,
            error: None,
            progress: Progress::default(),
            plan: None,
        };
        let plan = Plan::build(&job, &config).map_err(|e| {
            preflight::refuse(
                e.to_string(),
                "fix [sharding] or [rebalance] in the config and reload",
            )
        })?;
        preflight::check(&plan, &config).await?;
        job.heartbeat_ms = now_ms();
        job.progress.moves = plan.initial_progress();
        job.plan = Some(plan.stored());
        job.progress.message = "preparing".into();
        match self.store.try_start_job(&job).await {
            Ok(()) => {}
            Err(StoreError::Busy(running)) => return Err(busy(&running)),
            Err(e) => return Err(store_error(e)),
        }
        tracing::info!(job = %job.id, shard = job.shard_name(), moves = plan.moves.len(), "rebalance job started");
        self.spawn(config, plan, job.clone(), runner::Start::Fresh);
        Ok(redact(job))
    }

    fn spawn(self: &Arc<Self>, config: Arc<Config>, plan: Plan, job: Job, start: runner::Start) {
        let resumed = matches!(start, runner::Start::Resume);
        let ctx = Ctx::new(self.store.clone(), config, plan, job, resumed);
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(ctx.clone());
        let me = self.clone();
        tokio::spawn(async move {
            runner::run(ctx.clone(), start).await;
            let mut running = me.running.lock().unwrap_or_else(|e| e.into_inner());
            if running.as_ref().is_some_and(|r| Arc::ptr_eq(r, &ctx)) {
                *running = None;
            }
        });
    }

    pub async fn status(&self) -> Result<RebalanceStatus, RebalanceError> {
        let job = self.store.job().await.map_err(store_error)?;
        let map = self.store.shard_map().await.map_err(store_error)?;
        let proxies = self.store.proxies().await.map_err(store_error)?;
        Ok(RebalanceStatus {
            job: job.map(redact),
            topology_version: map.version,
            proxies,
        })
    }

    /// Asks the running job to abort (404 when none runs); returns the job as it is now. The
    /// undo runs in the background (`status` shows it): before the commit it removes what the
    /// job built; in Cleanup it reverts the committed move (see revert.rs).
    pub async fn abort(self: &Arc<Self>) -> Result<Job, RebalanceError> {
        let none = || {
            error(
                404,
                "not_found",
                "no rebalance job is running".into(),
                "`shardgate admin rebalance status` shows the last one",
            )
        };
        let job = self
            .store
            .job()
            .await
            .map_err(store_error)?
            .ok_or_else(none)?;
        if job.phase.is_terminal() {
            return Err(none());
        }
        let local = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(ctx) = local {
            if ctx.id().await == job.id {
                ctx.request_abort();
            }
        }
        let job = self
            .store
            .request_abort()
            .await
            .map_err(store_error)?
            .ok_or_else(none)?;
        tracing::info!(job = %job.id, phase = %job.phase, "rebalance abort requested");
        Ok(redact(job))
    }

    /// At proxy start: an unfinished job whose runner is gone (stale heartbeat) is taken over —
    /// finished if the store's map is the job's new one (the commit point), undone if it is
    /// still the old one; the stored plan is used, not the current config.
    pub async fn resume(self: &Arc<Self>) {
        let job = match self.store.job().await {
            Ok(Some(job)) if !job.phase.is_terminal() => job,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the rebalance job from the topology store");
                return;
            }
        };
        let stale = now_ms().saturating_sub(job.heartbeat_ms) > STALE_MS;
        if job.owner != self.proxy_id && !stale {
            return;
        }
        if let Some(ctx) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            if ctx.plan.job_id == job.id {
                return;
            }
        }
        let config = (self.config)();
        // The plan the job started with, whatever the config says now.
        let plan = match Plan::resume(&job, &config) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(job = %job.id, error = %e, "cannot resume the rebalance job: its plan cannot be rebuilt");
                return;
            }
        };
        let mut job = job;
        tracing::warn!(job = %job.id, phase = %job.phase, previous_owner = %job.owner, "taking over an unfinished rebalance job");
        job.owner = self.proxy_id.clone();
        job.heartbeat_ms = now_ms();
        if let Err(e) = self.store.save_job(&job).await {
            tracing::warn!(job = %job.id, error = %e, "cannot take over the rebalance job");
            return;
        }
        self.spawn(config, plan, job, runner::Start::Resume);
    }
}
