//! The `--primary`/`--replica` addresses of `shards add`: a `postgres://` URL or `host[:port]`.

use std::path::PathBuf;

use shardgate_config::{Host, SslMode};

/// Why an address of `shards add` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    #[error("the address is empty")]
    Empty,
    #[error("`{0}`: only postgres:// URLs are understood")]
    Scheme(String),
    #[error("`{0}`: `[` without `]`")]
    Bracket(String),
    #[error("`{address}`: unexpected `{after}` after the address")]
    Trailing { address: String, after: String },
    #[error("`{address}`: `{port}` is not a port number")]
    Port { address: String, port: String },
    #[error("sslmode `{0}` is not one of disable, prefer, require, verify-ca, verify-full")]
    SslMode(String),
    #[error("`{address}`: parameter `{parameter}` is not understood (sslmode, sslrootcert, host, port are)")]
    Parameter { address: String, parameter: String },
    #[error("`{0}` names no host")]
    NoHost(String),
    #[error("bad percent escape in `{0}`")]
    Escape(String),
    #[error("`{0}` does not decode to UTF-8")]
    NotUtf8(String),
}

/// A parsed address: the host, and the login in it (if any).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Dsn {
    pub host: Host,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// Parses `postgres[ql]://[user[:password]@]host[:port][/db][?sslmode=…&sslrootcert=…]` (the
/// database part is ignored: the rebalancer works on `rebalance.databases`), `host[:port]`,
/// `[v6]:port`, or a unix-socket directory (`/run/postgresql`).
pub(crate) fn parse(s: &str) -> Result<Dsn, DsnError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(DsnError::Empty);
    }
    let rest = s
        .strip_prefix("postgres://")
        .or_else(|| s.strip_prefix("postgresql://"));
    let Some(rest) = rest else {
        if s.contains("://") {
            return Err(DsnError::Scheme(s.to_owned()));
        }
        let host = host_port(s, s)?;
        return Ok(Dsn {
            host,
            user: None,
            password: None,
        });
    };
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let (userinfo, hostpart) = match main.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, main),
    };
    let hostpart = hostpart.split('/').next().unwrap_or("");
    let mut host = host_port(&decode(hostpart)?, s)?;
    let (user, password) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((u, p)) => (Some(decode(u)?), Some(decode(p)?)),
            None => (Some(decode(u)?), None),
        },
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v)?;
        match k {
            "sslmode" => host.sslmode = ssl_mode(&v)?,
            "sslrootcert" => host.sslrootcert = Some(PathBuf::from(v)),
            "host" if v.starts_with('/') => host.host = v,
            "port" => host.port = port(&v, s)?,
            "user" => {}
            _ => {
                return Err(DsnError::Parameter {
                    address: s.to_owned(),
                    parameter: k.to_owned(),
                })
            }
        }
    }
    if host.host.is_empty() {
        return Err(DsnError::NoHost(s.to_owned()));
    }
    let user = user.filter(|u| !u.is_empty());
    Ok(Dsn {
        host,
        user,
        password,
    })
}

fn host_port(s: &str, whole: &str) -> Result<Host, DsnError> {
    let mut host = Host {
        host: String::new(),
        port: 5432,
        sslmode: SslMode::default(),
        sslrootcert: None,
    };
    if s.starts_with('/') {
        host.host = s.to_owned();
        return Ok(host);
    }
    if let Some(v6) = s.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| DsnError::Bracket(whole.to_owned()))?;
        host.host = addr.to_owned();
        if let Some(p) = after.strip_prefix(':') {
            host.port = port(p, whole)?;
        } else if !after.is_empty() {
            return Err(DsnError::Trailing {
                address: whole.to_owned(),
                after: after.to_owned(),
            });
        }
        return Ok(host);
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => {
            host.host = h.to_owned();
            host.port = port(p, whole)?;
        }
        _ => host.host = s.to_owned(),
    }
    Ok(host)
}

