//! A real `shardgate serve` SIGKILLed in the middle of a two-phase commit (issue 16), then
//! restarted with the same proxy id: killed after PREPARE TRANSACTION but before the commit
//! decision was recorded, everything rolls back; killed after the decision, recovery commits on
//! every shard. Either way nothing stays prepared, and the client that was cut off never saw a
//! COMMIT it could rely on. And a shard lost right after the decision: the client is told
//! COMMIT (the decision is durable) and recovery commits that shard's part.
//!
//! The killed process is `target/debug/shardgate` with the `failpoints` feature (see
//! `shardgate_tests::serve`); `FAILPOINTS=<name>=return(kill)` makes it SIGKILL itself there.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use common::prepared::RollBackLeftovers;
use common::{start_shards, PASSWORD, USER};
use shardgate_router::{KeyValue, Router};
use shardgate_tests::ports::free_port;
use shardgate_tests::serve::{Serve, ADMIN_TOKEN_ENV};
use shardgate_tests::PgCluster;

const SCHEMA: &str = "create table accounts (user_id bigint primary key, balance bigint not null)";

fn config_text(shards: &[PgCluster], port: u16, admin: u16) -> String {
    let mut text = format!(
        r#"
[listen]
addr = "127.0.0.1:{port}"
shutdown_timeout = "2s"
[admin]
listen = "127.0.0.1:{admin}"
token_env = "{ADMIN_TOKEN_ENV}"
[topology]
proxy_id = "crash-test"
[pool]
size = 4
[[users]]
name = "{USER}"
password = "{PASSWORD}"
[sharding]
two_phase_recovery_interval = "1s"
[[sharding.tables]]
name = "accounts"
"#
    );
    for (i, c) in shards.iter().enumerate() {
        text.push_str(&format!(
            "[[shards]]\nname = \"s{i}\"\nprimary = {{ host = \"127.0.0.1\", port = {} }}\n",
            c.port()
        ));
    }
    text
}

async fn prepared_on(shards: &[PgCluster]) -> i64 {
    let mut n = 0;
    for c in shards {
        let client = common::connect(&format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname=app",
            c.port()
        ))
        .await;
        let v: i64 = client
            .query_one("select count(*) from pg_prepared_xacts", &[])
            .await
            .expect("count")
            .get(0);
        n += v;
    }
    n
}

async fn balance(shard: &PgCluster, key: i64) -> i64 {
    let client = common::connect(&format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname=app",
        shard.port()
    ))
    .await;
    client
        .query_one("select balance from accounts where user_id = $1", &[&key])
        .await
        .expect("balance")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_killed_midway_is_finished_or_undone_by_recovery() {
    let shards = start_shards(2, SCHEMA).await;
    let _rollback = RollBackLeftovers::of(&shards);
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, admin) = (free_port(), free_port());
    let path = dir.path().join("crash.toml");
    let text = config_text(&shards, port, admin);
    std::fs::write(&path, &text).expect("config");
    let config =
        shardgate_config::Config::from_toml(&text, Path::new("crash.toml")).expect("config");
    let router = Router::new(&config).expect("router");
    let key_on = |s: usize| {
        (1i64..)
            .find(|k| router.shard_for_key(&KeyValue::Int(*k)) == s)
            .expect("a key")
    };
    let (a, b) = (key_on(0), key_on(1));
    for (i, key) in [(0, a), (1, b)] {
        shards[i]
            .psql_as(
                USER,
                PASSWORD,
                "app",
                &format!("insert into accounts values ({key}, 100)"),
            )
            .expect("account");
    }
    let url = format!("host=127.0.0.1 port={port} user={USER} password={PASSWORD} dbname=app");

    // (failpoint, whether the transfer must be there after recovery)
    for (failpoint, committed) in [
        ("two-phase-after-prepare", false),
        ("two-phase-after-decision", true),
    ] {
        let (a_before, b_before) = (balance(&shards[0], a).await, balance(&shards[1], b).await);
        let spec = format!("{failpoint}=return(kill)");
        let p = path.clone();
        let mut serve = tokio::task::spawn_blocking(move || Serve::start(p, admin, Some(&spec)))
            .await
            .expect("join");
        let client = common::connect(&url).await;
        client.batch_execute("begin").await.expect("begin");
        client
            .batch_execute(&format!(
                "update accounts set balance = balance - 1 where user_id = {a}"
            ))
            .await
            .expect("update on s0");
        client
            .batch_execute(&format!(
                "update accounts set balance = balance + 1 where user_id = {b}"
            ))
            .await
            .expect("update on s1");
        let commit = client.batch_execute("commit").await;
        assert!(
            commit.is_err(),
            "{failpoint}: the client must not see COMMIT succeed"
        );
        let status = tokio::task::block_in_place(|| serve.wait_exit(Duration::from_secs(10)))
            .unwrap_or_else(|| panic!("{failpoint}: shardgate did not die"));
        assert_eq!(
            status.signal(),
            Some(9),
            "{failpoint}: killed by its failpoint"
        );
        drop(serve);
        assert_eq!(
            prepared_on(&shards).await,
            2,
            "{failpoint}: both shards hold it prepared"
        );

        // Restarted without failpoints: recovery at start settles it.
        let p = path.clone();
        let serve = tokio::task::spawn_blocking(move || Serve::start(p, admin, None))
            .await
            .expect("join");
        let settled = common::wait_for(Duration::from_secs(20), || async {
            prepared_on(&shards).await == 0
        })
        .await;
        assert!(settled, "{failpoint}: recovery left prepared transactions");
        let delta = i64::from(committed);
        assert_eq!(
            balance(&shards[0], a).await,
            a_before - delta,
            "{failpoint}: s0"
        );
        assert_eq!(
            balance(&shards[1], b).await,
            b_before + delta,
            "{failpoint}: s1"
        );
        let (status, body) = serve.api("GET", "/api/v1/transactions", "");
        assert_eq!(status, 200, "{body}");
        assert!(
            !body.contains("sg_crash-test"),
            "{failpoint}: still listed: {body}"
        );
        drop(serve);
    }
    // A shard lost after the decision: COMMIT succeeds for the client, recovery (every 1 s
    // here) finishes the shard that missed its COMMIT PREPARED.
    let (a_before, b_before) = (balance(&shards[0], a).await, balance(&shards[1], b).await);
    let p = path.clone();
    let serve = tokio::task::spawn_blocking(move || {
        Serve::start(
            p,
            admin,
            Some("two-phase-lose-shard-after-decision=1*return"),
        )
    })
    .await
    .expect("join");
    let client = common::connect(&url).await;
    client.batch_execute("begin").await.expect("begin");
    client
        .batch_execute(&format!(
            "update accounts set balance = balance - 5 where user_id = {a}"
        ))
        .await
        .expect("update on s0");
    client
        .batch_execute(&format!(
            "update accounts set balance = balance + 5 where user_id = {b}"
        ))
        .await
        .expect("update on s1");
    client
        .batch_execute("commit")
        .await
        .expect("COMMIT succeeds once the decision is recorded");
    let settled = common::wait_for(Duration::from_secs(20), || async {
        prepared_on(&shards).await == 0
    })
    .await;
    assert!(settled, "recovery did not finish the lost shard's commit");
    assert_eq!(balance(&shards[0], a).await, a_before - 5);
    assert_eq!(balance(&shards[1], b).await, b_before + 5);
    drop(client);
    drop(serve);

    assert_eq!(_rollback.run(), 0);
    drop(_rollback);
    tokio::task::spawn_blocking(move || drop(shards)).await.ok();
}
