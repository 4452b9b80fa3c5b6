//! The route cache: plans by statement text in a bounded LRU, so a repeated text is parsed
//! once. Hits and misses are counted for metrics.

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

pub(crate) struct PlanCache {
    /// `None` when `route_cache_size` is 0: nothing is cached.
    entries: Option<Mutex<LruCache<String, Arc<Plan>>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl PlanCache {
    pub(crate) fn new(size: usize) -> PlanCache {
        PlanCache {
            entries: NonZeroUsize::new(size).map(|n| Mutex::new(LruCache::new(n))),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The cached plan for `sql`, or the one `make` builds (then cached). The lock is not held
    /// while planning, so two threads may plan the same new text once each.
    pub(crate) fn get_or_insert(&self, sql: &str, make: impl FnOnce() -> Plan) -> Arc<Plan> {
        if let Some(entries) = &self.entries {
            let mut guard = entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(plan) = guard.get(sql) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Arc::clone(plan);
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let plan = Arc::new(make());
        if let Some(entries) = &self.entries {
            let mut guard = entries.lock().unwrap_or_else(|e| e.into_inner());
            guard.put(sql.to_owned(), Arc::clone(&plan));
        }
        plan
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn clear(&self) {
        if let Some(entries) = &self.entries {
            entries.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }
}
