//! Several shards behind one proxy (routing.rs, multi-shard transactions, in-doubt recovery):
//! clusters started in parallel with one schema, a transaction-mode config over them, and the
//! router the proxy uses, to find keys on a given shard.

use std::path::Path;

use shardgate_config::Config;
use shardgate_proxy::ProxyHandle;
use shardgate_tests::{Auth, ClusterOptions, PgCluster};

use super::{connect, init_logs, DB, PASSWORD, USER};

/// `n` PostgreSQL clusters (shards `s0`, `s1`, …), each with user `app` owning database `app`
/// and the same schema, and a proxy in front of them whose `[[sharding.tables]]` are
/// `sharded_tables`. Stop it with [`ShardedEnv::stop`].
pub struct ShardedEnv {
    pub proxy: ProxyHandle,
    pub shards: Vec<PgCluster>,
    pub config: Config,
    pub router: shardgate_router::Router,
}

impl ShardedEnv {
    /// Starts the clusters (in parallel), runs `schema` directly on each, then the proxy.
    /// `extra` is appended to the config (e.g. a `[sharding]` table).
    pub async fn start(n: usize, schema: &str, sharded_tables: &[&str], extra: &str) -> ShardedEnv {
        Self::start_edited(n, schema, sharded_tables, extra, |_| {}).await
    }

    /// Like [`ShardedEnv::start`], with the config changed by `edit` before the proxy starts.
    pub async fn start_edited(
        n: usize,
        schema: &str,
        sharded_tables: &[&str],
        extra: &str,
        edit: impl FnOnce(&mut Config),
    ) -> ShardedEnv {
        init_logs();
        let shards = start_shards(n, schema).await;
        let mut config = sharded_config(&shards, sharded_tables, extra);
        edit(&mut config);
        Self::with_proxy(shards, config).await
    }

    /// A proxy with `config` in front of `shards` (started by [`start_shards`]).
    pub async fn with_proxy(shards: Vec<PgCluster>, config: Config) -> ShardedEnv {
        init_logs();
        let router = shardgate_router::Router::new(&config).expect("router");
        let proxy = shardgate_proxy::start(config.clone())
            .await
            .expect("start proxy");
        ShardedEnv {
            proxy,
            shards,
            config,
            router,
        }
    }

    /// tokio-postgres config string of the proxy for `app`.
    pub fn conn_str(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DB}",
            self.proxy.addr().port()
        )
    }

    /// Connects through the proxy.
    pub async fn connect(&self) -> tokio_postgres::Client {
        connect(&self.conn_str()).await
    }

    /// Connects straight to shard `i`.
    pub async fn connect_shard(&self, i: usize) -> tokio_postgres::Client {
        connect(&shard_conn_str(&self.shards[i])).await
    }

    /// The index of the shard the ring gives integer key `k`.
    pub fn shard_of(&self, k: i64) -> usize {
        self.router
            .shard_for_key(&shardgate_router::KeyValue::Int(k))
    }

    /// The name (`s0`, …) of shard `i`.
    pub fn shard_name(&self, i: usize) -> &str {
        &self.router.shard_names()[i]
    }

    /// The first key at or after `from` that the ring gives shard `i`.
    pub fn key_on(&self, i: usize, from: i64) -> i64 {
        (from..)
            .find(|k| self.shard_of(*k) == i)
            .expect("a key on every shard")
    }

    pub async fn stop(self) {
        self.proxy.shutdown().await;
        let shards = self.shards;
        tokio::task::spawn_blocking(move || drop(shards)).await.ok();
    }
}

/// Starts `n` clusters (in parallel), each with user `app` owning database `app`, and runs
/// `schema` directly on each.
pub async fn start_shards(n: usize, schema: &str) -> Vec<PgCluster> {
    let starts = (0..n).map(|_| {
        tokio::task::spawn_blocking(|| {
            let c = PgCluster::start(ClusterOptions::default().user(USER, PASSWORD, Auth::Scram))
                .expect("start PostgreSQL");
            c.create_database(DB, USER).expect("create database");
            c
        })
    });
    let mut shards = Vec::with_capacity(n);
    for s in futures_util::future::join_all(starts).await {
        shards.push(s.expect("join"));
    }
    for c in &shards {
        connect(&shard_conn_str(c))
            .await
            .batch_execute(schema)
            .await
            .expect("schema on a shard");
    }
    shards
}

/// One HTTP/1.1 request to the admin server on `port` (no body); returns the status and body.
/// Blocking: call it from `spawn_blocking`.
pub fn admin_http(port: u16, method: &str, path: &str) -> (u16, String) {
    shardgate_tests::http::request(port, method, path, None, "")
}

fn shard_conn_str(c: &PgCluster) -> String {
    format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DB}",
        c.port()
    )
}

/// A transaction-mode proxy config over `shards` (named `s0`, `s1`, …) with `sharded_tables`;
/// `extra` (e.g. a `[sharding]` table) goes first.
pub fn sharded_config(shards: &[PgCluster], sharded_tables: &[&str], extra: &str) -> Config {
    let ports: Vec<u16> = shards.iter().map(PgCluster::port).collect();
    let text =
        shardgate_tests::proxy_config::sharded_toml(&ports, USER, PASSWORD, sharded_tables, extra);
    Config::from_toml(&text, Path::new("sharded.toml")).expect("valid config")
}
