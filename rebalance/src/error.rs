//! Why the engine stopped, by what can be done about it: a caller (or the job record's reader)
//! tells a store that did not answer — retry, nothing was decided — from a refusal or a
//! verification mismatch.

use shardgate_topology::StoreError;

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

/// The control-connection layer reports shard errors as text (with the server's detail).
impl From<String> for EngineError {
    fn from(message: String) -> Self {
        EngineError::Shard(message)
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Store(e.to_string())
    }
}
