//! Shard routing end to end: 3 real PostgreSQL shards behind one shardgate. Rows written
//! through the proxy (simple, extended and prepared protocols) land on exactly the shard the
//! ring names; transactions stay on the shard of their first routed statement; every refusal
//! has its SQLSTATE and leaves the connection usable; routing hints, `SHARDGATE ROUTE`, DDL
//! broadcast, unsharded tables on the default shard, and basic cross-shard reads.

mod common;

use std::collections::BTreeSet;

use common::{RawClient, ShardedEnv};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};

const SCHEMA: &str = "
create table users (user_id bigint primary key, name text);
create table orders (order_id bigint, user_id bigint, amount numeric(12,2),
                     primary key (user_id, order_id));
create table settings (k text primary key, v text);
";

/// Sharded tables of every environment (`t`, `t2` are created by the DDL test).
const SHARDED: &[&str] = &["users", "orders", "t", "t2"];

async fn start() -> ShardedEnv {
    ShardedEnv::start(3, SCHEMA, SHARDED, "").await
}

/// (SQLSTATE, message, hint) of a server or proxy error; panics on success.
fn error_of<T: std::fmt::Debug>(r: Result<T, tokio_postgres::Error>) -> (String, String, String) {
    let e = r.expect_err("the statement must be refused");
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not an ErrorResponse: {e:?}"));
    (
        db.code().code().to_owned(),
        db.message().to_owned(),
        db.hint().unwrap_or_default().to_owned(),
    )
}

/// Rows of a simple query, as text columns.
async fn simple_rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).map(str::to_owned))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .collect()
}

/// The one value of a simple query returning one row and one column.
async fn simple_value(client: &Client, sql: &str) -> String {
    let rows = simple_rows(client, sql).await;
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    rows[0][0].clone().unwrap_or_default()
}

async fn count(client: &Client, sql: &str) -> i64 {
    simple_value(client, sql).await.parse().expect("a count")
}

/// The connection still works, in both protocols.
async fn assert_usable(client: &Client, after: &str) {
    let v = simple_value(client, "select 41 + 1").await;
    assert_eq!(v, "42", "simple query after {after}");
    let row = client
        .query_one("select $1::int + 1", &[&1i32])
        .await
        .unwrap_or_else(|e| panic!("extended query after {after}: {e:?}"));
    assert_eq!(row.get::<_, i32>(0), 2, "after {after}");
}

/// The transaction status of the ReadyForQuery ending `replies`.
fn ready_status(replies: &[common::RawMsg]) -> u8 {
    let last = replies.last().expect("replies");
    assert_eq!(last.tag, b'Z');
    last.body[0]
}

/// The user ids stored on each shard, read directly.
async fn ids_per_shard(env: &ShardedEnv, table: &str) -> Vec<BTreeSet<i64>> {
    let mut out = Vec::new();
    for i in 0..env.shards.len() {
        let c = env.connect_shard(i).await;
        let ids = c
            .query(&format!("select user_id from {table}"), &[])
            .await
            .expect("read a shard")
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .collect();
        out.push(ids);
    }
    out
}

async fn on_shard(env: &ShardedEnv, shard: usize, sql: &str) -> i64 {
    count(&env.connect_shard(shard).await, sql).await
}

/// Rows of `users` with `user_id` on `shard`, read there directly.
async fn users_on(env: &ShardedEnv, shard: usize, user_id: i64) -> i64 {
    let sql = format!("select count(*) from users where user_id = {user_id}");
    on_shard(env, shard, &sql).await
}

/// Rows of `users` with `user_id`, read through `client`.
async fn users_via(client: &Client, user_id: i64) -> i64 {
    count(
        client,
        &format!("select count(*) from users where user_id = {user_id}"),
    )
    .await
}

