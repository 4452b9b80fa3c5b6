//! The topology stores against real files and a real PostgreSQL.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shardgate_config::{Config, Shard};
use shardgate_topology::{Job, JobKind, Phase, Progress, ShardMap, Store, StoreError};
use tokio::sync::watch;

fn config(store: &str, shards: &[&str]) -> Config {
    let mut text = format!(
        "[topology]\nstore = \"{store}\"\npoll_interval = \"200ms\"\n\n\
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
    }
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
    assert!(path.exists(), "the state file is written at once");
    let map = store.shard_map().await.unwrap();
    assert_eq!(map.version, 1);
    assert_eq!(map.names(), ["s0", "s1"]);

    let published = store.publish(1, shards(&["s0", "s1", "s2"])).await.unwrap();
    assert_eq!(published.version, 2);
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
