//! Reference tables: placement of reads (no shard of their own), joins with sharded tables
//! (the sharded part decides), writes and DDL (every shard, one copy's answer), and the
//! refusals that keep the copies identical.

use super::config;
use crate::plan::{KeyValue, Placement, StatementKind};
use crate::{default_is_constant, BoundParams, Route, Router};

fn router() -> Router {
    let extra = "keyless_writes = \"refuse\"\n[[sharding.reference_tables]]\nname = \"plans\"\n[[sharding.reference_tables]]\nname = \"public.countries\"\n";
    match Router::new(&config(extra)) {
        Ok(r) => r,
        Err(e) => panic!("router: {e}"),
    }
}

fn route(r: &Router, sql: &str) -> Result<Route, crate::RouteError> {
    r.route(&r.plan(sql), &BoundParams::NONE, None)
}

#[test]
fn reads_of_reference_tables_alone_need_no_particular_shard() {
    let r = router();
    for sql in [
        "SELECT * FROM plans",
        "SELECT p.name, c.code FROM plans p JOIN public.countries c ON c.id = p.country_id",
        "SELECT count(*) FROM plans WHERE price > 10",
    ] {
        let plan = r.plan(sql);
        assert_eq!(plan.placement, Placement::Default, "{sql}");
        assert!(
            !plan.unsharded_tables,
            "{sql}: a reference table is not unsharded"
        );
        assert!(!plan.reference_tables.is_empty(), "{sql}");
        assert!(plan.reference_write.is_none(), "{sql}");
        assert!(plan.runs_on_replica(), "{sql}");
        assert_eq!(route(&r, sql).unwrap(), Route::Shard(r.default_shard()));
    }
    // A schema that does not match is just another table.
    let plan = r.plan("SELECT * FROM other.countries");
    assert!(plan.unsharded_tables && plan.reference_tables.is_empty());
    // Mixed with an unsharded table: the default shard, where that table lives.
    assert!(
        r.plan("SELECT * FROM plans JOIN audit USING (id)")
            .unsharded_tables
    );
}

#[test]
fn joins_with_sharded_tables_route_by_the_sharded_key() {
    let r = router();
    let sql = "SELECT u.*, p.name FROM users u JOIN plans p ON p.plan_id = u.plan_id WHERE u.user_id = 42";
    let plan = r.plan(sql);
    assert_eq!(plan.reference_tables, ["plans"]);
    assert!(!plan.unsharded_tables);
    let shard = r.shard_for_key(&KeyValue::Int(42));
    assert_eq!(route(&r, sql).unwrap(), Route::Shard(shard));
    // Without the key: every shard, merged as without the reference table.
    let scatter =
        "SELECT p.name, count(*) FROM users u JOIN plans p USING (plan_id) GROUP BY p.name";
    let plan = r.plan(scatter);
    assert_eq!(plan.placement, Placement::AllShards);
    assert!(plan.merge.is_some() && plan.reference_write.is_none());
    assert_eq!(route(&r, scatter).unwrap(), Route::AllShards);
    // Writing a sharded table from a reference table: routed as the sharded write.
    let ins = "INSERT INTO orders (user_id, total) SELECT 7, price FROM plans WHERE plan_id = 1";
    let plan = r.plan(ins);
    assert!(plan.reference_write.is_none() && plan.refusal.is_none());
    assert_eq!(
        route(&r, ins).unwrap(),
        Route::Shard(r.shard_for_key(&KeyValue::Int(7)))
    );
}

