//! Counting a proxy's system calls and context switches during a run (`compare --syscalls`):
//! `perf stat` attached to its PID, counting the `raw_syscalls:sys_enter` tracepoint and the
//! `context-switches` software event. The tracepoint costs each syscall a little, for every
//! proxy alike, so CPU figures of such a run are not comparable with a run without it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

/// What a counter saw between [`Counter::start`] and [`Counter::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub syscalls: u64,
    pub switches: u64,
}

/// A running `perf stat -p PID`.
pub struct Counter {
    child: Child,
    output: PathBuf,
}

impl Counter {
    /// Starts counting `pid`'s syscalls and context switches (all its threads).
    pub fn start(pid: u32, output: &Path) -> anyhow::Result<Counter> {
        let child = Command::new("perf")
            .args([
                "stat",
                "-x",
                ",",
                "-e",
                "raw_syscalls:sys_enter,context-switches",
            ])
            .arg("-o")
            .arg(output)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting `perf stat` (is perf installed and may root trace?)")?;
        // perf needs a moment to attach; counting starts before the run does.
        std::thread::sleep(std::time::Duration::from_millis(200));
        Ok(Counter {
            child,
            output: output.to_path_buf(),
        })
    }

    /// Stops counting (SIGINT, as perf expects) and reads the counts.
    pub fn finish(self) -> anyhow::Result<Counts> {
        let pid = i32::try_from(self.child.id()).context("perf's pid")?;
        // SAFETY: signalling a child process we spawned and have not reaped.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let out = self.child.wait_with_output().context("waiting for perf")?;
        let text = std::fs::read_to_string(&self.output)
            .with_context(|| format!("reading {}", self.output.display()))?;
        let _ = std::fs::remove_file(&self.output);
        match parse(&text) {
            Some(c) => Ok(c),
            None => bail!(
                "perf stat gave no counts ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }
}

/// Reads `perf stat -x ,` output: `value,unit,event,...` lines.
fn parse(text: &str) -> Option<Counts> {
    let mut syscalls = None;
    let mut switches = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split(',').collect();
        let (Some(value), Some(event)) = (fields.first(), fields.get(2)) else {
            continue;
        };
        let Ok(value) = value.trim().parse::<u64>() else {
            continue;
        };
        match event.trim() {
            "raw_syscalls:sys_enter" => syscalls = Some(value),
            "context-switches" => switches = Some(value),
            _ => {}
        }
    }
    Some(Counts {
        syscalls: syscalls?,
        switches: switches?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_perf_csv() {
        let text = "# started on Sun Dec  6 20:50:00 2026\n\n\
                    1234567,,raw_syscalls:sys_enter,8000000000,100.00,,\n\
                    4321,,context-switches,8000000000,100.00,,\n";
        assert_eq!(
            parse(text),
            Some(Counts {
                syscalls: 1_234_567,
                switches: 4321
            })
        );
        assert_eq!(parse("<not counted>,,context-switches,0,0.00,,\n"), None);
    }
}
