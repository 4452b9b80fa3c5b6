//! `two-phase`: what a transaction that writes on two shards costs at COMMIT. Two shard
//! primaries (with `fsync` and `synchronous_commit` on, so PREPARE and COMMIT PREPARED pay the
//! disk as in production) behind an in-process shardgate (file topology store, its decision log
//! fsynced too). One client runs, interleaved, transactions of two UPDATEs on one shard (plain
//! COMMIT) and of one UPDATE on each shard (two-phase commit); reports the median and p99 of
//! the whole transaction and of the COMMIT alone, and the ratios.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use shardgate_router::{KeyValue, Router};
use shardgate_tests::{Auth, ClusterOptions, PgCluster};

use crate::{DB, PASSWORD, USER};

#[derive(Args, Clone)]
pub struct TwoPhaseArgs {
    /// Transactions of each kind.
    #[arg(long, default_value_t = 1000)]
    transactions: usize,
}

const SCHEMA: &str = "create table accounts (user_id bigint primary key, balance bigint not null)";

pub async fn run(args: TwoPhaseArgs) -> anyhow::Result<()> {
    if args.transactions < 10 {
        bail!("--transactions must be at least 10");
    }
    eprintln!("starting 2 shard primaries (fsync on)");
    let clusters = tokio::task::spawn_blocking(|| -> anyhow::Result<Vec<PgCluster>> {
        (0..2)
            .map(|_| {
                let c = PgCluster::start(
                    ClusterOptions::default()
                        .user(USER, PASSWORD, Auth::Scram)
                        .conf("fsync = on")
                        .conf("synchronous_commit = on"),
                )?;
                c.create_database(DB, USER)?;
                c.psql_as(USER, PASSWORD, DB, SCHEMA)?;
                Ok(c)
            })
            .collect()
    })
    .await??;
    let dir = tempfile::tempdir()?;
    let result = measure(&args, &clusters, dir.path()).await;
    tokio::task::spawn_blocking(move || drop(clusters))
        .await
        .ok();
    println!("{}", result?);
    Ok(())
}

async fn measure(args: &TwoPhaseArgs, shards: &[PgCluster], dir: &Path) -> anyhow::Result<String> {
    let mut text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\nshutdown_timeout = \"2s\"\n\n\
         [pool]\nmode = \"transaction\"\nsize = 4\n\n\
         [topology]\nstate_file = \"{}\"\n\n\
         [[users]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n\n\
         [[sharding.tables]]\nname = \"accounts\"\n",
        dir.join("bench.topology.json").display()
    );
    for (i, c) in shards.iter().enumerate() {
        text.push_str(&format!(
            "\n[[shards]]\nname = \"s{i}\"\nprimary = {{ host = \"127.0.0.1\", port = {} }}\n",
            c.port()
        ));
    }
    let config = shardgate_config::Config::from_toml(&text, Path::new("bench-two-phase.toml"))?;
    let router = Router::new(&config)?;
    let keys_on = |s: usize| -> Vec<i64> {
        (1i64..)
            .filter(|k| router.shard_for_key(&KeyValue::Int(*k)) == s)
            .take(2)
            .collect()
    };
    let (s0, s1) = (keys_on(0), keys_on(1));
    for (i, keys) in [(0, &s0), (1, &s1)] {
        let values: Vec<String> = keys.iter().map(|k| format!("({k}, 0)")).collect();
        shards[i].psql_as(
            USER,
            PASSWORD,
            DB,
            &format!("insert into accounts values {}", values.join(", ")),
        )?;
    }
    let proxy = shardgate_proxy::start(config).await?;
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DB}",
            proxy.addr().port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .context("connect through shardgate")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let update = |k: i64| format!("update accounts set balance = balance + 1 where user_id = {k}");
    // (whole transaction, COMMIT alone) per kind: 0 = one shard, 1 = two shards.
    let mut times: [(Vec<Duration>, Vec<Duration>); 2] = Default::default();
    let plans = [(s0[0], s0[1]), (s0[0], s1[0])];
    for i in 0..args.transactions * 2 {
        let kind = i % 2;
        let (a, b) = plans[kind];
        let started = Instant::now();
        client.batch_execute("begin").await?;
        client.batch_execute(&update(a)).await?;
        client.batch_execute(&update(b)).await?;
        let committing = Instant::now();
        client.batch_execute("commit").await?;
        times[kind].1.push(committing.elapsed());
        times[kind].0.push(started.elapsed());
    }
    drop(client);
    proxy.shutdown().await;
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i].as_secs_f64() * 1000.0
    };
    let mut out = format!(
        "two-phase: {} transactions of each kind through shardgate, one client, fsync on\n\n\
         | transaction | median ms | p99 ms | COMMIT median ms | COMMIT p99 ms |\n|-|-|-|-|-|\n",
        args.transactions
    );
    let mut medians = [0.0; 2];
    for (kind, name) in [
        "2 UPDATEs, one shard (one-phase)",
        "1 UPDATE on each of 2 shards (two-phase)",
    ]
    .iter()
    .enumerate()
    {
        let (whole, commit) = &mut times[kind];
        medians[kind] = pct(commit, 0.5);
        out.push_str(&format!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            pct(whole, 0.5),
            pct(whole, 0.99),
            medians[kind],
            pct(commit, 0.99)
        ));
    }
    out.push_str(&format!(
        "\ntwo-phase COMMIT / one-phase COMMIT (medians): {:.2}x\n",
        medians[1] / medians[0].max(1e-9)
    ));
    Ok(out)
}
