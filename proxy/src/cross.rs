//! Statements that run on several shards: cross-shard reads (merged by `scatter`) and
//! broadcasts (DDL on sharded tables, keyless writes when configured).
//!
//! They run outside transactions only, on one server connection per shard checked out for the
//! statement. A broadcast runs shard by shard and stops at the first error, which names the
//! shard (the shards before it keep the change: DDL is not atomic across shards).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use shardgate_pool::{PooledConn, ServerConn};
use shardgate_router::{Plan, RouteError, ShardIndex, StatementKind};
use shardgate_wire::backend::{self, TransactionStatus};
use shardgate_wire::{frontend, sqlstate, Frame};

use crate::routing::feature_error;
use crate::scatter::{self, ScatterFailure, ScatterLimits, ScatterRequest};
use crate::session::Session;
use crate::stats::RouteKind;
use crate::SessionError;

impl Session {
    /// Runs a batch the router sent to several shards, answering the client completely
    /// (including ReadyForQuery).
    pub(crate) async fn run_many(
        &mut self,
        batch: Vec<Frame>,
        shards: Vec<ShardIndex>,
        plan: Arc<Plan>,
    ) -> Result<(), SessionError> {
        let refusal = if !self.txn.is_idle() || self.txn.has_deferred_begin() {
            Some(feature_error(
                "a statement on several shards cannot run inside a transaction".into(),
                "run it outside the transaction, or restrict it to one shard with its shard key",
            ))
        } else if !matches!(
            plan.kind,
            StatementKind::Read { .. } | StatementKind::Ddl | StatementKind::Write
        ) {
            Some(feature_error(
                format!("{} cannot run on several shards", plan.command),
                "restrict it to one shard with its shard key or a /* shardgate: shard=… */ hint",
            ))
        } else {
            None
        };
        let request = match refusal.map_or_else(|| self.scatter_request(&batch, &plan), Err) {
            Ok(r) => r,
            Err(e) => {
                self.fail_batch(&batch, e.code, &e.message, e.hint.as_deref());
                return self.io.flush().await;
            }
        };

        if let (Some(gather), StatementKind::Read { .. }) = (&plan.gather, &plan.kind) {
            let gather = gather.clone();
            return self.run_gather(&batch, shards, &gather, request).await;
        }
        let role = self.batch_role(&batch);
        let mut conns: Vec<PooledConn> = Vec::with_capacity(shards.len());
        let mut running = Vec::with_capacity(shards.len());
        for shard in &shards {
            self.shard = *shard;
            match self.checkout_for(role).await {
                Ok((conn, guard)) => {
                    conns.push(conn);
                    running.push(guard);
                }
                Err(f) => {
                    *self.cancel.lock().await = None;
                    self.fail_batch(&batch, &f.code, &f.message, f.hint.as_deref());
                    return self.io.flush().await;
                }
            }
        }
        // A broadcast's read-your-writes positions are taken per shard below.
        self.read_your_writes.set_may_have_written(false);
        let names: Vec<String> = shards.iter().map(|s| self.shard_name(*s)).collect();
        let started = std::time::Instant::now();
        let broken = {
            let mut servers: Vec<&mut ServerConn> = conns.iter_mut().map(|c| &mut **c).collect();
            if matches!(plan.kind, StatementKind::Read { .. }) {
                let spec = plan.merge.clone().unwrap_or_default();
                let limits = ScatterLimits {
                    max_buffered: self.shared.config().limits.max_buffered_result,
                };
                // The merged rows stream to the client as they come (`scatter::output`).
                match scatter::run(&mut servers, &names, &request, &spec, limits, &mut self.io)
                    .await
                {
                    Ok(()) => None,
                    Err(ScatterFailure::Server(e)) => Some((e.shard.clone(), e.to_string())),
                    Err(ScatterFailure::ClientGone) => {
                        // The connections still mid-result were marked broken: the pool
                        // closes them, which ends their statements.
                        *self.cancel.lock().await = None;
                        return Err(SessionError::ClientGone);
                    }
                }
            } else {
                broadcast(&mut servers, &names, &request, &mut self.io.out).await
            }
        };
        *self.cancel.lock().await = None;
        let route = if matches!(plan.kind, StatementKind::Read { .. }) {
            RouteKind::Multi
        } else {
            RouteKind::Broadcast
        };
        let took = started.elapsed();
        for (shard, guard) in shards.iter().zip(&running) {
            let role = guard.host().role;
            self.shared
                .topo()
                .query_stats
                .query(*shard, role, route, took);
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
            // Also after an error: the shards before it kept the change.
            for (shard, conn) in shards.iter().zip(conns.iter_mut()) {
                self.remember_write_position_on(*shard, conn).await;
            }
        }
        // A connection that is not idle now (a server error mid-way) is closed by the pool.
        drop(conns);
        drop(running);
        self.io.push_ready(TransactionStatus::Idle);
        self.io.flush().await
    }

