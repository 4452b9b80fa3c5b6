//! Transactions across shards (issue 16): reads and writes of several shards in one
//! transaction, savepoints on every shard, errors that abort the transaction everywhere,
//! two-phase commit of multi-shard writes, atomic broadcasts, and a concurrent bank-transfer
//! workload whose total must be conserved. Three real PostgreSQL shards; nothing stays
//! prepared.

mod common;
#[path = "multi_shard/env.rs"]
mod env;

use env::{assert_nothing_prepared, balance_on_shard, sqlstate, total_on_shards, ACCOUNTS};

/// One account key on each of the first `n` shards.
fn keys(env: &common::ShardedEnv, n: usize) -> Vec<i64> {
    (0..n).map(|s| env.key_on(s, 1)).collect()
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
    assert_eq!(balance_on_shard(&env, a).await, 90);
    assert_eq!(balance_on_shard(&env, b).await, 110);

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
    assert_eq!(balance_on_shard(&env, c).await, 100);
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
async fn savepoints_and_errors_span_every_shard() {
    let env = env::start(3, "").await;
    let keys = keys(&env, 3);
    let (a, b, c) = (keys[0], keys[1], keys[2]);
    let client = env.connect().await;
    let set = |k: i64, v: i64| format!("update accounts set balance = {v} where user_id = {k}");

    // A shard that joins after a savepoint is rolled back to it too.
    client.batch_execute("begin").await.unwrap();
    client.batch_execute(&set(a, 1)).await.unwrap();
    client.batch_execute("savepoint s1").await.unwrap();
    client.batch_execute(&set(b, 2)).await.unwrap();
    client
        .batch_execute("rollback to savepoint s1")
        .await
        .unwrap();
    client.batch_execute(&set(c, 3)).await.unwrap();
    client.batch_execute("release savepoint s1").await.unwrap();
    client.batch_execute("commit").await.unwrap();
    assert_eq!(balance_on_shard(&env, a).await, 1);
    assert_eq!(balance_on_shard(&env, b).await, 100);
    assert_eq!(balance_on_shard(&env, c).await, 3);

    // An error on one shard aborts the transaction everywhere: 25P02 until ROLLBACK.
    client.batch_execute("begin").await.unwrap();
    client.batch_execute(&set(a, 10)).await.unwrap();
    let e = client
        .batch_execute(&format!(
            "update accounts set balance = 1/0 where user_id = {b}"
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("22012"));
    let e = client.batch_execute(&set(c, 30)).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("25P02"));
    let e = client.batch_execute(&set(a, 30)).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("25P02"));
    // COMMIT of a failed transaction rolls back, as in PostgreSQL.
    client.batch_execute("commit").await.unwrap();
    assert_eq!(balance_on_shard(&env, a).await, 1);
    assert_eq!(balance_on_shard(&env, c).await, 3);

    // ROLLBACK TO a savepoint recovers from an error on another shard.
    client.batch_execute("begin").await.unwrap();
    client.batch_execute(&set(a, 5)).await.unwrap();
    client.batch_execute("savepoint s2").await.unwrap();
    let e = client
        .batch_execute(&format!(
            "update accounts set balance = 1/0 where user_id = {c}"
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("22012"));
    client.batch_execute("rollback to s2").await.unwrap();
    client.batch_execute(&set(b, 6)).await.unwrap();
    client.batch_execute("commit").await.unwrap();
    assert_eq!(balance_on_shard(&env, a).await, 5);
    assert_eq!(balance_on_shard(&env, b).await, 6);

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
    assert_eq!(balance_on_shard(&env, a).await, 7);
    assert_eq!(balance_on_shard(&env, b).await, 8);
    assert_eq!(balance_on_shard(&env, c).await, 10);

    // A session SET inside a transaction on several shards that rolls back does not stay.
    client.batch_execute("begin").await.unwrap();
    client.batch_execute(&set(a, 11)).await.unwrap();
    client.batch_execute(&set(b, 12)).await.unwrap();
    client
        .batch_execute("set application_name = 'rolled-back'")
        .await
        .unwrap();
    client.batch_execute("rollback").await.unwrap();
    let name = client
        .simple_query("show application_name")
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default();
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
    env.connect_shard(1)
        .await
        .batch_execute("create table audit (user_id bigint, note text)")
        .await
        .expect("pre-create on one shard");
    let client = env.connect().await;
    let e = client
        .batch_execute("create table audit (user_id bigint, note text)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42P07"), "{e:?}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_failing_at_prepare_rolls_every_shard_back() {
    let env = env::start(2, "").await;
    // A deferred unique constraint is checked at PREPARE TRANSACTION.
    for i in 0..2 {
        env.connect_shard(i)
            .await
            .batch_execute(
                "create table codes (user_id bigint, code int, \
                 unique (code) deferrable initially deferred)",
            )
            .await
            .expect("codes");
    }
    let (a, b) = (env.key_on(0, 1), env.key_on(1, 1));
    let b2 = env.key_on(1, b + 1);
    let client = env.connect().await;
    client.batch_execute("begin").await.unwrap();
    client
        .batch_execute(&format!(
            "update accounts set balance = 0 where user_id = {a}"
        ))
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "insert into codes /* shardgate: shard_key={b} */ values ({b}, 7)"
        ))
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "insert into codes /* shardgate: shard_key={b2} */ values ({b2}, 7)"
        ))
        .await
        .expect("deferred: no error yet");
    let e = client.batch_execute("commit").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("23505"), "{e:?}");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(
        message.contains("shard s1"),
        "the error names the shard: {message}"
    );
    assert_eq!(balance_on_shard(&env, a).await, 100, "s0 rolled back too");
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
    client
        .batch_execute(&format!(
            "update accounts set balance = 1 where user_id = {a}"
        ))
        .await
        .unwrap();
    client.batch_execute("commit").await.unwrap();
    assert_eq!(balance_on_shard(&env, a).await, 1);
    // Writes on two shards are refused at COMMIT, and nothing is kept.
    client.batch_execute("begin").await.unwrap();
    client
        .batch_execute(&format!(
            "update accounts set balance = 2 where user_id = {a}"
        ))
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "update accounts set balance = 2 where user_id = {b}"
        ))
        .await
        .unwrap();
    let e = client.batch_execute("commit").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{e:?}");
    assert_eq!(balance_on_shard(&env, a).await, 1);
    assert_eq!(balance_on_shard(&env, b).await, 100);
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
    client.batch_execute("begin").await.unwrap();
    client
        .batch_execute(&format!(
            "update accounts set balance = 0 where user_id = {a}"
        ))
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "update accounts set balance = 0 where user_id = {b}"
        ))
        .await
        .unwrap();

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
        let e = client
            .batch_execute(&format!(
                "update accounts set balance = 1 where user_id = {a}"
            ))
            .await;
        matches!(e, Err(ref e) if sqlstate(e).as_deref() == Some("40001"))
    })
    .await;
    assert!(changed, "no 40001 after the map changed");
    client.batch_execute("rollback").await.unwrap();
    assert_eq!(balance_on_shard(&env, a).await, 100);
    assert_eq!(balance_on_shard(&env, b).await, 100);
    assert_nothing_prepared(&env).await;
    env.stop().await;
    tokio::task::spawn_blocking(move || drop(meta)).await.ok();
}

