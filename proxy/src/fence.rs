//! Rebalance fences as clients see them. At cutover the rebalancer fences the moving keys on
//! their old shard: a write to one fails there with `FENCE_SQLSTATE` until the new shard map
//! is out. The proxy hides that when it safely can:
//!
//! - a single simple-protocol statement outside a transaction, none of whose replies reached
//!   the client yet, is held until this proxy has a newer shard map and then sent again (to
//!   the new owner) as if the client had just sent it;
//! - anything else (inside a transaction, extended protocol, several statements in one Query)
//!   gets `40001 serialization_failure`, which clients and ORMs already retry.

use bytes::BytesMut;
use shardgate_topology::FENCE_SQLSTATE;
use shardgate_wire::backend::{self, Severity, TransactionStatus};
use shardgate_wire::{frontend, sqlstate, Frame};

use crate::session::Session;

const RETRY_HINT: &str = "a rebalance moved this key to another shard while the statement ran; \
    retry the transaction";

/// The statement that may be retried, and the one waiting to be.
#[derive(Debug, Default)]
pub(crate) struct FenceRetry {
    /// The lone simple-protocol Query on the server now, while none of its replies has
    /// reached the client, and the shard-map version it was routed by.
    armed: Option<(Frame, u64)>,
    /// A statement that hit a fence, to run again once a map newer than its version arrives.
    pending: Option<(Frame, u64)>,
}

impl FenceRetry {
    /// Called with each batch about to run: only a lone Query outside a transaction qualifies.
    pub(crate) fn arm(&mut self, batch: &[Frame], status: TransactionStatus, version: u64) {
        self.armed = match batch {
            // Whether it is one statement is asked only if a fence error comes (rarely: this
            // runs for every batch).
            [frame] if frame.tag() == frontend::QUERY && status == TransactionStatus::Idle => {
                Some((frame.clone(), version))
            }
            _ => None,
        };
    }

    /// The armed statement, if it is one statement that can be retried (see
    /// [`one_statement`]).
    fn take_retryable(&mut self) -> Option<(Frame, u64)> {
        self.armed.take().filter(|(frame, _)| one_statement(frame))
    }

    /// A reply went to the client: the statement can no longer be retried invisibly.
    pub(crate) fn disarm(&mut self) {
        self.armed = None;
    }

    pub(crate) fn take_pending(&mut self) -> Option<(Frame, u64)> {
        self.pending.take()
    }

    pub(crate) fn has_pending(&self) -> bool {
        self.pending.is_some()
    }
}

/// A Query of one statement. Several statements run as one implicit transaction whose first
/// results may already be on their way: only one statement is retried. (A `;` is the same byte
/// in every client encoding the proxy accepts.)
fn one_statement(query: &Frame) -> bool {
    frontend::query_text(query).is_ok_and(|t| {
        let end = t
            .iter()
            .rposition(|b| !b.is_ascii_whitespace() && *b != b';')
            .map_or(0, |i| i + 1);
        !t[..end].contains(&b';')
    })
}

/// The server's error is a rebalance fence.
pub(crate) fn is_fence(frame: &Frame) -> bool {
    backend::error_fields(frame).is_ok_and(|f| f.code == FENCE_SQLSTATE)
}

/// The fence error as clients get it: 40001, which drivers and ORMs know to retry.
pub(crate) fn write_retryable(out: &mut BytesMut, server_message: &str) {
    backend::write_error(
        out,
        Severity::Error,
        sqlstate::SERIALIZATION_FAILURE,
        &format!("could not complete the statement: {server_message}"),
        Some(RETRY_HINT),
    );
}

impl Session {
    /// A fence error from the server: either held for a retry (true: nothing goes to the
    /// client, and the ReadyForQuery that follows is swallowed too) or rewritten to 40001.
    pub(crate) fn on_fence_error(&mut self, frame: &Frame, only_query_pending: bool) -> bool {
        let message = backend::error_fields(frame)
            .map(|f| f.message)
            .unwrap_or_default();
        tracing::info!(client = self.client.id(), shard = self.attachment.shard(), %message, "write hit a rebalance fence");
        if let Some(armed) = self.fence.take_retryable() {
            if only_query_pending {
                self.fence.pending = Some(armed);
                return true;
            }
        }
        write_retryable(&mut self.io.out, &message);
        false
    }

    /// After the connection went back: wait for the new shard map and queue the held
    /// statement again, or answer 40001 when none comes within `rebalance.fence_wait`.
    pub(crate) async fn retry_fenced(&mut self) {
        let Some((frame, version)) = self.fence.take_pending() else {
            return;
        };
        let wait = self.shared.config().rebalance.fence_wait;
        if !self.parked.is_empty() {
            // The client already sent more (pipelined): its statement cannot be re-run ahead
            // of those invisibly, so it gets the retryable error in its place.
            write_retryable(&mut self.io.out, "the key is being moved by a rebalance");
            self.io.push_ready(self.txn.status());
            return;
        }
        if self.shared.wait_for_newer(version, wait).await {
            tracing::info!(
                client = self.client.id(),
                "retrying a fenced statement on the new shard map"
            );
            self.parked.insert(0, frame);
        } else {
            write_retryable(
                &mut self.io.out,
                &format!(
                    "the key is being moved by a rebalance (no new shard map within {wait:?})"
                ),
            );
            self.io.push_ready(self.txn.status());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(text: &str) -> Frame {
        let mut b = BytesMut::new();
        frontend::write_query(&mut b, text);
        Frame::from_bytes(b.freeze())
    }

    #[test]
    fn only_a_query_of_one_statement_is_retried() {
        let mut fence = FenceRetry::default();
        fence.arm(
            &[query("UPDATE t SET v = 1 WHERE id = 7;  ")],
            TransactionStatus::Idle,
            3,
        );
        assert_eq!(fence.take_retryable().map(|(_, v)| v), Some(3));
        fence.arm(
            &[query("UPDATE t SET v = 1; UPDATE t SET v = 2")],
            TransactionStatus::Idle,
            3,
        );
        assert!(fence.take_retryable().is_none());
        // A `;` inside a string only looks like two statements: the error goes to the client.
        fence.arm(&[query("select ';'")], TransactionStatus::Idle, 3);
        assert!(fence.take_retryable().is_none());
        // Inside a transaction, or a batch of several messages: never armed.
        fence.arm(&[query("select 1")], TransactionStatus::InTransaction, 3);
        assert!(fence.take_retryable().is_none());
        fence.arm(
            &[query("select 1"), query("select 2")],
            TransactionStatus::Idle,
            3,
        );
        assert!(fence.take_retryable().is_none());
        // A reply reached the client: disarmed.
        fence.arm(&[query("select 1")], TransactionStatus::Idle, 3);
        fence.disarm();
        assert!(fence.take_retryable().is_none());
    }
}
