//! `/metrics`: valid Prometheus text exposition, the snapshot gauges, and counters and
//! histograms recorded by the process showing up at the next scrape.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{get, TestServer};
use shardgate_admin::histogram;

/// One sample line: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict-enough parser of the text exposition format (version 0.0.4): every line is a
/// comment (`# HELP name text`, `# TYPE name kind`), blank, or `name{label="value",…} value`;
/// every sample's family has a HELP and a TYPE that come before it.
fn parse_exposition(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
    let mut help = BTreeSet::new();
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').expect("HELP has a name and a text");
            assert!(valid_name(name), "HELP of a bad name: {line}");
            assert!(!doc.trim().is_empty(), "empty HELP: {line}");
            help.insert(name.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a name and a kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let sample = parse_sample(line);
        let family = family_of(&sample.name, &types);
        assert!(help.contains(&family), "no HELP before {line}");
        assert!(types.contains_key(&family), "no TYPE before {line}");
        samples.push(sample);
    }
    (samples, types)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_sample(line: &str) -> Sample {
    let (name_and_labels, value) = line.rsplit_once(' ').expect("sample has a value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
    };
    let (name, labels) = match name_and_labels.split_once('{') {
        None => (name_and_labels, BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest
                .strip_suffix('}')
                .unwrap_or_else(|| panic!("unclosed {{: {line}"));
            (name, parse_labels(body, line))
        }
    };
    assert!(valid_name(name), "bad metric name in {line}");
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

fn parse_labels(mut body: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !body.is_empty() {
        let (key, rest) = body
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label: {line}"));
        assert!(valid_name(key), "bad label name in {line}");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('"' | '\\'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {line}"),
                },
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line}"),
            }
        };
        labels.insert(key.to_owned(), value);
        body = &rest[end + 1..];
        body = body.strip_prefix(',').unwrap_or(body);
    }
    labels
}

/// The family a sample belongs to (histograms add _bucket, _sum, _count).
fn family_of(name: &str, types: &BTreeMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types
                .get(base)
                .is_some_and(|t| t == "histogram" || t == "summary")
            {
                return base.to_owned();
            }
        }
    }
    name.to_owned()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

fn scrape(server: &TestServer) -> (Vec<Sample>, BTreeMap<String, String>) {
    let reply = get(&format!("{}/metrics", server.url));
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse_exposition(&reply.body)
}

