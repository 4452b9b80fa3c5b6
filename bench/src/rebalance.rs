//! `rebalance`: what a live shard add costs. Two shard primaries hold N rows of one sharded
//! table; an in-process shardgate routes two writer loops (one on keys that move to the new
//! shard, one on keys that stay) while the rebalancer adds a spare primary. Reports rows moved,
//! time, rows per second, the job's cutover pauses, and each writer's latency — the moving
//! keys' worst write during the cutover is the pause a client saw.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use shardgate_rebalance::AddShardRequest;
use shardgate_router::hash::hashint8extended;
use shardgate_router::Ring;
use shardgate_tests::{Auth, ClusterOptions, PgCluster};
use shardgate_topology::{Job, Phase};

use crate::{machine, report, stats, DB, PASSWORD, USER};

#[derive(Args, Clone)]
pub struct RebalanceArgs {
    /// Rows in the sharded table before the move (about a third of them move).
    #[arg(long, default_value_t = 1_000_000)]
    rows: i64,
    /// Longest the move may take.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// Where to record the results (the `rebalance` section is replaced).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/RESULTS.md"))]
    results: PathBuf,
    /// Print the table only; leave the results file alone.
    #[arg(long)]
    no_write: bool,
}

const BITS: u32 = 14;
const SCHEMA: &str = "create table items (user_id bigint primary key, n bigint not null, \
                      payload text not null)";

/// One write: when it started (since the job started) and how long it took.
#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    micros: u64,
}

/// Everything the clusters and the proxy need, stopped on drop (clusters) or explicitly.
struct Setup {
    shards: Vec<PgCluster>,
    spare: PgCluster,
}

pub async fn run(args: RebalanceArgs) -> anyhow::Result<()> {
    if args.rows < 1000 {
        bail!("--rows must be at least 1000");
    }
    let started = Instant::now();
    let load_before = machine::load_average();
    eprintln!("starting 2 shard primaries and a spare");
    let setup = tokio::task::spawn_blocking(start_clusters).await??;
    let result = measure(&args, &setup).await;
    // Stop the servers whatever happened (drop runs pg_ctl; keep it off the async threads).
    tokio::task::spawn_blocking(move || drop(setup)).await.ok();
    let (table, job) = result?;
    println!("{table}");
    if !args.no_write {
        let section = render_section(&args, &table, &job, started.elapsed(), load_before);
        let doc =
            report::replace_section(&crate::load_results(&args.results), "rebalance", &section);
        std::fs::write(&args.results, doc)
            .with_context(|| format!("write {}", args.results.display()))?;
        eprintln!("recorded in {}", args.results.display());
    }
    Ok(())
}

fn start_clusters() -> anyhow::Result<Setup> {
    let start = || -> anyhow::Result<PgCluster> {
        let c = PgCluster::start(ClusterOptions::default().user(USER, PASSWORD, Auth::Scram))?;
        c.create_database(DB, USER)?;
        c.psql_as(USER, PASSWORD, DB, SCHEMA)?;
        Ok(c)
    };
    // The spare gets the (empty) table too: the schema copy would create it as the admin login,
    // without the application's rights.
    Ok(Setup {
        shards: vec![start()?, start()?],
        spare: start()?,
    })
}

use crate::servers::connect_as as connect;

fn proxy_config(setup: &Setup) -> anyhow::Result<shardgate_config::Config> {
    let mut text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\nshutdown_timeout = \"2s\"\n\n\
         [pool]\nmode = \"transaction\"\nsize = 8\n\n\
         [rebalance]\ndatabases = [\"{DB}\"]\nadmin_user = \"postgres\"\n\
         admin_password = \"postgres\"\n\n\
         [[users]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n\n\
         [[sharding.tables]]\nname = \"items\"\n"
    );
    for (i, c) in setup.shards.iter().enumerate() {
        text.push_str(&format!(
            "\n[[shards]]\nname = \"s{i}\"\nprimary = {{ host = \"127.0.0.1\", port = {} }}\n",
            c.port()
        ));
    }
    Ok(shardgate_config::Config::from_toml(
        &text,
        Path::new("bench-rebalance.toml"),
    )?)
}

