//! Pre-flight: everything that can be checked before anything changes. Each refusal names the
//! shard, database, table or setting and says what to do.
//!
//! "The target can take the data" means here: reachable with the admin login, PostgreSQL 15+,
//! the worker and origin limits allow the subscriptions, the sharded tables exist with the same
//! columns (or can be created from a source's schema) and hold no rows in the moving slots.
//! The roles that own or are granted the tables exist on every target (`roles`).
//! Free disk space cannot be read over SQL and is not checked.

use std::collections::HashMap;

use shardgate_config::{Config, Shard};

use super::conn::Conns;
use super::plan::{Plan, TablePlan};
use super::schema_copy;
use super::RebalanceError;

mod roles;

/// Facts about one server, read once.
struct Server {
    version: i32,
    wal_level: String,
    max_slots: i32,
    used_slots: i32,
    max_senders: i32,
    used_senders: i32,
    max_workers: i32,
    sync_per_sub: i32,
    enabled_subs: i32,
    origins: i32,
    /// System identifier, port and start time: equal only for the same running server
    /// (clusters cloned from one backup share the system identifier alone).
    system_id: String,
    superuser: bool,
    replication: bool,
    create_db: bool,
    create_sub: bool,
    user: String,
}

const SERVER_FACTS: &str = "SELECT current_setting('server_version_num')::int4, \
     current_setting('wal_level'), \
     current_setting('max_replication_slots')::int4, \
     (SELECT count(*) FROM pg_replication_slots)::int4, \
     current_setting('max_wal_senders')::int4, \
     (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')::int4, \
     current_setting('max_logical_replication_workers')::int4, \
     current_setting('max_sync_workers_per_subscription')::int4, \
     (SELECT count(*) FROM pg_subscription WHERE subenabled)::int4, \
     (SELECT count(*) FROM pg_replication_origin)::int4, \
     (SELECT system_identifier::text FROM pg_control_system()) || '/' || \
     current_setting('port') || '/' || pg_postmaster_start_time()::text, \
     r.rolsuper, r.rolreplication, \
     has_database_privilege(current_database(), 'CREATE'), \
     (current_setting('server_version_num')::int4 >= 160000 AND \
      EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pg_create_subscription') AND \
      pg_has_role(current_user, 'pg_create_subscription', 'MEMBER')), \
     current_user::text \
     FROM pg_roles r WHERE r.rolname = current_user";

/// A table as found on one shard.
struct TableFacts {
    relkind: String,
    replident: String,
    columns: Vec<String>,
    has_key: bool,
    key_in_identity: bool,
    owned: bool,
}

const TABLE_FACTS: &str = "SELECT c.relkind::text, c.relreplident::text, \
     coalesce((SELECT array_agg(a.attname::text || ' ' || format_type(a.atttypid, a.atttypmod) \
        ORDER BY a.attnum) FROM pg_attribute a \
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '{}'), \
     EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = $3 \
        AND a.attnum > 0 AND NOT a.attisdropped), \
     EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
        AND a.attnum = ANY(i.indkey) WHERE i.indrelid = c.oid AND a.attname = $3 \
        AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))), \
     pg_has_role(current_user, c.relowner, 'USAGE') \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')";

pub(crate) fn refuse(message: String, hint: impl Into<String>) -> RebalanceError {
    RebalanceError {
        status: 422,
        code: "preflight".into(),
        message,
        hint: hint.into(),
        job_id: None,
    }
}

fn unreachable(e: super::error::ShardError) -> RebalanceError {
    RebalanceError {
        status: 503,
        code: "unreachable".into(),
        message: e.to_string(),
        hint: "check that the shard's primary is up, that its admin login ([rebalance] \
               admin_user/admin_password, or the shard's admin_user) can log in to every \
               database in rebalance.databases, and that pg_hba.conf allows it from this proxy"
            .into(),
        job_id: None,
    }
}

