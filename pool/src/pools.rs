//! Every pool of the process, and the host budgets they share.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::budget::{HostBudgets, HostPolicy};
use crate::conn::ConnectTarget;
use crate::pool::{PoolKey, PoolSettings, ServerPool};

/// All pools of the process, created on first use, and the budgets of their hosts.
pub struct Pools {
    pools: RwLock<HashMap<PoolKey, ServerPool>>,
    budgets: Arc<HostBudgets>,
}

impl Default for Pools {
    fn default() -> Self {
        Self::new(HostPolicy::default())
    }
}

impl Pools {
    /// Pools whose hosts' budgets follow `policy` (`pool.host_reserve`, `pool.host_share`).
    pub fn new(policy: HostPolicy) -> Pools {
        Self::with_budgets(Arc::new(HostBudgets::new(policy)))
    }

    pub fn with_budgets(budgets: Arc<HostBudgets>) -> Pools {
        Pools {
            pools: RwLock::default(),
            budgets,
        }
    }

    /// The host budgets; hand them to the monitor so it can record `max_connections`.
    pub fn budgets(&self) -> &Arc<HostBudgets> {
        &self.budgets
    }

    /// The pool for `key`, built from `make()` if there is none yet.
    pub fn get_or_create(
        &self,
        key: PoolKey,
        make: impl FnOnce() -> (ConnectTarget, PoolSettings),
    ) -> ServerPool {
        if let Some(pool) = self
            .pools
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return pool.clone();
        }
        let mut pools = self.pools.write().unwrap_or_else(|e| e.into_inner());
        pools
            .entry(key)
            .or_insert_with_key(|key| {
                let (target, settings) = make();
                ServerPool::with_budgets(key.clone(), target, settings, Arc::clone(&self.budgets))
            })
            .clone()
    }

    /// The pool for `key`, if it exists.
    pub fn get(&self, key: &PoolKey) -> Option<ServerPool> {
        self.pools
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Forgets a pool (e.g. its shard was removed). Its connections close once the last clone
    /// of it and the last connection checked out of it are dropped.
    pub fn remove(&self, key: &PoolKey) -> Option<ServerPool> {
        self.pools
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key)
    }

    pub fn all(&self) -> Vec<ServerPool> {
        self.pools
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
