//! Ending a transaction on several shards: ROLLBACK everywhere, or COMMIT — one-phase when at
//! most one shard wrote (the others only read: their COMMIT cannot lose anything), two-phase
//! otherwise. Which shards wrote is asked of the servers (`pg_current_xact_id_if_assigned()`),
//! not guessed from statement kinds: a SELECT of a function that writes counts too.
//!
//! Two-phase commit: `PREPARE TRANSACTION 'sg_<proxy>_<txid>_<shard>'` on every writer; if one
//! fails, every prepared one is rolled back and the client gets that shard's error. Then the
//! decision is recorded in the topology store — the commit point — and `COMMIT PREPARED` runs
//! everywhere. A shard lost after the decision is finished by recovery (`two_phase`): the
//! client is told COMMIT, because the decision is durable.

use shardgate_config::CrossShardTransactions;
use shardgate_wire::{backend, row, sqlstate};
use tracing::{debug, warn};

use super::fanout::{
    first_error, rollback_all, rollback_chosen, run_each, run_one, Member, Outcome, TxnError,
};
use crate::Shared;

/// Commits the transaction on every member (see the module docs). On `Err` every member was
/// rolled back — except for `TRANSACTION_RESOLUTION_UNKNOWN`, which recovery settles.
pub(crate) async fn commit_all(
    shared: &Shared,
    members: &mut [Member<'_>],
    mode: CrossShardTransactions,
) -> Result<(), TxnError> {
    let all: Vec<usize> = (0..members.len()).collect();
    let asked = run_each(members, &all, |_| {
        "SELECT pg_current_xact_id_if_assigned() IS NOT NULL".to_owned()
    })
    .await;
    let mut writers = Vec::new();
    for (i, outcome) in asked.iter().enumerate() {
        match outcome {
            Outcome::Done(frames) => {
                let wrote = frames
                    .iter()
                    .find(|f| f.tag() == backend::DATA_ROW)
                    .and_then(|row| row::data_row_values(row).ok())
                    .is_some_and(|values| matches!(&values[..], [Some(v)] if v[..] == *b"t"));
                if wrote {
                    writers.push(i);
                }
            }
            // Aborted there (25P02) or lost: nothing commits.
            _ => {
                let error = first_error(members, &all, &asked, "").err();
                rollback_all(members).await;
                return Err(error.unwrap_or_else(|| {
                    TxnError::new(
                        sqlstate::IN_FAILED_SQL_TRANSACTION,
                        "the transaction failed",
                        None,
                    )
                }));
            }
        }
    }
    let readers: Vec<usize> = all
        .iter()
        .copied()
        .filter(|i| !writers.contains(i))
        .collect();
    // Readers first: they hold nothing to lose, and their snapshots end.
    let done = run_each(members, &readers, |_| "COMMIT".to_owned()).await;
    for (i, o) in readers.iter().zip(&done) {
        if !o.ok() {
            members[*i].conn.mark_broken();
        }
    }
    if writers.len() <= 1 {
        let outcomes = run_each(members, &writers, |_| "COMMIT".to_owned()).await;
        return first_error(members, &writers, &outcomes, "");
    }
    let names = writers
        .iter()
        .map(|i| members[*i].name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    match mode {
        CrossShardTransactions::Refuse => {
            let message = format!(
                "this transaction wrote on several shards ({}) and sharding.cross_shard_transactions = \"refuse\": it was rolled back",
                names
            );
            rollback_chosen(members, &writers).await;
            Err(TxnError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                &message,
                Some("write one shard per transaction, or set sharding.cross_shard_transactions = \"two_phase\""),
            ))
        }
        CrossShardTransactions::BestEffort => {
            // One after another: a failure leaves the shards before it committed.
            for (n, i) in writers.iter().enumerate() {
                let outcome = run_one(members[*i].conn, "COMMIT").await;
                if let Err(e) = first_error(members, &[*i], &[outcome], "") {
                    rollback_chosen(members, &writers[n + 1..]).await;
                    return Err(e);
                }
            }
            Ok(())
        }
        CrossShardTransactions::TwoPhase => two_phase(shared, members, &writers).await,
    }
}

async fn two_phase(
    shared: &Shared,
    members: &mut [Member<'_>],
    writers: &[usize],
) -> Result<(), TxnError> {
    let in_flight = shared.two_phase.start();
    let gid = |name: &str| in_flight.gid(name);
    let prepared = run_each(members, writers, |name| {
        format!("PREPARE TRANSACTION '{}'", gid(name).replace('\'', "''"))
    })
    .await;
    if let Err(error) = first_error(members, writers, &prepared, "PREPARE TRANSACTION failed: ") {
        // Undo the prepared ones; the failed one rolled back when its PREPARE failed. A
        // connection lost mid-PREPARE may have prepared: with no decision recorded, recovery
        // rolls it back.
        let done: Vec<usize> = writers
            .iter()
            .zip(&prepared)
            .filter(|(_, o)| o.ok())
            .map(|(i, _)| *i)
            .collect();
        let undo = run_each(members, &done, |name| {
            format!("ROLLBACK PREPARED '{}'", gid(name).replace('\'', "''"))
        })
        .await;
        for (i, o) in done.iter().zip(undo) {
            if !o.ok() {
                members[*i].conn.mark_broken();
            }
        }
        return Err(disabled_hint(error));
    }
    crate::failpoint!("two-phase-after-prepare");
    let shard_names: Vec<String> = writers.iter().map(|i| members[*i].name.clone()).collect();
    let token = shared.two_phase.proxy_token().to_owned();
    let txid = in_flight.txid();
    record_decision(shared, &token, txid, &shard_names).await?;
    crate::failpoint!("two-phase-after-decision");
    #[cfg(feature = "failpoints")]
    if shardgate_rebalance::failpoints::triggered("two-phase-lose-shard-after-decision") {
        // As if the first writer's server went away right after the decision.
        members[writers[0]].conn.mark_broken();
    }
    // A shard lost since its PREPARE is left to recovery.
    let reachable: Vec<usize> = writers
        .iter()
        .copied()
        .filter(|i| !members[*i].conn.is_broken())
        .collect();
    let committed = run_each(members, &reachable, |name| {
        format!("COMMIT PREPARED '{}'", gid(name).replace('\'', "''"))
    })
    .await;
    let mut all_done = reachable.len() == writers.len();
    for (i, o) in reachable.iter().zip(&committed) {
        if !o.ok() {
            // The decision is durable: recovery commits it when the shard is back.
            all_done = false;
            members[*i].conn.mark_broken();
            warn!(shard = %members[*i].name, txid, "COMMIT PREPARED did not complete; recovery will finish it");
        }
    }
    if all_done {
        if let Some(store) = shared.store.as_deref() {
            if let Err(e) = store.forget_commit(&token, txid).await {
                debug!(txid, error = %e, "could not forget a finished commit decision; recovery will");
            }
        }
    }
    Ok(())
}

/// Records the commit decision: the commit point. If the store fails, the record may or may
/// not have landed: the shards keep the transaction prepared and recovery settles it by the
/// store's answer once it has one (the client hears 08007).
async fn record_decision(
    shared: &Shared,
    token: &str,
    txid: u64,
    shards: &[String],
) -> Result<(), TxnError> {
    let Some(store) = shared.store.as_deref() else {
        return Err(TxnError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "two-phase commit needs a topology store to record its decision",
            None,
        ));
    };
    match store.record_commit(token, txid, shards).await {
        Ok(()) => Ok(()),
        Err(e) => {
            warn!(txid, error = %e, "could not record a commit decision");
            Err(TxnError::new(
                sqlstate::TRANSACTION_RESOLUTION_UNKNOWN,
                &format!("the commit decision could not be recorded in the topology store: {e}"),
                Some("the shards hold the transaction prepared; shardgate's recovery commits or rolls it back once the store answers (see GET /api/v1/transactions)"),
            ))
        }
    }
}

/// PREPARE TRANSACTION on a server with `max_prepared_transactions = 0` fails with 55000:
/// say what to change.
fn disabled_hint(error: TxnError) -> TxnError {
    let text = String::from_utf8_lossy(&error.0);
    if text.contains("prepared transactions are disabled") {
        return TxnError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "this transaction wrote on several shards, and a shard has prepared transactions disabled: it was rolled back",
            Some("set max_prepared_transactions > 0 on every shard (and restart it), or sharding.cross_shard_transactions = \"best_effort\""),
        );
    }
    error
}
