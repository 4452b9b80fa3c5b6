//! The postgres store: a fleet of proxies shares the shard map, the job record, their
//! reported versions and the commit decisions of two-phase commits through four tables in a
//! metadata database the operator already runs.
//! Publishing is a conditional UPDATE on the version plus a NOTIFY in the same transaction;
//! starting a job is a conditional upsert; both are atomic across processes.
//!
//! TLS to the metadata database is not supported yet: connections use `NoTls`, so the URL's
//! `sslmode` must be `disable` or `prefer` (which then connects in plaintext).

use std::time::Duration;

use shardgate_config::Shard;
use tokio::sync::Mutex;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use super::follow::CHANNEL;
use super::{ProxyVersion, StoreError};
use crate::{CommitDecision, Job, Phase, ShardMap};

/// Idempotent; run by every proxy that opens the store.
const SCHEMA: [&str; 5] = [
    "CREATE TABLE IF NOT EXISTS shardgate_topology (
        id int PRIMARY KEY CHECK (id = 1),
        version bigint NOT NULL,
        shards jsonb NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS shardgate_job (
        id int PRIMARY KEY CHECK (id = 1),
        job jsonb NOT NULL)",
    "CREATE TABLE IF NOT EXISTS shardgate_proxies (
        proxy_id text PRIMARY KEY,
        version bigint NOT NULL,
        seen_at timestamptz NOT NULL)",
    // Id lanes (see `IdLanes`), added after the first release: NULL in older rows.
    "ALTER TABLE shardgate_topology ADD COLUMN IF NOT EXISTS id_lanes jsonb",
    // Commit decisions of two-phase commits, from the commit point until every participant
    // committed.
    "CREATE TABLE IF NOT EXISTS shardgate_commit_decisions (
        proxy text NOT NULL,
        txid bigint NOT NULL,
        participants text[] NOT NULL,
        decided_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (proxy, txid))",
];

/// Writes the job record ($1, JSON; $2: its phase is terminal). An abort requested (by any
/// proxy) since the runner last read the job stays requested: the runner's copy must not erase
/// it.
const SAVE_JOB: &str = "INSERT INTO shardgate_job (id, job) VALUES (1, $1::text::jsonb)
     ON CONFLICT (id) DO UPDATE SET job = CASE
         WHEN shardgate_job.job->>'id' = EXCLUDED.job->>'id'
              AND (shardgate_job.job->>'abort_requested')::boolean
              AND NOT $2
         THEN jsonb_set(EXCLUDED.job, '{abort_requested}', 'true')
         ELSE EXCLUDED.job END";

/// Used when the URL sets no connect_timeout, so a dead metadata host fails fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `$body` (a future using `$client: &mut Client`, yielding `Result<T, tokio_postgres::Error>`)
/// on the shared connection, opening it if needed. If it fails because the session ended (the
/// connection had closed, the database restarted, or the server ended the session, as
/// `pg_terminate_backend` does), reconnects and runs it once more. Every store write is safe to
/// run again: saves are upserts, and a publish whose first attempt landed finds its own map.
macro_rules! with_client {
    ($self:expr, |$client:ident| $body:expr) => {{
        let mut guard = $self.client.lock().await;
        let mut retried = false;
        loop {
            let $client = $self.connected(&mut guard).await?;
            match $body.await {
                Ok(value) => break Ok::<_, StoreError>(value),
                Err(e) if !retried && (session_ended(&e) || $client.is_closed()) => {
                    tracing::info!(error = %e, "topology store connection closed; reconnecting");
                    *guard = None;
                    retried = true;
                }
                Err(e) => break Err(db_error(&e)),
            }
        }
    }};
}

pub(super) struct PgStore {
    config: tokio_postgres::Config,
    /// One long-lived connection for every query, opened on demand.
    client: Mutex<Option<Client>>,
}

