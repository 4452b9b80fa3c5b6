//! One client connection from accept to close: startup, authentication, then the loop that
//! alternates between waiting with no server connection (detached) and forwarding while holding
//! one (attached).

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use shardgate_pool::PooledConn;
use shardgate_router::RouteError;
use shardgate_wire::backend::{self, TransactionStatus};
use shardgate_wire::{frontend, sqlstate, Frame};
use tracing::{debug, info, warn, Instrument};

use crate::attached::Detach;
use crate::attachment::Attachment;
use crate::boundary::Boundary;
use crate::checkout::PoolCache;
use crate::client::ClientIdentity;
use crate::client_state::ClientState;
use crate::control::CountGuard;
use crate::io::ClientIo;
use crate::login::{login, Login};
use crate::multi_txn::InTransaction;
use crate::query_stats::StatementRoute;
use crate::read_your_writes::ReadYourWrites;
use crate::replies::{Expect, ReplyQueue};
use crate::routing::{Elsewhere, Target};
use crate::routing_state::RoutingState;
use crate::session_state::SessionState;
use crate::shutdown_signal::{ShutdownHub, ShutdownSignal};
use crate::stats::RequestTimer;
use crate::txn::TxnState;
use crate::{SessionError, Shared};
use shardgate_wire::stream::Stream;

/// How long the proxy waits for a ROLLBACK or reset when cleaning a connection up.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest message before login (startup packet, password/SASL messages), as PostgreSQL
/// (which allows 10,000 bytes for a startup packet and 65,535 for an auth token): a bigger
/// claimed length is refused at once instead of being waited for and allocated.
const MAX_LOGIN_MESSAGE: usize = 65_536;

pub struct Session {
    pub(crate) shared: Arc<Shared>,
    /// The config and shard map as of the last batch, message or ReadyForQuery (`view`).
    pub(crate) view: crate::view::View,
    pub(crate) io: ClientIo,
    /// Who the client is (fixed at login) and the admissions it holds.
    pub(crate) client: ClientIdentity,
    /// The client's prepared statements, pin, settings and encoding: what outlives its server
    /// connections.
    pub(crate) client_state: ClientState,
    /// Server pools by shard and host, created on first use.
    pub(crate) pools: PoolCache,
    /// The current (or last) server connection's shard, host and map version, its guards,
    /// the bytes waiting for it, and where cancels go.
    pub(crate) attachment: Attachment,
    /// Read-your-writes: per shard, the WAL position this client's reads must see.
    pub(crate) read_your_writes: ReadYourWrites,
    /// The running request's start and statement (for metrics and the slow-query log).
    pub(crate) request: RequestTimer,
    /// Routing hints and roles, and the statement texts Binds are routed by.
    pub(crate) routing: RoutingState,
    /// The fingerprint and session-word scan of the last unnamed Parse text.
    pub(crate) last_parse: crate::last_parse::LastParse,
    /// The start of the client's next batch, read while the server connection was still
    /// finishing the previous one, held back because it belongs to another shard. Empty, it
    /// keeps the last batch's allocation for the next (`keep_batch_buffer`).
    pub(crate) parked: Vec<Frame>,
    /// A statement that may be (or is waiting to be) retried after a rebalance fence.
    pub(crate) fence: crate::fence::FenceRetry,
    /// Where the last client message processed left the client's request stream: after a
    /// Sync or Query the next message starts a new batch, which may go to another shard if no
    /// transaction is open; after an Execute the next statement of a pipelined batch may go
    /// to another shard of a multi-shard transaction.
    pub(crate) boundary: Boundary,
    /// The replies the client is owed, in order, and whether its messages up to the next
    /// Sync are dropped.
    pub(crate) replies: ReplyQueue,
    /// The transaction as reported to the client: status, a deferred BEGIN, pending
    /// session effects.
    pub(crate) txn: TxnState,
    pub(crate) shutdown: ShutdownSignal,
}

