//! A multi-row INSERT whose rows belong to several shards (simple protocol), split by the
//! router (`Router::split_query`): each shard runs the INSERT of its own rows, in their order.
//! Outside a transaction the shards each run their part in a transaction of their own and
//! commit together through the commit protocol (`multi_txn`), or not at all; inside one, the
//! parts run on the transaction's participants. The client gets one answer: `INSERT 0 N` with
//! the rows of every shard, and RETURNING rows in the order of its VALUES list.

use bytes::BytesMut;
use shardgate_router::InsertPart;
use shardgate_wire::{backend, Frame};

use crate::multi_txn::commit_all;
use crate::multi_txn::fanout::{rollback_all, run_each, run_everywhere, Member, Outcome, TxnError};
use crate::Shared;

/// A shard whose connection was lost, and why.
pub(crate) type Lost = (String, String);

/// Runs `parts[i]` on `members[i]` and writes the answer (without ReadyForQuery) to `out`.
pub(crate) async fn run(
    shared: &Shared,
    members: &mut [Member<'_>],
    parts: &[InsertPart],
    out: &mut BytesMut,
    in_transaction: bool,
) -> Option<Lost> {
    let all: Vec<usize> = (0..members.len()).collect();
    let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    let by_name = |name: &str| {
        names
            .iter()
            .position(|n| n == name)
            .and_then(|i| parts.get(i))
            .map(|p| p.sql.clone())
            .unwrap_or_default()
    };
    if !in_transaction {
        if let Err(TxnError(e)) = run_everywhere(members, "BEGIN").await {
            rollback_all(members).await;
            out.extend_from_slice(&e);
            return None;
        }
    }
    let outcomes = run_each(members, &all, by_name).await;
    let failed = !outcomes.iter().all(Outcome::ok);
    if failed || in_transaction {
        if failed && !in_transaction {
            let lost = answer(members, &outcomes, parts, out);
            rollback_all(members).await;
            return lost;
        }
        return answer(members, &outcomes, parts, out);
    }
    let mode = shared.config().sharding.cross_shard_transactions;
    match commit_all(shared, members, mode).await {
        Ok(()) => answer(members, &outcomes, parts, out),
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
    out: &mut BytesMut,
) -> Option<Lost> {
    let mut replies: Vec<&[Frame]> = Vec::with_capacity(outcomes.len());
    for (m, o) in members.iter().zip(outcomes) {
        match o {
            Outcome::Done(frames) => replies.push(frames),
            Outcome::Refused(error) => {
                if backend::write_error_with_prefix(out, error, &format!("shard {}: ", m.name))
                    .is_err()
                {
                    out.extend_from_slice(error.as_bytes());
                }
                return None;
            }
            Outcome::Lost(e) => return Some((m.name.clone(), e.to_string())),
        }
    }
    combine(&replies, parts, out);
    None
}

/// One RowDescription (the first shard's), the RETURNING rows in the client's row order, and
/// `INSERT 0 N` with every shard's rows.
fn combine(replies: &[&[Frame]], parts: &[InsertPart], out: &mut BytesMut) {
    let total_rows: usize = parts.iter().map(|p| p.rows.len()).sum();
    let mut ordered: Vec<Option<&Frame>> = vec![None; total_rows];
    let mut inserted: u64 = 0;
    let mut in_order = true;
    for (frames, part) in replies.iter().zip(parts) {
        let rows: Vec<&Frame> = frames
            .iter()
            .filter(|f| f.tag() == backend::DATA_ROW)
            .collect();
        if !rows.is_empty() && rows.len() != part.rows.len() {
            in_order = false;
        }
        for (row, at) in rows.iter().zip(&part.rows) {
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
    if let Some(first) = replies.first() {
        for f in first
            .iter()
            .filter(|f| f.tag() == backend::ROW_DESCRIPTION || f.tag() == backend::NOTICE_RESPONSE)
        {
            out.extend_from_slice(f.as_bytes());
        }
    }
    if in_order {
        for row in ordered.into_iter().flatten() {
            out.extend_from_slice(row.as_bytes());
        }
    } else {
        // Cannot happen: a statement with both ON CONFLICT and RETURNING is not split (see
        // `refusal`). Every row, shard by shard, rather than none.
        for frames in replies {
            for f in frames.iter().filter(|f| f.tag() == backend::DATA_ROW) {
                out.extend_from_slice(f.as_bytes());
            }
        }
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

use shardgate_pool::{PooledConn, ServerConn};
use shardgate_router::{InsertSplit, RouteError, ShardIndex};
use shardgate_wire::backend::TransactionStatus;
use shardgate_wire::{frontend, sqlstate};

use crate::replicas::BatchRole;
use crate::session::Session;
use crate::SessionError;

impl Session {
    /// The split of a simple-protocol multi-row INSERT whose rows belong to several shards;
    /// `None` for anything else.
    pub(crate) fn split_of(&self, frame: &Frame) -> Result<Option<InsertSplit>, RouteError> {
        if frame.tag() != frontend::QUERY {
            return Ok(None);
        }
        let Ok(text) = frontend::query_text(frame) else {
            return Ok(None);
        };
        let sql = self.sql(text);
        let topo = self.shared.topo();
        let query = topo.router.plan_query(&sql);
        if !query.plan.splittable_insert() {
            return Ok(None);
        }
        let split = topo.router.split_query(&query, self.routing.hint())?;
        if split.is_some() {
            if let Some(e) = refusal(&sql) {
                return Err(e);
            }
        }
        Ok(split)
    }

    /// Runs a split INSERT outside a transaction (or as the first statement of one whose BEGIN
    /// the proxy deferred: the transaction then opens on its shards, and the connection to
    /// attach to next is returned). Answers the client completely.
    pub(crate) async fn run_split(
        &mut self,
        batch: Vec<Frame>,
        split: InsertSplit,
    ) -> Result<Option<PooledConn>, SessionError> {
        let shards: Vec<ShardIndex> = split.parts.iter().map(|p| p.shard).collect();
        let primary = BatchRole {
            read: false,
            may_write: true,
        };
        if self.txn.has_deferred_begin() && self.spans_shards() {
            let version = self.shared.topology_version();
            self.shard = shards[0];
            let (mut server, guard) = match self.checkout_for(primary).await {
                Ok(v) => v,
                Err(f) => {
                    self.fail_batch(&batch, &f.code, &f.message, f.hint.as_deref());
                    self.io.flush().await?;
                    return Ok(None);
                }
            };
            let begin = self
                .txn
                .take_deferred_begin()
                .unwrap_or_else(|| "BEGIN".into());
            if let Err(e) = crate::multi_txn::fanout::run_internal(&mut server, &begin).await {
                self.fail_batch(&batch, e.sqlstate(), &e.to_string(), None);
                self.io.flush().await?;
                return Ok(None);
            }
            let active = crate::control::CountGuard::new(&self.shared.activity.active);
            self.attach_guard(guard, active);
            self.attached_version = version;
            self.split_in_transaction(&mut server, &batch, split)
                .await?;
            self.io.flush().await?;
            return Ok(Some(server));
        }
        let mut conns: Vec<PooledConn> = Vec::with_capacity(shards.len());
        let mut running = Vec::with_capacity(shards.len());
        for shard in &shards {
            self.shard = *shard;
            match self.checkout_for(primary).await {
                Ok((conn, guard)) => {
                    conns.push(conn);
                    running.push(guard);
                }
                Err(f) => {
                    *self.cancel.lock().await = None;
                    self.fail_batch(&batch, &f.code, &f.message, f.hint.as_deref());
                    self.io.flush().await?;
                    return Ok(None);
                }
            }
        }
        self.read_your_writes.set_may_have_written(false);
        let lost = {
            let mut members: Vec<Member<'_>> = conns
                .iter_mut()
                .zip(&shards)
                .map(|(c, s)| Member {
                    name: self.shard_name(*s),
                    conn: c,
                })
                .collect();
            let shared = std::sync::Arc::clone(&self.shared);
            run(&shared, &mut members, &split.parts, &mut self.io.out, false).await
        };
        *self.cancel.lock().await = None;
        if let Some((shard, error)) = lost {
            self.io.push_error(
                sqlstate::CONNECTION_FAILURE,
                &format!("lost the connection to shard {shard}: {error}"),
                Some("the statement did not complete; retry it"),
            );
        }
        for (shard, conn) in shards.iter().zip(conns.iter_mut()) {
            self.remember_write_position_on(*shard, conn).await;
        }
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
        let shards: Vec<ShardIndex> = split.parts.iter().map(|p| p.shard).collect();
        let mut taken = match self.participants_for(&shards, server).await {
            Ok(taken) => taken,
            Err(e) => {
                self.fail_in_transaction(batch, &e);
                return Ok(());
            }
        };
        let here = self.shard;
        let lost = {
            let mut by_shard: Vec<(ShardIndex, &mut ServerConn)> = Vec::new();
            if shards.contains(&here) {
                by_shard.push((here, &mut **server));
            }
            for p in taken.iter_mut() {
                by_shard.push((p.shard, &mut *p.conn));
            }
            by_shard.sort_by_key(|(s, _)| shards.iter().position(|x| x == s));
            let mut members: Vec<Member<'_>> = by_shard
                .into_iter()
                .map(|(s, conn)| Member {
                    name: self.shard_name(s),
                    conn,
                })
                .collect();
            let shared = std::sync::Arc::clone(&self.shared);
            run(&shared, &mut members, &split.parts, &mut self.io.out, true).await
        };
        let mut failed =
            shards.contains(&here) && server.status() != TransactionStatus::InTransaction;
        for p in taken {
            failed |= p.conn.status() != TransactionStatus::InTransaction;
            self.txn_shards.put(p);
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
