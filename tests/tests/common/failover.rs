//! Helpers of the failover tests (`tests/failover.rs`): direct superuser queries, a
//! read/write workload that records acknowledged writes, blocking cluster operations, the
//! admin CLI.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardgate_tests::{Auth, ClusterOptions, PgCluster};

use super::{connect, DB, PASSWORD, USER};

/// A primary whose user owns database `DB` with table `items (id, note)`, and `replicas`
/// streaming replicas of it. Blocking: call it from `spawn_blocking`. `stats_grant`: the login
/// may read `pg_stat_wal_receiver` (the monitor learns a standby's timeline there).
pub fn primary_with_items(replicas: usize, stats_grant: bool) -> (PgCluster, Vec<PgCluster>) {
    let p = PgCluster::start(ClusterOptions::default().user(USER, PASSWORD, Auth::Scram))
        .expect("start primary");
    p.create_database(DB, USER).expect("create database");
    p.psql_as(
        USER,
        PASSWORD,
        DB,
        "CREATE TABLE items (id bigint PRIMARY KEY, note text)",
    )
    .expect("schema");
    if stats_grant {
        p.psql(DB, &format!("GRANT pg_read_all_stats TO {USER}"))
            .expect("grant");
    }
    let r = (0..replicas)
        .map(|_| p.start_replica().expect("start replica"))
        .collect();
    (p, r)
}

/// Every statement of the workload and of the checks is bounded by this.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);

/// A superuser connection straight to `c`.
pub async fn superuser(c: &PgCluster) -> tokio_postgres::Client {
    connect(&format!(
        "host=127.0.0.1 port={} user=postgres password={} dbname={DB} connect_timeout=5",
        c.port(),
        c.superuser_password()
    ))
    .await
}

/// One value of a query run directly on `c`, as text.
pub async fn direct_value(c: &PgCluster, sql: &str) -> Option<String> {
    let client = superuser(c).await;
    let rows = tokio::time::timeout(STATEMENT_TIMEOUT, client.simple_query(sql))
        .await
        .ok()?
        .ok()?;
    rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

pub async fn try_connect(conn_str: &str) -> Option<tokio_postgres::Client> {
    let (client, connection) = tokio::time::timeout(
        STATEMENT_TIMEOUT,
        tokio_postgres::connect(conn_str, tokio_postgres::NoTls),
    )
    .await
    .ok()?
    .ok()?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Some(client)
}

/// Writes rows with increasing ids through the proxy, recording the ones acknowledged, and
/// reads alongside, until `stop`.
pub struct Workload {
    acked: Arc<Mutex<Vec<i64>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    pub fn start(conn_str: String) -> Workload {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (acked, stop, conn_str) = (Arc::clone(&acked), Arc::clone(&stop), conn_str.clone());
            tokio::spawn(async move {
                let mut client = None;
                let mut id = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    if client
                        .as_ref()
                        .is_none_or(tokio_postgres::Client::is_closed)
                    {
                        client = try_connect(&conn_str).await;
                    }
                    let Some(c) = &client else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    id += 1;
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
                    let insert = c.execute("INSERT INTO items VALUES ($1, 'w')", &params);
                    match tokio::time::timeout(STATEMENT_TIMEOUT, insert).await {
                        Ok(Ok(1)) => acked.lock().unwrap().push(id),
                        Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        // A write stuck on a primary that lost its standby: not acknowledged.
                        Err(_) => client = None,
                    }
                }
            })
        };
        let reader = {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut client = None;
                while !stop.load(Ordering::Relaxed) {
                    if client
                        .as_ref()
                        .is_none_or(tokio_postgres::Client::is_closed)
                    {
                        client = try_connect(&conn_str).await;
                    }
                    if let Some(c) = &client {
                        let read = c.query_one("SELECT count(*) FROM items", &[]);
                        if tokio::time::timeout(STATEMENT_TIMEOUT, read).await.is_err() {
                            client = None;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Workload {
            acked,
            stop,
            tasks: vec![writer, reader],
        }
    }

    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    pub async fn stop(self) -> Vec<i64> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}

/// Runs blocking `f` on a cluster off the async threads.
pub async fn blocking(
    mut c: PgCluster,
    f: impl FnOnce(&mut PgCluster) + Send + 'static,
) -> PgCluster {
    tokio::task::spawn_blocking(move || {
        f(&mut c);
        c
    })
    .await
    .expect("join")
}

/// Runs `shardgate admin COMMAND` against the admin server on `port`: exit status, output.
pub async fn admin_cli(port: u16, command: shardgate_admin::cli::AdminCommand) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let args = shardgate_admin::cli::AdminArgs {
            url: format!("http://127.0.0.1:{port}"),
            token: None,
            json: false,
            command,
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = shardgate_admin::cli::run_with(&args, &mut out, &mut err);
        (
            code,
            String::from_utf8_lossy(&out).into_owned() + &String::from_utf8_lossy(&err),
        )
    })
    .await
    .expect("join")
}
