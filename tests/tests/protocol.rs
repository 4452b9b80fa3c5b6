//! tokio-postgres through the proxy: the simple and extended protocols, types, transactions,
//! COPY, cancel, pipelining, portals, authentication, and the pool's limits and recovery.
//!
//! One test binary; the tests are grouped by topic in `protocol/`, and the helpers they share
//! are here.

mod common;

#[path = "protocol/connections.rs"]
mod connections;
#[path = "protocol/copy.rs"]
mod copy;
#[path = "protocol/queries.rs"]
mod queries;
#[path = "protocol/transactions.rs"]
mod transactions;

use common::{expect_sqlstate, Env, RawMsg};
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{GenericClient, SimpleQueryMessage};

/// Rows of a simple-query result, as text (NULL as None).
fn simple_rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

/// The message types of a raw reply, one character each (e.g. "TDCZ").
fn tags(msgs: &[RawMsg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

/// The first column of the one row `query` returns, through the extended protocol, from a
/// client or a transaction.
async fn one<T, S>(client: &impl GenericClient, query: &S, params: &[&(dyn ToSql + Sync)]) -> T
where
    T: for<'a> FromSql<'a>,
    S: ?Sized + tokio_postgres::ToStatement + Sync + Send,
{
    client
        .query_one(query, params)
        .await
        .unwrap_or_else(|e| panic!("query_one failed: {e}"))
        .get(0)
}

/// A connection string through the proxy for `user`/`password` and database `db`.
fn login(env: &Env, user: &str, password: &str, db: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} password='{password}' dbname={db}",
        env.port()
    )
}
