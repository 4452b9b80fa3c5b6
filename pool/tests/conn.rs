//! ServerConn against a real PostgreSQL 15: startup and auth, internal queries, broken
//! connections, cancel requests.

mod common;

use std::time::{Duration, Instant};

use common::{query_one, PgServer, CLEAR_PW, CLEAR_USER, MD5_PW, MD5_USER, SCRAM_PW, SCRAM_USER};
use shardgate_config::Host;
use shardgate_pool::{send_cancel, ConnectTarget, ServerConn, ServerError, TransactionStatus};

fn param<'a>(conn: &'a ServerConn, name: &str) -> Option<&'a str> {
    conn.parameters()
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn connects_with_scram() {
    common::init_tracing();
    let pg = PgServer::start();
    assert!(pg
        .psql("select rolpassword from pg_authid where rolname = 'scram_user'")
        .starts_with("SCRAM-SHA-256$"));
    let mut conn = ServerConn::connect(&pg.target(SCRAM_USER, Some(SCRAM_PW)))
        .await
        .expect("scram connect");
    assert!(conn.backend_key().0 > 0);
    assert_eq!(conn.status(), TransactionStatus::Idle);
    assert_eq!(
        param(&conn, "server_version").map(|v| v.starts_with("15")),
        Some(true)
    );
    assert_eq!(param(&conn, "application_name"), Some("shardgate-test"));
    assert_eq!(conn.host(), &pg.tcp_host());
    assert!(!conn.is_broken());
    assert_eq!(
        query_one(&mut conn, "select current_user").await.as_deref(),
        Some(SCRAM_USER)
    );
    assert_eq!(
        query_one(&mut conn, "select pg_backend_pid()").await,
        Some(conn.backend_key().0.to_string())
    );
}

#[tokio::test]
async fn connects_with_md5_and_cleartext() {
    let pg = PgServer::start();
    assert!(pg
        .psql("select rolpassword from pg_authid where rolname = 'md5_user'")
        .starts_with("md5"));
    let mut conn = ServerConn::connect(&pg.target(MD5_USER, Some(MD5_PW)))
        .await
        .expect("md5 connect");
    assert_eq!(
        query_one(&mut conn, "select current_user").await.as_deref(),
        Some(MD5_USER)
    );
    let mut conn = ServerConn::connect(&pg.target(CLEAR_USER, Some(CLEAR_PW)))
        .await
        .expect("cleartext connect");
    assert_eq!(
        query_one(&mut conn, "select current_user").await.as_deref(),
        Some(CLEAR_USER)
    );
}

#[tokio::test]
async fn connects_over_the_unix_socket() {
    let pg = PgServer::start();
    let mut target = pg.target("postgres", None);
    target.host = pg.socket_host();
    let mut conn = ServerConn::connect(&target).await.expect("unix connect");
    // Over a unix socket the server reports no client address.
    assert_eq!(
        query_one(
            &mut conn,
            "select coalesce(client_addr::text, 'local') || ' ' || application_name \
             from pg_stat_activity where pid = pg_backend_pid()"
        )
        .await
        .as_deref(),
        Some("local shardgate-test")
    );
}

#[tokio::test]
async fn refusals_keep_the_server_sqlstate() {
    let pg = PgServer::start();
    for (user, wrong) in [
        (SCRAM_USER, "nope"),
        (MD5_USER, "nope"),
        (CLEAR_USER, "nope"),
    ] {
        match ServerConn::connect(&pg.target(user, Some(wrong))).await {
            Err(ServerError::Refused { code, message }) => {
                assert_eq!(code, "28P01", "{user}: {message}");
                assert!(message.contains(user), "{message}");
            }
            other => panic!("{user}: expected 28P01, got {other:?}"),
        }
    }

    let mut target = pg.target(SCRAM_USER, Some(SCRAM_PW));
    target.database = "no_such_db".into();
    match ServerConn::connect(&target).await {
        Err(e @ ServerError::Refused { .. }) => assert_eq!(e.sqlstate(), "3D000", "{e}"),
        other => panic!("expected 3D000, got {other:?}"),
    }

    match ServerConn::connect(&pg.target(SCRAM_USER, None)).await {
        Err(ServerError::Auth(message)) => {
            assert!(message.contains("scram_user"), "{message}");
            assert!(message.contains("users.server_password"), "{message}");
        }
        other => panic!("expected an Auth error, got {other:?}"),
    }
}

