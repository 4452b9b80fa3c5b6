//! How clients see a rebalance fence, without the rebalancer: a trigger on the old owner raises
//! the fence SQLSTATE, and the test publishes the new shard map to the postgres topology store
//! itself. A lone simple-protocol statement is held and retried on the new owner; a fenced
//! write the proxy cannot retry reaches the client as 40001.

use std::path::Path;
use std::time::Duration;

use shardgate_admin::control::ControlPlane;
use shardgate_config::Config;
use shardgate_router::hash::hashint8extended;
use shardgate_router::Ring;
use shardgate_tests::{Auth, ClusterOptions, PgCluster};
use shardgate_topology::{Store, FENCE_SQLSTATE};

const USER: &str = "app";
const PASSWORD: &str = "app-secret";

fn start(name: &str) -> PgCluster {
    let c = PgCluster::start(ClusterOptions::default().user(USER, PASSWORD, Auth::Scram))
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    c.create_database("app", USER).expect("create database");
    c
}

fn host(c: &PgCluster) -> String {
    format!("{{ host = \"{}\", port = {} }}", c.host(), c.port())
}

/// The first `n` keys that the two-shard ring [s0, s1] places on `shard` (those on s1 move
/// when the new map is published).
fn keys_on(shard: usize, n: usize) -> Vec<i64> {
    let ring = Ring::new(&["s0", "s1"], 14).expect("ring");
    (1..)
        .filter(|k| ring.shard_for_hash(hashint8extended(*k, 0)) == shard)
        .take(n)
        .collect()
}

const SCHEMA: &str = "create table t (user_id bigint primary key, v int not null)";

/// The topology store's server, with its `meta` database.
fn start_meta() -> PgCluster {
    let meta = PgCluster::start(ClusterOptions::default()).expect("start meta");
    meta.psql("postgres", "create database meta")
        .expect("meta db");
    meta
}

/// The old owner `a` and the new owner `b`, both with table `t`, and the store's server.
async fn old_and_new_owner_and_meta() -> (PgCluster, PgCluster, PgCluster) {
    let (a, b, meta) = tokio::task::spawn_blocking(|| {
        let meta = start_meta();
        (start("a"), start("b"), meta)
    })
    .await
    .expect("join");
    for c in [&a, &b] {
        c.psql_as(USER, PASSWORD, "app", SCHEMA).expect("schema");
    }
    (a, b, meta)
}

/// A proxy config: table `t` sharded, shard s0 on `s0`, the topology store on `meta`
/// (`store_params` after its URL, `topology` more `[topology]` keys); `other` is more TOML.
fn proxy_config(
    file: &str,
    meta: &PgCluster,
    store_params: &str,
    topology: &str,
    other: &str,
    s0: &PgCluster,
) -> Config {
    let text = format!(
        r#"
[listen]
addr = "127.0.0.1:0"
{other}
[topology]
store = "postgres://postgres:postgres@127.0.0.1:{meta_port}/meta{store_params}"
{topology}
[[users]]
name = "{USER}"
password = "{PASSWORD}"
[[sharding.tables]]
name = "t"
[[shards]]
name = "s0"
primary = {s0_host}
"#,
        meta_port = meta.port(),
        s0_host = host(s0),
    );
    Config::from_toml(&text, Path::new(file)).expect("config")
}

/// The connection string of a client of `proxy`.
fn proxy_url(proxy: &shardgate_proxy::ProxyHandle) -> String {
    format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname=app",
        proxy.addr().port()
    )
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

/// Publishes the map with a second shard s1 on `b` to the store `config` names, as the
/// rebalancer would at a cutover; the store is returned so it lives as long as the test.
async fn publish_s1_on(config: &Config, b: &PgCluster) -> std::sync::Arc<Store> {
    let store = Store::open(config, None).await.expect("open store");
    let map = store.shard_map().await.expect("map");
    let mut shards = map.shards.clone();
    let mut s1 = shards[0].clone();
    s1.name = "s1".into();
    s1.primary.port = b.port();
    shards.push(s1);
    store.publish(map.version, shards).await.expect("publish");
    store
}

/// The client got SQLSTATE `code`.
fn assert_code(err: &tokio_postgres::Error, code: &str) {
    assert_eq!(err.code().map(|c| c.code()), Some(code), "{err:?}");
}

