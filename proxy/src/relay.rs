//! Forwarding while a client holds a server connection: client messages are rewritten where
//! prepared statements need it and sent on; server replies are streamed back, except those the
//! client did not cause, and the replies the server will not send (for work the proxy answered
//! itself) are synthesised in order. The queue of expected replies keeps both in step.

use std::sync::Arc;

use shardgate_pool::ServerConn;
use shardgate_wire::backend::{self, TransactionStatus};
use shardgate_wire::{frontend, sqlstate, Frame};

use crate::last_parse::TextFacts;
use crate::prepared::GlobalStatement;
use crate::replies::{Expect, Synth};
use crate::session::Session;
use crate::session_state::{session_effects_of, SessionWords};
use crate::txn::Settled;
use crate::SessionError;
use shardgate_router::RouteError;

/// A portal no client has (its Execute fails): see `Expect::AbortImplicit`.
const REFUSED_BATCH_PORTAL: &[u8] = b"shardgate_refused_batch_rollback\0";

/// What the session loop should do after one client or server message (how a whole
/// attachment ends is `attached::Detach`).
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Go on relaying.
    Continue,
    /// The transaction ended and nothing is outstanding: give the server connection back.
    Release,
    /// The client sent Terminate.
    Terminate,
    /// The server sent a FATAL error: its connection is ending. Carries the server's message.
    ServerGone(String),
}

impl Session {
    /// A Query's or Parse's text about to be forwarded: pins the session to this connection
    /// if the text creates state a hand-over cannot carry, and notes its session effects.
    /// `false`: the statement was refused (`pool.pinning = "refuse"`), its error queued.
    /// `words`: the text's scan, which rules out both checks for almost every statement and
    /// says which to run for the rest.
    fn track_session_state(&mut self, sql: &str, words: SessionWords, query: bool) -> bool {
        if !words.any() {
            return true;
        }
        // (Only a session that could be pinned pays for the pinning check.)
        if let Some(what) = self
            .releases_at_idle()
            .then(|| crate::pinning::pinning_statement_of(sql, words))
            .flatten()
        {
            if let Err(e) = self.pin_here(what) {
                if query {
                    // Answered by the proxy: no ReadyForQuery from the server ends it.
                    self.request.forget_last();
                }
                self.refuse(e, query);
                return false;
            }
        }
        self.txn.note_effects(session_effects_of(sql, words));
        true
    }

    /// The fingerprint hash (when the statistics are on) and session words of a statement
    /// text the relay just read, from one pass over it. The hash is noted for the statistics
    /// (once: they would otherwise decode and walk the text again at its ReadyForQuery).
    fn note_text(&mut self, sql: &str) -> SessionWords {
        let (fingerprint, words) =
            SessionWords::scan_with_fingerprint(sql, self.shared.query_log.enabled());
        if fingerprint.is_some() {
            self.request.note_fingerprint(fingerprint);
        }
        words
    }

    /// The fingerprint and session-word scan of an unnamed Parse's text: remembered for the
    /// last one (`last_parse`), as drivers send the same text at every execution.
    fn unnamed_parse_facts(&mut self, sql: &str) -> TextFacts {
        let tracked = self.shared.query_log.enabled();
        match self.last_parse.get(sql) {
            Some(facts) if facts.fingerprint.is_some() || !tracked => facts,
            _ => {
                let (fingerprint, words) = SessionWords::scan_with_fingerprint(sql, tracked);
                let facts = TextFacts { fingerprint, words };
                self.last_parse.set(sql, facts);
                facts
            }
        }
    }

    pub(crate) fn push_expect(&mut self, e: Expect) {
        if let Some(s) = self.replies.push(e) {
            self.emit_synth(s);
        }
    }

    fn emit_synth(&mut self, s: Synth) {
        match s {
            Synth::ParseComplete => backend::write_parse_complete(&mut self.io.out),
            Synth::CloseComplete => backend::write_close_complete(&mut self.io.out),
            Synth::Error(e) => self.io.push_error(e.code, &e.message, e.hint.as_deref()),
            Synth::Ready => self.io.push_ready(self.txn.status()),
        }
    }

