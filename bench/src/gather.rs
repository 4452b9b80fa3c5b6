//! `gather`: what a cross-shard read gathered into PostgreSQL costs. Three shard primaries
//! hold N rows of a sharded table between them and a fourth server holds all N; an in-process
//! shardgate in front of the shards answers a window query (which the proxy cannot merge, so it
//! copies the shards' rows into temporary tables on the default shard and runs it there). The
//! same query runs directly on the one server. Reports the median wall time of each (all rows
//! fetched by the client) and the ratio.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use shardgate_router::Ring;
use shardgate_tests::PgCluster;

use crate::servers::connect;
use crate::{PASSWORD, USER};

#[derive(Args, Clone)]
pub struct GatherArgs {
    /// Rows in the sharded table (all of them are gathered and returned).
    #[arg(long, default_value_t = 100_000)]
    rows: i64,
    /// Runs of each query (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

const BITS: u32 = 14;
const SCHEMA: &str = "create table orders (user_id bigint not null, order_id bigint not null, \
                      amount numeric(12,2), status text, primary key (user_id, order_id))";
const QUERY: &str = "select user_id, order_id, sum(amount) over (partition by user_id \
                     order by order_id) from orders";

pub async fn run(args: GatherArgs) -> anyhow::Result<()> {
    if args.rows < 1 || args.repeats < 1 {
        bail!("--rows and --repeats must be positive");
    }
    eprintln!("starting 3 shard primaries and a reference server");
    crate::servers::measure_on(4, SCHEMA, |clusters| async move {
        let result = measure(&args, &clusters).await;
        (clusters, result)
    })
    .await
}

async fn measure(args: &GatherArgs, clusters: &[PgCluster]) -> anyhow::Result<String> {
    let (reference, shards) = clusters.split_first().context("clusters")?;
    let ring = Ring::new(&["s0", "s1", "s2"], BITS)?;
    let rows = format!(
        "select g % 5000 as user_id, g as order_id, (g % 100000) / 100.0 as amount, \
         (array['new','paid','shipped'])[1 + g % 3] as status from generate_series(1, {}) g",
        args.rows
    );
    connect(reference.port())
        .await?
        .batch_execute(&format!("insert into orders {rows}; analyze orders"))
        .await
        .context("loading the reference")?;
    for (i, c) in shards.iter().enumerate() {
        let pred = ring.predicate(i, "hashint8extended(user_id, 0)");
        connect(c.port())
            .await?
            .batch_execute(&format!(
                "insert into orders select * from ({rows}) r where {pred}; analyze orders"
            ))
            .await
            .context("loading a shard")?;
    }
    let mut text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\nshutdown_timeout = \"2s\"\n\n\
         [pool]\nmode = \"transaction\"\nsize = 8\n\n\
         [limits]\nmax_gather_rows = {}\n\n\
         [[users]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n\n\
         [[sharding.tables]]\nname = \"orders\"\n",
        args.rows.max(1_000_000)
    );
    for (i, c) in shards.iter().enumerate() {
        text.push_str(&format!(
            "\n[[shards]]\nname = \"s{i}\"\nprimary = {{ host = \"127.0.0.1\", port = {} }}\n",
            c.port()
        ));
    }
    let config = shardgate_config::Config::from_toml(&text, Path::new("bench-gather.toml"))?;
    let proxy = shardgate_proxy::start(config).await?;
    let through = connect(proxy.addr().port()).await?;
    let direct = connect(reference.port()).await?;
    let route = through
        .simple_query(&format!("SHARDGATE ROUTE {QUERY}"))
        .await?
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(3).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default();
    if !route.contains("gather") {
        bail!("the query is not gathered: {route}");
    }
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..args.repeats {
        for (i, client) in [&direct, &through].into_iter().enumerate() {
            let t = Instant::now();
            let got = client.query(QUERY, &[]).await?;
            times[i].push(t.elapsed());
            if got.len() as i64 != args.rows {
                bail!("{} rows instead of {}", got.len(), args.rows);
            }
        }
    }
    drop(through);
    proxy.shutdown().await;
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (d, g) = (median(&mut times[0]), median(&mut times[1]));
    Ok(format!(
        "| query | rows | direct (one PostgreSQL) | shardgate, gathered from 3 shards | ratio |\n\
         | --- | --- | --- | --- | --- |\n\
         | `{QUERY}` | {} | {:.1} ms | {:.1} ms | {:.2}× |\n\
         (median of {} runs, all rows fetched in binary by tokio-postgres)",
        args.rows,
        d.as_secs_f64() * 1e3,
        g.as_secs_f64() * 1e3,
        g.as_secs_f64() / d.as_secs_f64(),
        args.repeats
    ))
}
