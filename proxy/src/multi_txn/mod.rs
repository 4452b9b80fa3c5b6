//! Transactions on several shards. A transaction starts on the shard of its first statement,
//! attached to that shard's server connection as always; a later statement for another shard
//! makes that shard *join*: a connection is checked out there and opens a transaction of the
//! same isolation level and access mode, with the transaction's `SET LOCAL`s and open
//! savepoints replayed. The session then attaches to whichever participant the statement
//! needs (statements for several shards run on all of theirs); the others wait here.
//!
//! Transaction control (savepoints, `SET LOCAL`, COMMIT, ROLLBACK) runs on every participant.
//! COMMIT commits one-phase when at most one participant wrote, and otherwise runs two-phase
//! commit (`commit`): PREPARE TRANSACTION on each writer, the decision recorded in the
//! topology store, then COMMIT PREPARED (recovery in `two_phase` finishes what a crash left).
//!
//! Snapshots are per shard: under REPEATABLE READ each shard's snapshot is taken at its first
//! statement, so the transaction does not see one global snapshot (as in Citus and PgDog).

mod commit;
mod control;
pub(crate) mod fanout;
mod gather;
mod pipeline;
mod run;

pub(crate) use commit::commit_all;
pub(crate) use control::Control;
pub(crate) use gather::Gathered;
pub(crate) use run::InTransaction;

use shardgate_pool::{HostChoice, PooledConn, QueryGuard};
use shardgate_router::ShardIndex;

use control::Savepoints;

/// A server connection in the client's transaction that the session is not attached to now.
pub(crate) struct Participant {
    pub(crate) shard: ShardIndex,
    pub(crate) host: HostChoice,
    /// Checked out for reads only (a read-only transaction on a replica).
    pub(crate) read: bool,
    pub(crate) conn: PooledConn,
    /// Counts the connection as busy on its host while the transaction holds it.
    pub(crate) guard: QueryGuard,
}

/// The client's transaction beyond the shard the session is attached to.
#[derive(Default)]
pub(crate) struct TxnShards {
    others: Vec<Participant>,
    /// How a joining shard opens its transaction (isolation level, access mode), read from the
    /// first shard at the first join.
    begin: Option<String>,
    /// `SET LOCAL` / `SET TRANSACTION` statements of the transaction, replayed on a join.
    locals: Vec<String>,
    savepoints: Savepoints,
    /// A statement failed on a shard the session was not attached to (or the commit protocol
    /// failed): the transaction is aborted everywhere until ROLLBACK.
    failed: bool,
    /// Cross-shard results the client reads in parts (portals with a row limit, cursors).
    pub(crate) held: crate::held::HeldResults,
}

/// Most transaction-control statements remembered for replay; more are refused.
const MAX_LOCALS: usize = 256;

impl TxnShards {
    /// How many savepoints are open.
    pub(crate) fn savepoint_depth(&self) -> usize {
        self.savepoints.depth()
    }

    /// Whether other shards are in the transaction.
    pub(crate) fn is_multi(&self) -> bool {
        !self.others.is_empty()
    }

    pub(crate) fn failed(&self) -> bool {
        self.failed
    }

    pub(crate) fn set_failed(&mut self) {
        self.failed = true;
    }

    /// `ROLLBACK TO` a savepoint succeeded everywhere: the transaction goes on.
    pub(crate) fn clear_failed(&mut self) {
        self.failed = false;
    }

    /// A statement of the transaction, seen while the session is attached: remembered when it
    /// must be replayed on a shard that joins later.
    pub(crate) fn note(&mut self, sql: &str, control: &Control) {
        match control {
            Control::Local if self.locals.len() < MAX_LOCALS => self.locals.push(sql.to_owned()),
            Control::Savepoint(_) | Control::Release(_) | Control::RollbackTo(_) => {
                self.savepoints.note(control);
                // Portals and cursors opened inside a savepoint rolled back to are gone, as
                // in PostgreSQL; a released one's belong to the level around it.
                let depth = self.savepoints.depth();
                match control {
                    Control::Release(_) => self.held.released_to(depth),
                    Control::RollbackTo(_) => self.held.rolled_back_to(depth),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// The participant on `shard`, taken out (the session attaches to it).
    pub(crate) fn take(&mut self, shard: ShardIndex) -> Option<Participant> {
        let i = self.others.iter().position(|p| p.shard == shard)?;
        Some(self.others.swap_remove(i))
    }

    pub(crate) fn put(&mut self, p: Participant) {
        self.others.push(p);
    }

    /// Every waiting participant, taken (at the end of the transaction).
    pub(crate) fn take_all(&mut self) -> Vec<Participant> {
        std::mem::take(&mut self.others)
    }

    /// The transaction ended: forget it.
    pub(crate) fn reset(&mut self) {
        debug_assert!(self.others.is_empty());
        self.begin = None;
        self.locals.clear();
        self.savepoints.clear();
        self.failed = false;
        self.held.clear();
    }

    /// The statements that open the transaction on a joining shard.
    pub(crate) fn join_sql(&self) -> Option<String> {
        let begin = self.begin.as_ref()?;
        let mut sql = begin.clone();
        for s in self.locals.iter().cloned().chain(self.savepoints.replay()) {
            sql.push_str("; ");
            sql.push_str(&s);
        }
        Some(sql)
    }

    /// The transaction's `SET LOCAL` / `SET TRANSACTION` statements, in order.
    pub(crate) fn locals(&self) -> &[String] {
        &self.locals
    }

    pub(crate) fn set_begin(&mut self, begin: String) {
        self.begin = Some(begin);
    }
}

/// The connections of `shards`, in that order: the attached one (`server`, on `here`) when
/// its shard is among them, and the participants taken out for the statement.
pub(crate) fn in_shard_order<'a>(
    shards: &[ShardIndex],
    here: ShardIndex,
    server: &'a mut shardgate_pool::ServerConn,
    taken: &'a mut [Participant],
) -> Vec<(ShardIndex, &'a mut shardgate_pool::ServerConn)> {
    let mut by_shard: Vec<(ShardIndex, &mut shardgate_pool::ServerConn)> = Vec::new();
    if shards.contains(&here) {
        by_shard.push((here, server));
    }
    for p in taken.iter_mut() {
        by_shard.push((p.shard, &mut *p.conn));
    }
    by_shard.sort_by_key(|(s, _)| shards.iter().position(|x| x == s));
    by_shard
}

impl crate::session::Session {
    /// The connections of a statement over several shards as members named by their shard.
    pub(crate) fn shard_members<'a>(
        &self,
        conns: impl IntoIterator<Item = (ShardIndex, &'a mut shardgate_pool::ServerConn)>,
    ) -> Vec<fanout::Member<'a>> {
        conns
            .into_iter()
            .map(|(s, conn)| fanout::Member {
                name: self.shard_name(s),
                conn,
            })
            .collect()
    }
}

/// `BEGIN` with the transaction characteristics read from a participant (`SHOW`s' values).
pub(crate) fn begin_statement(isolation: &str, read_only: bool, deferrable: bool) -> String {
    let level = match isolation {
        "serializable" => "SERIALIZABLE",
        "repeatable read" => "REPEATABLE READ",
        "read uncommitted" => "READ UNCOMMITTED",
        _ => "READ COMMITTED",
    };
    let mut sql = format!("BEGIN ISOLATION LEVEL {level}");
    if read_only {
        sql.push_str(" READ ONLY");
    }
    if deferrable {
        sql.push_str(" DEFERRABLE");
    }
    sql
}
