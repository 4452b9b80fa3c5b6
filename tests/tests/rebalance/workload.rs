//! The write workload that runs through the proxies while shards come and go, and the model it
//! keeps of what the tables must hold.
//!
//! Each task owns the keys `k` with `(k - 1) % tasks == task`, so the tasks never touch the same
//! row and each task's model (its share of the initial rows plus every statement that committed)
//! is exact. A statement answered 40001 (a fence the proxy could not hide) is retried and
//! counted; any other error stops the task with the statement that failed. A statement that
//! reports a different row count than the model predicts (a row missing or duplicated while it
//! moved) is recorded as an anomaly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Initial `accounts`: keys 1..=ACCOUNTS.
pub const ACCOUNTS: i64 = 60_000;
/// Initial `events`: EVENTS_PER_USER rows for each of users 1..=EVENT_USERS.
pub const EVENT_USERS: i64 = 20_000;
pub const EVENTS_PER_USER: i64 = 3;

pub const SCHEMA: &str = "
create table accounts (user_id bigint primary key, balance bigint not null, note text);
create table events (user_id bigint, id bigint, payload text, primary key (user_id, id));
";

/// SQL that loads this shard's share of the initial rows: `pred(expr)` is the ring's predicate
/// for the shard over the int8 key expression `expr`.
pub fn load_sql(pred: impl Fn(&str) -> String) -> String {
    format!(
        "insert into accounts select g, 0, 'n' || g from generate_series(1, {ACCOUNTS}) g \
         where {};
         insert into events select u, i, 'p' || u || '-' || i \
         from generate_series(1, {EVENT_USERS}) u, generate_series(1, {EVENTS_PER_USER}) i \
         where {};",
        pred("g"),
        pred("u")
    )
}

/// Which refusals a task retries, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// SQLSTATEs that mean "nothing was done; try again".
    pub codes: &'static [&'static str],
    pub for_at_most: Duration,
}

impl Default for Retry {
    /// 40001 (a fence the proxy could not hide) for 30 s: a fence held by a runner that was
    /// killed stays until the job is resumed and undone or finished (tests/rebalance_sigkill.rs).
    fn default() -> Retry {
        Retry {
            codes: &["40001"],
            for_at_most: Duration::from_secs(30),
        }
    }
}

/// What the two tables hold: accounts by key (balance, note), events by (user, id) → payload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub accounts: BTreeMap<i64, (i64, Option<String>)>,
    pub events: BTreeMap<(i64, i64), Option<String>>,
}

impl State {
    /// The rows `load_sql` creates, restricted to the keys `keep` accepts.
    pub fn initial(keep: impl Fn(i64) -> bool) -> State {
        let mut s = State::default();
        for k in (1..=ACCOUNTS).filter(|k| keep(*k)) {
            s.accounts.insert(k, (0, Some(format!("n{k}"))));
        }
        for u in (1..=EVENT_USERS).filter(|u| keep(*u)) {
            for i in 1..=EVENTS_PER_USER {
                s.events.insert((u, i), Some(format!("p{u}-{i}")));
            }
        }
        s
    }

    pub fn merge(&mut self, other: State) {
        self.accounts.extend(other.accounts);
        self.events.extend(other.events);
    }

    pub fn rows(&self) -> usize {
        self.accounts.len() + self.events.len()
    }
}

/// What one task did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub state: State,
    pub ops: u64,
    /// Statements (or transactions) refused with a retried SQLSTATE and retried.
    pub retries: u64,
    /// The same, by SQLSTATE.
    pub retries_by_code: BTreeMap<String, u64>,
    pub anomalies: Vec<String>,
    pub max_latency: Duration,
}

/// The running tasks; `stop` ends them after their current statement.
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Result<Outcome, String>>>,
}

impl Workload {
    /// Starts `per_proxy` tasks on each proxy (by its connection string).
    pub async fn start(proxies: &[String], per_proxy: usize) -> Workload {
        Self::start_retrying(proxies, per_proxy, |_| Retry::default()).await
    }

    /// [`Self::start`], with the retry policy of each proxy's tasks (by the proxy's index).
    pub async fn start_retrying(
        proxies: &[String],
        per_proxy: usize,
        retry: impl Fn(usize) -> Retry,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let n = proxies.len() * per_proxy;
        let mut tasks = Vec::with_capacity(n);
        for t in 0..n {
            let conn_str = proxies[t % proxies.len()].clone();
            let client = super::env::connect(&conn_str).await;
            let task = Task::new(t as i64, n as i64, client, retry(t % proxies.len()));
            let stop = Arc::clone(&stop);
            tasks.push(tokio::spawn(task.run(stop)));
        }
        Workload { stop, tasks }
    }

    /// The first task that stopped on an error, if any (without waiting for the others).
    pub fn failure(&self) -> Option<usize> {
        self.tasks.iter().position(|t| t.is_finished())
    }

