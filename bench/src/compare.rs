//! `compare`: pgbench against a direct connection, PgBouncer and shardgate, interleaved and
//! repeated, reported as ratios within the run (the table on stdout and the `compare` section
//! of `bench/RESULTS.md`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use shardgate_tests::{Auth, ClusterOptions, PgCluster};

use crate::cases::{self, Case, Workload};
use crate::report::{self, Outcome, Row, Run};
use crate::service::{self, Service};
use crate::stats::Latency;
use crate::targets::{skip_reason, Kind, Target};
use crate::{
    floor, idle, load_results, machine, pgbench_base_args, pgbench_init, pgbench_log, pgbouncer,
    procfs, run_pgbench, shardgate, syscalls, DB, PASSWORD, USER,
};

#[derive(Args, Clone)]
pub struct CompareArgs {
    /// shardgate's `RUST_LOG`: its own default (`info`, which enables each session's span:
    /// entered and left at every poll), or e.g. `warn` to leave that cost out.
    #[arg(long, default_value = shardgate::DEFAULT_LOG)]
    log: String,
    /// Seconds per pgbench run.
    #[arg(long, default_value_t = 8)]
    seconds: u32,
    /// Runs per target and case (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: u32,
    /// Server pool size of both proxies (PgBouncer default_pool_size, shardgate pool.size).
    #[arg(long, default_value_t = 20)]
    pool: u32,
    /// Cases to run (default: all). A filter picks every case whose name has all its
    /// `-`-separated words: `select-c64`, `prepared`, `tpcb`, `idle-5000`, `select-simple-c1`.
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Client counts of the `-S` cases.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<u32>,
    /// Idle client counts of the connection-scale cases.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    idle: Vec<u32>,
    /// Active pgbench clients during the connection-scale cases.
    #[arg(long, default_value_t = 8)]
    idle_active: u32,
    /// Targets to run: `direct`, `pgbouncer`, `shardgate` (with `sg-baseline`, `sg-sharded`
    /// and `sg-N-shards` from their options), and `floor`, the least a tokio pooler does.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,pgbouncer,shardgate"
    )]
    targets: Vec<String>,
    /// pgbench scale factor (100,000 accounts per unit).
    #[arg(long, default_value_t = 10)]
    scale: u32,
    /// Also run the -S cases through a shardgate routing pgbench_accounts by aid over this
    /// many shards (each shard a PostgreSQL of its own holding the full data set).
    #[arg(long, default_value_t = 1)]
    shards: u32,
    /// Also run a shardgate that shards pgbench_accounts by aid even with `--shards 1` (every
    /// statement is planned and routed by its key, on one server): the routing cost against
    /// the plain pooler. With one shard it runs TPC-B too.
    #[arg(long)]
    sharded: bool,
    /// Use this shardgate binary instead of building the release one.
    #[arg(long)]
    shardgate_bin: Option<PathBuf>,
    /// Also run this (older) shardgate binary as target `sg-baseline`, interleaved with the
    /// others in the same run: a data-path change's before/after ratio.
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    /// Where to record the results (the `compare` section is replaced).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/RESULTS.md"))]
    results: PathBuf,
    /// Print the table only; leave the results file alone.
    #[arg(long)]
    no_write: bool,
    /// Count each proxy's system calls and context switches per transaction (`perf stat` on
    /// its PID; needs perf, run as root). The counting costs each syscall a little.
    #[arg(long)]
    syscalls: bool,
}

/// One measured pgbench run of `case` against `target`.
async fn measure(
    case: &Case,
    target: &Target,
    seconds: u32,
    log_prefix: &Path,
    count_syscalls: bool,
) -> anyhow::Result<Run> {
    let mut args = case.pgbench_args();
    args.extend(pgbench_base_args(target.port));
    args.extend([
        "-T".to_string(),
        seconds.to_string(),
        "-l".to_string(),
        format!("--log-prefix={}", log_prefix.display()),
        DB.to_string(),
    ]);
    let counter = match target.pid {
        Some(pid) if count_syscalls => Some(syscalls::Counter::start(
            pid,
            &log_prefix.with_extension("perf"),
        )?),
        _ => None,
    };
    let cpu_before = target.pid.and_then(procfs::cpu_time);
    let machine_before = procfs::machine_time();
    let result = run_pgbench(args).await;
    let cpu_after = target.pid.and_then(procfs::cpu_time);
    let machine = procfs::machine_time()
        .zip(machine_before)
        .map(|(after, before)| before.until(after));
    let counts = counter.map(syscalls::Counter::finish).transpose()?;
    let rss = target.pid.and_then(procfs::rss_kib);
    let anon = target.pid.and_then(procfs::rss_anon_kib);
    let mut latencies = pgbench_log::collect_and_remove(log_prefix)
        .with_context(|| format!("reading pgbench logs {}.*", log_prefix.display()))?;
    let result = result?;
    if result.exit_code != 0 || result.failed > 0 {
        let stderr: String = result
            .stderr
            .lines()
            .take(5)
            .collect::<Vec<_>>()
            .join(" / ");
        bail!(
            "pgbench exit {} with {} failed transactions: {stderr}",
            result.exit_code,
            result.failed
        );
    }
    let proxy_cpu = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) => Some(before.until(after)),
        _ => None,
    };
    Ok(Run {
        tps: result.tps,
        transactions: result.transactions,
        latency: Latency::from_micros(&mut latencies),
        proxy_cpu,
        proxy_rss_kib: rss,
        proxy_anon_kib: anon,
        counts,
        machine,
    })
}

