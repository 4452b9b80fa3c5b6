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

/// A key that the two-shard ring [s0, s1] places on s1 (so the new map moves it).
fn keys_moving_to_s1(n: usize) -> Vec<i64> {
    let ring = Ring::new(&["s0", "s1"], 14).expect("ring");
    (1..)
        .filter(|k| ring.shard_for_hash(hashint8extended(*k, 0)) == 1)
        .take(n)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writes_are_retried_on_the_new_owner_or_answered_40001() {
    let (a, b, meta) = tokio::task::spawn_blocking(|| {
        let meta = PgCluster::start(ClusterOptions::default()).expect("start meta");
        meta.psql("postgres", "create database meta")
            .expect("meta db");
        (start("a"), start("b"), meta)
    })
    .await
    .expect("join");
    let schema = "create table t (user_id bigint primary key, v int not null)";
    for c in [&a, &b] {
        c.psql_as(USER, PASSWORD, "app", schema).expect("schema");
    }
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

    let store_url = format!(
        "postgres://postgres:postgres@127.0.0.1:{}/meta",
        meta.port()
    );
    let text = format!(
        r#"
[listen]
addr = "127.0.0.1:0"
[pool]
size = 4
[topology]
store = "{store_url}"
poll_interval = "200ms"
proxy_id = "fence-test"
[rebalance]
fence_wait = "5s"
[[users]]
name = "{USER}"
password = "{PASSWORD}"
[[sharding.tables]]
name = "t"
[[shards]]
name = "s0"
primary = {}
"#,
        host(&a)
    );
    let config = Config::from_toml(&text, Path::new("fence.toml")).expect("config");
    let proxy = shardgate_proxy::start(config.clone()).await.expect("proxy");
    let url = format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname=app",
        proxy.addr().port()
    );
    let connect = || async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
    };
    let keys = keys_moving_to_s1(3);

    // A lone simple-protocol INSERT is held while the map is still the old one ...
    let simple = connect().await;
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
    let store = Store::open(&config, None).await.expect("open store");
    let map = store.shard_map().await.expect("map");
    let mut shards = map.shards.clone();
    let mut s1 = shards[0].clone();
    s1.name = "s1".into();
    s1.primary.port = b.port();
    shards.push(s1);
    store.publish(map.version, shards).await.expect("publish");
    tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the held statement finishes")
        .expect("join")
        .expect("the retried statement succeeds");
    assert_eq!(
        b.psql(
            "app",
            &format!("select v from t where user_id = {held_key}")
        )
        .expect("query"),
        "1"
    );
    assert_eq!(a.psql("app", "select count(*) from t").expect("query"), "0");

    // Statements the proxy cannot retry get 40001: the extended protocol, and a transaction.
    let s0_key = {
        let ring = Ring::new(&["s0", "s1"], 14).expect("ring");
        (1..)
            .find(|k| ring.shard_for_hash(hashint8extended(*k, 0)) == 0)
            .expect("a key")
    };
    let client = connect().await;
    let err = client
        .execute("insert into t (user_id, v) values ($1, 2)", &[&s0_key])
        .await
        .expect_err("fenced");
    assert_eq!(err.code().map(|c| c.code()), Some("40001"), "{err}");
    let err = client
        .batch_execute(&format!(
            "begin; insert into t (user_id, v) values ({s0_key}, 3); commit;"
        ))
        .await
        .expect_err("fenced");
    assert_eq!(err.code().map(|c| c.code()), Some("40001"), "{err}");
    // The connection is still usable, and writes to keys that are not fenced work.
    client.simple_query("rollback").await.expect("rollback");
    client
        .execute("insert into t (user_id, v) values ($1, 4)", &[&keys[1]])
        .await
        .expect("a write on s1");

    // With no new map, a held statement gives up after fence_wait with 40001.
    let late = connect().await;
    let started = std::time::Instant::now();
    let err = late
        .simple_query(&format!("insert into t (user_id, v) values ({s0_key}, 5)"))
        .await
        .expect_err("no new map comes");
    assert_eq!(err.code().map(|c| c.code()), Some("40001"), "{err}");
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
        let meta = PgCluster::start(ClusterOptions::default()).expect("start meta");
        meta.psql("postgres", "create database meta")
            .expect("meta db");
        (start("a"), meta)
    })
    .await
    .expect("join");
    a.psql_as(
        USER,
        PASSWORD,
        "app",
        "create table t (user_id bigint primary key, v int not null)",
    )
    .expect("schema");
    let text = format!(
        r#"
[listen]
addr = "127.0.0.1:0"
[topology]
store = "postgres://postgres:postgres@127.0.0.1:{}/meta?connect_timeout=1"
poll_interval = "200ms"
lease = "1s"
proxy_id = "lease-test"
[[users]]
name = "{USER}"
password = "{PASSWORD}"
[[sharding.tables]]
name = "t"
[[shards]]
name = "s0"
primary = {}
"#,
        meta.port(),
        host(&a)
    );
    let config = Config::from_toml(&text, Path::new("lease.toml")).expect("config");
    let proxy = shardgate_proxy::start(config).await.expect("proxy");
    let url = format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname=app",
        proxy.addr().port()
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let write = |k: i64| format!("insert into t (user_id, v) values ({k}, 1)");
    client
        .simple_query(&write(1))
        .await
        .expect("a write with the store up");
    // Two clients in a transaction (their server connections attached) when the lease runs
    // out; the second will end it with the extended protocol, as JDBC does.
    let mut in_txn = Vec::new();
    for k in [20_000, 30_000] {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        c.batch_execute(&format!("begin; {}", write(k)))
            .await
            .expect("a transaction's write with the store up");
        in_txn.push(c);
    }
    let (begun, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
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
        assert_eq!(e.code().map(|c| c.code()), Some("57P03"), "{e:?}");
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
    assert_eq!(e.code().map(|c| c.code()), Some("57P03"), "{e:?}");
    assert_eq!(e.code().map(|c| c.code()), Some("57P03"), "{e:?}");
    // A BEGIN alone waited for its first statement (no server yet); that statement is
    // refused, and the ROLLBACK ends the transaction.
    let e = begun
        .simple_query(&write(40_001))
        .await
        .expect_err("the first write of a transaction is refused past the lease");
    assert_eq!(e.code().map(|c| c.code()), Some("57P03"), "{e:?}");
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
    let (a, b, meta) = tokio::task::spawn_blocking(|| {
        let meta = PgCluster::start(ClusterOptions::default()).expect("start meta");
        meta.psql("postgres", "create database meta")
            .expect("meta db");
        (start("a"), start("b"), meta)
    })
    .await
    .expect("join");
    let schema = "create table t (user_id bigint primary key, v int not null)";
    for c in [&a, &b] {
        c.psql_as(USER, PASSWORD, "app", schema).expect("schema");
    }
    let text = format!(
        r#"
[listen]
addr = "127.0.0.1:0"
[pool]
size = 1
checkout_timeout = "20s"
[topology]
store = "postgres://postgres:postgres@127.0.0.1:{}/meta"
poll_interval = "100ms"
proxy_id = "checkout-wait-test"
[[users]]
name = "{USER}"
password = "{PASSWORD}"
[[sharding.tables]]
name = "t"
[[shards]]
name = "s0"
primary = {}
"#,
        meta.port(),
        host(&a)
    );
    let config = Config::from_toml(&text, Path::new("checkout.toml")).expect("config");
    let proxy = shardgate_proxy::start(config.clone()).await.expect("proxy");
    let url = format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname=app",
        proxy.addr().port()
    );
    let connect = || async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
    };
    // Both log in first (a login takes a server connection once); then the only connection
    // to s0 is held by an open transaction.
    let writer = connect().await;
    let holder = connect().await;
    holder
        .batch_execute("begin; select count(*) from t")
        .await
        .expect("begin");
    let key = keys_moving_to_s1(1)[0];
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
    let store = Store::open(&config, None).await.expect("open store");
    let map = store.shard_map().await.expect("map");
    let mut shards = map.shards.clone();
    let mut s1 = shards[0].clone();
    s1.name = "s1".into();
    s1.primary.port = b.port();
    shards.push(s1);
    store.publish(map.version, shards).await.expect("publish");
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
    proxy.shutdown().await;
}
