//! A first end-to-end check: a query through the proxy.

mod common;

use common::{Env, Setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_query_through_the_proxy() {
    let env = Env::start(Setup::default()).await;
    let client = env.connect().await;
    let row = client.query_one("select 41 + 1", &[]).await.unwrap();
    let v: i32 = row.get(0);
    assert_eq!(v, 42);
    drop(client);
    env.stop().await;
}
