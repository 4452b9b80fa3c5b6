//! The configuration schema. Field docs are the reference; `shardgate.example.toml` at the
//! repository root shows every key with its default.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;
use crate::{Sharding, Stats, Timeouts};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub pool: Pool,
    #[serde(default)]
    pub sharding: Sharding,
    /// Client accounts. At least one is required.
    #[serde(default)]
    pub users: Vec<User>,
    /// The shards. At least one is required.
    #[serde(default)]
    pub shards: Vec<Shard>,
    #[serde(default)]
    pub replicas: Replicas,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub tls: Tls,
    #[serde(default)]
    pub topology: Topology,
    #[serde(default)]
    pub rebalance: Rebalance,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub stats: Stats,
}

/// Where clients connect, and the limits that protect the proxy from them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// TCP address for clients.
    pub addr: String,
    /// Directory for a unix socket named `.s.PGSQL.<port>` (as libpq expects); none if unset.
    pub unix_socket_dir: Option<PathBuf>,
    /// Client connections beyond this are refused with 53300.
    pub max_client_connections: usize,
    /// Most client connections one user may hold (0 = no limit; `[[users]]
    /// max_client_connections` overrides it per user).
    pub max_clients_per_user: usize,
    /// Most client connections to one database (0 = no limit).
    pub max_clients_per_database: usize,
    /// Largest client message accepted; a larger one is refused with 08P01 before reading it.
    pub max_message_size: usize,
    /// A client that has not finished startup and authentication by then is disconnected.
    #[serde(with = "duration")]
    pub startup_timeout: Duration,
    /// Close a client that sends nothing for this long while not in a transaction (0 = never).
    #[serde(with = "duration")]
    pub client_idle_timeout: Duration,
    /// How long SIGTERM waits for clients to finish before closing them.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// Threads serving clients (0 = one per two CPU cores, at least one: see
    /// [`Listen::threads`]). One means a single-threaded runtime. Read at start.
    pub worker_threads: usize,
}

impl Listen {
    /// The worker threads to start on a host with `cores` cores: `worker_threads`, or by
    /// default half the cores (at least one). A proxy shares its host with PostgreSQL or the
    /// application (a sidecar), and a worker per core made sessions wake on other threads, a
    /// context switch and cold caches each time: on the 2-core benchmark machine one worker
    /// spent 10-16% less CPU per transaction than two and served 3-15% more transactions.
    /// With one, `shardgate serve` runs tokio's current-thread runtime: the multi-thread one
    /// with a single worker still paid for work stealing and cross-thread wakes (10-13% more
    /// CPU per transaction on pgbench `-S -c 32`).
    pub fn threads(&self, cores: usize) -> usize {
        if self.worker_threads > 0 {
            self.worker_threads
        } else {
            (cores / 2).max(1)
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            addr: "127.0.0.1:6432".into(),
            unix_socket_dir: None,
            max_client_connections: 10_000,
            max_clients_per_user: 0,
            max_clients_per_database: 0,
            max_message_size: 64 * 1024 * 1024,
            startup_timeout: Duration::from_secs(10),
            client_idle_timeout: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(30),
            worker_threads: 0,
        }
    }
}

/// What the proxy may hold in memory for one client's statement.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Bytes a cross-shard read may buffer in the proxy (the shards' partial aggregate rows,
    /// which must all be in before the final groups are known). Rows that merely pass through
    /// (concatenation, ORDER BY merge, LIMIT) stream and do not count. Past it the client
    /// gets 54000 naming this key.
    pub max_buffered_result: usize,
    /// Rows a cross-shard read gathered into PostgreSQL may copy from the shards into the
    /// coordinating connection's temporary tables (all sharded tables together). Past it the
    /// client gets 54000 naming this key.
    pub max_gather_rows: u64,
    /// Bytes (as sent by the shards in COPY binary format) such a read may copy. Past it the
    /// client gets 54000 naming this key.
    pub max_gather_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_buffered_result: 64 * 1024 * 1024,
            max_gather_rows: 1_000_000,
            max_gather_bytes: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// HTTP address of the admin API, metrics and probes.
    pub listen: String,
    /// Bearer token required by `/api/v1/*` (probes and `/metrics` stay open).
    pub token: Option<String>,
    /// Name of an environment variable holding the token (used when `token` is unset).
    pub token_env: Option<String>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: "127.0.0.1:9930".into(),
            token: None,
            token_env: None,
        }
    }
}

