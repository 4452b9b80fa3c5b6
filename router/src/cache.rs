//! The route caches: plans by statement text (and, for the normalized plan cache, by statement
//! shape) in an LRU bounded both by entries and by bytes, so a repeated text is parsed once
//! and a stream of huge distinct texts cannot fill memory. Hits and misses are counted for
//! metrics.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::plan::Plan;

/// Hit and miss counts of the route cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

/// What an entry is counted as: the key, and a plan about as large as its text (plans keep
/// normalized text and key expressions), plus the bookkeeping around them.
fn entry_cost(sql: &str) -> usize {
    2 * sql.len() + 256
}

struct Entries<V> {
    lru: LruCache<String, V>,
    bytes: usize,
}

/// An LRU of values keyed by SQL text; `V` is cheap to clone (an `Arc`).
pub(crate) struct PlanCache<V = Arc<Plan>> {
    /// `None` when `route_cache_size` or `route_cache_bytes` is 0: nothing is cached.
    entries: Option<Mutex<Entries<V>>>,
    max_bytes: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl<V: Clone> PlanCache<V> {
    pub(crate) fn new(size: usize, max_bytes: usize) -> PlanCache<V> {
        PlanCache {
            entries: NonZeroUsize::new(size).filter(|_| max_bytes > 0).map(|n| {
                Mutex::new(Entries {
                    lru: LruCache::new(n),
                    bytes: 0,
                })
            }),
            max_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The cached value for `sql`, or the one `make` builds (then cached, unless the text is
    /// bigger than a quarter of the byte budget). The lock is not held while planning, so two
    /// threads may plan the same new text once each.
    pub(crate) fn get_or_insert(&self, sql: &str, make: impl FnOnce() -> V) -> V {
        if let Some(value) = self.get(sql) {
            return value;
        }
        let value = make();
        self.insert(sql, value.clone());
        value
    }

    /// The cached value for `sql` (counted as a hit or a miss).
    pub(crate) fn get(&self, sql: &str) -> Option<V> {
        if let Some(entries) = &self.entries {
            let mut guard = entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(value) = guard.lru.get(sql) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Some(value.clone());
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Caches `value` for `sql`, evicting the least recently used entries for room.
    pub(crate) fn insert(&self, sql: &str, value: V) {
        let cost = entry_cost(sql);
        if let Some(entries) = self.entries.as_ref().filter(|_| cost <= self.max_bytes / 4) {
            let mut guard = entries.lock().unwrap_or_else(|e| e.into_inner());
            let e = &mut *guard;
            if let Some((old_sql, _)) = e.lru.push(sql.to_owned(), value) {
                // The same text (planned twice concurrently) or the entry evicted for room.
                e.bytes -= entry_cost(&old_sql);
            }
            e.bytes += cost;
            while e.bytes > self.max_bytes {
                match e.lru.pop_lru() {
                    Some((old_sql, _)) => e.bytes -= entry_cost(&old_sql),
                    None => break,
                }
            }
        }
    }

    /// Bytes the cached entries are counted as.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.entries
            .as_ref()
            .map_or(0, |e| e.lock().unwrap_or_else(|e| e.into_inner()).bytes)
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn clear(&self) {
        if let Some(entries) = &self.entries {
            let mut guard = entries.lock().unwrap_or_else(|e| e.into_inner());
            guard.lru.clear();
            guard.bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Arc<Plan> {
        Arc::new(Plan::simple(crate::plan::StatementKind::Utility, ""))
    }

    #[test]
    fn bounded_by_bytes() {
        // Room for about ten 1 KiB texts.
        let cache: PlanCache = PlanCache::new(1000, 10 * entry_cost(&"x".repeat(1024)));
        for i in 0..100 {
            let text = format!("{i:04}{}", "x".repeat(1020));
            cache.get_or_insert(&text, plan);
            assert!(cache.bytes() <= cache.max_bytes, "{}", cache.bytes());
        }
        assert!(cache.bytes() > cache.max_bytes / 2);
        // A text over a quarter of the budget is planned but not kept.
        let before = cache.bytes();
        let huge = "y".repeat(cache.max_bytes);
        cache.get_or_insert(&huge, plan);
        assert_eq!(cache.bytes(), before);
        cache.get_or_insert(&huge, plan);
        assert_eq!(cache.stats().hits, 0);
        // Repeated small texts still hit.
        cache.get_or_insert("select 1", plan);
        cache.get_or_insert("select 1", plan);
        assert_eq!(cache.stats().hits, 1);
    }
}
