//! The admin surface of a running proxy: probes, the token, `/metrics`, the API's answers and
//! errors, the `shardgate admin` CLI, and a shard added with the CLI that moves rows and
//! survives a restart.

use shardgate_localpg::PgCluster;

use super::{connect, count, json, metric, postgres, Opts, Server, PASSWORD, USER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_metrics_and_cli_on_a_running_proxy() {
    let pg = postgres().await;
    let server = Server::start(&pg, "size = 4");

    // Probes and /metrics are open; the API needs the token.
    assert_eq!(server.probe("/health").0, 200);
    let (status, body) = server.probe("/ready");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["ready"], true);
    for token in [None, Some("wrong")] {
        let (status, body) = server.http("GET", "/api/v1/pools", token, "");
        assert_eq!(status, 401, "token {token:?}: {body}");
    }

    let client = connect(&server.url()).await;
    let before = server.probe("/metrics").1;
    for _ in 0..20 {
        client.simple_query("SELECT 1").await.unwrap();
    }
    let _ = client.simple_query("SELECT 1/0").await;
    let after = server.probe("/metrics").1;
    let queries = |t: &str| metric(t, "shardgate_queries_total", "shard=\"s0\"");
    assert!(
        queries(&after) >= queries(&before) + 20.0,
        "queries counted: {} -> {}",
        queries(&before),
        queries(&after)
    );
    for (name, labels, at_least) in [
        // The division by zero.
        ("shardgate_errors_total", "class=\"22\"", 1.0),
        (
            "shardgate_query_duration_seconds_count",
            "route=\"single\"",
            20.0,
        ),
        // The client is idle or, for an instant after its last answer, still counted active.
        ("shardgate_clients", "state=", 1.0),
    ] {
        let value = metric(&after, name, labels);
        assert!(value >= at_least, "{name} {labels}: {value} < {at_least}");
    }
    let sent = metric(&after, "shardgate_client_bytes_sent_total", "");
    assert!(sent > 0.0, "client bytes sent: {sent}");
    assert!(after.contains("# TYPE shardgate_queries_total counter"));

    let (status, body) = server.api("GET", "/api/v1/shards", "");
    assert_eq!(status, 200);
    assert_eq!(json(&body)[0]["name"], "s0");
    assert_eq!(json(&body)[0]["primary_up"], true);
    let (status, body) = server.api("GET", "/api/v1/pools", "");
    assert_eq!(status, 200);
    let pools = json(&body);
    assert_eq!(pools[0]["shard"], "s0");
    assert_eq!(pools[0]["max_size"], 4);
    let (status, body) = server.api("GET", "/api/v1/replicas", "");
    assert_eq!((status, json(&body)), (200, serde_json::json!([])));
    let (status, body) = server.api("POST", "/api/v1/shards", "{}");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("name"), "{body}");
    // No job yet: the rebalance status shows the shard map version and this proxy on it.
    let (status, body) = server.api("GET", "/api/v1/rebalance", "");
    assert_eq!(status, 200, "{body}");
    let rebalance = json(&body);
    assert_eq!(rebalance["job"], serde_json::Value::Null);
    assert_eq!(rebalance["topology_version"], 1);
    for (method, path) in [
        ("POST", "/api/v1/rebalance/abort"),
        ("DELETE", "/api/v1/shards/nope"),
    ] {
        let (status, body) = server.api(method, path, "");
        assert_eq!(status, 404, "{method} {path}: {body}");
    }

    // The CLI: tables for people, JSON for scripts, a reason and an exit code on failure.
    let out = server.cli_ok(&["pools"]);
    assert!(out.contains("SHARD") && out.contains("s0"), "{out}");
    let out = server.cli_ok(&["shards", "list"]);
    assert!(out.contains("s0"), "{out}");
    let out = server.cli_ok(&["--json", "shards", "list"]);
    assert_eq!(json(&out)[0]["name"], "s0");
    server.cli_ok(&["replicas"]);
    server.cli_ok(&["reload"]);
    let (code, _, err) = server.cli(Some("wrong"), &["pools"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("401") || err.to_lowercase().contains("token"),
        "{err}"
    );
    let (code, _, err) = server.cli(None, &["pools"]);
    assert_ne!(code, 0, "{err}");
}

/// `shardgate admin shards add` against a running `serve`: the rows move, `rebalance status
/// --watch` follows the job to its end, and the new shard map survives a restart (file store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_added_with_the_cli_moves_rows_and_survives_a_restart() {
    let (pg, spare) = (postgres().await, postgres().await);
    pg.psql_as(
        USER,
        PASSWORD,
        USER,
        "create table items (user_id bigint primary key, v int not null);
         insert into items select g, 0 from generate_series(1, 2000) g",
    )
    .unwrap();
    let extra = r#"
[rebalance]
databases = ["app"]
admin_user = "postgres"
admin_password = "postgres"

[[sharding.tables]]
name = "items"
"#;
    let server = Server::launch(&pg, Opts::default().extra(extra));
    let primary = format!("postgres://postgres:postgres@127.0.0.1:{}", spare.port());
    let out = server.cli_ok(&["shards", "add", "s1", "--primary", &primary]);
    assert!(out.contains("started job rb-"), "{out}");
    // Exits 0 only when the job ends done.
    let out = server.cli_ok(&["rebalance", "status", "--watch", "--interval", "200ms"]);
    assert!(out.contains("done"), "{out}");

    let items = |pg: &PgCluster| -> i64 {
        let count = pg.psql("app", "select count(*) from items").unwrap();
        count.parse().unwrap()
    };
    let (moved, kept) = (items(&spare), items(&pg));
    assert!(moved > 0 && kept > 0, "moved {moved}, kept {kept}");
    assert_eq!(moved + kept, 2000);
    let state = format!("{}.topology.json", server.setup.config.display());
    assert!(std::path::Path::new(&state).exists(), "{state}");

    // Restarted, it routes by the stored map, not the file's single [[shards]] entry.
    let server = server.restart();
    let out = server.cli_ok(&["--json", "shards", "list"]);
    let shards = json(&out);
    assert_eq!(shards.as_array().map(Vec::len), Some(2), "{out}");
    assert_eq!(shards[1]["name"], "s1");
    assert_eq!(shards[0]["topology_version"], 2);
    let client = connect(&server.url()).await;
    let total = count(&client, "select count(*) from items").await;
    assert_eq!(total, 2000, "a cross-shard count covers both shards");
    for key in [1i64, 2, 3, 1999, 2000] {
        let n = client
            .execute("update items set v = v + 1 where user_id = $1", &[&key])
            .await
            .unwrap();
        assert_eq!(n, 1, "key {key} is where the map says");
    }
}