impl Admin {
    /// The token from `token`, else from the variable `token_env` names; `Ok(None)` when
    /// neither is configured (the API is then open, which validation allows only on a loopback
    /// `listen`). A `token_env` whose variable is unset or empty is an error: starting with an
    /// open API because a secret failed to arrive would fail open.
    pub fn resolved_token(&self) -> Result<Option<String>, AdminTokenError> {
        if let Some(t) = self.token.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Some(t.clone()));
        }
        match &self.token_env {
            None => Ok(None),
            Some(name) => match std::env::var(name) {
                Ok(t) if !t.is_empty() => Ok(Some(t)),
                _ => Err(AdminTokenError::EnvUnset(name.clone())),
            },
        }
    }

    /// Whether `listen` is a loopback address (only local processes reach it).
    pub fn listens_on_loopback(&self) -> bool {
        self.listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback())
    }
}

/// Why the admin token could not be resolved.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdminTokenError {
    #[error(
        "admin.token_env names the environment variable {0}, which is unset or empty; \
         refusing to start the admin API without its token (set {0}, or remove admin.token_env \
         on a loopback admin.listen to run the API without a token)"
    )]
    EnvUnset(String),
}

/// Read/write split: which replicas serve reads, and how they are watched.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Replicas {
    /// How often each replica's health and lag are checked.
    #[serde(with = "duration")]
    pub check_interval: Duration,
    /// A replica further behind its primary than this leaves the read rotation.
    #[serde(with = "duration")]
    pub max_lag: Duration,
    /// Same, in bytes of WAL not yet replayed (0 = no byte limit).
    pub max_lag_bytes: u64,
    /// The primary also serves reads, alongside its replicas.
    pub include_primary_in_reads: bool,
    /// Reads go to the primary when no replica is eligible; when false they fail with 08006.
    pub fallback_to_primary: bool,
    /// After a client's write commits, its reads only use replicas that replayed it (the
    /// default for users that do not set `read_your_writes`).
    pub read_your_writes: bool,
    /// First ban of a host that refuses connections; doubled on each failure up to `ban_max`.
    #[serde(with = "duration")]
    pub ban_initial: Duration,
    #[serde(with = "duration")]
    pub ban_max: Duration,
    /// How soon writes follow a promoted host when a shard's primary is gone (unreachable or
    /// in recovery): hosts are checked at least every half of it, and a check that takes
    /// longer than half of it counts as failed.
    #[serde(with = "duration")]
    pub failover_detect: Duration,
    /// Functions with side effects besides the built-in ones (nextval, setval, set_config,
    /// pg_advisory_lock*, …): a read calling one goes to the primary.
    pub side_effect_functions: Vec<String>,
    /// The `[[users]]` entry whose server login runs the health and lag checks (default: the
    /// first one).
    pub monitor_user: Option<String>,
    /// Database the checks connect to.
    pub monitor_database: String,
}

impl Default for Replicas {
    fn default() -> Self {
        Replicas {
            check_interval: Duration::from_secs(1),
            max_lag: Duration::from_secs(5),
            max_lag_bytes: 0,
            include_primary_in_reads: false,
            fallback_to_primary: true,
            read_your_writes: true,
            ban_initial: Duration::from_secs(1),
            ban_max: Duration::from_secs(30),
            failover_detect: Duration::from_secs(5),
            side_effect_functions: Vec::new(),
            monitor_user: None,
            monitor_database: "postgres".into(),
        }
    }
}

