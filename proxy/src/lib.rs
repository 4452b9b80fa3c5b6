//! The client side of shardgate: listeners, startup and authentication, and the session state
//! machine that forwards each client's messages to pooled server connections.
//!
//! `start` runs a proxy from a [`Config`] and returns a handle to stop it; the `shardgate`
//! binary (main.rs) and the end-to-end tests both use it.

mod attached;
mod attachment;
mod auth;
mod boundary;
mod bounds;
mod broadcast;
mod cancel;
mod checkout;
mod client;
mod client_state;
mod control;
mod copy_split;
mod cross;
mod detached;
mod encoding;
mod fence;
mod gather;
mod held;
mod hosts;
mod io;
mod last_parse;
mod limits;
mod listener;
mod local_answer;
mod login;
mod multi_txn;
mod one_statement;
mod pinning;
mod pool_retire;
mod prepared;
mod query_stats;
mod read_your_writes;
mod readiness;
mod reference;
mod relay;
mod reload;
mod replicas;
mod replies;
mod routing;
mod routing_state;
mod scatter;
mod session;
mod session_state;
mod shutdown_signal;
mod split_insert;
mod startup;
mod stats;
mod timeouts;
mod tls;
mod topology;
mod two_phase;
mod txn;
mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use shardgate_config::{Config, User};
use shardgate_pool::{ConnectTarget, PoolKey, PoolSettings, Pools, ServerPool};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

pub use control::ProxyControl;

/// A place where a crash test may stop the proxy (the `failpoints` feature; nothing without
/// it). See `shardgate_rebalance::failpoints` for the actions.
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        shardgate_rebalance::failpoints::crash($name).await;
    };
}
pub(crate) use failpoint;
pub use listener::ListenError;
pub use routing::explain;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot build the shard ring: {0}")]
    Router(shardgate_router::RouterError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot open the topology store: {0}")]
    Topology(shardgate_topology::StoreError),
}

/// Why a client session ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client disconnected")]
    ClientGone,
    #[error("authentication failed")]
    AuthFailed,
    #[error("too many client connections")]
    TooManyClients,
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("server error: {0}")]
    Server(String),
    #[error("{0}")]
    ServerLost(String),
    #[error("startup failed: {0}")]
    Startup(String),
    #[error("idle timeout")]
    IdleTimeout,
    /// `[timeouts]`: which one (query, idle_in_transaction, transaction, client_write).
    #[error("{0} timeout")]
    Timeout(&'static str),
    #[error("shutting down")]
    Shutdown,
}

/// State every session shares. What a reload may change sits behind an `ArcSwap`: sessions
/// load the current value when they need it, and in-flight work keeps the one it started with.
pub struct Shared {
    config: ArcSwap<Config>,
    /// The shard map's routing state: router, hosts' health, per-shard metric handles.
    topo: ArcSwap<topology::Topo>,
    /// `topo`'s version, stored after it: read twice per transaction, and an atomic load is
    /// a tenth of an `ArcSwap` load.
    topo_version: AtomicU64,
    /// The version of each map applied, for sessions waiting out a rebalance fence.
    topo_changed: watch::Sender<u64>,
    /// Where the shard map lives (none: a static map, e.g. `shardgate check`).
    store: Option<Arc<shardgate_topology::Store>>,
    rebalancer: std::sync::OnceLock<Arc<shardgate_rebalance::Rebalancer>>,
    /// The right to route by the map held (`topology.lease`; postgres store only).
    lease: topology::Lease,
    /// The health and lag monitor (restarted when a reload changes what it watches).
    monitor: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Bumped by each reload or shard-map change that changes pools: sessions drop the pools
    /// they cached.
    generation: AtomicU64,
    /// Bumped by each replacement of `config` or `topo`: sessions' views reload (`view`).
    view_generation: view::ViewGeneration,
    /// `listen.max_client_connections` as the client slots were last sized.
    max_clients: std::sync::atomic::AtomicUsize,
    activity: control::ClientActivity,
    /// Set when shutdown starts: `/ready` answers 503.
    draining: Arc<std::sync::atomic::AtomicBool>,
    auth: ArcSwap<auth::Authenticator>,
    /// TLS to clients (`[tls]`); its certificate is re-read on reload.
    tls: tls::ClientTls,
    pools: Pools,
    statements: prepared::StatementRegistry,
    pins: pinning::PinCounts,
    /// Sessions keeping their serving future between batches (`session::KeptServes`).
    kept_serves: session::KeptServes,
    cancels: cancel::CancelRegistry,
    client_slots: Arc<Semaphore>,
    client_caps: Arc<limits::ClientCaps>,
    next_client_id: AtomicU64,
    /// Two-phase commit across shards: transaction ids, gids, in-doubt recovery.
    pub(crate) two_phase: two_phase::Coordinator,
    /// Per-query statistics (`[stats]`, `GET /api/v1/queries`); kept across reloads.
    pub(crate) query_log: query_stats::QueryLog,
    /// `[sharding] mode = "observe"`: plans every statement for the readiness report.
    pub(crate) observer: Option<readiness::Observer>,
}

