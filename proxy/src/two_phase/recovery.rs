//! Recovery of in-doubt two-phase transactions: prepared on a shard by a proxy that never
//! finished them (it crashed, lost the shard, or was cut off mid-commit). A prepared
//! transaction holds its locks until someone commits or rolls it back, so a round runs at
//! start and every `sharding.two_phase_recovery_interval`, and on demand
//! (`POST /api/v1/transactions/resolve`).
//!
//! A round lists `pg_prepared_xacts` on every shard's primary (in parallel; a shard that does
//! not answer is skipped this round, never holding up the others), and resolves each `sg_`
//! gid of this proxy that is not in flight, and of another proxy that has not reported to the
//! store for `topology.lease` when the transaction is older than the lease: `COMMIT PREPARED`
//! when the store holds its commit decision, `ROLLBACK PREPARED` otherwise (presumed abort:
//! the decision is recorded before any participant commits, so a transaction without one has
//! committed nowhere). A decision is forgotten once no participant is prepared any more.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use shardgate_admin::control::{
    InDoubtTransaction, LeftTransaction, RecoveryReport, ShardProblem, TransactionsReport,
};
use shardgate_config::{Config, Host};
use shardgate_pool::{ConnectTarget, MonitorLogin, ServerConn, ServerError};
use shardgate_topology::{CommitDecision, Store, StoreError};
use shardgate_wire::{backend, row};
use tokio::sync::watch;

use super::gid::{self, Gid};
use super::Coordinator;
use crate::Shared;

/// Bounds each query recovery sends a shard and each store call; connecting is bounded by
/// `pool.connect_timeout`.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepared transactions read from one shard per round, oldest first (the rest wait for the
/// next round).
const LIST_LIMIT: usize = 1000;

/// Ours (and other programs' `sg_` gids, which are then skipped), oldest first, with their
/// age by the shard's clock.
const LIST_SQL: &str = "SELECT gid, database, owner, \
     extract(epoch FROM now() - prepared)::float8 \
     FROM pg_prepared_xacts WHERE gid LIKE 'sg\\_%' ORDER BY prepared LIMIT ";

/// How recovery's server connections show in `pg_stat_activity`.
pub(super) const APPLICATION_NAME: &str = "shardgate-recovery";

/// What recovery keeps between rounds.
#[derive(Default)]
pub(crate) struct RecoveryState {
    /// One round at a time (the periodic task and the admin API).
    round: tokio::sync::Mutex<()>,
    last: std::sync::Mutex<Figures>,
}

/// The in-doubt transactions left after the last round.
#[derive(Default, Clone, Copy)]
struct Figures {
    count: usize,
    oldest_seconds: f64,
}

impl RecoveryState {
    /// Sets the in-doubt gauges from the last round (at each scrape too: a gauge not set for
    /// two minutes leaves the output).
    pub(crate) fn record_metrics(&self) {
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        metrics::gauge!("shardgate_in_doubt_transactions").set(last.count as f64);
        metrics::gauge!("shardgate_in_doubt_oldest_seconds").set(last.oldest_seconds);
    }

    fn set_figures(&self, figures: Figures) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = figures;
        self.record_metrics();
    }
}

/// The texts of the failures both a listing (`RecoveryError`) and one transaction's ending
/// (`Failure`) can meet; the two enums classify them differently.
const NO_LOGIN: &str = "no [[users]] entry to log in with";
const NO_ANSWER: &str = "no answer within";

/// Why a store call or a shard's listing failed (the text goes to the round's report).
#[derive(Debug, thiserror::Error)]
enum RecoveryError {
    #[error("{NO_LOGIN}")]
    NoLogin,
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{NO_ANSWER} {QUERY_TIMEOUT:?}")]
    TimedOut,
    /// The listing query's ErrorResponse.
    #[error("{message} (SQLSTATE {code})")]
    Refused { message: String, code: String },
    #[error("a malformed row of pg_prepared_xacts")]
    MalformedRow,
}

/// A prepared transaction with a gid of ours, as a shard listed it.
struct Prepared {
    gid: String,
    parsed: Gid,
    database: String,
    owner: String,
    age_seconds: f64,
}

