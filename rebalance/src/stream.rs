//! The Copying and CatchingUp phases.
//!
//! Copying: the subscriptions were created disabled; each source copies into one of them at a
//! time (initial-copy slot names collide between targets cloned from one server, see
//! `sql::create_subscription`), the next enabled once every table of the previous is ready.
//! A copy whose subscription keeps failing while nothing arrives fails the job.
//!
//! CatchingUp: done when the slots' byte lag is small, or — since under steady writes to other
//! keys the confirmed position trails by far more than what is left to apply — when a probe
//! marker inserted on every source reaches every target within `PROBE_WAIT`.

use std::time::{Duration, Instant};

use shardgate_topology::Phase;

use super::conn::Conns;
use super::ctx::{Ctx, Stop};
use super::error::{EngineError, ShardError};
use super::plan::Plan;
use super::sql;

/// How often the subscriptions' states are read while copying.
const POLL: Duration = Duration::from_millis(250);
/// How often the rows on the targets are counted (a scan: less often).
const COUNT_EVERY: Duration = Duration::from_millis(1000);
/// A copy whose subscription reports new errors while nothing arrives for this long is stuck.
const STALL: Duration = Duration::from_secs(60);
/// A probe marker arriving within this is "caught up".
const PROBE_WAIT: Duration = Duration::from_secs(1);
/// Polling step while waiting for a probe.
const PROBE_POLL: Duration = Duration::from_millis(10);

/// One subscription: move `m` in database number `d`, as last read on its target.
#[derive(Debug, Clone)]
struct StreamState {
    d: usize,
    m: usize,
    name: String,
    enabled: bool,
    /// Tables not ready, counting those not listed yet.
    pending: i64,
    errors: i64,
}

impl StreamState {
    fn copied(&self) -> bool {
        self.enabled && self.pending == 0
    }
}

/// Tells a stuck copy (its subscription keeps failing, nothing arrives) from a slow one: a
/// single table's initial COPY shows no rows until it commits, but it reports no errors.
#[derive(Debug)]
pub(crate) struct StallWatch {
    since: Instant,
    copied: u64,
    pending: i64,
    errors: i64,
}

impl StallWatch {
    pub(crate) fn new(now: Instant) -> StallWatch {
        StallWatch {
            since: now,
            copied: 0,
            pending: i64::MAX,
            errors: 0,
        }
    }

    /// Records a sample; true once errors grew while neither rows nor ready tables did for
    /// `limit`.
    pub(crate) fn stalled(
        &mut self,
        now: Instant,
        copied: u64,
        pending: i64,
        errors: i64,
        limit: Duration,
    ) -> bool {
        if copied > self.copied || pending < self.pending {
            *self = StallWatch {
                since: now,
                copied,
                pending,
                errors,
            };
            return false;
        }
        errors > self.errors && now.duration_since(self.since) >= limit
    }
}