/// TLS for client connections (`[tls]`). TLS to the servers is set per host (`sslmode`).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// Whether clients may or must use TLS.
    pub mode: TlsMode,
    /// The server certificate chain (PEM), leaf first. Required unless `mode = "disable"`.
    pub cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

/// `tls.mode`: what the proxy does with a client's SSLRequest.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// SSLRequest is answered `N`: clients stay in plaintext (default).
    #[default]
    Disable,
    /// SSLRequest is answered `S` and the handshake runs; plaintext clients are served too.
    Allow,
    /// Like `allow`, but a plaintext TCP client is refused with 28000 (unix-socket clients,
    /// which cannot use TLS, are not).
    Require,
}

impl std::fmt::Display for TlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsMode::Disable => "disable",
            TlsMode::Allow => "allow",
            TlsMode::Require => "require",
        })
    }
}

/// TLS to one server, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash, Default)]
pub enum SslMode {
    /// Plaintext; no SSLRequest is sent.
    #[serde(rename = "disable")]
    Disable,
    /// TLS when the server offers it, else plaintext; the certificate is not checked (unless
    /// `sslrootcert` is set, as libpq does). The default, as in libpq.
    #[default]
    #[serde(rename = "prefer")]
    Prefer,
    /// TLS or no connection; the certificate is not checked (unless `sslrootcert` is set).
    #[serde(rename = "require")]
    Require,
    /// TLS, and the certificate chain must lead to a CA in `sslrootcert` (any host name).
    #[serde(rename = "verify-ca")]
    VerifyCa,
    /// `verify-ca`, and the certificate must name the host (DNS name or IP address).
    #[serde(rename = "verify-full")]
    VerifyFull,
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// What is logged besides errors.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// Statements slower than this many milliseconds are logged (0 = off).
    pub slow_query_ms: u64,
    /// Include bound parameter values in the slow-query log (off: they may hold personal data).
    pub log_parameters: bool,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            slow_query_ms: 1000,
            log_parameters: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A server connection is the client's for one transaction (default).
    Transaction,
    /// A server connection is the client's until it disconnects.
    Session,
}

impl std::fmt::Display for PoolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        })
    }
}

/// What transaction mode does with a statement that creates session state a hand-over cannot
/// carry (temp objects, LISTEN, session advisory locks, WITH HOLD cursors, SQL PREPARE).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pinning {
    /// The client keeps its server connection until it disconnects (default).
    #[default]
    On,
    /// The statement is refused with 0A000 naming it.
    Refuse,
}

/// Server connection pools: one per (database, user, shard, role).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Pool {
    pub mode: PoolMode,
    /// Most server connections one pool opens (`max_size` is accepted as another name).
    #[serde(alias = "max_size")]
    pub size: u32,
    /// Server connections a pool keeps open even when idle, and the size it starts at.
    pub min_size: u32,
    /// A pool grows when this share of its connections is in use (or clients wait).
    pub scale_up_at: f64,
    /// A pool shrinks toward `min_size` when its use stays under this share for
    /// `idle_timeout`.
    pub scale_down_at: f64,
    /// Connections left free on every server (`max_connections` minus this is what all
    /// pools of this proxy on that host may open together).
    pub host_reserve: u32,
    /// Share of a host's budget this proxy may use (e.g. 0.25 for one of four sidecars).
    pub host_share: f64,
    /// Time allowed to open and authenticate one server connection.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Longest a client waits for a free server connection before getting 53300.
    #[serde(with = "duration")]
    pub checkout_timeout: Duration,
    /// A pool whose use stays under `scale_down_at` this long shrinks a step toward
    /// `min_size`, closing idle connections above its new size.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// A server connection is closed after this age (when next idle).
    #[serde(with = "duration")]
    pub max_lifetime: Duration,
    /// A connection idle longer than this is tested (one non-blocking read) before it is
    /// handed out; a younger one only if its socket was seen readable (PgBouncer's
    /// `server_check_delay`). Zero tests every checkout.
    #[serde(with = "duration")]
    pub server_check_delay: Duration,
    /// Prepared statements each server connection keeps; the least recently used beyond it
    /// are closed.
    pub prepared_statements_per_connection: usize,
    /// Run on a session-mode connection before it serves another client.
    pub reset_query: String,
    /// Transaction mode: pin a client that creates session state to its server connection
    /// ("on"), or refuse such statements ("refuse").
    pub pinning: Pinning,
    /// Named prepared statements one client may hold; past it the least recently used is
    /// forgotten (using it again gets 26000, as an unknown statement on PostgreSQL).
    pub prepared_statements_per_client: usize,
    /// Bytes of pipelined messages held back per client while its previous request still
    /// runs (the start of a batch that may belong to another shard); past it the client gets
    /// 54000 and is disconnected.
    pub max_held_bytes: usize,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            mode: PoolMode::Transaction,
            size: 20,
            min_size: 0,
            scale_up_at: 0.8,
            scale_down_at: 0.2,
            host_reserve: 5,
            host_share: 1.0,
            connect_timeout: Duration::from_secs(5),
            checkout_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            server_check_delay: Duration::from_secs(1),
            prepared_statements_per_connection: 500,
            reset_query: "DISCARD ALL".into(),
            pinning: Pinning::On,
            prepared_statements_per_client: 10_000,
            max_held_bytes: 16 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum AuthMethod {
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "trust")]
    Trust,
}

