//! `copy`: bulk writes split by shard key. `COPY … FROM STDIN` of N rows (text format) and
//! `COPY … TO STDOUT` back, through an in-process shardgate in front of two shard primaries vs
//! straight into one plain PostgreSQL with the same schema, interleaved; then a multi-row
//! INSERT whose rows belong to both shards (split, committed together) vs one whose rows are
//! all on one shard, and the same INSERT straight into PostgreSQL. Rows/s and latency ratios.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use shardgate_router::{KeyValue, Router};
use shardgate_tests::PgCluster;

use crate::servers::connect;

#[derive(Args, Clone)]
pub struct CopyArgs {
    /// Rows per COPY.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// COPY runs per target (interleaved; the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Multi-row INSERTs of each kind (interleaved).
    #[arg(long, default_value_t = 300)]
    inserts: usize,
    /// Rows per multi-row INSERT.
    #[arg(long, default_value_t = 100)]
    insert_rows: usize,
}

const SCHEMA: &str = "create table orders (order_id bigint not null, user_id bigint not null, \
                      note text, amount numeric)";

pub async fn run(args: CopyArgs) -> anyhow::Result<()> {
    if args.rows < 1000 || args.repeats == 0 || args.inserts < 10 || args.insert_rows < 2 {
        bail!("--rows ≥ 1000, --repeats ≥ 1, --inserts ≥ 10, --insert-rows ≥ 2");
    }
    eprintln!("starting 2 shard primaries and 1 plain PostgreSQL");
    crate::servers::measure_on(3, SCHEMA, |clusters| async move {
        let result = measure(&args, &clusters).await;
        (clusters, result)
    })
    .await
}

