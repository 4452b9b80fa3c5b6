//! Sequences of sharded tables, and the id lanes that keep their values unique across shards.
//!
//! - Lanes (`lanes`): each shard owns a lane in the shard map (`topology::IdLanes`); every
//!   serial/identity sequence of a sharded table steps by `sharding.id_lanes` with values ≡ the
//!   lane. [`apply_id_lanes`] puts every shard's sequences on their lanes (at proxy start) and
//!   installs `shardgate.unique_id()` (`unique_id`).
//! - Moves: the rows a target receives carry values from the sources' sequences, so before
//!   new rows are written on the target its sequences must be past every value the sources
//!   handed out. [`align`] does that inside the cutover and puts the target on its lane in the
//!   map about to be published (a new shard gets its lane before it takes writes); values move
//!   past the sources' but stay on the target's lane. `shardgate.unique_id()` on a new shard is
//!   the proxies' work when they follow the new map (`apply_id_lanes`).

mod lanes;
mod unique_id;

use std::collections::BTreeMap;
use std::time::Duration;

use shardgate_config::{Config, Shard};
use shardgate_topology::{IdLanes, ShardMap};

use super::conn::Conns;
use super::ctx::Ctx;
use super::error::{EngineError, ShardError};
use super::plan::{self, PlanError, TablePlan};

pub use lanes::{SequenceInfo, SequencesReport};
pub use unique_id::decode as decode_unique_id;

/// Bound on a whole apply or inspection at proxy start or for the API (every statement is
/// bounded too; this caps the sum over shards).
pub const SEQUENCES_TIMEOUT: Duration = Duration::from_secs(60);

/// Moves each target's sequences of the sharded tables past the highest value any of its
/// sources has handed out (never backwards), on the target's lane in the job's new map.
/// Runs with the fence closed, so no moving row can take a newer value meanwhile.
pub(crate) async fn align(ctx: &Ctx, conns: &mut Conns) -> Result<(), EngineError> {
    let plan = &ctx.plan;
    let new_shards = ctx.job.lock().await.new_shards.clone();
    let lanes = lanes_after(ctx, &new_shards).await?;
    let pairs = plan
        .targets()
        .into_iter()
        .map(|t| {
            let from = plan.moves_to(&t.name).map(|m| m.source.clone()).collect();
            (t.clone(), from)
        })
        .collect();
    align_pairs(ctx, conns, pairs, &lanes).await
}

/// The reverse, when a committed move is undone: each source's sequences move past the values
/// its targets handed out since the commit, on its lane in the map the revert publishes.
pub(crate) async fn align_back(ctx: &Ctx, conns: &mut Conns) -> Result<(), EngineError> {
    let plan = &ctx.plan;
    let old_shards = ctx.job.lock().await.old_shards.clone();
    let lanes = lanes_after(ctx, &old_shards).await?;
    let pairs = plan
        .sources()
        .into_iter()
        .map(|s| {
            let from = plan.moves_from(&s.name).map(|m| m.target.clone()).collect();
            (s.clone(), from)
        })
        .collect();
    align_pairs(ctx, conns, pairs, &lanes).await
}

/// The lanes the store will hold once `shards` is published over its current map (the
/// publish is a compare-and-swap on that map's version, so these are exactly its lanes).
async fn lanes_after(ctx: &Ctx, shards: &[Shard]) -> Result<IdLanes, EngineError> {
    let map =
        ctx.store.shard_map().await.map_err(|e| {
            EngineError::Store(format!("reading the shard map for the id lanes: {e}"))
        })?;
    Ok(map.id_lanes.for_shards(shards))
}

