//! Bad input never panics the proxy nor disturbs other clients; clients that vanish in the
//! middle of a transaction leave no trace on the pooled server connections.

mod common;

use std::time::{Duration, Instant};

use common::{assert_proxy_serves, raw, wait_for, Env, RawClient, RawMsg, Setup};
use rand::{Rng, SeedableRng};
use tokio::io::AsyncWriteExt;

const STARTUP_3_0: i32 = 196_608;

/// Reads what the proxy says until it closes the connection; returns the first error's
/// SQLSTATE, if any.
async fn closed_with(c: &mut RawClient) -> (Option<String>, Vec<RawMsg>) {
    let msgs = c.read_until_closed().await;
    (common::first_error(&msgs), msgs)
}

/// All sessions the proxy served so far have ended.
async fn all_sessions_end(env: &Env) {
    assert!(
        wait_for(Duration::from_secs(10), || async {
            env.proxy.shared().client_count() == 0
        })
        .await,
        "{} client sessions still open",
        env.proxy.shared().client_count()
    );
}

/// No server connection is left inside a transaction and `table` is empty (`su`: a superuser
/// connection, which sees the state of every session).
async fn no_trace(su: &tokio_postgres::Client, table: &str) {
    let clean = wait_for(Duration::from_secs(10), || async {
        idle_in_transaction(su).await == 0
    })
    .await;
    assert!(clean, "a server connection was left inside a transaction");
    let rows: i64 = su
        .query_one(&format!("select count(*) from {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "rows of uncommitted transactions are visible");
}

/// Server sessions of database `app` inside a transaction (and not running a statement).
async fn idle_in_transaction(su: &tokio_postgres::Client) -> i64 {
    su.query_one(
        "select count(*) from pg_stat_activity where datname = 'app' \
         and pid <> pg_backend_pid() and state like 'idle in transaction%'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_before_login() {
    let env = Env::start(Setup::default()).await;
    let port = env.port();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);

    // Random bytes instead of a startup packet, in a few shapes.
    for round in 0..8 {
        let mut c = RawClient::open(port).await;
        let mut bytes: Vec<u8> = (0..rng.random_range(1..600))
            .map(|_| rng.random())
            .collect();
        match round {
            // A plausible length and a random protocol code.
            0..=2 if bytes.len() >= 8 => {
                let len = bytes.len() as i32;
                bytes[..4].copy_from_slice(&len.to_be_bytes());
            }
            // A 3.0 startup packet whose parameters are garbage (no NUL terminators).
            3 => {
                bytes = vec![0xff; 40];
                bytes[..4].copy_from_slice(&40i32.to_be_bytes());
                bytes[4..8].copy_from_slice(&STARTUP_3_0.to_be_bytes());
            }
            _ => {}
        }
        c.send_lossy(&bytes).await;
        let _ = c.stream.shutdown().await;
        let (code, msgs) = closed_with(&mut c).await;
        if let Some(code) = code {
            assert_eq!(code, "08P01", "round {round}: {msgs:?}");
        }
        assert_proxy_serves(&env).await;
    }

    // Lengths the proxy must refuse at once, without waiting for (or allocating) the body.
    for len in [0x7fff_ffffi32, i32::MIN, 3, 7] {
        let mut c = RawClient::open(port).await;
        let start = Instant::now();
        c.send(&len.to_be_bytes()).await;
        c.send_lossy(&STARTUP_3_0.to_be_bytes()).await;
        let (code, msgs) = closed_with(&mut c).await;
        assert_eq!(code.as_deref(), Some("08P01"), "length {len}: {msgs:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_proxy_serves(&env).await;
    }

    // Before login, messages are small (PostgreSQL allows 10,000 bytes for a startup packet
    // and 65,535 for an authentication message): a long claimed length is refused at once,
    // not awaited until the startup timeout.
    let mut c = RawClient::open(port).await;
    let start = Instant::now();
    c.send(&1_000_000i32.to_be_bytes()).await;
    c.send(&STARTUP_3_0.to_be_bytes()).await;
    let (code, msgs) = closed_with(&mut c).await;
    assert_eq!(code.as_deref(), Some("08P01"), "{msgs:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    let mut c = RawClient::open(port).await;
    c.send(&raw::startup(
        STARTUP_3_0,
        &[("user", "app"), ("database", "app")],
    ))
    .await;
    let auth = c.read_msg().await.unwrap();
    assert_eq!(auth.tag, b'R', "{auth:?}");
    let start = Instant::now();
    c.send(&[b'p', 0, 0x98, 0x96, 0x80]).await; // a 10 MB SASLInitialResponse
    let (code, msgs) = closed_with(&mut c).await;
    assert_eq!(code.as_deref(), Some("08P01"), "{msgs:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    assert_proxy_serves(&env).await;

    // Protocol versions other than 3.x. (1234.5678 is the CancelRequest code: followed by
    // startup parameters it is a malformed cancel request.)
    for version in [2 << 16, 4 << 16, (1234 << 16) | 5678, 0] {
        let mut c = RawClient::open(port).await;
        c.send(&raw::startup(
            version,
            &[("user", "app"), ("database", "app")],
        ))
        .await;
        let (code, msgs) = closed_with(&mut c).await;
        assert_eq!(
            code.as_deref(),
            Some("08P01"),
            "version {version:#x}: {msgs:?}"
        );
        if version >> 16 != 1234 {
            let msg = msgs[0].field(b'M').unwrap();
            assert!(msg.contains("protocol"), "{msg}");
        }
        assert_proxy_serves(&env).await;
    }

    // A newer 3.x minor version and protocol options (`_pq_.*`) are answered with
    // NegotiateProtocolVersion (3.0, the options not understood), then the login goes on.
    let mut c = RawClient::open(port).await;
    c.send(&raw::startup(
        STARTUP_3_0 | 2,
        &[
            ("user", "app"),
            ("database", "app"),
            ("_pq_.future_option", "on"),
        ],
    ))
    .await;
    let mut c = c
        .authenticate("app", "app-secret")
        .await
        .expect("login as 3.2");
    let negotiate = c.login_messages.iter().find(|m| m.tag == b'v');
    let negotiate =
        negotiate.unwrap_or_else(|| panic!("no NegotiateProtocolVersion: {:?}", c.login_messages));
    let mut expected = STARTUP_3_0.to_be_bytes().to_vec();
    expected.extend_from_slice(&1i32.to_be_bytes());
    expected.extend_from_slice(b"_pq_.future_option\0");
    assert_eq!(&negotiate.body[..], &expected[..]);
    assert_eq!(c.simple("select 1").await.len(), 4);
    drop(c);
    // A 3.0 client without options gets no NegotiateProtocolVersion.
    let c = RawClient::connect(port).await;
    assert!(c.login_messages.iter().all(|m| m.tag != b'v'));
    drop(c);

    // A startup packet without a user.
    let mut c = RawClient::open(port).await;
    c.send(&raw::startup(STARTUP_3_0, &[("database", "app")]))
        .await;
    let (code, msgs) = closed_with(&mut c).await;
    assert_eq!(code.as_deref(), Some("28000"), "{msgs:?}");
    assert_proxy_serves(&env).await;

    // SSLRequest and GSSENCRequest are answered 'N'; the client goes on in plaintext.
    for request in [80_877_103i32, 80_877_104] {
        let mut c = RawClient::open(port).await;
        c.send(&8i32.to_be_bytes()).await;
        c.send(&request.to_be_bytes()).await;
        assert_eq!(c.read_byte().await, Some(b'N'));
        let mut c = c
            .login_on(&[("user", "app"), ("database", "app")], "app-secret")
            .await
            .expect("login after the refused encryption request");
        let msgs = c.simple("select 'plain'").await;
        assert_eq!(msgs[1].first_column().as_deref(), Some("plain"));
    }
    // Three negotiation requests in a row are a protocol violation.
    let mut c = RawClient::open(port).await;
    for _ in 0..2 {
        c.send(&raw::ssl_request()).await;
        assert_eq!(c.read_byte().await, Some(b'N'));
    }
    c.send(&raw::ssl_request()).await;
    let (code, _) = closed_with(&mut c).await;
    assert_eq!(code.as_deref(), Some("08P01"));

    // A cancel request with a bogus key does nothing: the query it names runs to the end.
    let mut victim = RawClient::connect(port).await;
    let (pid, secret) = victim.backend_key;
    victim
        .send(&raw::query("select pg_sleep(0.5), 'survived'"))
        .await;
    for (p, s) in [
        (pid, secret.wrapping_add(1)),
        (pid ^ 1, secret),
        (0, 0),
        (rng.random(), rng.random()),
    ] {
        let mut cancel = RawClient::open(port).await;
        cancel.send(&raw::cancel_request(p, s)).await;
        let (_, msgs) = closed_with(&mut cancel).await;
        assert!(msgs.is_empty(), "a cancel request gets no answer: {msgs:?}");
    }
    let msgs = victim.read_until_ready().await;
    assert_eq!(common::first_error(&msgs), None, "{msgs:?}");
    assert!(msgs.iter().any(|m| m.tag == b'D'));
    drop(victim);

    assert_proxy_serves(&env).await;
    all_sessions_end(&env).await;
    env.stop().await;
}

/// Truncated, oversized, unknown and malformed messages after login, outside and inside a
/// transaction: 08P01 (or just the end of the session) and no trace on the server.
async fn garbage_after_login(env: &Env) {
    let port = env.port();
    let direct = env.connect_direct().await;
    direct
        .batch_execute("create table bad (id int); grant all on bad to public")
        .await
        .unwrap();

    for in_transaction in [false, true] {
        let login = || async {
            let mut c = RawClient::connect(port).await;
            if in_transaction {
                let msgs = c.simple("begin; insert into bad values (1)").await;
                assert_eq!(msgs.last().unwrap().body[..], b"T"[..], "{msgs:?}");
            }
            c
        };

        // A truncated message, then the client goes away.
        let mut c = login().await;
        c.send(&[b'Q', 0, 0, 0, 100]).await;
        c.send(b"select 1").await;
        let _ = c.stream.shutdown().await;
        let (code, msgs) = closed_with(&mut c).await;
        assert_eq!(code, None, "{msgs:?}");
        assert_proxy_serves(env).await;

        // An oversized length: refused at once, nothing allocated or awaited.
        for tag in [b'Q', b'P', b'd'] {
            let mut c = login().await;
            let start = Instant::now();
            c.send(&[tag, 0x7f, 0xff, 0xff, 0xff]).await;
            let (code, msgs) = closed_with(&mut c).await;
            assert_eq!(code.as_deref(), Some("08P01"), "{msgs:?}");
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "took {:?}",
                start.elapsed()
            );
            assert_proxy_serves(env).await;
        }

        // A length below the header's own size.
        let mut c = login().await;
        c.send(&[b'Q', 0, 0, 0, 2]).await;
        let (code, msgs) = closed_with(&mut c).await;
        assert_eq!(code.as_deref(), Some("08P01"), "{msgs:?}");

        // An unknown message type.
        let mut c = login().await;
        c.send(&[b'y', 0, 0, 0, 8, 1, 2, 3, 4]).await;
        let (code, msgs) = closed_with(&mut c).await;
        assert_eq!(code.as_deref(), Some("08P01"), "{msgs:?}");
        assert_proxy_serves(env).await;

        // Malformed bodies of known messages: a Parse without its terminators, a Bind whose
        // counts run past the end.
        for bad in [
            vec![b'P', 0, 0, 0, 8, b'a', b'b', b'c', b'd'],
            vec![b'B', 0, 0, 0, 10, 0, 0, 0, 1, 0, 9],
            vec![b'Q', 0, 0, 0, 7, b'a', b'b', b'c'],
        ] {
            let mut c = login().await;
            let mut batch = bad.clone();
            batch.extend_from_slice(&raw::sync());
            c.send_lossy(&batch).await;
            let (code, msgs) = closed_with(&mut c).await;
            let code = code.unwrap_or_else(|| panic!("no error for {bad:?}: {msgs:?}"));
            assert!(
                code == "08P01" || code == "42601",
                "{bad:?}: {code} {msgs:?}"
            );
            assert_proxy_serves(env).await;
        }
    }

    all_sessions_end(env).await;
    no_trace(&env.connect_superuser().await, "bad").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_login_transaction_mode() {
    let env = Env::start(Setup::default().pool_size(2)).await;
    garbage_after_login(&env).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_login_session_mode() {
    let env = Env::start(Setup::session().pool_size(2)).await;
    garbage_after_login(&env).await;
    env.stop().await;
}

/// 1,000 clients killed inside `BEGIN; INSERT …` in several ways; afterwards no server
/// connection is inside a transaction and none of the rows is visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_killed_inside_transactions_leave_no_trace() {
    const TRIALS: usize = 1_000;
    const CONCURRENCY: usize = 20;
    let env = Env::start(Setup::default().pool_size(4)).await;
    let port = env.port();
    let direct = env.connect_direct().await;
    direct
        .batch_execute(
            "create table dirty (id int, note text); grant insert, select on dirty to md5_user",
        )
        .await
        .unwrap();

    // md5 logins: SCRAM's key derivation would dominate 1,000 logins in a debug build.
    let params: &[(&str, &str)] = &[("user", "md5_user"), ("database", "app")];

    // The final check can see the sessions: one held open inside a transaction shows.
    let su = env.connect_superuser().await;
    let mut held = RawClient::login(port, params, "md5-secret").await.unwrap();
    held.simple("begin; insert into dirty values (-2, 'held')")
        .await;
    assert!(
        wait_for(Duration::from_secs(10), || async {
            idle_in_transaction(&su).await == 1
        })
        .await
    );
    drop(held);
    let trial = |i: usize| async move {
        let mut c = RawClient::login(port, params, "md5-secret")
            .await
            .expect("md5 login");
        let insert = format!("insert into dirty values ({i}, 'trial')");
        match i % 5 {
            // BEGIN and INSERT in one Query; wait for the answer, then close.
            0 => {
                let msgs = c.simple(&format!("begin; {insert}")).await;
                assert_eq!(&msgs.last().unwrap().body[..], b"T", "{msgs:?}");
            }
            // Separate statements, then a reset (RST) instead of a close.
            1 => {
                c.simple("begin").await;
                c.simple(&insert).await;
                c.stream.set_zero_linger().unwrap();
            }
            // The INSERT is still running when the client goes away.
            2 => {
                c.simple("begin").await;
                c.send(&raw::query(&format!("{insert}; select pg_sleep(0.01)")))
                    .await;
            }
            // Extended protocol, and half a message left behind.
            3 => {
                c.simple("begin").await;
                let mut batch = raw::parse("", &insert);
                batch.extend_from_slice(&raw::bind("", "", &[]));
                batch.extend_from_slice(&raw::execute("", 0));
                batch.extend_from_slice(&raw::sync());
                c.send(&batch).await;
                c.read_until_ready().await;
                c.send(&[b'Q', 0, 0, 1, 0, b's']).await;
            }
            // Extended protocol without a Sync: the INSERT's batch never completes.
            _ => {
                c.simple("begin").await;
                let mut batch = raw::parse("", &insert);
                batch.extend_from_slice(&raw::bind("", "", &[]));
                batch.extend_from_slice(&raw::execute("", 0));
                batch.extend_from_slice(&[b'H', 0, 0, 0, 4]); // Flush
                c.send(&batch).await;
                let m = c.read_msg().await.unwrap();
                assert_eq!(m.tag, b'1', "{m:?}");
            }
        }
        drop(c);
    };

    let start = Instant::now();
    let mut next = 0;
    let mut running = tokio::task::JoinSet::new();
    while next < TRIALS || !running.is_empty() {
        while next < TRIALS && running.len() < CONCURRENCY {
            running.spawn(trial(next));
            next += 1;
        }
        if let Some(r) = running.join_next().await {
            r.expect("trial");
        }
    }
    let trials_took = start.elapsed();

    all_sessions_end(&env).await;
    no_trace(&su, "dirty").await;
    // The pool is intact: the proxy still serves, with at most its 4 connections per pool.
    assert_proxy_serves(&env).await;
    let md5 = common::connect(&format!(
        "host=127.0.0.1 port={port} user=md5_user password=md5-secret dbname=app"
    ))
    .await;
    md5.batch_execute("insert into dirty values (-1, 'committed')")
        .await
        .unwrap();
    let rows: i64 = direct
        .query_one("select count(*) from dirty", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    let n = Env::server_backends(&su).await;
    assert!(n <= 8, "{n} server connections for two pools of 4");
    eprintln!("{TRIALS} killed clients in {trials_took:?}");

    drop((md5, direct, su));
    env.stop().await;
}
