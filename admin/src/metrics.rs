//! The Prometheus exporter: one process-wide recorder, the description of every shardgate
//! metric, and the gauges that come from [`ControlPlane`] snapshots, set at each scrape.
//!
//! The proxy and the pools record their counters with the `metrics` macros and the literal
//! names listed in the README's "Metrics" section (they do not all depend on this crate, so
//! the names cannot be shared constants); this module only describes them. The latency
//! histograms are [`crate::histogram`]'s, rendered after the exporter's text.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

use crate::control::ControlPlane;

/// Content type of the text exposition format `render` produces.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often idle gauges are dropped and descriptions published between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Snapshot gauges not set for this long are dropped, so a pool or replica removed by a reload
/// stops being exported. Every scrape sets the live ones again just before rendering.
const SNAPSHOT_GAUGE_IDLE: Duration = Duration::from_secs(120);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as the process's global `metrics` recorder (once: later
/// calls, e.g. from several proxies started by one test process, get the same handle), starts
/// its upkeep thread and describes every shardgate metric.
///
/// If another global recorder was installed first (not something shardgate does), the metrics
/// go to that one and `/metrics` renders an empty, detached recorder; a warning says so.
pub fn install() -> PrometheusHandle {
    HANDLE.get_or_init(install_once).clone()
}

fn install_once() -> PrometheusHandle {
    let recorder = builder().build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!(
            "another metrics recorder is already installed; /metrics will not show shardgate's \
             metrics"
        );
    }
    let upkeep = handle.clone();
    // A thread rather than a tokio task: the recorder outlives any one runtime (tests start a
    // runtime per test), and upkeep is a few microseconds every few seconds.
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            upkeep.run_upkeep();
        });
    if let Err(e) = spawned {
        // Rendering publishes descriptions too; only idle gauges then outlive their time.
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
    }
    describe();
    handle
}

fn builder() -> PrometheusBuilder {
    // No histograms go through the exporter (see `histogram`): nothing to configure for them.
    PrometheusBuilder::new().idle_timeout(MetricKindMask::GAUGE, Some(SNAPSHOT_GAUGE_IDLE))
}

/// Help text and unit of every metric; the README's "Metrics" table says the same.
fn describe() {
    describe_gauge!(
        "shardgate_clients",
        Unit::Count,
        "Client connections by state: active (holding a server connection), idle, waiting."
    );
    describe_gauge!(
        "shardgate_server_connections",
        Unit::Count,
        "Open server connections per shard, role and host, by state (idle, active)."
    );
    describe_gauge!(
        "shardgate_pinned_clients",
        Unit::Count,
        "Clients pinned to their server connection in transaction mode (session state such as temp tables, LISTEN or advisory locks)."
    );
    describe_gauge!(
        "shardgate_pool_size",
        Unit::Count,
        "Connections the pools for a shard, role and host may open now (self-sized target)."
    );
    describe_gauge!(
        "shardgate_pool_waiting",
        Unit::Count,
        "Clients waiting for a server connection, per shard, role and host."
    );
    describe_counter!(
        "shardgate_pool_resizes_total",
        Unit::Count,
        "Times the pools for a shard, role and host grew (direction=up) or shrank (down)."
    );
    describe_counter!(
        "shardgate_timeouts_total",
        Unit::Count,
        "Timeouts that fired, by kind (query, idle_in_transaction, transaction, client_write)."
    );
    describe_counter!(
        "shardgate_pools_retired_total",
        Unit::Count,
        "Pools dropped because the server refused their database (3D000) or login (28xxx)."
    );
    describe_counter!(
        "shardgate_queries_total",
        Unit::Count,
        "Statements routed, per shard, role and route (single, multi, broadcast)."
    );
    describe_counter!(
        "shardgate_errors_total",
        Unit::Count,
        "Error responses sent to clients, by SQLSTATE class (first two characters)."
    );
    describe_counter!(
        "shardgate_client_bytes_received_total",
        Unit::Bytes,
        "Bytes received from clients."
    );
    describe_counter!(
        "shardgate_client_bytes_sent_total",
        Unit::Bytes,
        "Bytes sent to clients."
    );
    describe_gauge!(
        "shardgate_replica_lag_seconds",
        Unit::Seconds,
        "Replication lag of a replica at its last check, in seconds."
    );
    describe_gauge!(
        "shardgate_replica_lag_bytes",
        Unit::Bytes,
        "Replication lag of a replica at its last check, in WAL bytes."
    );
    describe_gauge!(
        "shardgate_replica_in_rotation",
        Unit::Count,
        "1 when the replica serves reads now, 0 when lagging, down or not yet checked."
    );
    describe_counter!(
        "shardgate_replica_transitions_total",
        Unit::Count,
        "Times a replica entered (to=in) or left (to=out) the read rotation."
    );
    describe_counter!(
        "shardgate_parse_cache_hits_total",
        Unit::Count,
        "Statements whose route plan came from the parse cache."
    );
    describe_counter!(
        "shardgate_parse_cache_misses_total",
        Unit::Count,
        "Statements the router had to parse."
    );
    describe_gauge!(
        "shardgate_topology_version",
        Unit::Count,
        "Version of the shard topology this proxy holds."
    );
    describe_gauge!(
        "shardgate_in_doubt_transactions",
        Unit::Count,
        "Prepared two-phase transactions (gid sg_…) left on the shards after the last recovery round."
    );
    describe_gauge!(
        "shardgate_in_doubt_oldest_seconds",
        Unit::Seconds,
        "Age of the oldest of them (0 when there is none)."
    );
    for (name, unit, help) in [
        ("shardgate_top_query_calls", Unit::Count, "Calls of one of the 20 statements with the most total time (label query_id: its fingerprint id in /api/v1/queries; shards: the most shards one call touched)."),
        ("shardgate_top_query_errors", Unit::Count, "Calls of that statement that ended in an error."),
        ("shardgate_top_query_rows", Unit::Count, "Rows that statement's calls returned or changed."),
        ("shardgate_top_query_seconds", Unit::Seconds, "Total time of that statement's calls."),
        ("shardgate_top_query_p99_seconds", Unit::Seconds, "99th percentile of that statement's call time (within about 10%)."),
    ] {
        describe_gauge!(name, unit, help);
    }
    describe_counter!(
        "shardgate_two_phase_resolved_total",
        Unit::Count,
        "In-doubt transactions recovery resolved, by outcome (commit: its decision was stored; rollback: it was not)."
    );
    describe_gauge!(
        "shardgate_fenced_hosts",
        Unit::Count,
        "1 for a host that answers as a primary but is not its shard's writer (split brain): no writes go to it."
    );
    describe_counter!(
        "shardgate_failovers_total",
        Unit::Count,
        "Times a shard's writes moved to a promoted host because its primary was unreachable or in recovery."
    );
}

