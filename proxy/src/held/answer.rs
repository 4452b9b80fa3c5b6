//! The session's side of held results: deciding that a cross-shard read is to be held (an
//! Execute with a row limit, a DECLARE), answering its first request from the captured result,
//! and answering later Executes, Describes, Closes, FETCHes and MOVEs from what is held.

use bytes::{BufMut, BytesMut};
use shardgate_router::cursor::{self, CursorCommand, FetchCount};
use shardgate_router::{Plan, RouteError};
use shardgate_wire::backend::{self, TransactionStatus};
use shardgate_wire::{frontend, sqlstate, Frame};

use super::{Captured, HeldResult};
use crate::routing::feature_error;
use crate::scatter::{Resumed, ScatterFailure, ScatterLimits, ScatterRequest};
use crate::session::Session;
use crate::SessionError;
use shardgate_pool::{PooledConn, ServerConn};

/// A cross-shard read whose result the proxy holds rather than sends whole.
pub(crate) struct Holding {
    /// The portal's or cursor's name.
    name: String,
    kind: HoldKind,
    /// Its rows stay on the shards, read on at each Execute (a merged read); else the whole
    /// result is captured.
    streamed: Option<crate::scatter::Batches>,
    /// What the read's replies before the rows (BindComplete…) are not for the client: a
    /// DECLARE sent as a simple query, run on the shards with the extended protocol.
    drop_prelude: bool,
}

impl Holding {
    /// The shards' portal and batch size for a streamed read.
    pub(crate) fn streamed(&self) -> Option<crate::scatter::Batches> {
        self.streamed.clone()
    }
}

enum HoldKind {
    /// An Execute with a row limit: the first rows now, the rest at later Executes.
    Portal {
        /// The first Execute's row limit; `None`: the batch only bound the portal (it is
        /// executed by a later batch).
        limit: Option<u64>,
        /// The client described the portal or statement: it gets the RowDescription.
        described: bool,
    },
    /// `DECLARE … CURSOR FOR` the read: no rows now, FETCH reads them.
    Cursor { described: bool },
}

/// PostgreSQL's answer to anything after an error in a transaction block.
fn aborted() -> RouteError {
    RouteError {
        code: sqlstate::IN_FAILED_SQL_TRANSACTION,
        message: "current transaction is aborted, commands ignored until end of transaction block"
            .into(),
        hint: None,
    }
}

fn already_exists(name: &str, cursor: bool) -> RouteError {
    RouteError {
        code: sqlstate::DUPLICATE_CURSOR,
        message: if cursor {
            format!("cursor \"{name}\" already exists")
        } else {
            format!("portal \"{name}\" already exists")
        },
        hint: None,
    }
}

