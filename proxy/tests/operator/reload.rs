//! Reloading the config of a running proxy: a new pool size goes live under load while a
//! broken file (by API or SIGHUP) is refused, a setting read only at start says it needs a
//! restart, and connected sessions pick up new settings at their next batch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{connect, json, postgres, select_one, wait, Opts, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_changes_pool_size_under_load_and_refuses_a_bad_file() {
    let pg = postgres().await;
    let server = Server::start(&pg, "size = 3");
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let c = connect(&server.url()).await;
        let (stop, errors, done) = (stop.clone(), errors.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c
                    .query_one("SELECT pg_sleep(0.005), $1::int", &[&1i32])
                    .await
                {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("query failed: {e}");
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pool_max = || server.pool()["max_size"].as_u64().unwrap_or(0);
    assert_eq!(pool_max(), 3);

    let (status, body) = server.reload_with(&server.setup.text.replace("size = 3", "size = 6"));
    assert_eq!(status, 200, "{body}");
    assert!(
        json(&body)["applied"].to_string().contains("pool"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        wait(Duration::from_secs(5), || pool_max() == 6),
        "new size live"
    );

    // A broken file is refused with the reason; the running settings stay.
    let (status, body) = server.reload_with("[pool]\nsize = \"many\"\n");
    assert_eq!(status, 422, "{body}");
    assert!(json(&body)["error"].to_string().contains("size"), "{body}");
    // SIGHUP is refused the same way (the process keeps serving).
    server.signal("-HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pool_max(), 6);

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(done.load(Ordering::Relaxed) > 100);
    assert_eq!(errors.load(Ordering::Relaxed), 0, "no client saw an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_are_read_at_start_and_a_reload_says_so() {
    let pg = postgres().await;
    let server = Server::launch(&pg, Opts::logged("info").listen("worker_threads = 1"));
    let client = connect(&server.url()).await;
    select_one(&client).await;
    let started = server.log();
    assert!(
        started.contains("worker_threads=1"),
        "the start names its threads: {started}"
    );

    let text = &server.setup.text;
    let (status, body) =
        server.reload_with(&text.replace("worker_threads = 1", "worker_threads = 3"));
    assert_eq!(status, 200, "{body}");
    assert!(
        json(&body)["needs_restart"]
            .to_string()
            .contains("listen.worker_threads"),
        "{body}"
    );
    select_one(&client).await;
}

/// A reload reaches sessions already connected: their next batch reads the new settings (the
/// session's view of the config is reloaded when the config was replaced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reaches_connected_sessions_at_their_next_batch() {
    let pg = postgres().await;
    let server = Server::launch(&pg, Opts::logged("warn"));
    let client = connect(&server.url()).await;
    select_one(&client).await;

    let (status, body) = server.reload_with(&server.setup.text.replace(
        "shutdown_timeout = \"20s\"",
        "shutdown_timeout = \"20s\"\nclient_idle_timeout = \"300ms\"",
    ));
    assert_eq!(status, 200, "{body}");
    // One more batch, then idle: the new idle timeout closes the session.
    select_one(&client).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while !client.is_closed() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the reloaded idle timeout did not close the connected session");
}
