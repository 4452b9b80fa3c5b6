//! The read/write split: which server of a shard serves a batch, and read-your-writes.
//!
//! A batch goes to a replica when no read-write transaction is open and every statement in
//! it is a plain read (or it opens a read-only transaction); a `/* shardgate: role=… */` hint
//! or `SET shardgate.role` overrides. Among replicas in rotation (up, within the lag
//! limits), the one running the fewest queries is taken; one that refuses the connection is
//! banned and the next is tried, then the primary (`replicas.fallback_to_primary`).
//!
//! Read-your-writes: after a client's write on a shard's primary, the proxy asks that
//! connection for its WAL insert position before giving it back; the client's later reads
//! on that shard only use replicas whose replay position (from the monitor) has reached it.

use shardgate_pool::{HostChoice, PooledConn, QueryGuard};
use shardgate_router::{Plan, RoleHint, StatementKind};
use shardgate_wire::backend::TransactionStatus;
use shardgate_wire::{frontend, sqlstate, Frame};
use tracing::{debug, warn};

use crate::session::{CheckoutFailure, Session};

/// Asks the primary, right after a write, how far its WAL goes (as a byte position).
const WAL_POSITION_SQL: &str = "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn";

impl Session {
    /// The role a hint or `SET shardgate.role` forces for a statement, if any.
    fn forced_role(&self, plan: Option<&Plan>) -> Option<RoleHint> {
        plan.and_then(|p| p.role_hint)
            .or(self.local_role)
            .or(self.session_role)
            .filter(|r| *r != RoleHint::Auto)
    }

    /// Whether a plan may run on a replica, overrides included. `role=replica` sends reads
    /// the proxy would otherwise keep on the primary (SHOW, functions it cannot vouch for);
    /// writes, DDL and locking reads still go to the primary.
    fn plan_on_replica(&self, plan: &Plan) -> bool {
        match self.forced_role(Some(plan)) {
            Some(RoleHint::Primary) => false,
            Some(_) => plan.statement_kinds.iter().all(|k| {
                !matches!(
                    k,
                    StatementKind::Write
                        | StatementKind::Ddl
                        | StatementKind::Unparsed
                        | StatementKind::Read { locking: true, .. }
                )
            }),
            None => plan.runs_on_replica(),
        }
    }

    /// Whether `batch` (detached, about to be routed to `self.shard`) should read from a
    /// replica.
    pub(crate) fn wants_replica(&mut self, batch: &[Frame]) -> bool {
        if !self.shared.reads_can_leave_primary || self.mode_is_session() {
            return false;
        }
        if self.deferred_begin.is_some() {
            // A transaction the proxy deferred: its BEGIN says whether it only reads.
            return match self.forced_role(None) {
                Some(RoleHint::Primary) => false,
                Some(_) => true,
                None => self.deferred_read_only,
            };
        }
        if self.status != TransactionStatus::Idle {
            return false;
        }
        let mut executes = false;
        for frame in batch {
            let plan = match frame.tag() {
                frontend::QUERY => match frontend::query_text(frame) {
                    Ok(text) => self.shared.router.plan(text),
                    Err(_) => return false,
                },
                frontend::BIND => match self.bound_statement_text(frame) {
                    Some(text) => self.shared.router.plan(&text),
                    None => return false,
                },
                frontend::FUNCTION_CALL | frontend::COPY_DATA => return false,
                _ => continue,
            };
            if !self.plan_on_replica(&plan) {
                return false;
            }
            executes = true;
        }
        executes
    }

    /// The text of the statement a Bind executes.
    fn bound_statement_text(&self, frame: &Frame) -> Option<String> {
        let bind = frontend::bind(frame).ok()?;
        if bind.statement.is_empty() {
            self.unnamed.as_ref().map(|(t, _)| t.clone())
        } else {
            self.statements.get(bind.statement).map(|s| s.query.clone())
        }
    }

