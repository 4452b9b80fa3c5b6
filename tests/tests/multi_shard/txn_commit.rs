//! How a transaction that wrote on several shards ends (part of `multi_shard_txn.rs`): COMMIT
//! keeps every shard's writes and ROLLBACK none; a shard failing at PREPARE, the `refuse`
//! mode and shards without prepared transactions leave nothing behind; `best_effort` commits
//! shard by shard; a shard-map change in the middle answers 40001.

use tokio_postgres::Client;

use super::{
    assert_balances, begin_and_set, expect_sqlstate, keys, message, on_shard, set_balance,
    set_balance_sql,
};
use crate::common::{self, ShardedEnv};
use crate::env::{self, assert_nothing_prepared, sqlstate, total_on_shards, ACCOUNTS};

/// A transaction making `writes` whose COMMIT fails with `code`; afterwards every account holds
/// what `kept` says, so nothing of the transaction stayed on any shard. Returns the COMMIT's
/// error.
async fn assert_commit_refused(
    env: &ShardedEnv,
    client: &Client,
    writes: &[(i64, i64)],
    code: &str,
    kept: &[(i64, i64)],
) -> tokio_postgres::Error {
    begin_and_set(client, writes).await;
    let e = expect_sqlstate(client.batch_execute("commit").await, code);
    assert_balances(
        env,
        kept.iter().copied(),
        "nothing of the refused COMMIT stays",
    )
    .await;
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_several_shards_commit_together_or_not_at_all() {
    let env = env::start(3, "").await;
    let keys = keys(&env, 3);
    let (a, b, c) = (keys[0], keys[1], keys[2]);
    let client = env.connect().await;

    // Reads across shards inside a transaction, then writes to two shards: both commit.
    client.batch_execute("begin").await.unwrap();
    assert_eq!(
        env::value_through(&client, "select sum(balance) from accounts").await,
        ACCOUNTS * 100
    );
    client
        .execute(
            "update accounts set balance = balance - 10 where user_id = $1",
            &[&a],
        )
        .await
        .unwrap();
    client
        .execute(
            "update accounts set balance = balance + 10 where user_id = $1",
            &[&b],
        )
        .await
        .unwrap();
    // The transaction sees its own writes on both shards.
    let seen = env::value_through(
        &client,
        &format!("select sum(balance) from accounts where user_id in ({a}, {b})"),
    )
    .await;
    assert_eq!(seen, 200);
    client.batch_execute("commit").await.unwrap();
    assert_balances(&env, [(a, 90), (b, 110)], "committed on both shards").await;

    // ROLLBACK undoes every shard, a keyless broadcast UPDATE included.
    client.batch_execute("begin").await.unwrap();
    client
        .execute("update accounts set balance = 0 where user_id = $1", &[&c])
        .await
        .unwrap();
    client
        .batch_execute("update accounts set balance = balance + 1")
        .await
        .unwrap();
    client.batch_execute("rollback").await.unwrap();
    assert_balances(&env, [(c, 100)], "rolled back").await;
    assert_eq!(total_on_shards(&env).await, ACCOUNTS * 100);

    // A keyless UPDATE outside a transaction reports every shard's rows.
    let updated = client
        .execute("update accounts set balance = balance + 0", &[])
        .await
        .unwrap();
    assert_eq!(updated as i64, ACCOUNTS);

    assert_nothing_prepared(&env).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_failing_at_prepare_rolls_every_shard_back() {
    let env = env::start(2, "").await;
    // A deferred unique constraint is checked at PREPARE TRANSACTION.
    for i in 0..2 {
        let codes = "create table codes (user_id bigint, code int, \
                     unique (code) deferrable initially deferred)";
        on_shard(&env, i, codes).await;
    }
    let (a, b) = (env.key_on(0, 1), env.key_on(1, 1));
    let b2 = env.key_on(1, b + 1);
    let client = env.connect().await;
    begin_and_set(&client, &[(a, 0)]).await;
    for k in [b, b2] {
        // The same code twice on s1: deferred, so no error yet.
        client
            .batch_execute(&format!(
                "insert into codes /* shardgate: shard_key={k} */ values ({k}, 7)"
            ))
            .await
            .expect("deferred: no error yet");
    }
    let e = expect_sqlstate(client.batch_execute("commit").await, "23505");
    let message = message(&e);
    assert!(
        message.contains("shard s1"),
        "the error names the shard: {message}"
    );
    assert_balances(&env, [(a, 100)], "s0 rolled back too").await;
    assert_nothing_prepared(&env).await;
    // The client's connection goes on.
    assert_eq!(
        env::value_through(&client, "select count(*) from accounts").await,
        ACCOUNTS
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_mode_rolls_back_writes_on_several_shards() {
    let env = env::start(2, "cross_shard_transactions = \"refuse\"\n").await;
    let (a, b) = (env.key_on(0, 1), env.key_on(1, 1));
    let client = env.connect().await;
    // Reads across shards and a write on one shard are fine.
    client.batch_execute("begin").await.unwrap();
    assert_eq!(
        env::value_through(&client, "select count(*) from accounts").await,
        ACCOUNTS
    );
    set_balance(&client, a, 1).await;
    client.batch_execute("commit").await.unwrap();
    assert_balances(&env, [(a, 1)], "a write on one shard commits").await;
    // Writes on two shards are refused at COMMIT, and nothing is kept.
    assert_commit_refused(
        &env,
        &client,
        &[(a, 2), (b, 2)],
        "0A000",
        &[(a, 1), (b, 100)],
    )
    .await;
    assert_nothing_prepared(&env).await;
    env.stop().await;
}

/// A transaction on several shards that straddles a shard-map change gets 40001 for its next
/// statement (its keys may live elsewhere now); ROLLBACK ends it everywhere and nothing it
/// wrote stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_change_mid_transaction_answers_40001() {
    let meta = tokio::task::spawn_blocking(|| {
        let meta = shardgate_tests::PgCluster::start(shardgate_tests::ClusterOptions::default())
            .expect("start meta");
        meta.psql("postgres", "create database meta")
            .expect("meta db");
        meta
    })
    .await
    .expect("join");
    let store = format!(
        "\n[topology]\nstore = \"postgres://postgres:postgres@127.0.0.1:{}/meta\"\npoll_interval = \"100ms\"\n",
        meta.port()
    );
    let env = env::start(2, &store).await;
    let (a, b) = (env.key_on(0, 1), env.key_on(1, 1));
    let client = env.connect().await;
    begin_and_set(&client, &[(a, 0), (b, 0)]).await;

    // Another proxy's rebalance would publish a new map; the same shards at the next version
    // will do.
    let store = shardgate_topology::Store::open(&env.config, None)
        .await
        .expect("open the store");
    let map = store.shard_map().await.expect("map");
    store
        .publish(map.version, map.shards.clone())
        .await
        .expect("publish");
    let changed = common::wait_for(std::time::Duration::from_secs(10), || async {
        let e = client.batch_execute(&set_balance_sql(a, 1)).await;
        matches!(e, Err(ref e) if sqlstate(e).as_deref() == Some("40001"))
    })
    .await;
    assert!(changed, "no 40001 after the map changed");
    client.batch_execute("rollback").await.unwrap();
    assert_balances(&env, [(a, 100), (b, 100)], "rolled back").await;
    assert_nothing_prepared(&env).await;
    env.stop().await;
    tokio::task::spawn_blocking(move || drop(meta)).await.ok();
}

/// Two shards with `max_prepared_transactions = 0`, holding an empty `accounts`, and a proxy
/// in its default (`two_phase`) mode in front of them.
async fn start_without_prepared_transactions() -> ShardedEnv {
    let shards = futures_util::future::join_all((0..2).map(|_| {
        tokio::task::spawn_blocking(|| {
            let c = shardgate_tests::PgCluster::start(
                shardgate_tests::ClusterOptions::default()
                    .user(common::USER, common::PASSWORD, shardgate_tests::Auth::Scram)
                    .conf("max_prepared_transactions = 0"),
            )
            .expect("start PostgreSQL");
            c.create_database(common::DB, common::USER)
                .expect("create database");
            c.psql_as(
                common::USER,
                common::PASSWORD,
                common::DB,
                "create table accounts (user_id bigint primary key, balance bigint not null)",
            )
            .expect("schema");
            c
        })
    }))
    .await
    .into_iter()
    .map(|r| r.expect("join"))
    .collect::<Vec<_>>();
    let config = common::sharded_config(&shards, &["accounts"], "");
    ShardedEnv::with_proxy(shards, config).await
}

/// `best_effort` commits shard by shard (no PREPARE); and with `two_phase`, shards that have
/// prepared transactions disabled get a multi-shard write rolled back with a hint, never
/// committed halfway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_effort_commits_and_disabled_prepared_transactions_refuse() {
    let env = env::start(2, "cross_shard_transactions = \"best_effort\"\n").await;
    let (a, b) = (env.key_on(0, 1), env.key_on(1, 1));
    let client = env.connect().await;
    begin_and_set(&client, &[(a, 3), (b, 4)]).await;
    client.batch_execute("commit").await.unwrap();
    assert_balances(&env, [(a, 3), (b, 4)], "best_effort committed both").await;
    assert_nothing_prepared(&env).await;
    env.stop().await;

    let env = start_without_prepared_transactions().await;
    let (a, b) = (env.key_on(0, 1), env.key_on(1, 1));
    let client = env.connect().await;
    for k in [a, b] {
        client
            .batch_execute(&format!(
                "insert into accounts (user_id, balance) values ({k}, 1)"
            ))
            .await
            .unwrap();
    }
    let e =
        assert_commit_refused(&env, &client, &[(a, 9), (b, 9)], "0A000", &[(a, 1), (b, 1)]).await;
    let hint = e
        .as_db_error()
        .and_then(|d| d.hint().map(str::to_owned))
        .unwrap_or_default();
    assert!(hint.contains("max_prepared_transactions"), "{hint}");
    env.stop().await;
}
