//! Crash at every failpoint of a job, restart, resume: the store's shard map decides undo or
//! finish, and whichever it is, every row ends on the shard the published map names, none is
//! lost or duplicated, and nothing of the job is left on any shard. A "crash" freezes the
//! runner at the failpoint and shuts its runtime down (connections drop, no cleanup code runs),
//! as a killed proxy leaves things; the resuming rebalancer is a new one with the same proxy id.

// Shared with the other engine tests; each uses part of it.
#[allow(dead_code)]
#[path = "rebalance_engine/common.rs"]
mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::*;
use shardgate_rebalance::{failpoints, AddShardRequest};
use shardgate_tests::PgCluster;
use shardgate_topology::{Phase, Store};

/// One case: where the runner stops, whether that is a crash (else a simulated error the
/// runner lives through), whether the job is aborted in Cleanup first (the revert path), and
/// how the job must end.
struct Case {
    failpoint: &'static str,
    crash: bool,
    abort_in_cleanup: bool,
    ends: Phase,
}

const fn case(failpoint: &'static str, crash: bool, abort: bool, ends: Phase) -> Case {
    Case {
        failpoint,
        crash,
        abort_in_cleanup: abort,
        ends,
    }
}

/// The failpoints are global to the process: the tests of this file run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const CASES: &[Case] = &[
    case("rebalance-mid-copy", true, false, Phase::Aborted),
    case("rebalance-before-save-cutover", true, false, Phase::Aborted),
    case("rebalance-before-publish", true, false, Phase::Aborted),
    case("rebalance-publish-reply-lost", false, false, Phase::Done),
    case("rebalance-after-publish", true, false, Phase::Done),
    case("rebalance-after-verify", true, false, Phase::Done),
    case("rebalance-before-delete", true, false, Phase::Done),
    case("rebalance-mid-delete", true, false, Phase::Done),
    case("rebalance-before-done", true, false, Phase::Done),
    case("rebalance-before-save-aborting", true, true, Phase::Aborted),
    case(
        "rebalance-revert-before-publish",
        true,
        true,
        Phase::Aborted,
    ),
    case("rebalance-revert-after-publish", true, true, Phase::Aborted),
];

#[test]
fn a_crash_at_any_failpoint_resumes_to_undo_or_finish_as_the_map_says() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut table = Vec::new();
    for c in CASES {
        let outcome = run_case(c);
        table.push((c.failpoint, outcome));
    }
    eprintln!("\n{:<36} | outcome", "failpoint");
    eprintln!("{}-+-{}", "-".repeat(36), "-".repeat(60));
    for (name, outcome) in &table {
        eprintln!("{name:<36} | {outcome}");
    }
}

/// A proxy that routes by version 1 and reports so every 500 ms until dropped: the cleanup
/// waits for it while it reports and up to its lease after. (One report before the job
/// starts may be older than the lease by the time a loaded machine reaches the cleanup.)
struct Laggard(tokio::task::JoinHandle<()>);

