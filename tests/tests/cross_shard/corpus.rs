//! The statements of the cross-shard differential test (cross_shard.rs), with how much of
//! their row order the SQL fixes. Kept apart from the harness so the corpus is easy to read
//! and extend.

pub use shardgate_tests::corpus::Order;
use tokio_postgres::types::{ToSql, Type};

#[derive(Debug, Clone, Copy)]
pub struct Query {
    pub sql: &'static str,
    pub order: Order,
}

const fn t(sql: &'static str) -> Query {
    Query {
        sql,
        order: Order::Total,
    }
}

const fn u(sql: &'static str) -> Query {
    Query {
        sql,
        order: Order::Unordered,
    }
}

const fn p(n: usize, sql: &'static str) -> Query {
    Query {
        sql,
        order: Order::Prefix(n),
    }
}

pub const QUERIES: &[Query] = &[
    // Keyed lookups: one shard.
    u("select * from users where user_id = 1"),
    u("select * from users where user_id = 150"),
    u("select name, age from users where user_id = 299"),
    u("select * from users where user_id = 100000"),
    t("select * from orders where user_id = 7 order by order_id"),
    u("select count(*) from orders where user_id = 7"),
    u("select sum(amount), avg(qty) from orders where user_id = 12"),
    t("select status, count(*) from orders where user_id = 33 group by status order by status"),
    u("select * from users where user_id = 42 and age > 200"),
    t("select u.name, o.order_id, o.amount from users u join orders o on o.user_id = u.user_id where u.user_id = 10 order by o.order_id"),
    t("select o.* from orders o where o.user_id = 250 order by o.order_id desc"),
    u("select max(amount) from orders where user_id = 99"),
    t("select * from orders where user_id = 301 order by order_id"),
    u("select u.user_id, count(o.order_id) from users u left join orders o on o.user_id = u.user_id where u.user_id = 5 group by u.user_id"),
    u("select user_id, name, score, created_at, active from public.users where user_id = 77"),
    // IN lists: a set of shards.
    t("select * from users where user_id in (1, 2, 3, 4, 5) order by user_id"),
    t("select user_id, name from users where user_id in (10, 20, 30, 40, 50, 60, 70) order by name, user_id"),
    u("select count(*) from users where user_id in (1, 100, 200, 300)"),
    t("select * from orders where user_id in (7, 8, 9) order by order_id"),
    u("select sum(amount) from orders where user_id in (11, 22, 33, 44)"),
    t("select status, count(*) from orders where user_id in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10) group by status order by status"),
    t("select user_id, score from users where user_id in (5, 15, 25) order by score desc nulls last, user_id"),
    u("select * from users where user_id in (1000, 2000)"),
    t("select user_id from users where user_id in (3, 1, 2, 200, 201) order by user_id limit 3 offset 1"),
    u("select min(created_at), max(created_at) from users where user_id in (3, 4, 5, 6)"),
    u("select user_id, active from users where user_id in (11, 12, 13, 14, 15, 16)"),
    // Joins on the shard key without a key: co-located on every shard.
    t("select u.user_id, u.name, o.order_id, o.amount from users u join orders o on o.user_id = u.user_id order by o.order_id"),
    t("select u.user_id, o.order_id from users u join orders o on o.user_id = u.user_id order by u.user_id, o.order_id limit 50"),
    u("select count(*) from users u join orders o on o.user_id = u.user_id"),
    t("select u.active, count(*), sum(o.amount) from users u join orders o on o.user_id = u.user_id group by u.active order by u.active"),
    t("select o.status, avg(o.amount) from orders o join users u using (user_id) where u.age > 40 group by o.status order by o.status"),
    t("select u.user_id, count(o.order_id) from users u left join orders o on o.user_id = u.user_id group by u.user_id order by u.user_id"),
    t("select u.name, o.amount, o.order_id from users u join orders o on o.user_id = u.user_id where o.amount > 1900 order by o.amount desc, o.order_id"),
    u("select max(o.amount), min(u.created_at) from users u join orders o on o.user_id = u.user_id"),
    u("select u.user_id, o.order_id from users u join orders o on o.user_id = u.user_id where o.qty = 3"),
    // Cross-shard ORDER BY / LIMIT / OFFSET.
    t("select * from users order by user_id"),
    t("select * from users order by user_id desc"),
    t("select user_id, name from users order by name, user_id"),
    t("select user_id, name from users order by name desc nulls last, user_id"),
    t("select user_id, name from users order by name nulls first, user_id desc"),
    t("select user_id, age from users order by age, user_id"),
    t("select user_id, age from users order by age desc, user_id limit 10"),
    t("select user_id, score from users order by score, user_id"),
    t("select user_id, score from users order by score desc nulls last, user_id limit 25 offset 5"),
    t("select user_id, created_at from users order by created_at, user_id"),
    t("select user_id, created_at from users order by created_at desc nulls first, user_id"),
    t("select user_id, active from users order by active, user_id"),
    t("select user_id, active from users order by active desc nulls last, user_id"),
    t("select * from users order by 1 limit 5"),
    t("select * from users order by 1 limit 5 offset 295"),
    t("select * from users order by user_id offset 290"),
    t("select * from users order by user_id limit 0"),
    t("select * from users order by user_id limit 10 offset 1000"),
    t("select order_id, user_id, amount from orders order by amount desc, order_id limit 20"),
    t("select order_id, amount, qty from orders order by qty nulls first, amount, order_id"),
    t("select order_id, status from orders order by status, order_id"),
    t("select order_id, status from orders order by status desc, order_id desc limit 100"),
    t("select * from orders order by order_id limit 30 offset 700"),
    t("select * from orders order by user_id, order_id"),
    t("select user_id, name, score from users where score > 0 order by score, user_id"),
    t("select user_id from users where name = 'Bob' order by user_id"),
    t("select user_id, name from users where name like 'a%' order by user_id desc"),
    t("select age, user_id from users order by age nulls first, user_id fetch first 15 rows only"),
    p(1, "select name, user_id from users order by name"),
    p(1, "select status, order_id from orders order by status"),
    t("select user_id, upper(name) as uname from users order by uname, user_id"),
    t("select user_id, age * 2 as double_age from users order by double_age desc nulls last, user_id"),
    t("select user_id, score::float8 as f from users order by f, user_id"),
    t("select user_id, created_at::date as d from users order by d, user_id"),
    t("select user_id, created_at::timestamp as ts from users order by ts desc, user_id"),
    t("select user_id, (created_at at time zone 'UTC')::time as tm from users where user_id > 3 order by tm, user_id"),
    t("select order_id::int4 as o4, qty::int2 as q from orders order by q, o4 limit 40"),
    t("select user_id, name::varchar(20) as v from users order by v, user_id"),
    t("select user_id, md5(user_id::text)::uuid as id from users order by id"),
    t("select user_id, (score * 1.5)::numeric(12,3) as s from users order by s desc, user_id"),
    t("select user_id, -score as neg from users order by neg, user_id"),
    t("select user_id, convert_to(name, 'UTF8') as b from users order by b, user_id"),
    t("select user_id, (age > 40) as old from users order by old nulls first, user_id"),
    t("select user_id, case when user_id % 10 = 0 then 'NaN'::numeric when user_id % 10 = 1 then 'Infinity'::numeric when user_id % 10 = 2 then '-Infinity'::numeric else score end as n from users order by n, user_id"),
    t("select user_id, case when user_id % 10 = 0 then 'NaN'::float8 when user_id % 10 = 1 then 'Infinity'::float8 when user_id % 10 = 2 then '-Infinity'::float8 when user_id % 10 = 3 then '-0'::float8 else score::float8 end as f from users order by f desc, user_id"),
    t("select user_id, score::float4 as r from users order by r nulls first, user_id"),
    t("select user_id, user_id::oid as o from users order by o desc limit 12"),
    t("select user_id, name::bpchar(6) as c from users order by c, user_id"),
    t("select user_id from users order by user_id limit 3"),
    // Aggregates.
    u("select count(*) from users"),
    u("select count(*) from orders"),
    u("select count(name), count(age), count(score) from users"),
    u("select sum(age) from users"),
    u("select sum(score) from users"),
    u("select sum(user_id) from users"),
    u("select sum(qty), sum(amount) from orders"),
    u("select min(age), max(age) from users"),
    u("select min(score), max(score) from users"),
    u("select min(name), max(name) from users"),
    u("select min(created_at), max(created_at) from users"),
    u("select avg(age) from users"),
    u("select avg(score) from users"),
    u("select avg(user_id) from users"),
    u("select avg(amount), avg(qty) from orders"),
    u("select count(*), sum(amount), min(amount), max(amount), avg(amount) from orders where status = 'paid'"),
    u("select count(*), sum(age), avg(age), min(name) from users where age > 1000"),
    u("select count(*) as n, avg(score) as mean from users where active"),
    u("select sum(score), avg(score) from users where score is null"),
    u("select min(score::float8), max(score::float8) from users"),
    u("select count(*) from users limit 1"),
    u("select count(*) from users offset 1"),
    u("select max(order_id), min(order_id) from orders"),
    u("select count(*), max(user_id) from orders where qty is null"),
    u("select count(*) filter (where active) from users"),
    u("select sum(qty::int2), sum(order_id), avg(qty::int8) from orders"),
    // GROUP BY.
    t("select status, count(*) from orders group by status order by status"),
    t("select status, count(*), sum(amount), avg(amount), min(qty), max(qty) from orders group by status order by status nulls first"),
    t("select qty, count(*) from orders group by qty order by qty"),
    t("select status, qty, sum(amount) from orders group by status, qty order by status, qty"),
    t("select active, count(*), avg(age) from users group by active order by active"),
    t("select name, count(*) from users group by name order by name"),
    t("select age, count(*) from users group by age order by count(*) desc, age"),
    t("select status, count(*) from orders group by status order by 2 desc, 1"),
    t("select status, sum(qty) from orders where amount > 1000 group by status order by status"),
    u("select status, count(*) from orders where user_id < 0 group by status"),
    t("select status, count(*) from orders group by status order by status limit 2"),
    t("select status, count(*) from orders group by status order by status desc limit 2 offset 1"),
    t("select active, max(created_at), min(score) from users group by active order by active desc"),
    t("select status, avg(qty) from orders group by status order by status"),
    t("select qty, status, count(*) from orders group by status, qty order by qty, status"),
    u("select status, count(*), avg(amount) from orders group by status"),
    // NULLs and empty results.
    t("select * from users where name is null order by user_id"),
    t("select user_id, age from users where age is null order by user_id"),
    t("select * from orders where amount is null and status is null order by order_id"),
    u("select * from users where age > 1000"),
    t("select * from users where age > 1000 order by name"),
    u("select user_id, name from users where false"),
    t("select user_id, null::int as nothing from users order by user_id limit 3"),
    u("select user_id, coalesce(name, '?') from users where active is null"),
];

