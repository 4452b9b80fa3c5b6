//! Crash at every failpoint of a job, restart, resume: the store's shard map decides undo or
//! finish, and whichever it is, every row ends on the shard the published map names, none is
//! lost or duplicated, and nothing of the job is left on any shard. A "crash" freezes the
//! runner at the failpoint and shuts its runtime down (connections drop, no cleanup code runs),
//! as a killed proxy leaves things; the resuming rebalancer is a new one with the same proxy id.

// Shared with the other engine tests; each uses part of it.
#[allow(dead_code)]
#[path = "rebalance_engine/common.rs"]
mod common;

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
        if c.abort_in_cleanup {
            // A proxy still on version 1 keeps the cleanup waiting (for the lease) …
            store.report_version("laggard", 1).await.unwrap();
        }
        rb.add_shard(add_request(&new)).await.expect("add_shard");
        if c.abort_in_cleanup {
            // … long enough to abort the committed move: it is reverted.
            wait_phase(&rb, Phase::Cleanup, Duration::from_secs(60)).await;
            rb.abort().await.expect("abort");
        }
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
