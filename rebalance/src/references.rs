//! Reference tables (`[[sharding.reference_tables]]`, a copy on every shard) in a rebalance and
//! their check.
//!
//! - A shard that joins the map gets every reference table during Preparing, before it is
//!   published in the ring: the schema if it lacks the table (`pg_dump --schema-only`), then
//!   the rows, dumped from a shard already in the map in one snapshot and loaded in one
//!   transaction (its copy emptied first). Writes to reference tables while the job runs reach
//!   the shards of the current map only: the check after the job finds a new shard that missed
//!   one and copies the tables to it again (every proxy routes by the new map by then); a
//!   drift left after that is logged and noted in the job.
//! - [`verify_references`] (`shardgate admin verify references`, `GET
//!   /api/v1/verify/references`, and after every job) compares each table's row count and an
//!   order-independent checksum (the sum of each row's md5 as a number) across the shards.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shardgate_config::{Config, Shard, Sharding};
use shardgate_topology::ShardMap;

use super::conn::Conns;
use super::ctx::{Ctx, Stop};
use super::plan::ident;
use super::schema_copy;

/// The whole check is bounded: a shard that does not answer is reported, not waited for.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);

/// A reference table as the rebalancer names it on each shard: an unqualified config name
/// means `public` (as for sharded tables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReferenceTable {
    pub schema: String,
    pub name: String,
}

impl ReferenceTable {
    pub fn qualified(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
    }

    pub fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// The configured reference tables.
pub(crate) fn reference_tables(sharding: &Sharding) -> Vec<ReferenceTable> {
    sharding
        .reference_tables
        .iter()
        .map(|t| {
            let name = t.name.trim();
            let (schema, table) = name.split_once('.').unwrap_or(("public", name));
            let fold = |s: &str| {
                let s = s.trim();
                match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                    Some(quoted) => quoted.replace("\"\"", "\""),
                    None => s.to_lowercase(),
                }
            };
            ReferenceTable {
                schema: fold(schema),
                name: fold(table),
            }
        })
        .collect()
}

/// Whether the job added shards to the map.
pub(crate) async fn added_shards(ctx: &Ctx) -> bool {
    let job = ctx.job.lock().await;
    job.new_shards
        .iter()
        .any(|n| !job.old_shards.iter().any(|o| o.name == n.name))
}

/// Gives every shard the job adds to the map its copy of each reference table (see the module
/// doc), from a shard of the current map.
pub(crate) async fn copy_to_new_shards(ctx: &Ctx, conns: &mut Conns) -> Result<(), Stop> {
    let tables = reference_tables(&ctx.config.sharding);
    if tables.is_empty() {
        return Ok(());
    }
    let (old, new): (Vec<Shard>, Vec<Shard>) = {
        let job = ctx.job.lock().await;
        (job.old_shards.clone(), job.new_shards.clone())
    };
    let Some(source) = old.iter().find(|s| new.iter().any(|n| n.name == s.name)) else {
        return Ok(());
    };
    let plan = &ctx.plan;
    for target in new.iter().filter(|n| !old.iter().any(|o| o.name == n.name)) {
        for db in &plan.databases {
            // Only tables the source has (a database without them is not copied into).
            let mut present = Vec::new();
            let mut missing = Vec::new();
            for t in &tables {
                let on_source: bool = conns
                    .one(
                        source,
                        db,
                        "SELECT to_regclass($1) IS NOT NULL",
                        &[&t.qualified()],
                    )
                    .await?
                    .get(0);
                if !on_source {
                    continue;
                }
                let on_target: bool = conns
                    .one(
                        target,
                        db,
                        "SELECT to_regclass($1) IS NOT NULL",
                        &[&t.qualified()],
                    )
                    .await?
                    .get(0);
                if !on_target {
                    missing.push(t.clone());
                }
                present.push(t.clone());
            }
            if present.is_empty() {
                continue;
            }
            for t in &missing {
                if t.schema != "public" {
                    let q = format!("CREATE SCHEMA IF NOT EXISTS {}", ident(&t.schema));
                    conns.exec(target, db, &q).await?;
                }
            }
            let names: Vec<String> = present.iter().map(ReferenceTable::qualified).collect();
            if !missing.is_empty() {
                let missing: Vec<String> = missing.iter().map(ReferenceTable::qualified).collect();
                tracing::info!(job = %plan.job_id, target = %target.name, db = %db, tables = missing.len(), "copying reference tables' schema to the new shard");
                schema_copy::schema_only(source, target, db, &missing, &ctx.config.rebalance)
                    .await?;
            }
            // Emptied first (a shard added again may keep an old copy; a copy again after the
            // job has rows that moved sharded rows refer to), in the same transaction as the
            // load, with triggers and foreign-key checks off as in a replication apply: the
            // rows come back with the same keys.
            let prelude: String =
                std::iter::once("SET LOCAL session_replication_role = replica;\n".to_owned())
                    .chain(names.iter().rev().map(|n| format!("DELETE FROM {n};\n")))
                    .collect();
            tracing::info!(job = %plan.job_id, source = %source.name, target = %target.name, db = %db, tables = names.len(), "copying reference tables' rows to the new shard");
            schema_copy::copy_data(source, target, db, &names, &prelude, &ctx.config.rebalance)
                .await?;
            ctx.check()?;
        }
    }
    Ok(())
}

