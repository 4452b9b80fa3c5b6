//! One shard's side of a scatter: the replies of one server connection read in three steps —
//! the prelude (ParseComplete … RowDescription), the rows one at a time, and the rest up to
//! ReadyForQuery — so that the merge can pull rows from each shard as it needs them and every
//! connection is left idle at ReadyForQuery whatever happens. Also a small `join_all` to run
//! one step on every shard at once (the proxy does not depend on the `futures` crate).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use shardgate_pool::{ServerConn, ServerError};
use shardgate_wire::backend;
use shardgate_wire::Frame;
use tracing::debug;

/// Where a shard's reply stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Prelude,
    Rows,
    /// The statement finished (CommandComplete, EmptyQueryResponse) or failed; ReadyForQuery
    /// is still to come.
    Finished,
    /// ReadyForQuery was read: the connection is idle.
    Idle,
}

/// A server connection running one cross-shard statement.
pub(crate) struct ShardStream<'c> {
    pub conn: &'c mut ServerConn,
    pub name: &'c str,
    /// Replies before the rows, in order (ParseComplete, ParameterDescription,
    /// RowDescription/NoData, BindComplete, RowDescription/NoData).
    pub prelude: Vec<Frame>,
    /// CommandComplete or EmptyQueryResponse, once read.
    pub completion: Option<Frame>,
    /// The shard's ErrorResponse, if it sent one.
    pub error: Option<Frame>,
    /// A DataRow read while looking for the end of the prelude, or put back by the merge.
    head: Option<Frame>,
    phase: Phase,
    extended: bool,
    bind_seen: bool,
    /// A portal read in batches (`crate::held`): at PortalSuspended the next batch is asked
    /// for when the merge wants another row.
    batches: Option<Batches>,
    /// Rows of an earlier batch kept while the portal was parked, read before the socket's.
    kept: VecDeque<Frame>,
    /// The portal said PortalSuspended: it has more rows.
    more: bool,
}

/// A named portal on the shard, read `rows` at a time.
#[derive(Debug, Clone)]
pub(crate) struct Batches {
    pub portal: String,
    pub rows: i32,
}

/// A shard's side of a portal parked between the client's Executes: the rows read from the
/// current batch (at most one batch, and the merge's head row), and whether the portal has
/// more. The connection is idle.
#[derive(Debug, Default)]
pub(crate) struct ParkedShard {
    pub rows: VecDeque<Frame>,
    pub more: bool,
}

impl<'c> ShardStream<'c> {
    pub fn new(conn: &'c mut ServerConn, name: &'c str, extended: bool) -> Self {
        ShardStream {
            conn,
            name,
            prelude: Vec::new(),
            completion: None,
            error: None,
            head: None,
            phase: Phase::Prelude,
            extended,
            bind_seen: false,
            batches: None,
            kept: VecDeque::new(),
            more: false,
        }
    }

    /// Reads a portal in batches (the statement was sent with Execute of `batches.rows`).
    pub fn in_batches(mut self, batches: Batches) -> Self {
        self.batches = Some(batches);
        self
    }

    /// A parked portal's stream again, on its (idle) connection.
    pub fn resumed(
        conn: &'c mut ServerConn,
        name: &'c str,
        batches: Batches,
        parked: ParkedShard,
    ) -> Self {
        let mut s = ShardStream::new(conn, name, true).in_batches(batches);
        s.kept = parked.rows;
        s.more = parked.more;
        s.phase = Phase::Idle;
        s
    }

    /// Gives a row back: the next `next_row` returns it (the merge stopped at its limit with
    /// this shard's head row not written).
    pub fn unread(&mut self, row: Frame) {
        if let Some(h) = self.head.replace(row) {
            self.kept.push_front(h);
        }
    }

    /// Reads the rest of the current batch and the ReadyForQuery after it: the connection is
    /// idle, and the rows not merged yet are returned with whether the portal has more.
    /// `error` holds the shard's error if it sent one.
    pub async fn park(&mut self) -> Result<ParkedShard, ServerError> {
        let mut rows: VecDeque<Frame> = self.head.take().into_iter().collect();
        rows.append(&mut self.kept);
        while self.phase == Phase::Rows {
            let frame = self.conn.read_frame().await?;
            if self.common(&frame)? {
                continue;
            }
            match frame.tag() {
                backend::DATA_ROW => rows.push_back(frame),
                other => {
                    return Err(self
                        .protocol_error(format!("message '{}' among the rows", char::from(other))))
                }
            }
        }
        self.finish().await?;
        Ok(ParkedShard {
            rows,
            more: self.more && self.error.is_none(),
        })
    }

    /// Asks a suspended portal for its next batch, once the last one's ReadyForQuery is read.
    async fn next_batch(&mut self) -> Result<(), ServerError> {
        let Some(b) = &self.batches else {
            return Ok(());
        };
        let mut out = bytes::BytesMut::new();
        shardgate_wire::frontend::write_message(&mut out, shardgate_wire::frontend::EXECUTE, |m| {
            shardgate_wire::frontend::put_cstr(m, &b.portal);
            m.extend_from_slice(&b.rows.to_be_bytes());
        });
        shardgate_wire::frontend::write_sync(&mut out);
        self.finish().await?;
        self.conn.write_all(&out).await?;
        self.more = false;
        self.completion = None;
        self.phase = Phase::Rows;
        Ok(())
    }

    fn protocol_error(&mut self, what: String) -> ServerError {
        debug!(shard = self.name, conn = self.conn.id(), %what, "unexpected reply during a cross-shard read");
        self.conn.mark_broken();
        ServerError::Protocol(what)
    }