impl Session {
    /// Whether this cross-shard read in a transaction is held (and how), with `request`
    /// changed for it: the portal described to the proxy, a DECLARE's query in place of its
    /// text, and either the Execute's row limit lifted (the whole result captured) or, for a
    /// merged read streamed from the shards, the first rows only (one for a DECLARE or a
    /// Bind without Execute: they are kept for the first FETCH).
    pub(crate) fn holding_for(
        &mut self,
        batch: &[Frame],
        plan: &Plan,
        request: &mut ScatterRequest,
    ) -> Result<Option<Holding>, RouteError> {
        let holding = if plan.cursor.is_some() {
            // The client's own text: the plan's may be the normalized one.
            let declare = batch
                .iter()
                .find_map(|f| self.frame_text(f).or_else(|| self.parse_text(f)))
                .and_then(|t| cursor::declare(&t))
                .ok_or_else(|| {
                    feature_error(
                        "this DECLARE across shards could not be read again".into(),
                        "send DECLARE … CURSOR FOR … as one statement",
                    )
                })?;
            if declare.hold {
                return Err(feature_error(
                    "a WITH HOLD cursor over several shards is not supported".into(),
                    "declare it WITHOUT HOLD inside a transaction, or restrict its query to one shard with its shard key",
                ));
            }
            if declare.binary {
                return Err(feature_error(
                    "a BINARY cursor over several shards is not supported".into(),
                    "declare it without BINARY, or restrict its query to one shard with its shard key",
                ));
            }
            let described = match request {
                ScatterRequest::Simple { sql } => {
                    if plan
                        .merge
                        .as_ref()
                        .and_then(|m| m.shard_sql.as_ref())
                        .is_none()
                    {
                        *sql = self.sql_for_shards(declare.query.as_bytes())?;
                    }
                    false
                }
                ScatterRequest::Extended {
                    sql,
                    client_describe,
                    ..
                } => {
                    if plan
                        .merge
                        .as_ref()
                        .and_then(|m| m.shard_sql.as_ref())
                        .is_none()
                    {
                        *sql = self.sql_for_shards(declare.query.as_bytes())?;
                    }
                    client_describe.replace(b'P').is_some()
                }
            };
            Holding {
                name: declare.name,
                kind: HoldKind::Cursor { described },
                streamed: None,
                drop_prelude: false,
            }
        } else {
            let ScatterRequest::Extended {
                row_limit,
                client_describe,
                ..
            } = request
            else {
                return Ok(None);
            };
            let executes = batch.iter().any(|f| f.tag() == frontend::EXECUTE);
            if executes && *row_limit == 0 {
                return Ok(None);
            }
            let name = batch
                .iter()
                .filter(|f| f.tag() == frontend::BIND)
                .find_map(|f| frontend::bind(f).ok().map(|b| b.portal.to_owned()))
                .unwrap_or_default();
            let limit = executes.then(|| std::mem::take(row_limit));
            let described = client_describe.is_some();
            client_describe.get_or_insert(b'P');
            Holding {
                name,
                kind: HoldKind::Portal { limit, described },
                streamed: None,
                drop_prelude: false,
            }
        };
        let mut holding = holding;
        if streams_from_shards(plan) {
            let first = match holding.kind {
                HoldKind::Portal {
                    limit: Some(limit), ..
                } => limit,
                _ => 1,
            };
            if let ScatterRequest::Simple { sql } = request {
                // Named portals need the extended protocol; text rows, as the query's.
                holding.drop_prelude = true;
                *request = ScatterRequest::Extended {
                    sql: std::mem::take(sql),
                    param_types: Vec::new(),
                    param_formats: Vec::new(),
                    params: Vec::new(),
                    result_formats: Vec::new(),
                    client_sent_parse: false,
                    client_describe: Some(b'P'),
                    row_limit: first,
                };
            } else if let ScatterRequest::Extended { row_limit, .. } = request {
                *row_limit = first;
            }
            holding.streamed = Some(crate::scatter::Batches {
                portal: self.txn.shards_mut().held.next_portal_name(),
                rows: crate::scatter::batch_rows(Some(first)),
            });
        }
        let cursor = matches!(holding.kind, HoldKind::Cursor { .. });
        if !holding.name.is_empty() && self.txn.shards().held.contains(&holding.name) {
            return Err(already_exists(&holding.name, cursor));
        }
        if self.txn.shards().held.is_full() {
            return Err(RouteError {
                code: sqlstate::PROGRAM_LIMIT_EXCEEDED,
                message: format!(
                    "this transaction holds {} cross-shard results read in parts",
                    super::MAX_HELD
                ),
                hint: Some("close portals and cursors it no longer reads".into()),
            });
        }
        Ok(Some(holding))
    }

    /// Answers the request that started a held read from its captured result, and keeps the
    /// rows not sent yet (and the rest on the shards, `stream`). `true` when the client got
    /// an error (the transaction fails).
    pub(crate) fn answer_holding(
        &mut self,
        holding: Holding,
        captured: Captured,
        stream: Option<super::HeldStream>,
    ) -> bool {
        let (before, mut result) = match captured {
            Captured::TooLarge {
                max_rows,
                max_bytes,
            } => {
                self.io.push_error(
                    sqlstate::PROGRAM_LIMIT_EXCEEDED,
                    &format!(
                        "a cross-shard result read in parts is held by shardgate, and this one is larger than limits.max_gather_rows ({max_rows}) or limits.max_gather_bytes ({max_bytes})"
                    ),
                    Some("add the shard key to read it from one shard, read it whole outside a cursor, or raise the limits"),
                );
                return true;
            }
            Captured::AsIs(bytes) => {
                self.io.out.extend_from_slice(&bytes);
                return false;
            }
            Captured::Rows { before, result } => (before, result),
        };
        result.stream = stream;
        if !holding.drop_prelude {
            self.io.out.extend_from_slice(&before);
        }
        match holding.kind {
            HoldKind::Portal { limit, described } => {
                if described {
                    write_description(&mut self.io.out, result.description.as_ref());
                }
                if let Some(limit) = limit {
                    write_rows(&mut self.io.out, &mut result, Some(limit));
                }
            }
            HoldKind::Cursor { described } => {
                if described {
                    backend::write_no_data(&mut self.io.out);
                }
                backend::write_command_complete(&mut self.io.out, "DECLARE CURSOR");
            }
        }
        let depth = self.txn.shards().savepoint_depth();
        self.txn
            .shards_mut()
            .held
            .insert(holding.name, *result, depth);
        false
    }

