//! A read gathered into PostgreSQL (`crate::gather`) inside a transaction on several shards.
//! The sources are the transaction's participants, so the rows include its own writes; the
//! coordinator is a connection of its own on the default shard, where the temporary tables live
//! in a transaction that is rolled back, running the transaction's `SET LOCAL`s first. The
//! unsharded tables it reads there are as committed: a statement that reads them after this
//! transaction wrote on the default shard is refused (0A000) rather than answered without
//! those writes.

use shardgate_pool::{PooledConn, ServerConn};
use shardgate_router::{GatherSpec, Plan, RouteError, ShardIndex};
use shardgate_wire::sqlstate;

use super::Participant;
use crate::gather::GatherLimits;
use crate::replicas::BatchRole;
use crate::routing::feature_error;
use crate::scatter::{ScatterFailure, ScatterLimits, ScatterRequest};
use crate::session::Session;
use crate::SessionError;

/// How a gathered read in a transaction went.
pub(crate) enum Gathered {
    /// Answered (rows, or an error the client got: `failed`).
    Answered { failed: bool },
    /// Not run: the client gets this error.
    Refused(RouteError),
    /// A source's connection broke.
    Lost(String, String),
}

impl Session {
    /// Runs `request` gathered from `sources` (the participants of `shards`, in order; the
    /// attached connection `server` among them when its shard is one of them).
    pub(crate) async fn gather_in_transaction(
        &mut self,
        server: &mut PooledConn,
        taken: &mut [Participant],
        shards: &[ShardIndex],
        gather: &GatherSpec,
        request: &ScatterRequest,
        plan: &Plan,
    ) -> Result<Gathered, SessionError> {
        let default = self.shared.topo().router.default_shard();
        if plan.unsharded_tables || !plan.reference_tables.is_empty() {
            // Did this transaction write where the unsharded tables (and the coordinator's
            // copy of reference tables) live?
            let mut waiting = self.txn.shards_mut().take(default);
            let conn: Option<&mut ServerConn> = if self.attachment.shard() == default {
                Some(&mut **server)
            } else if let Some(p) = taken.iter_mut().find(|p| p.shard == default) {
                Some(&mut *p.conn)
            } else {
                waiting.as_mut().map(|p| &mut *p.conn)
            };
            let wrote = match conn {
                Some(c) => super::fanout::query_value(
                    c,
                    "SELECT pg_current_xact_id_if_assigned() IS NOT NULL",
                )
                .await
                .map_or(true, |v| v.as_deref() != Some("f")),
                // Not in the transaction: nothing written there.
                None => false,
            };
            if let Some(p) = waiting {
                self.txn.shards_mut().put(p);
            }
            if wrote {
                return Ok(Gathered::Refused(feature_error(
                    "this cross-shard read is gathered into PostgreSQL on the default shard, which would not see this transaction's writes there".into(),
                    "run it before writing on the default shard, or outside the transaction",
                )));
            }
        }
        let Beside {
            conn: mut coord,
            guard: _guard,
            ..
        } = match self
            .checkout_beside(
                default,
                BatchRole {
                    read: false,
                    may_write: false,
                },
                server,
            )
            .await
        {
            Ok(c) => c,
            Err(e) => return Ok(Gathered::Refused(e)),
        };
        let here = self.attachment.shard();
        let names: Vec<String> = shards.iter().map(|s| self.shard_name(*s)).collect();
        let coord_name = self.shard_name(default);
        let config = self.shared.config();
        let limits = GatherLimits {
            max_rows: config.limits.max_gather_rows,
            max_bytes: config.limits.max_gather_bytes,
            keep_sources: true,
        };
        let scatter_limits = ScatterLimits {
            max_buffered: config.limits.max_buffered_result,
        };
        let setup: String = self
            .txn
            .shards()
            .locals()
            .iter()
            .map(|s| format!("{s};"))
            .collect();
        let by_shard = crate::multi_txn::in_shard_order(shards, here, server, taken);
        let mut sources: Vec<&mut ServerConn> = by_shard.into_iter().map(|(_, c)| c).collect();
        let result = crate::gather::run(
            &mut coord,
            &coord_name,
            &mut sources,
            &names,
            gather,
            request,
            limits,
            scatter_limits,
            &setup,
            &mut self.io,
        )
        .await;
        match result {
            Ok(failed) => Ok(Gathered::Answered { failed }),
            Err(ScatterFailure::ClientGone) => Err(SessionError::ClientGone),
            Err(ScatterFailure::Server(e)) => Ok(Gathered::Lost(e.shard.clone(), e.to_string())),
        }
    }

    /// A connection on `shard` for work beside the attachment (a joining participant, a
    /// gather coordinator): the session's own shard, host and role stay those of the attached
    /// connection `attached`, and so does the cancel target.
    pub(crate) async fn checkout_beside(
        &mut self,
        shard: ShardIndex,
        role: BatchRole,
        attached: &ServerConn,
    ) -> Result<Beside, RouteError> {
        let saved = self.attachment.place();
        let may_have_written = self.read_your_writes.take_may_have_written();
        self.attachment.set_shard(shard);
        let checked_out = self.checkout_for(role).await;
        let chosen = (self.attachment.host(), self.attachment.is_read());
        self.attachment.set_place(saved);
        self.read_your_writes.set_may_have_written(may_have_written);
        self.attachment.aim_cancel_at(attached).await;
        let (conn, guard) = checked_out.map_err(|f| RouteError {
            code: if f.code == sqlstate::TOO_MANY_CONNECTIONS {
                sqlstate::TOO_MANY_CONNECTIONS
            } else {
                sqlstate::CONNECTION_FAILURE
            },
            message: f.message,
            hint: f.hint,
        })?;
        Ok(Beside {
            conn,
            guard,
            host: chosen.0,
            read: chosen.1,
        })
    }
}

/// A connection checked out beside the attachment, and the server it is on.
pub(crate) struct Beside {
    pub(crate) conn: PooledConn,
    pub(crate) guard: shardgate_pool::QueryGuard,
    pub(crate) host: shardgate_pool::HostChoice,
    /// Taken for reads only (a replica).
    pub(crate) read: bool,
}
