//! The topology stores against real files and a real PostgreSQL.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shardgate_config::{Config, Shard};
use shardgate_tests::{ClusterOptions, PgCluster};
use shardgate_topology::{CommitState, Job, JobKind, Phase, Progress, ShardMap, Store, StoreError};
use tokio::sync::watch;

fn config(store: &str, shards: &[&str]) -> Config {
    config_polling(store, shards, "200ms")
}

fn config_polling(store: &str, shards: &[&str], poll_interval: &str) -> Config {
    let mut text = format!(
        "[topology]\nstore = \"{store}\"\npoll_interval = \"{poll_interval}\"\n\n\
         [[users]]\nname = \"app\"\npassword = \"secret\"\n"
    );
    for (i, name) in shards.iter().enumerate() {
        text.push_str(&format!(
            "\n[[shards]]\nname = \"{name}\"\nprimary = {{ host = \"127.0.0.1\", port = {} }}\n",
            5432 + i
        ));
    }
    Config::from_toml(&text, Path::new("test.toml")).unwrap()
}

fn shards(names: &[&str]) -> Vec<Shard> {
    config("file", names).shards
}

fn job(id: &str, phase: Phase) -> Job {
    Job {
        id: id.into(),
        kind: JobKind::Remove { shard: "s1".into() },
        phase,
        stopped_in: None,
        from_version: 1,
        old_shards: shards(&["s0", "s1"]),
        new_shards: shards(&["s0"]),
        to_version: None,
        owner: "test".into(),
        heartbeat_ms: 0,
        started_ms: 0,
        finished_ms: None,
        abort_requested: false,
        error: None,
        progress: Progress::default(),
        plan: None,
    }
}