/// Statements that cannot be merged correctly across shards: refused with 0A000.
/// Statements neither the shard key nor a merge in the proxy answers: gathered into
/// PostgreSQL on the coordinating shard (and compared with one PostgreSQL like the rest).
pub const GATHERED: &[Query] = &[
    // The three examples (the first, grouped by the shard key, is grouped on the shards
    // and merged as plain rows rather than gathered).
    t("select user_id, count(*) from orders group by user_id order by 2 desc, 1 limit 3"),
    u("select count(distinct user_id) from orders"),
    t("select u.name, sum(o.amount) from users u join orders o on o.user_id = u.user_id group by u.name order by 2 desc, 1 limit 3"),
    u("select distinct status from orders"),
    t("select user_id, row_number() over (order by user_id) from users order by user_id"),
    u("select status, count(*) from orders group by status having count(*) > 10"),
    u("select string_agg(name, ',' order by name, user_id) from users"),
    u("select count(distinct status) from orders"),
    u("select user_id from users union select user_id from orders"),
    t("select user_id, name from users order by length(name), user_id"),
    t("select status, count(*) from orders group by status order by 2 desc, 1 limit 2"),
    u("select status, count(*) from orders group by status order by status limit 2"),
    u("select status, count(*) from public.orders group by status having sum(amount) > 1000"),
    t("select user_id, amount, rank() over (partition by status order by amount desc nulls last, order_id) from orders order by order_id"),
    u("select o.order_id from orders o join users u on o.qty = u.age where u.active"),
    u("select user_id from users where user_id not in (select user_id from orders where user_id is not null)"),
    u("with big as (select user_id, sum(amount) s from orders group by user_id) select count(*), max(s) from big"),
    u("select user_id from orders intersect select user_id from users"),
    u("select user_id from orders except all select user_id from users"),
    u("select stddev(amount)::numeric(20,6), variance(qty)::numeric(20,6), bool_and(active), bool_or(active) from orders o left join users u using (user_id)"),
    t("select status, percentile_cont(0.5) within group (order by amount) from orders group by status order by status nulls first"),
];

