//! Why the engine stopped, by what can be done about it: a caller (or the job record's reader)
//! tells a store that did not answer — retry, nothing was decided — from a refusal or a
//! verification mismatch.

use shardgate_topology::StoreError;

use super::verify::VerifyError;

/// A failed step of a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The topology store could not be read or written: nothing was decided on its account;
    /// retry when it answers.
    #[error("topology store: {0}")]
    Store(String),
    /// A shard could not be reached or refused a statement (connection, lock wait, missing
    /// object): the job may be started again once the shard is healthy.
    #[error("{0}")]
    Shard(String),
    /// The cutover did not finish within its bounds: retry when the write load is lower.
    #[error("{0}")]
    Timeout(String),
    /// The job cannot run as asked (its plan, the config, a replication object someone
    /// removed): fix the cause first.
    #[error("{0}")]
    Refused(String),
}

impl EngineError {
    /// Whether running the job again, unchanged, may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            EngineError::Store(_) | EngineError::Shard(_) | EngineError::Timeout(_)
        )
    }
}

/// A statement on a shard's control connection that did not succeed (conn.rs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ShardError {
    /// The control connection could not be opened.
    #[error("cannot connect to shard {shard} ({addr}) database {db} as {user}: {reason}")]
    Connect {
        shard: String,
        addr: String,
        db: String,
        user: String,
        reason: String,
    },
    /// The server refused the statement (`sqlstate` set: its detail and hint are in
    /// `message`), or the connection broke during it (`sqlstate` unset; the connection is
    /// dropped and reopened by the next statement).
    #[error("shard {shard} database {db}: {message}")]
    Statement {
        shard: String,
        db: String,
        sqlstate: Option<String>,
        message: String,
    },
    /// No answer within the client's bound (the connection is dropped).
    #[error("shard {shard} database {db}: {what} timed out")]
    Timeout {
        shard: String,
        db: String,
        what: &'static str,
    },
    /// The control connection was gone when it was to be used.
    #[error("shard {shard} database {db}: the control connection was lost")]
    Lost { shard: String, db: String },
    /// A query that must return a row returned none.
    #[error("shard {shard} database {db}: no row from `{sql}`")]
    NoRow {
        shard: String,
        db: String,
        sql: String,
    },
}

impl ShardError {
    /// `e`, which a statement on `shard`'s database `db` got, with the server's SQLSTATE,
    /// detail and hint.
    pub(crate) fn statement(shard: &str, db: &str, e: &tokio_postgres::Error) -> ShardError {
        ShardError::Statement {
            shard: shard.to_owned(),
            db: db.to_owned(),
            sqlstate: super::conn::sqlstate(e),
            message: super::conn::pg_err(e),
        }
    }

    /// The server's SQLSTATE, when the server refused the statement.
    pub(crate) fn sqlstate(&self) -> Option<&str> {
        match self {
            ShardError::Statement { sqlstate, .. } => sqlstate.as_deref(),
            _ => None,
        }
    }
}

impl From<ShardError> for EngineError {
    fn from(e: ShardError) -> Self {
        EngineError::Shard(e.to_string())
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Store(e.to_string())
    }
}

/// A step of an undo or a cleanup that did not succeed (teardown.rs); the caller runs the
/// whole step again a few times before recording what is left.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TeardownError {
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// A statement that waits for table locks (fence triggers) did not get through.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The job's replication slots are still held by WAL senders after every attempt.
    #[error(
        "replication slots of job {job} are still in use on shard {shard}; drop them with \
         SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name \
         LIKE '{prefix}%'"
    )]
    SlotsInUse {
        job: String,
        shard: String,
        prefix: String,
    },
    /// A target did not confirm flushing what it applied within the wait.
    #[error(
        "shard {target} has not confirmed flushing the moved rows from shard {from} (slot \
         {slot}) within {waited:?}; is the target healthy?"
    )]
    NotFlushed {
        target: String,
        from: String,
        slot: String,
        waited: std::time::Duration,
    },
    /// Subscriptions that could not be dropped on these targets (their rows stay untouched).
    #[error("subscriptions on {} could not be dropped", .0.join(", "))]
    SubscriptionsStuck(Vec<String>),
    /// Proxies registered in the store still route by an older map (or the store could not
    /// list them) after the wait: nothing may be deleted.
    #[error(
        "{last} (waited {waited:?}: every proxy must route by version {version} or be silent \
         past topology.lease = {lease:?})"
    )]
    ProxiesBehind {
        last: String,
        waited: std::time::Duration,
        version: u64,
        lease: std::time::Duration,
    },
    /// Several steps failed, each listed.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<TeardownError>),
}

/// Why the cleanup after the commit stopped before the moved rows were gone from the sources.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CleanupError {
    /// `rebalance abort` came: the committed move is reverted instead.
    #[error("aborted")]
    Aborted,
    /// The moved rows are not proven to be on the targets: the sources keep them and their
    /// fences; running the cleanup again cannot change that.
    #[error("verification failed: {0}")]
    Unverified(String),
    /// A shard did not answer or refused a statement, or a wait ran out: run it again.
    #[error(transparent)]
    Step(#[from] TeardownError),
}

impl From<ShardError> for CleanupError {
    fn from(e: ShardError) -> Self {
        CleanupError::Step(TeardownError::Shard(e))
    }
}

impl From<VerifyError> for CleanupError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Unreachable(e) => e.into(),
            VerifyError::Unproven(m) => CleanupError::Unverified(m),
        }
    }
}

/// The undo and cleanup steps that the forward path runs (lifting the fence after a timed-out
/// cutover) stop it like a shard error.
impl From<TeardownError> for EngineError {
    fn from(e: TeardownError) -> Self {
        EngineError::Shard(e.to_string())
    }
}