/// One shard's answer to the listing.
struct Listing {
    shard: String,
    host: Host,
    /// The transactions, and whether that is all of them (under [`LIST_LIMIT`]).
    result: Result<(Vec<Prepared>, bool), RecoveryError>,
}

/// How a resolution ended.
enum Outcome {
    Committed,
    RolledBack,
    /// Not prepared any more: someone else finished it between the listing and now.
    Gone,
}

/// Runs the recovery task: a round at once, then every `sharding.two_phase_recovery_interval`
/// until shutdown (or until the proxy is gone).
pub(crate) fn spawn(shared: Weak<Shared>, mut shutdown: watch::Receiver<bool>) {
    tokio::spawn(async move {
        if let Some(s) = shared.upgrade() {
            super::preflight::check(&s).await;
        }
        loop {
            if *shutdown.borrow() {
                return;
            }
            let Some(s) = shared.upgrade() else {
                return;
            };
            let every = s.config().sharding.two_phase_recovery_interval;
            let report = resolve_in_doubt(&s).await;
            drop(s);
            log_round(&report);
            let stop = async {
                // A dropped sender (the handle dropped without shutdown) is not a stop.
                if shutdown.wait_for(|stop| *stop).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = stop => return,
            }
        }
    });
}

fn log_round(report: &RecoveryReport) {
    if report.committed.is_empty() && report.rolled_back.is_empty() && report.errors.is_empty() {
        return;
    }
    tracing::info!(
        committed = report.committed.len(),
        rolled_back = report.rolled_back.len(),
        left = report.left.len(),
        forgotten = report.forgotten.len(),
        errors = ?report.errors,
        "in-doubt transaction recovery round"
    );
}

