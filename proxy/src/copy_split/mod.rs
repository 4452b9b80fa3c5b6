//! `COPY <sharded table> FROM STDIN`, split by shard key. The client's COPY is opened on every
//! shard; its data is cut into rows as it streams in (`shardgate_router::CopyRows`: text, CSV
//! and binary), each row goes to the shard of its key through a bounded per-shard buffer, and
//! the header (or binary file header and trailer) goes to every shard. The client gets one
//! CopyInResponse and one `COPY N`.
//!
//! Outside a transaction each shard copies inside a transaction of its own and they commit
//! together through the multi-shard commit (two-phase when several shards got rows), so no
//! shard keeps a partial load; inside the client's transaction the COPY runs on its
//! participants. A row whose key is not a valid value fails the COPY with its line number.

mod out;
mod streams;

use std::sync::Arc;

use bytes::BytesMut;
use shardgate_pool::PooledConn;
use shardgate_router::{CopyDataError, CopyInSpec, CopyItem, KeyField, RouteError, ShardIndex};
use shardgate_wire::backend::TransactionStatus;
use shardgate_wire::{backend, frontend, sqlstate, Frame};

use crate::multi_txn::commit_all;
use crate::multi_txn::fanout::{rollback_all, run_everywhere, run_one, Member, Outcome, TxnError};
use crate::replicas::BatchRole;
use crate::session::Session;
use crate::SessionError;
use streams::{copied_rows, Started, Streams};

/// A COPY FROM STDIN the proxy splits: what its data looks like and the text each shard runs.
pub(crate) struct CopySplit {
    spec: Arc<CopyInSpec>,
    sql: String,
}

/// How the COPY ended, for the caller's bookkeeping (the client has its answer).
enum CopyEnd {
    /// Every shard copied (and, outside a transaction, committed).
    Copied,
    /// It failed; outside a transaction every shard was rolled back, inside one the
    /// transaction is failed.
    Failed,
    /// The client went away during the COPY (shards were ended and rolled back).
    ClientGone,
}

/// Where the client's protocol is once the proxy's answer is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before CopyInResponse: an error ends the batch as any error does.
    Starting,
    /// In COPY mode: the batch's own Sync was consumed by COPY mode.
    Copying,
}

impl Session {
    /// The split of a `COPY <sharded table> FROM STDIN` (a Query, or a Bind of its statement);
    /// `None` for anything else.
    pub(crate) fn copy_of(&self, frame: &Frame) -> Option<CopySplit> {
        let sql = match frame.tag() {
            frontend::QUERY => self.sql(frontend::query_text(frame).ok()?).into_owned(),
            frontend::BIND => self.frame_text(frame)?,
            _ => return None,
        };
        let spec = self.shared.topo().router.plan(&sql).copy_in.clone()?;
        if self.shared.topo().router.shard_names().len() < 2 {
            return None;
        }
        if !self.client_state.encoding().is_utf8() && !sql.is_ascii() {
            // Shards are sent the text as UTF-8 (the caller answers with the plan's refusal).
            return None;
        }
        Some(CopySplit { spec, sql })
    }