impl PgStore {
    pub(super) async fn open(url: &str, seed: ShardMap) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Database(format!(
                "topology.store is not a valid postgres:// URL ({e}); \
                 use postgres://user:password@host:port/db"
            ))
        })?;
        if !matches!(config.get_ssl_mode(), SslMode::Disable | SslMode::Prefer) {
            return Err(StoreError::Database(
                "TLS to the topology metadata database is not supported yet; \
                 set sslmode=disable in topology.store"
                    .into(),
            ));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("shardgate-topology");
        }
        let store = PgStore {
            config,
            client: Mutex::new(None),
        };
        store.create_schema(&seed).await?;
        Ok(store)
    }

    pub(super) fn connect_config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    async fn create_schema(&self, seed: &ShardMap) -> Result<(), StoreError> {
        for statement in SCHEMA {
            let result = with_client!(self, |client| client.batch_execute(statement));
            if let Err(e) = result {
                // Two proxies creating the table at the same instant: one loses on the
                // catalog's unique index; the table exists either way.
                let raced = matches!(&e, StoreError::Database(m)
                    if m.starts_with(SqlState::UNIQUE_VIOLATION.code())
                        || m.starts_with(SqlState::DUPLICATE_TABLE.code()));
                if !raced {
                    return Err(e);
                }
            }
        }
        let shards = shards_json(&seed.shards)?;
        let lanes = lanes_json(&seed.id_lanes)?;
        let version = to_i64(seed.version);
        with_client!(self, |client| client.execute(
            "INSERT INTO shardgate_topology (id, version, shards, id_lanes)
             VALUES (1, $1, $2::text::jsonb, $3::text::jsonb) ON CONFLICT (id) DO NOTHING",
            &[&version, &shards, &lanes],
        ))?;
        Ok(())
    }

    pub(super) async fn shard_map(&self) -> Result<ShardMap, StoreError> {
        let row = with_client!(self, |client| client.query_opt(
            "SELECT version, shards::text, id_lanes::text FROM shardgate_topology WHERE id = 1",
            &[]
        ))?;
        let row = row.ok_or_else(|| {
            StoreError::Database(
                "the shard map row of shardgate_topology is missing; restore it \
                 (or delete the table to start again from the config's [[shards]])"
                    .into(),
            )
        })?;
        parse_map(from_i64(row.get(0)), row.get(1), row.get(2))
    }

    /// Publishes `shards` as `expected + 1` and, with `job`, saves the job in the same
    /// transaction. When the reply to an earlier attempt was lost (the connection dropped
    /// after COMMIT) the retry finds exactly this map at `expected + 1`: that is success.
    pub(super) async fn publish(
        &self,
        expected: u64,
        shards: Vec<Shard>,
        job: Option<&Job>,
    ) -> Result<ShardMap, StoreError> {
        let json = shards_json(&shards)?;
        let job_json = job.map(job_json).transpose()?;
        let (old, new) = (to_i64(expected), to_i64(expected + 1));
        let note = (expected + 1).to_string();
        let mut lanes = None;
        let found = with_client!(self, |client| async {
            let tx = client.transaction().await?;
            // The lanes change with the shard list: read the current ones under the row lock.
            let current = tx
                .query_opt(
                    "SELECT version, shards::text, id_lanes::text FROM shardgate_topology
                     WHERE id = 1 FOR UPDATE",
                    &[],
                )
                .await?;
            let next_lanes = current
                .as_ref()
                .filter(|r| r.get::<_, i64>(0) == old)
                .and_then(|r| parse_map(expected, r.get(1), r.get(2)).ok())
                .map(|m| m.id_lanes.for_shards(&shards));
            let lanes_text = next_lanes
                .as_ref()
                .and_then(|l| serde_json::to_string(l).ok());
            lanes = next_lanes;
            let updated = match &lanes_text {
                Some(lanes_text) => {
                    tx.execute(
                        "UPDATE shardgate_topology
                         SET version = $1, shards = $2::text::jsonb, id_lanes = $4::text::jsonb,
                             updated_at = now()
                         WHERE id = 1 AND version = $3",
                        &[&new, &json, &old, lanes_text],
                    )
                    .await?
                }
                // Another version (or an unreadable row): no update, report what is there.
                None => 0,
            };
            if updated == 0 {
                return Ok(Some(
                    current
                        .map(|r| (from_i64(r.get(0)), r.get::<_, String>(1)))
                        .unwrap_or_default(),
                ));
            }
            if let Some(job_json) = &job_json {
                tx.execute(SAVE_JOB, &[job_json, &false]).await?;
            }
            // Delivered at commit, so a follower that wakes up reads the new row.
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &note])
                .await?;
            tx.commit().await?;
            Ok::<_, tokio_postgres::Error>(None)
        })?;
        match found {
            None => Ok(ShardMap {
                version: expected + 1,
                shards,
                id_lanes: lanes.unwrap_or_default(),
            }),
            Some((found, stored))
                if found == expected + 1
                    && serde_json::from_str::<Vec<Shard>>(&stored).is_ok_and(|s| s == shards) =>
            {
                tracing::info!(
                    version = found,
                    "the shard map was already published (an earlier reply was lost)"
                );
                self.shard_map().await
            }
            Some((found, _)) => Err(StoreError::Conflict { expected, found }),
        }
    }

    pub(super) async fn job(&self) -> Result<Option<Job>, StoreError> {
        let row = with_client!(self, |client| client
            .query_opt("SELECT job::text FROM shardgate_job WHERE id = 1", &[]))?;
        row.map(|r| parse_job(r.get(0))).transpose()
    }

    pub(super) async fn try_start_job(&self, job: &Job) -> Result<(), StoreError> {
        let json = job_json(job)?;
        let terminal = terminal_phases();
        // The WHERE of ON CONFLICT DO UPDATE is evaluated on the locked row, so of two
        // proxies starting jobs at once exactly one wins.
        for _ in 0..3 {
            let inserted = with_client!(self, |client| client.execute(
                "INSERT INTO shardgate_job (id, job) VALUES (1, $1::text::jsonb)
                 ON CONFLICT (id) DO UPDATE SET job = EXCLUDED.job
                 WHERE shardgate_job.job->>'phase' = ANY($2)",
                &[&json, &terminal],
            ))?;
            if inserted == 1 {
                return Ok(());
            }
            match self.job().await? {
                Some(running) if !running.phase.is_terminal() => {
                    return Err(StoreError::Busy(Box::new(running)))
                }
                // It finished between the two statements: try again.
                _ => continue,
            }
        }
        Err(StoreError::Database(
            "the stored job kept changing while starting a new one; try again".into(),
        ))
    }

    pub(super) async fn save_job(&self, job: &Job) -> Result<(), StoreError> {
        let json = job_json(job)?;
        with_client!(self, |client| client
            .execute(SAVE_JOB, &[&json, &job.phase.is_terminal()]))?;
        Ok(())
    }

    pub(super) async fn request_abort(&self) -> Result<Option<Job>, StoreError> {
        let terminal = terminal_phases();
        let row = with_client!(self, |client| client.query_opt(
            "UPDATE shardgate_job SET job = jsonb_set(job, '{abort_requested}', 'true')
             WHERE id = 1 AND NOT (job->>'phase' = ANY($1))
             RETURNING job::text",
            &[&terminal],
        ))?;
        match row {
            Some(row) => parse_job(row.get(0)).map(Some),
            // No job, or a finished one: nothing to abort.
            None => self.job().await,
        }
    }

    pub(super) async fn report_version(
        &self,
        proxy_id: &str,
        version: u64,
    ) -> Result<(), StoreError> {
        let version = to_i64(version);
        with_client!(self, |client| client.execute(
            "INSERT INTO shardgate_proxies (proxy_id, version, seen_at) VALUES ($1, $2, now())
             ON CONFLICT (proxy_id) DO UPDATE SET version = EXCLUDED.version, seen_at = now()",
            &[&proxy_id, &version],
        ))?;
        Ok(())
    }

    pub(super) async fn proxies(&self) -> Result<Vec<ProxyVersion>, StoreError> {
        // Ages come from the database's clock, so proxies' clock skew does not matter.
        let rows = with_client!(self, |client| client.query(
            "SELECT proxy_id, version, extract(epoch FROM now() - seen_at)::float8
             FROM shardgate_proxies ORDER BY seen_at DESC, proxy_id",
            &[],
        ))?;
        Ok(rows
            .iter()
            .map(|r| ProxyVersion {
                proxy_id: r.get(0),
                version: from_i64(r.get(1)),
                seen_seconds_ago: r.get::<_, f64>(2).max(0.0),
            })
            .collect())
    }

    /// Inserts the decision and commits synchronously, whatever the server's default: the
    /// record is the commit point. A retry after a lost reply finds it there and does nothing.
    pub(super) async fn record_commit(
        &self,
        proxy: &str,
        txid: u64,
        participants: &[String],
    ) -> Result<(), StoreError> {
        let txid = to_i64(txid);
        with_client!(self, |client| async {
            let tx = client.transaction().await?;
            tx.batch_execute("SET LOCAL synchronous_commit = on")
                .await?;
            tx.execute(
                "INSERT INTO shardgate_commit_decisions (proxy, txid, participants)
                 VALUES ($1, $2, $3) ON CONFLICT (proxy, txid) DO NOTHING",
                &[&proxy, &txid, &participants],
            )
            .await?;
            tx.commit().await
        })
    }

    pub(super) async fn commit_decided(&self, proxy: &str, txid: u64) -> Result<bool, StoreError> {
        let txid = to_i64(txid);
        let row = with_client!(self, |client| client.query_opt(
            "SELECT 1 FROM shardgate_commit_decisions WHERE proxy = $1 AND txid = $2",
            &[&proxy, &txid],
        ))?;
        Ok(row.is_some())
    }

    pub(super) async fn forget_commit(&self, proxy: &str, txid: u64) -> Result<(), StoreError> {
        let txid = to_i64(txid);
        with_client!(self, |client| client.execute(
            "DELETE FROM shardgate_commit_decisions WHERE proxy = $1 AND txid = $2",
            &[&proxy, &txid],
        ))?;
        Ok(())
    }

    pub(super) async fn commit_decisions(&self) -> Result<Vec<CommitDecision>, StoreError> {
        let rows = with_client!(self, |client| client.query(
            "SELECT proxy, txid, participants,
                    (extract(epoch FROM decided_at) * 1000)::int8
             FROM shardgate_commit_decisions ORDER BY decided_at, proxy, txid",
            &[],
        ))?;
        Ok(rows
            .iter()
            .map(|r| CommitDecision {
                proxy: r.get(0),
                txid: from_i64(r.get(1)),
                participants: r.get(2),
                decided_unix_ms: from_i64(r.get(3)),
            })
            .collect())
    }

    /// The shared client, (re)connecting when there is none or it has closed.
    async fn connected<'a>(
        &self,
        slot: &'a mut Option<Client>,
    ) -> Result<&'a mut Client, StoreError> {
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            let (client, connection) =
                self.config.connect(NoTls).await.map_err(|e| db_error(&e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "topology store connection ended");
                }
            });
            *slot = Some(client);
        }
        slot.as_mut()
            .ok_or_else(|| StoreError::Database("no connection to the metadata database".into()))
    }
}