impl std::fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
            AuthMethod::Trust => "trust",
        })
    }
}

/// A client account, and the server credentials its pools use.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// The client's password (required unless `auth = "trust"`); also used to log in to the
    /// servers unless `server_password` is set.
    #[serde(default)]
    pub password: Option<String>,
    /// How clients authenticate to shardgate.
    #[serde(default)]
    pub auth: AuthMethod,
    /// Server role to log in as (defaults to `name`).
    #[serde(default)]
    pub server_user: Option<String>,
    /// Server password (defaults to `password`).
    #[serde(default)]
    pub server_password: Option<String>,
    /// Overrides `pool.mode` for this user.
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
    /// Overrides `pool.size` for this user.
    #[serde(default)]
    pub pool_size: Option<u32>,
    /// Overrides `replicas.read_your_writes` for this user.
    #[serde(default)]
    pub read_your_writes: Option<bool>,
    /// Overrides `listen.max_clients_per_user` for this user.
    #[serde(default)]
    pub max_client_connections: Option<usize>,
}

impl User {
    pub fn server_user(&self) -> &str {
        self.server_user.as_deref().unwrap_or(&self.name)
    }

    pub fn server_password(&self) -> Option<&str> {
        self.server_password.as_deref().or(self.password.as_deref())
    }
}

impl std::fmt::Debug for User {
    // Never print passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("auth", &self.auth)
            .field("server_user", &self.server_user())
            .field("pool_mode", &self.pool_mode)
            .field("pool_size", &self.pool_size)
            .field("read_your_writes", &self.read_your_writes)
            .finish_non_exhaustive()
    }
}

/// One PostgreSQL server address, and how to secure the connection to it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Hash, Default)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// Host name or IP address, or a directory holding a unix socket when it starts with `/`.
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// TLS to this server (libpq's `sslmode`; default `prefer`). Unix sockets never use TLS.
    #[serde(default)]
    pub sslmode: SslMode,
    /// CA certificates (PEM) the server's certificate must chain to; required by `verify-ca`
    /// and `verify-full`, and turns `prefer`/`require` into `verify-ca` when set (as libpq).
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
}

fn default_pg_port() -> u16 {
    5432
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A shard: one primary and zero or more streaming replicas.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    pub name: String,
    pub primary: Host,
    #[serde(default)]
    pub replicas: Vec<Host>,
    /// Role the rebalancer logs in as on this shard (publications, subscriptions, fences);
    /// `rebalance.admin_user` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_user: Option<String>,
    /// Its password; `rebalance.admin_password` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_password: Option<String>,
}

