//! The operator surface of a real `shardgate serve` process in front of a real PostgreSQL:
//! the admin HTTP API with its token, `/metrics`, the `shardgate admin` CLI, reload under
//! load (and a refused one), pools sizing themselves, and the drain on SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_localpg::{free_port, Auth, ClusterOptions, PgCluster};

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");
const TOKEN: &str = "s3cret-admin-token";
const USER: &str = "app";
const PASSWORD: &str = "app-secret";

/// A `shardgate serve` child process; killed on drop if still running.
struct Server {
    child: Child,
    port: u16,
    admin: u16,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn config_text(pg: &PgCluster, port: u16, admin: u16, pool: &str, extra: &str) -> String {
    format!(
        r#"
[listen]
addr = "127.0.0.1:{port}"
shutdown_timeout = "20s"

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

impl Server {
    fn start(pg: &PgCluster, pool: &str) -> Server {
        Self::start_with(pg, pool, "", Stdio::inherit())
    }

    fn start_with(pg: &PgCluster, pool: &str, extra: &str, stderr: Stdio) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin) = (free_port(), free_port());
        let config = dir.path().join("shardgate.toml");
        std::fs::write(&config, config_text(pg, port, admin, pool, extra)).unwrap();
        Self::spawn(dir, config, port, admin, stderr)
    }

    fn spawn(
        dir: tempfile::TempDir,
        config: PathBuf,
        port: u16,
        admin: u16,
        stderr: Stdio,
    ) -> Server {
        Self::spawn_logging(dir, config, port, admin, stderr, "warn")
    }

    fn spawn_logging(
        dir: tempfile::TempDir,
        config: PathBuf,
        port: u16,
        admin: u16,
        stderr: Stdio,
        rust_log: &str,
    ) -> Server {
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("TEST_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let server = Server {
            child,
            port,
            admin,
            config,
            _dir: dir,
        };
        let up = wait(Duration::from_secs(20), || {
            http(server.admin, "GET", "/ready", None, "").0 == 200
        });
        assert!(up, "shardgate did not become ready");
        server
    }

    /// Stops the process and starts it again from the same config file and directory.
    fn restart(mut self) -> Server {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap());
        let (config, port, admin) = (self.config.clone(), self.port, self.admin);
        drop(self);
        Self::spawn(dir, config, port, admin, Stdio::inherit())
    }

    fn url(&self) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{USER}",
            self.port
        )
    }

    fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin)
    }

    fn api(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        http(self.admin, method, path, Some(TOKEN), body)
    }

    /// `shardgate admin --url … <args>` → (exit code, stdout, stderr).
    fn cli(&self, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new(BIN);
        cmd.args(["admin", "--url", &self.admin_url()]);
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
}

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

/// One HTTP/1.1 request; (status, body). Status 0 when nothing answers.
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
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

