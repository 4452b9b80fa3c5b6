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

use super::plan::TablePlan;

const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

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
) -> Result<(), String> {
    let names: Vec<String> = tables.iter().map(|t| t.qualified()).collect();
    dump_restore(source, target, db, &names, "--schema-only", "", rb)
        .await
        .map_err(|e| {
            format!(
                "creating the sharded tables on shard {} database {db} from shard {}'s schema \
                 failed: {e} (create the roles that own or are granted the sharded tables on the \
                 target first)",
                target.name, source.name
            )
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
) -> Result<(), String> {
    dump_restore(source, target, db, tables, "--schema-only", "", rb)
        .await
        .map_err(|e| {
            format!(
                "creating reference tables {} on shard {} database {db} from shard {}'s schema failed: {e}",
                tables.join(", "),
                target.name,
                source.name
            )
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
) -> Result<(), String> {
    dump_restore(source, target, db, tables, "--data-only", prelude, rb)
        .await
        .map_err(|e| {
            format!(
                "copying the rows of reference tables {} to shard {} database {db} from shard {} failed: {e}",
                tables.join(", "),
                target.name,
                source.name
            )
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
) -> Result<(), String> {
    let pg_dump = find_tool("pg_dump").ok_or("pg_dump was not found")?;
    let psql = find_tool("psql").ok_or("psql was not found")?;
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
        .map_err(|_| "pg_dump timed out".to_owned())?
        .map_err(|e| format!("cannot run {}: {e}", pg_dump.display()))?;
    if !out.status.success() {
        return Err(format!(
            "pg_dump of shard {} database {db} failed: {}",
            source.name,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
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
    let mut child = restore
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", psql.display()))?;
    let mut stdin = child.stdin.take().ok_or("psql has no stdin")?;
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
        .map_err(|_| "psql timed out".to_owned())?;
    let out = out.map_err(|e| format!("psql failed: {e}"))?;
    if !out.status.success() || fed.is_err() {
        return Err(format!(
            "psql on shard {}: {}",
            target.name,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}
