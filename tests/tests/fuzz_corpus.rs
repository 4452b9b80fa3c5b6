//! The fuzz targets of `fuzz/targets.rs` as ordinary tests: every committed corpus file is
//! replayed, every crash found by fuzzing has a named regression test, and a short random run
//! (bolero's stable engine, a couple of seconds per target) looks for new ones.
//!
//! The same `fuzz_*` tests are what the long, coverage-guided runs fuzz: see `fuzz/README.md`
//! (`cargo bolero test … --test fuzz_corpus fuzz_wire`), and `BOLERO_RANDOM_TEST_TIME_MS=600000`
//! makes the stable engine run for ten minutes instead of two seconds.

#[path = "../../fuzz/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};
use std::time::Duration;

#[global_allocator]
static ALLOC: targets::CountingAlloc = targets::CountingAlloc;

/// How long each random smoke run lasts under plain `cargo test`.
const SMOKE: Duration = Duration::from_secs(2);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/<kind>/<target>`, sorted by name.
fn files(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `target` on every file, naming the file whose input panics.
fn replay(kind: &str, target_name: &str, target: fn(&[u8])) -> usize {
    let files = files(kind, target_name);
    for path in &files {
        let data = std::fs::read(path).expect("corpus file");
        if let Err(panic) = std::panic::catch_unwind(|| target(&data)) {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("{} panicked: {msg}", path.display());
        }
    }
    files.len()
}

#[test]
fn wire_corpus_replays() {
    let n = replay("corpus", "wire", targets::wire);
    assert!(n >= 10, "the wire corpus has only {n} files");
}

#[test]
fn router_corpus_replays() {
    let n = replay("corpus", "router", targets::router);
    assert!(n >= 10, "the router corpus has only {n} files");
}

/// The corpus stays small: tens of files, a few KB each.
#[test]
fn corpus_stays_small() {
    for target in ["wire", "router"] {
        let files = files("corpus", target);
        assert!(files.len() <= 100, "{target}: {} corpus files", files.len());
        let total: u64 = files
            .iter()
            .map(|p| std::fs::metadata(p).expect("metadata").len())
            .sum();
        assert!(total <= 64 * 1024, "{target}: corpus of {total} bytes");
    }
}

/// The allocation meter the wire target relies on sees a large allocation.
#[test]
fn allocation_meter_sees_allocations() {
    let (v, largest) = targets::largest_allocation(|| vec![0u8; 1 << 20]);
    assert_eq!(v.len(), 1 << 20);
    assert!(largest >= 1 << 20, "largest allocation seen: {largest}");
    let ((), none) = targets::largest_allocation(|| ());
    assert_eq!(none, 0);
}

// Hand-written inputs that pin the properties the targets check (each also in the corpus).

/// A header claiming 2 GiB must be refused without allocating for it.
#[test]
fn lying_length_allocates_nothing_big() {
    let mut input = vec![0x05]; // limit 1024, whole reads, no startup packet
    input.extend_from_slice(&[b'Q', 0x7f, 0xff, 0xff, 0xff]);
    targets::wire(&input);
    let mut startup = vec![0x25]; // the same, as a startup packet
    startup.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]);
    targets::wire(&startup);
}

/// A Bind whose value length points past its end is an error, and well-formed frames around
/// it still round-trip.
#[test]
fn lying_bind_inside_a_stream() {
    let mut input = vec![0x0d]; // limit 1024, 3-byte reads
    input.extend_from_slice(b"Q\0\0\0\x0dselect 1\0");
    input.extend_from_slice(b"B\0\0\0\x11\0s\0\0\0\0\x01\x00\x0f\x42\x40ab");
    input.extend_from_slice(b"S\0\0\0\x04");
    targets::wire(&input);
}

#[test]
fn router_routes_keys_params_and_hints() {
    for input in [
        &b"select * from orders where user_id = 42"[..],
        b"select * from orders where user_id in (1, 2, 3, 4, 5)",
        b"select * from orders where user_id = $1\xff\x00\x04\x01\x08\x00\x00\x00\x00\x00\x00\x00\x2a",
        b"select * from sessions where sid = any($1)\xff\x00\x00\x0d\x05{a,b}",
        b"update orders set user_id = 7 where user_id = 42",
        b"SHARDGATE ROUTE delete from orders",
        b"/* shardgate: shard=nope */ select 1",
    ] {
        targets::router(input);
    }
}

// Random smoke runs (and the long-run entry points for `cargo bolero test`).

#[test]
fn fuzz_wire() {
    bolero::check!()
        .with_test_time(SMOKE)
        .for_each(|input: &[u8]| targets::wire(input));
}

#[test]
fn fuzz_router() {
    bolero::check!()
        .with_test_time(SMOKE)
        .for_each(|input: &[u8]| targets::router(input));
}

/// The router on statements assembled from SQL pieces (random bytes rarely spell SQL), with
/// a random parameter spec.
#[test]
fn fuzz_router_sql() {
    bolero::check!()
        .with_type::<(Vec<u8>, Vec<u8>)>()
        .with_test_time(SMOKE)
        .for_each(|(pieces, spec): &(Vec<u8>, Vec<u8>)| {
            let mut input = Vec::new();
            for p in pieces {
                let piece = targets::SQL_PIECES[usize::from(*p) % targets::SQL_PIECES.len()];
                input.extend_from_slice(piece.as_bytes());
                input.push(b' ');
            }
            input.push(0xff);
            input.extend_from_slice(spec);
            targets::router(&input);
        });
}
