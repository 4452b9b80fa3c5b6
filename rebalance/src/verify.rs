//! Verification of a move: per move, database and table, the row count and an
//! order-independent checksum of the moving rows must be equal on the source and the target.
//!
//! The counts run on snapshots taken inside the cutover (fenced, drained, the target caught up
//! to the fence) and are read after the new map is published: scanning every moved row takes
//! far longer than the rest of the cutover, and the fence need not wait for it. The sources
//! keep their rows until verification has passed.

use std::collections::BTreeSet;

use shardgate_config::Shard;
use shardgate_topology::VerifiedTable;

use super::conn::{pg_err, sqlstate, Conns};
use super::ctx::Ctx;
use super::error::ShardError;
use super::plan::Plan;
use super::sql;

/// Every (shard, database) connection a verification reads from, once each.
fn endpoints(plan: &Plan) -> Vec<(Shard, String)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for db in &plan.databases {
        for m in &plan.moves {
            for shard in [&m.source, &m.target] {
                if seen.insert((shard.name.clone(), db.clone())) {
                    out.push((shard.clone(), db.clone()));
                }
            }
        }
    }
    out
}

/// Opens a read-only REPEATABLE READ transaction on every connection the verification uses and
/// takes its snapshot now.
pub(crate) async fn take_snapshots(plan: &Plan, conns: &mut Conns) -> Result<(), ShardError> {
    for (shard, db) in endpoints(plan) {
        conns
            .exec(
                &shard,
                &db,
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            )
            .await?;
        // The snapshot is taken by the first query, not by BEGIN.
        conns.one(&shard, &db, "SELECT 1", &[]).await?;
    }
    Ok(())
}

/// Ends the snapshot transactions (a connection that cannot is dropped and reopened later).
pub(crate) async fn end_snapshots(plan: &Plan, conns: &mut Conns) {
    for (shard, db) in endpoints(plan) {
        // COMMIT outside a transaction only warns.
        if conns.exec(&shard, &db, "COMMIT").await.is_err() {
            conns.drop_conn(&shard, &db);
        }
    }
}

