//! `shardgate demo`: local PostgreSQL shards (each a primary and streaming replicas) under one
//! temp dir, a sample sharded schema with some rows, and the proxy in front, for trying
//! shardgate with psql. Everything stops and is removed on Ctrl-C or SIGTERM, also when the
//! signal arrives while the servers are still starting.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use shardgate_config::Config;
use shardgate_localpg::{Auth, ClusterOptions, PgCluster};
use shardgate_router::{KeyValue, Router};
use tokio::signal::unix::{signal, Signal, SignalKind};

const USER: &str = "app";
const PASSWORD: &str = "app-secret";
const DATABASE: &str = "app";
/// The harness clusters' superuser, which the rebalancer uses.
const SUPERUSER: &str = "postgres";
const SUPERUSER_PASSWORD: &str = "postgres";
/// Sample users 1..=USERS, each with 1 to 3 orders.
const USERS: i64 = 100;

/// The sample schema, created on every shard. Every column but `user_id` has a default, so
/// `insert into orders (user_id) values (7)` works; `order_id` is unique across shards because
/// the proxy puts each shard's sequence on its id lane at start (before the sample rows go in).
/// `plans` is a reference table: the same rows on every shard (a spare gets them when it is
/// added), so each user's join with its plan runs on the user's shard.
const SCHEMA: &str = "
create table plans (
    plan_id    int primary key,
    name       text not null,
    price      numeric(8,2) not null
);
insert into plans values (1, 'free', 0), (2, 'pro', 9.99), (3, 'team', 29.99);
create table users (
    user_id    bigint primary key,
    name       text not null default 'user',
    plan_id    int not null default 1 references plans (plan_id),
    created_at timestamptz not null default now()
);
create table orders (
    order_id   bigserial,
    user_id    bigint not null,
    amount     numeric(12,2) not null default 0,
    status     text not null default 'new',
    created_at timestamptz not null default now(),
    primary key (user_id, order_id)
);
";

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Number of shards (named s0, s1, …).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    shards: u16,
    /// Streaming replicas per shard.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=4))]
    replicas: u16,
    /// Extra primaries started empty and left out of the shard map, each ready to be brought
    /// in live with the `shardgate admin shards add …` command the demo prints.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=4))]
    spare_shards: u16,
    /// Port for the proxy.
    #[arg(long, default_value_t = 6432)]
    port: u16,
    /// Port for the admin HTTP server.
    #[arg(long, default_value_t = 9930)]
    admin_port: u16,
    /// Directory in which to create the demo's directory (PostgreSQL data and the generated
    /// config); default: the system's temp dir. Only the demo's own directory is removed.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// How the sample rows are written: straight into each shard's primary (placed by the
    /// ring, as the proxy would), or through the proxy.
    #[arg(long, value_enum, default_value_t = InsertVia::Proxy, hide = true)]
    insert_via: InsertVia,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum InsertVia {
    Shards,
    Proxy,
}

/// One shard: its primary and replicas. Replicas stop before the primary.
struct Shard {
    name: String,
    primary: PgCluster,
    replicas: Vec<PgCluster>,
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.replicas.clear();
    }
}

/// All the demo's servers: the shards, then the spare primaries. Dropping stops every
/// replica, then every primary (each group in parallel), and removes their directories. It
/// blocks: drop it on a blocking thread.
#[derive(Default)]
struct Servers {
    shards: Vec<Shard>,
    spares: Vec<Shard>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        let replicas: Vec<PgCluster> = self
            .shards
            .iter_mut()
            .flat_map(|s| std::mem::take(&mut s.replicas))
            .collect();
        drop_in_parallel(replicas);
        let mut primaries = std::mem::take(&mut self.shards);
        primaries.append(&mut self.spares);
        drop_in_parallel(primaries);
    }
}

fn drop_in_parallel<T: Send>(items: Vec<T>) {
    std::thread::scope(|scope| {
        for item in items {
            scope.spawn(move || drop(item));
        }
    });
}

/// The demo's own directory: cluster directories and the config live in it; removed on drop.
struct DemoDir(PathBuf);

