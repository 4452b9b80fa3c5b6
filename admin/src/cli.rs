//! `shardgate admin …`: the command-line client of the admin HTTP API. Tables for people,
//! `--json` for scripts (the server's JSON as it came), and on failure a non-zero exit status
//! with one line on stderr saying why.

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;

use crate::client::{AdminClient, ClientError, Reply};
use crate::control::{PoolInfo, ReloadOutcome, ReplicaInfo, ShardInfo};
use crate::table::{self, Align};
use crate::ErrorBody;

pub const DEFAULT_URL: &str = "http://127.0.0.1:9930";

/// How often `rebalance status --watch` asks again.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Exit status of a failed command (clap uses 2 for usage errors).
pub const EXIT_FAILURE: i32 = 1;

/// See the shards, pools and replicas of a running shardgate, reload its config.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// Root URL of shardgate's admin API (admin.listen).
    #[arg(long, env = "SHARDGATE_ADMIN_URL", default_value = DEFAULT_URL, global = true)]
    pub url: String,
    /// Admin token (admin.token), needed when the server has one.
    #[arg(
        long,
        env = "SHARDGATE_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum AdminCommand {
    /// List, add or remove shards.
    #[command(subcommand)]
    Shards(ShardsCommand),
    /// Server connection pools: sizes, open, idle and busy connections, waiting clients.
    Pools,
    /// Replicas: state, lag, whether they serve reads.
    Replicas,
    /// Re-read the config file and apply what can change live.
    Reload,
    /// Progress of a live rebalance, or abort it.
    #[command(subcommand)]
    Rebalance(RebalanceCommand),
}

#[derive(Subcommand, Debug, Clone)]
pub enum ShardsCommand {
    /// The shards of the current topology.
    List,
    /// Add a shard and rebalance onto it (not available yet).
    Add {
        name: String,
        /// HOST:PORT of the new shard's primary.
        #[arg(long)]
        primary: String,
        /// HOST:PORT of a replica (repeatable).
        #[arg(long = "replica")]
        replicas: Vec<String>,
    },
    /// Move a shard's data away and remove it (not available yet).
    Remove { name: String },
}

#[derive(Subcommand, Debug, Clone)]
pub enum RebalanceCommand {
    /// Progress of the running rebalance.
    Status {
        /// Ask again every 2 seconds until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Abort the running rebalance.
    Abort,
}

/// Runs the command, printing to stdout and stderr; returns the process exit status.
pub fn run(args: AdminArgs) -> i32 {
    run_with(&args, &mut std::io::stdout(), &mut std::io::stderr())
}

/// [`run`] with the output streams given (tests capture them).
pub fn run_with(args: &AdminArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let result = execute(args, out).and_then(|()| out.flush().map_err(|e| e.to_string()));
    match result {
        Ok(()) => 0,
        Err(reason) => {
            let _ = writeln!(err, "shardgate admin: {reason}");
            EXIT_FAILURE
        }
    }
}

fn execute(args: &AdminArgs, out: &mut dyn Write) -> Result<(), String> {
    let client = AdminClient::new(&args.url, args.token.clone()).map_err(|e| e.to_string())?;
    let json = args.json;
    match &args.command {
        AdminCommand::Shards(ShardsCommand::List) => {
            let reply = expect_success(client.get("/api/v1/shards"))?;
            show(out, json, &reply, shards_table)
        }
        AdminCommand::Shards(ShardsCommand::Add {
            name,
            primary,
            replicas,
        }) => {
            let body =
                serde_json::json!({ "name": name, "primary": primary, "replicas": replicas });
            let reply = expect_success(client.post("/api/v1/shards", Some(&body)))?;
            show_raw(out, json, &reply)
        }
        AdminCommand::Shards(ShardsCommand::Remove { name }) => {
            let path = format!("/api/v1/shards/{}", percent_encode(name));
            let reply = expect_success(client.delete(&path))?;
            show_raw(out, json, &reply)
        }
        AdminCommand::Pools => {
            let reply = expect_success(client.get("/api/v1/pools"))?;
            show(out, json, &reply, pools_table)
        }
        AdminCommand::Replicas => {
            let reply = expect_success(client.get("/api/v1/replicas"))?;
            show(out, json, &reply, replicas_table)
        }
        AdminCommand::Reload => {
            let reply = expect_success(client.post("/api/v1/reload", None))?;
            show(out, json, &reply, reload_text)
        }
        AdminCommand::Rebalance(RebalanceCommand::Status { watch }) => loop {
            let reply = expect_success(client.get("/api/v1/rebalance"))?;
            show_raw(out, json, &reply)?;
            if !watch {
                return Ok(());
            }
            out.flush().map_err(|e| e.to_string())?;
            std::thread::sleep(WATCH_INTERVAL);
        },
        AdminCommand::Rebalance(RebalanceCommand::Abort) => {
            let reply = expect_success(client.post("/api/v1/rebalance/abort", None))?;
            show_raw(out, json, &reply)
        }
    }
}

/// A 2xx reply, or the one-line reason the request failed.
fn expect_success(result: Result<Reply, ClientError>) -> Result<Reply, String> {
    let reply = result.map_err(|e| e.to_string())?;
    if reply.is_success() {
        return Ok(reply);
    }
    let body = serde_json::from_str::<ErrorBody>(&reply.body).ok();
    Err(match body {
        // The server's hint speaks of the HTTP header; say what to do with this command.
        Some(body) if reply.status == 401 => format!(
            "{} (HTTP 401): pass --token or set SHARDGATE_ADMIN_TOKEN",
            body.error
        ),
        Some(body) if body.hint.is_empty() => format!("{} (HTTP {})", body.error, reply.status),
        Some(body) => format!("{} (HTTP {}); {}", body.error, reply.status, body.hint),
        None => format!("HTTP {}: {}", reply.status, first_line(&reply.body)),
    })
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        "(empty body)".to_owned()
    } else {
        line.chars().take(200).collect()
    }
}

