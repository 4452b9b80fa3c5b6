//! Writes to reference tables (copies on every shard, `router::reference`): before an INSERT
//! runs on every shard, the columns it leaves to their defaults are looked up in the catalog of
//! the default shard. A default that is not a constant (a serial's `nextval`, an identity
//! column, `now()`, `gen_random_uuid()`) would give each copy another value — all the more with
//! id lanes, which give each shard's sequences different values. So those defaults are
//! evaluated once, on the default shard (its sequence is the table's one source of ids), for
//! every VALUES row, and written into the INSERT that every shard then runs
//! (`router::fill_defaults`). An INSERT … SELECT or DEFAULT VALUES that would need it is
//! refused with 0A000 and the advice to give the values explicitly.

use shardgate_pool::ServerConn;
use shardgate_router::{
    default_is_constant, fill_defaults, values_rows, FilledColumn, Plan, ReferenceInsert,
    RouteError,
};
use shardgate_wire::sqlstate;

use crate::multi_txn::fanout::query_value;
use crate::scatter::ScatterRequest;

/// Separates rows, and columns within a row, in the one value the evaluation returns.
const ROW_SEP: char = '\u{1f}';
const COL_SEP: char = '\u{1e}';

/// One line per column in order: name, type, generated, then the expression that gives its
/// default when it is not given: the default's text, or `nextval(…)` of an identity column's
/// sequence ('' when it has neither).
fn columns_sql(ins: &ReferenceInsert) -> String {
    let regclass = ins.regclass.replace('\'', "''");
    format!(
        "SELECT string_agg(a.attname || E'\\t' || pg_catalog.format_type(a.atttypid, a.atttypmod) \
         || E'\\t' || (a.attgenerated <> '')::text || E'\\t' || coalesce(CASE WHEN a.attidentity <> '' \
         THEN format('nextval(%L::regclass)', pg_catalog.pg_get_serial_sequence(a.attrelid::regclass::text, a.attname)) \
         ELSE replace(pg_catalog.pg_get_expr(d.adbin, d.adrelid), E'\\n', ' ') END, ''), E'\\n' ORDER BY a.attnum) \
         FROM pg_catalog.pg_attribute a LEFT JOIN pg_catalog.pg_attrdef d \
         ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         WHERE a.attrelid = pg_catalog.to_regclass('{regclass}') AND a.attnum > 0 AND NOT a.attisdropped"
    )
}

/// A column of the table, from [`columns_sql`].
#[derive(Debug, PartialEq)]
struct Column {
    name: String,
    sql_type: String,
    generated: bool,
    default: String,
}

fn parse_columns(catalog: &str) -> Vec<Column> {
    catalog
        .lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            Some(Column {
                name: f.next()?.to_owned(),
                sql_type: f.next()?.to_owned(),
                generated: f.next()? == "true",
                default: f.next().unwrap_or("").to_owned(),
            })
        })
        .collect()
}

/// The columns the INSERT leaves to a default that differs per shard.
fn per_shard_defaults<'c>(ins: &ReferenceInsert, columns: &'c [Column]) -> Vec<&'c Column> {
    columns
        .iter()
        .enumerate()
        .filter(|(i, c)| {
            !c.generated
                && !ins.gives(*i, &c.name)
                && !c.default.is_empty()
                && !default_is_constant(&c.default)
        })
        .map(|(_, c)| c)
        .collect()
}

/// One query evaluating each column's default once per row: each value as a SQL literal with
/// its type (or NULL), columns joined by [`COL_SEP`], rows by [`ROW_SEP`].
fn evaluate_sql(columns: &[&Column], rows: usize) -> String {
    let values: Vec<String> = columns
        .iter()
        .map(|c| {
            let cast = format!("::{}", c.sql_type).replace('\'', "''");
            format!(
                "coalesce(pg_catalog.quote_literal(({})::text) || '{cast}', 'NULL')",
                c.default
            )
        })
        .collect();
    format!(
        "SELECT string_agg(concat_ws(chr(30), {}), chr(31) ORDER BY g) FROM pg_catalog.generate_series(1, {rows}) g",
        values.join(", ")
    )
}