/// 3,000+ users written through the proxy in the simple, extended (unnamed, text and binary
/// parameters) and prepared protocols are each on exactly the shard the ring names; every one
/// reads back by key in every protocol, IN lists span shards, and cross-shard count and
/// ORDER BY / LIMIT / OFFSET give the rows one server would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_land_on_the_shard_the_ring_names() {
    let env = start().await;
    let client = env.connect().await;
    let name = |k: i64| format!("user {k}");

    // Simple protocol, literal keys.
    for k in 1..=1000i64 {
        client
            .batch_execute(&format!(
                "insert into users (user_id, name) values ({k}, '{}')",
                name(k)
            ))
            .await
            .unwrap_or_else(|e| panic!("simple insert {k}: {e:?}"));
    }
    // Extended protocol, the unnamed statement (Parse/Bind/Execute/Sync in one batch).
    for k in 1001..=2000i64 {
        client
            .execute_typed(
                "insert into users (user_id, name) values ($1, $2)",
                &[(&k, Type::INT8), (&name(k), Type::TEXT)],
            )
            .await
            .unwrap_or_else(|e| panic!("unnamed insert {k}: {e:?}"));
    }
    // A prepared statement, prepared once and executed many times.
    let insert = client
        .prepare("insert into users (user_id, name) values ($1, $2)")
        .await
        .expect("prepare");
    for k in 2001..=3000i64 {
        client
            .execute(&insert, &[&k, &name(k)])
            .await
            .unwrap_or_else(|e| panic!("prepared insert {k}: {e:?}"));
    }
    // tokio-postgres' `execute(&str)`: a named statement prepared for each call, then closed.
    for k in 3001..=3050i64 {
        client
            .execute(
                "insert into users (user_id, name) values ($1, $2)",
                &[&k, &name(k)],
            )
            .await
            .unwrap_or_else(|e| panic!("execute(&str) insert {k}: {e:?}"));
    }
    // Parameters in text format (tokio-postgres always sends binary), unnamed statement
    // without declared types.
    let mut raw = RawClient::connect(env.proxy.addr().port()).await;
    for k in 3051..=3100i64 {
        let mut msg = common::raw::parse("", "insert into users (user_id, name) values ($1, $2)");
        let key = k.to_string();
        let n = name(k);
        msg.extend_from_slice(&common::raw::bind("", "", &[Some(&key), Some(&n)]));
        msg.extend_from_slice(&common::raw::execute("", 0));
        msg.extend_from_slice(&common::raw::sync());
        raw.send(&msg).await;
        let replies = raw.read_until_ready().await;
        assert_eq!(
            common::first_error(&replies),
            None,
            "text-format insert {k}"
        );
    }
    raw.send(&common::raw::terminate()).await;
    // A key given as a quoted literal.
    client
        .batch_execute("insert into users (user_id, name) values ('3101', 'user 3101')")
        .await
        .expect("quoted key literal");
    let all: Vec<i64> = (1..=3101).collect();

    // Every user is on exactly the shard the ring names, and nowhere else.
    let stored = ids_per_shard(&env, "users").await;
    for (shard, ids) in stored.iter().enumerate() {
        let expected: BTreeSet<i64> = all
            .iter()
            .copied()
            .filter(|k| env.shard_of(*k) == shard)
            .collect();
        assert!(
            expected.len() > 800,
            "shard {shard} owns {}",
            expected.len()
        );
        let wrong: Vec<_> = ids.difference(&expected).take(10).collect();
        let missing: Vec<_> = expected.difference(ids).take(10).collect();
        assert!(
            wrong.is_empty() && missing.is_empty(),
            "shard {}: holds {wrong:?} it should not, lacks {missing:?}",
            env.shard_name(shard)
        );
    }

    // Read back by key in every protocol.
    let by_key = "select user_id, name from users where user_id = $1";
    let prepared = client.prepare(by_key).await.expect("prepare read");
    for &k in &all {
        let rows = simple_rows(
            &client,
            &format!("select user_id, name from users where user_id = {k}"),
        )
        .await;
        assert_eq!(
            rows,
            vec![vec![Some(k.to_string()), Some(name(k))]],
            "simple read of {k}"
        );
        let row = client
            .query_typed(by_key, &[(&k, Type::INT8)])
            .await
            .unwrap_or_else(|e| panic!("unnamed read {k}: {e:?}"));
        assert_eq!(row.len(), 1, "unnamed read of {k}");
        assert_eq!(row[0].get::<_, String>(1), name(k));
        let row = client
            .query(&prepared, &[&k])
            .await
            .unwrap_or_else(|e| panic!("prepared read {k}: {e:?}"));
        assert_eq!(row.len(), 1, "prepared read of {k}");
        assert_eq!(row[0].get::<_, String>(1), name(k));
    }
    let quoted = simple_rows(&client, "select name from users where user_id = '3101'").await;
    assert_eq!(quoted, vec![vec![Some(name(3101))]]);

    // IN lists spanning every shard return every requested row.
    let wanted: Vec<i64> = vec![3, 17, 1500, 2999, 42, 3101, 2500, 7, 1001, 999_999];
    let spread: BTreeSet<usize> = wanted.iter().map(|k| env.shard_of(*k)).collect();
    assert_eq!(spread.len(), 3, "the IN list spans all shards");
    let list = wanted
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let got: BTreeSet<i64> = simple_rows(
        &client,
        &format!("select user_id from users where user_id in ({list})"),
    )
    .await
    .into_iter()
    .map(|r| r[0].as_deref().unwrap_or_default().parse().unwrap())
    .collect();
    let expected: BTreeSet<i64> = wanted.iter().copied().filter(|k| *k <= 3101).collect();
    assert_eq!(got, expected, "simple IN list");
    let got: BTreeSet<i64> = client
        .query(
            "select user_id from users where user_id = any($1)",
            &[&wanted],
        )
        .await
        .expect("= any($1)")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got, expected, "= any($1)");
    let got: BTreeSet<i64> = client
        .query(
            "select user_id from users where user_id in ($1, $2, $3)",
            &[&wanted[0], &wanted[2], &wanted[3]],
        )
        .await
        .expect("IN ($1, $2, $3)")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got, BTreeSet::from([wanted[0], wanted[2], wanted[3]]));

    // Cross-shard reads: the merged count and an ORDER BY / LIMIT / OFFSET page.
    assert_eq!(count(&client, "select count(*) from users").await, 3101);
    let page = simple_rows(
        &client,
        "select * from users order by user_id limit 5 offset 10",
    )
    .await;
    let expected: Vec<Vec<Option<String>>> = (11..=15)
        .map(|k: i64| vec![Some(k.to_string()), Some(name(k))])
        .collect();
    assert_eq!(page, expected, "simple ORDER BY LIMIT OFFSET");
    let page: Vec<(i64, String)> = client
        .query(
            "select * from users order by user_id desc limit 5 offset 10",
            &[],
        )
        .await
        .expect("extended page")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(i64, String)> = (3087..=3091).rev().map(|k| (k, name(k))).collect();
    assert_eq!(page, expected, "extended ORDER BY DESC LIMIT OFFSET");

    drop(client);
    env.stop().await;
}

