//! Whether text sorts byte-wise on a server: the proxy merges text sort keys by comparing
//! bytes, which is PostgreSQL's order only under the C (POSIX, C.UTF-8) collation. The
//! database's collation is asked once per server connection (the connection knows its
//! database; the answer never changes) and remembered here. Also the small "run a simple
//! query, give me the text values" helper the scatter's internal queries use.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use bytes::BytesMut;
use shardgate_pool::{ServerConn, ServerError};
use shardgate_wire::row::data_row_values;
use shardgate_wire::{backend, frontend, Frame};

/// Above this many remembered connections the cache starts over (ids are not reused, closed
/// connections' entries would otherwise pile up).
const CACHE_LIMIT: usize = 10_000;

/// The database's default collation for text, as far as ordering goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Collation {
    /// Byte order: C, POSIX, C.UTF-8 (libc), or the builtin provider's C locales.
    Bytewise,
    /// Anything else, named for the error message.
    Other(String),
}

fn cache() -> &'static Mutex<HashMap<u64, Collation>> {
    static CACHE: OnceLock<Mutex<HashMap<u64, Collation>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Reads `pg_database` in a way every supported server version accepts (the provider columns
/// exist from PostgreSQL 15, and `daticulocale` became `datlocale` in 17).
const COLLATION_SQL: &str = "select d.datcollate::text, \
     coalesce(to_jsonb(d)->>'datlocprovider', 'c'), \
     coalesce(to_jsonb(d)->>'datlocale', to_jsonb(d)->>'daticulocale', '') \
     from pg_database d where d.datname = current_database()";

/// Classifies the answer of [`COLLATION_SQL`].
pub(crate) fn classify(collate: &str, provider: &str, locale: &str) -> Collation {
    let c_like = |s: &str| {
        matches!(
            s.to_ascii_lowercase().as_str(),
            "c" | "posix" | "c.utf8" | "c.utf-8"
        )
    };
    match provider {
        "c" if c_like(collate) => Collation::Bytewise,
        "b" if c_like(locale) => Collation::Bytewise,
        "i" => Collation::Other(format!("ICU {locale}")),
        _ if !locale.is_empty() && provider == "b" => Collation::Other(format!("builtin {locale}")),
        _ => Collation::Other(collate.to_owned()),
    }
}

/// The collation of `conn`'s database, asked of the server the first time. The connection
/// must be idle; it is idle again afterwards.
pub(crate) async fn database_collation(conn: &mut ServerConn) -> Result<Collation, ServerError> {
    if let Ok(c) = cache().lock() {
        if let Some(found) = c.get(&conn.id()) {
            return Ok(found.clone());
        }
    }
    let answer = match simple_query(conn, COLLATION_SQL).await? {
        Ok(rows) => match rows.first().map(Vec::as_slice) {
            Some([Some(collate), Some(provider), Some(locale)]) => {
                classify(collate, provider, locale)
            }
            _ => Collation::Other("unknown".into()),
        },
        // Not readable (a permission oddity): assume the worst, and do not remember it.
        Err(_) => return Ok(Collation::Other("unknown".into())),
    };
    if let Ok(mut c) = cache().lock() {
        if c.len() >= CACHE_LIMIT {
            c.clear();
        }
        c.insert(conn.id(), answer.clone());
    }
    Ok(answer)
}

/// Rows of a proxy-internal simple query as text (`None` for NULL), or the server's
/// ErrorResponse. The connection is left at ReadyForQuery.
pub(crate) async fn simple_query(
    conn: &mut ServerConn,
    sql: &str,
) -> Result<Result<Vec<Vec<Option<String>>>, Frame>, ServerError> {
    let mut out = BytesMut::with_capacity(sql.len() + 6);
    frontend::write_query(&mut out, sql);
    conn.write_all(&out).await?;
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let frame = conn.read_frame().await?;
        match frame.tag() {
            backend::DATA_ROW => {
                let values = data_row_values(&frame).map_err(|e| {
                    conn.mark_broken();
                    ServerError::Protocol(e.to_string())
                })?;
                rows.push(
                    values
                        .into_iter()
                        .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                        .collect(),
                );
            }
            backend::ERROR_RESPONSE => {
                error.get_or_insert(frame);
            }
            backend::READY_FOR_QUERY => break,
            backend::COPY_IN_RESPONSE
            | backend::COPY_OUT_RESPONSE
            | backend::COPY_BOTH_RESPONSE => {
                conn.mark_broken();
                return Err(ServerError::Protocol(
                    "internal query started a COPY".into(),
                ));
            }
            _ => {}
        }
    }
    Ok(match error {
        Some(e) => Err(e),
        None => Ok(rows),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_collations_are_bytewise() {
        for c in ["C", "POSIX", "C.UTF-8", "C.utf8"] {
            assert_eq!(classify(c, "c", ""), Collation::Bytewise, "{c}");
        }
        assert_eq!(classify("C", "b", "C.UTF-8"), Collation::Bytewise);
        assert_eq!(
            classify("en_US.UTF-8", "c", ""),
            Collation::Other("en_US.UTF-8".into())
        );
        // An ICU database keeps datcollate = C for libc, but sorts by ICU rules.
        assert_eq!(
            classify("C", "i", "en-US"),
            Collation::Other("ICU en-US".into())
        );
    }
}
