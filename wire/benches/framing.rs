//! Micro-benchmarks of the wire hot path: cutting frames out of a buffer of many small
//! messages (what the proxy does for every client and server message), and the few frontend
//! decoders it runs per extended-protocol batch (Parse, Bind and its parameters, renaming a
//! Bind). `cargo bench -p shardgate-wire --bench framing` (add `-- --quick` for a fast pass).

use std::hint::black_box;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shardgate_wire::frontend::{self, put_cstr, write_message};
use shardgate_wire::{Frame, FrameReader};

const LIMIT: usize = 64 * 1024 * 1024;
/// Messages per buffer in the framing benchmarks.
const MESSAGES: usize = 1000;

/// A pgbench `-S -M extended` batch: Parse, Bind, Describe, Execute, Sync.
fn extended_batch(out: &mut BytesMut) {
    frontend::write_parse(
        out,
        "",
        b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
        &[],
    );
    write_bind(out, "", "", &[b"4242"]);
    frontend::write_describe(out, b'P', "");
    write_message(out, frontend::EXECUTE, |b| {
        put_cstr(b, "");
        b.put_i32(0);
    });
    frontend::write_sync(out);
}

/// What a server sends back for that batch: ParseComplete, BindComplete, RowDescription,
/// DataRow, CommandComplete, ReadyForQuery.
fn server_reply(out: &mut BytesMut) {
    out.put_slice(&[b'1', 0, 0, 0, 4, b'2', 0, 0, 0, 4]);
    write_message(out, b'T', |b| {
        b.put_i16(1);
        put_cstr(b, "abalance");
        b.put_u32(16_400);
        b.put_i16(3);
        b.put_u32(23);
        b.put_i16(4);
        b.put_i32(-1);
        b.put_i16(0);
    });
    write_message(out, b'D', |b| {
        b.put_i16(1);
        b.put_i32(4);
        b.put_slice(b"1234");
    });
    write_message(out, b'C', |b| put_cstr(b, "SELECT 1"));
    out.put_slice(&[b'Z', 0, 0, 0, 5, b'I']);
}

fn write_bind(out: &mut BytesMut, portal: &str, statement: &str, params: &[&[u8]]) {
    write_message(out, frontend::BIND, |b| {
        put_cstr(b, portal);
        put_cstr(b, statement);
        b.put_i16(0);
        b.put_i16(params.len() as i16);
        for p in params {
            b.put_i32(p.len() as i32);
            b.put_slice(p);
        }
        b.put_i16(0);
    });
}

/// A buffer of at least `MESSAGES` messages made of repeated `unit`s, and its message count.
fn stream_of(unit: fn(&mut BytesMut), per_unit: usize) -> (Bytes, usize) {
    let mut buf = BytesMut::new();
    let mut n = 0;
    while n < MESSAGES {
        unit(&mut buf);
        n += per_unit;
    }
    (buf.freeze(), n)
}

fn one_frame(write: impl FnOnce(&mut BytesMut)) -> Frame {
    let mut buf = BytesMut::new();
    write(&mut buf);
    Frame::from_bytes(buf.freeze())
}

fn framing(c: &mut Criterion) {
    let mut g = c.benchmark_group("framing");
    for (name, unit, per_unit) in [
        (
            "client extended batches",
            extended_batch as fn(&mut BytesMut),
            5,
        ),
        ("server replies", server_reply as fn(&mut BytesMut), 6),
    ] {
        let (bytes, n) = stream_of(unit, per_unit);
        g.throughput(Throughput::Elements(n as u64));
        // Frames already in the buffer: the pure header check and split, no I/O.
        g.bench_function(format!("try_frame/{name}"), |b| {
            b.iter_batched(
                || BytesMut::from(&bytes[..]),
                |buffered| {
                    let mut reader = FrameReader::with_buffered(&[][..], LIMIT, buffered);
                    let mut count = 0usize;
                    while let Ok(Some(frame)) = reader.try_frame() {
                        count += black_box(frame).len();
                    }
                    count
                },
                BatchSize::SmallInput,
            )
        });
        // Through AsyncRead from an in-memory reader, as read_frame runs on a socket.
        let runtime = match tokio::runtime::Builder::new_current_thread().build() {
            Ok(rt) => rt,
            Err(e) => panic!("tokio runtime: {e}"),
        };
        g.bench_function(format!("read_frame/{name}"), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let mut reader = FrameReader::new(&bytes[..], LIMIT);
                    let mut count = 0usize;
                    while let Ok(Some(frame)) = reader.read_frame().await {
                        count += black_box(frame).len();
                    }
                    count
                })
            })
        });
    }
    g.finish();
}

fn decoders(c: &mut Criterion) {
    let mut g = c.benchmark_group("frontend decode");
    let query = one_frame(|b| {
        frontend::write_query(b, "SELECT abalance FROM pgbench_accounts WHERE aid = 4242;")
    });
    g.bench_function("Query text", |b| {
        b.iter(|| frontend::query_text(black_box(&query)).map(<[u8]>::len))
    });
    let parse = one_frame(|b| {
        frontend::write_parse(
            b,
            "P0_1",
            b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
            &[20],
        )
    });
    g.bench_function("Parse", |b| {
        b.iter(|| frontend::parse(black_box(&parse)).map(|p| p.query.len()))
    });
    let bind = one_frame(|b| write_bind(b, "", "P0_1", &[b"4242"]));
    g.bench_function("Bind (names only)", |b| {
        b.iter(|| frontend::bind(black_box(&bind)).map(|b| b.statement.len()))
    });
    g.bench_function("Bind + params", |b| {
        b.iter(|| {
            let decoded = frontend::bind(black_box(&bind)).ok()?;
            frontend::bind_params(&bind, &decoded)
                .ok()
                .map(|p| p.values.len())
        })
    });
    let wide = one_frame(|b| {
        let params: Vec<&[u8]> = (0..16).map(|_| &b"some parameter value"[..]).collect();
        write_bind(b, "", "P0_7", &params)
    });
    g.bench_function("Bind + params (16 values)", |b| {
        b.iter(|| {
            let decoded = frontend::bind(black_box(&wide)).ok()?;
            frontend::bind_params(&wide, &decoded)
                .ok()
                .map(|p| p.values.len())
        })
    });
    let mut out = BytesMut::with_capacity(256);
    g.bench_function("Bind renamed", |b| {
        b.iter(|| {
            out.clear();
            if let Ok(decoded) = frontend::bind(black_box(&bind)) {
                frontend::write_bind_renamed(&mut out, &bind, &decoded, "sg_12");
            }
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, framing, decoders);
criterion_main!(benches);