/// Prints the server's JSON (`--json`), or the table `format` makes of it.
fn show<T: DeserializeOwned>(
    out: &mut dyn Write,
    json: bool,
    reply: &Reply,
    format: fn(T) -> String,
) -> Result<(), String> {
    let text = if json {
        format!("{}\n", reply.body.trim_end())
    } else {
        let value = serde_json::from_str::<T>(&reply.body)
            .map_err(|e| format!("unexpected answer from the admin API ({e}); try --json"))?;
        format(value)
    };
    out.write_all(text.as_bytes()).map_err(|e| e.to_string())
}

/// For answers without a fixed shape yet: the JSON as it came, or indented for people.
fn show_raw(out: &mut dyn Write, json: bool, reply: &Reply) -> Result<(), String> {
    let pretty = serde_json::from_str::<serde_json::Value>(&reply.body)
        .ok()
        .filter(|_| !json)
        .and_then(|v| serde_json::to_string_pretty(&v).ok());
    let text = pretty.unwrap_or_else(|| reply.body.trim_end().to_owned());
    writeln!(out, "{text}").map_err(|e| e.to_string())
}

fn shards_table(shards: Vec<ShardInfo>) -> String {
    let Some(version) = shards.iter().map(|s| s.topology_version).max() else {
        return "no shards\n".to_owned();
    };
    let rows: Vec<Vec<String>> = shards
        .into_iter()
        .map(|s| {
            let share = if s.total_slots == 0 {
                "-".to_owned()
            } else {
                format!(
                    "{:.1}%",
                    100.0 * f64::from(s.slots) / f64::from(s.total_slots)
                )
            };
            vec![
                s.name,
                s.primary,
                yes_no(s.primary_up).to_owned(),
                list_or_dash(&s.replicas),
                s.slots.to_string(),
                share,
            ]
        })
        .collect();
    let columns = [
        ("NAME", Align::Left),
        ("PRIMARY", Align::Left),
        ("UP", Align::Left),
        ("REPLICAS", Align::Left),
        ("SLOTS", Align::Right),
        ("SHARE", Align::Right),
    ];
    format!(
        "topology version {version}\n{}",
        table::render(&columns, &rows)
    )
}

