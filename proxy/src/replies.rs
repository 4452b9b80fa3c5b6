//! The relay's reply queue: the replies the client is owed, in the order it must get them,
//! and what the client's messages up to its next Sync are worth after an error.
//!
//! Every message forwarded to the server queues the reply it will bring; work the proxy
//! answers itself queues a [`Synth`] reply, written only once every earlier reply has reached
//! the client. The session writes the bytes (client and server I/O stay in `Session`); this
//! part only keeps the order.

use std::collections::VecDeque;
use std::sync::Arc;

use shardgate_router::RouteError;

use crate::prepared::GlobalStatement;

/// A reply the session is waiting for, in the order the server will send them.
#[derive(Debug)]
pub enum Expect {
    /// ParseComplete for a Parse; forwarded to the client unless the proxy injected the Parse.
    /// `global` is the statement, so a failed Parse can be forgotten and an accepted one
    /// marked as such.
    Parse {
        global: Option<Arc<GlobalStatement>>,
        to_client: bool,
    },
    /// BindComplete; `global` is the client's named statement, if it has one.
    Bind {
        global: Option<Arc<GlobalStatement>>,
    },
    /// ParameterDescription then RowDescription/NoData.
    DescribeStatement,
    /// RowDescription/NoData.
    DescribePortal,
    /// Rows, then CommandComplete, PortalSuspended or EmptyQueryResponse.
    Execute,
    /// CloseComplete; forwarded unless the proxy closed an evicted statement.
    Close {
        to_client: bool,
    },
    Sync,
    /// A simple query or function call: everything up to ReadyForQuery.
    Query,
    /// A reply the proxy writes itself when every earlier reply has been delivered.
    Synth(Synth),
    /// Replies to a statement the proxy sent for itself (a deferred BEGIN): none reach the
    /// client, up to and including its ReadyForQuery.
    Swallow,
    /// The error of the Execute of a missing portal the proxy sends before the Sync of a batch
    /// it refused part of, outside a transaction: it aborts the server's implicit transaction,
    /// so the batch's earlier statements do not commit while the client gets an error (on
    /// PostgreSQL an error rolls the whole batch back). Nothing comes when the server was
    /// already skipping to the Sync after an error of its own.
    AbortImplicit,
}

#[derive(Debug, Clone)]
pub enum Synth {
    ParseComplete,
    CloseComplete,
    /// An error the proxy raised for a statement it did not forward.
    Error(Box<RouteError>),
    /// ReadyForQuery after such an error in a simple Query (status as of then).
    Ready,
}

/// What the server still owes for the client's requests, and whether the client's messages
/// are being dropped up to its next Sync.
#[derive(Debug, Default)]
pub(crate) struct ReplyQueue {
    expect: VecDeque<Expect>,
    /// After a statement refused mid-batch, or a server error before the batch's Sync came,
    /// the client's messages up to Sync are dropped (the server skips them too); the Sync
    /// itself is forwarded.
    refuse_until_sync: bool,
    /// After an error answered by the proxy with no server attached, messages up to the next
    /// Sync are discarded (as the server would), and the proxy answers that Sync itself.
    skip_until_sync: bool,
    /// The server is in COPY FROM STDIN mode and the client has not ended it: the server
    /// ignores Sync until CopyDone/CopyFail, so no ReadyForQuery answers one.
    copy_in: bool,
}

/// What a lost server connection left unanswered (see [`ReplyQueue::abandon`]).
pub(crate) struct Abandoned {
    /// Requests (one per Sync or Query) the client is waiting for.
    pub requests: usize,
    /// The client was mid-batch (its Sync had not come), or its messages were being refused
    /// up to a Sync it has not sent.
    pub unfinished_batch: bool,
}

impl ReplyQueue {
    /// Queues `e`; a synthesised reply with nothing ahead of it is handed back to be written
    /// at once instead.
    pub(crate) fn push(&mut self, e: Expect) -> Option<Synth> {
        match e {
            Expect::Synth(s) if self.expect.is_empty() => Some(s),
            e => {
                self.expect.push_back(e);
                None
            }
        }
    }

