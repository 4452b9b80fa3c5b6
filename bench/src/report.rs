//! Turning runs into the results table (stdout and `bench/RESULTS.md`).

use std::time::Duration;

use crate::procfs::{CpuTime, MachineTime};
use crate::stats::{median, Latency};

/// What one pgbench run against one target measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub tps: f64,
    pub transactions: u64,
    /// From the per-transaction log.
    pub latency: Option<Latency>,
    /// The proxy's CPU time during the run; `None` for direct runs.
    pub proxy_cpu: Option<CpuTime>,
    /// The proxy's resident memory after the run, KiB.
    pub proxy_rss_kib: Option<u64>,
    /// Its anonymous part (heap, stacks), KiB.
    pub proxy_anon_kib: Option<u64>,
    /// The proxy's syscalls and context switches during the run (`--syscalls`).
    pub counts: Option<crate::syscalls::Counts>,
    /// The whole machine's busy CPU time and context switches during the run.
    pub machine: Option<MachineTime>,
}

/// The figures of one (case, target) cell: medians over the repeats.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub runs: usize,
    pub tps: f64,
    pub avg_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Proxy CPU microseconds per transaction (user and system).
    pub cpu_us_per_tx: Option<f64>,
    /// The user part of it.
    pub user_us_per_tx: Option<f64>,
    /// Largest proxy RSS seen after a run, MiB.
    pub rss_mib: Option<f64>,
    /// Largest anonymous part of it, MiB.
    pub anon_mib: Option<f64>,
    /// Proxy syscalls and context switches per transaction (medians), when counted.
    pub syscalls_per_tx: Option<f64>,
    pub switches_per_tx: Option<f64>,
    /// The machine's busy CPU microseconds and context switches per transaction (medians).
    pub machine_us_per_tx: Option<f64>,
    pub machine_switches_per_tx: Option<f64>,
}

/// Medians over `runs` (the largest RSS); `None` without runs.
pub fn summarize(runs: &[Run]) -> Option<Summary> {
    let tps = median(runs.iter().map(|r| r.tps))?;
    Some(Summary {
        runs: runs.len(),
        tps,
        avg_ms: median(runs.iter().filter_map(|r| r.latency.map(|l| l.avg_ms))),
        p99_ms: median(runs.iter().filter_map(|r| r.latency.map(|l| l.p99_ms))),
        cpu_us_per_tx: median_per_tx(runs, |r| Some(micros(r.proxy_cpu?.total))),
        user_us_per_tx: median_per_tx(runs, |r| Some(micros(r.proxy_cpu?.user))),
        rss_mib: runs
            .iter()
            .filter_map(|r| r.proxy_rss_kib)
            .max()
            .map(|k| k as f64 / 1024.0),
        anon_mib: runs
            .iter()
            .filter_map(|r| r.proxy_anon_kib)
            .max()
            .map(|k| k as f64 / 1024.0),
        syscalls_per_tx: median_per_tx(runs, |r| Some(r.counts?.syscalls as f64)),
        switches_per_tx: median_per_tx(runs, |r| Some(r.counts?.switches as f64)),
        machine_us_per_tx: median_per_tx(runs, |r| Some(micros(r.machine?.busy))),
        machine_switches_per_tx: median_per_tx(runs, |r| Some(r.machine?.switches as f64)),
    })
}

/// The median over `runs` of `amount` (a run's total of something, when it was measured)
/// per transaction.
fn median_per_tx(runs: &[Run], amount: impl Fn(&Run) -> Option<f64>) -> Option<f64> {
    median(runs.iter().filter_map(|r| {
        let a = amount(r)?;
        (r.transactions > 0).then(|| a / r.transactions as f64)
    }))
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// What happened to one (case, target) cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Measured(Summary),
    /// Not run, and why (e.g. PgBouncer too old for `-M prepared`).
    Skipped(String),
    /// A run failed, and how.
    Failed(String),
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub case: String,
    pub target: String,
    pub outcome: Outcome,
    /// TPS relative to direct and to PgBouncer in the same case.
    pub vs_direct: Option<f64>,
    pub vs_pgbouncer: Option<f64>,
    /// Free text shown after the figures (e.g. idle-client connect time).
    pub note: String,
}

/// Fills in `vs_direct` and `vs_pgbouncer` from the rows of the same case whose target is
/// `direct` and `pgbouncer`.
pub fn add_ratios(rows: &mut [Row], direct: &str, pgbouncer: &str) {
    let tps_of = |rows: &[Row], case: &str, target: &str| {
        rows.iter()
            .find(|r| r.case == case && r.target == target)
            .and_then(|r| match &r.outcome {
                Outcome::Measured(s) if s.tps > 0.0 => Some(s.tps),
                _ => None,
            })
    };
    let ratios: Vec<(Option<f64>, Option<f64>)> = rows
        .iter()
        .map(|r| match &r.outcome {
            Outcome::Measured(s) => (
                tps_of(rows, &r.case, direct).map(|d| s.tps / d),
                tps_of(rows, &r.case, pgbouncer).map(|p| s.tps / p),
            ),
            _ => (None, None),
        })
        .collect();
    for (row, (d, p)) in rows.iter_mut().zip(ratios) {
        row.vs_direct = d;
        row.vs_pgbouncer = p;
    }
}

