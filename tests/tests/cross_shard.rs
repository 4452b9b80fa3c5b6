//! The differential test of cross-shard reads: a corpus of SELECTs (keyed lookups, IN lists,
//! joins on the shard key, cross-shard ORDER BY / LIMIT / OFFSET, count/sum/min/max/avg,
//! GROUP BY, NULLs, empty results) runs through shardgate in front of 3 shards and directly on
//! one plain PostgreSQL holding the same rows. Column names, column types, rows (and their
//! order where the ORDER BY fixes it) and row counts must be identical — in text (simple
//! protocol) and binary (extended protocol, named and unnamed statements). Statements that
//! cannot be merged correctly must be refused with 0A000, leaving the connection usable; and
//! a text ORDER BY across shards must be refused on a database whose collation is not C.

mod common;

use std::time::Instant;

use shardgate_config::Config;
use shardgate_proxy::ProxyHandle;
use shardgate_router::{KeyValue, Router};
use shardgate_tests::corpus::compare::{
    differ, is_error, run_prepared, run_text, run_unnamed, sqlstate, usable, Outcome,
};
use shardgate_tests::corpus::{self as differential, quote, start_clusters, Gen, Row};
use shardgate_tests::PgCluster;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

#[path = "cross_shard/corpus.rs"]
mod corpus;
#[path = "cross_shard/held.rs"]
mod held;

use common::USER;
use corpus::{Order, Query};

const DB: &str = "app";
const SHARDS: usize = 3;
/// Deterministic data set size.
const USERS: i64 = 300;
const ORDERS: i64 = 1_500;

const SCHEMA: &str = "
create table users (user_id bigint primary key, name text, age int, score numeric(10,2),
                    created_at timestamptz, active bool);
create table orders (order_id bigint, user_id bigint, amount numeric(12,2), qty int, status text,
                     primary key (user_id, order_id));
";

/// A decimal with two places from a count of cents in `[lo, lo + span)`.
fn cents(g: &mut Gen, lo: i64, span: u64) -> String {
    let c = lo + g.below(span) as i64;
    let sign = if c < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", c.abs() / 100, c.abs() % 100)
}

fn rows() -> Vec<Row> {
    const NAMES: &[&str] = &[
        "alice", "Alice", "bob", "Bob", "carol", "dave", "Émile", "émile", "zoë", "Zed", "ann",
        "ann ", "O'Brien", "李", "bob",
    ];
    let mut g = Gen(20_240_101);
    let mut out = Vec::new();
    for id in 1..=USERS {
        let name = match g.below(13) {
            0 => "NULL".to_owned(),
            _ => quote(NAMES[g.below(NAMES.len() as u64) as usize]),
        };
        let age = match g.below(15) {
            0 => "NULL".to_owned(),
            _ => (18 + g.below(62)).to_string(),
        };
        let score = match g.below(11) {
            0 => "NULL".to_owned(),
            _ => cents(&mut g, -50_000, 150_000),
        };
        let created_at = match id {
            1 => "'-infinity'".to_owned(),
            2 => "'infinity'".to_owned(),
            3 => "'0044-03-15 12:00:00+00 BC'".to_owned(),
            4 | 50 | 150 => "NULL".to_owned(),
            _ => format!(
                "timestamptz '2023-01-01 00:00:00+00' + interval '{}.{:06} seconds'",
                g.below(40_000_000),
                if id % 4 == 0 { g.below(1_000_000) } else { 0 }
            ),
        };
        let active = ["true", "false", "NULL"][g.below(3) as usize];
        out.push(Row {
            key: Some(id),
            table: "users",
            values: format!("({id}, {name}, {age}, {score}, {created_at}, {active})"),
        });
    }
    for order_id in 1..=ORDERS {
        // Users 301..=320 have orders but no users row; some users have no orders.
        let user_id = 1 + g.below(320) as i64;
        let amount = match g.below(20) {
            0 => "NULL".to_owned(),
            _ => cents(&mut g, 0, 200_000),
        };
        let qty = match g.below(20) {
            0 => "NULL".to_owned(),
            _ => (1 + g.below(10)).to_string(),
        };
        let status = ["'new'", "'paid'", "'shipped'", "'cancelled'", "NULL"][g.below(5) as usize];
        out.push(Row {
            key: Some(user_id),
            table: "orders",
            values: format!("({order_id}, {user_id}, {amount}, {qty}, {status})"),
        });
    }
    out
}

