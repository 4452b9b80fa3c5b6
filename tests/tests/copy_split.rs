//! COPY into and out of a sharded table through shardgate (issue 17): `COPY … FROM STDIN` in
//! text, CSV and binary is split by shard key and each row lands on the ring's shard (checked
//! on the shards directly); a bad key, a client's CopyFail or a shard's error leaves no shard
//! with a partial load; COPY inside a transaction follows it; `COPY … TO STDOUT` streams every
//! shard's rows; psql's `\copy`, psycopg's `copy.write_row` and node's `pg-copy-streams` work.

mod common;
#[path = "multi_shard/env.rs"]
mod env;

use bytes::Bytes;
use common::ShardedEnv;
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

const SCHEMA: &str = "
create table orders (order_id bigint not null, user_id bigint not null, note text,
                     amount numeric check (amount >= 0));
create table events (tenant text not null, seq int not null, body text);
create table shop_orders (order_id bigserial, user_id bigint not null, note text not null,
                          primary key (user_id, order_id));";

const ROWS: i64 = 100_000;

async fn start() -> ShardedEnv {
    ShardedEnv::start_edited(3, SCHEMA, &["orders", "events", "shop_orders"], "", |c| {
        // The database whose sequences go on id lanes (cluster-unique ids).
        c.rebalance.databases = vec![common::DB.into()];
        c.rebalance.admin_password = Some("postgres".into());
        for t in &mut c.sharding.tables {
            if t.name == "events" {
                t.key_column = Some("tenant".into());
                t.key_type = Some(shardgate_config::KeyType::Text);
            }
        }
    })
    .await
}

/// Rows of `table` on each shard, and how many of them the ring does not give that shard.
async fn placement(env: &ShardedEnv, table: &str, key: &str) -> Vec<(i64, i64)> {
    let key_type = if key == "tenant" {
        shardgate_config::KeyType::Text
    } else {
        shardgate_config::KeyType::Bigint
    };
    let mut out = Vec::new();
    for i in 0..env.shards.len() {
        let shard = env.connect_shard(i).await;
        let mine = env.router.key_predicate(i, key, key_type);
        let total = env::value_through(&shard, &format!("select count(*) from {table}")).await;
        let misplaced = env::value_through(
            &shard,
            &format!("select count(*) from {table} where not ({mine})"),
        )
        .await;
        out.push((total, misplaced));
    }
    out
}

async fn assert_placed(env: &ShardedEnv, table: &str, key: &str, expected: i64) {
    let per_shard = placement(env, table, key).await;
    assert!(
        per_shard.iter().all(|(_, misplaced)| *misplaced == 0),
        "rows on a shard the ring does not give their key: {per_shard:?}"
    );
    assert!(
        per_shard.iter().filter(|(n, _)| *n > 0).count() == env.shards.len(),
        "every shard gets rows: {per_shard:?}"
    );
    let total: i64 = per_shard.iter().map(|(n, _)| n).sum();
    assert_eq!(total, expected, "rows on the shards: {per_shard:?}");
}

async fn copy_in(client: &tokio_postgres::Client, sql: &str, data: Vec<u8>) -> u64 {
    let sink = client.copy_in::<_, Bytes>(sql).await.expect("copy in");
    futures_util::pin_mut!(sink);
    // In pieces that cut rows, as a client's buffer would.
    for piece in data.chunks(7_919) {
        sink.send(Bytes::copy_from_slice(piece))
            .await
            .expect("copy data");
    }
    sink.finish().await.expect("copy done")
}

/// A COPY of `data` the server must fail: its error (from the data's send or the finish).
async fn copy_in_fails(client: &tokio_postgres::Client, data: Vec<u8>) -> tokio_postgres::Error {
    let sink = client
        .copy_in::<_, Bytes>("copy orders from stdin")
        .await
        .expect("copy in");
    futures_util::pin_mut!(sink);
    match sink.send(Bytes::from(data)).await {
        Ok(()) => sink.finish().await.expect_err("the COPY fails"),
        Err(e) => e,
    }
}

/// Rows of `orders` on all shards together.
async fn orders_on_shards(env: &ShardedEnv) -> i64 {
    placement(env, "orders", "user_id")
        .await
        .iter()
        .map(|p| p.0)
        .sum()
}

