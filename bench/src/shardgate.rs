//! The shardgate proxy as a separate process (the release binary, `shardgate serve --config
//! F`), so its CPU time and memory can be read from /proc like PgBouncer's.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::service::{PidSource, Service};

/// shardgate's own default `RUST_LOG` (`info`: each session's span is enabled, and entered
/// and left at every poll of the session): what a benchmark measures unless told otherwise.
pub const DEFAULT_LOG: &str = "info";

/// Settings the benchmark varies.
#[derive(Debug, Clone)]
pub struct Settings {
    pub port: u16,
    pub admin_port: u16,
    pub user: String,
    pub password: String,
    pub pool_size: u32,
    pub max_client_connections: u32,
    /// Server ports, one shard each.
    pub shards: Vec<u16>,
    /// Shard `pgbench_accounts` by `aid` (for the routed comparison).
    pub sharded: bool,
    /// The proxy's `RUST_LOG`.
    pub log: String,
}

/// The config file: transaction mode, one user with SCRAM, the pool size, loopback only.
pub fn render_config(s: &Settings) -> String {
    let mut t = String::from("# written by shardgate's bench\n");
    let _ = writeln!(
        t,
        "[listen]\naddr = \"127.0.0.1:{}\"\nmax_client_connections = {}\nshutdown_timeout = \"2s\"\n",
        s.port, s.max_client_connections
    );
    let _ = writeln!(t, "[admin]\nlisten = \"127.0.0.1:{}\"\n", s.admin_port);
    let _ = writeln!(
        t,
        "[pool]\nmode = \"transaction\"\nsize = {}\n",
        s.pool_size
    );
    if s.sharded {
        // pgbench -S reads pgbench_accounts by aid: make aid the shard key.
        t.push_str("[[sharding.tables]]\nname = \"pgbench_accounts\"\nkey_column = \"aid\"\n\n");
    }
    let _ = writeln!(
        t,
        "[[users]]\nname = {}\npassword = {}\nauth = \"scram-sha-256\"\n",
        toml_string(&s.user),
        toml_string(&s.password)
    );
    for (i, port) in s.shards.iter().enumerate() {
        let _ = writeln!(
            t,
            "[[shards]]\nname = \"s{i}\"\nprimary = {{ host = \"127.0.0.1\", port = {port} }}\n"
        );
    }
    t
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Starts `binary serve --config <dir>/shardgate.toml` with `RUST_LOG` set to `settings.log`.
pub fn start(binary: &Path, mut settings: Settings, name: &str) -> anyhow::Result<Service> {
    let mut service = Service::new(name)?;
    service.start(PidSource::Child, |svc, port| {
        settings.port = port;
        settings.admin_port = shardgate_tests::try_free_port()?;
        let path = svc.dir().join("shardgate.toml");
        std::fs::write(&path, render_config(&settings))
            .with_context(|| format!("write {}", path.display()))?;
        let mut cmd = Command::new(binary);
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", &settings.log)
            .current_dir(svc.dir());
        Ok(cmd)
    })?;
    Ok(service)
}

/// The workspace root (the bench crate's parent directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Builds the release shardgate binary (`cargo build --release -p shardgate-proxy --bin
/// shardgate`) and returns its path: next to this benchmark's executable when that is a
/// release build, else under `$CARGO_TARGET_DIR` (or `target/`).
pub fn build_release_binary() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building the release shardgate binary (cargo build --release -p shardgate-proxy)");
    let status = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "-p",
            "shardgate-proxy",
            "--bin",
            "shardgate",
        ])
        .current_dir(workspace_root())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p shardgate-proxy failed: {status}");
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .filter(|d| d.ends_with("release"))
    {
        candidates.push(dir.join("shardgate"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    candidates.push(target.join("release").join("shardgate"));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| format!("the shardgate binary is not at any of {candidates:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_with_the_real_schema() {
        let s = Settings {
            port: 7001,
            admin_port: 7002,
            user: "bench".into(),
            password: "p\"w\\x".into(),
            pool_size: 20,
            max_client_connections: 12_000,
            shards: vec![5432, 5433],
            sharded: true,
            log: DEFAULT_LOG.into(),
        };
        let text = render_config(&s);
        let c = shardgate_config::Config::from_toml(&text, Path::new("bench.toml")).unwrap();
        assert_eq!(c.listen.addr, "127.0.0.1:7001");
        assert_eq!(c.listen.max_client_connections, 12_000);
        assert_eq!(c.admin.listen, "127.0.0.1:7002");
        assert_eq!(c.pool.size, 20);
        assert_eq!(c.shards.len(), 2);
        assert_eq!(c.users[0].password.as_deref(), Some("p\"w\\x"));
        assert_eq!(c.sharding.tables[0].name, "pgbench_accounts");
    }
}