    /// Handles a reply that may come at any point; `Ok(true)` when it was consumed.
    fn common(&mut self, frame: &Frame) -> Result<bool, ServerError> {
        match frame.tag() {
            // Asynchronous messages: nothing for the merged result.
            backend::NOTICE_RESPONSE
            | backend::PARAMETER_STATUS
            | backend::NOTIFICATION_RESPONSE => Ok(true),
            backend::ERROR_RESPONSE => {
                self.error.get_or_insert_with(|| frame.clone());
                self.phase = Phase::Finished;
                Ok(true)
            }
            backend::COMMAND_COMPLETE
            | backend::EMPTY_QUERY_RESPONSE
            | backend::PORTAL_SUSPENDED => {
                self.more = frame.tag() == backend::PORTAL_SUSPENDED;
                self.completion = Some(frame.clone());
                self.phase = Phase::Finished;
                Ok(true)
            }
            backend::READY_FOR_QUERY => {
                self.phase = Phase::Idle;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Reads up to the first row: the prelude replies, or the statement's end or error.
    pub async fn read_prelude(&mut self) -> Result<(), ServerError> {
        while self.phase == Phase::Prelude {
            let frame = self.conn.read_frame().await?;
            if self.common(&frame)? {
                continue;
            }
            match frame.tag() {
                backend::PARSE_COMPLETE | backend::PARAMETER_DESCRIPTION => {
                    self.prelude.push(frame)
                }
                backend::BIND_COMPLETE => {
                    self.bind_seen = true;
                    self.prelude.push(frame);
                }
                backend::ROW_DESCRIPTION | backend::NO_DATA => {
                    // In the extended protocol the portal's description (after BindComplete)
                    // is the last prelude reply; a statement's comes before it.
                    let last = !self.extended || self.bind_seen;
                    self.prelude.push(frame);
                    if last {
                        self.phase = Phase::Rows;
                    }
                }
                backend::DATA_ROW if self.bind_seen || !self.extended => {
                    self.head = Some(frame);
                    self.phase = Phase::Rows;
                }
                other => {
                    return Err(self.protocol_error(format!(
                        "message '{}' before the rows",
                        char::from(other)
                    )))
                }
            }
        }
        Ok(())
    }

    /// The next DataRow, or `None` once the statement ended (check `error`).
    pub async fn next_row(&mut self) -> Result<Option<Frame>, ServerError> {
        if let Some(row) = self.head.take().or_else(|| self.kept.pop_front()) {
            return Ok(Some(row));
        }
        loop {
            while self.phase == Phase::Rows {
                let frame = self.conn.read_frame().await?;
                if self.common(&frame)? {
                    continue;
                }
                match frame.tag() {
                    backend::DATA_ROW => return Ok(Some(frame)),
                    other => {
                        return Err(self.protocol_error(format!(
                            "message '{}' among the rows",
                            char::from(other)
                        )))
                    }
                }
            }
            if self.batches.is_none() || !self.more || self.error.is_some() {
                return Ok(None);
            }
            self.next_batch().await?;
        }
    }

    /// Reads and drops everything up to ReadyForQuery (rows included), so the connection is
    /// idle again.
    pub async fn finish(&mut self) -> Result<(), ServerError> {
        self.finish_within(usize::MAX).await
    }

    /// Like [`finish`](Self::finish), but once more than `budget` bytes of rows were dropped
    /// the connection is marked broken instead (the pool closes it, and the server ends the
    /// statement when its next send fails): reading millions of rows for nobody costs more
    /// than a new connection.
    pub async fn finish_within(&mut self, budget: usize) -> Result<(), ServerError> {
        self.head = None;
        let mut dropped = 0usize;
        while self.phase != Phase::Idle {
            let frame = self.conn.read_frame().await?;
            if self.common(&frame)? {
                continue;
            }
            match frame.tag() {
                backend::DATA_ROW => {
                    dropped = dropped.saturating_add(frame.len());
                    if dropped > budget {
                        debug!(
                            shard = self.name,
                            conn = self.conn.id(),
                            "closing rather than draining the rest of a cross-shard result"
                        );
                        self.conn.mark_broken();
                        return Ok(());
                    }
                }
                backend::PARSE_COMPLETE
                | backend::BIND_COMPLETE
                | backend::PARAMETER_DESCRIPTION
                | backend::ROW_DESCRIPTION
                | backend::NO_DATA => {}
                backend::COPY_IN_RESPONSE
                | backend::COPY_OUT_RESPONSE
                | backend::COPY_BOTH_RESPONSE => {
                    return Err(
                        self.protocol_error("a COPY started during a cross-shard read".into())
                    )
                }
                other => {
                    return Err(self.protocol_error(format!(
                        "message '{}' before ReadyForQuery",
                        char::from(other)
                    )))
                }
            }
        }
        Ok(())
    }

    /// ReadyForQuery was read: the connection is idle.
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Idle
    }

    /// The prelude reply of type `tag`, the `nth` of its kind (0-based).
    pub fn prelude_reply(&self, tag: u8, nth: usize) -> Option<&Frame> {
        self.prelude.iter().filter(|f| f.tag() == tag).nth(nth)
    }
}

/// Runs all futures at once and returns their outputs in order.
pub(crate) async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn join_all_keeps_order_and_runs_concurrently() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let waiter =
            Box::pin(async move { rx.await.unwrap_or(0) }) as Pin<Box<dyn Future<Output = u32>>>;
        let sender = Box::pin(async move {
            tx.send(7).ok();
            1u32
        }) as Pin<Box<dyn Future<Output = u32>>>;
        assert_eq!(join_all(vec![waiter, sender]).await, vec![7, 1]);
    }
}
