//! Client-driver environments for compatibility tests: a Python virtualenv with psycopg 3 and
//! asyncpg, and a node_modules with node-postgres. Installed once under the target directory,
//! reused by later runs (a marker file records a finished install), and safe when several test
//! processes ask at the same time (a lock file) or several threads of one (a mutex).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{LocalPgError, Result};
use crate::lock::FileLock;
use crate::process::run;

/// Environment variable overriding where the driver environments live.
pub const DRIVER_ENV_DIR_ENV: &str = "SHARDGATE_DRIVER_ENV";
/// Environment variable naming the Python used to create the virtualenv (default `python3`).
pub const PYTHON_ENV: &str = "SHARDGATE_PYTHON";
/// What the virtualenv gets from pip.
pub const PYTHON_PACKAGES: &[&str] = &["psycopg[binary]", "asyncpg"];
/// What the node environment gets from npm.
pub const NODE_PACKAGES: &[&str] = &["pg", "pg-copy-streams"];

const MARKER: &str = ".shardgate-ready";
const INSTALL_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// `$SHARDGATE_DRIVER_ENV`, else `$CARGO_TARGET_DIR/driver-env`, else
/// `<workspace>/target/driver-env`.
pub fn driver_env_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    if let Some(dir) = std::env::var_os(DRIVER_ENV_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(target) => workspace.join(target).join("driver-env"),
        None => workspace.join("target").join("driver-env"),
    }
}

static INSTALLING: Mutex<()> = Mutex::new(());

/// Runs `install` into `dir` unless `dir/MARKER` already says `want`; serialised across threads
/// and processes.
fn ensure(
    dir: &Path,
    lock_name: &str,
    want: &str,
    install: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let marker = dir.join(MARKER);
    let done = || std::fs::read_to_string(&marker).is_ok_and(|m| m == want);
    let _thread = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if done() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent)
        .map_err(|e| LocalPgError::io(format!("create {}", parent.display()), e))?;
    let _process = FileLock::acquire(&parent.join(lock_name), INSTALL_TIMEOUT)?;
    if done() {
        return Ok(());
    }
    tracing::info!(dir = %dir.display(), "installing driver environment (once)");
    install()?;
    std::fs::write(&marker, want)
        .map_err(|e| LocalPgError::io(format!("write {}", marker.display()), e))
}

/// The Python interpreter of a virtualenv with psycopg 3 (`psycopg[binary]`) and asyncpg,
/// created on first use under [`driver_env_dir`]`/venv`.
pub fn python_env() -> Result<PathBuf> {
    let venv = driver_env_dir().join("venv");
    let python = venv.join("bin").join("python");
    ensure(&venv, "python.lock", &PYTHON_PACKAGES.join("\n"), || {
        if venv.exists() {
            std::fs::remove_dir_all(&venv)
                .map_err(|e| LocalPgError::io(format!("remove {}", venv.display()), e))?;
        }
        let base = std::env::var_os(PYTHON_ENV)
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "python3".into());
        // If this fails on Debian's system Python, `apt-get install python3-venv` is the fix;
        // the error carries Python's own message saying so.
        run(Command::new(base).args(["-m", "venv"]).arg(&venv), None)?;
        run(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--quiet",
                ])
                .args(PYTHON_PACKAGES),
            None,
        )?;
        run(
            Command::new(&python).args(["-c", "import psycopg, asyncpg"]),
            None,
        )
        .map(|_| ())
    })?;
    Ok(python)
}

/// A directory whose `node_modules` holds node-postgres (`pg`), installed on first use under
/// [`driver_env_dir`]`/node`. Run scripts with it as the working directory or with
/// `NODE_PATH=<dir>/node_modules`.
pub fn node_env() -> Result<PathBuf> {
    let dir = driver_env_dir().join("node");
    ensure(&dir, "node.lock", &NODE_PACKAGES.join("\n"), || {
        std::fs::create_dir_all(&dir)
            .map_err(|e| LocalPgError::io(format!("create {}", dir.display()), e))?;
        let package = dir.join("package.json");
        std::fs::write(
            &package,
            "{\n  \"name\": \"shardgate-driver-env\",\n  \"private\": true\n}\n",
        )
        .map_err(|e| LocalPgError::io(format!("write {}", package.display()), e))?;
        run(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
                .args(NODE_PACKAGES)
                .current_dir(&dir),
            None,
        )?;
        for p in NODE_PACKAGES {
            let installed = dir.join("node_modules").join(p).join("package.json");
            if !installed.is_file() {
                return Err(LocalPgError::io(
                    format!("npm install {p} in {}", dir.display()),
                    std::io::Error::other(format!("{} is missing afterwards", installed.display())),
                ));
            }
        }
        Ok(())
    })?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "installs from PyPI and npm on first run"]
    fn driver_envs_install_once() {
        let python = python_env().unwrap();
        let out = run(
            Command::new(&python)
                .args(["-c", "import psycopg, asyncpg; print(psycopg.__version__)"]),
            None,
        )
        .unwrap();
        assert!(out.status.success());
        // Second call is a marker check.
        let t = std::time::Instant::now();
        assert_eq!(python_env().unwrap(), python);
        assert!(t.elapsed() < Duration::from_secs(1));

        let node = node_env().unwrap();
        let out = run(
            Command::new("node")
                .args(["-e", "console.log(typeof require('pg').Client)"])
                .current_dir(&node),
            None,
        )
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "function");
    }
}
