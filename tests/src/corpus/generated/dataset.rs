//! The generated corpus's data set: users, orders and items sharded by `user_id`, and the
//! reference table plans — NULLs, duplicates, skewed keys (a third of the orders belong to
//! five users; some orders' users have no row), text with quotes and non-ASCII letters,
//! numerics and timestamps. The same rows on every run.

use crate::corpus::{quote, Gen, Row};

pub const SCHEMA: &str = "
create table plans (plan_id int primary key, name text, monthly numeric(8,2));
create table users (user_id bigint primary key, name text, plan_id int, score numeric(10,2),
                    created_at timestamptz, active bool);
create table orders (order_id bigint, user_id bigint, item_id int, amount numeric(12,2),
                     qty int, status text, placed_at timestamp, primary key (user_id, order_id));
create table items (item_id int, user_id bigint, title text, price numeric(10,2),
                    primary key (user_id, item_id));
";

fn row(table: &'static str, key: Option<i64>, values: String) -> Row {
    Row { table, key, values }
}

pub fn rows() -> Vec<Row> {
    const NAMES: &[&str] = &[
        "alice", "Alice", "bob", "bob", "carol", "dave", "Émile", "zoë", "O'Brien", "李", "ann ",
    ];
    const STATUS: &[&str] = &["'new'", "'paid'", "'shipped'", "'cancelled'", "NULL"];
    let mut g = Gen(7_182_026);
    let mut out = Vec::new();
    for plan in 1..=6 {
        let monthly = g.cents(5_000);
        let monthly = g.or_null(20, monthly);
        out.push(row(
            "plans",
            None,
            format!("({plan}, 'plan{plan}', {monthly})"),
        ));
    }
    for id in 1..=400i64 {
        let name = if g.chance(8) {
            "NULL".into()
        } else {
            quote(g.pick::<&str>(NAMES))
        };
        let plan = (1 + g.below(7)).to_string();
        let plan = g.or_null(10, plan);
        let score = g.cents(100_000);
        let score = g.or_null(10, score);
        let created = format!(
            "timestamptz '2024-01-01 00:00:00+00' + interval '{} seconds'",
            g.below(30_000_000)
        );
        let created = g.or_null(5, created);
        let active = *g.pick(&["true", "false", "NULL"]);
        out.push(row(
            "users",
            Some(id),
            format!("({id}, {name}, {plan}, {score}, {created}, {active})"),
        ));
    }
    for order_id in 1..=2_000i64 {
        // Skewed: a third of the orders belong to users 1..5; users 401..420 have no row.
        let user_id = if g.chance(33) {
            1 + g.below(5) as i64
        } else {
            1 + g.below(420) as i64
        };
        let item = (1 + g.below(40)).to_string();
        let item = g.or_null(10, item);
        let amount = g.cents(50_000);
        let amount = g.or_null(5, amount);
        let qty = (1 + g.below(9)).to_string();
        let qty = g.or_null(5, qty);
        let status = *g.pick(STATUS);
        let placed = format!(
            "timestamp '2024-06-01' + interval '{} minutes'",
            g.below(200_000)
        );
        out.push(row(
            "orders",
            Some(user_id),
            format!("({order_id}, {user_id}, {item}, {amount}, {qty}, {status}, {placed})"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 300 {
        let user_id = 1 + g.below(420) as i64;
        let item_id = 1 + g.below(40) as i64;
        if !seen.insert((user_id, item_id)) {
            continue;
        }
        let title = quote(&format!("item {}", item_id % 13));
        let price = g.cents(10_000);
        let price = g.or_null(10, price);
        out.push(row(
            "items",
            Some(user_id),
            format!("({item_id}, {user_id}, {title}, {price})"),
        ));
    }
    out
}
