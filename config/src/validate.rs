//! Checks that serde cannot express: required lists, uniqueness, references, ranges.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::{AuthMethod, Config, Host, SslMode, Tls, TlsMode};

/// A shard name that [`check_shard_name`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` must be 1 to 40 letters, digits, `_` or `-`")]
pub struct ShardNameError(pub String);

/// A shard name: non-empty ASCII letters, digits, `_` or `-` (it ends up in SQL identifiers
/// and URLs), at most 40 characters.
pub fn check_shard_name(name: &str) -> Result<(), ShardNameError> {
    if name.is_empty()
        || name.len() > 40
        || !name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
    {
        return Err(ShardNameError(name.to_owned()));
    }
    Ok(())
}

/// Returns `(key, what is wrong)` for the first problem found.
pub(crate) fn validate(c: &Config) -> Result<(), (String, String)> {
    let err = |key: &str, msg: String| Err((key.to_owned(), msg));

    if c.listen.addr.parse::<SocketAddr>().is_err() {
        return err(
            "listen.addr",
            format!(
                "`{}` is not an IP:port address (e.g. \"127.0.0.1:6432\")",
                c.listen.addr
            ),
        );
    }
    if c.admin.listen.parse::<SocketAddr>().is_err() {
        return err(
            "admin.listen",
            format!(
                "`{}` is not an IP:port address (e.g. \"127.0.0.1:9930\")",
                c.admin.listen
            ),
        );
    }
    let no_token =
        c.admin.token.as_deref().is_none_or(str::is_empty) && c.admin.token_env.is_none();
    if no_token && !c.admin.listens_on_loopback() {
        return err(
            "admin.listen",
            format!(
                "`{}` is reachable from the network but the admin API has no token, so anyone \
                 could add or remove shards: set admin.token_env (or admin.token), or listen on \
                 127.0.0.1",
                c.admin.listen
            ),
        );
    }
    if c.listen.max_client_connections == 0 {
        return err("listen.max_client_connections", "must be at least 1".into());
    }
    if c.listen.worker_threads > 1024 {
        return err(
            "listen.worker_threads",
            format!(
                "{} threads is more than 1024; use 0 for one per CPU core",
                c.listen.worker_threads
            ),
        );
    }
    if c.listen.max_message_size < 1024 {
        return err(
            "listen.max_message_size",
            "must be at least 1024 bytes".into(),
        );
    }
    if c.limits.max_buffered_result < 1024 {
        return err(
            "limits.max_buffered_result",
            "must be at least 1024 bytes".into(),
        );
    }
    if c.pool.size == 0 {
        return err("pool.size", "must be at least 1".into());
    }
    if c.pool.min_size > c.pool.size {
        return err(
            "pool.min_size",
            format!(
                "{} is larger than pool.size ({})",
                c.pool.min_size, c.pool.size
            ),
        );
    }
    let share = |x: f64| x > 0.0 && x <= 1.0;
    if !share(c.pool.scale_up_at) {
        return err(
            "pool.scale_up_at",
            "must be more than 0 and at most 1".into(),
        );
    }
    if !(0.0..c.pool.scale_up_at).contains(&c.pool.scale_down_at) {
        return err(
            "pool.scale_down_at",
            format!(
                "must be at least 0 and less than pool.scale_up_at ({})",
                c.pool.scale_up_at
            ),
        );
    }
    if !share(c.pool.host_share) {
        return err(
            "pool.host_share",
            "must be more than 0 and at most 1".into(),
        );
    }
    if c.replicas.check_interval.is_zero() {
        return err("replicas.check_interval", "must be more than 0".into());
    }
    if c.replicas.failover_detect < std::time::Duration::from_millis(200) {
        return err(
            "replicas.failover_detect",
            "must be at least 200ms (hosts are checked every half of it)".into(),
        );
    }
    if c.replicas.ban_initial.is_zero() || c.replicas.ban_max < c.replicas.ban_initial {
        return err(
            "replicas.ban_max",
            "replicas.ban_initial must be more than 0 and at most replicas.ban_max".into(),
        );
    }
    if let Some(name) = &c.replicas.monitor_user {
        if c.user(name).is_none() {
            return err(
                "replicas.monitor_user",
                format!("`{name}` is not a [[users]] entry"),
            );
        }
    }
    if c.pool.prepared_statements_per_client == 0 {
        return err(
            "pool.prepared_statements_per_client",
            "must be at least 1".into(),
        );
    }
    if c.pool.max_held_bytes < 65_536 {
        return err(
            "pool.max_held_bytes",
            "must be at least 65536 (one pipelined batch of ordinary statements)".into(),
        );
    }
    if c.pool.connect_timeout.is_zero() {
        return err("pool.connect_timeout", "must be more than 0".into());
    }
    if c.pool.checkout_timeout.is_zero() {
        return err("pool.checkout_timeout", "must be more than 0".into());
    }

    if c.users.is_empty() {
        return err(
            "users",
            "at least one [[users]] entry is required (name, password)".into(),
        );
    }
    let mut names = HashSet::new();
    for (i, u) in c.users.iter().enumerate() {
        let key = |f: &str| format!("users[{i}].{f}");
        if u.name.is_empty() {
            return err(&key("name"), "must not be empty".into());
        }
        if !names.insert(u.name.as_str()) {
            return err(&key("name"), format!("user `{}` is defined twice", u.name));
        }
        if u.auth != AuthMethod::Trust && u.password.as_deref().unwrap_or("").is_empty() {
            return err(
                &key("password"),
                format!("user `{}` authenticates with {} and needs a password (or set auth = \"trust\")", u.name, u.auth),
            );
        }
        if u.pool_size == Some(0) {
            return err(&key("pool_size"), "must be at least 1".into());
        }
    }

    if c.shards.is_empty() {
        return err(
            "shards",
            "at least one [[shards]] entry is required (name, primary)".into(),
        );
    }
    let mut shard_names = HashSet::new();
    for (i, s) in c.shards.iter().enumerate() {
        let key = |f: &str| format!("shards[{i}].{f}");
        if let Err(e) = check_shard_name(&s.name) {
            return err(&key("name"), e.to_string());
        }
        if !shard_names.insert(s.name.as_str()) {
            return err(&key("name"), format!("shard `{}` is defined twice", s.name));
        }
        for (field, host) in std::iter::once(("primary".to_owned(), &s.primary)).chain(
            s.replicas
                .iter()
                .enumerate()
                .map(|(j, h)| (format!("replicas[{j}]"), h)),
        ) {
            if host.host.is_empty() {
                return err(&key(&format!("{field}.host")), "must not be empty".into());
            }
            if host.port == 0 {
                return err(
                    &key(&format!("{field}.port")),
                    "must be between 1 and 65535".into(),
                );
            }
            if let Err(e) = check_host_tls(host) {
                return err(&key(&format!("{field}.sslmode")), e.to_string());
            }
        }
    }
    let store = c.topology.store.as_str();
    if store != "file" && !store.starts_with("postgres://") && !store.starts_with("postgresql://") {
        return err(
            "topology.store",
            format!("`{store}` must be \"file\" or a postgres://user:password@host:port/db URL"),
        );
    }
    if c.topology.poll_interval.is_zero() {
        return err("topology.poll_interval", "must be more than 0".into());
    }
    if c.topology.lease < std::time::Duration::from_millis(300) {
        return err(
            "topology.lease",
            "must be at least 300ms (a proxy renews it three times per lease)".into(),
        );
    }
    if c.rebalance.delete_batch_size == 0 {
        return err("rebalance.delete_batch_size", "must be at least 1".into());
    }
    if c.rebalance.cutover_attempts == 0 {
        return err("rebalance.cutover_attempts", "must be at least 1".into());
    }
    if c.rebalance.admin_user.is_empty() {
        return err("rebalance.admin_user", "must not be empty".into());
    }
    if let Some(d) = &c.sharding.default_shard {
        if !shard_names.contains(d.as_str()) {
            return err(
                "sharding.default_shard",
                format!("`{d}` is not one of the [[shards]] names"),
            );
        }
    }
    if c.sharding.observes() && c.shards.len() != 1 {
        return err(
            "sharding.mode",
            format!(
                "\"observe\" runs in front of one existing database, but {} shards are configured: list only that database as the one shard",
                c.shards.len()
            ),
        );
    }
    if c.sharding.observes() && !(2..=1024).contains(&c.sharding.observe_shards) {
        return err(
            "sharding.observe_shards",
            format!("{} is outside 2..=1024", c.sharding.observe_shards),
        );
    }
    if c.sharding.key_column.is_empty() {
        return err("sharding.key_column", "must not be empty".into());
    }
    if !(8..=20).contains(&c.sharding.slot_bits) {
        return err(
            "sharding.slot_bits",
            format!("{} is outside 8..=20", c.sharding.slot_bits),
        );
    }
    // The lane is 10 bits of shardgate.unique_id(); 1 lane would be no lanes at all.
    if c.sharding.id_lanes != 0 && !(2..=1024).contains(&c.sharding.id_lanes) {
        return err(
            "sharding.id_lanes",
            format!(
                "{} is outside 2..=1024 (0 turns lane management off)",
                c.sharding.id_lanes
            ),
        );
    }
    let mut tables = HashSet::new();
    if c.sharding.two_phase_recovery_interval.is_zero() {
        return err(
            "sharding.two_phase_recovery_interval",
            "must be more than 0".into(),
        );
    }
    for (i, t) in c.sharding.tables.iter().enumerate() {
        let key = |f: &str| format!("sharding.tables[{i}].{f}");
        let parts: Vec<&str> = t.name.split('.').collect();
        if t.name.is_empty() || parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
            return err(
                &key("name"),
                format!(
                    "`{}` is not a table name (`orders` or `schema.orders`)",
                    t.name
                ),
            );
        }
        if !tables.insert(t.name.to_ascii_lowercase()) {
            return err(&key("name"), format!("table `{}` is listed twice", t.name));
        }
        if t.key_column.as_deref() == Some("") {
            return err(&key("key_column"), "must not be empty".into());
        }
    }
    check_reference_tables(c)?;
    check_client_tls(&c.tls)
}

