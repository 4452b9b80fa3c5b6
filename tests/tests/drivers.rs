//! Real client drivers through shardgate in transaction mode on a small pool: psycopg 3,
//! asyncpg and node-postgres each run a script (`tests/drivers/`) covering parameter types,
//! server-side prepared statements, transactions, errors and recovery, COPY and more concurrent
//! clients than server connections. The drivers are installed on first use (PyPI, npm) by the
//! harness; each test checks the script printed `OK <driver>` and exited 0.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Env, Setup};

/// Server connections per pool: well below the scripts' 20 concurrent clients.
const POOL_SIZE: u32 = 4;
/// Prepared statements a server connection keeps: low, so that the scripts' statements push
/// older ones out and the proxy's eviction (and re-preparing) runs under real drivers.
const PREPARED_PER_CONNECTION: u32 = 10;
/// A safety net only: each script takes seconds.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

fn setup() -> Setup {
    Setup {
        pool_extra: format!("prepared_statements_per_connection = {PREPARED_PER_CONNECTION}"),
        ..Setup::default().pool_size(POOL_SIZE)
    }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("drivers")
        .join(name)
}

/// Installs (once) a driver environment off the async runtime, printing how long it took.
async fn install<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> shardgate_tests::Result<T> + Send + 'static,
) -> T {
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(f)
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("installing the {what} driver environment failed: {e}"));
    eprintln!("{what} environment ready in {:?}", started.elapsed());
    out
}

/// Runs `program args…` (a driver script given the proxy URL), and fails the test with the
/// script's output unless it exits 0 and prints `OK <driver>`.
async fn run_script(driver: &str, mut cmd: tokio::process::Command) {
    let started = Instant::now();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the {driver} script: {e}"));
    let out = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the {driver} script did not finish in {SCRIPT_TIMEOUT:?}"))
        .expect("wait for the script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ok_line = format!("OK {driver}");
    assert!(
        out.status.success() && stdout.lines().any(|l| l.trim() == ok_line),
        "the {driver} script failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    eprintln!(
        "{driver} script passed in {:?}:\n{stdout}",
        started.elapsed()
    );
}

/// Checks the proxy kept to its pool size: after the run (pools keep their idle connections)
/// the server has at most `POOL_SIZE` connections of `app`.
async fn assert_pool_bounded(env: &Env) {
    let direct = env.connect_direct().await;
    let n: i64 = direct
        .query_one(
            "select count(*) from pg_stat_activity where usename = 'app' and datname = 'app' and pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        n <= i64::from(POOL_SIZE),
        "{n} server connections for a pool of {POOL_SIZE}"
    );
}

async fn python_driver(driver: &str, file: &str) {
    let python = install("python", shardgate_tests::python_env).await;
    let env = Env::start(setup()).await;
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(script(file))
        .arg(env.url())
        .arg(POOL_SIZE.to_string());
    run_script(driver, cmd).await;
    assert_pool_bounded(&env).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_through_transaction_pool() {
    python_driver("psycopg", "psycopg_test.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_through_transaction_pool() {
    python_driver("asyncpg", "asyncpg_test.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_through_transaction_pool() {
    let dir = install("node", shardgate_tests::node_env).await;
    let env = Env::start(setup()).await;
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(script("node_pg_test.js"))
        .arg(env.url())
        .env("NODE_PATH", dir.join("node_modules"))
        .current_dir(&dir);
    run_script("node-postgres", cmd).await;
    assert_pool_bounded(&env).await;
    env.stop().await;
}
