//! Every statement the rebalancer sends, built from the plan with quoted identifiers and
//! literals. Values that can be bound (job id, slot lists, names in lookups) are parameters.

use super::plan::{ident, literal, Plan, TablePlan};
use shardgate_topology::FENCE_SQLSTATE;

/// Creates the schema and the fence tables (idempotent): `fence` lists the job's moving slots
/// (filled in Preparing), `fence_switch` says whether the fence is closed — so closing and
/// opening it at cutover is a one-row update, not thousands of inserts. The application roles
/// read both from the trigger (which runs as them), hence the grants; they hold nothing secret.
pub(crate) fn create_fence_table() -> Vec<String> {
    vec![
        "CREATE SCHEMA IF NOT EXISTS shardgate".into(),
        "CREATE TABLE IF NOT EXISTS shardgate.fence (job text NOT NULL, slot bigint NOT NULL, \
         target text NOT NULL DEFAULT '', PRIMARY KEY (job, slot))"
            .into(),
        "CREATE TABLE IF NOT EXISTS shardgate.fence_switch (job text PRIMARY KEY, \
         closed boolean NOT NULL DEFAULT false)"
            .into(),
        "GRANT USAGE ON SCHEMA shardgate TO PUBLIC".into(),
        "GRANT SELECT ON shardgate.fence, shardgate.fence_switch TO PUBLIC".into(),
    ]
}

/// The cutover marker table, on sources and targets alike: a row the rebalancer inserts on a
/// source after closing the fence travels through the move's publication, and its arrival on
/// the target proves that every change committed before it has been applied there (the target
/// applies in commit order). That is much quicker than waiting for the slot's confirmed flush
/// position, which moves only when the target's WAL writer flushes and reports.
pub(crate) fn create_marker_table() -> Vec<String> {
    vec![
        "CREATE SCHEMA IF NOT EXISTS shardgate".into(),
        "CREATE TABLE IF NOT EXISTS shardgate.marker (job text NOT NULL, source text NOT NULL, \
         seq bigint NOT NULL, PRIMARY KEY (job, source, seq))"
            .into(),
    ]
}

/// Params `$1` job, `$2` source shard, `$3` sequence number (see `PROBE_SEQ_START`).
pub(crate) const MARKER_INSERT: &str =
    "INSERT INTO shardgate.marker (job, source, seq) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";

/// Params `$1` job, `$2` source shard, `$3` sequence number.
pub(crate) const MARKER_ARRIVED: &str =
    "SELECT EXISTS (SELECT 1 FROM shardgate.marker WHERE job = $1 AND source = $2 AND seq = $3)";

pub(crate) const MARKER_TABLE_EXISTS: &str = "SELECT to_regclass('shardgate.marker') IS NOT NULL";

/// Params `$1` job, `$2` source shard, `$3` `PROBE_SEQ_START`: the number of the last cutover
/// marker the source sent (NULL when there is none). The attempt that published the new map
/// is the last one, so this is the marker it waited for.
pub(crate) const LAST_CUTOVER_MARKER: &str =
    "SELECT max(seq) FROM shardgate.marker WHERE job = $1 AND source = $2 AND seq < $3";

/// Removes the job's markers (param `$1` job) and the table once empty (after the
/// subscriptions are gone, so nothing replicates).
pub(crate) fn drop_markers(plan: &Plan) -> String {
    format!(
        "DO $sg$ BEGIN
  IF to_regclass('shardgate.marker') IS NOT NULL THEN
    DELETE FROM shardgate.marker WHERE job = {};
    IF NOT EXISTS (SELECT 1 FROM shardgate.marker) THEN
      DROP TABLE shardgate.marker;
    END IF;
  END IF;
END $sg$",
        literal(&plan.job_id)
    )
}

