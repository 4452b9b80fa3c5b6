//! Aggregates and GROUP BY across shards. Each shard returns partial rows (its own count, sum,
//! min, max, and sum+count for each avg) in text format; the proxy then runs one final query on
//! the first shard's connection over those partial rows — passed as `text[]` parameters and
//! cast back to their types — so that PostgreSQL itself does the arithmetic (exact numeric
//! sums, avg's scale), the grouping (NULL keys together), the ORDER BY (with the database's
//! collation), LIMIT/OFFSET, and the output formatting in the client's result formats.
//!
//! The partial rows are the one part of a cross-shard read held whole in the proxy (every
//! shard's groups must be in before any final group is known): at most
//! `limits.max_buffered_result` bytes of them. The final query's rows stream to the client.

use std::collections::HashMap;
use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};
use shardgate_pool::ServerConn;
use shardgate_router::{AggregateKind, MergeSpec};
use shardgate_wire::row::{data_row_values, Field};
use shardgate_wire::{backend, frontend};

use super::collation::simple_query;
use super::compare::type_name;
use super::output::{ClientSink, Output};
use super::request::{write_bind, write_execute};
use super::shard::ShardStream;
use super::Stop;

/// OID of `text[]`.
const TEXT_ARRAY: u32 = 1009;

/// The partial rows of every shard, column by column (`None` = NULL).
pub(crate) struct Partials {
    columns: Vec<Vec<Option<Bytes>>>,
}

/// What one buffered value costs besides its bytes (the `Option<Bytes>` handle), so that
/// many tiny values count as what they take.
const VALUE_OVERHEAD: usize = std::mem::size_of::<Option<Bytes>>();

/// Reads every shard's partial rows (the shards were asked for text results), at most
/// `max_bytes` of them (`Stop::TooLarge` past it; the caller drains the shards).
pub(crate) async fn collect(
    streams: &mut [ShardStream<'_>],
    width: usize,
    max_bytes: usize,
) -> Result<Partials, Stop> {
    let mut columns: Vec<Vec<Option<Bytes>>> = vec![Vec::new(); width];
    let mut held = 0usize;
    for (i, s) in streams.iter_mut().enumerate() {
        while let Some(row) = s.next_row().await.map_err(|e| Stop::Server(i, e))? {
            let values = data_row_values(&row).map_err(Stop::protocol)?;
            if values.len() != width {
                return Err(Stop::protocol(
                    "a partial row does not match its description",
                ));
            }
            held = held.saturating_add(row.len() + width * VALUE_OVERHEAD);
            if held > max_bytes {
                return Err(Stop::TooLarge(format!(
                    "this cross-shard aggregate needs more than {max_bytes} bytes of the \
                     shards' partial groups in the proxy (limits.max_buffered_result)"
                )));
            }
            for (col, v) in columns.iter_mut().zip(values) {
                col.push(v);
            }
        }
        if s.error.is_some() {
            return Err(Stop::ShardFailed);
        }
    }
    Ok(Partials { columns })
}

/// SQL names for casts, for the types a proxy sees most; others are asked of the server.
fn cast_name(oid: u32) -> Option<&'static str> {
    Some(match oid {
        16 => "bool",
        17 => "bytea",
        18 => "\"char\"",
        19 => "name",
        20 => "int8",
        21 => "int2",
        23 => "int4",
        25 => "text",
        26 => "oid",
        700 => "float4",
        701 => "float8",
        1042 => "bpchar",
        1043 => "varchar",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1184 => "timestamptz",
        1186 => "interval",
        1266 => "timetz",
        1700 => "numeric",
        2950 => "uuid",
        _ => type_name(oid)?,
    })
}

/// Cast names for every column type, asking the server (`format_type`) for unusual ones.
async fn cast_names(conn: &mut ServerConn, fields: &[Field]) -> Result<Vec<String>, Stop> {
    let unknown: Vec<u32> = fields
        .iter()
        .map(|f| f.type_oid)
        .filter(|o| cast_name(*o).is_none())
        .collect();
    let mut looked_up = HashMap::new();
    if !unknown.is_empty() {
        let list: Vec<String> = unknown.iter().map(u32::to_string).collect();
        let sql = format!(
            "select t.oid::int8, format_type(t.oid, null) from pg_type t where t.oid in ({})",
            list.join(",")
        );
        let rows = simple_query(conn, &sql)
            .await
            .map_err(|e| Stop::Server(0, e))?
            .map_err(|e| {
                let message =
                    backend::error_fields(&e).map_or_else(|d| d.to_string(), |f| f.message);
                Stop::internal(format!("looking up result types: {message}"))
            })?;
        for r in rows {
            if let [Some(oid), Some(name)] = r.as_slice() {
                if let Ok(oid) = oid.parse::<u32>() {
                    looked_up.insert(oid, name.clone());
                }
            }
        }
    }
    fields
        .iter()
        .map(|f| {
            cast_name(f.type_oid)
                .map(str::to_owned)
                .or_else(|| looked_up.get(&f.type_oid).cloned())
                .ok_or_else(|| Stop::internal(format!("unknown result type OID {}", f.type_oid)))
        })
        .collect()
}