/// `key` was written (v = 1) on its new owner `b`, and nothing on the old owner `a`.
fn assert_moved(a: &PgCluster, b: &PgCluster, key: i64) {
    assert_eq!(
        b.psql("app", &format!("select v from t where user_id = {key}"))
            .expect("query"),
        "1",
        "the write is on the key's new owner"
    );
    assert_eq!(
        a.psql("app", "select count(*) from t").expect("query"),
        "0",
        "nothing written on the old owner"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writes_are_retried_on_the_new_owner_or_answered_40001() {
    let (a, b, meta) = old_and_new_owner_and_meta().await;
    // Every write on the old owner hits the fence, as during a cutover.
    a.psql(
        "app",
        &format!(
            "create function fence() returns trigger language plpgsql as $$ begin \
             raise exception using errcode = '{FENCE_SQLSTATE}', message = 'key is moving'; end $$;
             create trigger fence before insert or update or delete on t \
             for each row execute function fence();"
        ),
    )
    .expect("fence");

    let config = proxy_config(
        "fence.toml",
        &meta,
        "",
        "poll_interval = \"200ms\"\nproxy_id = \"fence-test\"",
        "[pool]\nsize = 4\n[rebalance]\nfence_wait = \"5s\"",
        &a,
    );
    let proxy = shardgate_proxy::start(config.clone()).await.expect("proxy");
    let url = proxy_url(&proxy);
    let keys = keys_on(1, 3);

    // A lone simple-protocol INSERT is held while the map is still the old one ...
    let simple = connect(&url).await;
    let held_key = keys[0];
    let held = tokio::spawn(async move {
        simple
            .simple_query(&format!(
                "insert into t (user_id, v) values ({held_key}, 1)"
            ))
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    if held.is_finished() {
        panic!("the fenced statement should be held: {:?}", held.await);
    }

    // ... and runs on the new owner once the store has the map with s1.
    let _store = publish_s1_on(&config, &b).await;
    tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the held statement finishes")
        .expect("join")
        .expect("the retried statement succeeds");
    assert_moved(&a, &b, held_key);

    // Statements the proxy cannot retry get 40001: the extended protocol, and a transaction.
    let s0_key = keys_on(0, 1)[0];
    let client = connect(&url).await;
    let err = client
        .execute("insert into t (user_id, v) values ($1, 2)", &[&s0_key])
        .await
        .expect_err("fenced");
    assert_code(&err, "40001");
    let err = client
        .batch_execute(&format!(
            "begin; insert into t (user_id, v) values ({s0_key}, 3); commit;"
        ))
        .await
        .expect_err("fenced");
    assert_code(&err, "40001");
    // The connection is still usable, and writes to keys that are not fenced work.
    client.simple_query("rollback").await.expect("rollback");
    client
        .execute("insert into t (user_id, v) values ($1, 4)", &[&keys[1]])
        .await
        .expect("a write on s1");

    // With no new map, a held statement gives up after fence_wait with 40001.
    let late = connect(&url).await;
    let started = std::time::Instant::now();
    let err = late
        .simple_query(&format!("insert into t (user_id, v) values ({s0_key}, 5)"))
        .await
        .expect_err("no new map comes");
    assert_code(&err, "40001");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "it waited for a new map"
    );
    late.simple_query("select 1").await.expect("still usable");

    proxy.shutdown().await;
}

/// A proxy that cannot reach its postgres topology store for longer than `topology.lease`
/// refuses statements with 57P03 instead of routing by a map that may be stale (the rebalancer
/// deletes moved rows from a source once such a proxy has been silent that long), and routes
/// again once the store answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_cut_off_from_the_store_refuses_statements_after_its_lease() {
    let (a, mut meta) = tokio::task::spawn_blocking(|| {
        let meta = start_meta();
        (start("a"), meta)
    })
    .await
    .expect("join");
    a.psql_as(USER, PASSWORD, "app", SCHEMA).expect("schema");
    let config = proxy_config(
        "lease.toml",
        &meta,
        "?connect_timeout=1",
        "poll_interval = \"200ms\"\nlease = \"1s\"\nproxy_id = \"lease-test\"",
        "",
        &a,
    );
    let proxy = shardgate_proxy::start(config).await.expect("proxy");
    let url = proxy_url(&proxy);
    let client = connect(&url).await;
    let write = |k: i64| format!("insert into t (user_id, v) values ({k}, 1)");
    client
        .simple_query(&write(1))
        .await
        .expect("a write with the store up");
    // Two clients in a transaction (their server connections attached) when the lease runs
    // out; the second will end it with the extended protocol, as JDBC does.
    let mut in_txn = Vec::new();
    for k in [20_000, 30_000] {
        let c = connect(&url).await;
        c.batch_execute(&format!("begin; {}", write(k)))
            .await
            .expect("a transaction's write with the store up");
        in_txn.push(c);
    }
    let begun = connect(&url).await;
    begun.simple_query("begin").await.expect("BEGIN");
    let extended_rollback = in_txn[1]
        .prepare("rollback")
        .await
        .expect("prepare ROLLBACK");

    let meta = tokio::task::spawn_blocking(move || {
        meta.stop().expect("stop meta");
        meta
    })
    .await
    .expect("join");
    // Within a bounded wait the lease runs out and writes are refused, with the reason.
    let mut refused = None;
    for k in 2..200 {
        match client.simple_query(&write(k)).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("writes are refused once the lease ran out");
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "57P03", "{db:?}");
    assert!(db.message().contains("topology store"), "{}", db.message());
    // The transaction's next write is refused too, but its ROLLBACK is not: ending a
    // transaction routes nothing, and a refused ROLLBACK would leave the client's connection
    // in a transaction that outlives the partition (its next BEGIN answered 25P02).
    for (c, k) in in_txn.iter().zip([20_001, 30_001]) {
        let e = c
            .simple_query(&write(k))
            .await
            .expect_err("a write in the transaction is refused past the lease");
        assert_code(&e, "57P03");
    }
    in_txn[0]
        .simple_query("rollback")
        .await
        .expect("ROLLBACK goes through past the lease");
    in_txn[1]
        .execute(&extended_rollback, &[])
        .await
        .expect("an extended-protocol ROLLBACK goes through past the lease");
    let e = in_txn[0]
        .batch_execute(&format!("begin; {}", write(20_002)))
        .await
        .expect_err("a new transaction's write is refused past the lease");
    assert_code(&e, "57P03");
    // A BEGIN alone waited for its first statement (no server yet); that statement is
    // refused, and the ROLLBACK ends the transaction.
    let e = begun
        .simple_query(&write(40_001))
        .await
        .expect_err("the first write of a transaction is refused past the lease");
    assert_code(&e, "57P03");
    begun
        .simple_query("rollback")
        .await
        .expect("ROLLBACK of a transaction that reached no server");

    let mut meta = meta;
    let meta = tokio::task::spawn_blocking(move || {
        meta.restart().expect("restart meta");
        meta
    })
    .await
    .expect("join");
    let mut back = false;
    for _ in 0..200 {
        if client.simple_query(&write(10_000)).await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "writes go through again once the store answers");
    // The rolled-back transaction left nothing, and its connection is usable.
    for (c, k) in in_txn.iter().zip([20_003, 30_003]) {
        c.batch_execute(&format!("begin; {}; commit", write(k)))
            .await
            .expect("a transaction after the lease came back");
    }
    let rows = client
        .simple_query("select user_id from t where user_id >= 20000 order by user_id")
        .await
        .expect("read back");
    let keys: Vec<&str> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
            _ => None,
        })
        .collect();
    assert_eq!(
        keys,
        ["20003", "30003"],
        "only the committed transactions' rows"
    );
    drop(meta);
}

