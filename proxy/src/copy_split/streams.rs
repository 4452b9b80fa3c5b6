//! The shards' side of a split COPY: one `COPY … FROM STDIN` open on each shard, a bounded
//! buffer of rows per shard sent as one CopyData message when it fills, and the end (CopyDone
//! or CopyFail) with each shard's answer.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use shardgate_pool::ServerError;
use shardgate_wire::{backend, frontend, Frame};

use crate::multi_txn::fanout::{run_messages, Member, Outcome};
use crate::scatter::join_all;

/// A shard's buffer is sent once it holds this much.
const FLUSH_AT: usize = 64 * 1024;
/// Longest wait for a shard to start the COPY, take a buffer or finish.
const SHARD_TIMEOUT: Duration = Duration::from_secs(30);
/// The CopyData header (tag, length) reserved at the front of each buffer.
const HEADER: usize = 5;

/// How starting the COPY went on the shards.
pub(crate) enum Started {
    /// Every shard is in COPY IN mode; the first shard's CopyInResponse (the client's).
    All(Frame),
    /// A shard refused or was lost (the others were ended with CopyFail): its index and
    /// outcome.
    Failed(usize, Outcome),
}

/// One shard's COPY stream per member, members in ring order of their shards.
pub(crate) struct Streams<'s, 'c> {
    members: &'s mut [Member<'c>],
    buffers: Vec<BytesMut>,
}

