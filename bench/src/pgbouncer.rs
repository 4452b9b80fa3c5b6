//! PgBouncer for the comparison: found (or installed with apt-get when running as root),
//! configured like shardgate (transaction mode, the same pool size, SCRAM), and run as the
//! server user through the harness's `server_command`, since PgBouncer refuses to run as root.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use shardgate_tests::process::{is_root, server_command, write_server_file};

use crate::service::{with_nofile, PidSource, Service, PID_FILE};

/// The first PgBouncer version with `max_prepared_statements` (protocol-level prepared
/// statements in transaction mode).
pub const PREPARED_SINCE: (u32, u32) = (1, 21);

/// An installed PgBouncer.
#[derive(Debug, Clone)]
pub struct PgBouncerBin {
    pub path: PathBuf,
    /// `major.minor.patch` as printed by `pgbouncer --version`.
    pub version: (u32, u32, u32),
}

impl PgBouncerBin {
    pub fn version_string(&self) -> String {
        let (a, b, c) = self.version;
        format!("{a}.{b}.{c}")
    }

    /// Whether this version can run `pgbench -M prepared` in transaction mode.
    pub fn supports_prepared(&self) -> bool {
        (self.version.0, self.version.1) >= PREPARED_SINCE
    }
}

fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join("pgbouncer"))
        .find(|p| p.is_file())
}

