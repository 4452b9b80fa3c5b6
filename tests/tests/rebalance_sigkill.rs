//! A real `shardgate serve` process SIGKILLed at a rebalance failpoint, restarted, and the job
//! resumed to its end, while the reference workload writes through two other proxies sharing
//! the postgres topology store. Afterwards the store's map decides where every row must be:
//! each row on the shard the published map names, once, exactly what the workload's model says
//! (every acknowledged write present), and no slot, publication, subscription or fence left.
//!
//! The killed process is `target/debug/shardgate` built with the `failpoints` feature (this
//! crate's dev-dependency turns it on, so a workspace test build has it; alone:
//! `cargo build -p shardgate-proxy --features failpoints --bin shardgate`). Its environment has
//! `FAILPOINTS=<name>=return(kill)`: the process SIGKILLs itself there. The restarted process
//! (same proxy id, no FAILPOINTS) takes the job over at start.
//!
//! By default a handful of failpoints, 3 → 4; `SG_SIGKILL_ALL=1` runs every failpoint, 3 → 4
//! and 4 → 3. The table of outcomes is printed (`-- --nocapture`).
//!
//! The same harness drops the topology store's connections at a failpoint instead
//! (`FAILPOINTS=<name>=return(drop-store:<file>)`: the runner stops there until the test has
//! terminated every connection to the store database, then goes on without a restart): the job
//! must end as if nothing happened, with the same checks. Two such cases run in CI;
//! `SG_STORE_DROP_ALL=1` runs every failpoint that way (3 → 4).

#[allow(dead_code)]
#[path = "rebalance/env.rs"]
mod env;
#[allow(dead_code)]
#[path = "rebalance/verify.rs"]
mod verify;
#[allow(dead_code)]
#[path = "rebalance/workload.rs"]
mod workload;

use std::os::unix::process::ExitStatusExt;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use shardgate_admin::control::ControlPlane;
use shardgate_rebalance::Rebalancer;
use shardgate_router::Ring;
use shardgate_tests::ports::free_port;
use shardgate_tests::serve::{shardgate_bin, Serve};
use shardgate_tests::PgCluster;
use shardgate_topology::{Phase, Store};

use env::*;
use workload::{State, Workload, SCHEMA};

const TABLES: [&str; 2] = ["accounts", "events"];
/// Bound on each wait for the job (2 loaded cores run everything).
const JOB_TIMEOUT: Duration = Duration::from_secs(120);
/// Cases run at once. One: with two, the in-process proxies (which share this test's two
/// runtime threads with both cases' workloads) sometimes could not refresh their map within
/// their 3 s lease on this 2-core machine and answered 57P03, failing a workload task.
const PARALLEL_CASES: usize = 1;

/// One run: where the killed process dies, which way the shard count goes, and how it ends.
#[derive(Clone, Copy)]
struct Case {
    failpoint: &'static str,
    /// 4 → 3 (remove `s3`) rather than 3 → 4 (add `s3`).
    remove: bool,
    /// The committed move is aborted in cleanup (a revert) before the failpoint.
    revert: bool,
    /// The store's connections are dropped at the failpoint; the process is not killed.
    drop_store: bool,
    ends: Phase,
}

/// The failpoints a job meets before its publish (a kill there is undone).
const BEFORE_COMMIT: &[&str] = &[
    "rebalance-before-save-preparing",
    "rebalance-before-save-copying",
    "rebalance-mid-copy",
    "rebalance-before-save-catching_up",
    "rebalance-before-save-cutover",
    "rebalance-before-cutover",
    "rebalance-before-publish",
];

/// The revert path's failpoints (reached after an abort in cleanup).
const REVERT: &[&str] = &[
    "rebalance-before-save-aborting",
    "rebalance-revert-before-publish",
    "rebalance-revert-after-publish",
];

