//! Failpoints (the `failpoints` feature, off in release builds): named places where a test
//! makes the runner stop as a killed process would. Configure them with the `fail` crate
//! (`fail::cfg(name, action)` in-process, or the `FAILPOINTS` variable read by
//! [`setup_from_env`]):
//! - `return(kill)`: the process SIGKILLs itself there (no destructor, no cleanup runs);
//! - `return(drop-store:PATH)`, once: the runner creates the file PATH and waits (up to a
//!   minute) until it is gone, then goes on: the end-to-end test drops the topology store's
//!   connections meanwhile, so the runner's next store call meets a dead connection;
//! - `return` (any other argument): the runner freezes there for good, and [`hit`] says so — an
//!   in-process test then shuts the runtime down, which is what a crash leaves behind;
//! - `panic`, `sleep(ms)`, `pause`: as the `fail` crate does them.
//!
//! Each name is listed in [`NAMES`] and documented in docs/rebalancing.md.

use std::convert::Infallible;
use std::sync::Mutex;

/// Every failpoint, in the order a job meets them.
pub const NAMES: &[&str] = &[
    "rebalance-before-save-preparing",
    "rebalance-before-save-copying",
    "rebalance-mid-copy",
    "rebalance-before-save-catching_up",
    "rebalance-before-save-cutover",
    "rebalance-before-cutover",
    "rebalance-before-publish",
    "rebalance-publish-reply-lost",
    "rebalance-after-publish",
    "rebalance-after-verify",
    "rebalance-before-save-cleanup",
    "rebalance-before-delete",
    "rebalance-mid-delete",
    "rebalance-before-done",
    "rebalance-before-save-aborting",
    "rebalance-revert-before-publish",
    "rebalance-revert-after-publish",
];

static HIT: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// Whether a runner froze at `name` (the `return` action).
pub fn hit(name: &str) -> bool {
    HIT.lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&name)
}

/// Forgets which failpoints were hit.
pub fn reset() {
    HIT.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Reads `FAILPOINTS` (`name=action;name=action`), for a `shardgate serve` under test.
pub fn setup_from_env() {
    if let Ok(spec) = std::env::var("FAILPOINTS") {
        for item in spec.split(';').filter(|s| !s.is_empty()) {
            if let Some((name, action)) = item.split_once('=') {
                if let Err(e) = fail::cfg(name, action) {
                    tracing::error!(failpoint = name, error = %e, "bad FAILPOINTS entry");
                }
            }
        }
    }
}

/// Whether failpoint `name` is set to `return` (for a point that simulates an error rather
/// than a crash); `return(kill)` SIGKILLs the process there instead (the end-to-end test's
/// "the reply never arrived because the runner died").
pub fn triggered(name: &'static str) -> bool {
    match fail::eval(name, |arg| arg) {
        Some(how) => {
            if let Some(mark) = how.as_deref().and_then(|h| h.strip_prefix("drop-store:")) {
                // Called outside an async context's await point: wait on this thread (a
                // failpoint build only).
                hand_over(name, mark, std::thread::sleep);
                return false;
            }
            if how.as_deref() == Some("kill") {
                kill_self(name);
            }
            true
        }
        None => false,
    }
}

/// The `drop-store` action: the file `mark` says "stopped at `name`"; the test removes it
/// once it dropped the store's connections. Bounded: a minute at most.
fn hand_over(name: &'static str, mark: &str, mut sleep: impl FnMut(std::time::Duration)) {
    tracing::warn!(
        failpoint = name,
        "failpoint: waiting while the store's connections are dropped"
    );
    if let Err(e) = std::fs::write(mark, name) {
        tracing::error!(failpoint = name, error = %e, "failpoint: cannot write the mark file");
        return;
    }
    // Once: a point met again (each delete batch meets `mid-delete`) goes on at once.
    fail::remove(name);
    for _ in 0..1200 {
        if !std::path::Path::new(mark).exists() {
            return;
        }
        sleep(std::time::Duration::from_millis(50));
    }
}

/// SIGKILLs this process (no destructor, no cleanup runs).
fn kill_self(name: &'static str) {
    tracing::warn!(failpoint = name, "failpoint: SIGKILL");
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
}

/// Stops the runner at `name` as the configured action says (see the module docs).
pub async fn crash(name: &'static str) {
    let Some(how) = fail::eval(name, |arg| arg) else {
        return;
    };
    if let Some(mark) = how.as_deref().and_then(|h| h.strip_prefix("drop-store:")) {
        let mark = mark.to_owned();
        // Waits on a blocking thread: the runner's task is what stops here.
        let _ =
            tokio::task::spawn_blocking(move || hand_over(name, &mark, std::thread::sleep)).await;
        return;
    }
    tracing::warn!(failpoint = name, how = ?how, "failpoint: simulated crash");
    if how.as_deref() == Some("kill") {
        kill_self(name);
    }
    HIT.lock().unwrap_or_else(|e| e.into_inner()).push(name);
    let never: Infallible = std::future::pending().await;
    match never {}
}

/// The failpoint before the job's phase changes to `phase` in the store.
pub(crate) fn before_save(phase: shardgate_topology::Phase) -> &'static str {
    use shardgate_topology::Phase;
    match phase {
        Phase::Preparing => "rebalance-before-save-preparing",
        Phase::Copying => "rebalance-before-save-copying",
        Phase::CatchingUp => "rebalance-before-save-catching_up",
        Phase::Cutover => "rebalance-before-save-cutover",
        Phase::Cleanup => "rebalance-before-save-cleanup",
        Phase::Aborting => "rebalance-before-save-aborting",
        _ => "rebalance-before-save-other",
    }
}
