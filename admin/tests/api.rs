//! The admin HTTP API against a ControlPlane with fixed snapshots: every endpoint with and
//! without the token, errors as JSON, probes, reload, stop.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{get, request, TestServer};

const TOKEN: &str = "s3cret-token";

/// Every /api/v1 endpoint, and the status it answers with the right token.
const API: &[(&str, &str, u16)] = &[
    ("GET", "/api/v1/shards", 200),
    ("GET", "/api/v1/pools", 200),
    ("GET", "/api/v1/replicas", 200),
    ("POST", "/api/v1/reload", 200),
    ("POST", "/api/v1/shards", 501),
    ("DELETE", "/api/v1/shards/s1", 501),
    ("GET", "/api/v1/rebalance", 501),
    ("POST", "/api/v1/rebalance/abort", 501),
];

fn assert_error_json(reply: &common::Reply, status: u16) -> serde_json::Value {
    assert_eq!(reply.status, status, "body: {}", reply.body);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "content-type of {status}: {:?}",
        reply.header("content-type")
    );
    let json = reply.json();
    assert!(
        json["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{json}"
    );
    assert!(json["hint"].is_string(), "{json}");
    json
}

#[test]
fn open_api_answers_every_endpoint() {
    let server = TestServer::start(None);
    for (method, path, status) in API {
        let reply = request(method, &format!("{}{path}", server.url), None);
        assert_eq!(reply.status, *status, "{method} {path}: {}", reply.body);
    }
    let shards: Vec<shardgate_admin::control::ShardInfo> =
        serde_json::from_str(&get(&format!("{}/api/v1/shards", server.url)).body).unwrap();
    assert_eq!(shards, common::shards());
    let pools: Vec<shardgate_admin::control::PoolInfo> =
        serde_json::from_str(&get(&format!("{}/api/v1/pools", server.url)).body).unwrap();
    assert_eq!(pools, common::pools());
    let replicas: Vec<shardgate_admin::control::ReplicaInfo> =
        serde_json::from_str(&get(&format!("{}/api/v1/replicas", server.url)).body).unwrap();
    assert_eq!(replicas, common::replicas());
    server.shutdown();
}

#[test]
fn token_guards_the_api_and_only_the_api() {
    let server = TestServer::start(Some(TOKEN));
    let right = format!("Bearer {TOKEN}");
    for (method, path, status) in API {
        let url = format!("{}{path}", server.url);
        let missing = request(method, &url, None);
        let json = assert_error_json(&missing, 401);
        assert!(json["hint"]
            .as_str()
            .unwrap()
            .contains("SHARDGATE_ADMIN_TOKEN"));
        assert!(missing
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")));
        for wrong in [
            "Bearer wrong",
            "Bearer s3cret-toke",
            "Bearer s3cret-token-and-more",
            "Basic czNjcmV0LXRva2Vu",
            "Bearer",
            TOKEN,
        ] {
            let reply = request(method, &url, Some(wrong));
            assert_error_json(&reply, 401);
            assert!(reply.header("www-authenticate").is_some());
        }
        assert_eq!(
            request(method, &url, Some(&right)).status,
            *status,
            "{method} {path}"
        );
        // The scheme is case-insensitive (RFC 7235).
        let lower = format!("bearer {TOKEN}");
        assert_eq!(request(method, &url, Some(&lower)).status, *status);
    }
    // Probes and metrics stay open.
    assert_eq!(get(&format!("{}/health", server.url)).status, 200);
    assert_eq!(get(&format!("{}/ready", server.url)).status, 200);
    assert_eq!(get(&format!("{}/metrics", server.url)).status, 200);
    // An unknown /api/v1 path tells nothing without the token.
    assert_error_json(&get(&format!("{}/api/v1/nothing", server.url)), 401);
    let reply = request(
        "GET",
        &format!("{}/api/v1/nothing", server.url),
        Some(&right),
    );
    assert_error_json(&reply, 404);
    server.shutdown();
}

#[test]
fn probes() {
    let server = TestServer::start(Some(TOKEN));
    let health = get(&format!("{}/health", server.url));
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    let ready = get(&format!("{}/ready", server.url));
    assert_eq!(ready.status, 200);
    assert_eq!(
        ready.json(),
        serde_json::json!({ "ready": true, "reasons": [] })
    );

    server.control.ready.store(false, Ordering::SeqCst);
    let ready = get(&format!("{}/ready", server.url));
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.json(),
        serde_json::json!({ "ready": false, "reasons": ["draining"] })
    );
    // HEAD works on the probes too (load balancers use it).
    assert_eq!(
        request("HEAD", &format!("{}/health", server.url), None).status,
        200
    );
    server.shutdown();
}

