//! `bench corpus [--seed N] [--size N] [--show-refusals]`: the generated cross-shard corpus of
//! the end-to-end tests (`shardgate_tests::corpus::generated`, which the `cross_shard_corpus`
//! test runs at seed 18 with 1,100 statements), longer and with a seed from the clock unless
//! one is given: every statement through an in-process shardgate on 3 shards and on one plain
//! PostgreSQL holding the same rows. Prints the share answered, the refusal reasons by count
//! and every difference with its SQL; exits non-zero on any difference.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use shardgate_router::{KeyValue, Router};
use shardgate_tests::corpus::generated::{self, Options, Report, FLOOR};
use shardgate_tests::corpus::World;

#[derive(Args, Clone)]
pub struct CorpusArgs {
    /// Seed of the statement generator (default: from the clock; printed, so a run can be
    /// repeated with it).
    #[arg(long)]
    seed: Option<u64>,
    /// How many statements.
    #[arg(long, default_value_t = 10_000)]
    size: usize,
    /// Also print every refused statement under its reason.
    #[arg(long)]
    show_refusals: bool,
}

pub async fn run(args: CorpusArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(clock_seed);
    eprintln!(
        "corpus: seed {seed}, {} statements; starting 3 shards and a reference PostgreSQL",
        args.size
    );
    let started = Instant::now();
    let world = generated::start().await.context("start PostgreSQL")?;
    let opts = Options {
        seed,
        size: args.size,
        trace: false,
    };
    let ran = run_on(&world, &opts, started).await;
    world.stop().await;
    let (report, setup) = ran?;
    print(&report, args.show_refusals, setup, started.elapsed());
    if !report.failures.is_empty() {
        bail!(
            "{} statements differ from one PostgreSQL (seed {seed})",
            report.failures.len()
        );
    }
    Ok(())
}

fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Loads the data set where the proxy's router puts each key, starts the proxy, runs; returns
/// the report and the set-up time since `started`.
async fn run_on(
    world: &World,
    opts: &Options,
    started: Instant,
) -> anyhow::Result<(Report, Duration)> {
    let config = shardgate_config::Config::from_toml(
        &generated::proxy_toml(world),
        Path::new("bench-corpus.toml"),
    )?;
    let router = Router::new(&config)?;
    generated::load(world, |k| router.shard_for_key(&KeyValue::Int(k))).await?;
    let proxy = shardgate_proxy::start(config)
        .await
        .context("start the proxy")?;
    let setup = started.elapsed();
    eprintln!("running the corpus ({:.1} s set-up)", setup.as_secs_f64());
    let report = generated::run(world, proxy.addr().port(), opts).await;
    proxy.shutdown().await;
    Ok((report?, setup))
}

fn print(report: &Report, show_refusals: bool, setup: Duration, total: Duration) {
    println!("{}", report.summary());
    println!(
        "{:.1}% answered (the test's floor: {:.0}%); {:.1} s for the statements ({:.0}/s, \
         each on the proxy and on the reference), {:.1} s set-up, {:.1} s in all",
        report.share() * 100.0,
        FLOOR * 100.0,
        report.elapsed.as_secs_f64(),
        report.size as f64 / report.elapsed.as_secs_f64().max(1e-9),
        setup.as_secs_f64(),
        total.as_secs_f64()
    );
    let mut reasons: Vec<(&String, &Vec<String>)> = report.refusals.iter().collect();
    reasons.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    if !reasons.is_empty() {
        println!("refused with 0A000, by reason:");
    }
    for (reason, statements) in reasons {
        println!("  {:>5}×  {reason}", statements.len());
        if show_refusals {
            for sql in statements {
                println!("           {sql}");
            }
        }
    }
    for failure in &report.failures {
        println!("DIFFERS: {failure}");
    }
}
