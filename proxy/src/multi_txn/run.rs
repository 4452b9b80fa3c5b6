//! The session's side of a transaction on several shards: deciding that a statement needs
//! another shard, joining shards, switching the attachment between participants, running
//! statements for several shards on theirs, and transaction control on all of them.

use std::sync::Arc;

use shardgate_pool::{PooledConn, ServerConn};
use shardgate_router::{Placement, Plan, Route, RouteError, ShardIndex, StatementKind};
use shardgate_wire::backend::{self, TransactionStatus};
use shardgate_wire::{frontend, sqlstate, Frame};
use tracing::debug;

use super::commit::commit_all;
use super::fanout::{rollback_all, run_everywhere, Member, TxnError};
use super::gather::Beside;
use super::{begin_statement, Control, Participant};
use crate::query_stats::StatementRoute;
use crate::replicas::BatchRole;
use crate::routing::feature_error;
use crate::session::Session;
use crate::SessionError;

/// What the session does after the proxy handled a batch of a transaction on several shards.
pub(crate) enum InTransaction {
    /// Go on attached to this connection, forwarding this batch first (empty when the proxy
    /// answered the batch itself).
    Attach(PooledConn, Vec<Frame>),
    /// The transaction ended (COMMIT or ROLLBACK answered); the other shards' connections
    /// went back, and this one, the attached one, goes back now.
    Ended(PooledConn),
}

/// The first statement of a batch, as routed.
struct First {
    frame: Frame,
    route: Result<Route, RouteError>,
    plan: Arc<Plan>,
    /// Its text, read only for statements that may be transaction control.
    control: Control,
    text: Option<String>,
}

/// Most bytes of a batch read to its end before the proxy runs it on several shards.
const MAX_BATCH_BYTES: usize = 1024 * 1024;

impl Session {
    /// Whether transactions may span shards here: transaction pooling over several shards.
    pub(crate) fn spans_shards(&self) -> bool {
        !self.client.mode_is_session() && {
            let topo = self.shared.topo();
            topo.routing && topo.router.shard_names().len() > 1
        }
    }

    fn first_statement(&mut self, batch: &[Frame]) -> Option<First> {
        self.routing.clear_batch_parses();
        let mut found = None;
        for frame in batch {
            match self.route_frame(frame) {
                Ok(Some((route, plan))) => {
                    found = Some((frame, Ok(route), plan));
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    // The plan only matters for its kind: read it again without routing.
                    let text = self.frame_text(frame);
                    let plan = self
                        .shared
                        .topo()
                        .router
                        .plan(text.as_deref().unwrap_or(""));
                    found = Some((frame, Err(e), plan));
                    break;
                }
            }
        }
        let first = found.map(|(frame, route, plan)| {
            let text = matches!(
                plan.kind,
                StatementKind::Commit
                    | StatementKind::Rollback
                    | StatementKind::TransactionOther
                    | StatementKind::SetTransaction { .. }
                    | StatementKind::Set
            )
            .then(|| self.frame_text(frame))
            .flatten();
            let control = text.as_deref().map_or(Control::None, Control::of);
            First {
                frame: frame.clone(),
                route,
                plan,
                control,
                text,
            }
        });
        self.routing.clear_batch_parses();
        first
    }

    /// The statement text a Query carries or a Bind executes.
    pub(crate) fn frame_text(&self, frame: &Frame) -> Option<String> {
        match frame.tag() {
            frontend::QUERY => frontend::query_text(frame)
                .ok()
                .map(|t| self.sql(t).into_owned()),
            frontend::BIND => {
                let bind = frontend::bind(frame).ok()?;
                if bind.statement.is_empty() {
                    return self.routing.unnamed().map(|(t, _)| t.clone());
                }
                self.client_state
                    .statements()
                    .peek(bind.statement)
                    .map(|s| s.query.clone())
                    .or_else(|| {
                        self.routing
                            .batch_parse(bind.statement)
                            .map(|(t, _)| t.clone())
                    })
            }
            _ => None,
        }
    }