fn pools_table(pools: Vec<PoolInfo>) -> String {
    if pools.is_empty() {
        return "no pools\n".to_owned();
    }
    let rows: Vec<Vec<String>> = pools
        .into_iter()
        .map(|p| {
            vec![
                p.shard,
                p.role,
                p.host,
                p.database,
                p.user,
                p.size.to_string(),
                p.min_size.to_string(),
                p.max_size.to_string(),
                p.connections.to_string(),
                p.idle.to_string(),
                p.in_use.to_string(),
                p.waiting.to_string(),
            ]
        })
        .collect();
    let columns = [
        ("SHARD", Align::Left),
        ("ROLE", Align::Left),
        ("HOST", Align::Left),
        ("DB", Align::Left),
        ("USER", Align::Left),
        ("SIZE", Align::Right),
        ("MIN", Align::Right),
        ("MAX", Align::Right),
        ("OPEN", Align::Right),
        ("IDLE", Align::Right),
        ("IN_USE", Align::Right),
        ("WAITING", Align::Right),
    ];
    table::render(&columns, &rows)
}

fn replicas_table(replicas: Vec<ReplicaInfo>) -> String {
    if replicas.is_empty() {
        return "no replicas\n".to_owned();
    }
    let rows: Vec<Vec<String>> = replicas
        .into_iter()
        .map(|r| {
            vec![
                r.shard,
                r.host,
                r.state,
                yes_no(r.in_rotation).to_owned(),
                r.lag_seconds.map_or("-".into(), |s| format!("{s:.3}s")),
                r.lag_bytes.map_or("-".into(), |b| b.to_string()),
                r.replay_lsn.unwrap_or_else(|| "-".into()),
                r.queries.to_string(),
                r.outstanding.to_string(),
                r.banned_ms
                    .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
            ]
        })
        .collect();
    let columns = [
        ("SHARD", Align::Left),
        ("HOST", Align::Left),
        ("STATE", Align::Left),
        ("READS", Align::Left),
        ("LAG", Align::Right),
        ("LAG_BYTES", Align::Right),
        ("REPLAY_LSN", Align::Left),
        ("QUERIES", Align::Right),
        ("RUNNING", Align::Right),
        ("BANNED_FOR", Align::Right),
    ];
    table::render(&columns, &rows)
}

fn reload_text(outcome: ReloadOutcome) -> String {
    let mut text = String::from("config reloaded\n");
    if outcome.applied.is_empty() {
        text.push_str("applied: nothing changed\n");
    } else {
        text.push_str(&format!("applied: {}\n", outcome.applied.join(", ")));
    }
    if !outcome.needs_restart.is_empty() {
        text.push_str(&format!(
            "changed but needs a restart: {}\n",
            outcome.needs_restart.join(", ")
        ));
    }
    text
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}

/// Percent-encodes a path segment (everything but RFC 3986's unreserved characters).
fn percent_encode(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(percent_encode("s1"), "s1");
        assert_eq!(percent_encode("a b/c?é"), "a%20b%2Fc%3F%C3%A9");
    }

    #[test]
    fn error_replies_become_one_line() {
        let reply = |status, body: &str| {
            Ok(Reply {
                status,
                body: body.to_owned(),
            })
        };
        let e = expect_success(reply(501, r#"{"error":"not yet","hint":"later"}"#));
        assert_eq!(e.unwrap_err(), "not yet (HTTP 501); later");
        let e = expect_success(reply(401, r#"{"error":"wrong admin token","hint":""}"#));
        assert_eq!(
            e.unwrap_err(),
            "wrong admin token (HTTP 401): pass --token or set SHARDGATE_ADMIN_TOKEN"
        );
        let e = expect_success(reply(502, "<html>\nbad gateway"));
        assert_eq!(e.unwrap_err(), "HTTP 502: <html>");
        assert!(expect_success(reply(200, "[]")).is_ok());
    }

    #[test]
    fn reload_text_says_what_changed() {
        let text = reload_text(ReloadOutcome {
            applied: vec!["pool.size".into(), "users".into()],
            needs_restart: vec!["listen.addr".into()],
        });
        assert_eq!(
            text,
            "config reloaded\napplied: pool.size, users\nchanged but needs a restart: listen.addr\n"
        );
    }
}
