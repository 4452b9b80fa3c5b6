//! The rebalancer against real PostgreSQL servers (no proxy): add a shard, remove one, a
//! pre-flight refusal, an abort while copying, writes to moving keys during a move, and writes
//! to other keys that never wait.

#[path = "rebalance_engine/common.rs"]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use shardgate_rebalance::{AddShardRequest, Rebalancer};
use shardgate_router::Ring;
use shardgate_tests::PgCluster;
use shardgate_topology::{Phase, Store, FENCE_SQLSTATE};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn add_a_third_shard_under_concurrent_writes() {
    let mut shards = start_shards(3);
    let new = shards.pop().unwrap();
    let (s1, s2) = (&shards[0], &shards[1]);
    load(&[s1, s2], &["s1", "s2"]);
    let before = assert_placed(&[s1, s2], &["s1", "s2"]).await;
    assert_eq!(
        before.len() as i64,
        ACCOUNTS + ORDERS_USERS * ORDERS_PER_USER
    );

    let cfg = config(&[("s1", s1), ("s2", s2)], "");
    let store = Store::open(&cfg, None).await.unwrap();
    let rb = rebalancer(cfg, store.clone());

    // A writer on the shards' primaries (as a proxy would): inserts new keys and bumps
    // existing ones, routed by the store's current map; on the fence error it waits for the
    // new map and writes to the new owner.
    let stop = Arc::new(AtomicBool::new(false));
    let fenced = Arc::new(AtomicU64::new(0));
    let clients = [client(s1).await, client(s2).await, client(&new).await];
    let writer = {
        let (stop, fenced, store) = (stop.clone(), fenced.clone(), store.clone());
        tokio::spawn(async move {
            let rings = [
                Ring::new(&["s1", "s2"], BITS).unwrap(),
                Ring::new(&["s1", "s2", "s3"], BITS).unwrap(),
            ];
            let mut inserted = Vec::new();
            let mut bumps: HashMap<i64, i64> = HashMap::new();
            let mut n = 0i64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let (sql, key) = if n % 2 == 0 {
                    ("INSERT INTO accounts VALUES ($1, 'w', 0)", 1_000_000 + n)
                } else {
                    (
                        "UPDATE accounts SET balance = balance + 1 WHERE user_id = $1",
                        n % ACCOUNTS + 1,
                    )
                };
                loop {
                    let version = store.shard_map().await.unwrap().version;
                    store.report_version("writer", version).await.unwrap();
                    let ring = &rings[(version as usize).min(2) - 1];
                    let owner =
                        ring.shard_for_hash(shardgate_router::hash::hashint8extended(key, 0));
                    match clients[owner].execute(sql, &[&key]).await {
                        Ok(_) => break,
                        Err(e) if e.code().map(|c| c.code()) == Some(FENCE_SQLSTATE) => {
                            fenced.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        Err(e) => panic!("write of key {key} failed: {e}"),
                    }
                }
                if n % 2 == 0 {
                    inserted.push(key);
                } else {
                    *bumps.entry(key).or_default() += 1;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (inserted, bumps)
        })
    };

    let started = Instant::now();
    let job = rb
        .add_shard(AddShardRequest {
            name: "s3".into(),
            primary: format!(
                "postgres://postgres:postgres@127.0.0.1:{}?sslmode=disable",
                new.port()
            ),
            replicas: vec![],
            admin_user: None,
            admin_password: None,
        })
        .await
        .expect("add_shard");
    assert_eq!(job.phase, Phase::Preparing);
    let busy = rb.remove_shard("s2").await.unwrap_err();
    assert_eq!(
        (busy.status, busy.job_id.as_deref()),
        (409, Some(job.id.as_str()))
    );

    let job = wait_terminal(&rb, Duration::from_secs(90)).await;
    stop.store(true, Ordering::SeqCst);
    let (inserted, bumps) = writer.await.unwrap();
    assert_eq!(job.phase, Phase::Done, "{job:#?}");
    eprintln!(
        "add: {:?} total, pauses {:?} ms, {} fenced writes retried, {} inserts, {} updates, progress {:?}",
        started.elapsed(),
        job.progress.cutover_pauses_ms,
        fenced.load(Ordering::SeqCst),
        inserted.len(),
        bumps.values().sum::<i64>(),
        job.progress.moves
    );
    assert_eq!(store.shard_map().await.unwrap().version, 2);
    assert!(job.progress.rows_deleted > 0);

    let after = assert_placed(&[s1, s2, &new], &["s1", "s2", "s3"]).await;
    assert_eq!(after.len(), before.len() + inserted.len());
    for k in &inserted {
        assert!(
            after.contains_key(&("accounts".to_owned(), k.to_string())),
            "insert {k} lost"
        );
    }
    for ((t, key), text) in &before {
        let now = &after[&(t.clone(), key.clone())];
        let bumped = if t == "accounts" {
            bumps
                .get(&key.parse::<i64>().unwrap())
                .copied()
                .unwrap_or(0)
        } else {
            0
        };
        if bumped == 0 {
            assert_eq!(now, text, "{t} {key} changed");
        } else {
            let user: i64 = key.parse().unwrap();
            assert_eq!(
                *now,
                format!("({user},\"user {user}\",{})", user % 97 + bumped),
                "{t} {key}"
            );
        }
    }
    for c in [s1, s2, &new] {
        assert_clean(c, "after add").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_a_shard() {
    let shards = start_shards(3);
    let refs: Vec<&PgCluster> = shards.iter().collect();
    load(&refs, &["s1", "s2", "s3"]);
    // Both targets are copies of one template (same system identifier and oids), so their
    // subscriptions' initial-copy slots on s2 get the same names. Slow inserts on the targets
    // make the copies long enough to overlap if both ran at once: the slots would collide and
    // the job hang in Copying.
    for c in [refs[0], refs[2]] {
        slow_order_inserts(c, 0.001);
    }
    let before = assert_placed(&refs, &["s1", "s2", "s3"]).await;
    let cfg = config(&[("s1", refs[0]), ("s2", refs[1]), ("s3", refs[2])], "");
    let store = Store::open(&cfg, None).await.unwrap();
    let rb = rebalancer(cfg, store.clone());

    let e = rb.remove_shard("s1").await.unwrap_err();
    assert_eq!(e.status, 422, "{e:?}");
    assert_eq!(rb.remove_shard("nope").await.unwrap_err().status, 404);

    let started = Instant::now();
    rb.remove_shard("s2").await.expect("remove_shard");
    let job = wait_terminal(&rb, Duration::from_secs(90)).await;
    assert_eq!(job.phase, Phase::Done, "{job:#?}");
    eprintln!(
        "remove: {:?} total, pauses {:?} ms, moves {:?}",
        started.elapsed(),
        job.progress.cutover_pauses_ms,
        job.progress.moves
    );
    let map = store.shard_map().await.unwrap();
    assert_eq!((map.version, map.names()), (2, vec!["s1", "s3"]));

    let after = assert_placed(&[refs[0], refs[2]], &["s1", "s3"]).await;
    assert_eq!(after, before);
    assert!(
        rows(refs[1]).await.is_empty(),
        "rows left on the removed shard"
    );
    for c in &refs {
        assert_clean(c, "after remove").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preflight_refuses_a_table_without_a_primary_key() {
    let mut shards = start_shards(3);
    let new = shards.pop().unwrap();
    let (s1, s2) = (&shards[0], &shards[1]);
    load(&[s1, s2], &["s1", "s2"]);
    for c in [s1, s2] {
        c.psql(DB, "CREATE TABLE events (user_id bigint, payload text)")
            .unwrap();
    }
    let cfg = config(
        &[("s1", s1), ("s2", s2)],
        "[[sharding.tables]]\nname = \"events\"\n",
    );
    let store = Store::open(&cfg, None).await.unwrap();
    let rb = rebalancer(cfg, store.clone());
    let e = rb
        .add_shard(AddShardRequest {
            name: "s3".into(),
            primary: format!("127.0.0.1:{}", new.port()),
            replicas: vec![],
            admin_user: Some("postgres".into()),
            admin_password: Some("postgres".into()),
        })
        .await
        .unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (422, "preflight"), "{e:?}");
    assert!(
        e.message.contains("public.events") && e.message.contains("primary key"),
        "{e:?}"
    );
    assert!(e.hint.contains("REPLICA IDENTITY FULL"), "{e:?}");
    assert!(store.job().await.unwrap().is_none());
    assert_eq!(store.shard_map().await.unwrap().version, 1);
    for c in [s1, s2, &new] {
        assert_clean(c, "after refusal").await;
    }
    assert!(rows(&new).await.is_empty());

    let e = rb
        .add_shard(AddShardRequest {
            name: "bad name!".into(),
            primary: "127.0.0.1".into(),
            replicas: vec![],
            admin_user: None,
            admin_password: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.status, 400);
    assert_eq!(rb.abort().await.unwrap_err().status, 404);

    // No database to move: refused by pre-flight, not an index out of bounds later.
    let mut no_databases = config(&[("s1", s1), ("s2", s2)], "");
    no_databases.rebalance.databases.clear();
    let e = rebalancer(no_databases, store.clone())
        .add_shard(AddShardRequest {
            name: "s3".into(),
            primary: format!("127.0.0.1:{}", new.port()),
            replicas: vec![],
            admin_user: Some("postgres".into()),
            admin_password: Some("postgres".into()),
        })
        .await
        .unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (422, "preflight"), "{e:?}");
    assert!(e.message.contains("rebalance.databases"), "{e:?}");
    assert!(store.job().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_while_copying_leaves_every_shard_as_before() {
    let mut shards = start_shards(3);
    let new = shards.pop().unwrap();
    let (s1, s2) = (&shards[0], &shards[1]);
    load(&[s1, s2], &["s1", "s2"]);
    // The target has the tables, and an insert trigger that fires even for replication
    // (ENABLE ALWAYS) and makes copying orders slow, so the job is surely still copying.
    new.psql(DB, SCHEMA).unwrap();
    slow_order_inserts(&new, 0.003);
    let before = snapshot(&[s1, s2, &new]).await;
    let cfg = config(&[("s1", s1), ("s2", s2)], "");
    let store = Store::open(&cfg, None).await.unwrap();
    let rb = rebalancer(cfg, store.clone());
    rb.add_shard(AddShardRequest {
        name: "s3".into(),
        primary: format!("127.0.0.1:{}", new.port()),
        replicas: vec![],
        admin_user: None,
        admin_password: None,
    })
    .await
    .expect("add_shard");
    let job = wait_phase(&rb, Phase::Copying, Duration::from_secs(30)).await;
    assert_eq!(job.phase, Phase::Copying, "{job:#?}");
    // Wait until part of the data (accounts) has arrived on the target.
    let probe = client(&new).await;
    let until = Instant::now() + Duration::from_secs(30);
    while probe
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(Instant::now() < until, "nothing copied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let aborting = rb.abort().await.expect("abort");
    assert!(aborting.abort_requested);
    let job = wait_terminal(&rb, Duration::from_secs(60)).await;
    assert_eq!(
        (job.phase, job.stopped_in),
        (Phase::Aborted, Some(Phase::Copying)),
        "{job:#?}"
    );
    assert_eq!(store.shard_map().await.unwrap().version, 1);
    let after = snapshot(&[s1, s2, &new]).await;
    assert_eq!(after, before, "data changed by an aborted move");
    for c in [s1, s2, &new] {
        assert_clean(c, "after abort").await;
    }
}

/// A runner that dies mid-copy (its runtime is shut down, like a killed proxy) leaves a job
/// with a stale heartbeat; another proxy's `resume` undoes it.
#[test]
fn resume_after_the_runner_died_undoes_the_move() {
    let mut shards = start_shards(3);
    let new = shards.pop().unwrap();
    let (s1, s2) = (&shards[0], &shards[1]);
    load(&[s1, s2], &["s1", "s2"]);
    new.psql(DB, SCHEMA).unwrap();
    slow_order_inserts(&new, 0.003);
    let cfg = config(&[("s1", s1), ("s2", s2)], "");
    let first = tokio::runtime::Runtime::new().unwrap();
    let store = first.block_on(Store::open(&cfg, None)).unwrap();
    let before = first.block_on(snapshot(&[s1, s2, &new]));
    first.block_on(async {
        let rb = rebalancer(cfg.clone(), store.clone());
        rb.add_shard(AddShardRequest {
            name: "s3".into(),
            primary: format!("127.0.0.1:{}", new.port()),
            replicas: vec![],
            admin_user: None,
            admin_password: None,
        })
        .await
        .expect("add_shard");
        wait_phase(&rb, Phase::Copying, Duration::from_secs(30)).await;
    });
    first.shutdown_background();

    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let rb = Rebalancer::new(
            store.clone(),
            Arc::new(move || Arc::new(cfg.clone())),
            "another-proxy".into(),
        );
        // Fresh heartbeat: the job still has a runner as far as anyone can tell.
        rb.resume().await;
        assert_eq!(store.job().await.unwrap().unwrap().owner, "test-proxy");
        tokio::time::sleep(Duration::from_millis(5_500)).await;
        rb.resume().await;
        let job = wait_terminal(&rb, Duration::from_secs(60)).await;
        assert_eq!(job.phase, Phase::Aborted, "{job:#?}");
        assert_eq!(job.owner, "another-proxy");
        let error = job.error.clone().unwrap_or_default();
        assert!(
            error.contains("runner restarted during copying"),
            "{job:#?}"
        );
        assert_eq!(store.shard_map().await.unwrap().version, 1);
        assert_eq!(snapshot(&[s1, s2, &new]).await, before);
        for c in [s1, s2, &new] {
            assert_clean(c, "after resume").await;
        }
    });
}

/// Writes to keys that do not move never wait long: not behind the fence trigger's
/// installation while a transaction holds the table, nor anywhere else. And the catch-up
/// finishes under steady writes to other keys even though the slots' byte lag never gets
/// below the limit (1 byte here): the probe markers tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_to_other_keys_never_wait() {
    let mut shards = start_shards(3);
    let new = shards.pop().unwrap();
    let (s1, s2) = (&shards[0], &shards[1]);
    load(&[s1, s2], &["s1", "s2"]);
    let before = assert_placed(&[s1, s2], &["s1", "s2"]).await;
    let cfg = config_with(&[("s1", s1), ("s2", s2)], "", "catchup_max_lag_bytes = 1\n");
    let store = Store::open(&cfg, None).await.unwrap();
    let rb = rebalancer(cfg, store.clone());

    let (old, grown) = (
        Ring::new(&["s1", "s2"], BITS).unwrap(),
        Ring::new(&["s1", "s2", "s3"], BITS).unwrap(),
    );
    let stays = |k: i64, i: usize| {
        let h = shardgate_router::hash::hashint8extended(k, 0);
        old.shard_for_hash(h) == i && grown.shard_for_hash(h) == i
    };
    // Per source: existing keys that stay (the first one is the lock holder's) and new ones.
    let keys: Vec<Vec<i64>> = (0..2)
        .map(|i| (1..=ACCOUNTS).filter(|&k| stays(k, i)).take(200).collect())
        .collect();
    let fresh: Vec<Vec<i64>> = (0..2)
        .map(|i| (2_000_000..2_100_000).filter(|&k| stays(k, i)).collect())
        .collect();

    // A transaction holds accounts on s1 (as a long application transaction would) while the
    // job starts, so installing the fence trigger there has to wait for it.
    let holder = client(s1).await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .execute(
            "UPDATE accounts SET name = name WHERE user_id = $1",
            &[&keys[0][0]],
        )
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (i, c) in [s1, s2].into_iter().enumerate() {
        let cl = client(c).await;
        let (stop, keys, fresh) = (stop.clone(), keys[i].clone(), fresh[i].clone());
        writers.push(tokio::spawn(async move {
            let (mut worst, mut n, mut inserted) = (Duration::ZERO, 0usize, 0usize);
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let t = Instant::now();
                if n % 2 == 0 && inserted < fresh.len() {
                    cl.execute(
                        "INSERT INTO accounts VALUES ($1, 'w', 0)",
                        &[&fresh[inserted]],
                    )
                    .await
                    .unwrap();
                    inserted += 1;
                } else {
                    // Skip the holder's key.
                    let k = keys[1 + n % (keys.len() - 1)];
                    cl.execute(
                        "UPDATE accounts SET balance = balance + 1 WHERE user_id = $1",
                        &[&k],
                    )
                    .await
                    .unwrap();
                }
                worst = worst.max(t.elapsed());
            }
            (worst, n, inserted)
        }));
    }

    let started = Instant::now();
    rb.add_shard(AddShardRequest {
        name: "s3".into(),
        primary: format!("127.0.0.1:{}", new.port()),
        replicas: vec![],
        admin_user: None,
        admin_password: None,
    })
    .await
    .expect("add_shard");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held_in = rb.status().await.unwrap().job.unwrap().phase;
    holder.batch_execute("COMMIT").await.unwrap();

    let job = wait_terminal(&rb, Duration::from_secs(90)).await;
    stop.store(true, Ordering::SeqCst);
    let mut worst = Duration::ZERO;
    let mut inserted = 0;
    let mut writes = 0;
    for w in writers {
        let (w, n, ins) = w.await.unwrap();
        worst = worst.max(w);
        writes += n;
        inserted += ins;
    }
    eprintln!(
        "other keys: {:?} total, {writes} writes, slowest {worst:?}, lag {:?} bytes / {:?} s, \
         pauses {:?} ms",
        started.elapsed(),
        job.progress.lag_bytes,
        job.progress.lag_seconds,
        job.progress.cutover_pauses_ms
    );
    assert_eq!(job.phase, Phase::Done, "{job:#?}");
    assert_eq!(
        held_in,
        Phase::Preparing,
        "the fence trigger did not wait for the lock"
    );
    assert!(
        worst < Duration::from_millis(400),
        "a write to a key that does not move waited {worst:?}"
    );
    assert!(
        job.progress.lag_seconds.is_some_and(|s| s < 1.0),
        "{job:#?}"
    );
    let after = assert_placed(&[s1, s2, &new], &["s1", "s2", "s3"]).await;
    assert_eq!(after.len(), before.len() + inserted);
    for c in [s1, s2, &new] {
        assert_clean(c, "after add").await;
    }
}
