//! How `shardgate admin` shows a rebalance: the status summary, the one-line form used by
//! `--watch` without a terminal, and what the progress bar shows in each phase. Pure functions
//! of the API's values, so they are tested without a server.

use std::fmt::Write as _;

use shardgate_topology::{Job, JobKind, Phase, ProxyVersion};

use crate::rebalance::RebalanceStatus;
use crate::table::{self, Align};

/// The command that follows a job, for the messages that point at it.
pub const WATCH_COMMAND: &str = "shardgate admin rebalance status --watch";

/// What the progress bar shows for a job: `position` of `length`, and a message.
#[derive(Debug, Clone, PartialEq)]
pub struct BarView {
    pub length: u64,
    pub position: u64,
    pub message: String,
}

/// "add shard s4" / "remove shard s2".
pub fn describe(job: &Job) -> String {
    match &job.kind {
        JobKind::Add { shard } => format!("add shard {}", shard.name),
        JobKind::Remove { shard } => format!("remove shard {shard}"),
    }
}

/// What `shards add` and `shards remove` print for the job they started.
pub fn started(job: &Job) -> String {
    format!(
        "started job {} ({}): watch it with `{WATCH_COMMAND}`\n",
        job.id,
        describe(job)
    )
}

/// What `rebalance abort` prints for the job it asked to stop.
pub fn aborting(job: &Job) -> String {
    let was = job
        .stopped_in
        .filter(|_| job.phase == Phase::Aborting)
        .map(|p| format!(", stopped in {p}"))
        .unwrap_or_default();
    format!(
        "abort requested for job {} ({}): phase {}{was}; watch it with `{WATCH_COMMAND}`\n",
        job.id,
        describe(job),
        job.phase
    )
}

/// The exit status of a watched job that ended: 0 when it did its work.
pub fn exit_code(phase: Phase) -> i32 {
    if phase == Phase::Done {
        0
    } else {
        1
    }
}

/// The full `rebalance status` text. `now_ms` (ms since the epoch) dates the job.
pub fn summary(status: &RebalanceStatus, now_ms: u64) -> String {
    let mut text = String::new();
    match &status.job {
        None => text.push_str("no rebalance job has run\n"),
        Some(job) => job_summary(&mut text, job, now_ms),
    }
    let _ = writeln!(text, "topology version {}", status.topology_version);
    text.push_str(&proxies_table(&status.proxies, status.topology_version));
    text
}

fn job_summary(text: &mut String, job: &Job, now_ms: u64) {
    let p = &job.progress;
    let _ = writeln!(text, "job {}: {}", job.id, describe(job));
    let stopped = job
        .stopped_in
        .map(|s| format!(" (stopped in {s})"))
        .unwrap_or_default();
    let abort = if job.abort_requested && !job.phase.is_terminal() {
        ", abort requested"
    } else {
        ""
    };
    let timing = match job.finished_ms {
        Some(end) => format!(", took {}", duration(end.saturating_sub(job.started_ms))),
        None if job.phase.is_terminal() => String::new(),
        None => format!(
            ", running for {}",
            duration(now_ms.saturating_sub(job.started_ms))
        ),
    };
    let _ = writeln!(text, "phase: {}{stopped}{abort}{timing}", job.phase);
    if !p.message.is_empty() {
        let _ = writeln!(text, "now: {}", p.message);
    }
    let _ = writeln!(
        text,
        "rows copied: {}",
        copied(p.rows_copied, p.rows_estimated)
    );
    let _ = writeln!(text, "lag: {}", lag(p.lag_bytes, p.lag_seconds));
    let _ = writeln!(
        text,
        "cutover pauses: {}",
        pauses(&p.cutover_pauses_ms, job.phase)
    );
    let _ = writeln!(text, "rows deleted: {}", count(p.rows_deleted));
    if let Some(error) = &job.error {
        let _ = writeln!(text, "error: {error}");
    }
    let versions = match job.to_version {
        Some(to) => format!("{} -> {to}", job.from_version),
        None => format!("{} -> (not published)", job.from_version),
    };
    let _ = writeln!(text, "shard map versions: {versions}");
    if !p.moves.is_empty() {
        text.push_str(&moves_table(job));
    }
}

