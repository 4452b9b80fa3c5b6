//! `shardgate admin …`: the command-line client of the admin HTTP API. Tables for people,
//! `--json` for scripts (the server's JSON as it came), and on failure a non-zero exit status
//! with one line on stderr saying why — or, for the rebalance commands, `error:` and `hint:`
//! lines (and the running job's id when one is in the way).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;
use shardgate_topology::Job;

use crate::client::{AdminClient, ClientError, Reply};
use crate::control::{ReloadOutcome, SetHostsOutcome, SetHostsRequest};
use crate::rebalance::{AddShardRequest, RebalanceStatus};
use crate::status;
use crate::table::{pools_table, references_table, replicas_table, sequences_table, shards_table};
use crate::transactions::{recovery_text, transactions_table};
use crate::watch::{self, Fetched, Screen};
use crate::ErrorBody;

pub const DEFAULT_URL: &str = "http://127.0.0.1:9930";

/// Shortest `--interval`: each ask reads the topology store.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// How long `--watch` keeps asking a proxy that stopped answering: long enough for it to
/// restart (and take the job over) without ending the watch.
const RECONNECT_GRACE: Duration = Duration::from_secs(15);

/// Exit status of a failed command (clap uses 2 for usage errors).
pub const EXIT_FAILURE: i32 = 1;

/// See the shards, pools and replicas of a running shardgate, reload its config, add or
/// remove shards live.
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
    /// Sequences of sharded tables on every shard: id lane, increment, last value, warnings.
    Sequences,
    /// Compare data across shards; exits 1 when the copies differ.
    #[command(subcommand)]
    Verify(VerifyCommand),
    /// In-doubt two-phase transactions on every shard and the stored commit decisions.
    Transactions {
        /// Resolve them now (commit those with a decision, roll back the others) and print
        /// what was done.
        #[arg(long)]
        resolve: bool,
    },
    /// Per-query statistics: calls, errors, time, rows and routes of each statement shape.
    Queries {
        /// total_time, calls, mean_time or errors.
        #[arg(long, default_value = "total_time")]
        sort: String,
        /// How many statements to show.
        #[arg(long, default_value_t = crate::queries::DEFAULT_LIMIT)]
        limit: usize,
        /// Forget every statement's statistics instead.
        #[arg(long, conflicts_with_all = ["sort", "limit"])]
        reset: bool,
    },
    /// The sharding readiness report of an observing proxy ([sharding] mode = "observe").
    Readiness,
    /// Re-read the config file and apply what can change live.
    Reload,
    /// Progress of a live rebalance, or abort it.
    #[command(subcommand)]
    Rebalance(RebalanceCommand),
}

#[derive(Subcommand, Debug, Clone)]
pub enum VerifyCommand {
    /// Each reference table's row count and checksum on every shard; exit status 1 when a
    /// copy differs (or a shard could not be read).
    References,
}

