//! Which ring slots move where, and the SQL that selects them.
//!
//! A new job's plan is computed from the job record (old and new shard lists) and the config
//! (sharded tables, seed, slot bits, databases), then stored in the job record: a resumed job
//! runs the stored plan, never one rebuilt from whatever config the resuming proxy has.

use shardgate_config::{Config, KeyType, Shard};
use shardgate_router::ring::{slots_predicate, Ring};
use shardgate_topology::{Job, JobPlan, MoveProgress, PlannedMove, PlannedTable};

/// One sharded table as the rebalancer sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TablePlan {
    /// Unqualified names in the config mean `public` here: the rebalancer has to name one table
    /// per shard, while the router matches an unqualified name in any schema.
    pub schema: String,
    pub name: String,
    pub key_column: String,
    pub key_type: KeyType,
}

impl TablePlan {
    /// `"schema"."name"`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
    }

    /// `schema.name` for messages.
    pub fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// PostgreSQL's hash of the key, with `prefix` before the column (`NEW.`, `OLD.` or empty).
    pub fn hash_expr(&self, seed: i64, prefix: &str) -> String {
        let col = format!("{prefix}{}", ident(&self.key_column));
        match self.key_type {
            KeyType::Bigint => format!("hashint8extended(({col})::int8, {seed})"),
            KeyType::Text => format!("hashtextextended(({col})::text, {seed})"),
            KeyType::Uuid => format!("uuid_hash_extended(({col})::uuid, {seed})"),
        }
    }
}

/// One source → target stream: the slots whose owner changes from `source` to `target`.
#[derive(Debug, Clone)]
pub(crate) struct Move {
    pub index: usize,
    pub source: Shard,
    pub target: Shard,
    pub slots: Vec<i64>,
}

/// Everything a job does, derived from the job record and the config.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub job_id: String,
    pub bits: u32,
    pub seed: i64,
    pub tables: Vec<TablePlan>,
    pub moves: Vec<Move>,
    pub databases: Vec<String>,
}

/// Why a job's plan cannot be made: the config or the job record asks for something the
/// rebalancer cannot do (fix it first; running again unchanged would fail the same way).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PlanError {
    #[error(
        "rebalance.databases is empty: the rebalancer would move nothing (list the databases \
         that hold the sharded tables)"
    )]
    NoDatabases,
    #[error("the job's stored plan names no database")]
    StoredWithoutDatabases,
    #[error("the job's stored plan names an unknown shard {0}")]
    UnknownShard(String),
    #[error("sharding.tables: `{0}` is not a table name or schema.table")]
    TableName(String),
    #[error("the shard list cannot make a ring: {0}")]
    Ring(#[from] shardgate_router::RingError),
}

impl From<PlanError> for super::EngineError {
    fn from(e: PlanError) -> Self {
        super::EngineError::Refused(e.to_string())
    }
}

impl Plan {
    /// The plan of a new job, from the config.
    pub fn build(job: &Job, config: &Config) -> Result<Plan, PlanError> {
        if config.rebalance.databases.is_empty() {
            return Err(PlanError::NoDatabases);
        }
        let bits = config.sharding.slot_bits;
        let tables = tables(config)?;
        let moves = moves(&job.old_shards, &job.new_shards, bits)?;
        Ok(Plan {
            job_id: job.id.clone(),
            bits,
            seed: config.sharding.hash_seed,
            tables,
            moves,
            databases: config.rebalance.databases.clone(),
        })
    }

    /// The plan a job recorded when it started (records from before plans were stored are
    /// planned from `config`, as they were then).
    pub fn resume(job: &Job, config: &Config) -> Result<Plan, PlanError> {
        let Some(stored) = &job.plan else {
            return Plan::build(job, config);
        };
        if stored.databases.is_empty() {
            return Err(PlanError::StoredWithoutDatabases);
        }
        let shard = |name: &str| {
            job.old_shards
                .iter()
                .chain(&job.new_shards)
                .find(|s| s.name == name)
                .cloned()
                .ok_or_else(|| PlanError::UnknownShard(name.to_owned()))
        };
        let mut moves = Vec::new();
        for (index, m) in stored.moves.iter().enumerate() {
            moves.push(Move {
                index,
                source: shard(&m.source)?,
                target: shard(&m.target)?,
                slots: m.slots.clone(),
            });
        }
        Ok(Plan {
            job_id: job.id.clone(),
            bits: stored.slot_bits,
            seed: stored.hash_seed,
            tables: stored
                .tables
                .iter()
                .map(|t| TablePlan {
                    schema: t.schema.clone(),
                    name: t.name.clone(),
                    key_column: t.key_column.clone(),
                    key_type: t.key_type,
                })
                .collect(),
            moves,
            databases: stored.databases.clone(),
        })
    }

