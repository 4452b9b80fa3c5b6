//! The fuzz targets: plain functions from bytes that panic when a property breaks.
//!
//! Included (with `#[path]`) by `tests/tests/fuzz_corpus.rs`, which replays the committed
//! corpus under `cargo test`, runs a short random smoke run (bolero), and is the target that
//! `cargo bolero test` fuzzes with libFuzzer for the long runs (see `fuzz/README.md`).
//!
//! Two targets:
//! - [`wire`]: the client-facing front door — `FrameReader` cutting a byte stream (optionally
//!   starting with a startup-family packet) into frames under a size limit, and every decoder
//!   of `shardgate_wire` on every frame, with re-encoding where an encoder exists.
//! - [`router`]: `Router::plan` on arbitrary statement text and `Router::route` with arbitrary
//!   Bind parameters and hints, on a 3-shard config with bigint, text and uuid keyed tables.

use std::cell::Cell;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use shardgate_config::Config;
use shardgate_router::{BoundParams, Hint, Route, Router, StatementKind};
use shardgate_wire::frame::{peek_tagged_len, HEADER_LEN};
use shardgate_wire::startup::{self, StartupPacket};
use shardgate_wire::{backend, frontend, Frame, FrameReader};
use tokio::io::{AsyncRead, ReadBuf};

// ---------------------------------------------------------------------------------------------
// Allocation accounting: the largest single allocation made on this thread while armed.

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// A global allocator that records, per thread, the largest allocation requested while a
/// [`largest_allocation`] call is running. Install it with `#[global_allocator]` in the binary
/// that includes this file.
pub struct CountingAlloc;

impl CountingAlloc {
    fn record(size: usize) {
        let _ = ARMED.try_with(|armed| {
            if armed.get() {
                let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
            }
        });
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; the bookkeeping only
// touches const-initialised thread-locals without destructors (no allocation, no reentrancy).
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        Self::record(layout.size());
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        Self::record(layout.size());
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        Self::record(new_size);
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns its result with the largest single allocation it made on this thread.
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
    let out = f();
    ARMED.with(|a| a.set(false));
    (out, LARGEST.with(Cell::get))
}

// ---------------------------------------------------------------------------------------------
// Wire target.

/// Frame size limits the wire target picks from (the proxy's is `listen.max_message_size`).
const LIMITS: [usize; 8] = [5, 8, 16, 64, 300, 1024, 8192, 65_536];
/// Most bytes one read returns, to exercise frames split across reads.
const CHUNKS: [usize; 4] = [1, 3, 64, usize::MAX];

/// An in-memory stream that returns at most `chunk` bytes per read and is always ready.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.data.len().min(self.chunk).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// Polls a future that never waits (its reader is in memory) to completion.
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("an in-memory read did not complete");
}

/// Wire target. Byte 0 chooses the size limit (bits 0-2), the read size (bits 3-4) and whether
/// the stream starts with a startup-family packet (bit 5); the rest is what a client sends.
///
/// Properties: no panic; no frame longer than the limit; no allocation that grows with a
/// length the client *claims* rather than sends (the largest one stays under a bound set by
/// the limit); every decoder returns `Ok` or `Err` on every frame; what decodes re-encodes to
/// the same bytes (Query, Parse, Bind, Describe, Close, startup) and a renamed Bind decodes to
/// the same portal and parameters under the new name.
pub fn wire(data: &[u8]) {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let limit = LIMITS[usize::from(ctl & 0x07)];
    let chunk = CHUNKS[usize::from((ctl >> 3) & 0x03)];
    let startup_first = ctl & 0x20 != 0;

    // The whole input as a startup packet body, and the header check on its own.
    startup_body(stream);
    if let Ok(Some(total)) = peek_tagged_len(stream, limit) {
        assert!(
            (HEADER_LEN..=limit).contains(&total),
            "peek_tagged_len gave {total} for limit {limit}"
        );
    }

    let ((), largest) = largest_allocation(|| read_stream(stream, limit, chunk, startup_first));
    // Buffers grow to hold one frame under the limit (doubling), and decoders pre-allocate at
    // most 1,024 entries for a count; nothing may follow a claimed length past the limit.
    let bound = 2 * (limit + 16 * 1024) + 32 * 1024;
    assert!(
        largest <= bound,
        "allocated {largest} bytes at once with a {limit}-byte limit on a {}-byte input",
        stream.len()
    );
}

