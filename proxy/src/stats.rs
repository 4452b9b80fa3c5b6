//! Metrics the data path records, and the slow-query log. Labelled handles are registered
//! once per (shard, role, route) and reused, so a query costs a few atomic adds, not a
//! registry lookup with label strings.
//!
//! The names are the ones the admin crate describes and the README documents.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::Counter;
use shardgate_admin::histogram::{self, LatencyHistogram, CHECKOUT_WAIT, QUERY_DURATION};
use shardgate_pool::Role;

/// How a request was routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RouteKind {
    Single,
    /// A read on several shards, merged.
    Multi,
    /// DDL or a keyless write on every shard.
    Broadcast,
}

impl RouteKind {
    fn label(self) -> &'static str {
        match self {
            RouteKind::Single => "single",
            RouteKind::Multi => "multi",
            RouteKind::Broadcast => "broadcast",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

fn role_label(role: Role) -> &'static str {
    match role {
        Role::Primary => "primary",
        Role::Replica => "replica",
    }
}

fn role_index(role: Role) -> usize {
    usize::from(role == Role::Replica)
}

struct ShardCell {
    queries: Counter,
}

/// Per-shard and per-role handles, created on first use.
pub(crate) struct QueryStats {
    shard_names: Vec<String>,
    /// [shard][role][route]
    queries: Vec<OnceLock<ShardCell>>,
    /// [role][route]
    durations: Vec<OnceLock<Arc<LatencyHistogram>>>,
    /// [shard][role]
    checkout_waits: Vec<OnceLock<Arc<LatencyHistogram>>>,
}

impl QueryStats {
    pub(crate) fn new(shard_names: &[String]) -> QueryStats {
        let n = shard_names.len();
        QueryStats {
            shard_names: shard_names.to_vec(),
            queries: (0..n * 2 * 3).map(|_| OnceLock::new()).collect(),
            durations: (0..2 * 3).map(|_| OnceLock::new()).collect(),
            checkout_waits: (0..n * 2).map(|_| OnceLock::new()).collect(),
        }
    }

    fn shard_name(&self, shard: usize) -> String {
        self.shard_names.get(shard).cloned().unwrap_or_default()
    }

    /// One request (up to its ReadyForQuery) finished on `shard`.
    pub(crate) fn query(&self, shard: usize, role: Role, route: RouteKind, took: Duration) {
        let at = (shard * 2 + role_index(role)) * 3 + route.index();
        if let Some(cell) = self.queries.get(at) {
            cell.get_or_init(|| ShardCell {
                queries: metrics::counter!("shardgate_queries_total",
                    "shard" => self.shard_name(shard), "role" => role_label(role), "route" => route.label()),
            })
            .queries
            .increment(1);
        }
        if let Some(h) = self.durations.get(role_index(role) * 3 + route.index()) {
            h.get_or_init(|| {
                let labels = [
                    ("role", role_label(role).into()),
                    ("route", route.label().into()),
                ];
                histogram::histogram(&QUERY_DURATION, &labels)
            })
            .record(took);
        }
    }

    /// A client waited `waited` for a server connection of `shard`.
    pub(crate) fn checkout_wait(&self, shard: usize, role: Role, waited: Duration) {
        if let Some(h) = self.checkout_waits.get(shard * 2 + role_index(role)) {
            h.get_or_init(|| {
                let labels = [
                    ("shard", self.shard_name(shard)),
                    ("role", role_label(role).into()),
                ];
                histogram::histogram(&CHECKOUT_WAIT, &labels)
            })
            .record(waited);
        }
    }
}

/// An error sent to a client, counted by SQLSTATE class (the first two characters).
pub(crate) fn count_error(code: &str) {
    let class = code.get(..2).unwrap_or("??").to_owned();
    metrics::counter!("shardgate_errors_total", "class" => class).increment(1);
}

fn bytes_counter(cell: &'static OnceLock<Counter>, name: &'static str) -> &'static Counter {
    cell.get_or_init(|| metrics::counter!(name))
}

pub(crate) fn bytes_received(n: usize) {
    static C: OnceLock<Counter> = OnceLock::new();
    bytes_counter(&C, "shardgate_client_bytes_received_total").increment(n as u64);
}

pub(crate) fn bytes_sent(n: usize) {
    static C: OnceLock<Counter> = OnceLock::new();
    bytes_counter(&C, "shardgate_client_bytes_sent_total").increment(n as u64);
}

/// Requests forwarded on the attached server connection and not answered yet, in order: each
/// ends with a Query, Sync or FunctionCall, and its ReadyForQuery comes in the same order.
/// Each knows when its first message was forwarded (for metrics and the slow-query log), its
/// last Query, Parse or Bind, and whether it executed anything.
#[derive(Debug, Default)]
pub(crate) struct RequestTimer {
    /// Sent in full, oldest first (bounded: the proxy's own retries can leave one behind).
    sent: std::collections::VecDeque<Request>,
    /// Messages since the last Sync or Query.
    open: Option<Request>,
    /// Rows and the first error of the oldest request, as its replies come (`query_stats`).
    pub(crate) tally: crate::query_stats::tally::Tally,
    /// The proxy refused the cross-shard batch being run (`query_stats`).
    pub(crate) refused: bool,
}

