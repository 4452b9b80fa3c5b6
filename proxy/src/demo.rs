//! `shardgate demo`: a local PostgreSQL under a temp dir and the proxy in front of it, for
//! trying shardgate with psql. Everything stops and is removed on Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use shardgate_config::Config;
use shardgate_tests::{Auth, ClusterOptions, PgCluster};

const USER: &str = "app";
const PASSWORD: &str = "app-secret";
const DATABASE: &str = "app";

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Port for the proxy.
    #[arg(long, default_value_t = 6432)]
    port: u16,
    /// Port for the admin HTTP server.
    #[arg(long, default_value_t = 9930)]
    admin_port: u16,
    /// Directory for the PostgreSQL data (default: a new temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::env::set_var(shardgate_tests::template::TMPDIR_ENV, dir);
    }
    eprintln!("starting PostgreSQL (shard s0) ...");
    let cluster = tokio::task::spawn_blocking(|| -> anyhow::Result<PgCluster> {
        let c = PgCluster::start(ClusterOptions::default().user(USER, PASSWORD, Auth::Scram))?;
        c.create_database(DATABASE, USER)?;
        Ok(c)
    })
    .await
    .context("starting PostgreSQL")??;

    let config_text = format!(
        r#"
[listen]
addr = "127.0.0.1:{port}"

[admin]
listen = "127.0.0.1:{admin}"

[[users]]
name = "{USER}"
password = "{PASSWORD}"

[[shards]]
name = "s0"
primary = {{ host = "127.0.0.1", port = {pg} }}
"#,
        port = args.port,
        admin = args.admin_port,
        pg = cluster.port(),
    );
    let config = Config::from_toml(&config_text, std::path::Path::new("<demo>"))?;
    let admin = shardgate_admin::AdminServer::start(&config.admin.listen).await?;
    let proxy = shardgate_proxy::start(config).await?;

    println!("shardgate demo is running. Connect with:");
    println!();
    println!(
        "  psql postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}",
        proxy.addr().port()
    );
    println!();
    println!(
        "shard s0 primary: {}",
        cluster.url(USER, PASSWORD, DATABASE)
    );
    println!("admin: http://{}/health", admin.addr());
    println!("data directory: {}", cluster.data_dir().display());
    println!("Press Ctrl-C to stop and remove everything.");

    crate::wait_for_stop_signal().await?;
    eprintln!("stopping ...");
    proxy.shutdown().await;
    admin.stop();
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .ok();
    Ok(())
}
