//! Where the sessions record their statements: an attached request at its ReadyForQuery
//! (`stats::note_request_done`), a statement the relay refuses, and the batches the session
//! routes to several shards or refuses before any server is involved (`session::run`).

use std::time::{Duration, Instant};

use shardgate_admin::control::RouteCounts;
use shardgate_router::{Plan, StatementKind};
use shardgate_wire::{frontend, Frame};

use super::tally::Tally;
use super::Sample;
use crate::session::Session;
use crate::stats::Request;

/// How one call of a statement was routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatementRoute {
    Single,
    Scatter,
    Gather,
    Broadcast,
    SplitInsert,
    SplitCopy,
    Refused,
}

impl StatementRoute {
    pub(super) fn count(self, routes: &mut RouteCounts) {
        let n = match self {
            StatementRoute::Single => &mut routes.single,
            StatementRoute::Scatter => &mut routes.scatter,
            StatementRoute::Gather => &mut routes.gather,
            StatementRoute::Broadcast => &mut routes.broadcast,
            StatementRoute::SplitInsert => &mut routes.split_insert,
            StatementRoute::SplitCopy => &mut routes.split_copy,
            StatementRoute::Refused => &mut routes.refused,
        };
        *n += 1;
    }

    /// A statement the router sent to several shards.
    pub(crate) fn of_many(plan: &Plan) -> StatementRoute {
        match plan.kind {
            StatementKind::Read { .. } if plan.gather.is_some() => StatementRoute::Gather,
            StatementKind::Read { .. } => StatementRoute::Scatter,
            _ => StatementRoute::Broadcast,
        }
    }
}

/// The frame a batch's statistics are keyed by: its Query, else its first Parse, else its
/// first Bind (of a statement prepared earlier).
pub(crate) fn statement_frame(batch: &[Frame]) -> Option<Frame> {
    [frontend::QUERY, frontend::PARSE, frontend::BIND]
        .iter()
        .find_map(|tag| batch.iter().find(|f| f.tag() == *tag))
        .cloned()
}

/// A cross-shard or refused batch being run: what the statistics need once it is answered.
pub(crate) struct BatchRecord {
    statement: Option<Frame>,
    route: StatementRoute,
    shards: u32,
    started: Instant,
}

impl BatchRecord {
    /// The batch turned out to run as `route` on `shards` shards.
    pub(crate) fn set_route(&mut self, route: StatementRoute, shards: usize) {
        self.route = route;
        self.shards = u32::try_from(shards).unwrap_or(u32::MAX);
    }
}

impl Session {
    /// Calls `f` with the statement text of a Query, Parse or Bind (the prepared statement's
    /// text); `None` for other messages or an unknown statement.
    pub(crate) fn with_statement_text<R>(
        &self,
        frame: &Frame,
        f: impl FnOnce(&str) -> R,
    ) -> Option<R> {
        match frame.tag() {
            frontend::QUERY => {
                let text = frontend::query_text(frame).ok()?;
                Some(f(&self.sql(text)))
            }
            frontend::PARSE => {
                let parse = frontend::parse(frame).ok()?;
                Some(f(&self.sql(parse.query)))
            }
            frontend::BIND => {
                let statement = frontend::bind_statement(frame).ok()?;
                self.known_statement(statement).map(|(t, _)| f(t))
            }
            _ => None,
        }
    }

    /// Records one call of `frame`'s statement; primary or replica is the host of the last
    /// checkout (`self.attachment.host()`: a cross-shard batch takes the same role on every
    /// shard). `fingerprint`: the statement's fingerprint hash when the relay computed it
    /// already.
    fn record_statement(
        &self,
        frame: &Frame,
        fingerprint: Option<u64>,
        took: Duration,
        tally: Tally,
        route: StatementRoute,
        shards: u32,
    ) {
        let replica = matches!(
            self.attachment.host(),
            shardgate_pool::HostChoice::Replica(_)
        );
        let log = &self.shared.query_log;
        let sample = Sample {
            took,
            tally,
            route,
            shards,
            replica: replica && shards > 0,
        };
        // A named prepared statement's fingerprint was computed when it was interned.
        let fingerprint = fingerprint.or_else(|| {
            (frame.tag() == frontend::BIND)
                .then(|| frontend::bind_statement(frame).ok())
                .flatten()
                .filter(|name| !name.is_empty())
                .and_then(|name| {
                    self.client_state
                        .statements()
                        .peek(name)
                        .map(|s| s.fingerprint)
                })
        });
        // A statement tracked already needs no text (decoding it costs as much as the rest).
        if fingerprint.is_some_and(|hash| log.record_known(hash, &sample)) {
            return;
        }
        self.with_statement_text(frame, |sql| log.record(sql, fingerprint, &sample));
    }

    /// An attached request ended at its ReadyForQuery after `took`: its last statement
    /// counts one call on this connection's shard (or a refusal, when the relay refused it).
    pub(crate) fn record_attached_request(&mut self, request: &Request, took: Duration) {
        let tally = std::mem::take(&mut self.request.tally);
        if !request.executed {
            return;
        }
        let Some(frame) = &request.statement else {
            return;
        };
        self.record_statement(
            frame,
            request.fingerprint,
            took,
            tally,
            StatementRoute::Single,
            1,
        );
        self.observe_statement(frame, tally.rows);
    }

    /// `[sharding] mode = "observe"`: plans the call against the sharding rules
    /// (`readiness`), with its Bind parameters.
    fn observe_statement(&self, frame: &Frame, rows: u64) {
        let Some(observer) = &self.shared.observer else {
            return;
        };
        if frame.tag() != frontend::BIND {
            self.with_statement_text(frame, |sql| observer.observe(sql, None, rows));
            return;
        }
        let Ok(bind) = frontend::bind(frame) else {
            return;
        };
        let Ok(params) = frontend::bind_params(frame, &bind) else {
            return;
        };
        let Some((sql, types)) = self.known_statement(bind.statement) else {
            return;
        };
        let bound = shardgate_router::BoundParams {
            values: &params.values,
            formats: &params.formats,
            types,
        };
        observer.observe(sql, Some(&bound), rows);
    }

    /// The relay refused `frame` (0A000 and the like, answered by the proxy): one refused call.
    pub(crate) fn record_refused(&self, frame: &Frame, code: &str) {
        let mut tally = Tally::default();
        tally.error(code);
        self.record_statement(
            frame,
            None,
            Duration::ZERO,
            tally,
            StatementRoute::Refused,
            0,
        );
    }

    /// A detached batch is about to run on `shards` shards (0: it is being refused): what is
    /// sent to the client from now on is read for rows and errors.
    pub(crate) fn start_batch_record(
        &mut self,
        batch: &[Frame],
        route: StatementRoute,
        shards: usize,
    ) -> BatchRecord {
        self.io.start_tally();
        self.request.refused = false;
        BatchRecord {
            statement: statement_frame(batch),
            route,
            shards: u32::try_from(shards).unwrap_or(u32::MAX),
            started: Instant::now(),
        }
    }

    /// The batch of `record` was answered.
    pub(crate) fn finish_batch_record(&mut self, record: BatchRecord) {
        let tally = self.io.take_tally();
        let refused =
            std::mem::take(&mut self.request.refused) || record.route == StatementRoute::Refused;
        let Some(frame) = record.statement else {
            return;
        };
        let (route, shards) = if refused {
            (StatementRoute::Refused, 0)
        } else {
            (record.route, record.shards)
        };
        self.record_statement(&frame, None, record.started.elapsed(), tally, route, shards);
    }
}
