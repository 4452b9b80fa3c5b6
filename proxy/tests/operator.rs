//! The operator surface of a real `shardgate serve` process in front of a real PostgreSQL:
//! the admin HTTP API with its token, `/metrics`, the `shardgate admin` CLI, reload under
//! load (and a refused one), pools sizing themselves, what is logged, and the drain on
//! SIGTERM (and the cut-off on SIGINT).
//!
//! This file holds the harness the tests share (a server process, its config, HTTP and CLI
//! calls); the tests live in the submodules, kept in this one test binary so that CI builds
//! and links it once.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use shardgate_localpg::{free_port, Auth, ClusterOptions, PgCluster};

#[path = "operator/admin.rs"]
mod admin;
#[path = "operator/logging.rs"]
mod logging;
#[path = "operator/pools.rs"]
mod pools;
#[path = "operator/reload.rs"]
mod reload;
#[path = "operator/shutdown.rs"]
mod shutdown;

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");
const TOKEN: &str = "s3cret-admin-token";
const USER: &str = "app";
const PASSWORD: &str = "app-secret";

/// What a test sets in the config it starts `shardgate serve` with, and how it runs it; the
/// defaults, changed by the methods of the same names.
struct Opts<'a> {
    /// The lines of `[pool]`.
    pool: &'a str,
    shutdown_timeout: &'a str,
    /// More lines for `[listen]`.
    listen: &'a str,
    /// Sections after `[replicas]`.
    extra: &'a str,
    rust_log: &'a str,
    /// Stderr to a file the test reads with `Server::log`, instead of to the test's own.
    log_to_file: bool,
}

impl Default for Opts<'_> {
    fn default() -> Self {
        Opts {
            pool: "size = 4",
            shutdown_timeout: "20s",
            listen: "",
            extra: "",
            rust_log: "warn",
            log_to_file: false,
        }
    }
}

impl<'a> Opts<'a> {
    /// A pool of 2, `RUST_LOG=rust_log` and stderr to the file `Server::log` reads.
    fn logged(rust_log: &'a str) -> Self {
        Opts {
            pool: "size = 2",
            rust_log,
            log_to_file: true,
            ..Opts::default()
        }
    }

    fn pool(self, pool: &'a str) -> Self {
        Opts { pool, ..self }
    }

    fn shutdown_timeout(self, shutdown_timeout: &'a str) -> Self {
        Opts {
            shutdown_timeout,
            ..self
        }
    }

    fn listen(self, listen: &'a str) -> Self {
        Opts { listen, ..self }
    }

    fn extra(self, extra: &'a str) -> Self {
        Opts { extra, ..self }
    }
}

fn config_text(pg: &PgCluster, port: u16, admin: u16, opts: &Opts) -> String {
    let Opts {
        pool,
        shutdown_timeout,
        listen,
        extra,
        ..
    } = opts;
    format!(
        r#"
[listen]
addr = "127.0.0.1:{port}"
shutdown_timeout = "{shutdown_timeout}"
{listen}

[admin]
listen = "127.0.0.1:{admin}"
token_env = "TEST_ADMIN_TOKEN"

[pool]
{pool}

[replicas]
check_interval = "200ms"

{extra}

[[users]]
name = "{USER}"
password = "{PASSWORD}"

[[shards]]
name = "s0"
primary = {{ host = "127.0.0.1", port = {pg} }}
"#,
        pg = pg.port()
    )
}

/// A server's files and ports, kept across a restart: the config (and the shard map stored
/// beside it) and the log live in `dir`.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    /// The config text first written.
    text: String,
    port: u16,
    admin: u16,
}

/// The `shardgate serve` child process; killed on drop if still running.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A running `shardgate serve` with its setup.
struct Server {
    process: Process,
    setup: Setup,
}

impl Server {
    /// Starts with the default config but for `pool`, stderr to the test's own.
    fn start(pg: &PgCluster, pool: &str) -> Server {
        Self::launch(pg, Opts::default().pool(pool))
    }

