//! No state leaks between clients through a pooled server connection: settings, startup
//! parameters and prepared statements stay with the client that made them.

mod common;

use common::{first_error, raw, Env, RawClient, RawMsg, Setup};

async fn show(client: &tokio_postgres::Client, name: &str) -> String {
    let msgs = client.simple_query(&format!("show {name}")).await.unwrap();
    msgs.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap()
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

fn data_rows(msgs: &[RawMsg]) -> Vec<String> {
    msgs.iter().filter_map(RawMsg::first_column).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_resets_the_connection_for_the_next_client() {
    let env = Env::start(Setup::session().pool_size(1)).await;

    let a = env.connect().await;
    let pid_a = backend_pid(&a).await;
    a.batch_execute(
        "set statement_timeout = '1234ms'; set search_path = pg_catalog; \
         prepare leaked as select 1; create temp table leak_t (x int)",
    )
    .await
    .unwrap();
    assert_eq!(show(&a, "statement_timeout").await, "1234ms");
    drop(a);

    // Pool of one: the next client gets the same server connection once A's is reset.
    let b = env.connect().await;
    assert_eq!(
        backend_pid(&b).await,
        pid_a,
        "the server connection was reused"
    );
    assert_eq!(show(&b, "statement_timeout").await, "0");
    assert_eq!(show(&b, "search_path").await, "\"$user\", public");
    let e = b.batch_execute("execute leaked").await.unwrap_err();
    assert_eq!(common::sqlstate(&e).as_deref(), Some("26000"), "{e}");
    let e = b.batch_execute("select * from leak_t").await.unwrap_err();
    assert_eq!(common::sqlstate(&e).as_deref(), Some("42P01"), "{e}");
    drop(b);

    // A client that leaves inside a transaction: it is rolled back, nothing survives.
    let c = env.connect().await;
    c.batch_execute("create table kept (x int)").await.unwrap();
    c.batch_execute("begin; insert into kept values (1); set local work_mem = '7MB'")
        .await
        .unwrap();
    drop(c);
    let d = env.connect().await;
    assert_eq!(backend_pid(&d).await, pid_a);
    let n: i64 = d
        .query_one("select count(*) from kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    assert_eq!(show(&d, "work_mem").await, "4MB");
    drop(d);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_set_local_and_tracked_session_sets() {
    let env = Env::start(Setup::default().pool_size(1)).await;
    let mut a = env.connect().await;
    let b = env.connect().await;
    let pid = backend_pid(&a).await;

    // SET LOCAL works inside a transaction and is gone after it.
    let tx = a.transaction().await.unwrap();
    tx.batch_execute("set local statement_timeout = '2222ms'")
        .await
        .unwrap();
    assert_eq!(
        tx.query_one("show statement_timeout", &[])
            .await
            .unwrap()
            .get::<_, &str>(0),
        "2222ms"
    );
    tx.commit().await.unwrap();
    assert_eq!(show(&a, "statement_timeout").await, "0");

    // A session SET outside a transaction follows A, and only A, across transactions on the
    // one shared server connection.
    a.batch_execute("set statement_timeout = '1234ms'")
        .await
        .unwrap();
    assert_eq!(show(&a, "statement_timeout").await, "1234ms");
    assert_eq!(show(&b, "statement_timeout").await, "0");
    assert_eq!(backend_pid(&b).await, pid, "one shared server connection");
    assert_eq!(show(&a, "statement_timeout").await, "1234ms");
    let tx = a.transaction().await.unwrap();
    assert_eq!(
        tx.query_one("show statement_timeout", &[])
            .await
            .unwrap()
            .get::<_, &str>(0),
        "1234ms"
    );
    tx.commit().await.unwrap();
    // The setting really applies (not just `show`): a longer statement is cancelled.
    let e = a.batch_execute("select pg_sleep(3)").await.unwrap_err();
    assert_eq!(common::sqlstate(&e).as_deref(), Some("57014"), "{e}");
    b.batch_execute("select pg_sleep(1.5)").await.unwrap();

    // B's own SET (extended protocol this time) does not reach A either.
    b.execute("set work_mem = '8MB'", &[]).await.unwrap();
    assert_eq!(show(&b, "work_mem").await, "8MB");
    assert_eq!(show(&a, "work_mem").await, "4MB");
    assert_eq!(show(&b, "work_mem").await, "8MB");

    // The same unnamed Parse sent again (drivers do so at every execution; the relay reuses
    // what it read of the last one) is tracked again each time.
    for _ in 0..2 {
        b.query_typed("set work_mem = '16MB'", &[]).await.unwrap();
        assert_eq!(show(&b, "work_mem").await, "16MB");
        assert_eq!(show(&a, "work_mem").await, "4MB");
        b.batch_execute("reset work_mem").await.unwrap();
        assert_eq!(show(&b, "work_mem").await, "4MB");
    }
    b.execute("set work_mem = '8MB'", &[]).await.unwrap();

    // A SET in a rolled-back transaction is undone; in a committed one it stays.
    a.batch_execute("begin; set statement_timeout = '5s'; rollback")
        .await
        .unwrap();
    assert_eq!(show(&a, "statement_timeout").await, "1234ms");
    a.batch_execute("begin; set statement_timeout = '6s'; commit")
        .await
        .unwrap();
    assert_eq!(show(&a, "statement_timeout").await, "6s");
    assert_eq!(show(&b, "statement_timeout").await, "0");

    // RESET and RESET ALL undo it for A.
    a.batch_execute("reset statement_timeout").await.unwrap();
    assert_eq!(show(&a, "statement_timeout").await, "0");
    assert_eq!(show(&b, "work_mem").await, "8MB");
    a.batch_execute("set statement_timeout = '1234ms'; set lock_timeout = '4321ms'")
        .await
        .unwrap();
    assert_eq!(show(&b, "lock_timeout").await, "0");
    assert_eq!(show(&a, "lock_timeout").await, "4321ms");
    a.batch_execute("reset all").await.unwrap();
    assert_eq!(show(&a, "statement_timeout").await, "0");
    assert_eq!(show(&a, "lock_timeout").await, "0");
    assert_eq!(show(&b, "work_mem").await, "8MB");
    b.batch_execute("discard all").await.unwrap();
    assert_eq!(show(&b, "work_mem").await, "4MB");

    // Settings changed by set_config() rather than SET are not tracked, but must not leak to
    // the next client either.
    let row = a
        .query_one(
            "select set_config('statement_timeout', '3333ms', false)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "3333ms");
    a.batch_execute("select pg_catalog.SET_CONFIG('work_mem', '9MB', false)")
        .await
        .unwrap();
    assert_eq!(show(&b, "statement_timeout").await, "0");
    assert_eq!(show(&b, "work_mem").await, "4MB");

    drop((a, b));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_follow_each_client() {
    let env = Env::start(Setup::default().pool_size(1)).await;
    let direct = env.connect_direct().await;
    direct
        .batch_execute("create schema sa; create schema sb; create table sa.t as select 'from a' as v; create table sb.t as select 'from b' as v")
        .await
        .unwrap();

    let a =
        common::connect(&env.conn_str_with("application_name=alpha options='-c search_path=sa'"))
            .await;
    let b = common::connect(
        &env.conn_str_with("application_name=beta options='-c search_path=sb -c work_mem=5MB'"),
    )
    .await;
    let c = env.connect().await;
    for _ in 0..3 {
        assert_eq!(show(&a, "application_name").await, "alpha");
        assert_eq!(show(&b, "application_name").await, "beta");
        // A client without one shows the proxy's own name (as server connections do in
        // pg_stat_activity), never another client's.
        assert_eq!(show(&c, "application_name").await, "shardgate");
        assert_eq!(show(&a, "search_path").await, "sa");
        assert_eq!(show(&b, "search_path").await, "sb");
        assert_eq!(show(&c, "search_path").await, "\"$user\", public");
        assert_eq!(show(&b, "work_mem").await, "5MB");
        assert_eq!(show(&a, "work_mem").await, "4MB");
        let v: String = a.query_one("select v from t", &[]).await.unwrap().get(0);
        assert_eq!(v, "from a");
        let v: String = b.query_one("select v from t", &[]).await.unwrap().get(0);
        assert_eq!(v, "from b");
        let e = c.query_one("select v from t", &[]).await.unwrap_err();
        assert_eq!(common::sqlstate(&e).as_deref(), Some("42P01"));
    }
    assert_eq!(
        backend_pid(&a).await,
        backend_pid(&c).await,
        "one shared server connection"
    );

    // As on a direct connection, RESET goes back to the startup value, not the server default.
    let d = common::connect(&format!(
        "host=127.0.0.1 port={} user=app password=app-secret dbname=app options='-c search_path=sa'",
        env.cluster.port()
    ))
    .await;
    for (who, client) in [("direct", &d), ("proxy", &a)] {
        client.batch_execute("set search_path = sb").await.unwrap();
        assert_eq!(show(client, "search_path").await, "sb", "{who}");
        client.batch_execute("reset search_path").await.unwrap();
        assert_eq!(show(client, "search_path").await, "sa", "{who}: reset");
        client.batch_execute("set search_path = sb").await.unwrap();
        client.batch_execute("reset all").await.unwrap();
        assert_eq!(show(client, "search_path").await, "sa", "{who}: reset all");
    }
    assert_eq!(show(&a, "application_name").await, "alpha");

    drop((a, b, c, d, direct));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_belong_to_their_client() {
    let env = Env::start(Setup::default().pool_size(1)).await;
    let mut a = RawClient::connect(env.port()).await;
    let mut b = RawClient::connect(env.port()).await;

    // A prepares s1 and uses it.
    let mut batch = raw::parse("s1", "select 'a:' || $1::text");
    batch.extend_from_slice(&raw::bind("", "s1", &[Some("one")]));
    batch.extend_from_slice(&raw::execute("", 0));
    batch.extend_from_slice(&raw::sync());
    a.send(&batch).await;
    let msgs = a.read_until_ready().await;
    assert_eq!(first_error(&msgs), None, "{msgs:?}");
    assert_eq!(data_rows(&msgs), vec!["a:one"]);

    // B cannot bind or describe A's s1 on the shared server connection.
    let mut batch = raw::bind("", "s1", &[Some("two")]);
    batch.extend_from_slice(&raw::execute("", 0));
    batch.extend_from_slice(&raw::sync());
    b.send(&batch).await;
    let msgs = b.read_until_ready().await;
    assert_eq!(first_error(&msgs).as_deref(), Some("26000"), "{msgs:?}");
    assert!(data_rows(&msgs).is_empty());
    let mut batch = raw::describe(b'S', "s1");
    batch.extend_from_slice(&raw::sync());
    b.send(&batch).await;
    let msgs = b.read_until_ready().await;
    assert_eq!(first_error(&msgs).as_deref(), Some("26000"), "{msgs:?}");
    let msgs = b.simple("execute s1('x')").await;
    assert_eq!(first_error(&msgs).as_deref(), Some("26000"), "{msgs:?}");

    // B's own s1 is another statement; each client gets its own.
    let mut batch = raw::parse("s1", "select 'b:' || $1::text || '!'");
    batch.extend_from_slice(&raw::bind("", "s1", &[Some("three")]));
    batch.extend_from_slice(&raw::execute("", 0));
    batch.extend_from_slice(&raw::sync());
    b.send(&batch).await;
    let msgs = b.read_until_ready().await;
    assert_eq!(data_rows(&msgs), vec!["b:three!"]);
    for (client, expected) in [(&mut a, "a:four"), (&mut b, "b:four!")] {
        let mut batch = raw::bind("", "s1", &[Some("four")]);
        batch.extend_from_slice(&raw::execute("", 0));
        batch.extend_from_slice(&raw::sync());
        client.send(&batch).await;
        let msgs = client.read_until_ready().await;
        assert_eq!(data_rows(&msgs), vec![expected], "{msgs:?}");
    }

    // After A closes s1, A cannot use it either.
    let mut batch = Vec::from(&[b'C', 0, 0, 0, 8, b'S', b's', b'1', 0][..]);
    batch.extend_from_slice(&raw::sync());
    a.send(&batch).await;
    let msgs = a.read_until_ready().await;
    assert_eq!(msgs.iter().map(|m| m.tag as char).collect::<String>(), "3Z");
    let mut batch = raw::bind("", "s1", &[Some("five")]);
    batch.extend_from_slice(&raw::execute("", 0));
    batch.extend_from_slice(&raw::sync());
    a.send(&batch).await;
    let msgs = a.read_until_ready().await;
    assert_eq!(first_error(&msgs).as_deref(), Some("26000"), "{msgs:?}");
    // B's s1 is untouched by A's Close.
    let mut batch = raw::bind("", "s1", &[Some("six")]);
    batch.extend_from_slice(&raw::execute("", 0));
    batch.extend_from_slice(&raw::sync());
    b.send(&batch).await;
    let msgs = b.read_until_ready().await;
    assert_eq!(data_rows(&msgs), vec!["b:six!"]);

    a.send(&raw::terminate()).await;
    b.send(&raw::terminate()).await;
    env.stop().await;
}