#[test]
fn writes_and_ddl_on_reference_tables_go_to_every_shard() {
    let r = router();
    for sql in [
        "INSERT INTO plans (plan_id, name, price) VALUES (1, 'free', 0), (2, 'pro', 10)",
        "UPDATE plans SET price = price + 1 WHERE plan_id = 2",
        "DELETE FROM plans WHERE plan_id = 2",
        "INSERT INTO public.countries (id, code) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET code = EXCLUDED.code",
        "INSERT INTO plans SELECT plan_id + 100, name, price FROM plans",
        "WITH gone AS (DELETE FROM plans WHERE price > 100 RETURNING *) SELECT count(*) FROM gone",
    ] {
        let plan = r.plan(sql);
        assert_eq!(plan.refusal, None, "{sql}");
        assert_eq!(plan.placement, Placement::AllShards, "{sql}");
        assert!(plan.reference_write.is_some(), "{sql}");
        // keyless_writes = "refuse" is about sharded tables: not refused.
        assert_eq!(route(&r, sql).unwrap(), Route::AllShards, "{sql}");
    }
    for sql in [
        "CREATE TABLE plans (plan_id int PRIMARY KEY, name text)",
        "ALTER TABLE plans ADD COLUMN seats int",
        "CREATE INDEX ON plans (name)",
        "DROP TABLE plans",
        "TRUNCATE plans",
    ] {
        let plan = r.plan(sql);
        assert_eq!(plan.kind, StatementKind::Ddl, "{sql}");
        assert!(plan.reference_write.is_some(), "{sql}");
        assert_eq!(route(&r, sql).unwrap(), Route::AllShards, "{sql}");
    }
    // The INSERT's columns, for the proxy's check of omitted defaults.
    let plan = r.plan("INSERT INTO public.plans (plan_id, name) VALUES (1, 'a')");
    let ins = plan
        .reference_write
        .as_ref()
        .unwrap()
        .insert
        .clone()
        .unwrap();
    assert_eq!(ins.regclass, "\"public\".\"plans\"");
    assert_eq!(
        ins.columns.as_deref(),
        Some(&["plan_id".to_owned(), "name".to_owned()][..])
    );
    assert!(ins.gives(5, "name") && !ins.gives(0, "price"));
    let plan = r.plan("INSERT INTO plans VALUES (1, 'a'), (2, 'b', 3)");
    let ins = plan
        .reference_write
        .as_ref()
        .unwrap()
        .insert
        .clone()
        .unwrap();
    assert_eq!((ins.columns.clone(), ins.width), (None, Some(2)));
    assert!(ins.gives(1, "x") && !ins.gives(2, "price"));
    let plan = r.plan("INSERT INTO plans DEFAULT VALUES");
    let ins = plan
        .reference_write
        .as_ref()
        .unwrap()
        .insert
        .clone()
        .unwrap();
    assert!(!ins.gives(0, "plan_id"));
}

#[test]
fn writes_that_could_make_the_copies_differ_are_refused() {
    let r = router();
    for (sql, needle) in [
        ("UPDATE plans SET price = o.total FROM orders o WHERE o.user_id = 1", "sharded table orders"),
        ("INSERT INTO plans (plan_id, name) SELECT user_id, 'x' FROM users", "sharded table users"),
        ("INSERT INTO plans (plan_id, name) SELECT id, name FROM staging", "default shard only"),
        ("INSERT INTO plans (plan_id, created) VALUES (1, now())", "now()"),
        ("UPDATE plans SET updated = CURRENT_TIMESTAMP", "current_timestamp()"),
        ("INSERT INTO plans (plan_id, token) VALUES (2, gen_random_uuid())", "gen_random_uuid()"),
        ("INSERT INTO plans (plan_id, name) VALUES (nextval('plans_seq'), 'x')", "nextval()"),
        ("UPDATE plans SET price = random()", "random()"),
        ("INSERT INTO plans (plan_id, name) VALUES (3, DEFAULT)", "DEFAULT"),
        ("WITH x AS (INSERT INTO plans (plan_id) VALUES (1) RETURNING 1) INSERT INTO orders (user_id) VALUES (5)", "sharded table orders"),
    ] {
        let e = route(&r, sql).unwrap_err();
        assert_eq!(e.code, "0A000", "{sql}");
        assert!(e.message.contains(needle), "{sql}: {}", e.message);
        assert!(e.hint.is_some(), "{sql}");
    }
    // A hint does not lift it: the copies would still differ.
    let plan = r.plan("/* shardgate: shard=s1 */ UPDATE plans SET price = random()");
    assert!(r.route(&plan, &BoundParams::NONE, None).is_err());
}

#[test]
fn constant_defaults_are_told_from_per_shard_ones() {
    for c in [
        "0",
        "'free'::text",
        "(0)::numeric",
        "'{}'::jsonb",
        "true",
        "'now()'::text",
        "NULL::integer",
    ] {
        assert!(default_is_constant(c), "{c}");
    }
    for v in [
        "nextval('plans_plan_id_seq'::regclass)",
        "now()",
        "CURRENT_TIMESTAMP",
        "gen_random_uuid()",
        "(random() * (10)::double precision)",
        "CURRENT_USER",
    ] {
        assert!(!default_is_constant(v), "{v}");
    }
}

