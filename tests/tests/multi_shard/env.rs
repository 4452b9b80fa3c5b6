#![allow(dead_code)] // each test file uses part of it
//! The bank the multi-shard transaction tests run on: `common::ShardedEnv` with table
//! `accounts` (accounts 1..=ACCOUNTS, balance 100 each, each on its key's shard) and the
//! `transfers` log (by the paying account),
//! `keyless_writes = "broadcast"`, and checks read straight from the shards.

use crate::common::ShardedEnv;

pub const ACCOUNTS: i64 = 60;

const SCHEMA: &str = "
create table accounts (user_id bigint primary key, balance bigint not null);
create table transfers (user_id bigint not null, transfer_id bigint primary key,
                        to_user bigint not null, amount bigint not null);";

pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_owned())
}

/// The one value of a simple-protocol query, as an integer.
pub async fn value_through(client: &tokio_postgres::Client, sql: &str) -> i64 {
    let rows = client.simple_query(sql).await.expect("query");
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row")
        .parse()
        .expect("an integer")
}

/// `n` shards holding the accounts; `extra` goes into the proxy's config after `[sharding]`.
pub async fn start(n: usize, extra: &str) -> ShardedEnv {
    let config = format!("[sharding]\nkeyless_writes = \"broadcast\"\n{extra}");
    let env = ShardedEnv::start(n, SCHEMA, &["accounts", "audit", "transfers"], &config).await;
    for shard in 0..n {
        let rows: Vec<String> = (1..=ACCOUNTS)
            .filter(|k| env.shard_of(*k) == shard)
            .map(|k| format!("({k}, 100)"))
            .collect();
        if !rows.is_empty() {
            env.connect_shard(shard)
                .await
                .batch_execute(&format!("insert into accounts values {}", rows.join(", ")))
                .await
                .expect("accounts");
        }
    }
    env
}

/// The balance as the key's own shard holds it.
pub async fn balance_on_shard(env: &ShardedEnv, key: i64) -> i64 {
    let shard = env.connect_shard(env.shard_of(key)).await;
    shard
        .query_one("select balance from accounts where user_id = $1", &[&key])
        .await
        .expect("balance")
        .get(0)
}

/// The sum of every shard's balances.
pub async fn total_on_shards(env: &ShardedEnv) -> i64 {
    let mut total = 0;
    for i in 0..env.shards.len() {
        let shard = env.connect_shard(i).await;
        total += value_through(&shard, "select coalesce(sum(balance), 0) from accounts").await;
    }
    total
}

pub async fn assert_nothing_prepared(env: &ShardedEnv) {
    for i in 0..env.shards.len() {
        let shard = env.connect_shard(i).await;
        let n = value_through(&shard, "select count(*) from pg_prepared_xacts").await;
        assert_eq!(n, 0, "shard {i} holds prepared transactions");
    }
}
