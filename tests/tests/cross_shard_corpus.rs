//! The generated cross-shard corpus (`shardgate_tests::corpus::generated`): a query generator
//! with a fixed seed writes SELECTs over sharded tables (users, orders, items, sharded by
//! user_id) and a reference table (plans, on every shard) — joins on and off the key,
//! subqueries and CTEs, DISTINCT, aggregates (with DISTINCT, ordered, statistical), GROUP BY /
//! HAVING, window functions, set operations, ORDER BY / LIMIT / OFFSET and keyed filters, over
//! NULLs, duplicates, skewed keys, text, numerics and timestamps. Each runs through shardgate
//! on 3 shards and on one plain PostgreSQL holding the same rows (text and binary protocol in
//! turn); the answers (columns, types, rows, and their order where the ORDER BY fixes it) must
//! be identical, or shardgate must refuse with 0A000. The share answered and the refusal
//! reasons are printed; a floor is asserted. `SG_CORPUS_SEED` / `SG_CORPUS_SIZE` change the
//! seed and size and `SG_CORPUS_SHOW` prints every statement; `bench corpus` runs the same
//! code longer with a random seed.

mod common;

use std::path::Path;
use std::time::Instant;

use shardgate_config::Config;
use shardgate_router::{KeyValue, Router};
use shardgate_tests::corpus::generated::{self, Options, DEFAULT_SEED, DEFAULT_SIZE, FLOOR};

/// The number in the environment variable `name`, or `default`.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_corpus_matches_one_postgresql() {
    let started = Instant::now();
    common::init_logs();
    let opts = Options {
        seed: env_or("SG_CORPUS_SEED", DEFAULT_SEED),
        size: env_or("SG_CORPUS_SIZE", DEFAULT_SIZE),
        trace: std::env::var_os("SG_CORPUS_SHOW").is_some(),
    };
    let world = generated::start().await.expect("start PostgreSQL");
    let config = Config::from_toml(&generated::proxy_toml(&world), Path::new("corpus.toml"))
        .expect("valid config");
    let router = Router::new(&config).expect("router");
    generated::load(&world, |k| router.shard_for_key(&KeyValue::Int(k)))
        .await
        .expect("load the data set");
    let proxy = shardgate_proxy::start(config).await.expect("start proxy");
    let setup = started.elapsed();

    let report = generated::run(&world, proxy.addr().port(), &opts)
        .await
        .expect("run the corpus");
    eprintln!(
        "{}; set-up {setup:?}, total {:?}",
        report.summary(),
        started.elapsed()
    );
    for (reason, statements) in &report.refusals {
        eprintln!("  refused {:>4}×: {reason}", statements.len());
    }
    proxy.shutdown().await;
    world.stop().await;
    let (size, valid, invalid) = (report.size, report.valid(), report.invalid);
    assert!(
        report.failures.is_empty(),
        "{} statements differ from one PostgreSQL:\n{}",
        report.failures.len(),
        report.failures.join("\n")
    );
    assert!(
        valid * 10 >= size * 9,
        "the generator wrote {invalid} invalid statements"
    );
    if size >= 1_100 {
        assert!(valid >= 1_000, "only {valid} valid statements");
    }
    assert!(
        report.share() >= FLOOR,
        "only {:.1}% answered",
        report.share() * 100.0
    );
}
