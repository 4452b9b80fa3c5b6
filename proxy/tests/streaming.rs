//! Cross-shard results stream through a real `shardgate serve` process in front of two real
//! PostgreSQL shards: a `SELECT *` of 3 million rows keeps the proxy's peak RSS bounded; ORDER
//! BY merges with LIMIT answer right and leave every server connection idle; a shard error in
//! the middle of a result follows the rows already sent; a client that leaves mid-result
//! frees its server connections; and a re-aggregation whose partial groups pass
//! `limits.max_buffered_result` gets 54000 while the session stays usable.
//!
//! The rows come from views over `generate_series` on each shard (nothing to load): shard `i`
//! holds the keys `2g + i`, so together they hold `0 .. 2n` exactly once, interleaved.

use std::path::PathBuf;
use std::pin::pin;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use shardgate_localpg::{free_port, Auth, ClusterOptions, PgCluster};
use tokio_postgres::{Client, SimpleQueryMessage};

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");
const USER: &str = "app";
const PASSWORD: &str = "app-secret";
const DB: &str = "app";
const TOKEN: &str = "streaming-test-token";

/// Rows of the view `big` on each shard (3 million in all).
const BIG_PER_SHARD: i64 = 1_500_000;
/// Rows of the view `mid` on each shard.
const MID_PER_SHARD: i64 = 50_000;
/// The bound issue 14 sets for a `SELECT *` over 3 million rows.
const RSS_BOUND_KB: u64 = 150 * 1024;

/// Two shards with the views, and a `shardgate serve` child process in front of them.
struct World {
    shards: Vec<PgCluster>,
    proxy: Child,
    port: u16,
    admin: u16,
    _dir: tempfile::TempDir,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.proxy.kill();
        let _ = self.proxy.wait();
    }
}

fn view_sql(shard: i64) -> String {
    format!(
        "create view big as select (2 * g + {shard})::bigint as user_id, \
             md5((2 * g + {shard})::text) as payload \
           from generate_series(0, {big}) g;
         create view mid as select (2 * g + {shard})::bigint as user_id, \
             (2 * g + {shard}) % 100 as bucket, md5((2 * g + {shard})::text) as payload \
           from generate_series(0, {mid}) g;",
        big = BIG_PER_SHARD - 1,
        mid = MID_PER_SHARD - 1,
    )
}

impl World {
    /// `limits` is the proxy's `[limits]` table body.
    async fn start(limits: &str) -> World {
        let limits = limits.to_owned();
        tokio::task::spawn_blocking(move || World::start_blocking(&limits))
            .await
            .expect("join")
    }

    fn start_blocking(limits: &str) -> World {
        let shards: Vec<PgCluster> = (0..2)
            .map(|i| {
                let c =
                    PgCluster::start(ClusterOptions::default().user(USER, PASSWORD, Auth::Scram))
                        .expect("start PostgreSQL");
                // C collation: the proxy merges text sort keys byte-wise.
                c.psql(
                    "postgres",
                    &format!(
                        "create database {DB} owner {USER} template template0 \
                         lc_collate 'C' lc_ctype 'C'"
                    ),
                )
                .expect("create database");
                c.psql_as(USER, PASSWORD, DB, &view_sql(i))
                    .expect("create views");
                c
            })
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, admin) = (free_port(), free_port());
        let mut text = format!(
            r#"
[listen]
addr = "127.0.0.1:{port}"
shutdown_timeout = "2s"

[admin]
listen = "127.0.0.1:{admin}"
token_env = "TEST_ADMIN_TOKEN"

[pool]
mode = "transaction"
size = 4

[limits]
{limits}

[[users]]
name = "{USER}"
password = "{PASSWORD}"

[[sharding.tables]]
name = "big"

[[sharding.tables]]
name = "mid"
"#
        );
        for (i, c) in shards.iter().enumerate() {
            text.push_str(&format!(
                "\n[[shards]]\nname = \"s{i}\"\nprimary = {{ host = \"127.0.0.1\", port = {} }}\n",
                c.port()
            ));
        }
        let config: PathBuf = dir.path().join("shardgate.toml");
        std::fs::write(&config, text).expect("write config");
        let proxy = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("TEST_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shardgate");
        let world = World {
            shards,
            proxy,
            port,
            admin,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(world.admin, "/ready").0 != 200 {
            assert!(Instant::now() < deadline, "shardgate did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        world
    }

    async fn client(&self) -> Client {
        connect(&format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DB}",
            self.port
        ))
        .await
    }

