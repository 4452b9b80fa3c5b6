//! The fence against a real PostgreSQL: `shardgate.bypass = on` lets only the login that
//! installed the fence (the rebalancer's admin login) write to a fenced slot; any other role
//! that sets it still gets the fence's SQLSTATE.

use shardgate_config::{KeyType, Shard};
use shardgate_tests::{Auth, ClusterOptions, PgCluster};
use shardgate_topology::FENCE_SQLSTATE;

use crate::plan::{Move, Plan, TablePlan};
use crate::sql;

const JOB: &str = "rb-fence-test";

fn plan() -> Plan {
    let shard = |n: &str| Shard {
        name: n.into(),
        primary: Default::default(),
        replicas: vec![],
        admin_user: None,
        admin_password: None,
    };
    Plan {
        job_id: JOB.into(),
        bits: 14,
        seed: 0,
        tables: vec![TablePlan {
            schema: "public".into(),
            name: "t".into(),
            key_column: "k".into(),
            key_type: KeyType::Bigint,
        }],
        moves: vec![Move {
            index: 0,
            source: shard("s0"),
            target: shard("s1"),
            slots: vec![],
        }],
        databases: vec!["app".into()],
    }
}

#[test]
fn bypass_needs_the_rebalancers_login() {
    let c = PgCluster::start(ClusterOptions::default().user("app", "app-pw", Auth::Scram))
        .expect("start PostgreSQL");
    c.create_database("app", "app").expect("database");
    c.psql_as(
        "app",
        "app-pw",
        "app",
        "create table t (k bigint primary key, v int)",
    )
    .expect("table");
    // Installed by the superuser, as the rebalancer's admin login would: key 1's slot fenced.
    let p = plan();
    let mut install = sql::create_fence_table().join(";\n");
    install.push_str(&format!(
        ";\nINSERT INTO shardgate.fence (job, slot, target) \
         VALUES ('{JOB}', hashint8extended(1, 0) >> 50, 's1');\n\
         INSERT INTO shardgate.fence_switch (job, closed) VALUES ('{JOB}', true);\n{};\n{};",
        sql::create_fence_function(&p, 0, &p.tables[0]),
        sql::create_fence_trigger(&p, 0, &p.tables[0]),
    ));
    c.psql("app", &install).expect("install the fence");

    // The application role cannot bypass it, through SET or through startup options.
    let err = c
        .psql_as(
            "app",
            "app-pw",
            "app",
            "\\set VERBOSITY verbose\nSET shardgate.bypass = 'on';\ninsert into t values (1, 1)",
        )
        .expect_err("the fence holds for the application role");
    let err = err.to_string();
    assert!(err.contains(FENCE_SQLSTATE), "{err}");
    let url = format!(
        "postgres://app:app-pw@{}:{}/app?options=-c%20shardgate.bypass%3Don",
        c.host(),
        c.port()
    );
    let err =
        shardgate_tests::psql_url(&url, "\\set VERBOSITY verbose\ninsert into t values (1, 2)")
            .expect_err("startup options do not bypass it either")
            .to_string();
    assert!(err.contains(FENCE_SQLSTATE), "{err}");
    assert_eq!(c.psql("app", "select count(*) from t").expect("count"), "0");

    // The admin login (the fence's owner) with bypass on writes; without it, it is fenced too.
    c.psql(
        "app",
        "BEGIN; SET LOCAL shardgate.bypass = 'on'; insert into t values (1, 3); COMMIT;",
    )
    .expect("the rebalancer's login bypasses the fence");
    let err = c
        .psql(
            "app",
            "\\set VERBOSITY verbose\nupdate t set v = 4 where k = 1",
        )
        .expect_err("without bypass the owner is fenced as well")
        .to_string();
    assert!(err.contains(FENCE_SQLSTATE), "{err}");
    assert_eq!(
        c.psql("app", "select v from t where k = 1").expect("read"),
        "3"
    );
}
