//! The shard map a proxy routes by, and how it follows the topology store.
//!
//! Everything that depends on the shard list (the router and its ring, each host's health,
//! the per-shard metric handles, whether statements need planning at all) is built together
//! into one [`Topo`] and swapped atomically: a session loads one `Topo` per decision, so it
//! never pairs one map's shard indices with another map's hosts. A new version comes from the
//! store's follower (LISTEN/NOTIFY or polling for the postgres store, in-process for the
//! file store); sessions that hit a rebalance fence wait for it with [`Shared::wait_for_newer`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use shardgate_config::Config;
use shardgate_pool::Health;
use shardgate_router::{RouteError, Router, RouterError};
use shardgate_topology::{ShardMap, Store};

use crate::{stats, Shared};

/// Everything built from one version of the shard map.
pub(crate) struct Topo {
    pub version: u64,
    pub router: Arc<Router>,
    pub health: Arc<Health>,
    pub query_stats: Arc<stats::QueryStats>,
    /// False for a plain pooler (one shard, no sharded tables, no replicas): statements are
    /// not planned.
    pub routing: bool,
    /// BEGIN is answered by the proxy and sent with the transaction's first statement, which
    /// says where it goes (several shards, or replicas for read-only transactions).
    pub defers_begin: bool,
    /// Some shard has replicas: reads may leave the primary.
    pub reads_can_leave_primary: bool,
}

impl Topo {
    /// Builds the routing state for `config` (whose `shards` are the map's) at `version`.
    /// `previous`: the host health of the map it replaces, whose failover state carries over
    /// to shards whose hosts did not change. An observing proxy (`[sharding] mode =
    /// "observe"`) routes without the sharding rules (`readiness`).
    pub(crate) fn build(
        config: &Config,
        version: u64,
        previous: Option<&Health>,
    ) -> Result<Topo, RouterError> {
        let observed;
        let config = if config.sharding.observes() {
            observed = crate::readiness::routing_config(config);
            &observed
        } else {
            config
        };
        let router = Arc::new(Router::new(config)?);
        Ok(Topo::with_router(config, version, router, previous))
    }

    /// As `build`, keeping a router (a reload that changes only hosts or settings).
    pub(crate) fn with_router(
        config: &Config,
        version: u64,
        router: Arc<Router>,
        previous: Option<&Health>,
    ) -> Topo {
        let observed;
        let config = if config.sharding.observes() {
            observed = crate::readiness::routing_config(config);
            &observed
        } else {
            config
        };
        let has_replicas = config.shards.iter().any(|s| !s.replicas.is_empty());
        Topo {
            version,
            query_stats: Arc::new(stats::QueryStats::new(router.shard_names())),
            health: Health::from_config_after(config, previous),
            routing: config.shards.len() > 1 || !config.sharding.tables.is_empty() || has_replicas,
            defers_begin: config.shards.len() > 1 || has_replicas,
            reads_can_leave_primary: has_replicas,
            router,
        }
    }
}

impl Shared {
    /// The current shard map's routing state.
    pub(crate) fn topo(&self) -> arc_swap::Guard<Arc<Topo>> {
        self.topo.load()
    }

    /// The current shard map's routing state, to keep (a session's `view`).
    pub(crate) fn topo_arc(&self) -> Arc<Topo> {
        self.topo.load_full()
    }

    /// Replaces the shard map's routing state.
    pub(crate) fn set_topo(&self, topo: Topo) {
        let version = topo.version;
        self.topo.store(Arc::new(topo));
        self.topo_version.store(version, Ordering::Release);
        self.view_generation.bump();
    }

    /// The version of the shard map routing uses now.
    pub(crate) fn topology_version(&self) -> u64 {
        self.topo_version.load(Ordering::Acquire)
    }

    /// Switches to `map` if it is newer than what this proxy holds. A map the router refuses
    /// (it cannot happen for maps the rebalancer publishes) is logged and skipped.
    pub(crate) fn apply_shard_map(&self, map: &ShardMap) -> bool {
        let current = self.topo();
        if map.version <= current.version {
            return false;
        }
        let mut config = Config::clone(&self.config());
        config.shards = map.shards.clone();
        let topo = match Topo::build(&config, map.version, Some(&current.health)) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(version = map.version, error = %e,
                    "cannot route by the new shard map; keeping version {}", current.version);
                return false;
            }
        };
        drop(current);
        tracing::info!(version = map.version, shards = ?map.names(), "shard map changed");
        self.set_config(Arc::new(config));
        self.set_topo(topo);
        // Sessions drop the pools they cached by shard index.
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.restart_monitor();
        self.topo_changed.send_replace(map.version);
        // A shard that joined has its sequences on its lane already (the rebalancer did that
        // before the publish); here it gets shardgate.unique_id(), in the background.
        let (config, map) = (self.config(), map.clone());
        tokio::spawn(async move { crate::apply_id_lanes(&config, &map).await });
        true
    }

    /// Waits until this proxy holds a shard map newer than `version`, at most `timeout`.
    pub(crate) async fn wait_for_newer(&self, version: u64, timeout: Duration) -> bool {
        let mut rx = self.topo_changed.subscribe();
        let newer = async move { rx.wait_for(|v| *v > version).await.is_ok() };
        tokio::time::timeout(timeout, newer).await.unwrap_or(false)
    }
}

