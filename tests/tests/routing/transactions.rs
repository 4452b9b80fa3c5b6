//! Transactions through the router: a transaction starts on the shard of its first routed
//! statement however BEGIN arrives (simple, extended, in one batch with the first statement,
//! or with statements prepared in between), other shards join as statements reach them, and
//! COMMIT and ROLLBACK act on every shard it touched.

use tokio_postgres::types::Type;

use crate::common::{self, RawClient};
use crate::{
    assert_nowhere, assert_ready, assert_stored, assert_usable, count, exec, extended, insert_user,
    name_via, ready_status, simple_value, start, stop, users_via,
};

/// A transaction starts on the shard of its first routed statement (BEGIN simple, extended,
/// with the statement in one batch, or followed by statements prepared first); a statement
/// for another shard makes that shard join the transaction, and COMMIT and ROLLBACK act on
/// every shard it touched (issue 16; `multi_shard_txn.rs` tests the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_span_the_shards_they_touch() {
    let env = start().await;
    let mut client = env.connect().await;
    let mut next = 10_000i64;
    // Two fresh keys, the first on shard `a`, the second on shard `b`.
    let mut pair = |a: usize, b: usize| {
        let ka = env.key_on(a, next);
        let kb = env.key_on(b, next);
        next = ka.max(kb) + 1;
        (ka, kb)
    };

    // Simple protocol. The first statement's shard is not the default shard; the second
    // insert makes another shard join.
    let (a, b) = pair(1, 2);
    exec(&client, "begin").await;
    insert_user(&client, a, "a").await;
    insert_user(&client, b, "b").await;
    // It sees its own inserts, and commits them.
    assert_eq!(users_via(&client, a).await, 1);
    assert_eq!(simple_value(&client, "select 1").await, "1");
    exec(&client, "commit").await;
    assert_stored(&env, &[(1, a)]).await;
    assert_eq!(
        count(
            &client,
            &format!("select count(*) from users where user_id in ({a}, {b})")
        )
        .await,
        2
    );

    // tokio-postgres' Transaction (BEGIN as a simple query, statements prepared inside it).
    let (a, b) = pair(2, 0);
    {
        let tx = client.transaction().await.expect("transaction");
        for (k, name) in [(a, "a"), (b, "b")] {
            let sql = format!("insert into users (user_id, name) values ($1, '{name}')");
            tx.execute(&sql, &[&k])
                .await
                .unwrap_or_else(|e| panic!("insert {k} in Transaction: {e:?}"));
        }
        let n: i64 = tx
            .query_one("select count(*) from users where user_id = $1", &[&a])
            .await
            .expect("still usable")
            .get(0);
        assert_eq!(n, 1);
        tx.commit().await.expect("commit");
    }
    assert_stored(&env, &[(2, a), (0, b)]).await;

    // Extended protocol throughout, BEGIN and COMMIT included (unnamed statements).
    let (a, b) = pair(1, 0);
    client
        .execute_typed("begin", &[])
        .await
        .expect("extended begin");
    for (k, name) in [(a, "a"), (b, "b")] {
        let sql = format!("insert into users (user_id, name) values ($1, '{name}')");
        client
            .execute_typed(&sql, &[(&k, Type::INT8)])
            .await
            .unwrap_or_else(|e| panic!("extended insert {k}: {e:?}"));
    }
    client
        .execute_typed("commit", &[])
        .await
        .expect("extended commit");
    assert_stored(&env, &[(1, a), (0, b)]).await;

    // BEGIN and COMMIT with nothing between (answered by the proxy), then ROLLBACK likewise.
    for end in ["commit", "rollback"] {
        exec(&client, "begin").await;
        exec(&client, end).await;
    }
    assert_usable(&client, "an empty transaction").await;

    // ROLLBACK really rolls back, on the shard the transaction ran on.
    let (a, _) = pair(2, 2);
    exec(&client, "begin").await;
    insert_user(&client, a, "r").await;
    assert_eq!(simple_value(&client, "select 1").await, "1");
    assert_eq!(name_via(&client, a).await, "r");
    exec(&client, "rollback").await;
    assert_nowhere(&env, &[a]).await;
    // A statement without a sharded table first: the transaction runs on the default shard.
    let (a, b) = pair(0, 1);
    exec(&client, "begin").await;
    assert_eq!(simple_value(&client, "select 1").await, "1");
    insert_user(&client, a, "r").await;
    insert_user(&client, b, "r").await;
    exec(&client, "rollback").await;
    assert_nowhere(&env, &[a, b]).await;

    // At the protocol level: a statement prepared (Parse/Describe/Sync) right after BEGIN runs
    // outside the transaction, which is still open for the client and goes where its first
    // executed statement goes.
    let (a, b) = pair(2, 1);
    let mut raw = RawClient::connect(env.proxy.addr().port()).await;
    let replies = raw.simple("begin").await;
    assert_eq!(ready_status(&replies), b'T', "{replies:?}");
    let mut msg = common::raw::parse("ins", "insert into users (user_id, name) values ($1, $2)");
    msg.extend_from_slice(&common::raw::describe(b'S', "ins"));
    msg.extend_from_slice(&common::raw::sync());
    let replies = raw.send_and_read(&msg).await;
    let tags: Vec<u8> = replies.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"1tnZ", "{replies:?}");
    assert_eq!(ready_status(&replies), b'T', "still in the transaction");
    for key in [a, b] {
        let mut msg = common::raw::bind("", "ins", &[Some(&key.to_string()), Some("raw")]);
        msg.extend_from_slice(&common::raw::execute("", 0));
        msg.extend_from_slice(&common::raw::sync());
        let replies = raw.send_and_read(&msg).await;
        assert_ready(&replies, b'T', &format!("prepared insert {key}"));
    }
    let replies = raw.simple("commit").await;
    assert_eq!(ready_status(&replies), b'I', "{replies:?}");
    assert_stored(&env, &[(2, a), (1, b)]).await;

    // BEGIN in the same batch as the first statement (as JDBC sends it).
    let (c, d) = pair(1, 2);
    let replies = raw
        .send_and_read(&extended(&[
            ("BEGIN", &[]),
            (
                "insert into users (user_id, name) values ($1, 'jdbc')",
                &[Some(&c.to_string())],
            ),
        ]))
        .await;
    assert_ready(&replies, b'T', "BEGIN batched with an insert");
    let replies = raw
        .simple(&format!(
            "insert into users (user_id, name) values ({d}, 'jdbc')"
        ))
        .await;
    assert_eq!(common::first_error(&replies), None, "{replies:?}");
    let replies = raw.simple("commit").await;
    assert_eq!(common::first_error(&replies), None, "{replies:?}");
    assert_stored(&env, &[(1, c)]).await;
    assert_eq!(users_via(&client, d).await, 1);
    raw.send(&common::raw::terminate()).await;

    assert_usable(&client, "the transactions").await;

    stop(env, client).await;
}