/// Pool figures summed over database and user, keyed by (shard, role, host), so the labels
/// stay few whatever the number of users.
#[derive(Default)]
struct PoolSums {
    idle: u64,
    active: u64,
    size: u64,
    waiting: u64,
    grown: u64,
    shrunk: u64,
}

/// Sets the gauges (and the resize counters) that come from the control plane's snapshots.
/// Called at each scrape, just before rendering.
pub fn record_snapshot(control: &dyn ControlPlane) {
    let clients = control.clients();
    for (state, value) in [
        ("active", clients.active),
        ("idle", clients.idle),
        ("waiting", clients.waiting),
    ] {
        gauge!("shardgate_clients", "state" => state).set(value as f64);
    }

    let mut pools: BTreeMap<(String, String, String), PoolSums> = BTreeMap::new();
    let mut pinned = 0;
    for p in control.pools() {
        pinned += p.pinned;
        let sums = pools.entry((p.shard, p.role, p.host)).or_default();
        sums.idle += u64::from(p.idle);
        sums.active += u64::from(p.in_use);
        sums.size += u64::from(p.size);
        sums.waiting += p.waiting;
        sums.grown += p.grown;
        sums.shrunk += p.shrunk;
    }
    gauge!("shardgate_pinned_clients").set(pinned as f64);
    for ((shard, role, host), sums) in pools {
        let labels = [("shard", shard), ("role", role), ("host", host)];
        for (state, value) in [("idle", sums.idle), ("active", sums.active)] {
            gauge!(
                "shardgate_server_connections",
                &with(&labels, "state", state)
            )
            .set(value as f64);
        }
        gauge!("shardgate_pool_size", &labels).set(sums.size as f64);
        gauge!("shardgate_pool_waiting", &labels).set(sums.waiting as f64);
        // `absolute` never moves a counter backwards (it keeps the maximum), so a pool that
        // disappears in a reload does not make the sum look like a counter reset.
        for (direction, value) in [("up", sums.grown), ("down", sums.shrunk)] {
            counter!(
                "shardgate_pool_resizes_total",
                &with(&labels, "direction", direction)
            )
            .absolute(value);
        }
    }

    for r in control.replicas() {
        let labels = [("shard", r.shard), ("host", r.host)];
        if let Some(seconds) = r.lag_seconds {
            gauge!("shardgate_replica_lag_seconds", &labels).set(seconds);
        }
        if let Some(bytes) = r.lag_bytes {
            gauge!("shardgate_replica_lag_bytes", &labels).set(bytes as f64);
        }
        gauge!("shardgate_replica_in_rotation", &labels).set(if r.in_rotation { 1.0 } else { 0.0 });
    }

    if let Some(version) = control.shards().iter().map(|s| s.topology_version).max() {
        gauge!("shardgate_topology_version").set(version as f64);
    }
}

fn with(
    labels: &[(&'static str, String); 3],
    key: &'static str,
    value: &str,
) -> [(&'static str, String); 4] {
    let [a, b, c] = labels.clone();
    [a, b, c, (key, value.to_owned())]
}

/// Sets the snapshot gauges and renders every metric in the Prometheus text format.
pub fn render(handle: &PrometheusHandle, control: &dyn ControlPlane) -> String {
    record_snapshot(control);
    crate::queries::record_top_queries(control);
    control.record_metrics();
    let mut text = handle.render();
    crate::histogram::render(&mut text);
    text
}