/// A read the proxy gathers into PostgreSQL (here a window function) runs inside a transaction
/// too, and sees the transaction's own writes on every shard; one that also reads unsharded
/// tables after the transaction wrote on the default shard is refused rather than answered
/// without those writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gathered_reads_run_inside_transactions() {
    let env = env::start(2, "").await;
    env.connect_shard(0)
        .await
        .batch_execute("create table plans (plan_id int primary key, name text)")
        .await
        .expect("an unsharded table on the default shard");
    let (a, b) = (env.key_on(0, 1), env.key_on(1, 1));
    let client = env.connect().await;
    let top = "select user_id, rank() over (order by balance desc, user_id) \
               from accounts order by 2 limit 2";
    client.batch_execute("begin").await.unwrap();
    client
        .batch_execute(&format!(
            "update accounts set balance = 1000 where user_id = {b}"
        ))
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "update accounts set balance = 900 where user_id = {a}"
        ))
        .await
        .unwrap();
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
    let e = client
        .query(
            "select p.name, count(*) over () from plans p cross join accounts a",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{e:?}");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(
        message.contains("would not see this transaction's writes"),
        "{message}"
    );
    client.batch_execute("rollback").await.unwrap();
    assert_eq!(balance_on_shard(&env, a).await, 100);
    assert_nothing_prepared(&env).await;
    env.stop().await;
}

