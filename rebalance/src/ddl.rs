//! DDL on a sharded table while traffic flows (CREATE TRIGGER, DROP TRIGGER). Such a statement
//! waits for a table lock behind any open transaction that touched the table, and every writer
//! that comes after queues behind *it* — writes to keys that do not move would pause. So each
//! attempt waits at most `LOCK_TIMEOUT`, and the attempts are spread over ~20 s with randomized
//! pauses (so retries do not line up with a periodic long transaction).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use shardgate_config::Shard;

use super::conn::Conns;
use super::ctx::Stop;
use super::error::EngineError;

/// The longest a writer queues behind our lock request.
const LOCK_TIMEOUT: &str = "50ms";
const ATTEMPTS: u32 = 40;
/// Pauses between attempts are drawn from this range (mean 500 ms: ~20 s over all attempts).
const PAUSE_MIN_MS: u64 = 200;
const PAUSE_MAX_MS: u64 = 800;

/// SQLSTATE lock_not_available, what a lock_timeout raises.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// A pause in [PAUSE_MIN_MS, PAUSE_MAX_MS), random enough to spread retries.
fn jitter() -> Duration {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    Duration::from_millis(PAUSE_MIN_MS + h.finish() % (PAUSE_MAX_MS - PAUSE_MIN_MS))
}

/// Runs `stmt` on (`shard`, `db`) with a short lock_timeout, retrying while the lock is not
/// available. `check` is asked before each attempt (abort on the forward path; nothing during
/// undo and cleanup). `what` names the statement in the error.
pub(crate) async fn run(
    conns: &mut Conns,
    shard: &Shard,
    db: &str,
    stmt: &str,
    what: &str,
    check: &(dyn Fn() -> Result<(), Stop> + Sync),
) -> Result<(), Stop> {
    conns
        .exec(shard, db, &format!("SET lock_timeout = '{LOCK_TIMEOUT}'"))
        .await?;
    let mut result = Ok(());
    for attempt in 1..=ATTEMPTS {
        if let Err(stop) = check() {
            result = Err(stop);
            break;
        }
        match conns.exec(shard, db, stmt).await {
            Ok(_) => {
                result = Ok(());
                break;
            }
            Err(msg) if msg.sqlstate() == Some(LOCK_NOT_AVAILABLE) => {
                tracing::debug!(shard = %shard.name, db, attempt, "{what} waits for a table lock; retrying");
                result = Err(Stop::Fail(EngineError::Timeout(format!(
                    "{msg}: could not lock the table to {what} in {ATTEMPTS} tries of \
                     {LOCK_TIMEOUT} each — a long transaction holds it; retry when it has \
                     finished"
                ))));
                if attempt < ATTEMPTS {
                    tokio::time::sleep(jitter()).await;
                }
            }
            Err(e) => {
                result = Err(Stop::from(e));
                break;
            }
        }
    }
    // A failed reset leaves a short lock_timeout on the control connection, harmless.
    let _ = conns.exec(shard, db, "RESET lock_timeout").await;
    result
}

/// `run` for undo and cleanup, which are not aborted, with the engine's error.
pub(crate) async fn run_to_end(
    conns: &mut Conns,
    shard: &Shard,
    db: &str,
    stmt: &str,
    what: &str,
) -> Result<(), EngineError> {
    match run(conns, shard, db, stmt, what, &|| Ok(())).await {
        Ok(()) => Ok(()),
        Err(Stop::Fail(e)) => Err(e),
        // Not reached: nothing here checks for an abort or a takeover.
        Err(stop) => Err(EngineError::Refused(format!("{what}: stopped ({stop:?})"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_stay_in_range_and_vary() {
        let pauses: Vec<Duration> = (0..50).map(|_| jitter()).collect();
        assert!(pauses
            .iter()
            .all(|p| *p >= Duration::from_millis(PAUSE_MIN_MS)
                && *p < Duration::from_millis(PAUSE_MAX_MS)));
        assert!(pauses.iter().any(|p| *p != pauses[0]));
    }
}