/// Runs every check for `plan`; `Ok` means the job may start.
pub(crate) async fn check(plan: &Plan, config: &Config) -> Result<(), RebalanceError> {
    if plan.databases.is_empty() {
        return Err(refuse(
            "rebalance.databases is empty: the rebalancer does not know which databases hold \
             the sharded tables"
                .into(),
            "set rebalance.databases = [\"<db>\", …] in the config (every database with sharded \
             tables) and reload",
        ));
    }
    if plan.tables.is_empty() {
        return Err(refuse(
            "sharding.tables is empty: there is nothing to move".into(),
            "list the sharded tables under [[sharding.tables]]",
        ));
    }
    if plan.moves.is_empty() {
        return Err(refuse(
            "no ring slot changes owner with this change".into(),
            "nothing to do",
        ));
    }
    let mut conns = Conns::new(config.rebalance.clone());
    let mut involved: Vec<&Shard> = plan.sources();
    for t in plan.targets() {
        if !involved.iter().any(|s| s.name == t.name) {
            involved.push(t);
        }
    }
    // Reachability in every database, and the server facts (from the first database).
    let mut servers: HashMap<String, Server> = HashMap::new();
    for shard in &involved {
        for db in &plan.databases {
            conns.get(shard, db).await.map_err(unreachable)?;
        }
        let row = conns
            .one(shard, &plan.databases[0], SERVER_FACTS, &[])
            .await
            .map_err(unreachable)?;
        let server = Server {
            version: row.get(0),
            wal_level: row.get(1),
            max_slots: row.get(2),
            used_slots: row.get(3),
            max_senders: row.get(4),
            used_senders: row.get(5),
            max_workers: row.get(6),
            sync_per_sub: row.get(7),
            enabled_subs: row.get(8),
            origins: row.get(9),
            system_id: row.get(10),
            superuser: row.get(11),
            replication: row.get(12),
            create_db: row.get(13),
            create_sub: row.get(14),
            user: row.get(15),
        };
        if server.version < 150000 {
            return Err(refuse(
                format!(
                    "shard {} runs PostgreSQL {}.{}; moving slots needs publication row \
                     filters (PostgreSQL 15 or later)",
                    shard.name,
                    server.version / 10000,
                    server.version % 10000 / 100
                ),
                "upgrade the shard to PostgreSQL 15 or later",
            ));
        }
        check_privileges(shard, &server, plan)?;
        servers.insert(shard.name.clone(), server);
    }
    let get = |name: &str| {
        servers
            .get(name)
            .ok_or_else(|| refuse(format!("shard {name} was not checked"), "retry"))
    };
    let ndb = plan.databases.len() as i32;
    let ntables = plan.tables.len() as i32;
    for target in plan.targets() {
        let t = get(&target.name)?;
        for source in plan.sources() {
            if get(&source.name)?.system_id == t.system_id {
                return Err(refuse(
                    format!(
                        "shards {} and {} are the same PostgreSQL server ({})",
                        source.name, target.name, t.system_id
                    ),
                    "give the new shard its own PostgreSQL server",
                ));
            }
        }
        let subs = plan.moves_to(&target.name).count() as i32 * ndb;
        // Every subscription needs its apply worker for the whole job, plus at least one
        // worker for the initial table copies.
        let need = t.enabled_subs + subs + 1;
        if t.max_workers < need {
            return Err(refuse(
                format!(
                    "shard {} (target) has max_logical_replication_workers = {}, but needs {need} \
                     ({} existing subscriptions, {subs} for this move, 1 for the table copy)",
                    target.name, t.max_workers, t.enabled_subs
                ),
                format!(
                    "set max_logical_replication_workers = {} (and max_worker_processes to at \
                     least that plus 2) on shard {} and restart it",
                    need + 2,
                    target.name
                ),
            ));
        }
        // On PostgreSQL 15-17 each subscription's replication origin counts against
        // max_replication_slots on the subscriber.
        if t.version < 180000 && t.max_slots - t.origins < subs {
            return Err(refuse(
                format!(
                    "shard {} (target) has {} of max_replication_slots = {} left for replication \
                     origins, but its {subs} subscriptions need one each",
                    target.name,
                    t.max_slots - t.origins,
                    t.max_slots
                ),
                format!(
                    "raise max_replication_slots on shard {} and restart it",
                    target.name
                ),
            ));
        }
    }
    for source in plan.sources() {
        let s = get(&source.name)?;
        if s.wal_level != "logical" {
            return Err(refuse(
                format!(
                    "shard {} has wal_level = {}; its rows are moved by logical replication",
                    source.name, s.wal_level
                ),
                format!(
                    "set wal_level = logical on shard {} and restart it",
                    source.name
                ),
            ));
        }
        // One slot and one WAL sender per move and database, plus the initial-copy slots of
        // the one subscription copying from this source at a time (one per table and the
        // marker table, at most its target's max_sync_workers_per_subscription).
        let mut need = 0;
        let mut sync = 0;
        for m in plan.moves_from(&source.name) {
            need += ndb;
            sync = sync.max(get(&m.target.name)?.sync_per_sub.min(ntables + 1));
        }
        need += sync;
        for (what, max, used) in [
            ("max_replication_slots", s.max_slots, s.used_slots),
            ("max_wal_senders", s.max_senders, s.used_senders),
        ] {
            if max - used < need {
                return Err(refuse(
                    format!(
                        "shard {} (source) has {} of {what} = {max} free, but the move needs {need}",
                        source.name,
                        max - used
                    ),
                    format!(
                        "set {what} = {} on shard {} and restart it (or drop unused replication \
                         slots)",
                        used + need + 2,
                        source.name
                    ),
                ));
            }
        }
    }
    for db in &plan.databases {
        check_tables(plan, &mut conns, db).await?;
    }
    roles::check_roles(plan, &mut conns).await?;
    Ok(())
}

