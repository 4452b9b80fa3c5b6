//! Taking a job's objects down: the undo after an abort or failure (nothing moved: the targets'
//! partial copies go), and the cleanup after commit (the sources' moved rows go). Both are
//! idempotent — every drop says IF EXISTS — so they can run again after a restart.

use std::time::Duration;

use shardgate_config::Shard;
use shardgate_topology::{now_ms, Phase};

use super::conn::Conns;
use super::ctx::{Ctx, Stop};
use super::ddl;
use super::error::{CleanupError, ShardError, TeardownError};
use super::plan::Move;
use super::sql;
use super::verify;

/// Attempts at undo or cleanup before giving up and reporting what is left.
pub(crate) const ATTEMPTS: u32 = 4;
/// Cleanup waits for the proxies at most this many `topology.lease`s …
const PROXY_WAIT_LEASES: u32 = 4;
/// … and at least this long.
const PROXY_WAIT_MIN: Duration = Duration::from_secs(60);
/// Added to `topology.lease` before a silent proxy counts as having stopped routing.
const LEASE_MARGIN: Duration = Duration::from_secs(2);
/// How long cleanup waits for the targets to confirm they flushed what they applied.
const FLUSH_WAIT: Duration = Duration::from_secs(30);

/// Opens the job's fence on every source (writes to moving keys go through again).
pub(crate) async fn unfence_all(ctx: &Ctx, conns: &mut Conns) -> Result<(), TeardownError> {
    let mut errors = Vec::new();
    for source in ctx.plan.sources() {
        for db in &ctx.plan.databases {
            if let Err(e) = unfence(ctx, conns, source, db).await {
                errors.push(e);
            }
        }
    }
    join(errors)
}

async fn unfence(
    ctx: &Ctx,
    conns: &mut Conns,
    source: &Shard,
    db: &str,
) -> Result<(), TeardownError> {
    let exists: bool = conns
        .one(source, db, sql::FENCE_TABLE_EXISTS, &[])
        .await?
        .get(0);
    if exists {
        conns
            .exec_params(source, db, sql::FENCE_OPEN, &[&ctx.plan.job_id])
            .await?;
    }
    Ok(())
}

/// Deletes the job's fence rows (its triggers are gone by then).
async fn delete_fence_rows(
    ctx: &Ctx,
    conns: &mut Conns,
    source: &Shard,
    db: &str,
) -> Result<(), TeardownError> {
    let exists: bool = conns
        .one(source, db, sql::FENCE_TABLE_EXISTS, &[])
        .await?
        .get(0);
    if exists {
        for q in [sql::FENCE_DELETE, sql::FENCE_SWITCH_DELETE] {
            conns
                .exec_params(source, db, q, &[&ctx.plan.job_id])
                .await?;
        }
    }
    Ok(())
}

/// `Ok` when nothing failed, else the one error or all of them.
fn join(mut errors: Vec<TeardownError>) -> Result<(), TeardownError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(TeardownError::Several(errors)),
    }
}

