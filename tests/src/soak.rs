//! The protocol soak: many concurrent clients — tokio-postgres here, psycopg (sync and async),
//! asyncpg and node-postgres in driver scripts (`tests/drivers/soak_*.{py,js}`) — run a
//! randomized mix of simple, extended and pipelined statements, errors inside and outside
//! transactions, cancels, COPY, large results and disconnects against a proxy, for a bounded
//! time. Every request has a deadline: one without an answer in time is a failure, as is any
//! unexpected error. Used by the `soak` end-to-end test (short, fixed seed) and by
//! `bench soak --seconds N`.
//!
//! The database must have the demo schema (`users` sharded by `user_id`); the soak creates
//! its own unsharded table `soak_log`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// What to run.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    /// tokio-postgres connection string of the proxy.
    pub conn_str: String,
    /// URL of the proxy (for the driver scripts).
    pub url: String,
    pub duration: Duration,
    pub seed: u64,
    /// tokio-postgres clients.
    pub rust_clients: usize,
    /// Clients per Python driver flavour (psycopg sync, psycopg async, asyncpg).
    pub python_clients: usize,
    /// node-postgres clients.
    pub node_clients: usize,
    /// How long any one request may take before it counts as unanswered.
    pub request_deadline: Duration,
    /// The Python interpreter of the driver virtualenv and the node environment directory
    /// (from [`crate::python_env`] / [`crate::node_env`]); `None` skips that driver family.
    pub python: Option<PathBuf>,
    pub node: Option<PathBuf>,
}

/// What happened.
#[derive(Debug, Default)]
pub struct SoakReport {
    /// Requests answered, by kind (tokio-postgres clients).
    pub answered: BTreeMap<&'static str, u64>,
    /// Requests the driver scripts reported as answered.
    pub script_requests: BTreeMap<String, u64>,
    /// Unanswered requests and unexpected outcomes; empty when the soak passed.
    pub failures: Vec<String>,
}

impl SoakReport {
    pub fn total(&self) -> u64 {
        self.answered.values().sum::<u64>() + self.script_requests.values().sum::<u64>()
    }
}

/// Runs the soak; failures are collected in the report (the caller asserts on them).
pub async fn run(cfg: &SoakConfig) -> SoakReport {
    let report = Arc::new(Mutex::new(SoakReport::default()));
    match connect(&cfg.conn_str).await {
        Ok((c, _task)) => {
            if let Err(e) = c
                .batch_execute(
                    "create table if not exists soak_log (id bigint, note text); \
                     truncate soak_log",
                )
                .await
            {
                fail(&report, format!("setup: {e}"));
                return take(report);
            }
        }
        Err(e) => {
            fail(&report, format!("setup connect: {e}"));
            return take(report);
        }
    }
    let deadline = Instant::now() + cfg.duration;
    let mut tasks = Vec::new();
    for i in 0..cfg.rust_clients {
        let cfg = cfg.clone();
        let report = Arc::clone(&report);
        tasks.push(tokio::spawn(async move {
            rust_client(&cfg, cfg.seed.wrapping_add(i as u64), deadline, &report).await;
        }));
    }
    if let Some(python) = &cfg.python {
        let mut cmd = tokio::process::Command::new(python);
        cmd.arg(script("soak_drivers.py"))
            .arg(&cfg.url)
            .arg(cfg.duration.as_secs_f64().to_string())
            .arg(cfg.seed.to_string())
            .arg(cfg.python_clients.to_string())
            .arg(cfg.request_deadline.as_secs_f64().to_string());
        tasks.push(spawn_script("python", cmd, cfg, Arc::clone(&report)));
    }
    if let Some(node) = &cfg.node {
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(script("soak_node.js"))
            .arg(&cfg.url)
            .arg(cfg.duration.as_secs_f64().to_string())
            .arg(cfg.seed.to_string())
            .arg(cfg.node_clients.to_string())
            .arg(cfg.request_deadline.as_secs_f64().to_string())
            .env("NODE_PATH", node.join("node_modules"))
            .current_dir(node);
        tasks.push(spawn_script("node", cmd, cfg, Arc::clone(&report)));
    }
    for t in tasks {
        if let Err(e) = t.await {
            fail(&report, format!("a soak task panicked: {e}"));
        }
    }
    take(report)
}

