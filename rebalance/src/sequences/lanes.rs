//! Id lanes on the shards: every sequence behind a serial/bigserial/identity column of a
//! sharded table steps by `sharding.id_lanes`, with values ≡ the shard's lane, so two shards
//! never hand out the same value. Found through the catalog (column defaults calling
//! `nextval`, identity dependencies), changed with `ALTER SEQUENCE … INCREMENT BY` plus
//! `setval` in one transaction, and idempotent: a sequence already on its lane is left alone.

use serde::{Deserialize, Serialize};
use shardgate_config::Shard;
use tokio_postgres::Client;

use crate::plan::{ident, literal, TablePlan};

/// A sequence whose range leaves fewer ids than this per shard once laned is not managed
/// (a `smallint` serial always: 32,767 values shared by the lanes).
pub(crate) const MIN_IDS_PER_SHARD: i64 = 65_536;

/// Longest `ALTER SEQUENCE` waits for transactions that hold the sequence (they called
/// `nextval` and have not ended).
const LOCK_TIMEOUT: &str = "5s";

/// One sequence behind a column of a sharded table on one shard (`GET /api/v1/sequences`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequenceInfo {
    pub shard: String,
    pub database: String,
    /// `schema.table`.
    pub table: String,
    pub column: String,
    /// The sequence as PostgreSQL names it (`orders_order_id_seq`).
    pub sequence: String,
    /// `bigint`, `integer` or `smallint`.
    pub data_type: String,
    /// The shard's lane in the shard map (none when lanes are off).
    pub lane: Option<u32>,
    /// `sharding.id_lanes`.
    pub lanes: u32,
    pub increment: i64,
    /// The last value handed out; `None` before the first `nextval`.
    pub last_value: Option<i64>,
    /// Steps by `lanes` with values ≡ `lane`: unique across shards.
    pub on_lane: bool,
    /// Why shardgate does not manage it (shared by several tables, too small for the lanes).
    pub warning: Option<String>,
}

/// Every managed sequence per shard, and what could not be looked at or changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SequencesReport {
    /// `sharding.id_lanes` (0: lanes are off).
    pub lanes: u32,
    pub sequences: Vec<SequenceInfo>,
    /// One line each, naming the shard, database and table.
    pub warnings: Vec<String>,
}

/// What the catalog says about one sequence of a sharded table's column.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    /// `schema.table` for messages.
    pub table: String,
    /// The quoted name, for SQL.
    pub qualified: String,
    pub column: String,
    /// regclass text (quoted where needed): usable in SQL as is.
    pub sequence: String,
    pub data_type: String,
    pub increment: i64,
    pub max: i64,
    /// Every table whose column defaults call it (plus the table owning an identity).
    pub users: Vec<String>,
    pub last_value: i64,
    pub is_called: bool,
}

impl Found {
    /// The highest value it may have handed out.
    pub fn used(&self) -> i64 {
        if self.is_called {
            self.last_value
        } else {
            self.last_value.saturating_sub(1)
        }
    }

    pub fn on_lane(&self, lane: u32, lanes: u32) -> bool {
        lanes > 0
            && self.increment == i64::from(lanes)
            && self.last_value.rem_euclid(i64::from(lanes)) == i64::from(lane)
    }

    /// Why it cannot be laned, if so (`floor`: the value it must start above).
    pub fn unmanageable(&self, lanes: u32, floor: i64) -> Option<String> {
        if self.users.len() > 1 {
            return Some(format!(
                "sequence {} is shared by tables {}: shardgate does not manage it, so its values \
                 repeat across shards; give each table its own sequence (serial or identity)",
                self.sequence,
                self.users.join(", ")
            ));
        }
        if self.increment < 0 {
            return Some(format!(
                "sequence {} counts down: shardgate does not manage it",
                self.sequence
            ));
        }
        let left = self.max.saturating_sub(floor.max(0)) / i64::from(lanes.max(1));
        if left < MIN_IDS_PER_SHARD {
            return Some(format!(
                "sequence {} ({}) would be exhausted by {lanes} id lanes ({left} ids left per \
                 shard): shardgate does not manage it; make the column bigint",
                self.sequence, self.data_type
            ));
        }
        None
    }
}

/// The sequences of the given tables' columns (serial defaults and identities) on one
/// connection. `$1`: the tables' quoted qualified names.
const FIND: &str = "
WITH rel AS (
    SELECT n AS name, to_regclass(n) AS oid FROM unnest($1::text[]) AS n
),
used_by AS (
    SELECT d.refobjid AS seq, array_agg(DISTINCT ad.adrelid::regclass::text) AS tables
    FROM pg_depend d
    JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
    WHERE d.refclassid = 'pg_class'::regclass
    GROUP BY d.refobjid
),
cols AS (
    SELECT rel.name, rel.oid AS tbl, a.attname AS col, d.refobjid AS seq
    FROM rel
    JOIN pg_attrdef ad ON ad.adrelid = rel.oid
    JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
    JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
        AND d.refclassid = 'pg_class'::regclass
    JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
    UNION
    SELECT rel.name, rel.oid, a.attname, d.objid
    FROM rel
    JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
        AND d.refobjid = rel.oid AND d.deptype = 'i'
    JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
    JOIN pg_attribute a ON a.attrelid = rel.oid AND a.attnum = d.refobjsubid
)
SELECT c.name, n.nspname::text || '.' || t.relname::text, c.col::text, c.seq::regclass::text,
       format_type(p.seqtypid, NULL), p.seqincrement, p.seqmax,
       coalesce(u.tables, ARRAY[]::text[]) || c.tbl::regclass::text
