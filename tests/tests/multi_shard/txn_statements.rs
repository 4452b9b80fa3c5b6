//! Statements inside a transaction on several shards (part of `multi_shard_txn.rs`):
//! savepoints and errors that reach every shard the transaction touched, in both protocols;
//! DDL that one shard refuses reaching none; reads the proxy gathers into PostgreSQL seeing the
//! transaction's own writes.

use super::{
    assert_balances, begin_and_set, expect_sqlstate, first_column, keys, message, on_shard,
    set_balance, set_balance_sql,
};
use crate::env::{self, assert_nothing_prepared, ACCOUNTS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_and_errors_span_every_shard() {
    let env = env::start(3, "").await;
    let keys = keys(&env, 3);
    let (a, b, c) = (keys[0], keys[1], keys[2]);
    let client = env.connect().await;

    // A shard that joins after a savepoint is rolled back to it too.
    begin_and_set(&client, &[(a, 1)]).await;
    client.batch_execute("savepoint s1").await.unwrap();
    set_balance(&client, b, 2).await;
    client
        .batch_execute("rollback to savepoint s1")
        .await
        .unwrap();
    set_balance(&client, c, 3).await;
    client.batch_execute("release savepoint s1").await.unwrap();
    client.batch_execute("commit").await.unwrap();
    let kept = [(a, 1), (b, 100), (c, 3)];
    assert_balances(&env, kept, "b's write was rolled back to s1").await;

    // An error on one shard aborts the transaction everywhere: 25P02 until ROLLBACK.
    begin_and_set(&client, &[(a, 10)]).await;
    expect_sqlstate(
        client.batch_execute(&set_balance_sql(b, "1/0")).await,
        "22012",
    );
    for key in [c, a] {
        expect_sqlstate(
            client.batch_execute(&set_balance_sql(key, 30)).await,
            "25P02",
        );
    }
    // COMMIT of a failed transaction rolls back, as in PostgreSQL.
    client.batch_execute("commit").await.unwrap();
    assert_balances(&env, [(a, 1), (c, 3)], "the failed transaction rolled back").await;

    // ROLLBACK TO a savepoint recovers from an error on another shard.
    begin_and_set(&client, &[(a, 5)]).await;
    client.batch_execute("savepoint s2").await.unwrap();
    expect_sqlstate(
        client.batch_execute(&set_balance_sql(c, "1/0")).await,
        "22012",
    );
    client.batch_execute("rollback to s2").await.unwrap();
    set_balance(&client, b, 6).await;
    client.batch_execute("commit").await.unwrap();
    assert_balances(&env, [(a, 5), (b, 6)], "committed after ROLLBACK TO s2").await;

    // The same in the extended protocol: savepoints and COMMIT as Parse/Bind/Execute/Sync, with
    // statements after them in the same transaction.
    let update = "update accounts set balance = $1 where user_id = $2";
    client.execute("begin", &[]).await.unwrap();
    client.execute(update, &[&7i64, &a]).await.unwrap();
    client.execute(update, &[&8i64, &b]).await.unwrap();
    client.execute("savepoint s3", &[]).await.unwrap();
    client.execute(update, &[&9i64, &c]).await.unwrap();
    client
        .execute("rollback to savepoint s3", &[])
        .await
        .unwrap();
    client.execute("release savepoint s3", &[]).await.unwrap();
    client.execute(update, &[&10i64, &c]).await.unwrap();
    client.execute("commit", &[]).await.unwrap();
    let kept = [(a, 7), (b, 8), (c, 10)];
    assert_balances(&env, kept, "extended protocol, rolled back to s3").await;

    // A session SET inside a transaction on several shards that rolls back does not stay.
    begin_and_set(&client, &[(a, 11), (b, 12)]).await;
    client
        .batch_execute("set application_name = 'rolled-back'")
        .await
        .unwrap();
    client.batch_execute("rollback").await.unwrap();
    let shown = client.simple_query("show application_name").await.unwrap();
    let name = first_column(&shown).into_iter().next().unwrap_or_default();
    assert_ne!(name, "rolled-back", "a rolled-back SET must not stay");

    // The connection is still good outside transactions.
    let n: i64 = client
        .query_one("select count(*) from accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, ACCOUNTS);
    assert_nothing_prepared(&env).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_one_shard_refuses_reaches_no_shard() {
    let env = env::start(3, "").await;
    // One shard already has the table: CREATE TABLE fails there, so no shard may keep it.
    on_shard(&env, 1, "create table audit (user_id bigint, note text)").await;
    let client = env.connect().await;
    expect_sqlstate(
        client
            .batch_execute("create table audit (user_id bigint, note text)")
            .await,
        "42P07",
    );
    // CREATE INDEX CONCURRENTLY cannot run in a transaction block: it runs on each shard on its
    // own, in parallel.
    client
        .batch_execute("create index concurrently accounts_balance on accounts (balance)")
        .await
        .expect("CREATE INDEX CONCURRENTLY on every shard");
    for i in 0..3 {
        let shard = env.connect_shard(i).await;
        let sql = "select count(*) from pg_tables where tablename = 'audit'";
        let has = env::value_through(&shard, sql).await;
        assert_eq!(has, i64::from(i == 1), "shard {i}");
        let sql = "select count(*) from pg_indexes where indexname = 'accounts_balance'";
        assert_eq!(
            env::value_through(&shard, sql).await,
            1,
            "index on shard {i}"
        );
    }
    assert_nothing_prepared(&env).await;
    env.stop().await;
}

/// A read the proxy gathers into PostgreSQL (here a window function) runs inside a transaction
/// too, and sees the transaction's own writes on every shard; one that also reads unsharded
/// tables after the transaction wrote on the default shard is refused rather than answered
/// without those writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gathered_reads_run_inside_transactions() {
    let env = env::start(2, "").await;
    // An unsharded table, on the default shard.
    on_shard(
        &env,
        0,
        "create table plans (plan_id int primary key, name text)",
    )
    .await;
    let (a, b) = (env.key_on(0, 1), env.key_on(1, 1));
    let client = env.connect().await;
    let top = "select user_id, rank() over (order by balance desc, user_id) \
               from accounts order by 2 limit 2";
    begin_and_set(&client, &[(b, 1000), (a, 900)]).await;
    let rows = client
        .query(top, &[])
        .await
        .expect("gathered in the transaction");
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        ids,
        [b, a],
        "the transaction's own writes, from both shards"
    );
    // After a write on the default shard, a gathered read of an unsharded table is refused.
    client
        .batch_execute("insert into plans values (1, 'gold')")
        .await
        .unwrap();
    let e = expect_sqlstate(
        client
            .query(
                "select p.name, count(*) over () from plans p cross join accounts a",
                &[],
            )
            .await,
        "0A000",
    );
    let message = message(&e);
    assert!(
        message.contains("would not see this transaction's writes"),
        "{message}"
    );
    client.batch_execute("rollback").await.unwrap();
    assert_balances(&env, [(a, 100)], "rolled back").await;
    assert_nothing_prepared(&env).await;
    env.stop().await;
}
