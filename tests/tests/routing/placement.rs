//! Where rows go: users written through the proxy in every protocol land on exactly the
//! shard the ring names and read back by key, IN lists and cross-shard reads gather from every
//! shard, statements pipelined on one connection each reach their own shard, and tables that
//! are not sharded live on the default shard.

use std::collections::BTreeSet;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use crate::common::{self, RawClient, RawMsg};
use crate::{
    assert_nowhere, assert_ready, count, exec, extended, ids_per_shard, insert_user, on_shard,
    queries, simple_rows, simple_value, start, start_with, stop, COUNT_USERS,
};

const INSERT: &str = "insert into users (user_id, name) values ($1, $2)";

fn name(k: i64) -> String {
    format!("user {k}")
}

/// The user ids an extended-protocol query returns.
async fn ids_extended(client: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> BTreeSet<i64> {
    client
        .query(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// 3,000+ users written through the proxy in the simple, extended (unnamed, text and binary
/// parameters) and prepared protocols are each on exactly the shard the ring names; every one
/// reads back by key in every protocol, IN lists span shards, and cross-shard count and
/// ORDER BY / LIMIT / OFFSET give the rows one server would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_land_on_the_shard_the_ring_names() {
    let env = start().await;
    let client = env.connect().await;

    // Simple protocol, literal keys.
    for k in 1..=1000i64 {
        insert_user(&client, k, &name(k)).await;
    }
    // Extended protocol, the unnamed statement (Parse/Bind/Execute/Sync in one batch).
    for k in 1001..=2000i64 {
        client
            .execute_typed(INSERT, &[(&k, Type::INT8), (&name(k), Type::TEXT)])
            .await
            .unwrap_or_else(|e| panic!("unnamed insert {k}: {e:?}"));
    }
    // A prepared statement, prepared once and executed many times.
    let insert = client.prepare(INSERT).await.expect("prepare");
    for k in 2001..=3000i64 {
        client
            .execute(&insert, &[&k, &name(k)])
            .await
            .unwrap_or_else(|e| panic!("prepared insert {k}: {e:?}"));
    }
    // tokio-postgres' `execute(&str)`: a named statement prepared for each call, then closed.
    for k in 3001..=3050i64 {
        client
            .execute(INSERT, &[&k, &name(k)])
            .await
            .unwrap_or_else(|e| panic!("execute(&str) insert {k}: {e:?}"));
    }
    // Parameters in text format (tokio-postgres always sends binary), unnamed statement
    // without declared types.
    let mut raw = RawClient::connect(env.proxy.addr().port()).await;
    for k in 3051..=3100i64 {
        let (key, n) = (k.to_string(), name(k));
        let replies = raw
            .send_and_read(&extended(&[(INSERT, &[Some(&key), Some(&n)])]))
            .await;
        assert_eq!(
            common::first_error(&replies),
            None,
            "text-format insert {k}"
        );
    }
    raw.send(&common::raw::terminate()).await;
    // A key given as a quoted literal.
    exec(
        &client,
        "insert into users (user_id, name) values ('3101', 'user 3101')",
    )
    .await;
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
        let extended_reads = [
            (
                "unnamed",
                client.query_typed(by_key, &[(&k, Type::INT8)]).await,
            ),
            ("prepared", client.query(&prepared, &[&k]).await),
        ];
        for (how, rows) in extended_reads {
            let rows = rows.unwrap_or_else(|e| panic!("{how} read {k}: {e:?}"));
            assert_eq!(rows.len(), 1, "{how} read of {k}");
            assert_eq!(rows[0].get::<_, String>(1), name(k), "{how} read of {k}");
        }
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
    let got = ids_extended(
        &client,
        "select user_id from users where user_id = any($1)",
        &[&wanted],
    )
    .await;
    assert_eq!(got, expected, "= any($1)");
    let got = ids_extended(
        &client,
        "select user_id from users where user_id in ($1, $2, $3)",
        &[&wanted[0], &wanted[2], &wanted[3]],
    )
    .await;
    assert_eq!(
        got,
        BTreeSet::from([wanted[0], wanted[2], wanted[3]]),
        "IN ($1, $2, $3)"
    );

    // Cross-shard reads: the merged count and an ORDER BY / LIMIT / OFFSET page.
    assert_eq!(count(&client, COUNT_USERS).await, 3101);
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

    stop(env, client).await;
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
    raw.send(&queries(&[
        "select 1".to_owned(),
        "delete from users".to_owned(),
        COUNT_USERS.to_owned(),
        format!("select name from users where user_id = {}", keys[2]),
    ]))
    .await;
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
        .map(|r| r.iter().find_map(RawMsg::first_column))
        .collect();
    assert_eq!(values, [Some("3".to_owned()), Some("p".to_owned())]);

    // In one write: a statement for the default shard, then a transaction on another shard.
    let k = env.key_on(2, keys[2] + 1);
    raw.send(&queries(&[
        "select 1".to_owned(),
        "begin".to_owned(),
        format!("insert into users (user_id, name) values ({k}, 't')"),
        format!("select name from users where user_id = {k}"),
        "rollback".to_owned(),
    ]))
    .await;
    for (i, status) in [b'I', b'T', b'T', b'T', b'I'].into_iter().enumerate() {
        let replies = raw.read_until_ready().await;
        assert_ready(&replies, status, &format!("pipelined query {i}"));
        if i == 3 {
            let name = replies.iter().find_map(RawMsg::first_column);
            assert_eq!(name.as_deref(), Some("t"));
        }
    }
    assert_nowhere(&env, &[k]).await;
    raw.send(&common::raw::terminate()).await;
    stop(env, client).await;
}

/// Tables not listed under `[[sharding.tables]]` live on `sharding.default_shard` (here `s1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsharded_tables_live_on_the_default_shard() {
    let env = start_with("[sharding]\ndefault_shard = \"s1\"\n").await;
    let client = env.connect().await;
    let insert = "insert into settings (k, v) values ($1, $2)";
    exec(&client, "insert into settings (k, v) values ('a', '1')").await;
    client
        .execute(insert, &[&"b", &"2"])
        .await
        .expect("extended insert into settings");
    client
        .execute_typed(insert, &[(&"c", Type::TEXT), (&"3", Type::TEXT)])
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
    exec(&client, "begin").await;
    insert_user(&client, k, "u").await;
    exec(&client, "update settings set v = '9' where k = 'a'").await;
    exec(&client, "commit").await;
    assert_eq!(
        on_shard(&env, 1, "select count(*) from settings where v = '9'").await,
        1
    );
    let rows = simple_rows(&client, "shardgate route select * from settings").await;
    assert_eq!(rows[0][0].as_deref(), Some("s1"), "{rows:?}");

    stop(env, client).await;
}