    /// Whether the batch reads held results (see [`super::HeldResults::claims`]).
    pub(crate) fn claims_held(&mut self, batch: &[Frame]) -> bool {
        let encoding = self.client_state.encoding();
        self.txn
            .shards_mut()
            .held
            .claims(batch, |b| encoding.decode(b).into_owned())
    }

    /// Answers a batch that reads held results ([`super::HeldResults::claims`]), with its
    /// ReadyForQuery; `server` is the attached connection (a streamed read may need it). An
    /// error skips the rest up to Sync and, but for a refusal, fails the transaction as in
    /// PostgreSQL.
    pub(crate) async fn answer_held(
        &mut self,
        server: &mut PooledConn,
        batch: &[Frame],
    ) -> Result<(), SessionError> {
        let mut skipping = false;
        // A FETCH/MOVE/CLOSE parsed as the unnamed statement, run by the Execute that follows.
        let mut command: Option<CursorCommand> = None;
        for frame in batch {
            if frame.tag() == frontend::SYNC {
                skipping = false;
                self.io.push_ready(self.txn.status());
                continue;
            }
            if skipping || frame.tag() == frontend::FLUSH {
                continue;
            }
            let failed = match self.answer_held_message(server, frame, &mut command).await {
                Ok(()) => continue,
                Err(HeldError::Session(e)) => return Err(e),
                Err(HeldError::Answered) => true,
                Err(HeldError::Refused(e)) => {
                    self.io.push_error(e.code, &e.message, e.hint.as_deref());
                    e.code != sqlstate::FEATURE_NOT_SUPPORTED
                }
            };
            if failed {
                self.fail_held_transaction();
            }
            // As PostgreSQL: after an error the rest of the batch is skipped up to its Sync.
            skipping = true;
        }
        Ok(())
    }

