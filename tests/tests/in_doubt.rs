//! In-doubt two-phase transactions (issue 16): prepared transactions a proxy left on the
//! shards are resolved by recovery — committed when the topology store holds their commit
//! decision, rolled back when it does not (presumed abort) — at start and periodically; another
//! proxy's are left alone while it reports to the store and resolved once it has been silent
//! for `topology.lease`. `GET /api/v1/transactions`, `POST /api/v1/transactions/resolve`,
//! `shardgate admin transactions` and the in-doubt metrics show them.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::prepared::RollBackLeftovers;
use common::*;
use shardgate_admin::control::{RecoveryReport, TransactionsReport};
use shardgate_tests::{ClusterOptions, PgCluster};
use shardgate_topology::Store;

const SCHEMA: &str = "create table accounts (user_id bigint primary key, note text)";

/// This proxy's id (and gid token) and the other proxy's.
const PROXY: &str = "itest";
const GHOST: &str = "ghost";

async fn start_meta() -> PgCluster {
    tokio::task::spawn_blocking(|| {
        let c = PgCluster::start(ClusterOptions::default()).expect("start the metadata cluster");
        c.create_database("meta", "postgres")
            .expect("create database meta");
        c
    })
    .await
    .expect("join")
}

/// Inserts `(user_id, note)` into `accounts` on `shard` as `app` and prepares it as `gid`.
fn prepare(shard: &PgCluster, gid: &str, user_id: i64, note: &str) {
    shard
        .psql_as(
            USER,
            PASSWORD,
            DB,
            &format!(
                "begin;\ninsert into accounts values ({user_id}, '{note}');\n\
                 prepare transaction '{gid}';"
            ),
        )
        .unwrap_or_else(|e| panic!("prepare {gid}: {e}"));
}