/// Entry point for an accepted connection.
pub(crate) async fn handle_client(stream: Stream, shared: Arc<Shared>, shutdown: Arc<ShutdownHub>) {
    let id = shared.next_client_id();
    let span = tracing::info_span!(
        "client",
        client = id,
        user = tracing::field::Empty,
        db = tracing::field::Empty
    );
    let hard_stop = end_of_shutdown(shutdown.signal(), shared.config().listen.shutdown_timeout);
    let serve = async move {
        // Boxed: a login's state (the client's I/O before the session owns it, the config it
        // read, SCRAM) is large and over once the session runs.
        let Some(mut session) = Box::pin(start_session(id, stream, &shared, &shutdown)).await
        else {
            return;
        };
        let result = match Box::pin(session.finish_login()).await {
            Ok(server) => session.run(server).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) | Err(SessionError::ClientGone) => debug!("client disconnected"),
            Err(e) => info!(error = %e, "client session ended"),
        }
        session
            .shared
            .cancels
            .unregister(session.client.cancel_key().0);
        session.io.shutdown().await;
    }
    .instrument(span);
    // Shutdown ends at its timeout whatever a session is doing (waiting on a server, a client
    // that does not read): the session is dropped then, closing both sockets.
    tokio::select! {
        // In order: no random start (a thread-local RNG draw at every wake).
        biased;
        () = serve => {}
        () = hard_stop => info!(client = id, "session ended: listen.shutdown_timeout passed"),
    }
}

/// Startup and authentication of a new client, up to its session; `None` when the client
/// left, sent a cancel request, failed to log in or ran out of `listen.startup_timeout` (it
/// was told why).
async fn start_session(
    id: u64,
    stream: Stream,
    shared: &Arc<Shared>,
    shutdown: &Arc<ShutdownHub>,
) -> Option<Session> {
    let config = shared.config();
    let mut io = ClientIo::new(stream, config.listen.max_message_size);
    io.write_timeout = config.timeouts.client_write_timeout;
    io.reader
        .set_limit(MAX_LOGIN_MESSAGE.min(config.listen.max_message_size));
    let login =
        match tokio::time::timeout(config.listen.startup_timeout, login(&mut io, shared)).await {
            Ok(Ok(Some(login))) => login,
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => {
                debug!(error = %e, "client startup ended");
                return None;
            }
            Err(_) => {
                io.fatal(
                    sqlstate::QUERY_CANCELED,
                    "canceling authentication due to timeout",
                    Some("finish startup within listen.startup_timeout"),
                )
                .await;
                return None;
            }
        };
    io.reader.set_limit(config.listen.max_message_size);
    Some(Session::new(id, io, shared, login, shutdown.signal()))
}

/// Resolves `timeout` after shutdown starts; never if it does not.
async fn end_of_shutdown(mut shutdown: ShutdownSignal, timeout: Duration) {
    shutdown.requested().await;
    // Boxed, as in `sleep_or_forever`: every session waits like this.
    Box::pin(tokio::time::sleep(timeout)).await;
}

impl Session {
    pub(crate) fn releases_at_idle(&self) -> bool {
        self.client.mode_is_transaction() && !self.client_state.pin().is_pinned()
    }

    fn new(
        id: u64,
        io: ClientIo,
        shared: &Arc<Shared>,
        login: Login,
        shutdown: ShutdownSignal,
    ) -> Session {
        let config = shared.config();
        let (pid, secret, cancel) = shared.cancels.register();
        let shards = shared.topo().router.shard_names().len();
        let read_your_writes = login
            .user
            .read_your_writes
            .unwrap_or(config.replicas.read_your_writes);
        let client_state = ClientState::new(
            config.pool.prepared_statements_per_client,
            SessionState::from_startup(&login.params),
        );
        Session {
            shared: Arc::clone(shared),
            view: crate::view::View::new(shared),
            io,
            client_state,
            client: ClientIdentity::new(id, login, config.pool.mode, (pid, secret)),
            pools: PoolCache::new(shared.pool_generation()),
            attachment: Attachment::new(
                shared.topo().router.default_shard(),
                shared.topology_version(),
                cancel,
            ),
            read_your_writes: ReadYourWrites::new(read_your_writes, shards),
            request: RequestTimer::default(),
            routing: RoutingState::default(),
            last_parse: Default::default(),
            parked: Vec::new(),
            fence: Default::default(),
            boundary: Boundary::Request,
            replies: ReplyQueue::default(),
            txn: TxnState::default(),
            shutdown,
        }
    }

    /// Takes a server connection once to check the database and the client's settings really
    /// work there and to learn the server's parameters; then greets the client.
    async fn finish_login(&mut self) -> Result<Option<PooledConn>, SessionError> {
        let (mut server, reported) = match self.checkout(true).await {
            Ok(v) => v,
            Err(f) => {
                self.io.fatal(&f.code, &f.message, f.hint.as_deref()).await;
                return Err(SessionError::Startup(f.message));
            }
        };
        let mut params: Vec<(String, String)> = server.parameters().to_vec();
        for (k, v) in reported {
            match params.iter_mut().find(|(n, _)| *n == k) {
                Some(p) => p.1 = v,
                None => params.push((k, v)),
            }
        }
        backend::write_auth_ok(&mut self.io.out);
        self.note_parameter(&params);
        for (k, v) in &params {
            backend::write_parameter_status(&mut self.io.out, k, v);
        }
        let (pid, secret) = self.client.cancel_key();
        backend::write_backend_key_data(&mut self.io.out, pid, secret);
        self.io.push_ready(TransactionStatus::Idle);
        self.io.flush().await?;
        let pool = self.pool().name();
        debug!(client = self.client.id(), mode = %self.client.mode(), %pool, "client logged in");
        if self.client.mode_is_session() {
            Ok(Some(server))
        } else {
            self.release(&mut server).await;
            Ok(None)
        }
    }

