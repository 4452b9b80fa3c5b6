//! TLS end to end: shardgate in front of a PostgreSQL that accepts only TLS (`ssl = on`,
//! `hostssl` lines, `hostnossl … reject`), with a CA and certificates the test makes (rcgen).
//! Clients: psql (`sslmode=require`, `verify-full`), tokio-postgres with rustls, plaintext
//! clients under `tls.mode = "require"`; servers: every sslmode, a wrong CA, the lag monitor;
//! certificate reload.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{sqlstate, DB, PASSWORD, USER};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use shardgate_admin::control::ControlPlane;
use shardgate_config::Config;
use shardgate_proxy::ProxyHandle;
use shardgate_tests::{psql_url, Auth, ClusterOptions, PgCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A test CA, a server certificate it signed for `localhost` and `127.0.0.1` (used by the
/// PostgreSQL server and by shardgate alike), and an unrelated CA.
struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A server certificate for `localhost` and `127.0.0.1` signed by `ca`: (cert PEM, key PEM).
fn server_cert(ca: &CertifiedIssuer<'static, KeyPair>) -> (String, String) {
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes a file the PostgreSQL server (user `postgres` when the tests run as root) can read;
/// `private` ones get mode 0600, which the server insists on for its key.
fn write_for_server(path: &Path, contents: &str, private: bool) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    let mode = if private { 0o600 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    shardgate_tests::process::give_to_server_user(path).unwrap();
}

fn make_pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    shardgate_tests::process::give_to_server_user(dir.path()).unwrap();
    let ca = new_ca("shardgate test CA");
    let other = new_ca("some other CA");
    let (cert, key) = server_cert(&ca);
    let pki = Pki {
        ca: dir.path().join("ca.pem"),
        other_ca: dir.path().join("other-ca.pem"),
        cert: dir.path().join("server.crt"),
        key: dir.path().join("server.key"),
        dir,
    };
    write_for_server(&pki.ca, &ca.pem(), false);
    write_for_server(&pki.other_ca, &other.pem(), false);
    write_for_server(&pki.cert, &cert, false);
    write_for_server(&pki.key, &key, true);
    pki
}

/// A PostgreSQL server that refuses unencrypted TCP, with `app` owning database `app`.
async fn tls_only_cluster(pki: &Pki) -> PgCluster {
    let (cert, key) = (pki.cert.clone(), pki.key.clone());
    tokio::task::spawn_blocking(move || {
        let c = PgCluster::start(
            ClusterOptions::default()
                .user(USER, PASSWORD, Auth::Scram)
                .require_tls(&cert, &key),
        )
        .expect("start PostgreSQL with TLS");
        c.create_database(DB, USER).expect("create database");
        c
    })
    .await
    .unwrap()
}

/// Config for a proxy in front of `cluster`: `[tls]` from `tls` (TOML lines), the shard
/// host's TLS settings from `host_tls` (inline-table keys).
fn config_text(cluster: &PgCluster, tls: &str, host_tls: &str) -> String {
    format!(
        r#"
[listen]
addr = "127.0.0.1:0"
shutdown_timeout = "2s"

[admin]
listen = "127.0.0.1:0"

[pool]
size = 4
checkout_timeout = "10s"

[replicas]
check_interval = "200ms"

[tls]
{tls}

[[users]]
name = "{USER}"
password = "{PASSWORD}"

[[shards]]
name = "s0"
primary = {{ host = "127.0.0.1", port = {port}{host_tls} }}
"#,
        port = cluster.port(),
    )
}

fn client_tls(pki: &Pki, mode: &str) -> String {
    format!(
        "mode = \"{mode}\"\ncert_file = {:?}\nkey_file = {:?}",
        pki.cert, pki.key
    )
}

fn verify_full(ca: &Path) -> String {
    format!(", sslmode = \"verify-full\", sslrootcert = {ca:?}")
}

async fn start_proxy(text: &str) -> ProxyHandle {
    common::init_logs();
    let config = Config::from_toml(text, Path::new("tls-test.toml")).expect("valid config");
    shardgate_proxy::start(config).await.expect("start proxy")
}

/// A proxy in front of `cluster` with `[tls]` from `tls` and the shard host's `host_tls`.
async fn proxy_for(cluster: &PgCluster, tls: &str, host_tls: &str) -> ProxyHandle {
    start_proxy(&config_text(cluster, tls, host_tls)).await
}

/// The setup most tests share: clients must use TLS, and shardgate verifies the server fully.
async fn tls_both_sides(cluster: &PgCluster, pki: &Pki) -> ProxyHandle {
    proxy_for(cluster, &client_tls(pki, "require"), &verify_full(&pki.ca)).await
}

/// psql with a connection string, off the async runtime.
async fn psql(url: String, sql: &'static str) -> Result<String, String> {
    tokio::task::spawn_blocking(move || psql_url(&url, sql).map_err(|e| e.to_string()))
        .await
        .unwrap()
}

/// psql through `url` fails, and its error says `needle`.
async fn assert_psql_fails(url: String, sql: &'static str, needle: &str) {
    let out = psql(url, sql).await;
    assert!(
        out.as_ref().is_err_and(|e| e.contains(needle)),
        "expected an error containing {needle:?}: {out:?}"
    );
}

fn url(port: u16, host: &str, params: &str) -> String {
    format!("postgres://{USER}:{PASSWORD}@{host}:{port}/{DB}?{params}")
}

/// psql's parameters for verifying shardgate's certificate against `ca`.
fn verify_full_params(ca: &Path) -> String {
    format!("sslmode=verify-full&sslrootcert={}", ca.display())
}

/// A tokio-postgres connection string to shardgate on `port` (no TLS options).
fn plain_conn(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user={USER} password={PASSWORD} dbname={DB}")
}

/// tokio-postgres' rustls connector (tokio-postgres-rustls), trusting `ca`.
fn rustls_connector(ca: &Path) -> tokio_postgres_rustls::MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// tokio-postgres over rustls through `port`, trusting `ca`, with channel binding required
/// (SCRAM-SHA-256-PLUS over shardgate's certificate).
async fn connect_rustls(
    port: u16,
    ca: &Path,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let tls = rustls_connector(ca);
    let conn = format!(
        "host=localhost port={port} user={USER} password={PASSWORD} dbname={DB} sslmode=require \
         channel_binding=require"
    );
    let (client, connection) = tokio_postgres::connect(&conn, tls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

use rustls::pki_types::pem::PemObject;

/// A server error's message and hint (tokio-postgres' Display says only "db error").
fn db_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} (hint: {})", d.message(), d.hint().unwrap_or("")),
        None => format!("{e:?}"),
    }
}

/// A plaintext tokio-postgres connection through `conn` is refused with SQLSTATE `code`
/// (`why` says what refuses it); returns the error's message and hint.
async fn refused_plaintext(conn: &str, code: &str, why: &str) -> String {
    let err = tokio_postgres::connect(conn, tokio_postgres::NoTls)
        .await
        .err()
        .expect(why);
    assert_eq!(sqlstate(&err).as_deref(), Some(code), "{why}: {err}");
    db_text(&err)
}

/// Whether the server sees this session's connection (from shardgate) as encrypted.
const SERVER_SIDE_SSL: &str = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_with_require_and_verify_full_through_shardgate_to_a_tls_only_server() {
    let pki = make_pki();
    let cluster = tls_only_cluster(&pki).await;
    // The server really refuses plaintext.
    assert_psql_fails(
        url(cluster.port(), "127.0.0.1", "sslmode=disable"),
        "select 1",
        "no encryption",
    )
    .await;

    let proxy = tls_both_sides(&cluster, &pki).await;
    let port = proxy.addr().port();
    let out = psql(url(port, "127.0.0.1", "sslmode=require"), SERVER_SIDE_SSL).await;
    assert_eq!(out.as_deref(), Ok("t"), "sslmode=require");
    for (binding, what) in [
        ("require", "SCRAM-SHA-256-PLUS"),
        ("disable", "plain SCRAM"),
    ] {
        let params = format!("sslmode=require&channel_binding={binding}");
        let out = psql(url(port, "127.0.0.1", &params), "select 1").await;
        assert_eq!(out.as_deref(), Ok("1"), "{what} over TLS");
    }
    let wrong = format!("postgres://{USER}:wrong@127.0.0.1:{port}/{DB}?channel_binding=require");
    assert_psql_fails(wrong, "select 1", "password authentication failed").await;

    for host in ["127.0.0.1", "localhost"] {
        let params = verify_full_params(&pki.ca);
        let out = psql(url(port, host, &params), "select 6 * 7").await;
        assert_eq!(out.as_deref(), Ok("42"), "verify-full via {host}");
    }
    // libpq itself checks shardgate's certificate: the wrong CA fails on the client.
    let params = verify_full_params(&pki.other_ca);
    assert_psql_fails(
        url(port, "127.0.0.1", &params),
        "select 1",
        "certificate verify failed",
    )
    .await;
    proxy.shutdown().await;
    drop(pki.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_clients_are_refused_under_require_and_served_under_allow() {
    let pki = make_pki();
    let cluster = tls_only_cluster(&pki).await;
    let host_tls = verify_full(&pki.ca);

    let proxy = tls_both_sides(&cluster, &pki).await;
    let port = proxy.addr().port();
    assert_psql_fails(
        url(port, "127.0.0.1", "sslmode=disable"),
        "select 1",
        "TLS is required",
    )
    .await;
    let text = refused_plaintext(&plain_conn(port), "28000", "a plaintext client is refused").await;
    assert!(text.contains("sslmode=require"), "{text}");
    proxy.shutdown().await;

    // allow: both kinds of client are served.
    let proxy = proxy_for(&cluster, &client_tls(&pki, "allow"), &host_tls).await;
    let port = proxy.addr().port();
    let plain = psql(url(port, "127.0.0.1", "sslmode=disable"), SERVER_SIDE_SSL).await;
    assert_eq!(
        plain.as_deref(),
        Ok("t"),
        "plaintext client, TLS server side"
    );
    let tls = psql(url(port, "127.0.0.1", "sslmode=require"), "select 1").await;
    assert_eq!(tls.as_deref(), Ok("1"));
    proxy.shutdown().await;

    // disable (the default): SSLRequest is answered N, so sslmode=require fails on the client
    // and prefer falls back to plaintext.
    let proxy = proxy_for(&cluster, "", &host_tls).await;
    let port = proxy.addr().port();
    assert_psql_fails(
        url(port, "127.0.0.1", "sslmode=require"),
        "select 1",
        "does not support SSL",
    )
    .await;
    let out = psql(url(port, "127.0.0.1", "sslmode=prefer"), "select 1").await;
    assert_eq!(out.as_deref(), Ok("1"));
    proxy.shutdown().await;
    drop(pki.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_with_rustls_through_shardgate() {
    let pki = make_pki();
    let cluster = tls_only_cluster(&pki).await;
    let proxy = tls_both_sides(&cluster, &pki).await;
    let port = proxy.addr().port();
    let client = connect_rustls(port, &pki.ca).await.expect("TLS connect");
    // Extended protocol with parameters, a prepared statement reused, a transaction.
    let stmt = client.prepare("select $1::int8 * 2").await.unwrap();
    for i in 0..20i64 {
        let row = client.query_one(&stmt, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i64>(0), i * 2);
    }
    client
        .batch_execute("begin; create temp table t (v text); insert into t values ('x'); commit")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let big: String = client
        .query_one("select repeat('y', 200000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(big.len(), 200_000, "a result larger than a TLS record");
    let ssl: bool = client.query_one(SERVER_SIDE_SSL, &[]).await.unwrap().get(0);
    assert!(ssl, "shardgate's server connection is encrypted");

    // The wrong CA on the client side fails the handshake.
    let err = connect_rustls(port, &pki.other_ca)
        .await
        .expect_err("wrong CA");
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    drop(client);
    proxy.shutdown().await;
    drop(pki.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sslmodes_and_a_wrong_ca() {
    let pki = make_pki();
    let cluster = tls_only_cluster(&pki).await;
    // Without verification (require, prefer), and verify-ca: served, encrypted.
    for host_tls in [
        ", sslmode = \"require\"".to_string(),
        String::new(), // prefer, the default
        format!(", sslmode = \"verify-ca\", sslrootcert = {:?}", pki.ca),
    ] {
        let proxy = proxy_for(&cluster, "", &host_tls).await;
        let client = common::connect(&plain_conn(proxy.addr().port())).await;
        let ssl: bool = client.query_one(SERVER_SIDE_SSL, &[]).await.unwrap().get(0);
        assert!(ssl, "{host_tls}");
        drop(client);
        proxy.shutdown().await;
    }

    // verify-full with a CA that did not sign the server's certificate: 08006, and the
    // message says why.
    let proxy = proxy_for(&cluster, "", &verify_full(&pki.other_ca)).await;
    let text = refused_plaintext(
        &plain_conn(proxy.addr().port()),
        "08006",
        "the shard host's certificate is refused",
    )
    .await;
    assert!(
        text.contains("TLS handshake failed (sslmode = verify-full)")
            && text.contains("UnknownIssuer"),
        "{text}"
    );
    proxy.shutdown().await;

    // sslmode = disable to a server that requires TLS: the server's own refusal comes through.
    let proxy = proxy_for(&cluster, "", ", sslmode = \"disable\"").await;
    let text = refused_plaintext(
        &plain_conn(proxy.addr().port()),
        "28000",
        "the server refuses plaintext",
    )
    .await;
    assert!(text.contains("no encryption"), "{text}");
    proxy.shutdown().await;
    drop(pki.dir);
}

/// Readiness once the primary is reported down, or after `checks` monitor rounds of 200 ms.
async fn primary_state(proxy: &ProxyHandle, checks: u32) -> (bool, Vec<String>) {
    let control = proxy.control(None);
    let mut last = (true, Vec::new());
    for _ in 0..checks * 2 {
        let ready = control.readiness();
        last = (ready.ready, ready.reasons);
        if !last.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_monitor_uses_the_hosts_sslmode() {
    let pki = make_pki();
    let cluster = tls_only_cluster(&pki).await;
    // Right CA: the monitor's checks over TLS pass, the primary stays ready.
    let proxy = proxy_for(&cluster, "", &verify_full(&pki.ca)).await;
    let (ready, reasons) = primary_state(&proxy, 8).await;
    assert!(ready, "{reasons:?}");
    proxy.shutdown().await;
    // Wrong CA: the monitor's connection fails verification and says so.
    let proxy = proxy_for(&cluster, "", &verify_full(&pki.other_ca)).await;
    let (ready, reasons) = primary_state(&proxy, 25).await;
    assert!(!ready, "the monitor must not trust the wrong CA");
    assert!(
        reasons.iter().any(|r| r.contains("UnknownIssuer")),
        "{reasons:?}"
    );
    proxy.shutdown().await;
    drop(pki.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rereads_the_certificate() {
    let pki = make_pki();
    let cluster = tls_only_cluster(&pki).await;
    // shardgate gets its own certificate files, so they can change under it.
    let sg_cert = pki.dir.path().join("shardgate.crt");
    let sg_key = pki.dir.path().join("shardgate.key");
    std::fs::copy(&pki.cert, &sg_cert).unwrap();
    std::fs::copy(&pki.key, &sg_key).unwrap();
    let tls = format!("mode = \"require\"\ncert_file = {sg_cert:?}\nkey_file = {sg_key:?}");
    let text = config_text(&cluster, &tls, &verify_full(&pki.ca));
    let config_path = pki.dir.path().join("shardgate.toml");
    std::fs::write(&config_path, &text).unwrap();
    let proxy = start_proxy(&text).await;
    let port = proxy.addr().port();
    let control = proxy.control(Some(config_path));
    let old = connect_rustls(port, &pki.ca)
        .await
        .expect("first certificate");

    // Renew with a certificate from another CA, then reload.
    let new_ca = new_ca("renewed CA");
    let (cert, key) = server_cert(&new_ca);
    let new_ca_path = pki.dir.path().join("renewed-ca.pem");
    std::fs::write(&new_ca_path, new_ca.pem()).unwrap();
    std::fs::write(&sg_cert, cert).unwrap();
    std::fs::write(&sg_key, key).unwrap();
    let outcome = control.reload().unwrap_or_else(|e| panic!("{}", e.message));
    assert!(
        outcome.applied.contains(&"tls.certificate".to_string()),
        "{:?}",
        outcome.applied
    );
    let new = connect_rustls(port, &new_ca_path)
        .await
        .expect("renewed certificate");
    new.simple_query("select 1").await.unwrap();
    assert!(
        connect_rustls(port, &pki.ca).await.is_err(),
        "the old certificate is gone"
    );
    // The connection made before the reload goes on.
    old.simple_query("select 1").await.unwrap();

    // A broken key file is reported and leaves the working certificate in place.
    std::fs::write(&sg_key, "not a key").unwrap();
    let outcome = control.reload().unwrap_or_else(|e| panic!("{}", e.message));
    assert!(
        outcome
            .applied
            .iter()
            .any(|a| a.contains("NOT applied") && a.contains("shardgate.key")),
        "{:?}",
        outcome.applied
    );
    connect_rustls(port, &new_ca_path)
        .await
        .expect("still the renewed certificate");
    proxy.shutdown().await;
    drop(pki.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiation_edge_cases() {
    let pki = make_pki();
    let cluster = tls_only_cluster(&pki).await;
    let proxy = tls_both_sides(&cluster, &pki).await;
    let addr = proxy.addr();
    let request = |code: i32| {
        let mut b = 8i32.to_be_bytes().to_vec();
        b.extend_from_slice(&code.to_be_bytes());
        b
    };
    // GSSENCRequest is still declined; an SSLRequest after it is accepted.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&request(80_877_104)).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), b'N');
    s.write_all(&request(80_877_103)).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), b'S');
    drop(s);

    // Bytes sent right behind the SSLRequest, before the answer, were not encrypted: refused
    // (an ErrorResponse in plaintext, never an `S`).
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut both = request(80_877_103);
    both.extend_from_slice(b"\x16\x03\x01 injected");
    s.write_all(&both).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply)).await;
    assert_eq!(reply.first(), Some(&b'E'), "{reply:?}");
    assert!(
        String::from_utf8_lossy(&reply).contains("unencrypted data after SSL request"),
        "{reply:?}"
    );
    proxy.shutdown().await;
    drop(pki.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_over_tls_reaches_a_tls_only_server() {
    let pki = make_pki();
    let cluster = tls_only_cluster(&pki).await;
    let proxy = tls_both_sides(&cluster, &pki).await;
    let client = connect_rustls(proxy.addr().port(), &pki.ca)
        .await
        .expect("TLS connect");
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let result = client.simple_query("select pg_sleep(30)").await;
        (result, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // tokio-postgres sends the cancel over TLS (SSLRequest first); shardgate forwards it to
    // the server in plaintext, which PostgreSQL accepts even when its pg_hba.conf is TLS-only.
    token
        .cancel_query(rustls_connector(&pki.ca))
        .await
        .expect("cancel sent");
    let (result, took) = sleeper.await.unwrap();
    let err = result.expect_err("the query was canceled");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    proxy.shutdown().await;
    drop(pki.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_tls_server_connection_is_not_handed_out_again() {
    let pki = make_pki();
    let cluster = tls_only_cluster(&pki).await;
    let proxy = proxy_for(&cluster, "", &verify_full(&pki.ca)).await;
    let client = common::connect(&plain_conn(proxy.addr().port())).await;
    let pid: i32 = client
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // The idle pooled connection's backend goes away: its FATAL and the close arrive
    // encrypted, and the idle check (a peek under TLS) must see them.
    let sql = format!("select pg_terminate_backend({pid})");
    let killed =
        tokio::task::spawn_blocking(move || cluster.psql("postgres", &sql).map(|o| (o, cluster)))
            .await
            .unwrap()
            .expect("terminate");
    assert_eq!(killed.0, "t");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let row = client
        .query_one("select pg_backend_pid()", &[])
        .await
        .expect("served on a fresh server connection");
    assert_ne!(row.get::<_, i32>(0), pid);
    drop(client);
    proxy.shutdown().await;
    drop(killed.1);
    drop(pki.dir);
}