#[test]
fn snapshot_gauges_and_recorded_metrics() {
    let server = TestServer::start(Some("token"));
    let (samples, types) = scrape(&server);

    for (state, expected) in [("active", 3.0), ("idle", 5.0), ("waiting", 1.0)] {
        assert_eq!(
            value(&samples, "shardgate_clients", &[("state", state)]),
            Some(expected)
        );
    }
    assert_eq!(types["shardgate_clients"], "gauge");

    // Two users' pools on s1's primary are summed: idle 2+1, active 1+2, size 4+4.
    let s1p = [
        ("shard", "s1"),
        ("role", "primary"),
        ("host", "127.0.0.1:5433"),
    ];
    let with = |extra: (&'static str, &'static str)| {
        let mut labels = s1p.to_vec();
        labels.push(extra);
        labels
    };
    let server_conns = |state| {
        value(
            &samples,
            "shardgate_server_connections",
            &with(("state", state)),
        )
    };
    assert_eq!(server_conns("idle"), Some(3.0));
    assert_eq!(server_conns("active"), Some(3.0));
    assert_eq!(value(&samples, "shardgate_pool_size", &s1p), Some(8.0));
    assert_eq!(value(&samples, "shardgate_pool_waiting", &s1p), Some(2.0));
    let resizes = |direction| {
        value(
            &samples,
            "shardgate_pool_resizes_total",
            &with(("direction", direction)),
        )
    };
    assert_eq!(resizes("up"), Some(6.0));
    assert_eq!(resizes("down"), Some(2.0));
    assert_eq!(types["shardgate_pool_resizes_total"], "counter");
    // No database or user labels.
    assert!(samples
        .iter()
        .all(|s| !s.labels.contains_key("user") && !s.labels.contains_key("database")));

    let r1 = [("shard", "s1"), ("host", "127.0.0.1:5434")];
    let r2 = [("shard", "s2"), ("host", "127.0.0.1:5436")];
    assert_eq!(
        value(&samples, "shardgate_replica_lag_seconds", &r1),
        Some(0.25)
    );
    assert_eq!(
        value(&samples, "shardgate_replica_lag_bytes", &r1),
        Some(4096.0)
    );
    assert_eq!(
        value(&samples, "shardgate_replica_in_rotation", &r1),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "shardgate_replica_in_rotation", &r2),
        Some(0.0)
    );
    assert_eq!(
        value(&samples, "shardgate_replica_lag_seconds", &r2),
        None,
        "lag unknown"
    );
    assert_eq!(
        value(&samples, "shardgate_topology_version", &[]),
        Some(7.0)
    );

    // What the proxy records shows up at the next scrape, described.
    let route = [("shard", "s1"), ("role", "primary"), ("route", "single")];
    assert_eq!(value(&samples, "shardgate_queries_total", &route), None);
    metrics::counter!("shardgate_queries_total", &route).increment(3);
    metrics::counter!("shardgate_errors_total", "class" => "23").increment(1);
    let labels = [("role", "primary".into()), ("route", "single".into())];
    histogram::histogram(&histogram::QUERY_DURATION, &labels).record(Duration::from_millis(3));
    let labels = [("shard", "s1".into()), ("role", "primary".into())];
    histogram::histogram(&histogram::CHECKOUT_WAIT, &labels).record(Duration::from_micros(200));
    metrics::counter!("shardgate_replica_transitions_total", "shard" => "s1", "host" => "h", "to" => "out")
        .increment(1);
    let (samples, types) = scrape(&server);
    assert_eq!(
        value(&samples, "shardgate_queries_total", &route),
        Some(3.0)
    );
    assert_eq!(
        value(&samples, "shardgate_errors_total", &[("class", "23")]),
        Some(1.0)
    );
    assert_eq!(types["shardgate_replica_transitions_total"], "counter");
    metrics::counter!("shardgate_queries_total", &route).increment(2);
    let (samples, _) = scrape(&server);
    assert_eq!(
        value(&samples, "shardgate_queries_total", &route),
        Some(5.0)
    );

    // Real histograms with the configured buckets, not summaries.
    for (name, labels, le, count) in [
        (
            "shardgate_query_duration_seconds",
            vec![("role", "primary"), ("route", "single")],
            "0.005",
            1.0,
        ),
        (
            "shardgate_checkout_wait_seconds",
            vec![("shard", "s1"), ("role", "primary")],
            "0.00025",
            1.0,
        ),
    ] {
        assert_eq!(types[name], "histogram", "{name}");
        let mut bucket = labels.clone();
        bucket.push(("le", le));
        assert_eq!(
            value(&samples, &format!("{name}_bucket"), &bucket),
            Some(count),
            "{name}"
        );
        bucket.pop();
        bucket.push(("le", "+Inf"));
        assert_eq!(
            value(&samples, &format!("{name}_bucket"), &bucket),
            Some(count)
        );
        assert_eq!(
            value(&samples, &format!("{name}_count"), &labels),
            Some(count)
        );
    }
    server.shutdown();
}

#[test]
fn one_recorder_for_several_servers() {
    let first = TestServer::start(None);
    let second = TestServer::start(None);
    metrics::counter!("shardgate_parse_cache_hits_total").increment(4);
    for server in [&first, &second] {
        let (samples, _) = scrape(server);
        assert!(value(&samples, "shardgate_parse_cache_hits_total", &[]).is_some_and(|v| v >= 4.0));
    }
    first.shutdown();
    second.shutdown();
}

#[test]
fn parser_rejects_what_prometheus_would() {
    for bad in [
        "shardgate_x 1\n",                          // no HELP/TYPE
        "# HELP a x\n# TYPE a gauge\na{b=\"c} 1\n", // unterminated value
        "# HELP a x\n# TYPE a gauge\na one\n",      // not a number
        "# HELP a x\n# TYPE a gauge\n9a 1\n",       // bad name
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_exposition(bad)).is_err(),
            "accepted {bad:?}"
        );
    }
    let (samples, _) =
        parse_exposition("# HELP a x\n# TYPE a gauge\na{b=\"q\\\"uo,te\",c=\"d\"} 1.5\n");
    assert_eq!(samples[0].labels["b"], "q\"uo,te");
    assert_eq!(samples[0].value, 1.5);
}
