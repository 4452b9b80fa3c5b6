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
use shardgate_router::{Plan, RoleHint, ShardIndex, StatementKind};
use shardgate_wire::backend::TransactionStatus;
use shardgate_wire::{frontend, sqlstate, Frame};
use tracing::{debug, warn};

use crate::checkout::CheckoutFailure;
use crate::session::Session;

/// Where a batch runs: on a replica (or wherever reads go), and whether it may write (then
/// read-your-writes takes the primary's WAL position after it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchRole {
    pub read: bool,
    pub may_write: bool,
}

/// Asks the primary, right after a write transaction, where its WAL ends (as a byte
/// position). The insert position covers the commit record even with `synchronous_commit =
/// off` (the flush position would not). It may point just past a page header when the commit
/// was the last record before a page boundary; replay reports the end of the last record, so
/// until another record follows, such a client reads from the primary: never stale.
const WAL_POSITION_SQL: &str = "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn";

impl Session {
    /// The role a hint or `SET shardgate.role` forces for a statement, if any.
    fn forced_role(&self, plan: Option<&Plan>) -> Option<RoleHint> {
        plan.and_then(|p| p.role_hint)
            .or(self.routing.role())
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

    /// Where a detached batch (about to be routed to `self.attachment.shard()`) should run.
    pub(crate) fn batch_role(&mut self, batch: &[Frame]) -> BatchRole {
        let primary_write = BatchRole {
            read: false,
            may_write: true,
        };
        if !self.view.topo().reads_can_leave_primary || self.client.mode_is_session() {
            return primary_write;
        }
        if let Some(read_only) = self.txn.deferred_read_only() {
            // A transaction the proxy deferred: its BEGIN says whether it only reads.
            let read = match self.forced_role(None) {
                Some(RoleHint::Primary) => false,
                Some(_) => true,
                None => read_only,
            };
            return BatchRole {
                read,
                may_write: !read_only,
            };
        }
        if !self.txn.is_idle() || self.batch_pins(batch).is_some() {
            // A session pinned by this batch stays on its connection: it must be the primary.
            return primary_write;
        }
        let mut statements = false;
        let mut read = true;
        let mut reads_only = true;
        for frame in batch {
            let plan = match frame.tag() {
                frontend::QUERY => match frontend::query_text(frame) {
                    Ok(text) => self.shared.topo().router.plan_query(&self.sql(text)).plan,
                    Err(_) => return primary_write,
                },
                // Preparing a read can happen on a replica too (drivers prepare before they
                // execute, often in a batch of its own).
                frontend::PARSE => match frontend::parse(frame) {
                    Ok(p) => self.shared.topo().router.plan(&self.sql(p.query)),
                    Err(_) => return primary_write,
                },
                frontend::BIND => match frontend::bind(frame)
                    .ok()
                    .and_then(|b| self.known_statement(b.statement))
                {
                    Some((text, _)) => self.shared.topo().router.plan(text),
                    None => return primary_write,
                },
                frontend::FUNCTION_CALL | frontend::COPY_DATA => return primary_write,
                _ => continue,
            };
            statements = true;
            read &= self.plan_on_replica(&plan);
            reads_only &= plan.runs_on_replica();
        }
        BatchRole {
            read: read && statements,
            may_write: !(reads_only && statements) && Self::batch_executes(batch),
        }
    }

    /// Whether a batch runs statements (rather than only preparing, describing or closing
    /// them): only those can write.
    fn batch_executes(batch: &[Frame]) -> bool {
        batch.iter().any(|f| {
            matches!(
                f.tag(),
                frontend::QUERY | frontend::EXECUTE | frontend::FUNCTION_CALL
            )
        })
    }

    /// Checks out a connection on `self.attachment.shard()` for a batch: the primary, or for a read an
    /// eligible replica (trying the next one when one refuses the connection). Sets
    /// `self.attachment.host()` to the server taken.
    pub(crate) async fn checkout_for(
        &mut self,
        role: BatchRole,
    ) -> Result<(PooledConn, QueryGuard), CheckoutFailure> {
        let BatchRole { read, may_write } = role;
        let shard = self.attachment.shard();
        let Some(health) = self.view.topo().health.shard(shard).cloned() else {
            return Err(CheckoutFailure::new(
                sqlstate::INTERNAL_ERROR,
                format!("shard #{shard} is not in the topology"),
                None,
            ));
        };
        let settings = &self.view.config().replicas;
        let (include_primary, fallback_to_primary) = (
            settings.include_primary_in_reads,
            settings.fallback_to_primary,
        );
        let (ban_initial, ban_max) = (settings.ban_initial, settings.ban_max);
        let mut tried: Vec<HostChoice> = Vec::new();
        loop {
            let choice = if read {
                let mut min_lsn = self.read_your_writes.read_after(shard);
                if min_lsn > 0 && !health.writer().is_up() {
                    // Read-your-writes would send this read to a primary that is down: serve
                    // it from a replica rather than fail it (availability over freshness).
                    min_lsn = 0;
                }
                match health.pick_read(min_lsn, include_primary, &tried) {
                    Some(c) => c,
                    None if fallback_to_primary => HostChoice::Primary,
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
            debug!(shard = %health.name, read, ?choice, min_lsn = self.read_your_writes.read_after(shard), "server chosen");
            self.attachment.set_host(choice);
            let Some(host) = health.host(choice).cloned() else {
                return Err(CheckoutFailure::new(
                    sqlstate::INTERNAL_ERROR,
                    "replica index out of range".into(),
                    None,
                ));
            };
            match self.checkout(false).await {
                Ok((conn, _)) => {
                    self.attachment.set_read(read);
                    self.read_your_writes
                        .set_may_have_written(may_write && !read && choice == HostChoice::Primary);
                    return Ok((conn, host.start_query()));
                }
                Err(failure) if failure.is_connect_error() => {
                    host.report_failure(ban_initial, ban_max, &failure.message);
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

    /// Before a primary connection that served writes goes back to the pool: remember the
    /// WAL position the client's later reads must see on a replica.
    pub(crate) async fn remember_write_position(&mut self, server: &mut PooledConn) {
        if !self.read_your_writes.take_may_have_written() {
            return;
        }
        self.remember_write_position_on(self.attachment.shard(), server)
            .await;
    }

    /// [`Session::remember_write_position_on`] for each shard of a write on several shards.
    pub(crate) async fn remember_write_positions(
        &mut self,
        shards: &[ShardIndex],
        conns: &mut [PooledConn],
    ) {
        for (shard, conn) in shards.iter().zip(conns.iter_mut()) {
            self.remember_write_position_on(*shard, conn).await;
        }
    }

    /// Remembers the WAL position of `shard`'s primary after this client wrote there through
    /// `server` (also each shard of a broadcast: DDL, keyless writes).
    pub(crate) async fn remember_write_position_on(
        &mut self,
        shard: ShardIndex,
        server: &mut PooledConn,
    ) {
        if !self.read_your_writes.enabled()
            || server.is_broken()
            || server.status() != TransactionStatus::Idle
        {
            return;
        }
        let has_replicas = self
            .view
            .topo()
            .health
            .shard(shard)
            .is_some_and(|s| !s.replicas.is_empty());
        if !has_replicas {
            return;
        }
        let position = server.query_value(WAL_POSITION_SQL).await;
        debug!(shard = shard, ?position, "WAL position after a write");
        match position {
            Ok(Some(v)) => {
                // numeric text, e.g. "50331944"
                let lsn = v.split('.').next().and_then(|d| d.parse::<u64>().ok());
                if let Some(lsn) = lsn {
                    self.read_your_writes.wrote_at(shard, lsn);
                }
            }
            Ok(None) => {}
            Err(e) => {
                // Without the position, reads on this shard stay on the primary.
                warn!(shard = shard, error = %e, "could not read the WAL position after a write");
                self.read_your_writes.position_unknown(shard);
                server.mark_broken();
            }
        }
    }
}
