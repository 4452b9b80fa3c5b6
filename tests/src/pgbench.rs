//! Running the real `pgbench` against a server or the proxy and reading its summary, for load
//! tests and the benchmark comparisons.

use std::ffi::OsStr;
use std::process::Command;

use crate::bin::pg_bin;
use crate::error::{LocalPgError, Result};
use crate::process::{describe, failed, run_unchecked};

/// The summary pgbench prints at the end of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct PgbenchResult {
    /// Transactions per second, from the "without initial connection time" line if present
    /// (else the "excluding connections establishing" line, else the first `tps =` line).
    pub tps: f64,
    /// Transactions actually processed (the `N` of `N/M`).
    pub transactions: u64,
    /// Failed transactions (PostgreSQL 15 and later print this line; 0 when absent).
    pub failed: u64,
    /// Average latency in milliseconds, when printed.
    pub latency_avg_ms: Option<f64>,
    /// Exit code: 0 for a clean run; 2 when some client aborted (the summary is still there).
    pub exit_code: i32,
    /// Everything pgbench printed on stdout.
    pub stdout: String,
    /// Everything pgbench printed on stderr (progress and errors).
    pub stderr: String,
}

fn command<A, K, V>(args: &[A], env: &[(K, V)]) -> Result<Command>
where
    A: AsRef<OsStr>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut cmd = Command::new(pg_bin("pgbench")?);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(cmd)
}

/// Runs `pgbench args…` with the extra environment `env` (e.g. `PGPASSWORD`) and parses its
/// summary. A run whose clients aborted still returns a result (see `exit_code`) as long as the
/// summary was printed; a run without a summary is an error carrying stderr.
pub fn pgbench<A, K, V>(args: &[A], env: &[(K, V)]) -> Result<PgbenchResult>
where
    A: AsRef<OsStr>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut cmd = command(args, env)?;
    let out = run_unchecked(&mut cmd, None)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let exit_code = out.status.code().unwrap_or(-1);
    match parse_summary(&stdout) {
        Some(summary) => Ok(PgbenchResult {
            exit_code,
            stderr,
            ..summary
        }),
        None if !out.status.success() => Err(failed(&cmd, &out)),
        None => Err(LocalPgError::Parse {
            what: format!("a pgbench summary (tps line) from `{}`", describe(&cmd)),
            output: format!("{stdout}\n{stderr}"),
        }),
    }
}

/// Runs pgbench for something without a summary, such as `-i` (initialise tables), and fails
/// on a non-zero exit. Returns stdout.
pub fn pgbench_raw<A, K, V>(args: &[A], env: &[(K, V)]) -> Result<String>
where
    A: AsRef<OsStr>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut cmd = command(args, env)?;
    let out = run_unchecked(&mut cmd, None)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(failed(&cmd, &out))
    }
}

/// Parses pgbench's summary from its stdout; `None` without a `tps =` line.
pub fn parse_summary(stdout: &str) -> Option<PgbenchResult> {
    let mut tps_first = None;
    let mut tps_preferred = None;
    let mut transactions = None;
    let mut failed = 0;
    let mut latency = None;
    for line in stdout.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("tps = ") {
            let value = first_number(rest);
            tps_first = tps_first.or(value);
            if rest.contains("without initial connection time")
                || rest.contains("excluding connections establishing")
            {
                tps_preferred = value;
            }
        } else if let Some(rest) = line.strip_prefix("number of transactions actually processed:") {
            transactions = rest
                .trim()
                .split('/')
                .next()
                .and_then(|n| n.trim().parse().ok());
        } else if let Some(rest) = line.strip_prefix("number of failed transactions:") {
            failed = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("latency average =") {
            latency = first_number(rest);
        }
    }
    Some(PgbenchResult {
        tps: tps_preferred.or(tps_first)?,
        transactions: transactions.unwrap_or(0),
        failed,
        latency_avg_ms: latency,
        exit_code: 0,
        stdout: stdout.to_string(),
        stderr: String::new(),
    })
}

fn first_number(s: &str) -> Option<f64> {
    s.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG15: &str = "pgbench (15.8 (Debian 15.8-0+deb12u1))
transaction type: <builtin: TPC-B (sort of)>
scaling factor: 1
query mode: simple
number of clients: 4
number of threads: 2
maximum number of tries: 1
duration: 2 s
number of transactions actually processed: 2345
number of failed transactions: 3 (0.128%)
latency average = 3.402 ms
initial connection time = 12.345 ms
tps = 1175.779313 (without initial connection time)
";

    #[test]
    fn parses_pg15_summary() {
        let r = parse_summary(PG15).unwrap();
        assert_eq!(r.tps, 1175.779313);
        assert_eq!(r.transactions, 2345);
        assert_eq!(r.failed, 3);
        assert_eq!(r.latency_avg_ms, Some(3.402));
    }

    #[test]
    fn parses_old_style_and_fixed_count() {
        let out = "number of transactions actually processed: 100/100
latency average = 1.0 ms
tps = 900.0 (including connections establishing)
tps = 1000.0 (excluding connections establishing)
";
        let r = parse_summary(out).unwrap();
        assert_eq!(r.tps, 1000.0);
        assert_eq!(r.transactions, 100);
        assert_eq!(r.failed, 0);
    }

    #[test]
    fn no_summary_is_none() {
        assert!(parse_summary("done in 0.12 s (drop tables 0.00 s, ...)").is_none());
    }
}
