//! Real client drivers through shardgate in transaction mode on a small pool: psycopg 3,
//! asyncpg and node-postgres each run a script (`tests/drivers/`) covering parameter types,
//! server-side prepared statements, transactions, errors and recovery, COPY and more concurrent
//! clients than server connections. The drivers are installed on first use (PyPI, npm) by the
//! harness; each test checks the script printed `OK <driver>` and exited 0.

mod common;

use common::demo_env::DemoEnv;
use common::scripts::{install, python, run_script, script};
use common::{Env, Setup};

/// Server connections per pool: well below the scripts' 20 concurrent clients.
const POOL_SIZE: u32 = 4;
/// Prepared statements a server connection keeps: low, so that the scripts' statements push
/// older ones out and the proxy's eviction (and re-preparing) runs under real drivers.
const PREPARED_PER_CONNECTION: u32 = 10;

fn setup() -> Setup {
    Setup {
        pool_extra: format!("prepared_statements_per_connection = {PREPARED_PER_CONNECTION}"),
        ..Setup::default().pool_size(POOL_SIZE)
    }
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

/// The sequences that hung on the demo topology (issue 14): a script with a deadline on every
/// step, then the servers are checked for connections the proxy left busy.
async fn demo_script(name: &str, file: &str) {
    let env = DemoEnv::start("").await;
    let cmd = python(file, &[&env.url()]).await;
    run_script(name, cmd).await;
    env.assert_servers_quiet(std::time::Duration::from_secs(10))
        .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_errors_in_other_transactions_do_not_hang_a_large_fetch() {
    demo_script("hang-asyncpg", "hang_asyncpg.py").await;
}

/// asyncpg's fetchrow/fetchval (Execute with a row limit of one) of cross-shard reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_fetchrow_across_shards_answers_like_postgres() {
    demo_script("fetch-asyncpg", "fetch_asyncpg.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_pipeline_with_savepoint_answers() {
    demo_script("hang-psycopg", "hang_psycopg_pipeline.py").await;
}

/// libpq's PQreset (psycopg's `pq.PGconn.reset()`), also with a transaction left open.
/// (It passed before the issue-14 fixes too: the check keeps it working.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_reset_reconnects_through_the_proxy() {
    // A pool of one: the new login needs the connection the abandoned session held.
    let env = Env::start(Setup::default().pool_size(1)).await;
    let cmd = python("pqreset.py", &[&env.url()]).await;
    run_script("pqreset", cmd).await;
    // No transaction was left open on the server by the abandoned sessions.
    let su = env.connect_superuser().await;
    let open: i64 = su
        .query_one(
            "select count(*) from pg_stat_activity where usename = 'app' and state like 'idle in transaction%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0, "a reset left a transaction open on the server");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_reset_on_the_demo_topology() {
    demo_script("pqreset", "pqreset.py").await;
}

/// COPY data pipelined behind its COPY statement, right after a Flush-ended prepare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_copy_records_on_the_demo_topology() {
    demo_script("copy-asyncpg", "copy_asyncpg.py").await;
}

/// Issue 16: a Django-style request through psycopg (autocommit off) reads keyless, writes two
/// users on different shards, rolls a failed nested block back to its savepoint and commits;
/// the next request's writes on both shards roll back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_style_request_spans_shards() {
    let env = DemoEnv::start("").await;
    let router = shardgate_router::Router::new(&env.config).expect("router");
    let key_on = |shard: usize| {
        (1_000i64..)
            .find(|k| router.shard_for_key(&shardgate_router::KeyValue::Int(*k)) == shard)
            .expect("a key on every shard")
            .to_string()
    };
    let cmd = python("django_style.py", &[&env.url(), &key_on(0), &key_on(1)]).await;
    run_script("django-style", cmd).await;
    env.assert_servers_quiet(std::time::Duration::from_secs(10))
        .await;
    env.stop().await;
}

/// pgjdbc's fetch size (Spring's `JdbcTemplate.setFetchSize`, Hibernate's `jdbc.fetch_size`):
/// inside a transaction the driver executes a named portal a few rows at a time; across the
/// demo's shards every chunk must come, equal to the read fetched whole. pgjdbc is Debian's
/// `libpostgresql-jdbc-java` (`.ci/run` installs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_fetch_size_reads_across_shards_in_chunks() {
    const JAR: &str = "/usr/share/java/postgresql.jar";
    assert!(
        std::path::Path::new(JAR).exists(),
        "pgjdbc is missing: apt-get install libpostgresql-jdbc-java (.ci/run does)"
    );
    let env = DemoEnv::start("").await;
    let mut cmd = tokio::process::Command::new("java");
    cmd.arg("-cp")
        .arg(JAR)
        .arg(script("JdbcFetchSize.java"))
        .arg(env.jdbc_url());
    let out = run_script("jdbc", cmd).await;
    assert!(out.contains("OK jdbc"), "{out}");
    env.assert_servers_quiet(std::time::Duration::from_secs(10))
        .await;
    env.stop().await;
}