/// One recovery round (see the module's documentation).
pub(crate) async fn resolve_in_doubt(shared: &Shared) -> RecoveryReport {
    let coordinator = &shared.two_phase;
    let _one_at_a_time = coordinator.recovery.round.lock().await;
    let mut report = RecoveryReport::default();
    let Some(store) = shared.store.clone() else {
        report
            .errors
            .push("no topology store: there is nothing to resolve by".into());
        return report;
    };
    let config = shared.config();
    let lease = config.topology.lease;
    // Taken before the listing. A decision stored by then, of a transaction not in flight by
    // then, had every participant prepared before the listing: what the listing does not show
    // is no longer prepared, so the decision can be forgotten.
    let in_flight_before = coordinator.in_flight_now();
    let decisions_before = match bounded(store.commit_decisions()).await {
        Ok(d) => Some(d),
        Err(e) => {
            report
                .errors
                .push(format!("cannot read the commit decisions: {e}"));
            None
        }
    };
    let owners = Owners::read(&store, coordinator, lease, &mut report).await;
    let listings = list_all(shared).await;

    // (proxy, txid) of every transaction still prepared somewhere after this round, and the
    // ages of what is left.
    let mut remaining: HashSet<(String, u64)> = HashSet::new();
    let mut left_ages: Vec<f64> = Vec::new();
    let mut complete = true;
    let mut work: Vec<(String, Host, Vec<Prepared>)> = Vec::new();
    for listing in listings {
        let (prepared, all) = match listing.result {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(shard = %listing.shard, %error,
                    "cannot list the shard's prepared transactions; skipped this round");
                report.unreachable.push(ShardProblem {
                    shard: listing.shard,
                    error: error.to_string(),
                });
                complete = false;
                continue;
            }
        };
        complete &= all;
        let mut todo = Vec::new();
        for p in prepared {
            let verdict = match owners.verdict(coordinator, &p) {
                Ok(()) if decisions_before.is_none() => Err("the commit decisions cannot be read"),
                other => other,
            };
            match verdict {
                Ok(()) => todo.push(p),
                Err(reason) => {
                    remaining.insert((p.parsed.proxy.clone(), p.parsed.txid));
                    left_ages.push(p.age_seconds);
                    report.left.push(LeftTransaction {
                        gid: p.gid,
                        shard: listing.shard.clone(),
                        reason: reason.to_owned(),
                    });
                }
            }
        }
        work.push((listing.shard, listing.host, todo));
    }

    // Read after the verdicts: a transaction of this proxy that was not in flight then had
    // its decision, if any, recorded before, so this read sees it. One read for the round.
    let decided: Result<HashSet<(String, u64)>, RecoveryError> =
        if work.iter().all(|(_, _, todo)| todo.is_empty()) {
            Ok(HashSet::new())
        } else {
            bounded(store.commit_decisions())
                .await
                .map(|all| all.into_iter().map(|d| (d.proxy, d.txid)).collect())
        };
    let results = match decided {
        Ok(decided) => {
            let rounds = work
                .iter()
                .map(|(shard, host, todo)| resolve_shard(&config, &decided, shard, host, todo));
            futures_util::future::join_all(rounds).await
        }
        Err(e) => {
            let e = Arc::new(e);
            work.iter()
                .map(|(_, _, todo)| {
                    todo.iter()
                        .map(|_| Err(Failure::NoDecisions(e.clone())))
                        .collect()
                })
                .collect()
        }
    };
    for ((shard, _, todo), outcomes) in work.iter().zip(results) {
        for (p, outcome) in todo.iter().zip(outcomes) {
            match outcome {
                Ok(Outcome::Committed) => report.committed.push(p.gid.clone()),
                Ok(Outcome::RolledBack) => report.rolled_back.push(p.gid.clone()),
                Ok(Outcome::Gone) => {}
                Err(e) => {
                    remaining.insert((p.parsed.proxy.clone(), p.parsed.txid));
                    left_ages.push(p.age_seconds);
                    report.errors.push(format!("{} on {shard}: {e}", p.gid));
                }
            }
        }
    }
    let (commits, rollbacks) = (report.committed.len(), report.rolled_back.len());
    metrics::counter!("shardgate_two_phase_resolved_total", "outcome" => "commit")
        .increment(commits as u64);
    metrics::counter!("shardgate_two_phase_resolved_total", "outcome" => "rollback")
        .increment(rollbacks as u64);

    // Only when every shard showed everything: a participant on a shard not seen may still
    // be prepared.
    if let (Some(decisions), true) = (decisions_before, complete) {
        for d in decisions {
            let owner_done = if d.proxy == coordinator.proxy_token() {
                !in_flight_before.contains(&d.txid)
            } else {
                owners.gone(&d.proxy)
            };
            if !owner_done || remaining.contains(&(d.proxy.clone(), d.txid)) {
                continue;
            }
            match bounded(store.forget_commit(&d.proxy, d.txid)).await {
                Ok(()) => report.forgotten.push(format!("{}/{}", d.proxy, d.txid)),
                Err(e) => report.errors.push(format!(
                    "cannot forget the decision of {}/{}: {e}",
                    d.proxy, d.txid
                )),
            }
        }
    }
    coordinator.recovery.set_figures(Figures {
        count: left_ages.len(),
        oldest_seconds: left_ages.iter().copied().fold(0.0, f64::max),
    });
    report
}