/// At the end of a job's cleanup (every proxy routes by the new map): the reference tables'
/// copies on the shards of the map, compared; a shard the job added that missed a write made
/// while the job ran gets the tables copied again. Returns the note for the job's message
/// when copies still differ (also logged).
pub(crate) async fn check_after_job(ctx: &Ctx, conns: &mut Conns) -> Option<String> {
    if ctx.config.sharding.reference_tables.is_empty() {
        return None;
    }
    let map = match ctx.store.shard_map().await {
        Ok(map) => map,
        Err(e) => {
            tracing::warn!(job = %ctx.plan.job_id, error = %e, "cannot read the shard map to compare the reference tables");
            return None;
        }
    };
    let mut report = verify_references(&ctx.config, &map).await;
    if report.drift && added_shards(ctx).await {
        // A write to a reference table while the job ran reached the old map's shards only.
        tracing::info!(job = %ctx.plan.job_id, "reference tables differ after adding a shard: copying them to it again");
        if let Err(e) = copy_to_new_shards(ctx, conns).await {
            tracing::warn!(job = %ctx.plan.job_id, error = ?e, "copying the reference tables again failed");
        }
        report = verify_references(&ctx.config, &map).await;
    }
    if !report.drift {
        tracing::info!(job = %ctx.plan.job_id, tables = report.tables.len(), "reference tables are identical on every shard after the rebalance");
        return None;
    }
    let drifted: Vec<String> = report
        .tables
        .iter()
        .filter(|t| t.drift)
        .map(|t| format!("{}.{}", t.database, t.table))
        .chain(report.warnings.iter().cloned())
        .collect();
    tracing::warn!(job = %ctx.plan.job_id, tables = ?drifted, "reference tables differ between shards after the rebalance: see `shardgate admin verify references`");
    Some(format!(
        " (reference tables differ between shards: {}; see `shardgate admin verify references`)",
        drifted.join(", ")
    ))
}

/// One shard's copy of a reference table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReferenceCopy {
    pub shard: String,
    /// `None` when the shard could not be read (see `error`).
    pub rows: Option<i64>,
    /// Order-independent: the sum over rows of each row's md5 read as a 64-bit number.
    pub checksum: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One reference table in one database, across the shards.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReferenceTableCheck {
    pub database: String,
    pub table: String,
    pub copies: Vec<ReferenceCopy>,
    /// The copies differ (count or checksum), or one could not be read.
    pub drift: bool,
}

/// `shardgate admin verify references` / `GET /api/v1/verify/references`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReferencesReport {
    pub tables: Vec<ReferenceTableCheck>,
    /// Any table drifted.
    pub drift: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

fn checksum_sql(table: &ReferenceTable) -> String {
    format!(
        "SELECT count(*)::int8, coalesce(sum(('x' || substr(md5(t::text), 1, 16))::bit(64)::int8::numeric), 0)::text FROM {} t",
        table.qualified()
    )
}

/// Compares every reference table's copies on the shards of `map`, in each database of
/// `rebalance.databases`.
pub async fn verify_references(config: &Config, map: &ShardMap) -> ReferencesReport {
    let tables = reference_tables(&config.sharding);
    let mut report = ReferencesReport::default();
    if tables.is_empty() {
        return report;
    }
    if config.rebalance.databases.is_empty() {
        report.warnings.push(
            "rebalance.databases is empty: shardgate does not know which databases hold the \
             reference tables (list them there)"
                .into(),
        );
        return report;
    }
    let work = async {
        let mut conns = Conns::new(config.rebalance.clone());
        let mut checks = Vec::new();
        for db in &config.rebalance.databases {
            for t in &tables {
                let mut copies = Vec::new();
                for shard in &map.shards {
                    let copy = match conns.one(shard, db, &checksum_sql(t), &[]).await {
                        Ok(row) => ReferenceCopy {
                            shard: shard.name.clone(),
                            rows: Some(row.get(0)),
                            checksum: Some(row.get(1)),
                            error: None,
                        },
                        Err(e) => {
                            conns.drop_conn(shard, db);
                            ReferenceCopy {
                                shard: shard.name.clone(),
                                rows: None,
                                checksum: None,
                                error: Some(e.to_string()),
                            }
                        }
                    };
                    copies.push(copy);
                }
                let drift = copies.iter().any(|c| {
                    c.error.is_some()
                        || c.rows != copies[0].rows
                        || c.checksum != copies[0].checksum
                });
                checks.push(ReferenceTableCheck {
                    database: db.clone(),
                    table: t.display(),
                    copies,
                    drift,
                });
            }
        }
        checks
    };
    match tokio::time::timeout(VERIFY_TIMEOUT, work).await {
        Ok(checks) => report.tables = checks,
        Err(_) => report.warnings.push(format!(
            "comparing the reference tables took longer than {VERIFY_TIMEOUT:?}; nothing was compared"
        )),
    }
    report.drift = report.tables.iter().any(|t| t.drift) || !report.warnings.is_empty();
    for t in report.tables.iter().filter(|t| t.drift) {
        tracing::warn!(database = %t.database, table = %t.table, copies = ?t.copies, "reference table copies differ between shards");
    }
    report
}

/// The reference tables of the rebalancer's topology store map.
impl super::Rebalancer {
    pub async fn verify_references(&self) -> Result<ReferencesReport, super::RebalanceError> {
        let map = self.store.shard_map().await.map_err(super::store_error)?;
        let config = (self.config)();
        Ok(verify_references(&config, &map).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_become_schema_and_table() {
        let mut c = Sharding::default();
        for n in ["plans", "ops.Countries", "\"Flags\""] {
            c.reference_tables
                .push(shardgate_config::ReferenceTable { name: n.into() });
        }
        let t = reference_tables(&c);
        assert_eq!(t[0].qualified(), "\"public\".\"plans\"");
        assert_eq!(t[1].display(), "ops.countries");
        assert_eq!(t[2].name, "Flags");
        assert!(checksum_sql(&t[0]).contains("FROM \"public\".\"plans\" t"));
    }
}
