//! The sharding readiness report: a proxy with `[sharding] mode = "observe"` in front of one
//! PostgreSQL database runs the demo's sample workload (and some statements sharding would
//! refuse) as a plain pooler, and its report names what would run on one shard, what would
//! scatter and how, what would be refused and why, the table that looks like a reference
//! table, and the key skew.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{wait_for, ShardedEnv};
use shardgate_admin::control::ControlPlane;
use shardgate_admin::readiness::ShardingReadiness;

/// The demo's schema (`shardgate demo`), on the one database.
const SCHEMA: &str = "
create table plans (plan_id int primary key, name text not null, price numeric(8,2) not null);
insert into plans values (1, 'free', 0), (2, 'pro', 9.99), (3, 'team', 29.99);
create table users (
    user_id bigint primary key, name text not null default 'user',
    plan_id int not null default 1 references plans (plan_id),
    created_at timestamptz not null default now());
create table orders (
    order_id bigserial, user_id bigint not null, amount numeric(12,2) not null default 0,
    status text not null default 'new', created_at timestamptz not null default now(),
    primary key (user_id, order_id));
";

/// The demo's sample rows (`demo::sample_rows`), users 1..=30.
fn sample_workload() -> Vec<String> {
    const STATUSES: [&str; 3] = ["new", "paid", "shipped"];
    let mut out = Vec::new();
    for user in 1..=30i64 {
        out.push(format!(
            "insert into users (user_id, name, plan_id) values ({user}, 'user {user}', {})",
            user % 3 + 1
        ));
        for i in 0..=(user % 3) {
            let cents = (user * 7919 + i * 104_729) % 20_000 + 99;
            out.push(format!(
                "insert into orders (user_id, amount, status) values ({user}, {}.{:02}, '{}')",
                cents / 100,
                cents % 100,
                STATUSES[((user + i) % 3) as usize]
            ));
        }
    }
    // The README's psql session.
    out.push("select * from orders where user_id = 42".into());
    out.push("select count(*) from orders".into());
    out
}

