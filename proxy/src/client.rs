//! Who the client is, fixed at login: its id, user and database, the pool mode it runs in,
//! the BackendKeyData it was given, and the admissions (connection permit, per-user and
//! per-database cap) it holds until it leaves.

use shardgate_config::{PoolMode, User};
use tokio::sync::OwnedSemaphorePermit;

use crate::limits::CapSlot;
use crate::login::Login;

pub(crate) struct ClientIdentity {
    id: u64,
    mode: PoolMode,
    database: String,
    user: User,
    /// The BackendKeyData this client was given: (pid, secret).
    cancel_key: (i32, i32),
    /// Held for the client's life: released when the session is dropped.
    _permit: OwnedSemaphorePermit,
    _cap_slot: CapSlot,
}

impl ClientIdentity {
    /// The client `login` admitted, in `default_mode` unless its user names another.
    pub(crate) fn new(
        id: u64,
        login: Login,
        default_mode: PoolMode,
        cancel_key: (i32, i32),
    ) -> ClientIdentity {
        ClientIdentity {
            id,
            mode: login.user.pool_mode.unwrap_or(default_mode),
            database: login.database,
            user: login.user,
            cancel_key,
            _permit: login.permit,
            _cap_slot: login.cap_slot,
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn mode(&self) -> PoolMode {
        self.mode
    }

    /// Session mode: the client keeps its server connection from login to close.
    pub(crate) fn mode_is_session(&self) -> bool {
        self.mode == PoolMode::Session
    }

    /// Transaction mode: the connection goes back between transactions.
    pub(crate) fn mode_is_transaction(&self) -> bool {
        self.mode == PoolMode::Transaction
    }

    pub(crate) fn database(&self) -> &str {
        &self.database
    }

    pub(crate) fn user(&self) -> &User {
        &self.user
    }

    /// The BackendKeyData this client was given: (pid, secret).
    pub(crate) fn cancel_key(&self) -> (i32, i32) {
        self.cancel_key
    }
}