    fn drain_synth(&mut self) {
        while let Some(s) = self.replies.pop_synth() {
            self.emit_synth(s);
        }
    }

    /// A statement for another shard than the transaction's: answered with the error instead
    /// of being forwarded; in the extended protocol the rest of the batch is dropped up to Sync.
    fn refuse(&mut self, e: RouteError, simple: bool) {
        self.push_expect(Expect::Synth(Synth::Error(Box::new(e))));
        if simple {
            self.push_expect(Expect::Synth(Synth::Ready));
        } else {
            self.replies.refuse_rest_of_batch();
        }
    }

    /// Makes sure `stmt` exists on the server connection, queueing a Parse for it if not.
    /// `client_parse` is true when this answers the client's own Parse.
    fn ensure_prepared(
        &mut self,
        server: &mut ServerConn,
        stmt: &Arc<GlobalStatement>,
        client_parse: bool,
    ) {
        if server.prepared().contains(&stmt.name) {
            if client_parse {
                self.push_expect(Expect::Synth(Synth::ParseComplete));
            }
            return;
        }
        if let Some(evicted) = server.prepared().insert(stmt.name.clone()) {
            frontend::write_close(self.attachment.outgoing(), b'S', &evicted);
            self.push_expect(Expect::Close { to_client: false });
        }
        // The name may still exist on the server although the proxy forgot it: an eviction's
        // Close that an error made the server skip. Closing a missing statement is no error.
        frontend::write_close(self.attachment.outgoing(), b'S', &stmt.name);
        self.push_expect(Expect::Close { to_client: false });
        self.attachment
            .outgoing()
            .extend_from_slice(&stmt.parse_message);
        self.push_expect(Expect::Parse {
            global: Some(Arc::clone(stmt)),
            to_client: client_parse,
        });
    }

    /// Answers a detached batch made only of named Parses (its Sync just arrived) without a
    /// server connection, when a server already accepted every one of those statements: the
    /// client's names are recorded, and the statements are prepared on a server connection when
    /// a Bind or Describe needs them. A client that prepares with a blocking call while other
    /// clients of its thread hold server connections in open transactions (pgbench -M prepared
    /// prepares each command on first use) would otherwise wait for a connection forever.
    /// Returns false, changing nothing, when the batch needs a server.
    pub(crate) fn answer_parses_locally(&mut self, batch: &[Frame]) -> bool {
        // Checked first: this runs for every detached batch, and most have other messages.
        if !batch.iter().all(|f| f.tag() == frontend::PARSE) {
            return false;
        }
        let mut parsed = Vec::with_capacity(batch.len());
        for frame in batch {
            if frame.tag() != frontend::PARSE {
                return false;
            }
            let Ok(parse) = frontend::parse(frame) else {
                return false;
            };
            if parse.name.is_empty() {
                return false;
            }
            let stmt = self.intern_statement(parse.query, &parse.param_types);
            // A statement that pins goes to a server, which pins (or refuses) it there.
            if !stmt.accepted() || (stmt.pins.is_some() && self.releases_at_idle()) {
                return false;
            }
            parsed.push((parse.name.to_owned(), stmt.effects.clone(), stmt));
        }
        for (name, effects, stmt) in parsed {
            self.txn.note_effects(effects);
            self.client_state.statements_mut().insert(name, stmt);
            backend::write_parse_complete(&mut self.io.out);
        }
        self.io.push_ready(self.txn.status());
        true
    }

    fn protocol_error(&self, e: impl std::fmt::Display) -> SessionError {
        SessionError::Protocol(e.to_string())
    }

