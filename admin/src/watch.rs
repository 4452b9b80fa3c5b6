//! `shardgate admin rebalance status --watch`: asks for the status every interval and shows
//! it — a progress bar on a terminal, else one line (or one JSON object) per change — until the
//! job ends; then prints the summary and exits 0 if the job is done, 1 if it failed or was
//! aborted. The fetching and the waiting are passed in, so the loop is tested without HTTP.

use std::io::{self, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::rebalance::RebalanceStatus;
use crate::status;

/// How often the spinner turns between two answers, so a slow phase still looks alive.
const SPIN_EVERY: Duration = Duration::from_millis(120);

/// `wide_msg` takes the rest of the line and cuts the message to fit, so the bar never wraps
/// (a wrapped bar redraws as a growing pile of lines).
const BAR_TEMPLATE: &str = "{spinner} {elapsed:>4} [{bar:25.cyan/blue}] {percent:>3}% {wide_msg}";

/// One answer of `GET /api/v1/rebalance`: parsed, and as it came (what `--json` prints).
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: RebalanceStatus,
    pub raw: String,
}

/// How the watch shows each answer.
pub enum Screen {
    /// An indicatif bar (on stderr unless another target is given), the summary at the end.
    Bar {
        bar: ProgressBar,
        /// Where the bar draws once it has a job: until then it draws nowhere, as an empty
        /// bar would read "100%".
        target: Option<ProgressDrawTarget>,
        job_id: Option<String>,
    },
    /// A line when the job's line changes, the summary at the end (output is not a terminal).
    Lines { last: Option<String> },
    /// The answer's JSON on one line whenever it changes (`--json`), nothing else.
    Json { last: Option<Box<RebalanceStatus>> },
}

