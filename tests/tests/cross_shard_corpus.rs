//! The generated cross-shard corpus: a query generator with a fixed seed writes SELECTs over
//! sharded tables (users, orders, items, sharded by user_id) and a reference table (plans, on
//! every shard) — joins on and off the key, subqueries and CTEs, DISTINCT, aggregates (with
//! DISTINCT, ordered, statistical), GROUP BY / HAVING, window functions, set operations,
//! ORDER BY / LIMIT / OFFSET and keyed filters, over NULLs, duplicates, skewed keys, text,
//! numerics and timestamps. Each runs through shardgate on 3 shards and on one plain
//! PostgreSQL holding the same rows (text and binary protocol in turn); the answers (columns,
//! types, rows, and their order where the ORDER BY fixes it) must be identical, or shardgate
//! must refuse with 0A000. The share answered and the refusal reasons are printed; a floor is
//! asserted. `SG_CORPUS_SEED` / `SG_CORPUS_SIZE` change the seed and size (the bench's longer
//! randomized mode).

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use futures_util::future::join_all;
use shardgate_router::{KeyValue, Router};
use shardgate_tests::{Auth, ClusterOptions, PgCluster};
use tokio_postgres::Client;

#[allow(dead_code)]
#[path = "cross_shard/compare.rs"]
mod compare;
#[allow(dead_code)]
#[path = "cross_shard/corpus.rs"]
mod corpus;

use common::{PASSWORD, USER};
use compare::{differ, run_prepared, run_text, usable, Outcome};
use corpus::Order;

const DB: &str = "app";
const SHARDS: usize = 3;
/// The share of the corpus that must be answered (not refused).
const FLOOR: f64 = 0.95;

const SCHEMA: &str = "
create table plans (plan_id int primary key, name text, monthly numeric(8,2));
create table users (user_id bigint primary key, name text, plan_id int, score numeric(10,2),
                    created_at timestamptz, active bool);
create table orders (order_id bigint, user_id bigint, item_id int, amount numeric(12,2),
                     qty int, status text, placed_at timestamp, primary key (user_id, order_id));
create table items (item_id int, user_id bigint, title text, price numeric(10,2),
                    primary key (user_id, item_id));
";

