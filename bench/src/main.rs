//! Benchmarks that compare shardgate with a direct connection to PostgreSQL and with PgBouncer,
//! side by side in one run, reported as ratios (the machines are shared and noisy, so absolute
//! figures from different runs do not compare).
//!
//! `cargo run -p bench --release -- compare` starts a local PostgreSQL, PgBouncer and the
//! release shardgate binary (both in transaction mode with the same pool size), runs pgbench
//! against each target in turn (interleaved, repeated) for every case, and prints and records
//! (in `bench/RESULTS.md`) TPS, ratios, latency, and each proxy's CPU time per transaction and
//! memory. `profile` runs shardgate under callgrind for instructions per transaction.

mod cases;
mod compare;
mod copy;
mod corpus;
mod floor;
mod gather;
mod idle;
mod machine;
mod pgbench_log;
mod pgbouncer;
mod procfs;
mod profile;
mod rebalance;
mod report;
mod servers;
mod service;
mod shardgate;
mod soak;
mod stats;
mod syscalls;
mod targets;
mod two_phase;

use std::path::Path;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use shardgate_tests::{pgbench, pgbench_raw, PgbenchResult};

const USER: &str = "bench";
const PASSWORD: &str = "bench-secret";
const DB: &str = "bench";

/// Environment every pgbench run gets: the password, and no TLS or GSS negotiation round trip
/// (none of the targets offers either; libpq would ask each of them first).
const PGBENCH_ENV: [(&str, &str); 3] = [
    ("PGPASSWORD", PASSWORD),
    ("PGSSLMODE", "disable"),
    ("PGGSSENCMODE", "disable"),
];

#[derive(Parser)]
#[command(about = "shardgate benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// pgbench through shardgate vs PgBouncer vs directly, interleaved, as ratios.
    Compare(compare::CompareArgs),
    /// Instructions per transaction of the release shardgate binary under callgrind.
    Profile(profile::ProfileArgs),
    /// Adding a shard to two while writes run: rows per second and the write pause.
    Rebalance(rebalance::RebalanceArgs),
    /// The protocol soak, long: real drivers' random request mixes; every request answered.
    Soak(soak::SoakArgs),
    /// A window query gathered into PostgreSQL from 3 shards vs the same query on one server.
    Gather(gather::GatherArgs),
    /// COMMIT of a transaction that wrote on two shards (two-phase) vs on one (one-phase).
    TwoPhase(two_phase::TwoPhaseArgs),
    /// COPY FROM/TO split over 2 shards vs one PostgreSQL; multi-row INSERT split vs one shard.
    Copy(copy::CopyArgs),
    /// The generated cross-shard corpus, long, random seed: answers equal to one PostgreSQL.
    Corpus(corpus::CorpusArgs),
    /// The minimal tokio transaction pooler that `compare --targets floor` starts.
    #[command(hide = true)]
    FloorPooler(floor::FloorArgs),
}

fn main() -> anyhow::Result<()> {
    // No inherited libpq settings may redirect pgbench; cleared before any thread starts.
    for var in shardgate_tests::psql::LIBPQ_ENV {
        std::env::remove_var(var);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Cmd::FloorPooler(args) = cli.command {
        return floor::serve(args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let work = async {
            match cli.command {
                Cmd::Compare(args) => compare::run(args).await,
                Cmd::Profile(args) => profile::run(args).await,
                Cmd::Rebalance(args) => rebalance::run(args).await,
                Cmd::Soak(args) => soak::run(args).await,
                Cmd::Gather(args) => gather::run(args).await,
                Cmd::TwoPhase(args) => two_phase::run(args).await,
                Cmd::Copy(args) => copy::run(args).await,
                Cmd::Corpus(args) => corpus::run(args).await,
                Cmd::FloorPooler(_) => bail!("the floor pooler runs on a runtime of its own"),
            }
        };
        // On Ctrl-C the work is dropped, which stops and removes every server it started.
        tokio::select! {
            r = work => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
    })
}

fn pgbench_base_args(port: u16) -> Vec<String> {
    [
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        USER,
        "--no-vacuum",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `pgbench -i -s <scale> -q` on the server at `port`: the tables every workload reads.
async fn pgbench_init(port: u16, scale: u32) -> anyhow::Result<()> {
    let mut init = vec![
        "-i".to_string(),
        "-s".into(),
        scale.to_string(),
        "-q".into(),
    ];
    init.extend(
        pgbench_base_args(port)
            .into_iter()
            .filter(|a| a != "--no-vacuum"),
    );
    init.push(DB.into());
    tokio::task::spawn_blocking(move || pgbench_raw(&init, &PGBENCH_ENV))
        .await?
        .context("pgbench -i")?;
    Ok(())
}

async fn run_pgbench(args: Vec<String>) -> anyhow::Result<PgbenchResult> {
    tokio::task::spawn_blocking(move || pgbench(&args, &PGBENCH_ENV))
        .await?
        .context("running pgbench")
}

/// The results file's text, or a fresh header when it is missing or empty.
fn load_results(path: &Path) -> String {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    if old.trim().is_empty() {
        RESULTS_HEADER.to_string()
    } else {
        old
    }
}

const RESULTS_HEADER: &str = "# shardgate benchmark results\n\nWritten by \
    `cargo run -p bench --release -- compare` and `-- profile`; each command replaces its own \
    section. See the Benchmarks section of the README for how to run and read them.\n";
