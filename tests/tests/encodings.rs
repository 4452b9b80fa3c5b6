//! Clients whose `client_encoding` is not UTF-8 (LATIN9, SQL_ASCII): their SQL text, Bind
//! values and the server's errors pass through as bytes, and shard keys with non-ASCII
//! characters route to the shard PostgreSQL's own hash of the server's (UTF-8) text names.
//! (These clients were refused with 08P01 "not valid UTF-8" and disconnected.)

mod common;

use common::{raw, RawClient, RawMsg, ShardedEnv, DB, PASSWORD, USER};
use shardgate_router::KeyValue;

const SCHEMA: &str = "create table names (k text primary key, note text);";

async fn start() -> ShardedEnv {
    ShardedEnv::start(
        2,
        SCHEMA,
        &["names"],
        "[sharding]\nkey_column = \"k\"\nkey_type = \"text\"\n",
    )
    .await
}

/// A key (as UTF-8 text) starting with `prefix` that the ring puts on `shard`.
fn key_on(env: &ShardedEnv, shard: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| env.router.shard_for_key(&KeyValue::Text(k.clone())) == shard)
        .unwrap()
}

/// `text` in LATIN9 (every char used here is in LATIN1 and LATIN9 alike).
fn latin9(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).expect("a LATIN1 character"))
        .collect()
}

async fn login(env: &ShardedEnv, encoding: &str) -> RawClient {
    RawClient::login(
        env.proxy.addr().port(),
        &[
            ("user", USER),
            ("database", DB),
            ("client_encoding", encoding),
        ],
        PASSWORD,
    )
    .await
    .expect("login")
}

fn no_error(msgs: &[RawMsg], what: &str) {
    let errors: Vec<String> = msgs
        .iter()
        .filter(|m| m.tag == b'E')
        .map(|m| format!("{:?} {:?}", m.sqlstate(), m.field(b'M')))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:?}");
}

/// The raw bytes of the first column of the first DataRow.
fn first_value(msgs: &[RawMsg]) -> Option<Vec<u8>> {
    let row = msgs.iter().find(|m| m.tag == b'D')?;
    let len = i32::from_be_bytes(row.body[2..6].try_into().ok()?);
    Some(row.body[6..6 + usize::try_from(len).ok()?].to_vec())
}

/// The rows with key `k` straight on shard `i`: (key, note) as UTF-8.
async fn on_shard(env: &ShardedEnv, i: usize, k: &str) -> Vec<(String, String)> {
    env.connect_shard(i)
        .await
        .query("select k, note from names where k = $1", &[&k])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latin9_clients_route_and_read_non_ascii_keys() {
    let env = start().await;
    let mut c = login(&env, "LATIN9").await;
    for shard in 0..2 {
        let key = key_on(&env, shard, "clé-");
        // Simple protocol: the key is a literal in LATIN9 bytes.
        let mut sql = latin9(&format!(
            "insert into names (k, note) values ('{key}', 'été')"
        ));
        let r = c.send_and_read(&raw::query_bytes(&sql)).await;
        no_error(&r, "insert in LATIN9");
        assert_eq!(
            on_shard(&env, shard, &key).await,
            vec![(key.clone(), "été".to_owned())],
            "the row is on shard {shard}, stored as UTF-8 by the server"
        );
        // Read back through the proxy: the server answers in LATIN9.
        sql = latin9(&format!("select note from names where k = '{key}'"));
        let r = c.send_and_read(&raw::query_bytes(&sql)).await;
        no_error(&r, "select in LATIN9");
        assert_eq!(first_value(&r), Some(latin9("été")));

        // Extended protocol: the key as a text Bind value in LATIN9, with a named statement
        // whose text has non-ASCII too.
        let stmt = latin9("select note || ' à' from names where k = $1");
        let mut batch = raw::parse_bytes("s", &stmt);
        batch.extend_from_slice(&raw::bind_bytes("", "s", &[&latin9(&key)]));
        batch.extend_from_slice(&raw::execute("", 0));
        batch.extend_from_slice(&raw::sync());
        let r = c.send_and_read(&batch).await;
        no_error(&r, "extended in LATIN9");
        assert_eq!(first_value(&r), Some(latin9("été à")), "shard {shard}");
        let mut close = raw::close(b'S', "s");
        close.extend_from_slice(&raw::sync());
        no_error(&c.send_and_read(&close).await, "close");
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_in_latin9_reaches_the_client() {
    let env = start().await;
    let mut c = login(&env, "LATIN9").await;
    let sql = latin9("do $$ begin raise exception 'café fermé'; end $$");
    let r = c.send_and_read(&raw::query_bytes(&sql)).await;
    let error = r.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(error.sqlstate().as_deref(), Some("P0001"));
    let message = error
        .body
        .split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(b"M"))
        .expect("a message field");
    assert_eq!(
        message,
        latin9("café fermé").as_slice(),
        "the server's LATIN9 bytes"
    );
    assert_eq!(r.last().map(|m| m.tag), Some(b'Z'));
    // An ASCII statement whose error message the server writes in LATIN9, also through the
    // extended protocol (the proxy reads the error's fields to track the transaction).
    let sql = b"do $$ begin raise exception 'caf%', chr(233); end $$";
    let r = c.send_and_read(&raw::query_bytes(sql)).await;
    let error = r.iter().find(|m| m.tag == b'E').expect("an error");
    assert!(error.body.windows(4).any(|w| w == b"caf\xe9"), "{error:?}");
    let mut batch = raw::parse("", "do $$ begin raise exception 'caf%', chr(233); end $$");
    batch.extend_from_slice(&raw::bind("", "", &[]));
    batch.extend_from_slice(&raw::execute("", 0));
    batch.extend_from_slice(&raw::sync());
    let r = c.send_and_read(&batch).await;
    assert_eq!(
        r.iter().find_map(RawMsg::sqlstate).as_deref(),
        Some("P0001")
    );
    assert_eq!(r.last().map(|m| m.tag), Some(b'Z'));
    // The connection stays up.
    let r = c.simple("select 1").await;
    no_error(&r, "after the error");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_ascii_clients_keep_working() {
    let env = start().await;
    let mut c = login(&env, "SQL_ASCII").await;
    // SQL_ASCII: the server converts nothing; UTF-8 bytes are stored as they are.
    for shard in 0..2 {
        let key = key_on(&env, shard, "ascii-é-");
        let sql = format!("insert into names (k, note) values ('{key}', 'n')");
        let r = c.send_and_read(&raw::query_bytes(sql.as_bytes())).await;
        no_error(&r, "insert in SQL_ASCII");
        assert_eq!(on_shard(&env, shard, &key).await.len(), 1, "shard {shard}");
    }
    // A byte that is not UTF-8: the server (UTF8) refuses it with its own error, and the
    // client stays connected (the proxy used to answer 08P01 and hang up).
    let r = c
        .send_and_read(&raw::query_bytes(b"select 'caf\xe9'"))
        .await;
    let code = r.iter().find_map(RawMsg::sqlstate);
    assert_eq!(code.as_deref(), Some("22021"), "{r:?}");
    no_error(&c.simple("select 1").await, "after the server's error");
    env.stop().await;
}