    async fn shard_client(&self, i: usize) -> Client {
        connect(&format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname={DB}",
            self.shards[i].port(),
            self.shards[i].superuser_password()
        ))
        .await
    }

    /// The proxy's peak resident set (VmHWM), in KiB.
    fn peak_rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proxy.id()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    /// Server connections in use according to `/api/v1/pools`, summed over the pools.
    fn pools_in_use(&self) -> u64 {
        let (status, body) = http_get_auth(self.admin, "/api/v1/pools", Some(TOKEN));
        assert_eq!(status, 200, "{body}");
        let pools: serde_json::Value = serde_json::from_str(&body).expect("pools JSON");
        pools
            .as_array()
            .expect("a list of pools")
            .iter()
            .map(|p| p["in_use"].as_u64().expect("in_use"))
            .sum()
    }

    /// The proxy's server connections on each shard that are not idle (state, query).
    async fn busy_backends(&self) -> Vec<(String, String)> {
        let mut busy = Vec::new();
        for i in 0..self.shards.len() {
            let su = self.shard_client(i).await;
            for row in su
                .query(
                    "select coalesce(state, ''), query from pg_stat_activity \
                     where datname = $1 and usename = $2 and state is distinct from 'idle'",
                    &[&DB, &USER],
                )
                .await
                .expect("pg_stat_activity")
            {
                busy.push((format!("s{i}: {}", row.get::<_, String>(0)), row.get(1)));
            }
        }
        busy
    }

    /// Every server connection is back in its pool and idle on its server (waiting a little
    /// for the pool to see what the session released).
    async fn assert_pools_clean(&self, after: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let in_use = self.pools_in_use();
            let busy = self.busy_backends().await;
            if in_use == 0 && busy.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "after {after}: {in_use} connections in use, busy backends {busy:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        tokio::task::spawn_blocking(move || drop(self)).await.ok();
    }
}

async fn connect(conn_str: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    http_get_auth(port, path, None)
}

/// One HTTP/1.1 GET; (status, body). Status 0 when nothing answers.
fn http_get_auth(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    shardgate_tests::http::request(port, "GET", path, token, "")
}

/// What a simple query streamed: rows (first column parsed as i64, summed), the count in
/// CommandComplete, and the error that ended it, if any.
#[derive(Debug, Default)]
struct Streamed {
    rows: u64,
    key_sum: i128,
    completed: Option<u64>,
    error: Option<tokio_postgres::Error>,
}

/// Runs `sql` in the simple protocol, reading the rows one at a time (nothing is collected).
async fn stream_simple(client: &Client, sql: &str) -> Streamed {
    let mut got = Streamed::default();
    let stream = match client.simple_query_raw(sql).await {
        Ok(s) => s,
        Err(e) => {
            got.error = Some(e);
            return got;
        }
    };
    let mut stream = pin!(stream);
    while let Some(m) = stream.next().await {
        match m {
            Ok(SimpleQueryMessage::Row(r)) => {
                got.rows += 1;
                let key: i64 = r.get(0).and_then(|v| v.parse().ok()).unwrap_or(0);
                got.key_sum += i128::from(key);
            }
            Ok(SimpleQueryMessage::CommandComplete(n)) => got.completed = Some(n),
            Ok(_) => {}
            Err(e) => {
                got.error = Some(e);
                break;
            }
        }
    }
    got
}

/// The rows of a simple query's answer, as text.
fn rows_of(messages: Vec<SimpleQueryMessage>) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_owned()).unwrap_or_default()
}

