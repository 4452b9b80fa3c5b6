//! Statements that run on several shards: cross-shard reads (merged by `scatter`) and
//! broadcasts (DDL on sharded tables, keyless writes when configured).
//!
//! Outside a transaction they run on one server connection per shard checked out for the
//! statement; inside one, on the transaction's participants (`multi_txn`). Broadcasts run on
//! every shard at once and commit together (`broadcast`).

use std::sync::Arc;

use bytes::Bytes;
use shardgate_pool::{PooledConn, QueryGuard, ServerConn};
use shardgate_router::{Plan, RouteError, ShardIndex, StatementKind};
use shardgate_wire::backend::TransactionStatus;
use shardgate_wire::{frontend, sqlstate, Frame};

use crate::broadcast::broadcast;
use crate::multi_txn::fanout::Member;
use crate::multi_txn::{Gathered, Participant};
use crate::replicas::BatchRole;
use crate::routing::feature_error;
use crate::scatter::{self, ScatterFailure, ScatterLimits, ScatterRequest};
use crate::session::Session;
use crate::stats::RouteKind;
use crate::SessionError;

impl Session {
    /// Runs a batch the router sent to several shards, answering the client completely
    /// (including ReadyForQuery). When it is the first statement of a transaction (a deferred
    /// BEGIN), the transaction opens on those shards and the connection to attach to next is
    /// returned.
    pub(crate) async fn run_many(
        &mut self,
        batch: Vec<Frame>,
        shards: Vec<ShardIndex>,
        plan: Arc<Plan>,
    ) -> Result<Option<PooledConn>, SessionError> {
        if self.txn.has_deferred_begin() && self.spans_shards() {
            return self.open_transaction_on_many(batch, shards, plan).await;
        }
        let refusal = if !self.txn.is_idle() || self.txn.has_deferred_begin() {
            Some(feature_error(
                "a statement on several shards cannot run inside a transaction".into(),
                "run it outside the transaction, or restrict it to one shard with its shard key",
            ))
        } else if plan.cursor.is_some() {
            // As PostgreSQL answers a cursor without a transaction to live in.
            Some(RouteError {
                code: sqlstate::NO_ACTIVE_SQL_TRANSACTION,
                message: "DECLARE CURSOR can only be used in transaction blocks".into(),
                hint: None,
            })
        } else {
            many_shards_refusal(&plan)
        };
        let mut request = match refusal.map_or_else(|| self.scatter_request(&batch, &plan), Err) {
            Ok(r) => r,
            Err(e) => {
                // Counted as a refusal by the per-query statistics.
                self.request.refused = true;
                self.fail_batch(&batch, e.code, &e.message, e.hint.as_deref());
                self.io.flush().await?;
                return Ok(None);
            }
        };

        if let (Some(gather), StatementKind::Read { .. }) = (&plan.gather, &plan.kind) {
            let gather = gather.clone();
            self.run_gather(&batch, shards, &gather, request).await?;
            return Ok(None);
        }
        let role = self.batch_role(&batch);
        let Some((mut conns, running)) = self.checkout_each(&batch, &shards, role).await? else {
            return Ok(None);
        };
        let default = self.shared.topo().router.default_shard();
        let at_default = shards.iter().position(|s| *s == default).unwrap_or(0);
        if let Some(conn) = conns.get_mut(at_default) {
            if let Err(e) = crate::reference::fill_insert(conn, &plan, &mut request).await {
                self.attachment.clear_cancel_target().await;
                self.fail_batch(&batch, e.code, &e.message, e.hint.as_deref());
                self.io.flush().await?;
                return Ok(None);
            }
        }
        // A broadcast's read-your-writes positions are taken per shard below.
        self.read_your_writes.set_may_have_written(false);
        let names: Vec<String> = shards.iter().map(|s| self.shard_name(*s)).collect();
        let started = std::time::Instant::now();
        let broken = {
            let mut servers: Vec<&mut ServerConn> = conns.iter_mut().map(|c| &mut **c).collect();
            self.execute_many(&mut servers, &names, &request, &plan, false)
                .await?
        };
        self.attachment.clear_cancel_target().await;
        let took = started.elapsed();
        for (shard, guard) in shards.iter().zip(&running) {
            self.count_many(*shard, guard.host().role, &plan, took);
        }
        if let Some((shard, error)) = broken {
            if let Some(i) = names.iter().position(|n| *n == shard) {
                conns[i].mark_broken();
            }
            self.io.push_error(
                sqlstate::CONNECTION_FAILURE,
                &format!("lost the connection to shard {shard}: {error}"),
                Some("the statement did not complete; retry it"),
            );
        }
        if !matches!(plan.kind, StatementKind::Read { .. }) && !role.read {
            // DDL and writes on every shard: the client's later reads on each shard must see
            // them (a replica that has not replayed a CREATE TABLE does not know the table).
            self.remember_write_positions(&shards, &mut conns).await;
        }
        // A connection that is not idle now (a server error mid-way) is closed by the pool.
        drop(conns);
        drop(running);
        self.io.push_ready(TransactionStatus::Idle);
        self.io.flush().await?;
        Ok(None)
    }