fn moves_table(job: &Job) -> String {
    let rows: Vec<Vec<String>> = job
        .progress
        .moves
        .iter()
        .map(|m| {
            vec![
                m.source.clone(),
                m.target.clone(),
                m.slots.to_string(),
                count(m.rows_estimated),
                count(m.rows_copied),
                m.lag_bytes.map_or("-".into(), bytes),
                m.verified_rows.map_or("-".into(), count),
                count(m.rows_deleted),
            ]
        })
        .collect();
    let columns = [
        ("SOURCE", Align::Left),
        ("TARGET", Align::Left),
        ("SLOTS", Align::Right),
        ("ROWS_EST", Align::Right),
        ("COPIED", Align::Right),
        ("LAG", Align::Right),
        ("VERIFIED", Align::Right),
        ("DELETED", Align::Right),
    ];
    table::render(&columns, &rows)
}

fn proxies_table(proxies: &[ProxyVersion], newest: u64) -> String {
    if proxies.is_empty() {
        return "no proxies have reported\n".to_owned();
    }
    let rows: Vec<Vec<String>> = proxies
        .iter()
        .map(|p| {
            // A proxy behind the newest map still routes moved keys to their old owner.
            let state = if p.version >= newest {
                "current"
            } else {
                "behind"
            };
            vec![
                p.proxy_id.clone(),
                p.version.to_string(),
                state.to_owned(),
                seen_ago(p.seen_seconds_ago),
            ]
        })
        .collect();
    let columns = [
        ("PROXY", Align::Left),
        ("VERSION", Align::Right),
        ("STATE", Align::Left),
        ("SEEN", Align::Right),
    ];
    table::render(&columns, &rows)
}

/// The job in one line, for `--watch` without a terminal (printed when it changes).
pub fn line(job: &Job) -> String {
    let p = &job.progress;
    let mut message = bar_view(job).message;
    if job.phase == Phase::Copying {
        // The bar shows the percent; the line says it.
        message = message.replacen(
            &copied_short(p.rows_copied, p.rows_estimated),
            &copied(p.rows_copied, p.rows_estimated),
            1,
        );
    }
    format!("{} {}: {message}", job.id, describe(job))
}

/// What the progress bar shows: rows copied while copying, rows deleted during cleanup, a
/// full bar in between (the copy is done; the message says what is being waited for).
pub fn bar_view(job: &Job) -> BarView {
    let p = &job.progress;
    // The estimate comes from table statistics: the copy may pass it.
    let estimated = p.rows_estimated.max(p.rows_copied);
    let (length, position, what) = match job.phase {
        Phase::Preflight | Phase::Preparing => (estimated, 0, job.phase.to_string()),
        Phase::Copying => (
            estimated,
            p.rows_copied,
            format!(
                "copying · {}",
                copied_short(p.rows_copied, p.rows_estimated)
            ),
        ),
        Phase::CatchingUp => (
            estimated,
            estimated,
            format!("catching up · lag {}", lag(p.lag_bytes, p.lag_seconds)),
        ),
        Phase::Cutover => (
            estimated,
            estimated,
            format!(
                "cutover · pauses {}",
                pauses(&p.cutover_pauses_ms, job.phase)
            ),
        ),
        Phase::Cleanup | Phase::Done => {
            // What is to delete is what was copied.
            let total = p.rows_copied.max(p.rows_deleted);
            let what = format!("{} · {} rows deleted", job.phase, count(p.rows_deleted));
            (total, p.rows_deleted, what)
        }
        Phase::Aborting | Phase::Aborted | Phase::Failed => {
            let stopped = job
                .stopped_in
                .map(|s| format!(" (stopped in {s})"))
                .unwrap_or_default();
            (estimated, p.rows_copied, format!("{}{stopped}", job.phase))
        }
    };
    let detail = match (&job.error, p.message.is_empty()) {
        (Some(error), _) => format!(" · {error}"),
        (None, false) => format!(" · {}", p.message),
        (None, true) => String::new(),
    };
    BarView {
        length,
        position: position.min(length),
        message: format!("{what}{detail}"),
    }
}

fn copied(rows: u64, estimated: u64) -> String {
    if estimated == 0 {
        return copied_short(rows, estimated);
    }
    let percent = (100.0 * rows as f64 / estimated as f64).min(100.0);
    format!("{} ({percent:.1}%)", copied_short(rows, estimated))
}