    /// The batch as one cross-shard request: a single Query, or one Parse/Bind/Describe/
    /// Execute/Sync execution.
    fn scatter_request(
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
        for (i, frame) in batch.iter().enumerate() {
            match frame.tag() {
                frontend::PARSE if bound.is_none() && !client_sent_parse => {
                    let p = frontend::parse(frame).map_err(bad)?;
                    let text = self.sql_for_shards(p.query)?;
                    if !p.name.is_empty() {
                        let stmt = self.intern_statement(p.query, &p.param_types);
                        self.statements.insert(p.name.to_owned(), stmt);
                    } else {
                        self.routing
                            .set_unnamed(text.clone(), p.param_types.clone());
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
                        statement = if b.statement.is_empty() {
                            self.routing.unnamed().cloned()
                        } else {
                            self.statements
                                .get(b.statement)
                                .map(|s| (s.query.clone(), s.param_types.clone()))
                        };
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
                    if max_rows != 0 {
                        return Err(feature_error(
                            "fetching a cross-shard result in parts (Execute with a row limit) is not supported".into(),
                            "fetch all rows at once, or restrict the query to one shard",
                        ));
                    }
                    executed = true;
                }
                frontend::SYNC if executed && i + 1 == batch.len() => {}
                _ => return Err(unsupported()),
            }
        }
        let (Some((text, param_types)), Some((param_formats, params, result_formats)), true) =
            (statement, bound, executed)
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
        })
    }
}

impl Session {
    /// The text the proxy sends to every shard itself (as UTF-8): only what reads the same in
    /// the client's encoding.
    fn sql_for_shards(&self, bytes: &[u8]) -> Result<String, RouteError> {
        match std::str::from_utf8(bytes) {
            Ok(text) if self.encoding.is_utf8() || text.is_ascii() => Ok(text.to_owned()),
            _ => Err(feature_error(
                format!(
                    "a statement on several shards with non-ASCII text needs client_encoding UTF8 (this client uses {})",
                    self.encoding.name()
                ),
                "SET client_encoding = 'UTF8' for it, or restrict it to one shard with its shard key",
            )),
        }
    }
}

/// Runs a DDL or write on every server in turn; the client sees the first shard's replies, or
/// the first error (with the shard's name). Returns the shard whose connection broke, if any.
async fn broadcast(
    servers: &mut [&mut ServerConn],
    names: &[String],
    request: &ScatterRequest,
    out: &mut BytesMut,
) -> Option<(String, String)> {
    let sql = match request {
        ScatterRequest::Simple { sql } => sql,
        ScatterRequest::Extended { sql, params, .. } if params.is_empty() => sql,
        ScatterRequest::Extended { .. } => {
            out.extend_from_slice(&error_frame(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "a statement run on every shard cannot take parameters",
            ));
            return None;
        }
    };
    let mut first_replies: Vec<Frame> = Vec::new();
    for (i, server) in servers.iter_mut().enumerate() {
        let name = names.get(i).map_or("?", String::as_str);
        let replies = match server.query_frames(sql).await {
            Ok(r) => r,
            Err(e) => return Some((name.to_owned(), e.to_string())),
        };
        if let Some(error) = replies.iter().find(|f| f.tag() == backend::ERROR_RESPONSE) {
            let done: Vec<&str> = names[..i].iter().map(String::as_str).collect();
            let prefix = if done.is_empty() {
                format!("shard {name}: ")
            } else {
                format!("shard {name} (already applied on {}): ", done.join(", "))
            };
            if backend::write_error_with_prefix(out, error, &prefix).is_err() {
                out.extend_from_slice(error.as_bytes());
            }
            return None;
        }
        if i == 0 {
            first_replies = replies;
        }
    }
    if let ScatterRequest::Extended {
        client_sent_parse,
        client_describe,
        ..
    } = request
    {
        if *client_sent_parse {
            backend::write_parse_complete(out);
        }
        if *client_describe == Some(b'S') {
            frontend::write_message(out, backend::PARAMETER_DESCRIPTION, |b| {
                b.extend_from_slice(&[0, 0])
            });
            backend::write_no_data(out);
        }
        backend::write_bind_complete(out);
        if *client_describe == Some(b'P') {
            backend::write_no_data(out);
        }
    }
    for frame in first_replies
        .iter()
        .filter(|f| f.tag() != backend::READY_FOR_QUERY)
    {
        out.extend_from_slice(frame.as_bytes());
    }
    None
}

fn error_frame(code: &str, message: &str) -> BytesMut {
    let mut out = BytesMut::new();
    backend::write_error(&mut out, backend::Severity::Error, code, message, None);
    out
}