/// Drops move `m`'s subscription in database number `d` on its target, and its slots (the
/// main one and any initial-copy ones) on the source. When the source cannot be reached the
/// subscription is detached from its slot first, and the slot is dropped when it can be.
async fn drop_stream(
    ctx: &Ctx,
    conns: &mut Conns,
    m: &Move,
    d: usize,
) -> Result<(), TeardownError> {
    let plan = &ctx.plan;
    let db = &plan.databases[d];
    let name = plan.object_name(d, m.index);
    let sysid: String = conns.one(&m.target, db, sql::SYSTEM_ID, &[]).await?.get(0);
    let suboid: Option<i64> = conns
        .query(&m.target, db, sql::SUBSCRIPTION_OID, &[&name])
        .await?
        .first()
        .map(|r| r.get(0));
    if suboid.is_some() {
        if let Err(e) = conns
            .exec(&m.target, db, &sql::drop_subscription(&name))
            .await
        {
            tracing::warn!(job = %plan.job_id, target = %m.target.name, error = %e, "DROP SUBSCRIPTION failed; detaching it from its slot");
            for stmt in sql::detach_subscription(&name) {
                conns.exec(&m.target, db, &stmt).await?;
            }
            conns
                .exec(&m.target, db, &sql::drop_subscription(&name))
                .await?;
        }
    }
    // The job's own slots match its prefix. Initial-copy slots are named
    // pg_<subscription oid>_sync_<table oid>_<target system id>: drop those of this target whose
    // subscription no longer exists (ours, just dropped, or an earlier run's).
    let live: Vec<i64> = conns
        .query(&m.target, db, "SELECT oid::int8 FROM pg_subscription", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let like = sql::tablesync_like_any(&sysid);
    let mut patterns = Vec::new();
    for r in conns
        .query(
            &m.source,
            db,
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE $1 \
             AND active_pid IS NULL",
            &[&like],
        )
        .await?
    {
        let slot: String = r.get(0);
        let oid = slot.split('_').nth(1).and_then(|o| o.parse::<i64>().ok());
        if oid.is_some_and(|o| !live.contains(&o)) {
            patterns.push(slot.replace('_', "\\_"));
        }
    }
    // This move's own slot only: the source's other moves may still be streaming.
    let own = name.replace('_', "\\_");
    drop_slots(ctx, conns, &m.source, db, &own, &patterns).await
}

/// Drops the source's slots matching the LIKE pattern `own` or one of `extra`, ending the
/// WAL sender that still holds one.
async fn drop_slots(
    ctx: &Ctx,
    conns: &mut Conns,
    source: &Shard,
    db: &str,
    own: &str,
    extra: &[String],
) -> Result<(), TeardownError> {
    let prefix = own.to_owned();
    let extra: Vec<String> = extra.to_vec();
    for attempt in 0..20 {
        let rows = conns
            .query(source, db, sql::JOB_SLOTS, &[&prefix, &extra])
            .await?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut last: Option<ShardError> = None;
        for r in rows {
            let (slot, pid): (String, Option<i32>) = (r.get(0), r.get(1));
            if let Some(pid) = pid {
                let _ = conns.query(source, db, sql::TERMINATE, &[&pid]).await;
                continue;
            }
            if let Err(e) = conns.query(source, db, sql::DROP_SLOT, &[&slot]).await {
                last = Some(e);
            }
        }
        if let (19, Some(e)) = (attempt, last) {
            return Err(e.into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(TeardownError::SlotsInUse {
        job: ctx.plan.job_id.clone(),
        shard: source.name.clone(),
        prefix: ctx.plan.prefix(),
    })
}

/// Subscriptions, publications and slots of every move, in every database.
async fn drop_streams(ctx: &Ctx, conns: &mut Conns) -> Result<Vec<String>, TeardownError> {
    let plan = &ctx.plan;
    let mut errors = Vec::new();
    // Targets whose subscriptions could not be dropped: their rows must not be touched.
    let mut stuck = Vec::new();
    for d in 0..plan.databases.len() {
        for m in &plan.moves {
            if let Err(e) = drop_stream(ctx, conns, m, d).await {
                stuck.push(m.target.name.clone());
                errors.push(e);
            }
            if let Err(e) = conns
                .exec(
                    &m.source,
                    &plan.databases[d],
                    &sql::drop_publication(plan, d, m.index),
                )
                .await
            {
                errors.push(e.into());
            }
        }
    }
    // Slots a failed CREATE SUBSCRIPTION may have left behind: anything with the job's prefix.
    let every = sql::like_prefix(&plan.prefix());
    for source in plan.sources() {
        if let Err(e) = drop_slots(ctx, conns, source, &plan.databases[0], &every, &[]).await {
            errors.push(e);
        }
    }
    join(errors)?;
    Ok(stuck)
}

/// Drops the fence triggers and functions on every source, the job's fence rows and markers,
/// and the shardgate tables and schema when nothing else uses them.
async fn drop_fences(ctx: &Ctx, conns: &mut Conns) -> Result<(), TeardownError> {
    let plan = &ctx.plan;
    let mut errors = Vec::new();
    for source in plan.sources() {
        for db in &plan.databases {
            if let Err(e) = drop_fence_on(ctx, conns, source, db).await {
                errors.push(e);
            }
        }
    }
    for target in plan.targets() {
        for db in &plan.databases {
            let work = async {
                conns.exec(target, db, &sql::drop_markers(plan)).await?;
                let _ = conns.exec(target, db, sql::DROP_SCHEMA_IF_EMPTY).await;
                Ok::<(), ShardError>(())
            };
            if let Err(e) = work.await {
                errors.push(e.into());
            }
        }
    }
    join(errors)
}

pub(crate) async fn drop_fence_on(
    ctx: &Ctx,
    conns: &mut Conns,
    source: &Shard,
    db: &str,
) -> Result<(), TeardownError> {
    let plan = &ctx.plan;
    for (i, t) in plan.tables.iter().enumerate() {
        // DROP TRIGGER locks the table against writers: short lock waits, retried.
        for stmt in sql::drop_fence_trigger(plan, i, t) {
            ddl::run_to_end(conns, source, db, &stmt, "drop the fence trigger").await?;
        }
    }
    delete_fence_rows(ctx, conns, source, db).await?;
    conns
        .exec(source, db, &sql::drop_fence_table_if_unused())
        .await?;
    conns.exec(source, db, &sql::drop_markers(plan)).await?;
    // A schema that still holds something else stays (and that error is expected).
    let _ = conns.exec(source, db, sql::DROP_SCHEMA_IF_EMPTY).await;
    Ok(())
}

/// The cutover waited until the targets had *applied* everything; before the sources' copies
/// go, wait until the targets have also *flushed* it (their slots' confirmed position).
/// `require_slots`: the wait is part of a proof (`verify::prove_replicated`), so a slot that is
/// gone proves nothing; otherwise a missing slot means an earlier run dropped it already.
async fn wait_flushed(
    ctx: &Ctx,
    conns: &mut Conns,
    require_slots: bool,
) -> Result<(), CleanupError> {
    let plan = &ctx.plan;
    let until = tokio::time::Instant::now() + FLUSH_WAIT;
    for source in plan.sources() {
        let db0 = &plan.databases[0];
        let lsn: String = conns.one(source, db0, sql::CURRENT_LSN, &[]).await?.get(0);
        // The WAL is the server's, so one flush covers every database.
        conns
            .exec(source, db0, &sql::flush_marker(plan, &source.name))
            .await?;
        for (d, db) in plan.databases.iter().enumerate() {
            for m in plan.moves_from(&source.name) {
                let name = plan.object_name(d, m.index);
                loop {
                    let rows = conns
                        .query(source, db, sql::SLOT_REACHED, &[&name, &lsn])
                        .await?;
                    let Some(row) = rows.first() else {
                        if require_slots {
                            return Err(CleanupError::Unverified(format!(
                                "the runner stopped before the cutover's verification was \
                                 saved, and slot {name} on shard {} is gone, so replication \
                                 cannot prove shard {} complete",
                                source.name, m.target.name
                            )));
                        }
                        // An earlier cleanup run already dropped the subscription.
                        break;
                    };
                    if row.get::<_, bool>(0) {
                        break;
                    }
                    if tokio::time::Instant::now() >= until {
                        return Err(TeardownError::NotFlushed {
                            target: m.target.name.clone(),
                            from: source.name.clone(),
                            slot: name,
                            waited: FLUSH_WAIT,
                        }
                        .into());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    Ok(())
}

/// Deletes the rows of each move's slots on one side (`on_target`: the undo; else the
/// cleanup), batch by batch, with the fence bypassed; the cleanup counts them in the job.
async fn delete_moved(
    ctx: &Ctx,
    conns: &mut Conns,
    on_target: bool,
    skip: &[String],
) -> Result<Deleted, TeardownError> {
    let plan = &ctx.plan;
    let batch = ctx.config.rebalance.delete_batch_size.max(1);
    let mut deleted = vec![0u64; plan.moves.len()];
    for m in &plan.moves {
        let shard = if on_target { &m.target } else { &m.source };
        if skip.contains(&shard.name) {
            continue;
        }
        for db in &plan.databases {
            for t in &plan.tables {
                let exists: bool = conns
                    .one(
                        shard,
                        db,
                        "SELECT to_regclass($1) IS NOT NULL",
                        &[&t.qualified()],
                    )
                    .await?
                    .get(0);
                if !exists {
                    continue;
                }
                let q = sql::delete_batch(plan, t, &m.slots, batch);
                loop {
                    if !on_target && ctx.abort_requested() {
                        return Ok(Deleted::Aborted);
                    }
                    let n = conns.delete_bypassing(shard, db, &q).await?;
                    deleted[m.index] += n;
                    if !on_target && n > 0 {
                        crate::failpoint!("rebalance-mid-delete");
                    }
                    if !on_target {
                        let total = deleted[m.index];
                        ctx.update(|j| {
                            if let Some(mp) = j.progress.moves.get_mut(m.index) {
                                mp.rows_deleted = total;
                            }
                            j.progress.rows_deleted =
                                j.progress.moves.iter().map(|x| x.rows_deleted).sum();
                        })
                        .await;
                    }
                    if n < batch as u64 {
                        break;
                    }
                }
            }
        }
    }
    Ok(Deleted::All)
}

/// How deleting the moved rows ended.
#[must_use]
enum Deleted {
    All,
    /// `rebalance abort` came between two batches (the cleanup's deletion only).
    Aborted,
}

/// The undo: back to exactly the state before the job (the shard map never changed).
pub(crate) async fn undo(ctx: &Ctx, conns: &mut Conns) -> Result<(), TeardownError> {
    let mut errors = Vec::new();
    // Writers first: lift the fence at once.
    if let Err(e) = unfence_all(ctx, conns).await {
        errors.push(e);
    }
    let stuck = match drop_streams(ctx, conns).await {
        Ok(stuck) => stuck,
        Err(e) => {
            errors.push(e);
            ctx.plan.targets().iter().map(|t| t.name.clone()).collect()
        }
    };
    // The targets did not own these slots before (pre-flight checked they were empty there).
    // Never stopped by an abort (the undo is what an abort runs).
    if let Err(e) = delete_moved(ctx, conns, true, &stuck).await {
        errors.push(e);
    }
    if let Err(e) = drop_fences(ctx, conns).await {
        errors.push(e);
    }
    join(errors)
}

/// Undoes the job and records how it ended. `restarted`: the phase the previous runner was in
/// and the message to record (the job ends Aborted).
pub(crate) async fn undo_and_finish(
    ctx: &Ctx,
    conns: &mut Conns,
    stop: Stop,
    restarted: Option<(Phase, String)>,
) {
    let phase = ctx.phase().await;
    let (stopped_in, error, failed) = match (&stop, restarted) {
        (_, Some((was, msg))) => (was, Some(msg), false),
        (Stop::Fail(e), None) => (phase, Some(e.to_string()), true),
        (_, None) => (phase, None, false),
    };
    tracing::warn!(job = %ctx.plan.job_id, phase = %stopped_in, error = ?error, "rebalance stopped; undoing");
    crate::failpoint!("rebalance-before-save-aborting");
    ctx.update_save(|j| {
        j.phase = Phase::Aborting;
        j.stopped_in = Some(stopped_in);
        j.error = error.clone();
        j.progress.message =
            "undoing: removing fences, subscriptions, publications, slots and the targets' copies"
                .into();
    })
    .await;
    let mut left = None;
    for attempt in 1..=ATTEMPTS {
        match undo(ctx, conns).await {
            Ok(()) => {
                left = None;
                break;
            }
            Err(e) => {
                tracing::warn!(job = %ctx.plan.job_id, attempt, error = %e, "undo incomplete; retrying");
                left = Some(e);
                tokio::time::sleep(Duration::from_secs(attempt as u64)).await;
            }
        }
    }
    ctx.update_save(|j| {
        j.finished_ms = Some(now_ms());
        match &left {
            None => {
                j.phase = if failed {
                    Phase::Failed
                } else {
                    Phase::Aborted
                };
                j.progress.message = "undone: every shard is as before the job".into();
            }
            Some(e) => {
                j.phase = Phase::Failed;
                let before = j
                    .error
                    .clone()
                    .map(|e| format!("{e}; "))
                    .unwrap_or_default();
                j.error = Some(format!(
                    "{before}the undo could not finish: {e} — the shard map was not changed; \
                     fix the cause and drop what is left by hand (objects named {}…, \
                     trigger {} in schema shardgate)",
                    ctx.plan.prefix(),
                    ctx.plan.trigger_name()
                ));
                j.progress.message = "undo incomplete".into();
            }
        }
    })
    .await;
}

/// Cleanup after the commit: wait for the proxies, drop the streams, delete the moved rows from
/// the sources, drop the fences. Retried; a committed job is never undone.
pub(crate) async fn finish_cleanup(ctx: &Ctx, conns: &mut Conns) {
    let to = ctx.job.lock().await.to_version.unwrap_or(0);
    ctx.set_phase(
        Phase::Cleanup,
        &format!("committed at version {to}; waiting for every proxy to route by it"),
    )
    .await;
    // `rebalance abort` ends this wait: the move is then reverted.
    if let Err(e) = wait_for_proxies(ctx, to, true).await {
        return keep_sources(ctx, conns, to, &e.to_string()).await;
    }
    let mut left = None;
    for attempt in 1..=ATTEMPTS {
        if ctx.lost() {
            return;
        }
        // `rebalance abort` after the commit: the move is reverted, not finished.
        if ctx.abort_requested() {
            return super::revert::revert_and_finish(ctx, conns).await;
        }
        match cleanup(ctx, conns).await {
            Ok(()) => {
                left = None;
                break;
            }
            Err(_) if ctx.abort_requested() => {
                return super::revert::revert_and_finish(ctx, conns).await;
            }
            // Not retried: the same rows would fail the same check.
            Err(e @ CleanupError::Unverified(_)) => {
                return keep_sources(ctx, conns, to, &e.to_string()).await;
            }
            Err(e) => {
                tracing::warn!(job = %ctx.plan.job_id, attempt, error = %e, "cleanup incomplete; retrying");
                left = Some(e);
                tokio::time::sleep(Duration::from_secs(2 * attempt as u64)).await;
            }
        }
    }
    let mut references_note = None;
    if left.is_none() {
        crate::failpoint!("rebalance-before-done");
        references_note = super::references::check_after_job(ctx, conns).await;
    }
    ctx.update_save(|j| {
        j.finished_ms = Some(now_ms());
        match &left {
            None => {
                j.phase = Phase::Done;
                j.progress.message = format!(
                    "done: version {to} is live and the moved rows are gone from the sources{}",
                    references_note.as_deref().unwrap_or("")
                );
            }
            Some(e) => {
                j.phase = Phase::Failed;
                j.stopped_in = Some(Phase::Cleanup);
                j.error = Some(format!(
                    "committed at version {to} (the new shard map is live), but the cleanup \
                     could not finish: {e} — fix the cause, then drop the leftovers named {}… \
                     and delete the moved rows from the sources",
                    ctx.plan.prefix()
                ));
            }
        }
    })
    .await;
}

/// The figures saved for the committed move (none when the runner died before the cutover's
/// were saved), and whether the sources' rows are being deleted already.
async fn saved_verification(ctx: &Ctx) -> (Option<Vec<shardgate_topology::VerifiedTable>>, bool) {
    let j = ctx.job.lock().await;
    let plan = j.plan.as_ref();
    (
        plan.and_then(|p| p.verified.clone()),
        plan.is_some_and(|p| p.deleting),
    )
}

/// Proves the committed move by replication and saves the sources' figures in the job (the
/// runner died before the cutover's were saved). It needs the streams: run it before they go,
/// after `wait_flushed` with `require_slots`.
async fn prove_and_save(ctx: &Ctx, conns: &mut Conns) -> Result<(), CleanupError> {
    ctx.update(|j| {
        j.progress.message =
            "verifying the move by replication (the cutover's figures were not saved)".into()
    })
    .await;
    let figures = verify::prove_replicated(ctx, conns).await?;
    let rows = verify::rows_per_move(&ctx.plan, &figures);
    tracing::info!(job = %ctx.plan.job_id, rows = ?rows, "move verified by replication; the sources' figures are saved");
    // Saved before the streams go: a later run re-checks the sources against them.
    ctx.update_save(|j| {
        for (mp, v) in j.progress.moves.iter_mut().zip(&rows) {
            mp.verified_rows = Some(*v);
        }
        if let Some(p) = &mut j.plan {
            p.verified = Some(figures);
        }
    })
    .await;
    Ok(())
}

/// Before a revert copies the targets' rows back to the sources: the move's subscriptions,
/// publications and slots go. While they live, the sources' changes of the moving slots are
/// applied to the targets, and the copy back is one: its delete and re-insert of every moved
/// row would be replayed on the fenced targets by the apply worker, which fence triggers do
/// not stop (it runs as a replica). A client's UPDATE or DELETE of such a row, sent to the
/// target by the committed map and waiting for the row, then finds it deleted and reports 0
/// rows instead of meeting the fence; once the targets are unfenced, a replay arriving late
/// would overwrite their newer rows. When the cutover's figures were never saved, the move is
/// proven by replication first, so a revert that fails can still finish the move forward.
pub(crate) async fn drop_streams_before_revert(
    ctx: &Ctx,
    conns: &mut Conns,
) -> Result<(), CleanupError> {
    let (recorded, deleting) = saved_verification(ctx).await;
    if recorded.is_none() && !deleting {
        wait_flushed(ctx, conns, true).await?;
        prove_and_save(ctx, conns).await?;
    }
    let stuck = drop_streams(ctx, conns).await?;
    if !stuck.is_empty() {
        return Err(TeardownError::SubscriptionsStuck(stuck).into());
    }
    Ok(())
}

async fn cleanup(ctx: &Ctx, conns: &mut Conns) -> Result<(), CleanupError> {
    let (recorded, deleting) = saved_verification(ctx).await;
    // Without the cutover's figures, replication is the proof, and it needs the streams: it
    // runs before they are dropped.
    let prove = recorded.is_none() && !deleting;
    ctx.update(|j| j.progress.message = "waiting for the targets to flush the moved rows".into())
        .await;
    wait_flushed(ctx, conns, prove).await?;
    if prove {
        prove_and_save(ctx, conns).await?;
    } else if let (Some(recorded), false, true) = (&recorded, deleting, ctx.resumed) {
        ctx.update(|j| j.progress.message = "re-verifying the moved rows before deleting".into())
            .await;
        verify::reverify(ctx, conns, recorded).await?;
    }
    ctx.update(|j| j.progress.message = "dropping subscriptions, publications and slots".into())
        .await;
    let stuck = drop_streams(ctx, conns).await?;
    if !stuck.is_empty() {
        return Err(TeardownError::SubscriptionsStuck(stuck).into());
    }
    if ctx.abort_requested() {
        return Err(CleanupError::Aborted);
    }
    ctx.update_save(|j| {
        if let Some(p) = &mut j.plan {
            p.deleting = true;
        }
    })
    .await;
    ctx.update(|j| j.progress.message = "deleting the moved rows from the sources".into())
        .await;
    crate::failpoint!("rebalance-before-delete");
    if let Deleted::Aborted = delete_moved(ctx, conns, false, &[]).await? {
        return Err(CleanupError::Aborted);
    }
    Ok(drop_fences(ctx, conns).await?)
}

/// The job committed (the new map is live) but verification found a difference or could not
/// run: record it as Failed, drop the replication objects (no slot may leak), and keep the
/// sources' rows and fences, so nothing is lost and nothing writes the old copies.
pub(crate) async fn fail_after_commit(ctx: &Ctx, conns: &mut Conns, version: u64, problem: &str) {
    keep_sources(
        ctx,
        conns,
        version,
        &format!("verification failed: {problem}"),
    )
    .await
}

/// Committed, but the sources' copies may not be deleted (`problem` says why): Failed, the
/// replication objects dropped, the sources' rows and fences kept.
async fn keep_sources(ctx: &Ctx, conns: &mut Conns, version: u64, problem: &str) {
    tracing::error!(job = %ctx.plan.job_id, version, %problem, "committed, but the sources keep their rows");
    let dropped = drop_streams(ctx, conns).await;
    ctx.update_save(|j| {
        j.phase = Phase::Failed;
        j.stopped_in = Some(Phase::Cleanup);
        j.finished_ms = Some(now_ms());
        j.error = Some(format!(
            "committed at version {version} (the new shard map is live), but {problem}. The sources still hold every moved row and their fences stay \
             (nothing was deleted){}; compare the rows named above on both sides, repair the \
             target, then delete the moved rows from the sources and drop the fence triggers \
             named {}…",
            match &dropped {
                Ok(_) => String::new(),
                Err(e) => format!("; dropping the subscriptions also failed: {e}"),
            },
            ctx.plan.prefix()
        ));
    })
    .await;
}

/// Stale proxies would still route the moved keys to the sources' old copies: waits until
/// every proxy registered in the store routes by `version`, or has been silent past
/// `topology.lease` (a proxy that cannot reach the store within its lease refuses writes by
/// itself, see `proxy::topology`). A store error is never taken for "nobody is behind": the
/// wait goes on, bounded by `PROXY_WAIT_LEASES` leases (at least `PROXY_WAIT_MIN`); then
/// `Err` and nothing may be deleted. `abort_ends_it`: `rebalance abort` ends the wait at once
/// (the forward cleanup's wait, which an abort turns into a revert). A revert's own wait must
/// not stop for it: the abort that started the revert is still requested then.
pub(crate) async fn wait_for_proxies(
    ctx: &Ctx,
    version: u64,
    abort_ends_it: bool,
) -> Result<(), TeardownError> {
    let lease = ctx.config.topology.lease;
    // Ages come from the store's clock and a report is stamped while the proxy waits for its
    // answer, whose start renews the proxy's lease: a margin covers the round trip.
    let silent_after = lease.as_secs_f64() + LEASE_MARGIN.as_secs_f64();
    let limit = (lease * PROXY_WAIT_LEASES).max(PROXY_WAIT_MIN);
    let until = tokio::time::Instant::now() + limit;
    loop {
        if (abort_ends_it && ctx.abort_requested()) || ctx.lost() {
            return Ok(());
        }
        let last = match ctx.store.proxies().await {
            Ok(list) => {
                let behind: Vec<String> = list
                    .into_iter()
                    .filter(|p| p.version < version && p.seen_seconds_ago <= silent_after)
                    .map(|p| {
                        format!(
                            "{} (v{}, seen {:.1} s ago)",
                            p.proxy_id, p.version, p.seen_seconds_ago
                        )
                    })
                    .collect();
                if behind.is_empty() {
                    return Ok(());
                }
                format!("proxies still route by an older map: {}", behind.join(", "))
            }
            Err(e) => format!("the topology store cannot list the proxies: {e}"),
        };
        if tokio::time::Instant::now() >= until {
            return Err(TeardownError::ProxiesBehind {
                last,
                waited: limit,
                version,
                lease,
            });
        }
        tracing::debug!(job = %ctx.plan.job_id, version, %last, "waiting for the proxies");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The map says neither the job's old nor its new shard list: someone else changed it. No
/// row is deleted on any side; the replication objects go (no slot may hold WAL forever).
pub(crate) async fn fail_undecided(ctx: &Ctx, conns: &mut Conns, version: u64) {
    tracing::error!(job = %ctx.plan.job_id, version, "the shard map is neither the job's old nor its new one; nothing is deleted");
    let dropped = drop_streams(ctx, conns).await;
    ctx.update_save(|j| {
        j.phase = Phase::Failed;
        j.stopped_in.get_or_insert(j.phase);
        j.finished_ms = Some(now_ms());
        j.error = Some(format!(
            "the store's shard map (version {version}) is neither the job's old map (version \
             {}) nor its new one: something else published a map. Nothing was deleted on any \
             shard{}; the fences named {}… stay until you drop them — check which shard owns \
             the moved slots under version {version} and remove the other copy",
            j.from_version,
            match &dropped {
                Ok(_) => String::new(),
                Err(e) => format!(" (dropping the subscriptions failed: {e})"),
            },
            ctx.plan.prefix()
        ));
    })
    .await;
}
