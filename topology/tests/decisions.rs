//! Commit decisions of two-phase commits in both stores: recorded durably, idempotent on
//! retry, forgotten, kept across a restart; the file store's log survives a torn last line and
//! stays bounded.

use std::path::Path;
use std::time::Duration;

use shardgate_config::Config;
use shardgate_tests::{ClusterOptions, PgCluster};
use shardgate_topology::{CommitDecision, Store, StoreError};

fn config(store: &str) -> Config {
    let text = format!(
        "[topology]\nstore = \"{store}\"\n\n[[users]]\nname = \"app\"\npassword = \"secret\"\n\n\
         [[shards]]\nname = \"s0\"\nprimary = {{ host = \"127.0.0.1\", port = 5432 }}\n"
    );
    Config::from_toml(&text, Path::new("test.toml")).unwrap()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// (proxy, txid, participants) of each decision.
fn summary(decisions: &[CommitDecision]) -> Vec<(String, u64, Vec<String>)> {
    decisions
        .iter()
        .map(|d| (d.proxy.clone(), d.txid, d.participants.clone()))
        .collect()
}

/// What both stores must do: a decision is there once recorded, a retry of the same record
/// (a lost reply) changes nothing, a forgotten one is gone, forgetting twice is fine.
async fn record_retry_forget(store: &Store) {
    assert!(store.commit_decisions().await.unwrap().is_empty());
    assert!(!store.commit_decided("p-1", 10).await.unwrap());
    store
        .record_commit("p-1", 10, &names(&["s0", "s1"]))
        .await
        .unwrap();
    // The retry of a record whose reply was lost: success, still one record.
    store
        .record_commit("p-1", 10, &names(&["s0", "s1"]))
        .await
        .unwrap();
    store
        .record_commit("p-1", 11, &names(&["s1", "shard_2"]))
        .await
        .unwrap();
    store
        .record_commit("p-2", 10, &names(&["s0"]))
        .await
        .unwrap();
    assert!(store.commit_decided("p-1", 10).await.unwrap());
    assert!(!store.commit_decided("p-1", 12).await.unwrap());
    assert!(!store.commit_decided("p-3", 10).await.unwrap());
    let all = store.commit_decisions().await.unwrap();
    let mut listed = summary(&all);
    listed.sort();
    assert_eq!(
        listed,
        [
            ("p-1".into(), 10, names(&["s0", "s1"])),
            ("p-1".into(), 11, names(&["s1", "shard_2"])),
            ("p-2".into(), 10, names(&["s0"])),
        ]
    );
    let now = shardgate_topology::now_ms();
    assert!(all
        .iter()
        .all(|d| d.decided_unix_ms <= now + 60_000 && d.decided_unix_ms + 60_000 >= now));

    store.forget_commit("p-1", 11).await.unwrap();
    store.forget_commit("p-1", 11).await.unwrap();
    store.forget_commit("p-9", 1).await.unwrap();
    assert!(!store.commit_decided("p-1", 11).await.unwrap());
    assert!(store.commit_decided("p-1", 10).await.unwrap());
    assert_eq!(store.commit_decisions().await.unwrap().len(), 2);
}

#[tokio::test]
async fn file_store_decisions_are_an_append_only_log() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("topology.json");
    let log = dir.path().join("topology.json.decisions");
    let store = Store::open(&config("file"), Some(state.clone()))
        .await
        .unwrap();
    record_retry_forget(&store).await;
    assert!(
        !state.exists(),
        "recording decisions does not write the state file"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let kinds: Vec<&str> = text.lines().map(|l| &l[..1]).collect();
    assert_eq!(kinds, ["C", "C", "C", "F"], "{text}");
    let before = store.commit_decisions().await.unwrap();
    drop(store);

    // A restart: what was recorded and not forgotten is there, with its timestamps.
    let store = Store::open(&config("file"), Some(state.clone()))
        .await
        .unwrap();
    assert_eq!(store.commit_decisions().await.unwrap(), before);
    assert!(store.commit_decided("p-1", 10).await.unwrap());
    assert!(!store.commit_decided("p-1", 11).await.unwrap());
}

#[tokio::test]
async fn file_store_decisions_in_memory_without_a_state_file() {
    let store = Store::open(&config("file"), None).await.unwrap();
    record_retry_forget(&store).await;
}

#[tokio::test]
async fn file_store_decision_log_ignores_a_torn_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("topology.json");
    let log = dir.path().join("topology.json.decisions");
    // A crash while appending the record of txid 3: its line never got its newline (and was
    // never acknowledged); a forget before it was not fsynced either.
    std::fs::write(
        &log,
        "C p 1 s0,s1 1700000000000\nC p 2 s0 1700000000001\nF p 2\nC p 3 s0,",
    )
    .unwrap();
    let store = Store::open(&config("file"), Some(state.clone()))
        .await
        .unwrap();
    let listed = summary(&store.commit_decisions().await.unwrap());
    assert_eq!(listed, [("p".into(), 1, names(&["s0", "s1"]))]);
    // Appending after the repair starts on a line of its own.
    store.record_commit("p", 4, &names(&["s1"])).await.unwrap();
    drop(store);
    let store = Store::open(&config("file"), Some(state.clone()))
        .await
        .unwrap();
    assert!(store.commit_decided("p", 1).await.unwrap());
    assert!(!store.commit_decided("p", 3).await.unwrap());
    assert!(store.commit_decided("p", 4).await.unwrap());

    // Garbage after the last commit record (a torn forget) is ignored the same way.
    drop(store);
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("F p\0\0\n");
    std::fs::write(&log, text).unwrap();
    let store = Store::open(&config("file"), Some(state.clone()))
        .await
        .unwrap();
    assert_eq!(store.commit_decisions().await.unwrap().len(), 2);
}

