//! The bank-transfer workload of issue 16: concurrent clients move money between accounts on
//! different shards (3 shards), each transfer two balance updates and a log row in one
//! transaction, in the simple and the extended protocol; some are rolled back on purpose, some
//! clients vanish mid-transaction, and one shard is restarted mid-run. Afterwards: the total is
//! conserved exactly, every acknowledged COMMIT is there, nothing unacknowledged is there
//! except transfers whose COMMIT got no clear answer, every balance matches the log, and no
//! prepared transaction is left.
//!
//! `SG_BANK_SECONDS` sets the run's length (default 8 s for CI; `bench` runs it longer).

mod common;
#[path = "multi_shard/env.rs"]
mod env;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use env::{value_through, ACCOUNTS};

/// At most the pool size (4 per shard): a transaction holds a connection on each shard it
/// touches, so more clients than connections could each hold one shard's and wait for another's.
const WORKERS: i64 = 4;

/// What the clients saw: transfers whose COMMIT was acknowledged, and those whose COMMIT got
/// an error or no answer (committed or not: both are allowed).
#[derive(Default)]
struct Seen {
    acked: BTreeSet<i64>,
    unsure: BTreeSet<i64>,
    rolled_back: u64,
    vanished: u64,
    failed: u64,
}

/// splitmix64, seeded per worker: reproducible choices.
struct Gen(u64);