/// Issue 14's bound: `SELECT *` over 3 million rows across 2 shards keeps the proxy under
/// 150 MB of RSS (before streaming, the whole ~160 MB result sat in the client buffer and the
/// peak was 192 MB): concatenated in the simple protocol, then k-way merged by ORDER BY in the
/// extended protocol with binary rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_star_over_3_million_rows_keeps_the_proxy_under_150_mb() {
    let world = World::start("").await;
    let client = world.client().await;
    let before = world.peak_rss_kb();
    let started = Instant::now();
    let got = stream_simple(&client, "select * from big").await;
    let took = started.elapsed();
    assert!(got.error.is_none(), "{:?}", got.error);
    let total = 2 * BIG_PER_SHARD;
    assert_eq!(got.rows, total as u64);
    assert_eq!(
        got.completed,
        Some(total as u64),
        "CommandComplete SELECT n"
    );
    // Every key 0 .. 2n-1 exactly once.
    assert_eq!(got.key_sum, i128::from(total) * i128::from(total - 1) / 2);
    let peak = world.peak_rss_kb();
    eprintln!(
        "select * over {total} rows: {took:?}; proxy VmHWM {before} kB before, {peak} kB after"
    );
    assert!(
        peak < RSS_BOUND_KB,
        "the proxy's peak RSS was {peak} kB (bound {RSS_BOUND_KB} kB)"
    );
    world.assert_pools_clean("select *").await;

    // The same in the extended protocol with binary rows, the ORDER BY merge this time.
    let started = Instant::now();
    let rows = client
        .query_raw(
            "select * from big order by user_id",
            std::iter::empty::<i64>(),
        )
        .await
        .expect("extended select");
    let mut rows = pin!(rows);
    let (mut count, mut previous) = (0i64, -1i64);
    while let Some(row) = rows.next().await {
        let key: i64 = row.expect("a row").get(0);
        assert_eq!(key, previous + 1, "merged in order");
        previous = key;
        count += 1;
    }
    assert_eq!(count, total);
    assert_eq!(rows.rows_affected(), Some(total as u64));
    let peak = world.peak_rss_kb();
    eprintln!(
        "select * … order by over {total} rows (extended, binary): {:?}; proxy VmHWM {peak} kB",
        started.elapsed()
    );
    assert!(
        peak < RSS_BOUND_KB,
        "the proxy's peak RSS was {peak} kB (bound {RSS_BOUND_KB} kB)"
    );
    // The session goes on.
    let one = rows_of(client.simple_query("select 1").await.expect("select 1"));
    assert_eq!(one, vec![vec![Some("1".to_owned())]]);
    world.assert_pools_clean("select * … order by").await;
    drop(client);
    world.stop().await;
}

