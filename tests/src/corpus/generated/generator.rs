//! The generated corpus's statements: SELECTs over the sharded tables and the reference
//! table — joins on and off the key, subqueries and CTEs, DISTINCT, aggregates (with DISTINCT,
//! ordered, statistical), GROUP BY / HAVING, window functions, set operations, ORDER BY /
//! LIMIT / OFFSET and keyed filters — each with how much of its row order it fixes.

use crate::corpus::{quote, Gen, Order};

/// A column of a table, with what the generator may do with it.
#[derive(Clone, Copy)]
struct Col {
    name: &'static str,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Num,
    Text,
    Time,
    Bool,
}

const fn c(name: &'static str, kind: Kind) -> Col {
    Col { name, kind }
}

struct Table {
    name: &'static str,
    alias: &'static str,
    cols: &'static [Col],
    /// Columns that identify a row (a total order within the table).
    unique: &'static [&'static str],
}

const USERS: Table = Table {
    name: "users",
    alias: "u",
    cols: &[
        c("user_id", Kind::Int),
        c("name", Kind::Text),
        c("plan_id", Kind::Int),
        c("score", Kind::Num),
        c("created_at", Kind::Time),
        c("active", Kind::Bool),
    ],
    unique: &["user_id"],
};
const ORDERS: Table = Table {
    name: "orders",
    alias: "o",
    cols: &[
        c("order_id", Kind::Int),
        c("user_id", Kind::Int),
        c("item_id", Kind::Int),
        c("amount", Kind::Num),
        c("qty", Kind::Int),
        c("status", Kind::Text),
        c("placed_at", Kind::Time),
    ],
    unique: &["user_id", "order_id"],
};
const ITEMS: Table = Table {
    name: "items",
    alias: "i",
    cols: &[
        c("item_id", Kind::Int),
        c("user_id", Kind::Int),
        c("title", Kind::Text),
        c("price", Kind::Num),
    ],
    unique: &["user_id", "item_id"],
};
const PLANS: Table = Table {
    name: "plans",
    alias: "p",
    cols: &[
        c("plan_id", Kind::Int),
        c("name", Kind::Text),
        c("monthly", Kind::Num),
    ],
    unique: &["plan_id"],
};
const SHARDED: &[&Table] = &[&USERS, &ORDERS, &ITEMS];

/// One source of rows: a table with its alias, or a join of two.
struct From {
    sql: String,
    /// (qualified expression, kind), every column visible.
    cols: Vec<(String, Kind)>,
    unique: Vec<String>,
}

fn qualified(t: &Table) -> Vec<(String, Kind)> {
    t.cols
        .iter()
        .map(|c| (format!("{}.{}", t.alias, c.name), c.kind))
        .collect()
}

fn from(g: &mut Gen) -> From {
    let single = |t: &Table| From {
        sql: format!("{} {}", t.name, t.alias),
        cols: qualified(t),
        unique: t
            .unique
            .iter()
            .map(|u| format!("{}.{u}", t.alias))
            .collect(),
    };
    let join = |a: &Table, b: &Table, on: String, kind: &str| {
        let mut cols = qualified(a);
        cols.extend(qualified(b));
        let mut unique: Vec<String> = a
            .unique
            .iter()
            .map(|u| format!("{}.{u}", a.alias))
            .collect();
        unique.extend(b.unique.iter().map(|u| format!("{}.{u}", b.alias)));
        From {
            sql: format!(
                "{} {} {kind} {} {} on {on}",
                a.name, a.alias, b.name, b.alias
            ),
            cols,
            unique,
        }
    };
    let kind = *g.pick(&["join", "join", "left join"]);
    match g.below(8) {
        0..=2 => single(g.pick::<&Table>(SHARDED)),
        3 => join(&USERS, &ORDERS, "o.user_id = u.user_id".into(), kind),
        4 => join(&ORDERS, &ITEMS, "i.item_id = o.item_id".into(), kind),
        5 => join(
            &ORDERS,
            &ITEMS,
            "i.user_id = o.user_id and i.item_id = o.item_id".into(),
            kind,
        ),
        6 => join(&USERS, &PLANS, "p.plan_id = u.plan_id".into(), kind),
        _ => join(&USERS, &ITEMS, "i.user_id = u.user_id".into(), kind),
    }
}

