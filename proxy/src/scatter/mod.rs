//! Cross-shard reads: one SELECT run on every shard at once, and the shards' results merged
//! into the one result a single unsharded PostgreSQL would have returned — concatenated,
//! merge-sorted by the ORDER BY keys, cut by LIMIT/OFFSET, or re-aggregated (count, sum, min,
//! max, avg, GROUP BY) — as the router's [`MergeSpec`] says. Every server is left idle at
//! ReadyForQuery (or, when the client left mid-result, marked broken for the pool to close).
//!
//! The merged rows stream to the client as they come ([`output`]): concatenation and the
//! k-way merge hold one head row and one read buffer per shard, and the client's pace
//! throttles the reads from the shards. Only re-aggregation buffers — the shards' partial rows
//! — and that is capped by `limits.max_buffered_result` (54000 past it). A shard's error
//! replaces the result when no row was sent yet, else it follows the rows sent, as a single
//! PostgreSQL sends an error in the middle of a result.

mod collation;
mod combine;
mod compare;
mod datetime;
mod execute;
mod merge;
mod numeric;
mod output;
#[cfg(test)]
mod real_servers;
mod request;
mod resume;
mod shard;

use bytes::{Bytes, BytesMut};
use shardgate_pool::{ServerConn, ServerError};
use shardgate_router::MergeSpec;
use shardgate_wire::backend::{self, CursorPosition, Severity};
use shardgate_wire::{sqlstate, Frame};

use execute::Ctx;
use output::Output;
pub(crate) use output::{ClientGone, ClientSink};
use request::{row_count, shard_messages, RowCountError};
pub(crate) use request::{write_bind, write_execute};
pub(crate) use resume::{batch_rows, resume, HeldMerge, Resumed};
pub(crate) use shard::join_all;
pub(crate) use shard::Batches;
use shard::ShardStream;

/// One cross-shard read, already checked by the router to be mergeable.
#[derive(Debug, Clone)]
pub(crate) enum ScatterRequest {
    /// A simple-protocol Query with one statement: `sql` (the spec's `shard_sql` or the
    /// client's text) runs on every server.
    Simple { sql: String },
    /// One extended-protocol execution. Every server gets Parse (unnamed, `sql`,
    /// `param_types`), Describe statement if the client described it, Bind (unnamed portal, the
    /// client's parameters and result formats), Describe portal, Execute (all rows), Sync.
    Extended {
        sql: String,
        param_types: Vec<u32>,
        param_formats: Vec<i16>,
        params: Vec<Option<Bytes>>,
        result_formats: Vec<i16>,
        /// The client sent the Parse (it gets a ParseComplete).
        client_sent_parse: bool,
        /// `b'S'`: the client described the statement (ParameterDescription and
        /// RowDescription/NoData); `b'P'`: the portal (RowDescription/NoData). Either is
        /// answered after BindComplete, as for tokio-postgres' Parse, Bind, Describe,
        /// Execute, Sync (a Describe before the Bind, as pgjdbc sends it, would need its
        /// position here).
        client_describe: Option<u8>,
        /// The Execute's row limit (0 = all rows). With one, the client gets at most that
        /// many rows and then PortalSuspended when it got exactly that many, as from
        /// PostgreSQL (asyncpg's `fetchrow`/`fetchval` ask for one row); the portal ends at
        /// the batch's Sync, so no later Execute can ask for the rest.
        row_limit: u64,
    },
}

impl ScatterRequest {
    /// The Execute's row limit, if it has one.
    pub(crate) fn row_limit(&self) -> Option<u64> {
        match self {
            ScatterRequest::Extended { row_limit, .. } if *row_limit > 0 => Some(*row_limit),
            _ => None,
        }
    }
}

impl ScatterRequest {
    /// The same execution with another statement text (a gathered read's rewritten text).
    pub(crate) fn with_sql(&self, text: String) -> ScatterRequest {
        let mut r = self.clone();
        match &mut r {
            ScatterRequest::Simple { sql } | ScatterRequest::Extended { sql, .. } => *sql = text,
        }
        r
    }
}

/// A server connection broke during a cross-shard read (the caller marks it broken and tells
/// the client 08006). The other servers were left idle where possible.
#[derive(Debug, thiserror::Error)]
#[error("shard {shard}: {source}")]
pub(crate) struct ScatterError {
    pub shard: String,
    pub source: ServerError,
}

impl ScatterError {
    /// The SQLSTATE to report to the client.
    #[allow(dead_code)]
    pub fn sqlstate(&self) -> &str {
        self.source.sqlstate()
    }
}

