//! The deployment files checked against the code they deploy: every Kubernetes manifest under
//! `deploy/` parses, the shardgate.toml each one assembles (ConfigMap + the Secret's
//! `[[users]]` fragment, as its init container does) loads and validates, and the fields that
//! must agree do: probe paths and ports against `admin.listen`, container and Service ports
//! against `listen.addr`, the grace period against `listen.shutdown_timeout`, the autoscaler
//! against the Deployment, selectors against pod labels, the non-root user against the
//! Dockerfile's. No cluster is needed: these are static checks.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use shardgate_config::Config;
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_owned()
}

/// Every `*.yaml`/`*.yml` file under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// One manifest file: its path (for messages) and its documents.
struct Manifest {
    path: PathBuf,
    docs: Vec<Yaml>,
}

fn manifests() -> Vec<Manifest> {
    yaml_files(&repo().join("deploy"))
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("manifest text");
            let docs = YamlLoader::load_from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()))
                .into_iter()
                .filter(|d| !d.is_null())
                .collect();
            Manifest { path, docs }
        })
        .collect()
}

fn s<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {y:?}"))
}

fn i(y: &Yaml, what: &str) -> i64 {
    y.as_i64()
        .unwrap_or_else(|| panic!("{what}: expected an integer, got {y:?}"))
}

fn list<'a>(y: &'a Yaml, what: &str) -> &'a [Yaml] {
    y.as_vec()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {y:?}"))
}

/// `list` that treats a missing key as empty.
fn items(y: &Yaml) -> &[Yaml] {
    y.as_vec().map_or(&[], Vec::as_slice)
}

