//! How the cross-shard differential tests (`cross_shard`, and the generated corpus here and in
//! `bench corpus`) run one statement in each mode — text through the simple protocol, binary
//! through a named prepared statement and through the unnamed statement — and compare what the
//! proxy and the reference server returned.

use std::time::Duration;

use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

/// How much of a result's row order the statement fixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The ORDER BY is total (it ends with a unique column): compare rows in order.
    Total,
    /// The first `n` columns are the ORDER BY (ties possible): compare them in order, and
    /// the rows as sets.
    Prefix(usize),
    /// No ORDER BY: compare the rows as sets.
    Unordered,
}

/// How long one statement may take before the test calls it a hang.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Any value as its raw bytes (binary format), NULL as `None`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Raw(Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// What a statement returned, in a form two servers' answers can be compared in.
#[derive(Debug, PartialEq)]
pub enum Outcome<V> {
    Rows {
        /// Column names, and type OIDs where the protocol gives them.
        columns: Vec<(String, Option<u32>)>,
        rows: Vec<Vec<V>>,
        count: Option<u64>,
    },
    Error(Failure),
}

/// An error: its SQLSTATE, which must match, and its message, for the report.
#[derive(Debug)]
pub struct Failure {
    pub code: String,
    /// Shown through `Debug` in the failure report.
    pub message: String,
}

impl PartialEq for Failure {
    fn eq(&self, other: &Self) -> bool {
        self.code == other.code
    }
}

/// Whether `o` is an error with SQLSTATE `code`.
pub fn is_error<V>(o: &Outcome<V>, code: &str) -> bool {
    matches!(o, Outcome::Error(f) if f.code == code)
}

impl<V: Ord + Clone + std::fmt::Debug> Outcome<V> {
    /// Brings the rows into a canonical order where the statement leaves it open.
    fn canonical(self, order: Order) -> (Self, Option<Vec<Vec<V>>>) {
        match self {
            Outcome::Rows {
                columns,
                mut rows,
                count,
            } => {
                let ordered_prefix = match order {
                    Order::Total => None,
                    Order::Prefix(n) => Some(
                        rows.iter()
                            .map(|r| r.iter().take(n).cloned().collect())
                            .collect(),
                    ),
                    Order::Unordered => None,
                };
                if order != Order::Total {
                    rows.sort();
                }
                (
                    Outcome::Rows {
                        columns,
                        rows,
                        count,
                    },
                    ordered_prefix,
                )
            }
            e => (e, None),
        }
    }
}

fn failure(e: &tokio_postgres::Error) -> Failure {
    Failure {
        code: sqlstate(e),
        message: e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
    }
}

/// The SQLSTATE of `e`, or a text saying it has none (an I/O or protocol error).
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map_or_else(|| format!("no SQLSTATE: {e}"), |c| c.code().to_owned())
}

/// Runs `f` with the statement timeout.
///
/// # Panics
/// When `f` takes longer: a differential test calls that a hang.
pub async fn timed<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STATEMENT_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Text format: the simple protocol.
pub async fn run_text(client: &Client, sql: &str) -> Outcome<Option<String>> {
    let messages = match timed(sql, client.simple_query(sql)).await {
        Ok(m) => m,
        Err(e) => return Outcome::Error(failure(&e)),
    };
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    let mut count = None;
    for m in messages {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                columns = cols.iter().map(|c| (c.name().to_owned(), None)).collect();
            }
            SimpleQueryMessage::Row(r) => {
                rows.push((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect());
            }
            SimpleQueryMessage::CommandComplete(n) => count = Some(n),
            _ => {}
        }
    }
    Outcome::Rows {
        columns,
        rows,
        count,
    }
}

/// Every value of `rows` as raw bytes.
pub fn binary_rows(rows: &[tokio_postgres::Row]) -> Vec<Vec<Raw>> {
    rows.iter()
        .map(|r| (0..r.len()).map(|i| r.get::<_, Raw>(i)).collect())
        .collect()
}

/// Binary format through a named prepared statement (Parse + Describe, then Bind + Execute).
pub async fn run_prepared(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Outcome<Raw> {
    let statement = match timed(sql, client.prepare(sql)).await {
        Ok(s) => s,
        Err(e) => return Outcome::Error(failure(&e)),
    };
    let columns = statement
        .columns()
        .iter()
        .map(|c| (c.name().to_owned(), Some(c.type_().oid())))
        .collect();
    match timed(sql, client.query(&statement, params)).await {
        Ok(rows) => Outcome::Rows {
            columns,
            count: Some(rows.len() as u64),
            rows: binary_rows(&rows),
        },
        Err(e) => Outcome::Error(failure(&e)),
    }
}

/// Binary format through the unnamed statement in one batch (Parse, Bind, Describe portal,
/// Execute, Sync).
pub async fn run_unnamed(
    client: &Client,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Outcome<Raw> {
    match timed(sql, client.query_typed(sql, params)).await {
        Ok(rows) => Outcome::Rows {
            columns: rows
                .first()
                .map(|r| {
                    r.columns()
                        .iter()
                        .map(|c| (c.name().to_owned(), Some(c.type_().oid())))
                        .collect()
                })
                .unwrap_or_default(),
            count: Some(rows.len() as u64),
            rows: binary_rows(&rows),
        },
        Err(e) => Outcome::Error(failure(&e)),
    }
}

/// Compares one mode's outcomes; returns a description of the difference.
pub fn differ<V: Ord + Clone + std::fmt::Debug>(
    order: Order,
    proxy: Outcome<V>,
    direct: Outcome<V>,
) -> Option<String> {
    let (proxy, proxy_prefix) = proxy.canonical(order);
    let (direct, direct_prefix) = direct.canonical(order);
    if proxy != direct {
        let short = |o: &Outcome<V>| {
            let s = format!("{o:?}");
            if s.len() > 1500 {
                format!(
                    "{}…",
                    &s[..s.char_indices().nth(1500).map_or(s.len(), |(i, _)| i)]
                )
            } else {
                s
            }
        };
        return Some(format!(
            "proxy:  {}\n    direct: {}",
            short(&proxy),
            short(&direct)
        ));
    }
    if proxy_prefix != direct_prefix {
        return Some("rows equal as sets but not in ORDER BY order".into());
    }
    None
}

/// The proxy still answers on this connection.
pub async fn usable(client: &Client) -> bool {
    matches!(
        timed("select 1", client.simple_query("select 1")).await,
        Ok(m) if m.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_)))
    )
}