    fn count_many(
        &self,
        shard: ShardIndex,
        role: shardgate_pool::Role,
        plan: &Plan,
        took: std::time::Duration,
    ) {
        let route = if matches!(plan.kind, StatementKind::Read { .. }) {
            RouteKind::Multi
        } else {
            RouteKind::Broadcast
        };
        self.shared
            .topo()
            .query_stats
            .query(shard, role, route, took);
    }

    /// Runs a cross-shard read (merged, streamed to the client) or a broadcast on `servers`
    /// (one per name). Returns the shard whose connection broke, if one did.
    async fn execute_many(
        &mut self,
        servers: &mut [&mut ServerConn],
        names: &[String],
        request: &ScatterRequest,
        plan: &Plan,
        in_transaction: bool,
    ) -> Result<Option<(String, String)>, SessionError> {
        if let (Some(spec), StatementKind::Read { .. }) = (plan.copy_out, &plan.kind) {
            return self.copy_out_many(servers, names, request, spec).await;
        }
        if matches!(plan.kind, StatementKind::Read { .. }) {
            let spec = plan.merge.clone().unwrap_or_default();
            let limits = ScatterLimits {
                max_buffered: self.shared.config().limits.max_buffered_result,
            };
            // The merged rows stream to the client as they come (`scatter::output`).
            return match scatter::run(servers, names, request, &spec, limits, &mut self.io).await {
                Ok(()) => Ok(None),
                Err(ScatterFailure::Server(e)) => Ok(Some((e.shard.clone(), e.to_string()))),
                Err(ScatterFailure::ClientGone) => {
                    // The connections still mid-result were marked broken: the pool
                    // closes them, which ends their statements.
                    self.attachment.clear_cancel_target().await;
                    Err(SessionError::ClientGone)
                }
            };
        }
        let mut members: Vec<Member<'_>> = servers
            .iter_mut()
            .zip(names)
            .map(|(conn, name)| Member {
                name: name.clone(),
                conn,
            })
            .collect();
        let shared = Arc::clone(&self.shared);
        Ok(broadcast(
            &shared,
            &mut members,
            request,
            &mut self.io.out,
            in_transaction,
            plan.reference_write.is_some(),
        )
        .await)
    }

    /// The client's deferred BEGIN and then a statement for several shards: the transaction
    /// opens on the first of them (the attachment) and the others join it.
    async fn open_transaction_on_many(
        &mut self,
        batch: Vec<Frame>,
        shards: Vec<ShardIndex>,
        plan: Arc<Plan>,
    ) -> Result<Option<PooledConn>, SessionError> {
        let role = self.batch_role(&batch);
        let first = shards.first().copied().unwrap_or_default();
        let Some(mut server) = self.open_deferred_transaction(&batch, first, role).await? else {
            return Ok(None);
        };
        self.many_in_transaction(&mut server, &batch, shards, plan)
            .await?;
        self.io.flush().await?;
        Ok(Some(server))
    }

    /// Opens the client's deferred transaction on `shard` (checkout, its BEGIN) and attaches
    /// to it; `None` when that failed, the batch answered with the error.
    pub(crate) async fn open_deferred_transaction(
        &mut self,
        batch: &[Frame],
        shard: ShardIndex,
        role: BatchRole,
    ) -> Result<Option<PooledConn>, SessionError> {
        let version = self.shared.topology_version();
        self.attachment.set_shard(shard);
        let (mut server, guard) = match self.checkout_for(role).await {
            Ok(v) => v,
            Err(f) => {
                self.fail_batch(batch, &f.code, &f.message, f.hint.as_deref());
                self.io.flush().await?;
                return Ok(None);
            }
        };
        let begin = self
            .txn
            .take_deferred_begin()
            .unwrap_or_else(|| "BEGIN".into());
        if let Err(e) = crate::multi_txn::fanout::run_internal(&mut server, &begin).await {
            self.fail_batch(batch, e.sqlstate(), &e.to_string(), None);
            self.io.flush().await?;
            return Ok(None);
        }
        let active = crate::control::CountGuard::new(&self.shared.activity.active);
        self.attachment.hold(guard, active);
        self.attachment.routed_by(version);
        Ok(Some(server))
    }

