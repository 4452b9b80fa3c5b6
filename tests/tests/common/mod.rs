//! Shared set-up for the end-to-end tests: a real PostgreSQL and a shardgate in front of it.
#![allow(dead_code)]

use std::path::Path;

use shardgate_config::Config;
use shardgate_proxy::ProxyHandle;
use shardgate_tests::{Auth, ClusterOptions, PgCluster};

pub const USER: &str = "app";
pub const PASSWORD: &str = "app-secret";
pub const DB: &str = "app";

/// What a test wants from its proxy.
#[derive(Clone)]
pub struct Setup {
    pub mode: &'static str,
    pub pool_size: u32,
    /// Extra TOML lines appended to the `[listen]` table.
    pub listen_extra: String,
    /// Extra TOML lines appended to the `[pool]` table.
    pub pool_extra: String,
    /// Extra TOML appended at the end (e.g. more `[[users]]`).
    pub extra: String,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            mode: "transaction",
            pool_size: 5,
            listen_extra: String::new(),
            pool_extra: String::new(),
            extra: String::new(),
        }
    }
}

impl Setup {
    pub fn session() -> Self {
        Setup {
            mode: "session",
            ..Setup::default()
        }
    }

    pub fn pool_size(mut self, n: u32) -> Self {
        self.pool_size = n;
        self
    }
}

/// A PostgreSQL cluster with user `app` (SCRAM) owning database `app`, and a proxy in front.
/// Dropping it stops the proxy's listeners and the server.
pub struct Env {
    pub proxy: ProxyHandle,
    pub cluster: PgCluster,
    pub config: Config,
}

impl Env {
    pub async fn start(setup: Setup) -> Env {
        Self::start_edited(setup, |text| text).await
    }

    /// A cluster with `app` (SCRAM) owning database `app`, and `md5_user` (md5).
    async fn start_cluster() -> PgCluster {
        tokio::task::spawn_blocking(|| {
            let c = PgCluster::start(
                ClusterOptions::default()
                    .user(USER, PASSWORD, Auth::Scram)
                    .user("md5_user", "md5-secret", Auth::Md5),
            )
            .expect("start PostgreSQL");
            c.create_database(DB, USER).expect("create database");
            c
        })
        .await
        .expect("join")
    }

    /// Starts a proxy in front of an existing cluster.
    pub async fn start_with(cluster: PgCluster, setup: Setup) -> Env {
        let text = config_toml(&cluster, &setup);
        Self::proxy_in_front(cluster, text).await
    }

    /// Starts a proxy with config `text` in front of `cluster`.
    async fn proxy_in_front(cluster: PgCluster, text: String) -> Env {
        init_logs();
        let config = Config::from_toml(&text, Path::new("test.toml")).expect("valid test config");
        let proxy = shardgate_proxy::start(config.clone())
            .await
            .expect("start proxy");
        Env {
            proxy,
            cluster,
            config,
        }
    }

    pub fn port(&self) -> u16 {
        self.proxy.addr().port()
    }

    /// URL of the proxy for `app`.
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DB}",
            self.port()
        )
    }

    /// tokio-postgres config string of the proxy for `app`.
    pub fn conn_str(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DB}",
            self.port()
        )
    }

    /// URL of the server itself (bypassing the proxy).
    pub fn direct_url(&self) -> String {
        self.cluster.url(USER, PASSWORD, DB)
    }

    /// Connects through the proxy with tokio-postgres; the connection task is spawned.
    pub async fn connect(&self) -> tokio_postgres::Client {
        connect(&self.conn_str()).await
    }

    /// Connects straight to the server.
    pub async fn connect_direct(&self) -> tokio_postgres::Client {
        connect(&format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DB}",
            self.cluster.port()
        ))
        .await
    }

    pub async fn stop(self) {
        self.proxy.shutdown().await;
        tokio::task::spawn_blocking(move || drop(self.cluster))
            .await
            .ok();
    }
}

/// Shows the proxy's logs when `RUST_LOG` is set (e.g. `RUST_LOG=shardgate_proxy=debug`).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