fn take(report: Arc<Mutex<SoakReport>>) -> SoakReport {
    let mut guard = report.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::take(&mut *guard)
}

fn fail(report: &Mutex<SoakReport>, what: String) {
    let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
    if r.failures.len() < 100 {
        r.failures.push(what);
    }
}

fn answered(report: &Mutex<SoakReport>, kind: &'static str) {
    let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
    *r.answered.entry(kind).or_default() += 1;
}

/// The path of a driver script under `tests/drivers`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("drivers")
        .join(name)
}

/// Runs a driver script; its last `REQUESTS name n` lines are counted, `FAIL …` lines and a
/// non-zero exit are failures. It must end within the soak time plus two deadlines.
fn spawn_script(
    name: &'static str,
    mut cmd: tokio::process::Command,
    cfg: &SoakConfig,
    report: Arc<Mutex<SoakReport>>,
) -> tokio::task::JoinHandle<()> {
    let limit = cfg.duration + cfg.request_deadline * 2 + Duration::from_secs(30);
    tokio::spawn(async move {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return fail(&report, format!("{name} script: cannot start: {e}")),
        };
        let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return fail(&report, format!("{name} script: {e}")),
            Err(_) => return fail(&report, format!("{name} script did not end in {limit:?}")),
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
        for line in stdout.lines() {
            if let Some(rest) = line.strip_prefix("REQUESTS ") {
                if let Some((driver, n)) = rest.split_once(' ') {
                    *r.script_requests.entry(driver.to_owned()).or_default() +=
                        n.trim().parse::<u64>().unwrap_or(0);
                }
            } else if let Some(f) = line.strip_prefix("FAIL ") {
                r.failures.push(format!("{name}: {f}"));
            }
        }
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: String = stderr
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            r.failures
                .push(format!("{name} script failed ({}):\n{tail}", out.status));
        }
    })
}

/// Connects without TLS; the connection runs in the returned task.
pub(crate) async fn connect(
    conn_str: &str,
) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conn_str, NoTls).await?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, task))
}

/// What one request of the mix does.
#[derive(Clone, Copy, Debug)]
enum Op {
    Simple,
    Extended,
    Prepared,
    RoutedWrite,
    RoutedRead,
    Pipelined,
    ErrorOutside,
    TransactionCommit,
    TransactionError,
    Cancel,
    CopyIn,
    CopyOut,
    LargeResult,
    CrossShard,
    Disconnect,
}

const OPS: &[(Op, u32)] = &[
    (Op::Simple, 10),
    (Op::Extended, 10),
    (Op::Prepared, 10),
    (Op::RoutedWrite, 10),
    (Op::RoutedRead, 10),
    (Op::Pipelined, 8),
    (Op::ErrorOutside, 6),
    (Op::TransactionCommit, 8),
    (Op::TransactionError, 6),
    (Op::Cancel, 2),
    (Op::CopyIn, 3),
    (Op::CopyOut, 3),
    (Op::LargeResult, 2),
    (Op::CrossShard, 4),
    (Op::Disconnect, 2),
];

fn pick(rng: &mut StdRng) -> Op {
    let total: u32 = OPS.iter().map(|(_, w)| w).sum();
    let mut n = rng.random_range(0..total);
    for (op, w) in OPS {
        if n < *w {
            return *op;
        }
        n -= w;
    }
    Op::Simple
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Simple => "simple",
        Op::Extended => "extended",
        Op::Prepared => "prepared",
        Op::RoutedWrite => "routed-write",
        Op::RoutedRead => "routed-read",
        Op::Pipelined => "pipelined",
        Op::ErrorOutside => "error-outside-transaction",
        Op::TransactionCommit => "transaction-commit",
        Op::TransactionError => "transaction-error-rollback",
        Op::Cancel => "cancel",
        Op::CopyIn => "copy-in",
        Op::CopyOut => "copy-out",
        Op::LargeResult => "large-result",
        Op::CrossShard => "cross-shard",
        Op::Disconnect => "disconnect",
    }
}