fn check_privileges(shard: &Shard, s: &Server, plan: &Plan) -> Result<(), RebalanceError> {
    if s.superuser {
        return Ok(());
    }
    let is_target = plan.targets().iter().any(|t| t.name == shard.name);
    if s.version < 160000 {
        return Err(refuse(
            format!(
                "the admin login {} on shard {} is not a superuser; before PostgreSQL 16 only a \
                 superuser may create subscriptions",
                s.user, shard.name
            ),
            format!(
                "run ALTER ROLE \"{}\" SUPERUSER on shard {}, or set the shard's admin_user \
                 (or [rebalance] admin_user) to a superuser",
                s.user, shard.name
            ),
        ));
    }
    let mut missing = Vec::new();
    if !s.replication {
        missing.push(format!("ALTER ROLE \"{}\" REPLICATION", s.user));
    }
    if !s.create_db {
        missing.push(format!(
            "GRANT CREATE ON DATABASE <each of rebalance.databases> TO \"{}\"",
            s.user
        ));
    }
    if is_target && !s.create_sub {
        missing.push(format!("GRANT pg_create_subscription TO \"{}\"", s.user));
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(refuse(
        format!(
            "the admin login {} on shard {} lacks privileges the rebalancer needs",
            s.user, shard.name
        ),
        format!("on shard {}: {}", shard.name, missing.join("; ")),
    ))
}

async fn table_facts(
    conns: &mut Conns,
    shard: &Shard,
    db: &str,
    t: &TablePlan,
) -> Result<Option<TableFacts>, RebalanceError> {
    let rows = conns
        .query(shard, db, TABLE_FACTS, &[&t.schema, &t.name, &t.key_column])
        .await
        .map_err(unreachable)?;
    Ok(rows.into_iter().next().map(|r| TableFacts {
        relkind: r.get(0),
        replident: r.get(1),
        columns: r.get(2),
        has_key: r.get(3),
        key_in_identity: r.get(4),
        owned: r.get(5),
    }))
}

async fn check_tables(plan: &Plan, conns: &mut Conns, db: &str) -> Result<(), RebalanceError> {
    let mut need_copy = false;
    for t in &plan.tables {
        let mut reference: Option<(String, Vec<String>)> = None;
        for source in plan.sources() {
            let where_ = format!(
                "table {} on shard {} (database {db})",
                t.display(),
                source.name
            );
            let Some(f) = table_facts(conns, source, db, t).await? else {
                return Err(refuse(
                    format!("{where_} does not exist"),
                    format!(
                        "create {} on shard {} (every shard holds every sharded table), or \
                         remove it from sharding.tables",
                        t.display(),
                        source.name
                    ),
                ));
            };
            if f.relkind != "r" {
                return Err(refuse(
                    format!("{where_} is partitioned; the rebalancer moves plain tables only"),
                    "move this table's rows yourself, or shard it without partitions",
                ));
            }
            if !f.has_key {
                return Err(refuse(
                    format!("{where_} has no column {}", t.key_column),
                    "set key_column for this table in [[sharding.tables]]",
                ));
            }
            if f.replident != "f" && !f.key_in_identity {
                return Err(refuse(
                    format!(
                        "{where_} has no primary key or replica identity that includes its \
                         shard key {}; logical replication of a row filter on it needs one",
                        t.key_column
                    ),
                    format!(
                        "add a primary key that includes {key} (ALTER TABLE {q} ADD PRIMARY KEY \
                         ({key}, …)), or run ALTER TABLE {q} REPLICA IDENTITY FULL",
                        key = t.key_column,
                        q = t.display()
                    ),
                ));
            }
            if !f.owned {
                return Err(refuse(
                    format!(
                        "the admin login on shard {} does not own {where_} (needed for the \
                         publication and the fence trigger)",
                        source.name
                    ),
                    format!(
                        "run ALTER TABLE {} OWNER TO <admin role> on shard {}, or use a \
                         superuser as the admin login",
                        t.display(),
                        source.name
                    ),
                ));
            }
            match &reference {
                None => reference = Some((source.name.clone(), f.columns)),
                Some((first, cols)) if *cols != f.columns => {
                    return Err(refuse(
                        format!(
                            "table {} has different columns on shards {first} and {} \
                             (database {db}): {} vs {}",
                            t.display(),
                            source.name,
                            cols.join(", "),
                            f.columns.join(", ")
                        ),
                        "make the table's columns the same (names, types, order) on every shard",
                    ))
                }
                Some(_) => {}
            }
        }
        let Some((_, columns)) = reference else {
            continue;
        };
        for target in plan.targets() {
            let where_ = format!(
                "table {} on shard {} (database {db})",
                t.display(),
                target.name
            );
            match table_facts(conns, target, db, t).await? {
                None => need_copy = true,
                Some(f) => {
                    if f.columns != columns {
                        return Err(refuse(
                            format!(
                                "{where_} has other columns than on the source shards: {} vs {}",
                                f.columns.join(", "),
                                columns.join(", ")
                            ),
                            format!(
                                "make it the same as on the other shards, or drop it on shard {} \
                                 so the rebalancer copies the schema",
                                target.name
                            ),
                        ));
                    }
                    let slots = plan.slots_to(&target.name);
                    let sql = super::sql::any_row(plan, t, &slots);
                    let row = conns
                        .one(target, db, &sql, &[])
                        .await
                        .map_err(unreachable)?;
                    if row.get::<_, bool>(0) {
                        return Err(refuse(
                            format!(
                                "{where_} already holds rows in the slots that would move to it"
                            ),
                            format!(
                                "remove those rows from shard {} (or the table, to have its \
                                 schema copied) before moving data there",
                                target.name
                            ),
                        ));
                    }
                }
            }
        }
    }
    if need_copy {
        for tool in ["pg_dump", "psql"] {
            if schema_copy::find_tool(tool).is_none() {
                return Err(refuse(
                    format!(
                        "a sharded table is missing on the target and must be copied with \
                         {tool}, which was not found"
                    ),
                    format!(
                        "install the PostgreSQL client programs ({tool}) on this proxy's host, \
                         or create the sharded tables on the target yourself"
                    ),
                ));
            }
        }
    }
    Ok(())
}