/// The gids prepared on `shard`.
fn prepared(shard: &PgCluster) -> Vec<String> {
    let out = shard
        .psql("postgres", "select gid from pg_prepared_xacts order by gid")
        .expect("pg_prepared_xacts");
    out.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The notes in `accounts` on `shard`, by user id.
fn notes(shard: &PgCluster) -> Vec<String> {
    let out = shard
        .psql(
            DB,
            "select user_id || ':' || note from accounts order by user_id",
        )
        .expect("read accounts");
    out.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The body of a 200 answer from the admin server.
async fn admin_ok(port: u16, method: &'static str, path: &'static str) -> String {
    let (status, body) = tokio::task::spawn_blocking(move || admin_http(port, method, path))
        .await
        .expect("join");
    assert_eq!(status, 200, "{method} {path}: {body}");
    body
}

async fn transactions(port: u16) -> TransactionsReport {
    let body = admin_ok(port, "GET", "/api/v1/transactions").await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

async fn resolve_now(port: u16) -> RecoveryReport {
    let body = admin_ok(port, "POST", "/api/v1/transactions/resolve").await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Polls `check` on a blocking thread every 100 ms for up to `within`.
async fn eventually(
    within: Duration,
    what: &str,
    check: impl Fn() -> bool + Send + Sync + 'static,
) {
    let check = Arc::new(check);
    let ok = wait_for(within, || {
        let check = Arc::clone(&check);
        async move {
            let ok = tokio::task::spawn_blocking(move || check())
                .await
                .expect("join");
            if !ok {
                tokio::time::sleep(Duration::from_millis(80)).await;
            }
            ok
        }
    })
    .await;
    assert!(ok, "{what} within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_doubt_transactions_are_resolved_by_their_decisions() {
    init_logs();
    let (shards, meta) = tokio::join!(start_shards(2, SCHEMA), start_meta());
    let cleanup = RollBackLeftovers::of(&shards);
    let store_url = meta.superuser_url("meta");
    let config = sharded_config(
        &shards,
        &["accounts"],
        &format!(
            "[topology]\nstore = \"{store_url}\"\nproxy_id = \"{PROXY}\"\nlease = \"2s\"\n\
             poll_interval = \"200ms\"\n\n[sharding]\ntwo_phase_recovery_interval = \"300ms\"\n"
        ),
    );

    // What a proxy that crashed mid-commit leaves behind, before this one starts:
    // (a) transaction 1001 of this proxy, prepared on both shards, its decision recorded;
    // (b) transaction 1002 of this proxy, prepared on both shards, no decision;
    // (c) transaction 1003 of another proxy that still reports to the store, decided.
    let (s0, s1) = (&shards[0], &shards[1]);
    prepare(s0, &format!("sg_{PROXY}_1001_s0"), 1, "decided");
    prepare(s1, &format!("sg_{PROXY}_1001_s1"), 2, "decided");
    prepare(s0, &format!("sg_{PROXY}_1002_s0"), 3, "undecided");
    prepare(s1, &format!("sg_{PROXY}_1002_s1"), 4, "undecided");
    prepare(s1, &format!("sg_{GHOST}_1003_s1"), 5, "ghost");
    let store = Store::open(&config, None).await.expect("open the store");
    let participants = vec!["s0".to_owned(), "s1".to_owned()];
    store
        .record_commit(PROXY, 1001, &participants)
        .await
        .expect("record 1001");
    store
        .record_commit(GHOST, 1003, &["s1".to_owned()])
        .await
        .expect("record 1003");
    let ghost = tokio::spawn({
        let store = Arc::clone(&store);
        async move {
            loop {
                let _ = store.report_version(GHOST, 1).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    assert_eq!(prepared(s0).len() + prepared(s1).len(), 5);

    // Counters of the first round (at start) land in the recorder the admin server renders.
    let metrics = shardgate_admin::metrics::install();
    let env = ShardedEnv::with_proxy(shards, config).await;
    // Declared after `env`, so a failure below rolls back before the clusters stop.
    let _rollback = RollBackLeftovers::of(&env.shards);
    let admin = shardgate_admin::AdminServer::start(
        env.proxy.control(None),
        &shardgate_config::Admin {
            listen: "127.0.0.1:0".into(),
            ..Default::default()
        },
    )
    .await
    .expect("admin server");
    let port = admin.addr().port();

    // This proxy's own: resolved at start by their decisions.
    let ports: Vec<(u16, String)> = cleanup.shards.clone();
    eventually(
        Duration::from_secs(10),
        "this proxy's transactions resolved",
        {
            move || {
                ports.iter().all(|(port, password)| {
                    shardgate_tests::psql_url(
                        &format!("postgres://postgres:{password}@127.0.0.1:{port}/postgres"),
                        &format!(
                            "select count(*) from pg_prepared_xacts where gid like 'sg_{PROXY}%'"
                        ),
                    )
                    .is_ok_and(|n| n.trim() == "0")
                })
            }
        },
    )
    .await;
    let (s0, s1) = (&env.shards[0], &env.shards[1]);
    assert_eq!(notes(s0), ["1:decided"]);
    assert_eq!(notes(s1), ["2:decided"]);

    // The other proxy's is shown, with its decision, and left alone while that proxy reports
    // — also once it is older than the lease.
    let ghost_gid = format!("sg_{GHOST}_1003_s1");
    let mut shown = transactions(port).await;
    for _ in 0..50 {
        if !shown.in_doubt.first().is_some_and(|t| t.age_seconds < 2.5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        shown = transactions(port).await;
    }
    assert_eq!(shown.proxy, PROXY);
    assert_eq!(shown.in_doubt.len(), 1, "{shown:#?}");
    let t = &shown.in_doubt[0];
    assert_eq!(
        (t.gid.as_str(), t.shard.as_str(), t.database.as_str()),
        (ghost_gid.as_str(), "s1", DB)
    );
    assert_eq!(
        (t.owner.as_str(), t.proxy.as_str(), t.txid),
        (USER, GHOST, 1003)
    );
    assert_eq!((t.decision.as_str(), t.in_flight), ("commit", false));
    assert!(shown.unreachable.is_empty() && shown.store_error.is_none());
    // This proxy's decision was forgotten once both participants committed.
    let decided: Vec<(String, u64)> = shown
        .decisions
        .iter()
        .map(|d| (d.proxy.clone(), d.txid))
        .collect();
    assert_eq!(decided, [(GHOST.to_owned(), 1003)]);
    let round = resolve_now(port).await;
    assert!(
        round.committed.is_empty() && round.rolled_back.is_empty(),
        "{round:#?}"
    );
    assert_eq!(round.left.len(), 1, "{round:#?}");
    assert_eq!(
        (round.left[0].gid.as_str(), round.left[0].reason.as_str()),
        (ghost_gid.as_str(), "its proxy is alive")
    );
    assert_eq!(prepared(s1), std::slice::from_ref(&ghost_gid));

    // The CLI shows it too.
    let cli_port = port;
    let (code, text) = tokio::task::spawn_blocking(move || {
        let args = shardgate_admin::cli::AdminArgs {
            url: format!("http://127.0.0.1:{cli_port}"),
            token: None,
            json: false,
            command: shardgate_admin::cli::AdminCommand::Transactions { resolve: false },
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = shardgate_admin::cli::run_with(&args, &mut out, &mut err);
        (code, String::from_utf8_lossy(&out).into_owned())
    })
    .await
    .expect("join");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&ghost_gid) && text.contains("commit"),
        "{text}"
    );

    // The other proxy goes silent: after the lease its transaction is committed by its
    // decision, and the decision forgotten.
    ghost.abort();
    let ports: Vec<(u16, String)> = cleanup.shards.clone();
    eventually(
        Duration::from_secs(15),
        "the other proxy's transaction resolved",
        {
            move || {
                let (port, password) = &ports[1];
                shardgate_tests::psql_url(
                    &format!("postgres://postgres:{password}@127.0.0.1:{port}/postgres"),
                    "select count(*) from pg_prepared_xacts",
                )
                .is_ok_and(|n| n.trim() == "0")
            }
        },
    )
    .await;
    assert_eq!(notes(s1), ["2:decided", "5:ghost"]);
    let mut shown = transactions(port).await;
    for _ in 0..50 {
        if shown.decisions.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        shown = transactions(port).await;
    }
    assert!(shown.in_doubt.is_empty(), "{shown:#?}");
    assert!(shown.decisions.is_empty(), "{shown:#?}");
    assert!(store
        .commit_decisions()
        .await
        .expect("decisions")
        .is_empty());

    // What the metrics say: three commits (1001 on two shards, 1003), two rollbacks (1002).
    let text = shardgate_admin::metrics::render(&metrics, &*env.proxy.control(None));
    for line in [
        "shardgate_two_phase_resolved_total{outcome=\"commit\"} 3",
        "shardgate_two_phase_resolved_total{outcome=\"rollback\"} 2",
        "shardgate_in_doubt_transactions 0",
        "shardgate_in_doubt_oldest_seconds 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }

    assert_eq!(cleanup.run(), 0, "no prepared transaction is left");
    admin.shutdown().await;
    drop(store);
    let ShardedEnv { proxy, shards, .. } = env;
    proxy.shutdown().await;
    tokio::task::spawn_blocking(move || drop(meta)).await.ok();

    file_store_decisions_survive_the_proxy(shards, &cleanup).await;
}

/// The same with the file store: a decision recorded in the state file's decision log before
/// the proxy starts is read at its start; another proxy's transaction (unknown to a file
/// store, so gone) is rolled back once older than the lease.
async fn file_store_decisions_survive_the_proxy(
    shards: Vec<PgCluster>,
    cleanup: &RollBackLeftovers,
) {
    const FILE_PROXY: &str = "itest-file";
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("topology.json");
    let config = sharded_config(
        &shards,
        &["accounts"],
        &format!(
            "[topology]\nstate_file = \"{}\"\nproxy_id = \"{FILE_PROXY}\"\nlease = \"1s\"\n\n\
             [sharding]\ntwo_phase_recovery_interval = \"300ms\"\n",
            state.display()
        ),
    );
    let (s0, s1) = (&shards[0], &shards[1]);
    prepare(s0, &format!("sg_{FILE_PROXY}_2001_s0"), 11, "decided");
    prepare(s1, &format!("sg_{FILE_PROXY}_2001_s1"), 12, "decided");
    prepare(s0, &format!("sg_{FILE_PROXY}_2002_s0"), 13, "undecided");
    prepare(s1, "sg_other_2003_s1", 14, "other");
    let store = Store::open(&config, Some(state.clone()))
        .await
        .expect("open the file store");
    store
        .record_commit(FILE_PROXY, 2001, &["s0".to_owned(), "s1".to_owned()])
        .await
        .expect("record 2001");
    drop(store);

    let env = ShardedEnv::with_proxy(shards, config.clone()).await;
    let _rollback = RollBackLeftovers::of(&env.shards);
    let ports: Vec<(u16, String)> = cleanup.shards.clone();
    eventually(Duration::from_secs(10), "every transaction resolved", {
        move || {
            ports.iter().all(|(port, password)| {
                shardgate_tests::psql_url(
                    &format!("postgres://postgres:{password}@127.0.0.1:{port}/postgres"),
                    "select count(*) from pg_prepared_xacts",
                )
                .is_ok_and(|n| n.trim() == "0")
            })
        }
    })
    .await;
    let (s0, s1) = (&env.shards[0], &env.shards[1]);
    assert_eq!(notes(s0), ["1:decided", "11:decided"]);
    assert_eq!(notes(s1), ["2:decided", "5:ghost", "12:decided"]);
    // The decision was forgotten in the log (read again by a new store).
    let mut forgotten = false;
    for _ in 0..50 {
        let store = Store::open(&config, Some(state.clone()))
            .await
            .expect("reopen the file store");
        if store
            .commit_decisions()
            .await
            .expect("decisions")
            .is_empty()
        {
            forgotten = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(forgotten, "the decision of 2001 is still in the log");
    assert_eq!(cleanup.run(), 0, "no prepared transaction is left");
    env.stop().await;
}