fn read_stream(stream: &[u8], limit: usize, chunk: usize, startup_first: bool) {
    let mut reader = FrameReader::new(
        Chunked {
            data: stream,
            chunk,
        },
        limit,
    );
    if startup_first {
        match block_on(reader.read_startup_packet()) {
            Ok(Some(body)) => {
                assert!(
                    body.len() + 4 <= limit,
                    "startup packet of {} bytes past the limit {limit}",
                    body.len() + 4
                );
                startup_body(&body);
            }
            Ok(None) | Err(_) => return,
        }
    }
    let mut frames = 0usize;
    loop {
        match block_on(reader.read_frame()) {
            Ok(Some(frame)) => {
                assert!(
                    frame.len() <= limit,
                    "frame of {} bytes past the limit {limit}",
                    frame.len()
                );
                assert!(frame.len() >= HEADER_LEN);
                let declared = i32::from_be_bytes([
                    frame.as_bytes()[1],
                    frame.as_bytes()[2],
                    frame.as_bytes()[3],
                    frame.as_bytes()[4],
                ]);
                assert_eq!(
                    declared as usize + 1,
                    frame.len(),
                    "frame length differs from its header"
                );
                decode_frame(&frame);
                frames += 1;
                assert!(
                    frames <= stream.len() / HEADER_LEN,
                    "more frames than the input can hold"
                );
            }
            Ok(None) => {
                assert!(reader.buffered().is_empty());
                return;
            }
            Err(_) => return,
        }
    }
}

fn frame_of(buf: BytesMut) -> Frame {
    Frame::from_bytes(buf.freeze())
}

/// A startup-family body: decode, and re-encode a StartupMessage or CancelRequest.
fn startup_body(body: &[u8]) {
    match startup::decode(body) {
        Ok(StartupPacket::Startup { params }) => {
            let pairs: Vec<(&str, &str)> = params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let mut out = BytesMut::new();
            startup::write_startup(&mut out, &pairs);
            assert_eq!(
                startup::decode(&out[4..]),
                Ok(StartupPacket::Startup {
                    params: params.clone()
                }),
                "a re-encoded StartupMessage decodes differently"
            );
        }
        Ok(StartupPacket::Cancel { pid, secret }) => {
            let mut out = BytesMut::new();
            startup::write_cancel_request(&mut out, pid, secret);
            assert_eq!(&out[4..], body, "a re-encoded CancelRequest differs");
        }
        Ok(_) | Err(_) => {}
    }
}

