//! Clusters, proxies and checks shared by the rebalance tests: shards started in parallel, a
//! proxy config with `[topology]` and `[rebalance]`, waiting on a job, and what is left on a
//! shard afterwards (rows by shard, checksums, replication objects, fences).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use shardgate_config::Config;
use shardgate_rebalance::{AddShardRequest, RebalanceStatus, Rebalancer};
use shardgate_router::hash::hashint8extended;
use shardgate_router::Ring;
use shardgate_tests::{Auth, ClusterOptions, PgCluster};
use shardgate_topology::{Job, Phase};
use tokio_postgres::Client;

pub const USER: &str = "app";
pub const PASSWORD: &str = "app-secret";
pub const DB: &str = "app";
/// The ring's slot bits (the config default).
pub const BITS: u32 = 14;

/// Shows the proxies' and the rebalancer's logs when `RUST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Starts `n` primaries with user `app` owning database `app` (in parallel: each start is a
/// blocking copy of the template plus pg_ctl).
pub async fn start_clusters(n: usize) -> Vec<PgCluster> {
    let starts = (0..n).map(|i| {
        tokio::task::spawn_blocking(move || {
            let c = PgCluster::start(ClusterOptions::default().user(USER, PASSWORD, Auth::Scram))
                .unwrap_or_else(|e| panic!("start cluster {i}: {e}"));
            c.create_database(DB, USER).expect("create database app");
            c
        })
    });
    let mut out = Vec::with_capacity(n);
    for c in futures_util::future::join_all(starts).await {
        out.push(c.expect("join"));
    }
    out
}

/// A cluster holding database `meta` for the postgres topology store.
pub async fn start_meta() -> PgCluster {
    tokio::task::spawn_blocking(|| {
        let c = PgCluster::start(ClusterOptions::default()).expect("start the metadata cluster");
        c.psql("postgres", "create database meta")
            .expect("create database meta");
        c
    })
    .await
    .expect("join")
}

/// Stops clusters off the async threads (drop runs pg_ctl).
pub async fn stop_clusters(clusters: Vec<PgCluster>) {
    tokio::task::spawn_blocking(move || drop(clusters))
        .await
        .ok();
}

pub fn store_url(meta: &PgCluster) -> String {
    format!(
        "postgres://postgres:postgres@127.0.0.1:{}/meta",
        meta.port()
    )
}

/// `shards add <name>` of `c` as its primary, with the superuser as the admin login.
pub fn add_request(name: &str, c: &PgCluster) -> AddShardRequest {
    AddShardRequest {
        name: name.into(),
        primary: admin_dsn(c),
        replicas: Vec::new(),
        admin_user: None,
        admin_password: None,
    }
}

/// The DSN `shards add` takes for `c`, with the superuser as the shard's admin login.
pub fn admin_dsn(c: &PgCluster) -> String {
    format!("postgres://postgres:postgres@127.0.0.1:{}", c.port())
}

/// A transaction-mode proxy config over `shards` (named `s0`, `s1`, …) sharding `tables` by
/// `user_id`, with the rebalancer logging in as the superuser; `topology` is the body of the
/// `[topology]` table, `rebalance` extra lines of `[rebalance]`.
pub fn proxy_config(
    shards: &[&PgCluster],
    tables: &[&str],
    topology: &str,
    rebalance: &str,
) -> Config {
    let text = proxy_config_text(shards, tables, topology, rebalance);
    Config::from_toml(&text, Path::new("rebalance.toml")).expect("valid proxy config")
}

/// The TOML of [`proxy_config`] (for a `shardgate serve` process's config file).
pub fn proxy_config_text(
    shards: &[&PgCluster],
    tables: &[&str],
    topology: &str,
    rebalance: &str,
) -> String {
    let mut text = format!(
        r#"
[listen]
addr = "127.0.0.1:0"
shutdown_timeout = "2s"

[pool]
mode = "transaction"
size = 8
checkout_timeout = "20s"

[topology]
{topology}

[rebalance]
databases = ["{DB}"]
admin_user = "postgres"
admin_password = "postgres"
fence_wait = "5s"
{rebalance}

[[users]]
name = "{USER}"
password = "{PASSWORD}"
"#
    );
    for t in tables {
        text.push_str(&format!("\n[[sharding.tables]]\nname = \"{t}\"\n"));
    }
    for (i, c) in shards.iter().enumerate() {
        text.push_str(&format!(
            "\n[[shards]]\nname = \"s{i}\"\nprimary = {{ host = \"127.0.0.1\", port = {} }}\n",
            c.port()
        ));
    }
    text
}