impl DemoDir {
    fn create(parent: Option<&Path>) -> anyhow::Result<DemoDir> {
        if let Some(dir) = parent {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::env::set_var(shardgate_localpg::template::TMPDIR_ENV, dir);
        }
        let root = shardgate_localpg::template::new_server_dir("shardgate-demo-")?;
        // Every cluster (and the harness's template) goes under it.
        std::env::set_var(shardgate_localpg::template::TMPDIR_ENV, &root);
        Ok(DemoDir(root))
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("could not remove {}: {e}", self.0.display());
            }
        }
    }
}

/// SIGINT and SIGTERM, caught from the start so that a signal during startup cleans up too.
struct StopSignal {
    int: Signal,
    term: Signal,
}

impl StopSignal {
    fn install() -> anyhow::Result<StopSignal> {
        Ok(StopSignal {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut stop = StopSignal::install()?;
    let dir = DemoDir::create(args.dir.as_deref())?;
    let replicas = if args.replicas == 0 {
        "no replicas".to_owned()
    } else if args.replicas == 1 {
        "1 replica".to_owned()
    } else {
        format!("{} replicas", args.replicas)
    };
    eprintln!(
        "starting {} shard(s), each a PostgreSQL primary with {replicas}, under {} ...",
        args.shards,
        dir.0.display()
    );

    let cancel = Arc::new(AtomicBool::new(false));
    let mut starting = tokio::task::spawn_blocking({
        let cancel = Arc::clone(&cancel);
        let (shards, replicas) = (usize::from(args.shards), usize::from(args.replicas));
        let spares = usize::from(args.spare_shards);
        move || start_servers(shards, replicas, spares, &cancel)
    });
    let servers = tokio::select! {
        started = &mut starting => started.context("starting PostgreSQL")??,
        _ = stop.wait() => {
            eprintln!("stopping ...");
            cancel.store(true, Ordering::SeqCst);
            // Whatever had started is dropped (stopped and removed) on the blocking thread.
            let _ = starting.await;
            return Ok(());
        }
    };
    let servers = BlockingDrop(Some(servers));
    let shards = &servers.get().shards;
    let spares = &servers.get().spares;

    let config_path = dir.0.join("shardgate.toml");
    let config_text = config_toml(&args, shards, &dir.0);
    std::fs::write(&config_path, &config_text)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let config = Config::from_toml(&config_text, &config_path)?;
    let router = Router::new(&config)?;
    let rows = sample_rows(&router);

    if args.insert_via == InsertVia::Shards {
        insert_directly(&servers, &rows).await?;
    }
    let admin_config = config.admin.clone();
    let proxy = shardgate_proxy::start(config).await?;
    let admin = shardgate_admin::AdminServer::start(
        proxy.control(Some(config_path.clone())),
        &admin_config,
    )
    .await?;
    let proxy_url = format!(
        "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}",
        proxy.addr().port()
    );
    if args.insert_via == InsertVia::Proxy {
        let sql: String = rows.iter().map(|r| r.sql.as_str()).collect();
        let url = proxy_url.clone();
        tokio::task::spawn_blocking(move || shardgate_localpg::psql_url(&url, &sql))
            .await?
            .context("inserting the sample rows through the proxy")?;
    }

    let home_of_42 = &router.shard_names()[router.shard_for_key(&KeyValue::Int(42))];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "shardgate demo is running: {} shard(s), each a primary with {replicas}. Connect with:\n",
        shards.len()
    );
    let _ = writeln!(out, "  psql {proxy_url}\n");
    for s in shards {
        let _ = writeln!(
            out,
            "shard {} primary: {}",
            s.name,
            s.primary.url(USER, PASSWORD, DATABASE)
        );
        for r in &s.replicas {
            let _ = writeln!(
                out,
                "shard {} replica: {}",
                s.name,
                r.url(USER, PASSWORD, DATABASE)
            );
        }
    }
    let _ = writeln!(
        out,
        "\nTables users and orders are sharded by user_id ({USERS} users with a few orders each); \
         plans is a reference table, copied to every shard. Try:\n"
    );
    let _ = writeln!(
        out,
        "  select * from orders where user_id = 42;   -- routed: user 42 lives on {home_of_42}"
    );
    let _ = writeln!(
        out,
        "  select count(*) from orders;               -- cross-shard: every shard answers, merged"
    );
    let _ = writeln!(
        out,
        "  select u.name, p.name, p.price from users u join plans p using (plan_id) where u.user_id = 42;\n      -- one shard: {home_of_42} has its own copy of plans"
    );
    let _ = writeln!(
        out,
        "  update plans set price = 12.99 where plan_id = 2;   -- every shard, atomically"
    );
    let _ = writeln!(
        out,
        "  SHARDGATE ROUTE select * from orders where user_id = 42;   -- where it goes, and why"
    );
    let _ = writeln!(
        out,
        "  insert into orders (user_id) values (7) returning order_id;   -- ids unique across shards"
    );
    let _ = writeln!(
        out,
        "  select shardgate.unique_id();              -- a 64-bit id no other shard hands out\n"
    );
    if !spares.is_empty() {
        let _ = writeln!(
            out,
            "Spare shard(s), empty and not in the shard map yet. Bring one in while traffic flows \
             (its rows move live; the schema is copied):\n"
        );
        for s in spares {
            let _ = writeln!(
                out,
                "  cargo run --release -- admin --url http://{} shards add {} --primary {}",
                admin.addr(),
                s.name,
                s.primary.url(SUPERUSER, SUPERUSER_PASSWORD, "postgres")
            );
        }
        let _ = writeln!(
            out,
            "  cargo run --release -- admin --url http://{} rebalance status --watch\n",
            admin.addr()
        );
    }
    let _ = writeln!(out, "config: {}", config_path.display());
    let _ = writeln!(out, "admin: http://{}/health", admin.addr());
    let _ = writeln!(out, "data directory: {}", dir.0.display());
    let _ = writeln!(out, "Press Ctrl-C to stop and remove everything.");
    print!("{out}");

    stop.wait().await;
    eprintln!("stopping ...");
    proxy.shutdown().await;
    admin.stop();
    servers.drop_now().await;
    drop(dir);
    Ok(())
}

/// Starts every shard in parallel: a primary with the `app` user, database and sample schema,
/// then its replicas. Stops early (dropping what started) once `cancel` is set.
fn start_servers(
    shards: usize,
    replicas: usize,
    spares: usize,
    cancel: &AtomicBool,
) -> anyhow::Result<Servers> {
    let started: Vec<anyhow::Result<Shard>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..shards + spares)
            .map(|i| {
                let spare = i >= shards;
                let replicas = if spare { 0 } else { replicas };
                scope.spawn(move || start_shard(format!("s{i}"), replicas, spare, cancel))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a shard's start-up panicked")))
            })
            .collect()
    });
    let mut servers = Servers::default();
    let mut first_error = None;
    for (i, shard) in started.into_iter().enumerate() {
        match shard {
            Ok(s) if i < shards => servers.shards.push(s),
            Ok(s) => servers.spares.push(s),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        // `servers` stops and removes the shards that did start.
        Some(e) => Err(e),
        None => Ok(servers),
    }
}

