//! The read/write split against a real primary with streaming replicas: where statements
//! land, lag and the read rotation, read-your-writes, and replicas or the primary dying.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{connect, init_logs, sqlstate, users_and_shard, wait_for, DB, PASSWORD, USER};
use shardgate_admin::control::{ControlPlane, ReplicaInfo};
use shardgate_config::Config;
use shardgate_proxy::{ProxyControl, ProxyHandle};
use shardgate_tests::{Auth, ClusterOptions, PgCluster};

/// One shard: a primary and streaming replicas, and a proxy in front.
struct ReplicaEnv {
    proxy: ProxyHandle,
    control: Arc<ProxyControl>,
    primary: PgCluster,
    replicas: Vec<PgCluster>,
}

const SCHEMA: &str = "CREATE TABLE items (id bigint PRIMARY KEY, note text); \
                      CREATE SEQUENCE item_ids;";

impl ReplicaEnv {
    /// `replicas_toml` is the body of the `[replicas]` table.
    async fn start(n_replicas: usize, replicas_toml: &str) -> ReplicaEnv {
        init_logs();
        let (primary, replicas) = tokio::task::spawn_blocking(move || {
            let p = PgCluster::start(ClusterOptions::default().user(USER, PASSWORD, Auth::Scram))
                .expect("start primary");
            p.create_database(DB, USER).expect("create database");
            p.psql_as(USER, PASSWORD, DB, SCHEMA).expect("schema");
            let r: Vec<PgCluster> = (0..n_replicas)
                .map(|_| p.start_replica().expect("start replica"))
                .collect();
            (p, r)
        })
        .await
        .expect("join");
        let replica_ports: Vec<u16> = replicas.iter().map(|r| r.port()).collect();
        let text = format!(
            r#"
[listen]
addr = "127.0.0.1:0"
shutdown_timeout = "2s"

[admin]
listen = "127.0.0.1:0"

[pool]
size = 20
checkout_timeout = "10s"
connect_timeout = "2s"

[replicas]
{replicas_toml}

{shard}"#,
            shard = users_and_shard(primary.port(), &replica_ports),
        );
        let config = Config::from_toml(&text, Path::new("test.toml")).expect("valid config");
        let proxy = shardgate_proxy::start(config).await.expect("start proxy");
        let control = proxy.control(None);
        let env = ReplicaEnv {
            proxy,
            control,
            primary,
            replicas,
        };
        env.wait_rotation(0, true, Duration::from_secs(10)).await;
        env
    }

    fn conn_str(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DB}",
            self.proxy.addr().port()
        )
    }

    async fn client(&self) -> tokio_postgres::Client {
        connect(&self.conn_str()).await
    }

    fn replica_info(&self, i: usize) -> ReplicaInfo {
        let port = self.replicas[i].port();
        self.control
            .replicas()
            .into_iter()
            .find(|r| r.host.ends_with(&format!(":{port}")))
            .expect("replica listed")
    }

    /// Waits until replica `i` is (or is not) in the read rotation.
    async fn wait_rotation(&self, i: usize, wanted: bool, timeout: Duration) {
        let ok = wait_for(timeout, || async {
            self.replica_info(i).in_rotation == wanted
        })
        .await;
        assert!(
            ok,
            "replica {i} in_rotation != {wanted} after {timeout:?}: {:?}",
            self.replica_info(i)
        );
    }

    /// A superuser connection straight to replica `i`.
    async fn replica_superuser(&self, i: usize) -> tokio_postgres::Client {
        let r = &self.replicas[i];
        connect(&format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname=postgres",
            r.port(),
            r.superuser_password()
        ))
        .await
    }

    /// Runs blocking `f` (kill, restart) on the primary off the async threads.
    async fn with_primary(self, f: impl FnOnce(&mut PgCluster) + Send + 'static) -> ReplicaEnv {
        let ReplicaEnv {
            proxy,
            control,
            mut primary,
            replicas,
        } = self;
        let primary = tokio::task::spawn_blocking(move || {
            f(&mut primary);
            primary
        })
        .await
        .expect("join");
        ReplicaEnv {
            proxy,
            control,
            primary,
            replicas,
        }
    }

    async fn stop(self) {
        self.proxy.shutdown().await;
        tokio::task::spawn_blocking(move || {
            drop(self.replicas);
            drop(self.primary);
        })
        .await
        .ok();
    }
}

