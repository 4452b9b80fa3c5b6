//! ServerPool and Pools against a real PostgreSQL 15.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{query_one, PgServer, MD5_PW, MD5_USER, SCRAM_PW, SCRAM_USER};
use shardgate_config::Host;
use shardgate_pool::{
    CheckoutError, ConnectTarget, PoolKey, PoolSettings, Pools, Role, ServerError, ServerPool,
};

fn key(user: &str) -> PoolKey {
    PoolKey {
        database: "postgres".into(),
        user: user.into(),
        shard: "s0".into(),
        role: Role::Primary,
        host: shardgate_config::Host {
            host: "127.0.0.1".into(),
            port: 5432,
            ..Default::default()
        },
    }
}

fn settings(max_size: u32) -> PoolSettings {
    PoolSettings {
        max_size,
        min_size: 0,
        scale_up_at: 0.8,
        scale_down_at: 0.2,
        checkout_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(600),
        max_lifetime: Duration::from_secs(3600),
        prepared_capacity: 7,
        server_check_delay: shardgate_pool::DEFAULT_SERVER_CHECK_DELAY,
    }
}

fn pool(pg: &PgServer, settings: PoolSettings) -> ServerPool {
    ServerPool::new(
        key(SCRAM_USER),
        pg.target(SCRAM_USER, Some(SCRAM_PW)),
        settings,
    )
}

#[tokio::test]
async fn reuses_idle_connections() {
    common::init_tracing();
    let pg = PgServer::start();
    let pool = pool(&pg, settings(4));
    assert_eq!(
        pool.name(),
        "postgres/scram_user@s0 (primary 127.0.0.1:5432)"
    );
    assert_eq!(pool.key(), &key(SCRAM_USER));
    assert_eq!(
        pool.state().connections,
        0,
        "no connect before the first checkout"
    );

    let mut conn = pool.checkout().await.expect("checkout");
    let pid = conn.backend_key().0;
    assert_eq!(conn.prepared().capacity(), 7);
    conn.prepared().insert("sg_1".into());
    conn.set_session_fingerprint(99);
    conn.run_internal("select 1").await.unwrap();
    let state = pool.state();
    assert_eq!((state.connections, state.idle, state.in_use), (1, 0, 1));
    drop(conn);
    assert_eq!(pool.state().idle, 1);

    let mut again = pool.checkout().await.unwrap();
    assert_eq!(again.backend_key().0, pid, "the idle connection is reused");
    assert!(
        again.prepared().contains("sg_1"),
        "its prepared set stays with it"
    );
    assert_eq!(again.session_fingerprint(), 99);

    // Two at once are two server connections.
    let other = pool.checkout().await.unwrap();
    assert_ne!(other.backend_key().0, pid);
    assert_eq!(pool.state().connections, 2);

    // The fast path alone: the idle connection at once, or nothing (and nothing held).
    drop(again);
    let fast = pool.try_checkout().expect("an idle connection");
    assert_eq!(fast.backend_key().0, pid);
    assert!(pool.try_checkout().is_none(), "no idle connection left");
    let state = pool.state();
    assert_eq!((state.connections, state.idle, state.in_use), (2, 0, 2));
    drop((fast, other));
    assert_eq!(pool.state().idle, 2);
    let full = settings(1);
    let small = ServerPool::new(key(SCRAM_USER), pg.target(SCRAM_USER, Some(SCRAM_PW)), full);
    let held = small.checkout().await.unwrap();
    assert!(small.try_checkout().is_none(), "the pool is at its size");
    drop(held);
    assert!(
        small.try_checkout().is_some(),
        "a failed try gave its place back"
    );
    // The slow path after a try takes the idle connection too, opening none.
    let slow = small.checkout_slow().await.unwrap();
    assert_eq!(small.state().connections, 1);
    drop(slow);
}

