//! Session state a transaction-mode hand-over cannot carry: the role and session authorization
//! are reset for the next client, and statements that create other session state (temp tables,
//! LISTEN, session advisory locks, WITH HOLD cursors, SQL PREPARE) pin the client to its server
//! connection until it leaves.

mod common;

use common::{Env, Setup};

async fn one_text(client: &tokio_postgres::Client, sql: &str) -> String {
    let msgs = client.simple_query(sql).await.unwrap();
    msgs.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap()
}

/// The first column of the last row `sql` returns.
async fn last_text(client: &tokio_postgres::Client, sql: &str) -> String {
    let msgs = client.simple_query(sql).await.unwrap();
    msgs.iter()
        .rev()
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

/// Roles `tenant_a` and `tenant_b` that `app` may become, and a table with a row-level
/// security policy that shows each role its own rows only.
async fn tenants_with_rls(env: &Env) {
    let su = env.connect_superuser().await;
    su.batch_execute(
        "create role tenant_a; create role tenant_b; \
         grant tenant_a, tenant_b to app; \
         create table docs (tenant name not null, body text); \
         insert into docs values ('tenant_a', 'a secret'), ('tenant_b', 'b secret'); \
         alter table docs enable row level security; \
         create policy own_rows on docs using (tenant = current_user); \
         grant select on docs to app, tenant_a, tenant_b",
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_role_does_not_reach_the_next_client() {
    // A pool of one: every client gets the same server connection.
    let env = Env::start(Setup::default().pool_size(1)).await;
    tenants_with_rls(&env).await;

    let a = env.connect().await;
    let pid = backend_pid(&a).await;
    a.batch_execute("SET ROLE tenant_a").await.unwrap();
    assert_eq!(one_text(&a, "select current_user").await, "tenant_a");
    assert_eq!(
        one_text(&a, "select string_agg(body, ',') from docs").await,
        "a secret"
    );

    // A is still connected, between transactions: B gets the same server connection, as
    // itself.
    let b = env.connect().await;
    assert_eq!(
        backend_pid(&b).await,
        pid,
        "the server connection was reused"
    );
    assert_eq!(one_text(&b, "select current_user").await, "app");
    let seen: i64 = b
        .query_one("select count(*) from docs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "B must not see tenant_a's rows");
    // A keeps its role on its next transaction.
    assert_eq!(one_text(&a, "select current_user").await, "tenant_a");

    // RESET ALL does not reset a role, on PostgreSQL or here.
    a.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(one_text(&a, "select current_user").await, "tenant_a");
    assert_eq!(one_text(&b, "select current_user").await, "app");
    drop(a);

    // set_config('role', …, false), in the extended protocol, then the client leaves.
    let mut c = env.connect().await;
    let tx = c.transaction().await.unwrap();
    tx.query("select set_config('role', 'tenant_b', false)", &[])
        .await
        .unwrap();
    let who: String = tx
        .query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "tenant_b");
    tx.commit().await.unwrap();
    drop(c);
    assert_eq!(backend_pid(&b).await, pid);
    assert_eq!(one_text(&b, "select current_user").await, "app");
    let seen: i64 = b
        .query_one("select count(*) from docs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "B must not see tenant_b's rows");
    drop(b);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_session_authorization_does_not_reach_the_next_client() {
    let env = Env::start(Setup::default().pool_size(1)).await;
    tenants_with_rls(&env).await;
    // Only a superuser may change its session authorization.
    env.connect_superuser()
        .await
        .batch_execute("alter role app superuser")
        .await
        .unwrap();

    let a = env.connect().await;
    let pid = backend_pid(&a).await;
    a.batch_execute("SET SESSION AUTHORIZATION tenant_a")
        .await
        .unwrap();
    assert_eq!(one_text(&a, "select session_user").await, "tenant_a");
    let b = env.connect().await;
    assert_eq!(backend_pid(&b).await, pid);
    assert_eq!(one_text(&b, "select session_user").await, "app");
    assert_eq!(one_text(&b, "select current_user").await, "app");
    assert_eq!(one_text(&a, "select session_user").await, "tenant_a");
    drop(a);

    let c = env.connect().await;
    let who = last_text(
        &c,
        "begin; select set_config('session_authorization', 'tenant_b', false); \
         select session_user; commit",
    )
    .await;
    assert_eq!(who, "tenant_b");
    drop(c);
    assert_eq!(one_text(&b, "select session_user").await, "app");
    drop(b);
    env.stop().await;
}

/// Clients pinned to connections of the proxy's pools, as `/api/v1/pools` reports them.
fn pinned_clients(env: &Env) -> u64 {
    use shardgate_admin::control::ControlPlane;
    env.proxy
        .control(None)
        .pools()
        .iter()
        .map(|p| p.pinned)
        .sum()
}

async fn advisory_locks(su: &tokio_postgres::Client) -> i64 {
    su.query_one(
        "select count(*) from pg_locks where locktype = 'advisory'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_tables_and_locks_pin_the_client_until_it_leaves() {
    let env = Env::start(Setup::default().pool_size(1)).await;
    let su = env.connect_superuser().await;

    let a = env.connect().await;
    let pid = backend_pid(&a).await;
    a.batch_execute("CREATE TEMP TABLE person (name text)")
        .await
        .unwrap();
    a.batch_execute("insert into person values ('a')")
        .await
        .unwrap();
    a.query_one("select pg_advisory_lock(7)", &[])
        .await
        .unwrap();
    assert_eq!(pinned_clients(&env), 1, "A is pinned");
    assert_eq!(advisory_locks(&su).await, 1);
    // Its state is there in every later transaction.
    assert_eq!(
        one_text(&a, "select string_agg(name, ',') from person").await,
        "a"
    );
    let unlocked: bool = a
        .query_one("select pg_advisory_unlock(7)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(unlocked, "the lock is on A's own backend");
    a.query_one("select pg_advisory_lock(8)", &[])
        .await
        .unwrap();
    // SQL PREPARE and WITH HOLD cursors outlive their transactions too.
    a.batch_execute("PREPARE q AS SELECT 42; DECLARE c CURSOR WITH HOLD FOR SELECT 7")
        .await
        .unwrap();
    assert_eq!(one_text(&a, "EXECUTE q").await, "42");
    assert_eq!(one_text(&a, "FETCH c").await, "7");
    drop(a);

    // A left: its connection is reset before B gets it (a pool of one: the same backend).
    let b = env.connect().await;
    assert_eq!(backend_pid(&b).await, pid);
    b.batch_execute("CREATE TEMP TABLE person (id int, name text)")
        .await
        .expect("A's temp table is gone: no collision");
    assert_eq!(
        advisory_locks(&su).await,
        0,
        "A's session lock was released"
    );
    let e = b.batch_execute("EXECUTE q").await.unwrap_err();
    assert_eq!(common::sqlstate(&e).as_deref(), Some("26000"), "{e}");
    let e = b.batch_execute("FETCH c").await.unwrap_err();
    assert_eq!(common::sqlstate(&e).as_deref(), Some("34000"), "{e}");
    assert_eq!(pinned_clients(&env), 1, "B is pinned by its own temp table");
    drop(b);
    assert!(
        common::wait_for(std::time::Duration::from_secs(10), || async {
            pinned_clients(&env) == 0
        })
        .await,
        "no client is pinned once both left"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_reaches_a_listening_client() {
    use futures_util::StreamExt;
    let env = Env::start(Setup::default().pool_size(2)).await;
    let (a, mut connection) = tokio_postgres::connect(&env.conn_str(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(msg)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    a.batch_execute("LISTEN jobs").await.unwrap();
    // Other clients' transactions come and go meanwhile.
    let b = env.connect().await;
    for i in 0..5 {
        b.batch_execute(&format!("NOTIFY jobs, 'job {i}'"))
            .await
            .unwrap();
    }
    for i in 0..5 {
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), notifications.recv())
            .await
            .expect("the notification arrives")
            .unwrap();
        assert_eq!(got, format!("job {i}"));
    }
    drop(a);
    drop(b);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinning_refuse_names_the_statement() {
    let mut setup = Setup::default().pool_size(1);
    setup.pool_extra = "pinning = \"refuse\"".into();
    let env = Env::start(setup).await;
    let a = env.connect().await;
    for sql in [
        "create temp table t (x int)",
        "select pg_advisory_lock(1)",
        "listen jobs",
    ] {
        let e = a.batch_execute(sql).await.unwrap_err();
        assert_eq!(common::sqlstate(&e).as_deref(), Some("0A000"), "{sql}: {e}");
        let db = e.as_db_error().unwrap();
        assert!(db.message().contains("pool.pinning"), "{}", db.message());
    }
    let e = a.prepare("select pg_advisory_lock($1)").await.unwrap_err();
    assert_eq!(common::sqlstate(&e).as_deref(), Some("0A000"), "{e}");
    assert!(e.as_db_error().unwrap().message().contains("advisory"));
    // The client goes on, unpinned; nothing was created.
    assert_eq!(
        one_text(
            &a,
            "select count(*) from pg_locks where locktype = 'advisory'"
        )
        .await,
        "0"
    );
    assert_eq!(pinned_clients(&env), 0);
    drop(a);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_statements_follow_each_clients_search_path() {
    let env = Env::start(Setup::default().pool_size(1)).await;
    env.connect()
        .await
        .batch_execute(
            "create schema a; create schema b; \
             create table a.t (x int); insert into a.t values (1); \
             create table b.t (x text); insert into b.t values ('b')",
        )
        .await
        .unwrap();
    let a = env.connect().await;
    let b = env.connect().await;
    a.batch_execute("SET search_path = a").await.unwrap();
    b.batch_execute("SET search_path = b").await.unwrap();
    // The same text, prepared by both (tokio-postgres names them alike, too), run in turns
    // on the one server connection.
    let sa = a.prepare("select x from t").await.unwrap();
    let sb = b.prepare("select x from t").await.unwrap();
    for _ in 0..3 {
        let ra = a.query_one(&sa, &[]).await.expect("A's statement runs");
        assert_eq!(ra.get::<_, i32>(0), 1);
        let rb = b.query_one(&sb, &[]).await.expect("B's statement runs");
        assert_eq!(rb.get::<_, String>(0), "b");
    }
    drop((a, b));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_prepared_statements_are_bounded() {
    let setup = Setup {
        pool_extra: "prepared_statements_per_client = 2".into(),
        ..Setup::default()
    };
    let env = Env::start(setup).await;
    let c = env.connect().await;
    let s1 = c.prepare("select 1").await.unwrap();
    let s2 = c.prepare("select 2").await.unwrap();
    c.query_one(&s1, &[]).await.unwrap(); // s1 is now the most recently used
    let s3 = c.prepare("select 3").await.unwrap();
    // s2 was the least recently used: forgotten, as a statement PostgreSQL never saw.
    let e = c.query_one(&s2, &[]).await.unwrap_err();
    assert_eq!(common::sqlstate(&e).as_deref(), Some("26000"), "{e}");
    assert_eq!(c.query_one(&s1, &[]).await.unwrap().get::<_, i32>(0), 1);
    assert_eq!(c.query_one(&s3, &[]).await.unwrap().get::<_, i32>(0), 3);
    drop(c);
    env.stop().await;
}

const SHARDED_SCHEMA: &str = "create table users (user_id bigint primary key, name text);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_session_stays_on_its_shard() {
    let env = common::ShardedEnv::start(2, SHARDED_SCHEMA, &["users"], "").await;
    let (k0, k1) = (env.key_on(0, 1), env.key_on(1, 1));
    let c = env.connect().await;
    for (k, name) in [(k0, "zero"), (k1, "one")] {
        c.batch_execute(&format!(
            "insert into users (user_id, name) values ({k}, '{name}')"
        ))
        .await
        .unwrap();
    }
    // Pinned on shard 0 by a session lock taken next to a statement routed there.
    c.batch_execute(&format!(
        "select name from users where user_id = {k0}; select pg_advisory_lock(1)"
    ))
    .await
    .unwrap();
    assert_eq!(
        one_text(&c, &format!("select name from users where user_id = {k0}")).await,
        "zero"
    );
    let e = c
        .batch_execute(&format!("select name from users where user_id = {k1}"))
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&e).as_deref(), Some("0A000"), "{e}");
    let msg = e.as_db_error().unwrap().message().to_owned();
    assert!(msg.contains("pinned to shard s0"), "{msg}");
    assert!(msg.contains("advisory"), "{msg}");
    // Statements without sharded tables run on the pinned connection.
    let unlocked: bool = c
        .query_one("select pg_advisory_unlock(1)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(unlocked);
    // A pinning statement that would run on every shard is refused rather than spread.
    let other = env.connect().await;
    let e = other
        .batch_execute("create temp table tmp as select * from users")
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&e).as_deref(), Some("0A000"), "{e}");
    drop((c, other));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_pipelined_messages_are_capped() {
    use common::raw;
    let env = common::ShardedEnv::start_edited(2, SHARDED_SCHEMA, &["users"], "", |c| {
        c.pool.max_held_bytes = 65_536
    })
    .await;
    // A statement that waits on a lock, so the client's next messages are held meanwhile.
    let su = env.connect_shard(0).await;
    su.batch_execute("begin; lock table users").await.unwrap();
    let k0 = env.key_on(0, 1);
    let mut c = common::RawClient::connect(env.proxy.addr().port()).await;
    c.send(&raw::query(&format!(
        "select * from users where user_id = {k0}"
    )))
    .await;
    // Named Parses with no Bind yet: the start of a batch whose shard is not known.
    let text = format!("select '{}'", "x".repeat(1000));
    // The proxy closes the connection once the cap is passed: later writes may fail.
    for i in 0..100 {
        c.send_lossy(&raw::parse(&format!("p{i}"), &text)).await;
    }
    let msgs = c.read_until_closed().await;
    su.batch_execute("rollback").await.unwrap();
    let err = msgs
        .iter()
        .find(|m| m.tag == b'E')
        .unwrap_or_else(|| panic!("an error; got {msgs:?}"));
    assert_eq!(err.sqlstate().as_deref(), Some("54000"), "{err:?}");
    assert!(
        err.field(b'M')
            .is_some_and(|m| m.contains("pool.max_held_bytes")),
        "{err:?}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_after_a_string_ending_in_backslash_is_tracked() {
    let env = Env::start(Setup::default().pool_size(1)).await;
    let a = env.connect().await;
    let b = env.connect().await;
    // With standard_conforming_strings, 'C:\' is a whole string: the SET after it is a
    // statement the proxy must see (its former lexer read \' as an escaped quote).
    a.batch_execute(r"select 'C:\'; set statement_timeout = '1234ms'")
        .await
        .unwrap();
    assert_eq!(one_text(&b, "show statement_timeout").await, "0");
    assert_eq!(one_text(&a, "show statement_timeout").await, "1234ms");
    drop((a, b));
    env.stop().await;
}
