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
        /// Also run through a shardgate routing pgbench_accounts by aid over this many shards.
        #[arg(long, default_value_t = 1)]
        shards: u32,
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
            shards,
        } => compare(clients, pool, seconds, repeats, &modes, shards).await,
    }
}

/// A place pgbench connects to.
struct Target {
    name: String,
    port: u16,
}

fn proxy_config(pool: u32, shards: &[u16], sharded: bool) -> anyhow::Result<Config> {
    let mut toml = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[pool]\nmode = \"transaction\"\nsize = {pool}\n\
         [[users]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    );
    if sharded {
        // pgbench -S reads pgbench_accounts by aid: make aid the shard key.
        toml.push_str("[[sharding.tables]]\nname = \"pgbench_accounts\"\nkey_column = \"aid\"\n");
    }
    for (i, port) in shards.iter().enumerate() {
        toml.push_str(&format!(
            "[[shards]]\nname = \"s{i}\"\nprimary = {{ host = \"127.0.0.1\", port = {port} }}\n"
        ));
    }
    Ok(Config::from_toml(&toml, Path::new("<bench>"))?)
}

async fn compare(
    clients: u32,
    pool: u32,
    seconds: u32,
    repeats: u32,
    modes: &[String],
    shards: u32,
) -> anyhow::Result<()> {
    let shards = shards.max(1);
    let clusters = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<PgCluster>> {
        (0..shards)
            .map(|_| {
                let c = PgCluster::start(
                    ClusterOptions::default()
                        .max_connections(clients + 50)
                        .user(USER, PASSWORD, Auth::Scram),
                )?;
                c.create_database(DB, USER)?;
                Ok(c)
            })
            .collect()
    })
    .await??;
    let ports: Vec<u16> = clusters.iter().map(|c| c.port()).collect();
    // Every shard gets the full pgbench data set: the routed benchmark measures the proxy's
    // routing cost, and each key's owner has its row.
    for port in &ports {
        let init: Vec<String> = [
            "-i",
            "-s",
            "10",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
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
    }
    let single = shardgate_proxy::start(proxy_config(pool, &ports[..1], false)?).await?;
    let mut targets = vec![
        Target {
            name: "direct".into(),
            port: ports[0],
        },
        Target {
            name: "shardgate".into(),
            port: single.addr().port(),
        },
    ];
    let routed = if shards > 1 {
        let p = shardgate_proxy::start(proxy_config(pool, &ports, true)?).await?;
        targets.push(Target {
            name: format!("sg {shards} shards"),
            port: p.addr().port(),
        });
        Some(p)
    } else {
        None
    };

    println!(
        "pgbench -S -c {clients} -j 2 -T {seconds}, {repeats} interleaved runs each, median TPS; shardgate pool size {pool}"
    );
    let mut header = format!("{:<10}", "mode");
    for t in &targets {
        header.push_str(&format!(" {:>14}", t.name));
    }
    for t in &targets[1..] {
        header.push_str(&format!(" {:>14}", format!("{}/direct", t.name)));
    }
    println!("{header}");
    for mode in modes {
        let mut results: Vec<Vec<PgbenchResult>> = targets.iter().map(|_| Vec::new()).collect();
        for _ in 0..repeats {
            for (t, out) in targets.iter().zip(results.iter_mut()) {
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
                let r = run_pgbench(t.port, &args).await?;
                if r.failed > 0 {
                    bail!(
                        "pgbench reported {} failed transactions against {}:\n{}",
                        r.failed,
                        t.name,
                        r.stdout
                    );
                }
                out.push(r);
            }
        }
        let tps: Vec<f64> = results.iter().map(|r| median_tps(r)).collect();
        let mut line = format!("{mode:<10}");
        for v in &tps {
            line.push_str(&format!(" {v:>14.0}"));
        }
        for v in &tps[1..] {
            line.push_str(&format!(" {:>14.2}", v / tps[0]));
        }
        let lat: Vec<String> = results
            .iter()
            .map(|r| format!("{:.3}ms", median_latency(r)))
            .collect();
        println!("{line}   (latency: {})", lat.join(" / "));
    }
    single.shutdown().await;
    if let Some(p) = routed {
        p.shutdown().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::task::spawn_blocking(move || drop(clusters)).await?;
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