pub async fn connect(conn_str: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn config_toml(cluster: &PgCluster, s: &Setup) -> String {
    format!(
        r#"
[listen]
addr = "127.0.0.1:0"
shutdown_timeout = "2s"
{listen_extra}

[admin]
listen = "127.0.0.1:0"

[pool]
mode = "{mode}"
size = {size}
checkout_timeout = "10s"
{pool_extra}

[[users]]
name = "{USER}"
password = "{PASSWORD}"

[[users]]
name = "md5_user"
password = "md5-secret"
auth = "md5"

[[shards]]
name = "s0"
primary = {{ host = "127.0.0.1", port = {port} }}

{extra}
"#,
        listen_extra = s.listen_extra,
        mode = s.mode,
        size = s.pool_size,
        pool_extra = s.pool_extra,
        port = cluster.port(),
        extra = s.extra,
    )
}

/// The SQLSTATE of a tokio-postgres error, if the server (or proxy) sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_owned())
}

/// A config's `[[users]]` (the test user) and shard s0 on `primary` with `replicas` (ports on
/// 127.0.0.1), to end a config text with.
pub fn users_and_shard(primary: u16, replicas: &[u16]) -> String {
    let replicas: Vec<String> = replicas
        .iter()
        .map(|port| format!("{{ host = \"127.0.0.1\", port = {port} }}"))
        .collect();
    format!(
        r#"
[[users]]
name = "{USER}"
password = "{PASSWORD}"

[[shards]]
name = "s0"
primary = {{ host = "127.0.0.1", port = {primary} }}
replicas = [{}]
"#,
        replicas.join(", ")
    )
}

/// `result` is an error with SQLSTATE `code`; returns it for further checks.
#[track_caller]
pub fn expect_sqlstate<T: std::fmt::Debug>(
    result: Result<T, tokio_postgres::Error>,
    code: &str,
) -> tokio_postgres::Error {
    let e = match result {
        Ok(v) => panic!("expected an error with SQLSTATE {code}, got {v:?}"),
        Err(e) => e,
    };
    assert_eq!(sqlstate(&e).as_deref(), Some(code), "{e:?}");
    e
}

// ---------------------------------------------------------------------------------------------
// Helpers for protocol.rs, isolation.rs and bad_input.rs.
// ---------------------------------------------------------------------------------------------

impl Env {
    /// Like [`Env::start`], but the rendered config text passes through `edit` first (to change
    /// keys the [`Setup`] fields already set, e.g. `checkout_timeout`).
    pub async fn start_edited(setup: Setup, edit: impl FnOnce(String) -> String) -> Env {
        let cluster = Self::start_cluster().await;
        let text = edit(config_toml(&cluster, &setup));
        Self::proxy_in_front(cluster, text).await
    }

    /// tokio-postgres connection string through the proxy with extra `key=value` words.
    pub fn conn_str_with(&self, extra: &str) -> String {
        format!("{} {extra}", self.conn_str())
    }