/// Statements on different shards pipelined on one connection outside a transaction (as an
/// async client does when it runs queries concurrently) each run on their own shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_statements_for_different_shards() {
    let env = start().await;
    let client = env.connect().await;
    let keys: Vec<i64> = (0..3).map(|s| env.key_on(s, 100)).collect();
    let insert = client
        .prepare("insert into users (user_id, name) values ($1, 'p')")
        .await
        .expect("prepare");
    let (c, insert) = (&client, &insert);
    let futures = keys
        .iter()
        .map(|k| async move { c.execute(insert, &[k]).await });
    for (k, r) in keys
        .iter()
        .zip(futures_util::future::join_all(futures).await)
    {
        r.unwrap_or_else(|e| panic!("pipelined insert {k}: {e:?}"));
    }
    let select = client
        .prepare("select name from users where user_id = $1")
        .await
        .expect("prepare");
    for _ in 0..5 {
        let select = &select;
        let futures = keys
            .iter()
            .map(|k| async move { c.query(select, &[k]).await });
        for (k, r) in keys
            .iter()
            .zip(futures_util::future::join_all(futures).await)
        {
            let rows = r.unwrap_or_else(|e| panic!("pipelined read {k}: {e:?}"));
            assert_eq!(rows.len(), 1, "pipelined read {k}");
        }
    }
    for (shard, ids) in ids_per_shard(&env, "users").await.iter().enumerate() {
        assert_eq!(ids, &BTreeSet::from([keys[shard]]));
    }

    // In one write: a statement for the default shard, one refused, a cross-shard read, and
    // a keyed read for another shard.
    let mut raw = RawClient::connect(env.proxy.addr().port()).await;
    let mut msg = common::raw::query("select 1");
    msg.extend_from_slice(&common::raw::query("delete from users"));
    msg.extend_from_slice(&common::raw::query("select count(*) from users"));
    msg.extend_from_slice(&common::raw::query(&format!(
        "select name from users where user_id = {}",
        keys[2]
    )));
    raw.send(&msg).await;
    let replies = [
        raw.read_until_ready().await,
        raw.read_until_ready().await,
        raw.read_until_ready().await,
        raw.read_until_ready().await,
    ];
    assert_eq!(common::first_error(&replies[0]), None, "{:?}", replies[0]);
    assert_eq!(
        common::first_error(&replies[1]).as_deref(),
        Some("0A000"),
        "{:?}",
        replies[1]
    );
    let values: Vec<Option<String>> = replies[2..]
        .iter()
        .map(|r| r.iter().find_map(common::RawMsg::first_column))
        .collect();
    assert_eq!(values, [Some("3".to_owned()), Some("p".to_owned())]);

    // In one write: a statement for the default shard, then a transaction on another shard.
    let k = env.key_on(2, keys[2] + 1);
    let mut msg = common::raw::query("select 1");
    for sql in [
        "begin".to_owned(),
        format!("insert into users (user_id, name) values ({k}, 't')"),
        format!("select name from users where user_id = {k}"),
        "rollback".to_owned(),
    ] {
        msg.extend_from_slice(&common::raw::query(&sql));
    }
    raw.send(&msg).await;
    for (i, status) in [b'I', b'T', b'T', b'T', b'I'].into_iter().enumerate() {
        let replies = raw.read_until_ready().await;
        assert_eq!(common::first_error(&replies), None, "{i}: {replies:?}");
        assert_eq!(ready_status(&replies), status, "{i}: {replies:?}");
        if i == 3 {
            let name = replies.iter().find_map(common::RawMsg::first_column);
            assert_eq!(name.as_deref(), Some("t"));
        }
    }
    for s in 0..3 {
        assert_eq!(users_on(&env, s, k).await, 0);
    }
    raw.send(&common::raw::terminate()).await;
    drop(client);
    env.stop().await;
}