    /// The plan as the job record stores it.
    pub fn stored(&self) -> JobPlan {
        JobPlan {
            slot_bits: self.bits,
            hash_seed: self.seed,
            tables: self
                .tables
                .iter()
                .map(|t| PlannedTable {
                    schema: t.schema.clone(),
                    name: t.name.clone(),
                    key_column: t.key_column.clone(),
                    key_type: t.key_type,
                })
                .collect(),
            databases: self.databases.clone(),
            moves: self
                .moves
                .iter()
                .map(|m| PlannedMove {
                    source: m.source.name.clone(),
                    target: m.target.name.clone(),
                    slots: m.slots.clone(),
                })
                .collect(),
            verified: None,
            deleting: false,
        }
    }

    /// `sg_<job id>`, the prefix of every object this job creates (sanitized, so also a valid
    /// replication slot name).
    pub fn prefix(&self) -> String {
        format!("sg_{}", sanitize(&self.job_id))
    }

    /// Publication, subscription and slot of move `m` in database number `db` (slots are
    /// cluster-wide, so the database is part of the name).
    pub fn object_name(&self, db: usize, m: usize) -> String {
        truncate63(format!("{}_d{db}_m{m}", self.prefix()))
    }

    /// The fence trigger's name (the same on every table).
    pub fn trigger_name(&self) -> String {
        truncate63(format!("sg_fence_{}", sanitize(&self.job_id)))
    }

    /// The fence trigger function of table number `t` (in schema `shardgate`).
    pub fn function_name(&self, t: usize) -> String {
        truncate63(format!("sg_fence_{}_t{t}", sanitize(&self.job_id)))
    }

    /// `(hash >> shift) IN (…)` over `slots` for `table`.
    pub fn predicate(&self, table: &TablePlan, slots: &[i64]) -> String {
        slots_predicate(slots, self.bits, &table.hash_expr(self.seed, ""))
    }

    /// The distinct source shards, in plan order.
    pub fn sources(&self) -> Vec<&Shard> {
        distinct(self.moves.iter().map(|m| &m.source))
    }

    /// The distinct target shards, in plan order.
    pub fn targets(&self) -> Vec<&Shard> {
        distinct(self.moves.iter().map(|m| &m.target))
    }

    pub fn moves_from<'a>(&'a self, source: &'a str) -> impl Iterator<Item = &'a Move> + 'a {
        self.moves.iter().filter(move |m| m.source.name == source)
    }

    pub fn moves_to<'a>(&'a self, target: &'a str) -> impl Iterator<Item = &'a Move> + 'a {
        self.moves.iter().filter(move |m| m.target.name == target)
    }

    /// Every slot leaving `source`, with the shard it goes to (for the fence table).
    pub fn fence_rows(&self, source: &str) -> (Vec<i64>, Vec<String>) {
        let mut slots = Vec::new();
        let mut targets = Vec::new();
        for m in self.moves_from(source) {
            for s in &m.slots {
                slots.push(*s);
                targets.push(m.target.name.clone());
            }
        }
        (slots, targets)
    }

    /// Every slot arriving at `target`.
    pub fn slots_to(&self, target: &str) -> Vec<i64> {
        let mut slots: Vec<i64> = self
            .moves_to(target)
            .flat_map(|m| m.slots.iter().copied())
            .collect();
        slots.sort_unstable();
        slots
    }

    /// The progress rows the job starts with, one per move.
    pub fn initial_progress(&self) -> Vec<MoveProgress> {
        self.moves
            .iter()
            .map(|m| MoveProgress {
                source: m.source.name.clone(),
                target: m.target.name.clone(),
                slots: m.slots.len() as u32,
                ..MoveProgress::default()
            })
            .collect()
    }
}

/// The sharded tables of the config, resolved for the rebalancer.
pub(crate) fn tables(config: &Config) -> Result<Vec<TablePlan>, PlanError> {
    let mut out: Vec<TablePlan> = Vec::new();
    for t in &config.sharding.tables {
        // PostgreSQL folds unquoted names to lower case, and the router matches that way too.
        let name = t.name.trim().to_lowercase();
        let (schema, table) = match name.split_once('.') {
            Some((s, n)) => (s.to_owned(), n.to_owned()),
            None => ("public".to_owned(), name.clone()),
        };
        if schema.is_empty() || table.is_empty() || table.contains('.') {
            return Err(PlanError::TableName(t.name.clone()));
        }
        let key_column = t
            .key_column
            .clone()
            .unwrap_or_else(|| config.sharding.key_column.clone())
            .to_lowercase();
        let plan = TablePlan {
            schema,
            name: table,
            key_column,
            key_type: t.key_type.unwrap_or(config.sharding.key_type),
        };
        if !out
            .iter()
            .any(|o| o.schema == plan.schema && o.name == plan.name)
        {
            out.push(plan);
        }
    }
    Ok(out)
}