    async fn answer_held_message(
        &mut self,
        server: &mut PooledConn,
        frame: &Frame,
        command: &mut Option<CursorCommand>,
    ) -> Result<(), HeldError> {
        let bad = |e: shardgate_wire::DecodeError| RouteError {
            code: sqlstate::PROTOCOL_VIOLATION,
            message: e.to_string(),
            hint: None,
        };
        if self.txn.shards().failed() && frame.tag() != frontend::CLOSE {
            return Err(aborted().into());
        }
        let text = match frame.tag() {
            frontend::QUERY => Some(
                self.sql(frontend::query_text(frame).map_err(bad)?)
                    .into_owned(),
            ),
            frontend::PARSE => Some(
                self.sql(frontend::parse(frame).map_err(bad)?.query)
                    .into_owned(),
            ),
            _ => None,
        };
        match frame.tag() {
            frontend::QUERY => {
                let command = cursor_command_on_held(text.as_deref().unwrap_or_default())?;
                match self.run_cursor_command(server, &command, true).await {
                    Ok(()) => {}
                    Err(HeldError::Refused(e)) => {
                        self.io.push_error(e.code, &e.message, e.hint.as_deref());
                        if e.code != sqlstate::FEATURE_NOT_SUPPORTED {
                            self.fail_held_transaction();
                        }
                    }
                    Err(HeldError::Answered) => self.fail_held_transaction(),
                    Err(e) => return Err(e),
                }
                // A simple query ends with its ReadyForQuery, error or not.
                self.io.push_ready(self.txn.status());
            }
            frontend::PARSE => {
                *command = Some(cursor_command_on_held(text.as_deref().unwrap_or_default())?);
                backend::write_parse_complete(&mut self.io.out);
            }
            frontend::BIND => {
                let b = frontend::bind(frame).map_err(bad)?;
                if !b.portal.is_empty() && self.txn.shards().held.contains(b.portal) {
                    return Err(already_exists(b.portal, false).into());
                }
                let params = frontend::bind_params(frame, &b).map_err(bad)?;
                if command.is_none() || params.result_formats.iter().any(|f| *f != 0) {
                    return Err(mixed().into());
                }
                backend::write_bind_complete(&mut self.io.out);
            }
            frontend::DESCRIBE => {
                let d = frontend::describe(frame).map_err(bad)?;
                match (d.kind, d.name, &*command) {
                    (b'S', "", Some(c)) => {
                        // No parameters.
                        self.io.out.extend_from_slice(&[
                            backend::PARAMETER_DESCRIPTION,
                            0,
                            0,
                            0,
                            6,
                            0,
                            0,
                        ]);
                        self.describe_command(c)?;
                    }
                    (b'P', "", Some(c)) => self.describe_command(c)?,
                    (b'P', name, _) => {
                        let held = self.txn.shards().held.results.get(name).ok_or_else(mixed)?;
                        write_description(&mut self.io.out, held.description.as_ref());
                    }
                    _ => return Err(mixed().into()),
                }
            }
            frontend::EXECUTE => {
                let (portal, max_rows) = frontend::execute(frame).map_err(bad)?;
                match (portal, command.take()) {
                    ("", Some(c)) => self.run_cursor_command(server, &c, false).await?,
                    (name, _) => {
                        if !self.txn.shards().held.contains(name) {
                            return Err(mixed().into());
                        }
                        let limit = u64::try_from(max_rows).ok().filter(|n| *n > 0);
                        let n = self.read_held(server, name, limit, Rows::ToClient).await?;
                        write_execute_end(&mut self.io.out, limit, n);
                    }
                }
            }
            frontend::CLOSE => {
                let c = frontend::close(frame).map_err(bad)?;
                if c.kind == b'P' {
                    self.txn.shards_mut().held.results.remove(c.name);
                }
                backend::write_close_complete(&mut self.io.out);
            }
            _ => return Err(mixed().into()),
        }
        Ok(())
    }

    /// An error in the transaction: as in PostgreSQL, everything but ROLLBACK fails now.
    fn fail_held_transaction(&mut self) {
        self.txn.shards_mut().set_failed();
        self.txn.note_error();
        self.txn.set_status(TransactionStatus::Failed);
    }

    /// FETCH, MOVE or CLOSE on a held cursor; `simple`: with its RowDescription (a simple
    /// Query; an extended one described it already).
    async fn run_cursor_command(
        &mut self,
        server: &mut PooledConn,
        c: &CursorCommand,
        simple: bool,
    ) -> Result<(), HeldError> {
        match c {
            CursorCommand::Close(name) => {
                self.txn.shards_mut().held.results.remove(name);
                backend::write_command_complete(&mut self.io.out, "CLOSE CURSOR");
            }
            CursorCommand::CloseAll => {}
            CursorCommand::Fetch {
                name,
                count,
                moving,
            } => {
                let limit = match count {
                    FetchCount::Forward(n) if *n > 0 => Some(*n),
                    FetchCount::All => None,
                    _ => return Err(not_forward().into()),
                };
                let held = self
                    .txn
                    .shards()
                    .held
                    .results
                    .get(name)
                    .ok_or_else(|| no_cursor(name))?;
                if *moving {
                    let n = self.read_held(server, name, limit, Rows::Skip).await?;
                    backend::write_command_complete(&mut self.io.out, &format!("MOVE {n}"));
                } else {
                    if simple {
                        if let Some(d) = &held.description {
                            self.io.out.extend_from_slice(d);
                        }
                    }
                    let n = self.read_held(server, name, limit, Rows::ToClient).await?;
                    backend::write_command_complete(&mut self.io.out, &format!("FETCH {n}"));
                }
            }
        }
        Ok(())
    }