/// A transaction starts on the shard of its first routed statement (BEGIN simple, extended,
/// with the statement in one batch, or followed by statements prepared first); a statement
/// for another shard makes that shard join the transaction, and COMMIT and ROLLBACK act on
/// every shard it touched (issue 16; `multi_shard_txn.rs` tests the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_span_the_shards_they_touch() {
    let env = start().await;
    let client = env.connect().await;
    let mut next = 10_000i64;
    let mut pair = |a: usize, b: usize| {
        let ka = env.key_on(a, next);
        let kb = env.key_on(b, next);
        next = ka.max(kb) + 1;
        (ka, kb)
    };

    // Simple protocol. The first statement's shard is not the default shard.
    let (a, b) = pair(1, 2);
    client.batch_execute("begin").await.expect("begin");
    client
        .batch_execute(&format!(
            "insert into users (user_id, name) values ({a}, 'a')"
        ))
        .await
        .expect("first insert");
    client
        .batch_execute(&format!(
            "insert into users (user_id, name) values ({b}, 'b')"
        ))
        .await
        .expect("the second shard joins");
    // It sees its own inserts, and commits them.
    assert_eq!(users_via(&client, a).await, 1);
    assert_eq!(simple_value(&client, "select 1").await, "1");
    client.batch_execute("commit").await.expect("commit");
    assert_eq!(users_on(&env, 1, a).await, 1);
    assert_eq!(
        count(
            &client,
            &format!("select count(*) from users where user_id in ({a}, {b})")
        )
        .await,
        2
    );

    // tokio-postgres' Transaction (BEGIN as a simple query, statements prepared inside it).
    let (a, b) = pair(2, 0);
    let mut client = client;
    {
        let tx = client.transaction().await.expect("transaction");
        tx.execute("insert into users (user_id, name) values ($1, 'a')", &[&a])
            .await
            .expect("first insert in Transaction");
        tx.execute("insert into users (user_id, name) values ($1, 'b')", &[&b])
            .await
            .expect("second insert in Transaction");
        let n: i64 = tx
            .query_one("select count(*) from users where user_id = $1", &[&a])
            .await
            .expect("still usable")
            .get(0);
        assert_eq!(n, 1);
        tx.commit().await.expect("commit");
    }
    assert_eq!(users_on(&env, 2, a).await, 1);
    assert_eq!(users_on(&env, 0, b).await, 1);

    // Extended protocol throughout, BEGIN and COMMIT included (unnamed statements).
    let (a, b) = pair(1, 0);
    client
        .execute_typed("begin", &[])
        .await
        .expect("extended begin");
    client
        .execute_typed(
            "insert into users (user_id, name) values ($1, 'a')",
            &[(&a, Type::INT8)],
        )
        .await
        .expect("first extended insert");
    client
        .execute_typed(
            "insert into users (user_id, name) values ($1, 'b')",
            &[(&b, Type::INT8)],
        )
        .await
        .expect("second extended insert");
    client
        .execute_typed("commit", &[])
        .await
        .expect("extended commit");
    assert_eq!(users_on(&env, 1, a).await, 1);
    assert_eq!(users_on(&env, 0, b).await, 1);

    // BEGIN and COMMIT with nothing between (answered by the proxy), then ROLLBACK likewise.
    client.batch_execute("begin").await.expect("begin");
    client.batch_execute("commit").await.expect("empty commit");
    client.batch_execute("begin").await.expect("begin");
    client
        .batch_execute("rollback")
        .await
        .expect("empty rollback");
    assert_usable(&client, "an empty transaction").await;

    // ROLLBACK really rolls back, on the shard the transaction ran on.
    let (a, _) = pair(2, 2);
    client.batch_execute("begin").await.expect("begin");
    client
        .batch_execute(&format!(
            "insert into users (user_id, name) values ({a}, 'r')"
        ))
        .await
        .expect("insert");
    assert_eq!(simple_value(&client, "select 1").await, "1");
    assert_eq!(
        simple_value(
            &client,
            &format!("select name from users where user_id = {a}")
        )
        .await,
        "r"
    );
    client.batch_execute("rollback").await.expect("rollback");
    for s in 0..3 {
        assert_eq!(users_on(&env, s, a).await, 0);
    }
    // A statement without a sharded table first: the transaction runs on the default shard.
    let (a, b) = pair(0, 1);
    client.batch_execute("begin").await.expect("begin");
    assert_eq!(simple_value(&client, "select 1").await, "1");
    client
        .batch_execute(&format!(
            "insert into users (user_id, name) values ({a}, 'r')"
        ))
        .await
        .expect("insert on the default shard");
    client
        .batch_execute(&format!(
            "insert into users (user_id, name) values ({b}, 'r')"
        ))
        .await
        .expect("insert on another shard");
    client.batch_execute("rollback").await.expect("rollback");
    for s in 0..3 {
        assert_eq!(
            on_shard(
                &env,
                s,
                &format!("select count(*) from users where user_id in ({a}, {b})")
            )
            .await,
            0
        );
    }

    // At the protocol level: a statement prepared (Parse/Describe/Sync) right after BEGIN runs
    // outside the transaction, which is still open for the client and goes where its first
    // executed statement goes.
    let (a, b) = pair(2, 1);
    let mut raw = RawClient::connect(env.proxy.addr().port()).await;
    let replies = raw.simple("begin").await;
    assert_eq!(ready_status(&replies), b'T', "{replies:?}");
    let mut msg = common::raw::parse("ins", "insert into users (user_id, name) values ($1, $2)");
    msg.extend_from_slice(&common::raw::describe(b'S', "ins"));
    msg.extend_from_slice(&common::raw::sync());
    raw.send(&msg).await;
    let replies = raw.read_until_ready().await;
    let tags: Vec<u8> = replies.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"1tnZ", "{replies:?}");
    assert_eq!(ready_status(&replies), b'T', "still in the transaction");
    let run = |key: i64| {
        let mut msg = common::raw::bind("", "ins", &[Some(&key.to_string()), Some("raw")]);
        msg.extend_from_slice(&common::raw::execute("", 0));
        msg.extend_from_slice(&common::raw::sync());
        msg
    };
    raw.send(&run(a)).await;
    let replies = raw.read_until_ready().await;
    assert_eq!(common::first_error(&replies), None, "{replies:?}");
    assert_eq!(ready_status(&replies), b'T');
    raw.send(&run(b)).await;
    let replies = raw.read_until_ready().await;
    assert_eq!(common::first_error(&replies), None, "{replies:?}");
    assert_eq!(ready_status(&replies), b'T');
    let replies = raw.simple("commit").await;
    assert_eq!(ready_status(&replies), b'I', "{replies:?}");
    assert_eq!(users_on(&env, 2, a).await, 1);
    assert_eq!(users_on(&env, 1, b).await, 1);

    // BEGIN in the same batch as the first statement (as JDBC sends it).
    let (c, d) = pair(1, 2);
    let mut msg = common::raw::parse("", "BEGIN");
    msg.extend_from_slice(&common::raw::bind("", "", &[]));
    msg.extend_from_slice(&common::raw::execute("", 0));
    msg.extend_from_slice(&common::raw::parse(
        "",
        "insert into users (user_id, name) values ($1, 'jdbc')",
    ));
    msg.extend_from_slice(&common::raw::bind("", "", &[Some(&c.to_string())]));
    msg.extend_from_slice(&common::raw::execute("", 0));
    msg.extend_from_slice(&common::raw::sync());
    raw.send(&msg).await;
    let replies = raw.read_until_ready().await;
    assert_eq!(common::first_error(&replies), None, "{replies:?}");
    assert_eq!(ready_status(&replies), b'T');
    let replies = raw
        .simple(&format!(
            "insert into users (user_id, name) values ({d}, 'jdbc')"
        ))
        .await;
    assert_eq!(common::first_error(&replies), None, "{replies:?}");
    let replies = raw.simple("commit").await;
    assert_eq!(common::first_error(&replies), None, "{replies:?}");
    assert_eq!(users_on(&env, 1, c).await, 1);
    assert_eq!(users_via(&client, d).await, 1);
    raw.send(&common::raw::terminate()).await;

    assert_usable(&client, "the transactions").await;

    drop(client);
    env.stop().await;
}