#[derive(Subcommand, Debug, Clone)]
pub enum ShardsCommand {
    /// The shards of the current topology.
    List,
    /// Add a shard and move its share of the data onto it, live; returns at once with the job.
    Add {
        name: String,
        // In `help`, not a doc comment: rustdoc reads the brackets as links.
        #[arg(
            long,
            help = "The new shard's primary: postgres://[USER[:PASSWORD]@]HOST[:PORT][?sslmode=…] \
                    or HOST[:PORT]; a user and password in it are the rebalancer's login there"
        )]
        primary: String,
        /// A replica, in the same form (repeatable).
        #[arg(long = "replica")]
        replicas: Vec<String>,
        /// Role the rebalancer logs in as on the new shard (default: rebalance.admin_user).
        #[arg(long)]
        admin_user: Option<String>,
        /// Its password (the environment keeps it out of the process list).
        #[arg(long, env = "SHARDGATE_SHARD_ADMIN_PASSWORD", hide_env_values = true)]
        admin_password: Option<String>,
    },
    /// Move a shard's data to the others, live, and remove it; returns at once with the job.
    Remove { name: String },
    /// Name a shard's hosts from now on (every proxy of the fleet follows): the primary named
    /// takes the writes. Confirms a failover, or un-fences a host by naming it the primary.
    Hosts {
        name: String,
        #[arg(
            long,
            help = "The primary: HOST[:PORT], [V6]:PORT, a socket directory or postgres://HOST[:PORT][?sslmode=…]"
        )]
        primary: String,
        /// A replica, in the same form (repeatable; none: the shard has no replicas).
        #[arg(long = "replica")]
        replicas: Vec<String>,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum RebalanceCommand {
    /// The running (or last) rebalance job, the topology version and each proxy's version.
    Status {
        /// Follow the job with a progress bar until it ends; exit 0 if it is done, 1 if it
        /// failed or was aborted.
        #[arg(long)]
        watch: bool,
        /// How often --watch asks: 500ms, 2s, 1m.
        #[arg(long, default_value = "500ms", value_parser = parse_interval, requires = "watch")]
        interval: Duration,
    },
    /// Abort the running job: back to the old topology, the targets' partial copies removed.
    Abort,
}

/// Runs the command, printing to stdout and stderr; returns the process exit status.
pub fn run(args: AdminArgs) -> i32 {
    // The bar redraws in place on stderr, the summary goes to stdout: both must be terminals.
    let tty = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    run_on(&args, &mut std::io::stdout(), &mut std::io::stderr(), tty)
}

/// [`run`] with the output streams given (tests capture them); never draws a progress bar.
pub fn run_with(args: &AdminArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    run_on(args, out, err, false)
}

fn run_on(args: &AdminArgs, out: &mut dyn Write, err: &mut dyn Write, tty: bool) -> i32 {
    let result = execute(args, out, tty).and_then(|code| {
        out.flush()?;
        Ok(code)
    });
    match result {
        Ok(code) => code,
        Err(failure) => {
            let _ = err.write_all(failure.render().as_bytes());
            EXIT_FAILURE
        }
    }
}

/// Why a command failed, and how to say it.
#[derive(Debug, PartialEq)]
pub(crate) struct Failure {
    message: String,
    hint: String,
    /// The running job that refused the request.
    job_id: Option<String>,
    /// `error:`/`hint:` lines (rebalance commands) instead of one `shardgate admin:` line.
    labeled: bool,
}

impl Failure {
    fn plain(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            hint: String::new(),
            job_id: None,
            labeled: false,
        }
    }

    fn labeled(mut self) -> Failure {
        self.labeled = true;
        self
    }

    fn render(&self) -> String {
        if !self.labeled {
            return if self.hint.is_empty() {
                format!("shardgate admin: {}\n", self.message)
            } else {
                format!("shardgate admin: {}; {}\n", self.message, self.hint)
            };
        }
        let mut text = format!("error: {}\n", self.message);
        if !self.hint.is_empty() {
            text.push_str(&format!("hint: {}\n", self.hint));
        }
        if let Some(id) = &self.job_id {
            text.push_str(&format!(
                "running job: {id} (follow it with `{}`, or stop it with `shardgate admin \
                 rebalance abort`)\n",
                status::WATCH_COMMAND
            ));
        }
        text
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::plain(e.to_string())
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure::plain(e.to_string())
    }
}