/// This proxy's right to route by the map it holds (postgres store only: a fleet). Renewed
/// each time the follower has read the store's current map, applied it and reported its
/// version; once `topology.lease` has passed since, the map may be stale (a rebalance may have
/// committed and its cleanup may have deleted the sources' copies), so statements are refused
/// with 57P03 until the store answers again. The rebalancer deletes moved rows only after every
/// proxy acknowledged the new map or was silent longer than the lease (rebalance::teardown).
pub(crate) struct Lease {
    enforced: AtomicBool,
    /// `topology.lease` in ms (kept here so the hot path reads no config).
    length_ms: AtomicU64,
    epoch: Instant,
    /// When the last renewal's store read started, in ms since `epoch`.
    renewed_ms: AtomicU64,
}

impl Default for Lease {
    fn default() -> Self {
        Lease {
            enforced: AtomicBool::new(false),
            length_ms: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            renewed_ms: AtomicU64::new(0),
        }
    }
}

impl Lease {
    /// From now on a lease of `length` is required (the proxy follows a postgres store),
    /// renewed now.
    pub(crate) fn enforce(&self, length: Duration) {
        self.set_length(length);
        self.renew(Instant::now());
        self.enforced.store(true, Ordering::Relaxed);
    }

    /// A reload may change `topology.lease`.
    fn set_length(&self, length: Duration) {
        let ms = u64::try_from(length.as_millis()).unwrap_or(u64::MAX);
        self.length_ms.store(ms, Ordering::Relaxed);
    }

    /// `at`: when the read that proved the map current started.
    fn renew(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.epoch).as_millis() as u64;
        self.renewed_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Refuses routing once the lease has passed since the last renewal.
    pub(crate) fn check(&self) -> Result<(), RouteError> {
        if !self.enforced.load(Ordering::Relaxed) {
            return Ok(());
        }
        let length = Duration::from_millis(self.length_ms.load(Ordering::Relaxed));
        let renewed = Duration::from_millis(self.renewed_ms.load(Ordering::Relaxed));
        let age = self.epoch.elapsed().saturating_sub(renewed);
        if age <= length {
            return Ok(());
        }
        Err(RouteError {
            code: shardgate_wire::sqlstate::CANNOT_CONNECT_NOW,
            message: format!(
                "shardgate has not reached its topology store for {:.1} s (topology.lease is \
                 {length:?}): its shard map may be stale, so it routes no statement until the \
                 store answers again",
                age.as_secs_f64()
            ),
            hint: Some(
                "retry shortly; check the metadata database in topology.store and the network \
                 to it"
                    .into(),
            ),
        })
    }
}

/// Follows `store`: applies each new map as it comes, and every poll interval (at most a third
/// of `topology.lease`) reads the store's current map, applies it and reports the version held
/// (the report doubles as this proxy's heartbeat in `rebalance status`); when both succeeded
/// the lease is renewed from the moment the read started. Ends with the proxy.
pub(crate) fn follow(shared: Weak<Shared>, store: Arc<Store>, proxy_id: String, every: Duration) {
    let mut maps = store.follow();
    // Three renewals per lease at least, whatever the poll interval.
    let every = shared
        .upgrade()
        .map(|s| every.min(s.config().topology.lease / 3))
        .unwrap_or(every);
    tokio::spawn(async move {
        let mut report = tokio::time::interval(every);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let changed = tokio::select! {
                changed = maps.changed() => changed.is_ok(),
                _ = report.tick() => false,
            };
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if changed {
                let map = maps.borrow_and_update().clone();
                shared.apply_shard_map(&map);
                // Acknowledge at once (the rebalancer's cleanup waits for it); the lease is
                // renewed only by the periodic read below.
                let version = shared.topology_version();
                drop(shared);
                if let Err(e) = store.report_version(&proxy_id, version).await {
                    tracing::warn!(error = %e, "cannot report the shard-map version to the store");
                }
                continue;
            }
            // A hung store must not hold the renewal forever: the lease then runs out.
            let bound = shared.config().topology.lease;
            shared.lease.set_length(bound);
            let started = Instant::now();
            let renewal = async {
                let map = store.shard_map().await?;
                shared.apply_shard_map(&map);
                store
                    .report_version(&proxy_id, shared.topology_version())
                    .await
            };
            match tokio::time::timeout(bound, renewal).await {
                Ok(Ok(())) => shared.lease.renew(started),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the shard map from the topology store or report to it")
                }
                Err(_) => {
                    tracing::warn!(timeout = ?bound, "the topology store did not answer")
                }
            }
        }
    });
}