/// Count and checksum of each move's rows on its source and its target, per database and
/// table, all queries in flight together: the figures found equal, per move, database and
/// table. `Unproven` is a mismatch, `Unreachable` a failed query.
pub(crate) async fn verify(
    ctx: &Ctx,
    conns: &mut Conns,
) -> Result<Vec<VerifiedTable>, VerifyError> {
    let plan = &ctx.plan;
    let mut keys = Vec::new();
    for db in &plan.databases {
        for m in &plan.moves {
            keys.push((&m.source, db.as_str()));
            keys.push((&m.target, db.as_str()));
        }
    }
    let clients = conns.clients(&keys).await?;
    let mut checks = Vec::new();
    let mut k = 0;
    for db in &plan.databases {
        for m in &plan.moves {
            let (src, dst) = (clients[k], clients[k + 1]);
            k += 2;
            for t in &plan.tables {
                let q = sql::count_and_checksum(plan, t, &m.slots);
                checks.push(async move {
                    let (s, r) = tokio::join!(src.query_one(&q, &[]), dst.query_one(&q, &[]));
                    let err = |e: tokio_postgres::Error, shard: &str| ShardError::Statement {
                        shard: shard.to_owned(),
                        db: db.clone(),
                        sqlstate: sqlstate(&e),
                        message: format!("verifying: {}", pg_err(&e)),
                    };
                    let s = s.map_err(|e| err(e, &m.source.name))?;
                    let r = r.map_err(|e| err(e, &m.target.name))?;
                    let (sc, ss): (i64, String) = (s.get(0), s.get(1));
                    let (tc, ts): (i64, String) = (r.get(0), r.get(1));
                    if sc != tc || ss != ts {
                        return Err(VerifyError::Unproven(format!(
                            "verification failed for table {} in database {db}, move {} → {}: \
                             the source has {sc} rows (checksum {ss}), the target {tc} \
                             (checksum {ts}) — check for writes that bypass the fence (a \
                             session with shardgate.bypass on, or session_replication_role = \
                             replica)",
                            t.display(),
                            m.source.name,
                            m.target.name
                        )));
                    }
                    Ok::<_, VerifyError>(VerifiedTable {
                        move_index: m.index,
                        database: db.clone(),
                        table: t.display(),
                        rows: sc,
                        checksum: ss,
                    })
                });
            }
        }
    }
    let mut verified = Vec::new();
    let mut failed = None;
    for result in futures_util::future::join_all(checks).await {
        match result {
            Ok(v) => verified.push(v),
            // A mismatch outweighs a failed query: it is the reason to keep the sources.
            Err(e @ VerifyError::Unproven(_)) => return Err(e),
            Err(e) => failed = Some(e),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(verified),
    }
}

/// Rows verified per move (summed over databases and tables).
pub(crate) fn rows_per_move(plan: &Plan, verified: &[VerifiedTable]) -> Vec<u64> {
    let mut rows = vec![0u64; plan.moves.len()];
    for v in verified {
        if let Some(r) = rows.get_mut(v.move_index) {
            *r += v.rows.max(0) as u64;
        }
    }
    rows
}

/// Why a committed move's rows may not be deleted from its sources (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum VerifyError {
    /// A check could not run (a shard did not answer, a query failed): nothing was decided;
    /// running it again may succeed.
    #[error(transparent)]
    Unreachable(#[from] ShardError),
    /// A check ran and does not prove that the targets hold every moved row: the sources keep
    /// theirs, and their fences.
    #[error("{0}")]
    Unproven(String),
}

/// Before a resumed cleanup deletes anything: the sources' moved rows (fenced since the
/// cutover, so unchanged) must still match the figures saved for them.
pub(crate) async fn reverify(
    ctx: &Ctx,
    conns: &mut Conns,
    recorded: &[VerifiedTable],
) -> Result<(), VerifyError> {
    let plan = &ctx.plan;
    for v in recorded {
        let m = plan.moves.get(v.move_index).ok_or_else(|| {
            VerifyError::Unproven(format!(
                "the verification record names move {}, which the plan lacks",
                v.move_index
            ))
        })?;
        let t = plan
            .tables
            .iter()
            .find(|t| t.display() == v.table)
            .ok_or_else(|| {
                VerifyError::Unproven(format!(
                    "the verification record names table {}, which the plan lacks",
                    v.table
                ))
            })?;
        let row = conns
            .one(
                &m.source,
                &v.database,
                &sql::count_and_checksum(plan, t, &m.slots),
                &[],
            )
            .await?;
        let (rows, checksum): (i64, String) = (row.get(0), row.get(1));
        if rows != v.rows || checksum != v.checksum {
            return Err(VerifyError::Unproven(format!(
                "shard {} database {} table {}: the moved rows changed since they were verified \
                 ({} rows, checksum {}; now {rows}, {checksum}) although the fence held them; \
                 find the writer that bypassed the fence",
                m.source.name, v.database, v.table, v.rows, v.checksum
            )));
        }
    }
    Ok(())
}

/// The proof for a committed move whose cutover figures were never saved (the runner died
/// between the publish and saving them, or the snapshot queries failed). Comparing the sources
/// with the targets as they are now proves nothing: the targets own the moved keys since the
/// publish and take the clients' inserts, updates and deletes, so a difference is expected and
/// an equality would be luck. What stays true under those writes is how the targets got their
/// copies — by replication, which applies every change of the source in commit order:
///
/// - the job's fence is still closed on every source (so no moved row changed there since the
///   cutover, and the figures returned below stay valid until the rows are deleted);
/// - every sharded table of each move's subscription is in state `r` (its initial copy is
///   complete and it has streamed since), and
/// - the last cutover marker of each source — inserted after the fence closed and every older
///   transaction ended — is on the target: everything the source committed before it, which
///   is every change to the moved rows, was applied there.
///
/// The caller has also waited for every target to confirm flushing all the source's WAL up to
/// now from the job's own slot (`teardown::wait_flushed` with the slots required). Returns the
/// sources' figures per move, database and table, for the job record and later re-checks.
pub(crate) async fn prove_replicated(
    ctx: &Ctx,
    conns: &mut Conns,
) -> Result<Vec<VerifiedTable>, VerifyError> {
    let plan = &ctx.plan;
    let unproven = |why: String| {
        VerifyError::Unproven(format!(
            "the runner stopped before the cutover's verification was saved, and replication \
             does not prove the targets complete: {why}"
        ))
    };
    for source in plan.sources() {
        for db in &plan.databases {
            let exists: bool = conns
                .one(source, db, sql::FENCE_TABLE_EXISTS, &[])
                .await?
                .get(0);
            let closed = if exists {
                conns
                    .query(source, db, sql::FENCE_CLOSED, &[&plan.job_id])
                    .await?
                    .first()
                    .map(|r| r.get::<_, bool>(0))
            } else {
                None
            };
            if closed != Some(true) {
                return Err(unproven(format!(
                    "the job's fence on shard {} database {db} is {}",
                    source.name,
                    if closed.is_some() { "open" } else { "missing" }
                )));
            }
        }
    }
    let tables: Vec<String> = plan.tables.iter().map(|t| t.qualified()).collect();
    for (d, db) in plan.databases.iter().enumerate() {
        for m in &plan.moves {
            let name = plan.object_name(d, m.index);
            let not_ready: Vec<String> = conns
                .query(&m.target, db, sql::SUBSCRIBED_NOT_READY, &[&name, &tables])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if !not_ready.is_empty() {
                return Err(unproven(format!(
                    "subscription {name} on shard {} database {db} does not hold {} in state \
                     r (ready)",
                    m.target.name,
                    not_ready.join(", ")
                )));
            }
            let has_markers: bool = conns
                .one(&m.source, db, sql::MARKER_TABLE_EXISTS, &[])
                .await?
                .get(0);
            let last: Option<i64> = if has_markers {
                conns
                    .one(
                        &m.source,
                        db,
                        sql::LAST_CUTOVER_MARKER,
                        &[&plan.job_id, &m.source.name, &sql::PROBE_SEQ_START],
                    )
                    .await?
                    .get(0)
            } else {
                None
            };
            let Some(seq) = last else {
                return Err(unproven(format!(
                    "shard {} database {db} has no cutover marker of the job",
                    m.source.name
                )));
            };
            let arrived = conns
                .one(&m.target, db, sql::MARKER_TABLE_EXISTS, &[])
                .await?
                .get::<_, bool>(0)
                && super::stream::marker_arrived(plan, conns, m, db, seq).await?;
            if !arrived {
                return Err(unproven(format!(
                    "cutover marker {seq} of shard {} has not reached shard {} database {db}",
                    m.source.name, m.target.name
                )));
            }
        }
    }
    let mut figures = Vec::new();
    for db in &plan.databases {
        for m in &plan.moves {
            for t in &plan.tables {
                let row = conns
                    .one(
                        &m.source,
                        db,
                        &sql::count_and_checksum(plan, t, &m.slots),
                        &[],
                    )
                    .await?;
                figures.push(VerifiedTable {
                    move_index: m.index,
                    database: db.clone(),
                    table: t.display(),
                    rows: row.get(0),
                    checksum: row.get(1),
                });
            }
        }
    }
    Ok(figures)
}
