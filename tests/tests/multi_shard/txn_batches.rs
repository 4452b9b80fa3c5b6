//! Many rows or statements in one request over several shards (part of `multi_shard_txn.rs`):
//! a multi-row INSERT split by shard and committed together, and pipelined batches (JDBC's
//! executeBatch: many Bind/Execute, one Sync) outside and inside a transaction.

use bytes::BytesMut;
use tokio_postgres::types::ToSql;
use tokio_postgres::SimpleQueryMessage;

use super::{assert_balances, expect_sqlstate, first_column, keys};
use crate::common::{raw, RawClient, RawMsg};
use crate::env::{self, assert_nothing_prepared};

/// Issue 17's bulk INSERT: a multi-row INSERT whose rows belong to several shards is split, one
/// INSERT per shard, committed together (outside a transaction) or as part of the client's
/// transaction; RETURNING rows come back in the client's row order and the tag counts every
/// row; a duplicate key on one shard leaves no row on any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_row_inserts_are_split_by_shard() {
    let env = env::start(3, "").await;
    let client = env.connect().await;
    let keys: Vec<i64> = (1001..1031).collect();
    assert!(
        keys.iter()
            .map(|k| env.shard_of(*k))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 3
    );
    // `insert into accounts … values` for `keys`, each with balance `key * 10`.
    let insert = |keys: &[i64]| {
        let values: Vec<String> = keys.iter().map(|k| format!("({k}, {})", k * 10)).collect();
        format!(
            "insert into accounts (user_id, balance) values {}",
            values.join(", ")
        )
    };
    let rows = client
        .simple_query(&format!("{} returning user_id", insert(&keys)))
        .await
        .expect("split insert");
    let returned: Vec<i64> = first_column(&rows)
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(returned, keys, "RETURNING rows in the client's order");
    let tag = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::CommandComplete(n) => Some(*n),
        _ => None,
    });
    assert_eq!(tag, Some(30));
    assert_balances(&env, keys.iter().map(|&k| (k, k * 10)), "row on its shard").await;
    assert_nothing_prepared(&env).await;

    // A duplicate on one shard: no shard keeps any row of the statement.
    let more: Vec<i64> = (2001..2010).chain([1001]).collect();
    expect_sqlstate(client.batch_execute(&insert(&more)).await, "23505");
    let n = env::value_through(
        &client,
        "select count(*) from accounts where user_id between 2001 and 2009",
    )
    .await;
    assert_eq!(n, 0, "the other shards rolled back");

    // Inside a transaction: part of it, rolled back with it.
    let above_3000 = "select count(*) from accounts where user_id > 3000";
    client.batch_execute("begin").await.unwrap();
    client
        .batch_execute(&insert(&(3001..3010).collect::<Vec<_>>()))
        .await
        .expect("split insert in a transaction");
    assert_eq!(env::value_through(&client, above_3000).await, 9);
    client.batch_execute("rollback").await.unwrap();
    assert_eq!(env::value_through(&client, above_3000).await, 0);

    // The extended protocol: Bind parameters (a prepared statement, as tokio-postgres sends
    // it), RETURNING in the client's order.
    let ext: Vec<i64> = (5001..5013).collect();
    let placeholders: Vec<String> = (0..ext.len())
        .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
        .collect();
    let balances: Vec<i64> = ext.iter().map(|k| k + 7).collect();
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    for (k, b) in ext.iter().zip(&balances) {
        params.push(k);
        params.push(b);
    }
    let sql = format!(
        "insert into accounts (user_id, balance) values {} returning user_id, balance",
        placeholders.join(", ")
    );
    let rows = client
        .query(sql.as_str(), &params)
        .await
        .expect("extended split insert");
    let got: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let want: Vec<(i64, i64)> = ext.iter().map(|k| (*k, k + 7)).collect();
    assert_eq!(
        got, want,
        "RETURNING in the client's order, extended protocol"
    );
    assert_balances(&env, want.iter().copied(), "extended split insert").await;
    // A write by a parameter that spans shards runs on them all, with the client's values,
    // committed together (and inside a transaction, as part of it).
    let n = client
        .execute(
            "update accounts set balance = 0 where user_id = any($1)",
            &[&ext],
        )
        .await
        .expect("keyed update over several shards with a parameter");
    assert_eq!(n, ext.len() as u64);
    client.batch_execute("begin").await.unwrap();
    let n = client
        .execute("delete from accounts where user_id = any($1)", &[&ext])
        .await
        .expect("keyed delete over several shards in a transaction");
    assert_eq!(n, ext.len() as u64);
    client.batch_execute("rollback").await.unwrap();
    let zeroed = ext.iter().map(|&k| (k, 0));
    assert_balances(&env, zeroed, "updated, and the delete rolled back").await;

    // ON CONFLICT … RETURNING over several shards is refused before anything runs.
    let conflicting = insert(&(4001..4010).collect::<Vec<_>>());
    expect_sqlstate(
        client
            .batch_execute(&format!(
                "{conflicting} on conflict do nothing returning user_id"
            ))
            .await,
        "0A000",
    );
    assert_nothing_prepared(&env).await;
    env.stop().await;
}

/// The update that adds 1 to the balance of account `$1`.
const INC: &str = "update accounts set balance = balance + 1 where user_id = $1";

/// Bind of `statement` with `key` as `$1` to the unnamed portal, then its Execute.
fn run(statement: &str, key: i64) -> BytesMut {
    let mut m = raw::bind("", statement, &[Some(&key.to_string())]);
    m.extend_from_slice(&raw::execute("", 0));
    m
}