async fn measure(args: &CopyArgs, clusters: &[PgCluster]) -> anyhow::Result<String> {
    let mut text = "[listen]\naddr = \"127.0.0.1:0\"\nshutdown_timeout = \"2s\"\n\n\
         [pool]\nmode = \"transaction\"\nsize = 4\n\n\
         [[users]]\nname = \"bench\"\npassword = \"bench-secret\"\n\n\
         [[sharding.tables]]\nname = \"orders\"\n"
        .to_owned();
    for (i, c) in clusters[..2].iter().enumerate() {
        text.push_str(&format!(
            "\n[[shards]]\nname = \"s{i}\"\nprimary = {{ host = \"127.0.0.1\", port = {} }}\n",
            c.port()
        ));
    }
    let config = shardgate_config::Config::from_toml(&text, Path::new("bench-copy.toml"))?;
    let router = Router::new(&config)?;
    let proxy = shardgate_proxy::start(config).await?;
    let through = connect(proxy.addr().port()).await?;
    let direct = connect(clusters[2].port()).await?;
    let shard_clients = [
        connect(clusters[0].port()).await?,
        connect(clusters[1].port()).await?,
    ];

    let mut data = Vec::with_capacity(args.rows * 40);
    for i in 0..args.rows {
        data.extend_from_slice(
            format!("{i}\t{}\tnote {i}\t{}.50\n", i % 100_003, i % 977).as_bytes(),
        );
    }
    let data = Bytes::from(data);
    // (copy in, copy out) seconds per target: 0 = direct, 1 = shardgate.
    let mut secs: [(Vec<f64>, Vec<f64>); 2] = Default::default();
    for _ in 0..args.repeats {
        for (t, client) in [&direct, &through].into_iter().enumerate() {
            client.batch_execute("truncate orders").await.ok();
            if t == 1 {
                for c in &shard_clients {
                    c.batch_execute("truncate orders").await?;
                }
            }
            let started = Instant::now();
            let what = ["direct", "shardgate"][t];
            let sink = client
                .copy_in::<_, Bytes>("copy orders from stdin")
                .await
                .with_context(|| format!("COPY FROM through {what}"))?;
            futures_util::pin_mut!(sink);
            // 64 KiB CopyData messages, as psql sends its input.
            for piece in data.chunks(64 * 1024) {
                sink.send(data.slice_ref(piece)).await?;
            }
            let n = sink
                .finish()
                .await
                .with_context(|| format!("COPY FROM through {what}"))?;
            secs[t].0.push(started.elapsed().as_secs_f64());
            anyhow::ensure!(n as usize == args.rows, "COPY {n}, want {}", args.rows);
            let started = Instant::now();
            let out = client
                .copy_out("copy orders to stdout")
                .await
                .with_context(|| format!("COPY TO through {what}"))?;
            futures_util::pin_mut!(out);
            let mut lines = 0usize;
            while let Some(chunk) = out.next().await {
                lines += chunk?.iter().filter(|b| **b == b'\n').count();
            }
            secs[t].1.push(started.elapsed().as_secs_f64());
            anyhow::ensure!(lines == args.rows, "COPY TO gave {lines} rows");
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rows = args.rows as f64;
    let mut out = format!(
        "copy: {} rows (text format, ~{} MB), {} runs each, interleaved; shardgate in front of 2 shards\n\n\
         | target | COPY FROM rows/s | COPY TO rows/s |\n|-|-|-|\n",
        args.rows,
        data.len() / 1_000_000,
        args.repeats
    );
    let mut rates = [(0.0, 0.0); 2];
    for (t, name) in [
        "PostgreSQL directly (1 server)",
        "shardgate, split over 2 shards",
    ]
    .iter()
    .enumerate()
    {
        let (cin, cout) = &mut secs[t];
        rates[t] = (rows / median(cin), rows / median(cout));
        out.push_str(&format!(
            "| {name} | {:.0} | {:.0} |\n",
            rates[t].0, rates[t].1
        ));
    }
    out.push_str(&format!(
        "\nshardgate / direct: COPY FROM {:.2}x, COPY TO {:.2}x\n",
        rates[1].0 / rates[0].0,
        rates[1].1 / rates[0].1
    ));
    out.push_str(&inserts(args, &router, &through, &direct).await?);
    drop(through);
    proxy.shutdown().await;
    Ok(out)
}

/// Multi-row INSERT latency: rows of both shards (split), of one shard, and straight into
/// PostgreSQL.
async fn inserts(
    args: &CopyArgs,
    router: &Router,
    through: &tokio_postgres::Client,
    direct: &tokio_postgres::Client,
) -> anyhow::Result<String> {
    let on = |s: usize| -> Vec<i64> {
        (1i64..)
            .filter(|k| router.shard_for_key(&KeyValue::Int(*k)) == s)
            .take(args.insert_rows)
            .collect()
    };
    let one_shard = on(0);
    let both: Vec<i64> = on(0)
        .into_iter()
        .zip(on(1))
        .flat_map(|(a, b)| [a, b])
        .take(args.insert_rows)
        .collect();
    let statement = |keys: &[i64]| {
        let values: Vec<String> = keys
            .iter()
            .map(|k| format!("({k}, {k}, 'bulk', 1)"))
            .collect();
        format!(
            "insert into orders (order_id, user_id, note, amount) values {}",
            values.join(", ")
        )
    };
    let cases = [
        (
            "shardgate, rows of 2 shards (split, two-phase)",
            through,
            statement(&both),
        ),
        ("shardgate, rows of 1 shard", through, statement(&one_shard)),
        ("PostgreSQL directly", direct, statement(&both)),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    for _ in 0..args.inserts {
        for (i, (_, client, sql)) in cases.iter().enumerate() {
            let started = Instant::now();
            if let Err(e) = client.batch_execute(sql).await {
                bail!(
                    "{}: {}",
                    cases[i].0,
                    e.as_db_error().map_or(e.to_string(), |d| d.to_string())
                );
            }
            times[i].push(started.elapsed());
        }
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
    };
    let mut out = format!(
        "\nmulti-row INSERT of {} rows, {} each, interleaved, one client\n\n\
         | INSERT | median ms | p99 ms |\n|-|-|-|\n",
        args.insert_rows, args.inserts
    );
    let mut medians = Vec::new();
    for ((name, _, _), t) in cases.iter().zip(times.iter_mut()) {
        let m = pct(t, 0.5);
        medians.push(m);
        out.push_str(&format!("| {name} | {m:.3} | {:.3} |\n", pct(t, 0.99)));
    }
    out.push_str(&format!(
        "\nsplit / one-shard (medians): {:.2}x; one-shard / direct: {:.2}x\n",
        medians[0] / medians[1],
        medians[1] / medians[2]
    ));
    Ok(out)
}
