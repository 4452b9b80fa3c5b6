//! Limits that must hold against clients that misbehave: a client trickling its startup
//! packet, a client that never reads its results, and per-user / per-database caps.

mod common;

use std::time::{Duration, Instant};

use common::{sqlstate, Env, RawClient, Setup, PASSWORD, USER};

/// Resident memory of this process (the proxy runs in it), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_startup_loses_its_slot() {
    let env = Env::start(Setup {
        listen_extra: "startup_timeout = \"1s\"\nmax_client_connections = 2".into(),
        ..Setup::default()
    })
    .await;
    // Two slow clients each send one byte of the startup packet per 300 ms.
    let packet = common::raw::startup(196608, &[("user", USER), ("database", common::DB)]);
    let mut slow = Vec::new();
    for _ in 0..2 {
        slow.push(RawClient::open(env.port()).await);
    }
    let started = Instant::now();
    for byte in packet.iter().take(20) {
        for c in slow.iter_mut() {
            c.send_lossy(&[*byte]).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if started.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    for c in &mut slow {
        let msgs = tokio::time::timeout(Duration::from_secs(5), c.read_until_closed())
            .await
            .expect("the proxy closes a client that does not finish startup");
        assert_eq!(common::first_error(&msgs).as_deref(), Some("57014"));
    }
    assert!(started.elapsed() < Duration::from_secs(6));
    // Their slots are free again: a normal client gets in.
    let c = env.connect().await;
    c.simple_query("SELECT 1").await.unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_make_the_proxy_buffer_without_bound() {
    let env = Env::start(Setup::default().pool_size(4)).await;
    let mut greedy = RawClient::connect(env.port()).await;
    let before = rss();
    // About 1 GB of rows, never read.
    greedy
        .send(&common::raw::query(
            "SELECT repeat('x', 1000) FROM generate_series(1, 1000000)",
        ))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = rss();
    assert!(
        during < before + 64 * 1024 * 1024,
        "proxy memory grew by {} MB for a client that does not read",
        (during.saturating_sub(before)) / (1024 * 1024)
    );
    // Everyone else is served meanwhile.
    let other = env.connect().await;
    for _ in 0..20 {
        other.simple_query("SELECT 1").await.unwrap();
    }
    drop(greedy);
    // Once it is gone, its server connection is cleaned up and the pool serves again.
    for _ in 0..10 {
        other.simple_query("SELECT 2").await.unwrap();
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_and_per_database_caps() {
    let env = Env::start(Setup {
        listen_extra: "max_clients_per_user = 2".into(),
        extra: format!(
            "[[users]]\nname = \"capped\"\npassword = \"{PASSWORD}\"\nserver_user = \"{USER}\"\nmax_client_connections = 1\n"
        ),
        ..Setup::default()
    })
    .await;
    let a = env.connect().await;
    let b = env.connect().await;
    let conn = |user: &str| {
        format!(
            "host=127.0.0.1 port={} user={user} password={PASSWORD} dbname={}",
            env.port(),
            common::DB
        )
    };
    let third = env.try_connect(&conn(USER)).await;
    let Err(err) = third else {
        panic!("a third client of the same user is refused")
    };
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err}");
    let message = err
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("\"app\""), "{message}");
    drop(a);
    // The slot frees when a client leaves.
    let ok = common::wait_for(Duration::from_secs(5), || async {
        env.try_connect(&conn(USER)).await.is_ok()
    })
    .await;
    assert!(ok);
    // A user's own cap.
    let _first = env.try_connect(&conn("capped")).await.unwrap();
    let Err(err) = env.try_connect(&conn("capped")).await else {
        panic!("capped user's second client is refused")
    };
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    b.simple_query("SELECT 1").await.unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_databases_get_3d000_and_leave_no_pool() {
    use shardgate_admin::control::ControlPlane;
    let env = Env::start(Setup::default()).await;
    let control = env.proxy.control(None);
    let client = env.connect().await;
    client.simple_query("SELECT 1").await.unwrap();
    let before = control.pools().len();
    assert!(before >= 1, "the app database has its pool");
    for i in 0..40 {
        let conn = format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname=no_such_db_{i}",
            env.port()
        );
        let Err(err) = env.try_connect(&conn).await else {
            panic!("database no_such_db_{i} does not exist")
        };
        assert_eq!(sqlstate(&err).as_deref(), Some("3D000"), "{err:?}");
        let message = err
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_default();
        assert!(message.contains(&format!("no_such_db_{i}")), "{message}");
    }
    let names: Vec<String> = control.pools().iter().map(|p| p.database.clone()).collect();
    assert_eq!(
        names.len(),
        before,
        "pools left for unknown databases: {names:?}"
    );
    // The real database still works, and the proxy serves new clients.
    client.simple_query("SELECT 1").await.unwrap();
    env.connect().await.simple_query("SELECT 1").await.unwrap();
    env.stop().await;
}
