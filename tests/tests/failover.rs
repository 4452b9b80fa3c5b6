//! Following a primary failover without a restart: one shard with a primary and two streaming
//! replicas under a read/write workload; a replica is promoted and the old primary stopped;
//! writes resume on the promoted host, the other replica is re-pointed by the test as an
//! operator would, no acknowledged write is lost, and the old primary coming back as a primary
//! is fenced (no writes, `/ready` warning, metric) until the operator names the hosts.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::failover::{
    admin_cli, blocking, direct_value, primary_with_items, superuser, Workload, STATEMENT_TIMEOUT,
};
use common::{admin_http, connect, init_logs, users_and_shard, wait_for, DB, PASSWORD, USER};
use shardgate_admin::control::ControlPlane;
use shardgate_config::Config;
use shardgate_proxy::ProxyControl;
use shardgate_tests::{ClusterOptions, PgCluster};

/// A host as shardgate names it.
fn host(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// A client's connection string through the proxy listening on `port`.
fn proxy_conn(port: u16) -> String {
    format!(
        "host=127.0.0.1 port={port} user={USER} password={PASSWORD} dbname={DB} connect_timeout=5"
    )
}

/// Shard s0 with `primary` and two replicas, and failure detection and bans short enough for
/// a promotion to be followed within the tests' deadlines; `pool` adds `[pool]` keys.
fn two_replica_config(primary: u16, [new_port, other_port]: [u16; 2], pool: &str) -> Config {
    let text = format!(
        r#"
[listen]
addr = "127.0.0.1:0"
shutdown_timeout = "2s"

[pool]
checkout_timeout = "5s"
connect_timeout = "2s"
{pool}

[replicas]
check_interval = "200ms"
failover_detect = "2s"
ban_initial = "200ms"
ban_max = "1s"
{shard}"#,
        shard = users_and_shard(primary, &[new_port, other_port])
    );
    Config::from_toml(&text, Path::new("test.toml")).expect("valid config")
}

/// Whether the replica on `port` serves reads.
fn in_rotation(control: &ProxyControl, port: u16) -> bool {
    control
        .replicas()
        .into_iter()
        .any(|r| r.host.ends_with(&format!(":{port}")) && r.in_rotation)
}

/// Whether every replica in `ports` is in the rotation within `within`.
async fn all_in_rotation(control: &ProxyControl, ports: &[u16], within: Duration) -> bool {
    wait_for(within, || async move {
        ports.iter().all(|&port| in_rotation(control, port))
    })
    .await
}

/// Points the standby behind `standby` at the new primary on `port`, as an operator would.
async fn repoint(standby: &tokio_postgres::Client, port: u16, password: &str) {
    standby
        .batch_execute(&format!(
            "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={port} user=postgres \
             password={password}'"
        ))
        .await
        .expect("re-point the standby");
    standby
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .expect("reload the standby");
}

/// Row `id` was written, with `note`, to `new` and not to `old`.
async fn assert_only_on_new(new: &PgCluster, old: &PgCluster, id: i64, note: &str) {
    assert_eq!(
        direct_value(new, &format!("SELECT note FROM items WHERE id = {id}")).await,
        Some(note.to_owned()),
        "row {id} on the new primary"
    );
    assert_eq!(
        direct_value(old, &format!("SELECT count(*) FROM items WHERE id = {id}")).await,
        Some("0".to_owned()),
        "row {id} not on the old primary"
    );
}

/// Drops clusters off the runtime: stopping PostgreSQL blocks.
async fn drop_blocking<T: Send + 'static>(clusters: T) {
    tokio::task::spawn_blocking(move || drop(clusters))
        .await
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_promoted_replica_and_the_old_primary_is_fenced() {
    init_logs();
    let metrics = shardgate_admin::metrics::install();
    let (primary, replicas) = tokio::task::spawn_blocking(|| {
        // The monitor reads which timeline a standby follows from pg_stat_wal_receiver.
        let (p, r) = primary_with_items(2, true);
        // A commit is acknowledged once both standbys have it: whichever is promoted has every
        // acknowledged write (set after the base backups, so the replicas do not inherit it).
        p.psql(
            "postgres",
            "ALTER SYSTEM SET synchronous_standby_names = 'ANY 2 (*)'; \
             ALTER SYSTEM SET synchronous_commit = on; SELECT pg_reload_conf()",
        )
        .expect("synchronous replication");
        (p, r)
    })
    .await
    .expect("join");
    let (old_port, new_port, other_port) = (primary.port(), replicas[0].port(), replicas[1].port());
    let config = two_replica_config(old_port, [new_port, other_port], "size = 10");
    let proxy = shardgate_proxy::start(config).await.expect("start proxy");
    let control = proxy.control(None);
    let admin = shardgate_admin::AdminServer::start(
        control.clone(),
        &shardgate_config::Admin {
            listen: "127.0.0.1:0".into(),
            ..Default::default()
        },
    )
    .await
    .expect("admin server");
    let admin_port = admin.addr().port();
    let conn_str = proxy_conn(proxy.addr().port());
    let ctl = &control;
    assert!(
        all_in_rotation(&control, &[new_port, other_port], Duration::from_secs(10)).await,
        "both replicas in rotation: {:?}",
        control.replicas()
    );

    let workload = Workload::start(conn_str.clone());
    let w = &workload;
    assert!(
        wait_for(Duration::from_secs(10), || async move { w.acked() >= 20 }).await,
        "the workload writes"
    );

    // The failover, as an operator (or an orchestrator) does it.
    let promoted = direct_value(&replicas[0], "SELECT pg_promote(true, 30)").await;
    assert_eq!(promoted.as_deref(), Some("t"), "replica promoted");
    let mut primary = blocking(primary, |p| p.stop().expect("stop the old primary")).await;
    let acked_at_stop = workload.acked();
    // Writes succeed again, without a restart (a deadline, not a speed assertion).
    assert!(
        wait_for(Duration::from_secs(10), || async move {
            w.acked() > acked_at_stop + 5
        })
        .await,
        "writes resumed on the promoted replica: {:?}",
        control.shards()
    );
    let shard = control.shards().remove(0);
    assert_eq!(shard.primary, host(new_port), "{shard:?}");
    assert_eq!(shard.configured_primary, Some(host(old_port)));

    // The other replica: pointed at the new primary (or it leaves the rotation).
    let other = superuser(&replicas[1]).await;
    repoint(&other, new_port, replicas[1].superuser_password()).await;
    let new_timeline = direct_value(
        &replicas[0],
        "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
    )
    .await
    .expect("the new primary's timeline");
    let (r1, timeline) = (&replicas[1], &new_timeline);
    let follows = wait_for(Duration::from_secs(10), || async move {
        direct_value(r1, "SELECT received_tli FROM pg_stat_wal_receiver")
            .await
            .is_some_and(|t| &t == timeline)
    })
    .await;
    if follows {
        assert!(
            all_in_rotation(&control, &[other_port], Duration::from_secs(10)).await,
            "the re-pointed replica serves reads again: {:?}",
            control.replicas()
        );
    } else {
        // It forked off the old timeline past the promotion point (it needs pg_rewind).
        assert!(
            !in_rotation(&control, other_port),
            "{:?}",
            control.replicas()
        );
    }
    eprintln!(
        "other replica follows the new primary: {follows}; replicas: {:?}",
        control.replicas()
    );

    let acked = workload.stop().await;
    let on_new: BTreeSet<i64> = superuser(&replicas[0])
        .await
        .query("SELECT id FROM items", &[])
        .await
        .expect("read the new primary")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<&i64> = acked.iter().filter(|id| !on_new.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

    // The old primary comes back as a primary (split brain): fenced, it gets no writes.
    primary = blocking(primary, |p| p.restart().expect("restart the old primary")).await;
    assert!(
        wait_for(Duration::from_secs(10), || async move {
            ctl.shards()[0].fenced == vec![host(old_port)]
        })
        .await,
        "the old primary is fenced: {:?}",
        control.shards()
    );
    let rows_on_old = direct_value(&primary, "SELECT count(*) FROM items").await;
    let c = connect(&conn_str).await;
    for id in 1_000_000..1_000_010i64 {
        c.execute("INSERT INTO items VALUES ($1, 'after')", &[&id])
            .await
            .expect("write after the fence");
    }
    assert_eq!(
        direct_value(&primary, "SELECT count(*) FROM items").await,
        rows_on_old,
        "the fenced old primary received no writes"
    );
    let (status, ready) =
        tokio::task::spawn_blocking(move || admin_http(admin_port, "GET", "/ready"))
            .await
            .expect("join");
    eprintln!("GET /ready -> {status} {ready}");
    assert_eq!(status, 200, "{ready}");
    assert!(ready.contains("fenced"), "{ready}");
    let (_, text) = tokio::task::spawn_blocking(move || admin_http(admin_port, "GET", "/metrics"))
        .await
        .expect("join");
    let fence_metric =
        format!("shardgate_fenced_hosts{{shard=\"s0\",host=\"127.0.0.1:{old_port}\"}} 1");
    assert!(
        text.lines().any(|l| l == fence_metric),
        "{fence_metric} in {}",
        text.lines()
            .filter(|l| l.contains("fenced") || l.contains("failover"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "metrics:\n{}",
        text.lines()
            .filter(|l| l.starts_with("shardgate_fenced") || l.starts_with("shardgate_failovers"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(metrics);
    let (code, list) = admin_cli(
        admin_port,
        shardgate_admin::cli::AdminCommand::Shards(shardgate_admin::cli::ShardsCommand::List),
    )
    .await;
    eprintln!("shardgate admin shards list ->\n{list}");
    assert_eq!(code, 0, "{list}");
    assert!(list.contains("FENCED"), "{list}");

    // The operator confirms the failover: the promoted host is named primary, the old one
    // leaves the list (it needs pg_rewind before it can be a replica).
    let (code, out) = admin_cli(
        admin_port,
        shardgate_admin::cli::AdminCommand::Shards(shardgate_admin::cli::ShardsCommand::Hosts {
            name: "s0".into(),
            primary: host(new_port),
            replicas: vec![host(other_port)],
        }),
    )
    .await;
    eprintln!("shardgate admin shards hosts -> {out}");
    assert_eq!(code, 0, "{out}");
    let shard = control.shards().remove(0);
    assert_eq!(shard.primary, host(new_port));
    assert_eq!(shard.configured_primary, None, "{shard:?}");
    assert!(shard.fenced.is_empty(), "{shard:?}");
    assert!(control.readiness().warnings.is_empty());
    // The client that was connected through all of it still writes.
    c.execute("INSERT INTO items VALUES (2000000, 'confirmed')", &[])
        .await
        .expect("write after the hosts change");

    drop(c);
    drop(other);
    admin.stop();
    proxy.shutdown().await;
    drop_blocking((replicas, primary)).await;
}

/// The hosts change through a reload too (file store): the primary the file names takes the
/// writes at once, and the change is published as the next shard-map version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_names_the_primary() {
    init_logs();
    let (old, mut new) = tokio::task::spawn_blocking(|| {
        let (p, mut r) = primary_with_items(1, false);
        (p, r.remove(0))
    })
    .await
    .expect("join");
    let config_text = |primary: u16, replica: u16| {
        format!(
            r#"
[listen]
addr = "127.0.0.1:0"
shutdown_timeout = "2s"

[pool]
connect_timeout = "2s"

[replicas]
check_interval = "200ms"
failover_detect = "2s"
{shard}"#,
            shard = users_and_shard(primary, &[replica])
        )
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shardgate.toml");
    std::fs::write(&path, config_text(old.port(), new.port())).expect("write config");
    let proxy = shardgate_proxy::start(Config::load(&path).expect("valid config"))
        .await
        .expect("start proxy");
    let control = proxy.control(Some(path.clone()));
    let c = connect(&proxy_conn(proxy.addr().port())).await;
    c.execute("INSERT INTO items VALUES (1, 'old')", &[])
        .await
        .expect("write on the old primary");

    // Promoted while the old primary still answers: it is fenced, writes stay where they are.
    new = blocking(new, |r| r.promote().expect("promote")).await;
    let ctl = &control;
    let new_port = new.port();
    assert!(
        wait_for(Duration::from_secs(10), || async move {
            ctl.shards()[0].fenced == vec![host(new_port)]
        })
        .await,
        "{:?}",
        control.shards()
    );

    // The operator names the promoted host in the file and reloads.
    std::fs::write(&path, config_text(new.port(), old.port())).expect("rewrite config");
    let outcome = tokio::task::spawn_blocking({
        let control = control.clone();
        move || control.reload()
    })
    .await
    .expect("join")
    .expect("reload");
    assert!(
        outcome.applied.iter().any(|a| a.starts_with("shards")),
        "{outcome:?}"
    );
    let shard = control.shards().remove(0);
    assert_eq!(shard.primary, host(new_port), "{shard:?}");
    c.execute("INSERT INTO items VALUES (2, 'new')", &[])
        .await
        .expect("write after the reload, same client");
    assert_only_on_new(&new, &old, 2, "new").await;
    // The old primary, still a primary but not named so: fenced. The map version moved.
    let old_port = old.port();
    assert!(
        wait_for(Duration::from_secs(10), || async move {
            let s = ctl.shards().remove(0);
            s.fenced == vec![host(old_port)] && s.topology_version == 2
        })
        .await,
        "{:?}",
        control.shards()
    );

    drop(c);
    proxy.shutdown().await;
    drop_blocking((new, old)).await;
}

/// With the postgres topology store, hosts named through one proxy's API reach every proxy of
/// the fleet (the shard map's next version), without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_named_through_one_proxy_reach_the_fleet() {
    init_logs();
    let (meta, old, new) = tokio::task::spawn_blocking(|| {
        let meta = PgCluster::start(ClusterOptions::default()).expect("start meta");
        meta.psql("postgres", "CREATE DATABASE meta")
            .expect("meta database");
        let (p, mut r) = primary_with_items(1, false);
        let mut r = r.remove(0);
        r.promote().expect("promote");
        (meta, p, r)
    })
    .await
    .expect("join");
    let config = |proxy_id: &str| {
        let text = format!(
            r#"
[listen]
addr = "127.0.0.1:0"
shutdown_timeout = "2s"

[replicas]
check_interval = "200ms"

[topology]
store = "postgres://postgres:{meta_password}@127.0.0.1:{meta_port}/meta?connect_timeout=2"
poll_interval = "200ms"
proxy_id = "{proxy_id}"
{shard}"#,
            meta_password = meta.superuser_password(),
            meta_port = meta.port(),
            shard = users_and_shard(old.port(), &[new.port()]),
        );
        Config::from_toml(&text, Path::new("fleet.toml")).expect("valid config")
    };
    let a = shardgate_proxy::start(config("fleet-a"))
        .await
        .expect("start proxy a");
    let b = shardgate_proxy::start(config("fleet-b"))
        .await
        .expect("start proxy b");
    let (control_a, control_b) = (a.control(None), b.control(None));

    let outcome = control_a
        .set_hosts(
            "s0".into(),
            shardgate_admin::control::SetHostsRequest {
                primary: host(new.port()),
                replicas: vec![],
            },
        )
        .expect("the proxy implements set_hosts")
        .await
        .expect("hosts published");
    assert!(outcome.changed, "{outcome:?}");
    let (ctl_b, new_port) = (&control_b, new.port());
    assert!(
        wait_for(Duration::from_secs(10), || async move {
            let s = ctl_b.shards().remove(0);
            s.primary == host(new_port) && s.topology_version == outcome.topology_version
        })
        .await,
        "proxy b follows: {:?}",
        control_b.shards()
    );
    let c = connect(&proxy_conn(b.addr().port())).await;
    c.execute("INSERT INTO items VALUES (7, 'via b')", &[])
        .await
        .expect("write through proxy b");
    assert_only_on_new(&new, &old, 7, "via b").await;

    drop(c);
    a.shutdown().await;
    b.shutdown().await;
    drop_blocking((new, old, meta)).await;
}

/// The old primary stopped first, then a replica promoted (so the other replica has not gone
/// past the promotion point): the other replica, re-pointed at the new primary, follows its
/// timeline and serves reads again, and a client still reads its own writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_follows_the_promoted_host_serves_reads() {
    init_logs();
    let (primary, replicas) = tokio::task::spawn_blocking(|| primary_with_items(2, true))
        .await
        .expect("join");
    let [mut promoted, other]: [PgCluster; 2] = replicas.try_into().expect("two replicas");
    let (new_port, other_port) = (promoted.port(), other.port());
    let config = two_replica_config(primary.port(), [new_port, other_port], "");
    let proxy = shardgate_proxy::start(config).await.expect("start proxy");
    let control = proxy.control(None);
    assert!(
        all_in_rotation(&control, &[new_port, other_port], Duration::from_secs(10)).await,
        "both replicas in rotation: {:?}",
        control.replicas()
    );
    let conn_str = proxy_conn(proxy.addr().port());
    let c = connect(&conn_str).await;
    c.execute("INSERT INTO items VALUES (1, 'before')", &[])
        .await
        .expect("write before");

    let primary = blocking(primary, |p| p.stop().expect("stop the primary")).await;
    promoted = blocking(promoted, |r| r.promote().expect("promote")).await;
    let client = &c;
    assert!(
        wait_for(Duration::from_secs(10), || async move {
            let write = client.execute("INSERT INTO items VALUES (2, 'after')", &[]);
            matches!(
                tokio::time::timeout(STATEMENT_TIMEOUT, write).await,
                Ok(Ok(1))
            )
        })
        .await,
        "writes resumed: {:?}",
        control.shards()
    );
    let other_client = superuser(&other).await;
    repoint(&other_client, new_port, promoted.superuser_password()).await;
    assert!(
        all_in_rotation(&control, &[other_port], Duration::from_secs(15)).await,
        "the re-pointed replica follows the new timeline and serves reads: {:?}",
        control.replicas()
    );
    // Plain reads of a client that wrote nothing go to it (the only standby in the rotation)…
    let reader = connect(&conn_str).await;
    let on_standby = reader
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("read")
        .get::<_, bool>(0);
    assert!(on_standby, "a plain read ran on the re-pointed replica");
    drop(reader);
    // …and read-your-writes holds on the new timeline.
    for id in 100..120i64 {
        c.execute("INSERT INTO items VALUES ($1, 'ryw')", &[&id])
            .await
            .expect("write");
        let n: i64 = c
            .query_one("SELECT count(*) FROM items WHERE id = $1", &[&id])
            .await
            .expect("read")
            .get(0);
        assert_eq!(n, 1, "the client reads its write {id}");
    }

    drop(c);
    drop(other_client);
    proxy.shutdown().await;
    drop_blocking((other, promoted, primary)).await;
}