    /// Connects through the proxy, returning the error instead of panicking.
    pub async fn try_connect(
        &self,
        conn_str: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Connects straight to the server as the superuser `postgres` (to database `app`), which
    /// sees every session in pg_stat_activity (`app` does not see `md5_user`'s state).
    pub async fn connect_superuser(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.cluster.port())
            .user("postgres")
            .password(self.cluster.superuser_password())
            .dbname(DB)
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect as superuser");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// The proxy's server connections to database `app` (application_name `shardgate`, for
    /// clients that set none), as the superuser connection `su` sees them.
    pub async fn server_backends(su: &tokio_postgres::Client) -> i64 {
        su.query_one(
            "select count(*) from pg_stat_activity where datname = 'app' \
             and application_name = 'shardgate' and pid <> pg_backend_pid()",
            &[],
        )
        .await
        .expect("count backends")
        .get(0)
    }
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes; returns the last result.
pub async fn wait_for<F, Fut>(timeout: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Runs a quick query through the proxy with a new client: the proxy still serves normally.
pub async fn assert_proxy_serves(env: &Env) {
    let client = tokio::time::timeout(std::time::Duration::from_secs(10), env.connect())
        .await
        .expect("connect through the proxy in time");
    let row = client
        .query_one("select $1::int + 1", &[&41i32])
        .await
        .expect("query through the proxy");
    assert_eq!(row.get::<_, i32>(0), 42);
}

/// One backend message as read by [`RawClient`].
#[derive(Clone, Debug)]
pub struct RawMsg {
    pub tag: u8,
    pub body: bytes::Bytes,
}

impl RawMsg {
    /// A field of an ErrorResponse or NoticeResponse (`b'C'` = SQLSTATE, `b'M'` = message).
    pub fn field(&self, code: u8) -> Option<String> {
        if self.tag != b'E' && self.tag != b'N' {
            return None;
        }
        let mut rest = &self.body[..];
        while let Some((&c, tail)) = rest.split_first() {
            if c == 0 {
                break;
            }
            let end = tail.iter().position(|b| *b == 0)?;
            if c == code {
                return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
            }
            rest = &tail[end + 1..];
        }
        None
    }

    /// The SQLSTATE of an ErrorResponse.
    pub fn sqlstate(&self) -> Option<String> {
        if self.tag == b'E' {
            self.field(b'C')
        } else {
            None
        }
    }

    /// The first column of a DataRow, as text.
    pub fn first_column(&self) -> Option<String> {
        if self.tag != b'D' || self.body.len() < 6 {
            return None;
        }
        let len = i32::from_be_bytes(self.body[2..6].try_into().ok()?);
        if len < 0 {
            return None;
        }
        Some(String::from_utf8_lossy(&self.body[6..6 + len as usize]).into_owned())
    }
}

/// Frontend message encoders for [`RawClient`] (protocol 3.0, text format).
pub mod demo_env;
pub mod failover;
pub mod prepared;
pub mod scripts;
mod sharded;
#[allow(unused_imports)] // not every test file uses several shards
pub use sharded::*;

pub mod raw {
    use bytes::{BufMut, BytesMut};

    fn message(tag: u8, body: impl FnOnce(&mut BytesMut)) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(tag);
        b.put_i32(0);
        body(&mut b);
        let len = (b.len() - 1) as i32;
        b[1..5].copy_from_slice(&len.to_be_bytes());
        b
    }

    fn cstr(b: &mut BytesMut, s: &str) {
        b.put_slice(s.as_bytes());
        b.put_u8(0);
    }

    pub fn query(sql: &str) -> BytesMut {
        message(b'Q', |b| cstr(b, sql))
    }

    /// A Query whose text is raw bytes (e.g. in a client_encoding other than UTF-8).
    pub fn query_bytes(sql: &[u8]) -> BytesMut {
        message(b'Q', |b| {
            b.put_slice(sql);
            b.put_u8(0);
        })
    }

    /// Parse with raw statement bytes (no parameter types).
    pub fn parse_bytes(name: &str, sql: &[u8]) -> BytesMut {
        message(b'P', |b| {
            cstr(b, name);
            b.put_slice(sql);
            b.put_u8(0);
            b.put_i16(0);
        })
    }

    /// Bind with raw text-format parameter bytes and text results.
    pub fn bind_bytes(portal: &str, statement: &str, params: &[&[u8]]) -> BytesMut {
        message(b'B', |b| {
            cstr(b, portal);
            cstr(b, statement);
            b.put_i16(0);
            b.put_i16(params.len() as i16);
            for p in params {
                b.put_i32(p.len() as i32);
                b.put_slice(p);
            }
            b.put_i16(0);
        })
    }

    pub fn parse(name: &str, sql: &str) -> BytesMut {
        message(b'P', |b| {
            cstr(b, name);
            cstr(b, sql);
            b.put_i16(0);
        })
    }

    /// Bind with text parameters (`None` = NULL) and text results.
    pub fn bind(portal: &str, statement: &str, params: &[Option<&str>]) -> BytesMut {
        message(b'B', |b| {
            cstr(b, portal);
            cstr(b, statement);
            b.put_i16(0);
            b.put_i16(params.len() as i16);
            for p in params {
                match p {
                    Some(v) => {
                        b.put_i32(v.len() as i32);
                        b.put_slice(v.as_bytes());
                    }
                    None => b.put_i32(-1),
                }
            }
            b.put_i16(0);
        })
    }

    pub fn execute(portal: &str, max_rows: i32) -> BytesMut {
        message(b'E', |b| {
            cstr(b, portal);
            b.put_i32(max_rows);
        })
    }

    pub fn describe(kind: u8, name: &str) -> BytesMut {
        message(b'D', |b| {
            b.put_u8(kind);
            cstr(b, name);
        })
    }

    pub fn close(kind: u8, name: &str) -> BytesMut {
        message(b'C', |b| {
            b.put_u8(kind);
            cstr(b, name);
        })
    }

    pub fn flush() -> BytesMut {
        message(b'H', |_| {})
    }

    pub fn sync() -> BytesMut {
        message(b'S', |_| {})
    }

    pub fn terminate() -> BytesMut {
        message(b'X', |_| {})
    }

    /// A startup packet for protocol `version` (196608 = 3.0).
    pub fn startup(version: i32, params: &[(&str, &str)]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32(0);
        b.put_i32(version);
        for (k, v) in params {
            cstr(&mut b, k);
            cstr(&mut b, v);
        }
        b.put_u8(0);
        let len = b.len() as i32;
        b[0..4].copy_from_slice(&len.to_be_bytes());
        b
    }

    pub fn ssl_request() -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32(8);
        b.put_i32(80_877_103);
        b
    }

    pub fn cancel_request(pid: i32, secret: i32) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32(16);
        b.put_i32(80_877_102);
        b.put_i32(pid);
        b.put_i32(secret);
        b
    }
}