    /// A statement of the client's transaction about to be forwarded on the attached
    /// connection: remembered if a shard joining later must replay it.
    pub(crate) fn note_transaction_statement(&mut self, frame: &Frame, plan: &Plan) {
        if !matches!(
            plan.kind,
            StatementKind::TransactionOther
                | StatementKind::SetTransaction { .. }
                | StatementKind::Set
        ) || (self.txn.is_idle() && !self.txn.has_deferred_begin())
        {
            return;
        }
        if let Some(text) = self.frame_text(frame) {
            let control = Control::of(&text);
            self.txn.shards_mut().note(&text, &control);
        }
    }

    /// Whether a batch read while attached inside a transaction needs more than the attached
    /// connection: a statement for another shard or for several, transaction control while
    /// other shards take part, anything after the transaction failed on another shard.
    pub(crate) fn needs_txn_shards(&mut self, batch: &[Frame], status: TransactionStatus) -> bool {
        // Read before routing: a route is kept only under the map it was made by.
        let version = self.shared.topology_version();
        if self.claims_held(batch) {
            return true;
        }
        if !batch
            .iter()
            .any(|f| matches!(f.tag(), frontend::QUERY | frontend::BIND))
        {
            return false;
        }
        if self.txn.shards().failed() {
            return true;
        }
        let Some(first) = self.first_statement(batch) else {
            return false;
        };
        if first.control.is_control() {
            return self.txn.shards().is_multi();
        }
        if status == TransactionStatus::Failed || self.client_state.pin().is_pinned() {
            // The server answers 25P02 itself; a pinned session stays (and is refused).
            return false;
        }
        let here = match &first.route {
            Ok(Route::Shard(s)) => *s == self.attachment.shard() || self.runs_anywhere(&first.plan),
            Ok(Route::Shards(_) | Route::AllShards) => false,
            // A multi-row INSERT over several shards runs split; other refusals are answered
            // in order by the relay.
            Err(_) => {
                return matches!(self.split_of(&first.frame), Ok(Some(_)))
                    || self.copy_of(&first.frame).is_some()
            }
        };
        if here {
            // The relay checks this statement again as it forwards it: with this route.
            if let Ok(route) = first.route {
                self.routing
                    .set_prerouted(&first.frame, version, route, first.plan);
            }
        }
        !here
    }

    /// Statements that need no particular shard (SET, `SELECT 1`, transaction control) run on
    /// the attached connection; writes, DDL and reads of unsharded tables belong on the
    /// default shard, where those tables live.
    pub(crate) fn runs_anywhere(&self, plan: &Plan) -> bool {
        matches!(plan.placement, Placement::Default)
            && plan.hint.is_none()
            && self.routing.hint().is_none()
            && !plan.unsharded_tables
            && !matches!(plan.kind, StatementKind::Write | StatementKind::Ddl)
    }