async fn align_pairs(
    ctx: &Ctx,
    conns: &mut Conns,
    pairs: Vec<(Shard, Vec<Shard>)>,
    lanes: &IdLanes,
) -> Result<(), EngineError> {
    let plan = &ctx.plan;
    let count = ctx.config.sharding.id_lanes;
    for (target, sources) in &pairs {
        let lane = lanes.lane(&target.name).filter(|_| count > 0);
        if let Some(lane) = lane.filter(|l| *l >= count) {
            // Values ≡ lane mod count would fall on another shard's lane.
            return Err(EngineError::Refused(format!(
                "shard {} would take id lane {lane}, but sharding.id_lanes is {count}: every \
                 lane has been used (lanes of removed shards are never reused); raise \
                 sharding.id_lanes (up to 1024) and reload, then add the shard again",
                target.name
            )));
        }
        for db in &plan.databases {
            let found = {
                let client = conns.get(target, db).await?;
                lanes::find(client, &plan.tables)
                    .await
                    .map_err(|e| on(target, db, &e))?
            };
            for f in found {
                // The same sequence name on the other side (the schema was copied).
                let read = format!(
                    "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END \
                     FROM {}",
                    f.sequence
                );
                let mut highest: Option<i64> = None;
                for source in sources {
                    let exists = conns
                        .one(
                            source,
                            db,
                            "SELECT to_regclass($1) IS NOT NULL",
                            &[&f.sequence],
                        )
                        .await?
                        .get::<_, bool>(0);
                    if exists {
                        let v: i64 = conns.one(source, db, &read, &[]).await?.get(0);
                        highest = Some(highest.map_or(v, |h| h.max(v)));
                    }
                }
                let client = conns.get(target, db).await?;
                match lane {
                    Some(lane) => {
                        // Past the sources' values, the target's own and every row it holds
                        // now (moved rows included), on its lane.
                        let have = lanes::column_max(client, &f)
                            .await
                            .map_err(|e| on(target, db, &e))?;
                        let floor = highest.unwrap_or(0).max(have).max(f.used());
                        if let Some(why) = f.unmanageable(count, floor) {
                            tracing::warn!(job = %plan.job_id, shard = %target.name, db = %db, table = %f.table, "{why}");
                            plain_setval(client, &f, highest)
                                .await
                                .map_err(|e| on(target, db, &e))?;
                            continue;
                        }
                        let next = lanes::set_lane(client, &f, lane, count, floor)
                            .await
                            .map_err(|e| on(target, db, &e))?;
                        tracing::debug!(job = %plan.job_id, shard = %target.name, seq = %f.sequence, lane, next, "sequence on its lane, past the other side's");
                    }
                    None => {
                        plain_setval(client, &f, highest)
                            .await
                            .map_err(|e| on(target, db, &e))?;
                    }
                }
            }
            // shardgate.unique_id() is installed by the proxies once they follow the new map
            // (the rebalancer leaves no object of its own behind on a shard).
        }
    }
    Ok(())
}

/// Without lanes: the sequence moves past `highest` (never backwards).
async fn plain_setval(
    client: &tokio_postgres::Client,
    f: &lanes::Found,
    highest: Option<i64>,
) -> Result<(), tokio_postgres::Error> {
    let Some(highest) = highest else {
        return Ok(());
    };
    let sql = format!(
        "SELECT setval($1::text::regclass, greatest((SELECT CASE WHEN is_called THEN last_value \
         ELSE last_value - 1 END FROM {}), $2::int8, 1))",
        f.sequence
    );
    client.execute(&sql, &[&f.sequence, &highest]).await?;
    Ok(())
}

fn on(shard: &Shard, db: &str, e: &tokio_postgres::Error) -> ShardError {
    ShardError::statement(&shard.name, db, e)
}

/// What [`apply_id_lanes`] and [`inspect_sequences`] work on: the databases of
/// `[rebalance] databases` and the config's sharded tables.
fn scope(config: &Config) -> Result<(Vec<String>, Vec<TablePlan>), PlanError> {
    Ok((config.rebalance.databases.clone(), plan::tables(config)?))
}

/// Puts every shard's sequences of sharded tables on the shard's lane of `map` (idempotent:
/// one already on its lane is left alone) and installs `shardgate.unique_id()`, on every
/// primary of the map and every database of `[rebalance] databases`, then reports them. A
/// sequence is started above the highest value of its column and of its sequence on every
/// shard, so no new id repeats one handed out before lanes existed. What cannot be done
/// (a shard down, a shared or too small sequence, a lock wait) is a warning naming the table.
pub async fn apply_id_lanes(config: &Config, map: &ShardMap) -> SequencesReport {
    run(config, map, true).await
}

/// The report of [`apply_id_lanes`] without changing anything.
pub async fn inspect_sequences(config: &Config, map: &ShardMap) -> SequencesReport {
    run(config, map, false).await
}

async fn run(config: &Config, map: &ShardMap, apply: bool) -> SequencesReport {
    let lanes = config.sharding.id_lanes;
    let mut report = SequencesReport {
        lanes,
        ..SequencesReport::default()
    };
    let (databases, tables) = match scope(config) {
        Ok(s) => s,
        Err(e) => {
            report.warnings.push(e.to_string());
            return report;
        }
    };
    if databases.is_empty() && !tables.is_empty() {
        report.warnings.push(
            "rebalance.databases is empty: shardgate does not know which databases hold the \
             sharded tables, so their sequences are not on id lanes (list them there)"
                .into(),
        );
        return report;
    }
    let work = async {
        let mut conns = Conns::new(config.rebalance.clone());
        for db in &databases {
            run_db(&mut conns, map, db, &tables, lanes, apply, &mut report).await;
        }
    };
    if tokio::time::timeout(SEQUENCES_TIMEOUT, work).await.is_err() {
        report.warnings.push(format!(
            "looking at the sequences took longer than {SEQUENCES_TIMEOUT:?}; the report is \
             incomplete"
        ));
    }
    report
}