/// Statements that must still be refused across shards: locking reads and reads with side
/// effects cannot be gathered.
pub const REFUSED: &[&str] = &[
    "select o.order_id from orders o join users u on o.qty = u.age for update of o",
    "select distinct status from orders where pg_try_advisory_xact_lock(1)",
];

/// A statement with parameters (binary format only: the simple protocol has none).
pub struct Param {
    pub sql: &'static str,
    pub order: Order,
    pub params: Vec<(Box<dyn ToSql + Sync>, Type)>,
}

fn param(sql: &'static str, order: Order, params: Vec<(Box<dyn ToSql + Sync>, Type)>) -> Param {
    Param { sql, order, params }
}

pub fn parameterised() -> Vec<Param> {
    vec![
        param("select * from users where user_id = $1", Order::Unordered, vec![(Box::new(77i64), Type::INT8)]),
        param(
            "select * from users where user_id = any($1) order by user_id",
            Order::Total,
            vec![(Box::new(vec![1i64, 2, 150, 299]), Type::INT8_ARRAY)],
        ),
        param(
            "select user_id, name from users order by user_id limit $1 offset $2",
            Order::Total,
            vec![(Box::new(7i64), Type::INT8), (Box::new(20i64), Type::INT8)],
        ),
        param(
            "select count(*), avg(score), sum(age) from users where age > $1",
            Order::Unordered,
            vec![(Box::new(30i32), Type::INT4)],
        ),
        param(
            "select status, count(*), sum(amount) from orders where amount > $1::int group by status order by status",
            Order::Total,
            vec![(Box::new(1000i32), Type::INT4)],
        ),
        param(
            "select * from orders where user_id in ($1, $2, $3) order by order_id",
            Order::Total,
            vec![(Box::new(1i64), Type::INT8), (Box::new(2i64), Type::INT8), (Box::new(3i64), Type::INT8)],
        ),
        param(
            "select user_id, created_at from users where created_at > $1::text::timestamptz order by created_at, user_id",
            Order::Total,
            vec![(Box::new("2023-06-01 00:00:00+00".to_owned()), Type::TEXT)],
        ),
        param("select user_id from users order by user_id limit $1", Order::Total, vec![(Box::new(None::<i64>), Type::INT8)]),
        param(
            "select user_id, score from users where score is not null order by score desc, user_id limit $1 offset 3",
            Order::Total,
            vec![(Box::new(5i64), Type::INT8)],
        ),
        param(
            "select name, count(*) from users where user_id > $1 group by name order by name",
            Order::Total,
            vec![(Box::new(100i64), Type::INT8)],
        ),
        param(
            "select user_id, name from users where name = $1 order by user_id",
            Order::Total,
            vec![(Box::new("bob".to_owned()), Type::TEXT)],
        ),
    ]
}