    /// Runs a batch of the client's transaction that needs more than the attached connection
    /// (see [`Session::needs_txn_shards`]).
    pub(crate) async fn run_in_transaction(
        &mut self,
        mut server: PooledConn,
        mut batch: Vec<Frame>,
    ) -> Result<InTransaction, SessionError> {
        if self.claims_held(&batch) {
            // Reads of a cross-shard portal or cursor the proxy holds (`held`).
            self.read_rest_of_batch(&mut batch).await?;
            self.answer_held(&mut server, &batch).await?;
            return Ok(InTransaction::Attach(server, Vec::new()));
        }
        let Some(first) = self.first_statement(&batch) else {
            return Ok(InTransaction::Attach(server, batch));
        };
        if self.txn.shards().failed() {
            return self.after_failure(server, batch, first).await;
        }
        match &first.control {
            Control::Commit { and_chain: false } => {
                return self.end_transaction(server, batch, true).await
            }
            Control::Rollback { and_chain: false } => {
                return self.end_transaction(server, batch, false).await
            }
            Control::Commit { .. } | Control::Rollback { .. } | Control::ClientTwoPhase => {
                let e = feature_error(
                    "this statement cannot end a transaction that spans several shards".into(),
                    "use plain COMMIT or ROLLBACK; PREPARE TRANSACTION and AND CHAIN work in transactions on one shard",
                );
                self.read_rest_of_batch(&mut batch).await?;
                self.fail_in_transaction(&batch, &e);
                return Ok(InTransaction::Attach(server, Vec::new()));
            }
            Control::Savepoint(_)
            | Control::Release(_)
            | Control::RollbackTo(_)
            | Control::Local => {
                self.read_rest_of_batch(&mut batch).await?;
                self.control_everywhere(&mut server, &batch, &first).await?;
                return Ok(InTransaction::Attach(server, Vec::new()));
            }
            Control::None => {}
        }
        if self.attachment.map_changed(self.shared.topology_version()) {
            let e = RouteError {
                code: sqlstate::SERIALIZATION_FAILURE,
                message: "the shard map changed while this transaction ran (a rebalance moved keys between shards)".into(),
                hint: Some("roll back and retry the transaction".into()),
            };
            self.read_rest_of_batch(&mut batch).await?;
            self.txn.shards_mut().set_failed();
            self.fail_in_transaction(&batch, &e);
            return Ok(InTransaction::Attach(server, Vec::new()));
        }
        match first.route {
            Ok(Route::Shard(s)) if s == self.attachment.shard() => {
                Ok(InTransaction::Attach(server, batch))
            }
            Ok(Route::Shard(s)) => match self.switch_to(s, server).await {
                Ok(conn) => Ok(InTransaction::Attach(conn, batch)),
                Err((conn, e)) => {
                    self.read_rest_of_batch(&mut batch).await?;
                    self.fail_in_transaction(&batch, &e);
                    Ok(InTransaction::Attach(conn, Vec::new()))
                }
            },
            Ok(route @ (Route::Shards(_) | Route::AllShards)) => {
                self.read_rest_of_batch(&mut batch).await?;
                let shards = match route {
                    Route::Shards(shards) => shards,
                    _ => (0..self.shared.topo().router.shard_names().len()).collect(),
                };
                let kind = StatementRoute::of_many(&first.plan);
                let record = self.start_batch_record(&batch, kind, shards.len());
                let ran = self
                    .many_in_transaction(&mut server, &batch, shards, first.plan)
                    .await;
                self.finish_batch_record(record);
                ran?;
                Ok(InTransaction::Attach(server, Vec::new()))
            }
            Err(e) => {
                self.read_rest_of_batch(&mut batch).await?;
                let all = self.shared.topo().router.shard_names().len();
                let mut record = self.start_batch_record(&batch, StatementRoute::Refused, 0);
                let ran = match self.split_of(&first.frame) {
                    Ok(Some(split)) => {
                        record.set_route(StatementRoute::SplitInsert, split.parts.len());
                        self.split_in_transaction(&mut server, &batch, split).await
                    }
                    Ok(None) => match self.copy_of(&first.frame) {
                        Some(copy) => {
                            record.set_route(StatementRoute::SplitCopy, all);
                            self.copy_in_transaction(&mut server, &batch, copy).await
                        }
                        None => {
                            self.fail_in_transaction(&batch, &e);
                            Ok(())
                        }
                    },
                    Err(e) => {
                        self.fail_in_transaction(&batch, &e);
                        Ok(())
                    }
                };
                self.finish_batch_record(record);
                ran?;
                Ok(InTransaction::Attach(server, Vec::new()))
            }
        }
    }

    /// The transaction failed on some shard: only ROLLBACK (or COMMIT, which rolls back) and
    /// ROLLBACK TO run; everything else gets 25P02 as from PostgreSQL.
    async fn after_failure(
        &mut self,
        mut server: PooledConn,
        mut batch: Vec<Frame>,
        first: First,
    ) -> Result<InTransaction, SessionError> {
        match first.control {
            Control::Commit { .. } | Control::Rollback { .. } => {
                self.end_transaction(server, batch, false).await
            }
            Control::RollbackTo(_) => {
                self.read_rest_of_batch(&mut batch).await?;
                self.control_everywhere(&mut server, &batch, &first).await?;
                Ok(InTransaction::Attach(server, Vec::new()))
            }
            _ => {
                self.read_rest_of_batch(&mut batch).await?;
                let e = RouteError {
                    code: sqlstate::IN_FAILED_SQL_TRANSACTION,
                    message: "current transaction is aborted, commands ignored until end of transaction block".into(),
                    hint: None,
                };
                self.fail_in_transaction(&batch, &e);
                Ok(InTransaction::Attach(server, Vec::new()))
            }
        }
    }

