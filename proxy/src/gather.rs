//! Cross-shard reads gathered into PostgreSQL (the router's [`GatherSpec`]): the rows of each
//! sharded table the statement reads are copied from every shard (COPY … TO STDOUT, binary)
//! into a temporary table on one coordinating connection (the default shard's primary, where
//! the unsharded tables live), and the statement — its sharded references rewritten to
//! `pg_temp.<table>` — runs there, so PostgreSQL itself gives the answer. The coordinator's
//! transaction is rolled back afterwards: nothing stays.
//!
//! The proxy holds at most one 64 KiB batch of COPY data at a time; what the coordinator
//! receives is capped by `limits.max_gather_rows` / `limits.max_gather_bytes` (54000 past
//! either). The final result streams to the client like any cross-shard result (`scatter`).

use bytes::BytesMut;
use shardgate_pool::{PooledConn, ServerConn, ServerError};
use shardgate_router::{GatherSpec, MergeSpec, ShardIndex};
use shardgate_wire::backend::{self, CursorPosition, Severity, TransactionStatus};
use shardgate_wire::{frontend, sqlstate, Frame};

use crate::replicas::BatchRole;
use crate::scatter::{
    self, ClientSink, ScatterError, ScatterFailure, ScatterLimits, ScatterRequest,
};
use crate::session::Session;
use crate::stats::RouteKind;
use crate::SessionError;

/// COPY data forwarded to the coordinator in writes of about this size.
const BATCH: usize = 64 * 1024;

/// What a gathered read may copy into the coordinator.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GatherLimits {
    pub max_rows: u64,
    pub max_bytes: u64,
    /// The sources are a transaction's participants: past a limit a source's COPY is read to
    /// its end and dropped, not closed (closing it would end the client's transaction with
    /// it, and its ROLLBACK would find the connection gone).
    pub keep_sources: bool,
}

/// How loading the temporary tables ended.
enum Load {
    Loaded,
    /// An error for the client is in the output buffer; the coordinator is still sound.
    Answered,
}

/// Why a load stopped: a server's error for the client, a limit, or a broken connection.
enum LoadStop {
    ShardError { shard: String, frame: Frame },
    Limit(String),
    Broken(ScatterError),
}

impl Session {
    /// Runs a gathered cross-shard read (`request` is the client's, `shards` the sources) and
    /// answers the client completely, including ReadyForQuery.
    pub(crate) async fn run_gather(
        &mut self,
        batch: &[Frame],
        shards: Vec<ShardIndex>,
        gather: &GatherSpec,
        request: ScatterRequest,
    ) -> Result<(), SessionError> {
        let role = self.batch_role(batch);
        let mut conns: Vec<PooledConn> = Vec::with_capacity(shards.len() + 1);
        let mut running = Vec::with_capacity(shards.len() + 1);
        let coordinator = self.shared.topo().router.default_shard();
        // The sources, then the coordinator: a primary (temporary tables need one).
        let wanted = shards.iter().map(|s| (*s, role)).chain(std::iter::once((
            coordinator,
            BatchRole {
                read: false,
                may_write: false,
            },
        )));
        for (shard, role) in wanted {
            self.attachment.set_shard(shard);
            match self.checkout_for(role).await {
                Ok((conn, guard)) => {
                    conns.push(conn);
                    running.push((shard, guard));
                }
                Err(f) => {
                    self.attachment.clear_cancel_target().await;
                    self.fail_batch(batch, &f.code, &f.message, f.hint.as_deref());
                    return self.io.flush().await;
                }
            }
        }
        self.read_your_writes.set_may_have_written(false);
        let names: Vec<String> = shards.iter().map(|s| self.shard_name(*s)).collect();
        let coordinator_name = self.shard_name(coordinator);
        let config = self.shared.config();
        let limits = GatherLimits {
            max_rows: config.limits.max_gather_rows,
            max_bytes: config.limits.max_gather_bytes,
            keep_sources: false,
        };
        let scatter_limits = ScatterLimits {
            max_buffered: config.limits.max_buffered_result,
        };
        let started = std::time::Instant::now();
        let (coord, sources) = conns
            .split_last_mut()
            .expect("the coordinator was checked out");
        let mut sources: Vec<&mut ServerConn> = sources.iter_mut().map(|c| &mut **c).collect();
        let result = run(
            coord,
            &coordinator_name,
            &mut sources,
            &names,
            gather,
            &request,
            limits,
            scatter_limits,
            "",
            &mut self.io,
        )
        .await;
        self.attachment.clear_cancel_target().await;
        let took = started.elapsed();
        for (shard, guard) in &running {
            let role = guard.host().role;
            self.shared
                .topo()
                .query_stats
                .query(*shard, role, RouteKind::Multi, took);
        }
        match result {
            Ok(_) => {}
            Err(ScatterFailure::ClientGone) => return Err(SessionError::ClientGone),
            Err(ScatterFailure::Server(e)) => {
                self.io.push_error(
                    shardgate_wire::sqlstate::CONNECTION_FAILURE,
                    &format!("lost the connection to shard {}: {}", e.shard, e.source),
                    Some("the statement did not complete; retry it"),
                );
            }
        }
        drop(conns);
        drop(running);
        self.io.push_ready(TransactionStatus::Idle);
        self.io.flush().await
    }
}