    fn launch(pg: &PgCluster, opts: Opts) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin) = (free_port(), free_port());
        let config = dir.path().join("shardgate.toml");
        let text = config_text(pg, port, admin, &opts);
        std::fs::write(&config, &text).unwrap();
        let setup = Setup {
            dir,
            config,
            text,
            port,
            admin,
        };
        Self::spawn(setup, opts.log_to_file, opts.rust_log)
    }

    /// Runs `shardgate serve` on `setup` and waits for `/ready`.
    fn spawn(setup: Setup, log_to_file: bool, rust_log: &str) -> Server {
        let stderr = if log_to_file {
            Stdio::from(std::fs::File::create(setup.dir.path().join("stderr.log")).unwrap())
        } else {
            Stdio::inherit()
        };
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&setup.config)
            .env("TEST_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let server = Server {
            process: Process(child),
            setup,
        };
        let up = wait(Duration::from_secs(20), || server.probe("/ready").0 == 200);
        assert!(up, "shardgate did not become ready");
        server
    }

    /// Stops the process and starts it again from the same config file and directory.
    fn restart(self) -> Server {
        let Server { process, setup } = self;
        drop(process);
        Self::spawn(setup, false, "warn")
    }

    fn url(&self) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{USER}",
            self.setup.port
        )
    }

    /// The server's stderr so far (started with `log_to_file`).
    fn log(&self) -> String {
        std::fs::read_to_string(self.setup.dir.path().join("stderr.log")).unwrap()
    }

    /// One HTTP/1.1 request to the admin port; (status, body). Status 0 when nothing answers.
    fn http(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
        shardgate_tests::http::request(self.setup.admin, method, path, token, body)
    }

    /// A GET without a token, as probes and scrapers send it.
    fn probe(&self, path: &str) -> (u16, String) {
        self.http("GET", path, None, "")
    }

    /// An admin API call with the right token.
    fn api(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.http(method, path, Some(TOKEN), body)
    }

    /// The first (only) shard's entry in `/api/v1/pools`.
    fn pool(&self) -> serde_json::Value {
        json(&self.api("GET", "/api/v1/pools", "").1)[0].clone()
    }

    /// Writes `text` as the config file and asks for a reload: (status, body).
    fn reload_with(&self, text: &str) -> (u16, String) {
        std::fs::write(&self.setup.config, text).unwrap();
        self.api("POST", "/api/v1/reload", "")
    }

    /// `shardgate admin --url … <args>` → (exit code, stdout, stderr).
    fn cli(&self, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new(BIN);
        cmd.args(["admin", "--url"])
            .arg(format!("http://127.0.0.1:{}", self.setup.admin));
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        let out = cmd
            .args(args)
            .env_remove("SHARDGATE_ADMIN_TOKEN")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `shardgate admin` with the right token, which must exit 0; its stdout.
    fn cli_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.cli(Some(TOKEN), args);
        assert_eq!(code, 0, "shardgate admin {}: {out}{err}", args.join(" "));
        out
    }

    /// Sends `signal` ("-TERM", "-HUP", …) to the process.
    fn signal(&self, signal: &str) {
        Command::new("kill")
            .args([signal, &self.process.0.id().to_string()])
            .status()
            .unwrap();
    }

    /// How the process ended if it does within `timeout`.
    fn exit_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = &mut self.process.0;
        let exited = wait(timeout, || matches!(child.try_wait(), Ok(Some(_))));
        exited.then(|| child.wait().unwrap())
    }

    /// Kills the process and waits for it, so that its log is complete.
    fn kill(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
    }
}

/// Polls `check` every 50 ms until it holds (true) or `timeout` passes (false).
fn wait(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(conn);
    client
}

fn start_pg() -> PgCluster {
    let pg = PgCluster::start(ClusterOptions::default().user(USER, PASSWORD, Auth::Scram))
        .expect("start PostgreSQL");
    pg.create_database(USER, USER).expect("create database");
    pg
}

/// `start_pg` off the runtime's threads (it blocks while PostgreSQL starts).
async fn postgres() -> PgCluster {
    tokio::task::spawn_blocking(start_pg).await.unwrap()
}

/// The single bigint a `select count(*) …` returns.
async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn select_one(client: &tokio_postgres::Client) {
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// The value of a metric line `name{labels} value` (summed over label sets matching
/// `label_filter`).
fn metric(text: &str, name: &str, label_filter: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(label_filter))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}
