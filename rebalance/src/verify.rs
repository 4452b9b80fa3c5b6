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

use super::conn::{pg_err, Conns};
use super::ctx::Ctx;
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
pub(crate) async fn take_snapshots(plan: &Plan, conns: &mut Conns) -> Result<(), String> {
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
/// table, all queries in flight together. `Ok(Err(..))` is a mismatch; `Err` a failed query.
/// `Ok(Ok(..))` gives the figures found equal, per move, database and table.
pub(crate) async fn verify(
    ctx: &Ctx,
    conns: &mut Conns,
) -> Result<Result<Vec<VerifiedTable>, String>, String> {
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
                    let err = |e: tokio_postgres::Error, shard: &str| {
                        format!("verifying on shard {shard} database {db}: {}", pg_err(&e))
                    };
                    let s = s.map_err(|e| err(e, &m.source.name))?;
                    let r = r.map_err(|e| err(e, &m.target.name))?;
                    let (sc, ss): (i64, String) = (s.get(0), s.get(1));
                    let (tc, ts): (i64, String) = (r.get(0), r.get(1));
                    if sc != tc || ss != ts {
                        return Ok(Err(format!(
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
                    Ok::<_, String>(Ok(VerifiedTable {
                        move_index: m.index,
                        database: db.clone(),
                        table: t.display(),
                        rows: sc,
                        checksum: ss,
                    }))
                });
            }
        }
    }
    let mut verified = Vec::new();
    for result in futures_util::future::join_all(checks).await {
        match result? {
            Ok(v) => verified.push(v),
            Err(mismatch) => return Ok(Err(mismatch)),
        }
    }
    Ok(Ok(verified))
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

/// Before a resumed cleanup deletes anything: the sources' moved rows (fenced since the
/// cutover, so unchanged) must still match what the cutover verified. Without a record (the
/// runner died between the publish and saving the verification), the sources are compared
/// with the targets as they are now, which holds as long as nothing wrote the moved keys
/// since; when that does not hold the rows stay on both sides and the job says so.
pub(crate) async fn reverify(
    ctx: &Ctx,
    conns: &mut Conns,
    recorded: Option<&[VerifiedTable]>,
) -> Result<(), String> {
    let plan = &ctx.plan;
    let Some(recorded) = recorded else {
        return match verify(ctx, conns).await? {
            Ok(_) => Ok(()),
            Err(mismatch) => Err(format!(
                "the runner stopped before the cutover's verification was saved, and the \
                 sources no longer match the targets ({mismatch}); the targets may have taken \
                 writes since the commit. Nothing was deleted: compare the moved rows by hand, \
                 then delete them from the sources"
            )),
        };
    };
    for v in recorded {
        let m = plan.moves.get(v.move_index).ok_or_else(|| {
            format!(
                "the verification record names move {}, which the plan lacks",
                v.move_index
            )
        })?;
        let t = plan
            .tables
            .iter()
            .find(|t| t.display() == v.table)
            .ok_or_else(|| {
                format!(
                    "the verification record names table {}, which the plan lacks",
                    v.table
                )
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
            return Err(format!(
                "shard {} database {} table {}: the moved rows changed since the cutover \
                 verified them ({} rows, checksum {}; now {rows}, {checksum}) although the \
                 fence held them; nothing was deleted — find the writer that bypassed the fence",
                m.source.name, v.database, v.table, v.rows, v.checksum
            ));
        }
    }
    Ok(())
}