/// A minimal protocol-level client: startup, SCRAM or md5 login, then raw messages. For what
/// tokio-postgres cannot do (name statements, send garbage, vanish mid-transaction).
pub struct RawClient {
    pub stream: tokio::net::TcpStream,
    buf: bytes::BytesMut,
    /// BackendKeyData (pid, secret) from login.
    pub backend_key: (i32, i32),
    /// ParameterStatus, NegotiateProtocolVersion and notices received during login.
    pub login_messages: Vec<RawMsg>,
}

/// How long a raw read waits before the test fails.
const RAW_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

impl RawClient {
    /// Opens a TCP connection without sending anything.
    pub async fn open(port: u16) -> RawClient {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("tcp connect");
        stream.set_nodelay(true).ok();
        RawClient {
            stream,
            buf: bytes::BytesMut::new(),
            backend_key: (0, 0),
            login_messages: Vec::new(),
        }
    }

    /// Connects and logs in as `app` to database `app`.
    pub async fn connect(port: u16) -> RawClient {
        Self::login(port, &[("user", USER), ("database", DB)], PASSWORD)
            .await
            .expect("raw login")
    }

    /// Connects and logs in; on a refused login returns the ErrorResponse.
    pub async fn login(
        port: u16,
        params: &[(&str, &str)],
        password: &str,
    ) -> Result<RawClient, RawMsg> {
        Self::open(port).await.login_on(params, password).await
    }

    /// Sends a startup packet on this open connection (nothing sent yet, or only an
    /// SSLRequest that was answered) and logs in.
    pub async fn login_on(
        self,
        params: &[(&str, &str)],
        password: &str,
    ) -> Result<RawClient, RawMsg> {
        let mut c = self;
        let user = params
            .iter()
            .find(|(k, _)| *k == "user")
            .map(|(_, v)| *v)
            .unwrap_or_default();
        c.send(&raw::startup(196_608, params)).await;
        c.authenticate(user, password).await
    }