const HEADERS: [&str; 11] = [
    "case",
    "target",
    "TPS",
    "×direct",
    "×pgbouncer",
    "avg ms",
    "p99 ms",
    "CPU (user) µs/tx",
    "machine µs/tx (cs/tx)",
    "RSS (anon) MiB",
    "notes",
];

fn opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "–".to_string(),
    }
}

fn cells(row: &Row) -> [String; 11] {
    let (tps, avg, p99, cpu, machine, rss, extra) = match &row.outcome {
        Outcome::Measured(s) => (
            format!("{:.0}", s.tps),
            opt(s.avg_ms, 3),
            opt(s.p99_ms, 3),
            match (s.cpu_us_per_tx, s.user_us_per_tx) {
                (Some(cpu), Some(user)) => format!("{cpu:.1} ({user:.1})"),
                (cpu, _) => opt(cpu, 1),
            },
            match (s.machine_us_per_tx, s.machine_switches_per_tx) {
                (Some(us), Some(cs)) => format!("{us:.1} ({cs:.1})"),
                (us, _) => opt(us, 1),
            },
            match (s.rss_mib, s.anon_mib) {
                (Some(rss), Some(anon)) => format!("{rss:.1} ({anon:.1})"),
                (rss, _) => opt(rss, 1),
            },
            match (s.syscalls_per_tx, s.switches_per_tx) {
                (Some(calls), Some(switches)) => {
                    format!("{calls:.1} syscalls/tx, {switches:.2} switches/tx")
                }
                _ => String::new(),
            },
        ),
        Outcome::Skipped(why) => dashes(format!("skipped: {why}")),
        Outcome::Failed(why) => dashes(format!("FAILED: {why}")),
    };
    let note = [extra, row.note.clone()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    [
        row.case.clone(),
        row.target.clone(),
        tps,
        opt(row.vs_direct, 2),
        opt(row.vs_pgbouncer, 2),
        avg,
        p99,
        cpu,
        machine,
        rss,
        note,
    ]
}

type Figures = (String, String, String, String, String, String, String);

fn dashes(note: String) -> Figures {
    let d = || "–".to_string();
    (d(), d(), d(), d(), d(), d(), note)
}

/// A Markdown table with padded columns (numbers right-aligned), readable as plain text too.
pub fn render_table(rows: &[Row]) -> String {
    let body: Vec<[String; 11]> = rows.iter().map(cells).collect();
    let mut widths: Vec<usize> = HEADERS.iter().map(|h| h.chars().count()).collect();
    for r in &body {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let numeric = |i: usize| (2..10).contains(&i);
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = w - c.chars().count();
            if numeric(i) {
                s.push_str(&format!(" {}{} |", " ".repeat(pad), c));
            } else {
                s.push_str(&format!(" {}{} |", c, " ".repeat(pad)));
            }
        }
        s.push('\n');
        s
    };
    let headers: Vec<String> = HEADERS.iter().map(|h| h.to_string()).collect();
    let mut out = line(&headers);
    out.push('|');
    for (i, w) in widths.iter().enumerate() {
        if numeric(i) {
            out.push_str(&format!(" {}: |", "-".repeat(w.saturating_sub(1).max(2))));
        } else {
            out.push_str(&format!(" {} |", "-".repeat((*w).max(3))));
        }
    }
    out.push('\n');
    for r in &body {
        out.push_str(&line(r));
    }
    out
}

