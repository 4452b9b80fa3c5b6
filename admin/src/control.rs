//! What the admin server asks of the running proxy. The proxy implements [`ControlPlane`];
//! the HTTP handlers and the metrics renderer only read these snapshots, so this crate never
//! reaches into the proxy's internals (and the proxy's hot path never waits on HTTP).

use serde::{Deserialize, Serialize};

/// Whether the proxy should receive traffic (`GET /ready`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Readiness {
    pub ready: bool,
    /// Why it is not ready (empty when ready): "draining", "shard s1: primary 127.0.0.1:5433
    /// unreachable", …
    pub reasons: Vec<String>,
    /// What an operator must see although the proxy serves: a fenced host (split brain), a
    /// shard whose writes follow a promoted host the hosts list does not name as primary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One shard of the current topology (`GET /api/v1/shards`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardInfo {
    pub name: String,
    /// `host:port` of the primary: the host that takes the shard's writes (after a failover,
    /// the promoted host).
    pub primary: String,
    pub replicas: Vec<String>,
    /// The primary answered its last health check.
    pub primary_up: bool,
    /// The primary the shard map names, when writes follow another host (a failover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configured_primary: Option<String>,
    /// Hosts that answer as primaries but take no writes (split brain), `host:port`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fenced: Vec<String>,
    /// Ring slots this shard owns, and the ring's total.
    pub slots: u32,
    pub total_slots: u32,
    /// Version of the topology this proxy holds.
    pub topology_version: u64,
}

/// One server connection pool (`GET /api/v1/pools`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolInfo {
    pub database: String,
    pub user: String,
    pub shard: String,
    /// "primary" or "replica".
    pub role: String,
    /// `host:port` this pool connects to.
    pub host: String,
    /// Connections the pool may open right now (its self-sized target), and its bounds.
    pub size: u32,
    pub min_size: u32,
    pub max_size: u32,
    /// Open connections, idle ones, ones serving a client.
    pub connections: u32,
    pub idle: u32,
    pub in_use: u32,
    /// Clients waiting for a connection right now.
    pub waiting: u64,
    pub checkouts_timed_out: u64,
    pub connections_created: u64,
    /// Times the pool grew and shrank.
    pub grown: u64,
    pub shrunk: u64,
    /// Clients pinned to a connection of this pool (transaction mode, session state that
    /// cannot be handed over: temp tables, LISTEN, advisory locks, …).
    #[serde(default)]
    pub pinned: u64,
}

/// One replica and what the lag monitor knows of it (`GET /api/v1/replicas`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplicaInfo {
    pub shard: String,
    pub host: String,
    /// "ok", "lagging" (past max_lag), "down" (banned after failed checks) or "unknown"
    /// (not checked yet).
    pub state: String,
    /// In the read rotation now.
    pub in_rotation: bool,
    pub lag_seconds: Option<f64>,
    pub lag_bytes: Option<u64>,
    /// `pg_last_wal_replay_lsn()` at the last check, as PostgreSQL prints it (`0/3000148`).
    pub replay_lsn: Option<String>,
    /// Queries sent to it since start, and running on it now.
    pub queries: u64,
    pub outstanding: u64,
    /// Milliseconds left of its ban, when banned.
    pub banned_ms: Option<u64>,
}

/// Client connection counts, for the `shardgate_clients` gauge.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ClientCounts {
    /// Holding a server connection.
    pub active: u64,
    /// Connected, holding nothing.
    pub idle: u64,
    /// Waiting for a server connection.
    pub waiting: u64,
}

/// What a reload changed (`POST /api/v1/reload`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReloadOutcome {
    /// Config keys (or sections) whose values changed and were applied, e.g. "pool.size".
    pub applied: Vec<String>,
    /// Changed keys that need a restart to take effect (e.g. "listen.addr").
    pub needs_restart: Vec<String>,
}

/// A refused reload: the running configuration is kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ReloadError {
    pub message: String,
    pub hint: String,
}

/// A prepared two-phase transaction a proxy left on a shard (`GET /api/v1/transactions`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InDoubtTransaction {
    /// `sg_<proxy>_<txid>_<shard>`.
    pub gid: String,
    /// The shard it is prepared on.
    pub shard: String,
    pub database: String,
    /// The role that prepared it.
    pub owner: String,
    /// The proxy (its token in gids) and transaction the gid names.
    pub proxy: String,
    pub txid: u64,
    /// Seconds since it was prepared (the shard's clock).
    pub age_seconds: f64,
    /// `commit` when the store holds its commit decision (recovery commits it), `none` when
    /// not (recovery rolls it back: presumed abort).
    pub decision: String,
    /// This proxy is committing it right now; recovery leaves it alone.
    pub in_flight: bool,
}

