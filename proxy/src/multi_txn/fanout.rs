//! Running one statement on several shards' connections at once, and what came of it.

use std::time::Duration;

use bytes::BytesMut;
use shardgate_pool::{ServerConn, ServerError};
use shardgate_wire::backend::{self, CursorPosition};
use shardgate_wire::{sqlstate, Frame};

use crate::scatter::join_all;

/// Longest wait for one transaction-control statement on one shard; past it the connection is
/// closed (which ends its transaction, or leaves a prepared one to recovery).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// One shard's connection in the transaction.
pub(crate) struct Member<'a> {
    pub(crate) name: String,
    pub(crate) conn: &'a mut ServerConn,
}

/// Why a COMMIT did not commit: the ErrorResponse for the client.
pub(crate) struct TxnError(pub(crate) BytesMut);

impl TxnError {
    pub(crate) fn new(code: &str, message: &str, hint: Option<&str>) -> TxnError {
        let mut out = BytesMut::new();
        backend::write_error(&mut out, backend::Severity::Error, code, message, hint);
        TxnError(out)
    }

    /// A shard's own ErrorResponse, its message prefixed with the shard's name.
    pub(crate) fn from_shard(name: &str, frame: &Frame, what: &str) -> TxnError {
        let mut out = BytesMut::new();
        if backend::write_error_with_prefix(
            &mut out,
            frame,
            &format!("shard {name}: {what}"),
            CursorPosition::Keep,
        )
        .is_err()
        {
            out.extend_from_slice(frame.as_bytes());
        }
        TxnError(out)
    }

    fn lost(name: &str, e: &ServerError, what: &str) -> TxnError {
        TxnError::new(
            sqlstate::CONNECTION_FAILURE,
            &format!("shard {name}: {what}lost the connection: {e}"),
            Some("the transaction was rolled back; retry it"),
        )
    }
}

/// How one statement went on one shard.
pub(crate) enum Outcome {
    Done(Vec<Frame>),
    /// The server answered with this ErrorResponse.
    Refused(Frame),
    Lost(ServerError),
}

impl Outcome {
    pub(crate) fn ok(&self) -> bool {
        matches!(self, Outcome::Done(_))
    }
}

pub(crate) async fn run_one(conn: &mut ServerConn, sql: &str) -> Outcome {
    let replies = tokio::time::timeout(CONTROL_TIMEOUT, conn.query_frames(sql)).await;
    outcome(conn, replies)
}

/// A statement's replies (read within the control timeout) as its outcome; a connection that
/// did not answer in time is closed.
fn outcome(
    conn: &mut ServerConn,
    replies: Result<Result<Vec<Frame>, ServerError>, tokio::time::error::Elapsed>,
) -> Outcome {
    match replies {
        Ok(Ok(frames)) => match frames.iter().find(|f| f.tag() == backend::ERROR_RESPONSE) {
            Some(e) => Outcome::Refused(e.clone()),
            None => Outcome::Done(frames),
        },
        Ok(Err(e)) => Outcome::Lost(e),
        Err(_) => {
            conn.mark_broken();
            Outcome::Lost(ServerError::Protocol(format!(
                "no answer within {CONTROL_TIMEOUT:?}"
            )))
        }
    }
}

/// Runs `sql(member)` on the chosen members at the same time; outcomes in member order.
pub(crate) async fn run_each<F>(
    members: &mut [Member<'_>],
    chosen: &[usize],
    sql: F,
) -> Vec<Outcome>
where
    F: Fn(&str) -> String,
{
    let runs = members
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| chosen.contains(i))
        .map(|(_, m)| {
            let text = sql(&m.name);
            async move { run_one(m.conn, &text).await }
        })
        .collect();
    join_all(runs).await
}

/// Runs one statement on every member at the same time; the first error, if any.
pub(crate) async fn run_everywhere(members: &mut [Member<'_>], sql: &str) -> Result<(), TxnError> {
    let all: Vec<usize> = (0..members.len()).collect();
    let outcomes = run_each(members, &all, |_| sql.to_owned()).await;
    first_error(members, &all, &outcomes, "")
}

pub(crate) fn first_error(
    members: &[Member<'_>],
    chosen: &[usize],
    outcomes: &[Outcome],
    what: &str,
) -> Result<(), TxnError> {
    for (i, outcome) in chosen.iter().zip(outcomes) {
        let name = members[*i].name.as_str();
        match outcome {
            Outcome::Done(_) => {}
            Outcome::Refused(e) => return Err(TxnError::from_shard(name, e, what)),
            Outcome::Lost(e) => return Err(TxnError::lost(name, e, what)),
        }
    }
    Ok(())
}

/// Rolls every member back (a connection that cannot is closed, which rolls it back too).
pub(crate) async fn rollback_all(members: &mut [Member<'_>]) {
    let all: Vec<usize> = (0..members.len()).collect();
    let outcomes = run_each(members, &all, |_| "ROLLBACK".to_owned()).await;
    for (m, o) in members.iter_mut().zip(outcomes) {
        if !o.ok() {
            m.conn.mark_broken();
        }
    }
}

pub(crate) async fn rollback_chosen(members: &mut [Member<'_>], chosen: &[usize]) {
    let outcomes = run_each(members, chosen, |_| "ROLLBACK".to_owned()).await;
    for (i, o) in chosen.iter().zip(outcomes) {
        if !o.ok() {
            members[*i].conn.mark_broken();
        }
    }
}

/// `ServerConn::query_value` bounded by the control timeout (the connection is closed past it).
pub(crate) async fn query_value(
    conn: &mut ServerConn,
    sql: &str,
) -> Result<Option<String>, ServerError> {
    match tokio::time::timeout(CONTROL_TIMEOUT, conn.query_value(sql)).await {
        Ok(result) => result,
        Err(_) => {
            conn.mark_broken();
            Err(ServerError::Protocol(format!(
                "no answer within {CONTROL_TIMEOUT:?}"
            )))
        }
    }
}

/// `ServerConn::run_internal` bounded by the control timeout (the connection is closed past
/// it).
pub(crate) async fn run_internal(conn: &mut ServerConn, sql: &str) -> Result<(), ServerError> {
    match tokio::time::timeout(CONTROL_TIMEOUT, conn.run_internal(sql)).await {
        Ok(result) => result,
        Err(_) => {
            conn.mark_broken();
            Err(ServerError::Protocol(format!(
                "no answer within {CONTROL_TIMEOUT:?}"
            )))
        }
    }
}

/// Sends `messages` (an extended-protocol run ending in Sync) and reads every reply up to
/// ReadyForQuery, bounded by the control timeout.
pub(crate) async fn run_messages(conn: &mut ServerConn, messages: &[u8]) -> Outcome {
    let run = async {
        conn.write_all(messages).await?;
        let mut frames = Vec::new();
        loop {
            let frame = conn.read_frame().await?;
            let done = frame.tag() == backend::READY_FOR_QUERY;
            frames.push(frame);
            if done {
                return Ok::<_, ServerError>(frames);
            }
        }
    };
    let replies = tokio::time::timeout(CONTROL_TIMEOUT, run).await;
    outcome(conn, replies)
}
