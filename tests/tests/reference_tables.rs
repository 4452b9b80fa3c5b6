//! Reference tables (`[[sharding.reference_tables]]`, issue 17): a copy on every shard. Reads
//! go to one shard (the transaction's inside one), joins with sharded rows route by the sharded
//! key, writes land identically on every shard and atomically (also inside a client
//! transaction that wrote a sharded table), and writes whose values could differ per shard are
//! refused. Three real PostgreSQL shards; every check of the copies reads the shards directly.

mod common;

use common::{sqlstate, ShardedEnv};
use tokio_postgres::SimpleQueryMessage;

const SCHEMA: &str = "
create table users (user_id bigint primary key, name text not null, plan_id int);
create table plans (plan_id int primary key, name text not null, price numeric not null default 0,
                    tier text default 'basic');
create table features (id serial primary key, name text not null, created timestamptz default now());";

async fn start(n: usize) -> ShardedEnv {
    let extra = "[sharding]\n[[sharding.reference_tables]]\nname = \"plans\"\n\
                 [[sharding.reference_tables]]\nname = \"public.features\"\n";
    ShardedEnv::start(n, SCHEMA, &["users"], extra).await
}

/// The rows of a simple query, each as its columns' text joined by `|`.
async fn rows(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_owned())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect()
}

/// Every shard's copy of `plans`, read directly, in plan_id order.
async fn copies(env: &ShardedEnv) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for i in 0..env.shards.len() {
        let shard = env.connect_shard(i).await;
        out.push(
            rows(
                &shard,
                "select plan_id, name, price from plans order by plan_id",
            )
            .await,
        );
    }
    out
}

