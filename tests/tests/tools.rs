//! PostgreSQL's own tools through shardgate in transaction mode: `psql` (commands, script files
//! with transactions and errors, `\copy` both ways) and `pgbench` in simple, extended and
//! prepared protocol with more clients than server connections.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::{Env, Setup, DB, PASSWORD, USER};
use shardgate_tests::psql::LIBPQ_ENV;
use shardgate_tests::{pg_bin, pgbench, pgbench_raw, PgbenchResult};

/// `psql -X -v ON_ERROR_STOP=1 -d <url> args…`, in `dir` (for relative `\copy` paths).
fn psql(url: &str, dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(pg_bin("psql").expect("psql"));
    for var in LIBPQ_ENV {
        cmd.env_remove(var);
    }
    cmd.env("PGPASSFILE", "/dev/null")
        .env("PGCONNECT_TIMEOUT", "10")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-d", url])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null());
    cmd.output().expect("run psql")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs psql and asserts it succeeded; returns stdout.
fn psql_ok(url: &str, dir: &Path, args: &[&str]) -> String {
    let out = psql(url, dir, args);
    assert!(
        out.status.success(),
        "psql {args:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs blocking work (a child process) off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_commands_files_and_copy() {
    let started = Instant::now();
    let env = Env::start(Setup::default().pool_size(4)).await;
    let url = env.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();

    // psql -c, twice in one call (each -c is its own request).
    let (u, p) = (url.clone(), path.clone());
    let out = blocking(move || {
        psql_ok(
            &u,
            &p,
            &[
                "-A",
                "-t",
                "-c",
                "select 41 + 1, 'a''b', null::int is null",
                "-c",
                "select current_user, current_database()",
            ],
        )
    })
    .await;
    assert_eq!(out, format!("42|a'b|t\n{USER}|{DB}\n"));

    // psql -f: DDL, inserts, a committed and a rolled-back transaction, selects; the output
    // (command tags included) is exactly what psql prints against the server itself.
    let script = r#"
create table tools_items (id int primary key, name text, amount numeric);
insert into tools_items values (1, 'one', 1.5), (2, 'two', 2.5);
insert into tools_items select g, 'gen ' || g, g from generate_series(3, 10) g;
begin;
update tools_items set amount = amount * 2 where id <= 2;
insert into tools_items values (11, 'in tx', 11);
commit;
begin;
delete from tools_items;
rollback;
select id, name, amount from tools_items where id in (1, 2, 11) order by id;
select count(*), sum(amount) from tools_items;
\echo done
"#;
    std::fs::write(path.join("script.sql"), script).unwrap();
    let (u, p) = (url.clone(), path.clone());
    let out = blocking(move || psql_ok(&u, &p, &["-A", "-f", "script.sql"])).await;
    let expected = "CREATE TABLE\nINSERT 0 2\nINSERT 0 8\nBEGIN\nUPDATE 2\nINSERT 0 1\nCOMMIT\n\
                    BEGIN\nDELETE 11\nROLLBACK\n\
                    id|name|amount\n1|one|3.0\n2|two|5.0\n11|in tx|11\n(3 rows)\n\
                    count|sum\n11|71.0\n(1 row)\ndone\n";
    assert_eq!(out, expected);

    // ON_ERROR_STOP: the statement after the error never runs, psql exits 3, and the proxy
    // leaves no transaction open behind.
    let failing = "begin;\ninsert into tools_items values (20, 'twenty', 20);\n\
                   insert into tools_items values (1, 'duplicate', 0);\n\
                   insert into tools_items values (21, 'never', 21);\ncommit;\n";
    std::fs::write(path.join("failing.sql"), failing).unwrap();
    let (u, p) = (url.clone(), path.clone());
    let out = blocking(move || psql(&u, &p, &["-f", "failing.sql"])).await;
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("duplicate key value violates unique constraint"),
        "{}",
        text(&out.stderr)
    );
    // ON_ERROR_ROLLBACK makes psql wrap each statement in a savepoint: the error is rolled
    // back to it and the transaction commits the rest.
    let recovering = "\\set ON_ERROR_STOP 0\n\\set ON_ERROR_ROLLBACK on\nbegin;\n\
                      insert into tools_items values (30, 'thirty', 30);\n\
                      insert into tools_items values (1, 'duplicate', 0);\n\
                      insert into tools_items values (31, 'thirty-one', 31);\ncommit;\n";
    std::fs::write(path.join("recovering.sql"), recovering).unwrap();
    let (u, p) = (url.clone(), path.clone());
    blocking(move || psql_ok(&u, &p, &["-q", "-f", "recovering.sql"])).await;
    let direct = env.connect_direct().await;
    let ids: Vec<i32> = direct
        .query("select id from tools_items where id >= 20 order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [30, 31]);
    let open: i64 = direct
        .query_one(
            "select count(*) from pg_stat_activity where usename = $1 and state <> 'idle' \
             and pid <> pg_backend_pid()",
            &[&USER],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0, "a server connection was left inside a transaction");

    // \copy to a file and back: same bytes, same rows. Tabs, newlines, backslashes, NULLs,
    // non-ASCII and empty strings survive the text format.
    let (u, p) = (url.clone(), path.clone());
    let out = blocking(move || {
        psql_ok(
            &u,
            &p,
            &[
                "-q",
                "-c",
                "create table copy_src (id int, t text, b bytea, j jsonb)",
                "-c",
                "insert into copy_src select g, case when g % 5 = 0 then null \
                 when g % 7 = 0 then E'tab\\there\\nnewline \\\\ back' \
                 when g % 11 = 0 then '' else 'héllo ' || g end, \
                 decode(md5(g::text), 'hex'), jsonb_build_object('g', g) \
                 from generate_series(1, 2000) g",
                "-c",
                "create table copy_dst (like copy_src)",
                "-c",
                "\\copy copy_src to 'src.tsv'",
                "-c",
                "\\copy copy_dst from 'src.tsv'",
                "-c",
                "\\copy copy_dst to 'dst.tsv'",
                "-c",
                "\\copy (select id, t from copy_src where id <= 3 order by id) to 'src.csv' with (format csv, header)",
                "-c",
                "\\copy copy_dst (id, t) from 'src.csv' with (format csv, header)",
                "-A",
                "-t",
                "-c",
                "select count(*) from copy_dst",
            ],
        )
    })
    .await;
    assert_eq!(out.trim(), "2003");
    let src = std::fs::read(path.join("src.tsv")).unwrap();
    let dst = std::fs::read(path.join("dst.tsv")).unwrap();
    assert_eq!(src.iter().filter(|&&b| b == b'\n').count(), 2000);
    assert!(
        src == dst,
        "\\copy to / \\copy from / \\copy to changed the data"
    );
    assert_eq!(
        std::fs::read_to_string(path.join("src.csv")).unwrap(),
        "id,t\n1,héllo 1\n2,héllo 2\n3,héllo 3\n"
    );
    let differing: i64 = direct
        .query_one(
            "select count(*) from (select * from copy_src except all \
             select * from copy_dst where id > 3 or b is not null) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(differing, 0, "rows differ after the \\copy round trip");

    // A \copy from a file with bad data fails cleanly and the connection still works.
    std::fs::write(path.join("bad.tsv"), "1\tok\nnot-a-number\tx\n").unwrap();
    let (u, p) = (url.clone(), path.clone());
    let out = blocking(move || {
        psql(
            &u,
            &p,
            &[
                "-c",
                "\\copy copy_dst (id, t) from 'bad.tsv'",
                "-c",
                "select 1",
            ],
        )
    })
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("invalid input syntax for type integer"),
        "{}",
        text(&out.stderr)
    );
    let (u, p) = (url.clone(), path.clone());
    let out = blocking(move || {
        psql_ok(
            &u,
            &p,
            &[
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=0",
                "-c",
                "\\copy copy_dst (id, t) from 'bad.tsv'",
                "-c",
                "select count(*) from copy_dst",
            ],
        )
    })
    .await;
    assert_eq!(out.trim(), "2003");

    drop(direct);
    env.stop().await;
    eprintln!("psql test took {:?}", started.elapsed());
}

/// pgbench's connection arguments and environment for `port`.
fn bench_args(port: u16) -> Vec<String> {
    ["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER, DB]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn bench_env() -> Vec<(&'static str, &'static str)> {
    vec![("PGPASSWORD", PASSWORD), ("PGPASSFILE", "/dev/null")]
}

/// Sums of the TPC-B tables: (accounts, tellers, branches, history delta, history rows).
async fn tpcb_sums(env: &Env) -> (i64, i64, i64, i64, i64) {
    let direct = env.connect_direct().await;
    let row = direct
        .query_one(
            "select (select sum(abalance) from pgbench_accounts)::int8, \
                    (select sum(tbalance) from pgbench_tellers)::int8, \
                    (select sum(bbalance) from pgbench_branches)::int8, \
                    (select coalesce(sum(delta), 0) from pgbench_history)::int8, \
                    (select count(*) from pgbench_history)::int8",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
}

/// The TPC-B invariant: every committed transaction added the same delta to one account,
/// teller and branch and logged it in the history (which pgbench empties before each run), so
/// a transaction the proxy lost half of, or ran twice, shows here.
async fn assert_tpcb_consistent(env: &Env, branches_before: i64, result: &PgbenchResult) {
    let (a, t, b, h, n) = tpcb_sums(env).await;
    assert_eq!((a, t), (b, b), "account/teller/branch balances disagree");
    assert_eq!(
        b - branches_before,
        h,
        "balances moved by other than the history's deltas"
    );
    let processed = result.transactions as i64;
    assert!(
        (processed..=processed + 32).contains(&n),
        "{n} history rows for {processed} transactions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_all_protocols_on_a_small_pool() {
    let env = Env::start(Setup::default().pool_size(8)).await;
    // Initialise against the server itself.
    let direct = bench_args(env.cluster.port());
    blocking(move || {
        let mut args = vec!["-i".to_string(), "-s".into(), "1".into(), "-q".into()];
        args.extend(direct);
        pgbench_raw(&args, &bench_env()).expect("pgbench -i")
    })
    .await;

    let mut summary = Vec::new();
    for (mode, script) in [
        ("simple", None),
        ("extended", Some("-S")),
        ("prepared", None),
    ] {
        let port = env.port();
        let branches_before = tpcb_sums(&env).await.2;
        let started = Instant::now();
        let result = blocking(move || {
            let mut args: Vec<String> = ["-M", mode, "-c", "32", "-j", "2", "-T", "15"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            args.extend(script.map(str::to_string));
            args.extend(bench_args(port));
            pgbench(&args, &bench_env())
        })
        .await
        .unwrap_or_else(|e| panic!("pgbench -M {mode}: {e}"));
        let kind = if script.is_some() {
            "select-only"
        } else {
            "TPC-B"
        };
        eprintln!(
            "pgbench -M {mode} ({kind}), 32 clients on 8 server connections: {} transactions, \
             {:.0} tps, {} failed, in {:?}",
            result.transactions,
            result.tps,
            result.failed,
            started.elapsed()
        );
        assert_eq!(
            (result.exit_code, result.failed),
            (0, 0),
            "pgbench -M {mode} had failures:\n{}\n{}",
            result.stdout,
            result.stderr
        );
        assert!(
            result.transactions > 0,
            "pgbench -M {mode} processed nothing:\n{}\n{}",
            result.stdout,
            result.stderr
        );
        if script.is_none() {
            assert_tpcb_consistent(&env, branches_before, &result).await;
        }
        summary.push((mode, result.tps));
    }
    eprintln!("pgbench tps through shardgate: {summary:?}");
    env.stop().await;
}
