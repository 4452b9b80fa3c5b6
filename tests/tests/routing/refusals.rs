//! What the router refuses: each refusal has its SQLSTATE and a message (and hint) saying why,
//! in both protocols, writes nothing and leaves the connection usable. Also the cross-shard
//! read that is not refused inside a transaction.

use std::collections::BTreeSet;

use crate::common::{self, RawClient};
use crate::{
    assert_usable, count, count_extended, error_of, exec, extended, ids_per_shard, insert_user,
    name_via, start, stop, COUNT_USERS,
};

/// Every refusal has its SQLSTATE and a message saying why, in both protocols, writes nothing,
/// and leaves the connection usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_leave_the_connection_usable() {
    let env = start().await;
    let client = env.connect().await;
    let a = env.key_on(0, 1);
    let b = env.key_on(1, 1);
    let c = env.key_on(2, 1);
    for k in [a, b, c] {
        insert_user(&client, k, "x").await;
    }

    let (s0, s1) = (env.shard_name(0).to_owned(), env.shard_name(1).to_owned());
    // (statement, SQLSTATE, words the message must contain, words the hint must contain)
    let cases: Vec<(String, &str, Vec<&str>, Vec<&str>)> = vec![
        (
            "insert into users values (777, 'no columns')".into(),
            "0A000",
            vec!["users", "columns"],
            vec![],
        ),
        (
            "update users set name = 'z'".into(),
            "0A000",
            vec!["users"],
            vec!["user_id"],
        ),
        (
            "delete from users where name = 'x'".into(),
            "0A000",
            vec!["users"],
            vec!["user_id"],
        ),
        // DISTINCT and window functions are gathered into PostgreSQL now; a locking read of
        // that kind cannot be, and stays refused.
        (
            "select u.user_id from users u join orders o on o.order_id = u.user_id for update of u"
                .into(),
            "0A000",
            vec!["join", "across shards"],
            vec![],
        ),
        (
            "/* shardgate: shard=nope */ select 1".into(),
            "42704",
            vec!["nope"],
            vec![],
        ),
        (
            "select * from users where user_id = 'abc'".into(),
            "22P02",
            vec!["abc"],
            vec![],
        ),
        (
            format!("update users set user_id = {b} where user_id = {a}"),
            "0A000",
            vec![&s0, &s1],
            vec![],
        ),
    ];
    for (sql, code, message, hint) in &cases {
        let e = error_of(client.simple_query(sql).await);
        assert_eq!(&e.0, code, "{sql}: {e:?}");
        for word in message {
            assert!(
                e.1.contains(word),
                "{sql}: the message names {word:?}: {e:?}"
            );
        }
        for word in hint {
            assert!(e.2.contains(word), "{sql}: the hint names {word:?}: {e:?}");
        }
        assert_usable(&client, sql).await;
        // The same through the extended protocol (the unnamed statement).
        let e = error_of(client.execute_typed(sql.as_str(), &[]).await);
        assert_eq!(&e.0, code, "extended {sql}: {e:?}");
        assert_usable(&client, sql).await;
    }
    // A bad key in a text-format parameter.
    let mut raw = RawClient::connect(env.proxy.addr().port()).await;
    let replies = raw
        .send_and_read(&extended(&[(
            "select * from users where user_id = $1",
            &[Some("12x")],
        )]))
        .await;
    assert_eq!(
        common::first_error(&replies).as_deref(),
        Some("22P02"),
        "{replies:?}"
    );
    let replies = raw.simple("select 1").await;
    assert_eq!(common::first_error(&replies), None);
    raw.send(&common::raw::terminate()).await;

    // Nothing was written by the refused statements.
    let stored = ids_per_shard(&env, "users").await;
    for (shard, k) in [a, b, c].into_iter().enumerate() {
        assert_eq!(stored[shard], BTreeSet::from([k]), "users on shard {shard}");
    }
    assert_eq!(
        count(&client, "select count(*) from users where name = 'x'").await,
        3
    );

    // A cross-shard read inside a transaction, right after BEGIN and after a routed statement:
    // it runs on every shard, in the transaction (issue 16).
    exec(&client, "begin").await;
    assert_eq!(count(&client, COUNT_USERS).await, 3, "right after BEGIN");
    exec(&client, "commit").await;
    exec(&client, "begin").await;
    assert_eq!(name_via(&client, b).await, "x");
    assert_eq!(count(&client, COUNT_USERS).await, 3, "after a routed read");
    assert_eq!(
        count_extended(&client, COUNT_USERS).await,
        3,
        "extended cross-shard read in a transaction"
    );
    assert_eq!(name_via(&client, b).await, "x");
    exec(&client, "commit").await;
    assert_eq!(count(&client, COUNT_USERS).await, 3);
    assert_usable(&client, "the transactions").await;

    stop(env, client).await;
}