fn case(failpoint: &'static str, remove: bool) -> Case {
    let revert = REVERT.contains(&failpoint);
    let ends = if revert || BEFORE_COMMIT.contains(&failpoint) {
        Phase::Aborted
    } else {
        Phase::Done
    };
    Case {
        failpoint,
        remove,
        revert,
        drop_store: false,
        ends,
    }
}

/// The store's connections dropped at `failpoint`: the job goes on and finishes (a revert
/// case still ends aborted).
fn drop_case(failpoint: &'static str) -> Case {
    let revert = REVERT.contains(&failpoint);
    Case {
        failpoint,
        remove: false,
        revert,
        drop_store: true,
        ends: if revert { Phase::Aborted } else { Phase::Done },
    }
}

/// The CI cases of dropped store connections: while the job is about to publish the new map,
/// and after it did, before the sources' rows are deleted.
const CI_STORE_DROP: &[&str] = &["rebalance-before-publish", "rebalance-before-delete"];

/// The CI cases: one crash before the commit, four after it — the publish landed but its
/// reply was lost, the publish done but the cutover's verification not saved (both resume
/// without the dead runner's snapshots and prove the move by replication while the workload
/// writes the moved keys on their new owner), verification saved, mid-delete — and one in a
/// revert.
const CI: &[&str] = &[
    "rebalance-before-publish",
    "rebalance-publish-reply-lost",
    "rebalance-after-publish",
    "rebalance-after-verify",
    "rebalance-mid-delete",
    "rebalance-revert-after-publish",
];

fn cases() -> Vec<Case> {
    // `SG_SIGKILL_ONLY=<failpoint>[,<failpoint>…]`: those alone, 3 → 4 (to chase one case);
    // a name ending in `@remove` runs that failpoint 4 → 3, one ending in `@drop` drops the
    // store's connections there instead of killing the process.
    if let Ok(only) = std::env::var("SG_SIGKILL_ONLY") {
        let all = shardgate_rebalance::failpoints::NAMES;
        return only
            .split(',')
            .map(|name| {
                let name = name.trim();
                let (name, drop) = match name.strip_suffix("@drop") {
                    Some(n) => (n, true),
                    None => (name, false),
                };
                let (name, remove) = match name.strip_suffix("@remove") {
                    Some(n) => (n, true),
                    None => (name, false),
                };
                let f = all
                    .iter()
                    .find(|f| **f == name)
                    .unwrap_or_else(|| panic!("SG_SIGKILL_ONLY: no failpoint {name}"));
                if drop {
                    drop_case(f)
                } else {
                    case(f, remove)
                }
            })
            .collect();
    }
    let all = shardgate_rebalance::failpoints::NAMES;
    if std::env::var_os("SG_STORE_DROP_ALL").is_some_and(|v| v == "1") {
        return all.iter().map(|f| drop_case(f)).collect();
    }
    if std::env::var_os("SG_SIGKILL_ALL").is_some_and(|v| v == "1") {
        let mut out: Vec<Case> = all.iter().map(|f| case(f, false)).collect();
        out.extend(all.iter().map(|f| case(f, true)));
        out
    } else {
        let mut out: Vec<Case> = CI.iter().map(|f| case(f, false)).collect();
        out.extend(CI_STORE_DROP.iter().map(|f| drop_case(f)));
        out
    }
}