/// Every refusal has its SQLSTATE and a message saying why, in both protocols, writes nothing,
/// and leaves the connection usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_leave_the_connection_usable() {
    let env = start().await;
    let client = env.connect().await;
    let a = env.key_on(0, 1);
    let b = env.key_on(1, 1);
    let c = env.key_on(2, 1);
    for k in [a, b, c] {
        client
            .batch_execute(&format!(
                "insert into users (user_id, name) values ({k}, 'x')"
            ))
            .await
            .expect("insert");
    }

    let (s0, s1) = (env.shard_name(0).to_owned(), env.shard_name(1).to_owned());
    // (statement, SQLSTATE, words the message must contain, words the hint must contain)
    let cases: Vec<(String, &str, Vec<&str>, Vec<&str>)> = vec![
        (
            "insert into users values (777, 'no columns')".into(),
            "0A000",
            vec!["users", "columns"],
            vec![],
        ),
        (
            "update users set name = 'z'".into(),
            "0A000",
            vec!["users"],
            vec!["user_id"],
        ),
        (
            "delete from users where name = 'x'".into(),
            "0A000",
            vec!["users"],
            vec!["user_id"],
        ),
        // DISTINCT and window functions are gathered into PostgreSQL now; a locking read of
        // that kind cannot be, and stays refused.
        (
            "select u.user_id from users u join orders o on o.order_id = u.user_id for update of u"
                .into(),
            "0A000",
            vec!["join", "across shards"],
            vec![],
        ),
        (
            "/* shardgate: shard=nope */ select 1".into(),
            "42704",
            vec!["nope"],
            vec![],
        ),
        (
            "select * from users where user_id = 'abc'".into(),
            "22P02",
            vec!["abc"],
            vec![],
        ),
        (
            format!("update users set user_id = {b} where user_id = {a}"),
            "0A000",
            vec![&s0, &s1],
            vec![],
        ),
    ];
    for (sql, code, message, hint) in &cases {
        let e = error_of(client.simple_query(sql).await);
        assert_eq!(&e.0, code, "{sql}: {e:?}");
        for word in message {
            assert!(
                e.1.contains(word),
                "{sql}: the message names {word:?}: {e:?}"
            );
        }
        for word in hint {
            assert!(e.2.contains(word), "{sql}: the hint names {word:?}: {e:?}");
        }
        assert_usable(&client, sql).await;
        // The same through the extended protocol (the unnamed statement).
        let e = error_of(client.execute_typed(sql.as_str(), &[]).await);
        assert_eq!(&e.0, code, "extended {sql}: {e:?}");
        assert_usable(&client, sql).await;
    }
    // A bad key in a text-format parameter.
    let mut raw = RawClient::connect(env.proxy.addr().port()).await;
    let mut msg = common::raw::parse("", "select * from users where user_id = $1");
    msg.extend_from_slice(&common::raw::bind("", "", &[Some("12x")]));
    msg.extend_from_slice(&common::raw::execute("", 0));
    msg.extend_from_slice(&common::raw::sync());
    raw.send(&msg).await;
    let replies = raw.read_until_ready().await;
    assert_eq!(
        common::first_error(&replies).as_deref(),
        Some("22P02"),
        "{replies:?}"
    );
    let replies = raw.simple("select 1").await;
    assert_eq!(common::first_error(&replies), None);
    raw.send(&common::raw::terminate()).await;

    // Nothing was written by the refused statements.
    let stored = ids_per_shard(&env, "users").await;
    assert_eq!(stored[0], BTreeSet::from([a]));
    assert_eq!(stored[1], BTreeSet::from([b]));
    assert_eq!(stored[2], BTreeSet::from([c]));
    assert_eq!(
        count(&client, "select count(*) from users where name = 'x'").await,
        3
    );

    // A cross-shard read inside a transaction, right after BEGIN and after a routed statement:
    // it runs on every shard, in the transaction (issue 16).
    client.batch_execute("begin").await.expect("begin");
    assert_eq!(
        simple_value(&client, "select count(*) from users").await,
        "3"
    );
    client.batch_execute("commit").await.expect("commit");
    client.batch_execute("begin").await.expect("begin");
    assert_eq!(
        simple_value(
            &client,
            &format!("select name from users where user_id = {b}")
        )
        .await,
        "x"
    );
    assert_eq!(
        simple_value(&client, "select count(*) from users").await,
        "3"
    );
    let n: i64 = client
        .query_one("select count(*) from users", &[])
        .await
        .expect("extended cross-shard read in a transaction")
        .get(0);
    assert_eq!(n, 3);
    assert_eq!(
        simple_value(
            &client,
            &format!("select name from users where user_id = {b}")
        )
        .await,
        "x"
    );
    client.batch_execute("commit").await.expect("commit");
    assert_eq!(count(&client, "select count(*) from users").await, 3);
    assert_usable(&client, "the transactions").await;

    drop(client);
    env.stop().await;
}

