//! Copying the schema of sharded tables that a target lacks: `pg_dump --schema-only` of those
//! tables from a source, fed to `psql` on the target (one transaction, stop on the first error).
//! Owners and grants are copied too, so the application can use the tables on the new shard as
//! on the others: the roles they name must exist on the target (PostgreSQL roles are per
//! cluster), else the copy fails with the missing role's name.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use shardgate_config::{Host, Rebalance, Shard};
use tokio::io::AsyncWriteExt;

use super::error::EngineError;
use super::plan::TablePlan;

const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// Why `pg_dump | psql` did not copy what it was asked to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ToolError {
    /// The proxy's host lacks the PostgreSQL client tools: nothing can be copied until they
    /// are installed.
    #[error("{0} was not found (install the PostgreSQL client tools where shardgate runs)")]
    NotFound(&'static str),
    #[error("cannot run {path}: {reason}")]
    Spawn { path: String, reason: String },
    #[error("{tool} timed out after {TOOL_TIMEOUT:?}")]
    Timeout { tool: &'static str },
    /// The tool ran and failed; `stderr` says why (a missing role, a lost connection, …).
    #[error("{tool} on shard {shard} database {db} failed: {stderr}")]
    Failed {
        tool: &'static str,
        shard: String,
        db: String,
        stderr: String,
    },
}

/// A copy step that failed, with what it was copying and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{step} failed: {cause}{advice}")]
pub(crate) struct CopyError {
    step: String,
    cause: ToolError,
    advice: &'static str,
}

impl From<CopyError> for EngineError {
    fn from(e: CopyError) -> Self {
        match e.cause {
            ToolError::NotFound(_) => EngineError::Refused(e.to_string()),
            _ => EngineError::Shard(e.to_string()),
        }
    }
}

/// `tool` on PATH, else in `pg_config --bindir`, else in the newest
/// `/usr/lib/postgresql/*/bin`.
pub(crate) fn find_tool(tool: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(tool);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        if out.status.success() {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let p = PathBuf::from(dir).join(tool);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e
                .file_name()
                .to_string_lossy()
                .split('.')
                .next()?
                .parse()
                .ok()?;
            let p = e.path().join("bin").join(tool);
            p.is_file().then_some((v, p))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

fn login_env(cmd: &mut tokio::process::Command, host: &Host, password: Option<&str>) {
    cmd.env("PGSSLMODE", host.sslmode.to_string())
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSERVICE");
    match password {
        Some(p) => cmd.env("PGPASSWORD", p),
        None => cmd.env_remove("PGPASSWORD"),
    };
    if let Some(root) = &host.sslrootcert {
        cmd.env("PGSSLROOTCERT", root);
    }
}

/// Dumps `tables` from `source` and creates them on `target`, in database `db`.
pub(crate) async fn copy(
    source: &Shard,
    target: &Shard,
    db: &str,
    tables: &[&TablePlan],
    rb: &Rebalance,
) -> Result<(), CopyError> {
    let names: Vec<String> = tables.iter().map(|t| t.qualified()).collect();
    dump_restore(source, target, db, &names, "--schema-only", "", rb)
        .await
        .map_err(|cause| CopyError {
            step: format!(
                "creating the sharded tables on shard {} database {db} from shard {}'s schema",
                target.name, source.name
            ),
            cause,
            advice: " (create the roles that own or are granted the sharded tables on the \
                     target first)",
        })
}

/// Creates `tables` (quoted qualified names: reference tables) on `target` from `source`'s
/// schema.
pub(crate) async fn schema_only(
    source: &Shard,
    target: &Shard,
    db: &str,
    tables: &[String],
    rb: &Rebalance,
) -> Result<(), CopyError> {
    dump_restore(source, target, db, tables, "--schema-only", "", rb)
        .await
        .map_err(|cause| CopyError {
            step: format!(
                "creating reference tables {} on shard {} database {db} from shard {}'s schema",
                tables.join(", "),
                target.name,
                source.name
            ),
            cause,
            advice: "",
        })
}

/// Copies the rows of `tables` (quoted qualified names: reference tables) from `source` to
/// `target` in one transaction of the target, after `prelude` (which empties the copies
/// there). pg_dump reads every table in one snapshot, so the copy is of one moment.
pub(crate) async fn copy_data(
    source: &Shard,
    target: &Shard,
    db: &str,
    tables: &[String],
    prelude: &str,
    rb: &Rebalance,
) -> Result<(), CopyError> {
    dump_restore(source, target, db, tables, "--data-only", prelude, rb)
        .await
        .map_err(|cause| CopyError {
            step: format!(
                "copying the rows of reference tables {} to shard {} database {db} from shard {}",
                tables.join(", "),
                target.name,
                source.name
            ),
            cause,
            advice: "",
        })
}

/// `pg_dump <mode> -t …` of `source` fed (after `prelude`) to `psql -1` on `target`.
async fn dump_restore(
    source: &Shard,
    target: &Shard,
    db: &str,
    tables: &[String],
    mode: &str,
    prelude: &str,
    rb: &Rebalance,
) -> Result<(), ToolError> {
    let pg_dump = find_tool("pg_dump").ok_or(ToolError::NotFound("pg_dump"))?;
    let psql = find_tool("psql").ok_or(ToolError::NotFound("psql"))?;
    let spawn = |path: &std::path::Path, e: std::io::Error| ToolError::Spawn {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let (suser, spass) = source.admin_login(rb);
    let mut dump = tokio::process::Command::new(&pg_dump);
    dump.arg(mode)
        .arg("-h")
        .arg(&source.primary.host)
        .arg("-p")
        .arg(source.primary.port.to_string())
        .arg("-U")
        .arg(suser)
        .arg("-d")
        .arg(db);
    for t in tables {
        // Quoted, so the pattern matches exactly this table.
        dump.arg("-t").arg(t);
    }
    login_env(&mut dump, &source.primary, spass);
    dump.kill_on_drop(true);
    let out = tokio::time::timeout(TOOL_TIMEOUT, dump.output())
        .await
        .map_err(|_| ToolError::Timeout { tool: "pg_dump" })?
        .map_err(|e| spawn(&pg_dump, e))?;
    if !out.status.success() {
        return Err(ToolError::Failed {
            tool: "pg_dump",
            shard: source.name.clone(),
            db: db.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let (tuser, tpass) = target.admin_login(rb);
    let mut restore = tokio::process::Command::new(&psql);
    restore
        .args(["-X", "-q", "-1", "-v", "ON_ERROR_STOP=1"])
        .arg("-h")
        .arg(&target.primary.host)
        .arg("-p")
        .arg(target.primary.port.to_string())
        .arg("-U")
        .arg(tuser)
        .arg("-d")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    login_env(&mut restore, &target.primary, tpass);
    let mut child = restore.spawn().map_err(|e| spawn(&psql, e))?;
    let mut stdin = child.stdin.take().ok_or_else(|| ToolError::Spawn {
        path: psql.display().to_string(),
        reason: "no stdin pipe".into(),
    })?;
    let mut script = prelude.as_bytes().to_vec();
    script.extend_from_slice(&out.stdout);
    let feed = async move {
        stdin.write_all(&script).await?;
        stdin.shutdown().await
    };
    let run = async {
        let (fed, out) = tokio::join!(feed, child.wait_with_output());
        (fed, out)
    };
    let (fed, out) = tokio::time::timeout(TOOL_TIMEOUT, run)
        .await
        .map_err(|_| ToolError::Timeout { tool: "psql" })?;
    let out = out.map_err(|e| spawn(&psql, e))?;
    if !out.status.success() || fed.is_err() {
        return Err(ToolError::Failed {
            tool: "psql",
            shard: target.name.clone(),
            db: db.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}