fn labels(y: &Yaml) -> BTreeSet<(String, String)> {
    y.as_hash()
        .map(|h| {
            h.iter()
                .map(|(k, v)| (s(k, "label").to_owned(), s(v, "label value").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

impl Manifest {
    fn name(&self) -> String {
        self.path
            .strip_prefix(repo())
            .unwrap_or(&self.path)
            .display()
            .to_string()
    }

    fn of_kind(&self, kind: &str) -> Vec<&Yaml> {
        self.docs
            .iter()
            .filter(|d| d["kind"].as_str() == Some(kind))
            .collect()
    }

    fn named(&self, kind: &str, name: &str) -> &Yaml {
        self.of_kind(kind)
            .into_iter()
            .find(|d| d["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("{}: no {kind} named {name}", self.name()))
    }

    /// The manifest's Deployment that runs shardgate, and its pod spec.
    fn deployment(&self) -> (&Yaml, &Yaml) {
        let deployments = self.of_kind("Deployment");
        assert_eq!(deployments.len(), 1, "{}: one Deployment", self.name());
        let d = deployments[0];
        (d, &d["spec"]["template"]["spec"])
    }

    fn shardgate_container<'a>(&self, pod: &'a Yaml) -> &'a Yaml {
        list(&pod["containers"], "containers")
            .iter()
            .find(|c| c["name"].as_str() == Some("shardgate"))
            .unwrap_or_else(|| panic!("{}: no container named shardgate", self.name()))
    }

    fn volume<'a>(&self, pod: &'a Yaml, name: &str) -> &'a Yaml {
        list(&pod["volumes"], "volumes")
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("{}: no volume {name}", self.name()))
    }

    /// A Secret value from `stringData` (the examples keep them readable).
    fn secret_value(&self, secret: &str, key: &str) -> String {
        let doc = self.named("Secret", secret);
        s(
            &doc["stringData"][key],
            &format!("{}: Secret {secret} key {key}", self.name()),
        )
        .to_owned()
    }

    /// The shardgate.toml the pod runs with, assembled the way its init container does it:
    /// the ConfigMap's file, a newline, and the Secret's users.toml, each found through the
    /// volumes mounted where the init container's script reads them.
    fn assembled_config(&self) -> (String, Config) {
        let (_, pod) = self.deployment();
        let init = list(&pod["initContainers"], "initContainers")
            .iter()
            .find(|c| c["name"].as_str() == Some("shardgate-config"))
            .unwrap_or_else(|| panic!("{}: no shardgate-config init container", self.name()));
        let script = list(&init["command"], "init command")
            .iter()
            .map(|a| s(a, "command argument"))
            .collect::<Vec<_>>()
            .join(" ");
        let mount_of = |volume: &str| -> String {
            list(&init["volumeMounts"], "init volumeMounts")
                .iter()
                .find(|m| m["name"].as_str() == Some(volume))
                .map(|m| s(&m["mountPath"], "mountPath").to_owned())
                .unwrap_or_else(|| panic!("{}: init container lacks {volume}", self.name()))
        };
        let base_vol = self.volume(pod, "shardgate-base");
        let secret_vol = self.volume(pod, "shardgate-secret");
        let config_map = s(&base_vol["configMap"]["name"], "configMap name");
        let secret = s(&secret_vol["secret"]["secretName"], "secretName");
        let base_path = format!("{}/shardgate.toml", mount_of("shardgate-base"));
        let users_path = format!("{}/users.toml", mount_of("shardgate-secret"));
        let out_path = format!("{}/shardgate.toml", mount_of("shardgate-config"));
        for (path, what) in [
            (&base_path, "reads the ConfigMap's file"),
            (&users_path, "reads the Secret's users.toml"),
            (&out_path, "writes the config"),
        ] {
            assert!(
                script.contains(path.as_str()),
                "{}: init script never {what} ({path}): {script}",
                self.name()
            );
        }
        assert!(
            script.contains(&format!("shardgate check --config {out_path}")),
            "{}: init script does not validate the assembled config: {script}",
            self.name()
        );
        // The file the image's ENTRYPOINT reads is the one the init container writes.
        assert_eq!(out_path, "/etc/shardgate/shardgate.toml", "{}", self.name());
        let base = s(
            &self.named("ConfigMap", config_map)["data"]["shardgate.toml"],
            "ConfigMap shardgate.toml",
        );
        let users = self.secret_value(secret, "users.toml");
        let text = format!("{base}\n{users}");
        let config = Config::from_toml(&text, &self.path)
            .unwrap_or_else(|e| panic!("{}: assembled shardgate.toml: {e}", self.name()));
        (text, config)
    }
}

/// The two examples the issue asks for, by file name.
fn example(name: &str) -> Manifest {
    manifests()
        .into_iter()
        .find(|m| m.path.file_name().and_then(|f| f.to_str()) == Some(name))
        .unwrap_or_else(|| panic!("deploy/: no {name}"))
}

/// Manifests that deploy shardgate (all of them, today).
fn shardgate_manifests() -> Vec<Manifest> {
    let all: Vec<Manifest> = manifests()
        .into_iter()
        .filter(|m| !m.of_kind("Deployment").is_empty())
        .collect();
    assert!(
        all.len() >= 2,
        "expected the sidecar and shared-tier examples"
    );
    all
}

fn addr(text: &str, key: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("{key} `{text}`: {e}"))
}

/// A container's port by name or number.
fn container_port(container: &Yaml, port: &Yaml) -> i64 {
    if let Some(n) = port.as_i64() {
        return n;
    }
    let name = s(port, "port");
    list(&container["ports"], "ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .map(|p| i(&p["containerPort"], "containerPort"))
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

fn dockerfile() -> String {
    std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile")
}

/// The Dockerfile's instructions (continuation lines joined, comments dropped).
fn docker_instructions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile().lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        current.push_str(t.trim_end_matches('\\'));
        current.push(' ');
        if !t.ends_with('\\') {
            let (op, rest) = current
                .trim()
                .split_once(' ')
                .unwrap_or((current.trim(), ""));
            out.push((op.to_ascii_uppercase(), rest.trim().to_owned()));
            current.clear();
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------

#[test]
fn every_manifest_parses_and_names_itself() {
    let all = manifests();
    assert!(all.len() >= 2, "deploy/ has {} manifests", all.len());
    for m in &all {
        assert!(!m.docs.is_empty(), "{}: no documents", m.name());
        for d in &m.docs {
            s(&d["apiVersion"], &format!("{}: apiVersion", m.name()));
            let kind = s(&d["kind"], &format!("{}: kind", m.name()));
            s(
                &d["metadata"]["name"],
                &format!("{}: {kind} metadata.name", m.name()),
            );
        }
    }
    let sidecar = example("sidecar.yaml");
    let shared = example("shared-tier.yaml");
    for (m, kinds) in [
        (&sidecar, &["ConfigMap", "Secret", "Deployment"][..]),
        (
            &shared,
            &[
                "ConfigMap",
                "Secret",
                "Deployment",
                "Service",
                "HorizontalPodAutoscaler",
                "PodDisruptionBudget",
            ][..],
        ),
    ] {
        for kind in kinds {
            assert!(!m.of_kind(kind).is_empty(), "{}: no {kind}", m.name());
        }
    }
}

#[test]
fn assembled_configs_load_and_build_a_router() {
    for m in shardgate_manifests() {
        let (_, config) = m.assembled_config();
        assert!(!config.users.is_empty(), "{}: no users", m.name());
        assert!(config.shards.len() >= 2, "{}: a sharded example", m.name());
        shardgate_router::Router::new(&config)
            .unwrap_or_else(|e| panic!("{}: router: {e}", m.name()));
    }
}

#[test]
fn passwords_live_in_the_secret_not_the_config_map() {
    for m in shardgate_manifests() {
        for cm in m.of_kind("ConfigMap") {
            let text = s(&cm["data"]["shardgate.toml"], "shardgate.toml");
            let doc: toml::Table = text.parse().expect("ConfigMap TOML");
            assert!(
                !doc.contains_key("users"),
                "{}: [[users]] in a ConfigMap",
                m.name()
            );
            assert!(
                doc.get("admin").and_then(|a| a.get("token")).is_none(),
                "{}: admin.token in a ConfigMap (use admin.token_env)",
                m.name()
            );
        }
        let (_, config) = m.assembled_config();
        let token_env = config.admin.token_env.as_deref().unwrap_or_else(|| {
            panic!("{}: admin.token_env unset: the API would be open", m.name())
        });
        let (_, pod) = m.deployment();
        let env = list(&m.shardgate_container(pod)["env"], "env")
            .iter()
            .find(|e| e["name"].as_str() == Some(token_env))
            .unwrap_or_else(|| panic!("{}: container has no {token_env}", m.name()));
        let secret_ref = &env["valueFrom"]["secretKeyRef"];
        let secret = s(&secret_ref["name"], "secretKeyRef.name");
        let key = s(&secret_ref["key"], "secretKeyRef.key");
        assert!(
            !m.secret_value(secret, key).is_empty(),
            "{}: empty admin token",
            m.name()
        );
        // The assembled file holds passwords: it lives in memory, not on the node's disk.
        assert_eq!(
            m.volume(pod, "shardgate-config")["emptyDir"]["medium"].as_str(),
            Some("Memory"),
            "{}",
            m.name()
        );
    }
}

#[test]
fn probes_hit_health_and_ready_on_the_admin_port() {
    for m in shardgate_manifests() {
        let (_, config) = m.assembled_config();
        let admin = addr(&config.admin.listen, "admin.listen");
        assert!(
            admin.ip().is_unspecified(),
            "{}: admin.listen {admin}: the kubelet probes the pod IP, so it must listen on 0.0.0.0",
            m.name()
        );
        let (_, pod) = m.deployment();
        let c = m.shardgate_container(pod);
        for (probe, path) in [("livenessProbe", "/health"), ("readinessProbe", "/ready")] {
            let get = &c[probe]["httpGet"];
            assert_eq!(s(&get["path"], probe), path, "{}: {probe}", m.name());
            assert_eq!(
                container_port(c, &get["port"]),
                i64::from(admin.port()),
                "{}: {probe} port is not admin.listen's",
                m.name()
            );
        }
        if !c["startupProbe"].is_badvalue() {
            let get = &c["startupProbe"]["httpGet"];
            assert_eq!(s(&get["path"], "startupProbe"), "/health", "{}", m.name());
            assert_eq!(container_port(c, &get["port"]), i64::from(admin.port()));
        }
    }
}

#[test]
fn postgres_ports_match_listen_addr() {
    // Shared tier: the pods listen on every interface and the Service forwards to that port.
    let shared = example("shared-tier.yaml");
    let (_, config) = shared.assembled_config();
    let listen = addr(&config.listen.addr, "listen.addr");
    assert!(
        listen.ip().is_unspecified(),
        "shared tier: listen.addr {listen} is not reachable from other pods"
    );
    let (_, pod) = shared.deployment();
    let c = shared.shardgate_container(pod);
    let postgres = container_port(c, &Yaml::String("postgres".into()));
    assert_eq!(
        postgres,
        i64::from(listen.port()),
        "containerPort postgres vs listen.addr"
    );
    let service = shared.named("Service", "shardgate");
    let port = list(&service["spec"]["ports"], "Service ports")
        .iter()
        .find(|p| p["name"].as_str() == Some("postgres"))
        .expect("Service port postgres");
    assert_eq!(
        container_port(c, &port["targetPort"]),
        i64::from(listen.port())
    );
    assert!(
        list(&service["spec"]["ports"], "ports")
            .iter()
            .all(|p| container_port(c, &p["targetPort"])
                != container_port(c, &Yaml::String("admin".into()))),
        "the Service must not expose the admin port"
    );

    // Sidecar: loopback only, and the application's connection string points at it with a
    // user the config knows.
    let sidecar = example("sidecar.yaml");
    let (_, config) = sidecar.assembled_config();
    let listen = addr(&config.listen.addr, "listen.addr");
    assert!(
        listen.ip().is_loopback(),
        "sidecar: listen.addr {listen} should stay inside the pod"
    );
    let (_, pod) = sidecar.deployment();
    let c = sidecar.shardgate_container(pod);
    for p in items(&c["ports"]) {
        assert_ne!(
            i(&p["containerPort"], "containerPort"),
            i64::from(listen.port()),
            "sidecar: a containerPort for a loopback listener"
        );
    }
    let app = list(&pod["containers"], "containers")
        .iter()
        .find(|c| c["name"].as_str() == Some("app"))
        .expect("app container");
    let url_ref = &list(&app["env"], "app env")
        .iter()
        .find(|e| e["name"].as_str() == Some("DATABASE_URL"))
        .expect("DATABASE_URL")["valueFrom"]["secretKeyRef"];
    let url = sidecar.secret_value(s(&url_ref["name"], "name"), s(&url_ref["key"], "key"));
    let rest = url.strip_prefix("postgres://").expect("a postgres:// URL");
    let (userinfo, hostpart) = rest.split_once('@').expect("user@host in DATABASE_URL");
    let user = userinfo.split(':').next().unwrap_or_default();
    assert!(
        config.user(user).is_some(),
        "DATABASE_URL user {user} is not in [[users]]"
    );
    let hostport = hostpart.split('/').next().unwrap_or_default();
    assert_eq!(
        hostport,
        listen.to_string(),
        "DATABASE_URL does not point at listen.addr"
    );
}

#[test]
fn runs_as_non_root_without_privileges() {
    let uid: i64 = docker_instructions()
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, u)| {
            u.split(':')
                .next()
                .unwrap_or_default()
                .parse()
                .expect("numeric USER")
        })
        .expect("USER in Dockerfile");
    for m in shardgate_manifests() {
        let (_, pod) = m.deployment();
        let sc = &pod["securityContext"];
        assert_eq!(
            sc["runAsNonRoot"].as_bool(),
            Some(true),
            "{}: runAsNonRoot",
            m.name()
        );
        assert_eq!(
            i(&sc["runAsUser"], "runAsUser"),
            uid,
            "{}: runAsUser vs the image's USER",
            m.name()
        );
        assert_eq!(
            s(&sc["seccompProfile"]["type"], "seccompProfile"),
            "RuntimeDefault"
        );
        assert_eq!(
            pod["automountServiceAccountToken"].as_bool(),
            Some(false),
            "{}",
            m.name()
        );
        for c in items(&pod["initContainers"])
            .iter()
            .chain(items(&pod["containers"]))
        {
            let name = s(&c["name"], "container name");
            let csc = &c["securityContext"];
            assert_eq!(
                csc["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{}: {name}",
                m.name()
            );
            assert_eq!(
                csc["readOnlyRootFilesystem"].as_bool(),
                Some(true),
                "{}: {name}",
                m.name()
            );
            assert!(
                items(&csc["capabilities"]["drop"])
                    .iter()
                    .any(|d| d.as_str() == Some("ALL")),
                "{}: {name} keeps capabilities",
                m.name()
            );
            assert_ne!(
                csc["runAsUser"].as_i64(),
                Some(0),
                "{}: {name} as root",
                m.name()
            );
        }
    }
}

#[test]
fn grace_period_outlasts_pre_stop_and_drain() {
    for m in shardgate_manifests() {
        let (_, config) = m.assembled_config();
        let (_, pod) = m.deployment();
        let c = m.shardgate_container(pod);
        let command = list(
            &c["lifecycle"]["preStop"]["exec"]["command"],
            "preStop command",
        );
        assert_eq!(
            s(&command[0], "preStop"),
            "sleep",
            "{}: preStop sleeps",
            m.name()
        );
        let pre_stop: u64 = s(&command[1], "preStop seconds").parse().expect("seconds");
        assert!(
            pre_stop >= 5,
            "{}: a preStop of {pre_stop}s is too short for endpoints to update",
            m.name()
        );
        let grace = i(
            &pod["terminationGracePeriodSeconds"],
            "terminationGracePeriodSeconds",
        );
        let drain = config.listen.shutdown_timeout.as_secs();
        assert!(
            grace as u64 > pre_stop + drain,
            "{}: terminationGracePeriodSeconds {grace} <= preStop {pre_stop}s + shutdown_timeout {drain}s",
            m.name()
        );
    }
}

#[test]
fn selectors_match_the_pods() {
    for m in shardgate_manifests() {
        let (d, _) = m.deployment();
        let pod_labels = labels(&d["spec"]["template"]["metadata"]["labels"]);
        let selector = labels(&d["spec"]["selector"]["matchLabels"]);
        assert!(
            !selector.is_empty() && selector.is_subset(&pod_labels),
            "{}: Deployment selector",
            m.name()
        );
        for svc in m.of_kind("Service") {
            let sel = labels(&svc["spec"]["selector"]);
            assert!(
                !sel.is_empty() && sel.is_subset(&pod_labels),
                "{}: Service selector {sel:?} vs pod labels {pod_labels:?}",
                m.name()
            );
        }
        for pdb in m.of_kind("PodDisruptionBudget") {
            let sel = labels(&pdb["spec"]["selector"]["matchLabels"]);
            assert!(
                !sel.is_empty() && sel.is_subset(&pod_labels),
                "{}: PodDisruptionBudget selector",
                m.name()
            );
        }
        for t in items(&d["spec"]["template"]["spec"]["topologySpreadConstraints"]) {
            let sel = labels(&t["labelSelector"]["matchLabels"]);
            assert!(
                sel.is_subset(&pod_labels),
                "{}: topologySpreadConstraints selector",
                m.name()
            );
        }
    }
}

#[test]
fn autoscaler_scales_the_deployment_on_cpu() {
    let shared = example("shared-tier.yaml");
    let (d, pod) = shared.deployment();
    let hpas = shared.of_kind("HorizontalPodAutoscaler");
    assert_eq!(hpas.len(), 1);
    let hpa = hpas[0];
    assert_eq!(s(&hpa["apiVersion"], "apiVersion"), "autoscaling/v2");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(s(&target["kind"], "kind"), "Deployment");
    assert_eq!(s(&target["apiVersion"], "apiVersion"), "apps/v1");
    assert_eq!(
        s(&target["name"], "name"),
        s(&d["metadata"]["name"], "Deployment name")
    );
    let cpu = list(&hpa["spec"]["metrics"], "metrics")
        .iter()
        .find(|x| {
            x["type"].as_str() == Some("Resource") && x["resource"]["name"].as_str() == Some("cpu")
        })
        .expect("a CPU metric");
    assert_eq!(
        s(&cpu["resource"]["target"]["type"], "target type"),
        "Utilization"
    );
    let utilization = i(
        &cpu["resource"]["target"]["averageUtilization"],
        "averageUtilization",
    );
    assert!((1..=100).contains(&utilization));
    // Utilisation is relative to the CPU request, which must therefore be set.
    s(
        &shared.shardgate_container(pod)["resources"]["requests"]["cpu"],
        "cpu request",
    );
    let min = i(&hpa["spec"]["minReplicas"], "minReplicas");
    let max = i(&hpa["spec"]["maxReplicas"], "maxReplicas");
    assert!(
        2 <= min && min <= max,
        "minReplicas {min}, maxReplicas {max}"
    );
    // The autoscaler owns the replica count.
    assert!(
        d["spec"]["replicas"].is_badvalue(),
        "Deployment.spec.replicas fights the autoscaler"
    );
    // At the largest scale, all proxies together stay inside each server's connection budget.
    let (_, config) = shared.assembled_config();
    assert!(
        config.pool.host_share * max as f64 <= 1.0 + 1e-9,
        "pool.host_share {} x maxReplicas {max} exceeds the servers' budget",
        config.pool.host_share
    );
    // A disruption budget keeps one proxy up during node drains.
    let pdb = shared.of_kind("PodDisruptionBudget");
    assert_eq!(pdb.len(), 1);
    assert!(i(&pdb[0]["spec"]["minAvailable"], "minAvailable") >= 1);
}

#[test]
fn manifests_use_the_image_entrypoint() {
    for m in shardgate_manifests() {
        let (_, pod) = m.deployment();
        let c = m.shardgate_container(pod);
        assert!(
            c["command"].is_badvalue() && c["args"].is_badvalue(),
            "{}: the container overrides the image's entrypoint",
            m.name()
        );
        let image = s(&c["image"], "image");
        assert!(image.contains("shardgate:"), "{}: image {image}", m.name());
        for init in items(&pod["initContainers"]) {
            assert_eq!(
                s(&init["image"], "init image"),
                image,
                "{}: init container runs another image",
                m.name()
            );
        }
    }
}

#[test]
fn dockerfile_is_multi_stage_and_non_root() {
    let ins = docker_instructions();
    let froms: Vec<&str> = ins
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(froms.len() >= 2, "multi-stage build: {froms:?}");
    let (builder_image, builder) = froms[0]
        .split_once(" AS ")
        .or_else(|| froms[0].split_once(" as "))
        .expect("a named build stage");
    assert!(
        builder_image.starts_with("rust:"),
        "build stage image {builder_image}"
    );
    let runtime = froms.last().expect("runtime stage");
    assert!(
        runtime.starts_with("debian:bookworm-slim") || runtime.starts_with("gcr.io/distroless/cc"),
        "runtime image {runtime}"
    );
    let run = ins
        .iter()
        .filter(|(op, _)| op == "RUN")
        .map(|(_, a)| a.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        run.contains("cargo build --release") && run.contains("-p shardgate-proxy"),
        "no release build of shardgate-proxy"
    );
    // Only the binary crosses from the build stage.
    let copies_from: Vec<&str> = ins
        .iter()
        .filter(|(op, a)| op == "COPY" && a.starts_with("--from="))
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(copies_from.len(), 1, "{copies_from:?}");
    assert!(
        copies_from[0].starts_with(&format!("--from={builder} "))
            && copies_from[0].contains("shardgate")
    );
    // The last USER is numeric and not root.
    let user = ins
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, u)| u.as_str())
        .expect("a USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap_or_default()
        .parse()
        .expect("numeric uid");
    assert_ne!(uid, 0);
    let entry = ins
        .iter()
        .find(|(op, _)| op == "ENTRYPOINT")
        .map(|(_, e)| e.as_str())
        .expect("ENTRYPOINT");
    assert_eq!(
        entry,
        r#"["shardgate", "serve", "--config", "/etc/shardgate/shardgate.toml"]"#
    );
    // EXPOSE names the ports the shared tier's config uses.
    let exposed: BTreeSet<u16> = ins
        .iter()
        .filter(|(op, _)| op == "EXPOSE")
        .flat_map(|(_, a)| {
            a.split_whitespace()
                .map(|p| p.trim_end_matches("/tcp").parse::<u16>().expect("port"))
        })
        .collect();
    let (_, config) = example("shared-tier.yaml").assembled_config();
    for (key, a) in [
        ("listen.addr", &config.listen.addr),
        ("admin.listen", &config.admin.listen),
    ] {
        assert!(
            exposed.contains(&addr(a, key).port()),
            "EXPOSE lacks {key}'s port"
        );
    }
}

#[test]
fn dockerignore_keeps_build_output_and_history_out() {
    let text = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    let lines: BTreeSet<&str> = text.lines().map(str::trim).collect();
    for needed in ["target/", ".git/"] {
        assert!(lines.contains(needed), ".dockerignore lacks {needed}");
    }
}