    /// One connection per shard of `shards` for a statement outside a transaction, with the
    /// guards counting them as busy; `None` when a checkout failed, the batch answered with
    /// the error.
    pub(crate) async fn checkout_each(
        &mut self,
        batch: &[Frame],
        shards: &[ShardIndex],
        role: BatchRole,
    ) -> Result<Option<(Vec<PooledConn>, Vec<QueryGuard>)>, SessionError> {
        let mut conns: Vec<PooledConn> = Vec::with_capacity(shards.len());
        let mut running = Vec::with_capacity(shards.len());
        for shard in shards {
            self.attachment.set_shard(*shard);
            match self.checkout_for(role).await {
                Ok((conn, guard)) => {
                    conns.push(conn);
                    running.push(guard);
                }
                Err(f) => {
                    self.attachment.clear_cancel_target().await;
                    self.fail_batch(batch, &f.code, &f.message, f.hint.as_deref());
                    self.io.flush().await?;
                    return Ok(None);
                }
            }
        }
        Ok(Some((conns, running)))
    }

    /// A statement for several shards inside the client's transaction: it runs on their
    /// participants, shards not in the transaction yet joining it first.
    pub(crate) async fn many_in_transaction(
        &mut self,
        server: &mut PooledConn,
        batch: &[Frame],
        shards: Vec<ShardIndex>,
        plan: Arc<Plan>,
    ) -> Result<(), SessionError> {
        // pgjdbc closes its previous portal ahead of the next query: a held one is gone
        // already (`held`), and a portal on a participant ends with the transaction anyway.
        let closes = batch
            .iter()
            .take_while(|f| {
                f.tag() == frontend::CLOSE && frontend::close(f).is_ok_and(|c| c.kind == b'P')
            })
            .count();
        for _ in 0..closes {
            shardgate_wire::backend::write_close_complete(&mut self.io.out);
        }
        let batch = &batch[closes..];
        let mut request = match many_shards_refusal(&plan)
            .map_or_else(|| self.scatter_request(batch, &plan), Err)
        {
            Ok(r) => r,
            Err(e) => {
                self.fail_in_transaction(batch, &e);
                return Ok(());
            }
        };
        // A read fetched in parts (row limit, cursor) is run whole and held (`held`).
        let holding = match self.holding_for(batch, &plan, &mut request) {
            Ok(h) => h,
            Err(e) => {
                self.fail_in_transaction(batch, &e);
                return Ok(());
            }
        };
        if holding.is_some() {
            let limits = &self.shared.config().limits;
            let (rows, bytes) = (limits.max_gather_rows, limits.max_gather_bytes);
            self.io.start_capture(rows, bytes);
        }
        let ran = self
            .run_many_in_transaction(
                server,
                shards,
                plan,
                request,
                holding.as_ref().and_then(|h| h.streamed()),
            )
            .await;
        let captured = self.io.finish_capture();
        match ran? {
            ManyRan::Refused(e) => {
                self.fail_in_transaction(batch, &e);
                Ok(())
            }
            ManyRan::Done { mut failed, stream } => {
                if let (Some(holding), Some(captured)) = (holding, captured) {
                    failed |= self.answer_holding(holding, captured, stream);
                }
                self.end_many_in_transaction(failed)
            }
        }
    }

