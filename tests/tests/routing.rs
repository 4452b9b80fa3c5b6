//! Shard routing end to end: 3 real PostgreSQL shards behind one shardgate. Rows written
//! through the proxy (simple, extended and prepared protocols) land on exactly the shard the
//! ring names; transactions stay on the shard of their first routed statement; every refusal
//! has its SQLSTATE and leaves the connection usable; routing hints, `SHARDGATE ROUTE`, DDL
//! broadcast, unsharded tables on the default shard, and basic cross-shard reads.
//!
//! This file holds the environment and the helpers the tests share; the tests are in
//! `routing/`, one module per topic.

mod common;

#[path = "routing/hints.rs"]
mod hints;
#[path = "routing/placement.rs"]
mod placement;
#[path = "routing/refusals.rs"]
mod refusals;
#[path = "routing/transactions.rs"]
mod transactions;

use std::collections::BTreeSet;

use bytes::BytesMut;
use common::{RawMsg, ShardedEnv};
use tokio_postgres::{Client, SimpleQueryMessage};

const SCHEMA: &str = "
create table users (user_id bigint primary key, name text);
create table orders (order_id bigint, user_id bigint, amount numeric(12,2),
                     primary key (user_id, order_id));
create table settings (k text primary key, v text);
";

/// Sharded tables of every environment (`t`, `t2` are created by the DDL test).
const SHARDED: &[&str] = &["users", "orders", "t", "t2"];

/// The cross-shard count of `users`, which several tests read in both protocols.
const COUNT_USERS: &str = "select count(*) from users";

async fn start() -> ShardedEnv {
    start_with("").await
}

/// Like [`start`], with `extra` appended to the proxy's config.
async fn start_with(extra: &str) -> ShardedEnv {
    ShardedEnv::start(3, SCHEMA, SHARDED, extra).await
}

/// Closes the proxy connection, then stops the proxy and the shards.
async fn stop(env: ShardedEnv, client: Client) {
    drop(client);
    env.stop().await;
}

/// Runs `sql` (one or more statements, simple protocol); a failure names the statement.
async fn exec(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

/// Inserts user `user_id` named `name` with a literal key (simple protocol).
async fn insert_user(client: &Client, user_id: i64, name: &str) {
    exec(
        client,
        &format!("insert into users (user_id, name) values ({user_id}, '{name}')"),
    )
    .await;
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

/// The one count `sql` returns through the extended protocol (the unnamed statement).
async fn count_extended(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("extended {sql}: {e:?}"))
        .get(0)
}

/// The name of user `user_id`, read through `client` (simple protocol).
async fn name_via(client: &Client, user_id: i64) -> String {
    simple_value(
        client,
        &format!("select name from users where user_id = {user_id}"),
    )
    .await
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
fn ready_status(replies: &[RawMsg]) -> u8 {
    let last = replies.last().expect("replies");
    assert_eq!(last.tag, b'Z');
    last.body[0]
}

/// `replies` hold no error and end in transaction status `status` (`I`, `T` or `E`).
fn assert_ready(replies: &[RawMsg], status: u8, what: &str) {
    assert_eq!(common::first_error(replies), None, "{what}: {replies:?}");
    assert_eq!(
        ready_status(replies),
        status,
        "{what}: transaction status {:?}: {replies:?}",
        status as char
    );
}

/// One write of extended-protocol messages: Parse/Bind/Execute of each (unnamed statement,
/// text-format parameters) for every `(sql, params)` in `steps`, then one Sync.
fn extended(steps: &[(&str, &[Option<&str>])]) -> BytesMut {
    let mut msg = BytesMut::new();
    for (sql, params) in steps {
        msg.extend_from_slice(&common::raw::parse("", sql));
        msg.extend_from_slice(&common::raw::bind("", "", params));
        msg.extend_from_slice(&common::raw::execute("", 0));
    }
    msg.extend_from_slice(&common::raw::sync());
    msg
}

/// One write of simple-protocol queries, to be answered in order (pipelined).
fn queries<S: AsRef<str>>(sqls: &[S]) -> BytesMut {
    let mut msg = BytesMut::new();
    for sql in sqls {
        msg.extend_from_slice(&common::raw::query(sql.as_ref()));
    }
    msg
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

/// Each `(shard, user_id)`: the user is stored on that shard, read there directly.
async fn assert_stored(env: &ShardedEnv, placed: &[(usize, i64)]) {
    for &(shard, user_id) in placed {
        assert_eq!(
            users_on(env, shard, user_id).await,
            1,
            "user {user_id} on shard {}",
            env.shard_name(shard)
        );
    }
}

/// None of `user_ids` is stored on any shard (what was rolled back left nothing behind).
async fn assert_nowhere(env: &ShardedEnv, user_ids: &[i64]) {
    for shard in 0..env.shards.len() {
        for &user_id in user_ids {
            assert_eq!(
                users_on(env, shard, user_id).await,
                0,
                "user {user_id} must not be on shard {}",
                env.shard_name(shard)
            );
        }
    }
}