impl Laggard {
    fn report(store: std::sync::Arc<Store>) -> Laggard {
        Laggard(tokio::spawn(async move {
            loop {
                let _ = store.report_version("laggard", 1).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }))
    }
}

impl Drop for Laggard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn add_request(new: &PgCluster) -> AddShardRequest {
    AddShardRequest {
        name: "s3".into(),
        primary: format!("127.0.0.1:{}", new.port()),
        replicas: vec![],
        admin_user: None,
        admin_password: None,
    }
}

fn run_case(c: &Case) -> String {
    let mut shards = start_shards(3);
    let new = shards.pop().unwrap();
    let (s1, s2) = (&shards[0], &shards[1]);
    load(&[s1, s2], &["s1", "s2"]);
    // A short lease: the revert cases hold the job in Cleanup with a proxy that lags.
    let mut cfg = config(&[("s1", s1), ("s2", s2)], "");
    cfg.topology.lease = Duration::from_secs(3);
    failpoints::reset();

    let first = tokio::runtime::Runtime::new().unwrap();
    let store = first.block_on(Store::open(&cfg, None)).unwrap();
    let before = first.block_on(snapshot(&[s1, s2, &new]));
    let action = if c.crash { "return" } else { "1*return" };
    fail::cfg(c.failpoint, action).unwrap();
    let finished_first = first.block_on(async {
        let rb = rebalancer(cfg.clone(), store.clone());
        // A proxy still on version 1 keeps the cleanup waiting …
        let laggard = c.abort_in_cleanup.then(|| Laggard::report(store.clone()));
        rb.add_shard(add_request(&new)).await.expect("add_shard");
        if c.abort_in_cleanup {
            // … long enough to abort the committed move: it is reverted.
            wait_phase(&rb, Phase::Cleanup, Duration::from_secs(60)).await;
            rb.abort().await.expect("abort");
        }
        drop(laggard);
        let until = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            if c.crash && failpoints::hit(c.failpoint) {
                return None;
            }
            let job = rb.status().await.unwrap().job.unwrap();
            if job.phase.is_terminal() {
                return Some(job);
            }
            assert!(
                std::time::Instant::now() < until,
                "{}: never reached: {job:#?}",
                c.failpoint
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // The crash: every task of the first runner's runtime stops where it is.
    first.shutdown_background();
    fail::cfg(c.failpoint, "off").unwrap();
    assert_eq!(
        finished_first.is_none(),
        c.crash,
        "{}: the failpoint was {}hit",
        c.failpoint,
        if c.crash { "not " } else { "" }
    );

    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let job = match finished_first {
            Some(job) => job,
            None => {
                let crashed_in = store.job().await.unwrap().unwrap().phase;
                let rb = rebalancer(cfg.clone(), store.clone());
                rb.resume().await;
                let job = wait_terminal(&rb, Duration::from_secs(90)).await;
                assert!(
                    job.phase.is_terminal(),
                    "{}: crashed in {crashed_in}",
                    c.failpoint
                );
                job
            }
        };
        assert_eq!(job.phase, c.ends, "{}: {job:#?}", c.failpoint);
        let map = store.shard_map().await.unwrap();
        let names = map.names();
        let placed: Vec<&PgCluster> = names
            .iter()
            .map(|n| match *n {
                "s1" => s1,
                "s2" => s2,
                _ => &new,
            })
            .collect();
        // Every row on the shard the published map names, exactly once …
        assert_placed(&placed, &names).await;
        // … and the same rows as before, all of them.
        let mut rows_before: Vec<_> = before.iter().flatten().cloned().collect();
        let mut rows_after: Vec<_> = snapshot(&[s1, s2, &new])
            .await
            .into_iter()
            .flatten()
            .collect();
        rows_before.sort();
        rows_after.sort();
        assert!(
            rows_before == rows_after,
            "{}: rows lost or added",
            c.failpoint
        );
        for shard in [s1, s2, &new] {
            assert_clean(shard, c.failpoint).await;
        }
        format!(
            "{} at map v{} {:?}; rows placed, none lost; shards clean",
            job.phase, map.version, names
        )
    })
}

/// A job crashed right after its publish, before the cutover's verification was saved; the
/// first runner's runtime is gone. Returns the shards (s1, s2, new), the config, the store,
/// and every row of s1 and s2 as before the job.
struct CrashedAfterPublish {
    shards: Vec<PgCluster>,
    new: PgCluster,
    cfg: shardgate_config::Config,
    store: std::sync::Arc<Store>,
    sources_before: Vec<std::collections::HashSet<(String, String, String)>>,
}

fn crash_after_publish() -> CrashedAfterPublish {
    let mut shards = start_shards(3);
    let new = shards.pop().unwrap();
    load(&[&shards[0], &shards[1]], &["s1", "s2"]);
    let cfg = config(&[("s1", &shards[0]), ("s2", &shards[1])], "");
    failpoints::reset();
    let first = tokio::runtime::Runtime::new().unwrap();
    let store = first.block_on(Store::open(&cfg, None)).unwrap();
    let sources_before = first.block_on(snapshot(&[&shards[0], &shards[1]]));
    fail::cfg("rebalance-after-publish", "return").unwrap();
    first.block_on(async {
        let rb = rebalancer(cfg.clone(), store.clone());
        rb.add_shard(add_request(&new)).await.expect("add_shard");
        let until = std::time::Instant::now() + Duration::from_secs(90);
        while !failpoints::hit("rebalance-after-publish") {
            assert!(std::time::Instant::now() < until, "never published");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    first.shutdown_background();
    fail::cfg("rebalance-after-publish", "off").unwrap();
    CrashedAfterPublish {
        shards,
        new,
        cfg,
        store,
        sources_before,
    }
}

/// The regression of the SIGKILL test's two gap cases, in process: after the commit the
/// clients write the moved keys on their new owner (updates, deletes, inserts), so the sources
/// and the targets differ when the job resumes. The resumed cleanup proves the move by
/// replication, not by comparing them, and finishes: every row on its owner under the new
/// map, the targets' writes kept, nothing left behind.
#[test]
fn a_committed_move_resumed_without_its_verification_finishes_under_writes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = crash_after_publish();
    let (s1, s2, new) = (&c.shards[0], &c.shards[1], &c.new);
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        // Writes through the new map: every moved row is on `new` now.
        let target = client(new).await;
        target
            .batch_execute(
                "UPDATE accounts SET balance = balance + 1000;
                 DELETE FROM orders WHERE id = 1;
                 DELETE FROM accounts WHERE user_id IN (SELECT user_id FROM accounts \
                 ORDER BY user_id LIMIT 5);",
            )
            .await
            .expect("writes on the target");
        let ring = shardgate_router::Ring::new(&["s1", "s2", "s3"], BITS).unwrap();
        let fresh: Vec<i64> = (ACCOUNTS + 1..ACCOUNTS + 10_000)
            .filter(|k| ring.shard_for_hash(shardgate_router::hash::hashint8extended(*k, 0)) == 2)
            .take(20)
            .collect();
        for k in &fresh {
            target
                .execute(
                    "INSERT INTO accounts (user_id, name) VALUES ($1, 'after the commit')",
                    &[k],
                )
                .await
                .expect("insert on the target");
        }
        // What the shards must hold in the end: the target as it is, and the rows the
        // sources keep under the new map.
        let mut want: Vec<_> = rows(new).await;
        for (i, shard) in [s1, s2].into_iter().enumerate() {
            for (t, key, text) in rows(shard).await {
                let user: i64 = key.split('/').next().unwrap().parse().unwrap();
                if ring.shard_for_hash(shardgate_router::hash::hashint8extended(user, 0)) == i {
                    want.push((t, key, text));
                }
            }
        }
        want.sort();

        let rb = rebalancer(c.cfg.clone(), c.store.clone());
        rb.resume().await;
        let job = wait_terminal(&rb, Duration::from_secs(90)).await;
        assert_eq!(job.phase, Phase::Done, "{job:#?}");
        let verified = job.plan.as_ref().and_then(|p| p.verified.as_ref());
        assert!(
            verified.is_some_and(|v| !v.is_empty()),
            "the replication proof saves the sources' figures: {job:#?}"
        );
        let map = c.store.shard_map().await.unwrap();
        assert_eq!(map.names(), ["s1", "s2", "s3"]);
        assert_placed(&[s1, s2, new], &["s1", "s2", "s3"]).await;
        let mut got: Vec<_> = snapshot(&[s1, s2, new])
            .await
            .into_iter()
            .flatten()
            .collect();
        got.sort();
        assert!(got == want, "rows lost, added or changed by the cleanup");
        for shard in [s1, s2, new] {
            assert_clean(shard, "after the resumed cleanup").await;
        }
    });
}

/// The other side: when replication does not prove the target complete (here its cutover
/// marker and one moved row are gone — a target that missed changes), the committed job stops
/// `failed` with the new map live, and the sources keep every moved row and their fences.
#[test]
fn a_committed_move_that_replication_does_not_prove_keeps_the_sources_rows() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = crash_after_publish();
    let (s1, s2, new) = (&c.shards[0], &c.shards[1], &c.new);
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let target = client(new).await;
        target
            .batch_execute(
                "DELETE FROM shardgate.marker;
                 DELETE FROM accounts WHERE user_id = (SELECT min(user_id) FROM accounts);",
            )
            .await
            .expect("break the target");
        let rb = rebalancer(c.cfg.clone(), c.store.clone());
        rb.resume().await;
        let job = wait_terminal(&rb, Duration::from_secs(90)).await;
        assert_eq!(job.phase, Phase::Failed, "{job:#?}");
        let error = job.error.clone().unwrap_or_default();
        assert!(
            error.contains("cutover marker") && error.contains("nothing was deleted"),
            "{error}"
        );
        assert_eq!(
            c.store.shard_map().await.unwrap().names(),
            ["s1", "s2", "s3"]
        );
        // Not a row deleted from a source, and their fences stay.
        assert_eq!(snapshot(&[s1, s2]).await, c.sources_before);
        for shard in [s1, s2] {
            let fences: i64 = client(shard)
                .await
                .query_one(
                    "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'sg_fence%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert!(fences > 0, "a source lost its fence");
        }
        // The replication objects go (no slot may hold WAL forever).
        for shard in [s1, s2, new] {
            let left: i64 = client(shard)
                .await
                .query_one(
                    "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) \
                     FROM pg_subscription) + (SELECT count(*) FROM pg_publication)",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(left, 0, "replication objects left");
        }
    });
}

/// Ends every connection of the topology store (its application_name) and says how many.
const END_STORE_CONNECTIONS: &str = "SELECT count(pg_terminate_backend(pid)) FROM \
     pg_stat_activity WHERE application_name = 'shardgate-topology'";

/// Failpoint callbacks, removed when dropped (even when the test fails).
struct Callbacks;

impl Drop for Callbacks {
    fn drop(&mut self) {
        for name in failpoints::NAMES {
            fail::remove(name);
        }
    }
}

/// The postgres topology store's connection is ended (pg_terminate_backend) at every failpoint
/// a job meets — each phase boundary, before and after the publish, mid-delete, and in a
/// revert — and the runner goes on from there: the store reconnects, and the job still ends
/// `done` (or, aborted in cleanup, reverted to `aborted`), every row on the shard the map
/// names, none lost, nothing left behind.
#[test]
fn the_store_connection_dropped_at_every_step_neither_loses_nor_strands_a_move() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut table = Vec::new();
    for revert in [false, true] {
        table.push(store_drops_case(revert));
    }
    eprintln!("\n{}", table.join("\n"));
}

