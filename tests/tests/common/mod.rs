//! Shared set-up for the end-to-end tests: a real PostgreSQL and a shardgate in front of it.
#![allow(dead_code)]

use std::path::Path;

use shardgate_config::Config;
use shardgate_proxy::ProxyHandle;
use shardgate_tests::{Auth, ClusterOptions, PgCluster};

pub const USER: &str = "app";
pub const PASSWORD: &str = "app-secret";
pub const DB: &str = "app";

/// What a test wants from its proxy.
#[derive(Clone)]
pub struct Setup {
    pub mode: &'static str,
    pub pool_size: u32,
    /// Extra TOML lines appended to the `[listen]` table.
    pub listen_extra: String,
    /// Extra TOML lines appended to the `[pool]` table.
    pub pool_extra: String,
    /// Extra TOML appended at the end (e.g. more `[[users]]`).
    pub extra: String,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            mode: "transaction",
            pool_size: 5,
            listen_extra: String::new(),
            pool_extra: String::new(),
            extra: String::new(),
        }
    }
}

impl Setup {
    pub fn session() -> Self {
        Setup {
            mode: "session",
            ..Setup::default()
        }
    }

    pub fn pool_size(mut self, n: u32) -> Self {
        self.pool_size = n;
        self
    }
}

/// A PostgreSQL cluster with user `app` (SCRAM) owning database `app`, and a proxy in front.
/// Dropping it stops the proxy's listeners and the server.
pub struct Env {
    pub proxy: ProxyHandle,
    pub cluster: PgCluster,
    pub config: Config,
}

impl Env {
    pub async fn start(setup: Setup) -> Env {
        let cluster = tokio::task::spawn_blocking(|| {
            let c = PgCluster::start(
                ClusterOptions::default()
                    .user(USER, PASSWORD, Auth::Scram)
                    .user("md5_user", "md5-secret", Auth::Md5),
            )
            .expect("start PostgreSQL");
            c.create_database(DB, USER).expect("create database");
            c
        })
        .await
        .expect("join");
        Self::start_with(cluster, setup).await
    }

    /// Starts a proxy in front of an existing cluster.
    pub async fn start_with(cluster: PgCluster, setup: Setup) -> Env {
        let text = config_toml(&cluster, &setup);
        let config = Config::from_toml(&text, Path::new("test.toml")).expect("valid test config");
        let proxy = shardgate_proxy::start(config.clone())
            .await
            .expect("start proxy");
        Env {
            proxy,
            cluster,
            config,
        }
    }

    pub fn port(&self) -> u16 {
        self.proxy.addr().port()
    }

    /// URL of the proxy for `app`.
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DB}",
            self.port()
        )
    }

    /// tokio-postgres config string of the proxy for `app`.
    pub fn conn_str(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DB}",
            self.port()
        )
    }

    /// URL of the server itself (bypassing the proxy).
    pub fn direct_url(&self) -> String {
        self.cluster.url(USER, PASSWORD, DB)
    }

    /// Connects through the proxy with tokio-postgres; the connection task is spawned.
    pub async fn connect(&self) -> tokio_postgres::Client {
        connect(&self.conn_str()).await
    }

    /// Connects straight to the server.
    pub async fn connect_direct(&self) -> tokio_postgres::Client {
        connect(&format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DB}",
            self.cluster.port()
        ))
        .await
    }

    pub async fn stop(self) {
        self.proxy.shutdown().await;
        tokio::task::spawn_blocking(move || drop(self.cluster))
            .await
            .ok();
    }
}

pub async fn connect(conn_str: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn config_toml(cluster: &PgCluster, s: &Setup) -> String {
    format!(
        r#"
[listen]
addr = "127.0.0.1:0"
shutdown_timeout = "2s"
{listen_extra}

[admin]
listen = "127.0.0.1:0"

[pool]
mode = "{mode}"
size = {size}
checkout_timeout = "10s"
{pool_extra}

[[users]]
name = "{USER}"
password = "{PASSWORD}"

[[users]]
name = "md5_user"
password = "md5-secret"
auth = "md5"

[[shards]]
name = "s0"
primary = {{ host = "127.0.0.1", port = {port} }}

{extra}
"#,
        listen_extra = s.listen_extra,
        mode = s.mode,
        size = s.pool_size,
        pool_extra = s.pool_extra,
        port = cluster.port(),
        extra = s.extra,
    )
}

/// The SQLSTATE of a tokio-postgres error, if the server (or proxy) sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_owned())
}
