//! Connections through the proxy: logins (md5, wrong passwords, unknown users and databases,
//! refused startup options), the pool's limits (many clients on few server connections, the
//! checkout timeout, max_client_connections), cancel, and recovery from a server connection
//! terminated under the proxy.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use super::{expect_sqlstate, login, one, simple_rows};
use crate::common::{self, sqlstate, wait_for, Env, Setup};

/// 50 clients share a pool of 5 server connections; each prepares once and executes 100 times,
/// each execution its own transaction. The server never sees more than 5 proxy connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statement_reused_by_50_clients_on_a_pool_of_5() {
    let env = Env::start(Setup::default().pool_size(5)).await;
    let direct = Arc::new(env.connect_superuser().await);

    let max_seen = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
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
    let md5_conn_str = login(&env, "md5_user", "md5-secret", "app");
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
async fn authentication_md5_wrong_passwords_and_unknown_database() {
    let env = Env::start(Setup::default()).await;

    let md5 = env
        .try_connect(&login(&env, "md5_user", "md5-secret", "app"))
        .await
        .expect("md5 login");
    let user: String = one(&md5, "select current_user::text", &[]).await;
    assert_eq!(user, "md5_user");

    let refused = [
        (login(&env, "app", "wrong", "app"), "28P01"),
        (login(&env, "md5_user", "wrong", "app"), "28P01"),
        (login(&env, "nobody", "x", "app"), "28P01"),
        (login(&env, "app", "", "app"), "28P01"),
        (login(&env, "app", "app-secret", "no_such_db"), "3D000"),
        // A startup option the server refuses is reported at connect, as the server would.
        (env.conn_str_with("options='-c work_mem=banana'"), "22023"),
    ];
    for (conn_str, code) in refused {
        let e = env
            .try_connect(&conn_str)
            .await
            .map(|_| ())
            .expect_err(&conn_str);
        assert_eq!(sqlstate(&e).as_deref(), Some(code), "{conn_str}: {e}");
    }

    // Still fine for everyone else.
    common::assert_proxy_serves(&env).await;
    assert_eq!(one::<i32, _>(&md5, "select 2", &[]).await, 2);
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
    let e = expect_sqlstate(waiter.query_one("select 1", &[]).await, "53300");
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
    assert_eq!(one::<i32, _>(&waiter, "select 5", &[]).await, 5);
    // Same for a simple query.
    holder.batch_execute("begin").await.unwrap();
    expect_sqlstate(waiter.simple_query("select 1").await, "53300");
    holder.batch_execute("rollback").await.unwrap();
    assert_eq!(one::<i32, _>(&waiter, "select 6", &[]).await, 6);

    // max_client_connections = 3: the fourth client is refused with 53300.
    let third = env.connect().await;
    expect_sqlstate(env.try_connect(&env.conn_str()).await.map(|_| ()), "53300");
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
    assert_eq!(one::<i32, _>(&fourth, "select 4", &[]).await, 4);

    drop((holder, waiter, fourth));
    env.stop().await;
}

/// Terminates server backend `pid` from a direct connection, as an administrator or a crash
/// would; whether it was signalled.
async fn terminate(direct: &Client, pid: i32) -> bool {
    one(direct, "select pg_terminate_backend($1)", &[&pid]).await
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
        let pid: i32 = one(&client, "select pg_backend_pid()", &[]).await;
        assert!(!pids.contains(&pid), "a terminated backend was reused");
        pids.push(pid);
        assert!(terminate(&direct, pid).await);
        let gone = wait_for(Duration::from_secs(10), || async {
            let n: i64 = one(
                &direct,
                "select count(*) from pg_stat_activity where pid = $1",
                &[&pid],
            )
            .await;
            n == 0
        })
        .await;
        assert!(gone, "backend {pid} did not exit");
        // Next transactions work, through the extended protocol (the prepared statement is
        // re-created on the new connection) and the simple one.
        assert_eq!(one::<i32, _>(&client, &stmt, &[&round]).await, round + 1);
        let msgs = client.simple_query("select 'ok'").await.unwrap();
        assert_eq!(simple_rows(&msgs), vec![vec![Some("ok".into())]]);
    }

    // Killed in the middle of a transaction: that transaction is lost (the client is told),
    // and the proxy keeps serving.
    let mut victim = env.connect().await;
    let tx = victim.transaction().await.unwrap();
    let pid: i32 = one(&tx, "select pg_backend_pid()", &[]).await;
    terminate(&direct, pid).await;
    let e = tx.query_one("select 1", &[]).await.unwrap_err();
    assert!(
        e.is_closed() || matches!(sqlstate(&e).as_deref(), Some("57P01" | "08006")),
        "{e}"
    );
    drop(tx);
    drop(victim);
    assert_eq!(one::<i32, _>(&client, &stmt, &[&41i32]).await, 42);
    common::assert_proxy_serves(&env).await;

    drop((client, direct));
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
                let sum: i32 = one(&client, "select $1::int + $2::int", &[&c, &i]).await;
                assert_eq!(sum, c + i);
            }
        }));
    }

    assert!(
        wait_for(Duration::from_secs(10), || async {
            let n: i64 = one(
                &direct,
                "select count(*) from pg_stat_activity \
                 where state = 'active' and query = 'select pg_sleep(10)'",
                &[],
            )
            .await;
            n == 1
        })
        .await,
        "the sleep never started"
    );
    let start = Instant::now();
    token.cancel_query(NoTls).await.unwrap();
    let (result, sleeper) = sleeping.await.unwrap();
    let elapsed = start.elapsed();
    expect_sqlstate(result, "57014");
    assert!(elapsed < Duration::from_secs(1), "cancel took {elapsed:?}");
    for o in others {
        o.await.expect("other clients kept working");
    }
    // The cancelled client goes on.
    assert_eq!(
        one::<String, _>(&sleeper, "select 'next'", &[]).await,
        "next"
    );

    drop((sleeper, direct));
    env.stop().await;
}
