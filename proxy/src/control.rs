//! The proxy as the admin server sees it: snapshots of shards, pools, replicas and clients,
//! readiness, and reload (see `shardgate_admin::control`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use shardgate_admin::control::{
    ClientCounts, ControlPlane, PoolInfo, QueriesReport, QuerySort, Readiness, RecoveryFuture,
    ReloadError, ReloadOutcome, ReplicaInfo, SetHostsFuture, SetHostsRequest, ShardInfo,
    TransactionsFuture,
};
use shardgate_pool::Role;

use crate::Shared;

/// Counts something while alive (a client holding a server connection, or waiting for one).
#[derive(Debug)]
pub(crate) struct CountGuard(Arc<AtomicU64>);

impl CountGuard {
    pub(crate) fn new(counter: &Arc<AtomicU64>) -> CountGuard {
        counter.fetch_add(1, Ordering::Relaxed);
        CountGuard(Arc::clone(counter))
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Client activity counters the sessions keep.
#[derive(Debug, Default)]
pub(crate) struct ClientActivity {
    pub active: Arc<AtomicU64>,
    pub waiting: Arc<AtomicU64>,
}

/// The [`ControlPlane`] of a running proxy.
pub struct ProxyControl {
    pub(crate) shared: Arc<Shared>,
    /// Where `reload` reads the configuration from (none: reload is refused).
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) draining: Arc<AtomicBool>,
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

impl ControlPlane for ProxyControl {
    fn readiness(&self) -> Readiness {
        let mut reasons = Vec::new();
        if self.draining.load(Ordering::Relaxed) {
            reasons.push("draining: shutting down".to_owned());
        }
        let mut warnings = Vec::new();
        for shard in &self.shared.topo().health.shards {
            let p = shard.writer().snapshot();
            if p.state == "down" {
                reasons.push(format!(
                    "shard {}: primary {} unreachable: {}",
                    shard.name,
                    p.host,
                    p.last_error.unwrap_or_default()
                ));
            }
            // A fence or a failover does not stop this proxy from serving: warnings, not
            // reasons (a fleet that all went unready would stop every write).
            if shard.writer_index() != 0 {
                warnings.push(format!(
                    "shard {}: failed over: writes go to {} (timeline {}), the shard map names {}; \
                     confirm with PUT /api/v1/shards/{}/hosts",
                    shard.name,
                    p.host,
                    shard.writer_timeline().unwrap_or(0),
                    shard.primary.host,
                    shard.name
                ));
            }
            for host in shard.hosts().filter(|h| h.is_fenced()) {
                warnings.push(format!(
                    "shard {}: host {} is fenced: a primary (timeline {}) that is not the shard's \
                     writer {} (split brain); no writes go to it",
                    shard.name,
                    host.host,
                    host.timeline(),
                    p.host
                ));
            }
        }
        Readiness {
            ready: reasons.is_empty(),
            reasons,
            warnings,
        }
    }

    fn shards(&self) -> Vec<ShardInfo> {
        let topo = self.shared.topo();
        let ring = topo.router.ring();
        let total = 1u32 << ring.slot_bits();
        topo.health
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| ShardInfo {
                name: s.name.clone(),
                primary: s.writer().host.to_string(),
                // A promoted replica is listed as the primary, not twice.
                replicas: s
                    .replicas
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i + 1 != s.writer_index())
                    .map(|(_, r)| r.host.to_string())
                    .collect(),
                primary_up: s.writer().is_up(),
                configured_primary: (s.writer_index() != 0).then(|| s.primary.host.to_string()),
                fenced: s
                    .hosts()
                    .filter(|h| h.is_fenced())
                    .map(|h| h.host.to_string())
                    .collect(),
                slots: ring.slots(i).len() as u32,
                total_slots: total,
                topology_version: topo.version,
            })
            .collect()
    }

    fn pools(&self) -> Vec<PoolInfo> {
        let mut pools: Vec<PoolInfo> = self
            .shared
            .pools
            .all()
            .iter()
            .map(|p| {
                let key = p.key();
                let state = p.state();
                let settings = p.settings();
                PoolInfo {
                    database: key.database.clone(),
                    user: key.user.clone(),
                    shard: key.shard.clone(),
                    role: key.role.to_string(),
                    host: key.host.to_string(),
                    size: state.target,
                    min_size: settings.min_size,
                    max_size: settings.max_size,
                    connections: state.connections,
                    idle: state.idle,
                    in_use: state.in_use,
                    waiting: state.waiting,
                    checkouts_timed_out: state.checkouts_timed_out,
                    connections_created: state.connections_created,
                    grown: state.grown,
                    shrunk: state.shrunk,
                    pinned: self.shared.pins.of_pool(key),
                }
            })
            .collect();
        pools.sort_by(|a, b| {
            (&a.shard, &a.role, &a.host, &a.database, &a.user).cmp(&(
                &b.shard,
                &b.role,
                &b.host,
                &b.database,
                &b.user,
            ))
        });
        pools
    }