/// Loads the sharded tables into the coordinator, runs the statement there and streams its
/// result to `client`, then rolls the coordinator back. `transaction_setup` runs on the
/// coordinator right after its BEGIN (the `SET LOCAL`s of a client's transaction). `Ok(true)`
/// when the statement (or loading) failed with an error the client got; `Err` when a connection
/// broke (it is marked broken) or the client left.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run<C: ClientSink>(
    coord: &mut ServerConn,
    coord_name: &str,
    sources: &mut [&mut ServerConn],
    names: &[String],
    spec: &GatherSpec,
    request: &ScatterRequest,
    limits: GatherLimits,
    scatter_limits: ScatterLimits,
    transaction_setup: &str,
    client: &mut C,
) -> Result<bool, ScatterFailure> {
    let broken = |source| ScatterError {
        shard: coord_name.to_owned(),
        source,
    };
    // READ WRITE: a client's default_transaction_read_only must not forbid the temporary tables.
    let mut setup = String::from("BEGIN READ WRITE;");
    setup.push_str(transaction_setup);
    for r in &spec.relations {
        setup.push_str(&format!(
            "CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP;",
            r.temp, r.source
        ));
    }
    let loaded = match coord.query_frames(&setup).await {
        Err(e) => return Err(broken(e).into()),
        Ok(replies) => match replies.iter().find(|f| f.tag() == backend::ERROR_RESPONSE) {
            Some(e) => {
                scatter::write_shard_error(client.buffer(), e, coord_name, CursorPosition::Omit);
                Load::Answered
            }
            None => {
                load(
                    coord,
                    coord_name,
                    sources,
                    names,
                    spec,
                    limits,
                    client.buffer(),
                )
                .await?
            }
        },
    };
    let mut failed = matches!(loaded, Load::Answered);
    if let Load::Loaded = loaded {
        let request = request.with_sql(spec.sql.clone());
        let mut one = [&mut *coord];
        scatter::run(
            &mut one,
            &[coord_name.to_owned()],
            &request,
            &MergeSpec::default(),
            scatter_limits,
            client,
        )
        .await?;
    }
    failed |= coord.status() == TransactionStatus::Failed;
    if coord.status() != TransactionStatus::Idle {
        coord.run_internal("ROLLBACK").await.map_err(broken)?;
    }
    Ok(failed)
}

/// Copies every source's rows of every gathered table into the coordinator's temporary tables.
async fn load(
    coord: &mut ServerConn,
    coord_name: &str,
    sources: &mut [&mut ServerConn],
    names: &[String],
    spec: &GatherSpec,
    limits: GatherLimits,
    out: &mut BytesMut,
) -> Result<Load, ScatterError> {
    let mut rows = 0u64;
    let mut bytes = 0u64;
    for relation in &spec.relations {
        let copy_in = format!("COPY pg_temp.{} FROM STDIN (FORMAT binary)", relation.temp);
        let copy_out = format!("COPY ({}) TO STDOUT (FORMAT binary)", relation.fetch_sql);
        for (i, source) in sources.iter_mut().enumerate() {
            let name = names.get(i).map_or("?", String::as_str);
            let stop = match copy_one(
                coord, coord_name, source, name, &copy_in, &copy_out, limits, &mut rows, &mut bytes,
            )
            .await
            {
                Ok(()) => continue,
                Err(stop) => stop,
            };
            match stop {
                LoadStop::Broken(e) => return Err(e),
                LoadStop::ShardError { shard, frame } => {
                    scatter::write_shard_error(out, &frame, &shard, CursorPosition::Omit);
                }
                LoadStop::Limit(message) => {
                    crate::stats::count_error(sqlstate::PROGRAM_LIMIT_EXCEEDED);
                    backend::write_error(
                        out,
                        Severity::Error,
                        sqlstate::PROGRAM_LIMIT_EXCEEDED,
                        &message,
                        Some(
                            "raise limits.max_gather_rows / limits.max_gather_bytes in the proxy's \
                             config, or narrow the statement (a WHERE clause on the shard key, or \
                             a form shardgate pushes down or merges: SHARDGATE ROUTE shows which)",
                        ),
                    );
                }
            }
            return Ok(Load::Answered);
        }
    }
    Ok(Load::Loaded)
}