    /// Takes the synthesised reply at the front, now that every earlier reply went out.
    pub(crate) fn pop_synth(&mut self) -> Option<Synth> {
        if !matches!(self.expect.front(), Some(Expect::Synth(_))) {
            return None;
        }
        match self.expect.pop_front() {
            Some(Expect::Synth(s)) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.expect.is_empty()
    }

    pub(crate) fn front(&self) -> Option<&Expect> {
        self.expect.front()
    }

    /// The server's rows may go to the client as they come: the reply ahead is not one the
    /// relay swallows or first checks for an error.
    pub(crate) fn passes_rows(&self) -> bool {
        !matches!(self.front(), Some(Expect::AbortImplicit | Expect::Swallow))
    }

    pub(crate) fn pop_front(&mut self) -> Option<Expect> {
        self.expect.pop_front()
    }

    /// Pops the front reply unless it is a simple Query's (which lasts to ReadyForQuery).
    pub(crate) fn pop_unless_query(&mut self) {
        if !matches!(self.expect.front(), Some(Expect::Query) | None) {
            self.expect.pop_front();
        }
    }

    /// Whether the only request outstanding is one simple Query.
    pub(crate) fn only_query(&self) -> bool {
        self.expect.len() == 1 && matches!(self.expect.front(), Some(Expect::Query))
    }

    /// After an error in the extended protocol the server skips everything up to the next
    /// Sync: drops the replies queued before it (synthesised ones too), calling
    /// `forget_parse` for each statement whose Parse will not happen. When the client's Sync
    /// has not come yet, its messages until then are refused as well.
    pub(crate) fn skip_to_sync(&mut self, mut forget_parse: impl FnMut(&Arc<GlobalStatement>)) {
        while let Some(e) = self.expect.front() {
            if matches!(e, Expect::Sync) {
                break;
            }
            if let Some(Expect::Parse {
                global: Some(stmt), ..
            }) = self.expect.pop_front()
            {
                forget_parse(&stmt);
            }
        }
        if self.expect.is_empty() {
            self.refuse_until_sync = true;
        }
    }

    /// The statements whose Parse is queued (they will exist on the server connection).
    pub(crate) fn queued_parses(&self) -> impl Iterator<Item = &Arc<GlobalStatement>> {
        self.expect.iter().filter_map(|e| match e {
            Expect::Parse {
                global: Some(stmt), ..
            } => Some(stmt),
            _ => None,
        })
    }

    /// The server entered COPY FROM STDIN: Syncs the client sent after the Execute (or Query)
    /// that started it, before ending it, are ignored by the server, so no ReadyForQuery
    /// comes for them.
    pub(crate) fn start_copy_in(&mut self) {
        self.copy_in = true;
        while matches!(self.expect.get(1), Some(Expect::Sync)) {
            self.expect.remove(1);
        }
    }

    pub(crate) fn end_copy_in(&mut self) {
        self.copy_in = false;
    }

    pub(crate) fn in_copy_in(&self) -> bool {
        self.copy_in
    }

    /// The server connection is gone: forgets every reply, and says what the client still
    /// waits for.
    pub(crate) fn abandon(&mut self) -> Abandoned {
        let requests = self
            .expect
            .iter()
            .filter(|e| matches!(e, Expect::Sync | Expect::Query))
            .count();
        let unfinished = !matches!(
            self.expect.back(),
            None | Some(Expect::Sync | Expect::Query)
        );
        self.expect.clear();
        self.copy_in = false;
        Abandoned {
            requests,
            // (Also when an error already made the server skip to a Sync the client has not
            // sent: the next connection must not see the rest of that batch.)
            unfinished_batch: unfinished || std::mem::take(&mut self.refuse_until_sync),
        }
    }

    /// Drops the client's messages up to its next Sync (which is forwarded).
    pub(crate) fn refuse_rest_of_batch(&mut self) {
        self.refuse_until_sync = true;
    }

    pub(crate) fn refusing(&self) -> bool {
        self.refuse_until_sync
    }

    /// Whether a client message with `tag` is handled while attached: after a refusal,
    /// messages up to the next Sync are dropped; that Sync ends the refusal.
    pub(crate) fn admits(&mut self, tag: u8) -> bool {
        if self.refuse_until_sync {
            if tag != shardgate_wire::frontend::SYNC {
                return false;
            }
            self.refuse_until_sync = false;
        }
        true
    }

    /// Discards the client's messages up to its next Sync, answered by the proxy (no server
    /// is attached).
    pub(crate) fn skip_rest_of_batch(&mut self) {
        self.skip_until_sync = true;
    }

    pub(crate) fn skipping(&self) -> bool {
        self.skip_until_sync
    }

    pub(crate) fn stop_skipping(&mut self) {
        self.skip_until_sync = false;
    }
}
