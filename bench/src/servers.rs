//! Plain PostgreSQL servers for the in-process benchmarks (`gather`, `copy`): started with the
//! bench user, database and a schema, stopped when the measurement is done, and a client
//! connection to any of them (or to a proxy in front of them).

use anyhow::Context;
use shardgate_tests::{Auth, ClusterOptions, PgCluster};

use crate::{DB, PASSWORD, USER};

/// Starts `n` servers, each with `schema`, runs `measure` on them, stops them, and prints
/// what `measure` reported.
pub async fn measure_on<F, Fut>(n: usize, schema: &'static str, measure: F) -> anyhow::Result<()>
where
    F: FnOnce(Vec<PgCluster>) -> Fut,
    Fut: std::future::Future<Output = (Vec<PgCluster>, anyhow::Result<String>)>,
{
    let clusters = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<PgCluster>> {
        (0..n)
            .map(|_| {
                let c =
                    PgCluster::start(ClusterOptions::default().user(USER, PASSWORD, Auth::Scram))?;
                c.create_database(DB, USER)?;
                c.psql_as(USER, PASSWORD, DB, schema)?;
                Ok(c)
            })
            .collect()
    })
    .await??;
    let (clusters, result) = measure(clusters).await;
    tokio::task::spawn_blocking(move || drop(clusters))
        .await
        .ok();
    println!("{}", result?);
    Ok(())
}

/// A client of the server (or proxy) on 127.0.0.1:`port`, as the bench user.
pub async fn connect(port: u16) -> anyhow::Result<tokio_postgres::Client> {
    connect_as(port, USER, PASSWORD).await
}

/// A client of the bench database on 127.0.0.1:`port` as `user`.
pub async fn connect_as(
    port: u16,
    user: &str,
    password: &str,
) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user={user} password={password} dbname={DB}"),
        tokio_postgres::NoTls,
    )
    .await
    .with_context(|| format!("connect to 127.0.0.1:{port}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}
