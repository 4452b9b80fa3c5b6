//! Queries through the proxy: several statements, empty queries and notices in the simple
//! protocol; parameters of many types in the extended one; pipelined executions with errors
//! among them; portals read a few rows at a time; and results relayed byte for byte.

use std::fmt::Debug;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage, Statement};

use super::{expect_sqlstate, one, simple_rows, tags};
use crate::common::{raw, Env, RawClient, RawMsg, Setup};

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
    expect_sqlstate(
        client.simple_query("select 1; select 1/0; select 3").await,
        "22012",
    );
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
    assert_eq!(
        one::<String, _>(&client, "select 'still fine'", &[]).await,
        "still fine"
    );

    drop(client);
    env.stop().await;
}

/// `value`, sent as the one parameter of `sql`, comes back equal.
async fn round_trip<T>(client: &Client, sql: &str, value: T)
where
    T: ToSql + Sync + for<'a> FromSql<'a> + PartialEq + Debug,
{
    let back: T = one(client, sql, &[&value]).await;
    assert_eq!(back, value, "{sql}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_parameters_round_trip() {
    let env = Env::start(Setup::default()).await;
    let client = env.connect().await;

    round_trip(&client, "select $1::int2", -12_345i16).await;
    round_trip(&client, "select $1::int4", i32::MIN).await;
    round_trip(&client, "select $1::int8", i64::MAX).await;
    let text = "héllo, wörld ✓ 'quoted' \"double\"".to_owned();
    round_trip(&client, "select $1::text", text).await;
    round_trip(&client, "select $1::text", String::new()).await;
    round_trip(
        &client,
        "select $1::bytea",
        (0..=255u8).collect::<Vec<u8>>(),
    )
    .await;
    // A large value spans many socket reads.
    let large: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    round_trip(&client, "select $1::bytea", large).await;
    round_trip(&client, "select $1::float8", 1.5e300f64).await;
    round_trip(&client, "select $1::bool", true).await;
    let at = chrono::DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap();
    round_trip(&client, "select $1::timestamptz", at).await;
    let id = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
    round_trip(&client, "select $1::uuid", id).await;
    let json = serde_json::json!({"a": [1, 2, {"b": null}], "c": "d", "e": 1.5});
    round_trip(&client, "select $1::jsonb", json).await;
    round_trip(&client, "select $1::int4", None::<i32>).await;
    round_trip(&client, "select $1::text", None::<String>).await;
    round_trip(&client, "select $1::int4[]", vec![1, -2, 3, i32::MAX]).await;
    let texts = vec![Some("a".to_owned()), None, Some("c,d \"e\"".to_owned())];
    round_trip(&client, "select $1::text[]", texts).await;
    round_trip(&client, "select $1::int4[]", Vec::<i32>::new()).await;

    // numeric without the decimal feature: through text.
    for n in [
        "123456789012345678901234567890.123456789",
        "-0.000001",
        "NaN",
        "0",
    ] {
        let back: String = one(&client, "select $1::text::numeric::text", &[&n]).await;
        assert_eq!(back, n);
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

/// Executes `div` (`$1 / $2`) for every (dividend, divisor) pipelined on one connection; each
/// gives its quotient, or 22012 for a zero divisor, whatever failed before it.
async fn pipelined_divisions(client: &Client, div: &Statement, cases: &[(i32, i32)]) {
    let results = futures_util::future::join_all(
        cases
            .iter()
            .map(|&(n, d)| async move { client.query_one(div, &[&n, &d]).await }),
    )
    .await;
    for (&(n, d), result) in cases.iter().zip(results) {
        if d == 0 {
            expect_sqlstate(result, "22012");
        } else {
            assert_eq!(result.unwrap().get::<_, i32>(0), n / d, "{n} / {d}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_with_an_error_in_the_middle() {
    let env = Env::start(Setup::default().pool_size(2)).await;
    let client = env.connect().await;

    // Statements prepared first, then five executions pipelined on one connection.
    let div = client.prepare("select $1::int4 / $2::int4").await.unwrap();
    pipelined_divisions(&client, &div, &[(10, 2), (9, 3), (1, 0), (8, 4), (7, 7)]).await;

    // Unprepared: each query's Parse/Describe and Bind/Execute interleave in the pipeline.
    let (a, b, c, d) = tokio::join!(
        client.query_one("select 'a'::text", &[]),
        client.query_one("select 'b'::text || $1::text", &[&"!"]),
        client.query_one("select * from no_such_table", &[]),
        client.simple_query("select 'd'"),
    );
    assert_eq!(a.unwrap().get::<_, &str>(0), "a");
    assert_eq!(b.unwrap().get::<_, &str>(0), "b!");
    expect_sqlstate(c, "42P01");
    assert_eq!(simple_rows(&d.unwrap()), vec![vec![Some("d".into())]]);

    // A longer pipeline with an error every seventh query.
    let cases: Vec<(i32, i32)> = (0..40)
        .map(|i| (i, if i % 7 == 3 { 0 } else { 1 }))
        .collect();
    pipelined_divisions(&client, &div, &cases).await;

    assert_eq!(
        one::<String, _>(&client, "select 'done'", &[]).await,
        "done"
    );
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
    assert_eq!(one::<i32, _>(&other, "select 1", &[]).await, 1);
    drop((client, other));
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