#[test]
fn unknown_paths_and_wrong_methods_answer_json() {
    let server = TestServer::start(None);
    for path in [
        "/api/v1/nothing",
        "/api/v1",
        "/api/v2/shards",
        "/nothing",
        "/",
    ] {
        let json = assert_error_json(&get(&format!("{}{path}", server.url)), 404);
        assert!(json["error"].as_str().unwrap().contains("no such endpoint"));
    }
    for (method, path, allow) in [
        ("GET", "/api/v1/reload", "POST"),
        ("PUT", "/api/v1/shards", "GET,HEAD,POST"),
        ("GET", "/api/v1/shards/s1", "DELETE"),
        ("DELETE", "/health", "GET,HEAD"),
        ("POST", "/metrics", "GET,HEAD"),
    ] {
        let reply = request(method, &format!("{}{path}", server.url), None);
        assert_error_json(&reply, 405);
        let allowed: Vec<&str> = reply
            .header("allow")
            .unwrap()
            .split(',')
            .map(str::trim)
            .collect();
        let mut allowed = allowed.clone();
        allowed.sort();
        assert_eq!(allowed.join(","), allow, "{method} {path}");
    }
    server.shutdown();
}

#[test]
fn reload_applies_or_refuses_and_keeps_the_old_config() {
    let server = TestServer::start(Some(TOKEN));
    let url = format!("{}/api/v1/reload", server.url);
    let auth = format!("Bearer {TOKEN}");

    server.control.reload_ok.store(false, Ordering::SeqCst);
    let refused = request("POST", &url, Some(&auth));
    let json = assert_error_json(&refused, 422);
    assert!(json["error"]
        .as_str()
        .unwrap()
        .contains("pool.size: expected an integer"));
    assert!(json["error"]
        .as_str()
        .unwrap()
        .contains("running config kept"));
    assert_eq!(json["hint"], "fix the file and reload again");
    assert_eq!(*server.control.pool_size.lock().unwrap(), 10);

    server.control.reload_ok.store(true, Ordering::SeqCst);
    let applied = request("POST", &url, Some(&auth));
    assert_eq!(applied.status, 200);
    assert_eq!(
        applied.json(),
        serde_json::json!({ "applied": ["pool.size"], "needs_restart": ["listen.addr"] })
    );
    assert_eq!(*server.control.pool_size.lock().unwrap(), 20);
    assert_eq!(server.control.reloads.load(Ordering::SeqCst), 2);
    server.shutdown();
}

#[test]
fn shard_changing_endpoints_are_stubs() {
    let server = TestServer::start(None);
    for (method, path) in [
        ("POST", "/api/v1/shards"),
        ("DELETE", "/api/v1/shards/s9"),
        ("GET", "/api/v1/rebalance"),
        ("POST", "/api/v1/rebalance/abort"),
    ] {
        let reply = request(method, &format!("{}{path}", server.url), None);
        let json = assert_error_json(&reply, 501);
        assert!(json["error"].as_str().unwrap().contains(path), "{json}");
        assert!(json["hint"]
            .as_str()
            .unwrap()
            .starts_with("live rebalancing is not available yet"));
        // Only a refusal by a running job names one.
        assert!(json.get("job_id").is_none(), "{json}");
    }
    // Without a rebalancer no body is right: the 501 comes before the body is read.
    let answer = raw(
        server.addr(),
        b"POST /api/v1/shards HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 5\r\nConnection: close\r\n\r\n{{{{{",
    );
    assert!(answer.starts_with("HTTP/1.1 501"), "{answer}");
    server.shutdown();
}