/// Connects to a server (or the proxy) directly as `app`.
async fn connect_to(port: u16, db: &str) -> Client {
    differential::connect(port, db).await.expect("connect")
}

fn proxy_config(shards: &[PgCluster]) -> Config {
    common::sharded_config(shards, &["users", "orders"], "")
}

/// 3 shards holding exactly the rows the ring gives them, a reference server holding all
/// rows, and a proxy in front of the shards.
struct World {
    proxy: ProxyHandle,
    servers: differential::World,
}

impl World {
    async fn start() -> World {
        common::init_logs();
        let servers = differential::World::start(SHARDS)
            .await
            .expect("start PostgreSQL");
        let config = proxy_config(servers.shards());
        let router = Router::new(&config).expect("router");
        let collation: String = connect_to(servers.reference().port(), DB)
            .await
            .query_one(
                "select datcollate::text from pg_database where datname = current_database()",
                &[],
            )
            .await
            .expect("datcollate")
            .get(0);
        assert_eq!(
            collation, "C",
            "the test compares text order under the C collation"
        );
        let per_shard = servers
            .load(SCHEMA, &rows(), |k| router.shard_for_key(&KeyValue::Int(k)))
            .await
            .expect("load");
        for (i, n) in per_shard.iter().enumerate() {
            assert!(*n > 100, "shard {i} holds {n} rows");
        }
        let proxy = shardgate_proxy::start(config).await.expect("start proxy");
        World { proxy, servers }
    }

    async fn proxy_client(&self, db: &str) -> Client {
        connect_to(self.proxy.addr().port(), db).await
    }