    /// Answers the authentication requests after a startup packet (sent by the caller) and
    /// reads up to ReadyForQuery; messages other than authentication requests are kept in
    /// `login_messages`.
    pub async fn authenticate(self, user: &str, password: &str) -> Result<RawClient, RawMsg> {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
        use postgres_protocol::message::frontend;
        let mut c = self;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let msg = c.read_msg().await.expect("server closed during login");
            match msg.tag {
                b'E' => return Err(msg),
                b'R' => {
                    let code = i32::from_be_bytes(msg.body[..4].try_into().unwrap());
                    let data = &msg.body[4..];
                    let mut out = bytes::BytesMut::new();
                    match code {
                        0 => continue,
                        5 => {
                            let salt: [u8; 4] = data[..4].try_into().unwrap();
                            let hash = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                password.as_bytes(),
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut out).unwrap();
                        }
                        10 => {
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)
                                .unwrap();
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().expect("SASL continue without SASL");
                            s.update(data).expect("SCRAM server-first");
                            frontend::sasl_response(s.message(), &mut out).unwrap();
                        }
                        12 => {
                            scram
                                .as_mut()
                                .expect("SASL final without SASL")
                                .finish(data)
                                .expect("SCRAM server-final");
                            continue;
                        }
                        other => panic!("unsupported authentication request {other}"),
                    }
                    c.send(&out).await;
                }
                b'K' => {
                    let pid = i32::from_be_bytes(msg.body[..4].try_into().unwrap());
                    let secret = i32::from_be_bytes(msg.body[4..8].try_into().unwrap());
                    c.backend_key = (pid, secret);
                }
                b'Z' => return Ok(c),
                _ => c.login_messages.push(msg),
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.expect("write to proxy");
    }

    /// Writes, ignoring errors (the proxy may already have closed the connection).
    pub async fn send_lossy(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let _ = self.stream.write_all(bytes).await;
    }

    /// Reads one tagged message; `None` at end of stream (or a reset connection).
    pub async fn read_msg(&mut self) -> Option<RawMsg> {
        use tokio::io::AsyncReadExt;
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let frame = self.buf.split_to(len + 1).freeze();
                    return Some(RawMsg {
                        tag: frame[0],
                        body: frame.slice(5..),
                    });
                }
            }
            let n = tokio::time::timeout(RAW_READ_TIMEOUT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("timed out waiting for the proxy");
            match n {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads a single byte (the answer to an SSLRequest); `None` at end of stream.
    pub async fn read_byte(&mut self) -> Option<u8> {
        use tokio::io::AsyncReadExt;
        if !self.buf.is_empty() {
            let b = self.buf[0];
            let _ = self.buf.split_to(1);
            return Some(b);
        }
        let mut b = [0u8; 1];
        match tokio::time::timeout(RAW_READ_TIMEOUT, self.stream.read(&mut b))
            .await
            .expect("timed out")
        {
            Ok(1) => Some(b[0]),
            _ => None,
        }
    }

    /// Messages up to and including ReadyForQuery (panics if the connection closes first).
    pub async fn read_until_ready(&mut self) -> Vec<RawMsg> {
        let mut out = Vec::new();
        loop {
            let msg = self
                .read_msg()
                .await
                .unwrap_or_else(|| panic!("connection closed; got {out:?}"));
            let done = msg.tag == b'Z';
            out.push(msg);
            if done {
                return out;
            }
        }
    }

    /// Messages until the proxy closes the connection.
    pub async fn read_until_closed(&mut self) -> Vec<RawMsg> {
        let mut out = Vec::new();
        while let Some(msg) = self.read_msg().await {
            out.push(msg);
        }
        out
    }

    /// Sends `bytes` and returns every reply up to ReadyForQuery.
    pub async fn send_and_read(&mut self, bytes: &[u8]) -> Vec<RawMsg> {
        self.send(bytes).await;
        self.read_until_ready().await
    }

    /// A simple query; returns every reply up to ReadyForQuery.
    pub async fn simple(&mut self, sql: &str) -> Vec<RawMsg> {
        self.send(&raw::query(sql)).await;
        self.read_until_ready().await
    }
}

/// The SQLSTATE of the first ErrorResponse among `msgs`.
pub fn first_error(msgs: &[RawMsg]) -> Option<String> {
    msgs.iter().find_map(RawMsg::sqlstate)
}
