//! Reference tables in a rebalance (issue 17): `shards add` gives the new shard every reference
//! table (schema and rows, before it is published), the check after the job finds the copies
//! identical, and `verify references` (rebalancer, HTTP and CLI) reports drift once a shard's
//! copy is changed directly.

#[allow(dead_code)]
#[path = "rebalance/env.rs"]
mod env;

use std::time::Duration;

use shardgate_admin::control::ControlPlane;
use shardgate_rebalance::{AddShardRequest, ReferencesReport};
use shardgate_topology::Phase;

use env::*;

const SCHEMA: &str = "
create table plans (plan_id int primary key, name text not null, price numeric not null);
create table users (user_id bigint primary key, name text not null,
                    plan_id int references plans (plan_id));";

async fn plans(c: &tokio_postgres::Client) -> Vec<String> {
    c.query(
        "select plan_id || ':' || name || ':' || price from plans order by plan_id",
        &[],
    )
    .await
    .expect("plans")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// `GET /api/v1/verify/references` through the admin server at `port`.
async fn verify_http(port: u16) -> ReferencesReport {
    let (status, body) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect admin");
        s.set_read_timeout(Some(Duration::from_secs(60))).ok();
        s.write_all(
            b"GET /api/v1/verify/references HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .expect("send");
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        let status: u16 = raw
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned())
    })
    .await
    .expect("join");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// `shardgate admin verify references`: (exit status, output).