/// The fence trigger function of table number `t`: while the job's fence is closed, a write
/// whose old or new key falls in a moving slot fails with SG001. While it is open (until
/// cutover) the trigger costs one index probe per row.
///
/// `shardgate.bypass = on` lets the rebalancer's own copies and deletes through, but only for
/// the login that installed the fence (the function's owner, i.e. the shard's admin login):
/// any client can set a custom setting, so the setting alone would let an application write
/// to a moving slot behind the rebalancer's back.
pub(crate) fn create_fence_function(plan: &Plan, t: usize, table: &TablePlan) -> String {
    let shift = 64 - plan.bits;
    let new_slot = format!("({}) >> {shift}", table.hash_expr(plan.seed, "NEW."));
    let old_slot = format!("({}) >> {shift}", table.hash_expr(plan.seed, "OLD."));
    let job = literal(&plan.job_id);
    let code = literal(FENCE_SQLSTATE);
    let hint = literal(
        "shardgate retries such statements itself; run the statement through shardgate, or retry it",
    );
    format!(
        "CREATE OR REPLACE FUNCTION shardgate.{func}() RETURNS trigger LANGUAGE plpgsql AS $sg$
DECLARE
  dest text;
BEGIN
  IF current_setting('shardgate.bypass', true) = 'on' THEN
    IF session_user::text = (SELECT pg_get_userbyid(p.proowner)::text FROM pg_proc p
                             WHERE p.oid = {self_ref}::regprocedure) THEN
      IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
      RETURN NEW;
    END IF;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM shardgate.fence_switch w WHERE w.job = {job} AND w.closed) THEN
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NEW;
  END IF;
  IF TG_OP <> 'DELETE' THEN
    SELECT f.target INTO dest FROM shardgate.fence f WHERE f.job = {job} AND f.slot = {new_slot};
    IF FOUND THEN
      RAISE EXCEPTION USING ERRCODE = {code},
        MESSAGE = 'shardgate: this key is moving to shard ' || dest || '; retry the statement',
        HINT = {hint};
    END IF;
  END IF;
  IF TG_OP <> 'INSERT' THEN
    SELECT f.target INTO dest FROM shardgate.fence f WHERE f.job = {job} AND f.slot = {old_slot};
    IF FOUND THEN
      RAISE EXCEPTION USING ERRCODE = {code},
        MESSAGE = 'shardgate: this key is moving to shard ' || dest || '; retry the statement',
        HINT = {hint};
    END IF;
  END IF;
  IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
  RETURN NEW;
END
$sg$",
        func = ident(&plan.function_name(t)),
        self_ref = literal(&format!("shardgate.{}()", ident(&plan.function_name(t)))),
    )
}

pub(crate) fn create_fence_trigger(plan: &Plan, t: usize, table: &TablePlan) -> String {
    format!(
        "CREATE OR REPLACE TRIGGER {} BEFORE INSERT OR UPDATE OR DELETE ON {} \
         FOR EACH ROW EXECUTE FUNCTION shardgate.{}()",
        ident(&plan.trigger_name()),
        table.qualified(),
        ident(&plan.function_name(t))
    )
}

/// Drops the trigger and its function, if there (the table may be gone too).
pub(crate) fn drop_fence_trigger(plan: &Plan, t: usize, table: &TablePlan) -> Vec<String> {
    let mut out = Vec::new();
    out.push(format!(
        "DO $sg$ BEGIN IF to_regclass({reg}) IS NOT NULL THEN \
         EXECUTE {drop}; END IF; END $sg$",
        reg = literal(&table.qualified()),
        drop = literal(&format!(
            "DROP TRIGGER IF EXISTS {} ON {}",
            ident(&plan.trigger_name()),
            table.qualified()
        )),
    ));
    out.push(format!(
        "DROP FUNCTION IF EXISTS shardgate.{}()",
        ident(&plan.function_name(t))
    ));
    out
}

/// `INSERT` of the job's fence rows: params `$1` job, `$2` slots (int8[]), `$3` targets (text[]).
pub(crate) const FENCE_INSERT: &str = "INSERT INTO shardgate.fence (job, slot, target) \
     SELECT $1, s, t FROM unnest($2::int8[], $3::text[]) AS u(s, t) ON CONFLICT DO NOTHING";

/// The job's fence switch, open (param `$1` job).
pub(crate) const FENCE_SWITCH_INSERT: &str =
    "INSERT INTO shardgate.fence_switch (job, closed) VALUES ($1, false) ON CONFLICT DO NOTHING";

/// Closes the job's fence (param `$1` job): one row.
pub(crate) const FENCE_CLOSE: &str =
    "UPDATE shardgate.fence_switch SET closed = true WHERE job = $1";

/// Opens it again (param `$1` job).
pub(crate) const FENCE_OPEN: &str =
    "UPDATE shardgate.fence_switch SET closed = false WHERE job = $1";