/// A background task that ends when this is dropped (also when a case panics).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls the job (through the in-process proxy `rb`) until `done`, failing fast (with the
/// workload's error) when a workload task stopped on an error.
async fn wait_job(
    rb: &Arc<Rebalancer>,
    load: &mut Option<Workload>,
    what: &str,
    mut done: impl FnMut(Phase) -> bool,
) -> shardgate_topology::Job {
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        if load.as_ref().is_some_and(|l| l.failure().is_some()) {
            let error = match load.take() {
                Some(l) => l.finish().await.err(),
                None => None,
            };
            panic!("a workload task stopped while waiting for {what}: {error:?}");
        }
        if let Ok(s) = rb.status().await {
            if let Some(job) = s.job.filter(|j| done(j.phase)) {
                return job;
            }
        }
        assert!(Instant::now() < deadline, "no {what} after {JOB_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run_case(c: Case) -> String {
    let started = Instant::now();
    let (clusters, meta) = tokio::join!(start_clusters(4), start_meta());
    let names = ["s0", "s1", "s2", "s3"];
    let (from, to): (&[&str], &[&str]) = if c.remove {
        (&names[..], &names[..3])
    } else {
        (&names[..3], &names[..])
    };
    let ring_from = Ring::new(from, BITS).expect("ring");
    for (i, cl) in clusters.iter().enumerate().take(from.len()) {
        let app = connect(&format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DB}",
            cl.port()
        ))
        .await;
        app.batch_execute(SCHEMA).await.expect("schema");
        app.batch_execute(&workload::load_sql(|e| ring_predicate(&ring_from, i, e)))
            .await
            .expect("load rows");
    }
    let in_config: Vec<&PgCluster> = clusters.iter().take(from.len()).collect();
    let topology = |id: &str| {
        format!(
            "store = \"{}\"\npoll_interval = \"200ms\"\nlease = \"3s\"\nproxy_id = \"{id}\"",
            store_url(&meta)
        )
    };
    let config = |id: &str| proxy_config(&in_config, &TABLES, &topology(id), "");

    // The process that runs the job and is killed.
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = free_port();
    let config_path = dir.path().join("shardgate.toml");
    let text = proxy_config_text(&in_config, &TABLES, &topology("proxy-killed"), "")
        + &format!(
            "\n[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken_env = \"SG_TEST_ADMIN_TOKEN\"\n"
        );
    std::fs::write(&config_path, text).expect("write config");
    let mark = dir.path().join("failpoint-reached");
    let spec = if c.drop_store {
        format!("{}=return(drop-store:{})", c.failpoint, mark.display())
    } else {
        format!("{}=return(kill)", c.failpoint)
    };
    let killed = {
        let p = config_path.clone();
        tokio::task::spawn_blocking(move || Serve::start(p, admin, Some(&spec)))
            .await
            .expect("join")
    };

    // The two proxies the workload goes through, in this process.
    let proxy_b = shardgate_proxy::start(config("proxy-b"))
        .await
        .expect("start proxy B");
    let proxy_c = shardgate_proxy::start(config("proxy-c"))
        .await
        .expect("start proxy C");
    let rb = proxy_b
        .control(None)
        .rebalancer()
        .expect("proxy B has a rebalancer");
    let v1 = rb.status().await.expect("status").topology_version;
    let mut load = Some(
        Workload::start(
            &[
                proxy_conn_str(proxy_b.addr().port()),
                proxy_conn_str(proxy_c.addr().port()),
            ],
            2,
        )
        .await,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A proxy still at v1 holds the cleanup long enough to abort the committed move, which
    // is then reverted. It reports until the abort is sent: a single report made before the
    // job starts may be older than the lease by the time a loaded machine reaches the cleanup,
    // which then does not wait for it (and the job ends done before the abort).
    let laggard = if c.revert {
        let store = Store::open(&config("laggard"), None)
            .await
            .expect("open the store");
        store.report_version("laggard", v1).await.expect("report");
        Some(AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = store.report_version("laggard", v1).await;
            }
        })))
    } else {
        None
    };
    let (status, body) = if c.remove {
        killed.api("DELETE", "/api/v1/shards/s3", "")
    } else {
        let body = serde_json::to_string(&add_request("s3", &clusters[3])).expect("json");
        killed.api("POST", "/api/v1/shards", &body)
    };
    assert!(
        (200..300).contains(&status),
        "{}: the job was refused: {status} {body}",
        c.failpoint
    );
    if c.revert {
        wait_job(&rb, &mut load, "cleanup", |p| p == Phase::Cleanup).await;
        rb.abort().await.expect("abort in cleanup");
    }
    // Silent from now on: the revert waits for it only up to its lease.
    drop(laggard);

    let (killed_in, restarted) = if c.drop_store {
        drop_store_at_failpoint(&c, &rb, &load, &meta, &mark).await;
        let phase = job_phase(&rb).await;
        (format!("store dropped in {phase}"), killed)
    } else {
        kill_and_restart(&c, &rb, &load, killed).await
    };
    let job = wait_job(&rb, &mut load, "the end of the job", Phase::is_terminal).await;
    let all: Vec<(&str, &PgCluster)> = names.iter().copied().zip(clusters.iter()).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcomes = match load.expect("the workload runs").finish().await {
        Ok(o) => o,
        Err(e) => panic!("{}: the workload failed: {e}", c.failpoint),
    };
    assert_eq!(
        job.phase, c.ends,
        "{}: job ended {} (error {:?})",
        c.failpoint, job.phase, job.error
    );

    // The published map decides where each row must be.
    let store = Store::open(&config("checker"), None)
        .await
        .expect("open the store");
    let map = store.shard_map().await.expect("shard map");
    let want_names = if c.ends == Phase::Done { to } else { from };
    assert_eq!(map.names(), want_names, "{}: published map", c.failpoint);
    let ring = Ring::new(map.names().as_slice(), BITS).expect("ring");
    let found = verify::read_all(&all, &ring).await;
    assert!(
        found.problems.is_empty(),
        "{}: rows misplaced or duplicated:\n{}",
        c.failpoint,
        verify::summary(&found.problems, 30)
    );
    let mut want = State::default();
    let (mut ops, mut retries, mut anomalies) = (0u64, 0u64, Vec::new());
    for o in outcomes {
        want.merge(o.state);
        ops += o.ops;
        retries += o.retries;
        anomalies.extend(o.anomalies);
    }
    let diff = verify::diff(&want, &found.state, 20);
    assert!(
        diff.is_empty(),
        "{}: the shards differ from the workload's model:\n{}",
        c.failpoint,
        diff.join("\n")
    );
    assert!(
        anomalies.is_empty(),
        "{}: unexpected row counts:\n{}",
        c.failpoint,
        verify::summary(&anomalies, 30)
    );
    assert!(ops > 0, "{}: the workload committed nothing", c.failpoint);
    assert_clean(&all, c.failpoint).await;

    drop(restarted);
    proxy_b.shutdown().await;
    proxy_c.shutdown().await;
    let mut clusters = clusters;
    clusters.push(meta);
    stop_clusters(clusters).await;
    format!(
        "{} at map v{} {:?} ({killed_in}); {ops} statements, {retries} retried; \
         rows placed, none lost; shards clean; {:.0?}",
        job.phase,
        map.version,
        map.names(),
        started.elapsed()
    )
}