/// One tokio-postgres client: random requests until `deadline`, reconnecting after a
/// disconnect.
async fn rust_client(cfg: &SoakConfig, seed: u64, deadline: Instant, report: &Mutex<SoakReport>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut conn = None;
    while Instant::now() < deadline {
        let (client, task) = match conn.take() {
            Some(c) => c,
            None => {
                match tokio::time::timeout(cfg.request_deadline, connect(&cfg.conn_str)).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return fail(report, format!("connect: {e}")),
                    Err(_) => return fail(report, "connect: no answer in time".into()),
                }
            }
        };
        let op = pick(&mut rng);
        let key: i64 = rng.random_range(1..=2000);
        let outcome =
            tokio::time::timeout(cfg.request_deadline, run_op(op, &client, &task, key, cfg)).await;
        match outcome {
            Err(_) => {
                fail(
                    report,
                    format!(
                        "tokio-postgres {}: no answer in {:?}",
                        op_name(op),
                        cfg.request_deadline
                    ),
                );
                task.abort();
                return;
            }
            Ok(Err(e)) => {
                fail(report, format!("tokio-postgres {}: {e}", op_name(op)));
                task.abort();
                return;
            }
            Ok(Ok(keep)) => {
                answered(report, op_name(op));
                if keep {
                    conn = Some((client, task));
                } else {
                    task.abort();
                }
            }
        }
    }
}

/// The SQLSTATE of an error, or its text.
fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| e.to_string())
}

fn expect_code(
    r: Result<impl Sized, tokio_postgres::Error>,
    wanted: &[&str],
    what: &str,
) -> Result<(), String> {
    match r {
        Ok(_) => Err(format!("{what}: succeeded, expected {wanted:?}")),
        Err(e) if wanted.contains(&code(&e).as_str()) => Ok(()),
        Err(e) => Err(format!("{what}: {e} ({}), expected {wanted:?}", code(&e))),
    }
}

fn err(what: &str) -> impl Fn(tokio_postgres::Error) -> String + '_ {
    move |e| format!("{what}: {e} ({})", code(&e))
}