async fn run_db(
    conns: &mut Conns,
    map: &ShardMap,
    db: &str,
    tables: &[TablePlan],
    lanes: u32,
    apply: bool,
    report: &mut SequencesReport,
) {
    // Every reachable shard's sequences, by (table, column).
    let mut groups: BTreeMap<(String, String), Vec<(&Shard, lanes::Found)>> = BTreeMap::new();
    let mut reachable: Vec<&Shard> = Vec::new();
    for shard in &map.shards {
        let found = match conns.get(shard, db).await {
            Ok(client) => lanes::find(client, tables)
                .await
                .map_err(|e| on(shard, db, &e)),
            Err(e) => Err(e),
        };
        match found {
            Ok(found) => {
                reachable.push(shard);
                for f in found {
                    groups
                        .entry((f.table.clone(), f.column.clone()))
                        .or_default()
                        .push((shard, f));
                }
            }
            Err(e) => report.warnings.push(format!("sequences not checked: {e}")),
        }
    }
    for ((table, _), members) in &mut groups {
        let off = members
            .iter()
            .any(|(s, f)| lanes > 0 && map.lane(&s.name).is_some_and(|l| !f.on_lane(l, lanes)));
        // The floor, only needed (and the column scans only paid) when something moves.
        let mut floor = 0i64;
        if apply && off {
            for (shard, f) in members.iter() {
                floor = floor.max(f.used());
                let max = match conns.get(shard, db).await {
                    Ok(client) => lanes::column_max(client, f)
                        .await
                        .map_err(|e| on(shard, db, &e)),
                    Err(e) => Err(e),
                };
                match max {
                    Ok(m) => floor = floor.max(m),
                    Err(e) => report.warnings.push(format!("table {table}: {e}")),
                }
            }
        }
        for (shard, f) in members.iter_mut() {
            let lane = map.lane(&shard.name).filter(|_| lanes > 0);
            if let Some(l) = lane.filter(|l| *l >= lanes) {
                let w = format!(
                    "shard {} has id lane {l}, not below sharding.id_lanes ({lanes}): its                      sequences are not managed; raise sharding.id_lanes",
                    shard.name
                );
                report
                    .warnings
                    .push(format!("database {db} table {table}: {w}"));
                report
                    .sequences
                    .push(lanes::info(shard, db, f, lane, lanes, Some(w)));
                continue;
            }
            let mut warning = lane.and_then(|_| {
                if f.on_lane(lane.unwrap_or(0), lanes) {
                    None
                } else {
                    f.unmanageable(lanes, floor.max(f.used()))
                }
            });
            if let (true, Some(l), None) = (apply, lane, &warning) {
                if !f.on_lane(l, lanes) {
                    let done = match conns.get(shard, db).await {
                        Ok(client) => lanes::set_lane(client, f, l, lanes, floor)
                            .await
                            .map_err(|e| on(shard, db, &e)),
                        Err(e) => Err(e),
                    };
                    match done {
                        Ok(next) => {
                            tracing::info!(shard = %shard.name, db, table = %table, sequence = %f.sequence, lane = l, lanes, next, "sequence put on its id lane");
                            f.increment = i64::from(lanes);
                            f.last_value = next;
                            f.is_called = false;
                        }
                        Err(e) => {
                            warning = Some(format!(
                                "cannot put sequence {} on id lane {l}: {e}",
                                f.sequence
                            ))
                        }
                    }
                }
            }
            if let Some(w) = &warning {
                report.warnings.push(format!(
                    "shard {} database {db} table {table}: {w}",
                    shard.name
                ));
            }
            report
                .sequences
                .push(lanes::info(shard, db, f, lane, lanes, warning));
        }
    }
    if apply && lanes > 0 {
        for shard in reachable {
            let Some(lane) = map.lane(&shard.name).filter(|l| *l < lanes) else {
                continue;
            };
            let installed = match conns.get(shard, db).await {
                Ok(client) => unique_id::install(client, lane)
                    .await
                    .map_err(|e| on(shard, db, &e)),
                Err(e) => Err(e),
            };
            if let Err(e) = installed {
                report
                    .warnings
                    .push(format!("shardgate.unique_id() not installed: {e}"));
            }
        }
    }
}

/// The sequences of the rebalancer's topology store map (`GET /api/v1/sequences`).
impl super::Rebalancer {
    pub async fn sequences(&self) -> Result<SequencesReport, super::RebalanceError> {
        let map = self.store.shard_map().await.map_err(super::store_error)?;
        let config = (self.config)();
        Ok(inspect_sequences(&config, &map).await)
    }
}