    /// Answers a batch with an error inside the transaction (status `E` when it failed).
    pub(crate) fn fail_in_transaction(&mut self, batch: &[Frame], e: &RouteError) {
        self.txn
            .set_status(self.multi_status(TransactionStatus::InTransaction));
        self.fail_batch(batch, e.code, &e.message, e.hint.as_deref());
    }

    fn multi_status(&self, attached: TransactionStatus) -> TransactionStatus {
        if self.txn.shards().failed() {
            TransactionStatus::Failed
        } else {
            attached
        }
    }

    /// Reads the client's messages up to the end of the batch (its Sync), when the batch is
    /// answered by the proxy as a whole.
    async fn read_rest_of_batch(&mut self, batch: &mut Vec<Frame>) -> Result<(), SessionError> {
        let mut bytes: usize = batch.iter().map(Frame::len).sum();
        while !batch.last().is_some_and(|f| {
            matches!(
                f.tag(),
                frontend::SYNC | frontend::QUERY | frontend::FUNCTION_CALL | frontend::FLUSH
            )
        }) {
            self.io.flush().await?;
            let Some(frame) = self.io.read_frame().await? else {
                return Err(SessionError::ClientGone);
            };
            bytes += frame.len();
            batch.push(frame);
            if bytes > MAX_BATCH_BYTES {
                break;
            }
        }
        Ok(())
    }

    /// Savepoints, `SET LOCAL`, `ROLLBACK TO`: run on every participant, answered once.
    async fn control_everywhere(
        &mut self,
        server: &mut PooledConn,
        batch: &[Frame],
        first: &First,
    ) -> Result<(), SessionError> {
        let (Some(text), Some(answer)) = (first.text.clone(), self.one_statement(batch)) else {
            let e = feature_error(
                "in a transaction that spans shards, transaction control must come as its own statement".into(),
                "send SAVEPOINT, RELEASE, ROLLBACK TO and SET LOCAL on their own (one simple query or one Parse/Bind/Execute/Sync)",
            );
            self.fail_in_transaction(batch, &e);
            return Ok(());
        };
        let result = {
            let mut others = self.txn.shards_mut().take_all();
            let mut members = self.members(server, &mut others);
            let result = run_everywhere(&mut members, &text).await;
            drop(members);
            for p in others {
                self.txn.shards_mut().put(p);
            }
            result
        };
        match result {
            Ok(()) => {
                self.txn.shards_mut().note(&text, &first.control);
                if matches!(first.control, Control::RollbackTo(_)) {
                    self.txn.shards_mut().clear_failed();
                }
                self.txn.set_status(TransactionStatus::InTransaction);
                self.answer_one_statement(batch, answer, command_tag(&first.control));
            }
            Err(TxnError(error)) => {
                self.txn.shards_mut().set_failed();
                self.txn.set_status(TransactionStatus::Failed);
                self.txn.note_error();
                self.io.out.extend_from_slice(&error);
                self.finish_failed_batch(batch);
            }
        }
        Ok(())
    }

    /// After an error the proxy wrote for a whole batch: ReadyForQuery, or skip to Sync.
    fn finish_failed_batch(&mut self, batch: &[Frame]) {
        match batch.last().map(|f| f.tag()) {
            Some(frontend::QUERY | frontend::FUNCTION_CALL | frontend::SYNC) => {
                self.io.push_ready(self.txn.status())
            }
            _ => self.replies.skip_rest_of_batch(),
        }
    }

