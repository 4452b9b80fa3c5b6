//! tokio-postgres through the proxy: the simple and extended protocols, types, transactions,
//! COPY, cancel, pipelining, portals, authentication, and the pool's limits and recovery.

mod common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{raw, sqlstate, wait_for, Env, RawClient, RawMsg, Setup};
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::{AsyncMessage, NoTls, SimpleQueryMessage};

/// Rows of a simple-query result, as text (NULL as None).
fn simple_rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

fn tags(msgs: &[RawMsg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

fn copy_data(data: &[u8]) -> Vec<u8> {
    let mut v = vec![b'd'];
    v.extend_from_slice(&(data.len() as i32 + 4).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn copy_done() -> [u8; 5] {
    [b'c', 0, 0, 0, 4]
}

fn command_counts(msgs: &[SimpleQueryMessage]) -> Vec<u64> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_protocol_multi_statement_empty_query_and_notice() {
    let env = Env::start(Setup::default()).await;

    // A connection whose notices are captured instead of dropped.
    let (client, mut connection) = tokio_postgres::connect(&env.conn_str(), NoTls)
        .await
        .unwrap();
    let (notice_tx, mut notices) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(msg)) = stream.next().await {
            if let AsyncMessage::Notice(n) = msg {
                let _ = notice_tx.send(n.message().to_owned());
            }
        }
    });

    // Simple query.
    let msgs = client
        .simple_query("select 1 as one, null as nothing")
        .await
        .unwrap();
    assert_eq!(simple_rows(&msgs), vec![vec![Some("1".into()), None]]);

    // Several statements in one Query: every result comes back, in order.
    let msgs = client
        .simple_query("select 1; select g from generate_series(1, 3) g; values ('a', 'b'); select where false")
        .await
        .unwrap();
    assert_eq!(
        simple_rows(&msgs),
        vec![
            vec![Some("1".into())],
            vec![Some("1".into())],
            vec![Some("2".into())],
            vec![Some("3".into())],
            vec![Some("a".into()), Some("b".into())],
        ]
    );
    assert_eq!(command_counts(&msgs), vec![1, 3, 1, 0]);

    // An error in the middle of a multi-statement query stops it there; the session goes on.
    let e = client
        .simple_query("select 1; select 1/0; select 3")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("22012"), "{e}");
    assert_eq!(
        simple_rows(&client.simple_query("select 'after'").await.unwrap()),
        vec![vec![Some("after".into())]]
    );

    // Empty query strings (EmptyQueryResponse), simple and extended.
    let msgs = client.simple_query("").await.unwrap();
    assert!(simple_rows(&msgs).is_empty(), "{msgs:?}");
    client.batch_execute("  ;  ").await.unwrap();
    let rows = client.query("", &[]).await.unwrap();
    assert!(rows.is_empty());

    // NoticeResponse reaches the client and the statement succeeds.
    client
        .batch_execute("do $$ begin raise notice 'hi'; end $$")
        .await
        .unwrap();
    let notice = tokio::time::timeout(Duration::from_secs(5), notices.recv())
        .await
        .expect("notice in time")
        .unwrap();
    assert_eq!(notice, "hi");
    let row = client.query_one("select 'still fine'", &[]).await.unwrap();
    assert_eq!(row.get::<_, &str>(0), "still fine");

    drop(client);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_parameters_round_trip() {
    let env = Env::start(Setup::default()).await;
    let client = env.connect().await;

    macro_rules! round_trip {
        ($sql:expr, $value:expr, $ty:ty) => {{
            let v: $ty = $value;
            let row = client.query_one($sql, &[&v]).await.unwrap();
            let back: $ty = row.get(0);
            assert_eq!(back, v, "{}", $sql);
        }};
    }
    round_trip!("select $1::int2", -12_345i16, i16);
    round_trip!("select $1::int4", i32::MIN, i32);
    round_trip!("select $1::int8", i64::MAX, i64);
    round_trip!(
        "select $1::text",
        "héllo, wörld ✓ 'quoted' \"double\"".to_owned(),
        String
    );
    round_trip!("select $1::text", String::new(), String);
    round_trip!(
        "select $1::bytea",
        (0..=255u8).collect::<Vec<u8>>(),
        Vec<u8>
    );
    // A large value spans many socket reads.
    round_trip!(
        "select $1::bytea",
        (0..3_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
        Vec<u8>
    );
    round_trip!("select $1::float8", 1.5e300f64, f64);
    round_trip!("select $1::bool", true, bool);
    round_trip!(
        "select $1::timestamptz",
        chrono::DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap(),
        chrono::DateTime<chrono::Utc>
    );
    round_trip!(
        "select $1::uuid",
        uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210),
        uuid::Uuid
    );
    round_trip!(
        "select $1::jsonb",
        serde_json::json!({"a": [1, 2, {"b": null}], "c": "d", "e": 1.5}),
        serde_json::Value
    );
    round_trip!("select $1::int4", None, Option<i32>);
    round_trip!("select $1::text", None, Option<String>);
    round_trip!("select $1::int4[]", vec![1, -2, 3, i32::MAX], Vec<i32>);
    round_trip!(
        "select $1::text[]",
        vec![Some("a".to_owned()), None, Some("c,d \"e\"".to_owned())],
        Vec<Option<String>>
    );
    round_trip!("select $1::int4[]", Vec::new(), Vec<i32>);

    // numeric without the decimal feature: through text.
    for n in [
        "123456789012345678901234567890.123456789",
        "-0.000001",
        "NaN",
        "0",
    ] {
        let row = client
            .query_one("select $1::text::numeric::text", &[&n])
            .await
            .unwrap();
        assert_eq!(row.get::<_, &str>(0), n);
    }

    // Several parameters of different types in one statement, and a NULL among them.
    let row = client
        .query_one(
            "select $1::int8 + $2::int4, $3::text || 'x', $4::bytea is null",
            &[&40i64, &2i32, &"ab", &None::<Vec<u8>>],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 42);
    assert_eq!(row.get::<_, &str>(1), "abx");
    assert!(row.get::<_, bool>(2));

    drop(client);
    env.stop().await;
}

/// 50 clients share a pool of 5 server connections; each prepares once and executes 100 times,
/// each execution its own transaction. The server never sees more than 5 proxy connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statement_reused_by_50_clients_on_a_pool_of_5() {
    let env = Env::start(Setup::default().pool_size(5)).await;
    let direct = Arc::new(env.connect_superuser().await);

    let max_seen = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = {
        let (direct, max_seen, stop) = (direct.clone(), max_seen.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = Env::server_backends(&direct).await;
                max_seen.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // md5 logins: 50 client-side SCRAM key derivations (debug build) would hog the runtime the
    // proxy shares with the test.
    let md5_conn_str = format!(
        "host=127.0.0.1 port={} user=md5_user password=md5-secret dbname=app",
        env.port()
    );
    let mut tasks = Vec::new();
    for c in 0..50i32 {
        let conn_str = md5_conn_str.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = common::connect(&conn_str).await;
            let stmt = client
                .prepare("select $1::int4 * 2, $2::text || '!'")
                .await
                .unwrap();
            for i in 0..100i32 {
                let v = c * 1000 + i;
                let tag = format!("c{c}-{i}");
                let row = if i % 2 == 0 {
                    // Explicit transaction: BEGIN, execute, COMMIT.
                    let tx = client.transaction().await.unwrap();
                    let row = tx.query_one(&stmt, &[&v, &tag]).await.unwrap();
                    tx.commit().await.unwrap();
                    row
                } else {
                    // Implicit transaction.
                    client.query_one(&stmt, &[&v, &tag]).await.unwrap()
                };
                assert_eq!(row.get::<_, i32>(0), v * 2);
                assert_eq!(row.get::<_, String>(1), format!("{tag}!"));
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    stop.store(true, Ordering::Relaxed);
    monitor.await.unwrap();
    let after = Env::server_backends(&direct).await;
    let max = max_seen.load(Ordering::Relaxed);
    assert!((1..=5).contains(&max), "server saw {max} proxy connections");
    assert!(after <= 5, "server has {after} proxy connections");

    drop(direct);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_rollback_and_errors_inside_transactions() {
    let env = Env::start(Setup::default()).await;
    let direct = env.connect_direct().await;
    direct
        .batch_execute("create table t (id int primary key, v text)")
        .await
        .unwrap();
    let mut client = env.connect().await;

    // COMMIT commits.
    let tx = client.transaction().await.unwrap();
    tx.execute("insert into t values (1, 'committed')", &[])
        .await
        .unwrap();
    // Not visible from another connection before the commit.
    let n: i64 = direct
        .query_one("select count(*) from t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    tx.commit().await.unwrap();
    let rows = direct.query("select id, v from t", &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, &str>(1), "committed");

    // ROLLBACK rolls back.
    let tx = client.transaction().await.unwrap();
    tx.execute("insert into t values (2, 'rolled back')", &[])
        .await
        .unwrap();
    tx.execute("update t set v = 'changed' where id = 1", &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let rows = direct
        .query("select id, v from t order by id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, &str>(1), "committed");

    // Simple-protocol transaction control too.
    client
        .batch_execute("begin; insert into t values (3, 'x')")
        .await
        .unwrap();
    client.batch_execute("rollback").await.unwrap();
    client
        .batch_execute("begin; insert into t values (4, 'y'); commit")
        .await
        .unwrap();
    let ids: Vec<i32> = direct
        .query("select id from t order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![1, 4]);

    // An error inside a transaction: the transaction is aborted until ROLLBACK, then the
    // connection is usable again.
    client.batch_execute("begin").await.unwrap();
    client
        .execute("insert into t values (5, 'z')", &[])
        .await
        .unwrap();
    let e = client
        .execute("insert into t values (1, 'dup')", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("23505"), "{e}");
    let e = client.query_one("select 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("25P02"), "{e}");
    let e = client.simple_query("select 1").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("25P02"), "{e}");
    client.batch_execute("rollback").await.unwrap();
    let row = client
        .query_one("select count(*) from t", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2);
    // COMMIT of a failed transaction reports ROLLBACK and leaves nothing behind.
    client.batch_execute("begin").await.unwrap();
    client
        .execute("insert into t values (6, 'w')", &[])
        .await
        .unwrap();
    let _ = client.batch_execute("select 1/0").await.unwrap_err();
    let msgs = client.simple_query("commit").await.unwrap();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let n: i64 = direct
        .query_one("select count(*) from t where id >= 5", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // And the session is fine after all that.
    let row = client.query_one("select $1::int", &[&7i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);

    drop(client);
    drop(direct);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_10000_rows() {
    // One server connection: every statement after the COPYs needs it released.
    let env = Env::start(Setup::default().pool_size(1)).await;
    let client = env.connect().await;
    client
        .batch_execute("create table copy_t (id int primary key, name text, payload bytea)")
        .await
        .unwrap();

    let mut data = String::new();
    for i in 0..10_000 {
        data.push_str(&format!(
            "{i}\tname {i} \\\\ tab\\there\t\\\\x{:08x}\n",
            i * 7919
        ));
    }
    let sink = client
        .copy_in("copy copy_t (id, name, payload) from stdin")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    // In several chunks, as a driver streams them.
    for chunk in data.as_bytes().chunks(50_000) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 10_000);

    // Another client gets the (single) server connection: the COPY released it.
    let other = tokio::time::timeout(Duration::from_secs(5), env.connect())
        .await
        .expect("the server connection was released after COPY FROM STDIN");
    let row = other
        .query_one("select count(*), sum(id), md5(string_agg(name || encode(payload, 'hex'), ',' order by id)) from copy_t", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 10_000);
    assert_eq!(row.get::<_, i64>(1), (0..10_000i64).sum::<i64>());
    let checksum_in: String = row.get(2);

    let stream = client
        .copy_out("copy (select id, name, payload from copy_t order by id) to stdout")
        .await
        .unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    let out: Vec<u8> = chunks.concat();
    assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 10_000);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        data,
        "COPY TO STDOUT returns what went in"
    );

    let row = other
        .query_one(
            "select md5(string_agg(name || encode(payload, 'hex'), ',' order by id)) from copy_t",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), checksum_in);

    // A COPY that fails on bad data reports the server's error and leaves the session usable.
    let sink = client.copy_in("copy copy_t (id) from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from_static(b"20000\nnot a number\n"))
        .await
        .unwrap();
    let e = sink.finish().await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("22P02"), "{e}");
    let row = client
        .query_one("select count(*) from copy_t", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 10_000);
    let row = other.query_one("select 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);

    // A COPY the client abandons (CopyFail): nothing is copied, the session goes on.
    {
        let sink = client.copy_in("copy copy_t (id) from stdin").await.unwrap();
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from_static(b"30000\n30001\n"))
            .await
            .unwrap();
    }
    let row = client
        .query_one("select count(*) from copy_t", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 10_000);
    let row = other.query_one("select 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);

    // COPY through the simple protocol, as psql does it.
    let mut raw = RawClient::connect(env.port()).await;
    raw.send(&raw::query("copy copy_t (id, name) from stdin"))
        .await;
    let msg = raw.read_msg().await.unwrap();
    assert_eq!(msg.tag, b'G', "CopyInResponse");
    raw.send(&copy_data(b"20001\tsimple\n20002\tsimple\n"))
        .await;
    raw.send(&copy_done()).await;
    let msgs = raw.read_until_ready().await;
    assert_eq!(tags(&msgs), "CZ");
    raw.send(&raw::query(
        "copy (select id from copy_t where id > 20000 order by id) to stdout",
    ))
    .await;
    let msgs = raw.read_until_ready().await;
    assert_eq!(tags(&msgs), "HddcCZ");
    assert_eq!(&msgs[1].body[..], b"20001\n");

    // Extended protocol with the Sync sent only after the COPY started (the server ignores it).
    let mut batch = raw::parse("", "copy copy_t (id, name) from stdin");
    batch.extend_from_slice(&raw::bind("", "", &[]));
    batch.extend_from_slice(&raw::execute("", 0));
    batch.extend_from_slice(&[b'H', 0, 0, 0, 4]); // Flush
    raw.send(&batch).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(raw.read_msg().await.unwrap());
    }
    assert_eq!(tags(&got), "12G");
    raw.send(&raw::sync()).await;
    raw.send(&copy_data(b"20003\textended\n")).await;
    raw.send(&copy_done()).await;
    raw.send(&raw::sync()).await;
    let msgs = raw.read_until_ready().await;
    assert_eq!(tags(&msgs), "CZ");
    // Everything was released: the other client runs.
    let row = other
        .query_one("select count(*) from copy_t where id > 20000", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 3);
    let msgs = raw.simple("select 1").await;
    assert_eq!(tags(&msgs), "TDCZ");

    drop((client, other));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_right_query_quickly() {
    let env = Env::start(Setup::default().pool_size(4)).await;
    let direct = env.connect_direct().await;
    let sleeper = env.connect().await;
    let token = sleeper.cancel_token();
    let sleeping = tokio::spawn(async move {
        let r = sleeper.simple_query("select pg_sleep(10)").await;
        (r, sleeper)
    });

    // Other clients keep working before, during and after the cancel.
    let mut others = Vec::new();
    for c in 0..3i32 {
        let conn_str = env.conn_str();
        others.push(tokio::spawn(async move {
            let client = common::connect(&conn_str).await;
            for i in 0..30i32 {
                let row = client
                    .query_one("select $1::int + $2::int", &[&c, &i])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, i32>(0), c + i);
            }
        }));
    }

    assert!(
        wait_for(Duration::from_secs(10), || async {
            let n: i64 = direct
                .query_one(
                    "select count(*) from pg_stat_activity where state = 'active' and query = 'select pg_sleep(10)'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            n == 1
        })
        .await,
        "the sleep never started"
    );
    let start = Instant::now();
    token.cancel_query(NoTls).await.unwrap();
    let (result, sleeper) = sleeping.await.unwrap();
    let elapsed = start.elapsed();
    let e = result.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("57014"), "{e}");
    assert!(elapsed < Duration::from_secs(1), "cancel took {elapsed:?}");
    for o in others {
        o.await.expect("other clients kept working");
    }
    // The cancelled client goes on.
    let row = sleeper.query_one("select 'next'", &[]).await.unwrap();
    assert_eq!(row.get::<_, &str>(0), "next");

    drop((sleeper, direct));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_with_an_error_in_the_middle() {
    let env = Env::start(Setup::default().pool_size(2)).await;
    let client = env.connect().await;

    // Statements prepared first, then five executions pipelined on one connection.
    let div = client.prepare("select $1::int4 / $2::int4").await.unwrap();
    let (a, b, c, d, e) = tokio::join!(
        client.query_one(&div, &[&10i32, &2i32]),
        client.query_one(&div, &[&9i32, &3i32]),
        client.query_one(&div, &[&1i32, &0i32]),
        client.query_one(&div, &[&8i32, &4i32]),
        client.query_one(&div, &[&7i32, &7i32]),
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 5);
    assert_eq!(b.unwrap().get::<_, i32>(0), 3);
    let err = c.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"), "{err}");
    assert_eq!(d.unwrap().get::<_, i32>(0), 2);
    assert_eq!(e.unwrap().get::<_, i32>(0), 1);

    // Unprepared: each query's Parse/Describe and Bind/Execute interleave in the pipeline.
    let (a, b, c, d) = tokio::join!(
        client.query_one("select 'a'::text", &[]),
        client.query_one("select 'b'::text || $1::text", &[&"!"]),
        client.query_one("select * from no_such_table", &[]),
        client.simple_query("select 'd'"),
    );
    assert_eq!(a.unwrap().get::<_, &str>(0), "a");
    assert_eq!(b.unwrap().get::<_, &str>(0), "b!");
    let err = c.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42P01"), "{err}");
    assert_eq!(simple_rows(&d.unwrap()), vec![vec![Some("d".into())]]);

    // A longer pipeline with an error every seventh query.
    let futures = (0..40i32).map(|i| {
        let div = div.clone();
        let client = &client;
        async move {
            let divisor = if i % 7 == 3 { 0 } else { 1 };
            (i, client.query_one(&div, &[&i, &divisor]).await)
        }
    });
    for (i, r) in futures_util::future::join_all(futures).await {
        if i % 7 == 3 {
            assert_eq!(sqlstate(&r.unwrap_err()).as_deref(), Some("22012"));
        } else {
            assert_eq!(r.unwrap().get::<_, i32>(0), i);
        }
    }

    let row = client.query_one("select 'done'", &[]).await.unwrap();
    assert_eq!(row.get::<_, &str>(0), "done");
    drop(client);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portals_with_row_limits() {
    let env = Env::start(Setup::default().pool_size(1)).await;
    let mut client = env.connect().await;
    let stmt = client
        .prepare("select g, 'row ' || g from generate_series(1, $1::int4) g")
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    let portal = tx.bind(&stmt, &[&95i32]).await.unwrap();
    let other_portal = tx.bind(&stmt, &[&3i32]).await.unwrap();
    let mut got = Vec::new();
    let mut fetches = 0;
    loop {
        let rows = tx.query_portal(&portal, 10).await.unwrap();
        fetches += 1;
        if fetches == 2 {
            // Interleave a second portal of the same transaction.
            let rows = tx.query_portal(&other_portal, 0).await.unwrap();
            assert_eq!(rows.len(), 3);
        }
        got.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
        if rows.len() < 10 {
            break;
        }
        assert!(fetches < 20);
    }
    assert_eq!(got, (1..=95).collect::<Vec<i32>>());
    assert_eq!(fetches, 10);
    drop(portal);
    drop(other_portal);
    tx.commit().await.unwrap();

    // query_raw streams rows.
    let stream = client.query_raw(&stmt, &[&1000i32]).await.unwrap();
    let rows: Vec<tokio_postgres::Row> = stream.try_collect().await.unwrap();
    assert_eq!(rows.len(), 1000);
    assert_eq!(rows[999].get::<_, &str>(1), "row 1000");

    // The connection was released: another client gets it.
    let other = env.connect().await;
    assert_eq!(
        other
            .query_one("select 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    drop((client, other));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_md5_wrong_passwords_and_unknown_database() {
    let env = Env::start(Setup::default()).await;
    let port = env.port();

    let md5 = env
        .try_connect(&format!(
            "host=127.0.0.1 port={port} user=md5_user password=md5-secret dbname=app"
        ))
        .await
        .expect("md5 login");
    let row = md5
        .query_one("select current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "md5_user");

    for (user, password) in [
        ("app", "wrong"),
        ("md5_user", "wrong"),
        ("nobody", "x"),
        ("app", ""),
    ] {
        let e = env
            .try_connect(&format!(
                "host=127.0.0.1 port={port} user={user} password='{password}' dbname=app"
            ))
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            sqlstate(&e).as_deref(),
            Some("28P01"),
            "{user}/{password}: {e}"
        );
    }

    let e = env
        .try_connect(&format!(
            "host=127.0.0.1 port={port} user=app password=app-secret dbname=no_such_db"
        ))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("3D000"), "{e}");

    // A startup option the server refuses is reported at connect, as the server would.
    let e = env
        .try_connect(&env.conn_str_with("options='-c work_mem=banana'"))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("22023"), "{e}");

    // Still fine for everyone else.
    common::assert_proxy_serves(&env).await;
    assert_eq!(
        md5.query_one("select 2", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
    drop(md5);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_checkout_timeout_and_client_limit() {
    let setup = Setup {
        listen_extra: "max_client_connections = 3".into(),
        ..Setup::default().pool_size(1)
    };
    let env = Env::start_edited(setup, |t| {
        t.replace("checkout_timeout = \"10s\"", "checkout_timeout = \"1s\"")
    })
    .await;

    let holder = env.connect().await;
    let waiter = env.connect().await;
    holder.batch_execute("begin; select 1").await.unwrap();
    let start = Instant::now();
    let e = waiter.query_one("select 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
    let db = e.as_db_error().unwrap();
    assert!(
        db.message().contains("app/app@s0"),
        "the message names the pool: {}",
        db.message()
    );
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "it waited for the timeout"
    );
    // The waiter's session survives; once the holder commits it gets the connection.
    holder.batch_execute("commit").await.unwrap();
    assert_eq!(
        waiter
            .query_one("select 5", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        5
    );
    // Same for a simple query.
    holder.batch_execute("begin").await.unwrap();
    let e = waiter.simple_query("select 1").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
    holder.batch_execute("rollback").await.unwrap();
    assert_eq!(
        waiter
            .query_one("select 6", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        6
    );

    // max_client_connections = 3: the fourth client is refused with 53300.
    let third = env.connect().await;
    let e = env
        .try_connect(&env.conn_str())
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
    // A slot frees when a client leaves.
    drop(third);
    let env_ref = &env;
    assert!(
        wait_for(Duration::from_secs(5), || async move {
            env_ref.proxy.shared().client_count() < 3
        })
        .await
    );
    let fourth = env
        .try_connect(&env.conn_str())
        .await
        .expect("a slot was free again");
    assert_eq!(
        fourth
            .query_one("select 4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        4
    );

    drop((holder, waiter, fourth));
    env.stop().await;
}

/// A server connection terminated while idle in the pool is never handed out again; the client
/// sees no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_connection_is_replaced() {
    let env = Env::start(Setup::default().pool_size(1)).await;
    let direct = env.connect_direct().await;
    let client = env.connect().await;
    let stmt = client.prepare("select $1::int4 + 1").await.unwrap();

    let mut pids = Vec::new();
    for round in 0..3i32 {
        let pid: i32 = client
            .query_one("select pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(!pids.contains(&pid), "a terminated backend was reused");
        pids.push(pid);
        let killed: bool = direct
            .query_one("select pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap()
            .get(0);
        assert!(killed);
        let gone = wait_for(Duration::from_secs(10), || async {
            let n: i64 = direct
                .query_one(
                    "select count(*) from pg_stat_activity where pid = $1",
                    &[&pid],
                )
                .await
                .unwrap()
                .get(0);
            n == 0
        })
        .await;
        assert!(gone, "backend {pid} did not exit");
        // Next transactions work, through the extended protocol (the prepared statement is
        // re-created on the new connection) and the simple one.
        let row = client.query_one(&stmt, &[&round]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), round + 1);
        let msgs = client.simple_query("select 'ok'").await.unwrap();
        assert_eq!(simple_rows(&msgs), vec![vec![Some("ok".into())]]);
    }

    // Killed in the middle of a transaction: that transaction is lost (the client is told),
    // and the proxy keeps serving.
    let mut victim = env.connect().await;
    let tx = victim.transaction().await.unwrap();
    let pid: i32 = tx
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    direct
        .query_one("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let e = tx.query_one("select 1", &[]).await.unwrap_err();
    assert!(
        e.is_closed() || matches!(sqlstate(&e).as_deref(), Some("57P01" | "08006")),
        "{e}"
    );
    drop(tx);
    drop(victim);
    let row = client.query_one(&stmt, &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    common::assert_proxy_serves(&env).await;

    drop((client, direct));
    env.stop().await;
}

/// A result's rows are relayed byte for byte (the relay copies runs of DataRow and CopyData
/// without cutting frames): many rows of mixed widths and NULLs, a value larger than any read
/// buffer, a COPY TO STDOUT and rows followed by an error, all in one Query, give the same
/// messages through the proxy as from the server itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_relayed_byte_for_byte() {
    let env = Env::start(Setup::default()).await;
    let sql = "select g, repeat('x', g % 700), case when g % 5 = 0 then null else g::text end \
               from generate_series(1, 20000) g; \
               select repeat('y', 200000); \
               copy (select g, g * 2 from generate_series(1, 5000) g) to stdout; \
               select 10 / (g - 3) from generate_series(1, 5) g";
    let mut via_proxy = RawClient::connect(env.port()).await;
    let mut direct = RawClient::connect(env.cluster.port()).await;
    via_proxy.send(&raw::query(sql)).await;
    direct.send(&raw::query(sql)).await;
    let relayed = via_proxy.read_until_ready().await;
    let expected = direct.read_until_ready().await;
    let count = |msgs: &[RawMsg], tag: u8| msgs.iter().filter(|m| m.tag == tag).count();
    // 20,000 + 1 + 2 rows, 5,000 COPY lines, and the division by zero after two rows.
    assert_eq!(count(&expected, b'D'), 20_003);
    assert_eq!(count(&expected, b'd'), 5_000);
    assert_eq!(count(&expected, b'E'), 1);
    assert_eq!(tags(&relayed), tags(&expected));
    for (i, (got, want)) in relayed.iter().zip(&expected).enumerate() {
        assert!(
            got.tag == want.tag && got.body == want.body,
            "message {i} ({}) differs",
            want.tag as char
        );
    }
    // The connection went back to the pool at that ReadyForQuery and serves the next one.
    via_proxy.send(&raw::query("select 1")).await;
    assert_eq!(tags(&via_proxy.read_until_ready().await), "TDCZ");
    env.stop().await;
}