#[tokio::test]
async fn checkout_times_out_naming_the_pool() {
    let pg = PgServer::start();
    let mut s = settings(1);
    s.checkout_timeout = Duration::from_millis(300);
    // Open the connection in the background (min_size) so a slow connect on a busy machine
    // cannot make the first checkout time out.
    s.min_size = 1;
    let pool = pool(&pg, s);
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.state().idle < 1 {
        assert!(Instant::now() < deadline, "min_size not reached");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let held = pool.checkout().await.unwrap();
    let start = Instant::now();
    match pool.checkout().await {
        Err(e @ CheckoutError::Timeout { .. }) => {
            assert_eq!(e.sqlstate(), "53300");
            let CheckoutError::Timeout { pool: name, waited } = &e else {
                unreachable!()
            };
            assert_eq!(name, "postgres/scram_user@s0 (primary 127.0.0.1:5432)");
            assert!(*waited >= Duration::from_millis(300), "{waited:?}");
            assert!(e
                .to_string()
                .contains("postgres/scram_user@s0 (primary 127.0.0.1:5432)"));
        }
        other => panic!(
            "expected a timeout, got {:?}",
            other.map(|c| c.backend_key())
        ),
    }
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(pool.state().checkouts_timed_out, 1);

    // A waiter gets the connection as soon as it is returned.
    let pid = held.backend_key().0;
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.checkout().await.map(|c| c.backend_key().0) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(held);
    assert_eq!(waiter.await.unwrap().unwrap(), pid);
}

/// bb8 sends connect errors to its error sink and lets `get` wait until its timeout; the
/// pool must report the server's own reason at once instead.
#[tokio::test]
async fn connect_errors_reach_the_checkout_quickly() {
    let pg = PgServer::start();
    let slow = settings(2); // 5 s checkout timeout

    let wrong_pw = ServerPool::new(
        key(SCRAM_USER),
        pg.target(SCRAM_USER, Some("wrong")),
        slow.clone(),
    );
    let start = Instant::now();
    match wrong_pw.checkout().await {
        Err(CheckoutError::Connect(ServerError::Refused { code, .. })) => assert_eq!(code, "28P01"),
        other => panic!("expected 28P01, got {:?}", other.map(|c| c.backend_key())),
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // Several waiters at once all hear about it, and the pool keeps working afterwards.
    let (a, b) = tokio::join!(wrong_pw.checkout(), wrong_pw.checkout());
    assert_eq!(
        a.err().map(|e| e.sqlstate().to_owned()).as_deref(),
        Some("28P01")
    );
    assert_eq!(
        b.err().map(|e| e.sqlstate().to_owned()).as_deref(),
        Some("28P01")
    );
    assert_eq!(wrong_pw.state().connections, 0);

    let mut target = pg.target(MD5_USER, Some(MD5_PW));
    target.database = "no_such_db".into();
    let no_db = ServerPool::new(key(MD5_USER), target, slow.clone());
    let start = Instant::now();
    let err = no_db.checkout().await.expect_err("3D000");
    assert_eq!(err.sqlstate(), "3D000", "{err}");
    assert!(start.elapsed() < Duration::from_secs(2));

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let target = ConnectTarget {
        host: Host {
            host: "127.0.0.1".into(),
            port,
            ..Default::default()
        },
        ..pg.target(SCRAM_USER, Some(SCRAM_PW))
    };
    let down = ServerPool::new(key(SCRAM_USER), target, slow);
    let start = Instant::now();
    match down.checkout().await {
        Err(e @ CheckoutError::Connect(ServerError::Connect { .. })) => {
            assert_eq!(e.sqlstate(), "08006")
        }
        other => panic!(
            "expected a connect error, got {:?}",
            other.map(|c| c.backend_key())
        ),
    }
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_connection_left_in_a_transaction_is_not_reused() {
    let pg = PgServer::start();
    let pool = pool(&pg, settings(2));

    let mut conn = pool.checkout().await.unwrap();
    let in_tx = conn.backend_key().0;
    conn.run_internal("begin").await.unwrap();
    drop(conn);
    assert_eq!(pool.state().connections, 0, "closed, not returned");

    let mut conn = pool.checkout().await.unwrap();
    let failed = conn.backend_key().0;
    assert_ne!(failed, in_tx);
    conn.run_internal("begin").await.unwrap();
    assert!(conn.run_internal("select nope").await.is_err());
    drop(conn);

    let mut conn = pool.checkout().await.unwrap();
    assert_ne!(conn.backend_key().0, failed);
    assert_eq!(conn.status(), shardgate_pool::TransactionStatus::Idle);
    conn.run_internal("select 1").await.unwrap();
    assert_eq!(pool.state().connections_closed_broken, 2);

    // Explicitly broken ones are closed too.
    let pid = conn.backend_key().0;
    conn.mark_broken();
    drop(conn);
    assert_ne!(pool.checkout().await.unwrap().backend_key().0, pid);

    // The server side agrees: only one backend of ours is left (the closed ones exit soon
    // after their sockets close).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let count = pg.psql("select count(*) from pg_stat_activity where usename = 'scram_user'");
        if count == "1" {
            break;
        }
        assert!(Instant::now() < deadline, "{count} backends left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn terminated_connections_are_replaced() {
    let pg = PgServer::start();
    let pool = pool(&pg, settings(2));

    // Terminated while checked out: the proxy's next read sees EOF, the connection is
    // broken, and the pool hands out a working one.
    let mut conn = pool.checkout().await.unwrap();
    let first = conn.backend_key().0;
    pg.terminate(first).await;
    assert!(conn.run_internal("select 1").await.is_err());
    assert!(conn.is_broken());
    drop(conn);
    let mut conn = pool.checkout().await.unwrap();
    let second = conn.backend_key().0;
    assert_ne!(second, first);
    assert_eq!(query_one(&mut conn, "select 1").await.as_deref(), Some("1"));
    drop(conn);

    // Terminated while idle in the pool: checkout notices and replaces it.
    pg.terminate(second).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut conn = pool.checkout().await.unwrap();
    assert_ne!(conn.backend_key().0, second);
    conn.run_internal("select 1").await.unwrap();
}

#[tokio::test]
async fn lifetime_and_min_size() {
    let pg = PgServer::start();
    let mut s = settings(3);
    s.max_lifetime = Duration::from_millis(200);
    let pool = pool(&pg, s);
    let conn = pool.checkout().await.unwrap();
    let pid = conn.backend_key().0;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(conn);
    assert_ne!(pool.checkout().await.unwrap().backend_key().0, pid);

    let mut s = settings(3);
    s.min_size = 2;
    let warm = pool_for(&pg, s);
    let deadline = Instant::now() + Duration::from_secs(5);
    while warm.state().idle < 2 {
        assert!(
            Instant::now() < deadline,
            "min_size not reached: {:?}",
            warm.state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(warm.state().connections, 2);
}

/// Idle connections past their lifetime are closed by the pool's background round, without
/// waiting for a checkout to find them; a checkout never hands one out.
#[tokio::test]
async fn idle_connections_past_their_lifetime_are_closed() {
    let pg = PgServer::start();
    let mut s = settings(3);
    s.max_lifetime = Duration::from_secs(1);
    let pool = pool(&pg, s);
    let pid = pool.checkout().await.unwrap().backend_key().0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.state().connections > 0 {
        assert!(Instant::now() < deadline, "not reaped: {:?}", pool.state());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let conn = pool.checkout().await.unwrap();
    assert_ne!(conn.backend_key().0, pid);
}

/// With `server_check_delay` zero every checkout asks the kernel (`recv(MSG_PEEK)`) whether
/// the idle connection is still sound.
#[tokio::test]
async fn a_zero_check_delay_checks_every_checkout() {
    let pg = PgServer::start();
    let mut s = settings(2);
    s.server_check_delay = Duration::ZERO;
    let pool = pool(&pg, s);
    let pid = pool.checkout().await.unwrap().backend_key().0;
    // pg_terminate_backend waits for the backend to exit, so its FATAL and EOF are on our
    // socket by the time it returns.
    pg.terminate(pid).await;
    let mut conn = pool.checkout().await.unwrap();
    assert_ne!(conn.backend_key().0, pid);
    conn.run_internal("select 1").await.unwrap();
    assert_eq!(pool.state().connections_closed_broken, 1);
}

/// Many clients on a small pool: every checkout gets a connection (a lost wake-up would show
/// as a checkout timeout), the pool never exceeds its ceiling, and everything is idle after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_a_small_pool() {
    let pg = PgServer::start();
    let mut s = settings(4);
    s.checkout_timeout = Duration::from_secs(30);
    let pool = pool(&pg, s);
    let tasks: Vec<_> = (0..32)
        .map(|client| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for round in 0..100 {
                    let mut conn = pool.checkout().await.map_err(|e| e.to_string())?;
                    if (client + round) % 10 == 0 {
                        conn.run_internal("select 1")
                            .await
                            .map_err(|e| e.to_string())?;
                    } else {
                        tokio::task::yield_now().await;
                    }
                    assert!(pool.state().connections <= 4, "{:?}", pool.state());
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client task").expect("checkout and query");
    }
    let state = pool.state();
    assert_eq!(state.in_use, 0, "{state:?}");
    assert_eq!(state.waiting, 0, "{state:?}");
    assert!(state.connections <= 4, "{state:?}");
    assert_eq!(state.idle, state.connections, "{state:?}");
    assert_eq!(state.checkouts_timed_out, 0);
}

fn pool_for(pg: &PgServer, settings: PoolSettings) -> ServerPool {
    ServerPool::new(key(MD5_USER), pg.target(MD5_USER, Some(MD5_PW)), settings)
}

#[tokio::test]
async fn pools_are_created_once_per_key() {
    let pg = PgServer::start();
    let pools = Pools::default();
    let made = AtomicUsize::new(0);
    let make = || {
        made.fetch_add(1, Ordering::SeqCst);
        (pg.target(SCRAM_USER, Some(SCRAM_PW)), settings(2))
    };
    let a = pools.get_or_create(key(SCRAM_USER), make);
    let b = pools.get_or_create(key(SCRAM_USER), make);
    assert_eq!(made.load(Ordering::SeqCst), 1);
    let pid = a.checkout().await.unwrap().backend_key().0;
    assert_eq!(
        b.checkout().await.unwrap().backend_key().0,
        pid,
        "same pool"
    );

    let mut replica = key(SCRAM_USER);
    replica.role = Role::Replica;
    let r = pools.get_or_create(replica.clone(), make);
    assert_eq!(made.load(Ordering::SeqCst), 2);
    assert_eq!(r.name(), "postgres/scram_user@s0 (replica 127.0.0.1:5432)");
    assert_eq!(pools.all().len(), 2);
    assert!(pools.get(&replica).is_some());
    assert!(pools.remove(&replica).is_some());
    assert_eq!(pools.all().len(), 1);
}
