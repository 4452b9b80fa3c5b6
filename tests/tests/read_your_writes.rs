//! Read-your-writes on the demo topology (two shards, a replica each) with replay paused on
//! every replica: whatever a client wrote — DDL sent to every shard, COPY, writes broadcast to
//! every shard — its next reads see, as separate statements, on every shard it touched.

mod common;

use std::time::Duration;

use common::demo_env::DemoEnv;
use common::{connect, wait_for, DB};
use futures_util::SinkExt;

const REPLICAS: &str = "[replicas]\ncheck_interval = \"100ms\"\nmax_lag = \"1h\"\n";

async fn replica_superuser(env: &DemoEnv, i: usize) -> tokio_postgres::Client {
    let r = &env.shards[i].replica;
    connect(&format!(
        "host=127.0.0.1 port={} user=postgres password={} dbname={DB}",
        r.port(),
        r.superuser_password()
    ))
    .await
}

/// Pauses WAL replay on every replica once it has replayed everything the primaries have now.
async fn pause_replicas(env: &DemoEnv) {
    for i in 0..env.shards.len() {
        let primary = env.primary_superuser(i).await;
        let lsn: String = primary
            .query_one("select pg_current_wal_flush_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let replica = replica_superuser(env, i).await;
        let caught_up = wait_for(Duration::from_secs(10), || {
            let (replica, lsn) = (&replica, &lsn);
            async move {
                replica
                    .query_one(
                        "select pg_last_wal_receive_lsn() >= $1::text::pg_lsn \
                         and pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn()",
                        &[lsn],
                    )
                    .await
                    .unwrap()
                    .get::<_, bool>(0)
            }
        })
        .await;
        assert!(caught_up, "replica {i} did not catch up");
        replica
            .batch_execute("select pg_wal_replay_pause()")
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_copy_and_broadcast_writes_are_read_back() {
    let env = DemoEnv::start_with(
        shardgate_tests::ClusterOptions::default(),
        "keyless_writes = \"broadcast\"",
        REPLICAS,
    )
    .await;
    // A user on each shard, replayed everywhere before replay stops.
    let keys: Vec<i64> = (0..2)
        .map(|shard| (1..).find(|k| shard_of(&env, *k) == shard).unwrap())
        .collect();
    for (shard, key) in keys.iter().enumerate() {
        env.primary_superuser(shard)
            .await
            .execute(
                "insert into users (user_id, name) values ($1, 'before')",
                &[key],
            )
            .await
            .unwrap();
    }
    pause_replicas(&env).await;
    let c = env.connect().await;

    // DDL sent to every shard, then COPY, then a read, each a statement of its own.
    c.batch_execute("create table t (id int, note text)")
        .await
        .unwrap();
    let sink = c
        .copy_in::<_, bytes::Bytes>("copy t from stdin")
        .await
        .expect("copy into the new table");
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"1\tone\n2\ttwo\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    let n: i64 = c
        .query_one("select count(*) from t", &[])
        .await
        .expect("the new table is visible to its creator")
        .get(0);
    assert_eq!(n, 2);

    // DDL on a sharded table (every shard), then reads on each shard.
    c.batch_execute("alter table users add column nickname text")
        .await
        .unwrap();
    for (shard, key) in keys.iter().enumerate() {
        c.query("select nickname from users where user_id = $1", &[key])
            .await
            .unwrap_or_else(|e| panic!("the new column is visible on shard {shard}: {e}"));
    }

    // A write without a shard key, run on every shard, then reads on each shard (a client
    // that wrote nothing before: only the broadcast can send its reads to the primaries).
    let w = env.connect().await;
    let updated = w
        .execute("update users set name = 'after'", &[])
        .await
        .expect("a keyless update runs on every shard");
    assert_eq!(
        updated, 2,
        "the shards' row counts add up, as from one PostgreSQL"
    );
    for (shard, key) in keys.iter().enumerate() {
        let name: String = w
            .query_one("select name from users where user_id = $1", &[key])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            name, "after",
            "the broadcast update is read back on shard {shard}"
        );
    }
    env.stop().await;
}

fn shard_of(env: &DemoEnv, key: i64) -> usize {
    shardgate_router::Router::new(&env.config)
        .unwrap()
        .shard_for_key(&shardgate_router::KeyValue::Int(key))
}