/// `[[sharding.reference_tables]]`: valid names, each once, none also sharded.
fn check_reference_tables(c: &Config) -> Result<(), (String, String)> {
    // (schema, table) lower-cased; an unqualified name matches a table in any schema.
    fn split(name: &str) -> (Option<String>, String) {
        let lower = name.trim().to_ascii_lowercase();
        match lower.split_once('.') {
            Some((s, t)) => (Some(s.to_owned()), t.to_owned()),
            None => (None, lower),
        }
    }
    fn same(a: &(Option<String>, String), b: &(Option<String>, String)) -> bool {
        a.1 == b.1
            && match (&a.0, &b.0) {
                (Some(x), Some(y)) => x == y,
                _ => true,
            }
    }
    let sharded: Vec<_> = c.sharding.tables.iter().map(|t| split(&t.name)).collect();
    let mut seen: Vec<(Option<String>, String)> = Vec::new();
    for (i, t) in c.sharding.reference_tables.iter().enumerate() {
        let key = format!("sharding.reference_tables[{i}].name");
        let parts: Vec<&str> = t.name.split('.').collect();
        if t.name.is_empty() || parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
            return Err((
                key,
                format!(
                    "`{}` is not a table name (`plans` or `schema.plans`)",
                    t.name
                ),
            ));
        }
        let name = split(&t.name);
        if let Some(j) = sharded.iter().position(|s| same(s, &name)) {
            return Err((
                key,
                format!(
                    "table `{}` is both a reference table and a sharded table (sharding.tables[{j}] `{}`): a table is either split by key or copied to every shard",
                    t.name, c.sharding.tables[j].name
                ),
            ));
        }
        if seen.iter().any(|s| same(s, &name)) {
            return Err((key, format!("reference table `{}` is listed twice", t.name)));
        }
        seen.push(name);
    }
    Ok(())
}

