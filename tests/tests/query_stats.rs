//! Per-query statistics end to end: statements with different literals share one
//! fingerprint; calls, rows, errors by SQLSTATE class and route kinds (single shard, scatter,
//! broadcast, refused) and primary or replica are counted; the number of statements tracked
//! stays bounded; `DELETE /api/v1/queries` resets; `shardgate admin queries` prints a table and
//! `--json`. No timing assertions: times are only checked to be there.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{admin_http, ShardedEnv};
use common::{connect, wait_for, DB, PASSWORD, USER};
use shardgate_admin::control::{ControlPlane, QueriesReport, QuerySort, QueryStat};
use shardgate_tests::{Auth, ClusterOptions, PgCluster};

const SCHEMA: &str = "
create table users (user_id bigint primary key, name text);
create table orders (order_id bigint, user_id bigint, amount numeric(12,2),
                     primary key (user_id, order_id));
create table settings (k text primary key, v text);
";

fn find<'a>(report: &'a QueriesReport, query: &str) -> Option<&'a QueryStat> {
    report.queries.iter().find(|q| q.query == query)
}

/// Waits until the statement `query` has `calls` calls (cross-shard batches are recorded
/// just after their answer went out) and returns its statistics.
async fn stat(control: &dyn ControlPlane, query: &str, calls: u64) -> QueryStat {
    let report = || control.queries(QuerySort::Calls, 1000).expect("served");
    let seen = wait_for(Duration::from_secs(10), || async {
        find(&report(), query).is_some_and(|q| q.calls >= calls)
    })
    .await;
    let report = report();
    assert!(seen, "{query}: not {calls} calls in {report:#?}");
    find(&report, query).cloned().expect("present")
}

