//! The session attached to a server connection: relaying the client's messages and the
//! server's replies (one `select!` over the server, the client, the session timeouts and
//! shutdown) until the connection can go back, the client leaves or the server is lost.

use std::time::Duration;

use shardgate_pool::PooledConn;
use shardgate_wire::backend::TransactionStatus;
use shardgate_wire::{frontend, sqlstate, Frame};

use crate::boundary::{ends_batch, Boundary};
use crate::relay::Flow;
use crate::replies::Expect;
use crate::session::{sleep_or_forever, Session};
use crate::SessionError;

/// How often a session that is not reading its client checks that the client is still there.
const CLIENT_WATCH_INTERVAL: Duration = Duration::from_millis(500);

impl Session {
    /// Forwards between the client and `server` until the connection can be released, the
    /// client leaves, or the server connection is lost.
    pub(crate) async fn attached(
        &mut self,
        server: &mut PooledConn,
        batch: Vec<Frame>,
    ) -> Result<Detach, SessionError> {
        if batch.is_empty() {
            // The proxy answered everything the client sent so far (a batch it ran on several
            // shards, or transaction control): the next message starts a batch.
            self.boundary = Boundary::Request;
        }
        // Each statement of a pipelined batch is routed on its own inside a multi-shard
        // transaction (outside one the batch is one implicit transaction on one shard).
        let spans_shards = self.spans_shards();
        let by_statement = !self.txn.is_idle() && !self.txn.has_deferred_begin() && spans_shards;
        let mut batch = batch;
        let mut frames = batch.drain(..);
        while let Some(frame) = frames.next() {
            self.boundary = Boundary::after(frame.tag());
            if let Err(e) = self.client_message(server, frame) {
                return Err(self.report_protocol_error(e).await);
            }
            if by_statement
                && self.boundary == Boundary::Statement
                && self.next_statement_elsewhere(frames.as_slice(), server.status())
            {
                self.parked = frames.by_ref().collect();
                self.txn.park_batch_in_transaction();
                break;
            }
        }
        drop(frames);
        self.keep_batch_buffer(batch);
        // Settings read once per attachment, from the session's view (refreshed by the
        // messages just relayed).
        let config = self.view.config();
        let idle_timeout = config.listen.client_idle_timeout;
        let max_held = config.pool.max_held_bytes;
        // With no session timeout set (the default) the loop reads no clock at all.
        let timeouts = config.timeouts.clone();
        let timed = crate::timeouts::any_session_timeout(&timeouts);
        let rerouting = self.client.mode_is_transaction() && {
            let topo = self.view.topo();
            topo.router.shard_names().len() > 1 || topo.reads_can_leave_primary
        };
        // The next batch's first messages, held until its Query or Bind says where it goes.
        let mut lookahead: Vec<Frame> = Vec::new();
        // The held messages start the next statement of a pipelined batch (not a new batch).
        let mut lookahead_mid_batch = false;
        let mut held_bytes = 0usize;
        let mut clock = crate::timeouts::SessionClock::default();
        loop {
            if !self.parked.is_empty() && (self.replies.is_empty() || self.replies.refusing()) {
                if self.txn.take_parked_in_transaction()
                    && self.replies.is_empty()
                    && !self.replies.refusing()
                    && self.attachment.outgoing_is_empty()
                    && server.status() != TransactionStatus::Idle
                {
                    // Asked again now that the previous request is done (it may have failed).
                    let parked = std::mem::take(&mut self.parked);
                    let elsewhere = self.needs_txn_shards(&parked, server.status());
                    self.parked = parked;
                    if elsewhere {
                        return Ok(Detach::OtherShards);
                    }
                }
                if server.status() != TransactionStatus::Idle
                    || self.replies.refusing()
                    || self.client_state.pin().is_pinned()
                {
                    // The pipelined batch opened a transaction here after all, an error makes
                    // the server skip it up to its Sync, or the session got pinned here: it
                    // stays here.
                    for frame in std::mem::take(&mut self.parked) {
                        self.boundary = Boundary::after(frame.tag());
                        if let Err(e) = self.client_message(server, frame) {
                            return Err(self.report_protocol_error(e).await);
                        }
                    }
                } else if self.attachment.outgoing_is_empty() {
                    // The previous batch ended with Flush, not Sync: no ReadyForQuery is coming
                    // to release the connection (waiting for one hung the client). A Sync of
                    // the proxy's own ends the server's implicit transaction; its reply is
                    // swallowed and releases the connection.
                    frontend::write_sync(self.attachment.outgoing());
                    self.push_expect(Expect::Swallow);
                }
            }
            let reading = self.parked.is_empty();
            // Batch writes while more client messages are at hand, unless they are held back.
            if !self.attachment.outgoing_is_empty()
                && (!reading || !self.io.reader.has_buffered_frame())
            {
                if let Err(e) = self.attachment.send(server).await {
                    return self.lose_server(&e.to_string()).await;
                }
            }
            if !self.io.out.is_empty() && !server.has_buffered_frame() {
                self.io.flush().await?;
            } else {
                self.io.flush_if_large().await?;
            }
            let idle = self.replies.is_empty() && self.txn.is_idle();
            let deadline = if timed {
                clock.observe(
                    !self.replies.is_empty(),
                    !self.txn.is_idle(),
                    std::time::Instant::now(),
                );
                clock.next(&timeouts)
            } else {
                None
            };
            tokio::select! {
                biased;
                msg = server.read_frame() => match msg {
                    // Leaving this connection: the start of the client's next batch, already
                    // read but not yet routed, is kept for the detached loop (dropping it lost
                    // a pipelined Parse, and its Describe then failed with 26000).
                    Ok(mut frame) => loop {
                        match self.server_message(server, frame)? {
                            Flow::Release => {
                                self.parked.append(&mut lookahead);
                                self.io.flush().await?;
                                return Ok(Detach::Release);
                            }
                            Flow::ServerGone(reason) => {
                                return self.lose_server_holding(&mut lookahead, &reason).await;
                            }
                            Flow::Continue | Flow::Terminate => {}
                        }
                        // The rest of a reply is usually buffered already: handled here, not
                        // one turn of this loop (and its select!) per message. What the top of
                        // the loop does between messages (a parked batch, bytes for the
                        // server) stops it.
                        if !self.parked.is_empty() || !self.attachment.outgoing_is_empty() {
                            break;
                        }
                        // A result's rows go on as they are, not a frame (and a turn of
                        // `server_message`) each.
                        if self.replies.passes_rows() && server.forward_rows(&mut self.io.out) > 0 {
                            self.fence.disarm();
                        }
                        match server.try_frame() {
                            Ok(Some(next)) => frame = next,
                            Ok(None) => break,
                            Err(e) => return self.read_failed(server, &mut lookahead, e).await,
                        }
                    },
                    Err(e) => return self.read_failed(server, &mut lookahead, e).await,
                },
                msg = self.io.read_frame(), if reading => {
                    let Some(frame) = msg? else { return Err(SessionError::ClientGone) };
                    // COPY data a client pipelines right behind its COPY statement (asyncpg
                    // does) belongs to that statement: never held for routing (held, it waited
                    // for a CopyInResponse that had already come).
                    let copy_message = matches!(
                        frame.tag(),
                        frontend::COPY_DATA | frontend::COPY_DONE | frontend::COPY_FAIL
                    );
                    let in_transaction = !self.txn.is_idle() && !self.txn.has_deferred_begin();
                    // Inside a multi-shard transaction each statement of a pipelined batch
                    // (JDBC's executeBatch) is routed on its own.
                    let statement_start =
                        in_transaction && spans_shards && self.boundary == Boundary::Statement;
                    let starts_batch = rerouting
                        && (!self.client_state.pin().is_pinned() || (in_transaction && self.txn.shards().is_multi()))
                        && !copy_message
                        && (self.boundary == Boundary::Request
                            || !lookahead.is_empty()
                            || statement_start)
                        && (!in_transaction || spans_shards)
                        && !self.replies.in_copy_in()
                        && !self.replies.refusing();
                    let frames = if starts_batch {
                        let done = matches!(frame.tag(), frontend::QUERY | frontend::BIND | frontend::FUNCTION_CALL)
                            || ends_batch(frame.tag());
                        if lookahead.is_empty() {
                            lookahead_mid_batch = statement_start;
                            held_bytes = 0;
                        }
                        held_bytes += frame.len();
                        lookahead.push(frame);
                        self.check_held(held_bytes, max_held).await?;
                        if !done {
                            self.boundary = Boundary::Inside;
                            continue;
                        }
                        let batch = std::mem::take(&mut lookahead);
                        if in_transaction {
                            if self.needs_txn_shards(&batch, server.status()) {
                                if lookahead_mid_batch {
                                    self.flush_statements_before_switch();
                                }
                                // Finish the previous request here first; then look again.
                                self.parked = batch;
                                self.txn.park_batch_in_transaction();
                                continue;
                            }
                        } else if self.belongs_elsewhere(&batch) {
                            // Finish the previous request here first; then route it afresh.
                            self.parked = batch;
                            continue;
                        }
                        batch
                    } else {
                        let mut frames = std::mem::take(&mut lookahead);
                        frames.push(frame);
                        frames
                    };
                    for frame in frames {
                        self.boundary = Boundary::after(frame.tag());
                        match self.client_message(server, frame) {
                            Ok(Flow::Terminate) => return Ok(Detach::Terminate),
                            Ok(_) => {}
                            Err(e) => return Err(self.report_protocol_error(e).await),
                        }
                    }
                }
                kind = crate::timeouts::sleep_until(deadline) => {
                    self.on_timeout(server, &mut clock, kind).await?;
                }
                // Not reading the client (a batch is held back): still notice it leaving,
                // rather than keep a server connection for a client that is gone. (An async
                // fn: select! builds every branch's future each turn, and a tokio Sleep reads
                // the clock and the runtime handle when built.)
                _ = sleep_or_forever(CLIENT_WATCH_INTERVAL), if !reading => {
                    if self.io.reader.get_ref().peer_closed() {
                        return Err(SessionError::ClientGone);
                    }
                }
                _ = sleep_or_forever(idle_timeout), if idle && reading => {
                    self.io.fatal(sqlstate::IDLE_SESSION_TIMEOUT, "terminating connection due to idle timeout", Some("listen.client_idle_timeout closed this idle connection; reconnect")).await;
                    return Err(SessionError::IdleTimeout);
                }
                () = self.shutdown.fired(), if idle && reading => {
                    self.io.fatal(sqlstate::ADMIN_SHUTDOWN, "terminating connection because shardgate is shutting down", Some("reconnect to another shardgate instance")).await;
                    return Err(SessionError::Shutdown);
                }
            }
        }
    }

