//! The sharding readiness report (`GET /api/v1/readiness`, `shardgate admin readiness`): what
//! an observing proxy (`[sharding] mode = "observe"`) saw its traffic would do if sharded by the
//! configured rules.

use serde::{Deserialize, Serialize};

use crate::table::{render, Align};

/// How the calls of one statement (or of all) would be routed.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct WouldRoute {
    pub calls: u64,
    pub single_shard: u64,
    /// Reads of several shards, merged in the proxy or gathered into PostgreSQL.
    pub scatter: u64,
    /// DDL, reference-table writes and keyless writes (when broadcast) on every shard.
    pub broadcast: u64,
    /// Multi-row INSERTs and COPYs split by key.
    pub split: u64,
    pub refused: u64,
}

/// One statement shape of the observed traffic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObservedStatement {
    /// The fingerprint's id (as in `/api/v1/queries`) and text.
    pub id: String,
    pub query: String,
    /// The first call's text as sent (cut to 500 characters): it may hold literal values.
    pub example: String,
    pub routes: WouldRoute,
    /// For a scatter: how the shards' rows would be combined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// For a refusal: SQLSTATE and why (keyless write, cross-shard feature not supported, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// It would run, but read an unsharded table (whose rows only the default shard has) next
    /// to sharded ones: its answer would miss rows on the other shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caveat: Option<String>,
}

/// A table that is neither sharded nor a reference table, as the traffic used it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableUse {
    pub table: String,
    /// Calls of statements that read it and that wrote it.
    pub reads: u64,
    pub writes: u64,
    /// Calls that used it together with a sharded table (a join or subquery).
    pub with_sharded: u64,
    /// The most rows one read of it alone returned (its size, as far as observed).
    pub max_rows_read: u64,
    /// It looks like a reference table: joined with sharded tables, rarely written (at most
    /// one call in ten), and small as far as seen (no read of it alone returned more than
    /// 10,000 rows).
    pub reference_candidate: bool,
}

/// The slots of the ring the observed keys fall in.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KeySkew {
    /// Keys seen (one per key a call named) and the distinct slots they fell in, of `slots`.
    pub keys: u64,
    pub slots_seen: u64,
    pub slots: u64,
    /// The busiest slots: (slot, the shard it would be on, keys).
    pub top_slots: Vec<SlotCount>,
    /// Each planned shard's share of the keys (1/shards is even).
    pub shard_shares: Vec<ShardShare>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SlotCount {
    pub slot: i64,
    pub shard: String,
    pub keys: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardShare {
    pub shard: String,
    pub share: f64,
}

/// `GET /api/v1/readiness`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ShardingReadiness {
    /// The shards the statements were planned for (`sharding.observe_shards`).
    pub planned_shards: u32,
    pub totals: WouldRoute,
    /// Share of the calls that would run on one shard (0..=1).
    pub single_shard_share: f64,
    /// Statements with at least one refused call, most calls first.
    pub refused: Vec<ObservedStatement>,
    /// Statements that would read several shards or run on every one, most calls first.
    pub multi_shard: Vec<ObservedStatement>,
    /// Statements that would run but read unsharded tables next to sharded ones.
    #[serde(default)]
    pub caveats: Vec<ObservedStatement>,
    pub tables: Vec<TableUse>,
    pub key_skew: KeySkew,
    /// Statement shapes tracked (bounded by `stats.max_queries`) and dropped.
    pub statements_tracked: u64,
    pub statements_evicted: u64,
}

/// The report for people.
pub(crate) fn readiness_text(r: ShardingReadiness) -> String {
    let t = &r.totals;
    let mut out = format!(
        "planned for {} shards: {} calls observed, {:.1}% would run on one shard \
         ({} single-shard, {} scatter, {} broadcast, {} split, {} refused)\n",
        r.planned_shards,
        t.calls,
        100.0 * r.single_shard_share,
        t.single_shard,
        t.scatter,
        t.broadcast,
        t.split,
        t.refused
    );
    out.push_str("\nwould be refused:\n");
    if r.refused.is_empty() {
        out.push_str("  nothing\n");
    }
    for s in &r.refused {
        out.push_str(&format!(
            "  {} calls  {}\n    why: {}\n    e.g. {}\n",
            s.routes.refused,
            s.query,
            s.refusal.as_deref().unwrap_or("-"),
            s.example
        ));
    }
    out.push_str("\nwould run on several shards:\n");
    if r.multi_shard.is_empty() {
        out.push_str("  nothing\n");
    }
    for s in &r.multi_shard {
        let (n, kind) = if s.routes.scatter > 0 {
            (s.routes.scatter, "scatter")
        } else if s.routes.broadcast > 0 {
            (s.routes.broadcast, "broadcast")
        } else {
            (s.routes.split, "split")
        };
        out.push_str(&format!("  {n} calls {kind}  {}\n", s.query));
        if let Some(how) = &s.strategy {
            out.push_str(&format!("    how: {how}\n"));
        }
    }
    out.push_str("\nwould miss rows (unsharded tables read with sharded ones):\n");
    if r.caveats.is_empty() {
        out.push_str("  nothing\n");
    }
    for s in &r.caveats {
        out.push_str(&format!(
            "  {} calls  {}\n    why: {}\n",
            s.routes.calls,
            s.query,
            s.caveat.as_deref().unwrap_or("-")
        ));
    }
    out.push_str("\nunsharded tables:\n");
    if r.tables.is_empty() {
        out.push_str("  none seen\n");
    } else {
        let rows: Vec<Vec<String>> = r
            .tables
            .iter()
            .map(|t| {
                vec![
                    t.table.clone(),
                    t.reads.to_string(),
                    t.writes.to_string(),
                    t.with_sharded.to_string(),
                    t.max_rows_read.to_string(),
                    if t.reference_candidate {
                        "looks like a reference table"
                    } else {
                        "-"
                    }
                    .to_owned(),
                ]
            })
            .collect();
        let columns = [
            ("TABLE", Align::Left),
            ("READS", Align::Right),
            ("WRITES", Align::Right),
            ("WITH_SHARDED", Align::Right),
            ("MAX_ROWS", Align::Right),
            ("NOTE", Align::Left),
        ];
        for line in render(&columns, &rows).lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    let k = &r.key_skew;
    out.push_str(&format!(
        "\nkey skew: {} keys in {} of {} slots\n",
        k.keys, k.slots_seen, k.slots
    ));
    let shares: Vec<String> = k
        .shard_shares
        .iter()
        .map(|s| format!("{} {:.1}%", s.shard, 100.0 * s.share))
        .collect();
    if !shares.is_empty() {
        out.push_str(&format!("  per shard: {}\n", shares.join(", ")));
    }
    let top: Vec<String> = k
        .top_slots
        .iter()
        .map(|s| format!("slot {} ({}) {} keys", s.slot, s.shard, s.keys))
        .collect();
    if !top.is_empty() {
        out.push_str(&format!("  busiest: {}\n", top.join("; ")));
    }
    out
}