/// One request up to its ReadyForQuery.
#[derive(Debug)]
pub(crate) struct Request {
    started: std::time::Instant,
    pub(crate) statement: Option<shardgate_wire::Frame>,
    /// The statement's fingerprint hash, when the relay computed it on the way (a Query, or
    /// an unnamed Parse of the same request), so the statistics need not read its text again.
    pub(crate) fingerprint: Option<u64>,
    /// It executed something (a Query or Execute): a batch that only prepares or describes
    /// is no call of its statement.
    pub(crate) executed: bool,
}

/// More requests in flight than this: the oldest is forgotten (its ReadyForQuery then ends
/// the next one, as before the queue).
const MAX_REQUESTS_IN_FLIGHT: usize = 256;

impl RequestTimer {
    /// A client message is about to be forwarded.
    fn note_message(&mut self, frame: &shardgate_wire::Frame) {
        use shardgate_wire::frontend;
        let request = self.open.get_or_insert_with(|| Request {
            started: std::time::Instant::now(),
            statement: None,
            fingerprint: None,
            executed: false,
        });
        request.executed |= matches!(frame.tag(), frontend::QUERY | frontend::EXECUTE);
        if matches!(
            frame.tag(),
            frontend::QUERY | frontend::BIND | frontend::PARSE
        ) {
            // A cheap clone (shared bytes).
            request.statement = Some(frame.clone());
            // A new text: its fingerprint is noted after it is read. A Bind keeps the
            // fingerprint of its unnamed Parse (see `note_fingerprint`).
            if frame.tag() != frontend::BIND {
                request.fingerprint = None;
            }
        }
        if matches!(
            frame.tag(),
            frontend::QUERY | frontend::SYNC | frontend::FUNCTION_CALL
        ) {
            if let Some(done) = self.open.take() {
                if self.sent.len() == MAX_REQUESTS_IN_FLIGHT {
                    self.sent.pop_front();
                } else if self.sent.capacity() == 0 {
                    // Room for one: a client rarely pipelines requests, and every idle
                    // session keeps this (a first push made room for four, 288 bytes).
                    self.sent.reserve_exact(1);
                }
                self.sent.push_back(done);
            }
        }
    }

    /// The fingerprint of the statement just noted (a Query or an unnamed Parse); `None`
    /// forgets one noted earlier in the request (a Bind of a named statement, whose own
    /// fingerprint the statistics look up).
    pub(crate) fn note_fingerprint(&mut self, fingerprint: Option<u64>) {
        if let Some(request) = self.open.as_mut().or(self.sent.back_mut()) {
            request.fingerprint = fingerprint;
        }
    }

    /// The last request noted will get no ReadyForQuery from the server (the proxy answered
    /// it: a refused simple Query).
    pub(crate) fn forget_last(&mut self) {
        self.sent.pop_back();
    }

    /// A ReadyForQuery came: the request it ends and how long it ran (`None` when none was
    /// waiting).
    fn finish(&mut self) -> Option<(Request, std::time::Duration)> {
        let request = self.sent.pop_front().or_else(|| self.open.take())?;
        let took = request.started.elapsed();
        Some((request, took))
    }
}

impl crate::session::Session {
    /// A client message is about to be forwarded: the request it belongs to starts now if
    /// none is running.
    pub(crate) fn note_request_message(&mut self, frame: &shardgate_wire::Frame) {
        self.request.note_message(frame);
    }

    /// The server's ReadyForQuery ended a request: count it, and log it when slow.
    pub(crate) fn note_request_done(&mut self) {
        self.view.refresh(&self.shared);
        let Some((request, took)) = self.request.finish() else {
            self.request.tally = Default::default();
            return;
        };
        let role = match self.attachment.host() {
            shardgate_pool::HostChoice::Primary => Role::Primary,
            shardgate_pool::HostChoice::Replica(_) => Role::Replica,
        };
        self.view
            .topo()
            .query_stats
            .query(self.attachment.shard(), role, RouteKind::Single, took);
        self.record_attached_request(&request, took);
        let log = &self.view.config().log;
        if log.slow_query_ms > 0 && took.as_millis() >= u128::from(log.slow_query_ms) {
            let (statement, parameters) = self.describe_statement(&request, log.log_parameters);
            tracing::warn!(
                shard = self.shard_name(self.attachment.shard()),
                role = role_label(role),
                duration_ms = took.as_millis() as u64,
                statement,
                parameters,
                "slow query"
            );
        }
    }

    /// The request's statement as its fingerprint (literals replaced by `$n`, as the
    /// per-query statistics name it, with its id), and its parameters when configured.
    fn describe_statement(
        &self,
        request: &Request,
        with_parameters: bool,
    ) -> (String, Option<String>) {
        use shardgate_wire::frontend;
        let Some(frame) = &request.statement else {
            return (String::new(), None);
        };
        let statement = self
            .with_statement_text(frame, |sql| {
                format!(
                    "[{:016x}] {}",
                    shardgate_router::fingerprint_hash(sql),
                    shardgate_router::fingerprint_text(sql)
                )
            })
            .unwrap_or_default();
        let parameters = (with_parameters && frame.tag() == frontend::BIND)
            .then(|| {
                let bind = frontend::bind(frame).ok()?;
                let params = frontend::bind_params(frame, &bind).ok()?;
                let shown: Vec<String> = params
                    .values
                    .iter()
                    .map(|v| match v {
                        Some(b) => String::from_utf8_lossy(b).into_owned(),
                        None => "NULL".into(),
                    })
                    .collect();
                Some(shown.join(", "))
            })
            .flatten();
        (statement, parameters)
    }
}
