//! pgbench's per-transaction logs (`pgbench -l --log-prefix=DIR/NAME`): one file per thread,
//! `NAME.<pid>` for the first and `NAME.<pid>.<n>` for the others, one line per transaction:
//! `client_id transaction_no time script_no time_epoch time_us [schedule_lag] [retries]`, where
//! `time` is the transaction's latency in microseconds (or `failed` / `skipped`).

use std::path::{Path, PathBuf};

/// Latencies (µs) of the completed transactions in one log file's text; lines whose time is
/// not a number (failed or skipped transactions) and malformed lines are left out.
pub fn parse_latencies(text: &str, out: &mut Vec<u64>) {
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        // client_id, transaction_no, then the time.
        if let (Some(_), Some(_), Some(time)) = (fields.next(), fields.next(), fields.next()) {
            if let Ok(us) = time.parse::<u64>() {
                out.push(us);
            }
        }
    }
}

/// The log files pgbench wrote for `prefix` (`prefix.<pid>` and `prefix.<pid>.<thread>`).
pub fn log_files(prefix: &Path) -> std::io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(name)) = (prefix.parent(), prefix.file_name()) else {
        return Ok(Vec::new());
    };
    let name = format!("{}.", name.to_string_lossy());
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if let Some(rest) = file_name.strip_prefix(&name) {
            if rest
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every log file for `prefix`, removes them, and returns all latencies (µs).
pub fn collect_and_remove(prefix: &Path) -> std::io::Result<Vec<u64>> {
    let mut latencies = Vec::new();
    for file in log_files(prefix)? {
        let text = std::fs::read_to_string(&file)?;
        parse_latencies(&text, &mut latencies);
        std::fs::remove_file(&file)?;
    }
    Ok(latencies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_skips_failed() {
        let text = "0 0 1520 0 1700000000 123456\n\
                    1 0 980 0 1700000000 123999\n\
                    0 1 failed 0 1700000001 1\n\
                    2 5 skipped 0 1700000001 2 17\n\
                    garbage\n\
                    3 7 2001 0 1700000002 5 0 0\n";
        let mut out = Vec::new();
        parse_latencies(text, &mut out);
        assert_eq!(out, vec![1520, 980, 2001]);
    }

    #[test]
    fn finds_thread_files_only() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "run-3.1234",
            "run-3.1234.1",
            "run-3.1234.x",
            "run-30.1234",
            "run-3.log",
            "other",
        ] {
            std::fs::write(dir.path().join(name), "0 0 100 0 1 1\n").unwrap();
        }
        let prefix = dir.path().join("run-3");
        let names: Vec<String> = log_files(&prefix)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["run-3.1234", "run-3.1234.1"]);
        assert_eq!(collect_and_remove(&prefix).unwrap(), vec![100, 100]);
        assert!(log_files(&prefix).unwrap().is_empty());
        assert!(dir.path().join("run-30.1234").exists());
    }
}