fn execute(args: &AdminArgs, out: &mut dyn Write, tty: bool) -> Result<i32, Failure> {
    let client = AdminClient::new(&args.url, args.token.clone())?;
    let json = args.json;
    match &args.command {
        AdminCommand::Shards(ShardsCommand::List) => {
            let reply = expect_success(client.get("/api/v1/shards"))?;
            show(out, json, &reply, shards_table)?;
        }
        AdminCommand::Shards(ShardsCommand::Add {
            name,
            primary,
            replicas,
            admin_user,
            admin_password,
        }) => {
            let request = AddShardRequest {
                name: name.clone(),
                primary: primary.clone(),
                replicas: replicas.clone(),
                admin_user: admin_user.clone(),
                admin_password: admin_password.clone(),
            };
            let body = serde_json::to_value(&request)
                .map_err(|e| Failure::plain(format!("cannot encode the request: {e}")))?;
            let reply = labeled(expect_success(client.post("/api/v1/shards", Some(&body))))?;
            show(out, json, &reply, |job: Job| status::started(&job)).map_err(Failure::labeled)?;
        }
        AdminCommand::Shards(ShardsCommand::Remove { name }) => {
            let path = format!("/api/v1/shards/{}", percent_encode(name));
            let reply = labeled(expect_success(client.delete(&path)))?;
            show(out, json, &reply, |job: Job| status::started(&job)).map_err(Failure::labeled)?;
        }
        AdminCommand::Shards(ShardsCommand::Hosts {
            name,
            primary,
            replicas,
        }) => {
            let request = SetHostsRequest {
                primary: primary.clone(),
                replicas: replicas.clone(),
            };
            let body = serde_json::to_value(&request)
                .map_err(|e| Failure::plain(format!("cannot encode the request: {e}")))?;
            let path = format!("/api/v1/shards/{}/hosts", percent_encode(name));
            let reply = labeled(expect_success(client.put(&path, &body)))?;
            show(out, json, &reply, |o: SetHostsOutcome| {
                let replicas = if o.replicas.is_empty() {
                    "none".to_owned()
                } else {
                    o.replicas.join(", ")
                };
                if o.changed {
                    format!(
                        "shard {}: primary {}, replicas {replicas} (shard map version {})\n",
                        o.shard, o.primary, o.topology_version
                    )
                } else {
                    format!(
                        "shard {}: already primary {}, replicas {replicas}; nothing published (version {})\n",
                        o.shard, o.primary, o.topology_version
                    )
                }
            })
            .map_err(Failure::labeled)?;
        }
        AdminCommand::Pools => {
            let reply = expect_success(client.get("/api/v1/pools"))?;
            show(out, json, &reply, pools_table)?;
        }
        AdminCommand::Replicas => {
            let reply = expect_success(client.get("/api/v1/replicas"))?;
            show(out, json, &reply, replicas_table)?;
        }
        AdminCommand::Sequences => {
            let reply = expect_success(client.get("/api/v1/sequences"))?;
            show(out, json, &reply, sequences_table)?;
        }
        AdminCommand::Verify(VerifyCommand::References) => {
            let reply = expect_success(client.get("/api/v1/verify/references"))?;
            let report: crate::rebalance::ReferencesReport = parse(&reply)?;
            let drift = report.drift;
            show(out, json, &reply, references_table)?;
            if drift {
                return Ok(EXIT_FAILURE);
            }
        }
        AdminCommand::Transactions { resolve: false } => {
            let reply = expect_success(client.get("/api/v1/transactions"))?;
            show(out, json, &reply, |report| {
                transactions_table(report, shardgate_topology::now_ms())
            })?;
        }
        AdminCommand::Transactions { resolve: true } => {
            let reply = expect_success(client.post("/api/v1/transactions/resolve", None))?;
            show(out, json, &reply, recovery_text)?;
        }
        AdminCommand::Queries { reset: true, .. } => {
            let reply = expect_success(client.delete("/api/v1/queries"))?;
            if json {
                out.write_all(reply.body.as_bytes())?;
                out.write_all(b"\n")?;
            } else {
                out.write_all(b"query statistics reset\n")?;
            }
        }
        AdminCommand::Queries { sort, limit, .. } => {
            let path = format!(
                "/api/v1/queries?sort={}&limit={limit}",
                percent_encode(sort)
            );
            let reply = expect_success(client.get(&path))?;
            show(out, json, &reply, crate::queries::queries_table)?;
        }
        AdminCommand::Readiness => {
            let reply = expect_success(client.get("/api/v1/readiness"))?;
            show(out, json, &reply, crate::readiness::readiness_text)?;
        }
        AdminCommand::Reload => {
            let reply = expect_success(client.post("/api/v1/reload", None))?;
            show(out, json, &reply, reload_text)?;
        }
        AdminCommand::Rebalance(RebalanceCommand::Status { watch: false, .. }) => {
            let reply = labeled(expect_success(client.get("/api/v1/rebalance")))?;
            show(out, json, &reply, |s: RebalanceStatus| {
                status::summary(&s, shardgate_topology::now_ms())
            })
            .map_err(Failure::labeled)?;
        }
        AdminCommand::Rebalance(RebalanceCommand::Status {
            watch: true,
            interval,
        }) => {
            let mut screen = if json {
                Screen::json()
            } else if tty {
                Screen::bar(indicatif::ProgressDrawTarget::stderr())
            } else {
                Screen::lines()
            };
            // Only a proxy that answered before gets the grace: a wrong --url fails at once.
            let mut grace = Duration::ZERO;
            let mut fetch = || {
                let fetched = fetch_status(&client, *interval, grace);
                if fetched.is_ok() {
                    grace = RECONNECT_GRACE;
                }
                fetched
            };
            let code = watch::watch(
                &mut fetch,
                &mut std::thread::sleep,
                *interval,
                &mut screen,
                out,
            )
            .map_err(Failure::labeled)?;
            return Ok(code);
        }
        AdminCommand::Rebalance(RebalanceCommand::Abort) => {
            let reply = labeled(expect_success(client.post("/api/v1/rebalance/abort", None)))?;
            show(out, json, &reply, |job: Job| status::aborting(&job)).map_err(Failure::labeled)?;
        }
    }
    Ok(0)
}

