//! A real PostgreSQL server (primary or streaming replica) on 127.0.0.1, in its own temporary
//! directory, stopped and removed on drop, and by a watchdog if the test process is killed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::bin::pg_bin;
use crate::error::{LocalPgError, Result};
use crate::options::{sql_ident, ClusterOptions};
use crate::ports::try_free_port;
use crate::process::{
    run, run_unchecked, server_command, server_shell_line, shell_quote, spawn_watchdog,
    write_server_file, Watchdog,
};
use crate::psql::{psql, Target};
use crate::template::{new_server_dir, template_data_dir};

/// The address every server listens on.
pub const HOST: &str = "127.0.0.1";
/// How long to wait for a server to start or stop.
const TIMEOUT: Duration = Duration::from_secs(30);
/// How many ports to try when another process grabs ours first.
const PORT_ATTEMPTS: usize = 5;
/// Lines of server log quoted in errors.
const LOG_TAIL_LINES: usize = 40;

/// A running PostgreSQL server. See the crate documentation for an example.
#[derive(Debug)]
pub struct PgCluster {
    opts: ClusterOptions,
    root: PathBuf,
    bindir: PathBuf,
    port: u16,
    primary_port: Option<u16>,
    watchdog: Option<Watchdog>,
}

impl PgCluster {
    /// Starts a primary: copies the template data directory, writes settings and pg_hba, starts
    /// the server on a free port, sets the superuser password and creates `opts.users`.
    pub fn start(opts: ClusterOptions) -> Result<PgCluster> {
        let started = Instant::now();
        let template = template_data_dir()?;
        let mut cluster = PgCluster::new_dir(opts, None)?;
        let mut cp = std::process::Command::new("cp");
        cp.arg("-a").arg(&template).arg(cluster.data_dir());
        run(&mut cp, None)?;
        cluster.launch()?;
        cluster.socket_psql(&cluster.opts.setup_sql())?;
        cluster.wait_for_sql("select 1", "1")?;
        tracing::info!(port = cluster.port, elapsed = ?started.elapsed(), "started PostgreSQL");
        Ok(cluster)
    }

    /// Starts a streaming replica of this server (pg_basebackup -R -X stream) on its own port
    /// and returns once it is in recovery and answers queries over TCP.
    pub fn start_replica(&self) -> Result<PgCluster> {
        let started = Instant::now();
        let mut replica = PgCluster::new_dir(self.opts.clone(), Some(self.port))?;
        let data = replica.data_dir();
        let args: Vec<OsString> = vec![
            "-D".into(),
            data.into(),
            "-R".into(),
            "-X".into(),
            "stream".into(),
            "-c".into(),
            "fast".into(),
            "--no-sync".into(),
            "-h".into(),
            HOST.into(),
            "-p".into(),
            self.port.to_string().into(),
            "-U".into(),
            "postgres".into(),
            "-w".into(),
        ];
        let mut cmd = server_command(&pg_bin("pg_basebackup")?, &args)?;
        cmd.env("PGPASSWORD", &self.opts.superuser_password)
            .env("PGPASSFILE", "/dev/null")
            .env("PGCONNECT_TIMEOUT", "10");
        run(&mut cmd, None)?;
        replica.launch()?;
        replica.wait_for_sql("select pg_is_in_recovery()", "t")?;
        tracing::info!(port = replica.port, elapsed = ?started.elapsed(), "started replica");
        Ok(replica)
    }

    /// A cluster value owning a fresh directory and its watchdog; nothing running yet.
    fn new_dir(opts: ClusterOptions, primary_port: Option<u16>) -> Result<PgCluster> {
        let pg_ctl = pg_bin("pg_ctl")?;
        let bindir = pg_ctl
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let root = new_server_dir("shardgate-pg-")?;
        let mut cluster = PgCluster {
            opts,
            root,
            bindir,
            port: 0,
            primary_port,
            watchdog: None,
        };
        // From here on Drop cleans up; the watchdog covers a killed process.
        std::fs::create_dir(cluster.socket_dir()).map_err(|e| {
            LocalPgError::io(format!("create {}", cluster.socket_dir().display()), e)
        })?;
        crate::process::give_to_server_user(&cluster.socket_dir())?;
        cluster.watchdog = Some(spawn_watchdog(
            &cluster.root,
            &cluster.emergency_cleanup(&pg_ctl)?,
        )?);
        Ok(cluster)
    }