/// A shard a recovery round or listing could not ask.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardProblem {
    pub shard: String,
    pub error: String,
}

/// `GET /api/v1/transactions`: the in-doubt transactions on every shard and the commit
/// decisions in the topology store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TransactionsReport {
    /// This proxy's token in gids.
    pub proxy: String,
    pub in_doubt: Vec<InDoubtTransaction>,
    pub decisions: Vec<shardgate_topology::CommitDecision>,
    /// Shards that did not answer.
    pub unreachable: Vec<ShardProblem>,
    /// Why the decisions could not be read (then every `decision` says `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
}

/// A prepared transaction a recovery round left alone, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeftTransaction {
    pub gid: String,
    pub shard: String,
    /// `in flight`, `its proxy is alive`, `younger than topology.lease`, or an error.
    pub reason: String,
}

/// What a recovery round did (`POST /api/v1/transactions/resolve`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RecoveryReport {
    /// Gids committed (their decision was recorded) and rolled back (it was not).
    pub committed: Vec<String>,
    pub rolled_back: Vec<String>,
    pub left: Vec<LeftTransaction>,
    /// Decisions dropped from the store because no participant was prepared any more
    /// (`proxy/txid`).
    pub forgotten: Vec<String>,
    pub unreachable: Vec<ShardProblem>,
    /// Other failures (the store unreadable, a COMMIT PREPARED refused), one line each.
    pub errors: Vec<String>,
}

/// How `GET /api/v1/queries` orders the statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QuerySort {
    #[default]
    TotalTime,
    Calls,
    MeanTime,
    Errors,
}

impl QuerySort {
    /// The `sort=` value: `total_time`, `calls`, `mean_time` or `errors`.
    pub fn parse(text: &str) -> Option<QuerySort> {
        match text {
            "total_time" => Some(QuerySort::TotalTime),
            "calls" => Some(QuerySort::Calls),
            "mean_time" => Some(QuerySort::MeanTime),
            "errors" => Some(QuerySort::Errors),
            _ => None,
        }
    }
}

/// How the calls of one statement were routed.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct RouteCounts {
    /// One shard.
    pub single: u64,
    /// A read on several shards, merged in the proxy.
    pub scatter: u64,
    /// A read on several shards gathered into PostgreSQL on the default shard.
    pub gather: u64,
    /// DDL or a write on every shard (keyless write, reference table).
    pub broadcast: u64,
    /// A multi-row INSERT split by shard key.
    pub split_insert: u64,
    /// A COPY FROM STDIN split by shard key.
    pub split_copy: u64,
    /// Refused by the proxy (its SQLSTATE is in `errors_by_class`).
    pub refused: u64,
}

/// One statement shape and what its calls cost (`GET /api/v1/queries`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueryStat {
    /// 16 hex digits of the fingerprint's hash: stable across restarts and proxies, the
    /// `query_id` label of the `shardgate_top_query_*` metrics.
    pub id: String,
    /// The fingerprint: the statement with literals replaced by `$n`, comments dropped.
    pub query: String,
    pub calls: u64,
    /// Calls that ended in an error (the server's or the proxy's).
    pub errors: u64,
    /// Errors by SQLSTATE class (its first two characters).
    pub errors_by_class: std::collections::BTreeMap<String, u64>,
    pub total_ms: f64,
    pub mean_ms: f64,
    /// From a log-bucketed histogram: within about 10% of the true value.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Rows from the command tags (SELECT n, INSERT 0 n, UPDATE n, COPY n, …).
    pub rows: u64,
    /// Shards touched, summed over calls, and the most one call touched.
    pub shards_touched: u64,
    pub max_shards: u32,
    pub routes: RouteCounts,
    /// Calls that ran on the primary and on a replica.
    pub primary: u64,
    pub replica: u64,
}

/// `GET /api/v1/queries`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct QueriesReport {
    pub queries: Vec<QueryStat>,
    /// Statement shapes tracked now, and the bound (`stats.max_queries`).
    pub tracked: u64,
    pub max_queries: u64,
    /// Shapes dropped to keep the bound (the ones with the least total time go first).
    pub evicted: u64,
}

/// `PUT /api/v1/shards/{name}/hosts`: the shard's hosts from now on. The primary named takes
/// the writes (this is how an operator confirms a failover or un-fences a host).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SetHostsRequest {
    /// `host[:port]`, `[v6]:port`, a unix-socket directory, or a `postgres://` URL without a
    /// login (its `sslmode` and `sslrootcert` are kept).
    pub primary: String,
    #[serde(default)]
    pub replicas: Vec<String>,
}