FROM cols c
JOIN pg_class t ON t.oid = c.tbl
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_sequence p ON p.seqrelid = c.seq
LEFT JOIN used_by u ON u.seq = c.seq
ORDER BY 1, 3";

/// The sequences of `tables`' columns on `client`'s database.
pub(crate) async fn find(
    client: &Client,
    tables: &[TablePlan],
) -> Result<Vec<Found>, tokio_postgres::Error> {
    let names: Vec<String> = tables.iter().map(TablePlan::qualified).collect();
    let rows = client.query(FIND, &[&names]).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let sequence: String = r.get(3);
        let mut users: Vec<String> = r.get(7);
        users.sort();
        users.dedup();
        let state = client
            .query_one(
                &format!("SELECT last_value, is_called FROM {sequence}"),
                &[],
            )
            .await?;
        out.push(Found {
            qualified: r.get(0),
            table: r.get(1),
            column: r.get(2),
            sequence,
            data_type: r.get(4),
            increment: r.get(5),
            max: r.get(6),
            users,
            last_value: state.get(0),
            is_called: state.get(1),
        });
    }
    Ok(out)
}

/// The highest value in the column (0 for an empty table). A full scan when the column does
/// not lead an index: only run when a sequence is (re)laned.
pub(crate) async fn column_max(client: &Client, f: &Found) -> Result<i64, tokio_postgres::Error> {
    let sql = format!(
        "SELECT coalesce(max({})::int8, 0) FROM {}",
        ident(&f.column),
        f.qualified
    );
    Ok(client.query_one(&sql, &[]).await?.get(0))
}

/// The smallest value above `floor` (and at least 1) that is ≡ `lane` (mod `lanes`).
pub(crate) fn next_in_lane(floor: i64, lane: u32, lanes: u32) -> i64 {
    let (lane, lanes) = (i64::from(lane), i64::from(lanes.max(1)));
    let above = floor.max(0).saturating_add(1);
    above.saturating_add((lane - above).rem_euclid(lanes))
}

/// Puts `f` on `lane`: steps by `lanes`, next value `next_in_lane(floor)`, in one transaction
/// (the ALTER's lock keeps every `nextval` out until both are done). Returns the next value.
pub(crate) async fn set_lane(
    client: &Client,
    f: &Found,
    lane: u32,
    lanes: u32,
    floor: i64,
) -> Result<i64, tokio_postgres::Error> {
    let next = next_in_lane(floor, lane, lanes);
    // One simple-protocol string: one implicit transaction, rolled back whole on an error.
    let sql = format!(
        "SELECT set_config('lock_timeout', {timeout}, true); \
         ALTER SEQUENCE {seq} INCREMENT BY {lanes}; \
         SELECT setval({name}::regclass, {next}, false)",
        timeout = literal(LOCK_TIMEOUT),
        seq = f.sequence,
        name = literal(&f.sequence),
    );
    client.batch_execute(&sql).await?;
    Ok(next)
}

/// The report line for `f` on `shard`.
pub(crate) fn info(
    shard: &Shard,
    db: &str,
    f: &Found,
    lane: Option<u32>,
    lanes: u32,
    warning: Option<String>,
) -> SequenceInfo {
    SequenceInfo {
        shard: shard.name.clone(),
        database: db.to_owned(),
        table: f.table.clone(),
        column: f.column.clone(),
        sequence: f.sequence.clone(),
        data_type: f.data_type.clone(),
        lane,
        lanes,
        increment: f.increment,
        last_value: f.is_called.then_some(f.last_value),
        on_lane: lane.is_some_and(|l| f.on_lane(l, lanes)),
        warning,
    }
}

#[cfg(test)]
mod tests {
    use super::next_in_lane;

    #[test]
    fn next_value_is_above_the_floor_and_on_the_lane() {
        assert_eq!(next_in_lane(0, 0, 64), 64);
        assert_eq!(next_in_lane(0, 1, 64), 1);
        assert_eq!(next_in_lane(1, 1, 64), 65);
        assert_eq!(next_in_lane(100, 3, 64), 131);
        assert_eq!(next_in_lane(-5, 2, 4), 2);
        for floor in 0..300 {
            for lane in 0..8 {
                let v = next_in_lane(floor, lane, 8);
                assert!(v > floor && v - floor <= 8 && v % 8 == i64::from(lane));
            }
        }
    }
}