impl Shard {
    /// The rebalancer's login on this shard: its own, else the `[rebalance]` default.
    pub fn admin_login<'a>(&'a self, defaults: &'a Rebalance) -> (&'a str, Option<&'a str>) {
        match &self.admin_user {
            Some(user) => (user, self.admin_password.as_deref()),
            None => (
                &defaults.admin_user,
                self.admin_password
                    .as_deref()
                    .or(defaults.admin_password.as_deref()),
            ),
        }
    }
}

impl std::fmt::Debug for Shard {
    // Never print passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("name", &self.name)
            .field("primary", &self.primary)
            .field("replicas", &self.replicas)
            .field("admin_user", &self.admin_user)
            .finish_non_exhaustive()
    }
}

/// Where the shard map (topology) lives, and how proxies follow it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Topology {
    /// `"file"` (one proxy: the config's `[[shards]]` plus `state_file`), or a
    /// `postgres://user:password@host:port/db` URL of a metadata database shared by a fleet.
    pub store: String,
    /// The file store's state file (JSON, written atomically). Unset: `<config file>.topology.json`
    /// for `shardgate serve`; kept in memory only for an embedded proxy.
    pub state_file: Option<PathBuf>,
    /// How often a proxy re-reads the postgres store besides LISTEN/NOTIFY.
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    /// How long a proxy may go without reaching the postgres store before it stops routing
    /// writes (57P03) rather than route by a map that may be stale; the rebalancer deletes a
    /// source's moved rows only after every proxy acknowledged the new map or was silent this
    /// long. Ignored by the file store (one proxy, in-process).
    #[serde(with = "duration")]
    pub lease: Duration,
    /// This proxy's name in `rebalance status` (default: `hostname:admin-port`).
    pub proxy_id: Option<String>,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            store: "file".into(),
            state_file: None,
            poll_interval: Duration::from_millis(500),
            lease: Duration::from_secs(15),
            proxy_id: None,
        }
    }
}

/// How the rebalancer moves data when a shard is added or removed.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Rebalance {
    /// The databases whose sharded tables move (each shard has them all).
    pub databases: Vec<String>,
    /// Default admin role on every shard (see the README for the privileges it needs).
    pub admin_user: String,
    pub admin_password: Option<String>,
    /// Rows deleted from a source per statement after a move.
    pub delete_batch_size: u32,
    /// Catch-up is done when the target trails the source by at most this many WAL bytes.
    pub catchup_max_lag_bytes: u64,
    /// Longest a cutover may hold its fence waiting for the final changes; past it the fence
    /// is lifted and the cutover is tried again.
    #[serde(with = "duration")]
    pub cutover_timeout: Duration,
    /// Cutover attempts before the job fails (and cleans up).
    pub cutover_attempts: u32,
    /// How long a proxy holds a statement that hit a fence, waiting for the new topology,
    /// before answering 40001.
    #[serde(with = "duration")]
    pub fence_wait: Duration,
}

impl Default for Rebalance {
    fn default() -> Self {
        Rebalance {
            databases: Vec::new(),
            admin_user: "postgres".into(),
            admin_password: None,
            delete_batch_size: 5_000,
            catchup_max_lag_bytes: 64 * 1024,
            cutover_timeout: Duration::from_secs(5),
            cutover_attempts: 5,
            fence_wait: Duration::from_secs(3),
        }
    }
}

impl std::fmt::Debug for Rebalance {
    // Never print passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rebalance")
            .field("databases", &self.databases)
            .field("admin_user", &self.admin_user)
            .field("delete_batch_size", &self.delete_batch_size)
            .field("catchup_max_lag_bytes", &self.catchup_max_lag_bytes)
            .field("cutover_timeout", &self.cutover_timeout)
            .field("cutover_attempts", &self.cutover_attempts)
            .field("fence_wait", &self.fence_wait)
            .finish_non_exhaustive()
    }
}
