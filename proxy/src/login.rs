//! A client's startup and authentication: the startup packet, the admission caps (clients in
//! all, per user, per database) and the password exchange, before a session exists.

use std::sync::Arc;

use shardgate_wire::sqlstate;
use tokio::sync::OwnedSemaphorePermit;

use crate::io::ClientIo;
use crate::limits::{CapReached, CapSlot};
use crate::{auth, startup, SessionError, Shared};

/// What startup and authentication established.
pub(crate) struct Login {
    pub(crate) params: Vec<(String, String)>,
    pub(crate) user: shardgate_config::User,
    pub(crate) database: String,
    pub(crate) permit: OwnedSemaphorePermit,
    pub(crate) cap_slot: CapSlot,
}

/// Startup and authentication; `None` for a cancel request.
pub(crate) async fn login(
    io: &mut ClientIo,
    shared: &Arc<Shared>,
) -> Result<Option<Login>, SessionError> {
    let Some(params) = startup::read_startup(io, shared).await? else {
        return Ok(None);
    };
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let user = param("user").unwrap_or_default();
    let database = param("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    tracing::Span::current()
        .record("user", user.as_str())
        .record("db", database.as_str());

    let Some(permit) = shared.try_admit() else {
        let max = shared.config().listen.max_client_connections;
        io.fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            &format!("sorry, too many clients already (listen.max_client_connections = {max})"),
            Some("close idle connections, or raise listen.max_client_connections"),
        )
        .await;
        return Err(SessionError::TooManyClients);
    };
    let authenticator = shared.auth.load_full();
    let user_auth = authenticator.user(&user);
    auth::authenticate(io, user_auth, &user).await?;
    let user = user_auth
        .map(|a| a.user.clone())
        .ok_or(SessionError::AuthFailed)?;
    let config = shared.config();
    let user_cap = user
        .max_client_connections
        .unwrap_or(config.listen.max_clients_per_user);
    let cap_slot = match shared.client_caps.admit(
        &user.name,
        &database,
        user_cap,
        config.listen.max_clients_per_database,
    ) {
        Ok(slot) => slot,
        Err(reached) => {
            let (message, hint) = match reached {
                CapReached::User(n) => (
                    format!("too many connections for role \"{}\" (at most {n})", user.name),
                    "close idle connections, or raise listen.max_clients_per_user or the user's max_client_connections",
                ),
                CapReached::Database(n) => (
                    format!("too many connections for database \"{database}\" (at most {n})"),
                    "close idle connections, or raise listen.max_clients_per_database",
                ),
            };
            io.fatal(sqlstate::TOO_MANY_CONNECTIONS, &message, Some(hint))
                .await;
            return Err(SessionError::TooManyClients);
        }
    };
    Ok(Some(Login {
        params,
        user,
        database,
        permit,
        cap_slot,
    }))
}