/// One source's rows of one table: `COPY … TO STDOUT` there, each CopyData forwarded as is to
/// the coordinator's `COPY … FROM STDIN`. Both connections end idle unless one broke (or the
/// source was stopped mid-COPY at a limit, and marked broken).
#[allow(clippy::too_many_arguments)]
async fn copy_one(
    coord: &mut ServerConn,
    coord_name: &str,
    source: &mut ServerConn,
    name: &str,
    copy_in: &str,
    copy_out: &str,
    limits: GatherLimits,
    rows: &mut u64,
    bytes: &mut u64,
) -> Result<(), LoadStop> {
    let coord_broken = |e| {
        LoadStop::Broken(ScatterError {
            shard: coord_name.to_owned(),
            source: e,
        })
    };
    let source_broken = |e| {
        LoadStop::Broken(ScatterError {
            shard: name.to_owned(),
            source: e,
        })
    };
    let mut msg = BytesMut::new();
    frontend::write_query(&mut msg, copy_in);
    coord.write_all(&msg).await.map_err(coord_broken)?;
    // Up to CopyInResponse, or an error and ReadyForQuery.
    loop {
        let f = coord.read_frame().await.map_err(coord_broken)?;
        match f.tag() {
            backend::COPY_IN_RESPONSE => break,
            backend::ERROR_RESPONSE => {
                finish(coord).await.map_err(coord_broken)?;
                return Err(LoadStop::ShardError {
                    shard: coord_name.to_owned(),
                    frame: f,
                });
            }
            _ => {}
        }
    }
    msg.clear();
    frontend::write_query(&mut msg, copy_out);
    if let Err(e) = source.write_all(&msg).await {
        let _ = fail_copy(coord, "source shard failed").await;
        return Err(source_broken(e));
    }
    let mut batch = BytesMut::with_capacity(BATCH + 1024);
    let mut error: Option<Frame> = None;
    // Past a limit with sources kept: the rest is read and dropped.
    let mut over_limit: Option<String> = None;
    loop {
        let f = match source.read_frame().await {
            Ok(f) => f,
            Err(e) => {
                fail_copy(coord, "source shard failed")
                    .await
                    .map_err(coord_broken)?;
                return Err(source_broken(e));
            }
        };
        match f.tag() {
            frontend::COPY_DATA if over_limit.is_some() => {}
            frontend::COPY_DATA => {
                // The binary trailer (int16 -1) is not a row.
                if f.body() != [0xff, 0xff] {
                    *rows += 1;
                }
                *bytes += f.body().len() as u64;
                let over = if *rows > limits.max_rows {
                    Some(format!(
                        "a gathered cross-shard read copies more than limits.max_gather_rows ({}) rows",
                        limits.max_rows
                    ))
                } else if *bytes > limits.max_bytes {
                    Some(format!(
                        "a gathered cross-shard read copies more than limits.max_gather_bytes ({}) bytes",
                        limits.max_bytes
                    ))
                } else {
                    None
                };
                if let Some(message) = over {
                    if limits.keep_sources {
                        over_limit = Some(message);
                        continue;
                    }
                    // The source is mid-COPY with possibly much left: close it rather than
                    // drain it.
                    source.mark_broken();
                    fail_copy(coord, &message).await.map_err(coord_broken)?;
                    return Err(LoadStop::Limit(message));
                }
                batch.extend_from_slice(f.as_bytes());
                if batch.len() >= BATCH {
                    coord.write_all(&batch).await.map_err(coord_broken)?;
                    batch.clear();
                }
            }
            backend::ERROR_RESPONSE => {
                error.get_or_insert(f);
            }
            backend::READY_FOR_QUERY => break,
            // CopyOutResponse, CopyDone, CommandComplete, notices.
            _ => {}
        }
    }
    if let Some(message) = over_limit {
        fail_copy(coord, &message).await.map_err(coord_broken)?;
        return Err(LoadStop::Limit(message));
    }
    if let Some(frame) = error {
        fail_copy(coord, "source shard failed")
            .await
            .map_err(coord_broken)?;
        return Err(LoadStop::ShardError {
            shard: name.to_owned(),
            frame,
        });
    }
    frontend::write_message(&mut batch, frontend::COPY_DONE, |_| {});
    coord.write_all(&batch).await.map_err(coord_broken)?;
    if let Some(frame) = finish(coord).await.map_err(coord_broken)? {
        return Err(LoadStop::ShardError {
            shard: coord_name.to_owned(),
            frame,
        });
    }
    Ok(())
}

/// Ends the coordinator's COPY FROM STDIN with CopyFail and reads up to ReadyForQuery.
async fn fail_copy(coord: &mut ServerConn, why: &str) -> Result<(), ServerError> {
    let mut msg = BytesMut::new();
    frontend::write_message(&mut msg, frontend::COPY_FAIL, |b| {
        frontend::put_cstr(b, why)
    });
    coord.write_all(&msg).await?;
    finish(coord).await.map(|_| ())
}

/// Reads up to ReadyForQuery; returns the ErrorResponse seen, if any.
async fn finish(conn: &mut ServerConn) -> Result<Option<Frame>, ServerError> {
    let mut error = None;
    loop {
        let f = conn.read_frame().await?;
        match f.tag() {
            backend::READY_FOR_QUERY => return Ok(error),
            backend::ERROR_RESPONSE => {
                error.get_or_insert(f);
            }
            _ => {}
        }
    }
}