/// Asks for the status, asking again for up to `grace` while the proxy does not answer.
fn fetch_status(
    client: &AdminClient,
    interval: Duration,
    grace: Duration,
) -> Result<Fetched, Failure> {
    let deadline = Instant::now() + grace;
    let reply = loop {
        match client.get("/api/v1/rebalance") {
            Err(ClientError::Unreachable { .. }) if Instant::now() < deadline => {
                std::thread::sleep(interval);
            }
            result => break expect_success(result)?,
        }
    };
    let status = parse::<RebalanceStatus>(&reply)?;
    Ok(Fetched {
        status,
        raw: reply.body,
    })
}

fn labeled<T>(result: Result<T, Failure>) -> Result<T, Failure> {
    result.map_err(Failure::labeled)
}

/// Why an `--interval` was refused (clap shows the text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum IntervalError {
    #[error("expected a duration like 500ms or 2s, got {0:?}")]
    NotANumber(String),
    #[error("unknown unit {0:?}: use ms, s or m")]
    UnknownUnit(String),
    #[error(transparent)]
    OutOfRange(#[from] std::time::TryFromFloatSecsError),
    #[error("{text} is too short: at least {}ms", MIN_INTERVAL.as_millis())]
    TooShort { text: String },
}

/// `--interval`: a number and a unit (ms, s, m), at least 100ms.
fn parse_interval(text: &str) -> Result<Duration, IntervalError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| IntervalError::NotANumber(text.to_owned()))?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "s" | "" => number,
        "m" => number * 60.0,
        other => return Err(IntervalError::UnknownUnit(other.to_owned())),
    };
    let interval = Duration::try_from_secs_f64(seconds)?;
    if interval < MIN_INTERVAL {
        return Err(IntervalError::TooShort {
            text: text.to_owned(),
        });
    }
    Ok(interval)
}