/// Replaces the text between `<!-- bench:NAME:begin -->` and `<!-- bench:NAME:end -->` in
/// `doc` with `body` (markers kept), or appends a new marked section when there is none.
pub fn replace_section(doc: &str, name: &str, body: &str) -> String {
    let begin = format!("<!-- bench:{name}:begin -->");
    let end = format!("<!-- bench:{name}:end -->");
    let body = body.trim_end();
    if let Some(b) = doc.find(&begin) {
        if let Some(e) = doc[b..].find(&end).map(|e| b + e) {
            return format!("{}{begin}\n{body}\n{}", &doc[..b], &doc[e..]);
        }
    }
    let mut out = doc.trim_end().to_string();
    if !out.is_empty() {
        out.push_str("\n\n");
    }
    out.push_str(&format!("{begin}\n{body}\n{end}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(tps: f64, tx: u64, cpu_ms: Option<u64>, rss: Option<u64>, p99: f64) -> Run {
        Run {
            tps,
            transactions: tx,
            latency: Some(Latency {
                avg_ms: 1.0,
                p99_ms: p99,
                count: tx as usize,
            }),
            // A fifth of the CPU time in user space.
            proxy_cpu: cpu_ms.map(|ms| CpuTime {
                total: Duration::from_millis(ms),
                user: Duration::from_millis(ms / 5),
            }),
            proxy_rss_kib: rss,
            proxy_anon_kib: rss.map(|k| k / 4),
            counts: None,
            machine: Some(MachineTime {
                busy: Duration::from_millis(tx * 2),
                switches: tx * 3,
            }),
        }
    }

    #[test]
    fn summary_takes_medians_and_max_rss() {
        let runs = [
            run(100.0, 1000, Some(100), Some(2048), 3.0),
            run(300.0, 2000, Some(100), Some(4096), 1.0),
            run(200.0, 1000, Some(300), Some(1024), 2.0),
        ];
        let s = summarize(&runs).unwrap();
        assert_eq!(s.runs, 3);
        assert_eq!(s.tps, 200.0);
        assert_eq!(s.p99_ms, Some(2.0));
        // 100 µs, 50 µs, 300 µs per transaction.
        assert_eq!(s.cpu_us_per_tx, Some(100.0));
        assert_eq!(s.user_us_per_tx, Some(20.0));
        assert_eq!(s.rss_mib, Some(4.0));
        // The test runs give a quarter of their RSS as anonymous.
        assert_eq!(s.anon_mib, Some(1.0));
        assert_eq!(s.machine_us_per_tx, Some(2000.0));
        assert_eq!(s.machine_switches_per_tx, Some(3.0));
        assert_eq!(summarize(&[]), None);
        let direct = summarize(&[run(10.0, 10, None, None, 1.0)]).unwrap();
        assert_eq!(direct.cpu_us_per_tx, None);
        assert_eq!(direct.user_us_per_tx, None);
        assert_eq!(direct.rss_mib, None);
    }

    fn row(case: &str, target: &str, tps: Option<f64>) -> Row {
        Row {
            case: case.into(),
            target: target.into(),
            outcome: match tps {
                Some(tps) => {
                    Outcome::Measured(summarize(&[run(tps, 10, None, None, 1.0)]).unwrap())
                }
                None => Outcome::Skipped("old".into()),
            },
            vs_direct: None,
            vs_pgbouncer: None,
            note: String::new(),
        }
    }

    #[test]
    fn ratios_within_a_case() {
        let mut rows = vec![
            row("a", "direct", Some(1000.0)),
            row("a", "pgbouncer", Some(500.0)),
            row("a", "shardgate", Some(750.0)),
            row("b", "direct", Some(100.0)),
            row("b", "pgbouncer", None),
            row("b", "shardgate", Some(50.0)),
        ];
        add_ratios(&mut rows, "direct", "pgbouncer");
        assert_eq!(rows[2].vs_direct, Some(0.75));
        assert_eq!(rows[2].vs_pgbouncer, Some(1.5));
        assert_eq!(rows[0].vs_direct, Some(1.0));
        assert_eq!(rows[5].vs_direct, Some(0.5));
        assert_eq!(rows[5].vs_pgbouncer, None);
        assert_eq!(rows[4].vs_direct, None);
    }

    #[test]
    fn table_is_aligned_markdown() {
        let mut rows = vec![
            row("select-simple-c1", "direct", Some(1234.4)),
            row("select-simple-c1", "pgbouncer", None),
        ];
        add_ratios(&mut rows, "direct", "pgbouncer");
        let t = render_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|l| l.chars().count() == width), "{t}");
        assert!(lines[1].contains("--: |"), "{t}");
        assert!(lines[2].contains("| 1234 |"), "{t}");
        assert!(lines[3].contains("skipped: old"), "{t}");
    }

    #[test]
    fn sections_are_replaced_or_appended() {
        let doc = "# R\n\n<!-- bench:compare:begin -->\nold\n<!-- bench:compare:end -->\n\ntail\n";
        let new = replace_section(doc, "compare", "new\n");
        assert_eq!(
            new,
            "# R\n\n<!-- bench:compare:begin -->\nnew\n<!-- bench:compare:end -->\n\ntail\n"
        );
        let added = replace_section(&new, "profile", "p");
        assert!(added.starts_with(&new.trim_end().to_string()));
        assert!(added.ends_with("<!-- bench:profile:begin -->\np\n<!-- bench:profile:end -->\n"));
        assert_eq!(
            replace_section("", "x", "y"),
            "<!-- bench:x:begin -->\ny\n<!-- bench:x:end -->\n"
        );
    }
}
