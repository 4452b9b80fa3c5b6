//! [`run`](super::run) against real PostgreSQL servers, below the session layer: two shards
//! and a reference server holding all the rows. The merged protocol output must be the
//! reference's output for the client's statement, byte for byte (RowDescription's table OIDs
//! aside), in the simple and the extended protocol, text and binary.

use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use shardgate_config::{Config, Host};
use shardgate_localpg::{Auth, ClusterOptions, PgCluster};
use shardgate_pool::{ConnectTarget, ServerConn};
use shardgate_router::{KeyValue, Router};
use shardgate_wire::{backend, frontend, row, Frame};

use super::request::{write_bind, write_execute};
use super::{run, ScatterLimits, ScatterRequest};

const USER: &str = "app";
const PASSWORD: &str = "app-secret";
const DB: &str = "app";

const SCHEMA: &str = "create table users (user_id bigint primary key, name text, age int, \
    score numeric(10,2), created_at timestamptz, active bool); \
    create table orders (order_id bigint, user_id bigint, amount numeric(12,2), qty int, \
    status text, primary key (user_id, order_id));";

fn config(ports: &[u16]) -> Config {
    let mut text = format!("[[users]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n");
    for (i, p) in ports.iter().enumerate() {
        text.push_str(&format!(
            "[[shards]]\nname = \"s{i}\"\nprimary = {{ host = \"127.0.0.1\", port = {p} }}\n"
        ));
    }
    text.push_str(
        "[[sharding.tables]]\nname = \"users\"\n[[sharding.tables]]\nname = \"orders\"\n",
    );
    Config::from_toml(&text, Path::new("t.toml")).expect("config")
}

/// (user_id, table, values tuple) for every row.
fn rows() -> Vec<(i64, &'static str, String)> {
    let names = ["ann", "Bob", "bob", "émile", "zoë", "Zed", "ann"];
    let mut v = Vec::new();
    for id in 1..=60i64 {
        let name = if id % 9 == 0 {
            "NULL".into()
        } else {
            format!("'{}'", names[(id % 7) as usize])
        };
        let age = if id % 5 == 0 {
            "NULL".into()
        } else {
            (18 + id % 40).to_string()
        };
        let score = if id % 8 == 0 {
            "NULL".into()
        } else {
            format!("{}.{:02}", (id * 37) % 200 - 100, (id * 13) % 100)
        };
        let created = match id {
            3 => "'-infinity'".into(),
            4 => "'infinity'".into(),
            5 => "'0044-03-15 10:00:00+00 BC'".into(),
            _ => format!(
                "'2024-01-01 00:00:00+00'::timestamptz + interval '{} hours'",
                id * 7 % 500
            ),
        };
        let active = ["true", "false", "NULL"][(id % 3) as usize];
        v.push((
            id,
            "users",
            format!("({id}, {name}, {age}, {score}, {created}, {active})"),
        ));
    }
    for o in 1..=200i64 {
        let user = (o * 7) % 65 + 1;
        let amount = if o % 11 == 0 {
            "NULL".into()
        } else {
            format!("{}.{:02}", o * 3 % 500, o % 100)
        };
        let qty = if o % 13 == 0 {
            "NULL".into()
        } else {
            (o % 9).to_string()
        };
        let status = ["'new'", "'paid'", "'shipped'", "NULL"][(o % 4) as usize];
        v.push((
            user,
            "orders",
            format!("({o}, {user}, {amount}, {qty}, {status})"),
        ));
    }
    v
}

