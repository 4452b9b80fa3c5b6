//! A throwaway PostgreSQL 15 server for the pool's own tests: initdb into a temp dir, listen on
//! 127.0.0.1 and a unix socket in that dir, stop it and remove the dir on drop.
//!
//! Roles: `postgres` (superuser, trust over the unix socket), `scram_user` (SCRAM-SHA-256
//! verifier), `md5_user` (md5 hash), `clear_user` (asked for a cleartext password). Over TCP
//! pg_hba says `md5`, which uses SCRAM for roles whose stored password is a SCRAM verifier.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shardgate_config::Host;
use shardgate_pool::{ConnectTarget, ServerConn};
use shardgate_wire::backend;
use shardgate_wire::frontend;

const BIN: &str = "/usr/lib/postgresql/15/bin";

pub const SCRAM_USER: &str = "scram_user";
pub const SCRAM_PW: &str = "scram_pw";
pub const MD5_USER: &str = "md5_user";
pub const MD5_PW: &str = "md5_pw";
pub const CLEAR_USER: &str = "clear_user";
pub const CLEAR_PW: &str = "clear_pw";

pub struct PgServer {
    /// Stops the server and removes the dir if this test process dies without running Drop.
    watchdog: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

/// `sh -c` script: while the test process lives and the dir exists, sleep; if the process died
/// first, stop the server and remove the dir. Arguments: test pid, dir, server bin dir.
const WATCHDOG: &str = r#"while kill -0 "$1" 2>/dev/null && [ -d "$2" ]; do sleep 1; done
[ -d "$2" ] || exit 0
runuser -u postgres -- "$3/pg_ctl" -D "$2/data" -m immediate -w stop >/dev/null 2>&1
rm -rf "$2""#;

fn spawn_watchdog(dir: &Path) -> Option<Child> {
    Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("sg-pool-watchdog")
        .arg(std::process::id().to_string())
        .arg(dir)
        .arg(BIN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

fn as_postgres(program: &str) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--", &format!("{BIN}/{program}")]);
    cmd
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl PgServer {
    pub fn start() -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("sg-pool-pg")
            .tempdir_in("/tmp")
            .expect("temp dir");
        run(Command::new("chown").arg("postgres:").arg(dir.path()));
        let watchdog = spawn_watchdog(dir.path());
        let data = dir.path().join("data");
        run(as_postgres("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-N", "--no-instructions"])
            .args(["-E", "UTF8", "--locale=C"]));
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             host all clear_user 127.0.0.1/32 password\n\
             host all all 127.0.0.1/32 md5\n",
        )
        .expect("write pg_hba.conf");
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             max_connections = 40\nshared_buffers = 16MB\n",
            dir.path().display()
        );
        let mut existing = std::fs::read_to_string(data.join("postgresql.conf")).expect("conf");
        existing.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), existing).expect("write conf");

        // A port picked as free may be taken by a parallel test before the server binds it.
        let mut attempt = 0;
        let port = loop {
            attempt += 1;
            let port = free_port();
            let status = as_postgres("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("server.log"))
                .args(["-w", "-t", "30", "-o", &format!("-p {port}"), "start"])
                .output()
                .expect("pg_ctl start");
            if status.status.success() {
                break port;
            }
            assert!(
                attempt < 5,
                "pg_ctl start failed: {}",
                std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
            );
        };
        let server = PgServer {
            watchdog,
            port,
            dir,
        };
        server.psql(&format!(
            "CREATE ROLE {SCRAM_USER} LOGIN PASSWORD '{SCRAM_PW}';
             CREATE ROLE {CLEAR_USER} LOGIN PASSWORD '{CLEAR_PW}';
             SET password_encryption = 'md5';
             CREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PW}';"
        ));
        server
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs SQL as the superuser over the unix socket; returns psql's unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let out = run(as_postgres("psql")
            .arg("-h")
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn tcp_host(&self) -> Host {
        Host {
            host: "127.0.0.1".into(),
            port: self.port,
            ..Default::default()
        }
    }

    pub fn socket_host(&self) -> Host {
        Host {
            host: self.dir.path().display().to_string(),
            port: self.port,
            ..Default::default()
        }
    }

    /// A TCP target for `user` with `password` on database `postgres`.
    pub fn target(&self, user: &str, password: Option<&str>) -> ConnectTarget {
        ConnectTarget {
            host: self.tcp_host(),
            user: user.into(),
            password: password.map(Into::into),
            database: "postgres".into(),
            application_name: "shardgate-test".into(),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// A superuser connection over the unix socket (trust).
    pub async fn admin(&self) -> ServerConn {
        let mut target = self.target("postgres", None);
        target.host = self.socket_host();
        ServerConn::connect(&target)
            .await
            .expect("admin connection")
    }

    /// Terminates a backend and waits until it is gone.
    pub async fn terminate(&self, pid: i32) {
        let mut admin = self.admin().await;
        let done = query_one(
            &mut admin,
            &format!("select pg_terminate_backend({pid}, 5000)"),
        )
        .await;
        assert_eq!(done.as_deref(), Some("t"));
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let stopped = as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !stopped {
            // Last resort: kill the postmaster named in its pid file (it takes its children).
            if let Ok(pidfile) = std::fs::read_to_string(self.data().join("postmaster.pid")) {
                if let Some(pid) = pidfile.lines().next() {
                    let _ = Command::new("kill").args(["-9", pid.trim()]).status();
                }
            }
        }
    }
}

/// Runs a simple query and returns the first column of the first row as text (None if no row
/// or NULL). Panics on an ErrorResponse.
pub async fn query_one(conn: &mut ServerConn, sql: &str) -> Option<String> {
    let mut out = bytes::BytesMut::new();
    frontend::write_query(&mut out, sql);
    conn.write_all(&out).await.expect("write query");
    let mut first = None;
    let mut seen_row = false;
    loop {
        let frame = conn.read_frame().await.expect("read");
        match frame.tag() {
            backend::DATA_ROW if !seen_row => {
                seen_row = true;
                let body = frame.body();
                let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                if len >= 0 {
                    let value = &body[6..6 + len as usize];
                    first = Some(String::from_utf8_lossy(value).into_owned());
                }
            }
            backend::ERROR_RESPONSE => {
                panic!("{sql}: {:?}", backend::error_fields(&frame));
            }
            backend::READY_FOR_QUERY => return first,
            _ => {}
        }
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