/// One pipelined batch: the messages in order, then a single Sync.
fn batch(messages: impl IntoIterator<Item = BytesMut>) -> BytesMut {
    let mut b = BytesMut::new();
    for m in messages {
        b.extend_from_slice(&m);
    }
    b.extend_from_slice(&raw::sync());
    b
}

/// The ErrorResponses among `replies`, as SQLSTATE and message.
fn errors(replies: &[RawMsg]) -> Vec<String> {
    replies
        .iter()
        .filter(|m| m.tag == b'E')
        .map(|m| format!("{:?} {:?}", m.sqlstate(), m.field(b'M')))
        .collect()
}

/// The transaction status of the final ReadyForQuery ('I', 'T' or 'E').
fn status(replies: &[RawMsg]) -> Option<char> {
    replies.last().map(|m| m.body[0] as char)
}

/// A pipelined batch (JDBC's executeBatch, one Sync after many Bind/Execute) whose statements
/// belong to several shards runs in one implicit transaction on PostgreSQL: all or nothing.
/// Outside a transaction no statement of it may commit when the client gets an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_batch_over_several_shards_is_all_or_nothing() {
    let env = env::start(3, "").await;
    let keys = keys(&env, 2);
    let (a, b) = (keys[0], keys[1]);
    let mut client = RawClient::connect(env.proxy.addr().port()).await;
    let replies = client
        .send_and_read(&batch([
            raw::parse("inc", INC),
            run("inc", a),
            run("inc", b),
        ]))
        .await;
    let tags: Vec<char> = replies.iter().map(|m| m.tag as char).collect();
    let failed = replies.iter().any(|m| m.tag == b'E');
    if let Some(e) = replies.iter().find(|m| m.tag == b'E') {
        let message = e.field(b'M').unwrap_or_default();
        assert!(message.contains("implicit transaction"), "{message}");
        assert!(e.field(b'H').unwrap_or_default().contains("BEGIN"), "{e:?}");
    }
    let (after_a, after_b) = (
        env::balance_on_shard(&env, a).await,
        env::balance_on_shard(&env, b).await,
    );
    if failed {
        assert_eq!(
            (after_a, after_b),
            (100, 100),
            "the client got an error ({tags:?}), yet a statement of its batch committed"
        );
    } else {
        assert_eq!((after_a, after_b), (101, 101), "{tags:?}");
    }
    // The session goes on: a batch on one shard commits.
    let replies = client
        .send_and_read(&batch([run("inc", a), run("inc", a)]))
        .await;
    assert!(replies.iter().all(|m| m.tag != b'E'), "{replies:?}");
    assert_balances(&env, [(a, after_a + 2)], "a batch on one shard commits").await;
    assert_nothing_prepared(&env).await;
    env.stop().await;
}

/// JDBC's executeBatch inside a transaction (Spring/Hibernate batch inserts): one pipelined
/// batch whose statements belong to several shards runs statement by statement on each
/// statement's shard, and commits with the transaction — named statements and a fresh unnamed
/// Parse per statement alike; an error in it fails the transaction as on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_batch_in_a_transaction_runs_on_each_statements_shard() {
    let env = env::start(3, "").await;
    let keys = keys(&env, 3);
    let (a, b, c) = (keys[0], keys[1], keys[2]);
    let mut client = RawClient::connect(env.proxy.addr().port()).await;

    // A named statement, bound for three shards in one batch.
    let replies = client.send_and_read(&raw::query("begin")).await;
    assert!(errors(&replies).is_empty());
    let named = std::iter::once(raw::parse("inc", INC)).chain([a, b, c, a].map(|k| run("inc", k)));
    let replies = client.send_and_read(&batch(named)).await;
    assert_eq!(errors(&replies), Vec::<String>::new());
    let completes = replies.iter().filter(|m| m.tag == b'C').count();
    assert_eq!(completes, 4, "one CommandComplete per statement");
    assert_eq!(status(&replies), Some('T'));
    // pgjdbc before its prepare threshold: a fresh unnamed Parse per statement.
    let unnamed = [c, b].into_iter().flat_map(|k| {
        [
            raw::parse("", INC),
            raw::bind("", "", &[Some(&k.to_string())]),
            raw::describe(b'P', ""),
            raw::execute("", 0),
        ]
    });
    let replies = client.send_and_read(&batch(unnamed)).await;
    assert_eq!(errors(&replies), Vec::<String>::new());
    let replies = client.send_and_read(&raw::query("commit")).await;
    assert!(errors(&replies).is_empty(), "{replies:?}");
    assert_balances(&env, [(a, 102), (b, 102), (c, 102)], "committed").await;

    // An error in the batch's second statement: the rest is skipped, the transaction failed.
    client.send_and_read(&raw::query("begin")).await;
    let failing = batch([
        run("inc", a),
        raw::parse("", "update accounts set balance = 1 / 0 where user_id = $1"),
        run("", b),
        run("inc", c),
    ]);
    let replies = client.send_and_read(&failing).await;
    assert_eq!(errors(&replies).len(), 1, "{replies:?}");
    assert_eq!(status(&replies), Some('E'));
    let replies = client.send_and_read(&raw::query("commit")).await;
    assert!(replies.iter().any(|m| m.tag == b'C'), "{replies:?}");
    assert_balances(&env, [(a, 102)], "rolled back").await;
    assert_balances(&env, [(c, 102)], "never ran").await;
    assert_nothing_prepared(&env).await;
    env.stop().await;
}