/// Comment hints, `SET shardgate.shard|shard_key` (and RESET), and `SET LOCAL` for one
/// transaction send a keyless read to one shard instead of all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_pick_the_shard() {
    let env = start().await;
    let client = env.connect().await;
    for user in 1..=60i64 {
        for o in 0..(1 + user % 3) {
            client
                .batch_execute(&format!(
                    "insert into orders (order_id, user_id, amount) values ({}, {user}, {o}.50)",
                    user * 10 + o
                ))
                .await
                .expect("insert order");
        }
    }
    let mut per_shard = Vec::new();
    for s in 0..3 {
        per_shard.push(on_shard(&env, s, "select count(*) from orders").await);
    }
    let total: i64 = per_shard.iter().sum();
    assert!(per_shard.iter().all(|n| *n > 0), "{per_shard:?}");
    assert_eq!(count(&client, "select count(*) from orders").await, total);

    let s42 = env.shard_of(42);
    assert_eq!(
        count(
            &client,
            "/* shardgate: shard_key=42 */ select count(*) from orders"
        )
        .await,
        per_shard[s42]
    );
    assert_eq!(
        count(
            &client,
            "/* shardgate: shard=s1 */ select count(*) from orders"
        )
        .await,
        per_shard[1]
    );
    // A hint in the extended protocol.
    let n: i64 = client
        .query_one("/* shardgate: shard=s2 */ select count(*) from orders", &[])
        .await
        .expect("hinted extended")
        .get(0);
    assert_eq!(n, per_shard[2]);

    // Session hint.
    client
        .batch_execute("SET shardgate.shard = 's2'")
        .await
        .expect("set shardgate.shard");
    assert_eq!(
        count(&client, "select count(*) from orders").await,
        per_shard[2]
    );
    let n: i64 = client
        .query_one("select count(*) from orders", &[])
        .await
        .expect("extended with session hint")
        .get(0);
    assert_eq!(n, per_shard[2]);
    client
        .batch_execute("RESET shardgate.shard")
        .await
        .expect("reset");
    assert_eq!(count(&client, "select count(*) from orders").await, total);
    client
        .batch_execute("set shardgate.shard_key = 42")
        .await
        .expect("set shard_key");
    assert_eq!(
        count(&client, "select count(*) from orders").await,
        per_shard[s42]
    );
    client
        .batch_execute("reset shardgate.shard_key")
        .await
        .expect("reset");
    assert_eq!(count(&client, "select count(*) from orders").await, total);

    // SET LOCAL lasts until the end of the transaction.
    let other = (s42 + 1) % 3;
    client.batch_execute("begin").await.expect("begin");
    client
        .batch_execute("set local shardgate.shard_key = 42")
        .await
        .expect("set local");
    assert_eq!(
        count(&client, "select count(*) from orders").await,
        per_shard[s42]
    );
    assert_eq!(count(&client, "select count(*) from users").await, 0);
    client.batch_execute("commit").await.expect("commit");
    assert_eq!(count(&client, "select count(*) from orders").await, total);
    // The same with the SET LOCAL after a routed statement.
    let k = env.key_on(other, 1);
    client.batch_execute("begin").await.expect("begin");
    assert!(
        count(
            &client,
            &format!("select count(*) from orders where user_id = {k}")
        )
        .await
            > 0
    );
    client
        .batch_execute(&format!(
            "set local shardgate.shard = '{}'",
            env.shard_name(other)
        ))
        .await
        .expect("set local");
    assert_eq!(
        count(&client, "select count(*) from orders").await,
        per_shard[other]
    );
    client.batch_execute("commit").await.expect("commit");
    assert_eq!(count(&client, "select count(*) from orders").await, total);
    assert_usable(&client, "the hints").await;

    drop(client);
    env.stop().await;
}

