//! Live rebalancing end to end, on real PostgreSQL primaries with `wal_level = logical`:
//!
//! - 3 → 4 → 3 shards while a write workload runs through two proxies sharing the postgres
//!   topology store; afterwards every row is where the ring says, once, and exactly what the
//!   workload's reference model says;
//! - abort in copying, catching up and cutover leaves every shard as it was; abort during
//!   cleanup (after the commit) is refused and the job finishes; one job at a time;
//! - a pre-flight refusal (a sharded table without a primary key) changes nothing.
//!
//! Phases that are too quick to catch by polling are held open by the test: a lock on the
//! target's table holds the initial copy, an open transaction on a source holds the cutover
//! (the engine waits for transactions older than its fence), a blocked apply worker keeps the
//! target behind, and a proxy that reports an old map version holds cleanup.

#[path = "rebalance/env.rs"]
mod env;
#[path = "rebalance/verify.rs"]
mod verify;
#[path = "rebalance/workload.rs"]
mod workload;

use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_admin::control::ControlPlane;
use shardgate_rebalance::Rebalancer;
use shardgate_router::Ring;
use shardgate_tests::PgCluster;
use shardgate_topology::{Job, Phase};

use env::*;
use workload::{State, Workload, SCHEMA};

const TABLES: [&str; 2] = ["accounts", "events"];
/// Bound on any one job (generous: 2 cores run everything).
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits for the job to end while the workload runs; `None` as soon as a workload task stops
/// (on an error: the caller collects it).
async fn wait_with_workload(
    rb: &Arc<Rebalancer>,
    load: &Workload,
    want: Phase,
    servers: &[(&str, &PgCluster)],
) -> Option<Job> {
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        if load.failure().is_some() {
            let status = rb.status().await.map(|s| json(&s)).unwrap_or_default();
            eprintln!("a workload task stopped during the job; job status: {status}");
            return None;
        }
        let s = rb.status().await.expect("rebalance status");
        let job = s.job.clone().expect("a job");
        if job.phase.is_terminal() {
            assert_eq!(
                job.phase,
                want,
                "job {} ended {} (error: {:?}); status: {}\n{}",
                job.id,
                job.phase,
                job.error,
                json(&s),
                server_errors(servers)
            );
            return Some(job);
        }
        assert!(
            Instant::now() < deadline,
            "job not finished after {JOB_TIMEOUT:?}: {}\n{}",
            json(&s),
            server_errors(servers)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ERROR lines (and the line after each) at the end of each server's log.
fn server_errors(servers: &[(&str, &PgCluster)]) -> String {
    let mut out = String::new();
    for (name, c) in servers {
        let tail = c.log_tail(400);
        let lines: Vec<&str> = tail.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.contains("ERROR") {
                out.push_str(&format!("{name}: {l}\n"));
                if let Some(next) = lines.get(i + 1) {
                    out.push_str(&format!("{name}:   {next}\n"));
                }
            }
        }
    }
    out
}

/// Both proxies route by `version` within 1 s, and the store lists both at it soon after.
async fn assert_proxies_at(
    rb: &Arc<Rebalancer>,
    controls: &[(&str, &dyn ControlPlane)],
    version: u64,
) {
    let t = Instant::now();
    while controls.iter().any(|(_, c)| routed_version(*c) != version) {
        let held: Vec<String> = controls
            .iter()
            .map(|(id, c)| format!("{id}: v{}", routed_version(*c)))
            .collect();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "proxies not at v{version} within 1 s of Done: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let routed = t.elapsed();
    // Proxies report what they hold every poll interval (200 ms here).
    loop {
        let s = rb.status().await.expect("status");
        let reported = controls.iter().all(|(id, _)| {
            s.proxies
                .iter()
                .any(|p| p.proxy_id == *id && p.version == version)
        });
        if reported {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "status().proxies does not list every proxy at v{version}: {}",
            json(&s)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "both proxies routed by v{version} {routed:?} after Done, reported {:?} after",
        t.elapsed()
    );
}

async fn assert_placed(clusters: &[(&str, &PgCluster)], ring: &Ring, when: &str) -> State {
    let found = verify::read_all(clusters, ring).await;
    assert!(
        found.problems.is_empty(),
        "rows misplaced or duplicated {when}:\n{}",
        verify::summary(&found.problems, 30)
    );
    found.state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_to_four_and_back_under_load() {
    init_logs();
    let started = Instant::now();
    let (mut clusters, meta) = tokio::join!(start_clusters(4), start_meta());
    let spare = clusters.pop().expect("spare");
    let names3 = ["s0", "s1", "s2"];
    let ring3 = Ring::new(&names3, BITS).expect("ring");
    // The schema on the three shards only: the rebalancer copies it to the spare.
    for (i, c) in clusters.iter().enumerate() {
        let app = connect(&format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DB}",
            c.port()
        ))
        .await;
        app.batch_execute(SCHEMA).await.expect("schema");
        app.batch_execute(&workload::load_sql(|e| ring_predicate(&ring3, i, e)))
            .await
            .expect("load rows");
    }
    let initial = State::initial(|_| true);
    let shard_refs: Vec<&PgCluster> = clusters.iter().collect();
    let config = |id: &str| {
        proxy_config(
            &shard_refs,
            &TABLES,
            &format!(
                "store = \"{}\"\npoll_interval = \"200ms\"\nlease = \"3s\"\nproxy_id = \"{id}\"",
                store_url(&meta)
            ),
            "",
        )
    };
    let proxy_a = shardgate_proxy::start(config("proxy-a"))
        .await
        .expect("start proxy A");
    let proxy_b = shardgate_proxy::start(config("proxy-b"))
        .await
        .expect("start proxy B");
    let (control_a, control_b) = (proxy_a.control(None), proxy_b.control(None));
    let rb_a = control_a.rebalancer().expect("proxy A has a rebalancer");
    let rb_b = control_b.rebalancer().expect("proxy B has a rebalancer");
    let controls: [(&str, &dyn ControlPlane); 2] =
        [("proxy-a", &*control_a), ("proxy-b", &*control_b)];
    let v1 = rb_a.status().await.expect("status").topology_version;
    eprintln!(
        "set up {} rows on 3 shards in {:?}",
        initial.rows(),
        started.elapsed()
    );

    let load = Workload::start(
        &[
            proxy_conn_str(proxy_a.addr().port()),
            proxy_conn_str(proxy_b.addr().port()),
        ],
        3,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 3 → 4 through proxy A.
    let t = Instant::now();
    let job = rb_a
        .add_shard(add_request("s3", &spare))
        .await
        .unwrap_or_else(|e| panic!("add_shard refused: {e:?}"));
    let all4: Vec<(&str, &PgCluster)> = vec![
        ("s0", &clusters[0]),
        ("s1", &clusters[1]),
        ("s2", &clusters[2]),
        ("s3", &spare),
    ];
    let Some(added) = wait_with_workload(&rb_a, &load, Phase::Done, &all4).await else {
        panic!(
            "workload failed while adding s3: {:?}\n{}",
            load.finish().await.err(),
            server_errors(&all4)
        );
    };
    let add_time = t.elapsed();
    assert_eq!(added.id, job.id);
    let v2 = added.to_version.expect("a committed job has to_version");
    assert_eq!(v2, v1 + 1);
    assert_eq!(rb_b.status().await.expect("status").topology_version, v2);
    assert_proxies_at(&rb_a, &controls, v2).await;

    tokio::time::sleep(Duration::from_secs(1)).await;
    let ring4 = Ring::new(&["s0", "s1", "s2", "s3"], BITS).expect("ring");
    let on4 = assert_placed(&all4, &ring4, "after adding s3").await;
    let on_s3 = verify::read_all(&all4[3..], &ring4).await.state.rows();
    assert!(on_s3 > 0, "s3 received no rows");

    // 4 → 3 through proxy B.
    let t = Instant::now();
    let job = rb_b
        .remove_shard("s3")
        .await
        .unwrap_or_else(|e| panic!("remove_shard refused: {e:?}"));
    let Some(removed) = wait_with_workload(&rb_b, &load, Phase::Done, &all4).await else {
        panic!(
            "workload failed while removing s3: {:?}\n{}",
            load.finish().await.err(),
            server_errors(&all4)
        );
    };
    let remove_time = t.elapsed();
    assert_eq!(removed.id, job.id);
    let v3 = removed.to_version.expect("to_version");
    assert_eq!(v3, v2 + 1);
    assert_proxies_at(&rb_b, &controls, v3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let outcomes = load.finish().await.unwrap_or_else(|e| panic!("{e}"));
    let mut want = State::default();
    let (mut ops, mut retries, mut anomalies) = (0u64, 0u64, Vec::new());
    let mut worst = Duration::ZERO;
    for o in outcomes {
        want.merge(o.state);
        ops += o.ops;
        retries += o.retries;
        anomalies.extend(o.anomalies);
        worst = worst.max(o.max_latency);
    }

    let got = assert_placed(&all4, &ring3, "after removing s3").await;
    let diff = verify::diff(&want, &got, 20);
    assert!(
        diff.is_empty(),
        "the shards differ from the workload's model:\n{}",
        diff.join("\n")
    );
    assert!(
        anomalies.is_empty(),
        "statements saw unexpected row counts (a row missing or doubled while it moved):\n{}",
        verify::summary(&anomalies, 30)
    );
    assert_clean(&all4, "after 3 → 4 → 3").await;

    eprintln!(
        "3 → 4: {:?}, {} rows copied, {} deleted from the sources (~{} estimated), cutover \
         pauses {:?} ms\n\
         4 → 3: {:?}, {} rows copied, {} deleted, cutover pauses {:?} ms\n\
         workload: {ops} statements committed, {retries} retried after 40001, slowest {worst:?}; \
         {} rows on 4 shards, {} at the end; whole test {:?}",
        add_time,
        added.progress.rows_copied,
        added.progress.rows_deleted,
        added.progress.rows_estimated,
        added.progress.cutover_pauses_ms,
        remove_time,
        removed.progress.rows_copied,
        removed.progress.rows_deleted,
        removed.progress.cutover_pauses_ms,
        on4.rows(),
        got.rows(),
        started.elapsed()
    );
    assert!(ops > 0);

    proxy_a.shutdown().await;
    proxy_b.shutdown().await;
    clusters.push(spare);
    clusters.push(meta);
    stop_clusters(clusters).await;
}

/// Two shards, a spare that already has the (empty) tables, a metadata database, and one proxy
/// whose rebalancer runs the abort scenarios.
struct AbortEnv {
    shards: Vec<PgCluster>,
    meta: PgCluster,
    proxy: shardgate_proxy::ProxyHandle,
    rb: Arc<Rebalancer>,
    config: shardgate_config::Config,
    ring3: Ring,
}

impl AbortEnv {
    fn all(&self) -> Vec<(&str, &PgCluster)> {
        vec![
            ("s0", &self.shards[0]),
            ("s1", &self.shards[1]),
            ("s2", &self.shards[2]),
        ]
    }

    fn spare(&self) -> &PgCluster {
        &self.shards[2]
    }

    async fn version(&self) -> u64 {
        self.rb.status().await.expect("status").topology_version
    }

    /// Starts an add of the spare and waits until the job reaches `phase` (or ends).
    async fn add_until(&self, phase: Phase) -> Job {
        let job = self
            .rb
            .add_shard(add_request("s2", self.spare()))
            .await
            .unwrap_or_else(|e| panic!("add_shard refused: {e:?}"));
        let s = wait_phase(&self.rb, JOB_TIMEOUT, Duration::from_millis(5), |p| {
            p >= phase
        })
        .await;
        let now = s.job.expect("job");
        assert_eq!(now.id, job.id);
        assert_eq!(
            now.phase,
            phase,
            "expected the job held in {phase}; status: {}",
            json(&self.rb.status().await.expect("status"))
        );
        now
    }

    /// After an abort in `phase`: the job ends Aborted having stopped there, every shard holds
    /// exactly what it held before, nothing of the job is left, and the map is unchanged.
    async fn assert_undone(&self, phase: Phase, before: &Sums, version: u64) {
        let job = wait_terminal(&self.rb, Phase::Aborted, JOB_TIMEOUT).await;
        assert_eq!(job.stopped_in, Some(phase), "{job:?}");
        let refs: Vec<&PgCluster> = self.shards.iter().collect();
        assert_eq!(
            &checksums(&refs, &TABLES).await,
            before,
            "data changed by a job aborted in {phase}"
        );
        assert_clean(&self.all(), &format!("after an abort in {phase}")).await;
        assert_eq!(self.version().await, version, "map changed by an abort");
        assert_eq!(routed_version(&*self.proxy.control(None)), version);
        eprintln!("job {} aborted in {phase}: every shard as before", job.id);
    }
}

type Sums = std::collections::BTreeMap<(usize, String), Option<(i64, String)>>;

/// A key of `table` on `source` that the 3-shard ring moves to s2, and one it leaves.
async fn keys_on(env: &AbortEnv, source: usize) -> (i64, i64) {
    let ring2 = Ring::new(&["s0", "s1"], BITS).expect("ring");
    let mut moving = None;
    let mut staying = None;
    for k in 1..=workload::ACCOUNTS {
        if owner(&ring2, k) != source {
            continue;
        }
        if owner(&env.ring3, k) == 2 {
            moving.get_or_insert(k);
        } else {
            staying.get_or_insert(k);
        }
        if moving.is_some() && staying.is_some() {
            break;
        }
    }
    (
        moving.expect("a moving key"),
        staying.expect("a staying key"),
    )
}

/// A logical replication worker on this server waits for a lock.
async fn apply_blocked(c: &tokio_postgres::Client) -> bool {
    // `c` may be inside the transaction holding the lock, and PostgreSQL keeps one
    // pg_stat_activity snapshot per transaction: drop it so each call sees the present.
    c.batch_execute("select pg_stat_clear_snapshot()")
        .await
        .expect("pg_stat_clear_snapshot");
    c.query_one(
        "select count(*) from pg_stat_activity \
         where backend_type = 'logical replication worker' and wait_event_type = 'Lock'",
        &[],
    )
    .await
    .expect("pg_stat_activity")
    .get::<_, i64>(0)
        > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_in_each_phase_leaves_data_as_before() {
    init_logs();
    let started = Instant::now();
    let (shards, meta) = workload::clusters_with_rows(3, 2).await;
    let config = proxy_config(
        &[&shards[0], &shards[1]],
        &TABLES,
        &format!(
            "store = \"{}\"\npoll_interval = \"200ms\"\nlease = \"3s\"\nproxy_id = \"proxy-abort\"",
            store_url(&meta)
        ),
        // Short, so a cutover the test holds gives up soon and the job goes back to catching up.
        "cutover_timeout = \"3s\"",
    );
    let proxy = shardgate_proxy::start(config.clone())
        .await
        .expect("start proxy");
    let rb = proxy.control(None).rebalancer().expect("rebalancer");
    let env = AbortEnv {
        shards,
        meta,
        proxy,
        rb,
        config,
        ring3: Ring::new(&["s0", "s1", "s2"], BITS).expect("ring"),
    };
    let refs: Vec<&PgCluster> = env.shards.iter().collect();
    let before = checksums(&refs, &TABLES).await;
    let version = env.version().await;
    let spare = superuser(env.spare()).await;
    let s0 = superuser(&env.shards[0]).await;
    let holder = superuser(&env.shards[0]).await;

    // Copying: the target's table is locked, so its initial copy cannot finish.
    spare
        .batch_execute("begin; lock table accounts in share mode")
        .await
        .expect("lock the target's table");
    let job = env.add_until(Phase::Copying).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !apply_blocked(&spare).await {
        assert!(
            Instant::now() < deadline,
            "the initial copy never waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One job at a time: a second add or a remove is refused with the running job's id.
    for second in [
        env.rb.add_shard(add_request("s2", env.spare())).await,
        env.rb.remove_shard("s1").await,
    ] {
        let e = second.expect_err("a second job while one runs");
        assert_eq!(
            (e.status, e.job_id.as_deref()),
            (409, Some(&*job.id)),
            "{e:?}"
        );
    }
    let now = env.rb.abort().await.expect("abort while copying");
    assert_eq!(now.phase, Phase::Copying, "{now:?}");
    spare.batch_execute("rollback").await.expect("unlock");
    env.assert_undone(Phase::Copying, &before, version).await;

    // Cutover: a transaction on s0 older than the fence holds the cutover open (the engine
    // waits for such transactions to end). Meanwhile moving keys are fenced, others are not.
    holder
        .batch_execute("begin; select 1")
        .await
        .expect("begin");
    env.add_until(Phase::Cutover).await;
    let (moving, staying) = keys_on(&env, 0).await;
    let app0 = connect(&format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DB}",
        env.shards[0].port()
    ))
    .await;
    let bump = "update accounts set balance = balance where user_id = $1";
    let fenced = app0.execute(bump, &[&moving]).await.expect_err("fenced");
    assert_eq!(
        fenced.code().map(|c| c.code()),
        Some(shardgate_topology::FENCE_SQLSTATE),
        "{fenced:?}"
    );
    assert_eq!(
        app0.execute(bump, &[&staying]).await.expect("not fenced"),
        1
    );
    env.rb.abort().await.expect("abort during cutover");
    holder.batch_execute("rollback").await.expect("rollback");
    env.assert_undone(Phase::Cutover, &before, version).await;

    // Catching up: hold a cutover as above, then stall the target's apply (a lock on its
    // table) with changes still to apply (no-op updates of moving rows, past the closed fence).
    // The cutover times out waiting for the target, and catching up cannot finish.
    holder
        .batch_execute("begin; select 1")
        .await
        .expect("begin");
    env.add_until(Phase::Cutover).await;
    spare
        .batch_execute("begin; lock table accounts in share mode")
        .await
        .expect("lock the target's table");
    let pred = ring_predicate(&env.ring3, 2, "user_id");
    s0.batch_execute(&format!(
        "set session_replication_role = replica;
         set synchronous_commit = on;
         update accounts set balance = balance where user_id in
             (select user_id from accounts where {pred} limit 3000);
         reset session_replication_role;
         reset synchronous_commit;"
    ))
    .await
    .expect("changes for the target");
    // The target's apply worker now waits for the lock with those changes in hand.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !apply_blocked(&spare).await {
        assert!(
            Instant::now() < deadline,
            "the target's apply worker never blocked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Put the target well behind: a WAL segment switch moves the source's position by megabytes
    // the stalled target cannot confirm.
    s0.batch_execute("select pg_switch_wal()")
        .await
        .expect("switch WAL");
    holder.batch_execute("rollback").await.expect("rollback");
    let s = wait_phase(&env.rb, JOB_TIMEOUT, Duration::from_millis(20), |p| {
        p == Phase::CatchingUp || p.is_terminal()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let now = env.rb.status().await.expect("status");
    assert_eq!(
        now.job.as_ref().map(|j| j.phase),
        Some(Phase::CatchingUp),
        "{}\n{}",
        json(&s),
        json(&now)
    );
    env.rb.abort().await.expect("abort while catching up");
    spare.batch_execute("rollback").await.expect("unlock");
    env.assert_undone(Phase::CatchingUp, &before, version).await;

    // Cleanup: a proxy still reporting the old map holds cleanup (the engine waits for every
    // live proxy before deleting moved rows). Abort there reverts the committed move: a row
    // written through the new map (on the target) ends up on its old shard, the old shard
    // list is published again, and the target's copies go.
    let store = shardgate_topology::Store::open(&env.config, None)
        .await
        .expect("open the store");
    let laggard = tokio::spawn(async move {
        loop {
            let _ = store.report_version("laggard", version).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    env.add_until(Phase::Cleanup).await;
    let ring2 = Ring::new(&["s0", "s1"], BITS).expect("ring");
    let new_key = (1_000_000..)
        .find(|k| owner(&env.ring3, *k) == 2)
        .expect("a key the new shard owns");
    let through_proxy = connect(&format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DB}",
        env.proxy.addr().port()
    ))
    .await;
    through_proxy
        .execute(
            "insert into accounts (user_id, balance, note) values ($1, 7, 'after commit')",
            &[&new_key],
        )
        .await
        .expect("a write through the new map");
    let aborting = env.rb.abort().await.expect("abort after the commit");
    assert_eq!(aborting.phase, Phase::Cleanup, "{aborting:?}");
    laggard.abort();
    let job = wait_terminal(&env.rb, Phase::Aborted, JOB_TIMEOUT).await;
    assert_eq!(job.stopped_in, Some(Phase::Cleanup), "{job:?}");
    let reverted = version + 2;
    assert_eq!(job.to_version, Some(reverted), "{job:?}");
    assert_eq!(env.version().await, reverted);
    let names = env.rb.status().await.expect("status");
    assert_eq!(names.topology_version, reverted);
    // The row written on the target is on its old shard now, and nowhere else.
    let home = &env.shards[owner(&ring2, new_key)];
    let on = |c: &PgCluster| {
        c.psql(
            DB,
            &format!("select count(*) from accounts where user_id = {new_key}"),
        )
        .expect("count")
    };
    assert_eq!(on(home), "1", "the write made after the commit came back");
    assert_eq!(on(&env.shards[2]), "0", "the target's copy is gone");
    superuser(home)
        .await
        .execute("delete from accounts where user_id = $1", &[&new_key])
        .await
        .expect("remove the test row");
    let refs: Vec<&PgCluster> = env.shards.iter().collect();
    assert_eq!(
        &checksums(&refs, &TABLES).await,
        &before,
        "data changed by a move reverted in cleanup"
    );
    assert_clean(&env.all(), "after a revert in cleanup").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while routed_version(&*env.proxy.control(None)) != reverted {
        assert!(
            Instant::now() < deadline,
            "the proxy follows the reverted map"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("job {} reverted in cleanup: every shard as before", job.id);
    let none = env.rb.abort().await.expect_err("abort with no job");
    assert_eq!(none.status, 404, "{none:?}");
    eprintln!("abort scenarios took {:?}", started.elapsed());

    env.proxy.shutdown().await;
    let mut all = env.shards;
    all.push(env.meta);
    stop_clusters(all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_refuses_a_table_without_a_primary_key() {
    init_logs();
    let clusters = start_clusters(2).await;
    let (shard, spare) = (&clusters[0], &clusters[1]);
    let app = connect(&format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DB}",
        shard.port()
    ))
    .await;
    app.batch_execute(
        "create table accounts (user_id bigint primary key, balance bigint);
         create table nopk (user_id bigint, v int);
         insert into nopk select g, g from generate_series(1, 1000) g;",
    )
    .await
    .expect("schema");
    let config = proxy_config(&[shard], &["accounts", "nopk"], "store = \"file\"", "");
    let proxy = shardgate_proxy::start(config).await.expect("start proxy");
    let rb = proxy.control(None).rebalancer().expect("rebalancer");
    let version = rb.status().await.expect("status").topology_version;
    let spare_tables = "select count(*)::int8 from pg_class c join pg_namespace n \
        on n.oid = c.relnamespace where n.nspname not in ('pg_catalog', 'information_schema') \
        and n.nspname not like 'pg_toast%'";
    let before = superuser(spare)
        .await
        .query_one(spare_tables, &[])
        .await
        .expect("count")
        .get::<_, i64>(0);

    // The proxy's start installs shardgate.unique_id() (schema shardgate) on the shards of
    // the map; what matters is that the refused job adds nothing.
    let mut schema_before = Vec::new();
    for c in [shard, spare] {
        let su = superuser(c).await;
        schema_before.push(
            su.query_one("select to_regnamespace('shardgate') is not null", &[])
                .await
                .expect("schema")
                .get::<_, bool>(0),
        );
    }
    let e = rb
        .add_shard(add_request("s1", spare))
        .await
        .expect_err("a sharded table without a primary key");
    assert_eq!(e.status, 422, "{e:?}");
    assert!(
        e.message.contains("nopk"),
        "the refusal names the table: {e:?}"
    );
    eprintln!("refused: {} (hint: {})", e.message, e.hint);

    let s = rb.status().await.expect("status");
    assert_eq!(s.topology_version, version);
    assert!(s.job.is_none(), "a refused job was recorded: {}", json(&s));
    assert_clean(&[("s0", shard), ("spare", spare)], "by a refused job").await;
    for ((name, c), before) in [("s0", shard), ("spare", spare)]
        .into_iter()
        .zip(schema_before)
    {
        let su = superuser(c).await;
        let schema: bool = su
            .query_one("select to_regnamespace('shardgate') is not null", &[])
            .await
            .expect("schema")
            .get(0);
        assert_eq!(
            schema, before,
            "{name}: schema shardgate created by a refused job"
        );
    }
    let after: i64 = superuser(spare)
        .await
        .query_one(spare_tables, &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        after, before,
        "relations created on the spare by a refused job"
    );

    proxy.shutdown().await;
    stop_clusters(clusters).await;
}