/// Raw bytes, so the request can be anything a hostile client sends.
fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn hostile_requests_get_answers_not_panics() {
    let server = TestServer::start(Some(TOKEN));
    let addr = server.addr();
    let long_path = format!("/api/v1/{}", "x".repeat(10_000));
    let cases: Vec<Vec<u8>> = vec![
        b"GET /api/v1/shards HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /api/v1/shards HTTP/1.1\r\nHost: x\r\nAuthorization: \r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /api/v1/shards HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer    \r\nConnection: close\r\n\r\n".to_vec(),
        format!("GET {long_path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes(),
        b"BREW /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"POST /api/v1/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{{{{{".to_vec(),
        b"\x00\x01garbage\r\n\r\n".to_vec(),
    ];
    for case in &cases {
        let answer = raw(addr, case);
        assert!(
            answer.starts_with("HTTP/1.1 4"),
            "{:?} -> {answer:?}",
            String::from_utf8_lossy(case)
        );
    }
    let echoed = raw(
        addr,
        format!(
            "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "y".repeat(10_000)
        )
        .as_bytes(),
    );
    assert!(echoed.starts_with("HTTP/1.1 404"));
    assert!(
        echoed.len() < 2_000,
        "the error echoes a bounded part of the path"
    );
    // Still serving.
    assert_eq!(get(&format!("{}/health", server.url)).status, 200);
    server.shutdown();
}

#[test]
fn stop_closes_the_port() {
    let server = TestServer::start(None);
    let addr = server.addr();
    server.shutdown();
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );

    let mut server = TestServer::start(None);
    let addr = server.addr();
    server.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting 5 s after stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn listen_errors_name_the_address() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = shardgate_config::Admin {
        listen: taken.local_addr().unwrap().to_string(),
        ..Default::default()
    };
    let control: std::sync::Arc<dyn shardgate_admin::control::ControlPlane> =
        common::FixedControl::new();
    let err = runtime
        .block_on(shardgate_admin::AdminServer::start(control, &config))
        .err()
        .expect("binding a taken port must fail");
    let message = err.to_string();
    assert!(
        message.contains(&config.listen) && message.contains("admin.listen"),
        "{message}"
    );
}

#[test]
fn the_api_never_starts_open_by_mistake() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let start = |config: shardgate_config::Admin| {
        let control: std::sync::Arc<dyn shardgate_admin::control::ControlPlane> =
            common::FixedControl::new();
        runtime.block_on(shardgate_admin::AdminServer::start(control, &config))
    };
    // token_env naming a variable that is not set: refused, naming the variable.
    let err = start(shardgate_config::Admin {
        listen: "127.0.0.1:0".into(),
        token_env: Some("SHARDGATE_TEST_TOKEN_NEVER_SET".into()),
        ..Default::default()
    })
    .err()
    .expect("an unset token_env must not start an open API");
    let message = err.to_string();
    assert!(
        message.contains("SHARDGATE_TEST_TOKEN_NEVER_SET") && message.contains("token_env"),
        "{message}"
    );
    // No token on an address other than loopback: refused.
    let err = start(shardgate_config::Admin {
        listen: "0.0.0.0:0".into(),
        ..Default::default()
    })
    .err()
    .expect("an open API on the network must not start");
    assert!(err.to_string().contains("0.0.0.0:0"), "{err}");
    // With a token there it starts; without one on loopback too.
    let server = start(shardgate_config::Admin {
        listen: "0.0.0.0:0".into(),
        token: Some("secret".into()),
        ..Default::default()
    })
    .expect("a guarded API starts on any address");
    server.stop();
    let server = start(shardgate_config::Admin {
        listen: "127.0.0.1:0".into(),
        ..Default::default()
    })
    .expect("an open API on loopback starts");
    server.stop();
}