impl Gen {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

enum Ending {
    Commit,
    Rollback,
    /// The client disappears after its first statement.
    Vanish,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_is_conserved_across_shards() {
    let seconds: u64 = std::env::var("SG_BANK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let mut env = env::start(3, "").await;
    // What the workers need of the env (the test keeps the env: it restarts a shard).
    let shard_of: Arc<Vec<usize>> = Arc::new((0..=ACCOUNTS).map(|k| env.shard_of(k)).collect());
    let conn_str = env.conn_str();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let shard_of = Arc::clone(&shard_of);
        let conn_str = conn_str.clone();
        let seen = Arc::clone(&seen);
        workers.push(tokio::spawn(async move {
            let mut gen = Gen(w as u64 + 1);
            let mut client = common::connect(&conn_str).await;
            let mut i = 0;
            while Instant::now() < deadline {
                i += 1;
                let id = w * 1_000_000 + i;
                let from = 1 + gen.below(ACCOUNTS as u64) as i64;
                let to = (1..=ACCOUNTS)
                    .map(|k| 1 + (from + k + gen.below(7) as i64) % ACCOUNTS)
                    .find(|k| shard_of[*k as usize] != shard_of[from as usize])
                    .expect("accounts on other shards");
                let amount = 1 + gen.below(9) as i64;
                let ending = match gen.below(20) {
                    0..=1 => Ending::Rollback,
                    2 => Ending::Vanish,
                    _ => Ending::Commit,
                };
                let extended = gen.below(2) == 0;
                let outcome = tokio::time::timeout(
                    Duration::from_secs(20),
                    transfer(&client, extended, id, (from, to, amount), &ending),
                )
                .await
                .unwrap_or(Outcome::Unsure);
                {
                    let mut s = seen.lock().unwrap();
                    match outcome {
                        Outcome::Acked => {
                            s.acked.insert(id);
                        }
                        Outcome::Unsure => {
                            s.unsure.insert(id);
                        }
                        Outcome::RolledBack => s.rolled_back += 1,
                        Outcome::Failed => s.failed += 1,
                        Outcome::Vanished => s.vanished += 1,
                    }
                }
                if client.is_closed() || matches!(ending, Ending::Vanish) {
                    // The old connection goes first: it may hold the connection the new login needs.
                    drop(client);
                    client = common::connect(&conn_str).await;
                }
            }
        }));
    }
    // One shard restarts (fast shutdown: its clients are cut off) while the clients run.
    tokio::time::sleep(Duration::from_secs(seconds / 3)).await;
    tokio::task::block_in_place(|| env.shards[1].restart()).expect("restart shard s1");
    for w in workers {
        w.await.expect("worker");
    }

    // In-doubt transactions (a shard restarted between PREPARE and COMMIT PREPARED) are
    // finished by recovery.
    let settled = common::wait_for(Duration::from_secs(30), || async {
        prepared_count(&env).await == 0
    })
    .await;
    assert!(settled, "prepared transactions left after recovery");

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let mut log: BTreeMap<i64, (i64, i64, i64)> = BTreeMap::new();
    let mut balances: BTreeMap<i64, i64> = BTreeMap::new();
    for i in 0..env.shards.len() {
        let shard = env.connect_shard(i).await;
        for row in shard
            .query(
                "select transfer_id, user_id, to_user, amount from transfers",
                &[],
            )
            .await
            .expect("log")
        {
            log.insert(row.get(0), (row.get(1), row.get(2), row.get(3)));
        }
        for row in shard
            .query("select user_id, balance from accounts", &[])
            .await
            .expect("balances")
        {
            balances.insert(row.get(0), row.get(1));
        }
    }
    let total: i64 = balances.values().sum();
    assert_eq!(total, ACCOUNTS * 100, "money was created or destroyed");
    for id in &seen.acked {
        assert!(
            log.contains_key(id),
            "acknowledged transfer {id} is missing"
        );
    }
    for id in log.keys() {
        assert!(
            seen.acked.contains(id) || seen.unsure.contains(id),
            "transfer {id} committed although its client never committed it"
        );
    }
    let mut expected: BTreeMap<i64, i64> = (1..=ACCOUNTS).map(|k| (k, 100)).collect();
    for (from, to, amount) in log.values() {
        *expected.get_mut(from).expect("account") -= amount;
        *expected.get_mut(to).expect("account") += amount;
    }
    assert_eq!(
        balances, expected,
        "balances disagree with the transfer log"
    );
    assert!(
        seen.acked.len() > 20,
        "too few transfers committed: {}",
        seen.acked.len()
    );
    eprintln!(
        "bank: {} committed, {} unsure, {} rolled back, {} vanished, {} failed (shard restart)",
        seen.acked.len(),
        seen.unsure.len(),
        seen.rolled_back,
        seen.vanished,
        seen.failed
    );
    drop(seen);
    env.stop().await;
}

enum Outcome {
    Acked,
    Unsure,
    RolledBack,
    /// An error before COMMIT was sent: nothing committed.
    Failed,
    Vanished,
}

async fn transfer(
    client: &tokio_postgres::Client,
    extended: bool,
    id: i64,
    (from, to, amount): (i64, i64, i64),
    ending: &Ending,
) -> Outcome {
    // Rows are locked in key order: a global order keeps two transfers from waiting on each
    // other across shards, where no server could see the deadlock.
    let (first, second) = if from < to {
        ((from, -amount), (to, amount))
    } else {
        ((to, amount), (from, -amount))
    };
    let body = async {
        if extended {
            let update = "update accounts set balance = balance + $1 where user_id = $2";
            client.execute("begin", &[]).await?;
            client.execute(update, &[&first.1, &first.0]).await?;
            if matches!(ending, Ending::Vanish) {
                return Ok::<_, tokio_postgres::Error>(());
            }
            client.execute(update, &[&second.1, &second.0]).await?;
            client
                .execute(
                    "insert into transfers (user_id, transfer_id, to_user, amount) values ($1, $2, $3, $4)",
                    &[&from, &id, &to, &amount],
                )
                .await?;
        } else {
            let update = |(k, d): (i64, i64)| {
                format!("update accounts set balance = balance + {d} where user_id = {k}")
            };
            client.batch_execute("begin").await?;
            client.batch_execute(&update(first)).await?;
            if matches!(ending, Ending::Vanish) {
                return Ok(());
            }
            client.batch_execute(&update(second)).await?;
            client
                .batch_execute(&format!(
                    "insert into transfers (user_id, transfer_id, to_user, amount) values ({from}, {id}, {to}, {amount})"
                ))
                .await?;
        }
        Ok(())
    };
    if let Err(e) = body.await {
        if std::env::var_os("SG_BANK_VERBOSE").is_some() {
            eprintln!("transfer {id}: {e:?}");
        }
        // Nothing was committed: COMMIT was never sent. Leave the transaction, if any.
        let _ = client.batch_execute("rollback").await;
        return Outcome::Failed;
    }
    match ending {
        // The caller drops the client: its connection closes mid-transaction.
        Ending::Vanish => Outcome::Vanished,
        Ending::Rollback => match client.batch_execute("rollback").await {
            Ok(()) => Outcome::RolledBack,
            Err(_) => Outcome::Failed,
        },
        Ending::Commit => {
            let commit = if extended {
                client.execute("commit", &[]).await.map(|_| ())
            } else {
                client.batch_execute("commit").await
            };
            match commit {
                Ok(()) => Outcome::Acked,
                Err(_) => Outcome::Unsure,
            }
        }
    }
}

async fn prepared_count(env: &common::ShardedEnv) -> i64 {
    let mut n = 0;
    for i in 0..env.shards.len() {
        let shard = env.connect_shard(i).await;
        n += value_through(&shard, "select count(*) from pg_prepared_xacts").await;
    }
    n
}
