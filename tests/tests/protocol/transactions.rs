//! Transactions through the proxy: COMMIT and ROLLBACK in both protocols, what another
//! connection sees before and after, and an error inside a transaction (aborted until
//! ROLLBACK; a COMMIT of it rolls back).

use tokio_postgres::Client;

use super::{expect_sqlstate, one};
use crate::common::{Env, Setup};

/// The rows of `t` in id order, read straight from the server (not through the proxy).
async fn rows_of_t(direct: &Client) -> Vec<(i32, String)> {
    direct
        .query("select id, v from t order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn committed() -> Vec<(i32, String)> {
    vec![(1, "committed".to_owned())]
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
    let before = rows_of_t(&direct).await;
    assert!(before.is_empty(), "{before:?}");
    tx.commit().await.unwrap();
    assert_eq!(rows_of_t(&direct).await, committed());

    // ROLLBACK rolls back.
    let tx = client.transaction().await.unwrap();
    tx.execute("insert into t values (2, 'rolled back')", &[])
        .await
        .unwrap();
    tx.execute("update t set v = 'changed' where id = 1", &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(rows_of_t(&direct).await, committed());

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
    let ids: Vec<i32> = rows_of_t(&direct).await.iter().map(|r| r.0).collect();
    assert_eq!(ids, vec![1, 4]);

    // An error inside a transaction: the transaction is aborted until ROLLBACK, then the
    // connection is usable again.
    client.batch_execute("begin").await.unwrap();
    client
        .execute("insert into t values (5, 'z')", &[])
        .await
        .unwrap();
    expect_sqlstate(
        client.execute("insert into t values (1, 'dup')", &[]).await,
        "23505",
    );
    expect_sqlstate(client.query_one("select 1", &[]).await, "25P02");
    expect_sqlstate(client.simple_query("select 1").await, "25P02");
    client.batch_execute("rollback").await.unwrap();
    assert_eq!(
        one::<i64, _>(&client, "select count(*) from t", &[]).await,
        2
    );
    // COMMIT of a failed transaction reports ROLLBACK and leaves nothing behind.
    client.batch_execute("begin").await.unwrap();
    client
        .execute("insert into t values (6, 'w')", &[])
        .await
        .unwrap();
    let _ = client.batch_execute("select 1/0").await.unwrap_err();
    let msgs = client.simple_query("commit").await.unwrap();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let left: i64 = one(&direct, "select count(*) from t where id >= 5", &[]).await;
    assert_eq!(left, 0);
    // And the session is fine after all that.
    assert_eq!(one::<i32, _>(&client, "select $1::int", &[&7i32]).await, 7);

    drop(client);
    drop(direct);
    env.stop().await;
}
