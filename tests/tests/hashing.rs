//! The router's hashing and ring against a real PostgreSQL: the Rust hash functions give
//! PostgreSQL's values bit for bit for 100,000 random keys of each type and several seeds, and
//! the SQL predicate the router renders for a shard selects exactly the rows the ring assigns
//! to it.
//!
//! Random inputs come from one seed per run, printed in every failure message; set
//! `SHARDGATE_TEST_SEED=<n>` to replay a run.

mod common;

use std::collections::HashSet;
use std::path::Path;

use futures_util::future::try_join_all;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shardgate_config::Config;
use shardgate_router::hash::{hashint8extended, hashtextextended, uuid_hash_extended};
use shardgate_router::{KeyType, KeyValue, Router};
use shardgate_tests::{ClusterOptions, PgCluster};
use tokio_postgres::Client;

/// Random keys of each type compared with PostgreSQL.
const KEYS: usize = 100_000;
/// Keys sent in one query.
const CHUNK: usize = 10_000;
/// Rows of the bigint-keyed table (keys 1..=ROWS).
const ROWS: i64 = 100_000;
/// Rows of the text- and uuid-keyed tables.
const SMALL_ROWS: usize = 5_000;

/// The run's random seed: `SHARDGATE_TEST_SEED` or a fresh one.
fn run_seed() -> u64 {
    std::env::var("SHARDGATE_TEST_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(rand::random)
}

/// A PostgreSQL server and a superuser connection to its `postgres` database.
struct Db {
    cluster: PgCluster,
    client: Client,
}

impl Db {
    async fn start() -> Db {
        let cluster = tokio::task::spawn_blocking(|| {
            PgCluster::start(ClusterOptions::default()).expect("start PostgreSQL")
        })
        .await
        .expect("join");
        let client = common::connect(&format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname=postgres",
            cluster.port(),
            cluster.superuser_password()
        ))
        .await;
        Db { cluster, client }
    }

    async fn stop(self) {
        drop(self.client);
        tokio::task::spawn_blocking(move || drop(self.cluster))
            .await
            .ok();
    }
}

/// Seed 0 and three random ones: any 64 bits, only the low 32 bits, only the high 32 bits
/// (the two halves enter the hash separately).
fn hash_seeds(rng: &mut StdRng) -> Vec<i64> {
    let nonzero = |v: i64| if v == 0 { 1 } else { v };
    vec![
        0,
        nonzero(rng.random::<i64>()),
        nonzero(i64::from(rng.random::<u32>())),
        nonzero(i64::from(rng.random::<i32>()) << 32),
    ]
}

/// Integer keys: the edges of int8, int4 and int2, then random values of each width.
fn int_keys(rng: &mut StdRng) -> Vec<i64> {
    let mut keys = vec![
        0,
        1,
        -1,
        2,
        -2,
        i64::MIN,
        i64::MIN + 1,
        i64::MAX,
        i64::MAX - 1,
        i64::from(i32::MIN),
        i64::from(i32::MIN) - 1,
        i64::from(i32::MAX),
        i64::from(i32::MAX) + 1,
        i64::from(i16::MIN),
        i64::from(i16::MAX),
        i64::from(u32::MAX),
        -i64::from(u32::MAX),
        1 << 32,
        -(1 << 32),
        (1 << 32) + 1,
        -(1 << 32) - 1,
    ];
    for bit in 0..63 {
        keys.push(1i64 << bit);
        keys.push(-(1i64 << bit));
    }
    while keys.len() < KEYS {
        let k = match rng.random_range(0..5) {
            0 => rng.random::<i64>(),
            1 => i64::from(rng.random::<i32>()),
            2 => i64::from(rng.random::<i16>()),
            3 => rng.random_range(-1_000_000..=1_000_000),
            _ => rng.random::<i64>() >> rng.random_range(0..63),
        };
        keys.push(k);
    }
    keys
}