/// Why a cross-shard read did not end with an answer for the client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScatterFailure {
    #[error(transparent)]
    Server(#[from] ScatterError),
    /// The client's connection failed while rows were written to it. The server connections
    /// still mid-result were marked broken (the pool closes them, which stops the statement)
    /// rather than drained for nobody.
    #[error("the client disconnected during a cross-shard read")]
    ClientGone,
}

/// Why a merge stopped early.
#[derive(Debug)]
pub(crate) enum Stop {
    /// A shard sent ErrorResponse (it is in that shard's stream).
    ShardFailed,
    /// The final aggregate query failed on the first shard.
    Final(Frame),
    /// The proxy cannot give a correct result: tell the client, keep the connections.
    Refuse { code: &'static str, message: String },
    /// What must be buffered passed `limits.max_buffered_result` (54000, with a hint).
    TooLarge(String),
    /// A server sent something malformed: that connection (unknown which) cannot be trusted.
    Protocol(String),
    /// Server `i`'s connection failed.
    Server(usize, ServerError),
    /// Writing to the client failed.
    ClientGone,
}

impl Stop {
    pub(crate) fn protocol(e: impl std::fmt::Display) -> Stop {
        Stop::Protocol(e.to_string())
    }

    pub(crate) fn unsupported(message: String) -> Stop {
        Stop::Refuse {
            code: sqlstate::FEATURE_NOT_SUPPORTED,
            message,
        }
    }

    pub(crate) fn internal(message: String) -> Stop {
        Stop::Refuse {
            code: sqlstate::INTERNAL_ERROR,
            message,
        }
    }
}

/// Bytes of rows read and dropped per shard, once the answer is an error, before its
/// connection is closed instead.
const DRAIN_BUDGET: usize = 8 * 1024 * 1024;

/// The limits a cross-shard read runs under.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScatterLimits {
    /// `limits.max_buffered_result`: bytes of partial rows held for re-aggregation.
    pub max_buffered: usize,
}

impl Default for ScatterLimits {
    fn default() -> Self {
        ScatterLimits {
            max_buffered: shardgate_config::Limits::default().max_buffered_result,
        }
    }
}

/// Runs `request` on every server (checked out, idle, one per shard, in shard order; `shards`
/// holds their names) and streams one merged result to `client`: RowDescription (or the
/// extended protocol's expected replies), DataRows, CommandComplete — never ReadyForQuery.
/// Rows are written to the client as they are merged (see [`output`]); a shard error or a
/// refusal becomes one ErrorResponse instead of the result, or after the rows already sent.
/// `Err` when a server connection broke or the client left.
pub(crate) async fn run<C: ClientSink>(
    servers: &mut [&mut ServerConn],
    shards: &[String],
    request: &ScatterRequest,
    spec: &MergeSpec,
    limits: ScatterLimits,
    client: &mut C,
) -> Result<(), ScatterFailure> {
    run_inner(servers, shards, request, spec, limits, client, None)
        .await
        .map(|_| ())
}

/// Like [`run`] for a merged (not re-aggregated) read, with each shard's rows in a named
/// portal read `batches.rows` at a time: once the Execute's row limit is written, the shards'
/// portals are parked (each connection idle, at most one batch read ahead) and the merge's
/// state is returned, to go on at the client's next Execute ([`resume`]). `None` when the
/// answer is complete (no rows to merge, a shard's error, a refusal).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_held<C: ClientSink>(
    servers: &mut [&mut ServerConn],
    shards: &[String],
    request: &ScatterRequest,
    spec: &MergeSpec,
    limits: ScatterLimits,
    client: &mut C,
    batches: Batches,
) -> Result<Option<HeldMerge>, ScatterFailure> {
    run_inner(
        servers,
        shards,
        request,
        spec,
        limits,
        client,
        Some(batches),
    )
    .await
}

