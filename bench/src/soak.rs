//! `bench soak --seconds N`: the protocol soak of the end-to-end tests (`shardgate_tests::
//! soak`), longer and with more clients, on two shards with a streaming replica each and the
//! proxy in process. Prints requests per driver and per kind; exits non-zero when any request
//! went unanswered or ended unexpectedly, or when sessions, checkouts or busy server
//! connections are left afterwards.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use shardgate_admin::control::ControlPlane;
use shardgate_tests::soak::{self, SoakConfig};
use shardgate_tests::{Auth, ClusterOptions, PgCluster};

const USER: &str = "app";
const PASSWORD: &str = "app-secret";
const DB: &str = "app";
const SCHEMA: &str =
    "create table users (user_id bigint primary key, name text not null default 'user');";

#[derive(Args, Clone)]
pub struct SoakArgs {
    /// How long the clients run.
    #[arg(long, default_value_t = 300)]
    seconds: u64,
    /// Seed of the random request mix (the same seed repeats the same mix per client).
    #[arg(long, default_value_t = 14)]
    seed: u64,
    /// tokio-postgres clients.
    #[arg(long, default_value_t = 16)]
    rust_clients: usize,
    /// Clients per Python driver (psycopg sync, psycopg async, asyncpg); 0 skips Python.
    #[arg(long, default_value_t = 4)]
    python_clients: usize,
    /// node-postgres clients; 0 skips node.
    #[arg(long, default_value_t = 6)]
    node_clients: usize,
    /// Seconds a request may take before it counts as unanswered.
    #[arg(long, default_value_t = 30)]
    deadline: u64,
}

/// A shard: its primary and replica (the replica stops first).
struct Shard {
    replica: Option<PgCluster>,
    primary: PgCluster,
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.replica.take();
    }
}

fn start_shard() -> anyhow::Result<Shard> {
    let p = PgCluster::start(ClusterOptions::default().user(USER, PASSWORD, Auth::Scram))?;
    p.create_database(DB, USER)?;
    p.psql_as(USER, PASSWORD, DB, SCHEMA)?;
    let r = p.start_replica()?;
    Ok(Shard {
        replica: Some(r),
        primary: p,
    })
}

fn config(shards: &[Shard]) -> anyhow::Result<shardgate_config::Config> {
    let mut text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\nshutdown_timeout = \"2s\"\n\n\
         [[users]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n\n\
         [sharding]\nkey_column = \"user_id\"\n\n[[sharding.tables]]\nname = \"users\"\n"
    );
    for (i, s) in shards.iter().enumerate() {
        let replica = s.replica.as_ref().map_or(0, PgCluster::port);
        text.push_str(&format!(
            "\n[[shards]]\nname = \"s{i}\"\nprimary = {{ host = \"127.0.0.1\", port = {} }}\n\
             replicas = [{{ host = \"127.0.0.1\", port = {replica} }}]\n",
            s.primary.port()
        ));
    }
    Ok(shardgate_config::Config::from_toml(
        &text,
        Path::new("bench-soak.toml"),
    )?)
}

pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    let python = if args.python_clients > 0 {
        Some(tokio::task::spawn_blocking(shardgate_tests::python_env).await??)
    } else {
        None
    };
    let node = if args.node_clients > 0 {
        Some(tokio::task::spawn_blocking(shardgate_tests::node_env).await??)
    } else {
        None
    };
    eprintln!("starting 2 shards, each a primary with a streaming replica");
    let shards = tokio::task::spawn_blocking(|| -> anyhow::Result<Vec<Shard>> {
        std::thread::scope(|s| {
            let a = s.spawn(start_shard);
            let b = s.spawn(start_shard);
            let a = a
                .join()
                .map_err(|_| anyhow::anyhow!("shard start panicked"))??;
            let b = b
                .join()
                .map_err(|_| anyhow::anyhow!("shard start panicked"))??;
            Ok(vec![a, b])
        })
    })
    .await??;
    let result = soak_on(&args, &shards, python, node).await;
    tokio::task::spawn_blocking(move || drop(shards)).await.ok();
    result
}

async fn soak_on(
    args: &SoakArgs,
    shards: &[Shard],
    python: Option<std::path::PathBuf>,
    node: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let proxy = shardgate_proxy::start(config(shards)?)
        .await
        .context("start the proxy")?;
    let control = proxy.control(None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !control.replicas().iter().all(|r| r.in_rotation) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let port = proxy.addr().port();
    let cfg = SoakConfig {
        conn_str: format!("host=127.0.0.1 port={port} user={USER} password={PASSWORD} dbname={DB}"),
        url: format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{port}/{DB}"),
        duration: Duration::from_secs(args.seconds),
        seed: args.seed,
        rust_clients: args.rust_clients,
        python_clients: args.python_clients,
        node_clients: args.node_clients,
        request_deadline: Duration::from_secs(args.deadline),
        python,
        node,
    };
    eprintln!(
        "soak: {} s, seed {}, {} tokio-postgres + 3×{} Python + {} node clients",
        args.seconds, args.seed, args.rust_clients, args.python_clients, args.node_clients
    );
    let started = Instant::now();
    let report = soak::run(&cfg).await;
    let took = started.elapsed();
    println!(
        "{} requests answered in {took:.1?} ({:.0}/s)",
        report.total(),
        report.total() as f64 / took.as_secs_f64()
    );
    for (driver, n) in &report.script_requests {
        println!("  {driver:<16} {n}");
    }
    for (kind, n) in &report.answered {
        println!("  tokio-postgres {kind:<28} {n}");
    }
    let shared = proxy.shared().clone();
    let settle = Instant::now() + Duration::from_secs(15);
    while shared.client_count() > 0 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let in_use: u32 = control.pools().iter().map(|p| p.in_use).sum();
    let sessions = shared.client_count();
    proxy.shutdown().await;
    if !report.failures.is_empty() {
        bail!("soak failures:\n{}", report.failures.join("\n"));
    }
    if sessions > 0 || in_use > 0 {
        bail!("after the soak: {sessions} sessions left, {in_use} server connections checked out");
    }
    println!("every request answered; no session or checkout left");
    Ok(())
}
