//! Getting a server connection for a client: the pool of the session's shard and host (cached
//! per session, dropped when a reload or a new shard map changes pools), the checkout itself,
//! the replay of the client's session settings on it, and the error a client gets when none
//! can be had.

use shardgate_pool::{
    CheckoutError, HostChoice, PoolKey, PooledConn, ServerConn, ServerError, ServerPool,
};
use shardgate_router::ShardIndex;
use shardgate_wire::{backend, sqlstate};
use tracing::debug;

use crate::control::CountGuard;
use crate::session::Session;

/// A session's server pools by shard and host, created on first use and valid for one
/// reload generation (a reload or a new shard map may replace pools or hosts) and one role
/// epoch (a failover moves a shard's writes to another host).
#[derive(Debug)]
pub(crate) struct PoolCache {
    /// foldhash: looked up at every checkout.
    pools: foldhash::HashMap<(ShardIndex, HostChoice), ServerPool>,
    /// The reload generation and role epoch `pools` belongs to.
    generation: (u64, u64),
}

impl PoolCache {
    pub(crate) fn new(generation: (u64, u64)) -> PoolCache {
        PoolCache {
            pools: Default::default(),
            generation,
        }
    }

    /// Forgets every pool when `generation` is not the cache's; returns whether it did.
    fn refresh(&mut self, generation: (u64, u64)) -> bool {
        if generation == self.generation {
            return false;
        }
        self.pools.clear();
        self.generation = generation;
        true
    }

    fn get(&self, at: (ShardIndex, HostChoice)) -> Option<&ServerPool> {
        self.pools.get(&at)
    }

    fn insert(&mut self, at: (ShardIndex, HostChoice), pool: ServerPool) {
        self.pools.insert(at, pool);
    }

    /// Drops the pool with `key` (its server refused it).
    pub(crate) fn forget(&mut self, key: &PoolKey) {
        self.pools.retain(|_, p| p.key() != key);
    }
}

impl Session {
    /// The server pool of the current shard and host, created on first use.
    pub(crate) fn pool(&mut self) -> ServerPool {
        if self
            .pools
            .refresh(self.shared.pool_generation_in(self.view.topo()))
        {
            // A reload or a new shard map replaced pools (or hosts). Read-your-writes
            // positions follow the shard count.
            let shards = self.shared.topo().router.shard_names().len();
            self.read_your_writes.follow_shard_count(shards);
        }
        let at = (self.attachment.shard(), self.attachment.host());
        if let Some(p) = self.pools.get(at) {
            return p.clone();
        }
        let (role, host) = self
            .shared
            .host_of(self.attachment.shard(), self.attachment.host());
        let key = PoolKey {
            database: self.client.database().to_owned(),
            user: self.client.user().name.clone(),
            shard: self.shard_name(self.attachment.shard()),
            role,
            host,
        };
        let pool = self.shared.pool(key, self.client.user());
        self.pools.insert(at, pool.clone());
        pool
    }

    /// Checks a server connection out and brings it to the client's session state. With
    /// `collect`, returns the ParameterStatus values the server reported while doing so.
    ///
    /// The pool trusts a connection that was idle only briefly without a syscall, so one the
    /// server closed a moment ago can come out of it. If replaying the session state finds it
    /// closed, nothing reached the client yet: it is dropped and another is checked out (at
    /// most [`STALE_RETRIES`] times).
    pub(crate) async fn checkout(
        &mut self,
        collect: bool,
    ) -> Result<(PooledConn, Vec<(String, String)>), CheckoutFailure> {
        let pool = self.pool();
        let mut retries = STALE_RETRIES;
        let (server, reported) = loop {
            let server = self.checkout_from(&pool).await?;
            match self.bring_to_session(server, collect).await {
                Ok(done) => break done,
                Err(Replay::Closed(e)) if retries > 0 => {
                    retries -= 1;
                    debug!(pool = %pool.name(), error = %e,
                        "a pooled server connection was closed; checking out another");
                }
                Err(Replay::Closed(e)) => return Err(connect_error(&pool, e)),
                Err(Replay::Refused(failure)) => return Err(failure),
            }
        };
        self.attachment.aim_cancel_at(&server).await;
        Ok((server, reported))
    }

