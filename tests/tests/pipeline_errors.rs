//! An error inside an extended-protocol batch makes the server skip every message up to the
//! next Sync, also those the client sends after the error reached it. The proxy's queue of
//! expected replies must skip them too: otherwise stale entries stay queued, the connection is
//! never given back (with a pool of one, the next client waits forever) and the replies the
//! proxy synthesises for skipped messages reach the client out of turn.

mod common;

use common::{raw, Env, RawClient, RawMsg, Setup};

fn tags(msgs: &[RawMsg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

/// Reads messages up to and including the first ErrorResponse.
async fn read_until_error(c: &mut RawClient) -> Vec<RawMsg> {
    let mut out = Vec::new();
    loop {
        let m = c.read_msg().await.expect("connection open");
        let done = m.tag == b'E';
        out.push(m);
        if done {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_after_an_error_and_before_sync_are_skipped() {
    let env = Env::start(Setup::default().pool_size(1)).await;
    let mut c = RawClient::connect(env.port()).await;

    // A named statement the proxy knows the server accepted.
    c.send(&raw::parse("ok", "select 1")).await;
    c.send(&raw::sync()).await;
    assert_eq!(tags(&c.read_until_ready().await), "1Z");

    // A failing execution, flushed: the error arrives before the client's Sync.
    c.send(&raw::parse("bad", "select 1 / (random() * 0)::int"))
        .await;
    c.send(&raw::bind("", "bad", &[])).await;
    c.send(&raw::execute("", 0)).await;
    c.send(&raw::flush()).await;
    let got = read_until_error(&mut c).await;
    assert_eq!(tags(&got), "12E");
    assert_eq!(got[2].sqlstate().as_deref(), Some("22012"));

    // Sent after the error: the server skips them all; only the Sync gets an answer. (A Parse
    // of a known statement and a Close of a named one are answered by the proxy itself.)
    c.send(&raw::parse("ok", "select 1")).await;
    c.send(&raw::bind("", "ok", &[])).await;
    c.send(&raw::execute("", 0)).await;
    c.send(&raw::close(b'S', "ok")).await;
    c.send(&raw::sync()).await;
    assert_eq!(tags(&c.read_until_ready().await), "Z");

    // The session is in step: a query answers, and the connection goes back to the pool of
    // one, so another client gets it.
    let r = c.simple("select 2").await;
    assert_eq!(tags(&r), "TDCZ");
    assert_eq!(r[1].first_column().as_deref(), Some("2"));
    let other = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let o = env.connect().await;
        o.query_one("select 3", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
    })
    .await
    .expect("the pool's only connection was given back");
    assert_eq!(other.expect("query"), 3);

    // The statement evicted or re-prepared around the error still works.
    c.send(&raw::parse("ok", "select 1")).await;
    c.send(&raw::bind("", "ok", &[])).await;
    c.send(&raw::execute("", 0)).await;
    c.send(&raw::sync()).await;
    let r = c.read_until_ready().await;
    assert_eq!(tags(&r), "12DCZ");
    env.stop().await;
}
