//! The generated cross-shard corpus: a query generator with a seed writes SELECTs over
//! sharded tables (users, orders, items, sharded by `user_id`) and a reference table (plans,
//! on every shard). Each runs through shardgate on 3 shards and on one plain PostgreSQL
//! holding the same rows (text and binary protocol in turn); the answers (columns, types,
//! rows, and their order where the ORDER BY fixes it) must be identical, or shardgate must
//! refuse with 0A000. The `cross_shard_corpus` test runs [`DEFAULT_SIZE`] statements of seed
//! [`DEFAULT_SEED`] and asserts [`FLOOR`]; `bench corpus` runs a random seed, longer.
//!
//! ```text
//! let world = generated::start().await?;
//! // config = parse(generated::proxy_toml(&world)); router = Router::new(&config)
//! generated::load(&world, |key| router.shard_for_key(&KeyValue::Int(key))).await?;
//! // proxy = shardgate_proxy::start(config)
//! let report = generated::run(&world, proxy.addr().port(), &options).await?;
//! ```

mod dataset;
mod generator;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::compare::{differ, run_prepared, run_text, usable, Outcome};
use super::{connect, CorpusError, Gen, Order, World, DB};

pub const SHARDS: usize = 3;
/// The seed and size the test (and CI) runs.
pub const DEFAULT_SEED: u64 = 18;
pub const DEFAULT_SIZE: usize = 1_100;
/// The share of the corpus the test requires answered (not refused).
pub const FLOOR: f64 = 0.95;

const SHARDED_TABLES: &[&str] = &["users", "orders", "items"];
/// plans is configured as a reference table: its reads and joins take that path.
const REFERENCE_TABLES: &str = "[[sharding.reference_tables]]\nname = \"plans\"\n";

/// Starts the reference server and the shards.
pub async fn start() -> Result<World, CorpusError> {
    World::start(SHARDS).await
}

/// The proxy's config over `world`'s shards, with the corpus's sharded and reference tables.
pub fn proxy_toml(world: &World) -> String {
    world.proxy_toml(SHARDED_TABLES, REFERENCE_TABLES)
}

/// Loads the data set: everything on the reference server, plans on every shard, sharded rows
/// on the shard `shard_of_key` (the proxy's router) names.
pub async fn load(world: &World, shard_of_key: impl Fn(i64) -> usize) -> Result<(), CorpusError> {
    world
        .load(dataset::SCHEMA, &dataset::rows(), shard_of_key)
        .await
        .map(drop)
}

/// The corpus of `seed`, endless: each statement with how much of its row order it fixes.
pub fn statements(seed: u64) -> impl Iterator<Item = (String, Order)> {
    let mut g = Gen(seed);
    std::iter::from_fn(move || Some(generator::statement(&mut g)))
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// How many statements.
    pub size: usize,
    /// Print every statement and its verdict to stderr.
    pub trace: bool,
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub size: usize,
    /// Statements the reference server rejected too: the generator got them wrong, so they are
    /// left out of the corpus (shardgate must still fail the same way, or it is a failure).
    pub invalid: usize,
    /// Statements shardgate answered exactly as the reference server did.
    pub answered: usize,
    /// The statements refused with 0A000, by the refusal's message.
    pub refusals: BTreeMap<String, Vec<String>>,
    /// Each difference: the statement, then what each side returned.
    pub failures: Vec<String>,
    /// How long the statements took (not the set-up).
    pub elapsed: Duration,
}

impl Report {
    /// Statements that are part of the corpus.
    pub fn valid(&self) -> usize {
        self.size - self.invalid
    }

    /// The share of valid statements answered (the rest refused or failed).
    pub fn share(&self) -> f64 {
        self.answered as f64 / self.valid().max(1) as f64
    }

    pub fn refused(&self) -> usize {
        self.refusals.values().map(Vec::len).sum()
    }

    /// One line: the seed, the counts and the share answered.
    pub fn summary(&self) -> String {
        format!(
            "generated corpus (seed {}): {} statements ({} the generator got wrong left out); \
             {} answered ({:.1}%), {} refused with 0A000, {} differ",
            self.seed,
            self.valid(),
            self.invalid,
            self.answered,
            self.share() * 100.0,
            self.refused(),
            self.failures.len()
        )
    }
}

/// Runs `opts.size` statements of `opts.seed` through the proxy on `proxy_port` (over
/// `world`'s shards, loaded with [`load`]) and on `world`'s reference server, text (simple
/// protocol) and binary (extended, prepared) in turn.
pub async fn run(world: &World, proxy_port: u16, opts: &Options) -> Result<Report, CorpusError> {
    let proxy = connect(proxy_port, DB).await?;
    let direct = connect(world.reference().port(), DB).await?;
    let started = Instant::now();
    let mut report = Report {
        seed: opts.seed,
        size: opts.size,
        invalid: 0,
        answered: 0,
        refusals: BTreeMap::new(),
        failures: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for (n, (sql, order)) in statements(opts.seed).take(opts.size).enumerate() {
        let (refused, direct_failed, diff) = if n % 2 == 0 {
            let (p, d) = (run_text(&proxy, &sql).await, run_text(&direct, &sql).await);
            classify(p, d, order)
        } else {
            let p = run_prepared(&proxy, &sql, &[]).await;
            let d = run_prepared(&direct, &sql, &[]).await;
            classify(p, d, order)
        };
        if opts.trace {
            eprintln!(
                "{n}: {sql} -> refused={refused:?} invalid={direct_failed} differs={}",
                diff.is_some()
            );
        }
        if direct_failed {
            report.invalid += 1;
            if let Some(d) = diff {
                report.failures.push(format!("{sql}\n    {d}"));
            }
        } else if let Some(reason) = refused {
            report.refusals.entry(reason).or_default().push(sql.clone());
        } else if let Some(d) = diff {
            report.failures.push(format!("{sql}\n    {d}"));
        } else {
            report.answered += 1;
        }
        if !usable(&proxy).await {
            return Err(CorpusError::Unusable(sql));
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// (the 0A000 refusal's message, whether the reference failed, a difference).
fn classify<V: Ord + Clone + std::fmt::Debug>(
    proxy: Outcome<V>,
    direct: Outcome<V>,
    order: Order,
) -> (Option<String>, bool, Option<String>) {
    if let Outcome::Error(e) = &direct {
        let same = matches!(&proxy, Outcome::Error(p) if p.code == e.code);
        return (
            None,
            true,
            (!same).then(|| format!("reference failed ({}), proxy: {proxy:?}", e.message)),
        );
    }
    if let Outcome::Error(e) = &proxy {
        if e.code == "0A000" {
            return (Some(e.message.clone()), false, None);
        }
    }
    (None, false, differ(order, proxy, direct))
}