pub async fn connect(conn_str: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {conn_str}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The proxy at `port`, as `app`.
pub fn proxy_conn_str(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user={USER} password={PASSWORD} dbname={DB}")
}

/// Straight to database `app` on `c`, as the superuser (sees every catalog row).
pub async fn superuser(c: &PgCluster) -> Client {
    connect(&format!(
        "host=127.0.0.1 port={} user=postgres password=postgres dbname={DB}",
        c.port()
    ))
    .await
}

/// The shard the ring over `names` gives integer key `k`.
pub fn owner(ring: &Ring, k: i64) -> usize {
    ring.shard_for_hash(hashint8extended(k, 0))
}

/// The router's SQL predicate selecting the rows of `table_key` (an int8 expression) that the
/// ring gives shard `i`: used to place generated rows and to count misplaced ones.
pub fn ring_predicate(ring: &Ring, i: usize, key_expr: &str) -> String {
    ring.predicate(i, &format!("hashint8extended(({key_expr})::int8, 0)"))
}

/// Waits until the job's phase satisfies `done` (polling every `every`), panicking with the
/// status JSON after `timeout`.
pub async fn wait_phase(
    rb: &Arc<Rebalancer>,
    timeout: Duration,
    every: Duration,
    mut done: impl FnMut(Phase) -> bool,
) -> RebalanceStatus {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        match rb.status().await {
            Ok(s) => {
                if s.job.as_ref().is_some_and(|j| done(j.phase)) {
                    return s;
                }
                last = Some(s);
            }
            Err(e) => eprintln!("rebalance status failed (retrying): {e} ({e:?})"),
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "no awaited phase after {timeout:?}; last status: {}",
                last.map(|s| json(&s)).unwrap_or_else(|| "none".into())
            );
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits for the job to end and returns it; panics unless it ended in `want`.
pub async fn wait_terminal(rb: &Arc<Rebalancer>, want: Phase, timeout: Duration) -> Job {
    let s = wait_phase(rb, timeout, Duration::from_millis(50), Phase::is_terminal).await;
    let job = s.job.clone().expect("a job");
    assert_eq!(
        job.phase,
        want,
        "job {} ended {} (error: {:?}); status: {}",
        job.id,
        job.phase,
        job.error,
        json(&s)
    );
    job
}

pub fn json(s: &RebalanceStatus) -> String {
    serde_json::to_string_pretty(s).unwrap_or_else(|e| format!("<unserializable: {e}>"))
}

/// What a rebalance must not leave behind on a server: replication slots, publications and
/// subscriptions, fence triggers and fence functions. Empty when clean.
pub async fn leftovers(c: &PgCluster) -> Vec<String> {
    let su = superuser(c).await;
    let queries = [
        ("slot", "select slot_name::text from pg_replication_slots"),
        ("publication", "select pubname::text from pg_publication"),
        ("subscription", "select subname::text from pg_subscription"),
        (
            "fence trigger",
            "select tgname::text from pg_trigger where tgname like 'sg\\_fence%'",
        ),
        (
            "fence function",
            "select proname::text from pg_proc where proname like 'sg\\_fence%'",
        ),
    ];
    let mut out = Vec::new();
    for (what, sql) in queries {
        for row in su.query(sql, &[]).await.expect(sql) {
            out.push(format!("{what} {}", row.get::<_, String>(0)));
        }
    }
    out
}

/// Panics with every leftover on every cluster, named by `label`.
pub async fn assert_clean(clusters: &[(&str, &PgCluster)], when: &str) {
    let mut all = Vec::new();
    for (name, c) in clusters {
        for l in leftovers(c).await {
            all.push(format!("{name}: {l}"));
        }
    }
    assert!(all.is_empty(), "left behind {when}: {all:#?}");
}

/// Row count and an order-independent digest of a table's rows on one server (`None` when the
/// table does not exist there).
pub async fn checksum(client: &Client, table: &str) -> Option<(i64, String)> {
    let exists: bool = client
        .query_one("select to_regclass($1) is not null", &[&table])
        .await
        .expect("to_regclass")
        .get(0);
    if !exists {
        return None;
    }
    let row = client
        .query_one(
            &format!(
                "select count(*), coalesce(md5(string_agg(t::text, '|' order by t::text)), '') \
                 from {table} t"
            ),
            &[],
        )
        .await
        .expect("checksum");
    Some((row.get(0), row.get(1)))
}

/// Each table's checksum on each cluster.
pub async fn checksums(
    clusters: &[&PgCluster],
    tables: &[&str],
) -> BTreeMap<(usize, String), Option<(i64, String)>> {
    let mut out = BTreeMap::new();
    for (i, c) in clusters.iter().enumerate() {
        let su = superuser(c).await;
        for t in tables {
            out.insert((i, t.to_string()), checksum(&su, t).await);
        }
    }
    out
}

/// The shard-map version each proxy routes by (from its control plane).
pub fn routed_version(control: &dyn shardgate_admin::control::ControlPlane) -> u64 {
    control
        .shards()
        .first()
        .map(|s| s.topology_version)
        .unwrap_or(0)
}