/// Finds PgBouncer, installing it with `apt-get install -y pgbouncer` when it is missing and
/// we are root. `Err` says why it is unavailable (the caller skips its columns).
pub fn locate_or_install() -> anyhow::Result<PgBouncerBin> {
    let path = match find() {
        Some(p) => p,
        None => {
            anyhow::ensure!(
                is_root(),
                "pgbouncer is not installed and we are not root to install it"
            );
            eprintln!("pgbouncer not found: running `apt-get install -y pgbouncer`");
            let status = Command::new("apt-get")
                .args(["install", "-y", "pgbouncer"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .context("running apt-get")?;
            anyhow::ensure!(
                status.success(),
                "apt-get install pgbouncer failed: {status}"
            );
            find().context("pgbouncer still not found after apt-get install")?
        }
    };
    let out = Command::new(&path)
        .arg("--version")
        .output()
        .with_context(|| format!("{} --version", path.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = parse_version(&text)
        .with_context(|| format!("no version in `pgbouncer --version` output: {text:?}"))?;
    Ok(PgBouncerBin { path, version })
}

/// `(1, 18, 0)` from `PgBouncer 1.18.0` (the first line of `pgbouncer --version`).
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let line = text.lines().next()?;
    let word = line
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = word.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// What goes into pgbouncer.ini.
#[derive(Debug, Clone)]
pub struct Settings {
    pub port: u16,
    pub server_port: u16,
    pub database: String,
    pub pool_size: u32,
    pub max_client_conn: u32,
    /// `max_prepared_statements` (only written when the version supports it).
    pub max_prepared_statements: Option<u32>,
    pub dir: PathBuf,
}

/// The whole pgbouncer.ini: loopback only, transaction pooling, SCRAM against a userlist.
pub fn render_ini(s: &Settings) -> String {
    let dir = s.dir.display();
    let mut ini = String::from("; written by shardgate's bench: benchmark settings\n");
    let _ = writeln!(ini, "[databases]");
    // No user in the connection string: SCRAM pass-through needs the client's own login.
    let _ = writeln!(
        ini,
        "{db} = host=127.0.0.1 port={port} dbname={db}",
        db = s.database,
        port = s.server_port
    );
    let _ = writeln!(ini, "\n[pgbouncer]");
    let lines = [
        "listen_addr = 127.0.0.1".to_string(),
        format!("listen_port = {}", s.port),
        // No unix socket: only loopback TCP, and nothing written to /tmp.
        "unix_socket_dir =".to_string(),
        format!("pidfile = {dir}/{PID_FILE}"),
        "auth_type = scram-sha-256".to_string(),
        format!("auth_file = {dir}/userlist.txt"),
        "pool_mode = transaction".to_string(),
        format!("default_pool_size = {}", s.pool_size),
        "min_pool_size = 0".to_string(),
        "reserve_pool_size = 0".to_string(),
        format!("max_client_conn = {}", s.max_client_conn),
        "max_db_connections = 0".to_string(),
        "ignore_startup_parameters = extra_float_digits,options".to_string(),
        // tokio's listen backlog, as shardgate has.
        "listen_backlog = 1024".to_string(),
        "server_tls_sslmode = disable".to_string(),
        "log_connections = 0".to_string(),
        "log_disconnections = 0".to_string(),
        "log_pooler_errors = 1".to_string(),
        "stats_period = 60".to_string(),
    ];
    for line in lines {
        let _ = writeln!(ini, "{line}");
    }
    if let Some(n) = s.max_prepared_statements {
        let _ = writeln!(ini, "max_prepared_statements = {n}");
    }
    ini
}

/// A userlist line: `"user" "secret"` with `"` doubled.
pub fn userlist_line(user: &str, secret: &str) -> String {
    format!(
        "\"{}\" \"{}\"\n",
        user.replace('"', "\"\""),
        secret.replace('"', "\"\"")
    )
}

/// Starts PgBouncer in front of the server on `server_port`. `secret` is the user's password
/// as PostgreSQL stores it (the SCRAM verifier from pg_authid), so client logins cost what a
/// production PgBouncer pays and server logins use SCRAM pass-through.
pub fn start(
    bin: &PgBouncerBin,
    user: &str,
    secret: &str,
    database: &str,
    server_port: u16,
    pool_size: u32,
    max_client_conn: u32,
) -> anyhow::Result<Service> {
    let mut service = Service::new("pgbouncer")?;
    write_server_file(
        &service.dir().join("userlist.txt"),
        &userlist_line(user, secret),
    )?;
    let max_prepared = bin.supports_prepared().then_some(200);
    service.start(PidSource::PidFile, |svc, port| {
        let ini_path = svc.dir().join("pgbouncer.ini");
        let settings = Settings {
            port,
            server_port,
            database: database.to_string(),
            pool_size,
            max_client_conn,
            max_prepared_statements: max_prepared,
            dir: svc.dir().to_path_buf(),
        };
        write_server_file(&ini_path, &render_ini(&settings))?;
        // runuser's PAM session resets the open-file limit: set it again for PgBouncer.
        let nofile = crate::service::raise_nofile_limit(0).max(1024);
        let args = with_nofile(nofile, &bin.path, &[Path::new(&ini_path)]);
        Ok(server_command(Path::new("/bin/sh"), &args)?)
    })?;
    Ok(service)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("PgBouncer 1.18.0\nlibevent 2.1.12-stable\n"),
            Some((1, 18, 0))
        );
        assert_eq!(parse_version("PgBouncer 1.21.0\n"), Some((1, 21, 0)));
        assert_eq!(parse_version("pgbouncer version 1.7"), Some((1, 7, 0)));
        assert_eq!(parse_version("PgBouncer 1.23.1-dev"), Some((1, 23, 1)));
        assert_eq!(parse_version("no digits"), None);
        assert_eq!(parse_version(""), None);
        let b = |v| PgBouncerBin {
            path: PathBuf::new(),
            version: v,
        };
        assert!(!b((1, 18, 0)).supports_prepared());
        assert!(b((1, 21, 0)).supports_prepared());
        assert!(b((2, 0, 0)).supports_prepared());
    }

    #[test]
    fn ini_has_the_settings() {
        let ini = render_ini(&Settings {
            port: 7000,
            server_port: 5433,
            database: "bench".into(),
            pool_size: 20,
            max_client_conn: 12000,
            max_prepared_statements: None,
            dir: PathBuf::from("/dev/shm/x"),
        });
        for line in [
            "bench = host=127.0.0.1 port=5433 dbname=bench",
            "listen_addr = 127.0.0.1",
            "listen_port = 7000",
            "pool_mode = transaction",
            "default_pool_size = 20",
            "max_client_conn = 12000",
            "auth_type = scram-sha-256",
            "auth_file = /dev/shm/x/userlist.txt",
            "pidfile = /dev/shm/x/service.pid",
            "ignore_startup_parameters = extra_float_digits,options",
        ] {
            assert!(ini.lines().any(|l| l == line), "missing {line:?} in\n{ini}");
        }
        assert!(!ini.contains("max_prepared_statements"));
    }

    #[test]
    fn userlist_quotes() {
        assert_eq!(userlist_line("a\"b", "SCRAM$x"), "\"a\"\"b\" \"SCRAM$x\"\n");
    }
}