    /// The next `limit` rows (all with `None`) of the held result `name`: those kept first,
    /// then, for a streamed read, merged on from the shards' portals. Returns how many.
    async fn read_held(
        &mut self,
        server: &mut PooledConn,
        name: &str,
        limit: Option<u64>,
        rows: Rows,
    ) -> Result<u64, HeldError> {
        let Some((name, mut held)) = self.txn.shards_mut().held.results.remove_entry(name) else {
            return Err(no_cursor(name).into());
        };
        let mut n = 0u64;
        for row in held.take(limit) {
            if rows == Rows::ToClient {
                self.io.out.extend_from_slice(&row);
                self.io.flush_if_large().await?;
            }
            n += 1;
        }
        let wanted = limit.map(|l| l - n);
        let mut outcome = Ok(n);
        if wanted != Some(0) {
            if let Some(stream) = held.stream.as_mut().filter(|s| !s.merge.is_done()) {
                outcome = self
                    .resume_stream(server, stream, wanted, rows)
                    .await
                    .map(|m| n + m);
            }
        }
        if matches!(outcome, Err(HeldError::Answered)) {
            // The read is over (a shard's error); the transaction has failed.
            held.stream = None;
        }
        self.txn.shards_mut().held.results.insert(name, held);
        outcome
    }

    /// Merges on from a streamed read's shards (their participants in the transaction).
    async fn resume_stream(
        &mut self,
        server: &mut PooledConn,
        stream: &mut super::HeldStream,
        wanted: Option<u64>,
        rows: Rows,
    ) -> Result<u64, HeldError> {
        let here = self.attachment.shard();
        let names: Vec<String> = stream.shards.iter().map(|s| self.shard_name(*s)).collect();
        let mut taken = self.participants_for(&stream.shards, server).await?;
        let resumed = {
            let by_shard =
                crate::multi_txn::in_shard_order(&stream.shards, here, server, &mut taken);
            let mut servers: Vec<&mut ServerConn> = by_shard.into_iter().map(|(_, c)| c).collect();
            match rows {
                Rows::ToClient => {
                    crate::scatter::resume(
                        &mut stream.merge,
                        &mut servers,
                        &names,
                        wanted,
                        &mut self.io,
                    )
                    .await
                }
                Rows::Skip => {
                    let mut skipped = Skipped::default();
                    crate::scatter::resume(
                        &mut stream.merge,
                        &mut servers,
                        &names,
                        wanted,
                        &mut skipped,
                    )
                    .await
                }
            }
        };
        for p in taken {
            self.txn.shards_mut().put(p);
        }
        match resumed {
            Ok(Resumed::Rows { rows, .. }) => Ok(rows),
            Ok(Resumed::Failed) => Err(HeldError::Answered),
            Err(ScatterFailure::ClientGone) => Err(HeldError::Session(SessionError::ClientGone)),
            Err(ScatterFailure::Server(e)) => {
                self.io.push_error(
                    sqlstate::CONNECTION_FAILURE,
                    &format!("lost the connection to shard {}: {}", e.shard, e.source),
                    Some("the transaction failed; roll it back and retry it"),
                );
                Err(HeldError::Answered)
            }
        }
    }

    /// Describe of a parsed FETCH/MOVE/CLOSE: the cursor's RowDescription for FETCH.
    fn describe_command(&mut self, c: &CursorCommand) -> Result<(), RouteError> {
        let description = match c {
            CursorCommand::Fetch {
                name,
                moving: false,
                ..
            } => self
                .txn
                .shards()
                .held
                .results
                .get(name)
                .ok_or_else(|| no_cursor(name))?
                .description
                .clone(),
            _ => None,
        };
        write_description(&mut self.io.out, description.as_ref());
        Ok(())
    }

    /// A Parse's statement text (for a DECLARE sent with the extended protocol).
    fn parse_text(&self, frame: &Frame) -> Option<String> {
        (frame.tag() == frontend::PARSE)
            .then(|| frontend::parse(frame).ok())
            .flatten()
            .map(|p| self.sql(p.query).into_owned())
    }
}

/// Up to `limit` rows (all with `None`) and the Execute's end ([`write_execute_end`]).
fn write_rows(out: &mut BytesMut, held: &mut HeldResult, limit: Option<u64>) {
    let n = held.take(limit).fold(0u64, |n, row| {
        out.extend_from_slice(&row);
        n + 1
    });
    write_execute_end(out, limit, n);
}