/// A shard's primary with the `app` user and database, its sample schema unless it is a
/// spare (the rebalancer copies the schema when the spare is added), and its replicas.
fn start_shard(
    name: String,
    replicas: usize,
    spare: bool,
    cancel: &AtomicBool,
) -> anyhow::Result<Shard> {
    let cancelled = || {
        if cancel.load(Ordering::SeqCst) {
            Err(anyhow::anyhow!("cancelled"))
        } else {
            Ok(())
        }
    };
    cancelled()?;
    let primary = PgCluster::start(ClusterOptions::default().user(USER, PASSWORD, Auth::Scram))
        .with_context(|| format!("starting shard {name}'s primary"))?;
    let mut shard = Shard {
        name,
        primary,
        replicas: Vec::new(),
    };
    cancelled()?;
    shard.primary.create_database(DATABASE, USER)?;
    if spare {
        return Ok(shard);
    }
    shard
        .primary
        .psql_as(USER, PASSWORD, DATABASE, SCHEMA)
        .with_context(|| format!("creating the sample schema on shard {}", shard.name))?;
    for _ in 0..replicas {
        cancelled()?;
        let replica = shard
            .primary
            .start_replica()
            .with_context(|| format!("starting a replica of shard {}", shard.name))?;
        shard.replicas.push(replica);
    }
    Ok(shard)
}