/// The moves that turn the ring of `old` into the ring of `new`: one per (source, target) pair
/// with at least one slot changing owner, sources in map order, then targets in map order.
pub(crate) fn moves(old: &[Shard], new: &[Shard], bits: u32) -> Result<Vec<Move>, PlanError> {
    let old_names: Vec<&str> = old.iter().map(|s| s.name.as_str()).collect();
    let new_names: Vec<&str> = new.iter().map(|s| s.name.as_str()).collect();
    let old_ring = Ring::new(&old_names, bits)?;
    let new_ring = Ring::new(&new_names, bits)?;
    let mut out = Vec::new();
    for (si, source) in old.iter().enumerate() {
        let mut by_target: Vec<Vec<i64>> = vec![Vec::new(); new.len()];
        for slot in old_ring.slots(si) {
            // The owner of a slot is the owner of any hash in it; the slot's lowest hash is
            // `slot << (64 - bits)`.
            let owner = new_ring.shard_for_hash(slot << (64 - bits));
            if new[owner].name != source.name {
                by_target[owner].push(slot);
            }
        }
        for (ti, slots) in by_target.into_iter().enumerate() {
            if !slots.is_empty() {
                out.push(Move {
                    index: out.len(),
                    source: source.clone(),
                    target: new[ti].clone(),
                    slots,
                });
            }
        }
    }
    Ok(out)
}

fn distinct<'a>(shards: impl Iterator<Item = &'a Shard>) -> Vec<&'a Shard> {
    let mut out: Vec<&Shard> = Vec::new();
    for s in shards {
        if !out.iter().any(|o| o.name == s.name) {
            out.push(s);
        }
    }
    out
}

/// `name` as a quoted SQL identifier.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as a SQL string literal (standard_conforming_strings is on in every supported
/// PostgreSQL).
pub(crate) fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Lower-case letters, digits and `_` only: valid unquoted, and as a replication slot name.
pub(crate) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// PostgreSQL truncates identifiers beyond 63 bytes; do it ourselves so lookups by name match.
fn truncate63(mut s: String) -> String {
    s.truncate(63);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_config::Host;
    use shardgate_router::hash::hashint8extended;

    fn shard(name: &str) -> Shard {
        Shard {
            name: name.into(),
            primary: Host {
                host: "127.0.0.1".into(),
                port: 5432,
                ..Host::default()
            },
            replicas: vec![],
            admin_user: None,
            admin_password: None,
        }
    }

    #[test]
    fn adding_moves_only_to_the_new_shard_and_matches_the_rings() {
        let old = vec![shard("s1"), shard("s2")];
        let mut new = old.clone();
        new.push(shard("s-3"));
        let moves = moves(&old, &new, 10).unwrap();
        assert_eq!(moves.len(), 2);
        assert!(moves.iter().all(|m| m.target.name == "s-3"));
        let old_ring = Ring::new(&["s1", "s2"], 10).unwrap();
        let new_ring = Ring::new(&["s1", "s2", "s-3"], 10).unwrap();
        for k in 0..5000 {
            let h = hashint8extended(k, 0);
            let slot = h >> 54;
            let (before, after) = (old_ring.shard_for_hash(h), new_ring.shard_for_hash(h));
            let moving = moves.iter().find(|m| m.slots.binary_search(&slot).is_ok());
            if before == after {
                assert!(moving.is_none(), "key {k}");
            } else {
                let m = moving.expect("moving slot in a move");
                assert_eq!(m.source.name, old_ring.shards()[before]);
                assert_eq!(m.target.name, "s-3");
            }
        }
    }

    #[test]
    fn removing_moves_the_removed_shards_slots_to_the_others() {
        let old = vec![shard("a"), shard("b"), shard("c")];
        let new = vec![shard("a"), shard("c")];
        let moves = moves(&old, &new, 12).unwrap();
        assert_eq!(moves.len(), 2);
        assert!(moves.iter().all(|m| m.source.name == "b"));
        let ring = Ring::new(&["a", "b", "c"], 12).unwrap();
        let total: usize = moves.iter().map(|m| m.slots.len()).sum();
        assert_eq!(total, ring.slots(1).len());
    }

    #[test]
    fn names_and_hashes() {
        let t = TablePlan {
            schema: "public".into(),
            name: "Or\"ders".into(),
            key_column: "user_id".into(),
            key_type: KeyType::Bigint,
        };
        assert_eq!(t.qualified(), "\"public\".\"Or\"\"ders\"");
        assert_eq!(
            t.hash_expr(-7, "NEW."),
            "hashint8extended((NEW.\"user_id\")::int8, -7)"
        );
        assert_eq!(sanitize("rb-1712-X"), "rb_1712_x");
        assert_eq!(literal("it's"), "'it''s'");
        assert!(truncate63("x".repeat(80)).len() == 63);
    }
}
