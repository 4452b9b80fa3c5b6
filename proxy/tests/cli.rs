//! The `shardgate` binary: `check` validates configs, `demo` starts a working setup and
//! removes it on Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");

fn example_config() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shardgate.example.toml")
}

#[test]
fn check_prints_what_would_run() {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(example_config())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("is valid"), "{stdout}");
    assert!(stdout.contains("listen      127.0.0.1:6432"), "{stdout}");
    assert!(stdout.contains("transaction mode"), "{stdout}");
    assert!(
        stdout.contains("shard       s0 (default shard): primary 127.0.0.1:5432"),
        "{stdout}"
    );
}

#[test]
fn check_names_the_wrong_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(example_config())
        .unwrap()
        .replace("size = 20", "size = \"twenty\"");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml"), "{stderr}");
    assert!(stderr.contains("size"), "{stderr}");

    let missing = Command::new(BIN)
        .args(["check", "--config", "/nonexistent/shardgate.toml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/shardgate.toml"));
}

#[test]
fn serve_refuses_to_start_an_admin_api_whose_token_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.toml");
    let text = std::fs::read_to_string(example_config()).unwrap().replace(
        "# token_env = \"SHARDGATE_ADMIN_TOKEN\"",
        "token_env = \"SHARDGATE_CLI_TEST_TOKEN_NEVER_SET\"",
    );
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("SHARDGATE_CLI_TEST_TOKEN_NEVER_SET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SHARDGATE_CLI_TEST_TOKEN_NEVER_SET"),
        "{stderr}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the demo if the test fails half-way, so its cleanup still runs.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        send_sigint(self.0.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
    }
}

fn send_sigint(pid: u32) {
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
}

/// Connects with tokio-postgres; the connection task is spawned.
async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(conn);
    client
}

/// The port of a `postgres://…@127.0.0.1:PORT/db` URL.
fn url_port(url: &str) -> u16 {
    let after = url.rsplit_once("@127.0.0.1:").unwrap().1;
    after.split('/').next().unwrap().parse().unwrap()
}

/// `select user_id from TABLE` on a shard, sorted and deduplicated.
async fn user_ids(client: &tokio_postgres::Client, table: &str) -> Vec<i64> {
    let rows = client
        .query(
            &format!("select distinct user_id from {table} order by 1"),
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// The default demo (2 shards, each a primary and a replica): psql works through the proxy and
/// on every host; each shard holds the sample tables with exactly the users the ring assigns to
/// it (the ring built from the demo's own config), replicas follow their primaries; Ctrl-C
/// stops everything and removes every directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_psql_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let child = Command::new(BIN)
        .args([
            "demo",
            "--port",
            &port.to_string(),
            "--admin-port",
            &admin.to_string(),
            "--dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut demo = Demo(child);
    let stdout = demo.0.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.starts_with("Press Ctrl-C");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    })
    .await
    .unwrap();
    let text = lines.join("\n");
    let proxy_url = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("psql "))
        .unwrap_or_else(|| panic!("no psql line in:\n{text}"))
        .to_owned();
    assert!(proxy_url.contains(&format!("127.0.0.1:{port}")), "{text}");
    // (shard, role, url) for every `shard NAME ROLE: URL` line.
    let hosts: Vec<(String, String, String)> = lines
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("shard ")?;
            let (name_role, url) = rest.split_once(": ")?;
            let (name, role) = name_role.split_once(' ')?;
            Some((name.to_owned(), role.to_owned(), url.to_owned()))
        })
        .collect();
    let primary = |shard: &str| {
        hosts
            .iter()
            .find(|(n, r, _)| n == shard && r == "primary")
            .map(|(_, _, url)| url.clone())
            .unwrap_or_else(|| panic!("no `shard {shard} primary:` line in:\n{text}"))
    };
    let primaries = [primary("s0"), primary("s1")];
    assert_eq!(
        hosts.len(),
        4,
        "2 primaries and 2 replicas expected:\n{text}"
    );
    assert!(
        hosts.iter().any(|(n, r, _)| n == "s1" && r == "replica"),
        "no `shard s1 replica:` line in:\n{text}"
    );
    for needle in [
        "select * from orders where user_id = 42;",
        "select count(*) from orders;",
        "SHARDGATE ROUTE select * from orders where user_id = 42;",
    ] {
        assert!(text.contains(needle), "no `{needle}` in:\n{text}");
    }

    for url in std::iter::once(&proxy_url).chain(hosts.iter().map(|(_, _, url)| url)) {
        let client = connect(url).await;
        let row = client.query_one("select 1 + 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 2, "{url}");
    }

    // The ring of the demo's own config places every user.
    let config_path = lines
        .iter()
        .find_map(|l| l.strip_prefix("config: "))
        .unwrap_or_else(|| panic!("no config line in:\n{text}"));
    let config = shardgate_config::Config::load(std::path::Path::new(config_path)).unwrap();
    assert_eq!(config.shards.len(), 2);
    assert!(config.shards.iter().all(|s| s.replicas.len() == 1));
    let router = shardgate_router::Router::new(&config).unwrap();
    let mut all_users = Vec::new();
    for (i, url) in primaries.iter().enumerate() {
        let shard = &router.shard_names()[i];
        let client = connect(url).await;
        let users = user_ids(&client, "users").await;
        assert!(!users.is_empty(), "shard {shard} has no users");
        for u in &users {
            let home =
                &router.shard_names()[router.shard_for_key(&shardgate_router::KeyValue::Int(*u))];
            assert_eq!(
                home, shard,
                "user {u} is on {shard}, but the ring places it on {home}"
            );
        }
        let order_users = user_ids(&client, "orders").await;
        assert_eq!(
            order_users, users,
            "shard {shard}: orders of users not on it, or users without orders"
        );
        // Every column but user_id has a default.
        let no_default = client
            .query(
                "select table_name || '.' || column_name from information_schema.columns \
                 where table_schema = 'public' and table_name in ('users', 'orders') \
                 and column_name <> 'user_id' and column_default is null",
                &[],
            )
            .await
            .unwrap();
        let no_default: Vec<String> = no_default.iter().map(|r| r.get(0)).collect();
        assert!(
            no_default.is_empty(),
            "columns without a default on {shard}: {no_default:?}"
        );
        all_users.extend(users);
    }
    all_users.sort();
    assert_eq!(
        all_users,
        (1..=100).collect::<Vec<i64>>(),
        "users 1..=100 across the shards"
    );

    // Each replica is in recovery and catches up with its primary.
    for (shard, _, url) in hosts.iter().filter(|(_, r, _)| r == "replica") {
        let client = connect(url).await;
        let in_recovery: bool = client
            .query_one("select pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(
            in_recovery,
            "replica of {shard} at {url} is not in recovery"
        );
        let primary_users = user_ids(&connect(&primary(shard)).await, "users").await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let replica_users = user_ids(&client, "users").await;
            if replica_users == primary_users {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica of {shard} has {} users, its primary {}",
                replica_users.len(),
                primary_users.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let data_dir = lines
        .iter()
        .find_map(|l| l.strip_prefix("data directory: "))
        .unwrap()
        .to_owned();
    assert!(std::path::Path::new(&data_dir).exists());
    assert!(
        std::path::Path::new(&data_dir).starts_with(dir.path()),
        "{text}"
    );

    drop(demo);
    assert!(
        !std::path::Path::new(&data_dir).exists(),
        "demo left {data_dir} behind"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "demo left {left:?} behind");
    let ports = [port, admin]
        .into_iter()
        .chain(hosts.iter().map(|(_, _, url)| url_port(url)));
    for p in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", p)).is_err(),
            "something still listens on port {p}"
        );
    }
}