    /// The server connection broke while attached: the client is answered for every request
    /// it waits for (see [`Session::server_lost`]; an error when it cannot keep its session),
    /// and the connection is not used again.
    pub(crate) async fn lose_server(&mut self, reason: &str) -> Result<Detach, SessionError> {
        self.server_lost(reason)?;
        self.io.flush().await?;
        Ok(Detach::ServerLost)
    }

    /// [`Session::lose_server`] while `lookahead` (the start of the client's next batch,
    /// read but not yet routed) is held: it is kept for the detached loop (dropping it lost a
    /// pipelined Parse, and its Describe then failed with 26000).
    async fn lose_server_holding(
        &mut self,
        lookahead: &mut Vec<Frame>,
        reason: &str,
    ) -> Result<Detach, SessionError> {
        self.parked.append(lookahead);
        self.lose_server(reason).await
    }

    /// Reading from the server failed: its socket is not used again.
    async fn read_failed(
        &mut self,
        server: &mut PooledConn,
        lookahead: &mut Vec<Frame>,
        error: impl std::fmt::Display,
    ) -> Result<Detach, SessionError> {
        server.mark_broken();
        self.lose_server_holding(lookahead, &error.to_string())
            .await
    }

    pub(crate) async fn report_protocol_error(&mut self, e: SessionError) -> SessionError {
        if let SessionError::Protocol(msg) = &e {
            self.io.fatal(sqlstate::PROTOCOL_VIOLATION, msg, None).await;
        }
        e
    }
}

/// How an attachment to a server connection ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Detach {
    /// The transaction ended and nothing is outstanding: give the connection back.
    Release,
    /// The client sent Terminate.
    Terminate,
    /// The server connection broke: the client was answered (see [`Session::server_lost`])
    /// and keeps its session; the connection is not used again.
    ServerLost,
    /// The parked batch of the client's transaction needs other shards (`multi_txn`); the
    /// connection stays in the transaction.
    OtherShards,
}