/// Params `$1` job: whether the job's fence is closed (no row: it has no switch here).
pub(crate) const FENCE_CLOSED: &str = "SELECT closed FROM shardgate.fence_switch WHERE job = $1";

/// Removes the job's fence rows (param `$1` job), once its triggers are gone.
pub(crate) const FENCE_DELETE: &str = "DELETE FROM shardgate.fence WHERE job = $1";
pub(crate) const FENCE_SWITCH_DELETE: &str = "DELETE FROM shardgate.fence_switch WHERE job = $1";

pub(crate) const FENCE_TABLE_EXISTS: &str = "SELECT to_regclass('shardgate.fence') IS NOT NULL \
     AND to_regclass('shardgate.fence_switch') IS NOT NULL";

/// Drops the fence table once no job's rows or trigger functions remain, and the schema once it
/// is empty (an error from a non-empty schema is expected and ignored by the caller).
pub(crate) fn drop_fence_table_if_unused() -> String {
    // Nested IFs: PL/pgSQL plans a condition as one query, so a table it names must exist
    // (a cleanup that runs again after a restart finds them gone).
    "DO $sg$ BEGIN
  IF to_regclass('shardgate.fence') IS NOT NULL
     AND to_regclass('shardgate.fence_switch') IS NOT NULL THEN
    IF NOT EXISTS (SELECT 1 FROM shardgate.fence)
       AND NOT EXISTS (SELECT 1 FROM shardgate.fence_switch)
       AND NOT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                       WHERE n.nspname = 'shardgate' AND p.proname LIKE 'sg\\_fence\\_%') THEN
      DROP TABLE shardgate.fence, shardgate.fence_switch;
    END IF;
  END IF;
END $sg$"
        .into()
}

/// Drops the `shardgate` schema when it holds nothing. `DROP SCHEMA … RESTRICT` alone is not
/// safe to try on a schema with tables: before it reports the dependent objects it locks each
/// one ACCESS EXCLUSIVE (checked on PostgreSQL 15), so on a shard whose fence is live it holds
/// `shardgate.fence` while waiting for `shardgate.fence_switch`, and a client whose fence
/// trigger read the switch first deadlocks with it (40P01 in the client). So it runs only when
/// the catalogs show the schema empty, and never waits long for a lock.
pub(crate) const DROP_SCHEMA_IF_EMPTY: &str = "DO $sg$ BEGIN
  PERFORM set_config('lock_timeout', '50ms', true);
  IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'shardgate')
     AND NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = 'shardgate')
     AND NOT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE n.nspname = 'shardgate') THEN
    DROP SCHEMA shardgate RESTRICT;
  END IF;
END $sg$";

/// The publication of move `m` in database number `db`: each sharded table filtered to the
/// move's slots. TRUNCATE is not published: a row filter cannot apply to it, and a TRUNCATE on a
/// source would otherwise empty the target's tables for every slot.
pub(crate) fn create_publication(plan: &Plan, db: usize, m: usize) -> String {
    let slots = &plan.moves[m].slots;
    let mut tables: Vec<String> = plan
        .tables
        .iter()
        .map(|t| format!("{} WHERE ({})", t.qualified(), plan.predicate(t, slots)))
        .collect();
    tables.push(format!(
        "shardgate.marker WHERE (job = {})",
        literal(&plan.job_id)
    ));
    format!(
        "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update, delete')",
        ident(&plan.object_name(db, m)),
        tables.join(", ")
    )
}

pub(crate) fn drop_publication(plan: &Plan, db: usize, m: usize) -> String {
    format!(
        "DROP PUBLICATION IF EXISTS {}",
        ident(&plan.object_name(db, m))
    )
}

/// The subscription on the target: copies the existing rows, then streams changes. It starts
/// disabled, with its slot already created on the source (so no change is missed), and the
/// copy phase enables one subscription per source at a time: initial-copy slots are named
/// `pg_<subscription oid>_sync_<table oid>_<subscriber system id>`, and targets cloned from
/// one server share system id and oids, so two of them copying from one source at once would
/// fight over the same slot names.
pub(crate) fn create_subscription(plan: &Plan, db: usize, m: usize, conninfo: &str) -> String {
    let name = plan.object_name(db, m);
    format!(
        "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = true, \
         create_slot = true, slot_name = {}, enabled = false)",
        ident(&name),
        literal(conninfo),
        ident(&name),
        literal(&name)
    )
}

