//! Checkout and return of an idle server connection, uncontended (issue 15's target: under
//! 300 ns). The pool holds one real connection to a throwaway PostgreSQL 15 (the pool tests'
//! harness); the fast path never talks to the server, so the figure is the pool's own cost.
//!
//! `cargo bench -p shardgate-pool --bench checkout`

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{PgServer, SCRAM_PW, SCRAM_USER};
use criterion::{criterion_group, criterion_main, Criterion};
use shardgate_pool::{PoolKey, PoolSettings, Role, ServerPool};

fn checkout_and_return(c: &mut Criterion) {
    let pg = PgServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pool = rt.block_on(async {
        let settings = PoolSettings {
            max_size: 4,
            min_size: 1,
            ..PoolSettings::default()
        };
        let key = PoolKey {
            database: "postgres".into(),
            user: SCRAM_USER.into(),
            shard: "s0".into(),
            role: Role::Primary,
            host: pg.tcp_host(),
        };
        let pool = ServerPool::new(key, pg.target(SCRAM_USER, Some(SCRAM_PW)), settings);
        // One checkout opens the connection; from then on it is idle between iterations.
        drop(pool.checkout().await.expect("first checkout"));
        pool
    });
    c.bench_function("checkout_and_return_idle", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let conn = pool.checkout().await.expect("checkout");
                    black_box(&conn);
                }
                start.elapsed()
            })
        })
    });
    let state = pool.state();
    assert_eq!(
        state.connections, 1,
        "the same connection every time: {state:?}"
    );
    drop(pool);
    drop(rt);
    drop(pg);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = checkout_and_return
}
criterion_main!(benches);