    async fn stop(self) {
        self.proxy.shutdown().await;
        self.servers.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_reads_match_one_postgresql() {
    let started = Instant::now();
    let world = World::start().await;
    let setup = started.elapsed();
    let mut proxy = world.proxy_client(DB).await;
    let mut direct = connect_to(world.servers.reference().port(), DB).await;
    let mut failures = Vec::new();
    let mut statements = 0;

    for q in corpus::QUERIES.iter().chain(corpus::GATHERED) {
        statements += 1;
        let Query { sql, order } = *q;
        let text = differ(
            order,
            run_text(&proxy, sql).await,
            run_text(&direct, sql).await,
        );
        let prepared = differ(
            order,
            run_prepared(&proxy, sql, &[]).await,
            run_prepared(&direct, sql, &[]).await,
        );
        let unnamed = differ(
            order,
            run_unnamed(&proxy, sql, &[]).await,
            run_unnamed(&direct, sql, &[]).await,
        );
        for (mode, d) in [
            ("text", text),
            ("binary prepared", prepared),
            ("binary unnamed", unnamed),
        ] {
            if let Some(d) = d {
                failures.push(format!("[{mode}] {sql}\n    {d}"));
            }
        }
        if !usable(&proxy).await {
            panic!("the proxy connection is unusable after: {sql}");
        }
    }

    for p in corpus::parameterised() {
        statements += 1;
        let refs: Vec<&(dyn ToSql + Sync)> = p.params.iter().map(|(v, _)| v.as_ref()).collect();
        let typed: Vec<(&(dyn ToSql + Sync), Type)> = p
            .params
            .iter()
            .map(|(v, t)| (v.as_ref(), t.clone()))
            .collect();
        let prepared = differ(
            p.order,
            run_prepared(&proxy, p.sql, &refs).await,
            run_prepared(&direct, p.sql, &refs).await,
        );
        let unnamed = differ(
            p.order,
            run_unnamed(&proxy, p.sql, &typed).await,
            run_unnamed(&direct, p.sql, &typed).await,
        );
        for (mode, d) in [("binary prepared", prepared), ("binary unnamed", unnamed)] {
            if let Some(d) = d {
                failures.push(format!(
                    "[{mode}, {:?}] {}\n    {d}",
                    p.params
                        .iter()
                        .map(|(v, _)| format!("{v:?}"))
                        .collect::<Vec<_>>(),
                    p.sql
                ));
            }
        }
    }

    for sql in corpus::REFUSED {
        statements += 1;
        let text = run_text(&proxy, sql).await;
        let prepared = run_prepared(&proxy, sql, &[]).await;
        let unnamed = run_unnamed(&proxy, sql, &[]).await;
        for (mode, got) in [
            ("text", is_error(&text, "0A000")),
            ("binary prepared", is_error(&prepared, "0A000")),
            ("binary unnamed", is_error(&unnamed, "0A000")),
        ] {
            if !got {
                failures.push(format!(
                    "[{mode}] {sql}\n    expected 0A000, got {text:?} / {prepared:?} / {unnamed:?}"
                ));
            }
        }
        if !usable(&proxy).await {
            failures.push(format!("connection unusable after the refused {sql}"));
        }
        // The direct server runs them: they are valid SQL.
        assert!(
            matches!(run_text(&direct, sql).await, Outcome::Rows { .. }),
            "{sql}"
        );
    }

    held::held_reads_match(&mut proxy, &mut direct, &mut failures).await;

    let total = started.elapsed();
    eprintln!(
        "cross-shard differential test: {statements} statements, {} failures; set-up {setup:?}, total {total:?}",
        failures.len()
    );
    drop(proxy);
    drop(direct);
    world.stop().await;
    assert!(
        failures.is_empty(),
        "{} of the comparisons differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Cursors and fetch-size portals over a result larger than `limits.max_gather_rows`: a
/// merged read streams from the shards, a gathered one is held whole and refused past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_reads_pass_the_gather_limit() {
    let env = common::demo_env::DemoEnv::start("[limits]\nmax_gather_rows = 100\n").await;
    let mut client = env.connect().await;
    held::streamed_reads_pass_the_gather_limit(&mut client).await;
    drop(client);
    env.stop().await;
}

/// A database whose collation is not C refuses a cross-shard ORDER BY on text (the proxy's
/// byte-wise merge would give a different order), while other sorts, aggregates and GROUP BY
/// (combined by PostgreSQL itself) still work and equal the reference's answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_order_across_shards_needs_a_c_collation() {
    let clusters = start_clusters(SHARDS + 1).await.expect("start PostgreSQL");
    let (reference, shards) = clusters.split_first().expect("clusters");
    let config = proxy_config(shards);
    let router = Router::new(&config).expect("router");
    const ICU_DB: &str = "app_icu";
    let names = ["b", "B", "a", "A", "é", "z", "Z", "ä"];
    let rows: Vec<(i64, String)> = (1..=40)
        .map(|id| (id, names[id as usize % names.len()].to_owned()))
        .collect();
    for (i, c) in clusters.iter().enumerate() {
        c.psql(
            "postgres",
            &format!(
                "create database {ICU_DB} owner {USER} template template0 \
                 locale_provider icu icu_locale 'en-US' lc_collate 'C' lc_ctype 'C'"
            ),
        )
        .expect("create ICU database");
        let client = connect_to(c.port(), ICU_DB).await;
        client
            .batch_execute("create table users (user_id bigint primary key, name text)")
            .await
            .expect("table");
        for (id, name) in &rows {
            // Cluster 0 is the reference: it gets every row.
            if i == 0 || router.shard_for_key(&KeyValue::Int(*id)) == i - 1 {
                client
                    .execute("insert into users values ($1, $2)", &[id, name])
                    .await
                    .expect("insert");
            }
        }
    }
    let proxy = shardgate_proxy::start(config).await.expect("start proxy");
    let client = connect_to(proxy.addr().port(), ICU_DB).await;
    let direct = connect_to(reference.port(), ICU_DB).await;

    let sorted_text = "select user_id, name from users order by name, user_id";
    match client.simple_query(sorted_text).await {
        Err(e) => {
            assert_eq!(sqlstate(&e), "0A000", "{e}");
            let message = e
                .as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_default();
            assert!(message.contains("C collation"), "{message}");
        }
        Ok(_) => panic!("a text ORDER BY across shards under ICU en-US was not refused"),
    }
    let err = client
        .query(sorted_text, &[])
        .await
        .expect_err("refused in binary too");
    assert_eq!(sqlstate(&err), "0A000");
    assert!(usable(&client).await);

    for (sql, order) in [
        (
            "select user_id, name from users order by user_id",
            Order::Total,
        ),
        (
            "select name, count(*) from users group by name order by name",
            Order::Total,
        ),
        (
            "select min(name), max(name), count(*) from users",
            Order::Total,
        ),
    ] {
        if let Some(d) = differ(
            order,
            run_text(&client, sql).await,
            run_text(&direct, sql).await,
        ) {
            panic!("{sql}\n    {d}");
        }
        if let Some(d) = differ(
            order,
            run_prepared(&client, sql, &[]).await,
            run_prepared(&direct, sql, &[]).await,
        ) {
            panic!("{sql} (binary)\n    {d}");
        }
    }
    drop(client);
    drop(direct);
    proxy.shutdown().await;
    tokio::task::spawn_blocking(move || drop(clusters))
        .await
        .ok();
}

/// With several shards the proxy holds the first messages of a client's next batch until they
/// say where it goes. A Parse sent while the previous request's reply was still on its way
/// was dropped when that reply released the server connection, and the Describe that followed
/// failed with 26000 (seen under load during a rebalance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parse_sent_before_the_previous_reply_is_kept() {
    use common::{raw, RawClient, ShardedEnv};
    let env = ShardedEnv::start(2, "create table t (user_id bigint primary key)", &["t"], "").await;
    let mut c = RawClient::connect(env.proxy.addr().port()).await;
    c.send(&raw::query("select pg_sleep(0.3)")).await;
    // The next batch's Parse, in its own packet, while the sleep still runs.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    c.send(&raw::parse(
        "s1",
        "select count(*) from t where user_id = $1",
    ))
    .await;
    let first = c.read_until_ready().await;
    assert!(common::first_error(&first).is_none(), "{first:?}");
    // The rest of the batch after the connection went back to the pool.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut rest = raw::describe(b'S', "s1");
    rest.extend_from_slice(&raw::bind("", "s1", &[Some("7")]));
    rest.extend_from_slice(&raw::execute("", 0));
    rest.extend_from_slice(&raw::sync());
    c.send(&rest).await;
    let msgs = c.read_until_ready().await;
    assert_eq!(common::first_error(&msgs), None, "{msgs:?}");
    let tags: String = msgs.iter().map(|m| m.tag as char).collect();
    assert_eq!(tags, "1tT2DCZ", "ParseComplete, ParameterDescription, RowDescription, BindComplete, DataRow, CommandComplete, ReadyForQuery");
    env.stop().await;
}

