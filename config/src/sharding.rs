//! `[sharding]`: which tables are sharded and by which key, reference tables, the hash and
//! ring settings, id lanes, and what happens to statements that span shards.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;

/// How statements map to shards.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Sharding {
    /// Shard that holds unsharded tables; the first shard when unset.
    pub default_shard: Option<String>,
    /// Column that holds the shard key in sharded tables (unless a table says otherwise).
    pub key_column: String,
    /// Type of the shard key (unless a table says otherwise).
    pub key_type: KeyType,
    /// Seed passed to PostgreSQL's hash functions (`hashint8extended(key, seed)`).
    pub hash_seed: i64,
    /// The ring has 2^slot_bits equal slots (8..=20).
    pub slot_bits: u32,
    /// Lanes of cluster-unique ids (2..=1024; 0 turns lane management off). Each shard that
    /// ever joins the map takes one lane for good, and every serial/identity sequence of a
    /// sharded table steps by this many, so an int4 serial holds 2^31 / id_lanes ids per shard
    /// (33 million at the default 64) and at most id_lanes shards can ever be added.
    pub id_lanes: u32,
    /// Statements whose routing is cached (by text).
    pub route_cache_size: usize,
    /// Most bytes the route cache holds (statement texts and their plans); a text bigger than
    /// a quarter of it is planned but not cached.
    pub route_cache_bytes: usize,
    /// What a write on a sharded table without a shard key does.
    pub keyless_writes: KeylessWrites,
    /// How a transaction that wrote on several shards commits.
    pub cross_shard_transactions: CrossShardTransactions,
    /// How often in-doubt two-phase transactions (prepared on a shard, never committed or
    /// rolled back) are looked for and resolved; also done at start.
    #[serde(with = "duration")]
    pub two_phase_recovery_interval: Duration,
    /// The sharded tables. Every other table lives on the default shard, except reference
    /// tables.
    pub tables: Vec<ShardedTable>,
    /// Reference tables: small tables (plans, countries, feature flags) with an identical copy
    /// on every shard. Reads go to any one shard (the transaction's shard inside one), so
    /// joins with sharded rows run where those rows are; writes run on every shard at once,
    /// atomically. A table cannot be both sharded and a reference table.
    pub reference_tables: Vec<ReferenceTable>,
    /// `route` (default) routes by these rules; `observe` runs as a plain pooler in front of
    /// the one configured shard and only plans every statement against the rules, for the
    /// sharding readiness report (`shardgate admin readiness`).
    pub mode: ShardingMode,
    /// In `observe` mode: how many shards the statements are planned for.
    pub observe_shards: u32,
}

/// Whether the sharding rules route statements or are only observed.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ShardingMode {
    #[default]
    Route,
    Observe,
}

impl Sharding {
    /// Whether statements are only planned against the rules (`mode = "observe"`).
    pub fn observes(&self) -> bool {
        self.mode == ShardingMode::Observe
    }
}

impl Default for Sharding {
    fn default() -> Self {
        Sharding {
            default_shard: None,
            key_column: "user_id".into(),
            key_type: KeyType::Bigint,
            hash_seed: 0,
            slot_bits: 14,
            id_lanes: 64,
            route_cache_size: 10_000,
            route_cache_bytes: 64 * 1024 * 1024,
            keyless_writes: KeylessWrites::Refuse,
            cross_shard_transactions: CrossShardTransactions::TwoPhase,
            two_phase_recovery_interval: Duration::from_secs(5),
            tables: Vec::new(),
            reference_tables: Vec::new(),
            mode: ShardingMode::Route,
            observe_shards: 4,
        }
    }
}

/// A table copied in full to every shard (`[[sharding.reference_tables]]`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReferenceTable {
    /// Table name, optionally schema-qualified (`public.plans`); unqualified names match in
    /// any schema.
    pub name: String,
}

/// A table split across shards by its key column.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShardedTable {
    /// Table name, optionally schema-qualified (`public.orders`); unqualified names match in
    /// any schema.
    pub name: String,
    /// Overrides `sharding.key_column`.
    #[serde(default)]
    pub key_column: Option<String>,
    /// Overrides `sharding.key_type`.
    #[serde(default)]
    pub key_type: Option<KeyType>,
}

/// Shard-key types, each hashed with PostgreSQL's own function for it.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// int2, int4 or int8 keys, hashed as int8 with `hashint8extended`.
    #[serde(
        rename = "bigint",
        alias = "int8",
        alias = "int",
        alias = "integer",
        alias = "int4",
        alias = "smallint",
        alias = "int2"
    )]
    Bigint,
    /// text or varchar keys, hashed with `hashtextextended`.
    #[serde(rename = "text", alias = "varchar")]
    Text,
    /// uuid keys, hashed with `uuid_hash_extended`.
    #[serde(rename = "uuid")]
    Uuid,
}

impl std::fmt::Display for KeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyType::Bigint => "bigint",
            KeyType::Text => "text",
            KeyType::Uuid => "uuid",
        })
    }
}

/// How a transaction (or a broadcast statement) that wrote on several shards commits.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CrossShardTransactions {
    /// Atomically: PREPARE TRANSACTION on each shard that wrote, the decision recorded in the
    /// topology store, then COMMIT PREPARED (needs `max_prepared_transactions` > 0).
    TwoPhase,
    /// Shard by shard with plain COMMITs: a failure part-way leaves the earlier shards
    /// committed.
    BestEffort,
    /// Refuse the COMMIT (rolling back every shard) when more than one shard wrote.
    Refuse,
}

/// What to do with a write on a sharded table that names no shard key.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeylessWrites {
    /// Refuse it with a hint (default).
    Refuse,
    /// Run it on every shard.
    Broadcast,
}