/// The job's phase now, for the outcome table.
async fn job_phase(rb: &Arc<Rebalancer>) -> String {
    rb.status()
        .await
        .ok()
        .and_then(|s| s.job)
        .map(|j| j.phase.to_string())
        .unwrap_or_else(|| "no job".into())
}

/// Polls `reached` until it gives a value (the runner got to the failpoint), failing when a
/// workload task stopped or the job ended first.
async fn until_failpoint<T>(
    c: &Case,
    rb: &Arc<Rebalancer>,
    load: &Option<Workload>,
    mut reached: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        if let Some(v) = reached() {
            return v;
        }
        assert!(
            load.as_ref().is_some_and(|l| l.failure().is_none()),
            "{}: a workload task stopped before the failpoint",
            c.failpoint
        );
        if let Ok(s) = rb.status().await {
            if let Some(job) = s.job.filter(|j| j.phase.is_terminal()) {
                panic!(
                    "{}: the job ended {} before the failpoint: is {} built with the \
                     failpoints feature?",
                    c.failpoint,
                    job.phase,
                    shardgate_bin().display()
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "{}: the failpoint was not reached within {JOB_TIMEOUT:?}",
            c.failpoint
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the process to SIGKILL itself at the failpoint, then starts it again without
/// failpoints (it takes its job over at start). Returns the phase it died in and the new one.
async fn kill_and_restart(
    c: &Case,
    rb: &Arc<Rebalancer>,
    load: &Option<Workload>,
    killed: Serve,
) -> (String, Serve) {
    let mut killed = killed;
    let status = until_failpoint(c, rb, load, || killed.child.try_wait().expect("try_wait")).await;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{}: shardgate serve ended {status}, not by SIGKILL",
        c.failpoint
    );
    let killed_in = job_phase(rb).await;

    // Restarted without failpoints: it takes its job over at start.
    let restarted = {
        let (p, a) = (killed.config.clone(), killed.admin);
        drop(killed);
        tokio::task::spawn_blocking(move || Serve::start(p, a, None))
            .await
            .expect("join")
    };
    (format!("killed in {killed_in}"), restarted)
}

/// Waits for the runner to stop at the failpoint (it writes `mark`), terminates every
/// connection to the store's database (the runner's and the in-process proxies'), and lets
/// the runner go on (removes `mark`).
async fn drop_store_at_failpoint(
    c: &Case,
    rb: &Arc<Rebalancer>,
    load: &Option<Workload>,
    meta: &PgCluster,
    mark: &std::path::Path,
) {
    until_failpoint(c, rb, load, || mark.exists().then_some(())).await;
    let store = connect(&store_url(meta)).await;
    let dropped: i64 = store
        .query_one(
            "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity \
             where datname = current_database() and pid <> pg_backend_pid()) t",
            &[],
        )
        .await
        .expect("terminate the store's connections")
        .get(0);
    assert!(dropped > 0, "{}: no store connection to drop", c.failpoint);
    std::fs::remove_file(mark).expect("let the runner go on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_serve_resumes_to_undo_or_finish_under_load() {
    init_logs();
    let started = Instant::now();
    shardgate_bin();
    let mut table = Vec::new();
    let mut failed = Vec::new();
    // `PARALLEL_CASES` at a time (each has its own clusters, ports and processes).
    let mut runs =
        futures_util::stream::iter(cases().into_iter().enumerate().map(|(i, c)| async move {
            let dir = if c.remove { "4 → 3" } else { "3 → 4" };
            let how = if c.drop_store { ", store dropped" } else { "" };
            let name = format!("{} ({dir}{how})", c.failpoint);
            eprintln!("--- {name}");
            // Each case in its own task: a failed case is reported in the table, and the others
            // still run (its clusters and processes are dropped with the task).
            let outcome = tokio::spawn(run_case(c))
                .await
                .map_err(|e| match e.try_into_panic() {
                    Ok(p) => p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panicked".into()),
                    Err(e) => e.to_string(),
                });
            // As each case ends (the table follows at the end).
            match &outcome {
                Ok(o) => eprintln!("{name}: {o}"),
                Err(why) => eprintln!("{name}: FAILED: {}", why.lines().next().unwrap_or("")),
            }
            (i, name, outcome)
        }))
        .buffer_unordered(PARALLEL_CASES)
        .collect::<Vec<_>>()
        .await;
    // The table in the cases' order.
    runs.sort_by_key(|(i, _, _)| *i);
    for (_, name, outcome) in runs {
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(why) => {
                let first = format!("FAILED: {}", why.lines().next().unwrap_or(""));
                failed.push(format!("{name}: {why}"));
                first
            }
        };
        table.push((name, outcome));
    }
    let mut out = format!(
        "{:<46} | outcome\n{}+{}\n",
        "failpoint",
        "-".repeat(47),
        "-".repeat(60)
    );
    for (f, o) in &table {
        out.push_str(&format!("{f:<46} | {o}\n"));
    }
    eprintln!("{out}whole test {:?}", started.elapsed());
    assert!(failed.is_empty(), "failed cases:\n{}", failed.join("\n\n"));
}
