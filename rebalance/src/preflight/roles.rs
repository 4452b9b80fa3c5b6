//! Pre-flight: the roles the sharded tables name must exist on every target. The schema copy
//! (`pg_dump`) recreates the tables with their owner and grants, and an existing table is only
//! usable by the same roles, so a target without them fails in Preparing (`role "app" does
//! not exist`) after objects were created. Roles are per server: checked once per target.

use std::collections::BTreeSet;

use super::{refuse, unreachable};
use crate::conn::Conns;
use crate::plan::Plan;
use crate::RebalanceError;

/// The owner of a table and every role granted a privilege on it or on one of its columns
/// (PUBLIC, grantee 0, is no role).
const TABLE_ROLES: &str = "SELECT DISTINCT r.rolname::text FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace \
     CROSS JOIN LATERAL ( \
        SELECT c.relowner AS role \
        UNION SELECT (aclexplode(c.relacl)).grantee \
        UNION SELECT (aclexplode(a.attacl)).grantee FROM pg_attribute a \
              WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL) x \
     JOIN pg_roles r ON r.oid = x.role \
     WHERE n.nspname = $1 AND c.relname = $2";

/// Of the names in `$1`, those that are no role on this server.
const MISSING_ROLES: &str = "SELECT u FROM unnest($1::text[]) u \
     WHERE NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = u) ORDER BY u";

/// Refuses (422) when a target lacks a role that owns or is granted a sharded table on a
/// source, naming the target and the roles.
pub(super) async fn check_roles(plan: &Plan, conns: &mut Conns) -> Result<(), RebalanceError> {
    let mut roles = BTreeSet::new();
    for db in &plan.databases {
        for source in plan.sources() {
            for t in &plan.tables {
                let rows = conns
                    .query(source, db, TABLE_ROLES, &[&t.schema, &t.name])
                    .await
                    .map_err(unreachable)?;
                roles.extend(rows.into_iter().map(|r| r.get::<_, String>(0)));
            }
        }
    }
    let roles: Vec<String> = roles.into_iter().collect();
    let db = &plan.databases[0];
    for target in plan.targets() {
        let missing: Vec<String> = conns
            .query(target, db, MISSING_ROLES, &[&roles])
            .await
            .map_err(unreachable)?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        if !missing.is_empty() {
            return Err(refuse(
                format!(
                    "shard {} (target) lacks the role{} {} that own{} or {} granted privileges \
                     on the sharded tables",
                    target.name,
                    if missing.len() == 1 { "" } else { "s" },
                    missing.join(", "),
                    if missing.len() == 1 { "s" } else { "" },
                    if missing.len() == 1 { "is" } else { "are" },
                ),
                format!(
                    "create {} on shard {} with the same attributes as on the other shards \
                     (pg_dumpall --roles-only on a source shows them), then retry",
                    missing.join(", "),
                    target.name
                ),
            ));
        }
    }
    Ok(())
}