/// Whether the server that ran a simple query is a standby.
async fn on_replica_simple(c: &tokio_postgres::Client, sql: &str) -> bool {
    let rows = c.simple_query(sql).await.expect("query");
    let value = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get("r").map(str::to_owned),
            _ => None,
        })
        .expect("a row with column r");
    value == "t"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_replicas_and_writes_to_the_primary() {
    let env = ReplicaEnv::start(1, "check_interval = \"100ms\"").await;
    let c = env.client().await;
    let before = env.replica_info(0).queries;

    // Simple protocol.
    assert!(on_replica_simple(&c, "SELECT pg_is_in_recovery() AS r").await);
    // Extended protocol, unnamed statement with a parameter.
    let row = c
        .query_one("SELECT pg_is_in_recovery() AS r, $1::int AS x", &[&7i32])
        .await
        .unwrap();
    assert!(row.get::<_, bool>("r"), "extended read on a replica");
    // Prepared (named) statement, executed repeatedly.
    let st = c.prepare("SELECT pg_is_in_recovery() AS r").await.unwrap();
    for _ in 0..5 {
        assert!(c.query_one(&st, &[]).await.unwrap().get::<_, bool>("r"));
    }
    assert!(
        env.replica_info(0).queries >= before + 7,
        "per-host counter moved"
    );

    // Writes, locking reads, side effects and read-write transactions: the primary.
    for sql in [
        "INSERT INTO items VALUES (1, 'a') RETURNING pg_is_in_recovery() AS r",
        "SELECT pg_is_in_recovery() AS r FROM items WHERE id = 1 FOR UPDATE",
        "SELECT pg_is_in_recovery() AS r, nextval('item_ids')",
        "/* shardgate: role=primary */ SELECT pg_is_in_recovery() AS r",
    ] {
        assert!(!on_replica_simple(&c, sql).await, "{sql} ran on a replica");
    }
    let st = c
        .prepare("UPDATE items SET note = $1 WHERE id = 1 RETURNING pg_is_in_recovery() AS r")
        .await
        .unwrap();
    assert!(!c.query_one(&st, &[&"b"]).await.unwrap().get::<_, bool>("r"));

    // Transactions: read-write on the primary, read-only on a replica. (`c` wrote, so its
    // reads wait for a replica to replay its writes: a client that did not write reads now.)
    let c = env.client().await;
    c.batch_execute("BEGIN").await.unwrap();
    assert!(!on_replica_simple(&c, "SELECT pg_is_in_recovery() AS r").await);
    c.batch_execute("COMMIT").await.unwrap();
    // A read-write transaction counts as a write for read-your-writes (it could have called
    // a function that writes), so again a fresh client.
    let c = env.client().await;
    c.batch_execute("BEGIN READ ONLY").await.unwrap();
    assert!(on_replica_simple(&c, "SELECT pg_is_in_recovery() AS r").await);
    c.batch_execute("COMMIT").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("SET TRANSACTION READ ONLY").await.unwrap();
    assert!(on_replica_simple(&c, "SELECT pg_is_in_recovery() AS r").await);
    let err = c
        .batch_execute("INSERT INTO items VALUES (2, 'x')")
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some("25006"),
        "read-only transaction"
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    // tokio-postgres's transaction API (extended protocol BEGIN READ ONLY).
    let mut c2 = env.client().await;
    let tx = c2
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .unwrap();
    let r: bool = tx
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(r, "read-only transaction from the driver");
    tx.commit().await.unwrap();

    // SET shardgate.role overrides until reset.
    c.batch_execute("SET shardgate.role = primary")
        .await
        .unwrap();
    assert!(!on_replica_simple(&c, "SELECT pg_is_in_recovery() AS r").await);
    c.batch_execute("SET shardgate.role = auto").await.unwrap();
    assert!(on_replica_simple(&c, "SELECT pg_is_in_recovery() AS r").await);
    let err = c
        .batch_execute("SET shardgate.role = leader")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22023"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_leaves_the_rotation_and_returns() {
    let env = ReplicaEnv::start(
        1,
        "check_interval = \"200ms\"\nmax_lag = \"1s\"\nread_your_writes = false",
    )
    .await;
    let c = env.client().await;

    // An idle primary with a caught-up replica: lag 0 however long it stays idle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let idle = env.replica_info(0);
    assert_eq!(idle.lag_seconds, Some(0.0), "{idle:?}");
    assert_eq!(idle.lag_bytes, Some(0), "{idle:?}");
    assert!(idle.in_rotation && idle.state == "ok", "{idle:?}");

    let su = env.replica_superuser(0).await;
    su.batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    let paused_at = Instant::now();
    let mut out_after = None;
    let mut id = 100i64;
    while paused_at.elapsed() < Duration::from_secs(8) {
        id += 1;
        c.execute("INSERT INTO items VALUES ($1, 'lag')", &[&id])
            .await
            .unwrap();
        // Every read still succeeds, wherever it runs.
        c.simple_query("SELECT count(*) FROM items").await.unwrap();
        if !env.replica_info(0).in_rotation {
            out_after = Some(paused_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out_after = out_after.expect("the paused replica left the rotation");
    // max_lag (1 s) plus at most two check intervals, with room for a busy machine.
    assert!(
        out_after < Duration::from_millis(1000 + 2 * 200 + 1500),
        "left after {out_after:?}"
    );
    let info = env.replica_info(0);
    assert_eq!(info.state, "lagging");
    assert!(info.lag_bytes.unwrap_or(0) > 0, "{info:?}");
    // Reads now come from the primary.
    assert!(!on_replica_simple(&c, "SELECT pg_is_in_recovery() AS r").await);

    su.batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    env.wait_rotation(0, true, Duration::from_secs(5)).await;
    assert!(on_replica_simple(&c, "SELECT pg_is_in_recovery() AS r").await);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_read_their_own_writes_while_replay_is_paused() {
    // max_lag is high so the paused replicas stay in rotation for clients without writes.
    let env = ReplicaEnv::start(2, "check_interval = \"100ms\"\nmax_lag = \"1h\"").await;
    env.wait_rotation(1, true, Duration::from_secs(10)).await;
    for i in 0..2 {
        env.replica_superuser(i)
            .await
            .batch_execute("SELECT pg_wal_replay_pause()")
            .await
            .unwrap();
    }
    let writer = env.client().await;
    let reader = env.client().await;
    let insert = writer
        .prepare("INSERT INTO items VALUES ($1, 'mine')")
        .await
        .unwrap();
    let select = writer
        .prepare("SELECT note FROM items WHERE id = $1")
        .await
        .unwrap();
    for id in 1000..2000i64 {
        writer.execute(&insert, &[&id]).await.unwrap();
        let rows = writer.query(&select, &[&id]).await.unwrap();
        assert_eq!(rows.len(), 1, "row {id} not visible to its writer");
        if id % 100 == 0 {
            // A client that never wrote keeps reading from the (stale) replicas.
            assert!(on_replica_simple(&reader, "SELECT pg_is_in_recovery() AS r").await);
            let seen = reader
                .query("SELECT 1 FROM items WHERE id = $1", &[&id])
                .await
                .unwrap();
            assert!(seen.is_empty(), "the paused replicas do not have row {id}");
        }
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_replica_costs_only_the_reads_in_flight() {
    let env = ReplicaEnv::start(
        1,
        "check_interval = \"100ms\"\nban_initial = \"200ms\"\nban_max = \"500ms\"",
    )
    .await;
    let start = Instant::now();
    let stop_at = start + Duration::from_secs(10);
    let mut workers = Vec::new();
    for _ in 0..16 {
        let c = env.client().await;
        workers.push(tokio::spawn(async move {
            let mut errors: Vec<Duration> = Vec::new();
            let mut ok = 0u64;
            while Instant::now() < stop_at {
                match c.query_one("SELECT count(*) FROM items", &[]).await {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        assert_eq!(sqlstate(&e).as_deref(), Some("08006"), "{e}");
                        errors.push(start.elapsed());
                    }
                }
            }
            (ok, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut replica = env.replicas.into_iter().next().expect("a replica");
    let killed_at = start.elapsed();
    let replica = tokio::task::spawn_blocking(move || {
        replica.kill();
        replica
    })
    .await
    .unwrap();
    let mut total_ok = 0;
    let mut errors = Vec::new();
    for w in workers {
        let (ok, e) = w.await.unwrap();
        total_ok += ok;
        errors.extend(e);
    }
    assert!(total_ok > 100, "reads kept flowing: {total_ok}");
    assert!(
        errors.len() <= 16,
        "one in-flight read per client at most: {errors:?}"
    );
    for t in &errors {
        assert!(
            *t < killed_at + Duration::from_secs(1),
            "an error {t:?} came more than 1 s after the kill at {killed_at:?}"
        );
    }
    // Restarted, it rejoins.
    let replica = tokio::task::spawn_blocking(move || {
        let mut r = replica;
        r.restart().expect("restart replica");
        r
    })
    .await
    .unwrap();
    let env = ReplicaEnv {
        replicas: vec![replica],
        ..env
    };
    env.wait_rotation(0, true, Duration::from_secs(10)).await;
    let c = env.client().await;
    assert!(on_replica_simple(&c, "SELECT pg_is_in_recovery() AS r").await);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_the_primary_and_writes_resume_when_it_returns() {
    let env = ReplicaEnv::start(
        1,
        "check_interval = \"100ms\"\nban_initial = \"200ms\"\nban_max = \"500ms\"",
    )
    .await;
    let c = env.client().await;
    c.execute("INSERT INTO items VALUES (1, 'before')", &[])
        .await
        .unwrap();
    // The test clusters commit asynchronously: wait until the replica has the row.
    let direct = connect(&format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DB}",
        env.replicas[0].port()
    ))
    .await;
    let replicated = wait_for(Duration::from_secs(10), || async {
        direct
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .is_ok_and(|r| r.get::<_, i64>(0) == 1)
    })
    .await;
    assert!(replicated, "the replica received the row");
    let env = env.with_primary(PgCluster::kill).await;
    // Writes: a clear error naming the shard.
    let err = c
        .execute("INSERT INTO items VALUES (2, 'during')", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err}");
    let text = err
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(text.contains("s0"), "message names the shard: {text}");
    // Reads still work (the row written before is on the replica).
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n >= 1);
    let ready = env.control.readiness();
    assert!(!ready.ready, "not ready without a primary: {ready:?}");

    let env = env
        .with_primary(|p| p.restart().expect("restart primary"))
        .await;
    // Writes resume without restarting the proxy.
    let resumed = wait_for(Duration::from_secs(10), || async {
        c.execute("INSERT INTO items VALUES (3, 'after')", &[])
            .await
            .is_ok()
    })
    .await;
    assert!(resumed, "writes resume after the primary restarts");
    assert!(
        wait_for(Duration::from_secs(5), || async {
            env.control.readiness().ready
        })
        .await,
        "ready again"
    );
    env.stop().await;
}
