//! Pools sizing themselves: a burst of clients grows a pool from `min_size` within the
//! host's connection budget, and it shrinks back once quiet.

use std::time::{Duration, Instant};

use super::{connect, postgres, wait, Server, PASSWORD, USER};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_grows_the_pool_within_the_host_budget_and_it_shrinks_back() {
    let pg = postgres().await;
    // The harness's servers allow 200 connections: (200 - 5) × 0.031 = 6 for this proxy.
    let server = Server::start(
        &pg,
        "size = 10\nmin_size = 2\nidle_timeout = \"500ms\"\nhost_reserve = 5\nhost_share = 0.031\ncheckout_timeout = \"30s\"",
    );
    let pool = || server.pool();
    let warm = connect(&server.url()).await;
    warm.simple_query("SELECT 1").await.unwrap();
    assert_eq!(pool()["size"], 2, "starts at min_size: {}", pool());

    let direct = connect(&pg.url(USER, PASSWORD, USER)).await;
    let mut clients = Vec::new();
    for _ in 0..64 {
        clients.push(connect(&server.url()).await);
    }
    let stop_at = Instant::now() + Duration::from_secs(4);
    let mut burst = Vec::new();
    for c in clients {
        burst.push(tokio::spawn(async move {
            while Instant::now() < stop_at {
                c.simple_query("SELECT pg_sleep(0.05)").await.unwrap();
            }
        }));
    }
    let (mut largest, mut most_backends) = (0u64, 0i64);
    while Instant::now() < stop_at {
        let p = pool();
        largest = largest.max(p["size"].as_u64().unwrap_or(0));
        let backends: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'shardgate'",
                &[&USER],
            )
            .await
            .unwrap()
            .get(0);
        most_backends = most_backends.max(backends);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for b in burst {
        b.await.unwrap();
    }
    assert!(largest > 2, "the pool grew under load: {}", pool());
    assert!(largest <= 6, "never past the host budget of 6: {largest}");
    assert!(
        most_backends <= 6,
        "server connections within budget: {most_backends}"
    );
    let grown = pool()["grown"].as_u64().unwrap_or(0);
    assert!(grown >= 1);

    // Quiet again: back to min_size.
    let shrunk = wait(Duration::from_secs(20), || pool()["size"] == 2);
    assert!(shrunk, "shrinks back to min_size: {}", pool());
    assert!(pool()["shrunk"].as_u64().unwrap_or(0) >= 1);
}
