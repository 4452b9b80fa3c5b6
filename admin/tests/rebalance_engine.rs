//! The rebalancer against real PostgreSQL servers (no proxy): add a shard, remove one, a
//! pre-flight refusal, an abort while copying, and writes to moving keys during a move.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_admin::rebalance::{AddShardRequest, ConfigSource, Rebalancer};
use shardgate_config::Config;
use shardgate_router::Ring;
use shardgate_tests::{ClusterOptions, PgCluster};
use shardgate_topology::{Job, Phase, Store, FENCE_SQLSTATE};
use tokio_postgres::Client;

const DB: &str = "app";
const BITS: u32 = 14;
const ACCOUNTS: i64 = 8_000;
const ORDERS_USERS: i64 = 3_000;
const ORDERS_PER_USER: i64 = 4;

const SCHEMA: &str = "CREATE TABLE accounts (user_id bigint PRIMARY KEY, name text NOT NULL, \
                      balance bigint NOT NULL DEFAULT 0);
                      CREATE TABLE orders (user_id bigint NOT NULL, id bigint NOT NULL, \
                      amount numeric(12,2), note text, PRIMARY KEY (user_id, id));";

fn start_shards(n: usize) -> Vec<PgCluster> {
    // RUST_LOG=shardgate_admin=info shows the phases and the cutover steps.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    (0..n)
        .map(|_| {
            let c = PgCluster::start(ClusterOptions::default()).expect("start PostgreSQL");
            c.create_database(DB, "postgres").expect("create database");
            c
        })
        .collect()
}

fn config(shards: &[(&str, &PgCluster)], extra_tables: &str) -> Config {
    let mut toml = String::from(
        "[[users]]\nname = \"app\"\npassword = \"pw\"\n\n[sharding]\nkey_column = \"user_id\"\n\
         [[sharding.tables]]\nname = \"accounts\"\n[[sharding.tables]]\nname = \"public.orders\"\n",
    );
    toml.push_str(extra_tables);
    toml.push_str(
        "\n[rebalance]\ndatabases = [\"app\"]\nadmin_user = \"postgres\"\nadmin_password = \
         \"postgres\"\ndelete_batch_size = 1000\n",
    );
    for (name, c) in shards {
        toml.push_str(&format!(
            "\n[[shards]]\nname = \"{name}\"\nprimary = {{ host = \"127.0.0.1\", port = {}, \
             sslmode = \"disable\" }}\n",
            c.port()
        ));
    }
    Config::from_toml(&toml, Path::new("test.toml")).expect("config")
}

async fn client(c: &PgCluster) -> Client {
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres password=postgres dbname={DB}",
            c.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect");
    tokio::spawn(conn);
    client
}

fn hash_expr(col: &str) -> String {
    format!("hashint8extended(({col})::int8, 0)")
}

/// Creates the tables on every shard and loads the rows each owns under `names`' ring.
fn load(shards: &[&PgCluster], names: &[&str]) {
    let ring = Ring::new(names, BITS).unwrap();
    for (i, c) in shards.iter().enumerate() {
        c.psql(DB, SCHEMA).unwrap();
        let accounts = ring.predicate(i, &hash_expr("g"));
        let orders = ring.predicate(i, &hash_expr("u"));
        c.psql(
            DB,
            &format!(
                "INSERT INTO accounts SELECT g, 'user ' || g, g % 97 FROM generate_series(1, \
                 {ACCOUNTS}) g WHERE {accounts};
                 INSERT INTO orders SELECT u, o, (u * o % 1000) / 10.0, CASE WHEN o = 2 THEN \
                 NULL ELSE 'n' || o END FROM generate_series(1, {ORDERS_USERS}) u, \
                 generate_series(1, {ORDERS_PER_USER}) o WHERE {orders};"
            ),
        )
        .unwrap();
    }
}

fn rebalancer(config: Config, store: Arc<Store>) -> Arc<Rebalancer> {
    let config = Arc::new(config);
    let source: ConfigSource = Arc::new(move || config.clone());
    Rebalancer::new(store, source, "test-proxy".into())
}