/// Whether `e` ended the session: the connection closed, or the server ended it with a FATAL
/// error (57P01 `pg_terminate_backend` or a fast shutdown, 57P02 a crash, 57P03 not accepting
/// connections yet) that arrives before the client notices the socket closing.
fn session_ended(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.code().is_some_and(|c| {
            [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
            ]
            .contains(c)
        })
}

/// A database error as `SQLSTATE: message` (callers match on the code), else the client's
/// own description, with what to check.
fn db_error(e: &tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Database(format!("{}: {}", db.code().code(), db.message())),
        None => StoreError::Database(format!(
            "{e}; check that the metadata database in topology.store is running and reachable"
        )),
    }
}

fn terminal_phases() -> Vec<&'static str> {
    [Phase::Done, Phase::Aborted, Phase::Failed]
        .map(Phase::as_str)
        .to_vec()
}

fn lanes_json(lanes: &crate::IdLanes) -> Result<String, StoreError> {
    serde_json::to_string(lanes)
        .map_err(|e| StoreError::Database(format!("cannot encode the id lanes: {e}")))
}

/// A stored row as a map; a row written before id lanes existed gets them dealt in ring order.
fn parse_map(version: u64, shards: String, lanes: Option<String>) -> Result<ShardMap, StoreError> {
    let shards = serde_json::from_str(&shards).map_err(|e| {
        StoreError::Database(format!(
            "the shard map in shardgate_topology cannot be parsed ({e}); restore it"
        ))
    })?;
    let id_lanes = match lanes {
        Some(l) => serde_json::from_str(&l).map_err(|e| {
            StoreError::Database(format!(
                "the id lanes in shardgate_topology cannot be parsed ({e}); restore them"
            ))
        })?,
        None => crate::IdLanes::default(),
    };
    Ok(ShardMap {
        version,
        shards,
        id_lanes,
    }
    .with_lanes())
}

fn shards_json(shards: &[Shard]) -> Result<String, StoreError> {
    serde_json::to_string(shards)
        .map_err(|e| StoreError::Database(format!("cannot encode the shard map: {e}")))
}

fn job_json(job: &Job) -> Result<String, StoreError> {
    serde_json::to_string(job)
        .map_err(|e| StoreError::Database(format!("cannot encode the job: {e}")))
}

fn parse_job(text: String) -> Result<Job, StoreError> {
    serde_json::from_str(&text).map_err(|e| {
        StoreError::Database(format!(
            "the job in shardgate_job cannot be parsed ({e}); delete that row if no rebalance \
             is running"
        ))
    })
}

// Versions count publishes and transaction ids are microseconds since 1970: neither comes near
// i64::MAX, and the columns hold no negatives.
fn to_i64(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

fn from_i64(version: i64) -> u64 {
    u64::try_from(version).unwrap_or(0)
}
