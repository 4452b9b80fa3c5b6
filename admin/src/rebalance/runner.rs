//! The phase machine: Preparing → Copying → CatchingUp ⇄ Cutover → Cleanup → Done, and the undo
//! on abort or failure (teardown.rs).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_config::Shard;
use shardgate_topology::{Phase, StoreError};

use super::conn::{pg_err, Conns};
use super::ctx::{Ctx, Stop};
use super::dsn::conninfo;
use super::{ddl, schema_copy, sql, teardown};

/// Progress is sampled this often while copying and catching up.
const SAMPLE: Duration = Duration::from_millis(1000);
/// Polling step inside a cutover (the fence is closed: be quick).
const CUTOVER_POLL: Duration = Duration::from_millis(5);
/// A subscription whose workers failed this many times is hopeless.
const MAX_SUBSCRIPTION_ERRORS: i64 = 5;

/// How a runner starts.
pub(crate) enum Start {
    /// A new job, just recorded.
    Fresh,
    /// Taken over at proxy start: finish the cleanup if committed, else undo.
    Resume,
}

/// Runs the job to a terminal phase.
pub(crate) async fn run(ctx: Arc<Ctx>, start: Start) {
    let heartbeat = ctx.spawn_heartbeat();
    let mut conns = Conns::new(ctx.config.rebalance.clone());
    let phase = ctx.phase().await;
    match start {
        Start::Fresh => match forward(&ctx, &mut conns).await {
            Ok(()) => teardown::finish_cleanup(&ctx, &mut conns).await,
            Err(Stop::Lost) => {}
            Err(stop) => teardown::undo_and_finish(&ctx, &mut conns, stop, None).await,
        },
        Start::Resume if phase.is_committed() => teardown::finish_cleanup(&ctx, &mut conns).await,
        Start::Resume => {
            let was = match phase {
                Phase::Aborting => ctx.job.lock().await.stopped_in.unwrap_or(phase),
                p => p,
            };
            let msg = format!("runner restarted during {was}; the move was undone, start it again");
            teardown::undo_and_finish(&ctx, &mut conns, Stop::Abort, Some((was, msg))).await
        }
    }
    heartbeat.abort();
    if !ctx.lost() {
        ctx.save().await;
    }
}

/// Everything up to and including the publish of the new map.
async fn forward(ctx: &Ctx, conns: &mut Conns) -> Result<(), Stop> {
    prepare(ctx, conns).await?;
    copy(ctx, conns).await?;
    let attempts = ctx.config.rebalance.cutover_attempts.max(1);
    let mut last = String::new();
    for attempt in 1..=attempts {
        catch_up(ctx, conns).await?;
        match cutover(ctx, conns, attempt).await? {
            None => return Ok(()),
            Some(why) => last = why,
        }
    }
    Err(Stop::Fail(format!(
        "cutover did not finish within rebalance.cutover_timeout ({:?}) in {attempts} attempts \
         (last: {last}); the move was undone — raise rebalance.cutover_timeout or \
         rebalance.cutover_attempts, or retry when the write load is lower",
        ctx.config.rebalance.cutover_timeout
    )))
}

async fn prepare(ctx: &Ctx, conns: &mut Conns) -> Result<(), Stop> {
    let plan = &ctx.plan;
    ctx.set_phase(
        Phase::Preparing,
        "copying the schema, installing fences, publications and subscriptions",
    )
    .await;
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
            for stmt in sql::create_fence_table()
                .into_iter()
                .chain(sql::create_marker_table())
            {
                conns.exec(source, db, &stmt).await?;
            }
            let (slots, targets) = plan.fence_rows(&source.name);
            conns
                .exec_params(
                    source,
                    db,
                    sql::FENCE_INSERT,
                    &[&plan.job_id, &slots, &targets],
                )
                .await?;
            conns
                .exec_params(source, db, sql::FENCE_SWITCH_INSERT, &[&plan.job_id])
                .await?;
            for (i, t) in plan.tables.iter().enumerate() {
                conns
                    .exec(source, db, &sql::create_fence_function(plan, i, t))
                    .await?;
                // CREATE TRIGGER locks the table against writers: short lock waits, retried.
                ddl::run(
                    conns,
                    source,
                    db,
                    &sql::create_fence_trigger(plan, i, t),
                    "install the fence trigger",
                    &|| ctx.check(),
                )
                .await?;
            }
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
        }
    }
    Ok(())
}

/// Sums `sql` (a one-row, one-int8 query) over the databases on `shard`.
async fn sum_over_dbs(
    ctx: &Ctx,
    conns: &mut Conns,
    shard: &Shard,
    sqls: &[String],
) -> Result<u64, Stop> {
    let mut total = 0u64;
    for db in &ctx.plan.databases {
        for q in sqls {
            let row = conns.one(shard, db, q, &[]).await?;
            total += row.get::<_, i64>(0).max(0) as u64;
        }
    }
    Ok(total)
}