fn load(cluster: &PgCluster, rows: &[&(i64, &'static str, String)]) {
    let mut sql = String::from(SCHEMA);
    for table in ["users", "orders"] {
        let values: Vec<&str> = rows
            .iter()
            .filter(|r| r.1 == table)
            .map(|r| r.2.as_str())
            .collect();
        if !values.is_empty() {
            sql.push_str(&format!("insert into {table} values {};", values.join(",")));
        }
    }
    sql.push_str("analyze;");
    cluster.psql_as(USER, PASSWORD, DB, &sql).expect("load");
}

async fn connect(port: u16) -> ServerConn {
    ServerConn::connect(&ConnectTarget {
        host: Host {
            host: "127.0.0.1".into(),
            port,
            ..Default::default()
        },
        user: USER.into(),
        password: Some(PASSWORD.into()),
        database: DB.into(),
        application_name: "scatter-test".into(),
        connect_timeout: Duration::from_secs(10),
    })
    .await
    .expect("connect")
}

/// Splits a buffer of backend messages into frames.
fn frames(mut b: Bytes) -> Vec<Frame> {
    let mut v = Vec::new();
    while b.len() >= 5 {
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        v.push(Frame::from_bytes(b.split_to(len + 1)));
    }
    v
}

fn error_code(frame: &Frame) -> String {
    backend::error_fields(frame).expect("E").code
}

/// The frames with RowDescription's table OIDs zeroed and errors reduced to their SQLSTATE.
fn normalise(frames: Vec<Frame>, sort_rows: bool) -> Vec<(u8, Vec<u8>)> {
    let mut v: Vec<(u8, Vec<u8>)> = frames
        .into_iter()
        .map(|f| match f.tag() {
            backend::ROW_DESCRIPTION => {
                let mut fields = row::row_description(&f).expect("T");
                for x in &mut fields {
                    x.table_oid = 0;
                }
                let mut b = BytesMut::new();
                row::write_row_description(&mut b, &fields);
                (f.tag(), b.to_vec())
            }
            backend::ERROR_RESPONSE => (f.tag(), error_code(&f).into_bytes()),
            t => (t, f.as_bytes().to_vec()),
        })
        .collect();
    if sort_rows {
        v.sort();
    }
    v
}

/// What a client would get from the reference server for `request` (up to ReadyForQuery).
async fn reference(
    conn: &mut ServerConn,
    client_sql: &str,
    request: &ScatterRequest,
) -> Vec<Frame> {
    let mut m = BytesMut::new();
    match request {
        ScatterRequest::Simple { .. } => frontend::write_query(&mut m, client_sql),
        ScatterRequest::Extended {
            param_types,
            param_formats,
            params,
            result_formats,
            client_describe,
            row_limit,
            ..
        } => {
            frontend::write_parse(&mut m, "", client_sql.as_bytes(), param_types);
            write_bind(&mut m, param_formats, params, result_formats);
            if let Some(kind) = client_describe {
                frontend::write_describe(&mut m, *kind, "");
            }
            if *row_limit == 0 {
                write_execute(&mut m);
            } else {
                frontend::write_message(&mut m, frontend::EXECUTE, |b| {
                    b.extend_from_slice(b"\0");
                    b.extend_from_slice(&(*row_limit as i32).to_be_bytes());
                });
            }
            frontend::write_sync(&mut m);
        }
    }
    conn.write_all(&m).await.expect("write");
    let mut v = Vec::new();
    loop {
        let f = conn.read_frame().await.expect("read");
        if f.tag() == backend::READY_FOR_QUERY {
            return v;
        }
        v.push(f);
    }
}

struct Case {
    sql: &'static str,
    /// Rows must come in this order (the ORDER BY is total).
    ordered: bool,
}

const SIMPLE: &[Case] = &[
    Case { sql: "select user_id, name from users", ordered: false },
    Case { sql: "select * from users order by user_id", ordered: true },
    Case { sql: "select * from users order by user_id desc limit 7 offset 3", ordered: true },
    Case { sql: "select user_id, score from users order by score desc nulls last, user_id limit 20", ordered: true },
    Case { sql: "select user_id, score from users order by score nulls first, user_id", ordered: true },
    Case { sql: "select name, user_id from users order by name, user_id", ordered: true },
    Case { sql: "select user_id, created_at from users order by created_at, user_id", ordered: true },
    Case { sql: "select user_id, active from users order by active desc, user_id offset 10", ordered: true },
    Case { sql: "select * from users order by name desc, user_id limit 5", ordered: true },
    Case { sql: "select count(*) from users", ordered: true },
    Case { sql: "select count(*), count(name), sum(age), min(score), max(score), avg(age), avg(score) from users", ordered: true },
    Case { sql: "select sum(user_id), avg(user_id), min(created_at), max(name) from users", ordered: true },
    Case { sql: "select count(*), sum(age), avg(score) from users where user_id < 0", ordered: true },
    Case { sql: "select status, count(*), sum(amount), avg(qty), min(amount) from orders group by status order by status", ordered: true },
    Case { sql: "select status, count(*) from orders group by status order by 2 desc, 1", ordered: true },
    Case { sql: "select active, avg(score) from users group by active", ordered: false },
    Case { sql: "select status, qty, count(*) from orders group by status, qty order by status, qty limit 6 offset 2", ordered: true },
    Case { sql: "select status, count(*) from orders where user_id < 0 group by status", ordered: true },
    Case { sql: "select user_id, name from users where user_id in (1, 2, 3, 40, 41) order by user_id", ordered: true },
    Case { sql: "select u.user_id, o.order_id, o.amount from users u join orders o on o.user_id = u.user_id order by o.order_id limit 25", ordered: true },
    Case { sql: "select user_id from users where false order by user_id", ordered: true },
];

fn extended(
    params: &[Option<&[u8]>],
    param_formats: Vec<i16>,
    result_formats: Vec<i16>,
    describe: Option<u8>,
) -> ScatterRequest {
    ScatterRequest::Extended {
        sql: String::new(),
        param_types: vec![],
        param_formats,
        params: params
            .iter()
            .map(|p| p.map(Bytes::copy_from_slice))
            .collect(),
        result_formats,
        client_sent_parse: true,
        client_describe: describe,
        row_limit: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_results_equal_one_servers() {
    let clusters = tokio::task::spawn_blocking(|| {
        (0..3)
            .map(|_| {
                let c =
                    PgCluster::start(ClusterOptions::default().user(USER, PASSWORD, Auth::Scram))
                        .expect("start PostgreSQL");
                c.create_database(DB, USER).expect("create database");
                c
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("join");
    let (reference_cluster, shard_clusters) = clusters.split_first().expect("3 clusters");
    let cfg = config(&shard_clusters.iter().map(|c| c.port()).collect::<Vec<_>>());
    let router = Router::new(&cfg).expect("router");
    let all = rows();
    load(reference_cluster, &all.iter().collect::<Vec<_>>());
    for (i, c) in shard_clusters.iter().enumerate() {
        let mine: Vec<_> = all
            .iter()
            .filter(|r| router.shard_for_key(&KeyValue::Int(r.0)) == i)
            .collect();
        assert!(!mine.is_empty(), "every shard holds rows");
        load(c, &mine);
    }
    let mut reference_conn = connect(reference_cluster.port()).await;
    let mut shard_conns = Vec::new();
    for c in shard_clusters {
        shard_conns.push(connect(c.port()).await);
    }
    let names: Vec<String> = vec!["s0".into(), "s1".into()];

    let mut cases: Vec<(&str, bool, ScatterRequest)> = SIMPLE
        .iter()
        .map(|c| {
            (
                c.sql,
                c.ordered,
                ScatterRequest::Simple { sql: String::new() },
            )
        })
        .collect();
    let limit_sql =
        "select user_id, name, score, created_at from users order by user_id limit $1 offset $2";
    let group_sql = "select status, count(*), sum(amount), avg(qty) from orders group by status order by status";
    let five = 5i64.to_be_bytes();
    cases.push((
        limit_sql,
        true,
        extended(&[Some(b"5"), Some(b"3")], vec![], vec![1], Some(b'P')),
    ));
    cases.push((
        limit_sql,
        true,
        extended(&[Some(&five), Some(b"0")], vec![1, 0], vec![0], Some(b'S')),
    ));
    cases.push((
        limit_sql,
        true,
        extended(&[None, Some(b"50")], vec![], vec![], None),
    ));
    cases.push((group_sql, true, extended(&[], vec![], vec![1], Some(b'P'))));
    cases.push((
        group_sql,
        true,
        extended(&[], vec![], vec![0, 1, 0, 1], Some(b'S')),
    ));
    cases.push((
        "select user_id, score from users order by score desc, user_id",
        true,
        extended(&[], vec![], vec![1], Some(b'P')),
    ));
    cases.push((
        "select user_id, created_at, name from users order by created_at desc, name, user_id",
        true,
        extended(&[], vec![], vec![1], None),
    ));
    cases.push((
        "select count(*), avg(score) from users where user_id > $1",
        true,
        extended(&[Some(b"1000")], vec![], vec![1], Some(b'P')),
    ));
    // An Execute row limit (asyncpg's fetchrow/fetchval): at most that many rows, then
    // PortalSuspended when exactly that many came, as from one PostgreSQL.
    let limited = |row_limit: u64, params: &[Option<&[u8]>]| {
        let mut r = extended(params, vec![], vec![1], Some(b'P'));
        if let ScatterRequest::Extended { row_limit: l, .. } = &mut r {
            *l = row_limit;
        }
        r
    };
    cases.push((limit_sql, true, limited(2, &[Some(b"5"), Some(b"3")])));
    cases.push((limit_sql, true, limited(10, &[Some(b"5"), Some(b"3")])));
    cases.push((group_sql, true, limited(1, &[])));
    cases.push((
        "select count(*), avg(score) from users where user_id > $1",
        true,
        limited(1, &[Some(b"0")]),
    ));
    cases.push((
        "select user_id, score from users order by score desc, user_id",
        true,
        limited(3, &[]),
    ));
    // Errors: the shard's error instead of rows.
    cases.push((
        "select user_id / (age - age) from users",
        false,
        ScatterRequest::Simple { sql: String::new() },
    ));
    cases.push((
        "select 1/(age - age) from users order by 1",
        false,
        extended(&[], vec![], vec![], Some(b'P')),
    ));

    for (sql, ordered, template) in cases {
        let plan = router.plan(sql);
        let spec = plan
            .merge
            .clone()
            .unwrap_or_else(|| panic!("{sql}: no merge spec ({:?})", plan.unsupported_cross_shard));
        let shard_sql = spec.shard_sql.clone().unwrap_or_else(|| sql.to_owned());
        let request = match template.clone() {
            ScatterRequest::Simple { .. } => ScatterRequest::Simple { sql: shard_sql },
            ScatterRequest::Extended {
                param_types,
                param_formats,
                params,
                result_formats,
                client_sent_parse,
                client_describe,
                row_limit,
                ..
            } => ScatterRequest::Extended {
                sql: shard_sql,
                param_types,
                param_formats,
                params,
                result_formats,
                client_sent_parse,
                client_describe,
                row_limit,
            },
        };
        let expected = reference(&mut reference_conn, sql, &template).await;
        let mut out = BytesMut::new();
        let mut servers: Vec<&mut ServerConn> = shard_conns.iter_mut().collect();
        run(
            &mut servers,
            &names,
            &request,
            &spec,
            ScatterLimits::default(),
            &mut out,
        )
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let got = frames(out.freeze());
        if let Some(e) = got.iter().find(|f| f.tag() == backend::ERROR_RESPONSE) {
            let message = backend::error_fields(e).expect("E").message;
            assert!(message.starts_with("shard s"), "{sql}: {message}");
        }
        let expected = normalise(expected, !ordered);
        let got = normalise(got, !ordered);
        if let Some(error) = expected.iter().find(|f| f.0 == backend::ERROR_RESPONSE) {
            // One server sends what it had before the error; the merge sends the error alone.
            assert_eq!(got, vec![error.clone()], "{sql}");
        } else {
            assert_eq!(got, expected, "{sql} ({template:?})");
        }
        for c in &shard_conns {
            assert_eq!(c.status(), shardgate_pool::TransactionStatus::Idle);
        }
    }

    // Refusals keep the connections usable.
    let mut servers: Vec<&mut ServerConn> = shard_conns.iter_mut().collect();
    // (The router gathers this statement into PostgreSQL; a merge spec with the LIMIT added
    // by hand checks the scatter's own guard.)
    let sql = "select status, count(*) from orders group by status order by 2 desc limit 2";
    let mut spec = router
        .plan("select status, count(*) from orders group by status order by 2 desc")
        .merge
        .clone()
        .expect("spec");
    spec.limit = Some(shardgate_router::RowCount::Value(2));
    let mut out = BytesMut::new();
    run(
        &mut servers,
        &names,
        &ScatterRequest::Simple { sql: sql.into() },
        &spec,
        ScatterLimits::default(),
        &mut out,
    )
    .await
    .expect("run");
    let got = frames(out.freeze());
    assert_eq!(got.len(), 1);
    assert_eq!(error_code(&got[0]), "0A000");
    drop(servers);
    drop(shard_conns);
    drop(reference_conn);
    tokio::task::spawn_blocking(move || drop(clusters))
        .await
        .ok();
}