async fn truncate(env: &ShardedEnv) {
    for i in 0..env.shards.len() {
        env.connect_shard(i)
            .await
            .batch_execute("truncate orders, events, shop_orders")
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_lands_each_row_on_its_shard_in_every_format() {
    let env = start().await;
    let client = env.connect().await;

    // Text format, tab-separated, with escapes and NULLs in other columns.
    let mut text = Vec::new();
    for i in 0..ROWS {
        text.extend_from_slice(format!("{i}\t{}\tnote\\t{i}\t\\N\n", i % 997).as_bytes());
    }
    assert_eq!(
        copy_in(&client, "copy orders from stdin", text).await,
        ROWS as u64
    );
    assert_placed(&env, "orders", "user_id", ROWS).await;
    assert_eq!(
        env::value_through(&client, "select count(*) from orders").await,
        ROWS
    );
    truncate(&env).await;

    // CSV with a header, quotes, a custom delimiter, a column list and a quoted key.
    let mut csv = b"user_id;order_id;note\n".to_vec();
    for i in 0..ROWS {
        csv.extend_from_slice(
            format!(
                "\"{}\";{i};\"semi;colon \"\"quoted\"\"\nsecond line\"\n",
                i % 991
            )
            .as_bytes(),
        );
    }
    let n = copy_in(
        &client,
        "copy orders (user_id, order_id, note) from stdin with (format csv, header, delimiter ';')",
        csv,
    )
    .await;
    assert_eq!(n, ROWS as u64);
    assert_placed(&env, "orders", "user_id", ROWS).await;
    let note: String = client
        .query_one(
            "select note from orders where user_id = 5 and order_id = 5",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(note, "semi;colon \"quoted\"\nsecond line");
    truncate(&env).await;

    // Binary, through tokio-postgres's binary writer.
    let sink = client
        .copy_in("copy orders (order_id, user_id, note) from stdin (format binary)")
        .await
        .unwrap();
    let writer = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::INT8, Type::TEXT]);
    futures_util::pin_mut!(writer);
    for i in 0..ROWS {
        let note = format!("n{i}");
        writer
            .as_mut()
            .write(&[&i, &(i % 983), &note])
            .await
            .unwrap();
    }
    assert_eq!(writer.finish().await.unwrap(), ROWS as u64);
    assert_placed(&env, "orders", "user_id", ROWS).await;

    // A text key: rows of each tenant land on its shard.
    let mut events = Vec::new();
    for i in 0..3_000 {
        events.extend_from_slice(format!("tenant-{}\t{i}\tx\n", i % 37).as_bytes());
    }
    assert_eq!(
        copy_in(&client, "copy events from stdin", events).await,
        3_000
    );
    assert_placed(&env, "events", "tenant", 3_000).await;

    // COPY … TO STDOUT streams every shard's rows.
    let out = client
        .copy_out("copy orders to stdout")
        .await
        .expect("copy out");
    let chunks: Vec<Bytes> = out.map(|c| c.expect("chunk")).collect().await;
    let lines = chunks
        .iter()
        .flat_map(|c| c.iter())
        .filter(|b| **b == b'\n')
        .count();
    assert_eq!(lines as i64, ROWS);
    let out = client
        .copy_out(
            "copy (select order_id from orders where user_id < 10) to stdout with (format csv)",
        )
        .await
        .expect("copy out of a query");
    let chunks: Vec<Bytes> = out.map(|c| c.expect("chunk")).collect().await;
    let lines = chunks
        .iter()
        .flat_map(|c| c.iter())
        .filter(|b| **b == b'\n')
        .count();
    let expected = (0..ROWS).filter(|i| i % 983 < 10).count();
    assert_eq!(lines, expected);
    env::assert_nothing_prepared(&env).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_copy_leaves_no_shard_with_rows() {
    let env = start().await;
    let client = env.connect().await;

    // A key that is not a bigint: the COPY fails naming its line, nothing is loaded.
    let mut data = Vec::new();
    for i in 0..5_000 {
        data.extend_from_slice(format!("{i}\t{i}\tok\t1\n").as_bytes());
    }
    data.extend_from_slice(b"5000\tnot-a-key\tbad\t1\n");
    let e = copy_in_fails(&client, data).await;
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "22P02", "{db:?}");
    assert!(db.message().contains("line 5001"), "{}", db.message());
    assert_eq!(orders_on_shards(&env).await, 0);

    // A row one shard refuses (a CHECK violation) rolls every shard back.
    let mut data = Vec::new();
    for i in 0..5_000 {
        let amount = if i == 4_321 { -1 } else { 1 };
        data.extend_from_slice(format!("{i}\t{i}\tok\t{amount}\n").as_bytes());
    }
    let e = copy_in_fails(&client, data).await;
    assert_eq!(e.as_db_error().unwrap().code().code(), "23514", "{e:?}");
    assert_eq!(orders_on_shards(&env).await, 0);

    // The client gives up (CopyFail): nothing stays.
    {
        let sink = client
            .copy_in::<_, Bytes>("copy orders from stdin")
            .await
            .unwrap();
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from_static(b"1\t1\tx\t1\n2\t2\ty\t1\n"))
            .await
            .unwrap();
        // Dropped without finish: tokio-postgres sends CopyFail.
    }
    // The session is usable afterwards, with the same answers as PostgreSQL.
    assert_eq!(
        env::value_through(&client, "select count(*) from orders").await,
        0
    );
    env::assert_nothing_prepared(&env).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_inside_a_transaction_commits_or_rolls_back_with_it() {
    let env = start().await;
    let client = env.connect().await;
    let mut data = Vec::new();
    for i in 0..2_000 {
        data.extend_from_slice(format!("{i}\t{i}\tin-txn\t1\n").as_bytes());
    }

    client.batch_execute("begin").await.unwrap();
    client
        .execute(
            "insert into orders (order_id, user_id, note, amount) values (-1, 1, 'before', 1)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        copy_in(&client, "copy orders from stdin", data.clone()).await,
        2_000
    );
    assert_eq!(
        env::value_through(&client, "select count(*) from orders").await,
        2_001,
        "the transaction sees its COPY"
    );
    client.batch_execute("rollback").await.unwrap();
    assert_eq!(
        env::value_through(&client, "select count(*) from orders").await,
        0
    );

    client.batch_execute("begin").await.unwrap();
    assert_eq!(
        copy_in(&client, "copy orders from stdin", data).await,
        2_000
    );
    client
        .execute(
            "insert into orders (order_id, user_id, note, amount) values (-1, 1, 'after', 1)",
            &[],
        )
        .await
        .unwrap();
    client.batch_execute("commit").await.unwrap();
    assert_placed(&env, "orders", "user_id", 2_001).await;

    // A COPY that fails inside the transaction fails the transaction, as on PostgreSQL.
    client.batch_execute("begin").await.unwrap();
    let sink = client
        .copy_in::<_, Bytes>("copy orders from stdin")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from_static(b"1\tx\tbad\t1\n")).await.ok();
    assert!(sink.finish().await.is_err());
    let e = client.simple_query("select 1").await.expect_err("aborted");
    assert_eq!(env::sqlstate(&e).as_deref(), Some("25P02"));
    client.batch_execute("rollback").await.unwrap();
    assert_eq!(
        env::value_through(&client, "select count(*) from orders").await,
        2_001
    );
    env::assert_nothing_prepared(&env).await;
    env.stop().await;
}