/// `GET /api/v1/transactions`: what every shard holds prepared now and the stored decisions;
/// resolves nothing.
pub(crate) async fn in_doubt(shared: &Shared) -> TransactionsReport {
    let coordinator = &shared.two_phase;
    let (decisions, store_error) = match &shared.store {
        Some(store) => match bounded(store.commit_decisions()).await {
            Ok(d) => (d, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        },
        None => (Vec::new(), Some("no topology store".to_owned())),
    };
    let decided: HashSet<(&str, u64)> = decisions
        .iter()
        .map(|d: &CommitDecision| (d.proxy.as_str(), d.txid))
        .collect();
    let mut in_doubt = Vec::new();
    let mut unreachable = Vec::new();
    for listing in list_all(shared).await {
        match listing.result {
            Ok((prepared, _)) => {
                for p in prepared {
                    let Gid { proxy, txid, .. } = p.parsed;
                    let commit = decided.contains(&(proxy.as_str(), txid));
                    let in_flight =
                        proxy == coordinator.proxy_token() && coordinator.is_in_flight(txid);
                    in_doubt.push(InDoubtTransaction {
                        gid: p.gid,
                        shard: listing.shard.clone(),
                        database: p.database,
                        owner: p.owner,
                        proxy,
                        txid,
                        age_seconds: p.age_seconds,
                        decision: if commit { "commit" } else { "none" }.to_owned(),
                        in_flight,
                    });
                }
            }
            Err(error) => unreachable.push(ShardProblem {
                shard: listing.shard,
                error: error.to_string(),
            }),
        }
    }
    TransactionsReport {
        proxy: coordinator.proxy_token().to_owned(),
        in_doubt,
        decisions,
        unreachable,
        store_error,
    }
}

/// Whether the proxies that left prepared transactions are gone, as the store says.
struct Owners {
    lease: Duration,
    /// Seconds since each proxy (by gid token) last reported; `None` when the store could not
    /// say (then no other proxy counts as gone).
    seen: Option<HashMap<String, f64>>,
}

impl Owners {
    async fn read(
        store: &Store,
        coordinator: &Coordinator,
        lease: Duration,
        report: &mut RecoveryReport,
    ) -> Owners {
        let seen = match bounded(store.proxies()).await {
            Ok(proxies) => {
                let mut seen: HashMap<String, f64> = HashMap::new();
                for p in proxies {
                    let entry = seen
                        .entry(gid::token(&p.proxy_id))
                        .or_insert(p.seen_seconds_ago);
                    *entry = entry.min(p.seen_seconds_ago);
                }
                Some(seen)
            }
            Err(e) => {
                report.errors.push(format!(
                    "cannot read the proxies' reports ({e}); other proxies' transactions are \
                     left alone"
                ));
                None
            }
        };
        // This proxy is alive whatever the store says.
        let seen = seen.map(|mut s| {
            s.insert(coordinator.proxy_token().to_owned(), 0.0);
            s
        });
        Owners { lease, seen }
    }

    /// A proxy is gone when it has not reported for the lease (or never did).
    fn gone(&self, proxy: &str) -> bool {
        let lease = self.lease.as_secs_f64();
        self.seen
            .as_ref()
            .is_some_and(|seen| seen.get(proxy).is_none_or(|ago| *ago >= lease))
    }

    /// Whether recovery may resolve `p` now, or why not.
    fn verdict(&self, coordinator: &Coordinator, p: &Prepared) -> Result<(), &'static str> {
        if p.parsed.proxy == coordinator.proxy_token() {
            return if coordinator.is_in_flight(p.parsed.txid) {
                Err("in flight")
            } else {
                Ok(())
            };
        }
        if self.seen.is_none() {
            Err("the proxies' reports cannot be read")
        } else if !self.gone(&p.parsed.proxy) {
            Err("its proxy is alive")
        } else if p.age_seconds < self.lease.as_secs_f64() {
            Err("younger than topology.lease")
        } else {
            Ok(())
        }
    }
}

/// Lists every shard's primary, in parallel.
async fn list_all(shared: &Shared) -> Vec<Listing> {
    let config = shared.config();
    let shards: Vec<(String, Host)> = shared
        .topo()
        .health
        .shards
        .iter()
        .map(|s| (s.name.clone(), s.writer().host.clone()))
        .collect();
    let login = MonitorLogin::from_config(&config);
    let lists = shards
        .iter()
        .map(|(_, host)| list_shard(host, login.as_ref()));
    let results = futures_util::future::join_all(lists).await;
    shards
        .into_iter()
        .zip(results)
        .map(|((shard, host), result)| Listing {
            shard,
            host,
            result,
        })
        .collect()
}