/// Sums `sql` (a one-row, one-int8 query) over the databases on `shard`.
async fn sum_over_dbs(
    ctx: &Ctx,
    conns: &mut Conns,
    shard: &shardgate_config::Shard,
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

/// Rows of each move on its target.
async fn copied_rows(ctx: &Ctx, conns: &mut Conns) -> Result<Vec<u64>, Stop> {
    let mut copied = Vec::new();
    for m in &ctx.plan.moves {
        copied.push(sum_over_dbs(ctx, conns, &m.target, &count_sqls(ctx, &m.slots)).await?);
    }
    Ok(copied)
}

async fn stream_states(ctx: &Ctx, conns: &mut Conns) -> Result<Vec<StreamState>, Stop> {
    let plan = &ctx.plan;
    // The sharded tables and the marker table.
    let tables = plan.tables.len() as i64 + 1;
    let mut out = Vec::new();
    for (d, db) in plan.databases.iter().enumerate() {
        for m in &plan.moves {
            let name = plan.object_name(d, m.index);
            let rows = conns
                .query(&m.target, db, sql::SUBSCRIPTION_SYNC_STATE, &[&name])
                .await?;
            let Some(row) = rows.first() else {
                return Err(Stop::Fail(EngineError::Refused(format!(
                    "subscription {name} is missing on shard {} — someone dropped it; the move \
                     was undone, start it again",
                    m.target.name
                ))));
            };
            let (enabled, not_ready, all): (bool, i64, i64) = (row.get(0), row.get(1), row.get(2));
            let errors = conns
                .query(&m.target, db, sql::SUBSCRIPTION_ERRORS, &[&name])
                .await?
                .first()
                .map_or(0, |r| r.get::<_, i64>(0) + r.get::<_, i64>(1));
            out.push(StreamState {
                d,
                m: m.index,
                name,
                enabled,
                pending: not_ready + (tables - all).max(0),
                errors,
            });
        }
    }
    Ok(out)
}

/// Per source, enables the next subscription once none of its others is copying. Returns the
/// subscriptions copying now, as "source → target" labels.
async fn enable_next(
    ctx: &Ctx,
    conns: &mut Conns,
    states: &mut [StreamState],
) -> Result<Vec<String>, Stop> {
    let plan = &ctx.plan;
    let mut copying = Vec::new();
    for source in plan.sources() {
        let mine: Vec<usize> = (0..states.len())
            .filter(|&i| plan.moves[states[i].m].source.name == source.name)
            .collect();
        let busy = mine
            .iter()
            .find(|&&i| states[i].enabled && !states[i].copied());
        let next = match busy {
            Some(&i) => i,
            None => match mine.iter().find(|&&i| !states[i].enabled) {
                Some(&i) => {
                    let s = &mut states[i];
                    let m = &plan.moves[s.m];
                    conns
                        .exec(
                            &m.target,
                            &plan.databases[s.d],
                            &sql::enable_subscription(&s.name),
                        )
                        .await?;
                    tracing::info!(job = %plan.job_id, source = %m.source.name, target = %m.target.name, subscription = %s.name, "initial copy started");
                    s.enabled = true;
                    i
                }
                None => continue,
            },
        };
        let m = &plan.moves[states[next].m];
        copying.push(format!("{} → {}", m.source.name, m.target.name));
    }
    Ok(copying)
}

pub(crate) async fn copy(ctx: &Ctx, conns: &mut Conns) -> Result<(), Stop> {
    let plan = &ctx.plan;
    ctx.set_phase(Phase::Copying, "counting the rows to move")
        .await;
    let mut estimates = Vec::new();
    for m in &plan.moves {
        estimates.push(sum_over_dbs(ctx, conns, &m.source, &count_sqls(ctx, &m.slots)).await?);
    }
    let estimated: u64 = estimates.iter().sum();
    ctx.update_save(|j| {
        for (mp, e) in j.progress.moves.iter_mut().zip(&estimates) {
            mp.rows_estimated = *e;
        }
        j.progress.rows_estimated = estimated;
    })
    .await;
    let mut watch = StallWatch::new(Instant::now());
    let mut counted: Option<Instant> = None;
    let mut copied = vec![0u64; plan.moves.len()];
    loop {
        ctx.check()?;
        let mut states = stream_states(ctx, conns).await?;
        let copying = enable_next(ctx, conns, &mut states).await?;
        let done = states.iter().all(StreamState::copied);
        if done || counted.is_none_or(|t| t.elapsed() >= COUNT_EVERY) {
            copied = copied_rows(ctx, conns).await?;
            counted = Some(Instant::now());
        }
        let total: u64 = copied.iter().sum();
        let pending: i64 = states.iter().map(|s| s.pending).sum();
        let errors: i64 = states.iter().map(|s| s.errors).sum();
        ctx.update(|j| {
            for (mp, c) in j.progress.moves.iter_mut().zip(&copied) {
                mp.rows_copied = *c;
            }
            j.progress.rows_copied = total;
            let mut msg = format!("copying: {total} of ~{estimated} rows");
            if !copying.is_empty() && !done {
                msg.push_str(&format!(" (now {})", copying.join(", ")));
            }
            if errors > 0 {
                msg.push_str(&format!(
                    "; the subscriptions reported {errors} errors (see the target's server log)"
                ));
            }
            j.progress.message = msg;
        })
        .await;
        if done {
            return Ok(());
        }
        if watch.stalled(Instant::now(), total, pending, errors, STALL) {
            let stuck: Vec<&StreamState> =
                states.iter().filter(|s| s.enabled && !s.copied()).collect();
            return Err(Stop::Fail(EngineError::Timeout(
                diagnose(ctx, conns, &stuck).await,
            )));
        }
        ctx.pause(POLL).await?;
    }
}

fn state_word(s: &str) -> &str {
    match s {
        "i" => "not started",
        "d" => "copying data",
        "f" => "copy finished",
        "s" => "synchronized",
        other => other,
    }
}

/// Why the copies of `stuck` make no progress, as far as the catalogs tell (the error texts
/// themselves are only in the target's server log).
async fn diagnose(ctx: &Ctx, conns: &mut Conns, stuck: &[&StreamState]) -> String {
    let plan = &ctx.plan;
    let mut parts = Vec::new();
    for s in stuck {
        let m = &plan.moves[s.m];
        let db = &plan.databases[s.d];
        let mut part = format!(
            "subscription {} on shard {} (copying from shard {}, database {db})",
            s.name, m.target.name, m.source.name
        );
        if let Ok(Some(r)) = conns
            .query(&m.target, db, sql::SUBSCRIPTION_ERRORS, &[&s.name])
            .await
            .map(|rows| rows.into_iter().next())
        {
            let (apply, sync): (i64, i64) = (r.get(0), r.get(1));
            part.push_str(&format!(
                " failed {sync} times copying tables and {apply} times applying changes \
                 (pg_stat_subscription_stats)"
            ));
        }
        let sysid = conns
            .one(&m.target, db, sql::SYSTEM_ID, &[])
            .await
            .map(|r| r.get::<_, String>(0));
        let tables = conns
            .query(&m.target, db, sql::SUBSCRIPTION_NOT_READY, &[&s.name])
            .await
            .unwrap_or_default();
        let mut names = Vec::new();
        let mut slots = Vec::new();
        for r in &tables {
            let (table, state, relid, suboid): (String, String, i64, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            names.push(format!("{table} ({})", state_word(&state)));
            if let Ok(sysid) = &sysid {
                slots.push(sql::tablesync_slot(suboid, relid, sysid));
            }
        }
        if !names.is_empty() {
            part.push_str(&format!("; tables not ready: {}", names.join(", ")));
        }
        if let Ok(rows) = conns
            .query(&m.source, db, sql::SLOTS_NAMED, &[&slots])
            .await
        {
            for r in rows {
                let (slot, pid): (String, Option<i32>) = (r.get(0), r.get(1));
                let user = pid.map_or("unused".to_owned(), |p| format!("used by pid {p}"));
                part.push_str(&format!(
                    "; its initial-copy slot {slot} exists on shard {} ({user}): another \
                     subscriber with the same system identifier (a clone of shard {}) may hold it",
                    m.source.name, m.target.name
                ));
            }
        }
        parts.push(part);
    }
    format!(
        "the initial copy is stuck: for {STALL:?} nothing new arrived while the subscription \
         kept failing: {}; the target shard's server log has each error (lines with \"logical \
         replication\"); often the admin login cannot connect to the source for replication \
         (pg_hba.conf), or a constraint or trigger on the target rejects rows; the move was \
         undone",
        parts.join("; ")
    )
}

/// Worst lag over the moves (bytes) and per-move lags, read from the sources' slots, and the
/// subscriptions' seconds since they last heard of a source position.
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
                return Err(Stop::Fail(EngineError::Refused(format!(
                    "replication slot {name} is missing on shard {} — someone dropped it; the \
                     move was undone, start it again",
                    m.source.name
                ))));
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

/// Inserts marker `seq` in every database of every source: it reaches each target after every
/// change committed before it (cutover markers count from 1, probes from `PROBE_SEQ_START`).
pub(crate) async fn insert_markers(
    plan: &Plan,
    conns: &mut Conns,
    seq: i64,
) -> Result<(), ShardError> {
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
    Ok(())
}

/// Whether marker `seq` from the move's source has reached its target in `db`.
pub(crate) async fn marker_arrived(
    plan: &Plan,
    conns: &mut Conns,
    m: &super::plan::Move,
    db: &str,
    seq: i64,
) -> Result<bool, ShardError> {
    let row = conns
        .one(
            &m.target,
            db,
            sql::MARKER_ARRIVED,
            &[&plan.job_id, &m.source.name, &seq],
        )
        .await?;
    Ok(row.get(0))
}

/// Inserts probe marker `seq` on every source and waits up to `PROBE_WAIT` for it on every
/// target. The travel time when it arrived everywhere, else `None`.
async fn probe(ctx: &Ctx, conns: &mut Conns, seq: i64) -> Result<Option<Duration>, Stop> {
    let plan = &ctx.plan;
    let t0 = Instant::now();
    insert_markers(plan, conns, seq).await?;
    let mut waiting: Vec<(&String, &super::plan::Move)> = plan
        .databases
        .iter()
        .flat_map(|db| plan.moves.iter().map(move |m| (db, m)))
        .collect();
    loop {
        let mut still = Vec::new();
        for (db, m) in waiting {
            if !marker_arrived(plan, conns, m, db, seq).await? {
                still.push((db, m));
            }
        }
        if still.is_empty() {
            return Ok(Some(t0.elapsed()));
        }
        if t0.elapsed() >= PROBE_WAIT {
            return Ok(None);
        }
        ctx.check()?;
        tokio::time::sleep(PROBE_POLL).await;
        waiting = still;
    }
}

/// Waits until the targets have caught up. `probe_seq`: the next probe marker's number.
pub(crate) async fn catch_up(
    ctx: &Ctx,
    conns: &mut Conns,
    probe_seq: &mut i64,
) -> Result<(), Stop> {
    ctx.set_phase(Phase::CatchingUp, "waiting for the targets to catch up")
        .await;
    let max = ctx.config.rebalance.catchup_max_lag_bytes;
    loop {
        ctx.check()?;
        let (per_move, seconds) = lags(ctx, conns).await?;
        let worst = per_move.iter().copied().max().unwrap_or(0);
        let report = |seconds: f64, msg: String| {
            move |j: &mut shardgate_topology::Job| {
                for (mp, l) in j.progress.moves.iter_mut().zip(&per_move) {
                    mp.lag_bytes = Some(*l);
                }
                j.progress.lag_bytes = Some(worst);
                j.progress.lag_seconds = Some(seconds);
                j.progress.message = msg;
            }
        };
        if worst <= max {
            ctx.update(report(seconds, format!("caught up: {worst} bytes behind")))
                .await;
            return Ok(());
        }
        // The byte lag counts WAL of other keys the target has no use for: ask a marker.
        let seq = *probe_seq;
        *probe_seq += 1;
        let travel = probe(ctx, conns, seq).await?;
        let secs = travel.unwrap_or(PROBE_WAIT).as_secs_f64();
        let msg = match travel {
            Some(t) => format!(
                "caught up: a probe reached every target in {} ms ({worst} bytes behind)",
                t.as_millis()
            ),
            None => format!(
                "catching up: {worst} bytes behind, a probe took over {} ms (done at ≤ {max} \
                 bytes or a probe within that)",
                PROBE_WAIT.as_millis()
            ),
        };
        ctx.update(report(secs, msg)).await;
        if travel.is_some() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_needs_errors_and_no_progress() {
        let t0 = Instant::now();
        let lim = Duration::from_secs(60);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = StallWatch::new(t0);
        assert!(!w.stalled(at(0), 0, 6, 0, lim));
        // A slow copy without errors never stalls.
        assert!(!w.stalled(at(100), 0, 6, 0, lim));
        // New errors with no progress for the limit: stuck.
        assert!(w.stalled(at(101), 0, 6, 1, lim));
        let mut w = StallWatch::new(t0);
        assert!(!w.stalled(at(0), 0, 6, 0, lim));
        assert!(!w.stalled(at(30), 10, 6, 2, lim));
        assert!(!w.stalled(at(80), 10, 6, 3, lim));
        assert!(w.stalled(at(91), 10, 6, 3, lim));
        // Progress (a table became ready) resets the clock and the error baseline.
        assert!(!w.stalled(at(92), 10, 5, 3, lim));
        assert!(!w.stalled(at(140), 10, 5, 3, lim));
        assert!(!w.stalled(at(141), 10, 5, 4, lim));
        assert!(w.stalled(at(152), 10, 5, 4, lim));
    }
}