impl<'s, 'c> Streams<'s, 'c> {
    pub(crate) fn new(members: &'s mut [Member<'c>]) -> Self {
        let buffers = members.iter().map(|_| empty_buffer()).collect();
        Streams { members, buffers }
    }

    pub(crate) fn name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// Sends `sql` (the client's COPY) to every shard and waits for each CopyInResponse.
    pub(crate) async fn start(&mut self, sql: &str) -> Started {
        let runs = self
            .members
            .iter_mut()
            .map(|m| async move { start_one(m, sql).await })
            .collect();
        let outcomes: Vec<Result<Frame, Outcome>> = join_all(runs).await;
        let mut first_response = None;
        let mut failure = None;
        for (i, o) in outcomes.into_iter().enumerate() {
            match o {
                Ok(response) => {
                    first_response.get_or_insert(response);
                }
                Err(outcome) => {
                    failure.get_or_insert((i, outcome));
                }
            }
        }
        match (failure, first_response) {
            (None, Some(response)) => Started::All(response),
            (Some((i, outcome)), _) => {
                // Shards that did start are ended; their answers do not matter.
                let started: Vec<usize> = (0..self.members.len()).filter(|j| *j != i).collect();
                self.end_some(&started, Some("another shard refused the COPY"))
                    .await;
                Started::Failed(i, outcome)
            }
            (None, None) => Started::Failed(
                0,
                Outcome::Lost(ServerError::Protocol("no shard to COPY into".into())),
            ),
        }
    }

    /// Queues `bytes` for shard position `i`.
    pub(crate) fn push(&mut self, i: usize, bytes: &[u8]) {
        if let Some(b) = self.buffers.get_mut(i) {
            b.extend_from_slice(bytes);
        }
    }

    /// Queues `bytes` for every shard.
    pub(crate) fn push_all(&mut self, bytes: &[u8]) {
        for b in &mut self.buffers {
            b.extend_from_slice(bytes);
        }
    }

    /// Sends the buffers that are full (all of them with `all`).
    pub(crate) async fn flush(&mut self, all: bool) -> Result<(), (usize, ServerError)> {
        for i in 0..self.buffers.len() {
            let len = self.buffers[i].len() - HEADER;
            if len == 0 || (!all && len < FLUSH_AT) {
                continue;
            }
            let mut message = std::mem::replace(&mut self.buffers[i], empty_buffer());
            let framed = u32::try_from(len + 4).unwrap_or(u32::MAX);
            message[1..HEADER].copy_from_slice(&framed.to_be_bytes());
            let conn = &mut *self.members[i].conn;
            match tokio::time::timeout(SHARD_TIMEOUT, conn.write_all(&message)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err((i, e)),
                Err(_) => {
                    conn.mark_broken();
                    return Err((
                        i,
                        ServerError::Protocol(format!("took no COPY data for {SHARD_TIMEOUT:?}")),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Ends the COPY on every shard: CopyDone after the rest of the rows, or CopyFail with
    /// `fail`. Each shard's answer up to ReadyForQuery, in member order.
    pub(crate) async fn end(&mut self, fail: Option<&str>) -> Vec<Outcome> {
        if fail.is_none() {
            if let Err((i, e)) = self.flush(true).await {
                self.members[i].conn.mark_broken();
                let all: Vec<usize> = (0..self.members.len()).filter(|j| *j != i).collect();
                self.end_some(&all, Some("a shard was lost during the COPY"))
                    .await;
                return (0..self.members.len())
                    .map(|j| {
                        if j == i {
                            Outcome::Lost(ServerError::Protocol(e.to_string()))
                        } else {
                            Outcome::Refused(copy_failed_frame())
                        }
                    })
                    .collect();
            }
        }
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.end_some(&all, fail).await
    }

    async fn end_some(&mut self, chosen: &[usize], fail: Option<&str>) -> Vec<Outcome> {
        let runs = self
            .members
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| chosen.contains(i))
            .map(|(_, m)| async move { end_one(m, fail).await })
            .collect();
        join_all(runs).await
    }
}

fn empty_buffer() -> BytesMut {
    let mut b = BytesMut::with_capacity(FLUSH_AT + 8 * 1024);
    b.put_u8(frontend::COPY_DATA);
    b.put_u32(0);
    b
}

/// A stand-in answer for a shard ended because another failed.
fn copy_failed_frame() -> Frame {
    let mut out = BytesMut::new();
    backend::write_error(
        &mut out,
        backend::Severity::Error,
        shardgate_wire::sqlstate::QUERY_CANCELED,
        "COPY ended because another shard failed",
        None,
    );
    Frame::from_bytes(out.freeze())
}

/// Starts the COPY on one shard: its CopyInResponse, or how it failed (read up to its
/// ReadyForQuery when it refused).
async fn start_one(m: &mut Member<'_>, sql: &str) -> Result<Frame, Outcome> {
    let run = async {
        let mut out = BytesMut::with_capacity(sql.len() + 6);
        frontend::write_query(&mut out, sql);
        m.conn.write_all(&out).await?;
        let mut error = None;
        loop {
            let frame = m.conn.read_frame().await?;
            match frame.tag() {
                backend::COPY_IN_RESPONSE => return Ok(Ok(frame)),
                backend::ERROR_RESPONSE => {
                    error.get_or_insert(frame);
                }
                backend::READY_FOR_QUERY => {
                    return Ok(Err(error.unwrap_or_else(copy_failed_frame)));
                }
                backend::COPY_OUT_RESPONSE | backend::COPY_BOTH_RESPONSE => {
                    m.conn.mark_broken();
                    return Err(ServerError::Protocol(
                        "the shard answered COPY FROM STDIN with another COPY mode".into(),
                    ));
                }
                _ => {}
            }
        }
    };
    match tokio::time::timeout(SHARD_TIMEOUT, run).await {
        Ok(Ok(Ok(response))) => Ok(response),
        Ok(Ok(Err(error))) => Err(Outcome::Refused(error)),
        Ok(Err(e)) => Err(Outcome::Lost(e)),
        Err(_) => {
            m.conn.mark_broken();
            Err(Outcome::Lost(ServerError::Protocol(format!(
                "did not start the COPY within {SHARD_TIMEOUT:?}"
            ))))
        }
    }
}

/// Sends CopyDone (or CopyFail) to one shard and reads its answer up to ReadyForQuery.
async fn end_one(m: &mut Member<'_>, fail: Option<&str>) -> Outcome {
    let mut out = BytesMut::new();
    match fail {
        None => frontend::write_message(&mut out, frontend::COPY_DONE, |_| {}),
        Some(why) => frontend::write_message(&mut out, frontend::COPY_FAIL, |b| {
            b.extend_from_slice(why.as_bytes());
            b.put_u8(0);
        }),
    }
    run_messages(m.conn, &out).await
}

/// The row count of a shard's `COPY n` tag.
pub(crate) fn copied_rows(frames: &[Frame]) -> u64 {
    frames
        .iter()
        .find(|f| f.tag() == backend::COMMAND_COMPLETE)
        .and_then(|f| std::str::from_utf8(f.body()).ok())
        .and_then(|t| t.trim_end_matches('\0').rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0)
}
