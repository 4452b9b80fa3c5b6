//! The client's transaction as the proxy sees it: the status it last reported, a BEGIN the
//! proxy answered itself and holds back until the transaction's first statement says which
//! shard it belongs to, and the session effects (SET, prepared statements by SQL, …) that
//! become the client's state only if the transaction commits; and, for a transaction on
//! several shards, its participants besides the attached connection (`multi_txn::TxnShards`).

use shardgate_wire::backend::TransactionStatus;

use crate::multi_txn::TxnShards;
use crate::session_state::SessionEffect;

pub(crate) struct TxnState {
    /// Transaction status as last reported to the client.
    status: TransactionStatus,
    /// A BEGIN answered by the proxy, sent to the server once the transaction's first
    /// statement says which shard it belongs to.
    deferred_begin: Option<String>,
    /// The deferred BEGIN opens a read-only transaction.
    deferred_read_only: bool,
    /// Session effects seen in the current transaction, applied when it commits.
    pending_effects: Vec<SessionEffect>,
    /// The server reported an error in the current transaction.
    failed: bool,
    /// A ROLLBACK completed while effects were pending.
    saw_rollback: bool,
    /// The transaction on shards other than the attached one.
    shards: TxnShards,
    /// The parked batch was read inside a transaction and may need other shards.
    parked_in_transaction: bool,
}

/// How a transaction with session effects ended (see [`TxnState::settle`]).
pub(crate) struct Settled {
    pub effects: Vec<SessionEffect>,
    /// Neither an error nor a ROLLBACK was seen: the effects hold.
    pub committed: bool,
}

impl Default for TxnState {
    fn default() -> TxnState {
        TxnState {
            status: TransactionStatus::Idle,
            deferred_begin: None,
            deferred_read_only: false,
            pending_effects: Vec::new(),
            failed: false,
            saw_rollback: false,
            shards: TxnShards::default(),
            parked_in_transaction: false,
        }
    }
}

impl TxnState {
    pub(crate) fn status(&self) -> TransactionStatus {
        self.status
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.status == TransactionStatus::Idle
    }

    pub(crate) fn set_status(&mut self, status: TransactionStatus) {
        self.status = status;
    }

    /// The proxy answered `sql` (a BEGIN): the client is in a transaction whose BEGIN goes to
    /// the server with its first statement.
    pub(crate) fn defer_begin(&mut self, sql: String, read_only: bool) {
        self.deferred_begin = Some(sql);
        self.deferred_read_only = read_only;
        self.status = TransactionStatus::InTransaction;
    }

    /// `SET TRANSACTION …` right after a deferred BEGIN goes out with it; false when no BEGIN
    /// is deferred.
    pub(crate) fn extend_deferred_begin(&mut self, sql: &str, read_only: bool) -> bool {
        let Some(begin) = self.deferred_begin.as_mut() else {
            return false;
        };
        begin.push_str("; ");
        begin.push_str(sql);
        self.deferred_read_only |= read_only;
        true
    }

    /// The deferred transaction ended before any statement (COMMIT or ROLLBACK answered by
    /// the proxy): nothing reaches a server.
    pub(crate) fn drop_deferred_begin(&mut self) {
        self.deferred_begin = None;
        self.status = TransactionStatus::Idle;
    }

    pub(crate) fn has_deferred_begin(&self) -> bool {
        self.deferred_begin.is_some()
    }

    /// Whether the deferred BEGIN opens a read-only transaction; `None` without one.
    pub(crate) fn deferred_read_only(&self) -> Option<bool> {
        self.deferred_begin
            .as_ref()
            .map(|_| self.deferred_read_only)
    }

    /// Takes the deferred BEGIN, to send it ahead of the transaction's first statement.
    pub(crate) fn take_deferred_begin(&mut self) -> Option<String> {
        self.deferred_begin.take()
    }

    /// Session effects of a statement in this transaction.
    pub(crate) fn note_effects(&mut self, effects: impl IntoIterator<Item = SessionEffect>) {
        self.pending_effects.extend(effects);
    }

    /// The server reported an error.
    pub(crate) fn note_error(&mut self) {
        self.failed = true;
    }

    /// A CommandComplete with this body: a ROLLBACK undoes the pending effects.
    pub(crate) fn note_command_complete(&mut self, body: &[u8]) {
        if !self.pending_effects.is_empty() && body.starts_with(b"ROLLBACK") {
            self.saw_rollback = true;
        }
    }

    /// The transaction ended (ReadyForQuery `I`): its session effects, if any, and whether
    /// they hold.
    pub(crate) fn settle(&mut self) -> Option<Settled> {
        let settled = (!self.pending_effects.is_empty()).then(|| Settled {
            effects: std::mem::take(&mut self.pending_effects),
            committed: !self.failed && !self.saw_rollback,
        });
        self.failed = false;
        self.saw_rollback = false;
        settled
    }

    /// The transaction's participants besides the attached connection, and what a joining
    /// shard replays.
    pub(crate) fn shards(&self) -> &TxnShards {
        &self.shards
    }

    pub(crate) fn shards_mut(&mut self) -> &mut TxnShards {
        &mut self.shards
    }

    /// The batch just parked was read inside a transaction: once the request before it is
    /// done, ask again whether it needs other shards.
    pub(crate) fn park_batch_in_transaction(&mut self) {
        self.parked_in_transaction = true;
    }

    /// Whether the parked batch was read inside a transaction (and forgets it).
    pub(crate) fn take_parked_in_transaction(&mut self) -> bool {
        std::mem::take(&mut self.parked_in_transaction)
    }

    /// The server connection was lost: its pending effects are gone with it.
    pub(crate) fn abandon_effects(&mut self) {
        self.pending_effects.clear();
    }
}
