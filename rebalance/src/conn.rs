//! Control connections to the shards' primaries, as each shard's admin login, one per
//! (shard, database), reopened when they drop.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::time::Duration;

use shardgate_config::{Rebalance, Shard};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::error::ShardError;

/// How long opening a control connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Server-side bound on every statement, so no wait can be endless; `CREATE SUBSCRIPTION`
/// (which waits for the source's slot to be created) is the slowest we send.
const STATEMENT_TIMEOUT_MS: u64 = 120_000;
/// Client-side bound, a little above the server's.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(130);

/// An error with the server's detail and hint when there are any.
pub(crate) fn pg_err(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} ({})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(&format!("; {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                s.push_str(&format!(": {c}"));
                cause = c.source();
            }
            s
        }
    }
}

/// The SQLSTATE of a database error, if it is one.
pub(crate) fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_owned())
}

/// Opens a control connection to `shard`'s primary, database `db`, as its admin login.
pub(crate) async fn connect(shard: &Shard, db: &str, rb: &Rebalance) -> Result<Client, ShardError> {
    let (user, password) = shard.admin_login(rb);
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&shard.primary.host)
        .port(shard.primary.port)
        .user(user)
        .dbname(db)
        .application_name("shardgate-rebalance")
        .connect_timeout(CONNECT_TIMEOUT)
        // synchronous_commit on: the cutover marker must reach the WAL flush position at once,
        // as logical decoding only sends flushed WAL (the server default may be off).
        .options(format!(
            "-c statement_timeout={STATEMENT_TIMEOUT_MS} -c synchronous_commit=on"
        ));
    if let Some(p) = password {
        cfg.password(p);
    }
    let host = shard.primary.clone();
    let failed = |reason: String| ShardError::Connect {
        shard: shard.name.clone(),
        addr: shard.primary.to_string(),
        db: db.to_owned(),
        user: user.to_owned(),
        reason,
    };
    match tokio::time::timeout(
        CONNECT_TIMEOUT + Duration::from_secs(1),
        shardgate_pool::connect_control(&mut cfg, &host),
    )
    .await
    {
        Ok(Ok(c)) => {
            // A rebalancer killed mid-statement leaves its backend waiting (for a lock, say);
            // without a client check it would still run that statement later, interleaved
            // with the resumed job's. PostgreSQL 14+ checks the socket during the wait; older
            // servers do not know the setting, which is fine.
            let check = tokio::time::timeout(
                CONNECT_TIMEOUT,
                c.batch_execute("SET client_connection_check_interval = '1s'"),
            );
            let _ = check.await;
            Ok(c)
        }
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(_) => Err(failed("timed out".into())),
    }
}

/// The open control connections of a job.
pub(crate) struct Conns {
    rb: Rebalance,
    map: HashMap<(String, String), Client>,
}

impl Conns {
    pub fn new(rb: Rebalance) -> Conns {
        Conns {
            rb,
            map: HashMap::new(),
        }
    }

    /// The connection to (`shard`, `db`), opened or reopened as needed.
    pub async fn get(&mut self, shard: &Shard, db: &str) -> Result<&Client, ShardError> {
        let key = (shard.name.clone(), db.to_owned());
        match self.map.entry(key) {
            Entry::Occupied(mut open) => {
                if open.get().is_closed() {
                    open.insert(connect(shard, db, &self.rb).await?);
                }
                Ok(open.into_mut())
            }
            Entry::Vacant(none) => Ok(none.insert(connect(shard, db, &self.rb).await?)),
        }
    }

    /// The open connection to (`shard`, `db`), opened by `get` before.
    fn opened(&self, shard: &Shard, db: &str) -> Result<&Client, ShardError> {
        self.map
            .get(&(shard.name.clone(), db.to_owned()))
            .ok_or_else(|| lost(shard, db))
    }

    /// The connections to several (shard, database) pairs at once, in order (for queries that
    /// run concurrently; a pair may repeat).
    pub async fn clients(&mut self, keys: &[(&Shard, &str)]) -> Result<Vec<&Client>, ShardError> {
        for (shard, db) in keys {
            self.get(shard, db).await?;
        }
        keys.iter()
            .map(|(shard, db)| self.opened(shard, db))
            .collect()
    }

    /// Forgets a connection (after an error that may have left it unusable).
    pub fn drop_conn(&mut self, shard: &Shard, db: &str) {
        self.map.remove(&(shard.name.clone(), db.to_owned()));
    }

    /// Runs `sql` (no parameters, one statement) on (`shard`, `db`).
    pub async fn exec(&mut self, shard: &Shard, db: &str, sql: &str) -> Result<u64, ShardError> {
        self.exec_params(shard, db, sql, &[]).await
    }

    pub async fn exec_params(
        &mut self,
        shard: &Shard,
        db: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, ShardError> {
        let c = self.get(shard, db).await?;
        match tokio::time::timeout(CLIENT_TIMEOUT, c.execute(sql, params)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(self.describe(shard, db, &e)),
            Err(_) => Err(self.timed_out(shard, db, "statement")),
        }
    }

    pub async fn query(
        &mut self,
        shard: &Shard,
        db: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, ShardError> {
        let c = self.get(shard, db).await?;
        match tokio::time::timeout(CLIENT_TIMEOUT, c.query(sql, params)).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(self.describe(shard, db, &e)),
            Err(_) => Err(self.timed_out(shard, db, "query")),
        }
    }

    /// The first row of a query that must return one.
    pub async fn one(
        &mut self,
        shard: &Shard,
        db: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, ShardError> {
        self.query(shard, db, sql, params)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| ShardError::NoRow {
                shard: shard.name.clone(),
                db: db.to_owned(),
                sql: sql.to_owned(),
            })
    }

    /// Deletes rows in batches inside transactions with `shardgate.bypass` on (the fence
    /// trigger lets them through); returns the rows deleted by this batch.
    pub async fn delete_bypassing(
        &mut self,
        shard: &Shard,
        db: &str,
        sql: &str,
    ) -> Result<u64, ShardError> {
        let key = (shard.name.clone(), db.to_owned());
        self.get(shard, db).await?;
        let Some(c) = self.map.get_mut(&key) else {
            return Err(lost(shard, db));
        };
        let work = async {
            let tx = c.transaction().await?;
            tx.batch_execute("SET LOCAL shardgate.bypass = 'on'")
                .await?;
            let n = tx.execute(sql, &[]).await?;
            tx.commit().await?;
            Ok::<u64, tokio_postgres::Error>(n)
        };
        match tokio::time::timeout(CLIENT_TIMEOUT, work).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(self.describe(shard, db, &e)),
            Err(_) => Err(self.timed_out(shard, db, "delete")),
        }
    }

    /// A failed statement; a connection that broke (no server error) is dropped.
    fn describe(&mut self, shard: &Shard, db: &str, e: &tokio_postgres::Error) -> ShardError {
        if e.as_db_error().is_none() {
            self.drop_conn(shard, db);
        }
        ShardError::Statement {
            shard: shard.name.clone(),
            db: db.to_owned(),
            sqlstate: sqlstate(e),
            message: pg_err(e),
        }
    }

    /// A statement without an answer in time: its connection is dropped.
    fn timed_out(&mut self, shard: &Shard, db: &str, what: &'static str) -> ShardError {
        self.drop_conn(shard, db);
        ShardError::Timeout {
            shard: shard.name.clone(),
            db: db.to_owned(),
            what,
        }
    }
}

fn lost(shard: &Shard, db: &str) -> ShardError {
    ShardError::Lost {
        shard: shard.name.clone(),
        db: db.to_owned(),
    }
}