fn failed(ins: &ReferenceInsert, what: &str, e: impl std::fmt::Display) -> RouteError {
    RouteError {
        code: sqlstate::CONNECTION_FAILURE,
        message: format!("could not {what} of reference table {}: {e}", ins.table),
        hint: None,
    }
}

/// For an INSERT into a reference table: writes the values of the defaults that would differ
/// per shard into `request`, evaluated on `conn` (the default shard's connection; inside the
/// client's transaction when it is in one). Refuses what cannot be filled in.
pub(crate) async fn fill_insert(
    conn: &mut ServerConn,
    plan: &Plan,
    request: &mut ScatterRequest,
) -> Result<(), RouteError> {
    let Some(ins) = plan
        .reference_write
        .as_ref()
        .and_then(|w| w.insert.as_ref())
    else {
        return Ok(());
    };
    let catalog = match query_value(conn, &columns_sql(ins)).await {
        Ok(Some(catalog)) => catalog,
        // An unknown table: the INSERT itself will say so.
        Ok(None) => return Ok(()),
        Err(e) => return Err(failed(ins, "read the columns", e)),
    };
    let columns = parse_columns(&catalog);
    let needed = per_shard_defaults(ins, &columns);
    if needed.is_empty() {
        return Ok(());
    }
    let (ScatterRequest::Simple { sql } | ScatterRequest::Extended { sql, .. }) = request;
    let rows = values_rows(sql, ins)?;
    let values = match query_value(conn, &evaluate_sql(&needed, rows)).await {
        Ok(v) => v.unwrap_or_default(),
        Err(e) => return Err(failed(ins, "evaluate the column defaults", e)),
    };
    let mut filled: Vec<FilledColumn> = needed
        .iter()
        .map(|c| FilledColumn {
            name: c.name.clone(),
            values: Vec::with_capacity(rows),
        })
        .collect();
    for row in values.split(ROW_SEP) {
        for (column, value) in filled.iter_mut().zip(row.split(COL_SEP)) {
            column.values.push(value.to_owned());
        }
    }
    let leading: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
    let text = fill_defaults(sql, ins, &leading, &filled)?;
    tracing::debug!(table = %ins.table, columns = filled.len(), rows, "reference INSERT: per-shard defaults evaluated on the default shard");
    *sql = text;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(columns: Option<&[&str]>, width: Option<usize>) -> ReferenceInsert {
        ReferenceInsert {
            regclass: "\"plans\"".into(),
            table: "plans".into(),
            columns: columns.map(|c| c.iter().map(|s| s.to_string()).collect()),
            width,
        }
    }

    const CATALOG: &str = "plan_id\tinteger\tfalse\tnextval('plans_plan_id_seq'::regclass)\nname\ttext\tfalse\t\nprice\tnumeric\tfalse\t0\ncreated\ttimestamp with time zone\tfalse\tnow()\nlabel\ttext\ttrue\tupper(name)";

    #[test]
    fn omitted_columns_with_per_shard_defaults_are_found() {
        let columns = parse_columns(CATALOG);
        assert_eq!(columns.len(), 5);
        let names = |ins: &ReferenceInsert| -> Vec<String> {
            per_shard_defaults(ins, &columns)
                .iter()
                .map(|c| c.name.clone())
                .collect()
        };
        assert!(names(&insert(
            Some(&["plan_id", "name", "price", "created"]),
            None
        ))
        .is_empty());
        // price's default is a constant, name has none, label is generated.
        assert!(names(&insert(Some(&["plan_id", "created"]), None)).is_empty());
        assert_eq!(
            names(&insert(Some(&["name"]), None)),
            ["plan_id", "created"]
        );
        assert_eq!(names(&insert(None, Some(3))), ["created"]);
        let sql = evaluate_sql(
            &per_shard_defaults(&insert(Some(&["name"]), None), &columns),
            2,
        );
        assert!(
            sql.contains(
                "quote_literal((nextval('plans_plan_id_seq'::regclass))::text) || '::integer'"
            ),
            "{sql}"
        );
        assert!(sql.contains("generate_series(1, 2)"), "{sql}");
        assert!(columns_sql(&insert(None, None)).contains("to_regclass('\"plans\"')"));
    }
}
