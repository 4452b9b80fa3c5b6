//! Differential testing of cross-shard reads: each statement runs through shardgate in front
//! of shards and on one plain PostgreSQL holding the same rows, and the answers are compared
//! ([`compare`]). [`World`] starts those servers and loads each row where the ring puts it.
//! This crate does not depend on the proxy or its router (their crates' tests depend on this
//! one), so the caller parses [`World::proxy_toml`], places keys with its `Router` and starts
//! the proxy. [`generated`] is the generated corpus, run by the `cross_shard_corpus` test
//! (a fixed seed) and by `bench corpus` (a random seed, longer); the hand-written corpus of the
//! `cross_shard` test lives with that test and uses [`compare`] and [`World`] too.

pub mod compare;
pub mod generated;
mod random;

pub use compare::Order;
pub use random::{quote, Gen};

use futures_util::future::join_all;
use tokio_postgres::Client;

use crate::{Auth, ClusterOptions, LocalPgError, PgCluster};

/// The login and database on every server (and on the proxy).
pub const USER: &str = "app";
pub const PASSWORD: &str = "app-secret";
pub const DB: &str = "app";

/// Why a differential run could not go on (a difference between the answers is not an error:
/// it is in the report).
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("starting PostgreSQL: {0}")]
    Start(#[from] LocalPgError),
    #[error("a PostgreSQL start task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{what} on port {port}: {source}")]
    Sql {
        what: &'static str,
        port: u16,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("the proxy connection is unusable after: {0}")]
    Unusable(String),
}

/// One row of a data set: its table, its shard key (`None` for a reference table's row, which
/// every shard holds) and its `values (…)` tuple.
pub struct Row {
    pub table: &'static str,
    pub key: Option<i64>,
    pub values: String,
}

/// Starts `n` clusters at once, each with user `app` owning the database `app` (C collation:
/// the proxy merges text byte-wise). On an error the ones started are stopped.
pub async fn start_clusters(n: usize) -> Result<Vec<PgCluster>, CorpusError> {
    let starts = (0..n).map(|_| {
        tokio::task::spawn_blocking(|| -> Result<PgCluster, LocalPgError> {
            let c = PgCluster::start(ClusterOptions::default().user(USER, PASSWORD, Auth::Scram))?;
            c.psql(
                "postgres",
                &format!(
                    "create database {DB} owner {USER} template template0 \
                     lc_collate 'C' lc_ctype 'C'"
                ),
            )?;
            Ok(c)
        })
    });
    let mut clusters = Vec::with_capacity(n);
    let mut error = None;
    for started in join_all(starts).await {
        match started {
            Ok(Ok(c)) => clusters.push(c),
            Ok(Err(e)) => error = error.or(Some(CorpusError::from(e))),
            Err(e) => error = error.or(Some(CorpusError::from(e))),
        }
    }
    match error {
        Some(e) => {
            drop_blocking(clusters).await;
            Err(e)
        }
        None => Ok(clusters),
    }
}

/// Stopping a server waits for it: off the runtime's threads.
async fn drop_blocking<T: Send + 'static>(servers: T) {
    tokio::task::spawn_blocking(move || drop(servers))
        .await
        .ok();
}

/// Connects to the server (or proxy) on `port` as `app`.
pub async fn connect(port: u16, db: &str) -> Result<Client, CorpusError> {
    let conn_str =
        format!("host=127.0.0.1 port={port} user={USER} password={PASSWORD} dbname={db}");
    let (client, _connection) =
        crate::soak::connect(&conn_str)
            .await
            .map_err(|source| CorpusError::Sql {
                what: "connect",
                port,
                source,
            })?;
    Ok(client)
}

/// A reference server and shards: the two sides of a differential test.
pub struct World {
    reference: PgCluster,
    shards: Vec<PgCluster>,
}

impl World {
    /// Starts the reference server and `shards` shards (see [`start_clusters`]).
    pub async fn start(shards: usize) -> Result<World, CorpusError> {
        let mut clusters = start_clusters(shards + 1).await?;
        let reference = clusters.remove(0);
        Ok(World {
            reference,
            shards: clusters,
        })
    }

    /// The server holding every row.
    pub fn reference(&self) -> &PgCluster {
        &self.reference
    }

    pub fn shards(&self) -> &[PgCluster] {
        &self.shards
    }

    /// The config of a proxy over the shards (see [`crate::proxy_config::sharded_toml`]).
    pub fn proxy_toml(&self, sharded_tables: &[&str], extra: &str) -> String {
        let ports: Vec<u16> = self.shards.iter().map(PgCluster::port).collect();
        crate::proxy_config::sharded_toml(&ports, USER, PASSWORD, sharded_tables, extra)
    }

    /// `schema` on every server, every row on the reference server, a sharded row on the
    /// shard `shard_of_key` names for its key and a reference table's row on every shard.
    /// Returns how many rows each shard got.
    pub async fn load(
        &self,
        schema: &str,
        rows: &[Row],
        shard_of_key: impl Fn(i64) -> usize,
    ) -> Result<Vec<usize>, CorpusError> {
        load(
            self.reference.port(),
            schema,
            &rows.iter().collect::<Vec<_>>(),
        )
        .await?;
        let mut counts = Vec::with_capacity(self.shards.len());
        for (i, shard) in self.shards.iter().enumerate() {
            let mine: Vec<&Row> = rows
                .iter()
                .filter(|r| r.key.is_none_or(|k| shard_of_key(k) == i))
                .collect();
            counts.push(mine.len());
            load(shard.port(), schema, &mine).await?;
        }
        Ok(counts)
    }

    pub async fn stop(self) {
        drop_blocking(self).await;
    }
}

/// `schema` and `rows` (tables in the order they first appear, 500 rows a statement) on the
/// server on `port`, then ANALYZE.
async fn load(port: u16, schema: &str, rows: &[&Row]) -> Result<(), CorpusError> {
    let failed = |what| move |source| CorpusError::Sql { what, port, source };
    let client = connect(port, DB).await?;
    client
        .batch_execute(schema)
        .await
        .map_err(failed("schema"))?;
    let mut tables: Vec<&str> = Vec::new();
    for r in rows {
        if !tables.contains(&r.table) {
            tables.push(r.table);
        }
    }
    for table in tables {
        let values: Vec<&str> = rows
            .iter()
            .filter(|r| r.table == table)
            .map(|r| r.values.as_str())
            .collect();
        for chunk in values.chunks(500) {
            client
                .batch_execute(&format!("insert into {table} values {}", chunk.join(",")))
                .await
                .map_err(failed("insert"))?;
        }
    }
    client
        .batch_execute("analyze")
        .await
        .map_err(failed("analyze"))
}
