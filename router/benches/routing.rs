//! Micro-benchmarks of the routing hot path: classification with and without the cache, key
//! hashing, and ring lookups. `cargo bench -p shardgate-router`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use shardgate_config::Config;
use shardgate_router::hash::{hashint8extended, hashtextextended};
use shardgate_router::{BoundParams, KeyValue, Router};

const STATEMENTS: &[(&str, &str)] = &[
    (
        "point select",
        "select * from orders where user_id = 42 and order_id = 7",
    ),
    (
        "param select",
        "select o.amount from orders o join users u on o.user_id = u.user_id where u.user_id = $1",
    ),
    (
        "insert",
        "insert into orders (order_id, user_id, amount) values ($1, $2, $3)",
    ),
    (
        "cross-shard agg",
        "select status, count(*), avg(amount) from orders group by status order by status limit 10",
    ),
    ("begin", "BEGIN"),
];

fn router(cache: usize) -> Router {
    let toml = format!(
        r#"
[sharding]
route_cache_size = {cache}
[[sharding.tables]]
name = "orders"
[[sharding.tables]]
name = "users"
[[users]]
name = "app"
password = "x"
[[shards]]
name = "s0"
primary = {{ host = "127.0.0.1", port = 5432 }}
[[shards]]
name = "s1"
primary = {{ host = "127.0.0.1", port = 5433 }}
[[shards]]
name = "s2"
primary = {{ host = "127.0.0.1", port = 5434 }}
"#
    );
    let config = Config::from_toml(&toml, Path::new("bench.toml")).expect("valid config");
    Router::new(&config).expect("router")
}

fn classification(c: &mut Criterion) {
    let cached = router(10_000);
    let uncached = router(0);
    let mut group = c.benchmark_group("plan");
    for (name, sql) in STATEMENTS {
        group.bench_function(format!("{name} (cached)"), |b| {
            b.iter(|| cached.plan(black_box(sql)))
        });
        group.bench_function(format!("{name} (uncached)"), |b| {
            b.iter(|| uncached.plan(black_box(sql)))
        });
    }
    group.finish();
}

fn routing(c: &mut Criterion) {
    let router = router(10_000);
    let plan = router.plan("select * from orders where user_id = $1");
    let value = 42i64.to_be_bytes();
    let values = [Some(&value[..])];
    let params = BoundParams {
        values: &values,
        formats: &[1],
        types: &[20],
    };
    c.bench_function("route (cached plan, binary int8 param)", |b| {
        b.iter(|| router.route(black_box(&plan), black_box(&params), None))
    });
}

/// The normalized plan cache on a ~200-byte simple-protocol statement whose literals change
/// every time (the case the text-keyed cache cannot serve): normalize, look the shape up,
/// route by the literals. Target: under 1 µs.
fn shapes(c: &mut Criterion) {
    let router = router(10_000);
    let texts: Vec<String> = (0..1024)
        .map(|k| {
            format!(
                "SELECT o.order_id, o.amount, o.status, o.created_at FROM orders o \
                 WHERE o.user_id = {k} AND o.status = 'open' AND o.amount > {} \
                 ORDER BY o.created_at DESC LIMIT 20 /* app:web,controller:orders */",
                k % 97
            )
        })
        .collect();
    let mut i = 0;
    c.bench_function(
        "normalize + shape lookup + route (200-byte statement)",
        |b| {
            b.iter(|| {
                i = (i + 1) % texts.len();
                let q = router.plan_query(black_box(&texts[i]));
                router.route_query(&q, None).map(|(route, _)| route)
            })
        },
    );
    c.bench_function("normalize only (200-byte statement)", |b| {
        b.iter(|| shardgate_router::normalize(black_box(&texts[7])))
    });
    // The per-query statistics' key, computed for every statement.
    c.bench_function("fingerprint hash (200-byte statement)", |b| {
        b.iter(|| shardgate_router::fingerprint_hash(black_box(&texts[7])))
    });
    c.bench_function("fingerprint hash (pgbench -S)", |b| {
        b.iter(|| {
            shardgate_router::fingerprint_hash(black_box(
                "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
            ))
        })
    });
    // With the proxy's session words looked for in the same pass (its hot path).
    c.bench_function("fingerprint hash and session words (pgbench -S)", |b| {
        b.iter(|| {
            shardgate_router::fingerprint_hash_and_words(
                black_box("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"),
                &shardgate_router::SESSION_WORDS,
            )
        })
    });
}

fn hashing(c: &mut Criterion) {
    c.bench_function("hashint8extended", |b| {
        b.iter(|| hashint8extended(black_box(123_456_789), 0))
    });
    c.bench_function("hashtextextended (16 bytes)", |b| {
        b.iter(|| hashtextextended(black_box("user-1234567890a"), 0))
    });
    let router = router(10_000);
    c.bench_function("shard_for_key (int)", |b| {
        b.iter(|| router.shard_for_key(black_box(&KeyValue::Int(987_654))))
    });
}

/// A 1,000-row ORM-style bulk INSERT over 3 shards: planning it (once per text), and splitting
/// it by key (per execution: one lexer pass, the parts' texts built), with literals and with
/// 3,000 Bind parameters.
fn insert_split(c: &mut Criterion) {
    let cached = router(10_000);
    let uncached = router(0);
    let rows: Vec<String> = (1..=1000)
        .map(|k| format!("({k}, 'order {k}', {k}.50)"))
        .collect();
    let literal = format!(
        "insert into orders (user_id, note, amount) values {} returning order_id",
        rows.join(", ")
    );
    let rows: Vec<String> = (0..1000)
        .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
        .collect();
    let bound = format!(
        "insert into orders (user_id, note, amount) values {} returning order_id",
        rows.join(", ")
    );
    let texts: Vec<String> = (0..3000).map(|i| (i / 3 + 1).to_string()).collect();
    let values: Vec<Option<&[u8]>> = texts.iter().map(|t| Some(t.as_bytes())).collect();
    let params = BoundParams {
        values: &values,
        formats: &[],
        types: &[],
    };
    let mut group = c.benchmark_group("insert split (1,000 rows)");
    group.bench_function("plan (uncached)", |b| {
        b.iter(|| uncached.plan(black_box(&literal)))
    });
    let plan = cached.plan(&literal);
    group.bench_function("split, literals", |b| {
        b.iter(|| cached.split_insert(&plan, black_box(&literal), &BoundParams::NONE, None))
    });
    let plan = cached.plan(&bound);
    group.bench_function("split, 3,000 parameters", |b| {
        b.iter(|| cached.split_insert(&plan, black_box(&bound), &params, None))
    });
    group.finish();
}

criterion_group!(
    benches,
    classification,
    routing,
    shapes,
    hashing,
    insert_split
);
criterion_main!(benches);