struct Cell {
    runs: Vec<Run>,
    failed: Option<String>,
    skipped: Option<String>,
    note: String,
}

pub async fn run(args: CompareArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let cases: Vec<Case> = cases::all_cases(&args.clients, &args.idle, args.idle_active)
        .into_iter()
        .filter(|c| cases::selected(&c.name, &args.cases))
        .collect();
    if cases.is_empty() {
        bail!("--cases {:?} selects no case", args.cases);
    }
    let want = |t: &str| args.targets.iter().any(|x| x.trim() == t);
    let max_idle = cases
        .iter()
        .filter_map(|c| match c.workload {
            Workload::Idle { idle } => Some(idle),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let proxies =
        u64::from(want("pgbouncer")) + u64::from(want("shardgate")) + u64::from(want("floor"));
    // The benchmark holds every idle connection on every proxy at once.
    let fd_limit = service::raise_nofile_limit(proxies * u64::from(max_idle) + 2048);
    let load_start = machine::load_average();

    let shardgate_bin = if want("shardgate") {
        Some(match &args.shardgate_bin {
            Some(p) => p.clone(),
            None => tokio::task::spawn_blocking(shardgate::build_release_binary).await??,
        })
    } else {
        None
    };
    // The tree as it was compiled (other people's uncommitted work shows as -dirty).
    let shardgate_rev = machine::git_rev(&shardgate::workspace_root());
    let build_time = started.elapsed();
    let started = Instant::now();

    // PostgreSQL: room for the largest direct run plus every proxy's pool.
    let max_clients = cases.iter().map(|c| c.clients).max().unwrap_or(1);
    let shards = args.shards.max(1);
    let extra_pools = u32::from(args.sharded) + u32::from(args.baseline_bin.is_some());
    let max_connections = max_clients + args.pool * (3 + extra_pools) + 40;
    eprintln!(
        "starting PostgreSQL ({shards} server(s)) and loading pgbench data (scale {})",
        args.scale
    );
    let clusters = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<PgCluster>> {
        (0..shards)
            .map(|_| {
                let c = PgCluster::start(
                    ClusterOptions::default()
                        .max_connections(max_connections)
                        .user(USER, PASSWORD, Auth::Scram),
                )?;
                c.create_database(DB, USER)?;
                Ok(c)
            })
            .collect()
    })
    .await??;
    let ports: Vec<u16> = clusters.iter().map(|c| c.port()).collect();
    for port in &ports {
        pgbench_init(*port, args.scale).await?;
    }
    let postgres_version = clusters[0]
        .psql("postgres", "show server_version")
        .unwrap_or_else(|_| "unknown".into());

    let mut notes: Vec<String> = Vec::new();
    let mut targets = Vec::new();
    if want("direct") {
        targets.push(Target {
            name: "direct".into(),
            kind: Kind::Direct,
            port: ports[0],
            pid: None,
            shards: 1,
        });
    }
    let max_client_conn = max_idle + max_clients + 500;
    let mut pgbouncer_bin = None;
    let mut pgbouncer_service: Option<Service> = None;
    if want("pgbouncer") {
        match pgbouncer::locate_or_install() {
            Ok(bin) => {
                let secret = clusters[0]
                    .psql(
                        "postgres",
                        &format!("select rolpassword from pg_authid where rolname = '{USER}'"),
                    )
                    .context("reading the SCRAM verifier for PgBouncer's userlist")?;
                let b = bin.clone();
                let port = ports[0];
                let svc = tokio::task::spawn_blocking(move || {
                    pgbouncer::start(
                        &b,
                        USER,
                        secret.trim(),
                        DB,
                        port,
                        args.pool,
                        max_client_conn,
                    )
                })
                .await??;
                targets.push(Target::proxy("pgbouncer", Kind::PgBouncer, &svc, 1));
                if !bin.supports_prepared() {
                    notes.push(format!(
                        "PgBouncer {} predates max_prepared_statements (1.21): its `-M prepared` \
                         cells are skipped (without it, in transaction mode a client's prepared \
                         statement exists only on the server connection that prepared it).",
                        bin.version_string()
                    ));
                }
                pgbouncer_service = Some(svc);
                pgbouncer_bin = Some(bin);
            }
            Err(e) => {
                let msg = format!("PgBouncer unavailable, its columns are skipped: {e:#}");
                eprintln!("NOTICE: {msg}");
                notes.push(msg);
            }
        }
    }
    let mut proxy_services: Vec<Service> = Vec::new();
    if want("floor") {
        let (port, pool) = (ports[0], args.pool);
        let svc = tokio::task::spawn_blocking(move || floor::start(port, pool)).await??;
        targets.push(Target::proxy("floor", Kind::Floor, &svc, 1));
        notes.push(
            "floor: the least a transaction pooler on tokio does (bench/src/floor.rs), as a \
             measuring stick for the runtime's and the socket calls' share of the CPU."
                .into(),
        );
        proxy_services.push(svc);
    }
    if let Some(bin) = &shardgate_bin {
        let settings = shardgate::Settings {
            port: 0,
            admin_port: 0,
            user: USER.into(),
            password: PASSWORD.into(),
            pool_size: args.pool,
            max_client_connections: max_client_conn.max(10_000),
            shards: ports[..1].to_vec(),
            sharded: false,
            log: args.log.clone(),
        };
        let mut proxies = vec![(bin.clone(), settings.clone(), "shardgate".to_owned())];
        if let Some(base) = &args.baseline_bin {
            proxies.push((base.clone(), settings.clone(), "sg-baseline".to_owned()));
        }
        if shards > 1 || args.sharded {
            let routed = shardgate::Settings {
                shards: ports.clone(),
                sharded: true,
                ..settings
            };
            let name = if shards == 1 {
                "sg-sharded".into()
            } else {
                format!("sg-{shards}-shards")
            };
            proxies.push((bin.clone(), routed, name));
        }
        for (bin, settings, name) in proxies {
            let (kind, shards) = if settings.sharded {
                (Kind::Routed, shards)
            } else {
                (Kind::Shardgate, 1)
            };
            let label = name.clone();
            let svc = tokio::task::spawn_blocking(move || shardgate::start(&bin, settings, &label))
                .await??;
            targets.push(Target::proxy(name, kind, &svc, shards));
            proxy_services.push(svc);
        }
    }
    if targets.is_empty() {
        bail!("no target to run (--targets {:?})", args.targets);
    }

    let log_dir = tempfile::Builder::new()
        .prefix("shardgate-bench-logs-")
        .tempdir_in(shardgate_tests::template::temp_base())
        .context("creating a directory for pgbench logs")?;

    // Warm-up: open the pools, fill the caches; not measured.
    for t in &targets {
        let mut a = vec![
            "-S".to_string(),
            "-c".into(),
            "4".into(),
            "-j".into(),
            "2".into(),
        ];
        a.extend(pgbench_base_args(t.port));
        a.extend(["-T".into(), "2".into(), DB.into()]);
        run_pgbench(a)
            .await
            .with_context(|| format!("warm-up against {}", t.name))?;
    }

    let total_runs: usize = cases
        .iter()
        .map(|c| {
            targets
                .iter()
                .filter(|t| skip_reason(c, t, pgbouncer_bin.as_ref()).is_none())
                .count()
        })
        .sum::<usize>()
        * args.repeats as usize;
    eprintln!(
        "{} cases × {} targets, {} runs of {} s (about {} min of pgbench)",
        cases.len(),
        targets.len(),
        total_runs,
        args.seconds,
        (total_runs as u64 * u64::from(args.seconds)).div_ceil(60)
    );

    let mut rows = Vec::new();
    let mut done = 0usize;
    for case in &cases {
        let mut cells: Vec<Cell> = targets
            .iter()
            .map(|t| Cell {
                runs: Vec::new(),
                failed: None,
                skipped: skip_reason(case, t, pgbouncer_bin.as_ref()),
                note: String::new(),
            })
            .collect();
        // Connection scale: hold the idle clients on every proxy for the whole case.
        let mut held = Vec::new();
        if let Workload::Idle { idle } = case.workload {
            let needed = proxies * u64::from(idle) + 1024;
            for (t, cell) in targets.iter().zip(cells.iter_mut()) {
                if t.kind == Kind::Direct {
                    cell.note = "no idle clients (PostgreSQL's max_connections)".into();
                    continue;
                }
                if cell.skipped.is_some() {
                    continue;
                }
                if fd_limit < needed {
                    cell.skipped = Some(format!("open-file limit {fd_limit} < {needed}"));
                    continue;
                }
                let rss_before = t.pid.and_then(procfs::rss_kib);
                eprintln!(
                    "{}: logging in {idle} idle clients to {}",
                    case.name, t.name
                );
                match idle::open(t.port, USER, PASSWORD, DB, idle, 64).await {
                    Ok(clients) => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let rss_idle = t.pid.and_then(procfs::rss_kib);
                        cell.note = format!(
                            "{idle} logins in {:.1} s; RSS {} → {} MiB with them idle",
                            clients.connect_time.as_secs_f64(),
                            mib(rss_before),
                            mib(rss_idle)
                        );
                        held.push(clients);
                    }
                    Err(e) => cell.failed = Some(format!("{e:#}")),
                }
            }
        }
        for r in 0..args.repeats {
            for (t, cell) in targets.iter().zip(cells.iter_mut()) {
                if cell.skipped.is_some() || cell.failed.is_some() {
                    continue;
                }
                done += 1;
                let prefix = log_dir.path().join(format!("run-{done}"));
                match measure(case, t, args.seconds, &prefix, args.syscalls).await {
                    Ok(run) => {
                        eprintln!(
                            "[{done}/{total_runs} {:.1} min] {} {} run {}/{}: {:.0} tps{}",
                            started.elapsed().as_secs_f64() / 60.0,
                            case.name,
                            t.name,
                            r + 1,
                            args.repeats,
                            run.tps,
                            run.latency
                                .map(|l| format!(", p99 {:.3} ms", l.p99_ms))
                                .unwrap_or_default()
                        );
                        cell.runs.push(run);
                    }
                    Err(e) => {
                        eprintln!(
                            "[{done}/{total_runs}] {} {} FAILED: {e:#}",
                            case.name, t.name
                        );
                        cell.failed = Some(format!("{e:#}"));
                    }
                }
            }
            check_alive(pgbouncer_service.as_mut(), &mut proxy_services)?;
        }
        for clients in &held {
            if clients.closed() > 0 {
                notes.push(format!(
                    "{}: {} of {} idle connections were closed during the case",
                    case.name,
                    clients.closed(),
                    clients.len()
                ));
            }
        }
        drop(held);
        for (t, cell) in targets.iter().zip(cells) {
            let outcome = if let Some(why) = cell.skipped {
                Outcome::Skipped(why)
            } else if let Some(why) = cell.failed {
                Outcome::Failed(first_line(&why, 120))
            } else {
                match report::summarize(&cell.runs) {
                    Some(s) => Outcome::Measured(s),
                    None => Outcome::Skipped("no runs".into()),
                }
            };
            rows.push(Row {
                case: case.name.clone(),
                target: t.name.clone(),
                outcome,
                vs_direct: None,
                vs_pgbouncer: None,
                note: cell.note,
            });
        }
        // Let the idle clients' disconnections settle before the next case.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    report::add_ratios(&mut rows, "direct", "pgbouncer");
    let table = report::render_table(&rows);
    println!();
    println!("{table}");
    for n in &notes {
        println!("- {n}");
    }

    let load_end = machine::load_average();
    if !args.no_write {
        let info = RunInfo {
            args: &args,
            cases: &cases,
            postgres_version: postgres_version.trim().to_string(),
            pgbouncer_version: pgbouncer_bin.as_ref().map(|b| b.version_string()),
            shardgate_rev,
            load: (load_start, load_end),
            elapsed: started.elapsed(),
            build_time,
        };
        let section = render_compare_section(&info, &table, &notes);
        let doc = load_results(&args.results);
        std::fs::write(
            &args.results,
            report::replace_section(&doc, "compare", &section),
        )
        .with_context(|| format!("writing {}", args.results.display()))?;
        eprintln!("results written to {}", args.results.display());
    }

    drop(pgbouncer_service);
    drop(proxy_services);
    tokio::task::spawn_blocking(move || drop(clusters)).await?;
    eprintln!("done in {:.1} min", started.elapsed().as_secs_f64() / 60.0);
    Ok(())
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    let mut out: String = line.chars().take(max).collect();
    if line.chars().count() > max {
        out.push('…');
    }
    out.replace('|', "/")
}

/// Fails when a proxy died during the benchmark (its figures would be meaningless).
fn check_alive(pgbouncer: Option<&mut Service>, others: &mut [Service]) -> anyhow::Result<()> {
    for svc in pgbouncer.into_iter().chain(others.iter_mut()) {
        if !svc.is_running() {
            bail!(
                "{} exited during the benchmark:\n{}",
                svc.name(),
                svc.log_tail(30)
            );
        }
    }
    Ok(())
}

struct RunInfo<'a> {
    args: &'a CompareArgs,
    cases: &'a [Case],
    postgres_version: String,
    pgbouncer_version: Option<String>,
    shardgate_rev: String,
    load: (Option<f64>, Option<f64>),
    elapsed: Duration,
    build_time: Duration,
}