    /// Checks out a connection on `self.shard` for a batch: the primary, or for a read an
    /// eligible replica (trying the next one when one refuses the connection). Sets
    /// `self.host` to the server taken.
    pub(crate) async fn checkout_for(
        &mut self,
        read: bool,
    ) -> Result<(PooledConn, QueryGuard), CheckoutFailure> {
        let shard = self.shard;
        let Some(health) = self.shared.health.shard(shard).cloned() else {
            return Err(CheckoutFailure::new(
                sqlstate::INTERNAL_ERROR,
                format!("shard #{shard} is not in the topology"),
                None,
            ));
        };
        let settings = self.shared.config.replicas.clone();
        let mut tried: Vec<HostChoice> = Vec::new();
        loop {
            let choice = if read {
                let min_lsn = self.read_after.get(shard).copied().unwrap_or(0);
                match health.pick_read(min_lsn, settings.include_primary_in_reads, &tried) {
                    Some(c) => c,
                    None if settings.fallback_to_primary => HostChoice::Primary,
                    None => {
                        return Err(CheckoutFailure::new(
                            sqlstate::CONNECTION_FAILURE,
                            format!(
                                "no replica of shard {} can serve reads now (down, or behind by more than replicas.max_lag)",
                                health.name
                            ),
                            Some("retry later, or set replicas.fallback_to_primary = true to read from the primary"),
                        ))
                    }
                }
            } else {
                HostChoice::Primary
            };
            if tried.contains(&choice) {
                // Every eligible host refused, the primary included.
                return Err(CheckoutFailure::new(
                    sqlstate::CONNECTION_FAILURE,
                    format!("no server of shard {} accepts connections", health.name),
                    Some("check that the shard's servers are up"),
                ));
            }
            self.host = choice;
            let Some(host) = health.host(choice).cloned() else {
                return Err(CheckoutFailure::new(
                    sqlstate::INTERNAL_ERROR,
                    "replica index out of range".into(),
                    None,
                ));
            };
            match self.checkout(false).await {
                Ok((conn, _)) => {
                    self.attached_read = read;
                    return Ok((conn, host.start_query()));
                }
                Err(failure) if failure.is_connect_error() => {
                    let r = &self.shared.config.replicas;
                    host.report_failure(r.ban_initial, r.ban_max, &failure.message);
                    if !read || choice == HostChoice::Primary {
                        return Err(failure);
                    }
                    // Nothing reached the client yet: try another server.
                    debug!(shard = %health.name, host = %host.host, error = %failure.message,
                        "read could not connect; trying another server");
                    tried.push(choice);
                }
                Err(failure) => return Err(failure),
            }
        }
    }

    /// Whether the current attachment may have written on the primary (so read-your-writes
    /// needs the WAL position when it ends).
    fn wrote_on_primary(&self) -> bool {
        self.host == HostChoice::Primary && !self.attached_read
    }

    /// Before a primary connection that served writes goes back to the pool: remember the
    /// WAL position the client's later reads must see on a replica.
    pub(crate) async fn remember_write_position(&mut self, server: &mut PooledConn) {
        if !self.read_your_writes
            || !self.wrote_on_primary()
            || server.is_broken()
            || server.status() != TransactionStatus::Idle
        {
            return;
        }
        let has_replicas = self
            .shared
            .health
            .shard(self.shard)
            .is_some_and(|s| !s.replicas.is_empty());
        if !has_replicas {
            return;
        }
        match server.query_value(WAL_POSITION_SQL).await {
            Ok(Some(v)) => {
                // numeric text, e.g. "50331944"
                let lsn = v.split('.').next().and_then(|d| d.parse::<u64>().ok());
                if let (Some(lsn), Some(slot)) = (lsn, self.read_after.get_mut(self.shard)) {
                    *slot = (*slot).max(lsn);
                }
            }
            Ok(None) => {}
            Err(e) => {
                // Without the position, reads on this shard stay on the primary.
                warn!(shard = self.shard, error = %e, "could not read the WAL position after a write");
                if let Some(slot) = self.read_after.get_mut(self.shard) {
                    *slot = u64::MAX;
                }
                server.mark_broken();
            }
        }
    }
}
