//! The table of statements and what the planner must make of them.

use super::{int, router, text};
use crate::plan::{KeyExpr, KeyValue, Placement, ShardgateParam, ShardgateSetting, StatementKind};
use KeyExpr::{Param as P, ParamArray as PA};

/// Expected placement (and refusal) of a statement.
#[derive(Debug)]
enum Exp {
    Default,
    /// Keys, any subset of shards.
    Keys(Vec<KeyExpr>),
    /// Keys that must all land on one shard.
    Single(Vec<KeyExpr>),
    /// Every shard, mergeable.
    All,
    /// Every shard or keys, but a multi-shard run is refused for a reason containing this.
    Cross(&'static str),
    /// A refusal with this SQLSTATE.
    Refused(&'static str),
}

const R: StatementKind = StatementKind::Read {
    locking: false,
    side_effects: false,
};
const RL: StatementKind = StatementKind::Read {
    locking: true,
    side_effects: false,
};
const RS: StatementKind = StatementKind::Read {
    locking: false,
    side_effects: true,
};
const W: StatementKind = StatementKind::Write;
const D: StatementKind = StatementKind::Ddl;
const U: StatementKind = StatementKind::Utility;
const TX: StatementKind = StatementKind::TransactionOther;

fn uuid() -> KeyExpr {
    KeyExpr::Value(KeyValue::Uuid([
        0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a,
        0x11,
    ]))
}

fn set(name: ShardgateParam, value: Option<&str>, local: bool) -> StatementKind {
    StatementKind::ShardgateSet(ShardgateSetting {
        name,
        value: value.map(str::to_owned),
        local,
    })
}

fn cases() -> Vec<(&'static str, StatementKind, Exp)> {
    use Exp::*;
    vec![
        // Keys from predicates: literals, parameters, casts, IN, ANY.
        ("SELECT * FROM orders WHERE user_id = 42", R, Keys(vec![int(42)])),
        ("SELECT * FROM orders WHERE 42 = user_id", R, Keys(vec![int(42)])),
        ("SELECT * FROM orders WHERE user_id = $1", R, Keys(vec![P(1)])),
        ("SELECT * FROM orders WHERE user_id = 42::bigint", R, Keys(vec![int(42)])),
        ("SELECT * FROM orders WHERE user_id = $1::int8", R, Keys(vec![P(1)])),
        ("SELECT * FROM orders WHERE user_id = CAST($2 AS integer)", R, Keys(vec![P(2)])),
        ("SELECT * FROM orders WHERE user_id = '42'::int", R, Keys(vec![int(42)])),
        ("SELECT * FROM orders WHERE user_id = '42'", R, Keys(vec![int(42)])),
        ("SELECT * FROM orders WHERE user_id::bigint = -7", R, Keys(vec![int(-7)])),
        ("SELECT * FROM orders WHERE user_id IN (1, $2, 3)", R, Keys(vec![int(1), P(2), int(3)])),
        ("SELECT * FROM orders WHERE user_id = ANY($1)", R, Keys(vec![PA(1)])),
        ("SELECT * FROM orders WHERE user_id = ANY($1::bigint[])", R, Keys(vec![PA(1)])),
        ("SELECT * FROM orders WHERE user_id = ANY('{1,2}')", R, Keys(vec![int(1), int(2)])),
        ("SELECT * FROM orders WHERE user_id = ANY(ARRAY[5, 6])", R, Keys(vec![int(5), int(6)])),
        ("SELECT * FROM orders WHERE user_id = 1.5", R, All),
        ("SELECT * FROM orders WHERE user_id = 'abc'", R, Refused("22P02")),
        ("SELECT * FROM orders WHERE user_id = NULL", R, Keys(vec![])),
        // Names: aliases, qualified columns, schemas, case, quoting.
        ("SELECT * FROM orders o WHERE o.user_id = 5", R, Keys(vec![int(5)])),
        ("SELECT * FROM orders WHERE orders.user_id = 5", R, Keys(vec![int(5)])),
        ("SELECT * FROM public.orders WHERE public.orders.user_id = 5", R, Keys(vec![int(5)])),
        ("SELECT * FROM sales.orders WHERE user_id = 5", R, Keys(vec![int(5)])),
        ("SELECT * FROM public.items WHERE user_id = 3", R, Keys(vec![int(3)])),
        ("SELECT * FROM items WHERE items.user_id = 3", R, Keys(vec![int(3)])),
        ("SELECT * FROM other.items WHERE user_id = 3", R, Default),
        ("SELECT * FROM ORDERS WHERE USER_ID = 9", R, Keys(vec![int(9)])),
        ("SELECT * FROM orders WHERE \"USER_ID\" = 9", R, All),
        ("SELECT * FROM \"Events\" WHERE tenant = 'acme'", R, Keys(vec![text("acme")])),
        ("SELECT * FROM events WHERE tenant = 'acme'", R, Default),
        ("SELECT * FROM sessions WHERE sid = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", R, Keys(vec![uuid()])),
        ("SELECT * FROM sessions WHERE sid = uuid '{a0eebc999c0b4ef8bb6d6bb9bd380a11}'", R, Keys(vec![uuid()])),
        ("SELECT * FROM sessions WHERE sid = 'nope'", R, Refused("22P02")),
        ("SELECT * FROM countries WHERE id = 1", R, Default),
        ("SELECT 1", R, Default),
        ("VALUES (1), (2)", R, Default),
        ("TABLE orders", R, All),
        // Logic.
        ("SELECT * FROM orders WHERE user_id = 1 AND status = 'x'", R, Keys(vec![int(1)])),
        ("SELECT * FROM orders WHERE (user_id = 1 OR user_id = 2) AND total > 3", R, Keys(vec![int(1), int(2)])),
        ("SELECT * FROM orders WHERE user_id = 1 OR status = 'x'", R, All),
        ("SELECT * FROM orders WHERE NOT user_id = 1", R, All),
        ("SELECT * FROM orders WHERE user_id <> 1", R, All),
        ("SELECT * FROM orders WHERE user_id IN (1, 2, 3) AND user_id IN (2, 3, 4)", R, Keys(vec![int(2), int(3)])),
        ("SELECT * FROM orders WHERE user_id = 1 AND user_id = 2", R, Keys(vec![int(1)])),
        ("SELECT * FROM orders WHERE user_id = $1 AND user_id IN (1, 2)", R, Keys(vec![P(1)])),
        ("SELECT * FROM orders", R, All),
        // Joins.
        ("SELECT * FROM orders o JOIN users u ON o.user_id = u.user_id WHERE u.user_id = 7", R, Keys(vec![int(7)])),
        ("SELECT * FROM orders o JOIN users u USING (user_id) WHERE o.user_id = 7", R, Keys(vec![int(7)])),
        ("SELECT * FROM orders JOIN users USING (user_id) WHERE user_id = $3", R, Keys(vec![P(3)])),
        ("SELECT * FROM orders o JOIN users u ON o.user_id = u.user_id", R, All),
        ("SELECT * FROM orders o JOIN users u ON o.id = u.id", R, Cross("join of sharded tables")),
        ("SELECT * FROM orders o, users u WHERE o.user_id = 1", R, Cross("join of sharded tables")),
        ("SELECT * FROM orders o, users u WHERE o.user_id = 1 AND u.user_id = 1", R, Single(vec![int(1)])),
        ("SELECT * FROM orders o JOIN users u ON o.id = u.id WHERE o.user_id = 1 AND u.user_id = 2", R, Single(vec![int(1), int(2)])),
        ("SELECT * FROM orders o LEFT JOIN users u ON o.user_id = u.user_id WHERE o.user_id = 3", R, Keys(vec![int(3)])),
        ("SELECT * FROM orders o LEFT JOIN users u ON o.user_id = u.user_id AND u.user_id = 3", R, All),
        ("SELECT * FROM orders o JOIN countries c ON c.code = o.country WHERE user_id = 5", R, Keys(vec![int(5)])),
        ("SELECT * FROM generate_series(1, 3) g, orders WHERE user_id = 2", R, Keys(vec![int(2)])),
        ("SELECT * FROM orders NATURAL JOIN users WHERE user_id = 3", R, Keys(vec![int(3)])),
        ("SELECT * FROM orders o JOIN LATERAL (SELECT * FROM items i WHERE i.user_id = o.user_id LIMIT 3) x ON true", R, All),
        // Subqueries and CTEs.
        ("SELECT * FROM orders WHERE user_id = 5 AND total > (SELECT avg(total) FROM orders)", R, Cross("subquery")),
        ("SELECT * FROM orders WHERE user_id = $1 AND total > (SELECT avg(total) FROM orders WHERE user_id = $1)", R, Single(vec![P(1)])),
        ("SELECT * FROM users u WHERE u.user_id = 5 AND EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.user_id)", R, Keys(vec![int(5)])),
        ("SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.user_id LIMIT 1)", R, All),
        ("SELECT u.name, (SELECT count(*) FROM orders o WHERE o.user_id = u.user_id) FROM users u WHERE u.user_id = $1", R, Keys(vec![P(1)])),
        ("SELECT * FROM orders WHERE user_id IN (SELECT user_id FROM users WHERE user_id = 4)", R, Keys(vec![int(4)])),
        ("SELECT * FROM orders WHERE user_id IN (SELECT user_id FROM users WHERE vip)", R, All),
        ("SELECT * FROM orders WHERE user_id IN (SELECT user_id FROM users ORDER BY created LIMIT 10)", R, Cross("not tied")),
        ("SELECT (SELECT max(total) FROM orders WHERE user_id = 2)", R, Keys(vec![int(2)])),
        ("WITH x AS (SELECT * FROM orders WHERE user_id = 5) SELECT * FROM x", R, Keys(vec![int(5)])),
        ("WITH x AS (SELECT * FROM orders WHERE user_id = 5) SELECT * FROM x JOIN users u ON u.user_id = x.user_id", R, Keys(vec![int(5)])),
        ("WITH x AS (SELECT count(*) AS n FROM orders) SELECT n FROM x", R, Cross("subquery or CTE")),
        ("SELECT * FROM (SELECT * FROM orders WHERE user_id = 8) sub", R, Keys(vec![int(8)])),
        ("SELECT * FROM (SELECT * FROM orders LIMIT 5) sub", R, Cross("LIMIT")),
        ("WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 5) SELECT * FROM t", R, Default),
        ("SELECT * FROM orders WHERE user_id = 1 UNION ALL SELECT * FROM users WHERE user_id = 1", R, Single(vec![int(1)])),
        // What a cross-shard read cannot merge.
        ("SELECT DISTINCT status FROM orders", R, Cross("DISTINCT")),
        ("SELECT count(DISTINCT status) FROM orders", R, Cross("DISTINCT")),
        ("SELECT status, count(*) FROM orders GROUP BY status HAVING count(*) > 1", R, Cross("HAVING")),
        ("SELECT row_number() OVER () FROM orders", R, Cross("window")),
        ("SELECT string_agg(status, ',') FROM orders", R, Cross("string_agg")),
        ("SELECT sum(total) * 2 FROM orders", R, Cross("expression over aggregates")),
        ("SELECT status FROM orders UNION SELECT status FROM users", R, Cross("UNION")),
        ("SELECT id FROM orders ORDER BY lower(status)", R, Cross("ORDER BY")),
        ("SELECT id FROM orders ORDER BY created_at", R, Cross("ORDER BY")),
        ("SELECT count(*) FROM orders GROUP BY status", R, Cross("GROUP BY")),
        ("SELECT status, count(*), avg(total) FROM orders GROUP BY status ORDER BY 2 DESC LIMIT 10", R, All),
        ("SELECT * FROM orders WHERE user_id IN (1, 2) ORDER BY created_at LIMIT 5", R, Keys(vec![int(1), int(2)])),
        // Locking reads and side effects.
        ("SELECT * FROM orders WHERE user_id = 1 FOR UPDATE", RL, Keys(vec![int(1)])),
        ("SELECT * FROM orders WHERE user_id = 1 FOR NO KEY UPDATE", RL, Keys(vec![int(1)])),
        ("SELECT * FROM orders WHERE user_id = 1 FOR KEY SHARE SKIP LOCKED", RL, Keys(vec![int(1)])),
        ("SELECT * FROM orders FOR UPDATE SKIP LOCKED LIMIT 1", RL, Cross("FOR UPDATE")),
        ("SELECT nextval('order_ids')", RS, Default),
        ("SELECT pg_try_advisory_lock(1)", RS, Default),
        ("SELECT pg_catalog.set_config('a', 'b', false)", RS, Default),
        ("SELECT lo_import('/tmp/x')", RS, Default),
        ("SELECT currval('order_ids')", R, Default),
        // Writes.
        ("INSERT INTO orders (user_id, total) VALUES (1, 10)", W, Keys(vec![int(1)])),
        ("INSERT INTO orders (total, user_id) VALUES (10, $2)", W, Keys(vec![P(2)])),
        ("INSERT INTO orders (user_id, total) VALUES (1, 10), (2, 20)", W, Single(vec![int(1), int(2)])),
        ("INSERT INTO orders VALUES (1, 10)", W, Refused("0A000")),
        ("INSERT INTO orders (total) VALUES (10)", W, Refused("0A000")),
        ("INSERT INTO orders (user_id) VALUES ('x')", W, Refused("22P02")),
        ("INSERT INTO orders (user_id) VALUES (random())", W, Refused("0A000")),
        ("INSERT INTO orders (user_id, total) SELECT user_id, total FROM archive", W, All),
        ("INSERT INTO orders (user_id, total) SELECT user_id, total FROM users WHERE user_id = 3", W, Keys(vec![int(3)])),
        ("INSERT INTO countries (code) VALUES ('x')", W, Default),
        ("INSERT INTO orders (user_id, total) SELECT 5, total FROM archive", W, Keys(vec![int(5)])),
        ("WITH x AS (SELECT * FROM users WHERE user_id = 9) INSERT INTO orders (user_id) SELECT user_id FROM x", W, Keys(vec![int(9)])),
        ("DELETE FROM orders WHERE user_id = ANY($1::bigint[])", W, Keys(vec![PA(1)])),
        ("MERGE INTO orders o USING users u ON o.user_id = u.user_id WHEN MATCHED THEN DELETE", W, All),
        ("INSERT INTO orders (user_id) VALUES (1) ON CONFLICT (user_id) DO UPDATE SET user_id = EXCLUDED.user_id", W, Keys(vec![int(1)])),
        ("UPDATE orders SET total = 1 WHERE user_id = 5", W, Keys(vec![int(5)])),
        ("UPDATE orders SET total = 1", W, All),
        ("UPDATE orders SET user_id = 6 WHERE user_id = 5", W, Keys(vec![int(5)])),
        ("UPDATE orders SET user_id = user_id + 1 WHERE user_id = 5", W, Refused("0A000")),
        ("UPDATE orders o SET total = 0 FROM users u WHERE o.user_id = u.user_id AND u.user_id = 3", W, Keys(vec![int(3)])),
        ("DELETE FROM orders WHERE user_id IN (1, 2)", W, Keys(vec![int(1), int(2)])),
        ("DELETE FROM orders o USING users u WHERE o.user_id = u.user_id AND u.user_id = 3", W, Keys(vec![int(3)])),
        ("WITH d AS (DELETE FROM orders WHERE user_id = 2 RETURNING *) SELECT * FROM d", W, Keys(vec![int(2)])),
        ("COPY orders FROM STDIN", W, Refused("0A000")),
        ("COPY countries FROM STDIN", W, Default),
        ("COPY orders TO STDOUT", R, All),
        ("COPY (SELECT * FROM orders WHERE user_id = 3) TO STDOUT", R, Keys(vec![int(3)])),
        ("COPY (SELECT * FROM orders ORDER BY id) TO STDOUT", R, Cross("COPY")),
        ("SELECT * INTO newt FROM orders WHERE user_id = 1", D, Keys(vec![int(1)])),
        // DDL and utility statements.
        ("CREATE TABLE orders (id int)", D, All),
        ("CREATE TABLE t (id int)", D, Default),
        ("CREATE INDEX ON orders (created_at)", D, All),
        ("DROP TABLE IF EXISTS orders", D, All),
        ("TRUNCATE orders", D, All),
        ("ALTER TABLE orders ADD COLUMN x int", D, All),
        ("SHOW search_path", U, Default),
        ("VACUUM orders", U, All),
        // A cursor is planned as its query; over several shards a proxy holds its result.
        ("DECLARE c CURSOR FOR SELECT * FROM orders WHERE user_id = 1", R, Keys(vec![int(1)])),
        ("DECLARE c CURSOR FOR SELECT * FROM orders", R, All),
        ("DECLARE c CURSOR FOR SELECT DISTINCT status FROM orders", R, All),
        ("EXPLAIN SELECT * FROM orders WHERE user_id = 1", U, Keys(vec![int(1)])),
        ("EXPLAIN SELECT * FROM orders", U, Default),
        ("EXPLAIN ANALYZE DELETE FROM orders WHERE user_id = 1", W, Keys(vec![int(1)])),
        // Transaction control and session settings.
        ("BEGIN", StatementKind::Begin { read_only: false }, Default),
        ("BEGIN READ ONLY", StatementKind::Begin { read_only: true }, Default),
        ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY", StatementKind::Begin { read_only: true }, Default),
        ("BEGIN TRANSACTION READ ONLY DEFERRABLE", StatementKind::Begin { read_only: true }, Default),
        ("COMMIT", StatementKind::Commit, Default),
        ("END", StatementKind::Commit, Default),
        ("ROLLBACK", StatementKind::Rollback, Default),
        ("ROLLBACK TO SAVEPOINT a", TX, Default),
        ("SAVEPOINT a", TX, Default),
        ("PREPARE TRANSACTION 'x'", TX, Default),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", StatementKind::SetTransaction { read_only: false }, Default),
        ("SET TRANSACTION READ ONLY", StatementKind::SetTransaction { read_only: true }, Default),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", StatementKind::Set, Default),
        ("SET shardgate.role = replica", set(ShardgateParam::Role, Some("replica"), false), Default),
        ("SET search_path TO a, b", StatementKind::Set, Default),
        ("RESET ALL", StatementKind::Set, Default),
        ("SET shardgate.shard_key = 42", set(ShardgateParam::ShardKey, Some("42"), false), Default),
        ("SET LOCAL shardgate.shard = 's1'", set(ShardgateParam::Shard, Some("s1"), true), Default),
        ("set shardgate.shard_key to -5", set(ShardgateParam::ShardKey, Some("-5"), false), Default),
        ("RESET shardgate.shard_key", set(ShardgateParam::ShardKey, None, false), Default),
        ("SET shardgate.shard_key TO DEFAULT", set(ShardgateParam::ShardKey, None, false), Default),
        ("SET shardgate.bogus = 1", StatementKind::Set, Refused("42704")),
        // shardgate's own statements, unparseable text, hints.
        ("shardgate route SELECT * FROM orders WHERE user_id = 1;", StatementKind::ShardgateRoute("SELECT * FROM orders WHERE user_id = 1".into()), Default),
        ("DO $$ BEGIN PERFORM 1; END $$", StatementKind::Unparsed, Default),
        ("CREATE PUBLICATION p FOR TABLE orders", StatementKind::Unparsed, Default),
        ("/* shardgate: shard=s1 */ SELECT * FROM orders", R, All),
        ("SELECT * FROM orders /* shardgate: shard_keyy=1 */", R, Refused("22023")),
    ]
}

#[test]
fn statement_table() {
    let router = router();
    let mut failures = Vec::new();
    let all = cases();
    assert!(all.len() >= 60, "only {} cases", all.len());
    for (sql, kind, exp) in all {
        let plan = router.plan(sql);
        let placement_ok = match &exp {
            Exp::Default => plan.placement == Placement::Default,
            Exp::Keys(keys) | Exp::Single(keys) => match &plan.placement {
                Placement::Keys {
                    keys: got,
                    single_shard_required,
                    ..
                } => got == keys && *single_shard_required == matches!(exp, Exp::Single(_)),
                _ => false,
            },
            Exp::All => plan.placement == Placement::AllShards,
            Exp::Cross(_) | Exp::Refused(_) => true,
        };
        let extra_ok = match &exp {
            Exp::Refused(code) => plan.refusal.as_ref().map(|r| r.code) == Some(*code),
            // Either refused across shards, or gathered into PostgreSQL for that reason.
            Exp::Cross(what) => {
                plan.refusal.is_none()
                    && plan
                        .unsupported_cross_shard
                        .as_deref()
                        .or(plan.gather.as_ref().map(|g| g.reason.as_str()))
                        .is_some_and(|u| u.contains(what))
            }
            _ => plan.refusal.is_none() && plan.unsupported_cross_shard.is_none(),
        };
        if plan.kind != kind || !placement_ok || !extra_ok {
            failures.push(format!(
                "{sql}\n   want {kind:?} {exp:?}\n   got  {:?} {:?} unsupported={:?} refusal={:?}",
                plan.kind, plan.placement, plan.unsupported_cross_shard, plan.refusal
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn plans_carry_tables_hints_and_key_updates() {
    let router = router();
    let p = router
        .plan("SELECT * FROM orders o JOIN public.items i USING (user_id) WHERE o.user_id = 1");
    assert_eq!(p.sharded_tables, vec!["orders", "public.items"]);
    assert_eq!(p.command, "SELECT");
    let p = router.plan("-- shardgate: shard_key=17\nUPDATE orders SET total = 1");
    assert_eq!(p.hint, Some(crate::Hint::ShardKey("17".into())));
    let p = router.plan("UPDATE orders SET user_id = $2 WHERE user_id = $1");
    assert_eq!(p.key_updates, vec![P(2)]);
    assert_eq!(
        p.placement,
        Placement::Keys {
            key_type: crate::KeyType::Bigint,
            keys: vec![P(1)],
            single_shard_required: false
        }
    );
    let p = router.plan("SELECT * FROM \"Events\" WHERE tenant = $1");
    assert_eq!(p.key_type, Some(crate::KeyType::Text));
}

#[test]
fn replica_eligibility() {
    let router = router();
    let on_replica = |sql: &str| router.plan(sql).runs_on_replica();
    for sql in [
        "SELECT * FROM orders WHERE user_id = 1",
        "SELECT 1; SELECT 2",
        "BEGIN READ ONLY; SELECT * FROM orders WHERE user_id = 1; COMMIT",
        "BEGIN; SET TRANSACTION READ ONLY; SELECT 1; COMMIT",
        "BEGIN READ ONLY",
        "WITH x AS (SELECT 1) SELECT * FROM x",
    ] {
        assert!(on_replica(sql), "{sql} should be allowed on a replica");
    }
    for sql in [
        "SELECT * FROM orders WHERE user_id = 1 FOR UPDATE",
        "SELECT nextval('s')",
        "SELECT pg_advisory_lock(1)",
        "SELECT set_config('a.b', '1', false)",
        "INSERT INTO orders (user_id) VALUES (1)",
        "BEGIN; SELECT 1; COMMIT",
        "BEGIN",
        "SELECT 1; UPDATE orders SET x = 1 WHERE user_id = 1",
        "CREATE TABLE t (a int)",
        "SHOW search_path",
        "SET TRANSACTION READ ONLY",
    ] {
        assert!(!on_replica(sql), "{sql} belongs on the primary");
    }
}

#[test]
fn configured_side_effect_functions_go_to_the_primary() {
    let mut config = super::config("");
    config.replicas.side_effect_functions = vec!["Audit_Touch".into()];
    let router = crate::Router::new(&config).unwrap();
    let plan = router.plan("SELECT audit_touch(1)");
    assert!(!plan.runs_on_replica());
    assert!(router.plan("SELECT other_fn(1)").runs_on_replica());
}

#[test]
fn multi_statement_texts_combine() {
    let router = router();
    let p = router.plan("SELECT 1; SELECT * FROM orders WHERE user_id = 1");
    assert_eq!(p.statement_count, 2);
    assert_eq!(p.kind, R);
    assert!(
        matches!(&p.placement, Placement::Keys { keys, single_shard_required: true, .. } if keys == &vec![int(1)])
    );
    let p = router.plan("BEGIN; UPDATE orders SET total = 1 WHERE user_id = 2; COMMIT;");
    assert_eq!((p.statement_count, &p.kind), (3, &W));
    let p = router.plan(
        "SELECT 1; DO $$ BEGIN END $$; SELECT * FROM orders WHERE user_id = 1 FOR NO KEY UPDATE",
    );
    assert_eq!(p.statement_count, 3);
    assert_eq!(p.kind, StatementKind::Unparsed);
    assert!(matches!(&p.placement, Placement::Keys { .. }));
    let p = router.plan("SET shardgate.shard_key = 7; SELECT * FROM orders WHERE user_id = 7");
    assert_eq!(p.kind, R);
    assert_eq!(
        p.statement_kinds,
        vec![set(ShardgateParam::ShardKey, Some("7"), false), R]
    );
    let p = router.plan("SELECT * FROM orders; SELECT 1");
    assert_eq!(p.placement, Placement::AllShards);
    assert!(p.unsupported_cross_shard.is_some());
    let p = router.plan(" ; -- nothing\n");
    assert_eq!(p.statement_count, 1);
}

#[test]
fn grouped_limits_need_the_groups_ordered_first() {
    use crate::merge::{MergeSpec, RowCount, SortColumn, SortKey};
    let key = |p| SortKey {
        column: SortColumn::Position(p),
        descending: false,
        nulls_first: false,
    };
    let mut spec = MergeSpec {
        group_by: vec![0, 2],
        limit: Some(RowCount::Value(3)),
        ..MergeSpec::default()
    };
    assert!(!spec.limit_keeps_groups_whole());
    spec.order_by = vec![key(2), key(0), key(1)];
    assert!(spec.limit_keeps_groups_whole());
    spec.order_by = vec![key(0), key(1), key(2)];
    assert!(!spec.limit_keeps_groups_whole());
    spec.order_by = vec![key(0)];
    assert!(!spec.limit_keeps_groups_whole());
    spec.limit = None;
    assert!(spec.limit_keeps_groups_whole());
    spec.limit = Some(RowCount::Value(3));
    spec.group_by.clear();
    assert!(spec.limit_keeps_groups_whole());
}

#[test]
fn gathered_reads_keep_the_reason() {
    let router = router();
    let p = router
        .plan("select status, count(*) from orders group by status order by 2 desc, 1 limit 3");
    let g = p.gather.as_ref().expect("gathered");
    assert!(g.reason.contains("GROUP BY with LIMIT"), "{}", g.reason);
    assert_eq!(
        g.sql,
        "select status, count(*) from pg_temp.orders group by status order by 2 desc, 1 limit 3"
    );
    // Grouped by the shard key, the groups are whole on each shard: merged as plain rows.
    let p = router.plan("select o.user_id, count(*), sum(total) from orders o group by o.user_id order by 2 desc, 1 limit 3");
    let m = p.merge.as_ref().expect("merged");
    assert!(
        p.gather.is_none()
            && m.grouped_on_shards
            && m.group_by.is_empty()
            && m.aggregates.is_empty()
    );
    assert_eq!(m.limit, Some(crate::merge::RowCount::Value(3)));
    // Not when avg needs hidden columns, a join is involved, or the key is not grouped.
    for sql in [
        "select user_id, avg(total) from orders group by user_id",
        "select o.user_id, count(*) from orders o join users u on u.name = o.status group by o.user_id",
        "select status, count(*) from orders group by status",
    ] {
        let p = router.plan(sql);
        assert!(!p.merge.as_ref().is_some_and(|m| m.grouped_on_shards), "{sql}");
    }
    let p = router.plan("select count(distinct user_id) from orders");
    assert!(p.gather.is_some() && p.unsupported_cross_shard.is_none());
    // Writes, locking reads, volatile side effects and several statements are not gathered.
    for sql in [
        "select distinct status from orders for update",
        "select distinct nextval('s') from orders",
        "select distinct status from orders; select 1",
    ] {
        let p = router.plan(sql);
        assert!(p.gather.is_none(), "{sql}");
    }
}

#[test]
fn merge_spec_describes_the_merge() {
    use crate::merge::{AggregateKind as A, MergeAggregate as M, RowCount, SortColumn, SortKey};
    let router = router();
    let p = router.plan("SELECT status, count(*), avg(total), max(total) FROM orders GROUP BY status ORDER BY status, 2 DESC LIMIT 10 OFFSET $1");
    let spec = p.merge.clone().unwrap_or_default();
    assert_eq!(spec.group_by, vec![0]);
    assert_eq!(
        spec.order_by,
        vec![
            SortKey {
                column: SortColumn::Position(0),
                descending: false,
                nulls_first: false
            },
            SortKey {
                column: SortColumn::Position(1),
                descending: true,
                nulls_first: true
            },
        ]
    );
    assert_eq!(spec.limit, Some(RowCount::Value(10)));
    assert_eq!(spec.offset, Some(RowCount::Param(1)));
    assert_eq!(
        spec.aggregates,
        vec![
            M {
                column: 1,
                kind: A::Count
            },
            M {
                column: 2,
                kind: A::Avg {
                    sum_column: 4,
                    count_column: 5
                }
            },
            M {
                column: 3,
                kind: A::Max
            },
        ]
    );
    assert_eq!(spec.hidden_columns, 2);
    assert_eq!(
        spec.shard_sql.as_deref(),
        Some("SELECT status, count(*), avg(total), max(total), sum(total), count(total) FROM orders GROUP BY status ORDER BY status, 2 DESC LIMIT (10 + $1)")
    );
    let p = router.plan("SELECT * FROM orders ORDER BY created_at DESC NULLS LAST LIMIT 3");
    let spec = p.merge.clone().unwrap_or_default();
    assert_eq!(
        spec.order_by,
        vec![SortKey {
            column: SortColumn::Name("created_at".into()),
            descending: true,
            nulls_first: false
        }]
    );
    assert_eq!(spec.shard_sql, None);
    let p = router.plan("SELECT * FROM orders");
    assert!(p.merge.as_ref().is_some_and(|m| m.is_concatenation()));
    assert_eq!(
        router.plan("SELECT * FROM orders WHERE user_id = 1").merge,
        None
    );
    let p = router.plan("SELECT * FROM orders WHERE user_id IN (1, 2)");
    assert!(p.merge.as_ref().is_some_and(|m| m.is_concatenation()));
    assert_eq!(router.plan("SELECT 1").merge, None);
}

#[test]
fn huge_predicates_do_not_overflow_the_stack() {
    let router = router();
    for n in [1_000usize, 20_000, 150_000] {
        let conds = vec!["x = 1"; n].join(" AND ");
        let sql = format!("SELECT * FROM orders WHERE user_id = 1 AND {conds}");
        let p = router.plan(&sql);
        assert!(
            matches!(p.kind, StatementKind::Read { .. } | StatementKind::Unparsed),
            "{n}"
        );
        let nested = format!(
            "SELECT * FROM orders WHERE {}user_id = 1{}",
            "(".repeat(n),
            ")".repeat(n)
        );
        let _ = router.plan(&nested);
    }
    let too_many = format!("SELECT 1 WHERE {}", vec!["1 = 1"; 210_000].join(" OR "));
    assert_eq!(
        router.plan(&too_many).refusal.as_ref().map(|r| r.code),
        Some("54001")
    );
}

#[test]
fn odd_input_never_panics() {
    let router = router();
    let fixed = [
        "",
        " ",
        ";",
        "'",
        "\"",
        "$",
        "$$",
        "$a$ x",
        "E'\\",
        "E'é\\é",
        "/*",
        "/* /* */",
        "--",
        "\u{0}",
        "SELECT 'é",
        "SELECT $1::",
        "SELECT * FROM orders WHERE user_id = $0",
        "SELECT * FROM orders WHERE user_id = $99999999999999999999",
        "SHARDGATE",
        "SHARDGATE ROUTE",
        "/* shardgate: */",
        "/* shardgate: shard='unterminated */",
        "INSERT INTO orders (user_id) VALUES",
        "SELECT * FROM orders WHERE user_id = ANY('{{1,2}')",
        "SELECT * FROM \"\"",
        "SET shardgate.shard_key = ",
        "TABLE",
        "WITH",
        "COPY orders FROM",
        "UPDATE orders SET user_id =",
    ];
    for sql in fixed {
        let _ = router.plan(sql);
    }
    // Deterministic soup of SQL fragments.
    let parts = [
        "SELECT",
        "*",
        "FROM",
        "orders",
        "o",
        "users",
        "WHERE",
        "user_id",
        "=",
        "$1",
        "'x'",
        "42",
        "AND",
        "OR",
        "(",
        ")",
        ",",
        "IN",
        "ANY",
        "JOIN",
        "ON",
        "o.user_id",
        "u.user_id",
        "LIMIT",
        "ORDER BY",
        "GROUP BY",
        "count(*)",
        "INSERT INTO",
        "VALUES",
        "UPDATE",
        "SET",
        "DELETE",
        "WITH x AS",
        "UNION",
        "FOR UPDATE",
        ";",
        "/*",
        "*/",
        "--\n",
        "'",
        "$$",
        "::int8",
        "NULL",
        "EXISTS",
        "DISTINCT",
        "avg(total)",
        "OFFSET",
        "RETURNING",
        "LATERAL",
        "USING (user_id)",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let n = 1 + (next() % 14) as usize;
        let sql: Vec<&str> = (0..n)
            .map(|_| parts[(next() % parts.len() as u64) as usize])
            .collect();
        let sql = sql.join(" ");
        let plan = router.plan(&sql);
        let values = [Some(&b"{1,2}"[..]), Some(&b"\x00\x01"[..])];
        let params = crate::BoundParams {
            values: &values,
            formats: &[0, 1],
            types: &[],
        };
        let _ = router.route(&plan, &params, None);
    }
}
