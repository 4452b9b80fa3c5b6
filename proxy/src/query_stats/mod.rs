//! Per-query statistics: every statement's fingerprint (`shardgate_router::fingerprint_*`:
//! literals replaced by `$n`) accumulates calls, errors by SQLSTATE class, time (total and a
//! histogram for p50/p99), rows, shards touched, route kinds and primary or replica.
//!
//! The hot path hashes the statement text (no allocation) and updates its entry under one
//! short lock; only a statement seen for the first time builds its fingerprint text. The
//! number of entries is bounded by `stats.max_queries`: when a new statement would pass it,
//! the tenth with the least total time is dropped at once (so eviction is amortised, not a
//! scan per new statement). The sessions record in `record` (attached requests at their
//! ReadyForQuery, cross-shard and refused batches where the session routes them).

mod histogram;
mod record;
pub(crate) mod tally;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use shardgate_admin::control::{QueriesReport, QuerySort, QueryStat, RouteCounts};

use histogram::Histogram;
pub(crate) use record::StatementRoute;
use tally::Tally;

/// One finished call of a statement.
pub(crate) struct Sample {
    pub(crate) took: Duration,
    pub(crate) tally: Tally,
    pub(crate) route: StatementRoute,
    /// Shards it ran on (0 when refused).
    pub(crate) shards: u32,
    pub(crate) replica: bool,
}

#[derive(Debug)]
struct Entry {
    text: String,
    calls: u64,
    errors: u64,
    /// (SQLSTATE class, count); a statement rarely fails in more than a couple of ways.
    error_classes: Vec<([u8; 2], u64)>,
    total: Duration,
    histogram: Histogram,
    rows: u64,
    shards_touched: u64,
    max_shards: u32,
    routes: RouteCounts,
    primary: u64,
    replica: u64,
}

impl Entry {
    fn new(text: String) -> Entry {
        Entry {
            text,
            calls: 0,
            errors: 0,
            error_classes: Vec::new(),
            total: Duration::ZERO,
            histogram: Histogram::new(),
            rows: 0,
            shards_touched: 0,
            max_shards: 0,
            routes: RouteCounts::default(),
            primary: 0,
            replica: 0,
        }
    }

    fn add(&mut self, s: &Sample) {
        self.calls += 1;
        self.total += s.took;
        self.histogram.record(s.took);
        self.rows = self.rows.saturating_add(s.tally.rows);
        if let Some(code) = s.tally.error {
            self.errors += 1;
            let class = [code[0], code[1]];
            match self.error_classes.iter_mut().find(|(c, _)| *c == class) {
                Some((_, n)) => *n += 1,
                None => self.error_classes.push((class, 1)),
            }
        }
        self.shards_touched += u64::from(s.shards);
        self.max_shards = self.max_shards.max(s.shards);
        s.route.count(&mut self.routes);
        if s.shards > 0 {
            if s.replica {
                self.replica += 1;
            } else {
                self.primary += 1;
            }
        }
    }

    fn snapshot(&self, hash: u64) -> QueryStat {
        let total_ms = self.total.as_secs_f64() * 1000.0;
        QueryStat {
            id: format!("{hash:016x}"),
            query: self.text.clone(),
            calls: self.calls,
            errors: self.errors,
            errors_by_class: self
                .error_classes
                .iter()
                .map(|(c, n)| (String::from_utf8_lossy(c).into_owned(), *n))
                .collect::<BTreeMap<_, _>>(),
            total_ms,
            mean_ms: if self.calls == 0 {
                0.0
            } else {
                total_ms / self.calls as f64
            },
            p50_ms: self.histogram.quantile_ms(0.5),
            p99_ms: self.histogram.quantile_ms(0.99),
            rows: self.rows,
            shards_touched: self.shards_touched,
            max_shards: self.max_shards,
            routes: self.routes,
            primary: self.primary,
            replica: self.replica,
        }
    }
}

#[derive(Debug, Default)]
struct Entries {
    /// Keyed by the fingerprint hash, looked up at every call: foldhash (seeded per process)
    /// instead of SipHash.
    by_hash: foldhash::HashMap<u64, Entry>,
    evicted: u64,
}

/// The statistics of every statement shape, shared by all sessions (kept across reloads).
#[derive(Debug)]
pub(crate) struct QueryLog {
    entries: Mutex<Entries>,
    max: AtomicUsize,
}

impl QueryLog {
    pub(crate) fn new(max_queries: usize) -> QueryLog {
        QueryLog {
            entries: Mutex::new(Entries::default()),
            max: AtomicUsize::new(max_queries),
        }
    }