#[tokio::test]
async fn file_store_refuses_a_corrupt_decision_log() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("topology.json");
    // A damaged line before a commit record cannot be a torn append: a decision may be lost.
    std::fs::write(
        dir.path().join("topology.json.decisions"),
        "C p 1 s0 1700000000000\nC p ??\nC p 3 s0 1700000000002\n",
    )
    .unwrap();
    match Store::open(&config("file"), Some(state)).await {
        Err(e @ StoreError::File { .. }) => {
            let message = e.to_string();
            assert!(message.contains("line 2"), "{message}");
            assert!(message.contains("topology.json.decisions"), "{message}");
        }
        Err(e) => panic!("expected a file error, got {e}"),
        Ok(_) => panic!("a corrupt decision log was accepted"),
    }
}

#[tokio::test]
async fn file_store_decision_log_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("topology.json");
    let log = dir.path().join("topology.json.decisions");
    let store = Store::open(&config("file"), Some(state.clone()))
        .await
        .unwrap();
    // Two decisions stay in doubt throughout; 1,500 others come and go.
    store.record_commit("p", 1, &names(&["s0"])).await.unwrap();
    store.record_commit("p", 2, &names(&["s1"])).await.unwrap();
    let mut longest = 0;
    for txid in 100..1_600 {
        store
            .record_commit("p", txid, &names(&["s0", "s1"]))
            .await
            .unwrap();
        store.forget_commit("p", txid).await.unwrap();
        longest = longest.max(std::fs::read_to_string(&log).unwrap().lines().count());
    }
    assert!(
        longest <= 2 * (2 + 512) + 2,
        "the log grew to {longest} lines"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, ["topology.json.decisions"], "no temp files");
    drop(store);
    let store = Store::open(&config("file"), Some(state)).await.unwrap();
    let listed: Vec<u64> = store
        .commit_decisions()
        .await
        .unwrap()
        .iter()
        .map(|d| d.txid)
        .collect();
    assert_eq!(listed, [1, 2]);
}

/// A server with an empty metadata database; returns it and the store URL.
fn metadata_db() -> (PgCluster, String) {
    let cluster = PgCluster::start(ClusterOptions::default()).unwrap();
    cluster.create_database("meta", "postgres").unwrap();
    let url = cluster.superuser_url("meta");
    (cluster, url)
}

#[tokio::test]
async fn postgres_store_decisions() {
    let (cluster, url) = metadata_db();
    let store = Store::open(&config(&url), None).await.unwrap();
    record_retry_forget(&store).await;

    // Another proxy (or this one after a restart) sees the same decisions.
    let other = Store::open(&config(&url), None).await.unwrap();
    let mine = summary(&store.commit_decisions().await.unwrap());
    assert_eq!(summary(&other.commit_decisions().await.unwrap()), mine);
    assert!(other.commit_decided("p-1", 10).await.unwrap());
    assert!(!other.commit_decided("p-1", 11).await.unwrap());

    // An earlier attempt that landed (its reply lost): the retry keeps what is stored.
    cluster
        .psql(
            "meta",
            "insert into shardgate_commit_decisions (proxy, txid, participants) \
             values ('p-4', 40, '{s0,s1}')",
        )
        .unwrap();
    other
        .record_commit("p-4", 40, &names(&["s0", "s1"]))
        .await
        .unwrap();
    assert_eq!(
        cluster
            .psql(
                "meta",
                "select count(*) from shardgate_commit_decisions where proxy = 'p-4'"
            )
            .unwrap()
            .trim(),
        "1"
    );
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
            "{what}: no insert waits"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A record whose session the server ends mid-insert (FATAL 57P01) is written on a new
/// connection: the decision lands once and `record_commit` succeeds.
#[tokio::test]
async fn postgres_store_record_commit_survives_an_ended_session() {
    let (cluster, url) = metadata_db();
    let store = Store::open(&config(&url), None).await.unwrap();
    let (locker, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    locker
        .batch_execute("BEGIN; LOCK TABLE shardgate_commit_decisions IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let record = tokio::spawn({
        let store = store.clone();
        async move { store.record_commit("p", 7, &names(&["s0", "s1"])).await }
    });
    wait_store_lock_waiter(&cluster, "first attempt").await;
    cluster
        .psql(
            "meta",
            "select pg_terminate_backend(pid) from pg_stat_activity where application_name = \
             'shardgate-topology'",
        )
        .unwrap();
    wait_store_lock_waiter(&cluster, "retry").await;
    locker.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), record)
        .await
        .expect("the record finished")
        .unwrap()
        .expect("the record after the ended session");
    assert!(store.commit_decided("p", 7).await.unwrap());
    assert_eq!(store.commit_decisions().await.unwrap().len(), 1);
}