    fn replicas(&self) -> Vec<ReplicaInfo> {
        self.shared
            .topo()
            .health
            .snapshot()
            .into_iter()
            // A promoted replica that takes writes is the shard's primary now (`shards`).
            .filter(|h| h.role == Role::Replica && !h.writer)
            .map(|h| ReplicaInfo {
                shard: h.shard,
                host: h.host.to_string(),
                state: h.state.to_owned(),
                in_rotation: h.in_rotation,
                lag_seconds: h.lag.map(|l| l.seconds),
                lag_bytes: h.lag.map(|l| l.bytes),
                replay_lsn: h.replay_lsn.map(lsn_text),
                queries: h.queries,
                outstanding: h.outstanding,
                banned_ms: h.banned_for.map(|d| d.as_millis() as u64),
            })
            .collect()
    }

    fn clients(&self) -> ClientCounts {
        let total = self.shared.client_count() as u64;
        let active = self.shared.activity.active.load(Ordering::Relaxed);
        let waiting = self.shared.activity.waiting.load(Ordering::Relaxed);
        ClientCounts {
            active,
            waiting,
            idle: total.saturating_sub(active + waiting),
        }
    }

    fn queries(&self, sort: QuerySort, limit: usize) -> Option<QueriesReport> {
        Some(self.shared.query_log.report(sort, limit))
    }

    fn reset_queries(&self) -> bool {
        self.shared.query_log.reset();
        if let Some(observer) = &self.shared.observer {
            observer.reset();
        }
        true
    }

    fn sharding_readiness(&self) -> Option<shardgate_admin::readiness::ShardingReadiness> {
        self.shared.observer.as_ref().map(|o| o.report())
    }

    fn record_metrics(&self) {
        let cache = self.shared.topo().router.cache_stats();
        metrics::counter!("shardgate_parse_cache_hits_total").absolute(cache.hits);
        metrics::counter!("shardgate_parse_cache_misses_total").absolute(cache.misses);
        self.shared.two_phase.recovery.record_metrics();
        for shard in &self.shared.topo().health.shards {
            for host in shard.hosts() {
                metrics::gauge!("shardgate_fenced_hosts",
                    "shard" => shard.name.clone(), "host" => host.host.to_string())
                .set(if host.is_fenced() { 1.0 } else { 0.0 });
            }
        }
    }

    fn set_hosts(&self, shard: String, request: SetHostsRequest) -> Option<SetHostsFuture> {
        let shared = Arc::clone(&self.shared);
        Some(Box::pin(async move {
            crate::hosts::set_hosts(&shared, &shard, &request).await
        }))
    }

    fn transactions(&self) -> Option<TransactionsFuture> {
        let shared = Arc::clone(&self.shared);
        Some(Box::pin(async move {
            crate::two_phase::recovery::in_doubt(&shared).await
        }))
    }

    fn resolve_transactions(&self) -> Option<RecoveryFuture> {
        let shared = Arc::clone(&self.shared);
        Some(Box::pin(async move {
            crate::two_phase::recovery::resolve_in_doubt(&shared).await
        }))
    }

    fn rebalancer(&self) -> Option<Arc<shardgate_rebalance::Rebalancer>> {
        self.shared.rebalancer.get().cloned()
    }

    fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        let Some(path) = &self.config_path else {
            return Err(ReloadError {
                message: "this proxy was not started from a config file".into(),
                hint: "start it with `shardgate serve --config FILE` to reload".into(),
            });
        };
        let config = shardgate_config::Config::load(path).map_err(|e| ReloadError {
            message: e.to_string(),
            hint: "fix the file and reload again; the running configuration is kept".into(),
        })?;
        let applied = self.shared.apply_config(config);
        tracing::info!(applied = ?applied.applied, needs_restart = ?applied.needs_restart,
            file = %path.display(), "configuration reloaded");
        Ok(ReloadOutcome {
            applied: applied.applied,
            needs_restart: applied.needs_restart,
        })
    }
}
