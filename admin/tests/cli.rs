//! `shardgate admin …` in process against a running AdminServer: tables, `--json`, the token,
//! the stubs, and the one-line reasons for failures.

mod common;

use std::sync::atomic::Ordering;

use clap::{CommandFactory, Parser, Subcommand};
use common::TestServer;
use shardgate_admin::cli::{self, AdminArgs};

const TOKEN: &str = "cli-token";

/// The same shape as the `shardgate` binary: `shardgate admin …`.
#[derive(Parser)]
struct Shardgate {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Admin(AdminArgs),
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

fn admin(args: &[&str]) -> Outcome {
    let argv = ["shardgate", "admin"].iter().chain(args);
    let Command::Admin(parsed) = Shardgate::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .command;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let code = cli::run_with(&parsed, &mut stdout, &mut stderr);
    Outcome {
        code,
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

/// Runs `args` against `server` with the right token; asserts success.
fn ok(server: &TestServer, args: &[&str]) -> String {
    let mut full = vec!["--url", server.url.as_str(), "--token", TOKEN];
    full.extend_from_slice(args);
    let out = admin(&full);
    assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
    assert_eq!(out.stderr, "");
    out.stdout
}

/// Runs `args` against `server`; asserts failure with exactly one line on stderr.
fn fails(server_url: &str, args: &[&str]) -> String {
    let mut full = vec!["--url", server_url];
    full.extend_from_slice(args);
    let out = admin(&full);
    assert_eq!(out.code, 1, "{args:?} should fail: {}", out.stdout);
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr.lines().count(), 1, "{:?}", out.stderr);
    assert!(out.stderr.starts_with("shardgate admin: "));
    out.stderr
}

/// Runs a rebalance command against `server`; asserts failure with `error:` and `hint:` lines.
fn fails_labeled(server_url: &str, args: &[&str]) -> String {
    let mut full = vec!["--url", server_url];
    full.extend_from_slice(args);
    let out = admin(&full);
    assert_eq!(out.code, 1, "{args:?} should fail: {}", out.stdout);
    assert_eq!(out.stdout, "");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{:?}", out.stderr);
    assert!(lines[0].starts_with("error: "), "{:?}", out.stderr);
    assert!(lines[1].starts_with("hint: "), "{:?}", out.stderr);
    out.stderr
}

#[test]
fn clap_definition_is_consistent() {
    Shardgate::command().debug_assert();
}

#[test]
fn tables_for_people() {
    let server = TestServer::start(Some(TOKEN));

    let shards = ok(&server, &["shards", "list"]);
    assert_eq!(
        shards,
        "topology version 7\n\
         NAME  PRIMARY         UP   REPLICAS        SLOTS  SHARE\n\
         s1    127.0.0.1:5433  yes  127.0.0.1:5434   8192  50.0%\n\
         s2    127.0.0.1:5435  no   -                8192  50.0%\n"
    );

    let pools = ok(&server, &["pools"]);
    let mut lines = pools.lines();
    assert_eq!(
        lines.next().unwrap(),
        "SHARD  ROLE     HOST            DB   USER       SIZE  MIN  MAX  OPEN  IDLE  IN_USE  WAITING"
    );
    assert_eq!(
        lines.next().unwrap(),
        "s1     primary  127.0.0.1:5433  app  app           4    2   20     3     2       1        1"
    );
    assert_eq!(pools.lines().count(), 5);

    let replicas = ok(&server, &["replicas"]);
    assert_eq!(
        replicas,
        "SHARD  HOST            STATE  READS     LAG  LAG_BYTES  REPLAY_LSN  QUERIES  RUNNING  BANNED_FOR\n\
         s1     127.0.0.1:5434  ok     yes    0.250s       4096  0/3000148       120        2           -\n\
         s2     127.0.0.1:5436  down   no          -          -  -                 0        0        1.5s\n"
    );

    let reload = ok(&server, &["reload"]);
    assert_eq!(
        reload,
        "config reloaded\napplied: pool.size\nchanged but needs a restart: listen.addr\n"
    );
    server.shutdown();
}

#[test]
fn json_for_scripts() {
    let server = TestServer::start(Some(TOKEN));
    let parse = |args: &[&str]| -> serde_json::Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        serde_json::from_str(&ok(&server, &full)).unwrap()
    };
    assert_eq!(
        parse(&["shards", "list"]),
        serde_json::to_value(common::shards()).unwrap()
    );
    assert_eq!(
        parse(&["pools"]),
        serde_json::to_value(common::pools()).unwrap()
    );
    assert_eq!(
        parse(&["replicas"]),
        serde_json::to_value(common::replicas()).unwrap()
    );
    assert_eq!(
        parse(&["reload"]),
        serde_json::json!({ "applied": ["pool.size"], "needs_restart": ["listen.addr"] })
    );
    // --json is accepted after the command too.
    let out = ok(&server, &["pools", "--json"]);
    assert!(out.starts_with('['));
    server.shutdown();
}

#[test]
fn token_missing_or_wrong() {
    let server = TestServer::start(Some(TOKEN));
    for args in [
        vec!["pools"],
        vec!["--token", "wrong", "pools"],
        vec!["--token", "wrong", "--json", "shards", "list"],
        vec!["replicas"],
        vec!["reload"],
    ] {
        let err = fails(&server.url, &args);
        assert!(err.contains("HTTP 401"), "{err}");
        assert!(
            err.contains("pass --token or set SHARDGATE_ADMIN_TOKEN"),
            "{err}"
        );
    }
    assert!(fails(&server.url, &["--token", "wrong", "pools"]).contains("wrong admin token"));
    // A server without a token ignores one that is passed.
    let open = TestServer::start(None);
    assert_eq!(
        admin(&["--url", &open.url, "--token", "x", "pools"]).code,
        0
    );
    assert_eq!(admin(&["--url", &open.url, "pools"]).code, 0);
    open.shutdown();
    server.shutdown();
}

#[test]
fn refused_reload() {
    let server = TestServer::start(Some(TOKEN));
    server.control.reload_ok.store(false, Ordering::SeqCst);
    let err = fails(&server.url, &["--token", TOKEN, "reload"]);
    assert_eq!(
        err,
        "shardgate admin: reload refused, running config kept: shardgate.toml: pool.size: \
         expected an integer (HTTP 422); fix the file and reload again\n"
    );
    server.shutdown();
}

#[test]
fn shard_changes_print_the_servers_refusal() {
    let server = TestServer::start(Some(TOKEN));
    for args in [
        vec!["shards", "add", "s3", "--primary", "127.0.0.1:5437"],
        vec![
            "shards",
            "add",
            "s3",
            "--primary",
            "127.0.0.1:5437",
            "--replica",
            "127.0.0.1:5438",
            "--replica",
            "127.0.0.1:5439",
        ],
        vec![
            "shards",
            "add",
            "s3",
            "--primary",
            "postgres://rebalancer:pw@127.0.0.1:5437",
            "--admin-user",
            "rebalancer",
            "--admin-password",
            "pw",
        ],
        vec!["shards", "remove", "s2"],
        vec!["shards", "remove", "odd name/with?chars"],
        vec!["rebalance", "status"],
        vec!["rebalance", "status", "--watch"],
        vec!["rebalance", "status", "--watch", "--interval", "1s"],
        vec!["--json", "rebalance", "status", "--watch"],
        vec!["rebalance", "abort"],
        vec!["--json", "rebalance", "abort"],
    ] {
        let mut full = vec!["--token", TOKEN];
        full.extend_from_slice(&args);
        let err = fails_labeled(&server.url, &full);
        assert!(
            err.contains("is not implemented yet (HTTP 501)"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("live rebalancing is not available yet"),
            "{err}"
        );
    }
    // The name reaches the server as one path segment.
    let err = fails_labeled(&server.url, &["--token", TOKEN, "shards", "remove", "a/b"]);
    assert!(err.contains("DELETE /api/v1/shards/a%2Fb"), "{err}");
    server.shutdown();
}

#[test]
fn unreachable_and_bad_urls() {
    // A port nothing listens on: bind one, then free it.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let err = fails(&url, &["pools"]);
    assert!(err.contains(&url), "{err}");
    assert!(err.contains("shardgate may not be running"), "{err}");
    assert!(err.contains("SHARDGATE_ADMIN_URL"), "{err}");

    let err = fails("https://127.0.0.1:9930", &["pools"]);
    assert!(err.contains("https is not supported"), "{err}");
    let err = fails("127.0.0.1:9930", &["pools"]);
    assert!(err.contains("expected http://HOST:PORT"), "{err}");
    // A trailing slash is fine.
    let server = TestServer::start(None);
    let out = admin(&["--url", &format!("{}/", server.url), "pools"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    server.shutdown();
}

#[test]
fn usage_errors_are_clap_errors() {
    for args in [
        vec!["shards", "add", "s3"],
        vec!["shards"],
        // --interval only means something with --watch, and must not hammer the server.
        vec!["rebalance", "status", "--interval", "1s"],
        vec!["rebalance", "status", "--watch", "--interval", "10ms"],
        vec!["rebalance", "status", "--watch", "--interval", "soon"],
        vec!["frobnicate"],
    ] {
        let argv = ["shardgate", "admin"]
            .iter()
            .chain(&args)
            .copied()
            .collect::<Vec<_>>();
        assert!(Shardgate::try_parse_from(argv).is_err(), "{args:?}");
    }
}
