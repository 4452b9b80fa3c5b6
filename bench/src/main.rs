//! Benchmarks that compare shardgate with a direct connection to PostgreSQL, side by side in
//! one run, reported as ratios (the machines are shared and noisy, so absolute figures from
//! different runs do not compare).
//!
//! `cargo run -p bench --release -- compare` starts a local PostgreSQL and an in-process
//! shardgate in transaction mode, then runs pgbench against each target in turn (interleaved,
//! repeated) for every protocol mode, and prints the median TPS of each and the ratio.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use shardgate_config::Config;
use shardgate_tests::{pgbench, pgbench_raw, Auth, ClusterOptions, PgCluster, PgbenchResult};

const USER: &str = "bench";
const PASSWORD: &str = "bench-secret";
const DB: &str = "bench";

#[derive(Parser)]
#[command(about = "shardgate benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// pgbench -S through shardgate vs directly, for simple, extended and prepared protocols.
    Compare {
        /// pgbench clients.
        #[arg(long, default_value_t = 32)]
        clients: u32,
        /// shardgate's server pool size (direct runs use one server connection per client).
        #[arg(long, default_value_t = 8)]
        pool: u32,
        /// Seconds per pgbench run.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Runs per target and mode (the median is reported).
        #[arg(long, default_value_t = 3)]
        repeats: u32,
        /// Protocol modes to run.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "simple,extended,prepared"
        )]
        modes: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Cmd::Compare {
            clients,
            pool,
            seconds,
            repeats,
            modes,
        } => compare(clients, pool, seconds, repeats, &modes).await,
    }
}

async fn compare(
    clients: u32,
    pool: u32,
    seconds: u32,
    repeats: u32,
    modes: &[String],
) -> anyhow::Result<()> {
    let cluster = tokio::task::spawn_blocking(move || -> anyhow::Result<PgCluster> {
        let c = PgCluster::start(
            ClusterOptions::default()
                .max_connections(clients + 50)
                .user(USER, PASSWORD, Auth::Scram),
        )?;
        c.create_database(DB, USER)?;
        Ok(c)
    })
    .await??;
    let config = Config::from_toml(
        &format!(
            r#"
[listen]
addr = "127.0.0.1:0"
[pool]
mode = "transaction"
size = {pool}
[[users]]
name = "{USER}"
password = "{PASSWORD}"
[[shards]]
name = "s0"
primary = {{ host = "127.0.0.1", port = {port} }}
"#,
            port = cluster.port()
        ),
        Path::new("<bench>"),
    )?;
    let proxy = shardgate_proxy::start(config).await?;
    let direct_port = cluster.port();
    let proxy_port = proxy.addr().port();

    let init: Vec<String> = [
        "-i",
        "-s",
        "10",
        "-q",
        "-h",
        "127.0.0.1",
        "-p",
        &direct_port.to_string(),
        "-U",
        USER,
        DB,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    tokio::task::spawn_blocking(move || pgbench_raw(&init, &[("PGPASSWORD", PASSWORD)]))
        .await?
        .context("pgbench -i")?;

    println!("pgbench -S -c {clients} -j 2 -T {seconds}, {repeats} runs each, median TPS; shardgate pool size {pool}");
    println!(
        "{:<10} {:>12} {:>12} {:>8} {:>12} {:>12}",
        "mode", "direct", "shardgate", "ratio", "direct lat", "sg lat"
    );
    for mode in modes {
        let mut direct = Vec::new();
        let mut proxied = Vec::new();
        for _ in 0..repeats {
            for (port, out) in [(direct_port, &mut direct), (proxy_port, &mut proxied)] {
                let args = [
                    "-S",
                    "-M",
                    mode,
                    "-c",
                    &clients.to_string(),
                    "-j",
                    "2",
                    "-T",
                    &seconds.to_string(),
                ];
                let r = run_pgbench(port, &args).await?;
                if r.failed > 0 {
                    bail!(
                        "pgbench reported {} failed transactions on port {port}:\n{}",
                        r.failed,
                        r.stdout
                    );
                }
                out.push(r);
            }
        }
        let (d, p) = (median_tps(&direct), median_tps(&proxied));
        println!(
            "{:<10} {:>12.0} {:>12.0} {:>8.2} {:>10.3}ms {:>10.3}ms",
            mode,
            d,
            p,
            p / d,
            median_latency(&direct),
            median_latency(&proxied)
        );
    }
    proxy.shutdown().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(())
}

async fn run_pgbench(port: u16, args: &[&str]) -> anyhow::Result<PgbenchResult> {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend([
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-U".into(),
        USER.into(),
        DB.into(),
    ]);
    tokio::task::spawn_blocking(move || pgbench(&all, &[("PGPASSWORD", PASSWORD)]))
        .await?
        .context("running pgbench")
}

fn median_tps(runs: &[PgbenchResult]) -> f64 {
    median(runs.iter().map(|r| r.tps).collect())
}

fn median_latency(runs: &[PgbenchResult]) -> f64 {
    median(runs.iter().filter_map(|r| r.latency_avg_ms).collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