fn literal(g: &mut Gen, kind: Kind) -> String {
    match kind {
        Kind::Int => g.below(45).to_string(),
        Kind::Num => g.cents(40_000),
        Kind::Text => quote(g.pick::<&str>(&["bob", "alice", "paid", "new", "item 3", "m"])),
        Kind::Time => "'2024-07-01'".into(),
        Kind::Bool => "true".into(),
    }
}

fn predicate(g: &mut Gen, f: &From) -> String {
    let (col, kind) = g.pick(&f.cols).clone();
    let key = f
        .cols
        .iter()
        .find(|(c, _)| c.ends_with(".user_id"))
        .map(|(c, _)| c.clone());
    match g.below(9) {
        0 => format!("{col} is null"),
        1 => format!("{col} is not null"),
        2 if key.is_some() => format!("{} = {}", key.unwrap_or_default(), 1 + g.below(420)),
        3 if key.is_some() => format!(
            "{} in ({}, {}, {})",
            key.unwrap_or_default(),
            1 + g.below(420),
            1 + g.below(420),
            1 + g.below(5)
        ),
        4 if kind == Kind::Text => format!("{col} like '%a%'"),
        5 if kind == Kind::Bool => col,
        6 => format!(
            "{} in (select user_id from orders where status = 'paid')",
            key.unwrap_or_else(|| f.cols[0].0.clone())
        ),
        _ if kind == Kind::Bool => format!("{col} is not true"),
        _ => format!(
            "{col} {} {}",
            g.pick(&["<", ">", "<>", ">="]),
            literal(g, kind)
        ),
    }
}

fn where_clause(g: &mut Gen, f: &From) -> String {
    if !g.chance(55) {
        return String::new();
    }
    let mut p = predicate(g, f);
    if g.chance(30) {
        p = format!("{p} {} {}", g.pick(&["and", "or"]), predicate(g, f));
    }
    format!(" where {p}")
}

fn aggregate(g: &mut Gen, f: &From) -> String {
    let (col, kind) = g.pick(&f.cols).clone();
    let numeric = matches!(kind, Kind::Int | Kind::Num);
    match g.below(12) {
        0 => "count(*)".into(),
        1 => format!("count({col})"),
        2 => format!("count(distinct {col})"),
        3 if numeric => format!("sum({col})"),
        4 if numeric => format!("avg({col})"),
        5 if numeric => format!("stddev_samp({col})"),
        6 if numeric => format!("sum(distinct {col})"),
        7 if kind == Kind::Text => format!(
            "string_agg({col}, ',' order by {col}, {})",
            f.unique.join(", ")
        ),
        8 if kind == Kind::Bool => format!("bool_and({col})"),
        9 => format!("array_length(array_agg(distinct {col}), 1)"),
        10 => format!("max({col})"),
        _ => format!("min({col})"),
    }
}

/// ` order by` every output position (a total order on the values: equal rows are equal),
/// in a random order with random directions; and maybe LIMIT/OFFSET.
fn order_all(g: &mut Gen, n: usize) -> String {
    let mut pos: Vec<usize> = (1..=n).collect();
    for i in (1..pos.len()).rev() {
        pos.swap(i, g.below(i as u64 + 1) as usize);
    }
    let keys: Vec<String> = pos
        .iter()
        .map(|p| {
            format!(
                "{p}{}",
                g.pick(&["", " desc", " nulls first", " desc nulls last"])
            )
        })
        .collect();
    let mut s = format!(" order by {}", keys.join(", "));
    if g.chance(50) {
        s.push_str(&format!(" limit {}", 1 + g.below(15)));
        if g.chance(30) {
            s.push_str(&format!(" offset {}", g.below(5)));
        }
    }
    s
}