impl Shared {
    fn new(config: Config, topo: topology::Topo, proxy_id: &str) -> Self {
        let host_policy = shardgate_pool::HostPolicy::from_config(&config.pool);
        Shared {
            two_phase: two_phase::Coordinator::new(proxy_id),
            query_log: query_stats::QueryLog::new(config.stats.max_queries),
            observer: None,
            topo_changed: watch::Sender::new(topo.version),
            topo_version: AtomicU64::new(topo.version),
            topo: ArcSwap::from_pointee(topo),
            store: None,
            rebalancer: std::sync::OnceLock::new(),
            lease: topology::Lease::default(),
            activity: control::ClientActivity::default(),
            draining: Arc::default(),
            auth: ArcSwap::from_pointee(auth::Authenticator::new(&config)),
            tls: tls::ClientTls::disabled(),
            client_slots: Arc::new(Semaphore::new(config.listen.max_client_connections)),
            client_caps: Arc::default(),
            max_clients: config.listen.max_client_connections.into(),
            monitor: std::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            view_generation: Default::default(),
            config: ArcSwap::from_pointee(config),
            pools: Pools::new(host_policy),
            statements: prepared::StatementRegistry::default(),
            pins: pinning::PinCounts::default(),
            kept_serves: session::KeptServes::default(),
            cancels: cancel::CancelRegistry::default(),
            next_client_id: AtomicU64::new(1),
        }
    }

    /// The running configuration, borrowed: no reference count touched (sessions on every
    /// worker read it several times per transaction, and a shared counter is a contended
    /// cache line). Keep it only briefly; [`Shared::config_arc`] keeps it longer.
    fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// The running configuration, to keep (across awaits, in a task).
    fn config_arc(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Replaces the running configuration (a reload, a new shard map).
    fn set_config(&self, config: Arc<Config>) {
        self.config.store(config);
        self.view_generation.bump();
    }

    /// (Re)starts the health and lag monitor for the current hosts and settings.
    fn restart_monitor(&self) {
        let config = self.config();
        // The monitor also reads each server's max_connections for the pools' host budgets.
        let task = shardgate_pool::MonitorLogin::from_config(&config).map(|login| {
            shardgate_pool::spawn_monitor_with_budgets(
                Arc::clone(&self.topo().health),
                config.replicas.clone(),
                login,
                Some(Arc::clone(self.pools.budgets())),
            )
        });
        let old = std::mem::replace(
            &mut *self.monitor.lock().unwrap_or_else(|e| e.into_inner()),
            task,
        );
        if let Some(old) = old {
            old.abort();
        }
    }

    fn stop_monitor(&self) {
        if let Some(task) = self
            .monitor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }

    fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }

    fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.client_slots).try_acquire_owned().ok()
    }

    /// The role and address of a shard's host.
    fn host_of(
        &self,
        shard: shardgate_router::ShardIndex,
        choice: shardgate_pool::HostChoice,
    ) -> (shardgate_pool::Role, shardgate_config::Host) {
        let fallback = || {
            (
                shardgate_pool::Role::Primary,
                self.config().default_shard().primary.clone(),
            )
        };
        let topo = self.topo();
        let Some(s) = topo.health.shard(shard) else {
            return fallback();
        };
        // The role is the choice's, not the host's: a promoted replica takes writes.
        let role = match choice {
            shardgate_pool::HostChoice::Primary => shardgate_pool::Role::Primary,
            shardgate_pool::HostChoice::Replica(_) => shardgate_pool::Role::Replica,
        };
        s.host(choice)
            .map(|h| (role, h.host.clone()))
            .unwrap_or_else(fallback)
    }

    /// The pool for `key`, created on first use from the config.
    fn pool(&self, key: PoolKey, user: &User) -> ServerPool {
        let config = self.config();
        self.pools
            .get_or_create(key.clone(), || pool_setup(&config, &key, user))
    }

    /// Clients connected right now.
    pub fn client_count(&self) -> usize {
        self.max_clients
            .load(Ordering::Relaxed)
            .saturating_sub(self.client_slots.available_permits())
    }
}

/// How the pool for `key` connects and is sized under `config`.
fn pool_setup(config: &Config, key: &PoolKey, user: &User) -> (ConnectTarget, PoolSettings) {
    let target = ConnectTarget {
        host: key.host.clone(),
        user: user.server_user().to_owned(),
        password: user.server_password().map(str::to_owned),
        database: key.database.clone(),
        application_name: "shardgate".into(),
        connect_timeout: config.pool.connect_timeout,
    };
    let settings = PoolSettings {
        max_size: user.pool_size.unwrap_or(config.pool.size),
        ..PoolSettings::from_config(&config.pool)
    };
    (target, settings)
}

/// A running proxy.
pub struct ProxyHandle {
    addr: SocketAddr,
    unix_socket: Option<PathBuf>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    accept_tasks: Vec<JoinHandle<()>>,
}

impl ProxyHandle {
    /// The TCP address clients connect to (the real port when the config said port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn unix_socket(&self) -> Option<&PathBuf> {
        self.unix_socket.as_ref()
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The admin server's view of this proxy; `config_path` is what a reload re-reads.
    pub fn control(&self, config_path: Option<PathBuf>) -> Arc<ProxyControl> {
        Arc::new(ProxyControl {
            shared: Arc::clone(&self.shared),
            config_path,
            draining: Arc::clone(&self.shared.draining),
        })
    }