/// The prepared transactions with gids of ours on `host`, as the health monitor's login
/// (`pg_prepared_xacts` shows every database's), and whether that is all of them.
async fn list_shard(
    host: &Host,
    login: Option<&MonitorLogin>,
) -> Result<(Vec<Prepared>, bool), RecoveryError> {
    let login = login.ok_or(RecoveryError::NoLogin)?;
    let target = ConnectTarget {
        host: host.clone(),
        user: login.user.clone(),
        password: login.password.clone(),
        database: login.database.clone(),
        application_name: APPLICATION_NAME.into(),
        connect_timeout: login.connect_timeout,
    };
    let mut conn = ServerConn::connect(&target).await?;
    let sql = format!("{LIST_SQL}{LIST_LIMIT}");
    let frames = bounded(conn.query_frames(&sql)).await?;
    let mut rows = 0;
    let mut found = Vec::new();
    for frame in &frames {
        match frame.tag() {
            backend::ERROR_RESPONSE => {
                let fields = backend::error_fields(frame).unwrap_or_default();
                return Err(RecoveryError::Refused {
                    message: fields.message,
                    code: fields.code,
                });
            }
            backend::DATA_ROW => {
                rows += 1;
                let columns =
                    row::data_row_values(frame).map_err(|_| RecoveryError::MalformedRow)?;
                let text = |i: usize| {
                    columns
                        .get(i)
                        .and_then(Option::as_ref)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                let gid = text(0);
                // `sg_` gids another program wrote are not ours to resolve.
                let Some(parsed) = gid::parse(&gid) else {
                    continue;
                };
                found.push(Prepared {
                    parsed,
                    gid,
                    database: text(1),
                    owner: text(2),
                    age_seconds: text(3).parse().unwrap_or(0.0),
                });
            }
            _ => {}
        }
    }
    Ok((found, rows < LIST_LIMIT))
}

/// Resolves `todo` on `shard`, one after the other, reusing a connection per database and
/// login; one outcome per transaction, in order. Once the shard stops answering, the rest
/// waits for the next round.
async fn resolve_shard(
    config: &Config,
    decided: &HashSet<(String, u64)>,
    shard: &str,
    host: &Host,
    todo: &[Prepared],
) -> Vec<Result<Outcome, Failure>> {
    let mut conns: HashMap<(String, String), ServerConn> = HashMap::new();
    let mut outcomes = Vec::with_capacity(todo.len());
    let mut down: Option<String> = None;
    for p in todo {
        if let Some(why) = &down {
            outcomes.push(Err(Failure::Skipped { why: why.clone() }));
            continue;
        }
        let commit = decided.contains(&(p.parsed.proxy.clone(), p.parsed.txid));
        let outcome = finish(config, &mut conns, host, p, commit).await;
        if let Err(e) = &outcome {
            if e.shard_down() {
                down = Some(e.to_string());
            }
        }
        match &outcome {
            Ok(Outcome::Committed) => {
                tracing::info!(gid = %p.gid, shard, "in-doubt transaction committed (its decision was stored)")
            }
            Ok(Outcome::RolledBack) => {
                tracing::info!(gid = %p.gid, shard, "in-doubt transaction rolled back (no decision was stored)")
            }
            Ok(Outcome::Gone) => {
                tracing::debug!(gid = %p.gid, shard, "in-doubt transaction already finished")
            }
            Err(error) => {
                tracing::warn!(gid = %p.gid, shard, %error, "cannot resolve an in-doubt transaction")
            }
        }
        outcomes.push(outcome);
    }
    outcomes
}

/// Why a transaction was not resolved this round.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The shard refused this one (a login or database refused, the statement failed).
    #[error(transparent)]
    Refused(ServerError),
    /// The shard did not answer (no connection, a lost one).
    #[error(transparent)]
    Down(ServerError),
    #[error("{NO_LOGIN}")]
    NoLogin,
    #[error("the connection went missing")]
    ConnectionMissing,
    #[error("{NO_ANSWER} {QUERY_TIMEOUT:?}")]
    TimedOut,
    /// An earlier transaction of the shard found it down (`why`: that failure's text).
    #[error("skipped this round: the shard stopped answering ({why})")]
    Skipped { why: String },
    #[error("cannot read the commit decisions: {0}")]
    NoDecisions(Arc<RecoveryError>),
}

impl Failure {
    /// Whether the shard itself failed, so its other transactions wait for the next round.
    fn shard_down(&self) -> bool {
        matches!(
            self,
            Failure::Down(_) | Failure::ConnectionMissing | Failure::TimedOut
        )
    }
}