/// A write routed by the old map that waited for a server connection while a new map arrived
/// goes where the new map says (it was answered 40001, the map having changed under it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_waited_for_a_connection_follows_a_new_map() {
    let (a, b, meta) = old_and_new_owner_and_meta().await;
    let config = proxy_config(
        "checkout.toml",
        &meta,
        "",
        "poll_interval = \"100ms\"\nproxy_id = \"checkout-wait-test\"",
        "[pool]\nsize = 1\ncheckout_timeout = \"20s\"",
        &a,
    );
    let proxy = shardgate_proxy::start(config.clone()).await.expect("proxy");
    let url = proxy_url(&proxy);
    // Both log in first (a login takes a server connection once); then the only connection
    // to s0 is held by an open transaction.
    let writer = connect(&url).await;
    let holder = connect(&url).await;
    holder
        .batch_execute("begin; select count(*) from t")
        .await
        .expect("begin");
    let key = keys_on(1, 1)[0];
    let write = tokio::spawn(async move {
        writer
            .simple_query(&format!("insert into t (user_id, v) values ({key}, 1)"))
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !write.is_finished(),
        "the write should wait for the connection"
    );

    // The new map moves the key to s1 while the write waits.
    let _store = publish_s1_on(&config, &b).await;
    let control = proxy.control(None);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while control.shards().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy never followed the new map"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    holder.batch_execute("commit").await.expect("commit");
    tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .expect("the write finishes")
        .expect("join")
        .expect("the write succeeds");
    assert_moved(&a, &b, key);
    proxy.shutdown().await;
}
