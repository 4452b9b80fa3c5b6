//! Helpers of the rebalance engine tests: clusters, config, data and checks.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_config::Config;
use shardgate_rebalance::{ConfigSource, Rebalancer};
use shardgate_router::Ring;
use shardgate_tests::{ClusterOptions, PgCluster};
use shardgate_topology::{Job, Phase, Store};
use tokio_postgres::Client;

pub const DB: &str = "app";
pub const BITS: u32 = 14;
pub const ACCOUNTS: i64 = 8_000;
pub const ORDERS_USERS: i64 = 3_000;
pub const ORDERS_PER_USER: i64 = 4;

pub const SCHEMA: &str = "CREATE TABLE accounts (user_id bigint PRIMARY KEY, name text NOT NULL, \
                      balance bigint NOT NULL DEFAULT 0);
                      CREATE TABLE orders (user_id bigint NOT NULL, id bigint NOT NULL, \
                      amount numeric(12,2), note text, PRIMARY KEY (user_id, id));";

pub fn start_shards(n: usize) -> Vec<PgCluster> {
    // RUST_LOG=shardgate_rebalance=info shows the phases and the cutover steps.
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

pub fn config(shards: &[(&str, &PgCluster)], extra_tables: &str) -> Config {
    config_with(shards, extra_tables, "")
}

/// `rebalance`: extra lines of the `[rebalance]` section.
pub fn config_with(shards: &[(&str, &PgCluster)], extra_tables: &str, rebalance: &str) -> Config {
    let mut toml = String::from(
        "[[users]]\nname = \"app\"\npassword = \"pw\"\n\n[sharding]\nkey_column = \"user_id\"\n\
         [[sharding.tables]]\nname = \"accounts\"\n[[sharding.tables]]\nname = \"public.orders\"\n",
    );
    toml.push_str(extra_tables);
    toml.push_str(
        "\n[rebalance]\ndatabases = [\"app\"]\nadmin_user = \"postgres\"\nadmin_password = \
         \"postgres\"\ndelete_batch_size = 1000\n",
    );
    toml.push_str(rebalance);
    for (name, c) in shards {
        toml.push_str(&format!(
            "\n[[shards]]\nname = \"{name}\"\nprimary = {{ host = \"127.0.0.1\", port = {}, \
             sslmode = \"disable\" }}\n",
            c.port()
        ));
    }
    Config::from_toml(&toml, Path::new("test.toml")).expect("config")
}

/// Makes every insert into `orders` on `c` sleep `seconds`, replicated rows included (ENABLE
/// ALWAYS), so a copy into `c` lasts long enough to be caught mid-way.
pub fn slow_order_inserts(c: &PgCluster, seconds: f64) {
    c.psql(
        DB,
        &format!(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$;
             CREATE TRIGGER slow BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION slow();
             ALTER TABLE orders ENABLE ALWAYS TRIGGER slow;"
        ),
    )
    .unwrap();
}

pub async fn client(c: &PgCluster) -> Client {
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

pub fn hash_expr(col: &str) -> String {
    format!("hashint8extended(({col})::int8, 0)")
}

/// Creates the tables on every shard and loads the rows each owns under `names`' ring.
pub fn load(shards: &[&PgCluster], names: &[&str]) {
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

pub fn rebalancer(config: Config, store: Arc<Store>) -> Arc<Rebalancer> {
    let config = Arc::new(config);
    let source: ConfigSource = Arc::new(move || config.clone());
    Rebalancer::new(store, source, "test-proxy".into())
}

pub async fn wait_terminal(rb: &Rebalancer, limit: Duration) -> Job {
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

pub async fn wait_phase(rb: &Rebalancer, phase: Phase, limit: Duration) -> Job {
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
pub async fn assert_clean(c: &PgCluster, what: &str) {
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
pub async fn rows(c: &PgCluster) -> Vec<(String, String, String)> {
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
pub async fn assert_placed(
    shards: &[&PgCluster],
    names: &[&str],
) -> HashMap<(String, String), String> {
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

/// Every row of every shard, per shard.
pub async fn snapshot(shards: &[&PgCluster]) -> Vec<HashSet<(String, String, String)>> {
    let mut out = Vec::new();
    for c in shards {
        out.push(rows(c).await.into_iter().collect());
    }
    out
}