/// `COMMIT PREPARED` (with `commit`) or `ROLLBACK PREPARED`, on `host` in the transaction's
/// database, as its owner when that is a configured user (else the first configured user).
async fn finish(
    config: &Config,
    conns: &mut HashMap<(String, String), ServerConn>,
    host: &Host,
    p: &Prepared,
    commit: bool,
) -> Result<Outcome, Failure> {
    let user = config
        .users
        .iter()
        .find(|u| u.server_user() == p.owner)
        .or_else(|| config.users.first())
        .ok_or(Failure::NoLogin)?;
    let key = (p.database.clone(), user.server_user().to_owned());
    if !conns.contains_key(&key) {
        let target = ConnectTarget {
            host: host.clone(),
            user: key.1.clone(),
            password: user.server_password().map(str::to_owned),
            database: key.0.clone(),
            application_name: APPLICATION_NAME.into(),
            connect_timeout: config.pool.connect_timeout,
        };
        let conn = ServerConn::connect(&target).await.map_err(|e| match e {
            ServerError::Refused { .. } | ServerError::Auth(_) => Failure::Refused(e),
            _ => Failure::Down(e),
        })?;
        conns.insert(key.clone(), conn);
    }
    let conn = conns.get_mut(&key).ok_or(Failure::ConnectionMissing)?;
    let verb = if commit {
        "COMMIT PREPARED"
    } else {
        "ROLLBACK PREPARED"
    };
    let sql = format!("{verb} {}", escaped_literal(&p.gid));
    let result = tokio::time::timeout(QUERY_TIMEOUT, conn.run_internal(&sql)).await;
    match result {
        Ok(Ok(())) if commit => Ok(Outcome::Committed),
        Ok(Ok(())) => Ok(Outcome::RolledBack),
        // undefined_object: no such prepared transaction (any more).
        Ok(Err(ServerError::Query { code, .. })) if code == "42704" => Ok(Outcome::Gone),
        Ok(Err(e @ ServerError::Query { .. })) => Err(Failure::Refused(e)),
        Ok(Err(e)) => {
            conns.remove(&key);
            Err(Failure::Down(e))
        }
        Err(_) => {
            // Mid-statement: the connection's state is unknown; closing it ends the statement.
            conns.remove(&key);
            Err(Failure::TimedOut)
        }
    }
}

/// `text` as an escape string literal (`E'…'`), read the same whatever the server's
/// `standard_conforming_strings`.
fn escaped_literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// A store call or server query, bounded by [`QUERY_TIMEOUT`].
async fn bounded<T, E: Into<RecoveryError>>(
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, RecoveryError> {
    match tokio::time::timeout(QUERY_TIMEOUT, work).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(RecoveryError::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_escaped() {
        assert_eq!(escaped_literal("sg_p_1_s0"), "E'sg_p_1_s0'");
        assert_eq!(escaped_literal("a'b\\c"), "E'a''b\\\\c'");
    }

    fn prepared(proxy: &str, age_seconds: f64) -> Prepared {
        Prepared {
            gid: gid::format(proxy, 5, "s0"),
            parsed: Gid {
                proxy: proxy.into(),
                txid: 5,
                shard: "s0".into(),
            },
            database: "app".into(),
            owner: "app".into(),
            age_seconds,
        }
    }

    #[test]
    fn verdicts() {
        let me = Coordinator::new("me");
        let owners = Owners {
            lease: Duration::from_secs(10),
            seen: Some(HashMap::from([
                ("me".to_owned(), 0.0),
                ("alive".to_owned(), 2.0),
                ("silent".to_owned(), 30.0),
            ])),
        };
        assert_eq!(owners.verdict(&me, &prepared("me", 0.0)), Ok(()));
        let held = me.start();
        let mut mine = prepared("me", 100.0);
        mine.parsed.txid = held.txid();
        assert_eq!(owners.verdict(&me, &mine), Err("in flight"));
        assert_eq!(
            owners.verdict(&me, &prepared("alive", 100.0)),
            Err("its proxy is alive")
        );
        assert_eq!(
            owners.verdict(&me, &prepared("silent", 3.0)),
            Err("younger than topology.lease")
        );
        assert_eq!(owners.verdict(&me, &prepared("silent", 11.0)), Ok(()));
        assert_eq!(owners.verdict(&me, &prepared("unknown", 11.0)), Ok(()));
        let blind = Owners {
            lease: Duration::from_secs(10),
            seen: None,
        };
        assert!(blind.verdict(&me, &prepared("unknown", 100.0)).is_err());
        assert_eq!(blind.verdict(&me, &prepared("me", 0.0)), Ok(()));
        assert!(!blind.gone("unknown"));
    }
}
