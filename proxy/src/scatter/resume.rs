//! A merged cross-shard read that goes on over several client Executes (a held portal, see
//! `crate::held`): between them each shard's rows wait in a named portal on the shard, its
//! connection idle, with at most one batch (and the merge's head row) read ahead into
//! [`ParkedShard`]. Each [`resume`] merges from there — the same k-way merge or
//! concatenation as a whole read — writes up to the Execute's rows, and parks the shards
//! again.

use shardgate_pool::{ServerConn, ServerError};
use shardgate_wire::backend::CursorPosition;

use super::merge::{merge_rows, RowPlan};
use super::output::{ClientSink, Output};
use super::shard::{join_all, Batches, ParkedShard, ShardStream};
use super::{write_shard_error, ScatterError, ScatterFailure, Stop};

/// The state of a parked merge.
#[derive(Debug)]
pub(crate) struct HeldMerge {
    /// How rows merge (ORDER BY keys, visible columns); OFFSET was applied by the first run.
    plan: RowPlan,
    /// One per shard, in the order of the connections `resume` gets.
    parked: Vec<ParkedShard>,
    batches: Batches,
    /// What is left of the statement's LIMIT (`None`: no LIMIT).
    limit_left: Option<u64>,
}

/// Rows a shard's portal returns per Execute when the client asks for `rows` (all with
/// `None`): enough for the request in few round trips, and at most one batch held per shard.
pub(crate) fn batch_rows(rows: Option<u64>) -> i32 {
    rows.map_or(MAX_BATCH, |r| {
        r.clamp(MIN_BATCH as u64, MAX_BATCH as u64) as i32
    })
}

const MIN_BATCH: i32 = 100;
const MAX_BATCH: i32 = 1000;

/// How a resumed read went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resumed {
    /// This many rows were written; `done`: no row is left.
    Rows { rows: u64, done: bool },
    /// A shard's error was written (after the rows already written): the read is over.
    Failed,
}

impl HeldMerge {
    pub(crate) fn new(
        plan: RowPlan,
        parked: Vec<ParkedShard>,
        batches: Batches,
        limit_left: Option<u64>,
    ) -> HeldMerge {
        HeldMerge {
            plan: RowPlan { offset: 0, ..plan },
            parked,
            batches,
            limit_left,
        }
    }

    /// No row is left to read.
    pub(crate) fn is_done(&self) -> bool {
        self.limit_left == Some(0) || self.parked.iter().all(|p| p.rows.is_empty() && !p.more)
    }
}

/// Writes the next `rows` rows (all with `None`) of `merge` to `client`, reading on from the
/// shards' portals over `servers` (idle, the same shards in the same order as the first run;
/// `shards` their names), then parks them again. `Err` when a connection broke (the read is
/// over) or the client left.
pub(crate) async fn resume<C: ClientSink>(
    merge: &mut HeldMerge,
    servers: &mut [&mut ServerConn],
    shards: &[String],
    rows: Option<u64>,
    client: &mut C,
) -> Result<Resumed, ScatterFailure> {
    let name = |i: usize| shards.get(i).map_or("?", String::as_str);
    merge.batches.rows = batch_rows(rows);
    tracing::debug!(
        portal = %merge.batches.portal,
        rows = ?rows,
        batch = merge.batches.rows,
        "resuming a held cross-shard read"
    );
    let parked = std::mem::take(&mut merge.parked);
    let mut streams: Vec<ShardStream<'_>> = servers
        .iter_mut()
        .zip(parked)
        .enumerate()
        .map(|(i, (conn, p))| ShardStream::resumed(conn, name(i), merge.batches.clone(), p))
        .collect();
    let limit = match (merge.limit_left, rows) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let plan = RowPlan {
        limit,
        ..merge.plan.clone()
    };
    let mut out = Output::new(client);
    let merged = merge_rows(&mut streams, &plan, &mut out).await;
    let broken = |i: usize, source: ServerError| ScatterError {
        shard: name(i).to_owned(),
        source,
    };
    let written = match merged {
        Ok(n) => n,
        Err(Stop::ClientGone) => {
            for s in streams.iter_mut().filter(|s| !s.is_idle()) {
                s.conn.mark_broken();
            }
            return Err(ScatterFailure::ClientGone);
        }
        Err(Stop::Server(i, source)) => return Err(broken(i, source).into()),
        Err(Stop::ShardFailed) => 0,
        Err(other) => {
            // Malformed rows (a protocol error, a key that does not decode): nothing on these
            // connections can be trusted any more.
            for s in streams.iter_mut() {
                s.conn.mark_broken();
            }
            return Err(broken(
                0,
                ServerError::Protocol(format!("resuming a held cross-shard read: {other:?}")),
            )
            .into());
        }
    };
    let results = join_all(
        streams
            .iter_mut()
            .enumerate()
            .map(|(i, s)| async move { (i, s.park().await) })
            .collect(),
    )
    .await;
    for (i, r) in results {
        match r {
            Ok(p) => merge.parked.push(p),
            Err(source) => return Err(broken(i, source).into()),
        }
    }
    if let Some(s) = streams.iter().find(|s| s.error.is_some()) {
        if let Some(e) = &s.error {
            write_shard_error(out.buf(), e, s.name, CursorPosition::Omit);
        }
        merge.parked.clear();
        return Ok(Resumed::Failed);
    }
    merge.limit_left = merge.limit_left.map(|l| l.saturating_sub(written));
    Ok(Resumed::Rows {
        rows: written,
        done: merge.is_done(),
    })
}
