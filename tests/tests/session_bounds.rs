//! A session never outlives what it serves: a client that leaves is noticed even while the
//! session holds its next batch back and waits on a server, and shutdown ends every session at
//! `listen.shutdown_timeout` whatever it is doing.

mod common;

use std::time::Duration;

use common::{raw, wait_for, Env, RawClient, Setup, ShardedEnv};

const SCHEMA: &str = "create table users (user_id bigint primary key, name text);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_its_next_batch_is_held_back_is_noticed() {
    let env = ShardedEnv::start(2, SCHEMA, &["users"], "").await;
    let other_shard_key = env.key_on(1, 1);
    let mut c = RawClient::connect(env.proxy.addr().port()).await;
    // A long statement on the default shard, then (pipelined) one for the other shard: that
    // one is held back until the first finishes, so the session is not reading the client.
    let mut both = raw::query("select pg_sleep(60)");
    both.extend_from_slice(&raw::query(&format!(
        "select * from users where user_id = {other_shard_key}"
    )));
    c.send(&both).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(c);
    let shared = env.proxy.shared().clone();
    let gone = wait_for(Duration::from_secs(10), || {
        let n = shared.client_count();
        async move { n == 0 }
    })
    .await;
    assert!(
        gone,
        "the session of a client that left is still running ({} clients)",
        shared.client_count()
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_sessions_at_its_timeout() {
    // shutdown_timeout is 2s in the test config.
    let env = Env::start(Setup::default()).await;
    let client = env.connect().await;
    let running = tokio::spawn(async move { client.simple_query("select pg_sleep(60)").await });
    let shared = env.proxy.shared().clone();
    let started = wait_for(Duration::from_secs(10), || {
        let n = shared.client_count();
        async move { n == 1 }
    })
    .await;
    assert!(started);
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.proxy.shutdown().await;
    // The session is ended (its sockets closed) once the timeout has passed: the client gets
    // an error, not an answer 60 s later.
    let outcome = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the client's statement ended with the shutdown")
        .expect("join");
    assert!(outcome.is_err(), "the sleeping statement was not cut off");
    let gone = wait_for(Duration::from_secs(5), || {
        let n = shared.client_count();
        async move { n == 0 }
    })
    .await;
    assert!(
        gone,
        "{} sessions left after shutdown",
        shared.client_count()
    );
    tokio::task::spawn_blocking(move || drop(env.cluster))
        .await
        .ok();
}
