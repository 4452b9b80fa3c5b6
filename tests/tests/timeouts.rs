//! `[timeouts]` against a real PostgreSQL: a request past `query_timeout` is canceled on the
//! server (57014) and the connection goes on; a client idle in a transaction past
//! `idle_in_transaction_timeout` (25P03) or in a transaction past `transaction_timeout`
//! (25P04) is disconnected and its transaction rolled back; a client that stops reading loses
//! its connection after `client_write_timeout`, and the server connection it held is freed.

mod common;

use std::time::Duration;

use common::{first_error, raw, wait_for, Env, RawClient, Setup};

async fn env_with(timeouts: &str) -> Env {
    let env = Env::start(Setup {
        extra: format!("[timeouts]\n{timeouts}\n"),
        ..Setup::default()
    })
    .await;
    let su = env.connect_superuser().await;
    su.batch_execute("create table if not exists t (id int primary key); grant all on t to app")
        .await
        .unwrap();
    env
}

/// Server backends of database `app` (other than `su`'s) running a statement like `pattern`.
async fn running(su: &tokio_postgres::Client, pattern: &str) -> i64 {
    su.query_one(
        "select count(*) from pg_stat_activity where datname = 'app' \
         and pid <> pg_backend_pid() and state = 'active' and query like $1",
        &[&pattern],
    )
    .await
    .unwrap()
    .get(0)
}

/// Server backends of database `app` inside a transaction.
async fn in_transaction(su: &tokio_postgres::Client) -> i64 {
    su.query_one(
        "select count(*) from pg_stat_activity where datname = 'app' \
         and pid <> pg_backend_pid() and state like 'idle in transaction%'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_the_statement_on_the_server() {
    let env = env_with("query_timeout = \"500ms\"").await;
    let su = env.connect_superuser().await;
    let client = env.connect().await;
    let err = client
        .simple_query("select pg_sleep(60)")
        .await
        .expect_err("canceled by query_timeout");
    assert_eq!(common::sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    // The client may read the server's 57014 before the backend reports itself idle (its
    // ErrorResponse can be flushed ahead of its ReadyForQuery).
    assert!(
        wait_for(Duration::from_secs(10), || async {
            running(&su, "select pg_sleep(60)%").await == 0
        })
        .await,
        "the server still runs the canceled statement"
    );
    // The connection goes on, inside a transaction too (which the error aborts, as on
    // PostgreSQL).
    client.simple_query("select 1").await.unwrap();
    client.batch_execute("begin").await.unwrap();
    let err = client
        .simple_query("select pg_sleep(60)")
        .await
        .expect_err("canceled");
    assert_eq!(common::sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    client.batch_execute("rollback").await.unwrap();
    client.simple_query("select 2").await.unwrap();
    // The client is told why: a notice naming the setting, then the server's 57014.
    let mut c = RawClient::connect(env.port()).await;
    let msgs = c.simple("select pg_sleep(60)").await;
    let notice = msgs
        .iter()
        .find(|m| m.tag == b'N')
        .and_then(|m| m.field(b'M'));
    assert!(
        notice
            .as_deref()
            .is_some_and(|m| m.contains("query_timeout")),
        "{msgs:?}"
    );
    assert_eq!(first_error(&msgs).as_deref(), Some("57014"), "{msgs:?}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_in_transaction_timeout_disconnects_and_rolls_back() {
    let env = env_with("idle_in_transaction_timeout = \"500ms\"").await;
    let su = env.connect_superuser().await;
    let mut c = RawClient::connect(env.port()).await;
    c.simple("begin").await;
    c.simple("insert into t values (1)").await;
    // Then nothing: the proxy ends the session.
    let msgs = c.read_until_closed().await;
    assert_eq!(first_error(&msgs).as_deref(), Some("25P03"), "{msgs:?}");
    assert!(
        wait_for(Duration::from_secs(10), || async {
            in_transaction(&su).await == 0
        })
        .await,
        "a server connection was left inside the transaction"
    );
    let rows: i64 = su
        .query_one("select count(*) from t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "the transaction was rolled back");
    // Busy transactions are not idle: a long statement inside one is not cut.
    let client = env.connect().await;
    client
        .batch_execute("begin; select pg_sleep(1); insert into t values (2); commit")
        .await
        .unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_timeout_ends_long_transactions() {
    let env = env_with("transaction_timeout = \"1s\"").await;
    let su = env.connect_superuser().await;
    let mut c = RawClient::connect(env.port()).await;
    c.simple("begin").await;
    c.simple("insert into t values (3)").await;
    c.send(&raw::query("select pg_sleep(60)")).await;
    let msgs = c.read_until_closed().await;
    assert_eq!(first_error(&msgs).as_deref(), Some("25P04"), "{msgs:?}");
    assert!(
        wait_for(Duration::from_secs(10), || async {
            running(&su, "select pg_sleep(60)%").await == 0 && in_transaction(&su).await == 0
        })
        .await,
        "the server still runs the transaction's statement"
    );
    let rows: i64 = su
        .query_one("select count(*) from t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "the transaction was rolled back");
    // Short transactions pass.
    let client = env.connect().await;
    client
        .batch_execute("begin; insert into t values (4); commit")
        .await
        .unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_connection() {
    let env = Env::start(Setup {
        extra: "[timeouts]\nclient_write_timeout = \"1s\"\n".into(),
        ..Setup::default().pool_size(1)
    })
    .await;
    let su = env.connect_superuser().await;
    let mut greedy = RawClient::connect(env.port()).await;
    // About 1 GB of rows, never read.
    greedy
        .send(&raw::query(
            "SELECT repeat('x', 1000) FROM generate_series(1, 1000000)",
        ))
        .await;
    // The proxy drops it and closes the server connection it held, so the pool's only
    // connection serves others again.
    assert!(
        wait_for(Duration::from_secs(20), || async {
            env.proxy.shared().client_count() == 0
        })
        .await,
        "the client that stopped reading is still connected"
    );
    assert!(
        wait_for(Duration::from_secs(10), || async {
            running(&su, "SELECT repeat%").await == 0
        })
        .await,
        "its server statement still runs"
    );
    let other = env.connect().await;
    other.simple_query("SELECT 1").await.unwrap();
    drop(greedy);
    env.stop().await;
}
