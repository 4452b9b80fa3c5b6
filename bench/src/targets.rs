//! The places pgbench connects to in `compare` (direct, PgBouncer, shardgate builds), and
//! which cases each runs.

use crate::cases::{Case, Protocol, Workload};
use crate::pgbouncer;
use crate::service::Service;

/// Which kind of place pgbench connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Direct,
    PgBouncer,
    Shardgate,
    /// shardgate routing over several shards (only for `-S`).
    Routed,
    /// The minimal tokio pooler (`floor`).
    Floor,
}

/// A place pgbench connects to.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub kind: Kind,
    pub port: u16,
    /// The proxy process (for CPU and memory); `None` for direct.
    pub pid: Option<u32>,
    /// Servers behind it.
    pub shards: u32,
}

impl Target {
    /// The proxy started as `service`, in front of `shards` servers.
    pub fn proxy(name: impl Into<String>, kind: Kind, service: &Service, shards: u32) -> Target {
        Target {
            name: name.into(),
            kind,
            port: service.port(),
            pid: Some(service.pid()),
            shards,
        }
    }
}

/// Why `target` does not run `case`, if it does not.
pub fn skip_reason(
    case: &Case,
    target: &Target,
    pgbouncer: Option<&pgbouncer::PgBouncerBin>,
) -> Option<String> {
    match (target.kind, case.workload) {
        (Kind::PgBouncer, Workload::Select(Protocol::Prepared)) => {
            pgbouncer.filter(|b| !b.supports_prepared()).map(|b| {
                format!(
                    "PgBouncer {} < 1.21 has no max_prepared_statements",
                    b.version_string()
                )
            })
        }
        (Kind::Floor, Workload::Select(Protocol::Prepared)) => {
            Some("the floor pooler keeps no named prepared statements".into())
        }
        (Kind::Routed, Workload::Select(_)) => None,
        // TPC-B's branch and teller rows have no aid: on one shard they meet the accounts.
        (Kind::Routed, _) if target.shards == 1 => None,
        (Kind::Routed, _) => Some("routed target runs -S only".into()),
        _ => None,
    }
}
