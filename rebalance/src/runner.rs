//! The phase machine: Preparing → Copying → CatchingUp ⇄ Cutover → Cleanup → Done, and the undo
//! on abort or failure (teardown.rs).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_config::Shard;
use shardgate_topology::{CommitState, Phase};

use super::conn::Conns;
use super::ctx::{Ctx, Stop};
use super::dsn::conninfo;
use super::error::EngineError;
use super::{commit, ddl, revert, schema_copy, sql, stream, teardown, verify};

/// Polling step inside a cutover (the fence is closed: be quick).
const CUTOVER_POLL: Duration = Duration::from_millis(5);

/// How a runner starts.
pub(crate) enum Start {
    /// A new job, just recorded.
    Fresh,
    /// Taken over at proxy start: finish if the store's map is the job's new one, else undo.
    Resume,
}

/// Runs the job to a terminal phase.
pub(crate) async fn run(ctx: Arc<Ctx>, start: Start) {
    let heartbeat = ctx.spawn_heartbeat();
    let mut conns = Conns::new(ctx.config.rebalance.clone());
    match start {
        Start::Fresh => match forward(&ctx, &mut conns).await {
            Ok(()) => teardown::finish_cleanup(&ctx, &mut conns).await,
            Err(Stop::Lost | Stop::Committed) => {}
            Err(stop) => settle(&ctx, &mut conns, stop, None).await,
        },
        Start::Resume => {
            let (phase, stopped_in) = {
                let j = ctx.job.lock().await;
                (j.phase, j.stopped_in)
            };
            let was = match phase {
                Phase::Aborting => stopped_in.unwrap_or(phase),
                p => p,
            };
            let msg = format!("runner restarted during {was}; the move was undone, start it again");
            settle(&ctx, &mut conns, Stop::Abort, Some((was, msg))).await
        }
    }
    heartbeat.abort();
    if !ctx.lost() {
        ctx.save().await;
    }
}

/// Undo or finish after the forward path stopped or a runner restarted: decided by the store's
/// current map (commit.rs), never by the saved phase alone. `restarted`: the phase the previous
/// runner was in and the message an undo records.
async fn settle(ctx: &Ctx, conns: &mut Conns, stop: Stop, restarted: Option<(Phase, String)>) {
    let (phase, stopped_in) = {
        let j = ctx.job.lock().await;
        (j.phase, j.stopped_in)
    };
    // A revert of the committed move was under way (`rebalance abort` in Cleanup).
    let reverting = phase == Phase::Aborting && stopped_in == Some(Phase::Cleanup);
    match commit::state_eventually(ctx).await {
        Some(CommitState::NotCommitted) => {
            teardown::undo_and_finish(ctx, conns, stop, restarted).await
        }
        Some(CommitState::Committed { version }) => {
            tracing::warn!(job = %ctx.plan.job_id, version, phase = %phase, stop = ?stop, "the job's new shard map is live: the move goes forward, it is not undone");
            ctx.update_save(|j| j.to_version = Some(version)).await;
            if reverting {
                revert::revert_and_finish(ctx, conns).await
            } else {
                teardown::finish_cleanup(ctx, conns).await
            }
        }
        Some(CommitState::Reverted { version }) => {
            revert::finish_reverted(ctx, conns, version).await
        }
        Some(CommitState::Unknown { version }) => {
            teardown::fail_undecided(ctx, conns, version).await
        }
        // Another runner took the job over.
        None => {}
    }
}

/// Everything up to and including the publish of the new map.
async fn forward(ctx: &Ctx, conns: &mut Conns) -> Result<(), Stop> {
    prepare(ctx, conns).await?;
    crate::failpoint!("rebalance-mid-copy");
    stream::copy(ctx, conns).await?;
    crate::failpoint!("rebalance-before-cutover");
    let attempts = ctx.config.rebalance.cutover_attempts.max(1);
    let mut last = String::new();
    let mut probe_seq = sql::PROBE_SEQ_START;
    for attempt in 1..=attempts {
        stream::catch_up(ctx, conns, &mut probe_seq).await?;
        match cutover(ctx, conns, attempt).await? {
            None => return Ok(()),
            Some(why) => last = why,
        }
    }
    Err(Stop::Fail(EngineError::Timeout(format!(
        "cutover did not finish within rebalance.cutover_timeout ({:?}) in {attempts} attempts \
         (last: {last}); the move was undone — raise rebalance.cutover_timeout or \
         rebalance.cutover_attempts, or retry when the write load is lower",
        ctx.config.rebalance.cutover_timeout
    ))))
}