    /// [`Session::many_in_transaction`] once the request is known: the client's answer but
    /// for its ReadyForQuery.
    async fn run_many_in_transaction(
        &mut self,
        server: &mut PooledConn,
        shards: Vec<ShardIndex>,
        plan: Arc<Plan>,
        mut request: ScatterRequest,
        streamed: Option<crate::scatter::Batches>,
    ) -> Result<ManyRan, SessionError> {
        let here = self.attachment.shard();
        let mut taken = match self.participants_for(&shards, server).await {
            Ok(taken) => taken,
            Err(e) => return Ok(ManyRan::Refused(e)),
        };
        if let (Some(gather), StatementKind::Read { .. }) = (&plan.gather, &plan.kind) {
            let gathered = self
                .gather_in_transaction(server, &mut taken, &shards, gather, &request, &plan)
                .await;
            for p in taken {
                self.txn.shards_mut().put(p);
            }
            let failed = match gathered? {
                Gathered::Answered { failed } => failed,
                Gathered::Refused(e) => return Ok(ManyRan::Refused(e)),
                Gathered::Lost(shard, error) => {
                    self.io.push_error(
                        sqlstate::CONNECTION_FAILURE,
                        &format!("lost the connection to shard {shard}: {error}"),
                        Some("the transaction failed; roll it back and retry it"),
                    );
                    true
                }
            };
            return Ok(ManyRan::Done {
                failed,
                stream: None,
            });
        }
        // Per-shard defaults of a reference INSERT, evaluated on the default shard.
        let default = self.shared.topo().router.default_shard();
        let evaluator: &mut ServerConn = match taken.iter_mut().find(|p| p.shard == default) {
            Some(p) => &mut p.conn,
            None => server,
        };
        if let Err(e) = crate::reference::fill_insert(evaluator, &plan, &mut request).await {
            for p in taken {
                self.txn.shards_mut().put(p);
            }
            return Ok(ManyRan::Refused(e));
        }
        let names: Vec<String> = shards.iter().map(|s| self.shard_name(*s)).collect();
        let started = std::time::Instant::now();
        let result = {
            let by_shard = crate::multi_txn::in_shard_order(&shards, here, server, &mut taken);
            let mut servers: Vec<&mut ServerConn> = by_shard.into_iter().map(|(_, c)| c).collect();
            match streamed {
                Some(batches) => {
                    self.execute_held(&mut servers, &names, &request, &plan, batches)
                        .await
                }
                None => self
                    .execute_many(&mut servers, &names, &request, &plan, true)
                    .await
                    .map(|broken| (broken, None)),
            }
        };
        let took = started.elapsed();
        let failed_here =
            shards.contains(&here) && server.status() != TransactionStatus::InTransaction;
        let mut failed = failed_here;
        for p in taken {
            self.count_many(p.shard, p.guard.host().role, &plan, took);
            failed |= p.conn.status() != TransactionStatus::InTransaction;
            self.txn.shards_mut().put(p);
        }
        let (broken, merge) = result?;
        if let Some((shard, error)) = broken {
            self.io.push_error(
                sqlstate::CONNECTION_FAILURE,
                &format!("lost the connection to shard {shard}: {error}"),
                Some("the transaction failed; roll it back and retry it"),
            );
            failed = true;
        }
        Ok(ManyRan::Done {
            failed,
            stream: merge.map(|merge| crate::held::HeldStream { merge, shards }),
        })
    }

    /// The participants on `shards` other than the attached one, taken out of the
    /// transaction's waiting set (shards not in the transaction yet join it). On failure the
    /// ones taken go back.
    pub(crate) async fn participants_for(
        &mut self,
        shards: &[ShardIndex],
        server: &mut PooledConn,
    ) -> Result<Vec<Participant>, RouteError> {
        let mut taken = Vec::with_capacity(shards.len());
        let here = self.attachment.shard();
        for &s in shards.iter().filter(|s| **s != here) {
            let joined = match self.txn.shards_mut().take(s) {
                Some(p) => Ok(p),
                None => self.join(s, server).await,
            };
            match joined {
                Ok(p) => taken.push(p),
                Err(e) => {
                    for p in taken {
                        self.txn.shards_mut().put(p);
                    }
                    return Err(e);
                }
            }
        }
        Ok(taken)
    }

    /// After a statement for several shards in a transaction: a failure fails the whole
    /// transaction (25P02 until ROLLBACK), and the client gets its ReadyForQuery.
    pub(crate) fn end_many_in_transaction(&mut self, failed: bool) -> Result<(), SessionError> {
        if failed {
            self.txn.shards_mut().set_failed();
            self.txn.note_error();
        }
        self.txn.set_status(if failed {
            TransactionStatus::Failed
        } else {
            TransactionStatus::InTransaction
        });
        self.io.push_ready(self.txn.status());
        Ok(())
    }