/// One character from a mix of UTF-8 widths (never NUL, which text cannot hold).
fn random_char(rng: &mut StdRng) -> char {
    let pick = |rng: &mut StdRng, lo: u32, hi: u32| loop {
        if let Some(c) = char::from_u32(rng.random_range(lo..=hi)) {
            return c;
        }
    };
    match rng.random_range(0..10) {
        0..=4 => pick(rng, 0x20, 0x7e),      // printable ASCII
        5 => pick(rng, 0x01, 0x7f),          // any ASCII but NUL
        6 => pick(rng, 0x80, 0x7ff),         // 2 bytes
        7 => pick(rng, 0x800, 0xffff),       // 3 bytes (no surrogates: from_u32 refuses them)
        8 => pick(rng, 0x1_0000, 0x10_ffff), // 4 bytes
        _ => loop {
            let c: char = rng.random();
            if c != '\0' {
                return c;
            }
        },
    }
}

/// Text keys: the empty string, lengths around lookup3's 12-byte blocks, then random strings
/// of 0..64 characters (1 to 4 bytes each), some of them much longer than 12 bytes.
fn text_keys(rng: &mut StdRng) -> Vec<String> {
    let mut keys: Vec<String> = vec![
        String::new(),
        "a".into(),
        "hello".into(),
        "user_42".into(),
        "é".into(),
        "日本語".into(),
        "🦀".into(),
        "ß🦀é日".into(),
    ];
    for len in 0..=40 {
        keys.push("x".repeat(len));
        keys.push("é".repeat(len));
    }
    while keys.len() < KEYS {
        let len = match rng.random_range(0..10) {
            0 => rng.random_range(0..=3),
            1 => rng.random_range(11..=13),
            2 => rng.random_range(23..=25),
            _ => rng.random_range(0..64),
        };
        keys.push((0..len).map(|_| random_char(rng)).collect());
    }
    keys
}

fn uuid_keys(rng: &mut StdRng) -> Vec<uuid::Uuid> {
    let mut keys = vec![uuid::Uuid::nil(), uuid::Uuid::max()];
    while keys.len() < KEYS {
        keys.push(uuid::Uuid::from_bytes(rng.random()));
    }
    keys
}

/// Reports the first few mismatches between PostgreSQL and Rust.
fn compare<K: std::fmt::Debug>(
    what: &str,
    run: u64,
    seed: i64,
    keys: &[K],
    pg: &[i64],
    rust: impl Fn(&K) -> i64,
) -> usize {
    assert_eq!(
        pg.len(),
        keys.len(),
        "{what}: PostgreSQL returned too few hashes"
    );
    let bad: Vec<String> = keys
        .iter()
        .zip(pg)
        .filter(|(k, h)| rust(k) != **h)
        .take(5)
        .map(|(k, h)| format!("{k:?}: PostgreSQL {h}, Rust {}", rust(k)))
        .collect();
    assert!(
        bad.is_empty(),
        "{what} with seed {seed} differs (run seed {run}):\n{}",
        bad.join("\n")
    );
    keys.len()
}

