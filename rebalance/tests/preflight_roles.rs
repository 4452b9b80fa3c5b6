//! Pre-flight refuses to add an empty server that lacks the roles owning or granted the
//! sharded tables (422 naming them), before anything is created; with the roles created the
//! same move runs to the end.

#[allow(dead_code)]
#[path = "rebalance_engine/common.rs"]
mod common;

use std::time::Duration;

use common::*;
use shardgate_rebalance::AddShardRequest;
use shardgate_topology::{Phase, Store};

const ROLES: &str = "CREATE ROLE app_owner; CREATE ROLE reporting;";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preflight_names_the_roles_a_target_lacks() {
    let mut shards = start_shards(3);
    let new = shards.pop().unwrap();
    let (s1, s2) = (&shards[0], &shards[1]);
    load(&[s1, s2], &["s1", "s2"]);
    for c in [s1, s2] {
        c.psql(
            DB,
            &format!(
                "{ROLES} ALTER TABLE accounts OWNER TO app_owner; \
                 GRANT SELECT ON orders TO reporting;"
            ),
        )
        .unwrap();
    }
    let cfg = config(&[("s1", s1), ("s2", s2)], "");
    let store = Store::open(&cfg, None).await.unwrap();
    let rb = rebalancer(cfg, store.clone());
    let request = || AddShardRequest {
        name: "s3".into(),
        primary: format!("127.0.0.1:{}", new.port()),
        replicas: vec![],
        admin_user: Some("postgres".into()),
        admin_password: Some("postgres".into()),
    };
    let e = rb.add_shard(request()).await.unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (422, "preflight"), "{e:?}");
    assert!(
        e.message.contains("s3")
            && e.message.contains("app_owner")
            && e.message.contains("reporting"),
        "{e:?}"
    );
    assert!(e.hint.contains("create app_owner, reporting"), "{e:?}");
    // Nothing was created or recorded.
    assert!(store.job().await.unwrap().is_none());
    assert_eq!(store.shard_map().await.unwrap().version, 1);
    for c in [s1, s2, &new] {
        assert_clean(c, "after refusal").await;
    }
    assert_eq!(
        new.psql(
            DB,
            "SELECT count(*) FROM pg_class WHERE relname IN ('accounts', 'orders')"
        )
        .unwrap(),
        "0"
    );

    // With the roles there, the same move passes pre-flight and finishes.
    new.psql(DB, ROLES).unwrap();
    rb.add_shard(request()).await.expect("pre-flight passes");
    let job = wait_terminal(&rb, Duration::from_secs(120)).await;
    assert_eq!(job.phase, Phase::Done, "{job:#?}");
    assert_placed(&[s1, s2, &new], &["s1", "s2", "s3"]).await;
    assert_eq!(
        new.psql(
            DB,
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'accounts'"
        )
        .unwrap(),
        "app_owner"
    );
}