/// ORDER BY merges over large shards with LIMIT/OFFSET give one PostgreSQL's answer and leave
/// every server connection idle; a shard error after rows were sent follows them; a client
/// that leaves in the middle of a large result frees its server connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_merges_stop_early_fail_mid_stream_and_leave_the_pools_clean() {
    let world = World::start("").await;
    let client = world.client().await;
    // The reference: one server computing the same 3 million rows.
    let reference = world.shard_client(0).await;
    let all = format!(
        "(select g::bigint as user_id, md5(g::text) as payload \
          from generate_series(0, {}) g) big",
        2 * BIG_PER_SHARD - 1
    );

    // A text sort (byte-wise under C), with OFFSET, in the extended protocol.
    let by_payload = "select user_id, payload from big order by payload, user_id limit 10 offset 5";
    let got: Vec<(i64, String)> = client
        .query(by_payload, &[])
        .await
        .expect("order by payload")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want: Vec<(i64, String)> = reference
        .query(&by_payload.replace("from big", &format!("from {all}")), &[])
        .await
        .expect("reference")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(got.len(), 10);
    assert_eq!(got, want);
    world.assert_pools_clean(by_payload).await;

    // A large merge that stops at its LIMIT: the keys interleave across the shards.
    let top = "select user_id from big order by user_id desc limit 200000";
    let got = stream_simple(&client, top).await;
    assert!(got.error.is_none(), "{:?}", got.error);
    assert_eq!(got.rows, 200_000);
    assert_eq!(got.completed, Some(200_000));
    let last = 2 * BIG_PER_SHARD - 1;
    let first = last - 199_999;
    assert_eq!(
        got.key_sum,
        (i128::from(first) + i128::from(last)) * 200_000 / 2
    );
    world.assert_pools_clean(top).await;
    let keys: Vec<i64> = client
        .query(
            "select user_id from big order by user_id limit 6 offset 1000",
            &[],
        )
        .await
        .expect("offset")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, (1000..1006).collect::<Vec<i64>>());

    // Concatenation with a LIMIT.
    let few = stream_simple(&client, "select * from big limit 5").await;
    assert_eq!((few.rows, few.completed), (5, Some(5)));
    world.assert_pools_clean("select * from big limit 5").await;

    // A shard fails after 30,000 of its rows went to the client: the rows, then the error
    // (as PostgreSQL sends an error mid-result), no CommandComplete. The other shard's rest
    // is drained (`mid`: 2.5 MB) or, past the drain budget, its connection closed (`big`).
    for view in ["mid", "big"] {
        let failing = format!("select user_id, 1 / (user_id - 60000) from {view}");
        let got = stream_simple(&client, &failing).await;
        let error = got.error.as_ref().expect("the division by zero");
        assert_eq!(sqlstate(error), "22012", "{failing}: {error:?}");
        let message = error.as_db_error().map(|d| d.message()).unwrap_or_default();
        assert!(message.starts_with("shard s0: "), "{message}");
        assert!(
            got.rows >= 10_000,
            "{failing}: rows streamed before the error: {}",
            got.rows
        );
        assert_eq!(got.completed, None);
        world.assert_pools_clean(&failing).await;
    }
    let again = stream_simple(&client, "select user_id from mid").await;
    assert_eq!(again.completed, Some(2 * MID_PER_SHARD as u64));

    // A client that stops reading after a few rows of 3 million holds the shards back: the
    // proxy stops reading the shard it is streaming (s0), whose backend then waits to send
    // (wait event ClientWrite) instead of running to the end into the proxy's memory. Then
    // the client leaves.
    let leaver = world.client().await;
    {
        let stream = leaver
            .simple_query_raw("select * from big")
            .await
            .expect("start");
        let mut stream = pin!(stream);
        for _ in 0..1000 {
            match stream.next().await {
                Some(Ok(_)) => {}
                other => panic!("expected rows, got {other:?}"),
            }
        }
        let s0 = world.shard_client(0).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let waiting: i64 = s0
                .query_one(
                    "select count(*) from pg_stat_activity where usename = $1 \
                     and wait_event = 'ClientWrite' and query like '%from big%'",
                    &[&USER],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            if waiting == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "s0's backend never waited for the proxy to read"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let peak = world.peak_rss_kb();
        assert!(peak < RSS_BOUND_KB, "peak RSS {peak} kB with a slow client");
    }
    drop(leaver);
    world.assert_pools_clean("a client left mid-result").await;
    let one = rows_of(client.simple_query("select 1").await.expect("select 1"));
    assert_eq!(one, vec![vec![Some("1".to_owned())]]);
    drop(client);
    drop(reference);
    world.stop().await;
}