#[tokio::test]
async fn run_internal_reports_errors_and_tracks_status() {
    let pg = PgServer::start();
    let mut conn = ServerConn::connect(&pg.target(SCRAM_USER, Some(SCRAM_PW)))
        .await
        .unwrap();
    conn.run_internal("select 1; select 2")
        .await
        .expect("ok query");
    conn.run_internal(";").await.expect("empty query");

    match conn.run_internal("select 1/0").await {
        Err(ServerError::Query { code, message }) => {
            assert_eq!(code, "22012");
            assert!(message.contains("division by zero"), "{message}");
        }
        other => panic!("expected 22012, got {other:?}"),
    }
    assert!(!conn.is_broken());
    assert_eq!(conn.status(), TransactionStatus::Idle);

    conn.run_internal("begin").await.unwrap();
    assert_eq!(conn.status(), TransactionStatus::InTransaction);
    let err = conn
        .run_internal("select no_such_column")
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "42703");
    assert_eq!(conn.status(), TransactionStatus::Failed);
    conn.run_internal("rollback").await.unwrap();
    assert_eq!(conn.status(), TransactionStatus::Idle);

    // COPY FROM STDIN has nothing to read from: refused, connection still usable.
    conn.run_internal("create temp table t(x int)")
        .await
        .unwrap();
    let err = conn.run_internal("copy t from stdin").await.unwrap_err();
    assert_eq!(err.sqlstate(), "57014", "{err}");
    assert_eq!(
        query_one(&mut conn, "select 42").await.as_deref(),
        Some("42")
    );
    assert!(!conn.is_broken());
}

#[tokio::test]
async fn a_terminated_connection_is_marked_broken() {
    let pg = PgServer::start();
    let target = pg.target(SCRAM_USER, Some(SCRAM_PW));

    // Noticed while idle, without a round trip.
    let mut idle = ServerConn::connect(&target).await.unwrap();
    assert!(idle.check_idle());
    pg.terminate(idle.backend_key().0).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while idle.check_idle() {
        assert!(Instant::now() < deadline, "termination not noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(idle.is_broken());

    // Noticed from the socket's readiness as tokio saw it, without asking the kernel (the
    // pool's check for connections idle less than `server_check_delay`).
    let mut idle = ServerConn::connect(&target).await.unwrap();
    idle.run_internal("select 1").await.unwrap();
    assert!(idle.idle_check(false), "a sound idle connection passes");
    assert!(idle.idle_check(true));
    pg.terminate(idle.backend_key().0).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while idle.idle_check(false) {
        assert!(Instant::now() < deadline, "termination not noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(idle.is_broken());

    // Noticed by the next query.
    let mut conn = ServerConn::connect(&target).await.unwrap();
    pg.terminate(conn.backend_key().0).await;
    let err = conn.run_internal("select 1").await.unwrap_err();
    assert!(
        matches!(err, ServerError::Closed | ServerError::Io(_)),
        "{err:?}"
    );
    assert!(conn.is_broken());
    // Further use fails rather than hanging.
    let _ = conn.write_all(b"Q\0\0\0\x0dselect 1\0").await;
    assert!(conn.read_frame().await.is_err());
}

/// Waits until `pid` is running a query, then cancels it.
async fn cancel_when_active(pg: &PgServer, host: Host, (pid, secret): (i32, i32)) {
    let mut admin = pg.admin().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let probe = format!("select state from pg_stat_activity where pid = {pid}");
    while query_one(&mut admin, &probe).await.as_deref() != Some("active") {
        assert!(Instant::now() < deadline, "query never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    send_cancel(&host, pid, secret).await.expect("cancel sent");
}

#[tokio::test]
async fn send_cancel_cancels_a_running_query() {
    let pg = PgServer::start();
    let mut conn = ServerConn::connect(&pg.target(MD5_USER, Some(MD5_PW)))
        .await
        .unwrap();
    let key = conn.backend_key();
    let start = Instant::now();
    let (result, ()) = tokio::join!(
        conn.run_internal("select pg_sleep(10)"),
        cancel_when_active(&pg, pg.tcp_host(), key)
    );
    let err = result.unwrap_err();
    assert_eq!(err.sqlstate(), "57014", "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(!conn.is_broken());
    conn.run_internal("select 1").await.unwrap();

    // Over the unix socket as well.
    let (result, ()) = tokio::join!(
        conn.run_internal("select pg_sleep(10)"),
        cancel_when_active(&pg, pg.socket_host(), key)
    );
    assert_eq!(result.unwrap_err().sqlstate(), "57014");
}

/// A listener that accepts and never answers: the connect timeout must cover authentication.
#[tokio::test]
async fn connect_timeout_and_refused_port() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut target = ConnectTarget {
        host: Host {
            host: "127.0.0.1".into(),
            port,
            ..Default::default()
        },
        user: "u".into(),
        password: Some("p".into()),
        database: "d".into(),
        application_name: "shardgate".into(),
        connect_timeout: Duration::from_millis(200),
    };
    let start = Instant::now();
    match ServerConn::connect(&target).await {
        Err(e @ ServerError::ConnectTimeout { .. }) => {
            assert_eq!(e.sqlstate(), "08006");
            assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(2));

    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    target.host.port = closed.local_addr().unwrap().port();
    drop(closed);
    match ServerConn::connect(&target).await {
        Err(ServerError::Connect { host, source }) => {
            assert_eq!(host, target.host.to_string());
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert!(send_cancel(&target.host, 1, 2).await.is_err());
}