/// `best_effort` commits shard by shard (no PREPARE); and with `two_phase`, shards that have
/// prepared transactions disabled get a multi-shard write rolled back with a hint, never
/// committed halfway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_effort_commits_and_disabled_prepared_transactions_refuse() {
    let env = env::start(2, "cross_shard_transactions = \"best_effort\"\n").await;
    let (a, b) = (env.key_on(0, 1), env.key_on(1, 1));
    let client = env.connect().await;
    client.batch_execute("begin").await.unwrap();
    client
        .batch_execute(&format!(
            "update accounts set balance = 3 where user_id = {a}"
        ))
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "update accounts set balance = 4 where user_id = {b}"
        ))
        .await
        .unwrap();
    client.batch_execute("commit").await.unwrap();
    assert_eq!(balance_on_shard(&env, a).await, 3);
    assert_eq!(balance_on_shard(&env, b).await, 4);
    assert_nothing_prepared(&env).await;
    env.stop().await;

    // Two shards with max_prepared_transactions = 0.
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
    let env = common::ShardedEnv::with_proxy(shards, config).await;
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
    client.batch_execute("begin").await.unwrap();
    client
        .batch_execute(&format!(
            "update accounts set balance = 9 where user_id = {a}"
        ))
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "update accounts set balance = 9 where user_id = {b}"
        ))
        .await
        .unwrap();
    let e = client.batch_execute("commit").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{e:?}");
    let hint = e
        .as_db_error()
        .and_then(|d| d.hint().map(str::to_owned))
        .unwrap_or_default();
    assert!(hint.contains("max_prepared_transactions"), "{hint}");
    assert_eq!(balance_on_shard(&env, a).await, 1);
    assert_eq!(balance_on_shard(&env, b).await, 1);
    env.stop().await;
}