/// splitmix64: the same rows and statements for the same seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn cents(&mut self, span: u64) -> String {
        let c = self.below(span);
        format!("{}.{:02}", c / 100, c % 100)
    }

    fn or_null(&mut self, percent: u64, v: String) -> String {
        if self.chance(percent) {
            "NULL".into()
        } else {
            v
        }
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Rows of one table: (shard key, `values (…)` tuple); `None` key = a reference table row.
type Rows = Vec<(&'static str, Option<i64>, String)>;

fn rows() -> Rows {
    const NAMES: &[&str] = &[
        "alice", "Alice", "bob", "bob", "carol", "dave", "Émile", "zoë", "O'Brien", "李", "ann ",
    ];
    const STATUS: &[&str] = &["'new'", "'paid'", "'shipped'", "'cancelled'", "NULL"];
    let mut g = Gen(7_182_026);
    let mut out = Vec::new();
    for plan in 1..=6 {
        let monthly = g_cents(&mut g);
        let monthly = g.or_null(20, monthly);
        out.push(("plans", None, format!("({plan}, 'plan{plan}', {monthly})")));
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
        out.push((
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
        out.push((
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
        out.push((
            "items",
            Some(user_id),
            format!("({item_id}, {user_id}, {title}, {price})"),
        ));
    }
    out
}

fn g_cents(g: &mut Gen) -> String {
    g.cents(5_000)
}

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
fn statement(g: &mut Gen) -> (String, Order) {
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

async fn connect_to(port: u16) -> Client {
    common::connect(&format!(
        "host=127.0.0.1 port={port} user={USER} password={PASSWORD} dbname={DB}"
    ))
    .await
}

async fn load(client: &Client, rows: &[&(&'static str, Option<i64>, String)]) {
    client.batch_execute(SCHEMA).await.expect("schema");
    for table in ["plans", "users", "orders", "items"] {
        let values: Vec<&str> = rows
            .iter()
            .filter(|r| r.0 == table)
            .map(|r| r.2.as_str())
            .collect();
        for chunk in values.chunks(500) {
            client
                .batch_execute(&format!("insert into {table} values {}", chunk.join(",")))
                .await
                .expect("insert");
        }
    }
    client.batch_execute("analyze").await.expect("analyze");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_corpus_matches_one_postgresql() {
    let started = Instant::now();
    common::init_logs();
    let seed: u64 = std::env::var("SG_CORPUS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(18);
    let size: usize = std::env::var("SG_CORPUS_SIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_100);
    let show = std::env::var_os("SG_CORPUS_SHOW").is_some();
    let clusters: Vec<PgCluster> = join_all((0..=SHARDS).map(|_| {
        tokio::task::spawn_blocking(|| {
            let c = PgCluster::start(ClusterOptions::default().user(USER, PASSWORD, Auth::Scram))
                .expect("start PostgreSQL");
            c.psql(
                "postgres",
                &format!(
                    "create database {DB} owner {USER} template template0 \
                     lc_collate 'C' lc_ctype 'C'"
                ),
            )
            .expect("create database");
            c
        })
    }))
    .await
    .into_iter()
    .map(|r| r.expect("join"))
    .collect();
    let (reference, shards) = clusters.split_first().expect("clusters");
    // plans is configured as a reference table: its reads and joins take that path.
    let config = common::sharded_config(
        shards,
        &["users", "orders", "items"],
        "[[sharding.reference_tables]]\nname = \"plans\"\n",
    );
    let router = Router::new(&config).expect("router");
    let all = rows();
    let direct = connect_to(reference.port()).await;
    load(&direct, &all.iter().collect::<Vec<_>>()).await;
    for (i, shard) in shards.iter().enumerate() {
        // Reference rows (plans) on every shard; sharded rows where the ring puts them.
        let mine: Vec<_> = all
            .iter()
            .filter(|r| {
                r.1.is_none_or(|k| router.shard_for_key(&KeyValue::Int(k)) == i)
            })
            .collect();
        load(&connect_to(shard.port()).await, &mine).await;
    }
    let proxy_handle = shardgate_proxy::start(config).await.expect("start proxy");
    let proxy = connect_to(proxy_handle.addr().port()).await;
    let setup = started.elapsed();

    let mut g = Gen(seed);
    let mut answered = 0usize;
    let mut invalid = 0usize;
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for n in 0..size {
        let (sql, order) = statement(&mut g);
        // Text (simple protocol) and binary (extended, prepared) in turn.
        let (refused, direct_failed, diff) = if n % 2 == 0 {
            let (p, d) = (run_text(&proxy, &sql).await, run_text(&direct, &sql).await);
            classify(p, d, order)
        } else {
            let p = run_prepared(&proxy, &sql, &[]).await;
            let d = run_prepared(&direct, &sql, &[]).await;
            classify(p, d, order)
        };
        if show {
            eprintln!(
                "{n}: {sql} -> refused={refused:?} invalid={direct_failed} differs={}",
                diff.is_some()
            );
        }
        if direct_failed {
            // The generator wrote something PostgreSQL rejects: not part of the corpus (but
            // shardgate must fail the same way).
            invalid += 1;
            if let Some(d) = diff {
                failures.push(format!("{sql}\n    {d}"));
            }
        } else if let Some(reason) = refused {
            *refusals.entry(reason).or_default() += 1;
        } else if let Some(d) = diff {
            failures.push(format!("{sql}\n    {d}"));
        } else {
            answered += 1;
        }
        if !usable(&proxy).await {
            panic!("the proxy connection is unusable after: {sql}");
        }
    }
    let valid = size - invalid;
    let share = answered as f64 / valid.max(1) as f64;
    eprintln!(
        "generated corpus (seed {seed}): {valid} statements ({invalid} the generator got wrong \
         left out); {answered} answered ({:.1}%), {} refused with 0A000, {} differ; set-up \
         {setup:?}, total {:?}",
        share * 100.0,
        refusals.values().sum::<usize>(),
        failures.len(),
        started.elapsed()
    );
    for (reason, count) in &refusals {
        eprintln!("  refused {count:>4}×: {reason}");
    }
    drop(proxy);
    drop(direct);
    proxy_handle.shutdown().await;
    tokio::task::spawn_blocking(move || drop(clusters))
        .await
        .ok();
    assert!(
        failures.is_empty(),
        "{} statements differ from one PostgreSQL:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        valid * 10 >= size * 9,
        "the generator wrote {invalid} invalid statements"
    );
    if size >= 1_100 {
        assert!(valid >= 1_000, "only {valid} valid statements");
    }
    assert!(share >= FLOOR, "only {:.1}% answered", share * 100.0);
}

/// (the 0A000 refusal's message, whether the reference failed, a difference).
fn classify<V: Ord + Clone + std::fmt::Debug>(
    proxy: Outcome<V>,
    direct: Outcome<V>,
    order: Order,
) -> (Option<String>, bool, Option<String>) {
    if let Outcome::Error(e) = &direct {
        let same = matches!(&proxy, Outcome::Error(p) if p.code == e.code);
        return (
            None,
            true,
            (!same).then(|| format!("reference failed ({}), proxy: {proxy:?}", e.message)),
        );
    }
    if let Outcome::Error(e) = &proxy {
        if e.code == "0A000" {
            return (Some(e.message.clone()), false, None);
        }
    }
    (None, false, differ(order, proxy, direct))
}