    /// Stops every task and returns their outcomes, or the first error.
    pub async fn finish(self) -> Result<Vec<Outcome>, String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (i, t) in self.tasks.into_iter().enumerate() {
            match tokio::time::timeout(Duration::from_secs(60), t).await {
                Ok(Ok(Ok(o))) => out.push(o),
                Ok(Ok(Err(e))) => errors.push(format!("task {i}: {e}")),
                Ok(Err(e)) => errors.push(format!("task {i} panicked: {e}")),
                Err(_) => errors.push(format!("task {i} did not stop within 60 s")),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors.join("\n"))
        }
    }
}

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// The SQLSTATE of an error, or `None` for one without (a lost connection).
fn code(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// Rows affected by a simple-protocol statement (its last CommandComplete).
async fn simple(client: &Client, sql: &str) -> Result<u64, tokio_postgres::Error> {
    let msgs = client.simple_query(sql).await?;
    Ok(msgs
        .iter()
        .rev()
        .find_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(0))
}

/// One statement (or transaction) of the workload.
enum Op {
    Bump {
        k: i64,
        simple: bool,
    },
    Insert {
        k: i64,
        simple: bool,
    },
    Delete {
        k: i64,
        simple: bool,
    },
    AddEvent {
        k: i64,
        id: i64,
    },
    DropEvent {
        k: i64,
        id: i64,
    },
    /// In one transaction: bump `k` and add event (k, id).
    Transfer {
        k: i64,
        id: i64,
    },
    Read {
        k: i64,
    },
}

struct Task {
    id: i64,
    tasks: i64,
    client: Client,
    rng: Rng,
    next_key: i64,
    next_event: i64,
    retry: Retry,
    out: Outcome,
}

impl Task {
    fn new(id: i64, tasks: i64, client: Client, retry: Retry) -> Task {
        let state = State::initial(|k| (k - 1) % tasks == id);
        Task {
            id,
            tasks,
            client,
            rng: Rng(0x5EED + id as u64),
            next_key: 0,
            next_event: 100,
            retry,
            out: Outcome {
                state,
                ..Outcome::default()
            },
        }
    }

    /// A key of this task among the initial accounts (it may have been deleted since).
    fn old_key(&mut self, upto: i64) -> i64 {
        self.rng.below((upto / self.tasks) as u64) as i64 * self.tasks + self.id + 1
    }

    fn pick(&mut self) -> Op {
        let r = self.rng.below(100);
        let simple = self.rng.below(2) == 0;
        match r {
            0..=29 => Op::Bump {
                k: self.old_key(ACCOUNTS),
                simple,
            },
            30..=41 => {
                // Fresh keys, unique across tasks, spread over the whole ring.
                let k = self.tasks * 200_000 + self.next_key * self.tasks + self.id + 1;
                self.next_key += 1;
                Op::Insert { k, simple }
            }
            42..=49 => Op::Delete {
                k: self.old_key(ACCOUNTS),
                simple,
            },
            50..=64 => {
                self.next_event += 1;
                Op::AddEvent {
                    k: self.old_key(ACCOUNTS),
                    id: self.next_event,
                }
            }
            65..=74 => Op::DropEvent {
                k: self.old_key(EVENT_USERS),
                id: 1 + self.rng.below(EVENTS_PER_USER as u64) as i64,
            },
            75..=89 => {
                self.next_event += 1;
                Op::Transfer {
                    k: self.old_key(ACCOUNTS),
                    id: self.next_event,
                }
            }
            _ => Op::Read {
                k: self.old_key(ACCOUNTS),
            },
        }
    }

    async fn run(mut self, stop: Arc<AtomicBool>) -> Result<Outcome, String> {
        while !stop.load(Ordering::Relaxed) {
            let op = self.pick();
            let started = Instant::now();
            let mut tries = 0u32;
            loop {
                match self.execute(&op).await {
                    Ok(()) => break,
                    Err(e)
                        if code(&e).is_some_and(|c| self.retry.codes.contains(&c))
                            && started.elapsed() < self.retry.for_at_most =>
                    {
                        tries += 1;
                        self.out.retries += 1;
                        *self
                            .out
                            .retries_by_code
                            .entry(code(&e).unwrap_or_default().to_owned())
                            .or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => {
                        return Err(format!(
                            "{} failed after {tries} retries: {e} (sqlstate {:?}, {e:?})",
                            describe(&op),
                            code(&e)
                        ))
                    }
                }
            }
            self.out.max_latency = self.out.max_latency.max(started.elapsed());
            self.out.ops += 1;
            // Leave the shards some CPU for the move itself (2 cores run everything).
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(self.out)
    }

    /// Runs `op` once; on success updates the model (and records a row count it did not
    /// predict).
    async fn execute(&mut self, op: &Op) -> Result<(), tokio_postgres::Error> {
        let c = &mut self.client;
        let Outcome {
            state: s,
            anomalies,
            ..
        } = &mut self.out;
        let mut expect = |what: String, got: u64, want: u64| {
            if got != want {
                anomalies.push(format!("{what}: {got} rows, expected {want}"));
            }
        };
        match *op {
            Op::Bump { k, simple: true } => {
                let n = simple(
                    c,
                    &format!("update accounts set balance = balance + 1 where user_id = {k}"),
                )
                .await?;
                bump(s, k, n, &mut expect, "simple update");
            }
            Op::Bump { k, simple: false } => {
                let n = c
                    .execute(
                        "update accounts set balance = balance + 1 where user_id = $1",
                        &[&k],
                    )
                    .await?;
                bump(s, k, n, &mut expect, "extended update");
            }
            Op::Insert { k, simple } => {
                let note = format!("w{k}");
                let n = if simple {
                    self::simple(
                        c,
                        &format!("insert into accounts (user_id, balance, note) values ({k}, 0, '{note}')"),
                    )
                    .await?
                } else {
                    c.execute(
                        "insert into accounts (user_id, balance, note) values ($1, 0, $2)",
                        &[&k, &note],
                    )
                    .await?
                };
                expect(format!("insert account {k}"), n, 1);
                s.accounts.insert(k, (0, Some(note)));
            }
            Op::Delete { k, simple } => {
                let n = if simple {
                    self::simple(c, &format!("delete from accounts where user_id = {k}")).await?
                } else {
                    c.execute("delete from accounts where user_id = $1", &[&k])
                        .await?
                };
                let had = s.accounts.remove(&k).is_some();
                expect(format!("delete account {k}"), n, u64::from(had));
            }
            Op::AddEvent { k, id } => {
                let n = simple(
                    c,
                    &format!(
                        "insert into events (user_id, id, payload) values ({k}, {id}, 'w{k}-{id}')"
                    ),
                )
                .await?;
                expect(format!("insert event ({k}, {id})"), n, 1);
                s.events.insert((k, id), Some(format!("w{k}-{id}")));
            }
            Op::DropEvent { k, id } => {
                let n = c
                    .execute(
                        "delete from events where user_id = $1 and id = $2",
                        &[&k, &id],
                    )
                    .await?;
                let had = s.events.remove(&(k, id)).is_some();
                expect(format!("delete event ({k}, {id})"), n, u64::from(had));
            }
            Op::Transfer { k, id } => {
                let tx = c.transaction().await?;
                let bumped = tx
                    .execute(
                        "update accounts set balance = balance + 1 where user_id = $1",
                        &[&k],
                    )
                    .await?;
                let payload = format!("t{k}-{id}");
                let added = tx
                    .execute(
                        "insert into events (user_id, id, payload) values ($1, $2, $3)",
                        &[&k, &id, &payload],
                    )
                    .await?;
                tx.commit().await?;
                bump(s, k, bumped, &mut expect, "update in a transaction");
                expect(
                    format!("insert event ({k}, {id}) in a transaction"),
                    added,
                    1,
                );
                s.events.insert((k, id), Some(payload));
            }
            Op::Read { k } => {
                let row = c
                    .query_opt("select balance from accounts where user_id = $1", &[&k])
                    .await?;
                let got = row.map(|r| r.get::<_, i64>(0));
                let want = s.accounts.get(&k).map(|a| a.0);
                if got != want {
                    expect(
                        format!("read account {k} (balance {got:?}, expected {want:?})"),
                        0,
                        1,
                    );
                }
            }
        }
        Ok(())
    }
}

/// The model after `balance = balance + 1` on `k` reported `n` rows.
fn bump(s: &mut State, k: i64, n: u64, expect: &mut impl FnMut(String, u64, u64), what: &str) {
    let row = s.accounts.get_mut(&k);
    expect(format!("{what} of {k}"), n, u64::from(row.is_some()));
    if let Some(a) = row {
        a.0 += 1;
    }
}

fn describe(op: &Op) -> String {
    match op {
        Op::Bump { k, simple } => format!("update of account {k} (simple: {simple})"),
        Op::Insert { k, simple } => format!("insert of account {k} (simple: {simple})"),
        Op::Delete { k, simple } => format!("delete of account {k} (simple: {simple})"),
        Op::AddEvent { k, id } => format!("insert of event ({k}, {id}) (simple)"),
        Op::DropEvent { k, id } => format!("delete of event ({k}, {id}) (extended)"),
        Op::Transfer { k, id } => format!("transaction on account {k} / event {id}"),
        Op::Read { k } => format!("read of account {k}"),
    }
}

/// `n` clusters and a store server, started at once: the schema on every cluster (a spare gets
/// the empty tables too, so a test can lock them) and the rows where a ring of the first
/// `loaded` shards puts them.
pub async fn clusters_with_rows(
    n: usize,
    loaded: usize,
) -> (Vec<shardgate_tests::PgCluster>, shardgate_tests::PgCluster) {
    use super::env::{
        connect, ring_predicate, start_clusters, start_meta, BITS, DB, PASSWORD, USER,
    };
    let (shards, meta) = tokio::join!(start_clusters(n), start_meta());
    let names: Vec<String> = (0..loaded).map(|i| format!("s{i}")).collect();
    let ring = shardgate_router::Ring::new(&names, BITS).expect("ring");
    for (i, c) in shards.iter().enumerate() {
        let app = connect(&format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DB}",
            c.port()
        ))
        .await;
        app.batch_execute(SCHEMA).await.expect("schema");
        if i < loaded {
            app.batch_execute(&load_sql(|e| ring_predicate(&ring, i, e)))
                .await
                .expect("load rows");
        }
    }
    (shards, meta)
}
