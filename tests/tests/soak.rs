//! The protocol soak (`shardgate_tests::soak`) on the demo topology, short and with a fixed
//! seed: tokio-postgres, psycopg (sync and async), asyncpg and node-postgres clients run random
//! mixes of simple, extended and pipelined statements, errors inside and outside transactions,
//! cancels, COPY, large results and disconnects. Every request must be answered within its
//! deadline, and afterwards no server connection may be left busy or inside a transaction, no
//! connection checked out, no session left. `cargo run -p bench --release -- soak --seconds N`
//! runs it longer.

mod common;

use std::time::Duration;

use common::demo_env::DemoEnv;
use common::scripts::install;
use common::wait_for;
use shardgate_admin::control::ControlPlane;
use shardgate_tests::soak::{self, SoakConfig};

const SEED: u64 = 14;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_answered_and_the_pools_end_clean() {
    let python = install("python", shardgate_tests::python_env).await;
    let node = install("node", shardgate_tests::node_env).await;
    let env = DemoEnv::start("").await;
    let cfg = SoakConfig {
        conn_str: env.conn_str(),
        url: env.url(),
        duration: Duration::from_secs(30),
        seed: SEED,
        rust_clients: 6,
        python_clients: 2,
        node_clients: 3,
        request_deadline: Duration::from_secs(30),
        python: Some(python),
        node: Some(node),
    };
    let report = soak::run(&cfg).await;
    eprintln!(
        "soak: {} requests; tokio-postgres {:?}; scripts {:?}",
        report.total(),
        report.answered,
        report.script_requests
    );
    assert!(
        report.failures.is_empty(),
        "soak failures:\n{}",
        report.failures.join("\n")
    );
    for driver in ["psycopg", "psycopg-async", "asyncpg", "node-postgres"] {
        assert!(
            report.script_requests.get(driver).copied().unwrap_or(0) > 0,
            "{driver} answered no requests: {:?}",
            report.script_requests
        );
    }
    assert!(report.answered.values().sum::<u64>() > 100, "{report:?}");

    // The pools end clean: every session gone, nothing checked out, no server connection
    // running a statement or sitting inside a transaction.
    let shared = env.proxy.shared().clone();
    let sessions_gone = wait_for(Duration::from_secs(15), || {
        let n = shared.client_count();
        async move { n == 0 }
    })
    .await;
    assert!(
        sessions_gone,
        "{} sessions left after the soak",
        shared.client_count()
    );
    let control = env.proxy.control(None);
    let in_use: Vec<String> = control
        .pools()
        .iter()
        .filter(|p| p.in_use > 0)
        .map(|p| format!("{}@{} {}: {} in use", p.shard, p.role, p.host, p.in_use))
        .collect();
    assert!(
        in_use.is_empty(),
        "connections still checked out: {in_use:?}"
    );
    env.assert_servers_quiet(Duration::from_secs(10)).await;
    env.stop().await;
}
