//! COPY through the proxy on a pool of one server connection: FROM STDIN and TO STDOUT with
//! tokio-postgres, a COPY failing on bad data or abandoned by the client, and COPY in the
//! simple and extended protocols as psql and drivers send it. After each, the single server
//! connection must be free for another client.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, TryStreamExt};
use tokio_postgres::Client;

use super::{expect_sqlstate, one, tags};
use crate::common::{raw, Env, RawClient, Setup};

/// Sends `data` as one CopyData message, then CopyDone, each in its own write.
async fn send_copy(raw: &mut RawClient, data: &[u8]) {
    let mut copy_data = vec![b'd'];
    copy_data.extend_from_slice(&(data.len() as i32 + 4).to_be_bytes());
    copy_data.extend_from_slice(data);
    raw.send(&copy_data).await;
    raw.send(&[b'c', 0, 0, 0, 4]).await; // CopyDone
}

/// After a COPY that failed or was abandoned: `copy_t` still holds its 10,000 rows, and the
/// single server connection serves the other client (`select {n}`).
async fn assert_nothing_copied_and_released(client: &Client, other: &Client, n: i32) {
    let rows: i64 = one(client, "select count(*) from copy_t", &[]).await;
    assert_eq!(rows, 10_000);
    assert_eq!(one::<i32, _>(other, &format!("select {n}"), &[]).await, n);
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
    let md5 = "md5(string_agg(name || encode(payload, 'hex'), ',' order by id))";
    let row = other
        .query_one(&format!("select count(*), sum(id), {md5} from copy_t"), &[])
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
    let checksum_out: String = one(&other, &format!("select {md5} from copy_t"), &[]).await;
    assert_eq!(checksum_out, checksum_in);

    // A COPY that fails on bad data reports the server's error and leaves the session usable.
    let sink = client.copy_in("copy copy_t (id) from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from_static(b"20000\nnot a number\n"))
        .await
        .unwrap();
    expect_sqlstate(sink.finish().await, "22P02");
    assert_nothing_copied_and_released(&client, &other, 1).await;

    // A COPY the client abandons (CopyFail): nothing is copied, the session goes on.
    {
        let sink = client.copy_in("copy copy_t (id) from stdin").await.unwrap();
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from_static(b"30000\n30001\n"))
            .await
            .unwrap();
    }
    assert_nothing_copied_and_released(&client, &other, 2).await;

    // COPY through the simple protocol, as psql does it.
    let mut raw = RawClient::connect(env.port()).await;
    raw.send(&raw::query("copy copy_t (id, name) from stdin"))
        .await;
    let msg = raw.read_msg().await.unwrap();
    assert_eq!(msg.tag, b'G', "CopyInResponse");
    send_copy(&mut raw, b"20001\tsimple\n20002\tsimple\n").await;
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
    batch.extend_from_slice(&raw::flush());
    raw.send(&batch).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(raw.read_msg().await.unwrap());
    }
    assert_eq!(tags(&got), "12G");
    raw.send(&raw::sync()).await;
    send_copy(&mut raw, b"20003\textended\n").await;
    raw.send(&raw::sync()).await;
    let msgs = raw.read_until_ready().await;
    assert_eq!(tags(&msgs), "CZ");
    // Everything was released: the other client runs.
    let copied: i64 = one(&other, "select count(*) from copy_t where id > 20000", &[]).await;
    assert_eq!(copied, 3);
    let msgs = raw.simple("select 1").await;
    assert_eq!(tags(&msgs), "TDCZ");

    drop((client, other));
    env.stop().await;
}
