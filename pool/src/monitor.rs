//! The health and lag monitor: every `replicas.check_interval` it asks each shard's primary
//! for its WAL flush position (what a standby can have received) and each replica for its replay position (over tokio-postgres,
//! the control-plane client, never the data path), then updates [`Health`]: hosts that do
//! not answer are banned with backoff and probed again when the ban ends, replicas past
//! `max_lag` / `max_lag_bytes` leave the read rotation and come back once under it. The same
//! query reads each server's `max_connections` for the host connection budgets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shardgate_config::{Config, Host, Replicas};
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

use crate::budget::HostBudgets;
use crate::health::{Health, HostHealth, Lag, ShardHealth};

/// Who the checks log in as, and where.
#[derive(Clone)]
pub struct MonitorLogin {
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub connect_timeout: Duration,
}

impl MonitorLogin {
    /// `replicas.monitor_user` (default: the first user) with its server credentials.
    pub fn from_config(config: &Config) -> Option<MonitorLogin> {
        let user = match &config.replicas.monitor_user {
            Some(name) => config.user(name)?,
            None => config.users.first()?,
        };
        Some(MonitorLogin {
            user: user.server_user().to_owned(),
            password: user.server_password().map(str::to_owned),
            database: config.replicas.monitor_database.clone(),
            connect_timeout: config.pool.connect_timeout,
        })
    }
}

/// One check's answer: whether the server is in recovery, its WAL position (replay
/// position on a standby, flush position on a primary) and its `max_connections`.
struct Position {
    in_recovery: bool,
    lsn: u64,
    max_connections: u32,
}

const POSITION_SQL: &str = "SELECT pg_is_in_recovery(), \
     (CASE WHEN pg_is_in_recovery() THEN coalesce(pg_last_wal_replay_lsn(), '0/0') \
      ELSE pg_current_wal_flush_lsn() END - '0/0'::pg_lsn)::int8, \
     current_setting('max_connections')::int";

/// Open control connections, one per host, reused across checks.
#[derive(Default)]
struct Clients {
    open: HashMap<Host, tokio_postgres::Client>,
}

impl Clients {
    async fn position(&mut self, host: &Host, login: &MonitorLogin) -> Result<Position, String> {
        let client = match self.open.remove(host) {
            Some(c) if !c.is_closed() => c,
            _ => connect(host, login).await?,
        };
        let row = tokio::time::timeout(login.connect_timeout, client.query_one(POSITION_SQL, &[]))
            .await
            .map_err(|_| "health check timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let in_recovery: bool = row.try_get(0).map_err(|e| e.to_string())?;
        let lsn: i64 = row.try_get(1).map_err(|e| e.to_string())?;
        let max_connections: i32 = row.try_get(2).map_err(|e| e.to_string())?;
        self.open.insert(host.clone(), client);
        Ok(Position {
            in_recovery,
            lsn: lsn.max(0) as u64,
            max_connections: max_connections.max(0) as u32,
        })
    }
}

async fn connect(host: &Host, login: &MonitorLogin) -> Result<tokio_postgres::Client, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&host.host)
        .port(host.port)
        .user(&login.user)
        .dbname(&login.database)
        .application_name("shardgate-monitor")
        .connect_timeout(login.connect_timeout);
    if let Some(p) = &login.password {
        config.password(p);
    }
    // TLS as the host's sslmode says, like the data path's connections.
    tokio::time::timeout(
        login.connect_timeout,
        crate::tls::connect_control(&mut config, host),
    )
    .await
    .map_err(|_| format!("connecting to {host} timed out"))?
}

/// Starts the monitor; it runs until the handle is aborted.
pub fn spawn_monitor(
    health: Arc<Health>,
    settings: Replicas,
    login: MonitorLogin,
) -> JoinHandle<()> {
    spawn_monitor_with_budgets(health, settings, login, None)
}

/// [`spawn_monitor`] that also records each host's `max_connections` in `budgets` (pass
/// [`crate::Pools::budgets`]), which sets the host connection budgets of the pools.
pub fn spawn_monitor_with_budgets(
    health: Arc<Health>,
    settings: Replicas,
    login: MonitorLogin,
    budgets: Option<Arc<HostBudgets>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut clients: Vec<Clients> = health.shards.iter().map(|_| Clients::default()).collect();
        let mut tick = tokio::time::interval(settings.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Shards are checked concurrently, so one slow shard does not delay the others.
            let mut round = JoinSet::new();
            for (shard, mut c) in health.shards.iter().cloned().zip(clients.drain(..)) {
                let settings = settings.clone();
                let login = login.clone();
                let budgets = budgets.clone();
                round.spawn(async move {
                    check_shard(&shard, &mut c, &settings, &login, budgets.as_deref()).await;
                    c
                });
            }
            while let Some(done) = round.join_next().await {
                // A check that panicked loses its cached connections only.
                clients.push(done.unwrap_or_default());
            }
        }
    })
}

async fn check_shard(
    shard: &ShardHealth,
    clients: &mut Clients,
    settings: &Replicas,
    login: &MonitorLogin,
    budgets: Option<&HostBudgets>,
) {
    let primary = &shard.primary;
    if primary.ban_expired() {
        match clients.position(&primary.host, login).await {
            Ok(p) => {
                primary.report_up();
                if let Some(b) = budgets {
                    b.record_max_connections(&primary.host, p.max_connections);
                }
                if p.in_recovery {
                    debug!(shard = %shard.name, host = %primary.host, "the configured primary is in recovery");
                } else {
                    shard.record_primary_lsn(p.lsn);
                }
            }
            Err(e) => primary.report_failure(settings.ban_initial, settings.ban_max, &e),
        }
    }
    for replica in &shard.replicas {
        if replica.ban_expired() {
            check_replica(shard, replica, clients, settings, login, budgets).await;
        }
    }
}

async fn check_replica(
    shard: &ShardHealth,
    replica: &HostHealth,
    clients: &mut Clients,
    settings: &Replicas,
    login: &MonitorLogin,
    budgets: Option<&HostBudgets>,
) {
    let position = match clients.position(&replica.host, login).await {
        Ok(p) => p,
        Err(e) => {
            replica.report_failure(settings.ban_initial, settings.ban_max, &e);
            return;
        }
    };
    replica.report_up();
    if let Some(b) = budgets {
        b.record_max_connections(&replica.host, position.max_connections);
    }
    if !position.in_recovery {
        // Promoted, or misconfigured: its data may have diverged from the primary's.
        replica.report_lag(
            position.lsn,
            Lag::default(),
            false,
            "not a standby (not in recovery)",
        );
        return;
    }
    let lag = shard.lag_of(position.lsn);
    let too_far = if lag.seconds > settings.max_lag.as_secs_f64() {
        Some("replication lag over replicas.max_lag")
    } else if settings.max_lag_bytes > 0 && lag.bytes > settings.max_lag_bytes {
        Some("replication lag over replicas.max_lag_bytes")
    } else {
        None
    };
    replica.report_lag(
        position.lsn,
        lag,
        too_far.is_none(),
        too_far.unwrap_or("replication lag within the limits"),
    );
}