/// psql's `\copy` (CSV file with a header), psycopg 3 (`copy.write_row`, text and binary),
/// asyncpg (`copy_records_to_table`, binary) and node's `pg-copy-streams`: every row on its
/// key's shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_copies_land_on_their_shards() {
    let env = start().await;
    let url = format!(
        "postgres://{}:{}@127.0.0.1:{}/{}",
        common::USER,
        common::PASSWORD,
        env.proxy.addr().port(),
        common::DB
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.csv");
    let mut csv = String::from("order_id,user_id,note\n");
    for i in 0..5_000 {
        csv.push_str(&format!("{},{},\"psql, {i}\"\n", 5_000_000 + i, i % 331));
    }
    std::fs::write(&file, csv).unwrap();
    let psql = shardgate_tests::pg_bin("psql").expect("psql");
    let out = tokio::process::Command::new(psql)
        .arg(&url)
        .args(["-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!(
            "\\copy orders (order_id, user_id, note) from '{}' with (format csv, header)",
            file.display()
        ))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "psql \\copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "COPY 5000");

    let py = common::scripts::python("copy_split.py", &[&url]).await;
    common::scripts::run_script_within("copy-split-python", py, common::scripts::SCRIPT_TIMEOUT)
        .await;
    let node = common::scripts::node("copy_split.js", &[&url]).await;
    common::scripts::run_script_within("copy-split-node", node, common::scripts::SCRIPT_TIMEOUT)
        .await;

    assert_placed(&env, "orders", "user_id", 5_000 + 4 * 3_000).await;
    env::assert_nothing_prepared(&env).await;
    env.stop().await;
}

/// An ORM's bulk insert (Django's `bulk_create`, Rails' `insert_all … returning`): 1,000
/// orders of 300 users in one server-side bound INSERT with `RETURNING order_id`. The ids come
/// back in the client's row order, each the id its row got on its shard, unique across shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orm_bulk_insert_returns_ids_in_row_order() {
    let env = start().await;
    let client = env.connect().await;
    let rows: Vec<(i64, String)> = (0..1_000).map(|i| (i % 300, format!("row-{i}"))).collect();
    let placeholders: Vec<String> = (0..rows.len())
        .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
        .collect();
    let sql = format!(
        "insert into shop_orders (user_id, note) values {} returning order_id",
        placeholders.join(", ")
    );
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
    for (user, note) in &rows {
        params.push(user);
        params.push(note);
    }
    let returned: Vec<i64> = client
        .query(&sql, &params)
        .await
        .expect("bulk insert")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(returned.len(), rows.len());
    let unique: std::collections::HashSet<i64> = returned.iter().copied().collect();
    assert_eq!(unique.len(), rows.len(), "ids unique across shards");
    // Each returned id is the one its row got: read back on the shards directly.
    let mut by_note = std::collections::HashMap::new();
    for i in 0..env.shards.len() {
        for r in env
            .connect_shard(i)
            .await
            .query("select note, order_id from shop_orders", &[])
            .await
            .unwrap()
        {
            by_note.insert(r.get::<_, String>(0), r.get::<_, i64>(1));
        }
    }
    for ((_, note), id) in rows.iter().zip(&returned) {
        assert_eq!(by_note.get(note), Some(id), "{note}");
    }
    assert_placed(&env, "shop_orders", "user_id", 1_000).await;
    env::assert_nothing_prepared(&env).await;
    env.stop().await;
}