    /// `stats.max_queries` changed in a reload: applies at the next new statement.
    pub(crate) fn set_max(&self, max_queries: usize) {
        self.max.store(max_queries, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock leaves counters, not broken invariants.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether statements are tracked at all (`max_queries` above 0).
    pub(crate) fn enabled(&self) -> bool {
        self.max.load(Ordering::Relaxed) != 0
    }

    /// Counts a call of the statement whose fingerprint hash is `hash` if it is tracked
    /// already; `false` when it is not (then [`Self::record`] with its text).
    pub(crate) fn record_known(&self, hash: u64, sample: &Sample) -> bool {
        if !self.enabled() {
            return true;
        }
        match self.lock().by_hash.get_mut(&hash) {
            Some(e) => {
                e.add(sample);
                true
            }
            None => false,
        }
    }

    /// Counts a call of `sql` (the statement as the client sent it); `fingerprint` is its
    /// fingerprint hash when already known (a prepared statement's), else computed.
    pub(crate) fn record(&self, sql: &str, fingerprint: Option<u64>, sample: &Sample) {
        let max = self.max.load(Ordering::Relaxed);
        if max == 0 {
            return;
        }
        let hash = fingerprint.unwrap_or_else(|| shardgate_router::fingerprint_hash(sql));
        if self.record_known(hash, sample) {
            return;
        }
        // New: the text is built outside the lock.
        let text = shardgate_router::fingerprint_text(sql);
        let mut entries = self.lock();
        if !entries.by_hash.contains_key(&hash) && entries.by_hash.len() >= max {
            evict(&mut entries, max);
        }
        entries
            .by_hash
            .entry(hash)
            .or_insert_with(|| Entry::new(text))
            .add(sample);
    }

    pub(crate) fn report(&self, sort: QuerySort, limit: usize) -> QueriesReport {
        let entries = self.lock();
        let mut ranked: Vec<(&u64, &Entry)> = entries.by_hash.iter().collect();
        let key = |e: &Entry| -> f64 {
            match sort {
                QuerySort::TotalTime => e.total.as_secs_f64(),
                QuerySort::Calls => e.calls as f64,
                QuerySort::MeanTime => e.total.as_secs_f64() / e.calls.max(1) as f64,
                QuerySort::Errors => e.errors as f64,
            }
        };
        ranked.sort_by(|a, b| key(b.1).total_cmp(&key(a.1)).then(a.0.cmp(b.0)));
        QueriesReport {
            queries: ranked
                .into_iter()
                .take(limit)
                .map(|(h, e)| e.snapshot(*h))
                .collect(),
            tracked: entries.by_hash.len() as u64,
            max_queries: self.max.load(Ordering::Relaxed) as u64,
            evicted: entries.evicted,
        }
    }

    pub(crate) fn reset(&self) {
        let mut entries = self.lock();
        entries.by_hash = Default::default();
        entries.evicted = 0;
    }
}

/// Makes room for one more entry: drops the tenth (at least one) with the least total time,
/// and more if `max` shrank in a reload.
fn evict(entries: &mut Entries, max: usize) {
    let len = entries.by_hash.len();
    if len == 0 {
        return;
    }
    let drop = (len + 1).saturating_sub(max).max(max / 10).max(1).min(len);
    let mut by_total: Vec<(Duration, u64)> =
        entries.by_hash.iter().map(|(h, e)| (e.total, *h)).collect();
    by_total.select_nth_unstable(drop - 1);
    for (_, h) in &by_total[..drop] {
        entries.by_hash.remove(h);
    }
    entries.evicted += drop as u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: u64) -> Sample {
        Sample {
            took: Duration::from_millis(ms),
            tally: Tally {
                rows: 1,
                error: None,
            },
            route: StatementRoute::Single,
            shards: 1,
            replica: false,
        }
    }

    #[test]
    fn literals_share_an_entry_and_the_bound_holds() {
        let log = QueryLog::new(10);
        log.record("select * from t where id = 1", None, &sample(5));
        log.record("SELECT * FROM t WHERE id = 2", None, &sample(5));
        // A call whose fingerprint the caller already knows counts without its text.
        let hash = shardgate_router::fingerprint_hash("select * from t where id = 3");
        assert!(log.record_known(hash, &sample(5)));
        assert!(!log.record_known(hash ^ 1, &sample(5)));
        let r = log.report(QuerySort::Calls, 5);
        assert_eq!(r.queries.len(), 1);
        assert_eq!(r.queries[0].calls, 3);
        assert_eq!(r.queries[0].rows, 3);
        assert_eq!(r.queries[0].query, "select * from t where id = $1");
        // The heavy one survives a flood of new shapes.
        log.record("select heavy from t", None, &sample(10_000));
        for i in 0..100 {
            log.record(&format!("select c{i} from t"), None, &sample(1));
        }
        let r = log.report(QuerySort::TotalTime, 100);
        assert!(r.tracked <= 10);
        assert!(r.evicted >= 90);
        assert_eq!(r.queries[0].query, "select heavy from t");
        log.reset();
        assert_eq!(log.report(QuerySort::TotalTime, 10).tracked, 0);
    }
}