/// Drops its value on a blocking thread, whether via [`BlockingDrop::drop_now`] or, on an
/// early return, in `Drop` (blocking the current thread then).
struct BlockingDrop<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> BlockingDrop<T> {
    fn get(&self) -> &T {
        self.0.as_ref().expect("present until dropped")
    }

    async fn drop_now(mut self) {
        if let Some(v) = self.0.take() {
            let _ = tokio::task::spawn_blocking(move || drop(v)).await;
        }
    }
}

impl<T: Send + 'static> Drop for BlockingDrop<T> {
    fn drop(&mut self) {
        if let Some(v) = self.0.take() {
            tokio::task::block_in_place(move || drop(v));
        }
    }
}

/// The generated config: the shards with their replicas, `users` and `orders` sharded by
/// `user_id`.
fn config_toml(args: &DemoArgs, shards: &[Shard], dir: &Path) -> String {
    let mut text = format!(
        r#"# Written by `shardgate demo`; removed when the demo stops.
[listen]
addr = "127.0.0.1:{port}"

[admin]
listen = "127.0.0.1:{admin}"

[[users]]
name = "{USER}"
password = "{PASSWORD}"

[sharding]
key_column = "user_id"

[[sharding.tables]]
name = "users"

[[sharding.tables]]
name = "orders"

# A copy on every shard: reads go to any one shard, writes to all of them at once.
[[sharding.reference_tables]]
name = "plans"

# The shard map changes with `shardgate admin shards add|remove`; it is kept here.
[topology]
state_file = "{state}"

# The rebalancer logs in to each shard as the clusters' superuser.
[rebalance]
databases = ["{DATABASE}"]
admin_user = "{SUPERUSER}"
admin_password = "{SUPERUSER_PASSWORD}"
"#,
        port = args.port,
        admin = args.admin_port,
        state = dir.join("topology.json").display(),
    );
    for s in shards {
        let replicas: Vec<String> = s
            .replicas
            .iter()
            .map(|r| format!("{{ host = \"{}\", port = {} }}", r.host(), r.port()))
            .collect();
        let _ = write!(
            text,
            "\n[[shards]]\nname = \"{}\"\nprimary = {{ host = \"{}\", port = {} }}\nreplicas = [{}]\n",
            s.name,
            s.primary.host(),
            s.primary.port(),
            replicas.join(", ")
        );
    }
    text
}

/// One user's sample rows as SQL, one statement per row (so each can go through the proxy).
struct UserRows {
    shard: usize,
    sql: String,
}

/// Users 1..=USERS with 1 to 3 orders each, and the shard the ring places each user on.
fn sample_rows(router: &Router) -> Vec<UserRows> {
    const STATUSES: [&str; 3] = ["new", "paid", "shipped"];
    (1..=USERS)
        .map(|user| {
            let mut sql = format!(
                "insert into users (user_id, name, plan_id) values ({user}, 'user {user}', {});\n",
                user % 3 + 1
            );
            for i in 0..=(user % 3) {
                let cents = (user * 7919 + i * 104_729) % 20_000 + 99;
                let _ = writeln!(
                    sql,
                    "insert into orders (user_id, amount, status) values ({user}, {}.{:02}, '{}');",
                    cents / 100,
                    cents % 100,
                    STATUSES[((user + i) % 3) as usize]
                );
            }
            UserRows {
                shard: router.shard_for_key(&KeyValue::Int(user)),
                sql,
            }
        })
        .collect()
}

/// Writes each user's rows into the primary of the shard the ring names, as the proxy would.
async fn insert_directly(servers: &BlockingDrop<Servers>, rows: &[UserRows]) -> anyhow::Result<()> {
    for (i, shard) in servers.get().shards.iter().enumerate() {
        let mut sql = String::from("begin;\n");
        sql.extend(rows.iter().filter(|r| r.shard == i).map(|r| r.sql.as_str()));
        sql.push_str("commit;\n");
        tokio::task::block_in_place(|| shard.primary.psql_as(USER, PASSWORD, DATABASE, &sql))
            .with_context(|| format!("inserting the sample rows on shard {}", shard.name))?;
    }
    Ok(())
}
