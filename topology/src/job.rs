//! The record of one rebalance job, as stored (so a restarted proxy can find it) and as shown
//! by `GET /api/v1/rebalance`.

use serde::{Deserialize, Serialize};
use shardgate_config::{KeyType, Shard};

use crate::ShardMap;

/// What the job changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum JobKind {
    /// Bring `shard` in: the ring slots it wins move to it from every other shard.
    Add { shard: Shard },
    /// Take the shard named `shard` out: each of its slots moves to the shard that wins it next.
    Remove { shard: String },
}

/// Where a job is. The order is the order of a successful job; `Aborting`, `Aborted`, `Failed`
/// and `Done` are reached from any phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Checking that the move can run (nothing changed yet).
    Preflight,
    /// Copying the schema to the target, installing the (open) fences, creating publications
    /// and subscriptions.
    Preparing,
    /// The subscriptions copy the existing rows of the moving slots.
    Copying,
    /// The subscriptions stream changes; waiting until the targets trail by little.
    CatchingUp,
    /// Fence closed on the moving slots; waiting for the last changes, verifying counts and
    /// checksums, publishing the new shard map.
    Cutover,
    /// New map published: dropping subscriptions, publications and slots, deleting the moved
    /// rows from the sources, removing the fences. An abort here reverts the move.
    Cleanup,
    Done,
    /// Undoing: back to the old map, the targets' copies removed (after a revert when the job
    /// had committed).
    Aborting,
    Aborted,
    /// Stopped on an error; its cleanup ran (see `error`).
    Failed,
}

impl Phase {
    /// Done, aborted or failed: a new job may start.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Done | Phase::Aborted | Phase::Failed)
    }

    /// The new shard map is published: from here an abort reverts the move (a small move in
    /// reverse) instead of removing what the job built.
    pub fn is_committed(self) -> bool {
        matches!(self, Phase::Cleanup | Phase::Done)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::Preparing => "preparing",
            Phase::Copying => "copying",
            Phase::CatchingUp => "catching_up",
            Phase::Cutover => "cutover",
            Phase::Cleanup => "cleanup",
            Phase::Done => "done",
            Phase::Aborting => "aborting",
            Phase::Aborted => "aborted",
            Phase::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One source → target stream of a job (one publication and one subscription per database).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MoveProgress {
    pub source: String,
    pub target: String,
    /// Ring slots that move from `source` to `target`.
    pub slots: u32,
    pub rows_estimated: u64,
    pub rows_copied: u64,
    /// WAL bytes the target trails the source by (its slot's confirmed flush position).
    pub lag_bytes: Option<u64>,
    /// Rows counted and checksummed equal on both sides at cutover.
    pub verified_rows: Option<u64>,
    pub rows_deleted: u64,
}

/// Figures for `rebalance status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub rows_estimated: u64,
    pub rows_copied: u64,
    /// Worst lag over the moves, in bytes and seconds.
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    /// How long the fence held writes to the moving keys, per cutover attempt (milliseconds);
    /// the last one is the one that committed.
    pub cutover_pauses_ms: Vec<f64>,
    pub rows_deleted: u64,
    pub moves: Vec<MoveProgress>,
    /// What the job is doing right now, in words.
    pub message: String,
}

/// One rebalance job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// `rb-<unix ms>`: also names the publications, slots, subscriptions and fence objects.
    pub id: String,
    #[serde(flatten)]
    pub kind: JobKind,
    pub phase: Phase,
    /// Phase when the job was aborted or failed (where the undo started).
    pub stopped_in: Option<Phase>,
    /// Shard map version the job started from, and the shards before and after.
    pub from_version: u64,
    pub old_shards: Vec<Shard>,
    pub new_shards: Vec<Shard>,
    /// The version the job published (set in cutover).
    pub to_version: Option<u64>,
    /// The proxy running it, and when it last said so (ms since the epoch): a job whose
    /// heartbeat is older than a few seconds has lost its runner.
    pub owner: String,
    pub heartbeat_ms: u64,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    /// Set by `rebalance abort` (possibly on another proxy); the runner acts on it.
    pub abort_requested: bool,
    pub error: Option<String>,
    pub progress: Progress,
    /// What the job moves, fixed when it started: a resumed job uses this, never the config
    /// of the proxy that takes it over. `None` only in records written before it existed.
    #[serde(default)]
    pub plan: Option<JobPlan>,
}

/// One sharded table of a job's plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedTable {
    pub schema: String,
    pub name: String,
    pub key_column: String,
    pub key_type: KeyType,
}

/// One source → target stream of a job's plan: the ring slots whose owner changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedMove {
    pub source: String,
    pub target: String,
    pub slots: Vec<i64>,
}

/// Everything that decides which rows a job moves, as it was when the job started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobPlan {
    pub slot_bits: u32,
    pub hash_seed: i64,
    pub tables: Vec<PlannedTable>,
    pub databases: Vec<String>,
    pub moves: Vec<PlannedMove>,
    /// Per move, database and table, the sources' rows and checksum of the moved rows: the
    /// figures the cutover found equal on the source and the target, or — when the runner
    /// died before saving those — the sources' figures once replication proved the targets
    /// complete. Saved before any source row is deleted. The sources' moved rows are fenced
    /// from the cutover until they are deleted, so a resumed cleanup re-checks the sources
    /// against these figures before deleting.
    #[serde(default)]
    pub verified: Option<Vec<VerifiedTable>>,
    /// Set (and saved) once the sources' moved rows passed the last check and their deletion
    /// began: a resumed cleanup then goes on deleting (the figures no longer hold for rows
    /// already deleted).
    #[serde(default)]
    pub deleting: bool,
}

/// What the cutover's verification found for one move, database and table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedTable {
    /// Index into `moves`.
    pub move_index: usize,
    pub database: String,
    /// `schema.name`.
    pub table: String,
    pub rows: i64,
    pub checksum: String,
}

/// Where the store's current shard map says a job is: the map is the commit point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitState {
    /// The map is still the one the job started from: nothing routes to the targets yet.
    NotCommitted,
    /// The map is the job's new shard list, published by the job: the move is live.
    Committed { version: u64 },
    /// The job's old shard list was published again after the commit (a revert): the
    /// sources own the moving slots again.
    Reverted { version: u64 },
    /// The map is neither: someone else changed it. Nothing may be deleted on either side.
    Unknown { version: u64 },
}

impl Job {
    /// Compares the job with the store's current map (see [`CommitState`]).
    pub fn commit_state(&self, map: &ShardMap) -> CommitState {
        let version = map.version;
        if version == self.from_version && map.shards == self.old_shards {
            return CommitState::NotCommitted;
        }
        let committed_at = self.to_version.unwrap_or(self.from_version + 1);
        if version == committed_at && map.shards == self.new_shards {
            return CommitState::Committed { version };
        }
        if version == committed_at + 1 && map.shards == self.old_shards {
            return CommitState::Reverted { version };
        }
        CommitState::Unknown { version }
    }

    /// The shard being added or removed.
    pub fn shard_name(&self) -> &str {
        match &self.kind {
            JobKind::Add { shard } => &shard.name,
            JobKind::Remove { shard } => shard,
        }
    }
}