async fn admin_cli(port: u16, json: bool, sort: &str) -> (i32, String) {
    let sort = sort.to_owned();
    tokio::task::spawn_blocking(move || {
        let args = shardgate_admin::cli::AdminArgs {
            url: format!("http://127.0.0.1:{port}"),
            token: None,
            json,
            command: shardgate_admin::cli::AdminCommand::Queries {
                sort,
                limit: 20,
                reset: false,
            },
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = shardgate_admin::cli::run_with(&args, &mut out, &mut err);
        (
            code,
            String::from_utf8_lossy(&out).into_owned() + &String::from_utf8_lossy(&err),
        )
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fingerprints_count_calls_rows_errors_and_routes() {
    let env = ShardedEnv::start_edited(3, SCHEMA, &["users", "orders"], "", |c| {
        c.stats.max_queries = 40;
    })
    .await;
    let control = env.proxy.control(None);
    let admin = shardgate_admin::AdminServer::start(
        Arc::clone(&control) as Arc<dyn ControlPlane>,
        &shardgate_config::Admin {
            listen: "127.0.0.1:0".into(),
            ..Default::default()
        },
    )
    .await
    .expect("admin server");
    let port = admin.addr().port();
    let client = env.connect().await;

    // Single shard, simple protocol: five literals, one fingerprint, one row each.
    for k in 1..=5 {
        client
            .simple_query(&format!(
                "insert into users (user_id, name) values ({k}, 'n{k}')"
            ))
            .await
            .expect("insert");
    }
    for k in 1..=5 {
        client
            .simple_query(&format!("select name from users where user_id = {k}"))
            .await
            .expect("select");
    }
    // Extended protocol: the Parse text is the statement.
    for k in 1..=3i64 {
        client
            .query("select name from users where user_id = $1", &[&k])
            .await
            .expect("extended select");
    }
    // Unnamed statements (Parse, Bind, Execute, Sync in one request, as most drivers send
    // them): the fingerprint the relay noted at the Parse counts the Bind's call.
    for k in 1..=3i64 {
        client
            .query_typed(
                "select name from users where user_id = $1",
                &[(&k, tokio_postgres::types::Type::INT8)],
            )
            .await
            .expect("unnamed extended select");
    }
    // Scatter: a read of every shard.
    for _ in 0..2 {
        client
            .simple_query("select count(*) from users")
            .await
            .expect("scatter");
    }
    // Broadcast: DDL on a sharded table.
    for _ in 0..2 {
        client
            .simple_query("create index if not exists orders_amount on orders (amount)")
            .await
            .expect("broadcast");
    }
    // Refused by the proxy: a keyless write (0A000), with two literals.
    for v in ["x", "y"] {
        let e = client
            .simple_query(&format!("update users set name = '{v}'"))
            .await
            .expect_err("keyless write refused");
        assert_eq!(common::sqlstate(&e).as_deref(), Some("0A000"));
    }
    // A server error: class 22 (division by zero), on the default shard.
    for n in [10, 20, 30] {
        client
            .simple_query(&format!("select {n} / 0"))
            .await
            .expect_err("division by zero");
    }

    let insert = stat(
        &*control,
        "insert into users (user_id, name) values ($1, $2)",
        5,
    )
    .await;
    assert_eq!((insert.calls, insert.rows, insert.errors), (5, 5, 0));
    assert_eq!(insert.routes.single, 5);
    assert_eq!((insert.primary, insert.replica), (5, 0));
    assert_eq!((insert.shards_touched, insert.max_shards), (5, 1));
    assert!(insert.total_ms > 0.0 && insert.p99_ms > 0.0, "{insert:?}");

    let simple = stat(&*control, "select name from users where user_id = $1", 11).await;
    // The simple queries and the extended ones normalize to the same text.
    assert_eq!((simple.calls, simple.rows), (11, 11), "{simple:?}");

    let scatter = stat(&*control, "select count(*) from users", 2).await;
    assert_eq!(scatter.routes.scatter, 2, "{scatter:?}");
    assert_eq!((scatter.max_shards, scatter.shards_touched), (3, 6));
    assert_eq!(scatter.rows, 2, "one merged row per call: {scatter:?}");

    let ddl = stat(
        &*control,
        "create index if not exists orders_amount on orders (amount)",
        2,
    )
    .await;
    assert_eq!(ddl.routes.broadcast, 2, "{ddl:?}");
    assert_eq!(ddl.max_shards, 3);

    let refused = stat(&*control, "update users set name = $1", 2).await;
    assert_eq!(refused.routes.refused, 2, "{refused:?}");
    assert_eq!(refused.errors, 2);
    assert_eq!(refused.errors_by_class.get("0A"), Some(&2));
    assert_eq!(refused.shards_touched, 0);

    let division = stat(&*control, "select $1 / $2", 3).await;
    assert_eq!(division.errors_by_class.get("22"), Some(&3), "{division:?}");
    assert_eq!(division.routes.single, 3);

    // The API sorts and limits; the CLI prints a table and the JSON.
    let (status, body) = tokio::task::spawn_blocking(move || {
        admin_http(port, "GET", "/api/v1/queries?sort=errors&limit=2")
    })
    .await
    .expect("join");
    assert_eq!(status, 200, "{body}");
    let report: QueriesReport = serde_json::from_str(&body).expect("json");
    assert_eq!(report.queries.len(), 2);
    assert_eq!(report.queries[0].query, "select $1 / $2");
    let (status, _) =
        tokio::task::spawn_blocking(move || admin_http(port, "GET", "/api/v1/queries?sort=rows"))
            .await
            .expect("join");
    assert_eq!(status, 400);

    let (code, table) = admin_cli(port, false, "calls").await;
    assert_eq!(code, 0, "{table}");
    println!("{table}");
    let header = table.lines().nth(1).unwrap_or_default();
    assert!(
        header.starts_with("ID") && header.contains("CALLS") && header.contains("QUERY"),
        "{table}"
    );
    assert!(
        table.contains("select name from users where user_id = $1"),
        "{table}"
    );
    assert!(table.contains("refused"), "{table}");
    let (code, json) = admin_cli(port, true, "calls").await;
    assert_eq!(code, 0, "{json}");
    let parsed: QueriesReport = serde_json::from_str(&json).expect("CLI --json is the API's JSON");
    assert_eq!(
        parsed.queries[0].query,
        "select name from users where user_id = $1"
    );

    // Bounded: 100 new shapes through a log of 40.
    for i in 0..100 {
        client
            .simple_query(&format!("select 1 as c{i}"))
            .await
            .expect("select");
    }
    let report = control.queries(QuerySort::TotalTime, 1000).expect("served");
    assert!(report.tracked <= 40, "{} tracked", report.tracked);
    assert!(report.evicted >= 60, "{} evicted", report.evicted);

    // Reset.
    let (status, body) =
        tokio::task::spawn_blocking(move || admin_http(port, "DELETE", "/api/v1/queries"))
            .await
            .expect("join");
    assert_eq!(status, 200, "{body}");
    let report = control.queries(QuerySort::TotalTime, 1000).expect("served");
    assert_eq!((report.tracked, report.evicted), (0, 0), "{report:?}");

    // The metrics export the top statements by id, not by text.
    client
        .simple_query("select name from users where user_id = 1")
        .await
        .expect("select");
    let metrics = shardgate_admin::metrics::render(
        &shardgate_admin::metrics::install(),
        &*control as &dyn ControlPlane,
    );
    let id = stat(&*control, "select name from users where user_id = $1", 1)
        .await
        .id;
    assert!(
        metrics.contains(&format!(
            "shardgate_top_query_calls{{query_id=\"{id}\",shards=\"1\"}}"
        )),
        "{metrics}"
    );

    admin.stop();
    drop(client);
    env.stop().await;
}

/// A plain pooler (one shard, nothing sharded: no statement is routed) counts statements too,
/// those a driver runs as unnamed statements included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_pooler_counts_simple_and_unnamed_statements() {
    let env = ShardedEnv::start_edited(1, SCHEMA, &[], "", |c| {
        c.stats.max_queries = 40;
    })
    .await;
    let control = env.proxy.control(None);
    let client = env.connect().await;
    for k in 1..=2 {
        client
            .simple_query(&format!(
                "insert into users (user_id, name) values ({k}, 'n{k}')"
            ))
            .await
            .expect("insert");
        client
            .simple_query(&format!("select name from users where user_id = {k}"))
            .await
            .expect("simple select");
    }
    // A statement first seen as an unnamed one: its text comes from the Parse.
    for k in [1i64, 2, 1] {
        client
            .query_typed(
                "select user_id, name from users where user_id = $1",
                &[(&k, tokio_postgres::types::Type::INT8)],
            )
            .await
            .expect("unnamed extended select");
    }
    let select = stat(&*control, "select name from users where user_id = $1", 2).await;
    assert_eq!((select.calls, select.rows), (2, 2), "{select:?}");
    let unnamed = stat(
        &*control,
        "select user_id, name from users where user_id = $1",
        3,
    )
    .await;
    assert_eq!((unnamed.calls, unnamed.rows), (3, 3), "{unnamed:?}");
    let insert = stat(
        &*control,
        "insert into users (user_id, name) values ($1, $2)",
        2,
    )
    .await;
    assert_eq!((insert.calls, insert.rows), (2, 2), "{insert:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_on_a_replica_are_counted_as_replica() {
    common::init_logs();
    let (primary, replica) = tokio::task::spawn_blocking(|| {
        let p = PgCluster::start(ClusterOptions::default().user(USER, PASSWORD, Auth::Scram))
            .expect("start primary");
        p.create_database(DB, USER).expect("create database");
        p.psql_as(
            USER,
            PASSWORD,
            DB,
            "create table items (id bigint primary key, note text)",
        )
        .expect("schema");
        let r = p.start_replica().expect("start replica");
        (p, r)
    })
    .await
    .expect("join");
    let text = format!(
        r#"
[listen]
addr = "127.0.0.1:0"
shutdown_timeout = "2s"

[replicas]
check_interval = "100ms"
read_your_writes = false

[[users]]
name = "{USER}"
password = "{PASSWORD}"

[[shards]]
name = "s0"
primary = {{ host = "127.0.0.1", port = {} }}
replicas = [{{ host = "127.0.0.1", port = {} }}]
"#,
        primary.port(),
        replica.port()
    );
    let config =
        shardgate_config::Config::from_toml(&text, Path::new("test.toml")).expect("config");
    let proxy = shardgate_proxy::start(config).await.expect("proxy");
    let control = proxy.control(None);
    let in_rotation = wait_for(Duration::from_secs(15), || async {
        control.replicas().iter().any(|r| r.in_rotation)
    })
    .await;
    assert!(in_rotation, "{:?}", control.replicas());
    let client = connect(&format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DB}",
        proxy.addr().port()
    ))
    .await;
    for k in 1..=3 {
        client
            .simple_query(&format!("insert into items values ({k}, 'n')"))
            .await
            .expect("insert");
    }
    for k in 1..=4 {
        client
            .simple_query(&format!("select note from items where id = {k}"))
            .await
            .expect("read");
    }
    let writes = stat(&*control, "insert into items values ($1, $2)", 3).await;
    assert_eq!((writes.primary, writes.replica), (3, 0), "{writes:?}");
    let reads = stat(&*control, "select note from items where id = $1", 4).await;
    assert_eq!((reads.primary, reads.replica), (0, 4), "{reads:?}");

    drop(client);
    proxy.shutdown().await;
    tokio::task::spawn_blocking(move || drop((replica, primary)))
        .await
        .ok();
}