async fn run_inner<C: ClientSink>(
    servers: &mut [&mut ServerConn],
    shards: &[String],
    request: &ScatterRequest,
    spec: &MergeSpec,
    limits: ScatterLimits,
    client: &mut C,
    held: Option<Batches>,
) -> Result<Option<HeldMerge>, ScatterFailure> {
    let mut out = Output::new(client);
    let name = |i: usize| shards.get(i).map_or("?", String::as_str);
    if servers.is_empty() {
        refuse(
            &mut out,
            sqlstate::INTERNAL_ERROR,
            "a cross-shard read with no shards",
        );
        return Ok(None);
    }
    let combine = !spec.group_by.is_empty() || !spec.aggregates.is_empty();
    // A bad LIMIT/OFFSET parameter (negative, not an integer) is left to the shards, whose
    // error names it as PostgreSQL does; if they accept it anyway, it is refused below. No
    // row is passed on meanwhile (LIMIT 0), so the refusal can still replace the result.
    let (limit, offset, limit_error) = match limits_of(spec, request) {
        Ok((l, o)) => (l, o, None),
        Err(e) => (Some(0), 0, Some(e)),
    };
    if combine && limit.is_some() && limit_error.is_none() && !spec.limit_keeps_groups_whole() {
        refuse(
            &mut out,
            sqlstate::FEATURE_NOT_SUPPORTED,
            "GROUP BY with LIMIT across shards needs an ORDER BY on all the group columns first",
        );
        return Ok(None);
    }
    // Merging text sort keys byte-wise is right only under a C collation; ask (once per
    // connection) before any row is streamed, while the first server is still idle.
    let collation = if !combine && !spec.order_by.is_empty() {
        Some(
            collation::database_collation(servers[0])
                .await
                .map_err(|source| ScatterError {
                    shard: name(0).to_owned(),
                    source,
                })?,
        )
    } else {
        None
    };

    let messages = shard_messages(request, spec, combine, held.as_ref());
    let extended = matches!(request, ScatterRequest::Extended { .. });
    let mut streams: Vec<ShardStream<'_>> = servers
        .iter_mut()
        .enumerate()
        .map(|(i, s)| {
            let stream = ShardStream::new(s, name(i), extended);
            match &held {
                Some(b) => stream.in_batches(b.clone()),
                None => stream,
            }
        })
        .collect();
    let mut failure: Option<ScatterError> = None;
    let mut sent = 0;
    for s in streams.iter_mut() {
        if let Err(e) = s.conn.write_all(&messages).await {
            failure = Some(ScatterError {
                shard: s.name.to_owned(),
                source: e,
            });
            break;
        }
        sent += 1;
    }
    streams.truncate(sent);

    let result = if failure.is_some() {
        Ok(None)
    } else {
        let ctx = Ctx {
            request,
            spec,
            combine,
            limit,
            offset,
            collation,
            max_buffered: limits.max_buffered,
        };
        ctx.merge(&mut streams, &mut out).await
    };
    let (result, merged) = match result {
        Ok(merged) => (Ok(()), merged),
        Err(e) => (Err(e), None),
    };
    if let Err(Stop::ClientGone) = result {
        for s in streams.iter_mut().filter(|s| !s.is_idle()) {
            s.conn.mark_broken();
        }
        return Err(ScatterFailure::ClientGone);
    }

    // Leave every sound connection idle, whatever happened. After a successful merge what is
    // left is read in full (bounded: the shards got the LIMIT, OFFSET folded in, and a shard's
    // error among those rows still wins); when the answer is already an error, a shard with
    // much left is closed rather than drained.
    let budget = if result.is_err() || streams.iter().any(|s| s.error.is_some()) {
        DRAIN_BUDGET
    } else {
        usize::MAX
    };
    // A held portal's shards are parked instead: the rest of their current batch is kept.
    let mut parked = Vec::new();
    let park = held.is_some()
        && merged.is_some()
        && budget == usize::MAX
        && failure.is_none()
        && limit_error.is_none();
    if park {
        let results = join_all(
            streams
                .iter_mut()
                .map(|s| async move { (s.name, s.park().await) })
                .collect(),
        )
        .await;
        for (shard, r) in results {
            match r {
                Ok(p) => parked.push(p),
                Err(source) => {
                    failure.get_or_insert(ScatterError {
                        shard: shard.to_owned(),
                        source,
                    });
                }
            }
        }
    }
    let finished = join_all(
        streams
            .iter_mut()
            .filter(|s| !s.conn.is_broken())
            .map(|s| async move {
                let r = s.finish_within(budget).await;
                (s.name, r)
            })
            .collect(),
    )
    .await;
    for (shard, r) in finished {
        if let Err(source) = r {
            failure.get_or_insert(ScatterError {
                shard: shard.to_owned(),
                source,
            });
        }
    }
    let result = match result {
        Err(Stop::Server(i, source)) => {
            failure.get_or_insert(ScatterError {
                shard: name(i).to_owned(),
                source,
            });
            Ok(())
        }
        Err(Stop::Protocol(message)) => {
            for s in streams.iter_mut() {
                s.conn.mark_broken();
            }
            failure.get_or_insert(ScatterError {
                shard: shards.join(","),
                source: ServerError::Protocol(message),
            });
            Ok(())
        }
        other => other,
    };
    if let Some(f) = failure {
        out.take_back();
        return Err(f.into());
    }
    // The shard's cursor position points into the client's text only if the shard ran it.
    let position = if spec.shard_sql.is_none() {
        CursorPosition::Keep
    } else {
        CursorPosition::Omit
    };
    // Any shard's error wins over the rows, even one that came after the LIMIT was reached.
    if let Some(s) = streams.iter().find(|s| s.error.is_some()) {
        if out.sent() {
            tracing::debug!(
                shard = s.name,
                "a shard failed after merged rows were sent: its error follows them"
            );
        }
        out.take_back();
        if let Some(e) = &s.error {
            write_shard_error(out.buf(), e, s.name, position);
        }
        return Ok(None);
    }
    if let Some(e) = limit_error {
        refuse(&mut out, INVALID_PARAMETER_VALUE, &e.to_string());
        return Ok(None);
    }
    match result {
        Ok(()) => {}
        Err(Stop::Refuse { code, message }) => refuse(&mut out, code, &message),
        Err(Stop::TooLarge(message)) => {
            out.take_back();
            crate::stats::count_error(sqlstate::PROGRAM_LIMIT_EXCEEDED);
            backend::write_error(
                out.buf(),
                Severity::Error,
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                &message,
                Some(
                    "raise limits.max_buffered_result in the proxy's config, or narrow the \
                     statement (fewer groups, a WHERE clause, or the shard key)",
                ),
            );
        }
        Err(Stop::Final(e)) => {
            out.take_back();
            write_shard_error(out.buf(), &e, name(0), CursorPosition::Omit);
        }
        Err(Stop::ShardFailed) => {
            // The error is in a stream (handled above); be safe anyway.
            refuse(&mut out, sqlstate::INTERNAL_ERROR, "a shard failed");
        }
        Err(Stop::Server(i, source)) => {
            out.take_back();
            return Err(ScatterError {
                shard: name(i).to_owned(),
                source,
            }
            .into());
        }
        Err(Stop::Protocol(message)) => {
            out.take_back();
            return Err(ScatterError {
                shard: name(0).to_owned(),
                source: ServerError::Protocol(message),
            }
            .into());
        }
        Err(Stop::ClientGone) => return Err(ScatterFailure::ClientGone),
    }
    Ok(match (held, merged) {
        (Some(batches), Some((plan, rows))) if park => Some(HeldMerge::new(
            plan,
            parked,
            batches,
            limit.map(|l| l.saturating_sub(rows)),
        )),
        _ => None,
    })
}

