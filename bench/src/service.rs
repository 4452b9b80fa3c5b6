//! A proxy process the benchmark starts (PgBouncer or the shardgate binary), in its own
//! temporary directory, on a free loopback port. Like the harness's `PgCluster` it is stopped
//! and its directory removed on drop (also on panic), and a detached watchdog does the same if
//! the benchmark process is killed.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use shardgate_tests::process::{shell_quote, spawn_watchdog, Watchdog};
use shardgate_tests::template::new_server_dir;

/// How long a service may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a service may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Start attempts when another process takes our port between the pick and the bind.
const PORT_ATTEMPTS: usize = 4;

/// File in the service directory holding the service's pid (PgBouncer writes it itself as its
/// `pidfile`; for shardgate the benchmark writes it).
pub const PID_FILE: &str = "service.pid";
const LOG_FILE: &str = "service.log";

/// A running service. See the module documentation.
pub struct Service {
    name: String,
    dir: PathBuf,
    child: Option<Child>,
    pid: u32,
    port: u16,
    watchdog: Option<Watchdog>,
}

/// How the program writes its pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidSource {
    /// The spawned process is the service (its pid is the child's).
    Child,
    /// The spawned process is a wrapper (runuser); the service writes [`PID_FILE`].
    PidFile,
}

impl Service {
    /// A service directory (owned by the server user when running as root, so a service
    /// switched to that user can write there) with its watchdog; nothing running yet.
    pub fn new(name: &str) -> anyhow::Result<Service> {
        let dir = new_server_dir(&format!("shardgate-bench-{name}-"))?;
        let mut service = Service {
            name: name.to_string(),
            dir,
            child: None,
            pid: 0,
            port: 0,
            watchdog: None,
        };
        // From here on Drop cleans up; the watchdog covers a killed benchmark process.
        service.watchdog = Some(spawn_watchdog(&service.dir, &service.emergency_cleanup())?);
        Ok(service)
    }

    /// Shell text that kills the service (if the pid file names a process whose command line
    /// mentions our directory) and removes the directory.
    fn emergency_cleanup(&self) -> String {
        let dir = shell_quote(&self.dir.to_string_lossy());
        let pid_file = shell_quote(&self.dir.join(PID_FILE).to_string_lossy());
        format!(
            "p=$(cat {pid_file} 2>/dev/null); \
             if [ -n \"$p\" ] && grep -qaF {dir} /proc/$p/cmdline 2>/dev/null; then \
             kill -TERM \"$p\"; sleep 2; kill -KILL \"$p\" 2>/dev/null; fi; rm -rf {dir}"
        )
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The service's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the service: `command(port)` must give a command that serves on 127.0.0.1:port
    /// (writing whatever config it needs first). Waits until the port accepts connections;
    /// retries with another port if the service exits complaining that its address is in use.
    pub fn start(
        &mut self,
        pid_source: PidSource,
        mut command: impl FnMut(&Service, u16) -> anyhow::Result<Command>,
    ) -> anyhow::Result<()> {
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = shardgate_tests::try_free_port()?;
            let log_path = self.dir.join(LOG_FILE);
            let log = File::create(&log_path)
                .with_context(|| format!("create {}", log_path.display()))?;
            let mut cmd = command(self, port)?;
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            let child = cmd
                .spawn()
                .with_context(|| format!("start {}: {:?}", self.name, cmd))?;
            if pid_source == PidSource::Child {
                std::fs::write(self.dir.join(PID_FILE), child.id().to_string())?;
                self.pid = child.id();
            }
            self.child = Some(child);
            self.port = port;
            match self.wait_ready(pid_source) {
                Ok(()) => {
                    tracing::info!(service = %self.name, port, pid = self.pid, "started");
                    return Ok(());
                }
                Err(e) => {
                    self.stop();
                    let log = self.log_tail(30);
                    if !log.contains("in use") {
                        bail!("{} did not start: {e:#}\n--- log ---\n{log}", self.name);
                    }
                    last_error = Some(e);
                }
            }
        }
        bail!(
            "{} did not start after {PORT_ATTEMPTS} ports: {:?}",
            self.name,
            last_error
        )
    }

    fn wait_ready(&mut self, pid_source: PidSource) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("exited with {status}");
                }
            }
            if pid_source == PidSource::PidFile && self.pid == 0 {
                if let Ok(text) = std::fs::read_to_string(self.dir.join(PID_FILE)) {
                    self.pid = text.trim().parse().unwrap_or(0);
                }
            }
            if self.pid != 0
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("not accepting connections on {addr} after {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `lines` lines of the service's output.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join(LOG_FILE)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether the service is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends SIGTERM, waits up to [`STOP_TIMEOUT`], then SIGKILL; reaps the spawned process.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = if self.pid != 0 { self.pid } else { child.id() };
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    tracing::warn!(service = %self.name, pid, "did not stop; killing it");
                    signal(pid, libc::SIGKILL);
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        // With a wrapper (runuser) the service itself may outlive it for a moment.
        if pid != child.id() {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while std::path::Path::new(&format!("/proc/{pid}")).exists()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_file(self.dir.join(PID_FILE));
        self.pid = 0;
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove service dir");
            }
        }
        if let Some(w) = &self.watchdog {
            w.dismiss();
        }
    }
}

fn signal(pid: u32, sig: i32) {
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions; pid is a single positive process id.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Raises this process's soft open-file limit towards `wanted` (never above the hard limit)
/// and returns the soft limit now in force. Children inherit it, but not through `runuser`,
/// whose PAM session resets it: see [`with_nofile`].
pub fn raise_nofile_limit(wanted: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < wanted {
            let new = libc::rlimit {
                rlim_cur: wanted.min(lim.rlim_max),
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &new) == 0 {
                lim = new;
            }
        }
    }
    lim.rlim_cur
}

/// `program args…` wrapped in `sh -c 'ulimit -n N && exec "$@"'`, so a program started
/// through runuser (which resets limits) still gets `nofile` open files; the service keeps
/// the program's own pid and command line.
pub fn with_nofile(nofile: u64, program: &Path, args: &[&Path]) -> Vec<std::ffi::OsString> {
    let mut out: Vec<std::ffi::OsString> = vec![
        "-c".into(),
        format!("ulimit -n {nofile} && exec \"$@\"").into(),
        "sh".into(),
        program.into(),
    ];
    out.extend(args.iter().map(|a| a.as_os_str().to_owned()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_nofile_sets_the_limit_and_execs() {
        let args = with_nofile(
            300,
            Path::new("/bin/sh"),
            &[Path::new("-c"), Path::new("ulimit -n; echo \"$0\"")],
        );
        let out = Command::new("/bin/sh").args(&args).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "300\n/bin/sh\n");
    }

    #[test]
    fn nofile_limit_is_reported() {
        let now = raise_nofile_limit(0);
        assert!(now >= 1);
        assert_eq!(raise_nofile_limit(now), now);
    }
}
