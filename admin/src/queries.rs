//! Per-query statistics for operators: `GET`/`DELETE /api/v1/queries`, the table of
//! `shardgate admin queries`, and the `shardgate_top_query_*` metrics.

use metrics::gauge;

use crate::control::{ControlPlane, QueriesReport, QuerySort, QueryStat};
use crate::table::{render, Align};

/// `limit=` when the request has none, and the most it may ask for.
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 10_000;

/// How many statements `/metrics` exports, by total time: bounded label cardinality.
pub const METRICS_TOP: usize = 20;

/// Why a `/api/v1/queries` query string was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QueriesParamError {
    #[error("unknown sort `{0}`")]
    Sort(String),
    #[error("bad limit `{0}`")]
    Limit(String),
    #[error("unknown parameter `{0}`")]
    Unknown(String),
}

/// `sort=total_time|calls|mean_time|errors&limit=N` (both optional).
pub fn parse_params(query: Option<&str>) -> Result<(QuerySort, usize), QueriesParamError> {
    let mut sort = QuerySort::default();
    let mut limit = DEFAULT_LIMIT;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sort" => {
                sort = QuerySort::parse(value)
                    .ok_or_else(|| QueriesParamError::Sort(value.to_owned()))?
            }
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| QueriesParamError::Limit(value.to_owned()))?
            }
            other => return Err(QueriesParamError::Unknown(other.to_owned())),
        }
    }
    Ok((sort, limit))
}

/// The CLI's table: one line per statement, the fingerprint last (cut to `width` chars).
pub(crate) fn queries_table(report: QueriesReport) -> String {
    let mut out = format!(
        "{} statement shapes tracked (max {}), {} evicted\n",
        report.tracked, report.max_queries, report.evicted
    );
    if report.queries.is_empty() {
        out.push_str("no statements recorded\n");
        return out;
    }
    let rows: Vec<Vec<String>> = report.queries.iter().map(row).collect();
    let columns = [
        ("ID", Align::Left),
        ("CALLS", Align::Right),
        ("ERRORS", Align::Right),
        ("TOTAL_MS", Align::Right),
        ("MEAN_MS", Align::Right),
        ("P50_MS", Align::Right),
        ("P99_MS", Align::Right),
        ("ROWS", Align::Right),
        ("SHARDS", Align::Right),
        ("ROUTE", Align::Left),
        ("REPLICA", Align::Right),
        ("QUERY", Align::Left),
    ];
    out.push_str(&render(&columns, &rows));
    out
}

/// Statements wider than this are cut in the table (`--json` has the whole fingerprint).
const QUERY_WIDTH: usize = 60;

fn row(q: &QueryStat) -> Vec<String> {
    let errors = if q.errors_by_class.is_empty() {
        "0".to_owned()
    } else {
        let classes: Vec<String> = q
            .errors_by_class
            .iter()
            .map(|(class, n)| format!("{class}:{n}"))
            .collect();
        format!("{} ({})", q.errors, classes.join(","))
    };
    let mean_shards = if q.calls == 0 {
        0.0
    } else {
        q.shards_touched as f64 / q.calls as f64
    };
    let mut query: String = q.query.chars().take(QUERY_WIDTH).collect();
    if q.query.chars().count() > QUERY_WIDTH {
        query.push('…');
    }
    vec![
        q.id.clone(),
        q.calls.to_string(),
        errors,
        format!("{:.2}", q.total_ms),
        format!("{:.3}", q.mean_ms),
        format!("{:.3}", q.p50_ms),
        format!("{:.3}", q.p99_ms),
        q.rows.to_string(),
        format!("{mean_shards:.1}"),
        routes_text(q),
        q.replica.to_string(),
        query,
    ]
}

/// The route kinds a statement took: `single`, or e.g. `scatter:3,refused:1`.
fn routes_text(q: &QueryStat) -> String {
    let r = &q.routes;
    let kinds: Vec<String> = [
        ("single", r.single),
        ("scatter", r.scatter),
        ("gather", r.gather),
        ("broadcast", r.broadcast),
        ("split_insert", r.split_insert),
        ("split_copy", r.split_copy),
        ("refused", r.refused),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(k, n)| {
        if *n == q.calls {
            (*k).to_owned()
        } else {
            format!("{k}:{n}")
        }
    })
    .collect();
    if kinds.is_empty() {
        "-".to_owned()
    } else {
        kinds.join(",")
    }
}

/// Gauges for the top statements by total time. The label is the fingerprint's id (16 hex
/// digits; the text is in `/api/v1/queries`) and the most shards a call touched: the text
/// itself would make labels of unbounded size and content (and could carry what a comment or
/// an identifier says). Gauges, not counters: a statement evicted or reset starts again, and
/// its series stop being exported once they are no longer set (the snapshot idle timeout).
pub fn record_top_queries(control: &dyn ControlPlane) {
    let Some(report) = control.queries(QuerySort::TotalTime, METRICS_TOP) else {
        return;
    };
    for q in report.queries {
        let labels = [
            ("query_id", q.id.clone()),
            ("shards", q.max_shards.to_string()),
        ];
        gauge!("shardgate_top_query_calls", &labels).set(q.calls as f64);
        gauge!("shardgate_top_query_errors", &labels).set(q.errors as f64);
        gauge!("shardgate_top_query_rows", &labels).set(q.rows as f64);
        gauge!("shardgate_top_query_seconds", &labels).set(q.total_ms / 1000.0);
        gauge!("shardgate_top_query_p99_seconds", &labels).set(q.p99_ms / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_parse_and_refuse() {
        assert_eq!(parse_params(None), Ok((QuerySort::TotalTime, 20)));
        assert_eq!(
            parse_params(Some("sort=calls&limit=5")),
            Ok((QuerySort::Calls, 5))
        );
        assert!(parse_params(Some("sort=rows")).is_err());
        assert!(parse_params(Some("limit=0")).is_err());
        assert!(parse_params(Some("x=1")).is_err());
    }
}