/// The commit point, for either store: a publish retried after its reply was lost is success
/// (not a conflict), a different map at that version is a conflict, and the job record goes
/// with the map in one write or not at all.
async fn publish_is_idempotent_and_carries_the_job(store: &Store) {
    let running = job("rb-7", Phase::Cutover);
    store.try_start_job(&running).await.unwrap();
    let mut committed = running.clone();
    committed.phase = Phase::Cleanup;
    committed.to_version = Some(2);
    let new = shards(&["s0"]);
    let map = store
        .publish_with_job(1, new.clone(), &committed)
        .await
        .unwrap();
    assert_eq!(map.version, 2);
    let stored = store.job().await.unwrap().unwrap();
    assert_eq!((stored.phase, stored.to_version), (Phase::Cleanup, Some(2)));
    assert_eq!(
        stored.commit_state(&store.shard_map().await.unwrap()),
        CommitState::Committed { version: 2 }
    );

    // The same publish again (what a retry after a lost reply sends): success, same map.
    let again = store
        .publish_with_job(1, new.clone(), &committed)
        .await
        .unwrap();
    assert_eq!((again.version, again.shards.clone()), (2, new.clone()));
    let again = store.publish(1, new.clone()).await.unwrap();
    assert_eq!(again.version, 2);
    // Another map at that version is someone else's publish: a conflict.
    match store.publish(1, shards(&["s0", "s1", "s2"])).await {
        Err(StoreError::Conflict { expected, found }) => assert_eq!((expected, found), (1, 2)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // A conflicting publish does not write its job.
    let mut other = committed.clone();
    other.progress.message = "must not be stored".into();
    assert!(store.publish_with_job(5, new, &other).await.is_err());
    assert_ne!(
        store.job().await.unwrap().unwrap().progress.message,
        "must not be stored"
    );
    // Reverting publishes the old list as the next version.
    store.publish(2, shards(&["s0", "s1"])).await.unwrap();
    assert_eq!(
        stored.commit_state(&store.shard_map().await.unwrap()),
        CommitState::Reverted { version: 3 }
    );
    assert_eq!(
        running.commit_state(&ShardMap {
            version: 1,
            shards: shards(&["s0", "s1"]),
            id_lanes: Default::default(),
        }),
        CommitState::NotCommitted
    );
}

#[tokio::test]
async fn file_store_publish_is_the_commit_point() {
    let dir = tempfile::tempdir().unwrap();
    let path = state_path(&dir);
    let store = Store::open(&config("file", &["s0", "s1"]), Some(path.clone()))
        .await
        .unwrap();
    publish_is_idempotent_and_carries_the_job(&store).await;
    // Both were in the one file the rename put in place.
    drop(store);
    let store = Store::open(&config("file", &["s0", "s1"]), Some(path))
        .await
        .unwrap();
    assert_eq!(store.shard_map().await.unwrap().version, 3);
    assert_eq!(store.job().await.unwrap().unwrap().to_version, Some(2));
}

#[tokio::test]
async fn postgres_store_publish_is_the_commit_point() {
    let (_cluster, url) = metadata_db();
    let store = Store::open(&config(&url, &["s0", "s1"]), None)
        .await
        .unwrap();
    publish_is_idempotent_and_carries_the_job(&store).await;
}

/// Lanes are dealt in ring order at the seed, kept by every shard across publishes, and a
/// removed shard's lane is never handed out again (`store` seeded with s0, s1).
async fn lanes_are_stable_and_never_reused(store: &Store) {
    let lanes = |m: &ShardMap| -> Vec<(String, u32)> {
        m.shards
            .iter()
            .map(|s| (s.name.clone(), m.lane(&s.name).expect("a lane")))
            .collect()
    };
    let pairs = |v: &[(&str, u32)]| -> Vec<(String, u32)> {
        v.iter().map(|(n, l)| (n.to_string(), *l)).collect()
    };
    let m = store.shard_map().await.unwrap();
    assert_eq!(lanes(&m), pairs(&[("s0", 0), ("s1", 1)]));
    let v = m.version;
    let m = store.publish(v, shards(&["s0", "s1", "s2"])).await.unwrap();
    assert_eq!(lanes(&m), pairs(&[("s0", 0), ("s1", 1), ("s2", 2)]));
    let m = store.publish(v + 1, shards(&["s0", "s2"])).await.unwrap();
    assert_eq!(lanes(&m), pairs(&[("s0", 0), ("s2", 2)]));
    // Retrying a publish that landed changes nothing.
    let again = store.publish(v + 1, shards(&["s0", "s2"])).await.unwrap();
    assert_eq!(again, m);
    let m = store
        .publish(v + 2, shards(&["s0", "s2", "s1"]))
        .await
        .unwrap();
    assert_eq!(lanes(&m), pairs(&[("s0", 0), ("s2", 2), ("s1", 3)]));
    assert_eq!(store.shard_map().await.unwrap(), m, "the lanes are stored");
}

#[tokio::test]
async fn file_store_keeps_id_lanes() {
    let dir = tempfile::tempdir().unwrap();
    let path = state_path(&dir);
    let store = Store::open(&config("file", &["s0", "s1"]), Some(path.clone()))
        .await
        .unwrap();
    lanes_are_stable_and_never_reused(&store).await;
    drop(store);
    let store = Store::open(&config("file", &["s0"]), Some(path.clone()))
        .await
        .unwrap();
    let m = store.shard_map().await.unwrap();
    assert_eq!(
        (m.lane("s0"), m.lane("s2"), m.lane("s1")),
        (Some(0), Some(2), Some(3))
    );
    assert_eq!(m.id_lanes.next, 4);
}

#[tokio::test]
async fn postgres_store_keeps_id_lanes() {
    let (_cluster, url) = metadata_db();
    let store = Store::open(&config(&url, &["s0", "s1"]), None)
        .await
        .unwrap();
    lanes_are_stable_and_never_reused(&store).await;
    let other = Store::open(&config(&url, &["s0"]), None).await.unwrap();
    assert_eq!(other.shard_map().await.unwrap().id_lanes.next, 4);
}

#[tokio::test]
async fn state_written_before_id_lanes_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = state_path(&dir);
    let store = Store::open(&config("file", &["s0", "s1"]), Some(path.clone()))
        .await
        .unwrap();
    store.publish(1, shards(&["s0", "s1", "s2"])).await.unwrap();
    drop(store);
    // The file as an older shardgate wrote it: no id_lanes.
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state["shard_map"]
        .as_object_mut()
        .unwrap()
        .remove("id_lanes")
        .expect("lanes were written");
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    let store = Store::open(&config("file", &["s0"]), Some(path.clone()))
        .await
        .unwrap();
    let m = store.shard_map().await.unwrap();
    assert_eq!(m.version, 2);
    assert_eq!(
        (m.lane("s0"), m.lane("s1"), m.lane("s2")),
        (Some(0), Some(1), Some(2))
    );
    let m = store.publish(2, shards(&["s0", "s2", "s3"])).await.unwrap();
    assert_eq!(
        (m.lane("s0"), m.lane("s2"), m.lane("s3")),
        (Some(0), Some(2), Some(3))
    );
}

/// Waits (up to `within`) until the receiver holds `version`.
async fn wait_version(rx: &mut watch::Receiver<Arc<ShardMap>>, version: u64, within: Duration) {
    let result = tokio::time::timeout(within, rx.wait_for(|m| m.version == version))
        .await
        .map(|_| ());
    assert!(
        result.is_ok(),
        "follower did not see version {version} within {within:?} (holds {})",
        rx.borrow().version
    );
}

fn state_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("topology.json")
}

