//! A multi-row INSERT whose rows belong to several shards (simple protocol), split by the
//! router (`Router::split_query`): each shard runs the INSERT of its own rows, in their order.
//! Outside a transaction the shards each run their part in a transaction of their own and
//! commit together through the commit protocol (`multi_txn`), or not at all; inside one, the
//! parts run on the transaction's participants. The client gets one answer: `INSERT 0 N` with
//! the rows of every shard, and RETURNING rows in the order of its VALUES list.

use bytes::BytesMut;
use shardgate_router::InsertPart;
use shardgate_wire::backend::{self, CursorPosition};
use shardgate_wire::Frame;

use crate::multi_txn::commit_all;
use crate::multi_txn::fanout::{
    rollback_all, run_everywhere, run_messages, run_one, Member, Outcome, TxnError,
};
use crate::Shared;

/// A shard whose connection was lost, and why.
pub(crate) type Lost = (String, String);

/// What one shard is sent: the part's text as a simple query, or the extended-protocol run
/// the client's batch asked for (Parse … Sync) with the part's text and parameters.
pub(crate) enum PartRequest {
    Simple(String),
    Extended(BytesMut),
}

/// How the client's batch is answered besides rows and tag.
#[derive(Clone, Copy)]
pub(crate) struct Answering {
    /// The client sent the Parse (it gets the ParseComplete the shards send for theirs).
    pub(crate) forward_parse: bool,
}