    /// Handles one client message while attached to `server`.
    pub(crate) fn client_message(
        &mut self,
        server: &mut ServerConn,
        frame: Frame,
    ) -> Result<Flow, SessionError> {
        tracing::trace!(tag = %(frame.tag() as char), expect = ?self.replies.front(), "client message");
        self.view.refresh(&self.shared);
        let ends_refusal = frame.tag() == frontend::SYNC && self.replies.refusing();
        if !self.replies.admits(frame.tag()) {
            return Ok(Flow::Continue);
        }
        if ends_refusal
            && self.txn.status() == TransactionStatus::Idle
            && !self.txn.has_deferred_begin()
        {
            frontend::write_message(self.attachment.outgoing(), frontend::EXECUTE, |b| {
                b.extend_from_slice(REFUSED_BATCH_PORTAL);
                b.extend_from_slice(&0i32.to_be_bytes());
            });
            self.push_expect(Expect::AbortImplicit);
        }
        self.note_request_message(&frame);
        if matches!(
            frame.tag(),
            frontend::QUERY | frontend::BIND | frontend::PARSE
        ) {
            if let Err(e) = self.check_pinned(&frame) {
                if e.code == sqlstate::PROTOCOL_VIOLATION {
                    return Err(SessionError::Protocol(e.message));
                }
                self.record_refused(&frame, e.code);
                if frame.tag() == frontend::QUERY {
                    self.request.forget_last();
                }
                self.refuse(e, frame.tag() == frontend::QUERY);
                return Ok(Flow::Continue);
            }
        }
        match frame.tag() {
            frontend::QUERY => {
                let text = frontend::query_text(&frame).map_err(|e| self.protocol_error(e))?;
                let sql = self.sql(text);
                let words = self.note_text(&sql);
                if !self.track_session_state(&sql, words, true) {
                    return Ok(Flow::Continue);
                }
                self.attachment.forward(&frame);
                self.push_expect(Expect::Query);
            }
            frontend::PARSE => {
                let parse = frontend::parse(&frame).map_err(|e| self.protocol_error(e))?;
                let sql = self.sql(parse.query);
                let words = if parse.name.is_empty() {
                    let facts = self.unnamed_parse_facts(&sql);
                    if facts.fingerprint.is_some() {
                        self.request.note_fingerprint(facts.fingerprint);
                    }
                    if !self.view.topo().routing {
                        // Routing noted it already (`route_frame`); a plain pooler's
                        // statistics need it too (the Bind that runs it names no text).
                        self.routing.set_unnamed(&sql, &parse.param_types);
                    }
                    facts.words
                } else {
                    SessionWords::scan(&sql)
                };
                if !self.track_session_state(&sql, words, false) {
                    return Ok(Flow::Continue);
                }
                if parse.name.is_empty() {
                    self.attachment.forward(&frame);
                    self.push_expect(Expect::Parse {
                        global: None,
                        to_client: true,
                    });
                } else {
                    let stmt = self.intern_statement(parse.query, &parse.param_types);
                    // Redefining a name replaces it (PostgreSQL would refuse with 42P05; drivers
                    // never rely on that, and the old text may live on other connections).
                    self.client_state
                        .statements_mut()
                        .insert(parse.name.to_owned(), Arc::clone(&stmt));
                    self.ensure_prepared(server, &stmt, true);
                }
            }
            frontend::BIND => {
                let bind = frontend::bind(&frame).map_err(|e| self.protocol_error(e))?;
                if !bind.statement.is_empty() {
                    // The statistics use the named statement's own fingerprint.
                    self.request.note_fingerprint(None);
                }
                let global = self
                    .client_state
                    .statements_mut()
                    .get(bind.statement)
                    .cloned();
                if let Some(stmt) = &global {
                    // Each execution acts on the session again (a prepared set_config), and
                    // a statement parsed without a server pins when it first runs.
                    if let Some(what) = stmt.pins {
                        if let Err(e) = self.pin_here(what) {
                            self.refuse(e, false);
                            return Ok(Flow::Continue);
                        }
                    }
                    self.txn.note_effects(stmt.effects.iter().cloned());
                }
                match &global {
                    Some(stmt) => {
                        self.ensure_prepared(server, stmt, false);
                        frontend::write_bind_renamed(
                            self.attachment.outgoing(),
                            &frame,
                            &bind,
                            &stmt.name,
                        );
                    }
                    // Unnamed, or unknown to this client: the server answers (26000 if unknown).
                    None => self.attachment.forward(&frame),
                }
                self.push_expect(Expect::Bind { global });
            }
            frontend::DESCRIBE => {
                let target = frontend::describe(&frame).map_err(|e| self.protocol_error(e))?;
                if target.kind == b'P' {
                    self.attachment.forward(&frame);
                    self.push_expect(Expect::DescribePortal);
                } else {
                    match self.client_state.statements_mut().get(target.name).cloned() {
                        Some(stmt) => {
                            self.ensure_prepared(server, &stmt, false);
                            frontend::write_describe(self.attachment.outgoing(), b'S', &stmt.name);
                        }
                        None => self.attachment.forward(&frame),
                    }
                    self.push_expect(Expect::DescribeStatement);
                }
            }
            frontend::EXECUTE => {
                frontend::execute(&frame).map_err(|e| self.protocol_error(e))?;
                self.attachment.forward(&frame);
                self.push_expect(Expect::Execute);
            }
            frontend::CLOSE => {
                let target = frontend::close(&frame).map_err(|e| self.protocol_error(e))?;
                if target.kind == b'S' && !target.name.is_empty() {
                    // The client's name only: other clients may share the server statement.
                    self.client_state.statements_mut().remove(target.name);
                    self.push_expect(Expect::Synth(Synth::CloseComplete));
                } else {
                    self.attachment.forward(&frame);
                    self.push_expect(Expect::Close { to_client: true });
                }
            }
            frontend::SYNC => {
                self.attachment.forward(&frame);
                // The server ignores a Sync during COPY FROM STDIN (tokio-postgres sends one
                // right after the Execute that starts the COPY): nothing will answer it.
                if !self.replies.in_copy_in() {
                    self.push_expect(Expect::Sync);
                }
            }
            frontend::FUNCTION_CALL => {
                self.attachment.forward(&frame);
                self.push_expect(Expect::Query);
            }
            frontend::FLUSH | frontend::COPY_DATA | frontend::COPY_DONE | frontend::COPY_FAIL => {
                if matches!(frame.tag(), frontend::COPY_DONE | frontend::COPY_FAIL) {
                    self.replies.end_copy_in();
                }
                self.attachment.forward(&frame);
            }
            frontend::TERMINATE => return Ok(Flow::Terminate),
            other => {
                return Err(SessionError::Protocol(format!(
                    "invalid frontend message type {}",
                    other as char
                )));
            }
        }
        Ok(Flow::Continue)
    }