pub(crate) fn enable_subscription(name: &str) -> String {
    format!("ALTER SUBSCRIPTION {} ENABLE", ident(name))
}

pub(crate) fn drop_subscription(name: &str) -> String {
    format!("DROP SUBSCRIPTION IF EXISTS {}", ident(name))
}

/// When the source cannot be reached, DROP SUBSCRIPTION fails trying to drop the slot there;
/// detaching the slot first lets it drop locally (the slot is then dropped on the source later).
pub(crate) fn detach_subscription(name: &str) -> Vec<String> {
    vec![
        format!("ALTER SUBSCRIPTION {} DISABLE", ident(name)),
        format!("ALTER SUBSCRIPTION {} SET (slot_name = NONE)", ident(name)),
    ]
}

/// Params `$1` subscription name. Returns the subscription's oid (for its tablesync slots'
/// names), or nothing.
pub(crate) const SUBSCRIPTION_OID: &str =
    "SELECT oid::int8 FROM pg_subscription WHERE subname = $1";

/// This server's system identifier (part of tablesync slot names; tells servers apart).
pub(crate) const SYSTEM_ID: &str = "SELECT system_identifier::text FROM pg_control_system()";

/// The job's replication slots on a source: params `$1` LIKE pattern of the job's own slots,
/// `$2` array of LIKE patterns of its subscriptions' tablesync slots. Returns name, active pid.
pub(crate) const JOB_SLOTS: &str = "SELECT slot_name::text, active_pid FROM pg_replication_slots \
     WHERE slot_name LIKE $1 OR slot_name LIKE ANY($2::text[])";

pub(crate) const TERMINATE: &str = "SELECT pg_terminate_backend($1)";
pub(crate) const DROP_SLOT: &str = "SELECT pg_drop_replication_slot($1)";

/// `LIKE` pattern of a job's slots (`_` escaped).
pub(crate) fn like_prefix(prefix: &str) -> String {
    format!("{}\\_%", prefix.replace('_', "\\_"))
}

/// `LIKE` pattern of every tablesync slot of subscriber `sysid`.
pub(crate) fn tablesync_like_any(sysid: &str) -> String {
    format!("pg\\_%\\_sync\\_%\\_{sysid}")
}

/// Rows of `table` in `slots`: count and an order-independent checksum of the whole rows
/// (`sum` of their text's hash, as numeric text so it cannot overflow).
pub(crate) fn count_and_checksum(plan: &Plan, table: &TablePlan, slots: &[i64]) -> String {
    format!(
        "SELECT count(*)::int8, coalesce(sum(hashtextextended(sg_row::text, 0)), 0)::text \
         FROM {} AS sg_row WHERE {}",
        table.qualified(),
        plan.predicate(table, slots)
    )
}

pub(crate) fn count(plan: &Plan, table: &TablePlan, slots: &[i64]) -> String {
    format!(
        "SELECT count(*)::int8 FROM {} WHERE {}",
        table.qualified(),
        plan.predicate(table, slots)
    )
}

pub(crate) fn any_row(plan: &Plan, table: &TablePlan, slots: &[i64]) -> String {
    format!(
        "SELECT EXISTS (SELECT 1 FROM {} WHERE {})",
        table.qualified(),
        plan.predicate(table, slots)
    )
}

/// One batch of deleting the rows of `slots` (run with `shardgate.bypass` on).
pub(crate) fn delete_batch(plan: &Plan, table: &TablePlan, slots: &[i64], batch: u32) -> String {
    let t = table.qualified();
    format!(
        "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE {} LIMIT {batch}))",
        plan.predicate(table, slots)
    )
}

/// Params `$1` subscription name: whether it is enabled, its tables not yet ready, and all its
/// tables. No row when the subscription is missing.
pub(crate) const SUBSCRIPTION_SYNC_STATE: &str =
    "SELECT s.subenabled, count(sr.srrelid) FILTER (WHERE sr.srsubstate <> 'r')::int8, \
     count(sr.srrelid)::int8 FROM pg_subscription s \
     LEFT JOIN pg_subscription_rel sr ON sr.srsubid = s.oid \
     WHERE s.subname = $1 AND s.subdbid = (SELECT oid FROM pg_database \
     WHERE datname = current_database()) GROUP BY s.subenabled";