/// Rows copied of the estimate, without the percent (the bar shows it).
fn copied_short(rows: u64, estimated: u64) -> String {
    if estimated == 0 {
        return format!("{} rows", count(rows));
    }
    format!("{} of ~{} rows", count(rows), count(estimated))
}

fn lag(lag_bytes: Option<u64>, lag_seconds: Option<f64>) -> String {
    match (lag_bytes, lag_seconds) {
        (None, None) => "-".to_owned(),
        (Some(b), None) => bytes(b),
        (None, Some(s)) => format!("{s:.1} s"),
        (Some(b), Some(s)) => format!("{}, {s:.1} s", bytes(b)),
    }
}

fn pauses(ms: &[f64], phase: Phase) -> String {
    if ms.is_empty() {
        let none = if phase.is_terminal() {
            "none"
        } else {
            "none yet"
        };
        return none.to_owned();
    }
    let each: Vec<String> = ms.iter().map(|m| format!("{m:.1} ms")).collect();
    let attempts = if ms.len() == 1 { "attempt" } else { "attempts" };
    format!("{} ({} {attempts})", each.join(", "), ms.len())
}

/// 1234567 → "1,234,567".
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{:.1}s", ms as f64 / 1000.0),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

fn seen_ago(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".to_owned();
    }
    format!("{} ago", duration((seconds * 1000.0) as u64))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shardgate_config::{Host, Shard};
    use shardgate_topology::{MoveProgress, Progress};

    /// An add-shard job in `phase`, 45,000 of 100,000 rows copied.
    pub(crate) fn job(phase: Phase) -> Job {
        let shard = |name: &str| Shard {
            name: name.into(),
            primary: Host {
                host: "10.0.0.4".into(),
                port: 5432,
                ..Default::default()
            },
            replicas: vec![],
            admin_user: None,
            admin_password: None,
        };
        Job {
            id: "rb-1700000000000".into(),
            kind: JobKind::Add { shard: shard("s4") },
            phase,
            stopped_in: None,
            from_version: 3,
            old_shards: vec![shard("s1"), shard("s2")],
            new_shards: vec![shard("s1"), shard("s2"), shard("s4")],
            to_version: None,
            owner: "proxy-a".into(),
            heartbeat_ms: 1_700_000_100_000,
            started_ms: 1_700_000_000_000,
            finished_ms: None,
            abort_requested: false,
            error: None,
            progress: Progress {
                rows_estimated: 100_000,
                rows_copied: 45_000,
                lag_bytes: Some(1_572_864),
                lag_seconds: Some(0.84),
                cutover_pauses_ms: vec![],
                rows_deleted: 0,
                moves: vec![MoveProgress {
                    source: "s1".into(),
                    target: "s4".into(),
                    slots: 4096,
                    rows_estimated: 100_000,
                    rows_copied: 45_000,
                    lag_bytes: Some(1_572_864),
                    verified_rows: None,
                    rows_deleted: 0,
                }],
                message: String::new(),
            },
            plan: None,
        }
    }

    pub(crate) fn status(job: Option<Job>) -> RebalanceStatus {
        RebalanceStatus {
            job,
            topology_version: 4,
            proxies: vec![
                ProxyVersion {
                    proxy_id: "proxy-a".into(),
                    version: 4,
                    seen_seconds_ago: 0.4,
                },
                ProxyVersion {
                    proxy_id: "proxy-b".into(),
                    version: 3,
                    seen_seconds_ago: 75.0,
                },
            ],
        }
    }

    #[test]
    fn summary_shows_phase_rows_lag_pauses_and_proxies() {
        let mut job = job(Phase::Cutover);
        job.progress.cutover_pauses_ms = vec![12.34, 3.0];
        job.progress.message = "waiting for s4 to reach the fence".into();
        let text = summary(&status(Some(job)), 1_700_000_125_000);
        for expected in [
            "job rb-1700000000000: add shard s4\n",
            "phase: cutover, running for 2m 05s\n",
            "now: waiting for s4 to reach the fence\n",
            "rows copied: 45,000 of ~100,000 rows (45.0%)\n",
            "lag: 1.5 MiB, 0.8 s\n",
            "cutover pauses: 12.3 ms, 3.0 ms (2 attempts)\n",
            "rows deleted: 0\n",
            "shard map versions: 3 -> (not published)\n",
            "topology version 4\n",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
        // The moves and proxies tables.
        assert!(text.contains("SOURCE  TARGET  SLOTS"), "{text}");
        assert!(text.contains("s1      s4       4096"), "{text}");
        assert!(
            text.contains("proxy-a        4  current    0.4s ago"),
            "{text}"
        );
        assert!(
            text.contains("proxy-b        3  behind   1m 15s ago"),
            "{text}"
        );
        assert!(!text.contains("error:"), "{text}");
    }

    #[test]
    fn summary_of_a_failed_job_and_of_none() {
        let mut job = job(Phase::Failed);
        job.stopped_in = Some(Phase::Copying);
        job.error = Some("s4: connection refused".into());
        job.finished_ms = Some(job.started_ms + 3_500);
        let text = summary(&status(Some(job)), u64::MAX);
        assert!(
            text.contains("phase: failed (stopped in copying), took 3.5s\n"),
            "{text}"
        );
        assert!(text.contains("error: s4: connection refused\n"), "{text}");

        let mut none = status(None);
        none.proxies.clear();
        assert_eq!(
            summary(&none, 0),
            "no rebalance job has run\ntopology version 4\nno proxies have reported\n"
        );
    }

    #[test]
    fn bar_follows_the_phase() {
        let view = bar_view(&job(Phase::Copying));
        assert_eq!((view.position, view.length), (45_000, 100_000));
        assert_eq!(view.message, "copying · 45,000 of ~100,000 rows");
        assert_eq!(
            line(&job(Phase::Copying)),
            "rb-1700000000000 add shard s4: copying · 45,000 of ~100,000 rows (45.0%)"
        );

        let view = bar_view(&job(Phase::CatchingUp));
        assert_eq!((view.position, view.length), (100_000, 100_000));
        assert_eq!(view.message, "catching up · lag 1.5 MiB, 0.8 s");

        let mut cutover = job(Phase::Cutover);
        cutover.progress.cutover_pauses_ms = vec![4.0];
        assert_eq!(
            bar_view(&cutover).message,
            "cutover · pauses 4.0 ms (1 attempt)"
        );

        let mut cleanup = job(Phase::Cleanup);
        cleanup.progress.rows_copied = 100_000;
        cleanup.progress.rows_deleted = 25_000;
        cleanup.progress.message = "deleting moved rows from s1".into();
        let view = bar_view(&cleanup);
        assert_eq!((view.position, view.length), (25_000, 100_000));
        assert_eq!(
            view.message,
            "cleanup · 25,000 rows deleted · deleting moved rows from s1"
        );

        // An estimate the copy passed grows the bar instead of overflowing it.
        let mut over = job(Phase::Copying);
        over.progress.rows_copied = 120_000;
        let view = bar_view(&over);
        assert_eq!((view.position, view.length), (120_000, 120_000));
        assert!(line(&over).contains("120,000 of ~100,000 rows (100.0%)"));

        let mut aborting = job(Phase::Aborting);
        aborting.stopped_in = Some(Phase::CatchingUp);
        assert_eq!(
            line(&aborting),
            "rb-1700000000000 add shard s4: aborting (stopped in catching_up)"
        );
    }

    #[test]
    fn started_and_aborting_messages() {
        assert_eq!(
            started(&job(Phase::Preflight)),
            "started job rb-1700000000000 (add shard s4): watch it with \
             `shardgate admin rebalance status --watch`\n"
        );
        let mut remove = job(Phase::Aborting);
        remove.kind = JobKind::Remove { shard: "s2".into() };
        remove.stopped_in = Some(Phase::Copying);
        assert_eq!(
            aborting(&remove),
            "abort requested for job rb-1700000000000 (remove shard s2): phase aborting, \
             stopped in copying; watch it with `shardgate admin rebalance status --watch`\n"
        );
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(duration(59_949), "59.9s");
        assert_eq!(duration(7_260_000), "2h 01m");
        assert_eq!(seen_ago(f64::NAN), "-");
        assert_eq!(exit_code(Phase::Done), 0);
        for phase in [Phase::Failed, Phase::Aborted] {
            assert_eq!(exit_code(phase), 1);
        }
    }
}