    /// One checkout from `pool`, counted as waiting and timed for the query statistics (a
    /// connection free at once waited for nothing: no clock read, no waiting count).
    async fn checkout_from(&mut self, pool: &ServerPool) -> Result<PooledConn, CheckoutFailure> {
        let (checked_out, waited) = match pool.try_checkout() {
            Some(s) => (Ok(s), std::time::Duration::ZERO),
            None => {
                let _waiting = CountGuard::new(&self.shared.activity.waiting);
                let wait_started = std::time::Instant::now();
                let checked_out = pool.checkout_slow().await;
                (checked_out, wait_started.elapsed())
            }
        };
        self.view.topo().query_stats.checkout_wait(
            self.attachment.shard(),
            pool.key().role,
            waited,
        );
        match checked_out {
            Ok(s) => Ok(s),
            Err(CheckoutError::Timeout { pool, waited }) => Err(CheckoutFailure::new(
                sqlstate::TOO_MANY_CONNECTIONS,
                format!("no server connection became free in pool {pool} within {waited:?}"),
                Some("raise pool.size or pool.checkout_timeout, or make transactions shorter"),
            )),
            Err(CheckoutError::Connect(e)) => {
                let failure = connect_error(pool, e);
                self.retire_refused_pool(pool, &failure);
                Err(failure)
            }
        }
    }

    /// Replays the client's session settings on `server` if it does not have them (or
    /// `collect` asks for the ParameterStatus values they cause).
    async fn bring_to_session(
        &mut self,
        mut server: PooledConn,
        collect: bool,
    ) -> Result<(PooledConn, Vec<(String, String)>), Replay> {
        let mut reported = Vec::new();
        if server.session_fingerprint() != self.client_state.settings().fingerprint() || collect {
            let sql = self.client_state.settings().replay_sql();
            match run_collecting(&mut server, &sql).await {
                Ok(r) => reported = r,
                Err(ServerError::Query { code, message }) => {
                    server.set_session_fingerprint(u64::MAX);
                    return Err(Replay::Refused(CheckoutFailure {
                        code,
                        message,
                        hint: Some(
                            "a setting from the startup packet or a SET was refused by the server"
                                .into(),
                        ),
                    }));
                }
                Err(e) => {
                    server.mark_broken();
                    return Err(Replay::Closed(e));
                }
            }
            server.set_session_fingerprint(self.client_state.settings().fingerprint());
        }
        Ok((server, reported))
    }
}

/// Checkouts after a replay found the connection closed, before the client gets the error.
const STALE_RETRIES: u32 = 2;

/// Why a session's settings could not be replayed on a fresh connection.
enum Replay {
    /// The server refused a setting: the client gets its error.
    Refused(CheckoutFailure),
    /// The connection failed (closed while idle in the pool, typically): try another.
    Closed(ServerError),
}

/// Why no server connection could be had for a client: the ErrorResponse it gets.
#[derive(Debug)]
pub(crate) struct CheckoutFailure {
    pub code: String,
    pub message: String,
    pub hint: Option<String>,
}

impl CheckoutFailure {
    pub(crate) fn new(code: &str, message: String, hint: Option<&str>) -> Self {
        CheckoutFailure {
            code: code.to_owned(),
            message,
            hint: hint.map(str::to_owned),
        }
    }

    /// The server could not be reached (or is starting or shutting down): another server
    /// of the shard may do.
    pub(crate) fn is_connect_error(&self) -> bool {
        self.code.starts_with("08") || self.code == "57P03" || self.code == "57P01"
    }
}

fn connect_error(pool: &ServerPool, e: ServerError) -> CheckoutFailure {
    match e {
        ServerError::Refused { code, message } => CheckoutFailure {
            code,
            message,
            hint: Some(format!(
                "the server refused shardgate's connection for pool {}",
                pool.name()
            )),
        },
        other => CheckoutFailure::new(
            sqlstate::CONNECTION_FAILURE,
            format!(
                "cannot connect to the server for pool {}: {other}",
                pool.name()
            ),
            Some("check that the shard's server is up and the [[shards]] address is right"),
        ),
    }
}

/// Runs a proxy-internal query, collecting the ParameterStatus values it causes.
async fn run_collecting(
    server: &mut ServerConn,
    sql: &str,
) -> Result<Vec<(String, String)>, ServerError> {
    let mut reported: Vec<(String, String)> = Vec::new();
    for frame in server.query_frames(sql).await? {
        match frame.tag() {
            backend::PARAMETER_STATUS => {
                if let Ok((k, v)) = backend::parameter_status(&frame) {
                    reported.retain(|(n, _)| n != k);
                    reported.push((k.to_owned(), v.to_owned()));
                }
            }
            backend::ERROR_RESPONSE => {
                let f = backend::error_fields(&frame).unwrap_or_default();
                return Err(ServerError::Query {
                    code: f.code,
                    message: f.message,
                });
            }
            _ => {}
        }
    }
    Ok(reported)
}