/// PostgreSQL programs whose command line mentions `needle` (servers under a directory).
/// (The harness's watchdog shells mention it too, and exit within a second by themselves.)
fn servers_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if !["postgres", "pg_ctl", "pg_basebackup"].contains(&comm.trim()) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(cmd);
            }
        }
    }
    found
}

/// SIGTERM while the servers are still starting (some cluster directory exists, the demo has
/// not printed its URLs) stops what had started and removes every directory.
#[test]
fn demo_stopped_while_starting_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let child = Command::new(BIN)
        .args([
            "demo",
            "--shards",
            "3",
            "--replicas",
            "2",
            "--port",
            &port.to_string(),
            "--admin-port",
            &admin.to_string(),
            "--dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut demo = Demo(child);
    // Wait for the first server directory of a shard.
    let deadline = Instant::now() + Duration::from_secs(60);
    let started = loop {
        let clusters = walk(dir.path())
            .into_iter()
            .filter(|p| p.ends_with("postmaster.pid"))
            .count();
        if clusters > 0 {
            break true;
        }
        if Instant::now() > deadline || demo.0.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        started,
        "no PostgreSQL server started under {}",
        dir.path().display()
    );
    let _ = Command::new("kill")
        .args(["-TERM", &demo.0.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = demo.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "the demo exited with {status}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut demo.0.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(
        !stdout.contains("Press Ctrl-C"),
        "the demo had finished starting:\n{stdout}"
    );
    let left = walk(dir.path());
    assert!(left.is_empty(), "the demo left {left:?} behind");
    let running = servers_mentioning(&dir.path().to_string_lossy());
    assert!(running.is_empty(), "still running: {running:?}");
}

/// Every file and directory under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut all = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            all.extend(walk(&path));
            all.push(path);
        }
    }
    all
}

/// `shardgate check --config F --route SQL` prints where a statement goes, by the config's ring
/// (nothing is started or connected to).
#[test]
fn check_route_prints_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sharded.toml");
    let mut text = String::from(
        "[[users]]\nname = \"app\"\npassword = \"app-secret\"\n\n\
         [[sharding.tables]]\nname = \"users\"\n[[sharding.tables]]\nname = \"orders\"\n",
    );
    for i in 0..3 {
        text.push_str(&format!(
            "\n[[shards]]\nname = \"s{i}\"\nprimary = {{ host = \"127.0.0.1\", port = {} }}\n",
            15432 + i
        ));
    }
    std::fs::write(&path, &text).unwrap();
    let config = shardgate_config::Config::load(&path).unwrap();
    let router = shardgate_router::Router::new(&config).unwrap();
    let route = |sql: &str| {
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .args(["--route", sql])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{sql}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    for key in [42i64, 7, 1_000_001] {
        let home =
            &router.shard_names()[router.shard_for_key(&shardgate_router::KeyValue::Int(key))];
        let out = route(&format!("select * from users where user_id = {key}"));
        assert!(out.contains(&format!("shard   {home}\n")), "{key}: {out}");
        assert!(out.contains(&format!("keys    {key}\n")), "{key}: {out}");
        let out = route(&format!(
            "insert into orders (order_id, user_id) values (1, {key})"
        ));
        assert!(out.contains(&format!("shard   {home}\n")), "{key}: {out}");
    }
    let out = route("select count(*) from users");
    assert!(out.contains("shard   s0,s1,s2\n"), "{out}");
    let out = route("select * from settings");
    assert!(out.contains("shard   s0\n"), "{out}");
    let out = route("update users set name = 'x'");
    assert!(out.contains("0A000"), "{out}");
}
