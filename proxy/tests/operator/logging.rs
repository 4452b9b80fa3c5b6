//! What the proxy logs: slow statements by their fingerprint without literal values, and
//! `RUST_LOG` filtering by target and by span.

use super::{connect, postgres, select_one, Opts, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_statements_are_logged_without_their_values() {
    let pg = postgres().await;
    let log = Opts::logged("warn").extra("[log]\nslow_query_ms = 100");
    let mut server = Server::launch(&pg, log);
    let client = connect(&server.url()).await;
    client
        .simple_query("SELECT pg_sleep(0.3), 'secret-value' AS v")
        .await
        .unwrap();
    client
        .query("SELECT pg_sleep($1::float8 / 10), 42", &[&3f64])
        .await
        .unwrap();
    client.simple_query("SELECT 'fast'").await.unwrap();
    drop(client);
    server.kill();
    let out = server.log();
    let slow: Vec<&str> = out.lines().filter(|l| l.contains("slow query")).collect();
    assert_eq!(slow.len(), 2, "two slow statements logged: {out}");
    // The statement's fingerprint, as `shardgate admin queries` shows it.
    assert!(slow[0].contains("pg_sleep($1), $2 AS v"), "{}", slow[0]);
    assert!(
        slow[0].contains("s0") && slow[0].contains("primary"),
        "{}",
        slow[0]
    );
    assert!(slow[0].contains("duration_ms="), "{}", slow[0]);
    assert!(
        !out.contains("secret-value"),
        "literal values are not logged: {out}"
    );
    assert!(slow[1].contains("$1::float8 / $2"), "{}", slow[1]);
    assert!(
        !slow[1].contains("parameters="),
        "parameters are off by default: {}",
        slow[1]
    );
}

/// `RUST_LOG` filters the same with either filter the binary picks: targets and levels only
/// (the cheap `Targets`) or span directives (`EnvFilter`). A client's login is logged at debug
/// inside its `client` span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_filters_by_target_and_by_span() {
    let pg = postgres().await;
    for (rust_log, logged_in_shown) in [
        ("warn", false),
        ("warn,shardgate_proxy=debug", true),
        ("warn,[client]=debug", true),
        ("warn,[some_other_span]=debug", false),
    ] {
        let server = Server::launch(&pg, Opts::logged(rust_log));
        let client = connect(&server.url()).await;
        select_one(&client).await;
        let text = server.log();
        assert_eq!(
            text.contains("client logged in"),
            logged_in_shown,
            "RUST_LOG={rust_log}: {text}"
        );
        drop(server);
    }
}
