//! Reverting a committed move (`rebalance abort` in cleanup) while the committed map still
//! sends the moved keys' writes to the targets: such a write either lands on a row that is
//! kept or is refused (40001). It is never answered "UPDATE 0" for a row that exists.
//!
//! Two ways that happened (the SIGKILL test's revert cases lost "acknowledged" writes, which
//! were in fact UPDATEs and DELETEs answered with 0 rows; docs/rebalancing.md):
//!
//! - the revert copied the targets' rows back to the sources while the move's subscriptions
//!   still ran, so the copy back (a delete and re-insert of every moved row on a source) was
//!   replayed on the fenced targets by the apply worker, which fence triggers do not stop. A
//!   client's UPDATE waiting for a row the replay deleted found no row: 0 rows, no fence error;
//! - the undo after the revert's publish did not wait for the proxies (the abort that started
//!   the revert ended that wait at once): it deleted the targets' copies while a proxy could
//!   still route by the committed map, whose UPDATEs and DELETEs then matched nothing there.
//!
//! The test holds each step with row locks (no timing): a lock on a source row holds the copy
//! back, a lock on a target row makes a replay of the copy back, if there is one, wait there
//! with the client's UPDATE queued behind it, and a registered proxy that reports the
//! committed map's version holds the undo.

#[allow(dead_code)]
#[path = "rebalance/env.rs"]
mod env;
#[allow(dead_code)]
#[path = "rebalance/workload.rs"]
mod workload;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_admin::control::ControlPlane;
use shardgate_router::Ring;
use shardgate_tests::PgCluster;
use shardgate_topology::{Phase, Store};
use tokio_postgres::Client;

use env::*;
use workload::{ACCOUNTS, EVENT_USERS};

const TABLES: [&str; 2] = ["accounts", "events"];
/// Bound on each wait (2 loaded cores run everything).
const WAIT: Duration = Duration::from_secs(120);

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `WAIT`.
async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Backends on `c`'s server that wait for a lock: those of `application_name` `app` whose
/// statement starts with `prefix`.
async fn lock_waiters(c: &Client, app: &str, prefix: &str) -> i64 {
    // One pg_stat_activity snapshot per transaction: take a new one each time.
    c.batch_execute("select pg_stat_clear_snapshot()")
        .await
        .expect("pg_stat_clear_snapshot");
    c.query_one(
        "select count(*) from pg_stat_activity where wait_event_type = 'Lock' \
         and application_name = $1 and query like $2",
        &[&app, &format!("{prefix}%")],
    )
    .await
    .expect("pg_stat_activity")
    .get(0)
}

/// A logical replication apply worker on `c`'s server waits for a lock.
async fn apply_waits(c: &Client) -> bool {
    c.batch_execute("select pg_stat_clear_snapshot()")
        .await
        .expect("pg_stat_clear_snapshot");
    c.query_one(
        "select count(*) from pg_stat_activity \
         where backend_type = 'logical replication worker' and wait_event_type = 'Lock'",
        &[],
    )
    .await
    .expect("pg_stat_activity")
    .get::<_, i64>(0)
        > 0
}

async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.expect(sql).get(0)
}

/// The first `n` account keys on s0 (2 shards) that the 3-shard ring moves to s2.
fn moving_accounts(n: usize) -> Vec<i64> {
    let (ring2, ring3) = rings();
    (1..=ACCOUNTS)
        .filter(|k| owner(&ring2, *k) == 0 && owner(&ring3, *k) == 2)
        .take(n)
        .collect()
}

