//! Transactions across shards (issue 16): reads and writes of several shards in one
//! transaction, savepoints on every shard, errors that abort the transaction everywhere,
//! two-phase commit of multi-shard writes, atomic broadcasts, and a concurrent bank-transfer
//! workload whose total must be conserved. Three real PostgreSQL shards; nothing stays
//! prepared.
//!
//! One test binary; the tests are grouped by topic in `multi_shard/txn_*.rs`, and the helpers
//! they share are here. The bank they run on is `multi_shard/env.rs` (shared with other
//! binaries).

mod common;
#[path = "multi_shard/env.rs"]
mod env;

#[path = "multi_shard/txn_batches.rs"]
mod batches;
#[path = "multi_shard/txn_commit.rs"]
mod commit;
#[path = "multi_shard/txn_statements.rs"]
mod statements;

use std::fmt::Display;

use common::{expect_sqlstate, ShardedEnv};
use env::balance_on_shard;
use tokio_postgres::{Client, SimpleQueryMessage};

/// One account key on each of the first `n` shards.
fn keys(env: &ShardedEnv, n: usize) -> Vec<i64> {
    (0..n).map(|s| env.key_on(s, 1)).collect()
}

/// The UPDATE that sets account `key`'s balance to `balance` (a number, or an expression such
/// as `1/0` to make the statement fail on that key's shard).
fn set_balance_sql(key: i64, balance: impl Display) -> String {
    format!("update accounts set balance = {balance} where user_id = {key}")
}

/// Sets account `key`'s balance through the simple protocol; it must succeed.
async fn set_balance(client: &Client, key: i64, balance: i64) {
    client
        .batch_execute(&set_balance_sql(key, balance))
        .await
        .unwrap_or_else(|e| panic!("set the balance of {key} to {balance}: {e:?}"));
}

/// Runs `sql` straight on shard `i`, not through the proxy (a state only that shard has).
async fn on_shard(env: &ShardedEnv, i: usize, sql: &str) {
    env.connect_shard(i)
        .await
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("on shard {i}: {sql}: {e:?}"));
}

/// BEGIN, then each `(key, balance)` set in turn: a transaction that has written on every
/// key's shard.
async fn begin_and_set(client: &Client, writes: &[(i64, i64)]) {
    client.batch_execute("begin").await.unwrap();
    for &(key, balance) in writes {
        set_balance(client, key, balance).await;
    }
}

/// Each account's balance, read straight from its own shard, is the expected one.
async fn assert_balances(
    env: &ShardedEnv,
    expected: impl IntoIterator<Item = (i64, i64)>,
    what: &str,
) {
    for (key, balance) in expected {
        assert_eq!(
            balance_on_shard(env, key).await,
            balance,
            "account {key} on shard {}: {what}",
            env.shard_of(key)
        );
    }
}

/// The message of the server's (or proxy's) ErrorResponse, empty if there was none.
fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default()
}

/// The first column of each row of a simple-protocol result, as text (NULLs left out).
fn first_column(msgs: &[SimpleQueryMessage]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}