#[tokio::test]
async fn file_store_seeds_publishes_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = state_path(&dir);
    let store = Store::open(&config("file", &["s0", "s1"]), Some(path.clone()))
        .await
        .unwrap();
    assert_eq!(store.kind(), "file");
    assert!(
        !path.exists(),
        "nothing is written until the map or a job changes (read-only config dirs still start)"
    );
    let map = store.shard_map().await.unwrap();
    assert_eq!(map.version, 1);
    assert_eq!(map.names(), ["s0", "s1"]);

    let published = store.publish(1, shards(&["s0", "s1", "s2"])).await.unwrap();
    assert_eq!(published.version, 2);
    assert!(path.exists(), "the first change writes the state file");
    match store.publish(1, shards(&["s0"])).await {
        Err(StoreError::Conflict { expected, found }) => assert_eq!((expected, found), (1, 2)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    store.save_job(&job("rb-1", Phase::Copying)).await.unwrap();
    drop(store);

    // Reopened with a stale config: what is stored wins.
    let store = Store::open(&config("file", &["s0"]), Some(path.clone()))
        .await
        .unwrap();
    let map = store.shard_map().await.unwrap();
    assert_eq!(map.version, 2);
    assert_eq!(map.names(), ["s0", "s1", "s2"]);
    assert_eq!(store.job().await.unwrap().unwrap().id, "rb-1");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temp files are left behind");
}

#[tokio::test]
async fn file_store_in_memory() {
    let store = Store::open(&config("file", &["s0"]), None).await.unwrap();
    assert_eq!(store.shard_map().await.unwrap().version, 1);
    store.publish(1, shards(&["s0", "s1"])).await.unwrap();
    assert_eq!(store.shard_map().await.unwrap().version, 2);
    store.report_version("a", 1).await.unwrap();
    store.report_version("b", 2).await.unwrap();
    let proxies = store.proxies().await.unwrap();
    assert_eq!(proxies.len(), 2);
    assert_eq!(proxies[0].proxy_id, "b", "most recent first");
    assert_eq!(proxies[0].version, 2);
}

#[tokio::test]
async fn file_store_refuses_a_corrupt_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = state_path(&dir);
    std::fs::write(&path, "{ not json").unwrap();
    match Store::open(&config("file", &["s0"]), Some(path.clone())).await {
        Err(e @ StoreError::File { .. }) => {
            let message = e.to_string();
            assert!(message.contains("topology.json"), "{message}");
            assert!(message.contains("cannot parse"), "{message}");
        }
        Err(e) => panic!("expected a file error, got {e}"),
        Ok(_) => panic!("a corrupt state file was accepted"),
    }

    // Corrupted while open: reads fail cleanly too.
    std::fs::remove_file(&path).unwrap();
    let store = Store::open(&config("file", &["s0"]), Some(path.clone()))
        .await
        .unwrap();
    std::fs::write(&path, "[]").unwrap();
    assert!(matches!(
        store.shard_map().await,
        Err(StoreError::File { .. })
    ));
    assert!(matches!(
        store.publish(1, shards(&["s0"])).await,
        Err(StoreError::File { .. })
    ));
}

