//! Listeners and the client lifecycle: the unix socket, trust logins, the idle timeout,
//! notifications in session mode, graceful shutdown.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_users_log_in_without_a_password() {
    let setup = Setup {
        extra: format!(
            "[[users]]\nname = \"trusted\"\nauth = \"trust\"\nserver_user = \"{USER}\"\nserver_password = \"{PASSWORD}\"\n"
        ),
        ..Setup::default()
    };
    let env = Env::start(setup).await;
    let conn = format!("host=127.0.0.1 port={} user=trusted dbname=app", env.port());
    let client = common::connect(&conn).await;
    let row = client
        .query_one("select current_user::text", &[])
        .await
        .unwrap();
    // The server role is the one configured for the trusted client.
    assert_eq!(row.get::<_, String>(0), USER);
    drop(client);

    // A user shardgate does not know is refused even under trust.
    let unknown = format!(
        "host=127.0.0.1 port={} user=nobody password=guess dbname=app",
        env.port()
    );
    let err = tokio_postgres::connect(&unknown, tokio_postgres::NoTls)
        .await
        .err()
        .expect("unknown user refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_reaches_session_mode_clients() {
    use futures_util::StreamExt;

    let env = Env::start(Setup::session()).await;
    let (client, mut connection) = tokio_postgres::connect(&env.conn_str(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(stream.for_each(move |m| {
        if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = m {
            let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
        }
        async {}
    }));
    client.batch_execute("LISTEN jobs").await.unwrap();

    let other = env.connect().await;
    other.batch_execute("NOTIFY jobs, 'first'").await.unwrap();
    other
        .query("select pg_notify('jobs', $1)", &[&"second"])
        .await
        .unwrap();
    for expected in ["first", "second"] {
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("notification")
            .unwrap();
        assert_eq!(got, ("jobs".to_owned(), expected.to_owned()));
    }
    drop((client, other));
    env.stop().await;
}