fn count_sqls(ctx: &Ctx, slots: &[i64]) -> Vec<String> {
    ctx.plan
        .tables
        .iter()
        .map(|t| sql::count(&ctx.plan, t, slots))
        .collect()
}

async fn copy(ctx: &Ctx, conns: &mut Conns) -> Result<(), Stop> {
    let plan = &ctx.plan;
    ctx.set_phase(Phase::Copying, "counting the rows to move")
        .await;
    let mut estimates = Vec::new();
    for m in &plan.moves {
        estimates.push(sum_over_dbs(ctx, conns, &m.source, &count_sqls(ctx, &m.slots)).await?);
    }
    ctx.update_save(|j| {
        for (mp, e) in j.progress.moves.iter_mut().zip(&estimates) {
            mp.rows_estimated = *e;
        }
        j.progress.rows_estimated = estimates.iter().sum();
    })
    .await;
    loop {
        ctx.check()?;
        let mut copied = Vec::new();
        let mut pending = 0i64;
        let mut errors = 0i64;
        for m in &plan.moves {
            copied.push(sum_over_dbs(ctx, conns, &m.target, &count_sqls(ctx, &m.slots)).await?);
            for (d, db) in plan.databases.iter().enumerate() {
                let name = plan.object_name(d, m.index);
                let row = conns
                    .one(&m.target, db, sql::SUBSCRIPTION_SYNC_STATE, &[&name])
                    .await?;
                let (not_ready, all): (i64, i64) = (row.get(0), row.get(1));
                // The sharded tables and the marker table.
                pending += not_ready + (plan.tables.len() as i64 + 1 - all).max(0);
                if let Some(r) = conns
                    .query(&m.target, db, sql::SUBSCRIPTION_ERRORS, &[&name])
                    .await?
                    .first()
                {
                    errors = errors.max(r.get::<_, i64>(0));
                }
            }
        }
        let total: u64 = copied.iter().sum();
        let estimated: u64 = estimates.iter().sum();
        ctx.update(|j| {
            for (mp, c) in j.progress.moves.iter_mut().zip(&copied) {
                mp.rows_copied = *c;
            }
            j.progress.rows_copied = total;
            j.progress.message = if errors > 0 {
                format!("copying: {total} of ~{estimated} rows; the subscription reported {errors} errors (see the target's server log)")
            } else {
                format!("copying: {total} of ~{estimated} rows")
            };
        })
        .await;
        if errors >= MAX_SUBSCRIPTION_ERRORS {
            return Err(Stop::Fail(format!(
                "the target's subscription failed {errors} times while copying; the target \
                 shard's server log says why (often: the admin login cannot connect to the \
                 source for replication — check pg_hba.conf on the source, or a constraint \
                 on the target rejects rows)"
            )));
        }
        if pending == 0 {
            return Ok(());
        }
        ctx.pause(SAMPLE).await?;
    }
}

/// Worst lag over the moves (bytes) and per-move lags, read from the sources' slots.
async fn lags(ctx: &Ctx, conns: &mut Conns) -> Result<(Vec<u64>, f64), Stop> {
    let plan = &ctx.plan;
    let mut per_move = Vec::new();
    let mut seconds = 0f64;
    for m in &plan.moves {
        let mut worst = 0u64;
        for (d, db) in plan.databases.iter().enumerate() {
            let name = plan.object_name(d, m.index);
            let rows = conns.query(&m.source, db, sql::SLOT_LAG, &[&name]).await?;
            let Some(row) = rows.first() else {
                return Err(Stop::Fail(format!(
                    "replication slot {name} is missing on shard {} — someone dropped it; the \
                     move was undone, start it again",
                    m.source.name
                )));
            };
            let lag = row.get::<_, Option<i64>>(0).unwrap_or(0).max(0) as u64;
            worst = worst.max(lag);
            if lag > 0 {
                if let Some(r) = conns
                    .query(&m.target, db, sql::SUBSCRIPTION_LAG_SECONDS, &[&name])
                    .await?
                    .first()
                {
                    seconds = seconds.max(r.get::<_, f64>(0).max(0.0));
                }
            }
        }
        per_move.push(worst);
    }
    Ok((per_move, seconds))
}