/// The clauses of the final query beyond the aggregation.
pub(crate) struct Tail {
    /// (0-based output column, descending, nulls first).
    pub order_by: Vec<(usize, bool, bool)>,
    pub limit: Option<u64>,
    pub offset: u64,
}

/// The final query over `unnest($1::text[], …) AS p(c1, …)`.
pub(crate) fn final_sql(
    spec: &MergeSpec,
    types: &[String],
    visible: usize,
    tail: &Tail,
) -> Result<String, Stop> {
    let width = types.len();
    let kind_of = |col: usize| {
        spec.aggregates
            .iter()
            .find(|a| a.column == col)
            .map(|a| &a.kind)
    };
    let grouped = !spec.group_by.is_empty();
    let mut select = Vec::with_capacity(visible);
    for (i, t) in types.iter().enumerate().take(visible) {
        let c = format!("c{}", i + 1);
        let e = match kind_of(i) {
            Some(AggregateKind::Count) => format!("coalesce(sum({c}::{t}), 0)::{t}"),
            Some(AggregateKind::Sum) => format!("sum({c}::{t})::{t}"),
            Some(AggregateKind::Min) => format!("min({c}::{t})"),
            Some(AggregateKind::Max) => format!("max({c}::{t})"),
            Some(AggregateKind::Avg {
                sum_column,
                count_column,
            }) => {
                let (Some(st), true) = (types.get(*sum_column), *count_column < width) else {
                    return Err(Stop::internal("avg's hidden columns are missing".into()));
                };
                // Float sums stay float (PostgreSQL's avg(float4) accumulates in float8).
                let st = if st == "float4" { "float8" } else { st };
                format!(
                    "(sum(c{s}::{st}) / nullif(sum(c{n}::int8), 0))::{t}",
                    s = sum_column + 1,
                    n = count_column + 1
                )
            }
            None if spec.group_by.contains(&i) => format!("{c}::{t}"),
            // Not aggregated, not grouped: constant within a group (e.g. functionally
            // dependent on the group key); any row's value will do.
            None => format!("(array_agg({c}))[1]::{t}"),
        };
        select.push(e);
    }
    let mut sql = format!("SELECT {} FROM unnest(", select.join(", "));
    let params: Vec<String> = (1..=width).map(|i| format!("${i}::text[]")).collect();
    let cols: Vec<String> = (1..=width).map(|i| format!("c{i}")).collect();
    let _ = write!(sql, "{}) AS p({})", params.join(", "), cols.join(", "));
    if grouped {
        let g: Vec<String> = spec.group_by.iter().map(|g| (g + 1).to_string()).collect();
        let _ = write!(sql, " GROUP BY {}", g.join(", "));
    }
    if !tail.order_by.is_empty() {
        let o: Vec<String> = tail
            .order_by
            .iter()
            .map(|(col, desc, nulls_first)| {
                format!(
                    "{}{}{}",
                    col + 1,
                    if *desc { " DESC" } else { "" },
                    if *nulls_first {
                        " NULLS FIRST"
                    } else {
                        " NULLS LAST"
                    }
                )
            })
            .collect();
        let _ = write!(sql, " ORDER BY {}", o.join(", "));
    }
    if let Some(l) = tail.limit {
        let _ = write!(sql, " LIMIT {l}");
    }
    if tail.offset > 0 {
        let _ = write!(sql, " OFFSET {}", tail.offset);
    }
    Ok(sql)
}

/// A one-dimensional `text[]` in PostgreSQL's binary array format.
pub(crate) fn text_array(values: &[Option<Bytes>]) -> Bytes {
    let mut b = BytesMut::with_capacity(
        20 + values
            .iter()
            .map(|v| 4 + v.as_ref().map_or(0, |v| v.len()))
            .sum::<usize>(),
    );
    let has_null = values.iter().any(Option::is_none);
    b.put_i32(if values.is_empty() { 0 } else { 1 });
    b.put_i32(i32::from(has_null));
    b.put_u32(25);
    if !values.is_empty() {
        b.put_i32(values.len() as i32);
        b.put_i32(1);
    }
    for v in values {
        frontend::put_value(&mut b, v.as_deref());
    }
    b.freeze()
}

/// The final query's inputs besides the partial rows.
pub(crate) struct Final<'a> {
    pub spec: &'a MergeSpec,
    /// The shards' full RowDescription (hidden columns included).
    pub fields: &'a [Field],
    /// Columns the client sees.
    pub visible: usize,
    pub tail: Tail,
    /// The client's result formats (the final query answers in them).
    pub result_formats: &'a [i16],
}

