//! A client cannot hand itself the rebalancer's fence bypass through the proxy: `shardgate.*`
//! settings in the startup packet (as a parameter or in `options`) are refused as `SET` refuses
//! them. (That the fence itself also requires the rebalancer's login is proven against the
//! server in shardgate-rebalance's `fence_bypass_tests`.)

mod common;

use common::{raw, Env, RawClient, Setup, USER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shardgate_settings_in_startup_are_refused() {
    // A sharded table, so the proxy plans statements (a plain pooler forwards SET as is; the
    // fence's own check of the login covers that case).
    let env = Env::start(Setup {
        extra: "[[sharding.tables]]\nname = \"t\"\n".into(),
        ..Setup::default()
    })
    .await;

    // libpq-style `options`.
    let err = env
        .try_connect(&env.conn_str_with("options='-c shardgate.bypass=on'"))
        .await
        .expect_err("startup options with shardgate.bypass are refused");
    assert_eq!(common::sqlstate(&err).as_deref(), Some("42704"), "{err}");
    let message = err.as_db_error().map(|d| d.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("shardgate.bypass")),
        "{err:?}"
    );

    // A startup parameter of its own.
    let mut c = RawClient::open(env.port()).await;
    c.send(&raw::startup(
        196_608,
        &[
            ("user", USER),
            ("database", common::DB),
            ("shardgate.bypass", "on"),
        ],
    ))
    .await;
    let msgs = c.read_until_closed().await;
    assert_eq!(
        common::first_error(&msgs).as_deref(),
        Some("42704"),
        "{msgs:?}"
    );

    // SET is refused as before, and ordinary options still work.
    let client = env
        .try_connect(&env.conn_str_with("options='-c work_mem=8MB'"))
        .await
        .expect("ordinary options are accepted");
    let err = client
        .simple_query("SET shardgate.bypass = 'on'")
        .await
        .expect_err("SET shardgate.bypass is refused");
    assert_eq!(common::sqlstate(&err).as_deref(), Some("42704"), "{err}");
    let rows = client.simple_query("show work_mem").await.expect("show");
    let shown = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(shown.as_deref(), Some("8MB"));
    env.stop().await;
}
