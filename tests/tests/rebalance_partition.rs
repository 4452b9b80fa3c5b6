//! A proxy cut off from the topology store while a move commits must stop writing the moved
//! keys, never write them to their old owner, and lose no acknowledged write.
//!
//! Two proxies share a postgres store; proxy B reaches it through a TCP relay the test can
//! black-hole (connections stay open and silent, new ones are accepted and never answered: a
//! network partition, not a refused connection). Proxy A adds a shard while a write workload
//! runs through both. The cutover is held open by a transaction on a source, B is cut off
//! there, and the cutover is let go: the new map is published while B still routes by the old
//! one. B's writes of moving keys meet the source's fence (retried on a new map B cannot read:
//! 40001), and once its lease has run out every statement is refused with 57P03; the job's
//! cleanup deletes the moved rows only after B's lease. Then the partition heals, B follows the
//! new map, and every row is where the new ring says, once, exactly as the workload's model.

#[allow(dead_code)]
#[path = "rebalance/env.rs"]
mod env;
#[allow(dead_code)]
#[path = "rebalance/verify.rs"]
mod verify;
#[allow(dead_code)]
#[path = "rebalance/workload.rs"]
mod workload;

use std::time::{Duration, Instant};

use shardgate_admin::control::ControlPlane;
use shardgate_router::Ring;
use shardgate_tests::PgCluster;
use shardgate_topology::Phase;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use env::*;
use workload::{Retry, State, Workload, SCHEMA};

const TABLES: [&str; 2] = ["accounts", "events"];
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// A TCP relay to `127.0.0.1:target` that can be cut (black-holed) and healed.
struct Relay {
    port: u16,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().expect("relay addr").port();
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay_one(client, target, cut_rx.clone()));
            }
        });
        Relay { port, cut, task }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards one connection until the relay is cut; while cut, holds it open and silent; when