/// Runs the final query on `conn` (idle) and streams its DataRows (in the client's result
/// formats) to `out`; returns the row count. A failure of the query itself is `Stop::Final`
/// (it replaces the rows, or follows those already sent).
pub(crate) async fn run_final<C: ClientSink>(
    conn: &mut ServerConn,
    q: &Final<'_>,
    partials: Partials,
    out: &mut Output<'_, C>,
) -> Result<u64, Stop> {
    let types = cast_names(conn, q.fields).await?;
    let sql = final_sql(q.spec, &types, q.visible, &q.tail)?;
    tracing::debug!(%sql, rows = partials.columns.first().map_or(0, Vec::len), "combining partial aggregates");
    // The partial rows are copied into the parameters column by column, each column dropped
    // once copied, so the peak is about one copy plus one column.
    let mut params: Vec<Option<Bytes>> = Vec::with_capacity(partials.columns.len());
    for column in partials.columns {
        params.push(Some(text_array(&column)));
    }
    let mut msg = BytesMut::new();
    frontend::write_parse(
        &mut msg,
        "",
        sql.as_bytes(),
        &vec![TEXT_ARRAY; params.len()],
    );
    write_bind(&mut msg, &[1], &params, q.result_formats);
    drop(params);
    write_execute(&mut msg);
    frontend::write_sync(&mut msg);
    conn.write_all(&msg).await.map_err(|e| Stop::Server(0, e))?;
    drop(msg);
    let mut rows = 0u64;
    let mut error = None;
    loop {
        let frame = conn.read_frame().await.map_err(|e| Stop::Server(0, e))?;
        match frame.tag() {
            backend::DATA_ROW if error.is_none() => {
                rows += 1;
                out.buf().extend_from_slice(frame.as_bytes());
                if let Err(stop) = out.row_written().await {
                    // The client left: this connection is mid-result.
                    conn.mark_broken();
                    return Err(stop);
                }
            }
            backend::ERROR_RESPONSE => {
                error.get_or_insert(frame);
            }
            backend::READY_FOR_QUERY => break,
            backend::PARSE_COMPLETE
            | backend::BIND_COMPLETE
            | backend::COMMAND_COMPLETE
            | backend::NOTICE_RESPONSE
            | backend::PARAMETER_STATUS
            | backend::NOTIFICATION_RESPONSE => {}
            other => {
                conn.mark_broken();
                return Err(Stop::Server(
                    0,
                    shardgate_pool::ServerError::Protocol(format!(
                        "message '{}' in the final aggregate query",
                        char::from(other)
                    )),
                ));
            }
        }
    }
    match error {
        Some(e) => Err(Stop::Final(e)),
        None => Ok(rows),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_router::MergeAggregate;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn final_query_for_grouped_aggregates() {
        let spec = MergeSpec {
            group_by: vec![0],
            aggregates: vec![
                MergeAggregate {
                    column: 1,
                    kind: AggregateKind::Count,
                },
                MergeAggregate {
                    column: 2,
                    kind: AggregateKind::Avg {
                        sum_column: 3,
                        count_column: 4,
                    },
                },
            ],
            hidden_columns: 2,
            ..MergeSpec::default()
        };
        let tail = Tail {
            order_by: vec![(1, true, true)],
            limit: Some(3),
            offset: 1,
        };
        let sql = final_sql(
            &spec,
            &s(&["text", "int8", "numeric", "numeric", "int8"]),
            3,
            &tail,
        )
        .unwrap();
        assert_eq!(
            sql,
            "SELECT c1::text, coalesce(sum(c2::int8), 0)::int8, \
             (sum(c4::numeric) / nullif(sum(c5::int8), 0))::numeric \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
             AS p(c1, c2, c3, c4, c5) GROUP BY 1 ORDER BY 2 DESC NULLS FIRST LIMIT 3 OFFSET 1"
        );
    }

    #[test]
    fn ungrouped_min_max_sum_and_constants() {
        let spec = MergeSpec {
            aggregates: vec![
                MergeAggregate {
                    column: 0,
                    kind: AggregateKind::Min,
                },
                MergeAggregate {
                    column: 1,
                    kind: AggregateKind::Sum,
                },
            ],
            ..MergeSpec::default()
        };
        let tail = Tail {
            order_by: vec![],
            limit: None,
            offset: 0,
        };
        let sql = final_sql(&spec, &s(&["date", "numeric", "text"]), 3, &tail).unwrap();
        assert_eq!(
            sql,
            "SELECT min(c1::date), sum(c2::numeric)::numeric, (array_agg(c3))[1]::text \
             FROM unnest($1::text[], $2::text[], $3::text[]) AS p(c1, c2, c3)"
        );
    }

    #[test]
    fn text_arrays_in_binary_format() {
        let a = text_array(&[Some(Bytes::from("ab")), None]);
        assert_eq!(
            &a[..],
            &[
                0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 25, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, b'a',
                b'b', 0xff, 0xff, 0xff, 0xff
            ]
        );
        assert_eq!(&text_array(&[])[..], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 25]);
    }
}