/// What a hosts change did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SetHostsOutcome {
    pub shard: String,
    /// False when the shard already had exactly these hosts (nothing was published).
    pub changed: bool,
    /// The shard-map version that carries them.
    pub topology_version: u64,
    pub primary: String,
    pub replicas: Vec<String>,
}

/// A refused hosts change: the HTTP status, and what to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SetHostsError {
    pub status: u16,
    pub message: String,
    pub hint: String,
}

/// What [`ControlPlane::set_hosts`] answers with.
pub type SetHostsFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<SetHostsOutcome, SetHostsError>> + Send>,
>;

/// What [`ControlPlane::transactions`] answers with.
pub type TransactionsFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = TransactionsReport> + Send>>;

/// What [`ControlPlane::resolve_transactions`] answers with.
pub type RecoveryFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = RecoveryReport> + Send>>;

/// The running proxy, as the admin server sees it. Every method is a cheap snapshot.
pub trait ControlPlane: Send + Sync + 'static {
    fn readiness(&self) -> Readiness;
    fn shards(&self) -> Vec<ShardInfo>;
    fn pools(&self) -> Vec<PoolInfo>;
    fn replicas(&self) -> Vec<ReplicaInfo>;
    fn clients(&self) -> ClientCounts;
    /// Re-reads the config file and applies what can change live.
    fn reload(&self) -> Result<ReloadOutcome, ReloadError>;
    /// Called at each `/metrics` scrape: lets the proxy publish figures it keeps itself
    /// (e.g. its statement cache's hit counts) as metrics.
    fn record_metrics(&self) {}
    /// The rebalancer behind the shard-changing endpoints (`None`: they answer 501).
    fn rebalancer(&self) -> Option<std::sync::Arc<crate::rebalance::Rebalancer>> {
        None
    }
    /// `GET /api/v1/sequences`: the sequences of the sharded tables on every shard, with their
    /// id lanes, as the shards answer now (`None`: 501). By default through the rebalancer,
    /// which has the store's shard map and the config.
    fn sequences(&self) -> Option<SequencesFuture> {
        let rebalancer = self.rebalancer()?;
        Some(Box::pin(async move { rebalancer.sequences().await }))
    }
    /// `GET /api/v1/verify/references`: each reference table's row count and checksum on
    /// every shard, and whether the copies drifted apart (`None`: 501). By default through the
    /// rebalancer.
    fn verify_references(&self) -> Option<ReferencesFuture> {
        let rebalancer = self.rebalancer()?;
        Some(Box::pin(
            async move { rebalancer.verify_references().await },
        ))
    }
    /// `GET /api/v1/transactions`: the in-doubt two-phase transactions on every shard and the
    /// stored commit decisions, as they are now (`None`: 501).
    fn transactions(&self) -> Option<TransactionsFuture> {
        None
    }
    /// `POST /api/v1/transactions/resolve`: runs a recovery round now (`None`: 501).
    fn resolve_transactions(&self) -> Option<RecoveryFuture> {
        None
    }
    /// `GET /api/v1/queries`: the `limit` statement shapes first by `sort` (`None`: 501).
    fn queries(&self, _sort: QuerySort, _limit: usize) -> Option<QueriesReport> {
        None
    }
    /// `DELETE /api/v1/queries`: forgets every statement's statistics; whether it did.
    fn reset_queries(&self) -> bool {
        false
    }
    /// `GET /api/v1/readiness`: the sharding readiness report of an observing proxy
    /// (`None`: 501, the proxy routes).
    fn sharding_readiness(&self) -> Option<crate::readiness::ShardingReadiness> {
        None
    }
    /// `PUT /api/v1/shards/{name}/hosts`: publishes the shard's new hosts in the topology
    /// store (every proxy of the fleet follows) (`None`: 501).
    fn set_hosts(&self, _shard: String, _request: SetHostsRequest) -> Option<SetHostsFuture> {
        None
    }
}

/// What [`ControlPlane::verify_references`] answers with.
pub type ReferencesFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<
                    crate::rebalance::ReferencesReport,
                    crate::rebalance::RebalanceError,
                >,
            > + Send,
    >,
>;

/// What [`ControlPlane::sequences`] answers with.
pub type SequencesFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<
                    crate::rebalance::SequencesReport,
                    crate::rebalance::RebalanceError,
                >,
            > + Send,
    >,
>;