    /// Runs a split COPY outside a transaction (or as the first statement of one whose BEGIN
    /// the proxy deferred: the transaction then opens on every shard, and the connection to
    /// attach to next is returned). Answers the client completely.
    pub(crate) async fn run_copy(
        &mut self,
        batch: Vec<Frame>,
        copy: CopySplit,
    ) -> Result<Option<PooledConn>, SessionError> {
        if let Some(e) = refusal(&batch) {
            self.fail_batch(&batch, e.code, &e.message, e.hint.as_deref());
            self.io.flush().await?;
            return Ok(None);
        }
        let shards: Vec<ShardIndex> = (0..self.shared.topo().router.shard_names().len()).collect();
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
            self.copy_in_transaction(&mut server, &batch, copy).await?;
            self.io.flush().await?;
            return Ok(Some(server));
        }
        let Some((mut conns, running)) = self.checkout_each(&batch, &shards, primary).await? else {
            return Ok(None);
        };
        self.read_your_writes.set_may_have_written(false);
        let end = {
            let mut members = self.shard_members(
                shards
                    .iter()
                    .copied()
                    .zip(conns.iter_mut().map(|c| &mut **c)),
            );
            self.copy_through(&mut members, &shards, &batch, &copy, false)
                .await?
        };
        self.attachment.clear_cancel_target().await;
        self.remember_write_positions(&shards, &mut conns).await;
        drop(conns);
        drop(running);
        self.io.flush().await?;
        match end {
            CopyEnd::ClientGone => Err(SessionError::ClientGone),
            CopyEnd::Copied | CopyEnd::Failed => Ok(None),
        }
    }

    /// A split COPY inside the client's transaction: every shard takes part (joining first).
    pub(crate) async fn copy_in_transaction(
        &mut self,
        server: &mut PooledConn,
        batch: &[Frame],
        copy: CopySplit,
    ) -> Result<(), SessionError> {
        if let Some(e) = refusal(batch) {
            self.fail_in_transaction(batch, &e);
            return Ok(());
        }
        let shards: Vec<ShardIndex> = (0..self.shared.topo().router.shard_names().len()).collect();
        let mut taken = match self.participants_for(&shards, server).await {
            Ok(taken) => taken,
            Err(e) => {
                self.fail_in_transaction(batch, &e);
                return Ok(());
            }
        };
        let here = self.attachment.shard();
        let end = {
            let mut members = self.shard_members(crate::multi_txn::in_shard_order(
                &shards, here, server, &mut taken,
            ));
            self.copy_through(&mut members, &shards, batch, &copy, true)
                .await
        };
        for p in taken {
            self.txn.shards_mut().put(p);
        }
        match end? {
            CopyEnd::Copied => Ok(()),
            CopyEnd::Failed => Ok(()),
            CopyEnd::ClientGone => Err(SessionError::ClientGone),
        }
    }

    /// The COPY on `members` (one per shard of `shards`, in that order), answered to the client
    /// up to and including its ReadyForQuery.
    async fn copy_through(
        &mut self,
        members: &mut [Member<'_>],
        shards: &[ShardIndex],
        batch: &[Frame],
        copy: &CopySplit,
        in_transaction: bool,
    ) -> Result<CopyEnd, SessionError> {
        let extended = batch.iter().any(|f| f.tag() == frontend::BIND);
        let version = self.shared.topology_version();
        if !in_transaction {
            if let Err(TxnError(e)) = run_everywhere(members, "BEGIN").await {
                rollback_all(members).await;
                return self
                    .fail_copy(batch, Phase::Starting, extended, e, false)
                    .await;
            }
        }
        let key_index = match key_index(&mut members[0], &copy.spec).await {
            Ok(i) => i,
            Err(e) => {
                return self
                    .abandon(members, batch, Phase::Starting, extended, e, in_transaction)
                    .await
            }
        };
        let max_row = self.shared.config().listen.max_message_size;
        let mut reader = copy.spec.reader(key_index, max_row);
        let mut streams = Streams::new(members);
        let response = match streams.start(&copy.sql).await {
            Started::All(response) => response,
            Started::Failed(i, outcome) => {
                let e = shard_error(streams.name(i), &outcome);
                return self
                    .abandon(members, batch, Phase::Starting, extended, e, in_transaction)
                    .await;
            }
        };
        write_prelude(batch, &mut self.io.out);
        self.io.out.extend_from_slice(response.as_bytes());
        self.io.flush().await?;
        let topo = Arc::clone(&self.shared.topo());
        let mut position = vec![0usize; topo.router.shard_names().len()];
        for (i, s) in shards.iter().enumerate() {
            if let Some(p) = position.get_mut(*s) {
                *p = i;
            }
        }
        let mut failure: Option<BytesMut> = None;
        let mut client_gone = false;
        loop {
            let Some(frame) = self.read_copy_frame().await? else {
                client_gone = true;
                break;
            };
            let items = match frame.tag() {
                frontend::COPY_DATA => {
                    reader.feed(frame.body());
                    None
                }
                frontend::COPY_DONE => Some(reader.finish()),
                frontend::COPY_FAIL => {
                    let why = String::from_utf8_lossy(frame.body());
                    failure = Some(error_bytes(
                        sqlstate::QUERY_CANCELED,
                        &format!("COPY from stdin failed: {}", why.trim_end_matches('\0')),
                    ));
                    break;
                }
                frontend::FLUSH | frontend::SYNC => continue,
                other => {
                    failure = Some(error_bytes(
                        sqlstate::PROTOCOL_VIOLATION,
                        &format!("unexpected message type 0x{other:02X} during COPY from stdin"),
                    ));
                    break;
                }
            };
            let done = items.is_some();
            let routed = route_rows(
                &mut reader,
                &mut streams,
                &topo.router,
                copy,
                &position,
                self.client_state.encoding(),
                items,
            );
            if let Err(e) = routed {
                failure = Some(error_bytes(e.code, &e.message));
                break;
            }
            if let Err((i, e)) = streams.flush(false).await {
                failure = Some(error_bytes(
                    sqlstate::CONNECTION_FAILURE,
                    &format!(
                        "shard {}: lost the connection during COPY: {e}",
                        streams.name(i)
                    ),
                ));
                break;
            }
            if done {
                break;
            }
        }
        let why = if client_gone {
            Some("the client disconnected")
        } else if failure.is_some() {
            Some("the COPY failed")
        } else {
            None
        };
        let outcomes = streams.end(why).await;
        if client_gone {
            if !in_transaction {
                rollback_all(members).await;
            }
            return Ok(CopyEnd::ClientGone);
        }
        if let Some(e) = failure {
            return self
                .abandon(members, batch, Phase::Copying, extended, e, in_transaction)
                .await;
        }
        let mut copied = 0u64;
        for (m, o) in members.iter().zip(&outcomes) {
            match o {
                Outcome::Done(frames) => copied += copied_rows(frames),
                other => {
                    let e = shard_error(&m.name, other);
                    return self
                        .abandon(members, batch, Phase::Copying, extended, e, in_transaction)
                        .await;
                }
            }
        }
        if self.shared.topology_version() != version {
            let e = error_bytes(
                sqlstate::SERIALIZATION_FAILURE,
                "the shard map changed during the COPY (a rebalance moved keys between shards); nothing was copied",
            );
            return self
                .abandon(members, batch, Phase::Copying, extended, e, in_transaction)
                .await;
        }
        if !in_transaction {
            let mode = self.shared.config().sharding.cross_shard_transactions;
            if let Err(TxnError(e)) = commit_all(&self.shared, members, mode).await {
                return self
                    .abandon(members, batch, Phase::Copying, extended, e, in_transaction)
                    .await;
            }
        }
        backend::write_command_complete(&mut self.io.out, &format!("COPY {copied}"));
        self.after_copy(extended, false, in_transaction).await?;
        Ok(CopyEnd::Copied)
    }

    /// The client's next message during a COPY; `None` when it left, or sent nothing for
    /// `listen.client_idle_timeout` (when set).
    async fn read_copy_frame(&mut self) -> Result<Option<Frame>, SessionError> {
        let idle_timeout = self.shared.config().listen.client_idle_timeout;
        Ok(tokio::select! {
            f = self.io.read_frame() => f?,
            _ = crate::session::sleep_or_forever(idle_timeout) => None,
        })
    }

    /// An error before COPY mode: shards rolled back (outside a transaction) and the batch
    /// answered.
    async fn abandon(
        &mut self,
        members: &mut [Member<'_>],
        batch: &[Frame],
        phase: Phase,
        extended: bool,
        error: BytesMut,
        in_transaction: bool,
    ) -> Result<CopyEnd, SessionError> {
        if !in_transaction {
            rollback_all(members).await;
        }
        self.fail_copy(batch, phase, extended, error, in_transaction)
            .await
    }

    async fn fail_copy(
        &mut self,
        batch: &[Frame],
        phase: Phase,
        extended: bool,
        error: BytesMut,
        in_transaction: bool,
    ) -> Result<CopyEnd, SessionError> {
        self.io.out.extend_from_slice(&error);
        if in_transaction {
            self.txn.shards_mut().set_failed();
            self.txn.note_error();
        }
        if phase == Phase::Starting {
            self.txn.set_status(status_after(in_transaction, true));
            match batch.last().map(|f| f.tag()) {
                Some(frontend::QUERY | frontend::SYNC) => self.io.push_ready(self.txn.status()),
                _ => self.replies.skip_rest_of_batch(),
            }
            return Ok(CopyEnd::Failed);
        }
        self.after_copy(extended, true, in_transaction).await?;
        Ok(CopyEnd::Failed)
    }

    /// The end of COPY mode: ReadyForQuery now (simple protocol), or at the client's next Sync
    /// (extended: the batch's own Sync came during COPY mode, which ignores it). After an
    /// error everything up to that Sync is dropped; after success, statements the client
    /// pipelined before it are kept for the session to run (and answer that Sync).
    async fn after_copy(
        &mut self,
        extended: bool,
        failed: bool,
        in_transaction: bool,
    ) -> Result<(), SessionError> {
        self.txn.set_status(status_after(in_transaction, failed));
        if !extended {
            self.io.push_ready(self.txn.status());
            return Ok(());
        }
        self.io.flush().await?;
        loop {
            let Some(frame) = self.read_copy_frame().await? else {
                return Err(SessionError::ClientGone);
            };
            match frame.tag() {
                frontend::SYNC => {
                    self.io.push_ready(self.txn.status());
                    return Ok(());
                }
                frontend::FLUSH => self.io.flush().await?,
                frontend::COPY_DATA | frontend::COPY_DONE | frontend::COPY_FAIL => {}
                frontend::TERMINATE => return Err(SessionError::ClientGone),
                _ if failed => {}
                _ => {
                    self.parked.push(frame);
                    return Ok(());
                }
            }
        }
    }
}

fn status_after(in_transaction: bool, failed: bool) -> TransactionStatus {
    match (in_transaction, failed) {
        (false, _) => TransactionStatus::Idle,
        (true, false) => TransactionStatus::InTransaction,
        (true, true) => TransactionStatus::Failed,
    }
}

/// A batch the split cannot answer in order: more statements pipelined behind the COPY.
fn refusal(batch: &[Frame]) -> Option<RouteError> {
    let statements = batch
        .iter()
        .filter(|f| matches!(f.tag(), frontend::BIND | frontend::QUERY))
        .count();
    (statements > 1).then(|| {
        crate::routing::feature_error(
            "a COPY into a sharded table cannot share its batch with other statements".into(),
            "send the COPY in a batch of its own (end the previous statements with Sync)",
        )
    })
}

/// Routes every complete row the reader holds (and, at the end of the data, the last one).
fn route_rows(
    reader: &mut shardgate_router::CopyRows,
    streams: &mut Streams<'_, '_>,
    router: &shardgate_router::Router,
    copy: &CopySplit,
    position: &[usize],
    encoding: crate::encoding::ClientEncoding,
    last: Option<Result<Option<CopyItem>, CopyDataError>>,
) -> Result<(), CopyDataError> {
    let mut route = |item: CopyItem| -> Result<(), CopyDataError> {
        match item {
            CopyItem::Everyone(bytes) | CopyItem::End(bytes) => streams.push_all(&bytes),
            CopyItem::Row { bytes, key, line } => {
                let key = match key {
                    KeyField::Text(t) if !encoding.is_utf8() => {
                        KeyField::Text(encoding.decode(&t).into_owned().into_bytes())
                    }
                    k => k,
                };
                let shard = router.copy_row_shard(&copy.spec, &key, line)?;
                streams.push(position.get(shard).copied().unwrap_or(0), &bytes);
            }
        }
        Ok(())
    };
    while let Some(item) = reader.next_item()? {
        route(item)?;
    }
    if let Some(last) = last {
        if let Some(item) = last? {
            route(item)?;
        }
    }
    Ok(())
}

/// Where the key is among the COPY's fields: from the column list, else from the table's
/// columns in order (generated columns are not copied), read on the first shard.
async fn key_index(m: &mut Member<'_>, spec: &CopyInSpec) -> Result<usize, BytesMut> {
    let columns = if spec.columns.is_empty() {
        let sql = format!(
            "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = {}::regclass \
             AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            quote_literal(&spec.table)
        );
        match run_one(m.conn, &sql).await {
            Outcome::Done(frames) => frames
                .iter()
                .filter(|f| f.tag() == backend::DATA_ROW)
                .filter_map(|f| shardgate_wire::row::data_row_values(f).ok())
                .filter_map(|v| v.into_iter().next().flatten())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .collect(),
            other => return Err(shard_error(&m.name, &other)),
        }
    } else {
        Vec::new()
    };
    spec.key_index(&columns).ok_or_else(|| {
        error_bytes(
            sqlstate::FEATURE_NOT_SUPPORTED,
            &format!(
                "COPY into sharded table {} cannot be split: its shard key column {} is not among the copied columns",
                spec.table, spec.key_column
            ),
        )
    })
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn error_bytes(code: &str, message: &str) -> BytesMut {
    TxnError::new(code, message, None).0
}

/// A shard's failure as the client's error, named by the shard.
fn shard_error(name: &str, outcome: &Outcome) -> BytesMut {
    match outcome {
        Outcome::Refused(frame) => TxnError::from_shard(name, frame, "").0,
        Outcome::Lost(e) => error_bytes(
            sqlstate::CONNECTION_FAILURE,
            &format!("shard {name}: lost the connection during COPY: {e}"),
        ),
        Outcome::Done(_) => error_bytes(sqlstate::INTERNAL_ERROR, "COPY failed"),
    }
}

/// The answers to the client's extended-protocol messages before its Execute: ParseComplete,
/// BindComplete, and for Describe a COPY's (no parameters, no row description).
fn write_prelude(batch: &[Frame], out: &mut BytesMut) {
    for f in batch {
        match f.tag() {
            frontend::PARSE => backend::write_parse_complete(out),
            frontend::BIND => backend::write_bind_complete(out),
            frontend::DESCRIBE => {
                if f.body().first() == Some(&b'S') {
                    write_no_parameters(out);
                }
                backend::write_no_data(out);
            }
            frontend::EXECUTE => break,
            _ => {}
        }
    }
}

impl Session {
    /// A `COPY … TO STDOUT` on several shards (`execute_many`'s servers): every shard's rows
    /// streamed to the client as one COPY, answered up to (not including) ReadyForQuery.
    /// Returns the shard whose connection broke, if one did.
    pub(crate) async fn copy_out_many(
        &mut self,
        servers: &mut [&mut shardgate_pool::ServerConn],
        names: &[String],
        request: &crate::scatter::ScatterRequest,
        spec: shardgate_router::CopyOutSpec,
    ) -> Result<Option<(String, String)>, SessionError> {
        let sql = match request {
            crate::scatter::ScatterRequest::Simple { sql } => sql.clone(),
            crate::scatter::ScatterRequest::Extended {
                sql,
                client_sent_parse,
                client_describe,
                ..
            } => {
                if *client_sent_parse {
                    backend::write_parse_complete(&mut self.io.out);
                }
                backend::write_bind_complete(&mut self.io.out);
                if *client_describe == Some(b'S') {
                    write_no_parameters(&mut self.io.out);
                }
                if client_describe.is_some() {
                    backend::write_no_data(&mut self.io.out);
                }
                sql.clone()
            }
        };
        let result = out::stream(servers, names, &sql, spec, &mut self.io).await;
        match result {
            Ok(Ok(copied)) => {
                frontend::write_message(&mut self.io.out, backend::COPY_DONE, |_| {});
                backend::write_command_complete(&mut self.io.out, &format!("COPY {copied}"));
                Ok(None)
            }
            Ok(Err(out::OutFailure::Refused(name, frame))) => {
                let e = TxnError::from_shard(&name, &frame, "");
                self.io.out.extend_from_slice(&e.0);
                Ok(None)
            }
            Ok(Err(out::OutFailure::Lost(name, e))) => Ok(Some((name, e.to_string()))),
            Err(e) => {
                self.attachment.clear_cancel_target().await;
                for s in servers.iter_mut() {
                    s.mark_broken();
                }
                Err(e)
            }
        }
    }
}

/// ParameterDescription with no parameters (a COPY's statement description).
fn write_no_parameters(out: &mut BytesMut) {
    frontend::write_message(out, backend::PARAMETER_DESCRIPTION, |b| {
        b.extend_from_slice(&0i16.to_be_bytes())
    });
}