fn rings() -> (Ring, Ring) {
    (
        Ring::new(&["s0", "s1"], BITS).expect("ring"),
        Ring::new(&["s0", "s1", "s2"], BITS).expect("ring"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_reaching_a_target_during_a_revert_is_kept_or_refused() {
    init_logs();
    let (shards, meta) = workload::clusters_with_rows(3, 2).await;
    let (ring2, ring3) = rings();
    let config = proxy_config(
        &[&shards[0], &shards[1]],
        &TABLES,
        &format!(
            "store = \"{}\"\npoll_interval = \"200ms\"\nlease = \"3s\"\nproxy_id = \"proxy-revert\"",
            store_url(&meta)
        ),
        "",
    );
    let proxy = shardgate_proxy::start(config.clone())
        .await
        .expect("start proxy");
    let rb = proxy.control(None).rebalancer().expect("rebalancer");
    let refs: Vec<&PgCluster> = shards.iter().collect();
    let before = checksums(&refs, &TABLES).await;
    let v1 = rb.status().await.expect("status").topology_version;

    // A proxy that reports the version in `lagging` every 300 ms: at v1 it holds the cleanup
    // (so the abort finds the move committed and reverts it); at v2 it is a proxy that learned
    // the commit but not yet the revert.
    let lagging = Arc::new(AtomicU64::new(v1));
    let laggard = {
        let store = Store::open(&config, None).await.expect("open the store");
        store.report_version("laggard", v1).await.expect("report");
        let lagging = lagging.clone();
        tokio::spawn(async move {
            loop {
                let _ = store
                    .report_version("laggard", lagging.load(Ordering::SeqCst))
                    .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    rb.add_shard(add_request("s2", &shards[2]))
        .await
        .expect("add s2");
    wait_phase(&rb, WAIT, Duration::from_millis(20), |p| {
        p == Phase::Cleanup || p.is_terminal()
    })
    .await;
    let v2 = v1 + 1;
    let control = proxy.control(None);
    wait_until("the proxy routes by the committed map", || async {
        routed_version(&*control) == v2
    })
    .await;

    // `k`: the account the client updates; `held`: an account and an event whose source rows
    // the test locks to hold the copy back (accounts, then events) of the move s0 → s2.
    let keys = moving_accounts(2);
    let (k, held) = (keys[0], keys[1]);
    let event_user = (1..=EVENT_USERS)
        .find(|u| owner(&ring2, *u) == 0 && owner(&ring3, *u) == 2)
        .expect("a moving event user");
    let s0_accounts = superuser(&shards[0]).await;
    let s0_events = superuser(&shards[0]).await;
    s0_accounts
        .batch_execute(&format!(
            "begin; select 1 from accounts where user_id = {held} for share"
        ))
        .await
        .expect("lock a source account");
    s0_events
        .batch_execute(&format!(
            "begin; select 1 from events where user_id = {event_user} and id = 1 for share"
        ))
        .await
        .expect("lock a source event");

    rb.abort().await.expect("abort in cleanup");
    lagging.store(v2, Ordering::SeqCst);

    // The revert fenced the targets and now waits for the source row to copy accounts back.
    let s0 = superuser(&shards[0]).await;
    wait_until(
        "the copy back of accounts waits for the source's row",
        || {
            let s0 = &s0;
            async move {
                lock_waiters(
                    s0,
                    "shardgate-rebalance",
                    "DELETE FROM \"public\".\"accounts\"",
                )
                .await
                    > 0
            }
        },
    )
    .await;
    // A transaction on the fenced target holds `k` (it began after the fence, so the revert
    // does not wait for it).
    let s2 = superuser(&shards[2]).await;
    let holder = superuser(&shards[2]).await;
    holder
        .batch_execute(&format!(
            "begin; select 1 from accounts where user_id = {k} for update"
        ))
        .await
        .expect("lock k on the target");
    s0_accounts
        .batch_execute("rollback")
        .await
        .expect("release the source account");
    // Accounts are copied back; the revert now waits to copy events, before its publish: the
    // map is still v2, which sends `k` to s2.
    wait_until("the copy back of events waits for the source's row", || {
        let s0 = &s0;
        async move {
            lock_waiters(
                s0,
                "shardgate-rebalance",
                "DELETE FROM \"public\".\"events\"",
            )
            .await
                > 0
        }
    })
    .await;
    // A replay of the copy back on the target (the move's subscription still running) would
    // delete `k` there: it waits for `holder`. Without a subscription nothing replays.
    wait_until(
        "the target's apply worker waits for k, or the target subscribes to nothing",
        || {
            let s2 = &s2;
            async move {
                apply_waits(s2).await
                    || count(s2, "select count(*) from pg_subscription").await == 0
            }
        },
    )
    .await;

    // The client's UPDATE of `k`, through the proxy at v2, waits on the target behind them.
    let client = connect(&proxy_conn_str(proxy.addr().port())).await;
    let update = tokio::spawn(async move {
        client
            .execute(
                "update accounts set balance = balance + 1 where user_id = $1",
                &[&k],
            )
            .await
    });
    wait_until("the client's UPDATE waits for k on the target", || {
        let s2 = &s2;
        async move { lock_waiters(s2, "shardgate", "update accounts").await > 0 }
    })
    .await;
    holder.batch_execute("commit").await.expect("release k");
    match update.await.expect("join") {
        Ok(n) => panic!(
            "UPDATE of account {k} on the fenced target answered {n} rows: the row exists \
             (a replay of the revert's copy back replaced it), so the write was lost"
        ),
        Err(e) => assert_eq!(
            e.code().map(|c| c.code()),
            Some("40001"),
            "the fence refuses it: {e:?}"
        ),
    }

    // The revert goes on and publishes v3; the laggard still reports v2, so the targets'
    // copies must stay (fenced) until it follows. `holder` takes `k` again: an undo deleting
    // the targets' copies now would wait for it.
    holder
        .batch_execute(&format!(
            "begin; select 1 from accounts where user_id = {k} for update"
        ))
        .await
        .expect("lock k on the target again");
    s0_events
        .batch_execute("rollback")
        .await
        .expect("release the source event");
    let deadline = Instant::now() + WAIT;
    let (s, deleting) = loop {
        let s = rb.status().await.expect("status");
        let deleting = lock_waiters(
            &s2,
            "shardgate-rebalance",
            "DELETE FROM \"public\".\"accounts\"",
        )
        .await
            > 0;
        let waits = s
            .job
            .as_ref()
            .is_some_and(|j| j.progress.message.contains("waiting for every proxy"));
        if deleting || waits || s.job.as_ref().is_some_and(|j| j.phase.is_terminal()) {
            break (s, deleting);
        }
        assert!(
            Instant::now() < deadline,
            "no end of the revert: {}",
            json(&s)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        !deleting && s.job.as_ref().is_some_and(|j| !j.phase.is_terminal()),
        "the revert's undo deleted the targets' copies while a proxy still routed by v{v2} \
         (its UPDATEs and DELETEs would match nothing there); status: {}",
        json(&s)
    );
    assert_eq!(s.topology_version, v2 + 1, "the revert published v3");
    assert_eq!(
        count(
            &s2,
            &format!("select count(*) from accounts where user_id = {k}")
        )
        .await,
        1,
        "the target keeps its copy while a proxy routes by v{v2}"
    );
    holder.batch_execute("commit").await.expect("release k");
    lagging.store(v2 + 1, Ordering::SeqCst);
    let job = wait_terminal(&rb, Phase::Aborted, WAIT).await;
    assert_eq!(job.to_version, Some(v2 + 1), "{job:?}");
    laggard.abort();

    // Nothing was written: every shard holds what it held before the job, nothing is left.
    assert_eq!(
        checksums(&refs, &TABLES).await,
        before,
        "data changed by a reverted move"
    );
    let all = [("s0", &shards[0]), ("s1", &shards[1]), ("s2", &shards[2])];
    assert_clean(&all, "after the revert").await;

    drop((s0, s2, holder, s0_accounts, s0_events));
    proxy.shutdown().await;
    let mut clusters = shards;
    clusters.push(meta);
    stop_clusters(clusters).await;
}