impl Screen {
    pub fn bar(target: ProgressDrawTarget) -> Screen {
        let style = ProgressStyle::with_template(BAR_TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = ProgressBar::hidden().with_style(style);
        Screen::Bar {
            bar,
            target: Some(target),
            job_id: None,
        }
    }

    pub fn lines() -> Screen {
        Screen::Lines { last: None }
    }

    pub fn json() -> Screen {
        Screen::Json { last: None }
    }

    fn show(&mut self, fetched: &Fetched, out: &mut dyn Write) -> io::Result<()> {
        match self {
            Screen::Bar {
                bar,
                target,
                job_id,
            } => {
                let Some(job) = &fetched.status.job else {
                    return Ok(());
                };
                let new_job = job_id.as_deref() != Some(job.id.as_str());
                if new_job {
                    // Another job took over (or this is the first): its own clock.
                    bar.reset();
                }
                let view = status::bar_view(job);
                bar.set_length(view.length);
                bar.set_position(view.position);
                bar.set_message(view.message);
                if let Some(target) = target.take() {
                    bar.set_draw_target(target);
                    bar.enable_steady_tick(SPIN_EVERY);
                }
                if new_job {
                    bar.println(format!("job {}: {}", job.id, status::describe(job)));
                    *job_id = Some(job.id.clone());
                }
                Ok(())
            }
            Screen::Lines { last } => {
                let line = fetched
                    .status
                    .job
                    .as_ref()
                    .map_or_else(|| "no rebalance job has run".to_owned(), status::line);
                if last.as_deref() != Some(line.as_str()) {
                    writeln!(out, "{line}")?;
                    out.flush()?;
                    *last = Some(line);
                }
                Ok(())
            }
            Screen::Json { last } => {
                // Heartbeats and seen-ago move on every answer; a change is anything else.
                let key = steady(&fetched.status);
                if last.as_deref() != Some(&key) {
                    let raw = fetched.raw.trim();
                    if raw.contains('\n') {
                        serde_json::to_writer(&mut *out, &fetched.status)?;
                        writeln!(out)?;
                    } else {
                        writeln!(out, "{raw}")?;
                    }
                    out.flush()?;
                    *last = Some(Box::new(key));
                }
                Ok(())
            }
        }
    }

    /// The job ended (or there is none): clear the bar, print the summary.
    fn finish(&mut self, fetched: &Fetched, now_ms: u64, out: &mut dyn Write) -> io::Result<()> {
        match self {
            Screen::Bar { bar, .. } => bar.finish_and_clear(),
            Screen::Lines { .. } => writeln!(out)?,
            Screen::Json { .. } => return Ok(()),
        }
        out.write_all(status::summary(&fetched.status, now_ms).as_bytes())?;
        out.flush()
    }

    /// Leaves the bar where it was, so an error printed after it reads in context.
    fn abandon(&mut self) {
        if let Screen::Bar { bar, .. } = self {
            bar.abandon();
        }
    }
}

/// The status without the figures that change on every answer.
fn steady(status: &RebalanceStatus) -> RebalanceStatus {
    let mut status = status.clone();
    if let Some(job) = &mut status.job {
        job.heartbeat_ms = 0;
    }
    for proxy in &mut status.proxies {
        proxy.seen_seconds_ago = 0.0;
    }
    status
}

/// Watches until the job is over; returns the exit status (0 done or no job, 1 failed or
/// aborted). `fetch` asks the server, `pause` waits between two asks.
pub fn watch<E: From<io::Error>>(
    fetch: &mut dyn FnMut() -> Result<Fetched, E>,
    pause: &mut dyn FnMut(Duration),
    interval: Duration,
    screen: &mut Screen,
    out: &mut dyn Write,
) -> Result<i32, E> {
    loop {
        let fetched = match fetch() {
            Ok(fetched) => fetched,
            Err(e) => {
                screen.abandon();
                return Err(e);
            }
        };
        screen.show(&fetched, out)?;
        let code = match &fetched.status.job {
            None => Some(0),
            Some(job) if job.phase.is_terminal() => Some(status::exit_code(job.phase)),
            Some(_) => None,
        };
        if let Some(code) = code {
            screen.finish(&fetched, shardgate_topology::now_ms(), out)?;
            return Ok(code);
        }
        pause(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::{job, status};
    use shardgate_topology::Phase;
    use std::collections::VecDeque;

    fn fetched(phase: Option<Phase>, rows_copied: u64, heartbeat_ms: u64) -> Fetched {
        let mut status = status(phase.map(job));
        if let Some(job) = &mut status.job {
            job.progress.rows_copied = rows_copied;
            job.heartbeat_ms = heartbeat_ms;
        }
        let raw = serde_json::to_string(&status).unwrap();
        Fetched { status, raw }
    }

    /// Runs the watch over `answers` (then a fetch error); returns the exit status or error,
    /// the output and how many pauses it took.
    fn run(answers: Vec<Fetched>, mut screen: Screen) -> (Result<i32, String>, String, usize) {
        let mut answers = VecDeque::from(answers);
        let mut fetch = || {
            answers
                .pop_front()
                .ok_or_else(|| "no more answers".to_owned())
        };
        let mut pauses = 0;
        let mut pause = |interval: Duration| {
            assert_eq!(interval, Duration::from_millis(500));
            pauses += 1;
        };
        let mut out = Vec::new();
        let result = watch::<IoOr>(
            &mut || fetch().map_err(IoOr::Other),
            &mut pause,
            Duration::from_millis(500),
            &mut screen,
            &mut out,
        )
        .map_err(|e| match e {
            IoOr::Io(e) => e.to_string(),
            IoOr::Other(e) => e,
        });
        (result, String::from_utf8(out).unwrap(), pauses)
    }

    #[derive(Debug)]
    enum IoOr {
        Io(io::Error),
        Other(String),
    }

    impl From<io::Error> for IoOr {
        fn from(e: io::Error) -> IoOr {
            IoOr::Io(e)
        }
    }

    #[test]
    fn lines_until_done_then_the_summary() {
        let answers = vec![
            fetched(Some(Phase::Copying), 10_000, 1),
            // Same line, new heartbeat: not printed again.
            fetched(Some(Phase::Copying), 10_000, 2),
            fetched(Some(Phase::Copying), 50_000, 3),
            fetched(Some(Phase::Cutover), 100_000, 4),
            fetched(Some(Phase::Done), 100_000, 5),
            fetched(Some(Phase::Done), 100_000, 6),
        ];
        let (code, out, pauses) = run(answers, Screen::lines());
        assert_eq!(code, Ok(0));
        assert_eq!(pauses, 4, "stops at the first terminal answer");
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].ends_with("copying · 10,000 of ~100,000 rows (10.0%)"));
        assert!(lines[1].ends_with("copying · 50,000 of ~100,000 rows (50.0%)"));
        assert!(lines[2].ends_with("cutover · pauses none yet"));
        assert!(lines[3].starts_with("rb-1700000000000 add shard s4: done"));
        assert_eq!(lines[4], "");
        assert_eq!(lines[5], "job rb-1700000000000: add shard s4");
        assert!(
            out.contains("proxy-b"),
            "the summary ends the output:\n{out}"
        );
    }

    #[test]
    fn failed_and_aborted_jobs_exit_1() {
        for phase in [Phase::Failed, Phase::Aborted] {
            let answers = vec![
                fetched(Some(Phase::Aborting), 10_000, 1),
                fetched(Some(phase), 10_000, 2),
            ];
            let (code, out, pauses) = run(answers, Screen::lines());
            assert_eq!(code, Ok(1), "{phase}");
            assert_eq!(pauses, 1);
            assert!(out.contains(&format!("phase: {phase}")), "{out}");
        }
    }

    #[test]
    fn no_job_ends_at_once() {
        let (code, out, pauses) = run(vec![fetched(None, 0, 0)], Screen::lines());
        assert_eq!((code, pauses), (Ok(0), 0));
        assert!(out.starts_with("no rebalance job has run\n\nno rebalance job has run\n"));
    }

    #[test]
    fn json_prints_one_line_per_change_and_no_summary() {
        let answers = vec![
            fetched(Some(Phase::Copying), 10_000, 1),
            fetched(Some(Phase::Copying), 10_000, 2),
            fetched(Some(Phase::CatchingUp), 100_000, 3),
            fetched(Some(Phase::Aborted), 100_000, 4),
        ];
        let (code, out, pauses) = run(answers, Screen::json());
        assert_eq!((code, pauses), (Ok(1), 3));
        let phases: Vec<String> = out
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["job"]["phase"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(phases, ["copying", "catching_up", "aborted"]);
    }

    #[test]
    fn bar_runs_to_the_end_and_prints_the_summary() {
        let answers = vec![
            fetched(Some(Phase::Preflight), 0, 1),
            fetched(Some(Phase::Copying), 60_000, 2),
            fetched(Some(Phase::Cleanup), 100_000, 3),
            fetched(Some(Phase::Done), 100_000, 4),
        ];
        let (code, out, pauses) = run(answers, Screen::bar(ProgressDrawTarget::hidden()));
        assert_eq!((code, pauses), (Ok(0), 3));
        // The bar drew elsewhere; the output is the summary alone.
        assert!(out.starts_with("job rb-1700000000000: add shard s4\nphase: done"));
    }

    #[test]
    fn a_failed_ask_ends_the_watch_with_its_error() {
        let answers = vec![fetched(Some(Phase::Copying), 1, 1)];
        let (code, out, pauses) = run(answers, Screen::bar(ProgressDrawTarget::hidden()));
        assert_eq!(code, Err("no more answers".to_owned()));
        assert_eq!((out.as_str(), pauses), ("", 1));
    }
}