/// `hashint8extended`, `hashtextextended` and `uuid_hash_extended` in PostgreSQL and in Rust
/// agree on 100,000 random keys of each type with seed 0 and three random seeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_functions_match_postgresql() {
    let run = run_seed();
    let mut rng = StdRng::seed_from_u64(run);
    let seeds = hash_seeds(&mut rng);
    let ints = int_keys(&mut rng);
    let texts = text_keys(&mut rng);
    let uuids = uuid_keys(&mut rng);
    let db = Db::start().await;
    let c = &db.client;

    let int8 = c
        .prepare(
            "select array_agg(hashint8extended(k, $1) order by i) \
             from unnest($2::int8[]) with ordinality u(k, i)",
        )
        .await
        .unwrap();
    // Keys of the int4 and int2 range hashed by PostgreSQL as int4 and int2: the proxy hashes
    // every integer key as int8, which must give the same value.
    let narrow = c
        .prepare(
            "select array_agg(hashint4extended(k::int4, $1) order by i), \
                    array_agg(case when k between -32768 and 32767 \
                              then hashint2extended(k::int2, $1) \
                              else hashint8extended(k, $1) end order by i) \
             from unnest($2::int8[]) with ordinality u(k, i)",
        )
        .await
        .unwrap();
    let text = c
        .prepare(
            "select array_agg(hashtextextended(k, $1) order by i) \
             from unnest($2::text[]) with ordinality u(k, i)",
        )
        .await
        .unwrap();
    let uuid = c
        .prepare(
            "select array_agg(uuid_hash_extended(k, $1) order by i) \
             from unnest($2::uuid[]) with ordinality u(k, i)",
        )
        .await
        .unwrap();
    let int4_keys: Vec<i64> = ints
        .iter()
        .copied()
        .filter(|k| i32::try_from(*k).is_ok())
        .collect();
    assert!(int4_keys.len() > KEYS / 3, "{}", int4_keys.len());

    let mut checked = [0usize; 4];
    for &seed in &seeds {
        let useed = seed as u64;
        // Each query's result is checked as it arrives; the queries of a seed are pipelined.
        let int_results = try_join_all(ints.chunks(CHUNK).map(|chunk| {
            let chunk = chunk.to_vec();
            let int8 = &int8;
            async move {
                c.query_one(int8, &[&seed, &chunk])
                    .await
                    .map(|r| (chunk, r))
            }
        }))
        .await
        .unwrap();
        for (chunk, row) in int_results {
            let pg: Vec<i64> = row.get(0);
            checked[0] += compare("hashint8extended", run, seed, &chunk, &pg, |k| {
                hashint8extended(*k, useed)
            });
        }
        for chunk in int4_keys.chunks(CHUNK) {
            let chunk = chunk.to_vec();
            let row = c.query_one(&narrow, &[&seed, &chunk]).await.unwrap();
            let (as_int4, as_int2): (Vec<i64>, Vec<i64>) = (row.get(0), row.get(1));
            compare("hashint4extended", run, seed, &chunk, &as_int4, |k| {
                hashint8extended(*k, useed)
            });
            compare("hashint2extended", run, seed, &chunk, &as_int2, |k| {
                hashint8extended(*k, useed)
            });
        }
        let text_results = try_join_all(texts.chunks(CHUNK).map(|chunk| {
            let chunk = chunk.to_vec();
            let text = &text;
            async move {
                c.query_one(text, &[&seed, &chunk])
                    .await
                    .map(|r| (chunk, r))
            }
        }))
        .await
        .unwrap();
        for (chunk, row) in text_results {
            let pg: Vec<i64> = row.get(0);
            checked[1] += compare("hashtextextended", run, seed, &chunk, &pg, |k| {
                hashtextextended(k, useed)
            });
        }
        let uuid_results = try_join_all(uuids.chunks(CHUNK).map(|chunk| {
            let chunk = chunk.to_vec();
            let uuid = &uuid;
            async move {
                c.query_one(uuid, &[&seed, &chunk])
                    .await
                    .map(|r| (chunk, r))
            }
        }))
        .await
        .unwrap();
        for (chunk, row) in uuid_results {
            let pg: Vec<i64> = row.get(0);
            checked[2] += compare("uuid_hash_extended", run, seed, &chunk, &pg, |k| {
                uuid_hash_extended(k.as_bytes(), useed)
            });
        }
        checked[3] += 1;
    }
    assert_eq!(
        checked,
        [
            KEYS * seeds.len(),
            KEYS * seeds.len(),
            KEYS * seeds.len(),
            seeds.len()
        ],
        "not every key was compared"
    );
    // The inputs really cover what they claim to.
    assert!(texts.iter().any(|t| t.is_empty()));
    assert!(texts.iter().any(|t| t.len() > 64 && t.chars().count() < 64));
    assert!(texts.iter().any(|t| t.len() > 12 && t.is_ascii()));
    db.stop().await;
}

/// A router over `n` shards `s0..s{n-1}` whose hosts are never contacted.
fn router(n: usize, hash_seed: i64, slot_bits: u32) -> Router {
    let mut text = format!(
        r#"
[[users]]
name = "app"
password = "unused"

[sharding]
hash_seed = {hash_seed}
slot_bits = {slot_bits}

[[sharding.tables]]
name = "t"
"#
    );
    for i in 0..n {
        text.push_str(&format!(
            "\n[[shards]]\nname = \"s{i}\"\nprimary = {{ host = \"127.0.0.1\", port = {} }}\n",
            10_000 + i
        ));
    }
    let config = Config::from_toml(&text, Path::new("hashing.toml")).expect("valid config");
    Router::new(&config).expect("router")
}

