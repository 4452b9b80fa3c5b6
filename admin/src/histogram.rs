//! Latency histograms with fixed buckets, recorded with three atomic adds and rendered after
//! the exporter's own text at each scrape.
//!
//! The exporter's histograms push every sample, with a timestamp, into a queue that upkeep
//! drains: about 150 instructions a sample, two samples a transaction (checkout wait, query
//! duration), 2% of the proxy's work on pgbench `-S`. These count into their bucket at once.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Pool checkouts are usually sub-millisecond; the upper buckets catch checkout timeouts.
pub const CHECKOUT_WAIT_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// From point lookups (well under a millisecond on a local shard) to slow reports.
pub const QUERY_DURATION_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
];

/// A histogram family: its name, help text and bucket bounds (seconds).
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub bounds: &'static [f64],
}

pub const CHECKOUT_WAIT: Family = Family {
    name: "shardgate_checkout_wait_seconds",
    help: "Time a client waited to check out a server connection, per shard and role.",
    bounds: CHECKOUT_WAIT_BUCKETS,
};

pub const QUERY_DURATION: Family = Family {
    name: "shardgate_query_duration_seconds",
    help: "Time from a statement's arrival to its last reply, per role and route.",
    bounds: QUERY_DURATION_BUCKETS,
};

const FAMILIES: [&Family; 2] = [&CHECKOUT_WAIT, &QUERY_DURATION];

/// Label sets a process may register (one per shard, role and route: a config's worth).
/// Past it, `histogram` hands out a histogram that is not rendered, and warns once.
const MAX_SERIES: usize = 4096;

/// One labelled series of a family.
#[derive(Debug)]
pub struct LatencyHistogram {
    family: &'static Family,
    labels: Vec<(&'static str, String)>,
    /// Bounds in nanoseconds, for integer compares on the hot path.
    bounds_ns: Box<[u64]>,
    /// Per bucket (not cumulative); the last is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    fn new(family: &'static Family, labels: Vec<(&'static str, String)>) -> LatencyHistogram {
        LatencyHistogram {
            family,
            labels,
            bounds_ns: family
                .bounds
                .iter()
                .map(|s| Duration::from_secs_f64(*s).as_nanos() as u64)
                .collect(),
            counts: (0..=family.bounds.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Counts one sample. (`le` is inclusive, as in Prometheus.)
    pub fn record(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self.bounds_ns.partition_point(|&b| b < ns);
        if let Some(c) = self.counts.get(bucket) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        let name = self.family.name;
        let labels: String = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\",", escape(v)))
            .collect();
        let mut cumulative = 0u64;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = match self.family.bounds.get(i) {
                Some(b) => b.to_string(),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
        }
        let labels = labels.trim_end_matches(',');
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

static SERIES: Mutex<Vec<Arc<LatencyHistogram>>> = Mutex::new(Vec::new());

/// The series of `family` with `labels`, registered on first use (callers keep the handle:
/// this takes a lock and compares labels).
pub fn histogram(
    family: &'static Family,
    labels: &[(&'static str, String)],
) -> Arc<LatencyHistogram> {
    let mut series = SERIES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = series
        .iter()
        .find(|h| h.family.name == family.name && h.labels == labels)
    {
        return Arc::clone(h);
    }
    let h = Arc::new(LatencyHistogram::new(family, labels.to_vec()));
    static WARNED: AtomicBool = AtomicBool::new(false);
    if series.len() < MAX_SERIES {
        series.push(Arc::clone(&h));
    } else if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            family = family.name,
            "too many histogram series; new ones are not exported"
        );
    }
    h
}

/// Every registered series, family by family, in the text exposition format.
pub(crate) fn render(out: &mut String) {
    let series: Vec<Arc<LatencyHistogram>> = SERIES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect();
    for family in FAMILIES {
        let mut of_family = series.iter().filter(|h| h.family.name == family.name);
        let Some(first) = of_family.next() else {
            continue;
        };
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} histogram", family.name);
        first.render(out);
        for h in of_family {
            h.render(out);
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_their_bucket_and_render_cumulatively() {
        static FAMILY: Family = Family {
            name: "test_latency_seconds",
            help: "Test.",
            bounds: &[0.001, 0.01],
        };
        let h = histogram(&FAMILY, &[("shard", "a\"b".into())]);
        h.record(Duration::from_micros(500));
        h.record(Duration::from_millis(1)); // on the bound: le is inclusive
        h.record(Duration::from_millis(5));
        h.record(Duration::from_secs(3));
        let again = histogram(&FAMILY, &[("shard", "a\"b".into())]);
        assert!(Arc::ptr_eq(&h, &again));
        let mut out = String::new();
        h.render(&mut out);
        assert_eq!(
            out,
            "test_latency_seconds_bucket{shard=\"a\\\"b\",le=\"0.001\"} 2\n\
             test_latency_seconds_bucket{shard=\"a\\\"b\",le=\"0.01\"} 3\n\
             test_latency_seconds_bucket{shard=\"a\\\"b\",le=\"+Inf\"} 4\n\
             test_latency_seconds_sum{shard=\"a\\\"b\"} 3.0065\n\
             test_latency_seconds_count{shard=\"a\\\"b\"} 4\n"
        );
    }
}
