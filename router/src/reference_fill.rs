//! An INSERT into a reference table that leaves columns to defaults which differ per shard
//! (a serial's `nextval`, an identity, `now()`): the proxy evaluates those defaults once, on the
//! default shard, and every shard runs the INSERT with the values written in. This is the text
//! rewrite: the columns are added to the column list (one is written when the INSERT had none)
//! and each VALUES row gets its values, before its closing parenthesis; everything else —
//! literals, parameters, comments, ON CONFLICT, RETURNING — stays byte for byte.

use crate::reference::ReferenceInsert;
use crate::router::RouteError;
use crate::split::Layout;
use crate::text::{Lexer, TokKind};

/// A column the proxy fills in, and its value for each VALUES row (SQL text: a quoted literal
/// with a cast, or `NULL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilledColumn {
    pub name: String,
    pub values: Vec<String>,
}

fn refused(message: String) -> RouteError {
    RouteError {
        code: "0A000",
        message,
        hint: Some(
            "give the value explicitly in the INSERT: the copies on every shard must be identical"
                .into(),
        ),
    }
}

/// `"name"`, quoted as PostgreSQL reads it.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'::type` (or `NULL`): a value read back from a shard, as SQL.
pub fn typed_literal(value: Option<&str>, sql_type: &str) -> String {
    match value {
        None => "NULL".into(),
        Some(v) => format!("'{}'::{sql_type}", v.replace('\'', "''")),
    }
}

/// The number of VALUES rows of a reference INSERT that [`fill_defaults`] can rewrite.
pub fn values_rows(sql: &str, ins: &ReferenceInsert) -> Result<usize, RouteError> {
    if ins.columns.as_ref().is_some_and(Vec::is_empty) {
        return Err(refused(format!(
            "INSERT … DEFAULT VALUES into reference table {} would give each shard's copy its own defaults",
            ins.table
        )));
    }
    let layout = Layout::of(sql).map_err(|_| {
        refused(format!(
            "INSERT … SELECT into reference table {} leaves columns to defaults that differ per shard",
            ins.table
        ))
    })?;
    Ok(layout.rows.len())
}

/// `sql` with `filled` written in (see the module doc); `leading` names the first columns of
/// the table in order, for an INSERT without a column list (its values fill them in order).
pub fn fill_defaults(
    sql: &str,
    ins: &ReferenceInsert,
    leading: &[String],
    filled: &[FilledColumn],
) -> Result<String, RouteError> {
    let layout = Layout::of(sql)?;
    if filled.iter().any(|f| f.values.len() != layout.rows.len()) {
        return Err(refused(format!(
            "INSERT into reference table {}: the VALUES rows could not be matched",
            ins.table
        )));
    }
    let Some(first_row) = layout.rows.first().map(|r| r.start) else {
        return Ok(sql.to_owned());
    };
    let names: Vec<String> = filled.iter().map(|f| quote_ident(&f.name)).collect();
    // (position in the text, text to insert there), applied from the end.
    let mut inserts: Vec<(usize, String)> = Vec::new();
    match &ins.columns {
        Some(_) => {
            // The column list: the first parenthesis at depth 0 (the statement starts with
            // INSERT, so nothing before the target has parentheses).
            let mut depth = 0usize;
            let mut close = None;
            for tok in Lexer::new(&sql[..first_row]) {
                let text = &sql[tok.range.clone()];
                if tok.kind != TokKind::Other {
                    continue;
                }
                if text == "(" {
                    depth += 1;
                } else if text == ")" {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        close = Some(tok.range.start);
                        break;
                    }
                }
            }
            let close = close.ok_or_else(|| {
                refused(format!(
                    "INSERT into reference table {}: its column list could not be found",
                    ins.table
                ))
            })?;
            inserts.push((close, format!(", {}", names.join(", "))));
        }
        None => {
            // No column list: the VALUES keyword is the last word before the first row.
            let values_at = Lexer::new(&sql[..first_row])
                .filter(|t| {
                    t.kind == TokKind::Word && sql[t.range.clone()].eq_ignore_ascii_case("values")
                })
                .last()
                .map(|t| t.range.start)
                .ok_or_else(|| {
                    refused(format!(
                        "INSERT into reference table {}: its VALUES could not be found",
                        ins.table
                    ))
                })?;
            let width = ins.width.unwrap_or(0);
            let mut all: Vec<String> = leading.iter().take(width).map(|c| quote_ident(c)).collect();
            if all.len() != width {
                return Err(refused(format!(
                    "INSERT into reference table {} gives more values than it has columns",
                    ins.table
                )));
            }
            all.extend(names.iter().cloned());
            inserts.push((values_at, format!("({}) ", all.join(", "))));
        }
    }
    for (i, row) in layout.rows.iter().enumerate() {
        let values: Vec<&str> = filled.iter().map(|f| f.values[i].as_str()).collect();
        inserts.push((row.end - 1, format!(", {}", values.join(", "))));
    }
    inserts.sort_by_key(|(at, _)| *at);
    let mut out = sql.to_owned();
    for (at, text) in inserts.into_iter().rev() {
        out.insert_str(at, &text);
    }
    Ok(out)
}