#[tokio::test]
async fn file_store_one_job_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&config("file", &["s0", "s1"]), Some(state_path(&dir)))
        .await
        .unwrap();
    assert!(store.job().await.unwrap().is_none());
    assert!(store.request_abort().await.unwrap().is_none());

    let mut first = job("rb-1", Phase::Preflight);
    store.try_start_job(&first).await.unwrap();
    match store.try_start_job(&job("rb-2", Phase::Preflight)).await {
        Err(StoreError::Busy(running)) => assert_eq!(running.id, "rb-1"),
        other => panic!("expected busy, got {other:?}"),
    }

    let aborting = store.request_abort().await.unwrap().unwrap();
    assert!(aborting.abort_requested);
    assert!(store.job().await.unwrap().unwrap().abort_requested);
    // The runner saving its progress from a copy read before the abort keeps the request.
    first.phase = Phase::Copying;
    store.save_job(&first).await.unwrap();
    assert!(store.job().await.unwrap().unwrap().abort_requested);

    first.phase = Phase::Aborted;
    store.save_job(&first).await.unwrap();
    // A terminal job is not marked again.
    assert!(
        !store
            .request_abort()
            .await
            .unwrap()
            .unwrap()
            .abort_requested
    );
    store
        .try_start_job(&job("rb-2", Phase::Preflight))
        .await
        .unwrap();
    assert_eq!(store.job().await.unwrap().unwrap().id, "rb-2");
}

#[tokio::test]
async fn file_store_follow() {
    let dir = tempfile::tempdir().unwrap();
    let path = state_path(&dir);
    let store = Store::open(&config("file", &["s0"]), Some(path.clone()))
        .await
        .unwrap();
    let mut rx = store.follow();
    assert_eq!(rx.borrow().version, 1);

    // An in-process publish arrives at once.
    store.publish(1, shards(&["s0", "s1"])).await.unwrap();
    wait_version(&mut rx, 2, Duration::from_millis(100)).await;

    // Another writer of the file (here a second store) is seen by polling.
    let other = Store::open(&config("file", &["s0"]), Some(path.clone()))
        .await
        .unwrap();
    other.publish(2, shards(&["s0"])).await.unwrap();
    wait_version(&mut rx, 3, Duration::from_secs(1)).await;

    // Dropping the store ends the follower, which closes the receiver.
    drop(store);
    let closed = tokio::time::timeout(Duration::from_secs(1), async {
        while rx.changed().await.is_ok() {}
    })
    .await;
    assert!(closed.is_ok(), "the follower outlived its store");
}

/// A server with an empty metadata database; returns it and the store URL.
fn metadata_db() -> (PgCluster, String) {
    let cluster = PgCluster::start(ClusterOptions::default()).unwrap();
    cluster.create_database("meta", "postgres").unwrap();
    let url = cluster.superuser_url("meta");
    (cluster, url)
}

/// Backends of `meta` running LISTEN (the followers' dedicated connections).
fn listeners(cluster: &PgCluster) -> usize {
    let out = cluster
        .psql(
            "meta",
            "select count(*) from pg_stat_activity where query like 'LISTEN%'",
        )
        .unwrap();
    out.trim().parse().unwrap()
}

