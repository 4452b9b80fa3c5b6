//! Per-user and per-database client connection caps (`listen.max_clients_per_user`,
//! `listen.max_clients_per_database`, `[[users]] max_client_connections`), on top of the
//! proxy-wide `listen.max_client_connections`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Connected clients per user and per database.
#[derive(Debug, Default)]
pub(crate) struct ClientCaps {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    users: HashMap<String, usize>,
    databases: HashMap<String, usize>,
}

/// Which cap refused a client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CapReached {
    User(usize),
    Database(usize),
}

/// A client counted against its user and database until dropped.
#[derive(Debug)]
pub(crate) struct CapSlot {
    caps: Arc<ClientCaps>,
    user: String,
    database: String,
}

impl ClientCaps {
    /// Counts a client of `user` on `database`, unless that passes a cap (0 = none).
    pub(crate) fn admit(
        self: &Arc<Self>,
        user: &str,
        database: &str,
        user_cap: usize,
        database_cap: usize,
    ) -> Result<CapSlot, CapReached> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let by_user = counts.users.get(user).copied().unwrap_or(0);
        if user_cap > 0 && by_user >= user_cap {
            return Err(CapReached::User(user_cap));
        }
        let by_db = counts.databases.get(database).copied().unwrap_or(0);
        if database_cap > 0 && by_db >= database_cap {
            return Err(CapReached::Database(database_cap));
        }
        *counts.users.entry(user.to_owned()).or_default() += 1;
        *counts.databases.entry(database.to_owned()).or_default() += 1;
        Ok(CapSlot {
            caps: Arc::clone(self),
            user: user.to_owned(),
            database: database.to_owned(),
        })
    }
}

impl Drop for CapSlot {
    fn drop(&mut self) {
        let mut counts = self.caps.counts.lock().unwrap_or_else(|e| e.into_inner());
        let counts = &mut *counts;
        release(&mut counts.users, &self.user);
        release(&mut counts.databases, &self.database);
    }
}

fn release(map: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_user_and_database_and_free_on_drop() {
        let caps = Arc::new(ClientCaps::default());
        let a = caps.admit("app", "db1", 2, 0).unwrap();
        let _b = caps.admit("app", "db2", 2, 0).unwrap();
        assert_eq!(
            caps.admit("app", "db1", 2, 0).unwrap_err(),
            CapReached::User(2)
        );
        let _c = caps.admit("other", "db1", 0, 2).unwrap();
        assert_eq!(
            caps.admit("third", "db1", 0, 2).unwrap_err(),
            CapReached::Database(2)
        );
        drop(a);
        assert!(caps.admit("app", "db1", 2, 2).is_ok());
    }
}
