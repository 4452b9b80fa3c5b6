//! initdb takes about a second; copying its result takes a tenth of that. So each process runs
//! initdb once into a template data directory and every cluster starts from a copy. Passwords,
//! ports and pg_hba are applied to the copy, so nothing about the template depends on options.
//!
//! The template lives in a per-process temporary directory that a watchdog removes when the
//! process exits. Setting `SHARDGATE_PG_TEMPLATE_DIR` keeps templates there across processes
//! instead (useful with one process per test, as cargo-nextest runs them).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::bin::pg_bin;
use crate::error::{LocalPgError, Result};
use crate::process::{
    give_to_server_user, run, server_command, shell_quote, spawn_watchdog, write_server_file,
};

/// Environment variable naming a directory where templates are kept across processes.
pub const TEMPLATE_DIR_ENV: &str = "SHARDGATE_PG_TEMPLATE_DIR";
/// Environment variable naming where cluster directories are created (default: `/dev/shm` when
/// it has room, else the system temporary directory). When running as root it must be reachable
/// by the `postgres` user.
pub const TMPDIR_ENV: &str = "SHARDGATE_PG_TMPDIR";

/// Memory-backed directory preferred for clusters: initdb runs about 5x and the template copy
/// about 10x faster there than on this machine's disk.
const SHM: &str = "/dev/shm";
/// Free space `/dev/shm` needs to be used (a container's default 64 MiB is too small).
const SHM_MIN_FREE: u64 = 1 << 30;

/// Bumped whenever the template's contents change shape.
const TEMPLATE_FORMAT: u32 = 2;

/// The directory under which cluster and template directories are created:
/// `$SHARDGATE_PG_TMPDIR`, else `/dev/shm` if it has at least 1 GiB free, else the system
/// temporary directory.
pub fn temp_base() -> PathBuf {
    if let Some(dir) = std::env::var_os(TMPDIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if free_bytes(Path::new(SHM)).is_some_and(|free| free >= SHM_MIN_FREE) {
        return PathBuf::from(SHM);
    }
    std::env::temp_dir()
}

fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes only into `st`; `path` is a valid NUL-terminated string.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut st) != 0
            || libc::access(path.as_ptr(), libc::W_OK) != 0
        {
            return None;
        }
        // The field types differ between platforms; on 64-bit Linux they already are u64.
        #[allow(clippy::useless_conversion)]
        Some(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
    }
}

/// Creates a fresh, uniquely named directory under [`temp_base`] owned by the server user.
pub fn new_server_dir(prefix: &str) -> Result<PathBuf> {
    let base = temp_base();
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .map_err(|e| LocalPgError::io(format!("create a directory in {}", base.display()), e))?
        .keep();
    give_to_server_user(&dir)?;
    Ok(dir)
}

/// The template data directory (initdb output plus our include line), built on first use.
pub fn template_data_dir() -> Result<PathBuf> {
    static TEMPLATE: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut cached = TEMPLATE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = cached.as_ref() {
        return Ok(dir.clone());
    }
    let dir = match std::env::var_os(TEMPLATE_DIR_ENV).filter(|d| !d.is_empty()) {
        Some(cache) => cached_template(Path::new(&cache))?,
        None => {
            let root = new_server_dir("shardgate-pg-template-")?;
            // Lives as long as the process: the template is removed when the process exits.
            spawn_watchdog(
                &root,
                &format!("rm -rf {}", shell_quote(&root.to_string_lossy())),
            )?;
            let data = root.join("data");
            build(&data)?;
            data
        }
    };
    *cached = Some(dir.clone());
    Ok(dir)
}

/// A template kept in `cache`, keyed by the PostgreSQL build; built into a scratch directory and
/// renamed into place, so concurrent processes never see half a template.
fn cached_template(cache: &Path) -> Result<PathBuf> {
    let initdb = pg_bin("initdb")?;
    let version = run(Command::new(&initdb).arg("--version"), None)?;
    let mut h = DefaultHasher::new();
    (TEMPLATE_FORMAT, &initdb, &version.stdout).hash(&mut h);
    let final_dir = cache.join(format!("pg-template-{:016x}", h.finish()));
    let data = final_dir.join("data");
    if data.join("PG_VERSION").is_file() {
        return Ok(data);
    }
    std::fs::create_dir_all(cache)
        .map_err(|e| LocalPgError::io(format!("create {}", cache.display()), e))?;
    let scratch = tempfile::Builder::new()
        .prefix(".building-")
        .tempdir_in(cache)
        .map_err(|e| LocalPgError::io(format!("create a directory in {}", cache.display()), e))?;
    give_to_server_user(scratch.path())?;
    build(&scratch.path().join("data"))?;
    // If another process won the race the rename fails and its template is used; `scratch`
    // is removed when dropped.
    if std::fs::rename(scratch.path(), &final_dir).is_ok() {
        let _ = scratch.keep();
    }
    if data.join("PG_VERSION").is_file() {
        Ok(data)
    } else {
        Err(LocalPgError::io(
            format!("install the template into {}", final_dir.display()),
            std::io::Error::other("the template is missing after building it"),
        ))
    }
}

fn build(data: &Path) -> Result<()> {
    let started = std::time::Instant::now();
    let initdb = pg_bin("initdb")?;
    let args: Vec<std::ffi::OsString> = vec![
        "-D".into(),
        data.into(),
        "-U".into(),
        "postgres".into(),
        "--auth=trust".into(),
        "--encoding=UTF8".into(),
        "--locale=C".into(),
        "--no-sync".into(),
        "--no-instructions".into(),
        // 1 MiB WAL segments instead of 16: less to copy per cluster.
        "--wal-segsize=1".into(),
    ];
    run(&mut server_command(&initdb, &args)?, None)?;
    let conf = data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf)
        .map_err(|e| LocalPgError::io(format!("read {}", conf.display()), e))?;
    text.push_str(
        "\n# shardgate-tests: per-cluster settings\ninclude_if_exists 'shardgate.conf'\n",
    );
    write_server_file(&conf, &text)?;
    tracing::debug!(dir = %data.display(), elapsed = ?started.elapsed(), "built PostgreSQL template");
    Ok(())
}