/// Params `$1` subscription name, `$2` the sharded tables (`schema.name`, quoted): those the
/// subscription (in this database) does not hold in state `r` — ready: initially copied, and
/// streamed since. All of them when the subscription is missing.
pub(crate) const SUBSCRIBED_NOT_READY: &str =
    "SELECT t.name FROM unnest($2::text[]) AS t(name) WHERE NOT EXISTS (SELECT 1 \
     FROM pg_subscription s JOIN pg_subscription_rel sr ON sr.srsubid = s.oid \
     WHERE s.subname = $1 AND s.subdbid = (SELECT oid FROM pg_database \
     WHERE datname = current_database()) AND sr.srrelid = to_regclass(t.name) \
     AND sr.srsubstate = 'r') ORDER BY 1";

/// Params `$1` subscription name: apply and sync errors so far (PostgreSQL 15+).
pub(crate) const SUBSCRIPTION_ERRORS: &str =
    "SELECT apply_error_count::int8, sync_error_count::int8 FROM pg_stat_subscription_stats \
     WHERE subname = $1";

/// Params `$1` subscription name: its tables not yet ready — name, state, table oid — and the
/// subscription's oid (the parts of their initial-copy slots' names).
pub(crate) const SUBSCRIPTION_NOT_READY: &str =
    "SELECT sr.srrelid::regclass::text, sr.srsubstate::text, sr.srrelid::int8, s.oid::int8 \
     FROM pg_subscription_rel sr JOIN pg_subscription s ON s.oid = sr.srsubid \
     WHERE s.subname = $1 AND sr.srsubstate <> 'r' ORDER BY 1";

/// Params `$1` slot names: those that exist, and the pid using each.
pub(crate) const SLOTS_NAMED: &str = "SELECT slot_name::text, active_pid \
     FROM pg_replication_slots WHERE slot_name = ANY($1::text[])";

/// The initial-copy slot PostgreSQL names for table `relid` of subscription `suboid` on the
/// subscriber with system identifier `sysid`.
pub(crate) fn tablesync_slot(suboid: i64, relid: i64, sysid: &str) -> String {
    format!("pg_{suboid}_sync_{relid}_{sysid}")
}

/// Params `$1` slot name: WAL bytes between everything inserted on the source so far and what
/// the target confirmed.
pub(crate) const SLOT_LAG: &str = "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), \
     confirmed_flush_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1";

/// Params `$1` subscription name: seconds since the target last heard of a source position.
pub(crate) const SUBSCRIPTION_LAG_SECONDS: &str =
    "SELECT coalesce(extract(epoch FROM now() - latest_end_time)::float8, 0) \
     FROM pg_stat_subscription WHERE subname = $1 AND relid IS NULL";

/// The end of everything inserted into the WAL so far. Not `pg_current_wal_lsn()`, the write
/// position: a commit made with synchronous_commit = off may not be written yet.
pub(crate) const CURRENT_LSN: &str = "SELECT pg_current_wal_insert_lsn()::text";

/// A marker write committed with synchronous_commit = on (the control connections' setting):
/// its commit flushes the WAL up to itself, so a position read before it is surely sent to the
/// targets (logical decoding reads only flushed WAL, and nothing else may flush a quiet tail
/// soon). Skipped when the marker table is gone (a cleanup run again after dropping it).
pub(crate) fn flush_marker(plan: &Plan, source: &str) -> String {
    let (job, source) = (literal(&plan.job_id), literal(source));
    format!(
        "DO $sg$ BEGIN
  IF to_regclass('shardgate.marker') IS NOT NULL THEN
    DELETE FROM shardgate.marker WHERE job = {job} AND source = {source} AND seq = {FLUSH_SEQ};
    INSERT INTO shardgate.marker (job, source, seq) VALUES ({job}, {source}, {FLUSH_SEQ});
  END IF;
END $sg$"
    )
}

/// Marker numbers: cutover attempts count from 1, catch-up probes from `PROBE_SEQ_START`, and
/// the cleanup's flush marker is `FLUSH_SEQ`.
pub(crate) const PROBE_SEQ_START: i64 = 1_000_000;
pub(crate) const FLUSH_SEQ: i64 = 2_000_000_000;