fn render_compare_section(info: &RunInfo<'_>, table: &str, notes: &[String]) -> String {
    let a = info.args;
    let command: Vec<String> = std::env::args().skip(1).collect();
    let load = |l: Option<f64>| l.map_or("?".into(), |l| format!("{l:.2}"));
    let mut s = String::new();
    s.push_str("## pgbench: direct vs PgBouncer vs shardgate\n\n");
    s.push_str(&format!("- Date: {}\n", machine::now_utc()));
    s.push_str(&format!(
        "- Machine: {} CPUs ({}), {} GiB RAM, Linux {}; 1-minute load average {} at the start, \
         {} at the end (the run's own servers, proxies and pgbench count in it, and the machine \
         may be shared), so absolute figures are noisy; compare the ratios within this run.\n",
        machine::nproc(),
        machine::cpu_model(),
        machine::mem_gib().map_or("?".into(), |g| format!("{g:.0}")),
        machine::kernel(),
        load(info.load.0),
        load(info.load.1),
    ));
    s.push_str(&format!(
        "- Versions: PostgreSQL {}, PgBouncer {}, shardgate {} (release build), {}\n",
        info.postgres_version,
        info.pgbouncer_version.as_deref().unwrap_or("not run"),
        info.shardgate_rev,
        machine::program_version(
            &shardgate_tests::pg_bin("pgbench").unwrap_or_else(|_| "pgbench".into())
        ),
    ));
    s.push_str(&format!(
        "- Command: `cargo run -p bench --release -- {}`: {:.1} min of benchmark (after {:.1} \
         min building the shardgate binary)\n",
        command.join(" "),
        info.elapsed.as_secs_f64() / 60.0,
        info.build_time.as_secs_f64() / 60.0
    ));
    s.push_str(&format!(
        "- Setup: transaction pooling, pool size {} in both proxies (PgBouncer \
         `default_pool_size`, shardgate `pool.size`), SCRAM-SHA-256 logins, everything on \
         127.0.0.1; pgbench scale {}, `-T {}` per run, {} repeats interleaved (each target in \
         turn, then again), `-j 2` (`-j 1` at `-c 1`), per-transaction logs (`-l`) for latency; \
         shardgate logs with `RUST_LOG={}` (`info` is its default).\n",
        a.pool, a.scale, a.seconds, a.repeats, a.log
    ));
    s.push_str(&format!(
        "- Cases: {}\n\n",
        info.cases
            .iter()
            .map(|c| format!("`{}` ({})", c.name, c.describe()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    s.push_str(table);
    s.push_str(
        "\nColumns: TPS is the median over repeats (pgbench's \"without initial connection \
         time\"); ×direct and ×pgbouncer divide it by the same case's direct and PgBouncer TPS; \
         avg and p99 are per-transaction latencies from the pgbench logs (median over \
         repeats); CPU µs/tx is the proxy process's utime+stime (/proc/PID/stat) during the \
         run divided by its transactions (it includes the clients' logins), and in parentheses \
         its utime alone (the proxy's own code; the rest is the kernel's work in its \
         syscalls); machine µs/tx is the busy time of all cores (/proc/stat: pgbench, \
         PostgreSQL and the proxy together) per transaction, and in parentheses the machine's \
         context switches per transaction; RSS is the \
         proxy's VmRSS after a run (largest over repeats). In `idle-N` cases N clients log in \
         to each proxy and stay connected (idle) while pgbench runs; the direct row there is \
         the same pgbench with no idle clients.\n",
    );
    if !notes.is_empty() {
        s.push('\n');
        for n in notes {
            s.push_str(&format!("- {n}\n"));
        }
    }
    s
}
