//! Steering and explaining the router: comment hints, `SET [LOCAL] shardgate.shard|shard_key`
//! send a keyless read to one shard; `SHARDGATE ROUTE` tells where a statement would go and
//! why; DDL on sharded tables is broadcast to every shard, and a DDL failing on one names it.

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::{
    assert_usable, count, count_extended, error_of, exec, on_shard, simple_rows, start, stop,
    COUNT_USERS,
};

/// The keyless read the hints steer.
const COUNT_ORDERS: &str = "select count(*) from orders";

/// Comment hints, `SET shardgate.shard|shard_key` (and RESET), and `SET LOCAL` for one
/// transaction send a keyless read to one shard instead of all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_pick_the_shard() {
    let env = start().await;
    let client = env.connect().await;
    for user in 1..=60i64 {
        for o in 0..(1 + user % 3) {
            exec(
                &client,
                &format!(
                    "insert into orders (order_id, user_id, amount) values ({}, {user}, {o}.50)",
                    user * 10 + o
                ),
            )
            .await;
        }
    }
    let mut per_shard = Vec::new();
    for s in 0..3 {
        per_shard.push(on_shard(&env, s, COUNT_ORDERS).await);
    }
    let total: i64 = per_shard.iter().sum();
    assert!(per_shard.iter().all(|n| *n > 0), "{per_shard:?}");
    assert_eq!(count(&client, COUNT_ORDERS).await, total);

    let s42 = env.shard_of(42);
    for (hint, expected) in [("shard_key=42", per_shard[s42]), ("shard=s1", per_shard[1])] {
        let sql = format!("/* shardgate: {hint} */ {COUNT_ORDERS}");
        assert_eq!(count(&client, &sql).await, expected, "{sql}");
    }
    // A hint in the extended protocol.
    let hinted = format!("/* shardgate: shard=s2 */ {COUNT_ORDERS}");
    assert_eq!(
        count_extended(&client, &hinted).await,
        per_shard[2],
        "{hinted}"
    );

    // Session hint, in both protocols; RESET goes back to every shard.
    exec(&client, "SET shardgate.shard = 's2'").await;
    assert_eq!(count(&client, COUNT_ORDERS).await, per_shard[2]);
    assert_eq!(
        count_extended(&client, COUNT_ORDERS).await,
        per_shard[2],
        "extended with session hint"
    );
    // (statement, the orders a keyless read then sees)
    for (set, expected) in [
        ("RESET shardgate.shard", total),
        ("set shardgate.shard_key = 42", per_shard[s42]),
        ("reset shardgate.shard_key", total),
    ] {
        exec(&client, set).await;
        assert_eq!(count(&client, COUNT_ORDERS).await, expected, "after {set}");
    }

    // SET LOCAL lasts until the end of the transaction.
    let other = (s42 + 1) % 3;
    exec(&client, "begin").await;
    exec(&client, "set local shardgate.shard_key = 42").await;
    assert_eq!(count(&client, COUNT_ORDERS).await, per_shard[s42]);
    assert_eq!(count(&client, COUNT_USERS).await, 0);
    exec(&client, "commit").await;
    assert_eq!(count(&client, COUNT_ORDERS).await, total, "after COMMIT");
    // The same with the SET LOCAL after a routed statement.
    let k = env.key_on(other, 1);
    exec(&client, "begin").await;
    assert!(
        count(
            &client,
            &format!("select count(*) from orders where user_id = {k}")
        )
        .await
            > 0
    );
    exec(
        &client,
        &format!("set local shardgate.shard = '{}'", env.shard_name(other)),
    )
    .await;
    assert_eq!(count(&client, COUNT_ORDERS).await, per_shard[other]);
    exec(&client, "commit").await;
    assert_eq!(count(&client, COUNT_ORDERS).await, total, "after COMMIT");
    assert_usable(&client, "the hints").await;

    stop(env, client).await;
}