/// Issue 17's bulk INSERT: a multi-row INSERT whose rows belong to several shards is split, one
/// INSERT per shard, committed together (outside a transaction) or as part of the client's
/// transaction; RETURNING rows come back in the client's row order and the tag counts every
/// row; a duplicate key on one shard leaves no row on any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_row_inserts_are_split_by_shard() {
    let env = env::start(3, "").await;
    let client = env.connect().await;
    let keys: Vec<i64> = (1001..1031).collect();
    assert!(
        keys.iter()
            .map(|k| env.shard_of(*k))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 3
    );
    let values = |keys: &[i64]| {
        keys.iter()
            .map(|k| format!("({k}, {})", k * 10))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rows = client
        .simple_query(&format!(
            "insert into accounts (user_id, balance) values {} returning user_id",
            values(&keys)
        ))
        .await
        .expect("split insert");
    let returned: Vec<i64> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(returned, keys, "RETURNING rows in the client's order");
    let tag = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
        _ => None,
    });
    assert_eq!(tag, Some(30));
    for k in &keys {
        assert_eq!(
            balance_on_shard(&env, *k).await,
            k * 10,
            "row {k} on its shard"
        );
    }
    assert_nothing_prepared(&env).await;

    // A duplicate on one shard: no shard keeps any row of the statement.
    let more: Vec<i64> = (2001..2010).chain([1001]).collect();
    let e = client
        .batch_execute(&format!(
            "insert into accounts (user_id, balance) values {}",
            values(&more)
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("23505"), "{e:?}");
    let n = env::value_through(
        &client,
        "select count(*) from accounts where user_id between 2001 and 2009",
    )
    .await;
    assert_eq!(n, 0, "the other shards rolled back");

    // Inside a transaction: part of it, rolled back with it.
    client.batch_execute("begin").await.unwrap();
    client
        .batch_execute(&format!(
            "insert into accounts (user_id, balance) values {}",
            values(&(3001..3010).collect::<Vec<_>>())
        ))
        .await
        .expect("split insert in a transaction");
    assert_eq!(
        env::value_through(
            &client,
            "select count(*) from accounts where user_id > 3000"
        )
        .await,
        9
    );
    client.batch_execute("rollback").await.unwrap();
    assert_eq!(
        env::value_through(
            &client,
            "select count(*) from accounts where user_id > 3000"
        )
        .await,
        0
    );

    // The extended protocol: Bind parameters (a prepared statement, as tokio-postgres sends
    // it), RETURNING in the client's order.
    let ext: Vec<i64> = (5001..5013).collect();
    let placeholders: Vec<String> = (0..ext.len())
        .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
        .collect();
    let balances: Vec<i64> = ext.iter().map(|k| k + 7).collect();
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
    for (k, b) in ext.iter().zip(&balances) {
        params.push(k);
        params.push(b);
    }
    let sql = format!(
        "insert into accounts (user_id, balance) values {} returning user_id, balance",
        placeholders.join(", ")
    );
    let rows = client
        .query(sql.as_str(), &params)
        .await
        .expect("extended split insert");
    let got: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let want: Vec<(i64, i64)> = ext.iter().map(|k| (*k, k + 7)).collect();
    assert_eq!(
        got, want,
        "RETURNING in the client's order, extended protocol"
    );
    for k in &ext {
        assert_eq!(balance_on_shard(&env, *k).await, k + 7);
    }
    // A write by a parameter that spans shards runs on them all, with the client's values,
    // committed together (and inside a transaction, as part of it).
    let n = client
        .execute(
            "update accounts set balance = 0 where user_id = any($1)",
            &[&ext],
        )
        .await
        .expect("keyed update over several shards with a parameter");
    assert_eq!(n, ext.len() as u64);
    client.batch_execute("begin").await.unwrap();
    let n = client
        .execute("delete from accounts where user_id = any($1)", &[&ext])
        .await
        .expect("keyed delete over several shards in a transaction");
    assert_eq!(n, ext.len() as u64);
    client.batch_execute("rollback").await.unwrap();
    for k in &ext {
        assert_eq!(balance_on_shard(&env, *k).await, 0);
    }

    // ON CONFLICT … RETURNING over several shards is refused before anything runs.
    let e = client
        .batch_execute(&format!(
            "insert into accounts (user_id, balance) values {} on conflict do nothing returning user_id",
            values(&(4001..4010).collect::<Vec<_>>())
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{e:?}");
    assert_nothing_prepared(&env).await;
    env.stop().await;
}

/// A pipelined batch (JDBC's executeBatch, one Sync after many Bind/Execute) whose statements
/// belong to several shards runs in one implicit transaction on PostgreSQL: all or nothing.
/// Outside a transaction no statement of it may commit when the client gets an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_batch_over_several_shards_is_all_or_nothing() {
    use common::raw;
    let env = env::start(3, "").await;
    let keys = keys(&env, 2);
    let (a, b) = (keys[0], keys[1]);
    let mut client = common::RawClient::connect(env.proxy.addr().port()).await;
    let (ka, kb) = (a.to_string(), b.to_string());
    let mut batch = raw::parse(
        "inc",
        "update accounts set balance = balance + 1 where user_id = $1",
    );
    batch.extend_from_slice(&raw::bind("", "inc", &[Some(&ka)]));
    batch.extend_from_slice(&raw::execute("", 0));
    batch.extend_from_slice(&raw::bind("", "inc", &[Some(&kb)]));
    batch.extend_from_slice(&raw::execute("", 0));
    batch.extend_from_slice(&raw::sync());
    let replies = client.send_and_read(&batch).await;
    let tags: Vec<char> = replies.iter().map(|m| m.tag as char).collect();
    let failed = replies.iter().any(|m| m.tag == b'E');
    if let Some(e) = replies.iter().find(|m| m.tag == b'E') {
        let message = e.field(b'M').unwrap_or_default();
        assert!(message.contains("implicit transaction"), "{message}");
        assert!(e.field(b'H').unwrap_or_default().contains("BEGIN"), "{e:?}");
    }
    let (after_a, after_b) = (
        balance_on_shard(&env, a).await,
        balance_on_shard(&env, b).await,
    );
    if failed {
        assert_eq!(
            (after_a, after_b),
            (100, 100),
            "the client got an error ({tags:?}), yet a statement of its batch committed"
        );
    } else {
        assert_eq!((after_a, after_b), (101, 101), "{tags:?}");
    }
    // The session goes on: a batch on one shard commits.
    let mut batch = raw::bind("", "inc", &[Some(&ka)]);
    batch.extend_from_slice(&raw::execute("", 0));
    batch.extend_from_slice(&raw::bind("", "inc", &[Some(&ka)]));
    batch.extend_from_slice(&raw::execute("", 0));
    batch.extend_from_slice(&raw::sync());
    let replies = client.send_and_read(&batch).await;
    assert!(replies.iter().all(|m| m.tag != b'E'), "{replies:?}");
    assert_eq!(balance_on_shard(&env, a).await, after_a + 2);
    assert_nothing_prepared(&env).await;
    env.stop().await;
}

/// JDBC's executeBatch inside a transaction (Spring/Hibernate batch inserts): one pipelined
/// batch whose statements belong to several shards runs statement by statement on each
/// statement's shard, and commits with the transaction — named statements and a fresh unnamed
/// Parse per statement alike; an error in it fails the transaction as on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_batch_in_a_transaction_runs_on_each_statements_shard() {
    use common::raw;
    let env = env::start(3, "").await;
    let keys = keys(&env, 3);
    let (a, b, c) = (keys[0], keys[1], keys[2]);
    let mut client = common::RawClient::connect(env.proxy.addr().port()).await;
    let inc = "update accounts set balance = balance + 1 where user_id = $1";
    let errors = |replies: &[common::RawMsg]| -> Vec<String> {
        replies
            .iter()
            .filter(|m| m.tag == b'E')
            .map(|m| format!("{:?} {:?}", m.sqlstate(), m.field(b'M')))
            .collect()
    };
    let status = |replies: &[common::RawMsg]| replies.last().map(|m| m.body[0] as char);

    // A named statement, bound for three shards in one batch.
    let replies = client.send_and_read(&raw::query("begin")).await;
    assert!(errors(&replies).is_empty());
    let mut batch = raw::parse("inc", inc);
    for k in [a, b, c, a] {
        batch.extend_from_slice(&raw::bind("", "inc", &[Some(&k.to_string())]));
        batch.extend_from_slice(&raw::execute("", 0));
    }
    batch.extend_from_slice(&raw::sync());
    let replies = client.send_and_read(&batch).await;
    assert_eq!(errors(&replies), Vec::<String>::new());
    let completes = replies.iter().filter(|m| m.tag == b'C').count();
    assert_eq!(completes, 4, "one CommandComplete per statement");
    assert_eq!(status(&replies), Some('T'));
    // pgjdbc before its prepare threshold: a fresh unnamed Parse per statement.
    let mut batch = bytes::BytesMut::new();
    for k in [c, b] {
        batch.extend_from_slice(&raw::parse("", inc));
        batch.extend_from_slice(&raw::bind("", "", &[Some(&k.to_string())]));
        batch.extend_from_slice(&raw::describe(b'P', ""));
        batch.extend_from_slice(&raw::execute("", 0));
    }
    batch.extend_from_slice(&raw::sync());
    let replies = client.send_and_read(&batch).await;
    assert_eq!(errors(&replies), Vec::<String>::new());
    let replies = client.send_and_read(&raw::query("commit")).await;
    assert!(errors(&replies).is_empty(), "{replies:?}");
    assert_eq!(balance_on_shard(&env, a).await, 102);
    assert_eq!(balance_on_shard(&env, b).await, 102);
    assert_eq!(balance_on_shard(&env, c).await, 102);

    // An error in the batch's second statement: the rest is skipped, the transaction failed.
    client.send_and_read(&raw::query("begin")).await;
    let mut batch = raw::bind("", "inc", &[Some(&a.to_string())]);
    batch.extend_from_slice(&raw::execute("", 0));
    batch.extend_from_slice(&raw::parse(
        "",
        "update accounts set balance = 1 / 0 where user_id = $1",
    ));
    batch.extend_from_slice(&raw::bind("", "", &[Some(&b.to_string())]));
    batch.extend_from_slice(&raw::execute("", 0));
    batch.extend_from_slice(&raw::bind("", "inc", &[Some(&c.to_string())]));
    batch.extend_from_slice(&raw::execute("", 0));
    batch.extend_from_slice(&raw::sync());
    let replies = client.send_and_read(&batch).await;
    assert_eq!(errors(&replies).len(), 1, "{replies:?}");
    assert_eq!(status(&replies), Some('E'));
    let replies = client.send_and_read(&raw::query("commit")).await;
    assert!(replies.iter().any(|m| m.tag == b'C'), "{replies:?}");
    assert_eq!(balance_on_shard(&env, a).await, 102, "rolled back");
    assert_eq!(balance_on_shard(&env, c).await, 102, "never ran");
    assert_nothing_prepared(&env).await;
    env.stop().await;
}
