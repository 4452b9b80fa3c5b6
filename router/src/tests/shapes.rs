//! The normalized plan cache routes every statement exactly as planning its text would:
//! statement templates filled with many literal values, routed through `plan_query` +
//! `route_query` on one router and through `plan` + `route` (text cache) on another.

use super::config;
use crate::{BoundParams, Route, RouteError, Router};

/// `{}` is replaced by each value of a row of `VALUES`, in order.
const TEMPLATES: &[&str] = &[
    "select * from orders where user_id = {}",
    "select * from orders where user_id = {} and status = {}",
    "select * from orders where user_id = {} limit {}",
    "SELECT o.amount FROM orders o JOIN users u ON o.user_id = u.user_id WHERE u.user_id = {}",
    "select * from orders where user_id in ({}, {})",
    "select * from orders where user_id = -{}",
    "select * from orders where user_id = {}::bigint",
    "select * from orders where user_id = {} or user_id = {}",
    "select count(*) from orders where status = {}",
    "select status, count(*) from orders where amount > {} group by status order by 2 desc limit {}",
    "insert into orders (order_id, user_id, amount) values ({}, {}, {})",
    "insert into orders (order_id, user_id) values ({}, {}), ({}, {})",
    "insert into orders values ({}, {})",
    "update orders set amount = {} where user_id = {}",
    "update orders set user_id = {} where user_id = {}",
    "delete from orders where user_id = {}",
    "delete from orders where amount = {}",
    "select * from \"Events\" where tenant = {}",
    "select * from sessions where sid = {}",
    "select {} /* shardgate: shard_key=7 */ from orders",
    "select * from orders where user_id = {} for update",
    "select * from orders where user_id = {}; select * from orders where user_id = {}",
    "select * from items where user_id = {}",
    "select nextval('s'), * from orders where user_id = {}",
    "with x as (select * from orders where user_id = {}) select * from x",
    "select * from orders where created > date '2024-01-01' and user_id = {}",
    "select 1 from orders where user_id = {} and note like {}",
];

/// Rows of literal values (as written in SQL), cycled through each template's slots.
const VALUES: &[&[&str]] = &[
    &["1", "2", "3", "4"],
    &["42", "'new'", "10", "7"],
    &["'42'", "'it''s'", "0", "5"],
    &["9223372036854775807", "1.5", "2", "3"],
    &["99999999999999999999", "'x'", "1", "1"],
    &["'abc'", "'7'", "8", "9"],
    &["'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "'b'", "3", "3"],
    &["' 12 '", "12", "12", "12"],
    &["1e3", "0.5", "100", "100"],
    &["''", "'é'", "2", "2"],
];

fn fill(template: &str, values: &[&str]) -> String {
    let mut out = String::new();
    let mut rest = template;
    let mut i = 0;
    while let Some(at) = rest.find("{}") {
        out.push_str(&rest[..at]);
        out.push_str(values[i % values.len()]);
        i += 1;
        rest = &rest[at + 2..];
    }
    out.push_str(rest);
    out
}

fn outcome(r: Result<Route, RouteError>) -> Result<Route, (&'static str, String)> {
    r.map_err(|e| (e.code, e.message))
}

#[test]
fn shapes_route_exactly_as_texts() {
    for extra in ["", "keyless_writes = \"broadcast\""] {
        let shaped = Router::new(&config(extra)).expect("router");
        let plain = Router::new(&config(extra)).expect("router");
        let mut normalized = 0;
        // Twice: the first pass proves the shapes, the second runs on proved shapes.
        for _ in 0..2 {
            for template in TEMPLATES {
                for values in VALUES {
                    let sql = fill(template, values);
                    let query = shaped.plan_query(&sql);
                    normalized += usize::from(query.is_normalized());
                    let got = shaped.route_query(&query, None);
                    let expected_plan = plain.plan(&sql);
                    let expected = plain.route(&expected_plan, &BoundParams::NONE, None);
                    let (got_route, got_plan) = match got {
                        Ok((route, plan)) => (Ok(route), Some(plan)),
                        Err(e) => (Err(e), None),
                    };
                    assert_eq!(outcome(got_route), outcome(expected), "{sql}");
                    if let Some(plan) = got_plan {
                        assert_eq!(plan.kind, expected_plan.kind, "{sql}");
                        assert_eq!(
                            plan.runs_on_replica(),
                            expected_plan.runs_on_replica(),
                            "{sql}"
                        );
                        assert_eq!(
                            plan.key_updates.len(),
                            expected_plan.key_updates.len(),
                            "{sql}"
                        );
                    }
                }
            }
        }
        // The point of the cache: most of these statements share proved shapes.
        assert!(normalized > TEMPLATES.len() * VALUES.len(), "{normalized}");
    }
}

#[test]
fn a_point_select_is_planned_once_per_shape() {
    let r = Router::new(&config("")).expect("router");
    for k in 0..50 {
        let sql = format!("select * from orders where user_id = {k} and status = 'open'");
        let q = r.plan_query(&sql);
        if k > 0 {
            assert!(q.is_normalized(), "{sql}");
        }
        let (route, _) = r.route_query(&q, None).expect("routes");
        assert_eq!(
            route,
            Route::Shard(r.shard_for_key(&crate::KeyValue::Int(k))),
            "{sql}"
        );
    }
    // Each text was planned once by text on the first sight only: one miss for the proof.
    assert_eq!(r.cache_stats().misses, 1);
}

#[test]
fn shapes_that_route_differently_stay_as_written() {
    let r = Router::new(&config("")).expect("router");
    // `-$1` is not a key to the planner, but `-5` is: the shape fails its proof.
    for k in [5, 6, 7] {
        let sql = format!("select * from orders where user_id = -{k}");
        let q = r.plan_query(&sql);
        assert!(!q.is_normalized(), "{sql}");
        let (route, _) = r.route_query(&q, None).expect("routes");
        assert_eq!(
            route,
            Route::Shard(r.shard_for_key(&crate::KeyValue::Int(-k)))
        );
    }
}
