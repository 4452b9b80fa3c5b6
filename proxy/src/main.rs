//! The `shardgate` command: `serve`, `check`, `demo` and `admin`.

mod demo;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shardgate_admin::control::ControlPlane;
use shardgate_config::{format_duration, Config};

#[derive(Parser)]
#[command(
    name = "shardgate",
    version,
    about = "A sharding-aware PostgreSQL proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// Config file (TOML); see shardgate.example.toml.
        #[arg(long, short, env = "SHARDGATE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file and print what would run; with --route, where a statement goes.
    Check {
        #[arg(long, short, env = "SHARDGATE_CONFIG")]
        config: PathBuf,
        /// A SQL statement: print its shard, role, keys and the reason.
        #[arg(long)]
        route: Option<String>,
    },
    /// Start local shards (PostgreSQL primaries with streaming replicas) and the proxy in front
    /// of them, ready for psql; Ctrl-C stops and removes everything.
    Demo(demo::DemoArgs),
    /// Talk to a running shardgate's admin API: shards, pools, replicas, reload.
    Admin(shardgate_admin::cli::AdminArgs),
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). A filter of targets and levels
/// only (`info`, `shardgate_pool=debug,warn`) uses `filter::Targets`; one with span or field
/// directives needs `EnvFilter`, which takes a lock and a hash lookup at every enter and exit
/// of a span: each client session's future enters its span at every poll, several times per
/// transaction.
fn init_logging() {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, Registry};
    let directives = std::env::var("RUST_LOG").unwrap_or_default();
    let targets = if directives.trim().is_empty() {
        Some(Targets::new().with_default(LevelFilter::INFO))
    } else if directives.contains(['[', '{']) {
        // Span and field directives (`[client]=debug`): `Targets` would read `[client]` as a
        // target name.
        None
    } else {
        directives.parse::<Targets>().ok()
    };
    // `Targets` when it can read the directives: `EnvFilter` takes a lock and a hash lookup
    // at every entry and exit of the session span, which is entered at every poll.
    let filter: Box<dyn Layer<Registry> + Send + Sync> = match targets {
        Some(targets) => Box::new(targets),
        None => {
            Box::new(EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info")))
        }
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    #[cfg(feature = "failpoints")]
    shardgate_rebalance::failpoints::setup_from_env();
    // The one setting read before the runtime starts (a bad file fails again, with its
    // reason, when `serve` loads it); the other commands (the demo's proxy) take its default.
    let listen = match &cli.command {
        Command::Serve { config } => Config::load(config).map(|c| c.listen).unwrap_or_default(),
        _ => Default::default(),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = listen.threads(cores);
    // One thread: the current-thread runtime, without the multi-thread one's work stealing
    // and cross-thread wakes (see `Listen::threads`). The demo blocks in place, which only
    // the multi-thread runtime allows.
    let mut builder = if threads == 1 && matches!(cli.command, Command::Serve { .. }) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = match cli.command {
        Command::Serve { config } => runtime.block_on(serve(config)),
        Command::Check { config, route } => check(&config, route.as_deref(), &runtime),
        Command::Demo(args) => runtime.block_on(demo::run(args)),
        // A blocking HTTP client; it prints its own one-line failure reason.
        Command::Admin(args) => std::process::exit(shardgate_admin::cli::run(args)),
    };
    // Dropping the runtime would wait for every blocking task (planning a huge statement, a
    // stuck resolver) without limit: shutdown ends at listen.shutdown_timeout, not later.
    runtime.shutdown_timeout(RUNTIME_STOP_TIMEOUT);
    result
}

/// What the runtime gets to stop its remaining tasks after the proxy has drained.
const RUNTIME_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

async fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let admin_config = config.admin.clone();
    // Before anything listens: a token_env whose variable is missing stops the start (the
    // admin server checks again, for the demo and embedders).
    admin_config.resolved_token()?;
    // The file store keeps the shard map that rebalancing changes next to the config file.
    let state_file = state_file_of(&config, &path);
    let proxy = shardgate_proxy::start_with_state_file(config, Some(state_file)).await?;
    let admin =
        shardgate_admin::AdminServer::start(proxy.control(Some(path.clone())), &admin_config)
            .await?;
    let control = proxy.control(Some(path.clone()));
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let stop = wait_for_stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            done = &mut stop => {
                done?;
                break;
            }
            _ = hangup.recv() => {
                // Reading the file is blocking work; the outcome is logged either way.
                let control = Arc::clone(&control);
                match tokio::task::spawn_blocking(move || control.reload()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e.message, hint = %e.hint, "reload refused"),
                    Err(e) => tracing::error!(error = %e, "reload failed"),
                }
            }
        }
    }
    tracing::info!("shutting down: draining clients");
    proxy.shutdown().await;
    admin.stop();
    Ok(())
}