/// `SHARDGATE ROUTE` answers one row (shard, role, keys, reason); DDL on sharded tables reaches
/// every shard, and one failing on a shard names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shardgate_route_explains_and_ddl_reaches_every_shard() {
    let env = start().await;
    let client = env.connect().await;

    // SHARDGATE ROUTE: one row (shard, role, keys, reason).
    let s42 = env.shard_name(env.shard_of(42)).to_owned();
    let msgs = client
        .simple_query("SHARDGATE ROUTE select * from users where user_id = 42")
        .await
        .expect("shardgate route");
    let columns: Vec<String> = msgs
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::RowDescription(cols) => {
                Some(cols.iter().map(|c| c.name().to_owned()).collect())
            }
            _ => None,
        })
        .expect("a row description");
    assert_eq!(columns, ["shard", "role", "keys", "reason"]);
    let rows = simple_rows(
        &client,
        "SHARDGATE ROUTE select * from users where user_id = 42",
    )
    .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0][0].as_deref(), Some(s42.as_str()), "{rows:?}");
    assert!(
        rows[0][1]
            .as_deref()
            .unwrap_or_default()
            .contains("primary"),
        "{rows:?}"
    );
    assert_eq!(rows[0][2].as_deref(), Some("42"), "{rows:?}");
    assert!(
        rows[0][3].as_deref().unwrap_or_default().contains("users"),
        "{rows:?}"
    );
    let rows = simple_rows(&client, "shardgate route select count(*) from users").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0][0].as_deref(), Some("s0,s1,s2"), "{rows:?}");
    // The three strategies: push down, merge in the proxy, gather into PostgreSQL.
    let reason = |rows: &Vec<Vec<Option<String>>>| rows[0][3].clone().unwrap_or_default();
    assert!(
        reason(&rows).contains("merge in the proxy (re-aggregate"),
        "{rows:?}"
    );
    let rows = simple_rows(
        &client,
        "shardgate route select * from users where user_id = 42",
    )
    .await;
    assert!(reason(&rows).starts_with("push down"), "{rows:?}");
    let rows = simple_rows(
        &client,
        "shardgate route select count(distinct name) from users",
    )
    .await;
    assert!(
        reason(&rows).contains("gather into PostgreSQL: count(DISTINCT")
            && reason(&rows).contains("temporary tables on s0"),
        "{rows:?}"
    );
    let rows = simple_rows(
        &client,
        "shardgate route insert into users (user_id, name) values (7, 'x')",
    )
    .await;
    assert_eq!(
        rows[0][0].as_deref(),
        Some(env.shard_name(env.shard_of(7))),
        "{rows:?}"
    );
    let rows = simple_rows(&client, "shardgate route select * from settings").await;
    assert_eq!(rows[0][0].as_deref(), Some("s0"), "{rows:?}");
    let rows = simple_rows(&client, "shardgate route update users set name = 'z'").await;
    assert!(
        rows[0][3].as_deref().unwrap_or_default().contains("0A000"),
        "{rows:?}"
    );
    assert_usable(&client, "SHARDGATE ROUTE").await;

    // DDL on sharded tables reaches every shard.
    client
        .batch_execute("create table t (user_id bigint primary key)")
        .await
        .expect("create table t");
    client
        .batch_execute("create index users_name_idx on users (name)")
        .await
        .expect("create index");
    for s in 0..3 {
        assert_eq!(
            on_shard(
                &env,
                s,
                "select count(*) from pg_tables where tablename = 't'"
            )
            .await,
            1,
            "table t on shard {s}"
        );
        assert_eq!(
            on_shard(
                &env,
                s,
                "select count(*) from pg_indexes where indexname = 'users_name_idx'"
            )
            .await,
            1,
            "index on shard {s}"
        );
    }
    // The new table is routed like the others.
    let k = env.key_on(2, 1);
    client
        .batch_execute(&format!("insert into t (user_id) values ({k})"))
        .await
        .expect("insert into t");
    assert_eq!(on_shard(&env, 2, "select count(*) from t").await, 1);
    assert_eq!(count(&client, "select count(*) from t").await, 1);

    // A DDL failing on one shard names it.
    env.connect_shard(1)
        .await
        .batch_execute("create table t2 (user_id bigint)")
        .await
        .expect("t2 directly on s1");
    let e = error_of(
        client
            .batch_execute("create table t2 (user_id bigint)")
            .await,
    );
    assert_eq!(e.0, "42P07", "{e:?}");
    assert!(e.1.contains("s1"), "the error names the shard: {e:?}");
    assert_usable(&client, "a failed DDL").await;
    let e = error_of(client.batch_execute("drop table t2").await);
    assert!(e.1.contains("s0"), "the error names the shard: {e:?}");
    assert_usable(&client, "a failed DDL").await;

    drop(client);
    env.stop().await;
}

