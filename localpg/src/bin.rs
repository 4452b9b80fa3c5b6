//! Finding the PostgreSQL programs. Debian keeps the server programs (initdb, pg_ctl, postgres)
//! in a versioned directory that is not on PATH, so PATH is the last place we look.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::error::{LocalPgError, Result};

/// Environment variable that names the PostgreSQL bin directory explicitly.
pub const BINDIR_ENV: &str = "SHARDGATE_PG_BINDIR";

/// The directory holding the PostgreSQL programs, found once per process:
/// (a) `$SHARDGATE_PG_BINDIR`, (b) `pg_config --bindir` if it holds `initdb`,
/// (c) the highest-versioned `/usr/lib/postgresql/*/bin` holding `initdb`. Returns `None` when
/// none applies; [`pg_bin`] then falls back to PATH.
pub fn pg_bindir() -> Option<PathBuf> {
    static BINDIR: Mutex<Option<Option<PathBuf>>> = Mutex::new(None);
    let mut cached = BINDIR.lock().unwrap_or_else(|e| e.into_inner());
    cached.get_or_insert_with(find_bindir).clone()
}

fn find_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(BINDIR_ENV).filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = pg_config_bindir().filter(|d| d.join("initdb").is_file()) {
        return Some(dir);
    }
    debian_bindirs().into_iter().next()
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    let dir = dir.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// `/usr/lib/postgresql/<version>/bin` directories holding initdb, highest version first.
fn debian_bindirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") else {
        return Vec::new();
    };
    let mut found: Vec<(Vec<u64>, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name
                .split('.')
                .map(|p| p.parse::<u64>().ok())
                .collect::<Option<Vec<_>>>()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.into_iter().rev().map(|(_, p)| p).collect()
}

/// The full path of the PostgreSQL program `name` (e.g. `"initdb"`, `"psql"`, `"pgbench"`):
/// from [`pg_bindir`] if it is there, else from PATH.
pub fn pg_bin(name: &str) -> Result<PathBuf> {
    let mut searched = Vec::new();
    match std::env::var_os(BINDIR_ENV).filter(|d| !d.is_empty()) {
        Some(d) => searched.push(format!("${BINDIR_ENV}={}", Path::new(&d).display())),
        None => searched.push(format!("${BINDIR_ENV} (unset)")),
    }
    if let Some(dir) = pg_bindir() {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        searched.push(dir.display().to_string());
    } else {
        searched.push("`pg_config --bindir` (missing or without initdb)".into());
        searched.push("/usr/lib/postgresql/*/bin (none with initdb)".into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    searched.push(format!("PATH={}", path.to_string_lossy()));
    Err(LocalPgError::BinaryNotFound {
        name: name.to_string(),
        searched: searched.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_server_and_client_programs() {
        for name in [
            "initdb",
            "pg_ctl",
            "postgres",
            "pg_basebackup",
            "psql",
            "pgbench",
        ] {
            let p = pg_bin(name).unwrap();
            assert!(p.is_file(), "{name}: {}", p.display());
        }
    }

    #[test]
    fn missing_program_names_the_search() {
        let err = pg_bin("no-such-pg-program").unwrap_err().to_string();
        assert!(err.contains("no-such-pg-program"), "{err}");
        assert!(err.contains("PATH="), "{err}");
    }
}