/// For every shard, the router's SQL predicate selects exactly the rows of a real table that
/// the ring assigns to it — for bigint, text and uuid keys, 3 and 4 shards, seed 0 and a
/// non-zero seed — and the predicates partition the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_predicates_select_exactly_the_rings_rows() {
    let run = run_seed();
    let mut rng = StdRng::seed_from_u64(run);
    let mut texts = HashSet::new();
    while texts.len() < SMALL_ROWS {
        let len = rng.random_range(0..40);
        texts.insert((0..len).map(|_| random_char(&mut rng)).collect::<String>());
    }
    let texts: Vec<String> = texts.into_iter().collect();
    let mut uuids = HashSet::new();
    while uuids.len() < SMALL_ROWS {
        uuids.insert(uuid::Uuid::from_bytes(rng.random()));
    }
    let uuids: Vec<uuid::Uuid> = uuids.into_iter().collect();
    let seeded = rng.random_range(1..i64::MAX) * if rng.random() { 1 } else { -1 };

    let db = Db::start().await;
    let c = &db.client;
    c.batch_execute(&format!(
        "create table t (user_id bigint primary key);
         insert into t select generate_series(1, {ROWS});
         create table t_text (user_id text primary key);
         create table t_uuid (user_id uuid primary key);"
    ))
    .await
    .unwrap();
    c.execute("insert into t_text select unnest($1::text[])", &[&texts])
        .await
        .unwrap();
    c.execute("insert into t_uuid select unnest($1::uuid[])", &[&uuids])
        .await
        .unwrap();
    c.batch_execute("analyze t, t_text, t_uuid").await.unwrap();

    for (shards, hash_seed, bits) in [(3, 0, 14), (4, 0, 14), (3, seeded, 10)] {
        let r = router(shards, hash_seed, bits);
        let what = format!("{shards} shards, seed {hash_seed}, {bits} slot bits (run seed {run})");

        // bigint: count and sum per shard.
        let mut expected = vec![(0i64, 0i64); shards];
        for k in 1..=ROWS {
            let s = r.shard_for_key(&KeyValue::Int(k));
            expected[s].0 += 1;
            expected[s].1 += k;
        }
        let mut total = 0;
        for (s, want) in expected.iter().enumerate() {
            let pred = r.key_predicate(s, "user_id", KeyType::Bigint);
            let row = c
                .query_one(
                    &format!(
                        "select count(*), coalesce(sum(user_id), 0)::int8 from t where {pred}"
                    ),
                    &[],
                )
                .await
                .unwrap();
            let got: (i64, i64) = (row.get(0), row.get(1));
            assert_eq!(
                got, *want,
                "bigint shard s{s} with {what}: PostgreSQL (count, sum) {got:?}, ring {want:?}"
            );
            assert!(got.0 > 0, "shard s{s} owns no keys with {what}");
            total += got.0;
        }
        assert_eq!(
            total, ROWS,
            "bigint predicates do not partition t with {what}"
        );

        // text and uuid: the exact set of keys per shard.
        let mut total = 0;
        for s in 0..shards {
            let pred = r.key_predicate(s, "user_id", KeyType::Text);
            let rows = c
                .query(&format!("select user_id from t_text where {pred}"), &[])
                .await
                .unwrap();
            let mut got: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
            let mut want: Vec<String> = texts
                .iter()
                .filter(|k| r.shard_for_key(&KeyValue::Text((*k).clone())) == s)
                .cloned()
                .collect();
            got.sort();
            want.sort();
            assert!(
                got == want,
                "text shard s{s} with {what}: PostgreSQL selects {} keys, the ring assigns {}; \
                 e.g. only in PostgreSQL: {:?}, only in the ring: {:?}",
                got.len(),
                want.len(),
                got.iter().find(|k| !want.contains(k)),
                want.iter().find(|k| !got.contains(k)),
            );
            total += got.len();
        }
        assert_eq!(
            total,
            texts.len(),
            "text predicates do not partition with {what}"
        );

        let mut total = 0;
        for s in 0..shards {
            let pred = r.key_predicate(s, "user_id", KeyType::Uuid);
            let rows = c
                .query(&format!("select user_id from t_uuid where {pred}"), &[])
                .await
                .unwrap();
            let mut got: Vec<uuid::Uuid> = rows.iter().map(|row| row.get(0)).collect();
            let mut want: Vec<uuid::Uuid> = uuids
                .iter()
                .filter(|u| r.shard_for_key(&KeyValue::Uuid(*u.as_bytes())) == s)
                .copied()
                .collect();
            got.sort();
            want.sort();
            assert!(
                got == want,
                "uuid shard s{s} with {what}: PostgreSQL selects {} keys, the ring assigns {}",
                got.len(),
                want.len(),
            );
            total += got.len();
        }
        assert_eq!(
            total,
            uuids.len(),
            "uuid predicates do not partition with {what}"
        );
    }
    db.stop().await;
}