    /// Gives a server connection back: clears the cancel target first, so a late cancel cannot
    /// reach whoever gets the connection next.
    async fn release(&mut self, server: &mut PooledConn) {
        self.attachment.clear_cancel_target().await;
        self.remember_write_position(server).await;
        self.attachment.drop_guard();
    }

    /// The main loop: an idle session waits for its client's next batch in a small future;
    /// serving the batch is boxed, so thousands of idle sessions do not each carry the
    /// relay's state. Up to [`KEPT_SERVE_FUTURES`] sessions keep that box and read their
    /// next batches inside it (`serve_kept`); the others build one per batch.
    async fn run(&mut self, held: Option<PooledConn>) -> Result<(), SessionError> {
        let mut held = held.map(|s| Step::Attached(s, Vec::new()));
        loop {
            let step = match held.take() {
                Some(step) => step,
                None => match self.next_batch().await? {
                    Some(step) => step,
                    None => return Ok(()),
                },
            };
            if Box::pin(self.serve_kept(step)).await?.is_break() {
                return Ok(());
            }
        }
    }

    /// The client's next batch (with what was parked from the last one); `None` when it
    /// left.
    async fn next_batch(&mut self) -> Result<Option<Step>, SessionError> {
        let initial = std::mem::take(&mut self.parked);
        self.view.refresh(&self.shared);
        Ok(self.read_detached_batch(initial).await?.map(Step::Detached))
    }

    /// Serves `step` and, while the session holds one of the kept places, the client's
    /// following batches too, so a busy client does not build and copy this 2 KB future
    /// into a new allocation for every batch (the largest source of cache misses per
    /// transaction in `bench profile --cache-sim`). Without a place: `step` alone, and
    /// whatever stays attached to it. `Break` when the session is over, `Continue` for the
    /// caller to read the next batch.
    async fn serve_kept(&mut self, mut step: Step) -> Result<ControlFlow<()>, SessionError> {
        let shared = Arc::clone(&self.shared);
        let kept = shared.kept_serves.try_keep();
        loop {
            self.view.refresh(&self.shared);
            // One call site each for `serve` and `next_batch`: their state machines are
            // inlined here, and a second copy made the code's cache misses outgrow the gain.
            step = match self.serve(step).await? {
                Next::Read if kept.is_some() => match self.next_batch().await? {
                    Some(next) => next,
                    None => return Ok(ControlFlow::Break(())),
                },
                Next::Read => return Ok(ControlFlow::Continue(())),
                Next::Attach(server, batch) => Step::Attached(server, batch),
                Next::End => return Ok(ControlFlow::Break(())),
            };
        }
    }