    /// The attached connection and the other participants, named, in one list.
    fn members<'a>(
        &self,
        server: &'a mut PooledConn,
        others: &'a mut [Participant],
    ) -> Vec<Member<'a>> {
        let here = self.attachment.shard();
        self.shard_members(
            std::iter::once((here, &mut **server))
                .chain(others.iter_mut().map(|p| (p.shard, &mut *p.conn))),
        )
    }

    /// COMMIT (`commit`) or ROLLBACK of the whole transaction; every connection goes back
    /// (a pinned session keeps its own).
    async fn end_transaction(
        &mut self,
        mut server: PooledConn,
        mut batch: Vec<Frame>,
        commit: bool,
    ) -> Result<InTransaction, SessionError> {
        self.read_rest_of_batch(&mut batch).await?;
        let answer = self.one_statement(&batch);
        let mut others = self.txn.shards_mut().take_all();
        // COMMIT of a failed transaction rolls back, as in PostgreSQL (no error).
        let commit = commit
            && !self.txn.shards().failed()
            && server.status() != TransactionStatus::Failed
            && others
                .iter()
                .all(|p| p.conn.status() != TransactionStatus::Failed);
        let outcome = {
            let mut members = self.members(&mut server, &mut others);
            if commit {
                let mode = self.shared.config().sharding.cross_shard_transactions;
                commit_all(&self.shared, &mut members, mode).await
            } else {
                rollback_all(&mut members).await;
                Ok(())
            }
        };
        let tag = if commit && outcome.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        debug!(
            client = self.client.id(),
            shards = others.len() + 1,
            tag,
            "transaction on several shards ended"
        );
        for mut p in others {
            if !p.read {
                self.remember_write_position_on(p.shard, &mut p.conn).await;
            }
        }
        self.txn.shards_mut().reset();
        self.txn.set_status(TransactionStatus::Idle);
        self.routing.end_transaction();
        if !commit || outcome.is_err() {
            // Rolled back: the session effects (SETs) of the transaction do not hold.
            self.txn.note_error();
        }
        self.end_of_transaction(&mut server);
        match outcome {
            Ok(()) => match answer {
                Some(answer) => self.answer_one_statement(&batch, answer, tag),
                None => {
                    backend::write_command_complete(&mut self.io.out, tag);
                    self.finish_failed_batch(&batch);
                }
            },
            Err(TxnError(error)) => {
                self.io.out.extend_from_slice(&error);
                self.finish_failed_batch(&batch);
            }
        }
        if self.releases_at_idle() {
            self.read_your_writes.set_may_have_written(true);
            return Ok(InTransaction::Ended(server));
        }
        Ok(InTransaction::Attach(server, Vec::new()))
    }

    /// Makes `shard` the attached participant: the current connection waits among the
    /// others; `shard` joins the transaction if it is not in it yet. On failure the current
    /// connection comes back with the error.
    async fn switch_to(
        &mut self,
        shard: ShardIndex,
        mut server: PooledConn,
    ) -> Result<PooledConn, (PooledConn, RouteError)> {
        let joined = match self.txn.shards_mut().take(shard) {
            Some(p) => p,
            None => match self.join(shard, &mut server).await {
                Ok(p) => p,
                Err(e) => return Err((server, e)),
            },
        };
        let (guard, active) = match self.attachment.take_guard() {
            Some(g) => g,
            None => return Err((server, internal("attached connection without a guard"))),
        };
        self.txn.shards_mut().put(Participant {
            shard: self.attachment.shard(),
            host: self.attachment.host(),
            read: self.attachment.is_read(),
            conn: server,
            guard,
        });
        debug!(
            client = self.client.id(),
            from = self.attachment.shard(),
            to = shard,
            "transaction moves to another shard"
        );
        self.attachment
            .set_place((joined.shard, joined.host, joined.read));
        self.attachment.hold(joined.guard, active);
        self.attachment.aim_cancel_at(&joined.conn).await;
        Ok(joined.conn)
    }

    /// Checks out a connection on `shard` and opens the transaction there as it is on the
    /// attached connection `server`.
    pub(crate) async fn join(
        &mut self,
        shard: ShardIndex,
        server: &mut ServerConn,
    ) -> Result<Participant, RouteError> {
        if self.txn.shards().join_sql().is_none() {
            let sql = "SELECT current_setting('transaction_isolation') || ',' || current_setting('transaction_read_only') || ',' || current_setting('transaction_deferrable')";
            let value = super::fanout::query_value(server, sql)
                .await
                .map_err(|e| RouteError {
                    code: sqlstate::CONNECTION_FAILURE,
                    message: format!("could not read the transaction's isolation level: {e}"),
                    hint: None,
                })?;
            let value = value.unwrap_or_default();
            let mut parts = value.split(',');
            let isolation = parts.next().unwrap_or("read committed");
            let read_only = parts.next() == Some("on");
            let deferrable = parts.next() == Some("on");
            self.txn
                .shards_mut()
                .set_begin(begin_statement(isolation, read_only, deferrable));
        }
        let join_sql = self.txn.shards().join_sql().unwrap_or_default();
        let role = BatchRole {
            read: self.attachment.is_read(),
            may_write: !self.attachment.is_read(),
        };
        let Beside {
            mut conn,
            guard,
            host,
            read,
        } = self.checkout_beside(shard, role, server).await?;
        let mut members = [Member {
            name: self.shard_name(shard),
            conn: &mut conn,
        }];
        if let Err(TxnError(error)) = run_everywhere(&mut members, &join_sql).await {
            conn.mark_broken();
            let fields =
                backend::error_fields(&Frame::from_bytes(error.freeze())).unwrap_or_default();
            return Err(RouteError {
                code: sqlstate::CONNECTION_FAILURE,
                message: format!(
                    "could not open the transaction on shard {}: {}",
                    self.shard_name(shard),
                    fields.message
                ),
                hint: Some("roll back and retry the transaction".into()),
            });
        }
        debug!(
            client = self.client.id(),
            shard, "shard joined the transaction"
        );
        Ok(Participant {
            shard,
            host,
            read,
            conn,
            guard,
        })
    }
}

