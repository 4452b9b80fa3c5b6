//! Pipelined batches inside a multi-shard transaction (JDBC's executeBatch): after each
//! Execute the batch's next statement is routed on its own, and the session switches shards
//! between statements when it must.

use shardgate_wire::backend::TransactionStatus;
use shardgate_wire::{frontend, Frame};

use crate::boundary::ends_batch;
use crate::session::Session;

impl Session {
    /// Inside a multi-shard transaction, after an Execute of a pipelined batch: whether the
    /// batch's next statement (its messages up to its Bind or Query, in `rest`) belongs on
    /// another shard. If so the statements sent so far are flushed, to be answered before the
    /// session switches.
    pub(crate) fn next_statement_elsewhere(
        &mut self,
        rest: &[Frame],
        status: TransactionStatus,
    ) -> bool {
        if self.replies.refusing() {
            return false;
        }
        let Some(end) = rest.iter().position(|f| {
            matches!(f.tag(), frontend::BIND | frontend::QUERY) || ends_batch(f.tag())
        }) else {
            return false;
        };
        if !self.needs_txn_shards(&rest[..=end], status) {
            return false;
        }
        self.flush_statements_before_switch();
        true
    }

    /// The statements of a pipelined batch sent so far are answered only at a Flush or Sync,
    /// which the client sends later: a Flush of the proxy's own gets their replies before the
    /// session switches to another shard for the batch's next statement.
    pub(crate) fn flush_statements_before_switch(&mut self) {
        frontend::write_message(self.attachment.outgoing(), frontend::FLUSH, |_| {});
    }
}