/// Runs `requests[i]` (part `parts[i]`) on `members[i]` and writes the answer (without
/// ReadyForQuery) to `out`.
pub(crate) async fn run(
    shared: &Shared,
    members: &mut [Member<'_>],
    parts: &[InsertPart],
    requests: &[PartRequest],
    answering: Answering,
    out: &mut BytesMut,
    in_transaction: bool,
) -> Option<Lost> {
    if !in_transaction {
        if let Err(TxnError(e)) = run_everywhere(members, "BEGIN").await {
            rollback_all(members).await;
            out.extend_from_slice(&e);
            return None;
        }
    }
    let runs: Vec<_> = members
        .iter_mut()
        .zip(requests)
        .map(|(m, r)| async move {
            match r {
                PartRequest::Simple(sql) => run_one(m.conn, sql).await,
                PartRequest::Extended(messages) => run_messages(m.conn, messages).await,
            }
        })
        .collect();
    let outcomes = crate::scatter::join_all(runs).await;
    let failed = !outcomes.iter().all(Outcome::ok);
    if failed || in_transaction {
        if failed && !in_transaction {
            let lost = answer(members, &outcomes, parts, answering, out);
            rollback_all(members).await;
            return lost;
        }
        return answer(members, &outcomes, parts, answering, out);
    }
    let mode = shared.config().sharding.cross_shard_transactions;
    match commit_all(shared, members, mode).await {
        Ok(()) => answer(members, &outcomes, parts, answering, out),
        Err(TxnError(e)) => {
            out.extend_from_slice(&e);
            None
        }
    }
}

/// The first shard's error, or the combined answer.
fn answer(
    members: &[Member<'_>],
    outcomes: &[Outcome],
    parts: &[InsertPart],
    answering: Answering,
    out: &mut BytesMut,
) -> Option<Lost> {
    let mut replies: Vec<&[Frame]> = Vec::with_capacity(outcomes.len());
    for (m, o) in members.iter().zip(outcomes) {
        match o {
            Outcome::Done(frames) => replies.push(frames),
            Outcome::Refused(error) => {
                if backend::write_error_with_prefix(
                    out,
                    error,
                    &format!("shard {}: ", m.name),
                    CursorPosition::Keep,
                )
                .is_err()
                {
                    out.extend_from_slice(error.as_bytes());
                }
                return None;
            }
            Outcome::Lost(e) => return Some((m.name.clone(), e.to_string())),
        }
    }
    combine(&replies, parts, answering, out);
    None
}

/// The first shard's replies as the client's answer (ParseComplete, BindComplete, row
/// description), with every shard's RETURNING rows in the client's row order where its rows
/// are, and `INSERT 0 N` counting every shard's rows.
fn combine(replies: &[&[Frame]], parts: &[InsertPart], answering: Answering, out: &mut BytesMut) {
    let total_rows: usize = parts.iter().map(|p| p.rows.len()).sum();
    let mut ordered: Vec<Option<&Frame>> = vec![None; total_rows];
    let mut inserted: u64 = 0;
    for (frames, part) in replies.iter().zip(parts) {
        let rows = frames.iter().filter(|f| f.tag() == backend::DATA_ROW);
        for (row, at) in rows.zip(&part.rows) {
            if let Some(slot) = ordered.get_mut(*at) {
                *slot = Some(row);
            }
        }
        inserted += frames
            .iter()
            .find(|f| f.tag() == backend::COMMAND_COMPLETE)
            .and_then(|f| std::str::from_utf8(f.body()).ok())
            .and_then(|t| t.trim_end_matches('\0').rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    let Some(first) = replies.first() else {
        return;
    };
    for f in first.iter() {
        match f.tag() {
            backend::DATA_ROW | backend::COMMAND_COMPLETE => break,
            backend::PARSE_COMPLETE if !answering.forward_parse => {}
            backend::READY_FOR_QUERY => {}
            _ => out.extend_from_slice(f.as_bytes()),
        }
    }
    for row in ordered.into_iter().flatten() {
        out.extend_from_slice(row.as_bytes());
    }
    backend::write_command_complete(out, &format!("INSERT 0 {inserted}"));
}

/// Why a split INSERT is not run: with ON CONFLICT a shard may skip rows, and its RETURNING
/// rows could then not be put back in the client's order.
pub(crate) fn refusal(sql: &str) -> Option<shardgate_router::RouteError> {
    let mut conflict = false;
    let mut returning = false;
    for word in shardgate_router::code_words(sql) {
        conflict |= word.eq_ignore_ascii_case("conflict");
        returning |= word.eq_ignore_ascii_case("returning");
    }
    (conflict && returning).then(|| {
        crate::routing::feature_error(
            "a multi-row INSERT … ON CONFLICT … RETURNING whose rows belong to several shards cannot return its rows in order".into(),
            "drop RETURNING, or insert each shard's rows in a statement of its own",
        )
    })
}

use shardgate_pool::PooledConn;
use shardgate_router::{BoundParams, InsertSplit, RouteError, ShardIndex};
use shardgate_wire::backend::TransactionStatus;
use shardgate_wire::{frontend, sqlstate};

use crate::replicas::BatchRole;
use crate::session::Session;
use crate::SessionError;

impl Session {
    /// The split of a simple-protocol multi-row INSERT whose rows belong to several shards;
    /// `None` for anything else.
    pub(crate) fn split_of(&self, frame: &Frame) -> Result<Option<InsertSplit>, RouteError> {
        let topo = self.shared.topo();
        let (split, sql) = match frame.tag() {
            frontend::QUERY => {
                let Ok(text) = frontend::query_text(frame) else {
                    return Ok(None);
                };
                let sql = self.sql(text).into_owned();
                let query = topo.router.plan_query(&sql);
                if !query.plan.splittable_insert() {
                    return Ok(None);
                }
                (topo.router.split_query(&query, self.routing.hint())?, sql)
            }
            frontend::BIND => {
                let Some(sql) = self.frame_text(frame) else {
                    return Ok(None);
                };
                let plan = topo.router.plan(&sql);
                if !plan.splittable_insert() {
                    return Ok(None);
                }
                let Ok(bind) = frontend::bind(frame) else {
                    return Ok(None);
                };
                let Ok(params) = frontend::bind_params(frame, &bind) else {
                    return Ok(None);
                };
                let types = self.bound_param_types(bind.statement);
                let converted = self.bind_values_utf8(&params.values, &params.formats);
                let refs: Option<Vec<Option<&[u8]>>> = converted
                    .as_ref()
                    .map(|vs| vs.iter().map(|v| v.as_deref()).collect());
                let bound = BoundParams {
                    values: refs.as_deref().unwrap_or(&params.values),
                    formats: &params.formats,
                    types: &types,
                };
                (
                    topo.router
                        .split_insert(&plan, &sql, &bound, self.routing.hint())?,
                    sql,
                )
            }
            _ => return Ok(None),
        };
        if split.is_none() {
            return Ok(None);
        }
        if !self.client_state.encoding().is_utf8() && !sql.is_ascii() {
            // The parts are sent as UTF-8 text: only text that reads the same in the client's
            // encoding (the caller answers with the statement's own refusal).
            return Ok(None);
        }
        if let Some(e) = refusal(&sql) {
            return Err(e);
        }
        Ok(split)
    }

    /// The parameter types the client's statement `name` ("" = unnamed) was parsed with.
    fn bound_param_types(&self, name: &str) -> Vec<u32> {
        if name.is_empty() {
            return self
                .routing
                .unnamed()
                .map(|(_, t)| t.clone())
                .unwrap_or_default();
        }
        self.client_state
            .statements()
            .peek(name)
            .map(|s| s.param_types.clone())
            .or_else(|| self.routing.batch_parse(name).map(|(_, t)| t.clone()))
            .unwrap_or_default()
    }

    /// What each shard is sent for `batch` (a Query, or one Parse/Bind/Describe/Execute/Sync
    /// run), and how the client's messages are answered.
    fn part_requests(
        &mut self,
        batch: &[Frame],
        split: &InsertSplit,
    ) -> Result<(Vec<PartRequest>, Answering), RouteError> {
        let plan = shardgate_router::Plan::simple(shardgate_router::StatementKind::Write, "INSERT");
        match self.scatter_request(batch, &plan)? {
            crate::scatter::ScatterRequest::Simple { .. } => Ok((
                split
                    .parts
                    .iter()
                    .map(|p| PartRequest::Simple(p.sql.clone()))
                    .collect(),
                Answering {
                    forward_parse: false,
                },
            )),
            crate::scatter::ScatterRequest::Extended {
                param_types,
                param_formats,
                params,
                result_formats,
                client_sent_parse,
                client_describe,
                ..
            } => {
                if client_describe == Some(b'S') {
                    return Err(crate::routing::feature_error(
                        "a multi-row INSERT over several shards cannot describe its statement in the batch that runs it".into(),
                        "describe it in a batch of its own (Parse, Describe, Sync), or insert each shard's rows in a statement of its own",
                    ));
                }
                let requests = split
                    .parts
                    .iter()
                    .map(|part| {
                        let mut m = BytesMut::new();
                        let types: Vec<u32> = part
                            .params
                            .iter()
                            .map(|i| param_types.get(*i).copied().unwrap_or(0))
                            .collect();
                        frontend::write_parse(&mut m, "", part.sql.as_bytes(), &types);
                        let formats: Vec<i16> = if param_formats.len() <= 1 {
                            param_formats.clone()
                        } else {
                            part.params
                                .iter()
                                .map(|i| param_formats.get(*i).copied().unwrap_or(0))
                                .collect()
                        };
                        let values: Vec<Option<bytes::Bytes>> = part
                            .params
                            .iter()
                            .map(|i| params.get(*i).cloned().flatten())
                            .collect();
                        crate::scatter::write_bind(&mut m, &formats, &values, &result_formats);
                        if client_describe == Some(b'P') {
                            frontend::write_describe(&mut m, b'P', "");
                        }
                        crate::scatter::write_execute(&mut m);
                        frontend::write_sync(&mut m);
                        PartRequest::Extended(m)
                    })
                    .collect();
                Ok((
                    requests,
                    Answering {
                        forward_parse: client_sent_parse,
                    },
                ))
            }
        }
    }

    /// Runs a split INSERT outside a transaction (or as the first statement of one whose BEGIN
    /// the proxy deferred: the transaction then opens on its shards, and the connection to
    /// attach to next is returned). Answers the client completely.
    pub(crate) async fn run_split(
        &mut self,
        batch: Vec<Frame>,
        split: InsertSplit,
    ) -> Result<Option<PooledConn>, SessionError> {
        let (requests, answering) = match self.part_requests(&batch, &split) {
            Ok(r) => r,
            Err(e) => {
                self.fail_batch(&batch, e.code, &e.message, e.hint.as_deref());
                self.io.flush().await?;
                return Ok(None);
            }
        };
        let shards: Vec<ShardIndex> = split.parts.iter().map(|p| p.shard).collect();
        let primary = BatchRole {
            read: false,
            may_write: true,
        };
        if self.txn.has_deferred_begin() && self.spans_shards() {
            let Some(mut server) = self
                .open_deferred_transaction(&batch, shards[0], primary)
                .await?
            else {
                return Ok(None);
            };
            self.split_in_transaction(&mut server, &batch, split)
                .await?;
            self.io.flush().await?;
            return Ok(Some(server));
        }
        let Some((mut conns, running)) = self.checkout_each(&batch, &shards, primary).await? else {
            return Ok(None);
        };
        self.read_your_writes.set_may_have_written(false);
        let lost = {
            let mut members = self.shard_members(
                shards
                    .iter()
                    .copied()
                    .zip(conns.iter_mut().map(|c| &mut **c)),
            );
            let shared = std::sync::Arc::clone(&self.shared);
            run(
                &shared,
                &mut members,
                &split.parts,
                &requests,
                answering,
                &mut self.io.out,
                false,
            )
            .await
        };
        self.attachment.clear_cancel_target().await;
        if let Some((shard, error)) = lost {
            self.io.push_error(
                sqlstate::CONNECTION_FAILURE,
                &format!("lost the connection to shard {shard}: {error}"),
                Some("the statement did not complete; retry it"),
            );
        }
        self.remember_write_positions(&shards, &mut conns).await;
        drop(conns);
        drop(running);
        self.io.push_ready(TransactionStatus::Idle);
        self.io.flush().await?;
        Ok(None)
    }

    /// A split INSERT inside the client's transaction: each part on its shard's participant.
    pub(crate) async fn split_in_transaction(
        &mut self,
        server: &mut PooledConn,
        batch: &[Frame],
        split: InsertSplit,
    ) -> Result<(), SessionError> {
        let (requests, answering) = match self.part_requests(batch, &split) {
            Ok(r) => r,
            Err(e) => {
                self.fail_in_transaction(batch, &e);
                return Ok(());
            }
        };
        let shards: Vec<ShardIndex> = split.parts.iter().map(|p| p.shard).collect();
        let mut taken = match self.participants_for(&shards, server).await {
            Ok(taken) => taken,
            Err(e) => {
                self.fail_in_transaction(batch, &e);
                return Ok(());
            }
        };
        let here = self.attachment.shard();
        let lost = {
            let mut members = self.shard_members(crate::multi_txn::in_shard_order(
                &shards, here, server, &mut taken,
            ));
            let shared = std::sync::Arc::clone(&self.shared);
            run(
                &shared,
                &mut members,
                &split.parts,
                &requests,
                answering,
                &mut self.io.out,
                true,
            )
            .await
        };
        let mut failed =
            shards.contains(&here) && server.status() != TransactionStatus::InTransaction;
        for p in taken {
            failed |= p.conn.status() != TransactionStatus::InTransaction;
            self.txn.shards_mut().put(p);
        }
        if let Some((shard, error)) = lost {
            self.io.push_error(
                sqlstate::CONNECTION_FAILURE,
                &format!("lost the connection to shard {shard}: {error}"),
                Some("the transaction failed; roll it back and retry it"),
            );
            failed = true;
        }
        self.end_many_in_transaction(failed)
    }
}