/// healed, closes it (the client reconnects through the healed relay).
async fn relay_one(mut client: TcpStream, target: u16, mut cut: watch::Receiver<bool>) {
    if !*cut.borrow_and_update() {
        let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await else {
            return;
        };
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
            _ = cut.wait_for(|c| *c) => {}
        }
        // Cut: the server side stays open too, so neither end hears anything.
        let _ = cut.wait_for(|c| !*c).await;
        let _ = server.shutdown().await;
    } else {
        let _ = cut.wait_for(|c| !*c).await;
    }
    let _ = client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_cut_off_from_the_store_during_cutover_never_writes_a_moved_key_to_its_old_owner() {
    init_logs();
    let (mut clusters, meta) = tokio::join!(start_clusters(3), start_meta());
    let spare = clusters.pop().expect("spare");
    let ring2 = Ring::new(&["s0", "s1"], BITS).expect("ring");
    let ring3 = Ring::new(&["s0", "s1", "s2"], BITS).expect("ring");
    for (i, c) in clusters.iter().enumerate() {
        let app = connect(&format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DB}",
            c.port()
        ))
        .await;
        app.batch_execute(SCHEMA).await.expect("schema");
        app.batch_execute(&workload::load_sql(|e| ring_predicate(&ring2, i, e)))
            .await
            .expect("load rows");
    }
    let relay = Relay::start(meta.port()).await;
    let shard_refs: Vec<&PgCluster> = clusters.iter().collect();
    let lease = Duration::from_secs(3);
    let config = |id: &str, store_port: u16| {
        proxy_config(
            &shard_refs,
            &TABLES,
            &format!(
                "store = \"postgres://postgres:postgres@127.0.0.1:{store_port}/meta?connect_timeout=1\"\n\
                 poll_interval = \"200ms\"\nlease = \"{}s\"\nproxy_id = \"{id}\"",
                lease.as_secs()
            ),
            "",
        )
    };
    let proxy_a = shardgate_proxy::start(config("proxy-a", meta.port()))
        .await
        .expect("start proxy A");
    let proxy_b = shardgate_proxy::start(config("proxy-b", relay.port))
        .await
        .expect("start proxy B");
    let rb = proxy_a
        .control(None)
        .rebalancer()
        .expect("proxy A has a rebalancer");
    let control_b = proxy_b.control(None);
    let v1 = routed_version(&*control_b);

    // B's tasks retry what a cut-off proxy answers (40001 at the fence, 57P03 once its lease
    // ran out) for as long as the partition may last; A's tasks keep the usual policy.
    let load = Workload::start_retrying(
        &[
            proxy_conn_str(proxy_a.addr().port()),
            proxy_conn_str(proxy_b.addr().port()),
        ],
        2,
        |proxy| match proxy {
            1 => Retry {
                codes: &["40001", "57P03"],
                for_at_most: JOB_TIMEOUT,
            },
            _ => Retry::default(),
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A transaction on s0 older than the fence holds the cutover open.
    let holder = superuser(&clusters[0]).await;
    holder
        .batch_execute("begin; select 1")
        .await
        .expect("begin");
    let job = rb
        .add_shard(add_request("s2", &spare))
        .await
        .unwrap_or_else(|e| panic!("add_shard refused: {e:?}"));
    let held = wait_phase(&rb, JOB_TIMEOUT, Duration::from_millis(5), |p| {
        p >= Phase::Cutover
    })
    .await;
    assert_eq!(
        held.job.as_ref().map(|j| j.phase),
        Some(Phase::Cutover),
        "the cutover was to be held; status: {}",
        json(&held)
    );
    assert!(
        load.failure().is_none(),
        "a workload task stopped before the cut"
    );
    // B still routes by v1 and can renew its lease for a while: cut it off now, then let the
    // cutover commit v2.
    relay.set_cut(true);
    let cut_at = Instant::now();
    holder.batch_execute("rollback").await.expect("rollback");

    let s = wait_phase(&rb, JOB_TIMEOUT, Duration::from_millis(20), |p| {
        p >= Phase::Cleanup
    })
    .await;
    let committed = s.job.expect("job");
    assert_eq!(committed.id, job.id);
    assert_eq!(
        routed_version(&*control_b),
        v1,
        "B cannot have seen the new map while cut off"
    );
    let done = wait_terminal(&rb, Phase::Done, JOB_TIMEOUT).await;
    let v2 = done.to_version.expect("to_version");
    assert_eq!(v2, v1 + 1);
    let done_after = cut_at.elapsed();
    // The moved rows are gone from the sources, so B must not route by v1 any more: its lease
    // ran out, and it refuses rather than guess.
    assert_eq!(routed_version(&*control_b), v1);
    let b = connect(&proxy_conn_str(proxy_b.addr().port())).await;
    let refused = b
        .simple_query("update accounts set balance = balance where user_id = 1")
        .await
        .expect_err("a cut-off proxy past its lease refuses writes");
    assert_eq!(
        refused.code().map(|c| c.code()),
        Some("57P03"),
        "{refused:?}"
    );

    // Heal: B follows v2 and its tasks go on.
    relay.set_cut(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while routed_version(&*control_b) != v2 {
        assert!(
            Instant::now() < deadline,
            "B never followed v2 after healing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcomes = load.finish().await.unwrap_or_else(|e| panic!("{e}"));

    let mut want = State::default();
    let (mut ops, mut anomalies) = (0u64, Vec::new());
    let mut retried = std::collections::BTreeMap::<String, u64>::new();
    for o in outcomes {
        want.merge(o.state);
        ops += o.ops;
        anomalies.extend(o.anomalies);
        for (code, n) in o.retries_by_code {
            *retried.entry(code).or_default() += n;
        }
    }
    let all: Vec<(&str, &PgCluster)> =
        vec![("s0", &clusters[0]), ("s1", &clusters[1]), ("s2", &spare)];
    let found = verify::read_all(&all, &ring3).await;
    assert!(
        found.problems.is_empty(),
        "rows misplaced or duplicated after the move:\n{}",
        verify::summary(&found.problems, 30)
    );
    let diff = verify::diff(&want, &found.state, 20);
    assert!(
        diff.is_empty(),
        "the shards differ from the workload's model (an acknowledged write lost or a refused \
         one applied):\n{}",
        diff.join("\n")
    );
    assert!(
        anomalies.is_empty(),
        "statements saw unexpected row counts:\n{}",
        verify::summary(&anomalies, 30)
    );
    assert!(
        retried.get("57P03").copied().unwrap_or(0) > 0,
        "B's tasks were never refused for an expired lease: {retried:?}"
    );
    assert_clean(&all, "after the partitioned move").await;
    eprintln!(
        "job done {done_after:?} after B was cut off (lease {lease:?}); {ops} statements \
         committed, retried by SQLSTATE: {retried:?}; {} rows",
        found.state.rows()
    );

    proxy_a.shutdown().await;
    proxy_b.shutdown().await;
    drop(relay);
    clusters.push(spare);
    clusters.push(meta);
    stop_clusters(clusters).await;
}