async fn report(control: &dyn ControlPlane, calls: u64) -> ShardingReadiness {
    let get = || {
        control
            .sharding_readiness()
            .expect("an observing proxy serves it")
    };
    let done = wait_for(Duration::from_secs(10), || async {
        get().totals.calls >= calls
    })
    .await;
    let r = get();
    assert!(done, "not {calls} calls: {r:#?}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observing_proxy_reports_what_sharding_would_do() {
    let env = ShardedEnv::start_edited(1, SCHEMA, &["users", "orders"], "", |c| {
        c.sharding.mode = shardgate_config::ShardingMode::Observe;
        c.sharding.observe_shards = 4;
    })
    .await;
    let control = env.proxy.control(None);
    let client = env.connect().await;
    let mut calls = 0u64;
    for sql in sample_workload() {
        client
            .simple_query(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        calls += 1;
    }
    // Extended protocol: keys from Bind parameters.
    for user in [3i64, 5, 7] {
        client
            .query("select name from users where user_id = $1", &[&user])
            .await
            .expect("extended");
        calls += 1;
    }
    // A small table read alone and joined with a sharded one.
    for sql in [
        "select * from plans",
        "select u.name, p.name from users u join plans p on p.plan_id = u.plan_id where u.user_id = 7",
        "select u.name, p.name from users u join plans p on p.plan_id = u.plan_id where u.user_id = 8",
        // Sharding would refuse these; unsharded they run.
        "update orders set status = 'paid' where status = 'new'",
        "delete from users where name = 'nobody'",
    ] {
        client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        calls += 1;
    }

    // A plain pooler: every row is in the one database.
    let direct = env.connect_shard(0).await;
    let users: i64 = direct
        .query_one("select count(*) from users", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(users, 30);

    let r = report(&*control, calls).await;
    assert_eq!(r.planned_shards, 4);
    assert_eq!(r.totals.calls, calls, "{r:#?}");
    assert!(
        r.single_shard_share > 0.8 && r.single_shard_share < 1.0,
        "{r:#?}"
    );

    let refused = |q: &str| r.refused.iter().find(|s| s.query == q);
    let keyless = refused("update orders set status = $1 where status = $2")
        .unwrap_or_else(|| panic!("keyless update refused: {r:#?}"));
    let why = keyless.refusal.as_deref().unwrap_or_default();
    assert!(
        why.starts_with("0A000") && why.contains("without its shard key"),
        "{why}"
    );
    assert_eq!(
        keyless.example,
        "update orders set status = 'paid' where status = 'new'"
    );
    assert!(
        refused("delete from users where name = $1").is_some(),
        "{r:#?}"
    );

    let count = r
        .multi_shard
        .iter()
        .find(|s| s.query == "select count(*) from orders")
        .unwrap_or_else(|| panic!("count scatters: {r:#?}"));
    assert_eq!(count.routes.scatter, 1);
    assert!(
        count
            .strategy
            .as_deref()
            .is_some_and(|s| s.contains("re-aggregate")),
        "{count:?}"
    );

    let join = r
        .caveats
        .iter()
        .find(|s| {
            s.query
                .starts_with("select u.name, p.name from users u join plans p")
        })
        .unwrap_or_else(|| panic!("the join with plans is named: {r:#?}"));
    assert!(
        join.caveat
            .as_deref()
            .is_some_and(|c| c.contains("declare plans as reference tables")),
        "{join:?}"
    );

    let plans = r
        .tables
        .iter()
        .find(|t| t.table == "plans")
        .unwrap_or_else(|| panic!("plans seen: {r:#?}"));
    assert!(plans.reference_candidate, "{plans:?}");
    assert_eq!(
        (plans.writes, plans.max_rows_read),
        (0, 3),
        "{plans:?} {:#?}",
        control.queries(shardgate_admin::control::QuerySort::Calls, 100)
    );
    assert!(plans.with_sharded >= 2, "{plans:?}");

    // Keys: one per user insert and order insert, the reads by key, the Bind values.
    assert!(r.key_skew.keys >= 30 + 3, "{:?}", r.key_skew);
    assert_eq!(r.key_skew.shard_shares.len(), 4);
    assert!(r.key_skew.slots_seen > 1 && !r.key_skew.top_slots.is_empty());

    // Over HTTP and the CLI.
    let admin = shardgate_admin::AdminServer::start(
        Arc::clone(&control) as Arc<dyn ControlPlane>,
        &shardgate_config::Admin {
            listen: "127.0.0.1:0".into(),
            ..Default::default()
        },
    )
    .await
    .expect("admin server");
    let port = admin.addr().port();
    let run = |json: bool| {
        tokio::task::spawn_blocking(move || {
            let args = shardgate_admin::cli::AdminArgs {
                url: format!("http://127.0.0.1:{port}"),
                token: None,
                json,
                command: shardgate_admin::cli::AdminCommand::Readiness,
            };
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = shardgate_admin::cli::run_with(&args, &mut out, &mut err);
            (code, String::from_utf8_lossy(&out).into_owned())
        })
    };
    let (code, text) = run(false).await.expect("join");
    println!("{text}");
    assert_eq!(code, 0, "{text}");
    for needle in [
        "would run on one shard",
        "update orders set status = $1 where status = $2",
        "without its shard key",
        "select count(*) from orders",
        "looks like a reference table",
        "declare plans as reference tables",
        "key skew",
    ] {
        assert!(text.contains(needle), "{needle} not in:\n{text}");
    }
    let (code, json) = run(true).await.expect("join");
    assert_eq!(code, 0, "{json}");
    let parsed: ShardingReadiness = serde_json::from_str(&json).expect("JSON");
    assert_eq!(parsed.planned_shards, 4);

    admin.stop();
    drop(client);
    drop(direct);
    env.stop().await;
}