async fn prepare(ctx: &Ctx, conns: &mut Conns) -> Result<(), Stop> {
    let plan = &ctx.plan;
    ctx.set_phase(
        Phase::Preparing,
        "copying the schema, installing fences, publications and subscriptions",
    )
    .await;
    // Reference tables first: a sharded table's schema may have a foreign key to one.
    super::references::copy_to_new_shards(ctx, conns).await?;
    // Tables missing on a target get the schema of a source that sends to it.
    for target in plan.targets() {
        let Some(source) = plan.moves_to(&target.name).next().map(|m| m.source.clone()) else {
            continue;
        };
        for db in &plan.databases {
            let mut missing = Vec::new();
            for t in &plan.tables {
                let row = conns
                    .one(
                        target,
                        db,
                        "SELECT to_regclass($1) IS NULL",
                        &[&t.qualified()],
                    )
                    .await?;
                if row.get::<_, bool>(0) {
                    missing.push(t);
                }
            }
            if missing.is_empty() {
                continue;
            }
            for t in &missing {
                if t.schema != "public" {
                    let q = format!(
                        "CREATE SCHEMA IF NOT EXISTS {}",
                        super::plan::ident(&t.schema)
                    );
                    conns.exec(target, db, &q).await?;
                }
            }
            tracing::info!(job = %plan.job_id, target = %target.name, db = %db, tables = missing.len(), "copying sharded tables' schema to the target");
            schema_copy::copy(&source, target, db, &missing, &ctx.config.rebalance).await?;
            ctx.check()?;
        }
    }
    for source in plan.sources() {
        for db in &plan.databases {
            for stmt in sql::create_marker_table() {
                conns.exec(source, db, &stmt).await?;
            }
            let (slots, targets) = plan.fence_rows(&source.name);
            install_fence(ctx, conns, source, db, &slots, &targets, &|| ctx.check()).await?;
        }
    }
    for (d, db) in plan.databases.iter().enumerate() {
        for m in &plan.moves {
            conns
                .exec(&m.source, db, &sql::create_publication(plan, d, m.index))
                .await?;
        }
    }
    for target in plan.targets() {
        for db in &plan.databases {
            for stmt in sql::create_marker_table() {
                conns.exec(target, db, &stmt).await?;
            }
        }
    }
    // Sources already copying into one of their subscriptions (one at a time, see
    // `sql::create_subscription`).
    let mut copying: Vec<&str> = Vec::new();
    for (d, db) in plan.databases.iter().enumerate() {
        for m in &plan.moves {
            ctx.check()?;
            let (user, password) = m.source.admin_login(&ctx.config.rebalance);
            let info = conninfo(&m.source.primary, user, password, db);
            conns
                .exec(
                    &m.target,
                    db,
                    &sql::create_subscription(plan, d, m.index, &info),
                )
                .await?;
            // A source's first copy starts at once, while the rest is prepared; the copy
            // phase starts the others in turn.
            if !copying.contains(&m.source.name.as_str()) {
                let name = plan.object_name(d, m.index);
                conns
                    .exec(&m.target, db, &sql::enable_subscription(&name))
                    .await?;
                copying.push(&m.source.name);
            }
        }
    }
    Ok(())
}

/// Installs the job's fence on `shard`: the fence tables, its rows (`slots`, each with the
/// shard named in the SG001 message), the open switch, and a trigger per sharded table. Used on
/// the sources in Preparing and on the targets when a committed move is reverted.
pub(crate) async fn install_fence(
    ctx: &Ctx,
    conns: &mut Conns,
    shard: &Shard,
    db: &str,
    slots: &[i64],
    dests: &[String],
    check: &(dyn Fn() -> Result<(), Stop> + Sync),
) -> Result<(), Stop> {
    let plan = &ctx.plan;
    // With the short lock wait too: on a resumed revert these run while clients' triggers
    // read the fence tables, and a statement queued there behind an open transaction made
    // the clients queued behind it deadlock with that transaction (40P01 in a client).
    for stmt in sql::create_fence_table() {
        ddl::run(conns, shard, db, &stmt, "set up the fence tables", check).await?;
    }
    conns
        .exec_params(
            shard,
            db,
            sql::FENCE_INSERT,
            &[&plan.job_id, &slots, &dests],
        )
        .await?;
    conns
        .exec_params(shard, db, sql::FENCE_SWITCH_INSERT, &[&plan.job_id])
        .await?;
    for (i, t) in plan.tables.iter().enumerate() {
        conns
            .exec(shard, db, &sql::create_fence_function(plan, i, t))
            .await?;
        // CREATE TRIGGER locks the table against writers: short lock waits, retried.
        ddl::run(
            conns,
            shard,
            db,
            &sql::create_fence_trigger(plan, i, t),
            "install the fence trigger",
            check,
        )
        .await?;
    }
    Ok(())
}

