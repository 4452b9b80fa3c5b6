//! Stopping a running proxy: SIGTERM drains (open transactions finish, new clients and
//! `/ready` are refused, the port can be bound again) and SIGINT ends the process at
//! `listen.shutdown_timeout` whatever its sessions are doing.

use std::time::Duration;

use super::{connect, count, postgres, wait, Opts, Server, PASSWORD, USER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_transactions_and_refuses_new_clients() {
    let pg = postgres().await;
    let mut server = Server::start(&pg, "size = 4");
    let client = connect(&server.url()).await;
    client
        .batch_execute("CREATE TABLE drained (id int)")
        .await
        .unwrap();
    client
        .batch_execute("BEGIN; INSERT INTO drained VALUES (1)")
        .await
        .unwrap();

    server.signal("-TERM");
    // /ready turns 503 at once, so a load balancer stops sending.
    assert!(
        wait(Duration::from_secs(5), || server.probe("/ready").0 == 503),
        "ready answers 503 while draining"
    );
    // New clients are refused.
    let refused = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .is_err();
    assert!(refused, "a new connection is refused while draining");
    // A second instance can bind the same port meanwhile (SO_REUSEPORT).
    let reuse = socket2_like_bind(server.setup.port);
    assert!(reuse, "the client port can be bound again while draining");

    // The open transaction still commits, then the process exits.
    client.batch_execute("COMMIT").await.unwrap();
    let status = server
        .exit_within(Duration::from_secs(15))
        .expect("shardgate exits once its clients are gone");
    assert!(status.success(), "clean exit: {status}");
    let direct = connect(&pg.url(USER, PASSWORD, USER)).await;
    let n = count(&direct, "SELECT count(*) FROM drained").await;
    assert_eq!(n, 1, "the drained transaction committed");
}

/// SIGINT with a client in the middle of a long statement: the process ends at
/// `listen.shutdown_timeout` (the session is dropped then), not when the statement ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_ends_the_process_at_the_shutdown_timeout_whatever_sessions_do() {
    let pg = postgres().await;
    let mut server = Server::launch(&pg, Opts::default().shutdown_timeout("2s"));
    let client = connect(&server.url()).await;
    let busy = tokio::spawn(async move { client.simple_query("select pg_sleep(120)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    server.signal("-INT");
    let status = server
        .exit_within(Duration::from_secs(10))
        .expect("shardgate still running 10 s after SIGINT (shutdown_timeout 2 s)");
    assert!(status.success(), "clean exit: {status}");
    let outcome = tokio::time::timeout(Duration::from_secs(10), busy)
        .await
        .expect("the busy client's statement ended with the process")
        .unwrap();
    assert!(outcome.is_err(), "the long statement was cut off");
}

/// Binds `port` with SO_REUSEPORT as a second shardgate would.
fn socket2_like_bind(port: u16) -> bool {
    let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
        return false;
    };
    let _ = socket.set_reuseaddr(true);
    let _ = socket.set_reuseport(true);
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .is_ok()
        && socket.listen(16).is_ok()
}
