//! Pools exist only for databases and logins the server accepts. Pools are created on first
//! use from the database name a client sends, so without this every misspelt or invented name
//! would leave a pool (and its connection attempts) behind for the life of the process: a pool
//! whose server refused the database (`3D000`) or the login (class `28`) is forgotten at once.
//! The client gets the server's own error, as from PostgreSQL.

use shardgate_pool::ServerPool;

use crate::checkout::CheckoutFailure;
use crate::session::Session;

/// Whether a refusal means no connection of this pool can ever succeed as configured.
fn refuses_the_pool(code: &str) -> bool {
    code == shardgate_wire::sqlstate::INVALID_CATALOG_NAME || code.starts_with("28")
}

impl Session {
    /// Drops `pool` from the process's pools and this session's cache when its server
    /// refused the database or the login itself.
    pub(crate) fn retire_refused_pool(&mut self, pool: &ServerPool, failure: &CheckoutFailure) {
        if !refuses_the_pool(&failure.code) {
            return;
        }
        self.pools.forget(pool.key());
        if self.shared.pools.remove(pool.key()).is_some() {
            tracing::debug!(pool = %pool.name(), code = %failure.code, "pool retired: the server refused it");
            metrics::counter!("shardgate_pools_retired_total").increment(1);
        }
    }
}
