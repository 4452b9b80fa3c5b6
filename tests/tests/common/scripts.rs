//! Driver scripts (`tests/drivers/`) run against a proxy: the driver environments are
//! installed once by the harness; a script passes when it exits 0 and prints `OK <name>`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A safety net only: each script takes seconds.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// The path of a script under `tests/drivers`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("drivers")
        .join(name)
}

/// Installs (once) a driver environment off the async runtime, printing how long it took.
pub async fn install<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> shardgate_tests::Result<T> + Send + 'static,
) -> T {
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(f)
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("installing the {what} driver environment failed: {e}"));
    eprintln!("{what} environment ready in {:?}", started.elapsed());
    out
}

/// A command running the Python script `file` (from the driver virtualenv) with `args`.
pub async fn python(file: &str, args: &[&str]) -> tokio::process::Command {
    let python = install("python", shardgate_tests::python_env).await;
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(script(file)).args(args);
    cmd
}

/// A command running the node script `file` with node-postgres available, with `args`.
pub async fn node(file: &str, args: &[&str]) -> tokio::process::Command {
    let dir = install("node", shardgate_tests::node_env).await;
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(script(file))
        .args(args)
        .env("NODE_PATH", dir.join("node_modules"))
        .current_dir(&dir);
    cmd
}

/// Runs `cmd` (a driver script given the proxy URL), and fails the test with the script's
/// output unless it exits 0 and prints `OK <name>` within `timeout`. Returns its stdout.
pub async fn run_script_within(
    name: &str,
    mut cmd: tokio::process::Command,
    timeout: Duration,
) -> String {
    let started = Instant::now();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the {name} script: {e}"));
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the {name} script did not finish in {timeout:?}"))
        .expect("wait for the script");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ok_line = format!("OK {name}");
    assert!(
        out.status.success() && stdout.lines().any(|l| l.trim() == ok_line),
        "the {name} script failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    eprintln!("{name} script passed in {:?}:\n{stdout}", started.elapsed());
    stdout
}

/// [`run_script_within`] with [`SCRIPT_TIMEOUT`].
pub async fn run_script(name: &str, cmd: tokio::process::Command) -> String {
    run_script_within(name, cmd, SCRIPT_TIMEOUT).await
}