/// Every decoder on one frame; the one matching its tag must round-trip.
fn decode_frame(f: &Frame) {
    // Backend decoders are tag-agnostic; they must cope with any body too.
    let _ = backend::ready_for_query_status(f);
    let _ = backend::error_fields(f);
    let _ = backend::parameter_status(f);
    let _ = backend::backend_key_data(f);
    let _ = backend::auth_request(f);
    let _ = frontend::execute(f);

    if let Ok(text) = frontend::query_text(f) {
        let mut out = BytesMut::new();
        // Query text is bytes in the client's encoding.
        frontend::write_message(&mut out, frontend::QUERY, |b| {
            b.extend_from_slice(text);
            b.extend_from_slice(&[0]);
        });
        assert_eq!(&out[..], f.as_bytes(), "a re-encoded Query differs");
    }
    if let Ok(p) = frontend::parse(f) {
        let mut out = BytesMut::new();
        frontend::write_parse(&mut out, p.name, p.query, &p.param_types);
        assert_eq!(&out[..], f.as_bytes(), "a re-encoded Parse differs");
    }
    if let Ok(b) = frontend::bind(f) {
        let params = frontend::bind_params(f, &b).expect("a decoded Bind has readable parameters");
        // Same name: the same bytes.
        let mut same = BytesMut::new();
        frontend::write_bind_renamed(&mut same, f, &b, b.statement);
        assert_eq!(
            &same[..],
            f.as_bytes(),
            "a Bind re-encoded under its own name differs"
        );
        // Another name: decodable, same portal and parameters.
        let renamed = frame_of({
            let mut out = BytesMut::new();
            frontend::write_bind_renamed(&mut out, f, &b, "sg_4242");
            out
        });
        let b2 = frontend::bind(&renamed).expect("a renamed Bind decodes");
        assert_eq!((b2.portal, b2.statement), (b.portal, "sg_4242"));
        let params2 = frontend::bind_params(&renamed, &b2).expect("renamed Bind parameters");
        assert_eq!(params2, params, "a renamed Bind carries other parameters");
    }
    type Decode =
        for<'a> fn(&'a Frame) -> Result<frontend::Target<'a>, shardgate_wire::DecodeError>;
    type Encode = fn(&mut BytesMut, u8, &str);
    let targets: [(Decode, Encode); 2] = [
        (frontend::describe, frontend::write_describe),
        (frontend::close, frontend::write_close),
    ];
    for (decode, write) in targets {
        if let Ok(t) = decode(f) {
            let mut out = BytesMut::new();
            write(&mut out, t.kind, t.name);
            assert_eq!(
                &out[..],
                f.as_bytes(),
                "a re-encoded Describe/Close differs"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Router target.

const ROUTER_CONFIG: &str = r#"
[[users]]
name = "app"
password = "secret"

[[shards]]
name = "s0"
primary = { host = "127.0.0.1", port = 5432 }

[[shards]]
name = "s1"
primary = { host = "127.0.0.1", port = 5433 }

[[shards]]
name = "s2"
primary = { host = "127.0.0.1", port = 5434 }

[sharding]
route_cache_size = 64
EXTRA

[[sharding.tables]]
name = "orders"

[[sharding.tables]]
name = "users"

[[sharding.tables]]
name = "public.items"

[[sharding.tables]]
name = '"Events"'
key_column = "tenant"
key_type = "text"

[[sharding.tables]]
name = "sessions"
key_column = "sid"
key_type = "uuid"
"#;

const SHARDS: usize = 3;

/// Two routers over the same tables: the defaults, and one with another default shard, key
/// type, seed and keyless writes broadcast.
fn routers() -> &'static [Router; 2] {
    static ROUTERS: OnceLock<[Router; 2]> = OnceLock::new();
    ROUTERS.get_or_init(|| {
        let build = |extra: &str| {
            let text = ROUTER_CONFIG.replace("EXTRA", extra);
            let config = Config::from_toml(&text, Path::new("fuzz.toml")).expect("fuzz router config");
            Router::new(&config)
                .expect("fuzz router")
                .with_side_effect_functions(&["audit_write"])
        };
        [
            build(""),
            build("default_shard = \"s2\"\nkey_type = \"text\"\nhash_seed = -7\nkeyless_writes = \"broadcast\""),
        ]
    })
}

/// Parameter type OIDs the router target picks from: unspecified, the integer, text and uuid
/// types the router decodes, their arrays, and a few it does not.
const OIDS: [u32; 16] = [
    0, 20, 21, 23, 25, 19, 705, 1042, 1043, 2950, 1016, 1007, 1009, 2951, 16, 700,
];

/// The Bind side of a router input: parameters, formats, types and a session hint.
#[derive(Debug, Default)]
pub struct ParamSpec {
    pub values: Vec<Option<Vec<u8>>>,
    pub formats: Vec<i16>,
    pub types: Vec<u32>,
    pub hint: Option<Hint>,
}

fn take<'a>(spec: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(spec.len());
    let (head, tail) = spec.split_at(n);
    *spec = tail;
    head
}

fn byte(spec: &mut &[u8]) -> Option<u8> {
    take(spec, 1).first().copied()
}

impl ParamSpec {
    /// `[hint byte][format byte]` then `[type byte][length byte (255 = NULL)][bytes]…`.
    pub fn decode(mut spec: &[u8]) -> ParamSpec {
        let mut out = ParamSpec::default();
        let chunk = |spec: &mut &[u8]| {
            let n = byte(spec).unwrap_or(0);
            String::from_utf8_lossy(take(spec, usize::from(n))).into_owned()
        };
        out.hint = match byte(&mut spec).map(|h| h % 5) {
            Some(1) => Some(Hint::ShardKey(chunk(&mut spec))),
            Some(2) => Some(Hint::Shard(chunk(&mut spec))),
            Some(3) => Some(Hint::Shard("s1".into())),
            Some(4) => Some(Hint::ShardKey("42".into())),
            _ => None,
        };
        let format_mode = byte(&mut spec).unwrap_or(0);
        let format_code = |b: u8| match b & 0x03 {
            0 | 2 => 0,
            1 => 1,
            _ => i16::from(b as i8),
        };
        if format_mode % 3 == 1 {
            out.formats.push(format_code(format_mode >> 2));
        }
        let mut typed = true;
        while let Some(t) = byte(&mut spec) {
            if t & 0x80 != 0 {
                typed = false; // this and later parameters have no declared type
            }
            if typed {
                out.types.push(OIDS[usize::from(t & 0x0f)]);
            }
            if format_mode % 3 == 2 {
                out.formats.push(format_code(t >> 4));
            }
            let value = match byte(&mut spec) {
                Some(255) | None => None,
                Some(n) => Some(take(&mut spec, usize::from(n)).to_vec()),
            };
            out.values.push(value);
        }
        out
    }
}

/// Splits a router input at its first 0xFF byte (never part of UTF-8): the statement text
/// before it, the parameter spec after it.
pub fn split_router_input(data: &[u8]) -> (String, &[u8]) {
    match data.iter().position(|b| *b == 0xff) {
        Some(i) => (
            String::from_utf8_lossy(&data[..i]).into_owned(),
            &data[i + 1..],
        ),
        None => (String::from_utf8_lossy(data).into_owned(), &[]),
    }
}

/// Router target: text, then 0xFF, then a [`ParamSpec`].
///
/// Properties: no panic (also in `normalize_sql`, which the slow-query log runs on the same
/// text); planning is deterministic (a second plan of the same text is equal);
/// every route is a shard in range, a sorted set of two or more distinct shards in range, all
/// shards, or an error carrying a well-formed SQLSTATE that is not a success code.
pub fn router(data: &[u8]) {
    let (sql, spec) = split_router_input(data);
    // The slow-query log's normaliser reads the same text.
    let _ = shardgate_router::normalize_sql(&sql);
    let spec = ParamSpec::decode(spec);
    let values: Vec<Option<&[u8]>> = spec.values.iter().map(Option::as_deref).collect();
    let bound = BoundParams {
        values: &values,
        formats: &spec.formats,
        types: &spec.types,
    };
    for router in routers() {
        assert_eq!(router.shard_names().len(), SHARDS);
        route_text(router, &sql, &bound, spec.hint.as_ref(), true);
    }
}

fn route_text(
    router: &Router,
    sql: &str,
    bound: &BoundParams<'_>,
    hint: Option<&Hint>,
    outer: bool,
) {
    let plan = router.plan(sql);
    let again = router.plan(sql);
    assert!(
        Arc::ptr_eq(&plan, &again) || plan == again,
        "planning {sql:?} twice differs"
    );
    for (params, hint) in [
        (*bound, hint),
        (*bound, None),
        (BoundParams::NONE, None),
        (BoundParams::NONE, Some(&Hint::Shard("s2".into()))),
    ] {
        check_route(sql, router.route(&plan, &params, hint));
    }
    // `SHARDGATE ROUTE <statement>` plans the inner statement the same way (once deep).
    if let (true, StatementKind::ShardgateRoute(inner)) = (outer, &plan.kind) {
        route_text(router, inner, bound, hint, false);
    }
}

fn check_route(sql: &str, route: Result<Route, shardgate_router::RouteError>) {
    match route {
        Ok(Route::Shard(i)) => assert!(i < SHARDS, "{sql:?}: shard {i} out of range"),
        Ok(Route::Shards(v)) => {
            assert!(v.len() >= 2, "{sql:?}: a shard set of {} shards", v.len());
            assert!(
                v.windows(2).all(|w| w[0] < w[1]),
                "{sql:?}: shard set {v:?} not sorted and distinct"
            );
            assert!(
                v.iter().all(|i| *i < SHARDS),
                "{sql:?}: shard set {v:?} out of range"
            );
        }
        Ok(Route::AllShards) => {}
        Err(e) => {
            let code = e.code.as_bytes();
            assert!(
                code.len() == 5
                    && code
                        .iter()
                        .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
                    && !e.code.starts_with("00")
                    && !e.code.starts_with("01")
                    && !e.code.starts_with("02"),
                "{sql:?}: route error with SQLSTATE {:?}: {}",
                e.code,
                e.message
            );
            assert!(
                !e.message.is_empty(),
                "{sql:?}: route error {} without a message",
                e.code
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A grammar-ish generator for the router: random bytes rarely spell SQL, so the smoke run and
// the structured fuzz target assemble statements from these pieces.

/// Pieces of SQL the structured router target joins with spaces.
pub const SQL_PIECES: &[&str] = &[
    "SELECT",
    "*",
    "FROM",
    "orders",
    "users",
    "public.items",
    "\"Events\"",
    "sessions",
    "WHERE",
    "user_id",
    "tenant",
    "sid",
    "=",
    "IN",
    "(",
    ")",
    ",",
    "AND",
    "OR",
    "NOT",
    "$1",
    "$2",
    "$3",
    "ANY($1)",
    "42",
    "-1",
    "'42'",
    "'t1'",
    "'0x2A'",
    "NULL",
    "INSERT INTO",
    "VALUES",
    "UPDATE",
    "SET",
    "DELETE",
    "RETURNING",
    "ORDER BY",
    "LIMIT",
    "OFFSET",
    "GROUP BY",
    "HAVING",
    "count(*)",
    "sum(user_id)",
    "min(id)",
    "avg(total)",
    "DISTINCT",
    "JOIN",
    "ON",
    "USING",
    "WITH",
    "AS",
    "x",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "FOR UPDATE",
    "FOR NO KEY UPDATE",
    "FOR SHARE",
    ";",
    "/* shardgate: shard_key=7 */",
    "/* shardgate: shard=s1 */",
    "/* shardgate: bogus */",
    "SET shardgate.shard_key =",
    "SET LOCAL shardgate.shard TO",
    "RESET shardgate.shard_key",
    "SHARDGATE ROUTE",
    "CREATE TABLE",
    "ALTER TABLE",
    "DROP TABLE",
    "TRUNCATE",
    "COPY",
    "STDIN",
    "nextval('s')",
    "audit_write()",
    "EXPLAIN",
    "DO $$ BEGIN END $$",
    "::int8",
    "::uuid",
    "::text",
    "'6f1c2b1e-8a0b-4d6c-9e43-0c6a1f2e3d4b'",
    "ARRAY[1,2,3]",
    "UNION ALL",
    "EXISTS",
    "(SELECT",
    "CASE WHEN",
    "THEN",
    "ELSE",
    "END",
    "--",
    "'",
    "\"",
    "$$",
    "E'\\\\'",
];