/// Tables not listed under `[[sharding.tables]]` live on `sharding.default_shard` (here `s1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsharded_tables_live_on_the_default_shard() {
    let env = ShardedEnv::start(3, SCHEMA, SHARDED, "[sharding]\ndefault_shard = \"s1\"\n").await;
    let client = env.connect().await;
    client
        .batch_execute("insert into settings (k, v) values ('a', '1')")
        .await
        .expect("simple insert into settings");
    client
        .execute("insert into settings (k, v) values ($1, $2)", &[&"b", &"2"])
        .await
        .expect("extended insert into settings");
    client
        .execute_typed(
            "insert into settings (k, v) values ($1, $2)",
            &[(&"c", Type::TEXT), (&"3", Type::TEXT)],
        )
        .await
        .expect("unnamed insert into settings");
    for s in 0..3 {
        let n = on_shard(&env, s, "select count(*) from settings").await;
        assert_eq!(n, if s == 1 { 3 } else { 0 }, "settings rows on shard {s}");
    }
    assert_eq!(count(&client, "select count(*) from settings").await, 3);
    assert_eq!(
        simple_value(&client, "select v from settings where k = 'b'").await,
        "2"
    );
    // In a transaction with a sharded statement on the default shard.
    let k = env.key_on(1, 1);
    client.batch_execute("begin").await.expect("begin");
    client
        .batch_execute(&format!(
            "insert into users (user_id, name) values ({k}, 'u')"
        ))
        .await
        .expect("insert user");
    client
        .batch_execute("update settings set v = '9' where k = 'a'")
        .await
        .expect("update settings in the same transaction");
    client.batch_execute("commit").await.expect("commit");
    assert_eq!(
        on_shard(&env, 1, "select count(*) from settings where v = '9'").await,
        1
    );
    let rows = simple_rows(&client, "shardgate route select * from settings").await;
    assert_eq!(rows[0][0].as_deref(), Some("s1"), "{rows:?}");

    drop(client);
    env.stop().await;
}