#[test]
fn a_table_cannot_be_both() {
    let extra = "[[sharding.reference_tables]]\nname = \"orders\"\n";
    let text = super::CONFIG.replace(
        "route_cache_size = 100\n",
        &format!("route_cache_size = 100\n{extra}"),
    );
    let e = shardgate_config::Config::from_toml(&text, std::path::Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("both a reference table and a sharded table"),
        "{e}"
    );
}

#[test]
fn per_shard_defaults_are_written_into_the_insert() {
    use crate::{fill_defaults, values_rows, FilledColumn};
    let r = router();
    let ins_of = |sql: &str| {
        r.plan(sql)
            .reference_write
            .as_ref()
            .and_then(|w| w.insert.clone())
            .unwrap()
    };
    let id = |vals: &[&str]| FilledColumn {
        name: "plan_id".into(),
        values: vals.iter().map(|v| v.to_string()).collect(),
    };
    let sql = "INSERT INTO plans (name, price) VALUES ('a', $1), /* b */ ('b(', 2) ON CONFLICT DO NOTHING RETURNING plan_id";
    let ins = ins_of(sql);
    assert_eq!(values_rows(sql, &ins).unwrap(), 2);
    assert_eq!(
        fill_defaults(sql, &ins, &[], &[id(&["'7'::integer", "'8'::integer"])]).unwrap(),
        "INSERT INTO plans (name, price, \"plan_id\") VALUES ('a', $1, '7'::integer), /* b */ ('b(', 2, '8'::integer) ON CONFLICT DO NOTHING RETURNING plan_id"
    );
    // Without a column list: one is written, the given values first.
    let sql = "insert into plans values (1, 'x')";
    let ins = ins_of(sql);
    let cols = ["plan_id".to_owned(), "name".to_owned(), "price".to_owned()];
    let created = FilledColumn {
        name: "created".into(),
        values: vec!["'2025-01-01'::timestamptz".into()],
    };
    assert_eq!(
        fill_defaults(sql, &ins, &cols, &[created]).unwrap(),
        "insert into plans (\"plan_id\", \"name\", \"created\") values (1, 'x', '2025-01-01'::timestamptz)"
    );
    // INSERT … SELECT and DEFAULT VALUES cannot be filled.
    let sql = "insert into plans (name) select name from plans";
    assert_eq!(values_rows(sql, &ins_of(sql)).unwrap_err().code, "0A000");
    let sql = "insert into plans default values";
    assert_eq!(values_rows(sql, &ins_of(sql)).unwrap_err().code, "0A000");
}

#[test]
fn one_copy_writes_are_refused_and_session_hints_do_not_narrow_writes() {
    let r = router();
    for sql in [
        "COPY plans FROM STDIN",
        "EXPLAIN ANALYZE UPDATE plans SET price = 1",
    ] {
        let e = route(&r, sql).unwrap_err();
        assert_eq!(e.code, "0A000", "{sql}");
        assert!(e.message.contains("one shard only"), "{sql}: {}", e.message);
    }
    // COPY out of a reference table reads one copy.
    assert_eq!(
        route(&r, "COPY plans TO STDOUT").unwrap(),
        Route::Shard(r.default_shard())
    );
    // A comment hint picks one copy on purpose.
    let plan = r.plan("/* shardgate: shard=s2 */ COPY plans FROM STDIN");
    assert_eq!(
        r.route(&plan, &BoundParams::NONE, None).unwrap(),
        Route::Shard(2)
    );
    // A session hint does not narrow a reference write (it does a read).
    let session = crate::plan::Hint::ShardKey("42".into());
    let write = r.plan("UPDATE plans SET price = 2 WHERE plan_id = 1");
    assert_eq!(
        r.route(&write, &BoundParams::NONE, Some(&session)).unwrap(),
        Route::AllShards
    );
    let read = r.plan("SELECT * FROM plans");
    assert_eq!(
        r.route(&read, &BoundParams::NONE, Some(&session)).unwrap(),
        Route::Shard(r.shard_for_key(&KeyValue::Int(42)))
    );
}
