//! The body of one cross-shard read once every shard has its statement: read the shards'
//! first replies, check they agree, write the replies the client expects before the rows, then
//! the rows — merged by [`merge`](super::merge) or re-aggregated by
//! [`combine`](super::combine) — and the CommandComplete.

use bytes::BytesMut;
use shardgate_router::{MergeSpec, SortColumn};
use shardgate_wire::row::{row_description, write_row_description, Field};
use shardgate_wire::{backend, Frame};
use tracing::debug;

use super::collation::Collation;
use super::compare::{self, Direction};
use super::merge::{self, RowPlan, SortColumnPlan};
use super::output::{ClientSink, Output};
use super::shard::{join_all, ShardStream};
use super::{combine, ScatterRequest, Stop};

/// Everything one merge needs to know.
pub(crate) struct Ctx<'r> {
    pub request: &'r ScatterRequest,
    pub spec: &'r MergeSpec,
    pub combine: bool,
    pub limit: Option<u64>,
    pub offset: u64,
    /// The first server's database collation, asked when the rows are merge-sorted.
    pub collation: Option<Collation>,
    /// `limits.max_buffered_result`.
    pub max_buffered: usize,
}

impl Ctx<'_> {
    /// Reads the preludes, then streams the client's replies and the merged rows to `out`.
    /// Everything that can refuse the statement is decided before the first row. Returns the
    /// row plan and the rows written when rows were merged (not re-aggregated), for a held
    /// portal to go on with.
    pub(crate) async fn merge<C: ClientSink>(
        &self,
        streams: &mut [ShardStream<'_>],
        out: &mut Output<'_, C>,
    ) -> Result<Option<(RowPlan, u64)>, Stop> {
        let preludes = join_all(streams.iter_mut().map(|s| s.read_prelude()).collect()).await;
        for (i, p) in preludes.into_iter().enumerate() {
            p.map_err(|e| Stop::Server(i, e))?;
        }
        if streams.iter().any(|s| s.error.is_some()) {
            return Err(Stop::ShardFailed);
        }
        let description = |s: &ShardStream<'_>| -> Result<Option<Vec<Field>>, Stop> {
            match s.prelude.last() {
                Some(f) if f.tag() == backend::ROW_DESCRIPTION => {
                    row_description(f).map(Some).map_err(Stop::protocol)
                }
                _ => Ok(None),
            }
        };
        let Some(fields) = description(&streams[0])? else {
            // No rows to merge (NoData, an empty query): pass the first shard's replies on.
            self.write_prelude(&streams[0], None, out.buf())?;
            if let Some(c) = &streams[0].completion {
                out.buf().extend_from_slice(c.as_bytes());
            }
            return Ok(None);
        };
        for s in streams.iter().skip(1) {
            let theirs = description(s)?.unwrap_or_default();
            let types = |f: &[Field]| f.iter().map(|f| f.type_oid).collect::<Vec<_>>();
            if types(&theirs) != types(&fields) {
                return Err(Stop::internal(format!(
                    "shards {} and {} return different columns (is the schema the same on every shard?)",
                    streams[0].name, s.name
                )));
            }
        }
        let visible = fields.len().saturating_sub(self.spec.hidden_columns);
        let mut merged = None;
        let rows = if self.combine {
            self.write_prelude(&streams[0], Some((&fields, visible)), out.buf())?;
            let partials = combine::collect(streams, fields.len(), self.max_buffered).await?;
            let finished = join_all(streams.iter_mut().map(|s| s.finish()).collect()).await;
            for (i, r) in finished.into_iter().enumerate() {
                r.map_err(|e| Stop::Server(i, e))?;
            }
            if streams.iter().any(|s| s.error.is_some()) {
                return Err(Stop::ShardFailed);
            }
            let tail = combine::Tail {
                order_by: self
                    .sort_columns(&fields[..visible])?
                    .into_iter()
                    .map(|(i, d)| (i, d.descending, d.nulls_first))
                    .collect(),
                limit: self.client_limit(),
                offset: self.offset,
            };
            let query = combine::Final {
                spec: self.spec,
                fields: &fields,
                visible,
                tail,
                result_formats: self.client_result_formats(),
            };
            combine::run_final(streams[0].conn, &query, partials, out).await?
        } else {
            let mut sort = Vec::new();
            for (index, direction) in self.sort_columns(&fields[..visible])? {
                let f = &fields[index];
                if !compare::is_sortable(f.type_oid) {
                    let t = compare::type_name(f.type_oid)
                        .map_or_else(|| format!("with OID {}", f.type_oid), str::to_owned);
                    return Err(Stop::unsupported(format!(
                        "ORDER BY on column \"{}\" of type {t} across shards is not supported",
                        f.name
                    )));
                }
                if compare::is_collatable(f.type_oid) {
                    if let Some(Collation::Other(c)) = &self.collation {
                        return Err(Stop::unsupported(format!(
                            "ORDER BY on a text column ({}) across shards needs a C collation \
                             (database collation is {c}); add the shard key or sort in the \
                             application",
                            f.name
                        )));
                    }
                }
                sort.push(SortColumnPlan {
                    index,
                    type_oid: f.type_oid,
                    format: f.format,
                    direction,
                });
            }
            let plan = RowPlan {
                sort,
                offset: self.offset,
                limit: self.client_limit(),
                visible,
            };
            self.write_prelude(&streams[0], Some((&fields, visible)), out.buf())?;
            let rows = merge::merge_rows(streams, &plan, out).await?;
            merged = Some((plan, rows));
            rows
        };
        debug!(rows, shards = streams.len(), "cross-shard read merged");
        if self.request.row_limit() == Some(rows) {
            // As PostgreSQL: an Execute that returned exactly its row limit is suspended.
            out.buf()
                .extend_from_slice(&[backend::PORTAL_SUSPENDED, 0, 0, 0, 4]);
        } else {
            backend::write_command_complete(out.buf(), &format!("SELECT {rows}"));
        }
        Ok(merged)
    }

    /// The statement's LIMIT, lowered to the Execute's row limit.
    fn client_limit(&self) -> Option<u64> {
        match (self.limit, self.request.row_limit()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The ORDER BY columns as (0-based visible column, direction).
    fn sort_columns(&self, fields: &[Field]) -> Result<Vec<(usize, Direction)>, Stop> {
        self.spec
            .order_by
            .iter()
            .map(|k| {
                let index = match &k.column {
                    SortColumn::Position(p) if *p < fields.len() => *p,
                    SortColumn::Position(p) => {
                        return Err(Stop::unsupported(format!(
                            "ORDER BY position {} is not in the result",
                            p + 1
                        )))
                    }
                    SortColumn::Name(n) => {
                        fields.iter().position(|f| f.name == *n).ok_or_else(|| {
                            Stop::unsupported(format!(
                            "ORDER BY {n}: no result column of that name to merge the shards by"
                        ))
                        })?
                    }
                };
                Ok((
                    index,
                    Direction {
                        descending: k.descending,
                        nulls_first: k.nulls_first,
                    },
                ))
            })
            .collect()
    }

    fn client_result_formats(&self) -> &[i16] {
        match self.request {
            ScatterRequest::Simple { .. } => &[],
            ScatterRequest::Extended { result_formats, .. } => result_formats,
        }
    }

    /// The replies before the rows, as the client expects them, from the first shard's.
    /// `described` is the portal's (or simple query's) fields and the visible count.
    fn write_prelude(
        &self,
        first: &ShardStream<'_>,
        described: Option<(&[Field], usize)>,
        out: &mut BytesMut,
    ) -> Result<(), Stop> {
        let hidden = self.spec.hidden_columns;
        // A RowDescription without the hidden columns (and, when the shards were asked for
        // text, the formats the client asked for).
        let strip =
            |frame: &Frame, formats: Option<&[i16]>, out: &mut BytesMut| -> Result<(), Stop> {
                if frame.tag() != backend::ROW_DESCRIPTION {
                    out.extend_from_slice(frame.as_bytes());
                    return Ok(());
                }
                let mut fields = row_description(frame).map_err(Stop::protocol)?;
                fields.truncate(fields.len().saturating_sub(hidden));
                if let Some(formats) = formats {
                    for (i, f) in fields.iter_mut().enumerate() {
                        f.format = result_format(formats, i);
                    }
                }
                write_row_description(out, &fields);
                Ok(())
            };
        let ScatterRequest::Extended {
            client_sent_parse,
            client_describe,
            ..
        } = self.request
        else {
            if let Some((fields, visible)) = described {
                write_row_description(out, &fields[..visible]);
            } else if let Some(f) = first.prelude.last() {
                out.extend_from_slice(f.as_bytes());
            }
            return Ok(());
        };
        // The replies in the order of tokio-postgres' one-batch query (Parse, Bind,
        // Describe statement or portal, Execute): ParseComplete, BindComplete, then the
        // description. (The shards were sent Describe statement before Bind; their order is
        // not the client's.)
        if *client_sent_parse {
            backend::write_parse_complete(out);
        }
        out.extend_from_slice(&[backend::BIND_COMPLETE, 0, 0, 0, 4]);
        match client_describe {
            Some(b'S') => {
                if let Some(p) = first.prelude_reply(backend::PARAMETER_DESCRIPTION, 0) {
                    out.extend_from_slice(p.as_bytes());
                }
                if let Some(d) = first
                    .prelude
                    .iter()
                    .find(|f| matches!(f.tag(), backend::ROW_DESCRIPTION | backend::NO_DATA))
                {
                    strip(d, None, out)?;
                }
            }
            Some(b'P') => {
                if let Some(d) = first.prelude.last() {
                    let formats = self.combine.then(|| self.client_result_formats());
                    strip(d, formats, out)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The format code of result column `i` under Bind result-format codes `formats` (none = all
/// text, one = all that one, else one per column).
fn result_format(formats: &[i16], i: usize) -> i16 {
    match formats {
        [] => 0,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(0),
    }
}