    /// Handles one server message while attached.
    pub(crate) fn server_message(
        &mut self,
        server: &mut ServerConn,
        frame: Frame,
    ) -> Result<Flow, SessionError> {
        tracing::trace!(tag = %(frame.tag() as char), expect = ?self.replies.front(), "server message");
        let mut forward = true;
        let mut flow = Flow::Continue;
        if matches!(self.replies.front(), Some(Expect::AbortImplicit)) {
            self.replies.pop_front();
            if frame.tag() == backend::ERROR_RESPONSE {
                self.drain_synth();
                return Ok(Flow::Continue);
            }
        }
        if matches!(self.replies.front(), Some(Expect::Swallow)) && !server.is_broken() {
            // The replies to a BEGIN the proxy answered earlier itself.
            if frame.tag() == backend::READY_FOR_QUERY {
                self.replies.pop_front();
                let status = backend::ready_for_query_status(&frame)
                    .map_err(|e| SessionError::Server(e.to_string()))?;
                server.set_status(status);
                if !self.txn.has_deferred_begin() {
                    self.txn.set_status(status);
                }
                if status == TransactionStatus::Idle
                    && self.replies.is_empty()
                    && self.releases_at_idle()
                {
                    // The proxy's own Sync before a parked batch moves to another connection.
                    return Ok(Flow::Release);
                }
            }
            self.drain_synth();
            return Ok(Flow::Continue);
        }
        match frame.tag() {
            backend::ERROR_RESPONSE => {
                if server.is_broken() {
                    // A FATAL (the pool saw it): the backend is going away, e.g. terminated by
                    // an administrator or a restart. The client's own connection is fine, so it
                    // gets an ordinary error per waiting request instead of the FATAL, and its
                    // next statements go to a new server connection.
                    let fields = backend::error_fields(&frame).unwrap_or_default();
                    return Ok(Flow::ServerGone(format!(
                        "{} ({})",
                        fields.message, fields.code
                    )));
                }
                self.txn.note_error();
                if let Ok(fields) = backend::error_fields(&frame) {
                    crate::stats::count_error(&fields.code);
                    self.request.tally.error(&fields.code);
                }
                if crate::fence::is_fence(&frame) {
                    // Held for a retry on the new shard map, or already rewritten to 40001.
                    let only_query = self.replies.only_query() && self.parked.is_empty();
                    self.on_fence_error(&frame, only_query);
                    forward = false;
                }
                if let Some(Expect::Bind { global: Some(stmt) }) = self.replies.front() {
                    // A schema change made this statement's plan unusable on this server
                    // connection (and likely on others). A client answers by preparing it
                    // again, which must give a fresh plan: future Parses of the text get a new
                    // global name instead of the stale one.
                    if backend::error_fields(&frame).is_ok_and(|f| {
                        f.code == "0A000" && f.message == "cached plan must not change result type"
                    }) {
                        self.shared.statements.retire(stmt);
                    }
                }
                self.replies.end_copy_in();
                if !matches!(self.replies.front(), Some(Expect::Query)) {
                    // Extended protocol: the server skips everything up to the next Sync, so
                    // nothing is coming for those messages (nor for what we would synthesise);
                    // the client's messages until its Sync must not queue replies either.
                    self.replies.skip_to_sync(|stmt| {
                        server.prepared().remove(&stmt.name);
                    });
                }
            }
            backend::READY_FOR_QUERY => {
                let status = backend::ready_for_query_status(&frame)
                    .map_err(|e| SessionError::Server(e.to_string()))?;
                // The statement that hit a fence runs again; its own ReadyForQuery will answer.
                forward = !self.fence.has_pending();
                self.replies.pop_front();
                self.note_request_done();
                self.replies.end_copy_in();
                server.set_status(status);
                self.txn.set_status(status);
                if status == TransactionStatus::Idle && self.txn.has_deferred_begin() {
                    // Statements were only prepared while the client's BEGIN waits for the
                    // statement that says where the transaction goes: it is still open for the
                    // client.
                    forward = false;
                    self.txn.set_status(TransactionStatus::InTransaction);
                    self.io.push_ready(self.txn.status());
                } else if status == TransactionStatus::Idle {
                    self.routing.end_transaction();
                    self.end_of_transaction(server);
                    if self.replies.is_empty() && self.releases_at_idle() {
                        flow = Flow::Release;
                    }
                }
            }
            backend::COPY_IN_RESPONSE => {
                self.replies.start_copy_in();
            }
            backend::PARSE_COMPLETE => {
                if let Some(Expect::Parse { to_client, global }) = self.replies.pop_front() {
                    forward = to_client;
                    if let Some(stmt) = global {
                        stmt.mark_accepted();
                    }
                }
            }
            backend::CLOSE_COMPLETE => {
                if let Some(Expect::Close { to_client }) = self.replies.pop_front() {
                    forward = to_client;
                }
            }
            backend::BIND_COMPLETE | backend::NO_DATA | backend::PORTAL_SUSPENDED => {
                self.replies.pop_unless_query();
            }
            backend::ROW_DESCRIPTION => {
                if matches!(
                    self.replies.front(),
                    Some(Expect::DescribeStatement | Expect::DescribePortal)
                ) {
                    self.replies.pop_front();
                }
            }
            backend::COMMAND_COMPLETE => {
                self.txn.note_command_complete(frame.body());
                self.request.tally.command_complete(frame.body());
                // DEALLOCATE ALL / DISCARD ALL take effect at once and survive a rollback: the
                // server connection lost every statement, except Parses queued after this one.
                if frame.body() == b"DEALLOCATE ALL\0" || frame.body() == b"DISCARD ALL\0" {
                    server.prepared().clear();
                    for stmt in self.replies.queued_parses() {
                        server.prepared().insert(stmt.name.clone());
                    }
                }
                self.replies.pop_unless_query();
            }
            backend::EMPTY_QUERY_RESPONSE => self.replies.pop_unless_query(),
            backend::PARAMETER_STATUS => {
                if let Ok((name, value)) = backend::parameter_status(&frame) {
                    self.note_parameter(&[(name.to_owned(), value.to_owned())]);
                }
            }
            _ => {}
        }
        if forward {
            self.io.out.extend_from_slice(frame.as_bytes());
            self.fence.disarm();
        }
        self.drain_synth();
        // The replies owed for a pipelined statement refused after this ReadyForQuery went out
        // just now: nothing is left for the server, so the connection can go back.
        if flow == Flow::Continue
            && frame.tag() == backend::READY_FOR_QUERY
            && server.status() == TransactionStatus::Idle
            && self.replies.is_empty()
            && self.releases_at_idle()
        {
            flow = Flow::Release;
        }
        Ok(flow)
    }

