//! Many mostly idle clients: each logs in (SCRAM, through tokio-postgres), runs one `SELECT 1`
//! so it is known to be fully set up, then sits idle holding its connection until dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Longest one login (TCP connect, startup, SCRAM) may take.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle connections held open. Dropping this closes them all.
pub struct IdleClients {
    clients: Vec<tokio_postgres::Client>,
    drivers: JoinSet<()>,
    /// How long logging all of them in took.
    pub connect_time: Duration,
}

impl IdleClients {
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// How many of the connections have ended (their driver task finished).
    pub fn closed(&self) -> usize {
        self.clients.iter().filter(|c| c.is_closed()).count()
    }
}

impl Drop for IdleClients {
    fn drop(&mut self) {
        self.clients.clear();
        self.drivers.abort_all();
    }
}

/// Opens `n` connections to 127.0.0.1:`port`, at most `concurrency` logins at a time.
pub async fn open(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    n: u32,
    concurrency: usize,
) -> anyhow::Result<IdleClients> {
    let started = Instant::now();
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname(db)
        .application_name("shardgate-bench-idle")
        .connect_timeout(Duration::from_secs(30));
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut logins = JoinSet::new();
    for _ in 0..n {
        let config = config.clone();
        let permits = permits.clone();
        logins.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            login(&config).await
        });
    }
    let mut drivers = JoinSet::new();
    let mut clients = Vec::with_capacity(n as usize);
    let mut first_error = None;
    while let Some(joined) = logins.join_next().await {
        match joined.context("login task")? {
            Ok((client, connection)) => {
                drivers.spawn(async move {
                    let _ = connection.await;
                });
                clients.push(client);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    // Every driver is spawned before any query runs on its client (see `login`).
    let mut idle = IdleClients {
        clients,
        drivers,
        connect_time: Duration::ZERO,
    };
    if let Some(e) = first_error {
        anyhow::bail!(
            "{} of {n} idle clients could not log in to port {port}: {e:#}",
            n as usize - idle.len()
        );
    }
    for client in &idle.clients {
        client
            .simple_query("SELECT 1")
            .await
            .context("SELECT 1 on an idle client")?;
    }
    idle.connect_time = started.elapsed();
    Ok(idle)
}

type Connection =
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>;

/// One login, retried a few times (a burst of thousands may overflow a listen backlog).
async fn login(
    config: &tokio_postgres::Config,
) -> anyhow::Result<(tokio_postgres::Client, Connection)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        // connect_timeout bounds the TCP connect only; this bounds the login too.
        let result = match tokio::time::timeout(
            LOGIN_TIMEOUT,
            config.connect(tokio_postgres::NoTls),
        )
        .await
        {
            Ok(r) => r.map_err(anyhow::Error::from),
            Err(_) => Err(anyhow::anyhow!("no login within {LOGIN_TIMEOUT:?}")),
        };
        match result {
            Ok(pair) => return Ok(pair),
            Err(e) if attempt < 3 => {
                tracing::debug!(error = %e, attempt, "idle client login failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(e.context("idle client login")),
        }
    }
}