async fn assert_identical(env: &ShardedEnv, want: &[&str]) {
    for (i, copy) in copies(env).await.iter().enumerate() {
        assert_eq!(copy, want, "shard s{i}'s copy of plans");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_use_one_shard_and_joins_route_by_the_sharded_key() {
    let env = start(3).await;
    let client = env.connect().await;
    client
        .batch_execute(
            "insert into plans (plan_id, name, price) values (1, 'free', 0), (2, 'pro', 10), (3, 'team', 30)",
        )
        .await
        .unwrap();
    assert_identical(&env, &["1|free|0", "2|pro|10", "3|team|30"]).await;
    // Users on every shard, each with a plan.
    let mut users = Vec::new();
    for k in 1..=30i64 {
        let plan = (k % 3 + 1) as i32;
        client
            .execute(
                "insert into users (user_id, name, plan_id) values ($1, $2, $3)",
                &[&k, &format!("u{k}"), &plan],
            )
            .await
            .unwrap();
        users.push((k, plan));
    }

    // A key-filtered join: the key's shard, the rows one PostgreSQL would return.
    for k in [1i64, 2, 17] {
        let got = client
            .query(
                "select u.name, p.name, p.price::text from users u join plans p using (plan_id) where u.user_id = $1",
                &[&k],
            )
            .await
            .unwrap();
        let plan = ["free", "pro", "team"][(k % 3) as usize];
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].get::<_, String>(0), format!("u{k}"));
        assert_eq!(got[0].get::<_, String>(1), plan);
    }
    // A scatter join merges as without the reference table (each shard joins its own users).
    let grouped = rows(
        &client,
        "select p.name, count(*) from users u join plans p using (plan_id) group by p.name order by p.name",
    )
    .await;
    assert_eq!(grouped, ["free|10", "pro|10", "team|10"]);

    // Make the copies differ on purpose to see which shard a read used.
    for i in 0..env.shards.len() {
        env.connect_shard(i)
            .await
            .batch_execute(&format!(
                "insert into plans values ({}, 'marker-s{i}', 0)",
                100 + i
            ))
            .await
            .unwrap();
    }
    let marker = "select name from plans where plan_id >= 100";
    // Outside a transaction: one shard (the default one), not a scatter.
    assert_eq!(rows(&client, marker).await, ["marker-s0"]);
    // Inside a transaction on shard s2: the transaction's shard, no other joins.
    let k2 = env.key_on(2, 1);
    client.batch_execute("begin").await.unwrap();
    client
        .execute("update users set name = name where user_id = $1", &[&k2])
        .await
        .unwrap();
    assert_eq!(rows(&client, marker).await, ["marker-s2"]);
    client.batch_execute("commit").await.unwrap();
    // SHARDGATE ROUTE says why.
    let why = rows(&client, "shardgate route select * from plans").await;
    assert!(why[0].contains("only reference tables (plans)"), "{why:?}");
    let why = rows(&client, "shardgate route update plans set price = 1").await;
    assert!(why[0].contains("every shard at once"), "{why:?}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_land_identically_on_every_shard_and_atomically() {
    let env = start(3).await;
    let client = env.connect().await;
    // One copy's count, not the sum over shards; RETURNING rows once.
    let n = client
        .execute(
            "insert into plans (plan_id, name, price) values (1, 'free', 0), (2, 'pro', 10)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    let n = client
        .execute(
            "update plans set price = price + $1::int where plan_id = 2",
            &[&5i32],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let updated = rows(
        &client,
        "update plans set price = price + 0 where plan_id = 2 returning plan_id, price",
    )
    .await;
    assert_eq!(updated, ["2|15"]);
    assert_identical(&env, &["1|free|0", "2|pro|15"]).await;
    let n = client
        .execute("delete from plans where plan_id = $1", &[&1i32])
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_identical(&env, &["2|pro|15"]).await;

    // A unique violation on one shard's copy only: no shard keeps any of the rows.
    env.connect_shard(2)
        .await
        .batch_execute("insert into plans values (7, 'only-on-s2', 0)")
        .await
        .unwrap();
    let e = client
        .batch_execute("insert into plans (plan_id, name) values (6, 'six'), (7, 'seven')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("23505"), "{e}");
    for i in 0..2 {
        let shard = env.connect_shard(i).await;
        assert!(rows(&shard, "select 1 from plans where plan_id in (6, 7)")
            .await
            .is_empty());
    }
    let s2 = env.connect_shard(2).await;
    assert_eq!(
        rows(&s2, "select plan_id from plans where plan_id in (6, 7)").await,
        ["7"]
    );
    s2.batch_execute("delete from plans where plan_id = 7")
        .await
        .unwrap();

    // Inside a client transaction that also writes a sharded table: together, or not at all.
    let k = env.key_on(1, 1);
    client.batch_execute("begin").await.unwrap();
    client
        .execute(
            "insert into users (user_id, name, plan_id) values ($1, 'ann', 3)",
            &[&k],
        )
        .await
        .unwrap();
    client
        .batch_execute("insert into plans (plan_id, name, price) values (3, 'team', 30)")
        .await
        .unwrap();
    // The transaction reads its own write on its shard.
    assert_eq!(
        rows(
            &client,
            &format!(
                "select p.name from users u join plans p using (plan_id) where u.user_id = {k}"
            )
        )
        .await,
        ["team"]
    );
    client.batch_execute("rollback").await.unwrap();
    assert_identical(&env, &["2|pro|15"]).await;
    client.batch_execute("begin").await.unwrap();
    client
        .execute(
            "insert into users (user_id, name, plan_id) values ($1, 'ann', 3)",
            &[&k],
        )
        .await
        .unwrap();
    client
        .batch_execute("insert into plans (plan_id, name, price) values (3, 'team', 30)")
        .await
        .unwrap();
    client.batch_execute("commit").await.unwrap();
    assert_identical(&env, &["2|pro|15", "3|team|30"]).await;
    let owner = env.connect_shard(env.shard_of(k)).await;
    assert_eq!(
        rows(
            &owner,
            &format!("select name from users where user_id = {k}")
        )
        .await,
        ["ann"]
    );

    // DDL reaches every copy.
    client
        .batch_execute("alter table plans add column seats int default 5")
        .await
        .unwrap();
    for i in 0..env.shards.len() {
        let shard = env.connect_shard(i).await;
        assert_eq!(
            rows(&shard, "select seats from plans where plan_id = 3").await,
            ["5"]
        );
    }
    for i in 0..env.shards.len() {
        let shard = env.connect_shard(i).await;
        let n = rows(&shard, "select count(*) from pg_prepared_xacts").await;
        assert_eq!(n, ["0"]);
    }
    env.stop().await;
}

/// Every shard's copy of `features`, read directly.
async fn feature_copies(env: &ShardedEnv) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for i in 0..env.shards.len() {
        let shard = env.connect_shard(i).await;
        out.push(rows(&shard, "select id, name, created from features order by id").await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_shard_defaults_are_evaluated_once_and_per_shard_values_refused() {
    let env = start(3).await;
    let client = env.connect().await;
    // Each shard's own sequence would hand out 1 (and with id lanes, different values): the
    // serial id and the now() default are evaluated on the default shard and written in.
    // Move the other shards' sequences so that a naive broadcast would visibly differ.
    for i in 1..env.shards.len() {
        env.connect_shard(i)
            .await
            .batch_execute(&format!("select setval('features_id_seq', {})", 1000 * i))
            .await
            .unwrap();
    }
    let ids = rows(
        &client,
        "insert into features (name) values ('a'), ('b') returning id",
    )
    .await;
    assert_eq!(ids, ["1", "2"]);
    client
        .execute("insert into features (name) values ($1)", &[&"c"])
        .await
        .unwrap();
    client
        .batch_execute("insert into features values (10, 'no list')")
        .await
        .unwrap();
    let copies = feature_copies(&env).await;
    assert_eq!(copies[0].len(), 4, "{copies:?}");
    for copy in &copies[1..] {
        assert_eq!(
            copy, &copies[0],
            "every copy has the same ids and timestamps"
        );
    }
    // Inside a transaction on another shard, with a sharded write: the same.
    let k = env.key_on(2, 1);
    client.batch_execute("begin").await.unwrap();
    client
        .execute("insert into users (user_id, name) values ($1, 'bo')", &[&k])
        .await
        .unwrap();
    client
        .batch_execute("insert into features (name) values ('in txn')")
        .await
        .unwrap();
    client.batch_execute("commit").await.unwrap();
    let copies = feature_copies(&env).await;
    assert_eq!(copies[0].len(), 5, "{copies:?}");
    assert!(copies[0][3].starts_with("4|in txn|"), "{copies:?}");
    for copy in &copies[1..] {
        assert_eq!(copy, &copies[0]);
    }

    for (sql, needle) in [
        (
            "insert into features (name) select name from plans",
            "INSERT … SELECT",
        ),
        ("insert into features default values", "DEFAULT VALUES"),
        (
            "insert into plans (plan_id, name) values (1, now()::text)",
            "now()",
        ),
        (
            "update plans set name = gen_random_uuid()::text",
            "gen_random_uuid()",
        ),
        (
            "insert into plans (plan_id, name) values (1, DEFAULT)",
            "DEFAULT",
        ),
        (
            "update plans set price = u.user_id from users u where u.user_id = 1",
            "sharded table users",
        ),
        (
            "insert into plans (plan_id, name) select user_id, name from users",
            "sharded table users",
        ),
        ("copy plans from stdin", "one shard only"),
    ] {
        let e = client.batch_execute(sql).await.unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{sql}: {e}");
        let msg = e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_default();
        assert!(msg.contains(needle), "{sql}: {msg}");
        assert!(e.as_db_error().and_then(|d| d.hint()).is_some(), "{sql}");
    }
    // Constant defaults (price 0, tier 'basic') need nothing.
    client
        .batch_execute("insert into plans (plan_id, name) values (1, 'free')")
        .await
        .unwrap();
    // Inside a transaction a refusal leaves the transaction usable.
    client.batch_execute("begin").await.unwrap();
    let e = client
        .batch_execute("insert into features (name) select 'y'")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"));
    client
        .batch_execute("insert into plans (plan_id, name) values (2, 'pro')")
        .await
        .unwrap();
    client.batch_execute("commit").await.unwrap();
    for i in 0..env.shards.len() {
        let shard = env.connect_shard(i).await;
        assert_eq!(
            rows(&shard, "select plan_id, price, tier from plans order by 1").await,
            ["1|0|basic", "2|0|basic"]
        );
    }
    // Writing a sharded table from a reference table routes as the sharded write.
    let k = env.key_on(1, 1);
    client
        .batch_execute(&format!(
            "insert into users (user_id, name, plan_id) select {k}, name, plan_id from plans where plan_id = 1"
        ))
        .await
        .unwrap();
    let owner = env.connect_shard(1).await;
    assert_eq!(
        rows(
            &owner,
            &format!("select name from users where user_id = {k}")
        )
        .await,
        ["free"]
    );
    env.stop().await;
}