/// A 2xx reply, or why the request failed: the server's error, hint and job id.
fn expect_success(result: Result<Reply, ClientError>) -> Result<Reply, Failure> {
    let reply = result?;
    if reply.is_success() {
        return Ok(reply);
    }
    let body = serde_json::from_str::<ErrorBody>(&reply.body).ok();
    Err(match body {
        // The server's hint speaks of the HTTP header; say what to do with this command.
        Some(body) if reply.status == 401 => Failure {
            message: format!("{} (HTTP 401)", body.error),
            hint: "pass --token or set SHARDGATE_ADMIN_TOKEN".to_owned(),
            job_id: None,
            labeled: false,
        },
        Some(body) => Failure {
            message: format!("{} (HTTP {})", body.error, reply.status),
            hint: body.hint,
            job_id: body.job_id,
            labeled: false,
        },
        None => Failure::plain(format!(
            "HTTP {}: {}",
            reply.status,
            first_line(&reply.body)
        )),
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

/// Prints the server's JSON (`--json`), or the text `format` makes of it.
fn show<T: DeserializeOwned>(
    out: &mut dyn Write,
    json: bool,
    reply: &Reply,
    format: impl FnOnce(T) -> String,
) -> Result<(), Failure> {
    let text = if json {
        format!("{}\n", reply.body.trim_end())
    } else {
        format(parse(reply)?)
    };
    Ok(out.write_all(text.as_bytes())?)
}

fn parse<T: DeserializeOwned>(reply: &Reply) -> Result<T, Failure> {
    serde_json::from_str::<T>(&reply.body).map_err(|e| {
        Failure::plain(format!(
            "unexpected answer from the admin API ({e}); try --json"
        ))
    })
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

    fn reply(status: u16, body: &str) -> Result<Reply, ClientError> {
        Ok(Reply {
            status,
            body: body.to_owned(),
        })
    }

    fn failure(status: u16, body: &str) -> Failure {
        match expect_success(reply(status, body)) {
            Ok(_) => panic!("HTTP {status} taken for a success"),
            Err(failure) => failure,
        }
    }

    #[test]
    fn error_replies_become_one_line() {
        let e = failure(501, r#"{"error":"not yet","hint":"later"}"#);
        assert_eq!(e.render(), "shardgate admin: not yet (HTTP 501); later\n");
        let e = failure(401, r#"{"error":"wrong admin token","hint":""}"#);
        assert_eq!(
            e.render(),
            "shardgate admin: wrong admin token (HTTP 401); pass --token or set \
             SHARDGATE_ADMIN_TOKEN\n"
        );
        let e = failure(409, r#"{"error":"busy","hint":""}"#);
        assert_eq!(e.render(), "shardgate admin: busy (HTTP 409)\n");
        let e = failure(502, "<html>\nbad gateway");
        assert_eq!(e.render(), "shardgate admin: HTTP 502: <html>\n");
        assert!(expect_success(reply(200, "[]")).is_ok());
    }

    #[test]
    fn rebalance_errors_are_labeled_and_name_the_running_job() {
        let e = failure(
            409,
            r#"{"error":"a rebalance job is running","hint":"one job at a time","job_id":"rb-7"}"#,
        )
        .labeled();
        assert_eq!(
            e.render(),
            "error: a rebalance job is running (HTTP 409)\n\
             hint: one job at a time\n\
             running job: rb-7 (follow it with `shardgate admin rebalance status --watch`, or \
             stop it with `shardgate admin rebalance abort`)\n"
        );
        let e = failure(422, r#"{"error":"table t has no primary key","hint":""}"#).labeled();
        assert_eq!(e.render(), "error: table t has no primary key (HTTP 422)\n");
        let e = failure(401, r#"{"error":"wrong admin token","hint":"x"}"#).labeled();
        assert_eq!(
            e.render(),
            "error: wrong admin token (HTTP 401)\nhint: pass --token or set \
             SHARDGATE_ADMIN_TOKEN\n"
        );
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_interval("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_interval("1m"), Ok(Duration::from_secs(60)));
        for bad in ["", "ms", "10ms", "2h", "-1s", "1e9999s", "fast"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
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