/// Adding a 4th shard to 3 moves 25% ± 5% of the keys 1..=100,000, all to the new shard;
/// removing a shard moves only its own keys (and spreads them over the others).
#[test]
fn adding_or_removing_a_shard_moves_only_the_right_keys() {
    let three = router(3, 0, 14);
    let four = router(4, 0, 14);
    let name = |r: &Router, k: i64| r.shard_names()[r.shard_for_key(&KeyValue::Int(k))].clone();

    let mut moved = 0;
    let mut elsewhere = Vec::new();
    for k in 1..=ROWS {
        let (before, after) = (name(&three, k), name(&four, k));
        if before != after {
            moved += 1;
            if after != "s3" {
                elsewhere.push(format!("{k}: {before} -> {after}"));
            }
        }
    }
    let pct = 100.0 * moved as f64 / ROWS as f64;
    assert!(
        (20.0..=30.0).contains(&pct),
        "adding s3 to s0..s2 moved {moved} of {ROWS} keys ({pct:.2}%), expected 25% ± 5%"
    );
    assert!(
        elsewhere.is_empty(),
        "adding s3 moved {} of the {moved} moved keys between old shards, e.g. {:?}",
        elsewhere.len(),
        &elsewhere[..elsewhere.len().min(5)]
    );

    // Remove s1 from s0..s3: the ring of s0, s2, s3.
    let text = |names: &[&str]| {
        let mut t = String::from("[[users]]\nname = \"app\"\npassword = \"unused\"\n");
        for (i, n) in names.iter().enumerate() {
            t.push_str(&format!(
                "[[shards]]\nname = \"{n}\"\nprimary = {{ host = \"127.0.0.1\", port = {} }}\n",
                10_000 + i
            ));
        }
        t
    };
    let without_s1 = Router::new(
        &Config::from_toml(&text(&["s0", "s2", "s3"]), Path::new("hashing.toml")).unwrap(),
    )
    .unwrap();
    let (mut owned, mut stayed, mut wrongly_moved) = (0, 0, Vec::new());
    let mut receivers = HashSet::new();
    for k in 1..=ROWS {
        let (before, after) = (name(&four, k), name(&without_s1, k));
        if before == "s1" {
            owned += 1;
            receivers.insert(after);
        } else if before == after {
            stayed += 1;
        } else {
            wrongly_moved.push(format!("{k}: {before} -> {after}"));
        }
    }
    assert!(
        wrongly_moved.is_empty(),
        "removing s1 moved {} keys of other shards (s1 owned {owned}, {stayed} stayed), e.g. {:?}",
        wrongly_moved.len(),
        &wrongly_moved[..wrongly_moved.len().min(5)]
    );
    let pct = 100.0 * owned as f64 / ROWS as f64;
    assert!(
        (20.0..=30.0).contains(&pct),
        "s1 owned {owned} of {ROWS} keys ({pct:.2}%) of 4 shards, expected 25% ± 5%"
    );
    assert_eq!(
        receivers.len(),
        3,
        "the {owned} keys of the removed s1 went only to {receivers:?}"
    );
}