/// One cutover attempt. `None`: committed (new map published). `Some(why)`: timed out, fence
/// lifted, try again.
async fn cutover(ctx: &Ctx, conns: &mut Conns, attempt: u32) -> Result<Option<String>, Stop> {
    let plan = &ctx.plan;
    let timeout = ctx.config.rebalance.cutover_timeout;
    ctx.set_phase(
        Phase::Cutover,
        &format!("cutover attempt {attempt}: fencing the moving slots"),
    )
    .await;
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let outcome = fenced(ctx, conns, attempt, t0, deadline).await;
    let pause_ms = t0.elapsed().as_secs_f64() * 1000.0;
    if !matches!(outcome, Ok(Some(_))) {
        verify::end_snapshots(plan, conns).await;
    }
    match outcome {
        Ok(Some(version)) => {
            crate::failpoint!("rebalance-after-publish");
            ctx.update_save(|j| j.progress.cutover_pauses_ms.push(pause_ms))
                .await;
            tracing::info!(job = %plan.job_id, version, pause_ms, "rebalance committed: new shard map published");
            let verified = verify::verify(ctx, conns).await;
            verify::end_snapshots(plan, conns).await;
            match verified {
                Ok(verified) => {
                    let rows = verify::rows_per_move(plan, &verified);
                    // Saved before anything is deleted: a resumed cleanup checks the sources
                    // against these figures.
                    ctx.update_save(|j| {
                        for (mp, v) in j.progress.moves.iter_mut().zip(&rows) {
                            mp.verified_rows = Some(*v);
                        }
                        if let Some(p) = &mut j.plan {
                            p.verified = Some(verified);
                        }
                    })
                    .await;
                    crate::failpoint!("rebalance-after-verify");
                    Ok(None)
                }
                Err(verify::VerifyError::Unproven(mismatch)) => {
                    teardown::fail_after_commit(ctx, conns, version, &mismatch).await;
                    Err(Stop::Committed)
                }
                // The snapshots are lost with their connections; the cleanup proves the move
                // by replication instead (`verify::prove_replicated`) before deleting anything.
                Err(verify::VerifyError::Unreachable(error)) => {
                    tracing::warn!(job = %plan.job_id, version, %error, "the cutover's verification could not run; the cleanup verifies by replication");
                    Ok(None)
                }
            }
        }
        Ok(None) => {
            teardown::unfence_all(ctx, conns)
                .await
                .map_err(|e| Stop::Fail(e.into()))?;
            let why = format!("attempt {attempt} timed out after {pause_ms:.0} ms");
            tracing::warn!(job = %plan.job_id, attempt, pause_ms, "cutover timed out; fence lifted, retrying");
            ctx.update_save(|j| {
                j.progress.cutover_pauses_ms.push(pause_ms);
                j.progress.message = format!("cutover {why}; retrying");
            })
            .await;
            Ok(Some(why))
        }
        Err(stop) => {
            ctx.update(|j| j.progress.cutover_pauses_ms.push(pause_ms))
                .await;
            Err(stop)
        }
    }
}