fn port(p: &str, whole: &str) -> Result<u16, DsnError> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(DsnError::Port {
            address: whole.to_owned(),
            port: p.to_owned(),
        }),
    }
}

fn ssl_mode(v: &str) -> Result<SslMode, DsnError> {
    Ok(match v {
        "disable" => SslMode::Disable,
        "prefer" | "allow" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        _ => return Err(DsnError::SslMode(v.to_owned())),
    })
}

/// Percent-decoding of URL parts (passwords often hold `@`, `:` or `/`).
fn decode(s: &str) -> Result<String, DsnError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| DsnError::Escape(s.to_owned()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| DsnError::NotUtf8(s.to_owned()))
}

/// The libpq connection string the target's subscription uses to reach `host`, with
/// single-quoted values (so spaces, quotes and backslashes in passwords survive).
pub(crate) fn conninfo(host: &Host, user: &str, password: Option<&str>, db: &str) -> String {
    let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut parts = vec![
        format!("host={}", q(&host.host)),
        format!("port={}", host.port),
        format!("user={}", q(user)),
        format!("dbname={}", q(db)),
        format!("sslmode={}", host.sslmode),
        "application_name='shardgate-rebalance'".to_owned(),
    ];
    if let Some(p) = password {
        parts.push(format!("password={}", q(p)));
    }
    if let Some(root) = &host.sslrootcert {
        parts.push(format!("sslrootcert={}", q(&root.display().to_string())));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_plain_addresses() {
        let d = parse("postgres://admin:p%40ss:w@db1.example:6543/app?sslmode=require").unwrap();
        assert_eq!(d.host.host, "db1.example");
        assert_eq!(d.host.port, 6543);
        assert_eq!(d.host.sslmode, SslMode::Require);
        assert_eq!(d.user.as_deref(), Some("admin"));
        assert_eq!(d.password.as_deref(), Some("p@ss:w"));

        let d = parse("10.0.0.5").unwrap();
        assert_eq!((d.host.host.as_str(), d.host.port), ("10.0.0.5", 5432));
        assert_eq!(d.user, None);
        let d = parse("db:5433").unwrap();
        assert_eq!((d.host.host.as_str(), d.host.port), ("db", 5433));
        let d = parse("[::1]:5499").unwrap();
        assert_eq!((d.host.host.as_str(), d.host.port), ("::1", 5499));
        let d = parse("postgresql://u@[::1]").unwrap();
        assert_eq!(
            (d.host.host.as_str(), d.user.as_deref()),
            ("::1", Some("u"))
        );
        assert_eq!(
            parse("/run/postgresql").unwrap().host.host,
            "/run/postgresql"
        );
    }

    #[test]
    fn bad_addresses_are_refused() {
        assert_eq!(parse(""), Err(DsnError::Empty));
        assert!(matches!(parse("db:99999"), Err(DsnError::Port { port, .. }) if port == "99999"));
        assert_eq!(
            parse("mysql://x"),
            Err(DsnError::Scheme("mysql://x".into()))
        );
        assert_eq!(
            parse("postgres://x?sslmode=maybe"),
            Err(DsnError::SslMode("maybe".into()))
        );
        assert!(matches!(
            parse("postgres://x?foo=1"),
            Err(DsnError::Parameter { parameter, .. }) if parameter == "foo"
        ));
        assert!(matches!(
            parse("postgres://u:p@/db"),
            Err(DsnError::NoHost(_))
        ));
        assert!(matches!(
            parse("postgres://u:%zz@h"),
            Err(DsnError::Escape(_))
        ));
        assert!(matches!(parse("[::1"), Err(DsnError::Bracket(_))));
    }

    #[test]
    fn conninfo_quotes() {
        let h = parse("h:1").unwrap().host;
        let c = conninfo(&h, "ad'min", Some("a\\b c"), "app");
        assert!(c.contains("user='ad\\'min'"), "{c}");
        assert!(c.contains("password='a\\\\b c'"), "{c}");
        assert!(c.contains("sslmode=prefer"), "{c}");
    }
}
