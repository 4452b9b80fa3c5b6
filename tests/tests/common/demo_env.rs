//! The default demo topology for end-to-end tests: two shards, each a primary with one
//! streaming replica, `users` and `orders` sharded by `user_id`, and a transaction-mode proxy
//! with default pool and replica settings in front (as `shardgate demo` runs it).

use std::path::Path;
use std::time::Duration;

use shardgate_config::Config;
use shardgate_proxy::ProxyHandle;
use shardgate_tests::{Auth, ClusterOptions, PgCluster};

use super::{connect, init_logs, wait_for, DB, PASSWORD, USER};

/// The demo's sample schema (on every shard).
pub const DEMO_SCHEMA: &str = "
create table users (user_id bigint primary key, name text not null default 'user');
create table orders (order_id bigserial, user_id bigint not null,
    amount numeric(12,2) not null default 0, primary key (user_id, order_id));
";

/// One shard: its primary and replica.
pub struct DemoShard {
    pub primary: PgCluster,
    pub replica: PgCluster,
}

/// Two shards with a replica each and a proxy in front. Stop it with [`DemoEnv::stop`].
pub struct DemoEnv {
    pub proxy: ProxyHandle,
    pub shards: Vec<DemoShard>,
    pub config: Config,
}

impl DemoEnv {
    /// Starts the servers (shards in parallel) and the proxy; `extra` is appended to the
    /// config (e.g. `[pool]` keys are not allowed twice, so it holds whole tables). Returns once
    /// every replica is in the read rotation.
    pub async fn start(extra: &str) -> DemoEnv {
        Self::start_with(ClusterOptions::default(), "", extra).await
    }

    /// Like [`DemoEnv::start`] with the clusters' options (e.g. server settings) and extra
    /// keys for the `[sharding]` table.
    pub async fn start_with(options: ClusterOptions, sharding: &str, extra: &str) -> DemoEnv {
        init_logs();
        let starts = (0..2).map(|_| {
            let options = options.clone();
            tokio::task::spawn_blocking(move || {
                let primary = PgCluster::start(options.user(USER, PASSWORD, Auth::Scram))
                    .expect("start primary");
                primary.create_database(DB, USER).expect("create database");
                primary
                    .psql_as(USER, PASSWORD, DB, DEMO_SCHEMA)
                    .expect("demo schema");
                let replica = primary.start_replica().expect("start replica");
                DemoShard { primary, replica }
            })
        });
        let mut shards = Vec::new();
        for s in futures_util::future::join_all(starts).await {
            shards.push(s.expect("join"));
        }
        let mut text = format!(
            r#"
[listen]
addr = "127.0.0.1:0"
shutdown_timeout = "2s"

[admin]
listen = "127.0.0.1:0"

[[users]]
name = "{USER}"
password = "{PASSWORD}"

[sharding]
key_column = "user_id"
{sharding}

[[sharding.tables]]
name = "users"

[[sharding.tables]]
name = "orders"

{extra}
"#
        );
        for (i, s) in shards.iter().enumerate() {
            text.push_str(&format!(
                "\n[[shards]]\nname = \"s{i}\"\nprimary = {{ host = \"127.0.0.1\", port = {} }}\nreplicas = [{{ host = \"127.0.0.1\", port = {} }}]\n",
                s.primary.port(),
                s.replica.port()
            ));
        }
        let config = Config::from_toml(&text, Path::new("demo.toml")).expect("valid demo config");
        let proxy = shardgate_proxy::start(config.clone())
            .await
            .expect("start proxy");
        let env = DemoEnv {
            proxy,
            shards,
            config,
        };
        let control = env.proxy.control(None);
        let in_rotation = wait_for(Duration::from_secs(20), || {
            let control = control.clone();
            async move {
                use shardgate_admin::control::ControlPlane;
                let r = control.replicas();
                r.len() == 2 && r.iter().all(|r| r.in_rotation)
            }
        })
        .await;
        assert!(in_rotation, "the replicas did not join the read rotation");
        env
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

    /// JDBC URL of the proxy for `app`.
    pub fn jdbc_url(&self) -> String {
        format!(
            "jdbc:postgresql://127.0.0.1:{}/{DB}?user={USER}&password={PASSWORD}",
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

    pub async fn connect(&self) -> tokio_postgres::Client {
        connect(&self.conn_str()).await
    }

    /// A superuser connection straight to shard `i`'s primary.
    pub async fn primary_superuser(&self, i: usize) -> tokio_postgres::Client {
        let p = &self.shards[i].primary;
        connect(&format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname={DB}",
            p.port(),
            p.superuser_password()
        ))
        .await
    }

    /// Waits until no server connection of the proxy on any primary or replica is active or
    /// inside a transaction (the pools ended clean); panics naming what is left otherwise.
    pub async fn assert_servers_quiet(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = self.busy_server_connections().await;
            if left.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server connections not idle after the run: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The proxy's server connections (user `app`) that are not idle, on every server.
    pub async fn busy_server_connections(&self) -> Vec<String> {
        let mut left = Vec::new();
        for s in &self.shards {
            for c in [&s.primary, &s.replica] {
                let su = connect(&format!(
                    "host=127.0.0.1 port={} user=postgres password={} dbname={DB}",
                    c.port(),
                    c.superuser_password()
                ))
                .await;
                let rows = su
                    .query(
                        "select state, coalesce(query, '') from pg_stat_activity \
                         where usename = 'app' and pid <> pg_backend_pid() \
                         and state is distinct from 'idle'",
                        &[],
                    )
                    .await
                    .expect("pg_stat_activity");
                for r in rows {
                    left.push(format!(
                        "port {}: {} {}",
                        c.port(),
                        r.get::<_, Option<String>>(0).unwrap_or_default(),
                        r.get::<_, String>(1)
                    ));
                }
            }
        }
        left
    }

    pub async fn stop(self) {
        self.proxy.shutdown().await;
        let shards = self.shards;
        tokio::task::spawn_blocking(move || {
            // Replicas first, then primaries.
            let (primaries, replicas): (Vec<_>, Vec<_>) =
                shards.into_iter().map(|s| (s.primary, s.replica)).unzip();
            drop(replicas);
            drop(primaries);
        })
        .await
        .ok();
    }
}