impl Session {
    /// The session leaves the transaction abnormally (the client left, the attached
    /// connection was lost) or it ended on the attached connection alone: the other shards
    /// roll back.
    pub(crate) async fn end_other_shards(&mut self) {
        if self.txn.shards().is_multi() {
            let mut others = self.txn.shards_mut().take_all();
            let mut members: Vec<Member<'_>> = others
                .iter_mut()
                .map(|p| Member {
                    name: self.shard_name(p.shard),
                    conn: &mut p.conn,
                })
                .collect();
            rollback_all(&mut members).await;
        }
        self.txn.shards_mut().reset();
    }

    /// While other shards take part, transaction control may not reach the attached
    /// connection alone (a COMMIT there would leave the others behind): it must come on its
    /// own, which the proxy runs everywhere.
    pub(crate) fn check_multi_control(&self, frame: &Frame, plan: &Plan) -> Result<(), RouteError> {
        let controls = match frame.tag() {
            frontend::QUERY if plan.statement_count > 1 => frontend::query_text(frame)
                .ok()
                .map(|t| self.sql(t).into_owned())
                .is_some_and(|text| {
                    shardgate_router::lexer::split_statements(&text)
                        .iter()
                        .any(|s| Control::of(s).is_control())
                }),
            _ => {
                matches!(
                    plan.kind,
                    StatementKind::Commit
                        | StatementKind::Rollback
                        | StatementKind::TransactionOther
                        | StatementKind::SetTransaction { .. }
                ) || (plan.kind == StatementKind::Set
                    && self
                        .frame_text(frame)
                        .is_some_and(|t| Control::of(&t).is_control()))
            }
        };
        if controls {
            return Err(feature_error(
                "in a transaction that spans several shards, transaction control must come on its own".into(),
                "send COMMIT, ROLLBACK, SAVEPOINT, RELEASE, ROLLBACK TO and SET LOCAL as their own statement",
            ));
        }
        Ok(())
    }
}

fn internal(message: &str) -> RouteError {
    RouteError {
        code: sqlstate::INTERNAL_ERROR,
        message: message.into(),
        hint: None,
    }
}

/// The command tag PostgreSQL answers a transaction-control statement with.
fn command_tag(control: &Control) -> &'static str {
    match control {
        Control::Savepoint(_) => "SAVEPOINT",
        Control::Release(_) => "RELEASE",
        Control::RollbackTo(_) => "ROLLBACK",
        Control::Local => "SET",
        Control::Commit { .. } => "COMMIT",
        Control::Rollback { .. } => "ROLLBACK",
        _ => "",
    }
}