/// Fence, drain, verify, publish. `Ok(None)` when the deadline passed first.
async fn fenced(
    ctx: &Ctx,
    conns: &mut Conns,
    attempt: u32,
    t0: Instant,
    deadline: Instant,
) -> Result<Option<u64>, Stop> {
    let plan = &ctx.plan;
    let mut steps: Vec<(&str, f64)> = Vec::new();
    let mark = |name: &'static str, steps: &mut Vec<(&str, f64)>| {
        steps.push((name, t0.elapsed().as_secs_f64() * 1000.0));
    };
    // Close the fence: writes to moving keys now fail with SG001; no other key pauses.
    let mut fence_time: HashMap<(String, String), String> = HashMap::new();
    for source in plan.sources() {
        for db in &plan.databases {
            let n = conns
                .exec_params(source, db, sql::FENCE_CLOSE, &[&plan.job_id])
                .await?;
            if n != 1 {
                return Err(Stop::Fail(EngineError::Refused(format!(
                    "the fence of job {} is missing on shard {} database {db} (someone dropped \
                     shardgate.fence_switch rows); the move was undone, start it again",
                    plan.job_id, source.name
                ))));
            }
            let row = conns.one(source, db, sql::NOW_TEXT, &[]).await?;
            fence_time.insert((source.name.clone(), db.clone()), row.get(0));
        }
    }
    mark("fenced", &mut steps);
    // Transactions that began before the fence may not see it (their snapshot is older) and
    // could still write a moving key: wait until they have ended.
    for source in plan.sources() {
        for db in &plan.databases {
            let at = fence_time
                .get(&(source.name.clone(), db.clone()))
                .cloned()
                .unwrap_or_default();
            loop {
                let row = conns.one(source, db, sql::OLD_TRANSACTIONS, &[&at]).await?;
                if row.get::<_, i64>(0) == 0 {
                    break;
                }
                if Instant::now() >= deadline {
                    let pid: Option<i32> = row.get(1);
                    tracing::warn!(job = %plan.job_id, shard = %source.name, db = %db, pid, "cutover waits for a transaction older than the fence");
                    return Ok(None);
                }
                ctx.check()?;
                tokio::time::sleep(CUTOVER_POLL).await;
            }
        }
    }
    mark("old transactions ended", &mut steps);
    // A marker row inserted now reaches each target after every change committed before it.
    let seq = i64::from(attempt);
    stream::insert_markers(plan, conns, seq).await?;
    for db in &plan.databases {
        for m in &plan.moves {
            loop {
                if stream::marker_arrived(plan, conns, m, db, seq).await? {
                    break;
                }
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                ctx.check()?;
                tokio::time::sleep(CUTOVER_POLL).await;
            }
        }
    }
    mark("targets confirmed", &mut steps);
    // New rows on the targets must not collide with moved ones (serial columns).
    super::sequences::align(ctx, conns)
        .await
        .map_err(Stop::from)?;
    mark("sequences aligned", &mut steps);
    // Every source and target now holds the moving rows as of the fence: freeze that view in
    // a snapshot per connection, to count and checksum after the publish, so verification
    // does not hold the fence (it scans every moved row: ~0.7 s for 330k rows).
    verify::take_snapshots(plan, conns)
        .await
        .map_err(Stop::from)?;
    mark("snapshots taken", &mut steps);
    tracing::info!(job = %plan.job_id, steps = ?steps, "cutover steps (ms since the fence)");
    // Last moment to abort: after the publish the job only goes forward.
    ctx.check()?;
    if Instant::now() >= deadline {
        return Ok(None);
    }
    let (from, new_shards) = {
        let j = ctx.job.lock().await;
        (j.from_version, j.new_shards.clone())
    };
    let to = from + 1;
    crate::failpoint!("rebalance-before-publish");
    // The commit: the new map and the job's Cleanup phase in one store write.
    let published = ctx
        .publish(from, new_shards, |j| {
            j.phase = Phase::Cleanup;
            j.to_version = Some(to);
            j.progress.message = format!("committed at version {to}; verifying the moved rows");
        })
        .await;
    match published {
        Ok(map) => Ok(Some(map.version)),
        // The write may have landed although its answer was lost: the store's map decides.
        Err(e) => match commit::state(ctx).await {
            Some(CommitState::Committed { version }) => {
                ctx.update_save(|j| {
                    j.phase = Phase::Cleanup;
                    j.to_version = Some(version);
                })
                .await;
                Ok(Some(version))
            }
            Some(CommitState::NotCommitted) => Err(Stop::Fail(EngineError::Store(format!(
                "publishing the new shard map failed: {e}; the move was undone — check the \
                 topology store and start it again"
            )))),
            _ => Err(Stop::Fail(EngineError::Store(format!(
                "publishing the new shard map failed: {e}, and the store's map is not the \
                 job's old one"
            )))),
        },
    }
}