/// The file store keeps the shard map that rebalancing changes next to the config file.
fn state_file_of(config: &Config, path: &std::path::Path) -> PathBuf {
    config.topology.state_file.clone().unwrap_or_else(|| {
        let mut name = path.to_path_buf().into_os_string();
        name.push(".topology.json");
        PathBuf::from(name)
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn wait_for_stop_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn check(
    path: &std::path::Path,
    route: Option<&str>,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    let c = Config::load(path)?;
    if let Some(sql) = route {
        let router = shardgate_router::Router::new(&c)?;
        let [shard, role, keys, reason] = shardgate_proxy::explain(&router, sql, None);
        println!("shard   {shard}");
        println!("role    {role}");
        println!("keys    {keys}");
        println!("reason  {reason}");
        return Ok(());
    }
    println!("config {} is valid", path.display());
    println!(
        "listen      {} (max {} clients, messages up to {} bytes)",
        c.listen.addr, c.listen.max_client_connections, c.listen.max_message_size
    );
    if let Some(dir) = &c.listen.unix_socket_dir {
        println!("unix socket {}/.s.PGSQL.<port>", dir.display());
    }
    println!("admin       http://{}", c.admin.listen);
    println!(
        "pools       {} mode, size {} (min {}), connect timeout {}, checkout timeout {}",
        c.pool.mode,
        c.pool.size,
        c.pool.min_size,
        format_duration(c.pool.connect_timeout),
        format_duration(c.pool.checkout_timeout)
    );
    for u in &c.users {
        println!(
            "user        {} (auth {}, server role {}, {} mode, pool size {})",
            u.name,
            u.auth,
            u.server_user(),
            u.pool_mode.unwrap_or(c.pool.mode),
            u.pool_size.unwrap_or(c.pool.size)
        );
    }
    let default = &c.default_shard().name;
    for s in &c.shards {
        let mark = if &s.name == default {
            " (default shard)"
        } else {
            ""
        };
        println!("shard       {}{mark}: primary {}", s.name, s.primary);
        for r in &s.replicas {
            println!("              replica {r}");
        }
    }
    runtime.block_on(check_sequences(&c, path));
    Ok(())
}

/// The sequences of sharded tables as the shards have them now, and warnings for those the id
/// lanes cannot manage (shared by several tables, too small for the lanes). Read-only; shards
/// that cannot be reached are a warning, not a failure of `check`.
async fn check_sequences(c: &Config, path: &std::path::Path) {
    if c.sharding.tables.is_empty() {
        return;
    }
    // The store's map when it can be read (it holds shards added since, and their lanes).
    let map = match shardgate_topology::Store::open(c, Some(state_file_of(c, path))).await {
        Ok(store) => store.shard_map().await.ok(),
        Err(_) => None,
    }
    .unwrap_or_else(|| shardgate_topology::ShardMap::new(1, c.shards.clone(), &Default::default()));
    let report = shardgate_rebalance::inspect_sequences(c, &map).await;
    if report.lanes == 0 {
        println!("id lanes    off (sharding.id_lanes = 0)");
    } else {
        println!("id lanes    {}", report.lanes);
    }
    for s in &report.sequences {
        let state = if s.on_lane {
            "on its lane"
        } else if s.warning.is_some() {
            "not managed"
        } else {
            "not on its lane yet (shardgate serve puts it there)"
        };
        println!(
            "sequence    {}.{} on {} ({}): {} {}, lane {}, increment {}: {state}",
            s.table,
            s.column,
            s.shard,
            s.database,
            s.sequence,
            s.data_type,
            s.lane.map_or("-".into(), |l| l.to_string()),
            s.increment
        );
    }
    for w in &report.warnings {
        println!("warning     {w}");
    }
}
