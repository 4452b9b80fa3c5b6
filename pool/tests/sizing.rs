//! Self-sizing pools and host budgets against a real PostgreSQL 15 (max_connections = 40).
//!
//! Timing is generous throughout (the machine may have 2 busy cores): the tests assert what
//! the pools do, not how fast.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{query_one, PgServer, MD5_PW, MD5_USER, SCRAM_PW, SCRAM_USER};
use shardgate_config::Config;
use shardgate_pool::{
    spawn_monitor_with_budgets, CheckoutError, Health, HostPolicy, MonitorLogin, PoolKey,
    PoolSettings, PooledConn, Pools, Role, ServerPool,
};

fn key(pg: &PgServer, user: &str) -> PoolKey {
    PoolKey {
        database: "postgres".into(),
        user: user.into(),
        shard: "s0".into(),
        role: Role::Primary,
        host: pg.tcp_host(),
    }
}

fn settings(min_size: u32, max_size: u32, idle_timeout: Duration) -> PoolSettings {
    PoolSettings {
        max_size,
        min_size,
        scale_up_at: 0.8,
        scale_down_at: 0.2,
        checkout_timeout: Duration::from_secs(30),
        idle_timeout,
        max_lifetime: Duration::from_secs(3600),
        prepared_capacity: 16,
        server_check_delay: shardgate_pool::DEFAULT_SERVER_CHECK_DELAY,
    }
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `rounds` × `clients` concurrent checkouts, each holding its connection for a 50 ms query.
async fn load(pool: &ServerPool, clients: usize, rounds: usize) {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for _ in 0..rounds {
                    let mut conn = pool.checkout().await.map_err(|e| e.to_string())?;
                    conn.run_internal("select pg_sleep(0.05)")
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("load task").expect("checkout and query");
    }
}

/// What the pools and the server looked like at one moment under load.
#[derive(Debug)]
struct Sample {
    /// Server connections of the pools' users (pg_stat_activity, application_name
    /// shardgate-test as the test targets set it).
    server: u32,
    /// Sum of the pools' open connections and of those being opened (a backend is listed in
    /// pg_stat_activity from the start of its login), then of their targets (read after the
    /// counts, so a target that only grows is never under the connections it allowed).
    connections: u32,
    connecting: u32,
    targets: u32,
}

/// Samples every 20 ms until `stop` is set.
async fn spawn_sampler(
    pg: &PgServer,
    pools: Vec<ServerPool>,
    users: &str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Sample>> {
    let sql = format!(
        "select count(*) from pg_stat_activity where usename in ({users}) \
         and application_name = 'shardgate-test'"
    );
    let mut admin = pg.admin().await;
    tokio::spawn(async move {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let server = query_one(&mut admin, &sql)
                .await
                .and_then(|n| n.parse().ok())
                .unwrap_or(u32::MAX);
            let states: Vec<_> = pools.iter().map(|p| p.state()).collect();
            let targets = pools.iter().map(|p| p.state().target).sum();
            samples.push(Sample {
                server,
                connections: states.iter().map(|s| s.connections).sum(),
                connecting: states.iter().map(|s| s.connecting).sum(),
                targets,
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        samples
    })
}

fn server_count(pg: &PgServer, user: &str) -> String {
    pg.psql(&format!(
        "select count(*) from pg_stat_activity where usename = '{user}'"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grows_under_load_and_shrinks_back_to_min_size() {
    common::init_tracing();
    let pg = PgServer::start();
    let pool = ServerPool::new(
        key(&pg, SCRAM_USER),
        pg.target(SCRAM_USER, Some(SCRAM_PW)),
        settings(2, 10, Duration::from_millis(300)),
    );
    assert_eq!(pool.state().target, 2, "starts at min_size");
    wait_for("min_size connections", Duration::from_secs(10), || {
        pool.state().connections == 2
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = spawn_sampler(&pg, vec![pool.clone()], "'scram_user'", Arc::clone(&stop)).await;
    load(&pool, 64, 8).await;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.expect("sampler");

    let state = pool.state();
    assert!(state.grown >= 1, "{state:?}");
    let peak = samples.iter().map(|s| s.targets).max().unwrap_or_default();
    assert_eq!(peak, 10, "64 clients grow the pool to max_size");
    for s in &samples {
        assert!(s.targets <= 10, "above max_size: {s:?}");
        assert!(
            s.connections <= s.targets,
            "more connections than the target: {s:?}"
        );
        assert!(
            s.server <= s.targets,
            "more server backends than the target: {s:?}"
        );
    }

    // Idle now: back to min_size after a few idle_timeouts, closing what is above it.
    wait_for(
        "the pool to shrink to min_size",
        Duration::from_secs(30),
        || {
            let s = pool.state();
            s.target == 2 && s.connections == 2
        },
    )
    .await;
    let state = pool.state();
    assert!(state.shrunk >= 1, "{state:?}");
    assert_eq!(state.waiting, 0);
    wait_for("server backends to exit", Duration::from_secs(10), || {
        server_count(&pg, SCRAM_USER) == "2"
    })
    .await;

    // It stays at min_size (the warm connections are kept, not reaped) and still serves.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        (pool.state().target, pool.state().connections),
        (2, 2),
        "{:?}",
        pool.state()
    );
    let mut conn = pool.checkout().await.expect("checkout after shrinking");
    assert_eq!(query_one(&mut conn, "select 1").await.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_on_one_host_stay_within_its_budget_together() {
    common::init_tracing();
    let pg = PgServer::start();
    let pools = Pools::default();
    let host = pg.tcp_host();
    pools.budgets().set_budget(&host, Some(6));
    let idle = Duration::from_secs(600);
    let a = pools.get_or_create(key(&pg, SCRAM_USER), || {
        (pg.target(SCRAM_USER, Some(SCRAM_PW)), settings(1, 8, idle))
    });
    let b = pools.get_or_create(key(&pg, MD5_USER), || {
        (pg.target(MD5_USER, Some(MD5_PW)), settings(1, 8, idle))
    });
    assert_eq!(pools.budgets().allocated(&host), 2, "the starting sizes");

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = spawn_sampler(
        &pg,
        vec![a.clone(), b.clone()],
        "'scram_user', 'md5_user'",
        Arc::clone(&stop),
    )
    .await;
    tokio::join!(load(&a, 32, 6), load(&b, 32, 6));
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.expect("sampler");

    let peak = samples.iter().map(|s| s.targets).max().unwrap_or_default();
    assert_eq!(peak, 6, "the pools grow until the budget stops them");
    for s in &samples {
        assert!(s.targets <= 6, "over the host budget: {s:?}");
        assert!(
            s.connections + s.connecting <= 6,
            "over the host budget: {s:?}"
        );
        // Strict on the server too: nothing closes under this load (no shrink, no lifetime
        // reached), so no backend of a closed connection can still be listed here. It once
        // read 7, with 7 open: a checkout counted as waiting while it held a connection let
        // another start a connect no permit covered.
        assert!(s.server <= 6, "over the host budget on the server: {s:?}");
    }
    assert!(
        pools.budgets().connections(&host) <= 6,
        "{:?}",
        pools.budgets()
    );
    assert_eq!(
        pools.budgets().allocated(&host),
        a.state().target + b.state().target
    );

    // A lower budget (a reload, or max_connections read lower) makes them shrink to it.
    pools.budgets().set_budget(&host, Some(3));
    wait_for(
        "the pools to shrink under the new budget",
        Duration::from_secs(20),
        || a.state().target + b.state().target <= 3,
    )
    .await;
    wait_for(
        "connections above the targets to close",
        Duration::from_secs(20),
        || a.state().connections + b.state().connections <= 3,
    )
    .await;
    assert!(
        a.state().target >= 1 && b.state().target >= 1,
        "never under one"
    );
}

/// Server connections of both test users.
fn server_count_both(pg: &PgServer) -> String {
    pg.psql(&format!(
        "select count(*) from pg_stat_activity where usename in ('{SCRAM_USER}', '{MD5_USER}')"
    ))
}

/// Starts a checkout of `b` in a task and waits until it either connected or was put off for
/// want of room in the host's connections.
async fn second_checkout(
    pools: &Pools,
    host: &shardgate_config::Host,
    b: &ServerPool,
) -> tokio::task::JoinHandle<Result<PooledConn, CheckoutError>> {
    let deferred = pools.budgets().deferred_connects(host);
    let b2 = tokio::spawn({
        let b = b.clone();
        async move { b.checkout().await }
    });
    wait_for(
        "b's second checkout to connect or be put off",
        Duration::from_secs(20),
        || b2.is_finished() || pools.budgets().deferred_connects(host) > deferred,
    )
    .await;
    b2
}

/// The connection of a checkout started by [`second_checkout`], once it is done.
async fn finished(b2: tokio::task::JoinHandle<Result<PooledConn, CheckoutError>>) -> PooledConn {
    tokio::time::timeout(Duration::from_secs(30), b2)
        .await
        .expect("b's second checkout in time")
        .expect("checkout task")
        .expect("b's second checkout")
}

/// A pool that shrinks while all its connections are checked out gives its budget back at
/// once, but the connection above its new target closes only when it comes back. Another pool
/// that grows into that budget must wait for the connection to close rather than connect (it
/// used to connect: one connection over the host's budget until the first came back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_given_back_by_a_shrink_is_used_only_once_the_connection_closed() {
    common::init_tracing();
    let pg = PgServer::start();
    let pools = Pools::default();
    let host = pg.tcp_host();
    pools.budgets().set_budget(&host, Some(3));
    // Pool a grows only when more than twice its target is wanted, and shrinks once fewer
    // than 1.5 × its target have been in use for 200 ms: two connections held make it grow
    // from 1 (with a third checkout waiting), then shrink back to 1 while both are still out,
    // and then stay there.
    let mut a_settings = settings(1, 2, Duration::from_millis(200));
    a_settings.scale_up_at = 2.0;
    a_settings.scale_down_at = 1.5;
    let a = pools.get_or_create(key(&pg, SCRAM_USER), || {
        (pg.target(SCRAM_USER, Some(SCRAM_PW)), a_settings)
    });
    let b = pools.get_or_create(key(&pg, MD5_USER), || {
        (
            pg.target(MD5_USER, Some(MD5_PW)),
            settings(1, 2, Duration::from_secs(600)),
        )
    });
    wait_for("b's min_size connection", Duration::from_secs(10), || {
        b.state().connections == 1
    })
    .await;

    let a1 = a.checkout().await.expect("a's first checkout");
    // Two more checkouts wait: a grows to 2 (the budget's third connection); the first to
    // get the new place keeps it, the other is dropped.
    let a2 = tokio::select! {
        c = a.checkout() => c,
        c = a.checkout() => c,
    }
    .expect("a's second checkout");
    assert_eq!(pools.budgets().allocated(&host), 3);
    assert_eq!(pools.budgets().connections(&host), 3);

    wait_for("a to shrink", Duration::from_secs(20), || {
        a.state().target == 1
    })
    .await;
    assert_eq!(
        pools.budgets().allocated(&host),
        2,
        "a's shrink gave one back"
    );
    assert_eq!(a.state().connections, 2, "both of a's connections are out");

    // b takes its connection and grows into the budget a gave back; its second checkout
    // must not connect while a still has two connections open.
    let b1 = b.checkout().await.expect("b's first checkout");
    let b2 = second_checkout(&pools, &host, &b).await;
    assert!(
        !b2.is_finished(),
        "b connected while a's connection above its target was still open"
    );
    assert_eq!(b.state().target, 2, "b grew into the budget a gave back");
    assert_eq!(pools.budgets().connections(&host), 3);
    assert_eq!(server_count_both(&pg), "3");

    // a's connection comes back and closes (its pool shrank): b connects in its place.
    drop(a2);
    let mut b2 = finished(b2).await;
    assert_eq!(query_one(&mut b2, "select 1").await.as_deref(), Some("1"));
    assert_eq!(a.state().connections, 1);
    assert_eq!(pools.budgets().connections(&host), 3);
    wait_for(
        "a's closed backend to exit",
        Duration::from_secs(10),
        || server_count_both(&pg) == "3",
    )
    .await;
    drop((a1, b1, b2));
}

/// A pool that is removed gives its budget back when the pool goes, but a connection checked
/// out of it stays open until it is returned: other pools may grow, but connect only once it
/// closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_of_a_removed_pool_is_used_only_once_its_connections_closed() {
    common::init_tracing();
    let pg = PgServer::start();
    let pools = Pools::default();
    let host = pg.tcp_host();
    pools.budgets().set_budget(&host, Some(2));
    let idle = Duration::from_secs(600);
    let a_key = key(&pg, SCRAM_USER);
    let a = pools.get_or_create(a_key.clone(), || {
        (pg.target(SCRAM_USER, Some(SCRAM_PW)), settings(1, 1, idle))
    });
    let b = pools.get_or_create(key(&pg, MD5_USER), || {
        (pg.target(MD5_USER, Some(MD5_PW)), settings(1, 2, idle))
    });
    let a1 = a.checkout().await.expect("a's checkout");
    let b1 = b.checkout().await.expect("b's first checkout");
    assert_eq!(pools.budgets().connections(&host), 2);

    pools.remove(&a_key);
    drop(a);
    wait_for(
        "a's budget to be given back",
        Duration::from_secs(10),
        || pools.budgets().allocated(&host) == 1,
    )
    .await;

    let b2 = second_checkout(&pools, &host, &b).await;
    assert!(
        !b2.is_finished(),
        "b connected while the removed pool's connection was still open"
    );
    assert_eq!(server_count_both(&pg), "2");

    // The removed pool's last connection comes back: its store goes, and the connection too.
    drop(a1);
    let mut b2 = finished(b2).await;
    assert_eq!(query_one(&mut b2, "select 1").await.as_deref(), Some("1"));
    assert_eq!(pools.budgets().connections(&host), 2);
    drop((b1, b2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_sets_the_budget_from_max_connections() {
    common::init_tracing();
    let pg = PgServer::start();
    let config = Config::from_toml(
        &format!(
            r#"
            [pool]
            host_reserve = 5
            host_share = 0.25

            [replicas]
            check_interval = "100ms"

            [[users]]
            name = "{SCRAM_USER}"
            password = "{SCRAM_PW}"

            [[shards]]
            name = "s0"
            primary = {{ host = "127.0.0.1", port = {} }}
            "#,
            pg.port
        ),
        Path::new("test.toml"),
    )
    .expect("config");
    let pools = Pools::new(HostPolicy::from_config(&config.pool));
    let host = pg.tcp_host();
    assert_eq!(
        pools.budgets().budget(&host),
        None,
        "unknown before a check"
    );
    let login = MonitorLogin::from_config(&config).expect("monitor login");
    let monitor = spawn_monitor_with_budgets(
        Health::from_config(&config),
        config.replicas.clone(),
        login,
        Some(Arc::clone(pools.budgets())),
    );
    // floor((40 − 5) × 0.25) = 8
    wait_for(
        "the monitor to read max_connections",
        Duration::from_secs(15),
        || pools.budgets().budget(&host) == Some(8),
    )
    .await;

    let pool = pools.get_or_create(key(&pg, SCRAM_USER), || {
        (
            pg.target(SCRAM_USER, Some(SCRAM_PW)),
            settings(1, 20, Duration::from_secs(600)),
        )
    });
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = spawn_sampler(&pg, vec![pool.clone()], "'scram_user'", Arc::clone(&stop)).await;
    load(&pool, 32, 6).await;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.expect("sampler");
    monitor.abort();

    let peak = samples.iter().map(|s| s.targets).max().unwrap_or_default();
    assert_eq!(peak, 8, "max_size 20, but the host allows this proxy 8");
    for s in &samples {
        // The monitor's own connection (application_name shardgate-monitor) is not counted:
        // the reserve is there for connections like it.
        assert!(
            s.connections <= 8 && s.server <= 8,
            "over the budget: {s:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetimes_are_jittered_within_ten_percent() {
    common::init_tracing();
    let pg = PgServer::start();
    let mut s = settings(0, 8, Duration::from_secs(600));
    s.max_lifetime = Duration::from_secs(3);
    // md5: cheap logins, so the eight connections are opened close together.
    let pool = ServerPool::new(key(&pg, MD5_USER), pg.target(MD5_USER, Some(MD5_PW)), s);

    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(pool.checkout().await.expect("checkout"));
    }
    let (lo, hi) = (Duration::from_millis(2700), Duration::from_millis(3300));
    let lifetimes: Vec<Duration> = held
        .iter()
        .map(|c| pool.lifetime_of(c).expect("a lifetime"))
        .collect();
    assert!(
        lifetimes.iter().all(|l| *l >= lo && *l <= hi),
        "{lifetimes:?}"
    );
    assert!(
        lifetimes.iter().collect::<HashSet<_>>().len() > 1,
        "connections get different lifetimes: {lifetimes:?}"
    );
    let pids: HashSet<i32> = held.iter().map(|c| c.backend_key().0).collect();

    // Returned before 90% of max_lifetime: all kept.
    let ages: Vec<Duration> = held.iter().map(|c| c.age()).collect();
    assert!(
        ages.iter().all(|a| *a < lo),
        "the machine is too slow: {ages:?}"
    );
    held.clear();
    for _ in 0..8 {
        held.push(pool.checkout().await.expect("checkout"));
    }
    let again: HashSet<i32> = held.iter().map(|c| c.backend_key().0).collect();
    assert_eq!(
        again, pids,
        "no connection closed before 90% of max_lifetime"
    );

    // Returned after 110%: all closed and replaced.
    wait_for("the connections to age", Duration::from_secs(10), || {
        held.iter().all(|c| c.age() > hi)
    })
    .await;
    held.clear();
    for _ in 0..8 {
        held.push(pool.checkout().await.expect("checkout"));
    }
    let fresh: HashSet<i32> = held.iter().map(|c| c.backend_key().0).collect();
    assert!(
        fresh.is_disjoint(&pids),
        "every connection past 110% was closed"
    );
}