/// `[tls]`: `allow` and `require` need a certificate and its key, both readable.
fn check_client_tls(tls: &Tls) -> Result<(), (String, String)> {
    let err = |key: &str, msg: String| Err((key.to_owned(), msg));
    match (&tls.cert_file, &tls.key_file) {
        (Some(_), None) => {
            return err(
                "tls.key_file",
                "tls.cert_file is set, so the key file is needed too".into(),
            )
        }
        (None, Some(_)) => {
            return err(
                "tls.cert_file",
                "tls.key_file is set, so the certificate file is needed too".into(),
            )
        }
        (None, None) if tls.mode != TlsMode::Disable => {
            let msg = format!(
                "tls.mode = \"{}\" needs a certificate: set cert_file and key_file (PEM)",
                tls.mode
            );
            return err("tls.cert_file", msg);
        }
        _ => {}
    }
    if tls.mode == TlsMode::Disable {
        // The files are not read.
        return Ok(());
    }
    for (key, path) in [
        ("tls.cert_file", &tls.cert_file),
        ("tls.key_file", &tls.key_file),
    ] {
        if let Some(path) = path {
            if let Err(e) = std::fs::File::open(path) {
                return err(key, format!("cannot read {}: {e}", path.display()));
            }
        }
    }
    Ok(())
}

