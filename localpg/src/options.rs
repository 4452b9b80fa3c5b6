//! What a test can ask of a cluster, and how that becomes `postgresql.conf` settings and
//! `pg_hba.conf` lines. Kept apart from process handling so the rendering is easy to read.

use std::fmt::Write as _;
use std::path::Path;

/// How a user authenticates over TCP (the `pg_hba.conf` method for that user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `scram-sha-256`; the password is stored as a SCRAM verifier.
    Scram,
    /// `md5`; the password is stored as an md5 hash (`password_encryption = 'md5'`), so the
    /// server really challenges with md5.
    Md5,
    /// `password`: the client sends the password in clear text.
    Password,
    /// `trust`: no password asked. Only ever for the user it is given to.
    Trust,
}

impl Auth {
    /// The `pg_hba.conf` method name.
    pub fn hba_method(self) -> &'static str {
        match self {
            Auth::Scram => "scram-sha-256",
            Auth::Md5 => "md5",
            Auth::Password => "password",
            Auth::Trust => "trust",
        }
    }

    /// The `password_encryption` to store the password with.
    pub fn password_encryption(self) -> &'static str {
        match self {
            Auth::Md5 => "md5",
            _ => "scram-sha-256",
        }
    }
}

/// A login role created when the cluster starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Role name.
    pub name: String,
    /// Password (stored as [`Auth::password_encryption`]).
    pub password: String,
    /// How the role authenticates over TCP.
    pub auth: Auth,
    /// Whether the role is a superuser.
    pub superuser: bool,
}

impl User {
    /// A login role that is not a superuser.
    pub fn new(name: impl Into<String>, password: impl Into<String>, auth: Auth) -> Self {
        User {
            name: name.into(),
            password: password.into(),
            auth,
            superuser: false,
        }
    }

    /// Makes the role a superuser.
    pub fn superuser(mut self) -> Self {
        self.superuser = true;
        self
    }
}

impl<N: Into<String>, P: Into<String>> From<(N, P, Auth)> for User {
    fn from((name, password, auth): (N, P, Auth)) -> Self {
        User::new(name, password, auth)
    }
}

/// Settings for [`crate::PgCluster::start`]. `ClusterOptions::default()` gives a fast,
/// logical-replication-ready primary with superuser `postgres` / `postgres` over SCRAM.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Password of the bootstrap superuser `postgres`.
    pub superuser_password: String,
    /// How the superuser authenticates over TCP.
    pub superuser_auth: Auth,
    /// `max_connections`.
    pub max_connections: u32,
    /// `max_wal_senders`.
    pub max_wal_senders: u32,
    /// `max_replication_slots`.
    pub max_replication_slots: u32,
    /// Extra `postgresql.conf` lines, written last so they override the defaults above.
    pub extra_conf: Vec<String>,
    /// Roles to create once the server is up.
    pub users: Vec<User>,
    /// TCP clients must use TLS: `hostssl` lines, and `hostnossl … reject` (see
    /// [`ClusterOptions::require_tls`]).
    pub ssl_only: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            superuser_password: "postgres".into(),
            superuser_auth: Auth::Scram,
            max_connections: 200,
            max_wal_senders: 10,
            max_replication_slots: 10,
            extra_conf: Vec::new(),
            users: Vec::new(),
            ssl_only: false,
        }
    }
}

impl ClusterOptions {
    /// Sets the superuser password.
    pub fn superuser_password(mut self, password: impl Into<String>) -> Self {
        self.superuser_password = password.into();
        self
    }

