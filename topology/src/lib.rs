//! The topology: the versioned shard map every proxy routes by, the record of the rebalance
//! job that is changing it, and the stores that hold both.
//!
//! - [`ShardMap`]: version + the shards (names, hosts, admin logins), in ring order.
//! - [`Job`]: one add/remove-shard job, its phase and progress; at most one runs at a time.
//! - [`Store`]: `file` (one proxy; a JSON state file written atomically) or `postgres` (a fleet;
//!   tables in a metadata database, LISTEN/NOTIFY plus polling). Publishing a map is a
//!   compare-and-swap on its version, so two writers can never both win.
//! - [`CommitDecision`]: the commit point of a two-phase commit across shards, recorded in the
//!   store (`Store::record_commit`) until every participant committed.
//!
//! The proxy follows the store ([`Store::follow`]) and swaps its router when the version moves;
//! the rebalancer (admin crate) writes jobs and publishes maps.

mod decisions;
mod job;
mod lanes;
mod store;

pub use decisions::CommitDecision;
pub use job::{
    CommitState, Job, JobKind, JobPlan, MoveProgress, Phase, PlannedMove, PlannedTable, Progress,
    VerifiedTable,
};
pub use lanes::IdLanes;
pub use store::{ProxyVersion, Store, StoreError};

use serde::{Deserialize, Serialize};
use shardgate_config::Shard;

/// The SQLSTATE a rebalance fence raises for a write to a key that is moving. A proxy that sees
/// it reloads the topology and retries the statement on the new owner, or answers 40001.
pub const FENCE_SQLSTATE: &str = "SG001";

/// The shard map: which shards exist, in ring order. Version 1 is the config's `[[shards]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardMap {
    pub version: u64,
    pub shards: Vec<Shard>,
    /// The id lane of every shard (and the next free one). Missing in state written before
    /// lanes existed: [`ShardMap::new`] and the stores then deal lanes in ring order, which is
    /// what the first publish writes down.
    #[serde(default)]
    pub id_lanes: IdLanes,
}

impl ShardMap {
    /// A map of `shards` whose lanes follow from `previous` (the lanes of the map it replaces;
    /// default for the first map): see [`IdLanes::for_shards`].
    pub fn new(version: u64, shards: Vec<Shard>, previous: &IdLanes) -> ShardMap {
        let id_lanes = previous.for_shards(&shards);
        ShardMap {
            version,
            shards,
            id_lanes,
        }
    }

    /// The map with a lane for every shard (state written before lanes existed has none).
    pub fn with_lanes(self) -> ShardMap {
        let lanes = self.id_lanes.for_shards(&self.shards);
        ShardMap {
            id_lanes: lanes,
            ..self
        }
    }

    /// The id lane of shard `name`.
    pub fn lane(&self, name: &str) -> Option<u32> {
        self.id_lanes.lane(name)
    }

    pub fn shard(&self, name: &str) -> Option<&Shard> {
        self.shards.iter().find(|s| s.name == name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.shards.iter().map(|s| s.name.as_str()).collect()
    }
}

/// Milliseconds since the Unix epoch (for job timestamps and heartbeats).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