    /// Serves one batch: routes and attaches a detached one, then relays until the server
    /// connection is released (or the batch ran without one).
    async fn serve(&mut self, step: Step) -> Result<Next, SessionError> {
        let (mut server, batch) = match step {
            Step::Attached(server, batch) => (server, batch),
            Step::Detached(batch) => {
                if self.answer_locally(&batch) {
                    return Ok(Next::Read);
                }
                let version = self.shared.topology_version();
                // A batch for one shard is served here; the rest (several shards, a split, a
                // refusal) by a boxed future of its own, so none of their state sits in this
                // future, which every batch builds and copies into its box.
                let elsewhere = match self.route_batch(&batch) {
                    Ok(Target::Shard(shard)) => {
                        self.attachment.set_shard(shard);
                        None
                    }
                    Ok(Target::Elsewhere(to)) => Some(Ok(to)),
                    Err(e) => Some(Err(e)),
                };
                if let Some(routed) = elsewhere {
                    return Box::pin(self.serve_elsewhere(batch, routed)).await;
                }

                let role = self.batch_role(&batch);
                match self.checkout_for(role).await {
                    Ok((s, guard)) if self.shared.topology_version() != version => {
                        // A new shard map arrived while the batch waited for a connection:
                        // it was routed by the old one (the relay would refuse it with
                        // 40001, the map having changed under it). Route it again.
                        self.attachment.clear_cancel_target().await;
                        drop((s, guard));
                        self.parked = batch;
                        return Ok(Next::Read);
                    }
                    Ok((s, guard)) => {
                        let active = CountGuard::new(&self.shared.activity.active);
                        self.attachment.hold(guard, active);
                        self.attachment.routed_by(version);
                        if self.releases_at_idle() {
                            self.fence.arm(&batch, self.txn.status(), version);
                        }
                        (s, batch)
                    }
                    Err(f) => {
                        let pool = self.pool().name();
                        warn!(%pool, error = %f.message, "checkout failed");
                        self.fail_batch(&batch, &f.code, &f.message, f.hint.as_deref());
                        self.io.flush().await?;
                        return Ok(Next::Read);
                    }
                }
            }
        };
        if let Some(begin) = self.take_deferred_begin(&batch) {
            frontend::write_query(self.attachment.outgoing(), &begin);
            self.push_expect(Expect::Swallow);
        }
        let outcome = self.attached(&mut server, batch).await;
        match outcome {
            Ok(Detach::Release) => {
                self.end_other_shards().await;
                self.release(&mut server).await;
                self.retry_fenced().await;
            }
            Ok(Detach::OtherShards) => {
                let batch = std::mem::take(&mut self.parked);
                match Box::pin(self.run_in_transaction(server, batch)).await {
                    Ok(InTransaction::Attach(server, batch)) => {
                        return Ok(Next::Attach(server, batch))
                    }
                    Ok(InTransaction::Ended(mut server)) => {
                        self.io.flush().await?;
                        self.release(&mut server).await;
                    }
                    Err(e) => {
                        self.end_other_shards().await;
                        return Err(e);
                    }
                }
            }
            Ok(Detach::Terminate) => {
                self.end_other_shards().await;
                self.cleanup(&mut server).await;
                return Ok(Next::End);
            }
            Ok(Detach::ServerLost) => {
                // The server connection was lost; it is broken and will not be reused.
                // (Its requests were answered with errors, a held statement's too.) Session
                // state it was pinned for is gone with it.
                self.fence.take_pending();
                self.client_state.pin_mut().release();
                self.end_other_shards().await;
                self.release(&mut server).await;
            }
            Err(e) => {
                self.end_other_shards().await;
                self.cleanup(&mut server).await;
                if let SessionError::ServerLost(msg) = &e {
                    self.io
                        .fatal(
                            sqlstate::CONNECTION_FAILURE,
                            msg,
                            Some("reconnect and retry the transaction"),
                        )
                        .await;
                }
                return Err(e);
            }
        }
        Ok(Next::Read)
    }

    /// Serves a detached batch that is not for one shard: runs it on several shards, splits
    /// it by key, or answers the router's refusal. (Boxed by `serve`: these paths' futures are
    /// large, and inline every batch's future would carry their size.)
    async fn serve_elsewhere(
        &mut self,
        batch: Vec<Frame>,
        routed: Result<Box<Elsewhere>, RouteError>,
    ) -> Result<Next, SessionError> {
        let ran = match routed.map(|to| *to) {
            Ok(Elsewhere::Many { shards, plan }) => {
                // A BEGIN in front (pgjdbc): deferred; the rest opens the
                // transaction on the shards.
                let batch = match self.split_leading_begin(&batch) {
                    Some(rest) => {
                        self.parked = rest;
                        return Ok(Next::Read);
                    }
                    None => batch,
                };
                if let Some(what) = self.batch_pins(&batch) {
                    let e = crate::pinning::many_shards_refusal(what);
                    let record = self.start_batch_record(&batch, StatementRoute::Refused, 0);
                    self.fail_batch(&batch, e.code, &e.message, e.hint.as_deref());
                    self.finish_batch_record(record);
                    self.io.flush().await?;
                    return Ok(Next::Read);
                }
                let route = StatementRoute::of_many(&plan);
                let record = self.start_batch_record(&batch, route, shards.len());
                let ran = self.run_many(batch, shards, plan).await;
                self.finish_batch_record(record);
                ran
            }
            Ok(Elsewhere::SplitInsert(split)) => {
                let parts = split.parts.len();
                let record = self.start_batch_record(&batch, StatementRoute::SplitInsert, parts);
                let ran = self.run_split(batch, split).await;
                self.finish_batch_record(record);
                ran
            }
            Ok(Elsewhere::SplitCopy(copy)) => {
                let shards = self.shared.topo().router.shard_names().len();
                let record = self.start_batch_record(&batch, StatementRoute::SplitCopy, shards);
                let ran = self.run_copy(batch, copy).await;
                self.finish_batch_record(record);
                ran
            }
            Err(e) => {
                if e.code == sqlstate::PROTOCOL_VIOLATION {
                    self.io.fatal(e.code, &e.message, None).await;
                    return Err(SessionError::Protocol(e.message));
                }
                let record = self.start_batch_record(&batch, StatementRoute::Refused, 0);
                self.fail_batch(&batch, e.code, &e.message, e.hint.as_deref());
                self.finish_batch_record(record);
                self.io.flush().await?;
                return Ok(Next::Read);
            }
        };
        Ok(match ran? {
            Some(server) => Next::Attach(server, Vec::new()),
            None => Next::Read,
        })
    }