/// The one row (shard, role, keys, reason) `SHARDGATE ROUTE` answers for `sql` (the whole
/// statement, `SHARDGATE ROUTE` included).
async fn route(client: &Client, sql: &str) -> Vec<String> {
    let rows = simple_rows(client, sql).await;
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    rows[0]
        .iter()
        .map(|v| v.clone().unwrap_or_default())
        .collect()
}

/// `sql` (a DDL) fails, with an error naming `shard`, and leaves the connection usable.
async fn ddl_fails_on(client: &Client, sql: &str, shard: &str) -> (String, String, String) {
    let e = error_of(client.batch_execute(sql).await);
    assert!(e.1.contains(shard), "the error names the shard: {e:?}");
    assert_usable(client, "a failed DDL").await;
    e
}

/// `SHARDGATE ROUTE` answers one row (shard, role, keys, reason); DDL on sharded tables reaches
/// every shard, and one failing on a shard names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shardgate_route_explains_and_ddl_reaches_every_shard() {
    let env = start().await;
    let client = env.connect().await;

    // SHARDGATE ROUTE: one row (shard, role, keys, reason).
    let by_key = "SHARDGATE ROUTE select * from users where user_id = 42";
    let msgs = client.simple_query(by_key).await.expect("shardgate route");
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
    let row = route(&client, by_key).await;
    assert_eq!(row[0], env.shard_name(env.shard_of(42)), "{row:?}");
    assert!(row[1].contains("primary"), "{row:?}");
    assert_eq!(row[2], "42", "{row:?}");
    assert!(row[3].contains("users"), "{row:?}");
    let row = route(&client, "shardgate route select count(*) from users").await;
    assert_eq!(row[0], "s0,s1,s2", "{row:?}");
    // The three strategies: push down, merge in the proxy, gather into PostgreSQL.
    assert!(
        row[3].contains("merge in the proxy (re-aggregate"),
        "{row:?}"
    );
    let row = route(
        &client,
        "shardgate route select * from users where user_id = 42",
    )
    .await;
    assert!(row[3].starts_with("push down"), "{row:?}");
    let row = route(
        &client,
        "shardgate route select count(distinct name) from users",
    )
    .await;
    assert!(
        row[3].contains("gather into PostgreSQL: count(DISTINCT")
            && row[3].contains("temporary tables on s0"),
        "{row:?}"
    );
    // The shard of a keyed write, and the default shard for an unsharded table.
    for (sql, shard) in [
        (
            "shardgate route insert into users (user_id, name) values (7, 'x')",
            env.shard_name(env.shard_of(7)),
        ),
        ("shardgate route select * from settings", "s0"),
    ] {
        let row = route(&client, sql).await;
        assert_eq!(row[0], shard, "{sql}: {row:?}");
    }
    let row = route(&client, "shardgate route update users set name = 'z'").await;
    assert!(row[3].contains("0A000"), "{row:?}");
    assert_usable(&client, "SHARDGATE ROUTE").await;

    // DDL on sharded tables reaches every shard.
    exec(&client, "create table t (user_id bigint primary key)").await;
    exec(&client, "create index users_name_idx on users (name)").await;
    for s in 0..3 {
        for (what, sql) in [
            (
                "table t",
                "select count(*) from pg_tables where tablename = 't'",
            ),
            (
                "index",
                "select count(*) from pg_indexes where indexname = 'users_name_idx'",
            ),
        ] {
            assert_eq!(on_shard(&env, s, sql).await, 1, "{what} on shard {s}");
        }
    }
    // The new table is routed like the others.
    let k = env.key_on(2, 1);
    exec(&client, &format!("insert into t (user_id) values ({k})")).await;
    assert_eq!(on_shard(&env, 2, "select count(*) from t").await, 1);
    assert_eq!(count(&client, "select count(*) from t").await, 1);

    // A DDL failing on one shard names it.
    exec(
        &env.connect_shard(1).await,
        "create table t2 (user_id bigint)",
    )
    .await;
    let e = ddl_fails_on(&client, "create table t2 (user_id bigint)", "s1").await;
    assert_eq!(e.0, "42P07", "{e:?}");
    ddl_fails_on(&client, "drop table t2", "s0").await;

    stop(env, client).await;
}