/// Why a host's `sslmode` and `sslrootcert` do not fit together.
#[derive(Debug, thiserror::Error)]
enum HostTlsError {
    #[error(
        "sslmode = \"{sslmode}\" cannot be met over a unix socket ({socket}), which never uses TLS"
    )]
    UnixSocket { sslmode: SslMode, socket: String },
    #[error("sslmode = \"{0}\" needs sslrootcert (a PEM file of the CA certificates to trust)")]
    NoRootCert(SslMode),
    // `error` is in the message, so it is not also a `source` (it would print twice).
    #[error("sslrootcert: cannot read {}: {error}", path.display())]
    UnreadableRootCert {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// A host's `sslmode` and `sslrootcert` fit together and the CA file is readable.
fn check_host_tls(host: &Host) -> Result<(), HostTlsError> {
    let verifies = matches!(host.sslmode, SslMode::VerifyCa | SslMode::VerifyFull);
    if host.host.starts_with('/')
        && host.sslmode != SslMode::Disable
        && host.sslmode != SslMode::Prefer
    {
        return Err(HostTlsError::UnixSocket {
            sslmode: host.sslmode,
            socket: host.host.clone(),
        });
    }
    match &host.sslrootcert {
        None if verifies => Err(HostTlsError::NoRootCert(host.sslmode)),
        Some(path) if host.sslmode != SslMode::Disable => std::fs::File::open(path)
            .map(|_| ())
            .map_err(|error| HostTlsError::UnreadableRootCert {
                path: path.clone(),
                error,
            }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tls_tests {
    use std::path::Path;

    use crate::{Config, SslMode, TlsMode};

    fn load(extra: &str, primary: &str) -> Result<Config, String> {
        let text = format!(
            "{extra}\n[[users]]\nname = \"app\"\npassword = \"pw\"\n\n[[shards]]\nname = \"s0\"\nprimary = {primary}\n"
        );
        Config::from_toml(&text, Path::new("t.toml")).map_err(|e| e.to_string())
    }

    const HOST: &str = "{ host = \"127.0.0.1\", port = 5432 }";

    #[test]
    fn defaults_are_no_client_tls_and_prefer_to_servers() {
        let c = load("", HOST).unwrap();
        assert_eq!(c.tls.mode, TlsMode::Disable);
        assert_eq!(c.shards[0].primary.sslmode, SslMode::Prefer);
        assert_eq!(c.shards[0].primary.sslrootcert, None);
    }

    #[test]
    fn client_tls_needs_readable_cert_and_key() {
        let e = load("[tls]\nmode = \"require\"", HOST).unwrap_err();
        assert!(e.contains("tls.cert_file") && e.contains("require"), "{e}");
        let e = load("[tls]\nmode = \"allow\"\ncert_file = \"/x.crt\"", HOST).unwrap_err();
        assert!(e.contains("tls.key_file"), "{e}");
        let e = load(
            "[tls]\nmode = \"allow\"\ncert_file = \"/nonexistent.crt\"\nkey_file = \"/nonexistent.key\"",
            HOST,
        )
        .unwrap_err();
        assert!(e.contains("/nonexistent.crt"), "{e}");
        let e = load("[tls]\nmode = \"sometimes\"", HOST).unwrap_err();
        assert!(e.contains("mode"), "{e}");
        // disable does not read the files.
        load(
            "[tls]\ncert_file = \"/nonexistent.crt\"\nkey_file = \"/nonexistent.key\"",
            HOST,
        )
        .unwrap();
    }

    #[test]
    fn server_sslmodes() {
        let e = load("", "{ host = \"db\", sslmode = \"verify-full\" }").unwrap_err();
        assert!(
            e.contains("shards[0].primary.sslmode") && e.contains("sslrootcert"),
            "{e}"
        );
        let e = load(
            "",
            "{ host = \"db\", sslmode = \"verify-ca\", sslrootcert = \"/nonexistent/ca.pem\" }",
        )
        .unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let e = load("", "{ host = \"/run/pg\", sslmode = \"require\" }").unwrap_err();
        assert!(e.contains("unix socket"), "{e}");
        let e = load("", "{ host = \"db\", sslmode = \"verify_full\" }").unwrap_err();
        assert!(e.contains("verify-full"), "{e}");
        let c = load("", "{ host = \"db\", sslmode = \"require\" }").unwrap();
        assert_eq!(c.shards[0].primary.sslmode, SslMode::Require);
        let c = load("", "{ host = \"/run/pg\", sslmode = \"disable\" }").unwrap();
        assert_eq!(c.shards[0].primary.sslmode, SslMode::Disable);
    }
}