fn store_drops_case(revert: bool) -> String {
    let mut shards = start_shards(4);
    let meta = shards.pop().unwrap();
    let new = shards.pop().unwrap();
    let (s1, s2) = (&shards[0], &shards[1]);
    load(&[s1, s2], &["s1", "s2"]);
    let mut cfg = config(&[("s1", s1), ("s2", s2)], "");
    cfg.topology.lease = Duration::from_secs(3);
    let url = format!(
        "postgres://postgres:postgres@127.0.0.1:{}/postgres",
        meta.port()
    );
    cfg.topology.store = url.clone();
    failpoints::reset();
    // Per failpoint: times reached, store connections ended there.
    let drops = std::sync::Arc::new(Mutex::new(std::collections::BTreeMap::<
        &'static str,
        (u32, u32),
    >::new()));
    let _callbacks = Callbacks;
    for name in failpoints::NAMES {
        let (url, drops) = (url.clone(), drops.clone());
        fail::cfg_callback(*name, move || {
            let ended = shardgate_tests::psql_url(&url, END_STORE_CONNECTIONS)
                .ok()
                .and_then(|out| out.trim().parse::<u32>().ok())
                .unwrap_or(0);
            let mut drops = drops.lock().unwrap_or_else(|e| e.into_inner());
            let entry = drops.entry(*name).or_default();
            entry.0 += 1;
            entry.1 += ended;
        })
        .unwrap();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let outcome = rt.block_on(async {
        let store = Store::open(&cfg, None).await.unwrap();
        let before = snapshot(&[s1, s2, &new]).await;
        let rb = rebalancer(cfg.clone(), store.clone());
        // A proxy still on version 1 holds the cleanup long enough to abort it.
        let laggard = revert.then(|| Laggard::report(store.clone()));
        rb.add_shard(add_request(&new)).await.expect("add_shard");
        if revert {
            wait_through_drops(&rb, |p| p == Phase::Cleanup).await;
            // The abort is a store write too: again if its connection was just ended.
            let until = std::time::Instant::now() + Duration::from_secs(30);
            while let Err(e) = rb.abort().await {
                assert!(std::time::Instant::now() < until, "abort: {e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        drop(laggard);
        let job = wait_through_drops(&rb, Phase::is_terminal).await;
        let (ends, names): (Phase, &[&str]) = if revert {
            (Phase::Aborted, &["s1", "s2"])
        } else {
            (Phase::Done, &["s1", "s2", "s3"])
        };
        assert_eq!(job.phase, ends, "revert {revert}: {job:#?}");
        let map = store.shard_map().await.unwrap();
        assert_eq!(map.names(), names);
        let placed: Vec<&PgCluster> = names
            .iter()
            .map(|n| match *n {
                "s1" => s1,
                "s2" => s2,
                _ => &new,
            })
            .collect();
        assert_placed(&placed, names).await;
        let mut rows_before: Vec<_> = before.iter().flatten().cloned().collect();
        let mut rows_after: Vec<_> = snapshot(&[s1, s2, &new])
            .await
            .into_iter()
            .flatten()
            .collect();
        rows_before.sort();
        rows_after.sort();
        assert!(
            rows_before == rows_after,
            "revert {revert}: rows lost or added"
        );
        for shard in [s1, s2, &new] {
            assert_clean(shard, "after store connection drops").await;
        }
        format!("{} at map v{} {:?}", job.phase, map.version, map.names())
    });
    rt.shutdown_background();
    let drops = drops.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let ended: u32 = drops.values().map(|d| d.1).sum();
    assert!(ended > 0, "no store connection was ended: {drops:?}");
    let expected: &[&str] = if revert {
        &[
            "rebalance-after-publish",
            "rebalance-before-save-aborting",
            "rebalance-revert-before-publish",
            "rebalance-revert-after-publish",
        ]
    } else {
        &[
            "rebalance-before-save-preparing",
            "rebalance-before-save-copying",
            "rebalance-mid-copy",
            "rebalance-before-save-catching_up",
            "rebalance-before-save-cutover",
            "rebalance-before-cutover",
            "rebalance-before-publish",
            "rebalance-after-publish",
            "rebalance-after-verify",
            "rebalance-before-save-cleanup",
            "rebalance-before-delete",
            "rebalance-mid-delete",
            "rebalance-before-done",
        ]
    };
    for name in expected {
        assert!(
            drops.contains_key(name),
            "revert {revert}: failpoint {name} never reached: {drops:?}"
        );
    }
    let steps: Vec<String> = drops
        .iter()
        .map(|(name, (hits, ended))| format!("{name} ×{hits} ({ended} ended)"))
        .collect();
    format!(
        "store connection ended at: {}\n  → {outcome}; rows placed, none lost; shards clean",
        steps.join(", ")
    )
}

/// Polls the job until `done` says so; a status read that fails because the test just ended
/// the store's connection (twice in a row: the store retries once) is read again.
async fn wait_through_drops(
    rb: &shardgate_rebalance::Rebalancer,
    done: impl Fn(Phase) -> bool,
) -> shardgate_topology::Job {
    let until = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(job)) = rb.status().await.map(|s| s.job) {
            if done(job.phase) {
                return job;
            }
        }
        assert!(
            std::time::Instant::now() < until,
            "the job did not get there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
