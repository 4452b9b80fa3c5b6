//! The commit point: the store's current shard map, compared with the job, says whether a move
//! is live. Every undo-or-finish decision (after an error, an abort, or a restart) is taken
//! from it, never from the job's saved phase alone: a phase is saved after the fact and may
//! be one step behind the map.

use std::time::Duration;

use shardgate_topology::CommitState;

use super::ctx::Ctx;

/// How long one decision waits for an unreachable store before giving up on it (a guess
/// would be worse: undoing a live move deletes the only copy of its rows).
const STORE_PATIENCE: Duration = Duration::from_secs(30);

/// Reads the store's map and compares it with the job; retries on store errors for
/// `STORE_PATIENCE`. `None`: the store could not be read, and nothing may be decided.
pub(crate) async fn state(ctx: &Ctx) -> Option<CommitState> {
    let until = tokio::time::Instant::now() + STORE_PATIENCE;
    loop {
        match ctx.store.shard_map().await {
            Ok(map) => return Some(ctx.job.lock().await.commit_state(&map)),
            Err(e) if tokio::time::Instant::now() < until => {
                tracing::warn!(job = %ctx.plan.job_id, error = %e, "cannot read the shard map to decide the job's fate; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                tracing::error!(job = %ctx.plan.job_id, error = %e, "cannot read the shard map to decide the job's fate");
                return None;
            }
        }
    }
}

/// As `state`, but waits for the store as long as it takes (each attempt bounded by
/// `STORE_PATIENCE`), unless another runner takes the job over. `None`: taken over.
pub(crate) async fn state_eventually(ctx: &Ctx) -> Option<CommitState> {
    loop {
        if ctx.lost() {
            return None;
        }
        if let Some(state) = state(ctx).await {
            return Some(state);
        }
    }
}