    /// Sets `max_connections`.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Adds a `postgresql.conf` line such as `"log_statement = 'all'"`.
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.extra_conf.push(line.into());
        self
    }

    /// Turns TLS on with this certificate and key (PEM files the server user can read; the
    /// key mode 0600) and refuses unencrypted TCP connections: every `host` line becomes
    /// `hostssl`, followed by `hostnossl all all … reject`. Unix-socket logins stay as they are
    /// (the harness sets up over the socket).
    pub fn require_tls(mut self, cert_file: &Path, key_file: &Path) -> Self {
        let quote = |p: &Path| p.display().to_string().replace('\'', "''");
        self.extra_conf.push("ssl = on".into());
        self.extra_conf
            .push(format!("ssl_cert_file = '{}'", quote(cert_file)));
        self.extra_conf
            .push(format!("ssl_key_file = '{}'", quote(key_file)));
        self.ssl_only = true;
        self
    }

    /// Adds a role to create at start.
    pub fn user(mut self, name: &str, password: &str, auth: Auth) -> Self {
        self.users.push(User::new(name, password, auth));
        self
    }

    /// The `shardgate.conf` included by the cluster's `postgresql.conf`.
    pub(crate) fn render_conf(&self, port: u16, socket_dir: &Path) -> String {
        let mut s =
            String::from("# written by shardgate-tests; test settings, not for production\n");
        let lines = [
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("port = {port}"),
            format!(
                "unix_socket_directories = '{}'",
                socket_dir.display().to_string().replace('\'', "''")
            ),
            format!("max_connections = {}", self.max_connections),
            // Two-phase commit across shards (PREPARE TRANSACTION). One slot per connection
            // is what a proxy can use at most; a replica needs at least its primary's value,
            // and replicas are rendered from the same options.
            format!("max_prepared_transactions = {}", self.max_connections),
            "superuser_reserved_connections = 3".into(),
            "wal_level = logical".into(),
            format!("max_wal_senders = {}", self.max_wal_senders),
            format!("max_replication_slots = {}", self.max_replication_slots),
            "wal_keep_size = '128MB'".into(),
            "hot_standby = on".into(),
            "hot_standby_feedback = on".into(),
            "fsync = off".into(),
            "synchronous_commit = off".into(),
            "full_page_writes = off".into(),
            "shared_buffers = '32MB'".into(),
            "dynamic_shared_memory_type = posix".into(),
            "logging_collector = off".into(),
            "log_line_prefix = '%m [%p] %q%u@%d '".into(),
            "password_encryption = 'scram-sha-256'".into(),
            // Logical replication: the launcher waits wal_retrieve_retry_interval (5 s by
            // default) between starting a subscription's initial-copy workers, which made
            // small test copies take 10-20 s; and a target copying from several sources needs
            // more than the default 4 workers (each subscription: 1 apply + its copy workers).
            "wal_retrieve_retry_interval = '200ms'".into(),
            "max_sync_workers_per_subscription = 4".into(),
            "max_logical_replication_workers = 16".into(),
            "max_worker_processes = 24".into(),
        ];
        for line in lines.iter().chain(&self.extra_conf) {
            let _ = writeln!(s, "{line}");
        }
        s
    }

    /// The whole `pg_hba.conf`: unix-socket trust (the socket lives in the cluster's private
    /// directory; the harness uses it to set passwords), per-user TCP lines, replication, and
    /// the superuser's and everyone else's TCP method. No `trust` for TCP unless a user asks.
    pub(crate) fn render_hba(&self) -> String {
        let mut s = String::from("# written by shardgate-tests\n");
        s.push_str("local all all trust\nlocal replication all trust\n");
        let kind = if self.ssl_only { "hostssl" } else { "host" };
        let mut host = |kind: &str, db: &str, user: &str, method: &str| {
            for net in ["127.0.0.1/32", "::1/128"] {
                let _ = writeln!(s, "{kind} {db} {user} {net} {method}");
            }
        };
        host(kind, "replication", "all", "md5");
        host(kind, "all", "postgres", self.superuser_auth.hba_method());
        for u in &self.users {
            host(kind, "all", &hba_quote(&u.name), u.auth.hba_method());
        }
        host(kind, "all", "all", "scram-sha-256");
        if self.ssl_only {
            host("hostnossl", "all", "all", "reject");
            host("hostnossl", "replication", "all", "reject");
        }
        s
    }

    /// SQL that sets the superuser password and creates the users, one statement a line.
    pub(crate) fn setup_sql(&self) -> String {
        let mut s = format!(
            "SET password_encryption = '{}';\nALTER ROLE postgres PASSWORD {};\n",
            self.superuser_auth.password_encryption(),
            sql_literal(&self.superuser_password)
        );
        for u in &self.users {
            let _ = writeln!(
                s,
                "SET password_encryption = '{}';\nCREATE ROLE {} LOGIN {} PASSWORD {};",
                u.auth.password_encryption(),
                sql_ident(&u.name),
                if u.superuser { "SUPERUSER" } else { "CREATEDB" },
                sql_literal(&u.password)
            );
        }
        s.push_str("RESET password_encryption;\n");
        s
    }
}

/// `name` as a quoted SQL identifier.
pub fn sql_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as a SQL string literal (standard_conforming_strings is on).
pub fn sql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn hba_quote(name: &str) -> String {
    if name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hba_puts_user_lines_before_the_catch_all() {
        let o = ClusterOptions::default().user("legacy", "pw", Auth::Md5);
        let hba = o.render_hba();
        let legacy = hba.find("legacy").unwrap();
        let catch_all = hba.find("host all all").unwrap();
        assert!(legacy < catch_all, "{hba}");
        assert!(!hba
            .lines()
            .any(|l| l.starts_with("host") && l.ends_with("trust")));
    }

    #[test]
    fn require_tls_makes_tcp_lines_hostssl_and_rejects_the_rest() {
        let o = ClusterOptions::default()
            .user("app", "pw", Auth::Scram)
            .require_tls(Path::new("/x/server.crt"), Path::new("/x/server.key"));
        let hba = o.render_hba();
        assert!(!hba.lines().any(|l| l.starts_with("host ")), "{hba}");
        assert!(
            hba.contains("hostssl all app 127.0.0.1/32 scram-sha-256"),
            "{hba}"
        );
        assert!(
            hba.contains("hostnossl all all 127.0.0.1/32 reject"),
            "{hba}"
        );
        let conf = o.render_conf(5432, Path::new("/tmp"));
        assert!(conf.contains("ssl = on") && conf.contains("ssl_key_file = '/x/server.key'"));
        assert!(
            conf.contains("wal_retrieve_retry_interval = '200ms'"),
            "{conf}"
        );
        assert!(conf.contains("max_prepared_transactions = 200"), "{conf}");
        let small = ClusterOptions::default().max_connections(20);
        let conf = small.render_conf(5432, Path::new("/tmp"));
        assert!(conf.contains("max_prepared_transactions = 20"), "{conf}");
    }

    #[test]
    fn setup_sql_quotes() {
        let o = ClusterOptions::default()
            .superuser_password("it's")
            .user("a\"b", "x", Auth::Md5);
        let sql = o.setup_sql();
        assert!(sql.contains("PASSWORD 'it''s'"), "{sql}");
        assert!(sql.contains("CREATE ROLE \"a\"\"b\""), "{sql}");
        assert!(sql.contains("password_encryption = 'md5'"), "{sql}");
    }
}