/// Runs one request; `Ok(false)` when the connection was dropped on purpose.
async fn run_op(
    op: Op,
    c: &Client,
    task: &tokio::task::JoinHandle<()>,
    key: i64,
    cfg: &SoakConfig,
) -> Result<bool, String> {
    match op {
        Op::Simple => {
            let rows = c
                .simple_query("select 1; select 'two'")
                .await
                .map_err(err("simple"))?;
            let n = rows
                .iter()
                .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
                .count();
            if n != 2 {
                return Err(format!("simple: {n} rows, expected 2"));
            }
        }
        Op::Extended => {
            let v: i64 = c
                .query_one("select $1::int8 + 1", &[&key])
                .await
                .map_err(err("extended"))?
                .get(0);
            if v != key + 1 {
                return Err(format!("extended: {v} != {}", key + 1));
            }
        }
        Op::Prepared => {
            let s = c
                .prepare("select $1::int8 * 2, $2::text")
                .await
                .map_err(err("prepare"))?;
            for i in 0..5i64 {
                let row = c
                    .query_one(&s, &[&i, &"x"])
                    .await
                    .map_err(err("execute prepared"))?;
                if row.get::<_, i64>(0) != i * 2 {
                    return Err("prepared: wrong value".into());
                }
            }
        }
        Op::RoutedWrite => {
            c.execute(
                "insert into users (user_id, name) values ($1, $2) \
                 on conflict (user_id) do update set name = excluded.name",
                &[&key, &format!("user {key}")],
            )
            .await
            .map_err(err("routed write"))?;
        }
        Op::RoutedRead => {
            c.query("select name from users where user_id = $1", &[&key])
                .await
                .map_err(err("routed read"))?;
        }
        Op::Pipelined => {
            // tokio-postgres pipelines requests issued together on one connection.
            let zero = 0i32;
            let (p_key, p_zero): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) =
                ([&key], [&zero]);
            let (a, b, d, e) = tokio::join!(
                c.query_one("select $1::int8", &p_key),
                c.query("select name from users where user_id = $1", &p_key),
                c.query_one("select 1/$1::int", &p_zero),
                c.query_one("select 'after'::text", &[]),
            );
            let a: i64 = a.map_err(err("pipelined 1"))?.get(0);
            if a != key {
                return Err("pipelined: wrong value".into());
            }
            b.map_err(err("pipelined 2"))?;
            expect_code(d, &["22012"], "pipelined division by zero")?;
            let e: String = e.map_err(err("pipelined after error"))?.get(0);
            if e != "after" {
                return Err("pipelined: wrong value after the error".into());
            }
        }
        Op::ErrorOutside => {
            expect_code(
                c.simple_query("select * from no_such_table").await,
                &["42P01"],
                "missing table",
            )?;
            expect_code(
                c.query_one("select 1/$1::int", &[&0i32]).await,
                &["22012"],
                "extended division by zero",
            )?;
            c.simple_query("select 1")
                .await
                .map_err(err("after errors"))?;
        }
        Op::TransactionCommit => {
            c.batch_execute("begin").await.map_err(err("begin"))?;
            c.execute(
                "insert into users (user_id, name) values ($1, 'tx') \
                 on conflict (user_id) do update set name = 'tx'",
                &[&key],
            )
            .await
            .map_err(err("insert in transaction"))?;
            let n: String = c
                .query_one("select name from users where user_id = $1", &[&key])
                .await
                .map_err(err("read in transaction"))?
                .get(0);
            if n != "tx" {
                return Err("transaction: own write not seen".into());
            }
            c.batch_execute("commit").await.map_err(err("commit"))?;
        }
        Op::TransactionError => {
            c.batch_execute("begin").await.map_err(err("begin"))?;
            c.query("select name from users where user_id = $1", &[&key])
                .await
                .map_err(err("read in transaction"))?;
            expect_code(
                c.query_one("select 1/$1::int", &[&0i32]).await,
                &["22012"],
                "error in transaction",
            )?;
            expect_code(
                c.simple_query("select 1").await,
                &["25P02"],
                "statement in failed transaction",
            )?;
            c.batch_execute("rollback").await.map_err(err("rollback"))?;
        }
        Op::Cancel => {
            let token = c.cancel_token();
            let canceller = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                token.cancel_query(NoTls).await
            });
            let r = c.simple_query("select pg_sleep(3)").await;
            canceller
                .await
                .map_err(|e| format!("cancel task: {e}"))?
                .map_err(err("cancel request"))?;
            match r {
                // The cancel can arrive before the statement reached a server: it is lost,
                // and the statement finishes.
                Ok(_) => {}
                Err(e) if code(&e) == "57014" => {}
                Err(e) => return Err(format!("cancelled statement: {e} ({})", code(&e))),
            }
            c.simple_query("select 1")
                .await
                .map_err(err("after cancel"))?;
        }
        Op::CopyIn => {
            use futures_util::SinkExt;
            let sink = c
                .copy_in::<_, bytes::Bytes>("copy soak_log (id, note) from stdin")
                .await
                .map_err(err("copy in"))?;
            futures_util::pin_mut!(sink);
            let mut data = String::new();
            for i in 0..200 {
                data.push_str(&format!("{}\trow {i}\n", key * 1000 + i));
            }
            sink.send(bytes::Bytes::from(data))
                .await
                .map_err(err("copy data"))?;
            let n = sink.finish().await.map_err(err("copy done"))?;
            if n != 200 {
                return Err(format!("copy in: {n} rows"));
            }
        }
        Op::CopyOut => {
            use futures_util::StreamExt;
            let stream = c
                .copy_out("copy (select g from generate_series(1, 5000) g) to stdout")
                .await
                .map_err(err("copy out"))?;
            futures_util::pin_mut!(stream);
            let mut bytes = 0usize;
            while let Some(chunk) = stream.next().await {
                bytes += chunk.map_err(err("copy out data"))?.len();
            }
            if bytes < 5000 {
                return Err(format!("copy out: {bytes} bytes"));
            }
        }
        Op::LargeResult => {
            let rows = c
                .query(
                    "select g, md5(g::text) from generate_series(1, 20000) g",
                    &[],
                )
                .await
                .map_err(err("large result"))?;
            if rows.len() != 20000 {
                return Err(format!("large result: {} rows", rows.len()));
            }
        }
        Op::CrossShard => {
            c.query_one("select count(*) from users", &[])
                .await
                .map_err(err("cross-shard count"))?;
        }
        Op::Disconnect => {
            // Leave mid-request: a long statement, then the connection is dropped.
            let pending = c.simple_query("select pg_sleep(1)");
            let _ = tokio::time::timeout(Duration::from_millis(50), pending).await;
            task.abort();
            let _ = cfg;
            return Ok(false);
        }
    }
    Ok(true)
}
