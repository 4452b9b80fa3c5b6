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
    let shard_url = lines
        .iter()
        .find_map(|l| l.strip_prefix("shard s0 primary: "))
        .unwrap_or_else(|| panic!("no shard line in:\n{text}"))
        .to_owned();

    for url in [&proxy_url, &shard_url] {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let row = client.query_one("select 1 + 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 2);
    }
    let data_dir = lines
        .iter()
        .find_map(|l| l.strip_prefix("data directory: "))
        .unwrap()
        .to_owned();
    assert!(std::path::Path::new(&data_dir).exists());

    drop(demo);
    assert!(
        !std::path::Path::new(&data_dir).exists(),
        "demo left {data_dir} behind"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "proxy still listening"
    );
}
