//! Shared by the admin tests: a ControlPlane with fixed snapshots standing in for the proxy,
//! an AdminServer on its own runtime (so tests are plain blocking code), and a small HTTP
//! helper.
#![allow(dead_code)] // each test file uses a different part

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use shardgate_admin::control::{
    ClientCounts, ControlPlane, PoolInfo, Readiness, ReloadError, ReloadOutcome, ReplicaInfo,
    ShardInfo,
};
use shardgate_admin::AdminServer;

/// Fixed snapshots; readiness and the reload result can be switched by a test.
pub struct FixedControl {
    pub ready: AtomicBool,
    pub reload_ok: AtomicBool,
    pub reloads: AtomicUsize,
    /// The "running config" a refused reload must keep.
    pub pool_size: Mutex<u32>,
}

impl FixedControl {
    pub fn new() -> Arc<FixedControl> {
        Arc::new(FixedControl {
            ready: AtomicBool::new(true),
            reload_ok: AtomicBool::new(true),
            reloads: AtomicUsize::new(0),
            pool_size: Mutex::new(10),
        })
    }
}

pub fn shards() -> Vec<ShardInfo> {
    vec![
        ShardInfo {
            name: "s1".into(),
            primary: "127.0.0.1:5433".into(),
            replicas: vec!["127.0.0.1:5434".into()],
            primary_up: true,
            slots: 8192,
            total_slots: 16384,
            topology_version: 7,
            configured_primary: None,
            fenced: vec![],
        },
        ShardInfo {
            name: "s2".into(),
            primary: "127.0.0.1:5435".into(),
            replicas: vec![],
            primary_up: false,
            slots: 8192,
            total_slots: 16384,
            topology_version: 7,
            configured_primary: None,
            fenced: vec![],
        },
    ]
}

pub fn pools() -> Vec<PoolInfo> {
    let pool = |user: &str, shard: &str, role: &str, host: &str, idle: u32, in_use: u32| PoolInfo {
        database: "app".into(),
        user: user.into(),
        shard: shard.into(),
        role: role.into(),
        host: host.into(),
        size: 4,
        min_size: 2,
        max_size: 20,
        connections: idle + in_use,
        idle,
        in_use,
        waiting: 1,
        checkouts_timed_out: 0,
        connections_created: 9,
        grown: 3,
        shrunk: 1,
        pinned: 1,
    };
    vec![
        pool("app", "s1", "primary", "127.0.0.1:5433", 2, 1),
        // Same shard, role and host, another user: summed in the metrics.
        pool("reporting", "s1", "primary", "127.0.0.1:5433", 1, 2),
        pool("app", "s1", "replica", "127.0.0.1:5434", 3, 0),
        pool("app", "s2", "primary", "127.0.0.1:5435", 0, 4),
    ]
}

pub fn replicas() -> Vec<ReplicaInfo> {
    vec![
        ReplicaInfo {
            shard: "s1".into(),
            host: "127.0.0.1:5434".into(),
            state: "ok".into(),
            in_rotation: true,
            lag_seconds: Some(0.25),
            lag_bytes: Some(4096),
            replay_lsn: Some("0/3000148".into()),
            queries: 120,
            outstanding: 2,
            banned_ms: None,
        },
        ReplicaInfo {
            shard: "s2".into(),
            host: "127.0.0.1:5436".into(),
            state: "down".into(),
            in_rotation: false,
            lag_seconds: None,
            lag_bytes: None,
            replay_lsn: None,
            queries: 0,
            outstanding: 0,
            banned_ms: Some(1500),
        },
    ]
}

impl ControlPlane for FixedControl {
    fn readiness(&self) -> Readiness {
        if self.ready.load(Ordering::SeqCst) {
            Readiness {
                ready: true,
                reasons: vec![],
                warnings: vec![],
            }
        } else {
            Readiness {
                ready: false,
                reasons: vec!["draining".into()],
                warnings: vec![],
            }
        }
    }

    fn shards(&self) -> Vec<ShardInfo> {
        shards()
    }

    fn pools(&self) -> Vec<PoolInfo> {
        pools()
    }

    fn replicas(&self) -> Vec<ReplicaInfo> {
        replicas()
    }

    fn clients(&self) -> ClientCounts {
        ClientCounts {
            active: 3,
            idle: 5,
            waiting: 1,
        }
    }

    fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        self.reloads.fetch_add(1, Ordering::SeqCst);
        if self.reload_ok.load(Ordering::SeqCst) {
            *self.pool_size.lock().unwrap() = 20;
            Ok(ReloadOutcome {
                applied: vec!["pool.size".into()],
                needs_restart: vec!["listen.addr".into()],
            })
        } else {
            Err(ReloadError {
                message: "shardgate.toml: pool.size: expected an integer".into(),
                hint: "fix the file and reload again".into(),
            })
        }
    }
}

/// An AdminServer on a runtime of its own, on a loopback port chosen by the OS.
pub struct TestServer {
    runtime: tokio::runtime::Runtime,
    server: Option<AdminServer>,
    pub control: Arc<FixedControl>,
    pub url: String,
}

impl TestServer {
    pub fn start(token: Option<&str>) -> TestServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let control = FixedControl::new();
        let config = shardgate_config::Admin {
            listen: "127.0.0.1:0".into(),
            token: token.map(str::to_owned),
            token_env: None,
        };
        let server = runtime
            .block_on(AdminServer::start(control.clone(), &config))
            .unwrap();
        let url = format!("http://{}", server.addr());
        TestServer {
            runtime,
            server: Some(server),
            control,
            url,
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.as_ref().unwrap().addr()
    }

    /// Stops the server and waits until it has closed.
    pub fn shutdown(mut self) {
        let server = self.server.take().unwrap();
        self.runtime.block_on(server.shutdown());
    }

    /// Stops the server without waiting; the runtime stays up.
    pub fn stop(&mut self) {
        self.server.take().unwrap().stop();
    }
}

/// A reply: status, headers (lower-case names), body.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One request; `auth` is the whole Authorization header value.
pub fn request(method: &str, url: &str, auth: Option<&str>) -> Reply {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .allow_non_standard_methods(true)
        .build()
        .into();
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    if let Some(auth) = auth {
        builder = builder.header("Authorization", auth);
    }
    let mut response = agent.run(builder.body(()).unwrap()).unwrap();
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = response.body_mut().read_to_string().unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

pub fn get(url: &str) -> Reply {
    request("GET", url, None)
}