/// Params `$1` slot name, `$2` LSN text: whether the target has confirmed everything up to it.
pub(crate) const SLOT_REACHED: &str = "SELECT coalesce(confirmed_flush_lsn >= $2::text::pg_lsn, \
     false) FROM pg_replication_slots WHERE slot_name = $1";

/// Transactions in this database that began before `$1` (timestamptz text) and are still open:
/// one that took its snapshot before the fence committed may still write a fenced key.
pub(crate) const OLD_TRANSACTIONS: &str = "SELECT count(*)::int8, min(pid) FROM pg_stat_activity \
     WHERE datname = current_database() AND pid <> pg_backend_pid() \
     AND backend_type = 'client backend' AND xact_start < $1::text::timestamptz";

pub(crate) const NOW_TEXT: &str = "SELECT clock_timestamp()::text";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Move;
    use shardgate_config::{KeyType, Shard};

    fn plan() -> Plan {
        let shard = |n: &str| Shard {
            name: n.into(),
            primary: Default::default(),
            replicas: vec![],
            admin_user: None,
            admin_password: None,
        };
        Plan {
            job_id: "rb-1700000000000".into(),
            bits: 14,
            seed: 0,
            tables: vec![TablePlan {
                schema: "public".into(),
                name: "orders".into(),
                key_column: "user_id".into(),
                key_type: KeyType::Text,
            }],
            moves: vec![Move {
                index: 0,
                source: shard("s1"),
                target: shard("s3"),
                slots: vec![-3, 5],
            }],
            databases: vec!["app".into()],
        }
    }

    #[test]
    fn publication_and_subscription() {
        let p = plan();
        assert_eq!(
            create_publication(&p, 0, 0),
            "CREATE PUBLICATION \"sg_rb_1700000000000_d0_m0\" FOR TABLE \"public\".\"orders\" \
             WHERE (((hashtextextended((\"user_id\")::text, 0)) >> 50) IN (-3,5)), \
             shardgate.marker WHERE (job = 'rb-1700000000000') WITH (publish = 'insert, update, delete')"
        );
        let s = create_subscription(&p, 0, 0, "host='h' password='it\\'s'");
        assert!(
            s.contains("CONNECTION 'host=''h'' password=''it\\''s'''"),
            "{s}"
        );
        assert!(s.contains("slot_name = 'sg_rb_1700000000000_d0_m0'"), "{s}");
        // Created disabled, slot included: the copy phase enables them one source at a time.
        assert!(
            s.contains("create_slot = true") && s.contains("enabled = false"),
            "{s}"
        );
    }

    #[test]
    fn positions_include_unwritten_commits() {
        for q in [CURRENT_LSN, SLOT_LAG] {
            assert!(q.contains("pg_current_wal_insert_lsn()"), "{q}");
            assert!(!q.contains("pg_current_wal_lsn()"), "{q}");
        }
        let f = flush_marker(&plan(), "s1");
        assert!(f.contains("'rb-1700000000000', 's1', 2000000000"), "{f}");
        assert_eq!(tablesync_slot(16400, 16385, "7"), "pg_16400_sync_16385_7");
    }

    #[test]
    fn fence_function_checks_both_rows() {
        let p = plan();
        let f = create_fence_function(&p, 0, &p.tables[0]);
        assert!(
            f.contains("shardgate.\"sg_fence_rb_1700000000000_t0\"()"),
            "{f}"
        );
        assert!(f.contains("(hashtextextended((NEW.\"user_id\")::text, 0)) >> 50"));
        assert!(f.contains("(hashtextextended((OLD.\"user_id\")::text, 0)) >> 50"));
        assert!(f.contains("ERRCODE = 'SG001'"));
        let t = create_fence_trigger(&p, 0, &p.tables[0]);
        assert!(t.contains("ON \"public\".\"orders\" FOR EACH ROW"), "{t}");
    }

    #[test]
    fn slot_patterns() {
        assert_eq!(like_prefix("sg_rb_1"), "sg\\_rb\\_1\\_%");
        assert_eq!(tablesync_like_any("7"), "pg\\_%\\_sync\\_%\\_7");
        let d = delete_batch(&plan(), &plan().tables[0], &[1], 10);
        assert!(d.contains("LIMIT 10"), "{d}");
    }
}