async fn wait_terminal(rb: &Rebalancer, limit: Duration) -> Job {
    let until = Instant::now() + limit;
    loop {
        let status = rb.status().await.expect("status");
        let job = status.job.expect("a job");
        if job.phase.is_terminal() {
            return job;
        }
        assert!(Instant::now() < until, "job did not finish: {job:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_phase(rb: &Rebalancer, phase: Phase, limit: Duration) -> Job {
    let until = Instant::now() + limit;
    loop {
        let job = rb.status().await.unwrap().job.unwrap();
        if job.phase == phase || job.phase.is_terminal() {
            return job;
        }
        assert!(Instant::now() < until, "never reached {phase}: {job:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// No slot, publication, subscription, fence trigger or shardgate schema left.
async fn assert_clean(c: &PgCluster, what: &str) {
    let cl = client(c).await;
    let row = cl
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots), (SELECT count(*) FROM \
             pg_publication), (SELECT count(*) FROM pg_subscription), (SELECT count(*) FROM \
             pg_trigger WHERE tgname LIKE 'sg_fence%'), (SELECT count(*) FROM pg_proc WHERE \
             proname LIKE 'sg_fence%'), to_regnamespace('shardgate') IS NULL",
            &[],
        )
        .await
        .unwrap();
    let counts: Vec<i64> = (0..5).map(|i| row.get(i)).collect();
    assert_eq!(
        counts,
        vec![0; 5],
        "{what}: slots, publications, subscriptions, triggers, functions left"
    );
    assert!(row.get::<_, bool>(5), "{what}: schema shardgate left");
}

/// Every row of both tables on every shard, as (table, key, whole row text).
async fn rows(c: &PgCluster) -> Vec<(String, String, String)> {
    let cl = client(c).await;
    let mut out = Vec::new();
    for (t, key) in [
        ("accounts", "user_id::text"),
        ("orders", "user_id || '/' || id"),
    ] {
        if cl
            .query_one("SELECT to_regclass($1) IS NULL", &[&t])
            .await
            .unwrap()
            .get::<_, bool>(0)
        {
            continue;
        }
        for r in cl
            .query(&format!("SELECT {key}, t::text FROM {t} t"), &[])
            .await
            .unwrap()
        {
            out.push((t.to_owned(), r.get(0), r.get(1)));
        }
    }
    out
}

/// Every row is on the shard `names`' ring gives it, exactly once; returns all rows.
async fn assert_placed(shards: &[&PgCluster], names: &[&str]) -> HashMap<(String, String), String> {
    let ring = Ring::new(names, BITS).unwrap();
    let mut all = HashMap::new();
    for (i, c) in shards.iter().enumerate() {
        for (t, key, text) in rows(c).await {
            let user: i64 = key.split('/').next().unwrap().parse().unwrap();
            let owner = ring.shard_for_hash(shardgate_router::hash::hashint8extended(user, 0));
            assert_eq!(
                owner, i,
                "{t} row {key} is on {} but belongs on {}",
                names[i], names[owner]
            );
            assert!(
                all.insert((t.clone(), key.clone()), text).is_none(),
                "{t} row {key} twice"
            );
        }
    }
    all
}

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
        c.psql(
            DB,
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(0.001); RETURN NEW; END $$;
             CREATE TRIGGER slow BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION slow();
             ALTER TABLE orders ENABLE ALWAYS TRIGGER slow;",
        )
        .unwrap();
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
    new.psql(
        DB,
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(0.003); RETURN NEW; END $$;
         CREATE TRIGGER slow BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION slow();
         ALTER TABLE orders ENABLE ALWAYS TRIGGER slow;",
    )
    .unwrap();
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

/// Every row of every shard, per shard.
async fn snapshot(shards: &[&PgCluster]) -> Vec<HashSet<(String, String, String)>> {
    let mut out = Vec::new();
    for c in shards {
        out.push(rows(c).await.into_iter().collect());
    }
    out
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
    new.psql(
        DB,
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(0.003); RETURN NEW; END $$;
         CREATE TRIGGER slow BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION slow();
         ALTER TABLE orders ENABLE ALWAYS TRIGGER slow;",
    )
    .unwrap();
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