    /// The batch as one cross-shard request: a single Query, or one Parse/Bind/Describe/
    /// Execute/Sync execution.
    pub(crate) fn scatter_request(
        &mut self,
        batch: &[Frame],
        plan: &Plan,
    ) -> Result<ScatterRequest, RouteError> {
        let shard_sql = plan.merge.as_ref().and_then(|m| m.shard_sql.clone());
        let unsupported = || {
            feature_error(
                "this cross-shard statement must come as one simple query or one Parse/Bind/Execute/Sync batch".into(),
                "send it on its own, or restrict it to one shard with its shard key",
            )
        };
        let bad = |e: shardgate_wire::DecodeError| RouteError {
            code: sqlstate::PROTOCOL_VIOLATION,
            message: e.to_string(),
            hint: None,
        };
        if let [query] = batch {
            if query.tag() == frontend::QUERY {
                let text = frontend::query_text(query).map_err(bad)?;
                return Ok(ScatterRequest::Simple {
                    sql: shard_sql.unwrap_or(self.sql_for_shards(text)?),
                });
            }
        }
        let mut statement: Option<(String, Vec<u32>)> = None;
        let mut client_sent_parse = false;
        let mut client_describe = None;
        let mut bound = None;
        let mut executed = false;
        let mut row_limit = 0;
        for (i, frame) in batch.iter().enumerate() {
            match frame.tag() {
                frontend::PARSE if bound.is_none() && !client_sent_parse => {
                    let p = frontend::parse(frame).map_err(bad)?;
                    let text = self.sql_for_shards(p.query)?;
                    if !p.name.is_empty() {
                        let stmt = self.intern_statement(p.query, &p.param_types);
                        self.client_state
                            .statements_mut()
                            .insert(p.name.to_owned(), stmt);
                    } else {
                        self.routing.set_unnamed(&text, &p.param_types);
                    }
                    statement = Some((text, p.param_types.clone()));
                    client_sent_parse = true;
                }
                frontend::DESCRIBE if client_describe.is_none() && !executed => {
                    client_describe = Some(frontend::describe(frame).map_err(bad)?.kind);
                }
                frontend::BIND if bound.is_none() => {
                    let b = frontend::bind(frame).map_err(bad)?;
                    if statement.is_none() {
                        if !b.statement.is_empty() {
                            // Marks the statement used, for the client's statement cache.
                            self.client_state.statements_mut().get(b.statement);
                        }
                        statement = self
                            .known_statement(b.statement)
                            .map(|(t, ty)| (t.to_owned(), ty.to_vec()));
                    }
                    let p = frontend::bind_params(frame, &b).map_err(bad)?;
                    bound = Some((
                        p.formats.clone(),
                        p.values
                            .iter()
                            .map(|v| v.map(Bytes::copy_from_slice))
                            .collect::<Vec<_>>(),
                        p.result_formats.clone(),
                    ));
                }
                frontend::EXECUTE if bound.is_some() && !executed => {
                    let (_, max_rows) = frontend::execute(frame).map_err(bad)?;
                    // A positive row limit: the first rows, then PortalSuspended (the
                    // portal ends at the Sync that must follow). Negative means all rows.
                    row_limit = u64::try_from(max_rows).unwrap_or(0);
                    executed = true;
                }
                // Bind without Execute: only inside a transaction, where the portal lives on
                // and is held by the proxy (`held`).
                frontend::SYNC
                    if (executed || !self.txn.is_idle())
                        && bound.is_some()
                        && i + 1 == batch.len() => {}
                _ => return Err(unsupported()),
            }
        }
        let (Some((text, param_types)), Some((param_formats, params, result_formats))) =
            (statement, bound)
        else {
            return Err(unsupported());
        };
        Ok(ScatterRequest::Extended {
            sql: shard_sql.unwrap_or(text),
            param_types,
            param_formats,
            params,
            result_formats,
            client_sent_parse,
            client_describe,
            row_limit,
        })
    }
}

impl Session {
    /// The text the proxy sends to every shard itself (as UTF-8): only what reads the same in
    /// the client's encoding.
    pub(crate) fn sql_for_shards(&self, bytes: &[u8]) -> Result<String, RouteError> {
        match std::str::from_utf8(bytes) {
            Ok(text) if self.client_state.encoding().is_utf8() || text.is_ascii() => Ok(text.to_owned()),
            _ => Err(feature_error(
                format!(
                    "a statement on several shards with non-ASCII text needs client_encoding UTF8 (this client uses {})",
                    self.client_state.encoding().name()
                ),
                "SET client_encoding = 'UTF8' for it, or restrict it to one shard with its shard key",
            )),
        }
    }
}

/// How a statement for several shards in a transaction went, before its ReadyForQuery.
enum ManyRan {
    /// Not run: the client gets this error.
    Refused(RouteError),
    /// Answered (rows, or an error the client got: `failed`); a streamed held read's rest.
    Done {
        failed: bool,
        stream: Option<crate::held::HeldStream>,
    },
}

/// Statement kinds that cannot run on several shards.
fn many_shards_refusal(plan: &Plan) -> Option<RouteError> {
    (!matches!(
        plan.kind,
        StatementKind::Read { .. } | StatementKind::Ddl | StatementKind::Write
    ))
    .then(|| {
        feature_error(
            format!("{} cannot run on several shards", plan.command),
            "restrict it to one shard with its shard key or a /* shardgate: shard=… */ hint",
        )
    })
}