/// A statement and how much of its row order it fixes.
pub fn statement(g: &mut Gen) -> (String, Order) {
    let f = from(g);
    let w = where_clause(g, &f);
    let ordered = g.chance(50);
    let (body, n) = match g.below(10) {
        // Plain rows.
        0 | 1 => {
            let k = 1 + g.below(3) as usize;
            let cols: Vec<String> = (0..k).map(|_| g.pick(&f.cols).0.clone()).collect();
            let distinct = if g.chance(35) { "distinct " } else { "" };
            (
                format!("select {distinct}{} from {}{w}", cols.join(", "), f.sql),
                k,
            )
        }
        // Aggregates, grouped or not, with HAVING.
        2..=4 => {
            let groups = g.below(3) as usize;
            let gcols: Vec<String> = (0..groups).map(|_| g.pick(&f.cols).0.clone()).collect();
            let aggs: Vec<String> = (0..1 + g.below(3)).map(|_| aggregate(g, &f)).collect();
            let mut sql = format!(
                "select {} from {}{w}",
                gcols
                    .iter()
                    .chain(&aggs)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                f.sql
            );
            if groups > 0 {
                sql.push_str(&format!(" group by {}", gcols.join(", ")));
                if g.chance(30) {
                    sql.push_str(&format!(" having count(*) > {}", g.below(4)));
                }
            }
            (sql, groups + aggs.len())
        }
        // Window functions (ordered within the window by a unique key).
        5 | 6 => {
            let (part, _) = g.pick(&f.cols).clone();
            let (arg, kind) = g.pick(&f.cols).clone();
            let uniq = f.unique.join(", ");
            let win = match g.below(5) {
                0 => format!("row_number() over (partition by {part} order by {uniq})"),
                1 => format!("rank() over (order by {arg}, {uniq})"),
                2 => format!("count(*) over (partition by {part})"),
                3 if matches!(kind, Kind::Int | Kind::Num) => {
                    format!("sum({arg}) over (partition by {part} order by {uniq})")
                }
                _ => format!("lag({arg}) over (order by {uniq})"),
            };
            (
                format!("select {uniq}, {win} from {}{w}", f.sql),
                f.unique.len() + 1,
            )
        }
        // Set operations over two sharded tables.
        7 => {
            let a = g.pick(SHARDED);
            let b = g.pick(SHARDED);
            let op = *g.pick(&["union", "union all", "intersect", "except", "except all"]);
            (
                format!(
                    "select user_id from {} where user_id < {} {op} select user_id from {} where user_id > {}",
                    a.name,
                    g.below(300),
                    b.name,
                    g.below(200)
                ),
                1,
            )
        }
        // A CTE or derived table with an aggregate, then an outer aggregate or filter.
        8 => {
            let t = g.pick(SHARDED);
            let (col, _) = *g.pick(&t.cols.iter().map(|c| (c.name, c.kind)).collect::<Vec<_>>());
            (
                format!(
                    "with per as (select user_id, count(*) n, count(distinct {col}) d from {} group by user_id) select n, count(*), sum(d) from per group by n",
                    t.name
                ),
                3,
            )
        }
        // A scalar subquery over a sharded table.
        _ => {
            let (col, _) = f
                .cols
                .iter()
                .find(|(_, k)| *k == Kind::Num)
                .cloned()
                .unwrap_or_else(|| f.cols[0].clone());
            let t = f.unique.join(", ");
            (
                format!(
                    "select {t} from {} where {col} > (select avg(amount) from orders where qty > {})",
                    f.sql,
                    g.below(8)
                ),
                f.unique.len(),
            )
        }
    };
    if ordered {
        (format!("{body}{}", order_all(g, n)), Order::Total)
    } else {
        (body, Order::Unordered)
    }
}