/// Resolved LIMIT (None = all) and OFFSET.
fn limits_of(
    spec: &MergeSpec,
    request: &ScatterRequest,
) -> Result<(Option<u64>, u64), RowCountError> {
    let resolve = |c: &Option<shardgate_router::RowCount>| match c {
        None => Ok(None),
        Some(c) => row_count(c, request),
    };
    Ok((resolve(&spec.limit)?, resolve(&spec.offset)?.unwrap_or(0)))
}

/// SQLSTATE invalid_parameter_value.
const INVALID_PARAMETER_VALUE: &str = "22023";

/// Replaces whatever this call wrote (or, once rows were sent, follows them) with an
/// ErrorResponse made by the proxy.
fn refuse<C: ClientSink>(out: &mut Output<'_, C>, code: &str, message: &str) {
    out.take_back();
    crate::stats::count_error(code);
    let hint = (code == sqlstate::FEATURE_NOT_SUPPORTED)
        .then_some("add the shard key to the statement, or do this part in the application");
    backend::write_error(out.buf(), Severity::Error, code, message, hint);
}

/// Appends a shard's ErrorResponse with the shard named before its message (its cursor
/// position as `position` says: kept only when the shard ran the client's own text).
pub(crate) fn write_shard_error(
    out: &mut BytesMut,
    frame: &Frame,
    shard: &str,
    position: CursorPosition,
) {
    if let Err(e) =
        backend::write_error_with_prefix(out, frame, &format!("shard {shard}: "), position)
    {
        // A malformed ErrorResponse: none of its fields can be read, its SQLSTATE included.
        backend::write_error(
            out,
            Severity::Error,
            sqlstate::INTERNAL_ERROR,
            &format!("shard {shard}: {e}"),
            None,
        );
    }
}