/// After an Execute's `n` rows: PortalSuspended when exactly its `limit` came (as PostgreSQL:
/// the portal may have more), else `SELECT n`.
fn write_execute_end(out: &mut BytesMut, limit: Option<u64>, n: u64) {
    if limit == Some(n) {
        out.put_slice(&[backend::PORTAL_SUSPENDED, 0, 0, 0, 4]);
    } else {
        backend::write_command_complete(out, &format!("SELECT {n}"));
    }
}

/// A held result's RowDescription, or NoData when it has none.
fn write_description(out: &mut BytesMut, description: Option<&bytes::Bytes>) {
    match description {
        Some(d) => out.extend_from_slice(d),
        None => backend::write_no_data(out),
    }
}

fn cursor_command_on_held(sql: &str) -> Result<CursorCommand, RouteError> {
    cursor::cursor_command(sql).ok_or_else(mixed)
}

fn mixed() -> RouteError {
    feature_error(
        "a batch that reads a cross-shard cursor or portal held by shardgate can only execute, describe, fetch from or close it".into(),
        "send other statements in their own batch",
    )
}

fn not_forward() -> RouteError {
    feature_error(
        "a cross-shard cursor is read forward only: FETCH/MOVE BACKWARD, PRIOR, FIRST, LAST, ABSOLUTE, RELATIVE and FORWARD 0 are not supported".into(),
        "fetch forward, or restrict the cursor's query to one shard with its shard key",
    )
}

fn no_cursor(name: &str) -> RouteError {
    RouteError {
        code: sqlstate::INVALID_CURSOR_NAME,
        message: format!("cursor \"{name}\" does not exist"),
        hint: None,
    }
}

/// Whether a held read streams from the shards: a merged read (not re-aggregated, not
/// gathered, not COPY).
fn streams_from_shards(plan: &Plan) -> bool {
    plan.gather.is_none()
        && plan.copy_out.is_none()
        && plan
            .merge
            .as_ref()
            .is_none_or(|m| m.group_by.is_empty() && m.aggregates.is_empty())
}

impl Session {
    /// Starts a streamed held read on `servers` (see `scatter::run_held`): the first rows go
    /// to the client's buffer (captured by the caller); returns the connection that broke, if
    /// one did, and the merge to go on with.
    pub(crate) async fn execute_held(
        &mut self,
        servers: &mut [&mut ServerConn],
        names: &[String],
        request: &ScatterRequest,
        plan: &Plan,
        batches: crate::scatter::Batches,
    ) -> Result<(Option<(String, String)>, Option<crate::scatter::HeldMerge>), SessionError> {
        let spec = plan.merge.clone().unwrap_or_default();
        let limits = ScatterLimits {
            max_buffered: self.shared.config().limits.max_buffered_result,
        };
        match crate::scatter::run_held(
            servers,
            names,
            request,
            &spec,
            limits,
            &mut self.io,
            batches,
        )
        .await
        {
            Ok(merge) => Ok((None, merge)),
            Err(ScatterFailure::Server(e)) => Ok((Some((e.shard.clone(), e.to_string())), None)),
            Err(ScatterFailure::ClientGone) => {
                self.attachment.clear_cancel_target().await;
                Err(SessionError::ClientGone)
            }
        }
    }
}

/// Why a request on a held result did not complete.
enum HeldError {
    /// Refused or failed before anything was written: the client gets this error.
    Refused(RouteError),
    /// An error was written to the client already (a shard's); the transaction fails.
    Answered,
    /// The client or the session is gone.
    Session(SessionError),
}

impl From<RouteError> for HeldError {
    fn from(e: RouteError) -> Self {
        HeldError::Refused(e)
    }
}

impl From<SessionError> for HeldError {
    fn from(e: SessionError) -> Self {
        HeldError::Session(e)
    }
}

/// Where a held read's rows go: to the client (FETCH, Execute) or nowhere (MOVE).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rows {
    ToClient,
    Skip,
}

/// The client side of a MOVE over a streamed read: rows counted and dropped.
#[derive(Default)]
struct Skipped(BytesMut);

impl crate::scatter::ClientSink for Skipped {
    fn buffer(&mut self) -> &mut BytesMut {
        &mut self.0
    }

    async fn write_out_if_large(&mut self) -> Result<(), crate::scatter::ClientGone> {
        // Keep nothing but what an error written after the rows would need.
        self.0.clear();
        Ok(())
    }
}