#[tokio::test]
async fn postgres_store_shared_by_two_proxies() {
    let (_cluster, url) = metadata_db();
    let a = Store::open(&config(&url, &["s0", "s1"]), None)
        .await
        .unwrap();
    assert_eq!(a.kind(), "postgres");
    // The second proxy's config is stale: what is stored wins.
    let b = Store::open(&config(&url, &["s0"]), None).await.unwrap();
    assert_eq!(b.shard_map().await.unwrap().names(), ["s0", "s1"]);

    // Polling is slow here, so only NOTIFY can deliver the new version within a second.
    let slow = Store::open(&config_polling(&url, &["s0"], "60s"), None)
        .await
        .unwrap();
    let mut rx = slow.follow();
    assert_eq!(rx.borrow().version, 1);
    let published = a.publish(1, shards(&["s0", "s1", "s2"])).await.unwrap();
    assert_eq!(published.version, 2);
    wait_version(&mut rx, 2, Duration::from_secs(1)).await;
    assert_eq!(rx.borrow().names(), ["s0", "s1", "s2"]);

    // The loser of a compare-and-swap learns the winner's version.
    match b.publish(1, shards(&["s0"])).await {
        Err(StoreError::Conflict { expected, found }) => assert_eq!((expected, found), (1, 2)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let mut rx_b = b.follow();
    b.publish(2, shards(&["s0", "s1"])).await.unwrap();
    wait_version(&mut rx_b, 3, Duration::from_millis(200)).await;
    wait_version(&mut rx, 3, Duration::from_secs(1)).await;

    a.report_version("proxy-a", 3).await.unwrap();
    b.report_version("proxy-b", 2).await.unwrap();
    b.report_version("proxy-b", 3).await.unwrap();
    let proxies = a.proxies().await.unwrap();
    let listed: Vec<_> = proxies
        .iter()
        .map(|p| (p.proxy_id.as_str(), p.version))
        .collect();
    assert_eq!(
        listed,
        [("proxy-b", 3), ("proxy-a", 3)],
        "most recent first"
    );
    assert!(proxies.iter().all(|p| p.seen_seconds_ago < 5.0));
}

#[tokio::test]
async fn postgres_store_one_job_across_proxies() {
    let (_cluster, url) = metadata_db();
    let a = Store::open(&config(&url, &["s0", "s1"]), None)
        .await
        .unwrap();
    let b = Store::open(&config(&url, &["s0", "s1"]), None)
        .await
        .unwrap();
    assert!(a.job().await.unwrap().is_none());
    assert!(a.request_abort().await.unwrap().is_none());

    // Many attempts at once from both proxies: exactly one job starts.
    let attempts: Vec<_> = (0..8)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                store
                    .try_start_job(&job(&format!("rb-{i}"), Phase::Preflight))
                    .await
            })
        })
        .collect();
    let mut started = Vec::new();
    for (i, attempt) in attempts.into_iter().enumerate() {
        match attempt.await.unwrap() {
            Ok(()) => started.push(format!("rb-{i}")),
            Err(StoreError::Busy(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(started.len(), 1, "{started:?}");
    let mut running = b.job().await.unwrap().unwrap();
    assert_eq!(running.id, started[0]);
    match a.try_start_job(&job("rb-late", Phase::Preflight)).await {
        Err(StoreError::Busy(job)) => assert_eq!(job.id, started[0]),
        other => panic!("expected busy, got {other:?}"),
    }

    let aborting = b.request_abort().await.unwrap().unwrap();
    assert!(aborting.abort_requested);
    assert!(a.job().await.unwrap().unwrap().abort_requested);
    // The runner saving its progress from a copy read before the abort keeps the request.
    running.phase = Phase::Copying;
    a.save_job(&running).await.unwrap();
    assert!(b.job().await.unwrap().unwrap().abort_requested);

    running.phase = Phase::Aborted;
    a.save_job(&running).await.unwrap();
    assert!(!b.request_abort().await.unwrap().unwrap().abort_requested);
    b.try_start_job(&job("rb-next", Phase::Preflight))
        .await
        .unwrap();
    assert_eq!(a.job().await.unwrap().unwrap().id, "rb-next");
}

#[tokio::test]
async fn postgres_follow_survives_a_killed_listen_connection() {
    let (cluster, url) = metadata_db();
    let a = Store::open(&config(&url, &["s0"]), None).await.unwrap();
    // Slow polling: recovery has to come from re-opening the LISTEN connection.
    let b = Store::open(&config_polling(&url, &["s0"], "60s"), None)
        .await
        .unwrap();
    let mut rx = b.follow();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while listeners(&cluster) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the follower never LISTENed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster
        .psql(
            "meta",
            "select pg_terminate_backend(pid) from pg_stat_activity where query like 'LISTEN%'",
        )
        .unwrap();
    a.publish(1, shards(&["s0", "s1"])).await.unwrap();
    wait_version(&mut rx, 2, Duration::from_secs(2)).await;
    // And NOTIFY works again on the new connection.
    a.publish(2, shards(&["s0"])).await.unwrap();
    wait_version(&mut rx, 3, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn postgres_store_survives_a_database_restart() {
    let (mut cluster, url) = metadata_db();
    let a = Store::open(&config(&url, &["s0"]), None).await.unwrap();
    let mut rx = a.follow();
    cluster.stop().unwrap();
    match a.shard_map().await {
        Err(StoreError::Database(message)) => {
            assert!(message.contains("topology.store"), "{message}")
        }
        other => panic!("expected a database error, got {other:?}"),
    }
    assert!(matches!(
        a.publish(1, shards(&["s0", "s1"])).await,
        Err(StoreError::Database(_))
    ));
    cluster.restart().unwrap();
    assert_eq!(a.shard_map().await.unwrap().version, 1);
    let b = Store::open(&config(&url, &["s0"]), None).await.unwrap();
    b.publish(1, shards(&["s0", "s1"])).await.unwrap();
    wait_version(&mut rx, 2, Duration::from_secs(3)).await;
    drop(a);
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        while rx.changed().await.is_ok() {}
    })
    .await;
    assert!(closed.is_ok(), "the follower outlived its store");
}

/// Store backends waiting for a lock.
fn store_lock_waiters(cluster: &PgCluster) -> usize {
    let out = cluster
        .psql(
            "meta",
            "select count(*) from pg_stat_activity where application_name = \
             'shardgate-topology' and wait_event_type = 'Lock'",
        )
        .unwrap();
    out.trim().parse().unwrap()
}

async fn wait_store_lock_waiter(cluster: &PgCluster, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store_lock_waiters(cluster) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: no read waits"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A store query in flight when the server ends its session (`pg_terminate_backend`: the
/// client gets FATAL 57P01 before it sees the socket close) runs again on a new connection,
/// as one that found the connection closed does: a single dropped session is not an error.
#[tokio::test]
async fn postgres_store_retries_a_query_whose_session_the_server_ended() {
    let (cluster, url) = metadata_db();
    let store = Store::open(&config(&url, &["s0"]), None).await.unwrap();
    assert_eq!(store.shard_map().await.unwrap().version, 1);
    // Another session holds the map's table, so the store's next read waits in the server …
    let (locker, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    locker
        .batch_execute("BEGIN; LOCK TABLE shardgate_topology IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let read = tokio::spawn({
        let store = store.clone();
        async move { store.shard_map().await }
    });
    wait_store_lock_waiter(&cluster, "first attempt").await;
    // … when its session is ended.
    cluster
        .psql(
            "meta",
            "select pg_terminate_backend(pid) from pg_stat_activity where application_name = \
             'shardgate-topology'",
        )
        .unwrap();
    // The retry, on a new connection, waits for the lock again.
    wait_store_lock_waiter(&cluster, "retry").await;
    locker.batch_execute("COMMIT").await.unwrap();
    let map = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the read finished")
        .unwrap();
    assert_eq!(map.expect("the read after the ended session").version, 1);
}

#[tokio::test]
async fn postgres_store_refuses_tls_urls() {
    let config = config("postgres://u:p@127.0.0.1:1/meta?sslmode=require", &["s0"]);
    match Store::open(&config, None).await {
        Err(StoreError::Database(message)) => assert!(message.contains("sslmode"), "{message}"),
        Err(e) => panic!("expected a database error, got {e}"),
        Ok(_) => panic!("opened a store it cannot secure"),
    }
}