    /// Stops accepting, asks idle clients to leave, waits up to `listen.shutdown_timeout` for
    /// the rest to finish their transactions, then returns.
    pub async fn shutdown(self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        for t in &self.accept_tasks {
            t.abort();
        }
        self.shared.stop_monitor();
        let _ = self.shutdown.send(true);
        if let Some(p) = &self.unix_socket {
            let _ = std::fs::remove_file(p);
        }
        let deadline = tokio::time::Instant::now() + self.shared.config().listen.shutdown_timeout;
        while self.shared.client_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Starts listening and serving clients, with the shard map in `[topology]`'s store (a file
/// store keeps its state in `topology.state_file`, or in memory when unset).
pub async fn start(config: Config) -> Result<ProxyHandle, StartError> {
    let state_file = config.topology.state_file.clone();
    start_with_state_file(config, state_file).await
}

/// As [`start`], with the file store's state file given (`shardgate serve` puts it next to the
/// config file).
pub async fn start_with_state_file(
    mut config: Config,
    state_file: Option<PathBuf>,
) -> Result<ProxyHandle, StartError> {
    let store = shardgate_topology::Store::open(&config, state_file)
        .await
        .map_err(StartError::Topology)?;
    let map = store.shard_map().await.map_err(StartError::Topology)?;
    if map.shards != config.shards {
        // The store records rebalances; the file's [[shards]] only seeded it.
        tracing::info!(version = map.version, shards = ?map.names(),
            "routing by the topology store's shard map, not the config file's [[shards]]");
        config.shards = map.shards.clone();
    }
    if !config.sharding.observes() {
        // (An observing proxy changes nothing in the database it observes.)
        apply_id_lanes(&config, &map).await;
    }
    let topo = topology::Topo::build(&config, map.version, None).map_err(StartError::Router)?;
    let observer = config
        .sharding
        .observes()
        .then(|| readiness::Observer::new(&config))
        .transpose()
        .map_err(StartError::Router)?;
    let poll_interval = config.topology.poll_interval;
    // A bad certificate stops the start before anything is bound.
    let tls = tls::ClientTls::disabled();
    tls.start(&config.tls)?;
    // Bound before the shared state: the default proxy id names the port, and the id is in
    // every two-phase gid.
    let listeners = listener::bind(&config).await?;
    let addr = listeners.addr;
    let unix_socket = listeners.unix_path.clone();
    let proxy_id = config
        .topology
        .proxy_id
        .clone()
        .unwrap_or_else(|| format!("{}:{}", host_name(), addr.port()));
    let mut shared = Shared::new(config, topo, &proxy_id);
    shared.observer = observer;
    shared.tls = tls;
    shared.store = Some(Arc::clone(&store));
    if store.kind() == "postgres" {
        shared.lease.enforce(shared.config().topology.lease);
    }
    let shared = Arc::new(shared);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let accept_tasks = listeners.spawn(Arc::clone(&shared), shutdown_rx);
    shared.restart_monitor();
    // In-doubt two-phase transactions: resolved now and every two_phase_recovery_interval.
    two_phase::recovery::spawn(Arc::downgrade(&shared), shutdown.subscribe());

    let weak = Arc::downgrade(&shared);
    let fallback = shared.config_arc();
    let config_source: shardgate_rebalance::ConfigSource = Arc::new(move || {
        weak.upgrade()
            .map(|s| s.config_arc())
            .unwrap_or_else(|| Arc::clone(&fallback))
    });
    let rebalancer =
        shardgate_rebalance::Rebalancer::new(Arc::clone(&store), config_source, proxy_id.clone());
    let _ = shared.rebalancer.set(Arc::clone(&rebalancer));
    topology::follow(
        Arc::downgrade(&shared),
        store,
        proxy_id.clone(),
        poll_interval,
    );
    // A job this proxy (or a vanished one) left unfinished is undone or finished.
    tokio::spawn(async move { rebalancer.resume().await });

    let worker_threads = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(%addr, unix_socket = ?unix_socket, %proxy_id, version = map.version,
        worker_threads, "shardgate listening");
    Ok(ProxyHandle {
        addr,
        unix_socket,
        shared,
        shutdown,
        accept_tasks,
    })
}

/// Puts the sequences of sharded tables on their shards' id lanes and installs
/// `shardgate.unique_id()`: at start before clients are served, and after each new shard map
/// (bounded; what cannot be done is logged, naming the table, and the proxy goes on:
/// `shardgate admin sequences` shows it).
pub(crate) async fn apply_id_lanes(config: &Config, map: &shardgate_topology::ShardMap) {
    if config.sharding.id_lanes == 0 || config.sharding.tables.is_empty() {
        return;
    }
    let report = shardgate_rebalance::apply_id_lanes(config, map).await;
    for warning in &report.warnings {
        tracing::warn!(%warning, "id lanes");
    }
    let on_lane = report.sequences.iter().filter(|s| s.on_lane).count();
    tracing::info!(
        lanes = report.lanes,
        sequences = report.sequences.len(),
        on_lane,
        warnings = report.warnings.len(),
        "id lanes checked"
    );
}

/// This machine's name, for the default proxy id.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
