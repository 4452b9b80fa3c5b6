//! Running SQL with the real `psql` client. Tests use it as the reference client (for the
//! cluster directly or through the proxy), and localpg uses it for setup.

use std::process::Command;

use crate::bin::pg_bin;
use crate::error::Result;
use crate::process::run;

/// libpq variables that would redirect a connection if inherited from the environment.
pub const LIBPQ_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGTARGETSESSIONATTRS",
    "PGAPPNAME",
];

/// Where and as whom to connect.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Host name, IP address, or unix socket directory.
    pub host: &'a str,
    /// Port.
    pub port: u16,
    /// User name.
    pub user: &'a str,
    /// Password (passed in `PGPASSWORD`, never on the command line); `None` for none.
    pub password: Option<&'a str>,
    /// Database name.
    pub db: &'a str,
}

fn base_command() -> Result<Command> {
    let mut cmd = Command::new(pg_bin("psql")?);
    for var in LIBPQ_ENV {
        cmd.env_remove(var);
    }
    cmd.env("PGCONNECT_TIMEOUT", "10")
        .env("PGPASSFILE", "/dev/null")
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"]);
    Ok(cmd)
}

fn finish(mut cmd: Command, sql: &str) -> Result<String> {
    cmd.args(["-f", "-"]);
    let out = run(&mut cmd, Some(sql.as_bytes()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.trim_end_matches('\n').to_string())
}

/// Runs `sql` (one or more statements, each run separately as psql does) against `target` with
/// `psql -X -A -t -q -v ON_ERROR_STOP=1` and returns stdout without the final newline: one line
/// per row, columns separated by `|`. A failure carries psql's stderr.
pub fn psql(target: Target<'_>, sql: &str) -> Result<String> {
    let mut cmd = base_command()?;
    cmd.args(["-h", target.host, "-p", &target.port.to_string()])
        .args(["-U", target.user, "-d", target.db]);
    if let Some(pw) = target.password {
        cmd.env("PGPASSWORD", pw);
    }
    finish(cmd, sql)
}

/// Runs `sql` against a connection URI (`postgres://user:pw@host:port/db?...`) with the same
/// flags and result as [`psql`]. Note the URI (with its password) appears in error messages.
pub fn psql_url(url: &str, sql: &str) -> Result<String> {
    let mut cmd = base_command()?;
    cmd.args(["-d", url]);
    finish(cmd, sql)
}
