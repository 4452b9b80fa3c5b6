//! Where the client's request stream stands between messages: between batches (a Sync or
//! Query was the last), between the statements of a pipelined batch (after an Execute), or
//! inside one. The session routes at the first two.

use shardgate_wire::frontend;

/// Where a client message leaves its request stream (see `Session::boundary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Boundary {
    /// Between batches.
    Request,
    /// Between the statements of a pipelined batch (after an Execute).
    Statement,
    Inside,
}

impl Boundary {
    pub(crate) fn after(tag: u8) -> Boundary {
        if ends_batch(tag) {
            Boundary::Request
        } else if tag == frontend::EXECUTE {
            Boundary::Statement
        } else {
            Boundary::Inside
        }
    }
}

/// Messages after which the client waits for replies: the end of a batch.
pub(crate) fn ends_batch(tag: u8) -> bool {
    matches!(
        tag,
        frontend::SYNC | frontend::QUERY | frontend::FUNCTION_CALL | frontend::FLUSH
    )
}