/// Starts shardgate on `pg` with the test config as `edit` changes it and its stderr in a
/// file: the server, the log file's path and the config text written.
fn spawn_logged(
    pg: &PgCluster,
    edit: impl FnOnce(String) -> String,
    rust_log: &str,
) -> (Server, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = dir.path().join("shardgate.toml");
    let log = dir.path().join("stderr.log");
    let text = edit(config_text(pg, port, admin, "size = 2", ""));
    std::fs::write(&config, &text).unwrap();
    let stderr = Stdio::from(std::fs::File::create(&log).unwrap());
    let server = Server::spawn_logging(dir, config, port, admin, stderr, rust_log);
    (server, log, text)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_metrics_and_cli_on_a_running_proxy() {
    let pg = tokio::task::spawn_blocking(start_pg).await.unwrap();
    let server = Server::start(&pg, "size = 4");

    // Probes and /metrics are open; the API needs the token.
    assert_eq!(http(server.admin, "GET", "/health", None, "").0, 200);
    let (status, body) = http(server.admin, "GET", "/ready", None, "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["ready"], true);
    assert_eq!(http(server.admin, "GET", "/api/v1/pools", None, "").0, 401);
    assert_eq!(
        http(server.admin, "GET", "/api/v1/pools", Some("wrong"), "").0,
        401
    );

    let client = connect(&server.url()).await;
    let before = http(server.admin, "GET", "/metrics", None, "").1;
    for _ in 0..20 {
        client.simple_query("SELECT 1").await.unwrap();
    }
    let _ = client.simple_query("SELECT 1/0").await;
    let after = http(server.admin, "GET", "/metrics", None, "").1;
    let queries = |t: &str| metric(t, "shardgate_queries_total", "shard=\"s0\"");
    assert!(
        queries(&after) >= queries(&before) + 20.0,
        "queries counted: {} -> {}",
        queries(&before),
        queries(&after)
    );
    assert!(metric(&after, "shardgate_errors_total", "class=\"22\"") >= 1.0);
    assert!(metric(&after, "shardgate_client_bytes_sent_total", "") > 0.0);
    assert!(
        metric(
            &after,
            "shardgate_query_duration_seconds_count",
            "route=\"single\""
        ) >= 20.0
    );
    // The client is idle or, for an instant after its last answer, still counted active.
    assert!(metric(&after, "shardgate_clients", "state=") >= 1.0);
    assert!(after.contains("# TYPE shardgate_queries_total counter"));

    let (status, body) = server.api("GET", "/api/v1/shards", "");
    assert_eq!(status, 200);
    assert_eq!(json(&body)[0]["name"], "s0");
    assert_eq!(json(&body)[0]["primary_up"], true);
    let (status, body) = server.api("GET", "/api/v1/pools", "");
    assert_eq!(status, 200);
    let pools = json(&body);
    assert_eq!(pools[0]["shard"], "s0");
    assert_eq!(pools[0]["max_size"], 4);
    let (status, body) = server.api("GET", "/api/v1/replicas", "");
    assert_eq!((status, json(&body)), (200, serde_json::json!([])));
    let (status, body) = server.api("POST", "/api/v1/shards", "{}");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("name"), "{body}");
    // No job yet: the rebalance status shows the shard map version and this proxy on it.
    let (status, body) = server.api("GET", "/api/v1/rebalance", "");
    assert_eq!(status, 200, "{body}");
    let rebalance = json(&body);
    assert_eq!(rebalance["job"], serde_json::Value::Null);
    assert_eq!(rebalance["topology_version"], 1);
    let (status, body) = server.api("POST", "/api/v1/rebalance/abort", "");
    assert_eq!(status, 404, "{body}");
    let (status, body) = server.api("DELETE", "/api/v1/shards/nope", "");
    assert_eq!(status, 404, "{body}");

    // The CLI: tables for people, JSON for scripts, a reason and an exit code on failure.
    let (code, out, err) = server.cli(Some(TOKEN), &["pools"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("SHARD") && out.contains("s0"), "{out}");
    let (code, out, _) = server.cli(Some(TOKEN), &["shards", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("s0"), "{out}");
    let (code, out, _) = server.cli(Some(TOKEN), &["--json", "shards", "list"]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)[0]["name"], "s0");
    let (code, _, _) = server.cli(Some(TOKEN), &["replicas"]);
    assert_eq!(code, 0);
    let (code, out, err) = server.cli(Some(TOKEN), &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = server.cli(Some("wrong"), &["pools"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("401") || err.to_lowercase().contains("token"),
        "{err}"
    );
    let (code, _, err) = server.cli(None, &["pools"]);
    assert_ne!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_changes_pool_size_under_load_and_refuses_a_bad_file() {
    let pg = tokio::task::spawn_blocking(start_pg).await.unwrap();
    let server = Server::start(&pg, "size = 3");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let c = connect(&server.url()).await;
        let (stop, errors, done) = (stop.clone(), errors.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c
                    .query_one("SELECT pg_sleep(0.005), $1::int", &[&1i32])
                    .await
                {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("query failed: {e}");
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pool_max = || {
        json(&server.api("GET", "/api/v1/pools", "").1)[0]["max_size"]
            .as_u64()
            .unwrap_or(0)
    };
    assert_eq!(pool_max(), 3);

    let text = std::fs::read_to_string(&server.config).unwrap();
    std::fs::write(&server.config, text.replace("size = 3", "size = 6")).unwrap();
    let (status, body) = server.api("POST", "/api/v1/reload", "");
    assert_eq!(status, 200, "{body}");
    assert!(
        json(&body)["applied"].to_string().contains("pool"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        wait(Duration::from_secs(5), || pool_max() == 6),
        "new size live"
    );

    // A broken file is refused with the reason; the running settings stay.
    std::fs::write(&server.config, "[pool]\nsize = \"many\"\n").unwrap();
    let (status, body) = server.api("POST", "/api/v1/reload", "");
    assert_eq!(status, 422, "{body}");
    assert!(json(&body)["error"].to_string().contains("size"), "{body}");
    // SIGHUP is refused the same way (the process keeps serving).
    Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pool_max(), 6);

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(done.load(Ordering::Relaxed) > 100);
    assert_eq!(errors.load(Ordering::Relaxed), 0, "no client saw an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_transactions_and_refuses_new_clients() {
    let pg = tokio::task::spawn_blocking(start_pg).await.unwrap();
    let mut server = Server::start(&pg, "size = 4");
    let client = connect(&server.url()).await;
    client
        .batch_execute("CREATE TABLE drained (id int)")
        .await
        .unwrap();
    client
        .batch_execute("BEGIN; INSERT INTO drained VALUES (1)")
        .await
        .unwrap();

    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    // /ready turns 503 at once, so a load balancer stops sending.
    assert!(
        wait(Duration::from_secs(5), || http(
            server.admin,
            "GET",
            "/ready",
            None,
            ""
        )
        .0 == 503),
        "ready answers 503 while draining"
    );
    // New clients are refused.
    let refused = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .is_err();
    assert!(refused, "a new connection is refused while draining");
    // A second instance can bind the same port meanwhile (SO_REUSEPORT).
    let reuse = socket2_like_bind(server.port);
    assert!(reuse, "the client port can be bound again while draining");

    // The open transaction still commits, then the process exits.
    client.batch_execute("COMMIT").await.unwrap();
    let exited = wait(Duration::from_secs(15), || {
        matches!(server.child.try_wait(), Ok(Some(_)))
    });
    assert!(exited, "shardgate exits once its clients are gone");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "clean exit: {status}");
    let direct = connect(&pg.url(USER, PASSWORD, USER)).await;
    let n: i64 = direct
        .query_one("SELECT count(*) FROM drained", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the drained transaction committed");
}

/// SIGINT with a client in the middle of a long statement: the process ends at
/// `listen.shutdown_timeout` (the session is dropped then), not when the statement ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_ends_the_process_at_the_shutdown_timeout_whatever_sessions_do() {
    let pg = tokio::task::spawn_blocking(start_pg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = dir.path().join("shardgate.toml");
    let text = config_text(&pg, port, admin, "size = 4", "")
        .replace("shutdown_timeout = \"20s\"", "shutdown_timeout = \"2s\"");
    std::fs::write(&config, text).unwrap();
    let mut server = Server::spawn(dir, config, port, admin, Stdio::inherit());
    let client = connect(&server.url()).await;
    let busy = tokio::spawn(async move { client.simple_query("select pg_sleep(120)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    Command::new("kill")
        .args(["-INT", &server.child.id().to_string()])
        .status()
        .unwrap();
    let exited = wait(Duration::from_secs(10), || {
        matches!(server.child.try_wait(), Ok(Some(_)))
    });
    assert!(
        exited,
        "shardgate still running 10 s after SIGINT (shutdown_timeout 2 s)"
    );
    assert!(server.child.wait().unwrap().success());
    let outcome = tokio::time::timeout(Duration::from_secs(10), busy)
        .await
        .expect("the busy client's statement ended with the process")
        .unwrap();
    assert!(outcome.is_err(), "the long statement was cut off");
}

/// Binds `port` with SO_REUSEPORT as a second shardgate would.
fn socket2_like_bind(port: u16) -> bool {
    let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
        return false;
    };
    let _ = socket.set_reuseaddr(true);
    let _ = socket.set_reuseport(true);
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .is_ok()
        && socket.listen(16).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_statements_are_logged_without_their_values() {
    let pg = tokio::task::spawn_blocking(start_pg).await.unwrap();
    let mut server = Server::start_with(
        &pg,
        "size = 2",
        "[log]\nslow_query_ms = 100",
        Stdio::piped(),
    );
    let client = connect(&server.url()).await;
    client
        .simple_query("SELECT pg_sleep(0.3), 'secret-value' AS v")
        .await
        .unwrap();
    client
        .query("SELECT pg_sleep($1::float8 / 10), 42", &[&3f64])
        .await
        .unwrap();
    client.simple_query("SELECT 'fast'").await.unwrap();
    drop(client);
    let _ = server.child.kill();
    let out = server.child.wait_with_output_stderr();
    let slow: Vec<&str> = out.lines().filter(|l| l.contains("slow query")).collect();
    assert_eq!(slow.len(), 2, "two slow statements logged: {out}");
    // The statement's fingerprint, as `shardgate admin queries` shows it.
    assert!(slow[0].contains("pg_sleep($1), $2 AS v"), "{}", slow[0]);
    assert!(
        slow[0].contains("s0") && slow[0].contains("primary"),
        "{}",
        slow[0]
    );
    assert!(slow[0].contains("duration_ms="), "{}", slow[0]);
    assert!(
        !out.contains("secret-value"),
        "literal values are not logged: {out}"
    );
    assert!(slow[1].contains("$1::float8 / $2"), "{}", slow[1]);
    assert!(
        !slow[1].contains("parameters="),
        "parameters are off by default: {}",
        slow[1]
    );
}

trait StderrOutput {
    fn wait_with_output_stderr(&mut self) -> String;
}

impl StderrOutput for Child {
    fn wait_with_output_stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut text);
        }
        let _ = self.wait();
        text
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_grows_the_pool_within_the_host_budget_and_it_shrinks_back() {
    let pg = tokio::task::spawn_blocking(start_pg).await.unwrap();
    // The harness's servers allow 200 connections: (200 - 5) × 0.031 = 6 for this proxy.
    let server = Server::start(
        &pg,
        "size = 10\nmin_size = 2\nidle_timeout = \"500ms\"\nhost_reserve = 5\nhost_share = 0.031\ncheckout_timeout = \"30s\"",
    );
    let pool = || json(&server.api("GET", "/api/v1/pools", "").1)[0].clone();
    let warm = connect(&server.url()).await;
    warm.simple_query("SELECT 1").await.unwrap();
    assert_eq!(pool()["size"], 2, "starts at min_size: {}", pool());

    let direct = connect(&pg.url(USER, PASSWORD, USER)).await;
    let mut clients = Vec::new();
    for _ in 0..64 {
        clients.push(connect(&server.url()).await);
    }
    let stop_at = Instant::now() + Duration::from_secs(4);
    let mut burst = Vec::new();
    for c in clients {
        burst.push(tokio::spawn(async move {
            while Instant::now() < stop_at {
                c.simple_query("SELECT pg_sleep(0.05)").await.unwrap();
            }
        }));
    }
    let (mut largest, mut most_backends) = (0u64, 0i64);
    while Instant::now() < stop_at {
        let p = pool();
        largest = largest.max(p["size"].as_u64().unwrap_or(0));
        let backends: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'shardgate'",
                &[&USER],
            )
            .await
            .unwrap()
            .get(0);
        most_backends = most_backends.max(backends);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for b in burst {
        b.await.unwrap();
    }
    assert!(largest > 2, "the pool grew under load: {}", pool());
    assert!(largest <= 6, "never past the host budget of 6: {largest}");
    assert!(
        most_backends <= 6,
        "server connections within budget: {most_backends}"
    );
    let grown = pool()["grown"].as_u64().unwrap_or(0);
    assert!(grown >= 1);

    // Quiet again: back to min_size.
    let shrunk = wait(Duration::from_secs(20), || pool()["size"] == 2);
    assert!(shrunk, "shrinks back to min_size: {}", pool());
    assert!(pool()["shrunk"].as_u64().unwrap_or(0) >= 1);
}

/// `shardgate admin shards add` against a running `serve`: the rows move, `rebalance status
/// --watch` follows the job to its end, and the new shard map survives a restart (file store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_added_with_the_cli_moves_rows_and_survives_a_restart() {
    let (pg, spare) = tokio::task::spawn_blocking(|| (start_pg(), start_pg()))
        .await
        .unwrap();
    pg.psql_as(
        USER,
        PASSWORD,
        USER,
        "create table items (user_id bigint primary key, v int not null);
         insert into items select g, 0 from generate_series(1, 2000) g",
    )
    .unwrap();
    let extra = r#"
[rebalance]
databases = ["app"]
admin_user = "postgres"
admin_password = "postgres"

[[sharding.tables]]
name = "items"
"#;
    let server = Server::start_with(&pg, "size = 4", extra, Stdio::inherit());
    let primary = format!("postgres://postgres:postgres@127.0.0.1:{}", spare.port());
    let (code, out, err) = server.cli(Some(TOKEN), &["shards", "add", "s1", "--primary", &primary]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("started job rb-"), "{out}");
    let (code, out, err) = server.cli(
        Some(TOKEN),
        &["rebalance", "status", "--watch", "--interval", "200ms"],
    );
    assert_eq!(code, 0, "the job ends done: {out}{err}");
    assert!(out.contains("done"), "{out}");

    let moved: i64 = spare
        .psql("app", "select count(*) from items")
        .unwrap()
        .parse()
        .unwrap();
    let kept: i64 = pg
        .psql("app", "select count(*) from items")
        .unwrap()
        .parse()
        .unwrap();
    assert!(moved > 0 && kept > 0, "moved {moved}, kept {kept}");
    assert_eq!(moved + kept, 2000);
    let state = format!("{}.topology.json", server.config.display());
    assert!(std::path::Path::new(&state).exists(), "{state}");

    // Restarted, it routes by the stored map, not the file's single [[shards]] entry.
    let server = server.restart();
    let (code, out, _) = server.cli(Some(TOKEN), &["--json", "shards", "list"]);
    assert_eq!(code, 0);
    let shards = json(&out);
    assert_eq!(shards.as_array().map(Vec::len), Some(2), "{out}");
    assert_eq!(shards[1]["name"], "s1");
    assert_eq!(shards[0]["topology_version"], 2);
    let client = connect(&server.url()).await;
    let total: i64 = client
        .query_one("select count(*) from items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 2000, "a cross-shard count covers both shards");
    for key in [1i64, 2, 3, 1999, 2000] {
        let n = client
            .execute("update items set v = v + 1 where user_id = $1", &[&key])
            .await
            .unwrap();
        assert_eq!(n, 1, "key {key} is where the map says");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_are_read_at_start_and_a_reload_says_so() {
    let pg = tokio::task::spawn_blocking(start_pg).await.unwrap();
    let (server, log, text) = spawn_logged(
        &pg,
        |t| {
            t.replace(
                "shutdown_timeout = \"20s\"",
                "shutdown_timeout = \"20s\"\nworker_threads = 1",
            )
        },
        "info",
    );
    let client = connect(&server.url()).await;
    select_one(&client).await;
    let started = std::fs::read_to_string(&log).unwrap();
    assert!(
        started.contains("worker_threads=1"),
        "the start names its threads: {started}"
    );

    std::fs::write(
        &server.config,
        text.replace("worker_threads = 1", "worker_threads = 3"),
    )
    .unwrap();
    let (status, body) = server.api("POST", "/api/v1/reload", "");
    assert_eq!(status, 200, "{body}");
    assert!(
        json(&body)["needs_restart"]
            .to_string()
            .contains("listen.worker_threads"),
        "{body}"
    );
    select_one(&client).await;
}

/// `RUST_LOG` filters the same with either filter the binary picks: targets and levels only
/// (the cheap `Targets`) or span directives (`EnvFilter`). A client's login is logged at debug
/// inside its `client` span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_filters_by_target_and_by_span() {
    let pg = tokio::task::spawn_blocking(start_pg).await.unwrap();
    for (rust_log, logged_in_shown) in [
        ("warn", false),
        ("warn,shardgate_proxy=debug", true),
        ("warn,[client]=debug", true),
        ("warn,[some_other_span]=debug", false),
    ] {
        let (server, log, _) = spawn_logged(&pg, |t| t, rust_log);
        let client = connect(&server.url()).await;
        select_one(&client).await;
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            text.contains("client logged in"),
            logged_in_shown,
            "RUST_LOG={rust_log}: {text}"
        );
        drop(server);
    }
}

/// A reload reaches sessions already connected: their next batch reads the new settings (the
/// session's view of the config is reloaded when the config was replaced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reaches_connected_sessions_at_their_next_batch() {
    let pg = tokio::task::spawn_blocking(start_pg).await.unwrap();
    let (server, _, text) = spawn_logged(&pg, |t| t, "warn");
    let client = connect(&server.url()).await;
    select_one(&client).await;

    std::fs::write(
        &server.config,
        text.replace(
            "shutdown_timeout = \"20s\"",
            "shutdown_timeout = \"20s\"\nclient_idle_timeout = \"300ms\"",
        ),
    )
    .unwrap();
    let (status, body) = server.api("POST", "/api/v1/reload", "");
    assert_eq!(status, 200, "{body}");
    // One more batch, then idle: the new idle timeout closes the session.
    select_one(&client).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while !client.is_closed() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the reloaded idle timeout did not close the connected session");
}
