//! The health and lag monitor: every `replicas.check_interval` it asks each shard's primary
//! for its WAL flush position (what a standby can have received) and each replica for its replay position (over tokio-postgres,
//! the control-plane client, never the data path), then updates [`Health`]: hosts that do
//! not answer are banned with backoff and probed again when the ban ends, replicas past
//! `max_lag` / `max_lag_bytes` leave the read rotation and come back once under it. The same
//! query reads each server's `max_connections` for the host connection budgets, and whether
//! it is a primary and on which timeline: `failover` decides from that which host of the
//! shard takes writes. Checks run every `check_interval` or half of `replicas.failover_detect`,
//! whichever is shorter, and one that takes longer than that half counts as failed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shardgate_config::{Config, Host, Replicas};
use tokio::task::{JoinHandle, JoinSet};

use crate::budget::HostBudgets;
use crate::failover::Observed;
use crate::health::{Health, HostHealth, Lag, ShardHealth};
use crate::tls::ControlConnectError;

/// Why a host's check failed (the text is the host's failure reason).
#[derive(Debug, thiserror::Error)]
enum MonitorError {
    #[error("connecting to {0} timed out")]
    ConnectTimedOut(Host),
    #[error(transparent)]
    Connect(#[from] ControlConnectError),
    #[error("health check timed out")]
    QueryTimedOut,
    #[error(transparent)]
    Query(#[from] tokio_postgres::Error),
    #[error("health check took longer than {0:?}")]
    TookLonger(Duration),
}

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
/// position on a standby, flush position on a primary), its `max_connections` and its
/// timeline (0: unknown).
struct Position {
    in_recovery: bool,
    lsn: u64,
    max_connections: u32,
    timeline: u32,
}

/// A primary's timeline is the first 8 hex digits of its current WAL file's name; a
/// standby's is its WAL receiver's (NULL without `pg_read_all_stats`, or when not streaming).
const POSITION_SQL: &str = "SELECT pg_is_in_recovery(), \
     (CASE WHEN pg_is_in_recovery() THEN coalesce(pg_last_wal_replay_lsn(), '0/0') \
      ELSE pg_current_wal_flush_lsn() END - '0/0'::pg_lsn)::int8, \
     current_setting('max_connections')::int, \
     CASE WHEN pg_is_in_recovery() \
      THEN (SELECT received_tli FROM pg_stat_wal_receiver LIMIT 1)::int8 \
      ELSE ('x' || substr(pg_walfile_name(pg_current_wal_flush_lsn()), 1, 8))::bit(32)::int8 END";

/// Open control connections, one per host, reused across checks.
#[derive(Default)]
struct Clients {
    open: HashMap<Host, tokio_postgres::Client>,
}

impl Clients {
    async fn position(
        &mut self,
        host: &Host,
        login: &MonitorLogin,
    ) -> Result<Position, MonitorError> {
        let client = match self.open.remove(host) {
            Some(c) if !c.is_closed() => c,
            _ => connect(host, login).await?,
        };
        let row = tokio::time::timeout(login.connect_timeout, client.query_one(POSITION_SQL, &[]))
            .await
            .map_err(|_| MonitorError::QueryTimedOut)??;
        let in_recovery: bool = row.try_get(0)?;
        let lsn: i64 = row.try_get(1)?;
        let max_connections: i32 = row.try_get(2)?;
        let timeline: Option<i64> = row.try_get(3)?;
        self.open.insert(host.clone(), client);
        Ok(Position {
            in_recovery,
            lsn: lsn.max(0) as u64,
            max_connections: max_connections.max(0) as u32,
            timeline: timeline.and_then(|t| u32::try_from(t).ok()).unwrap_or(0),
        })
    }
}

async fn connect(
    host: &Host,
    login: &MonitorLogin,
) -> Result<tokio_postgres::Client, MonitorError> {
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
    .map_err(|_| MonitorError::ConnectTimedOut(host.clone()))?
    .map_err(MonitorError::from)
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
        let every = settings
            .check_interval
            .min(settings.failover_detect / 2)
            .max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(every);
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
    // A host that hangs must not hold a failover back for longer than this.
    let bound = login.connect_timeout.min(settings.failover_detect / 2);
    let hosts: Vec<Arc<HostHealth>> = shard.hosts().cloned().collect();
    let mut seen: Vec<Option<Observed>> = Vec::with_capacity(hosts.len());
    for host in &hosts {
        if !host.ban_expired() {
            seen.push(None);
            continue;
        }
        let answer = tokio::time::timeout(bound, clients.position(&host.host, login))
            .await
            .unwrap_or_else(|_| Err(MonitorError::TookLonger(bound)));
        match answer {
            Ok(p) => {
                host.report_up();
                host.report_role(p.in_recovery, p.timeline);
                if let Some(b) = budgets {
                    b.record_max_connections(&host.host, p.max_connections);
                }
                seen.push(Some(Observed {
                    in_recovery: p.in_recovery,
                    timeline: p.timeline,
                    lsn: p.lsn,
                }));
            }
            Err(e) => {
                host.report_failure(settings.ban_initial, settings.ban_max, &e.to_string());
                seen.push(None);
            }
        }
    }
    shard.follow_writer(&seen);
    let writer = shard.writer_index();
    for (i, replica) in shard.replicas.iter().enumerate() {
        if i + 1 == writer {
            replica.set_rotation(false, "promoted: it takes the shard's writes");
            continue;
        }
        if let Some(Some(o)) = seen.get(i + 1) {
            replica_rotation(shard, replica, o, settings);
        }
    }
}

/// Puts a replica that answered in or out of the read rotation: it must be a standby that
/// follows the shard's writer, within the lag limits.
fn replica_rotation(shard: &ShardHealth, replica: &HostHealth, o: &Observed, settings: &Replicas) {
    if !o.in_recovery {
        // Promoted, or misconfigured: its data may have diverged from the primary's.
        replica.report_lag(
            o.lsn,
            Lag::default(),
            false,
            "not a standby (not in recovery)",
        );
        return;
    }
    if let Err(why) = shard.follows_writer(o.timeline) {
        replica.report_lag(o.lsn, Lag::default(), false, why);
        return;
    }
    let lag = shard.lag_of(o.lsn);
    let too_far = if lag.seconds > settings.max_lag.as_secs_f64() {
        Some("replication lag over replicas.max_lag")
    } else if settings.max_lag_bytes > 0 && lag.bytes > settings.max_lag_bytes {
        Some("replication lag over replicas.max_lag_bytes")
    } else {
        None
    };
    replica.report_lag(
        o.lsn,
        lag,
        too_far.is_none(),
        too_far.unwrap_or("replication lag within the limits"),
    );
}