    /// Shell text that stops the server however it can and removes the directory.
    fn emergency_cleanup(&self, pg_ctl: &Path) -> Result<String> {
        let data = shell_quote(&self.data_dir().to_string_lossy());
        let pidfile = shell_quote(&self.data_dir().join("postmaster.pid").to_string_lossy());
        let stop = server_shell_line(&format!(
            "{} -D {data} stop -m immediate -w -t 20",
            shell_quote(&pg_ctl.to_string_lossy())
        ))?;
        Ok(format!(
            "if [ -f {pidfile} ]; then {stop} >/dev/null 2>&1 || kill -9 \"$(head -n 1 {pidfile})\"; fi; rm -rf {}",
            shell_quote(&self.root.to_string_lossy())
        ))
    }

    /// Writes settings for a fresh port and starts the server, retrying with another port when
    /// the chosen one was taken meanwhile.
    fn launch(&mut self) -> Result<()> {
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            self.port = try_free_port()?;
            write_server_file(
                &self.data_dir().join("shardgate.conf"),
                &self.opts.render_conf(self.port, &self.socket_dir()),
            )?;
            write_server_file(
                &self.data_dir().join("pg_hba.conf"),
                &self.opts.render_hba(),
            )?;
            let log_len = std::fs::metadata(self.log_path()).map_or(0, |m| m.len());
            let out = run_unchecked(
                self.pg_ctl(&["start", "-w", "-t", &TIMEOUT.as_secs().to_string(), "-l"])?
                    .arg(self.log_path()),
                None,
            )?;
            if out.status.success() {
                return Ok(());
            }
            let log = self.log_since(log_len);
            let reason = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if !(log.contains("Address already in use")
                || log.contains("could not create any TCP/IP sockets"))
            {
                return Err(self.start_failed(format!("pg_ctl start failed: {reason}")));
            }
            tracing::debug!(port = self.port, "port taken, retrying with another");
            last = Some(reason);
        }
        Err(self.start_failed(format!(
            "no free port after {PORT_ATTEMPTS} attempts: {}",
            last.unwrap_or_default()
        )))
    }

    fn start_failed(&self, reason: String) -> LocalPgError {
        LocalPgError::StartFailed {
            data_dir: self.data_dir(),
            reason,
            log_tail: self.log_tail(LOG_TAIL_LINES),
        }
    }

    /// Retries `sql` over TCP as the superuser until it prints `expect`.
    fn wait_for_sql(&self, sql: &str, expect: &str) -> Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let got = self.psql("postgres", sql);
            match &got {
                Ok(out) if out.trim() == expect => return Ok(()),
                _ if Instant::now() >= deadline => {
                    let got = match got {
                        Ok(out) => format!("`{sql}` returned {out:?}, expected {expect:?}"),
                        Err(e) => e.to_string(),
                    };
                    return Err(self.start_failed(format!("not ready after {TIMEOUT:?}: {got}")));
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<std::process::Command> {
        let mut all: Vec<OsString> = vec!["-D".into(), self.data_dir().into()];
        all.extend(args.iter().map(OsString::from));
        server_command(&self.bindir.join("pg_ctl"), &all)
    }

    /// Runs `sql` as `postgres` over the unix socket (trusted), for setup.
    fn socket_psql(&self, sql: &str) -> Result<String> {
        let socket = self.socket_dir();
        let host = socket.to_string_lossy();
        psql(
            Target {
                host: &host,
                port: self.port,
                user: "postgres",
                password: None,
                db: "postgres",
            },
            sql,
        )
    }

    /// The TCP port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host to connect to: always `"127.0.0.1"`.
    pub fn host(&self) -> &'static str {
        HOST
    }

    /// For a replica, the port of its primary.
    pub fn primary_port(&self) -> Option<u16> {
        self.primary_port
    }

    /// The options the cluster was started with.
    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    /// The superuser's password.
    pub fn superuser_password(&self) -> &str {
        &self.opts.superuser_password
    }

    /// `postgres://user:password@127.0.0.1:PORT/db`, with user and password percent-encoded.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{}:{}@{HOST}:{}/{}",
            percent_encode(user),
            percent_encode(password),
            self.port,
            percent_encode(db)
        )
    }

    /// [`url`](Self::url) for the superuser `postgres`.
    pub fn superuser_url(&self, db: &str) -> String {
        self.url("postgres", &self.opts.superuser_password, db)
    }

    /// Runs `sql` in `db` as the superuser over TCP; see [`crate::psql::psql`] for the output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        self.psql_as("postgres", &self.opts.superuser_password, db, sql)
    }

    /// Runs `sql` in `db` as `user` with `password` over TCP.
    pub fn psql_as(&self, user: &str, password: &str, db: &str, sql: &str) -> Result<String> {
        psql(
            Target {
                host: HOST,
                port: self.port,
                user,
                password: Some(password),
                db,
            },
            sql,
        )
    }

    /// `CREATE DATABASE name OWNER owner`.
    pub fn create_database(&self, name: &str, owner: &str) -> Result<()> {
        self.psql(
            "postgres",
            &format!(
                "CREATE DATABASE {} OWNER {}",
                sql_ident(name),
                sql_ident(owner)
            ),
        )
        .map(|_| ())
    }

    /// The data directory (PGDATA).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The directory holding this cluster's unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("sock")
    }

    /// The server log file.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// The directory of the PostgreSQL programs used.
    pub fn bin_dir(&self) -> &Path {
        &self.bindir
    }

    /// The last `lines` lines of the server log (empty if there is none yet).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log_since(0);
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn log_since(&self, offset: u64) -> String {
        let bytes = std::fs::read(self.log_path()).unwrap_or_default();
        let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// The postmaster's process id, if the server is running.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Whether the server is running (its postmaster.pid exists).
    pub fn is_running(&self) -> bool {
        self.data_dir().join("postmaster.pid").exists()
    }

    /// Promotes a replica to a primary and waits until it accepts writes.
    pub fn promote(&mut self) -> Result<()> {
        let timeout = TIMEOUT.as_secs().to_string();
        run(&mut self.pg_ctl(&["promote", "-w", "-t", &timeout])?, None)?;
        self.primary_port = None;
        self.wait_for_sql("select pg_is_in_recovery()", "f")
    }

    /// Stops the server (fast shutdown) and waits; the directory stays until drop.
    pub fn stop(&mut self) -> Result<()> {
        if self.is_running() {
            let timeout = TIMEOUT.as_secs().to_string();
            run(
                &mut self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", &timeout])?,
                None,
            )?;
        }
        Ok(())
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: a crash, as far as clients can
    /// tell); the directory stays, so [`PgCluster::restart`] brings it back.
    pub fn kill(&mut self) {
        self.stop_immediately();
    }

    /// Starts a stopped server again on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        let timeout = TIMEOUT.as_secs().to_string();
        let args = ["start", "-w", "-t", &timeout, "-l"];
        let out = run_unchecked(self.pg_ctl(&args)?.arg(self.log_path()), None)?;
        if !out.status.success() {
            let reason = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(self.start_failed(format!("pg_ctl start failed: {reason}")));
        }
        self.wait_for_sql("select 1", "1")
    }

    /// Stops the server at once (immediate shutdown), as Drop does.
    fn stop_immediately(&self) {
        if !self.is_running() {
            return;
        }
        let timeout = TIMEOUT.as_secs().to_string();
        let stopped = self
            .pg_ctl(&["stop", "-m", "immediate", "-w", "-t", &timeout])
            .and_then(|mut cmd| run(&mut cmd, None));
        if let Err(e) = stopped {
            tracing::warn!(error = %e, "pg_ctl stop failed; killing the postmaster");
            if let Some(pid) = self.postmaster_pid().and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_immediately();
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.root.display(), error = %e, "could not remove cluster dir");
            }
        }
        if let Some(w) = &self.watchdog {
            w.dismiss();
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