async fn measure(args: &RebalanceArgs, setup: &Setup) -> anyhow::Result<(String, Job)> {
    let ring2 = Ring::new(&["s0", "s1"], BITS)?;
    let ring3 = Ring::new(&["s0", "s1", "s2"], BITS)?;
    let t = Instant::now();
    for (i, c) in setup.shards.iter().enumerate() {
        let pred = ring2.predicate(i, "hashint8extended(g::int8, 0)");
        connect(c.port(), USER, PASSWORD)
            .await?
            .batch_execute(&format!(
                "insert into items select g, 0, repeat('x', 100) \
                 from generate_series(1, {}) g where {pred}; analyze items",
                args.rows
            ))
            .await
            .context("loading rows")?;
    }
    eprintln!("loaded {} rows in {:.1?}", args.rows, t.elapsed());

    let proxy = shardgate_proxy::start(proxy_config(setup)?).await?;
    let port = proxy.addr().port();
    let rb = shardgate_admin::control::ControlPlane::rebalancer(&*proxy.control(None))
        .context("the proxy has no rebalancer")?;
    let moves = |k: &i64| ring3.shard_for_hash(hashint8extended(*k, 0)) == 2;
    let moving: Vec<i64> = (1..=args.rows).filter(moves).take(2000).collect();
    let staying: Vec<i64> = (1..=args.rows).filter(|k| !moves(k)).take(2000).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut writers = Vec::new();
    for keys in [moving, staying] {
        let client = connect(port, USER, PASSWORD).await?;
        let stop = Arc::clone(&stop);
        writers.push(tokio::spawn(writer(client, keys, stop, t0)));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    eprintln!("adding the spare as s2");
    let job = rb
        .add_shard(AddShardRequest {
            name: "s2".into(),
            primary: format!(
                "postgres://postgres:postgres@127.0.0.1:{}",
                setup.spare.port()
            ),
            replicas: Vec::new(),
            admin_user: None,
            admin_password: None,
        })
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "add_shard refused ({}): {} ({})",
                e.status,
                e.message,
                e.hint
            )
        })?;
    let job_start = t0.elapsed();
    // The cutover window as seen by polling: from the first look at Cutover to the first look
    // past it.
    let (mut cut_from, mut cut_to) = (None, None);
    let mut copying_from = None;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut last_message = String::new();
    let done = loop {
        let s = rb
            .status()
            .await
            .map_err(|e| anyhow::anyhow!("status: {}", e.message))?;
        let Some(j) = s.job.filter(|j| j.id == job.id) else {
            bail!("the job disappeared from the store");
        };
        let now = t0.elapsed();
        match j.phase {
            Phase::Copying => {
                copying_from.get_or_insert(now);
            }
            Phase::Cutover => {
                cut_from.get_or_insert(now);
            }
            p if p > Phase::Cutover && cut_from.is_some() => {
                cut_to.get_or_insert(now);
            }
            _ => {}
        }
        if j.progress.message != last_message {
            eprintln!(
                "  {:>6.1}s {}: {}",
                now.as_secs_f64(),
                j.phase,
                j.progress.message
            );
            last_message = j.progress.message.clone();
        }
        if j.phase.is_terminal() {
            break j;
        }
        if Instant::now() > deadline {
            bail!(
                "the move did not finish within {} s: {}",
                args.timeout_secs,
                j.progress.message
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let job_time = t0.elapsed() - job_start;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for w in writers {
        samples.push(w.await.context("writer panicked")??);
    }
    proxy.shutdown().await;
    if done.phase != Phase::Done {
        bail!(
            "the job ended {}: {}",
            done.phase,
            done.error.unwrap_or_default()
        );
    }

    let moved = done.progress.rows_copied;
    // Writes that started in the window (plus the fence wait before it was seen) are the ones
    // the fence could hold.
    let window = match (cut_from, cut_to) {
        (Some(a), Some(b)) => Some((a.saturating_sub(Duration::from_millis(50)), b)),
        _ => None,
    };
    let in_window = |s: &Sample| window.is_some_and(|(a, b)| s.at >= a && s.at <= b);
    let during = |s: &Sample| s.at >= job_start && s.at <= job_start + job_time;
    let cut_max = samples[0]
        .iter()
        .filter(|s| in_window(s))
        .map(|s| s.micros)
        .max();
    let mut rows = vec![
        (
            "rows moved".to_string(),
            format!("{moved} (of {} estimated)", done.progress.rows_estimated),
        ),
        (
            "total time".into(),
            format!("{:.1} s (add_shard to Done)", job_time.as_secs_f64()),
        ),
        (
            "rows per second".into(),
            format!("{:.0}", moved as f64 / job_time.as_secs_f64().max(1e-9)),
        ),
        (
            "cutover pauses (job)".into(),
            done.progress
                .cutover_pauses_ms
                .iter()
                .map(|p| format!("{p:.1} ms"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "moving keys: max write during cutover".into(),
            cut_max.map_or("no write in the window".into(), |m| {
                format!("{:.1} ms", m as f64 / 1000.0)
            }),
        ),
    ];
    for (name, s) in [("moving keys", &samples[0]), ("other keys", &samples[1])] {
        let mut micros: Vec<u64> = s.iter().filter(|s| during(s)).map(|s| s.micros).collect();
        micros.sort_unstable();
        let ms = |p: f64| {
            stats::percentile_sorted(&micros, p)
                .map_or("–".into(), |m| format!("{:.2}", m as f64 / 1000.0))
        };
        rows.push((
            format!("{name}: writes p50 / p99 / max (ms)"),
            format!(
                "{} / {} / {} ({} writes)",
                ms(50.0),
                ms(99.0),
                ms(100.0),
                micros.len()
            ),
        ));
    }
    let width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let vwidth = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    let mut table = format!("| {:width$} | {:vwidth$} |\n", "measure", "value");
    table.push_str(&format!(
        "| {} | {} |\n",
        "-".repeat(width),
        "-".repeat(vwidth)
    ));
    for (k, v) in &rows {
        table.push_str(&format!("| {k:width$} | {v:vwidth$} |\n"));
    }
    Ok((table, done))
}

/// Updates `keys` round robin through the proxy (simple protocol: a fenced statement is held
/// and retried by the proxy, so its latency is the pause), until `stop`.
async fn writer(
    client: tokio_postgres::Client,
    keys: Vec<i64>,
    stop: Arc<AtomicBool>,
    t0: Instant,
) -> anyhow::Result<Vec<Sample>> {
    let mut out = Vec::new();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let k = keys[i % keys.len()];
        i += 1;
        let at = t0.elapsed();
        let sql = format!("update items set n = n + 1 where user_id = {k}");
        // A 40001 (the proxy could not hold the statement) is retried; the pause includes it.
        let mut tries = 0;
        loop {
            match client.simple_query(&sql).await {
                Ok(_) => break,
                Err(e) if e.code().is_some_and(|c| c.code() == "40001") && tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => bail!("write to key {k} failed: {e}"),
            }
        }
        out.push(Sample {
            at,
            micros: (t0.elapsed() - at).as_micros() as u64,
        });
    }
    Ok(out)
}

fn render_section(
    args: &RebalanceArgs,
    table: &str,
    job: &Job,
    elapsed: Duration,
    load_before: Option<f64>,
) -> String {
    let load = |l: Option<f64>| l.map_or("?".into(), |l| format!("{l:.2}"));
    let mut s = String::from("## Live rebalance: adding a shard under writes\n\n");
    s.push_str(&format!("- Date: {}\n", machine::now_utc()));
    s.push_str(&format!(
        "- Machine: {} CPUs ({}), {} GiB RAM, Linux {}; shared (1-minute load average {} at \
         the start, {} at the end)\n",
        machine::nproc(),
        machine::cpu_model(),
        machine::mem_gib().map_or("?".into(), |g| format!("{g:.0}")),
        machine::kernel(),
        load(load_before),
        load(machine::load_average()),
    ));
    s.push_str(&format!(
        "- Command: `cargo run -p bench --release -- rebalance --rows {}` ({:.1} min in all), \
         shardgate {}\n",
        args.rows,
        elapsed.as_secs_f64() / 60.0,
        machine::git_rev(&crate::shardgate::workspace_root())
    ));
    s.push_str(&format!(
        "- Setup: 2 shard primaries with {} rows of `items(user_id bigint primary key, n bigint, \
         payload text)` (100-byte payloads), a spare primary added as s2 (job {}, {} moves); \
         shardgate in process, transaction pooling; two writers through it during the move, \
         `UPDATE … WHERE user_id = k` in the simple protocol, one over 2,000 keys that move to \
         s2 and one over 2,000 that stay. All on 127.0.0.1, PostgreSQL with fsync off.\n\n",
        args.rows,
        job.id,
        job.progress.moves.len()
    ));
    s.push_str(table);
    s.push_str(
        "\nLatencies cover the writes issued between `add_shard` and Done. \"Max write during \
         cutover\" is the slowest moving-key write that started within 50 ms before the job was \
         first seen in cutover and before it was first seen past it: the pause a client saw.\n",
    );
    s
}
