//! `SHARDGATE_ADMIN_URL` and `SHARDGATE_ADMIN_TOKEN` stand in for `--url` and `--token`. A test
//! binary of its own with a single test: it changes the process environment.

mod common;

use clap::{Parser, Subcommand};
use common::TestServer;
use shardgate_admin::cli::{self, AdminArgs};

#[derive(Parser)]
struct Shardgate {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Admin(AdminArgs),
}

fn parse(args: &[&str]) -> AdminArgs {
    let argv = ["shardgate", "admin"].iter().chain(args);
    let Command::Admin(parsed) = Shardgate::try_parse_from(argv).unwrap().command;
    parsed
}

#[test]
fn environment_fallbacks() {
    std::env::remove_var("SHARDGATE_ADMIN_URL");
    std::env::remove_var("SHARDGATE_ADMIN_TOKEN");
    let defaults = parse(&["pools"]);
    assert_eq!(defaults.url, "http://127.0.0.1:9930");
    assert_eq!(defaults.token, None);

    let server = TestServer::start(Some("env-token"));
    std::env::set_var("SHARDGATE_ADMIN_URL", &server.url);
    std::env::set_var("SHARDGATE_ADMIN_TOKEN", "env-token");
    let from_env = parse(&["pools"]);
    assert_eq!(from_env.url, server.url);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(cli::run_with(&from_env, &mut out, &mut err), 0);
    assert!(String::from_utf8(out).unwrap().starts_with("SHARD"));

    // Flags win over the environment.
    let flagged = parse(&["--token", "wrong", "pools"]);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(cli::run_with(&flagged, &mut out, &mut err), 1);
    assert!(String::from_utf8(err).unwrap().contains("HTTP 401"));
    server.shutdown();
}