async fn catch_up(ctx: &Ctx, conns: &mut Conns) -> Result<(), Stop> {
    ctx.set_phase(Phase::CatchingUp, "waiting for the targets to catch up")
        .await;
    let max = ctx.config.rebalance.catchup_max_lag_bytes;
    loop {
        ctx.check()?;
        let (per_move, seconds) = lags(ctx, conns).await?;
        let worst = per_move.iter().copied().max().unwrap_or(0);
        ctx.update(|j| {
            for (mp, l) in j.progress.moves.iter_mut().zip(&per_move) {
                mp.lag_bytes = Some(*l);
            }
            j.progress.lag_bytes = Some(worst);
            j.progress.lag_seconds = Some(seconds);
            j.progress.message = format!("catching up: {worst} bytes behind (done at ≤ {max})");
        })
        .await;
        if worst <= max {
            return Ok(());
        }
        ctx.pause(Duration::from_millis(250)).await?;
    }
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
    match outcome {
        Ok(Some(version)) => {
            ctx.update_save(|j| {
                j.progress.cutover_pauses_ms.push(pause_ms);
                j.to_version = Some(version);
                j.phase = Phase::Cleanup;
                j.progress.message = format!("committed at version {version}; cleaning up");
            })
            .await;
            tracing::info!(job = %plan.job_id, version, pause_ms, "rebalance committed: new shard map published");
            Ok(None)
        }
        Ok(None) => {
            teardown::unfence_all(ctx, conns)
                .await
                .map_err(Stop::Fail)?;
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
                return Err(Stop::Fail(format!(
                    "the fence of job {} is missing on shard {} database {db} (someone dropped \
                     shardgate.fence_switch rows); the move was undone, start it again",
                    plan.job_id, source.name
                )));
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
    for source in plan.sources() {
        for db in &plan.databases {
            conns
                .exec_params(
                    source,
                    db,
                    sql::MARKER_INSERT,
                    &[&plan.job_id, &source.name, &seq],
                )
                .await?;
        }
    }
    for db in &plan.databases {
        for m in &plan.moves {
            loop {
                let arrived: bool = conns
                    .one(
                        &m.target,
                        db,
                        sql::MARKER_ARRIVED,
                        &[&plan.job_id, &m.source.name, &seq],
                    )
                    .await?
                    .get(0);
                if arrived {
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
    // Verify: same rows on both sides, per move, database and table. All counts run at once
    // (the fence is closed: every millisecond counts), bounded by the deadline.
    let left = deadline.saturating_duration_since(Instant::now());
    let verified = match tokio::time::timeout(left, verify(ctx, conns)).await {
        Err(_) => return Ok(None),
        Ok(Err(e)) => return Err(Stop::Fail(e)),
        Ok(Ok(Err(mismatch))) => {
            teardown::unfence_all(ctx, conns)
                .await
                .map_err(Stop::Fail)?;
            return Err(Stop::Fail(mismatch));
        }
        Ok(Ok(Ok(v))) => v,
    };
    ctx.update(|j| {
        for (mp, v) in j.progress.moves.iter_mut().zip(&verified) {
            mp.verified_rows = Some(*v);
        }
    })
    .await;
    mark("verified", &mut steps);
    super::sequences::align(plan, conns)
        .await
        .map_err(Stop::Fail)?;
    mark("sequences aligned", &mut steps);
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
    match ctx.store.publish(from, new_shards.clone()).await {
        Ok(map) => Ok(Some(map.version)),
        Err(StoreError::Conflict { expected, found }) => Err(Stop::Fail(format!(
            "the shard map changed underneath during cutover (expected version {expected}, \
             found {found}); the move was undone — start it again"
        ))),
        Err(e) => {
            // The write may have landed even though the answer was lost: look.
            match ctx.store.shard_map().await {
                Ok(map)
                    if map.version == from + 1
                        && map.names()
                            == new_shards
                                .iter()
                                .map(|s| s.name.as_str())
                                .collect::<Vec<_>>() =>
                {
                    Ok(Some(map.version))
                }
                _ => Err(Stop::Fail(format!(
                    "publishing the new shard map failed: {e}; the move was undone — check the \
                     topology store and start it again"
                ))),
            }
        }
    }
}

/// Count and checksum of each move's rows on its source and its target, per database and
/// table, all queries in flight together. `Ok(Err(..))` is a mismatch; `Err` a failed query.
async fn verify(ctx: &Ctx, conns: &mut Conns) -> Result<Result<Vec<u64>, String>, String> {
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
                             (checksum {ts}); the move was undone — check for writes that \
                             bypass the fence (a session with shardgate.bypass on, or \
                             session_replication_role = replica) and start it again",
                            t.display(),
                            m.source.name,
                            m.target.name
                        )));
                    }
                    Ok::<_, String>(Ok((m.index, sc.max(0) as u64)))
                });
            }
        }
    }
    let mut verified = vec![0u64; plan.moves.len()];
    for result in futures_util::future::join_all(checks).await {
        match result? {
            Ok((i, n)) => verified[i] += n,
            Err(mismatch) => return Ok(Err(mismatch)),
        }
    }
    Ok(Ok(verified))
}
