//! Aborting a committed move (in Cleanup): the new map is live and the targets have taken
//! writes since, so going back is a small move in reverse. The move's replication goes first
//! (it would replay the copy back on the targets), the moving keys are fenced on the targets
//! too, the sources get the targets' current rows for the moving slots (copied with COPY, the
//! fences bypassed), the old shard list is published as a new version, and once every proxy
//! routes by it the targets' copies and every fence go. Writes to the moving keys pause for the
//! copy; other keys never do.

use std::time::Instant;

use futures_util::{pin_mut, SinkExt, TryStreamExt};
use shardgate_config::Shard;

use super::conn::Conns;
use super::ctx::{Ctx, Stop};
use super::error::{CleanupError, EngineError, ShardError};
use super::plan::{ident, Move, TablePlan};
use super::sql;

/// Fences the moving slots on every target (closed at once) and waits for the transactions
/// that began before.
async fn fence_targets(ctx: &Ctx, conns: &mut Conns) -> Result<(), EngineError> {
    let plan = &ctx.plan;
    for target in plan.targets() {
        // Each slot's "destination" in the fence message is the shard it goes back to.
        let (mut slots, mut back_to) = (Vec::new(), Vec::new());
        for m in plan.moves_to(&target.name) {
            slots.extend(m.slots.iter().copied());
            back_to.extend(m.slots.iter().map(|_| m.source.name.clone()));
        }
        for db in &plan.databases {
            super::runner::install_fence(ctx, conns, target, db, &slots, &back_to, &|| Ok(()))
                .await
                .map_err(|stop| match stop {
                    Stop::Fail(e) => e,
                    other => EngineError::Refused(format!(
                        "installing the fence on the targets stopped ({other:?})"
                    )),
                })?;
            conns
                .exec_params(target, db, sql::FENCE_CLOSE, &[&plan.job_id])
                .await?;
            let at: String = conns.one(target, db, sql::NOW_TEXT, &[]).await?.get(0);
            let until = Instant::now() + ctx.config.rebalance.cutover_timeout;
            loop {
                let row = conns.one(target, db, sql::OLD_TRANSACTIONS, &[&at]).await?;
                if row.get::<_, i64>(0) == 0 {
                    break;
                }
                if Instant::now() >= until {
                    return Err(EngineError::Timeout(format!(
                        "a transaction on shard {} older than the fence did not end within \
                         rebalance.cutover_timeout; abort again when it has",
                        target.name
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }
    Ok(())
}

/// The table's columns in order (generated columns are left to the server).
async fn columns(
    conns: &mut Conns,
    shard: &Shard,
    db: &str,
    t: &TablePlan,
) -> Result<Vec<String>, ShardError> {
    let rows = conns
        .query(
            shard,
            db,
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass \
             AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            &[&t.qualified()],
        )
        .await?;
    Ok(rows.iter().map(|r| ident(&r.get::<_, String>(0))).collect())
}

/// Replaces the source's rows of one move and table with the target's, in one transaction.
async fn copy_back(
    ctx: &Ctx,
    conns: &mut Conns,
    m: &Move,
    db: &str,
    t: &TablePlan,
) -> Result<u64, ShardError> {
    let plan = &ctx.plan;
    let cols = columns(conns, &m.source, db, t).await?.join(", ");
    let predicate = plan.predicate(t, &m.slots);
    let out_sql = format!(
        "COPY (SELECT {cols} FROM {} WHERE {predicate}) TO STDOUT (FORMAT binary)",
        t.qualified()
    );
    let in_sql = format!("COPY {} ({cols}) FROM STDIN (FORMAT binary)", t.qualified());
    let delete = format!("DELETE FROM {} WHERE {predicate}", t.qualified());
    let clients = conns.clients(&[(&m.target, db), (&m.source, db)]).await?;
    let (from, to) = (clients[0], clients[1]);
    let err = |shard: &str, e: tokio_postgres::Error| ShardError::statement(shard, db, &e);
    to.batch_execute("BEGIN; SET LOCAL shardgate.bypass = 'on'")
        .await
        .map_err(|e| err(&m.source.name, e))?;
    let work = async {
        to.execute(delete.as_str(), &[])
            .await
            .map_err(|e| err(&m.source.name, e))?;
        let stream = from
            .copy_out(out_sql.as_str())
            .await
            .map_err(|e| err(&m.target.name, e))?;
        let sink = to
            .copy_in(in_sql.as_str())
            .await
            .map_err(|e| err(&m.source.name, e))?;
        pin_mut!(stream);
        pin_mut!(sink);
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| err(&m.target.name, e))?
        {
            sink.send(chunk).await.map_err(|e| err(&m.source.name, e))?;
        }
        sink.finish().await.map_err(|e| err(&m.source.name, e))
    };
    match work.await {
        Ok(rows) => {
            to.batch_execute("COMMIT")
                .await
                .map_err(|e| err(&m.source.name, e))?;
            Ok(rows)
        }
        Err(e) => {
            let _ = to.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Drops the move's replication, fences the targets, copies the moving rows back to the
/// sources, and publishes the old shard list. Returns the version published. The caller then removes the targets' copies and the
/// fences (the undo), as for an abort before the commit.
pub(crate) async fn revert(ctx: &Ctx, conns: &mut Conns) -> Result<u64, EngineError> {
    let plan = &ctx.plan;
    // First the move's replication goes: it would apply the copy back to the targets again.
    ctx.update(|j| j.progress.message = "reverting: stopping the move's replication".into())
        .await;
    super::teardown::drop_streams_before_revert(ctx, conns)
        .await
        .map_err(|e| match e {
            CleanupError::Step(e) => EngineError::from(e),
            CleanupError::Unverified(why) => EngineError::Refused(format!(
                "the targets are not proven to hold every moved row, so they are not copied \
                 back: {why}"
            )),
            CleanupError::Aborted => {
                EngineError::Refused("stopping the move's replication was aborted".into())
            }
        })?;
    ctx.update(|j| j.progress.message = "reverting: fencing the moved keys on the targets".into())
        .await;
    fence_targets(ctx, conns).await?;
    ctx.update(|j| j.progress.message = "reverting: copying the moved rows back".into())
        .await;
    let mut copied = 0u64;
    for db in &plan.databases {
        for m in &plan.moves {
            for t in &plan.tables {
                copied += copy_back(ctx, conns, m, db, t).await?;
            }
        }
    }
    // Rows written on the targets since the commit took their sequences' values.
    super::sequences::align_back(ctx, conns).await?;
    let (version, old_shards) = {
        let j = ctx.job.lock().await;
        (
            j.to_version.unwrap_or(j.from_version + 1),
            j.old_shards.clone(),
        )
    };
    crate::failpoint!("rebalance-revert-before-publish");
    // The revert's commit: the old list as the next version, with the job, in one write.
    let published = ctx
        .publish(version, old_shards, |j| {
            j.progress.message = format!(
                "reverted at version {}: removing the targets' copies and the fences",
                version + 1
            );
        })
        .await;
    let reverted = match published {
        Ok(map) => map.version,
        Err(e) => match super::commit::state(ctx).await {
            // It landed although its answer was lost.
            Some(shardgate_topology::CommitState::Reverted { version }) => version,
            _ => {
                return Err(EngineError::Store(format!(
                    "publishing the old shard map again failed: {e}"
                )))
            }
        },
    };
    tracing::info!(job = %plan.job_id, version = reverted, copied, "rebalance reverted: old shard map published again");
    crate::failpoint!("rebalance-revert-after-publish");
    Ok(reverted)
}

/// `rebalance abort` in Cleanup: revert, then the usual undo (lift the sources' fences, drop
/// the streams, delete the targets' copies) plus the targets' fences. If the revert itself
/// fails before the old map is out, the targets are unfenced and the move finishes forward.
pub(crate) async fn revert_and_finish(ctx: &Ctx, conns: &mut Conns) {
    use super::teardown;
    use shardgate_topology::Phase;
    tracing::warn!(job = %ctx.plan.job_id, "abort after the commit: reverting the move");
    crate::failpoint!("rebalance-before-save-aborting");
    ctx.update_save(|j| {
        j.phase = Phase::Aborting;
        j.stopped_in = Some(Phase::Cleanup);
        j.progress.message = "reverting the committed move".into();
    })
    .await;
    let version = match revert(ctx, conns).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(job = %ctx.plan.job_id, error = %e, "revert failed; finishing the move instead");
            let mut unfenced = Ok(());
            for target in ctx.plan.targets() {
                for db in &ctx.plan.databases {
                    if let Err(e) = teardown::drop_fence_on(ctx, conns, target, db).await {
                        unfenced = Err(e);
                    }
                }
            }
            ctx.update_save(|j| {
                j.phase = Phase::Cleanup;
                j.abort_requested = false;
                j.error = Some(format!(
                    "the abort could not revert the committed move ({e}){}; the move is \
                     finished instead",
                    unfenced
                        .as_ref()
                        .err()
                        .map(|u| format!(", and lifting the targets' fences failed: {u}"))
                        .unwrap_or_default()
                ));
            })
            .await;
            ctx.clear_abort();
            return Box::pin(teardown::finish_cleanup(ctx, conns)).await;
        }
    };
    finish_reverted(ctx, conns, version).await
}

/// After the old map was published again (`version`): the undo plus the targets' fences.
/// Also where a runner restarted after a revert's publish picks up.
pub(crate) async fn finish_reverted(ctx: &Ctx, conns: &mut Conns, version: u64) {
    use super::teardown;
    use shardgate_topology::{now_ms, Phase};
    // The targets' copies stay, fenced, until every proxy routes by the old map again: a proxy
    // still at the committed map sends the moved keys' writes to the targets, and an UPDATE or
    // DELETE finding no row there reports 0 rows — the fence only stops rows it sees. The
    // abort that started this revert is still requested: it must not end the wait.
    ctx.update_save(|j| {
        j.progress.message = format!(
            "reverted at version {version}: waiting for every proxy to route by it before \
             the targets' copies go"
        )
    })
    .await;
    if let Err(e) = teardown::wait_for_proxies(ctx, version, false).await {
        // The targets' copies stay (fenced) until every proxy routes by the old map again.
        ctx.update_save(|j| {
            j.phase = Phase::Failed;
            j.finished_ms = Some(now_ms());
            j.to_version = Some(version);
            j.error = Some(format!(
                "reverted to the old shard map (version {version}), but {e}; the targets' \
                 copies and fences were kept — delete the moved rows from the targets and \
                 drop the fences named {}… once every proxy routes by version {version}",
                ctx.plan.prefix()
            ));
        })
        .await;
        return;
    }
    if ctx.lost() {
        return;
    }
    let mut left = None;
    for attempt in 1..=teardown::ATTEMPTS {
        let mut result = teardown::undo(ctx, conns).await;
        for target in ctx.plan.targets() {
            for db in &ctx.plan.databases {
                if let Err(e) = teardown::drop_fence_on(ctx, conns, target, db).await {
                    result = Err(e);
                }
            }
        }
        match result {
            Ok(()) => {
                left = None;
                break;
            }
            Err(e) => {
                tracing::warn!(job = %ctx.plan.job_id, attempt, error = %e, "undo after revert incomplete; retrying");
                left = Some(e);
                tokio::time::sleep(std::time::Duration::from_secs(u64::from(attempt))).await;
            }
        }
    }
    ctx.update_save(|j| {
        j.finished_ms = Some(now_ms());
        j.to_version = Some(version);
        match &left {
            None => {
                j.phase = Phase::Aborted;
                j.progress.message = format!(
                    "reverted: version {version} is the old shard map again, and every moved \
                     row is back on its source"
                );
            }
            Some(e) => {
                j.phase = Phase::Failed;
                j.error = Some(format!(
                    "reverted to the old shard map (version {version}), but removing the \
                     targets' copies and the fences could not finish: {e} — drop what is left \
                     by hand (objects named {}…, trigger {})",
                    ctx.plan.prefix(),
                    ctx.plan.trigger_name()
                ));
            }
        }
    })
    .await;
}