    /// At ReadyForQuery `I`: session effects of a transaction that committed become the
    /// client's state (and the server's); those of one that failed or rolled back are dropped.
    pub(crate) fn end_of_transaction(&mut self, server: &mut ServerConn) {
        if !self.txn.shards().is_multi() {
            self.txn.shards_mut().reset();
        }
        if let Some(Settled { effects, committed }) = self.txn.settle() {
            if committed {
                // (Prepared statements dropped by DEALLOCATE/DISCARD ALL were forgotten at its
                // CommandComplete: they are gone even if the transaction rolls back.)
                self.client_state.settings_mut().apply(&effects);
                if self.client_state.settings().server_diverges(&effects) {
                    // E.g. a RESET took the server back to its own default, not the client's
                    // startup value: the next checkout replays the client's settings.
                    server.set_session_fingerprint(u64::MAX);
                } else {
                    server.set_session_fingerprint(self.client_state.settings().fingerprint());
                }
            } else {
                // Which SETs the server kept is unknown: one before a savepoint that was rolled
                // back to survives a COMMIT. Never hand that state to another client: the next
                // checkout resets the connection and replays the client's settings.
                server.set_session_fingerprint(u64::MAX);
            }
        }
    }

    /// The server connection broke while attached: tell the client, keep it if it was not
    /// inside a transaction (its next statement gets a new connection), else close it.
    pub(crate) fn server_lost(&mut self, error: &str) -> Result<(), SessionError> {
        let msg = format!(
            "lost the connection to server {}: {error}",
            self.pool().name()
        );
        // Every request the client is waiting for (one per Sync or Query) gets an answer, or
        // the client waits forever; messages after the last Sync are skipped up to the next
        // one, as after any error.
        let abandoned = self.replies.abandon();
        self.txn.abandon_effects();
        if !self.txn.is_idle() || self.client.mode_is_session() {
            return Err(SessionError::ServerLost(msg));
        }
        for _ in 0..abandoned.requests {
            self.io.push_error(
                sqlstate::CONNECTION_FAILURE,
                &msg,
                Some("the statement did not complete; retry it"),
            );
            self.io.push_ready(TransactionStatus::Idle);
        }
        if abandoned.unfinished_batch {
            self.replies.skip_rest_of_batch();
        }
        Ok(())
    }
}
