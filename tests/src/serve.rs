//! A real `shardgate serve` child process, for the tests that kill it (SIGKILL at a failpoint)
//! and start it again: the binary next to the test executable, its admin API over plain
//! HTTP/1.1 with a bearer token, and a child that is killed on drop if it still runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The admin token a child is given (through [`ADMIN_TOKEN_ENV`]); a config for [`Serve`]
/// says `token_env = "SG_TEST_ADMIN_TOKEN"`.
pub const ADMIN_TOKEN: &str = "serve-admin-token";
pub const ADMIN_TOKEN_ENV: &str = "SG_TEST_ADMIN_TOKEN";

/// `target/<profile>/shardgate`, next to the `deps` directory holding the test executable.
/// The workspace test build has the `failpoints` feature on (a dev-dependency enables it).
pub fn shardgate_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable sits in target/<profile>/deps");
    let bin = dir.join("shardgate");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p shardgate-proxy --features failpoints --bin \
         shardgate` (or run the workspace tests, whose build enables the feature)",
        bin.display()
    );
    bin
}

/// A `shardgate serve --config <config>` child with its admin API on `admin`.
pub struct Serve {
    pub child: Child,
    pub admin: u16,
    pub config: PathBuf,
}

impl Serve {
    /// Starts it (with `FAILPOINTS=<failpoints>` when given) and waits until `/ready` answers
    /// 200 (30 s at most).
    pub fn start(config: PathBuf, admin: u16, failpoints: Option<&str>) -> Serve {
        let mut cmd = Command::new(shardgate_bin());
        cmd.args(["serve", "--config"])
            .arg(&config)
            .env(ADMIN_TOKEN_ENV, ADMIN_TOKEN)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .env("NO_COLOR", "1")
            .env_remove("FAILPOINTS")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(f) = failpoints {
            cmd.env("FAILPOINTS", f);
        }
        let child = cmd.spawn().expect("spawn shardgate serve");
        let mut serve = Serve {
            child,
            admin,
            config,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http(admin, "GET", "/ready", "").0 != 200 {
            if let Ok(Some(status)) = serve.child.try_wait() {
                panic!("shardgate serve exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "shardgate serve not ready in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        serve
    }

    /// One admin API request: (status, body).
    pub fn api(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        http(self.admin, method, path, body)
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One HTTP/1.1 request with the admin token; (status, body), status 0 when nothing answers.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    crate::http::request(port, method, path, Some(ADMIN_TOKEN), body)
}