/// Gathered reads: schema-qualified sharded tables joined to an unsharded table of the default
/// shard, parameters in the extended protocol, `limits.max_gather_rows` (54000 past it, the
/// session usable), and nothing left behind on the coordinator (no temporary table, no open
/// transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gathered_reads_are_exact_bounded_and_leave_nothing() {
    use common::ShardedEnv;
    let env = ShardedEnv::start(
        SHARDS,
        "create schema app; create table app.events (user_id bigint, n int, note text);
         create table settings (k text, v int);",
        &["app.events"],
        "[limits]\nmax_gather_rows = 500\n",
    )
    .await;
    let client = env.connect().await;
    // The unsharded table lives on the default shard (s0).
    client
        .batch_execute("insert into settings values ('a', 1), ('b', 2), ('z', 99)")
        .await
        .expect("settings");
    let insert = |from: i64, to: i64| {
        (from..to)
            .map(|k| format!("({k}, {}, 'note {}')", k % 7, k % 3))
            .collect::<Vec<_>>()
    };
    // One statement per shard (a multi-row INSERT must stay on one shard).
    let load = |rows: Vec<String>, keys: Vec<i64>| {
        let mut per_shard: Vec<Vec<String>> = vec![Vec::new(); SHARDS];
        for (row, k) in rows.into_iter().zip(keys) {
            per_shard[env.shard_of(k)].push(row);
        }
        per_shard
    };
    for part in load(insert(1, 301), (1..301).collect()) {
        client
            .batch_execute(&format!(
                "insert into app.events (user_id, n, note) values {}",
                part.join(",")
            ))
            .await
            .expect("insert");
    }

    let row = client
        .query_one(
            "select count(distinct n), sum(n)::int8 from app.events",
            &[],
        )
        .await
        .expect("count(distinct) gathered");
    let sum: i64 = (1..301i64).map(|k| k % 7).sum();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (7, sum));

    let rows = client
        .query(
            "select s.k, count(*) from app.events e join settings s on s.v = e.n \
             group by s.k having count(*) > 1 order by 1",
            &[],
        )
        .await
        .expect("join with the default shard's table");
    let got: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let count = |v: i64| (1..301i64).filter(|k| k % 7 == v).count() as i64;
    assert_eq!(
        got,
        vec![("a".to_owned(), count(1)), ("b".to_owned(), count(2))]
    );

    let row = client
        .query_one(
            "select count(distinct note) from app.events where user_id > $1 and n = $2",
            &[&250i64, &3i32],
        )
        .await
        .expect("parameters in a gathered read");
    let notes: std::collections::HashSet<i64> = (251..301i64)
        .filter(|k| k % 7 == 3)
        .map(|k| k % 3)
        .collect();
    assert_eq!(row.get::<_, i64>(0), notes.len() as i64);

    // A session whose transactions default to read-only still gets gathered reads (the
    // coordinator's own transaction is READ WRITE for its temporary tables).
    client
        .batch_execute("set default_transaction_read_only = on")
        .await
        .expect("set");
    let row = client
        .query_one("select count(distinct n) from app.events", &[])
        .await
        .expect("gathered in a read-only session");
    assert_eq!(row.get::<_, i64>(0), 7);
    client
        .batch_execute("reset default_transaction_read_only")
        .await
        .expect("reset");

    // Past limits.max_gather_rows: 54000 naming it; the session goes on.
    for part in load(insert(301, 601), (301..601).collect()) {
        client
            .batch_execute(&format!(
                "insert into app.events (user_id, n, note) values {}",
                part.join(",")
            ))
            .await
            .expect("insert");
    }
    for run in 0..2 {
        let e = if run == 0 {
            client
                .simple_query("select distinct n from app.events")
                .await
                .map(|_| ())
        } else {
            client
                .query("select distinct n from app.events", &[])
                .await
                .map(|_| ())
        }
        .expect_err("past max_gather_rows");
        assert_eq!(sqlstate(&e), "54000", "{e:?}");
        let db = e.as_db_error().expect("an ErrorResponse");
        assert!(db.message().contains("limits.max_gather_rows"), "{db:?}");
        assert!(
            db.hint().is_some_and(|h| h.contains("max_gather_rows")),
            "{db:?}"
        );
        assert!(usable(&client).await);
    }
    // Still refused: a locking read cannot be gathered.
    let e = client
        .simple_query(
            "select distinct n from app.events e join settings s on s.v = e.n for update of e",
        )
        .await
        .expect_err("locking read");
    assert_eq!(sqlstate(&e), "0A000", "{e:?}");

    // Nothing stays on the coordinator: no temporary table, no transaction left open.
    let s0 = env.connect_shard(0).await;
    let temp: i64 = s0
        .query_one(
            "select count(*) from pg_class where relpersistence = 't'",
            &[],
        )
        .await
        .expect("pg_class")
        .get(0);
    assert_eq!(temp, 0);
    let open: i64 = s0
        .query_one(
            "select count(*) from pg_stat_activity where state like 'idle in transaction%'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get(0);
    assert_eq!(open, 0);
    drop(client);
    env.stop().await;
}