/// A grouped aggregate whose partial groups pass `limits.max_buffered_result` gets 54000
/// naming the limit; the session then runs other statements, and the same shape under the
/// limit equals one PostgreSQL's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_past_max_buffered_result_gets_54000_and_the_session_goes_on() {
    let world = World::start("max_buffered_result = 65536").await;
    let client = world.client().await;

    // 100,000 groups of one row each: far more than 64 KiB of partial rows. (Grouped by
    // payload, not by the shard key: groups by the key are whole on each shard and stream.)
    let too_many = "select payload, count(*) from mid group by payload";
    for (mode, result) in [
        ("simple", client.simple_query(too_many).await.map(|_| ())),
        ("extended", client.query(too_many, &[]).await.map(|_| ())),
    ] {
        let e = result.expect_err("past the limit");
        assert_eq!(sqlstate(&e), "54000", "{mode}: {e:?}");
        let db = e.as_db_error().expect("a server error");
        assert!(
            db.message().contains("limits.max_buffered_result"),
            "{mode}: {}",
            db.message()
        );
        assert!(
            db.hint()
                .unwrap_or_default()
                .contains("raise limits.max_buffered_result"),
            "{mode}: {:?}",
            db.hint()
        );
        world.assert_pools_clean(too_many).await;
    }

    let metrics = http_get(world.admin, "/metrics").1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("shardgate_errors_total{class=\"54\"} 2")),
        "54000 counted in /metrics"
    );

    // 100 groups fit; the answer is one PostgreSQL's.
    let buckets = "select bucket, count(*), sum(user_id) from mid group by bucket order by bucket";
    let got = rows_of(client.simple_query(buckets).await.expect("100 groups"));
    let reference = world.shard_client(0).await;
    let want = rows_of(
        reference
            .simple_query(&format!(
                "select g % 100 as bucket, count(*), sum(g::bigint) \
                 from generate_series(0, {}) g group by 1 order by 1",
                2 * MID_PER_SHARD - 1
            ))
            .await
            .expect("reference"),
    );
    assert_eq!(got.len(), 100);
    assert_eq!(got, want, "{buckets}");
    world.assert_pools_clean(buckets).await;

    // Grouped by the shard key, the same 100,000 groups are grouped on the shards and stream
    // as plain rows: nothing is buffered, so the small limit does not apply.
    let by_key = rows_of(
        client
            .simple_query("select user_id, count(*) from mid group by user_id")
            .await
            .expect("grouped by the shard key"),
    );
    assert_eq!(by_key.len() as i64, 2 * MID_PER_SHARD);
    assert!(by_key.iter().all(|r| r[1].as_deref() == Some("1")));
    world.assert_pools_clean("grouped by the shard key").await;
    drop(client);
    drop(reference);
    world.stop().await;
}

/// Issue 18's bound for gathered reads: a `SELECT DISTINCT` and a window query over the 3
/// million rows of `big` (which the proxy cannot merge, so it copies them into temporary tables
/// on the default shard) keep the proxy's peak RSS under the same bound — the proxy forwards
/// the COPY data in 64 KiB writes and streams the result — and a gather past
/// `limits.max_gather_rows` (big and mid together) gets 54000 with the session usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gathered_reads_over_3_million_rows_stay_bounded() {
    let total = 2 * BIG_PER_SHARD;
    let world = World::start(&format!("max_gather_rows = {total}")).await;
    let client = world.client().await;

    let started = Instant::now();
    let distinct = rows_of(
        client
            .simple_query("select distinct user_id % 1000 from big")
            .await
            .expect("select distinct gathered"),
    );
    assert_eq!(distinct.len(), 1000);
    eprintln!(
        "select distinct over {total} rows (gathered): {:?}",
        started.elapsed()
    );

    // A window over every row, streamed back in order (extended protocol, binary rows).
    let started = Instant::now();
    let rows = client
        .query_raw(
            "select user_id, row_number() over (order by user_id) from big order by user_id",
            std::iter::empty::<i64>(),
        )
        .await
        .expect("window query gathered");
    let mut rows = pin!(rows);
    let mut count = 0i64;
    while let Some(row) = rows.next().await {
        let row = row.expect("a row");
        let (key, n): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!((key, n), (count, count + 1));
        count += 1;
    }
    assert_eq!(count, total);
    let peak = world.peak_rss_kb();
    eprintln!(
        "window query over {total} rows (gathered): {:?}; proxy VmHWM {peak} kB",
        started.elapsed()
    );
    assert!(
        peak < RSS_BOUND_KB,
        "the proxy's peak RSS was {peak} kB (bound {RSS_BOUND_KB} kB)"
    );

    // big and mid together pass limits.max_gather_rows.
    let e = client
        .simple_query(
            "select count(distinct b.user_id) from big b join mid m on m.bucket = b.user_id",
        )
        .await
        .expect_err("past max_gather_rows");
    assert_eq!(sqlstate(&e), "54000", "{e:?}");
    assert!(
        e.as_db_error()
            .is_some_and(|d| d.message().contains("limits.max_gather_rows")),
        "{e:?}"
    );
    let one = rows_of(client.simple_query("select 1").await.expect("select 1"));
    assert_eq!(one, vec![vec![Some("1".to_owned())]]);
    world.assert_pools_clean("gathered reads").await;
    drop(client);
    world.stop().await;
}