async fn verify_cli(port: u16) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let args = shardgate_admin::cli::AdminArgs {
            url: format!("http://127.0.0.1:{port}"),
            token: None,
            json: false,
            command: shardgate_admin::cli::AdminCommand::Verify(
                shardgate_admin::cli::VerifyCommand::References,
            ),
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = shardgate_admin::cli::run_with(&args, &mut out, &mut err);
        (
            code,
            String::from_utf8_lossy(&out).into_owned() + &String::from_utf8_lossy(&err),
        )
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_add_copies_reference_tables_and_verify_reports_drift() {
    init_logs();
    let clusters = start_clusters(3).await;
    let (s0, s1, spare) = (&clusters[0], &clusters[1], &clusters[2]);
    for c in [s0, s1] {
        superuser(c)
            .await
            .batch_execute(SCHEMA)
            .await
            .expect("schema");
        superuser(c)
            .await
            .batch_execute("alter table plans owner to app; alter table users owner to app")
            .await
            .expect("owner");
    }
    let mut text = proxy_config_text(&[s0, s1], &["users"], "store = \"file\"", "");
    text.push_str("\n[[sharding.reference_tables]]\nname = \"plans\"\n");
    let config = shardgate_config::Config::from_toml(&text, std::path::Path::new("ref.toml"))
        .expect("config");
    let proxy = shardgate_proxy::start(config).await.expect("start proxy");
    let admin = shardgate_admin::AdminServer::start(
        proxy.control(None),
        &shardgate_config::Admin {
            listen: "127.0.0.1:0".into(),
            ..Default::default()
        },
    )
    .await
    .expect("admin server");
    let port = admin.addr().port();

    // Plans through the proxy (every shard), users on both shards.
    let app = connect(&proxy_conn_str(proxy.addr().port())).await;
    app.batch_execute("insert into plans values (1, 'free', 0), (2, 'pro', 10), (3, 'team', 30)")
        .await
        .expect("plans");
    for k in 1..=40i64 {
        app.execute(
            "insert into users (user_id, name, plan_id) values ($1, $2, $3)",
            &[&k, &format!("u{k}"), &((k % 3 + 1) as i32)],
        )
        .await
        .expect("user");
    }
    let want = ["1:free:0", "2:pro:10", "3:team:30"];
    let report = verify_http(port).await;
    assert!(!report.drift, "{report:#?}");
    assert_eq!(report.tables.len(), 1);
    assert_eq!(report.tables[0].copies.len(), 2);

    // Add the spare: it gets the schema and rows of plans before it holds any user.
    let rb = proxy.control(None).rebalancer().expect("rebalancer");
    rb.add_shard(AddShardRequest {
        name: "s2".into(),
        primary: admin_dsn(spare),
        replicas: Vec::new(),
        admin_user: None,
        admin_password: None,
    })
    .await
    .expect("add shard");
    let job = wait_terminal(&rb, Phase::Done, Duration::from_secs(120)).await;
    assert!(
        !job.progress.message.contains("differ"),
        "drift after the job: {}",
        job.progress.message
    );
    assert_eq!(plans(&superuser(spare).await).await, want);
    // Users that moved to s2 join their plan there.
    let moved: i64 = superuser(spare)
        .await
        .query_one(
            "select count(*) from users u join plans p using (plan_id)",
            &[],
        )
        .await
        .expect("join on s2")
        .get(0);
    assert!(moved > 0, "no user moved to s2");
    // Writes reach the new shard's copy too (the proxy follows the new map).
    app.batch_execute("update plans set price = price + 1 where plan_id = 3")
        .await
        .expect("update plans");
    for c in [s0, s1, spare] {
        assert_eq!(
            plans(&superuser(c).await).await,
            ["1:free:0", "2:pro:10", "3:team:31"]
        );
    }
    let report = verify_http(port).await;
    assert!(!report.drift, "{report:#?}");
    assert_eq!(report.tables[0].copies.len(), 3);
    let (code, out) = verify_cli(port).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("identical on every shard"), "{out}");

    // A copy changed behind shardgate's back: drift, exit status 1.
    superuser(s1)
        .await
        .batch_execute("update plans set name = 'PRO' where plan_id = 2")
        .await
        .expect("drift");
    let report = verify_http(port).await;
    assert!(report.drift && report.tables[0].drift, "{report:#?}");
    let checksums: Vec<_> = report.tables[0]
        .copies
        .iter()
        .map(|c| c.checksum.clone())
        .collect();
    assert_ne!(checksums[0], checksums[1]);
    assert_eq!(checksums[0], checksums[2]);
    let (code, out) = verify_cli(port).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DRIFT") && out.contains("differ"), "{out}");

    admin.shutdown().await;
    proxy.shutdown().await;
    stop_clusters(clusters).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_write_during_the_job_reaches_the_new_shard() {
    init_logs();
    let clusters = start_clusters(3).await;
    let (s0, s1, spare) = (&clusters[0], &clusters[1], &clusters[2]);
    // The spare has the (empty) tables already, so the test can hold its initial copy.
    for c in [s0, s1, spare] {
        superuser(c)
            .await
            .batch_execute(SCHEMA)
            .await
            .expect("schema");
        superuser(c)
            .await
            .batch_execute("alter table plans owner to app; alter table users owner to app")
            .await
            .expect("owner");
    }
    let mut text = proxy_config_text(&[s0, s1], &["users"], "store = \"file\"", "");
    text.push_str("\n[[sharding.reference_tables]]\nname = \"plans\"\n");
    let config = shardgate_config::Config::from_toml(&text, std::path::Path::new("ref.toml"))
        .expect("config");
    let proxy = shardgate_proxy::start(config).await.expect("start proxy");
    let app = connect(&proxy_conn_str(proxy.addr().port())).await;
    app.batch_execute("insert into plans values (1, 'free', 0)")
        .await
        .expect("plans");
    for k in 1..=20i64 {
        app.execute(
            "insert into users (user_id, name, plan_id) values ($1, 'u', 1)",
            &[&k],
        )
        .await
        .expect("user");
    }

    // The target's users table is locked: the job waits in Copying, after the plans copy.
    let holder = superuser(spare).await;
    holder
        .batch_execute("begin; lock table users in share mode")
        .await
        .expect("lock");
    let rb = proxy.control(None).rebalancer().expect("rebalancer");
    rb.add_shard(AddShardRequest {
        name: "s2".into(),
        primary: admin_dsn(spare),
        replicas: Vec::new(),
        admin_user: None,
        admin_password: None,
    })
    .await
    .expect("add shard");
    wait_phase(
        &rb,
        Duration::from_secs(60),
        Duration::from_millis(20),
        |p| p == Phase::Copying,
    )
    .await;
    // Copied already, then written through the old map: the new shard misses it for now.
    app.batch_execute("insert into plans values (2, 'late', 5)")
        .await
        .expect("write during the job");
    assert_eq!(plans(&superuser(spare).await).await, ["1:free:0"]);
    holder.batch_execute("rollback").await.expect("unlock");
    let job = wait_terminal(&rb, Phase::Done, Duration::from_secs(120)).await;
    // The check after the job found the new copy behind and copied the tables again.
    assert!(
        !job.progress.message.contains("differ"),
        "drift after the job: {}",
        job.progress.message
    );
    for c in [s0, s1, spare] {
        assert_eq!(plans(&superuser(c).await).await, ["1:free:0", "2:late:5"]);
    }
    let report = rb.verify_references().await.expect("verify");
    assert!(!report.drift, "{report:#?}");
    proxy.shutdown().await;
    stop_clusters(clusters).await;
}