    /// The client is leaving while holding `server`: leave the connection clean for the next
    /// client, or make sure it is closed.
    async fn cleanup(&mut self, server: &mut PooledConn) {
        self.attachment.clear_cancel_target().await;
        if server.is_broken() {
            return;
        }
        if !self.replies.is_empty() || !self.attachment.outgoing_is_empty() {
            // Mid-query: the server's state is unknown; close rather than guess.
            server.mark_broken();
            return;
        }
        let mut reset = Vec::new();
        if server.status() != TransactionStatus::Idle {
            reset.push("ROLLBACK".to_owned());
        }
        if self.client.mode_is_session() {
            reset.push(self.shared.config().pool.reset_query.clone());
        }
        let pinned = self.client_state.pin().is_pinned();
        if pinned {
            // What pinned the session (temp tables, LISTEN, locks, cursors, statements,
            // settings) goes; RESET ALL inside DISCARD ALL keeps the role.
            reset.push("DISCARD ALL".to_owned());
            reset.push("RESET SESSION AUTHORIZATION; RESET ROLE".to_owned());
            self.client_state.pin_mut().release();
        }
        for sql in reset {
            match tokio::time::timeout(CLEANUP_TIMEOUT, server.run_internal(&sql)).await {
                Ok(Ok(())) => {}
                _ => {
                    server.mark_broken();
                    return;
                }
            }
        }
        if self.client.mode_is_session() || pinned {
            // DISCARD ALL dropped the statements and settings.
            server.prepared().clear();
            server.set_session_fingerprint(0);
        }
    }
}

/// What the main loop does next.
enum Step {
    /// Route and serve a batch read from the client.
    Detached(Vec<Frame>),
    /// Go on relaying on this connection (a transaction continues), starting with the batch.
    Attached(PooledConn, Vec<Frame>),
}

/// Sessions that may keep their serving future between batches: each such future is about
/// 2 KB, and idle sessions keep theirs, so this bounds what they add to the proxy's memory.
pub(crate) const KEPT_SERVE_FUTURES: usize = 1024;

/// How many sessions keep their serving future (at most [`KEPT_SERVE_FUTURES`]).
#[derive(Default)]
pub(crate) struct KeptServes(std::sync::atomic::AtomicUsize);

impl KeptServes {
    /// One of the places, held until the guard drops; `None` when all are taken.
    fn try_keep(&self) -> Option<KeptServe<'_>> {
        use std::sync::atomic::Ordering;
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < KEPT_SERVE_FUTURES).then_some(n + 1)
            })
            .ok()
            .map(|_| KeptServe(self))
    }
}

/// A place among the [`KeptServes`].
struct KeptServe<'a>(&'a KeptServes);

impl Drop for KeptServe<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// What serving a batch leaves `serve_kept` to do.
enum Next {
    /// Read the client's next batch.
    Read,
    /// Relay on this connection.
    Attach(PooledConn, Vec<Frame>),
    /// The session is over (the client said Terminate).
    End,
}

/// Waits `d`; forever when `d` is zero (a timeout that is not set).
///
/// The timer is boxed: these waits sit in the state of every idle session (its next batch,
/// the shutdown's hard stop), where an inline `Sleep` cost 152 bytes each even with no timeout
/// set; the box is made only when one is.
pub(crate) async fn sleep_or_forever(d: Duration) {
    if d.is_zero() {
        std::future::pending::<()>().await;
    } else {
        Box::pin(tokio::time::sleep(d)).await;
    }
}

#[cfg(test)]
mod kept_serves_tests {
    use super::*;

    #[test]
    fn places_are_bounded_and_come_back_when_dropped() {
        let kept = KeptServes::default();
        let all: Vec<_> = (0..KEPT_SERVE_FUTURES).map(|_| kept.try_keep()).collect();
        assert!(all.iter().all(Option::is_some));
        assert!(kept.try_keep().is_none(), "one place more than the bound");
        drop(all);
        assert!(kept.try_keep().is_some());
    }
}
