//! Listeners and the client lifecycle: the unix socket, the idle timeout, graceful shutdown.

mod common;

use std::time::Duration;

use common::{sqlstate, Env, Setup, PASSWORD, USER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_serves_libpq_and_tokio_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        listen_extra: format!("unix_socket_dir = {:?}", dir.path()),
        ..Setup::default()
    };
    let env = Env::start(setup).await;
    let socket = env
        .proxy
        .unix_socket()
        .expect("unix socket configured")
        .clone();
    assert_eq!(socket, dir.path().join(format!(".s.PGSQL.{}", env.port())));

    let conn = format!(
        "host={} port={} user={USER} password={PASSWORD} dbname=app",
        dir.path().display(),
        env.port()
    );
    let client = common::connect(&conn).await;
    let row = client.query_one("select 7 * 6", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);

    let psql = shardgate_tests::pg_bin("psql").unwrap();
    let out = std::process::Command::new(psql)
        .args(["-X", "-A", "-t", "-h"])
        .arg(dir.path())
        .args([
            "-p",
            &env.port().to_string(),
            "-U",
            USER,
            "-d",
            "app",
            "-c",
            "select 'via unix'",
        ])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "via unix");
    drop(client);
    env.stop().await;
    assert!(!socket.exists(), "socket file left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_closed_after_the_idle_timeout() {
    let setup = Setup {
        listen_extra: "client_idle_timeout = \"300ms\"".into(),
        ..Setup::default()
    };
    let env = Env::start(setup).await;
    let client = env.connect().await;
    client.simple_query("select 1").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !client.is_closed() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the idle client was not closed");
    let err = client.simple_query("select 1").await.unwrap_err();
    assert!(
        err.is_closed() || sqlstate(&err).as_deref() == Some("57P05"),
        "{err}"
    );

    // A client inside a transaction is not idle: it is left alone.
    let busy = env.connect().await;
    busy.batch_execute("begin").await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    busy.batch_execute("select 1; commit").await.unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_clients_and_lets_transactions_finish() {
    let env = Env::start(Setup::default()).await;
    let idle = env.connect().await;
    idle.simple_query("select 1").await.unwrap();
    let busy = env.connect().await;
    busy.batch_execute("create table drained (v int); begin; insert into drained values (1)")
        .await
        .unwrap();

    let direct = env.connect_direct().await;
    let (proxy, cluster) = (env.proxy, env.cluster);
    let stopping = tokio::spawn(proxy.shutdown());
    // The open transaction can still finish and commit.
    tokio::time::sleep(Duration::from_millis(200)).await;
    busy.batch_execute("insert into drained values (2); commit")
        .await
        .unwrap();
    stopping.await.unwrap();
    let n: i64 = direct
        .query_one("select count(*) from drained", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    let err = idle.simple_query("select 1").await.unwrap_err();
    assert!(
        err.is_closed() || sqlstate(&err).as_deref() == Some("57P01"),
        "{err}"
    );
    drop(direct);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}
