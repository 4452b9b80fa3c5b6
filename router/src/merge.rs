//! Cross-shard reads: whether the rows of several shards can be merged into the right answer
//! by a proxy that concatenates, merge-sorts, applies LIMIT/OFFSET and re-aggregates
//! count/sum/min/max/avg per GROUP BY group — and if so, a [`MergeSpec`] saying how.
//!
//! The rule is "never a wrong result": DISTINCT, HAVING, window functions, other aggregates,
//! set operations, ORDER BY / GROUP BY on something that is not an output column, and
//! expressions over aggregates are refused (the reason becomes a 0A000 error at routing).

use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, Expr, Function, FunctionArguments, GroupByExpr, Ident, LimitClause, ObjectName,
    ObjectNamePart, OrderByKind, Query, Select, SelectItem, SetExpr, SetOperator, Value, Visit,
};

/// What a read has that no merge in the proxy answers exactly; the text completes
/// "… is not supported across shards".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MergeError {
    #[error("{} over sharded tables", .0.to_string().to_uppercase())]
    SetOperation(SetOperator),
    #[error("a parenthesised or VALUES query over sharded tables")]
    NotASelect,
    #[error("DISTINCT")]
    Distinct,
    #[error("HAVING")]
    Having,
    #[error("window functions")]
    Window,
    #[error("{0}(DISTINCT …)")]
    DistinctAggregate(String),
    #[error("the ordered-set aggregate {0}")]
    OrderedSetAggregate(String),
    #[error("the aggregate {0} (only count, sum, min, max and avg merge)")]
    OtherAggregate(String),
    #[error("an expression over aggregates (select the aggregate itself)")]
    OverAggregates,
    #[error("GROUP BY ALL")]
    GroupByAll,
    #[error("GROUP BY with ROLLUP/CUBE/GROUPING SETS")]
    GroupingSets,
    #[error("GROUP BY an expression that is not in the select list")]
    GroupByNotSelected,
    #[error("aggregates with `*` in the select list")]
    AggregatesWithWildcard,
    #[error("ORDER BY ALL")]
    OrderByAll,
    #[error("ORDER BY … USING")]
    OrderByUsing,
    #[error("ORDER BY an expression that is not in the select list")]
    OrderByNotSelected,
    #[error("LIMIT BY")]
    LimitBy,
    #[error("a LIMIT that is not a number or a parameter")]
    BadLimit,
    #[error("an OFFSET that is not a number or a parameter")]
    BadOffset,
    #[error("LIMIT offset, count")]
    OffsetCommaLimit,
    #[error("FETCH … WITH TIES / PERCENT")]
    FetchWithTies,
    #[error("a FETCH count that is not a number or a parameter")]
    BadFetch,
    #[error("FOR UPDATE/SHARE with LIMIT/OFFSET (it would lock rows it does not return)")]
    LockWithLimit,
    /// A COPY (query) is merged by concatenation only.
    #[error("COPY (query) with ORDER BY, LIMIT or aggregates")]
    CopyNotConcatenation,
}

/// How the proxy merges the result sets of a read that ran on several shards.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MergeSpec {
    /// Sort keys, most significant first; empty = concatenate in any order.
    pub order_by: Vec<SortKey>,
    /// Rows to skip after merging (the shards do not skip them; see `shard_sql`).
    pub offset: Option<RowCount>,
    /// Rows to return after the offset.
    pub limit: Option<RowCount>,
    /// Output columns (0-based) that form the GROUP BY key. With aggregates and no group
    /// columns all rows fold into one.
    pub group_by: Vec<usize>,
    /// Output columns holding aggregates, and how to combine the shards' values. Other
    /// columns of a grouped result are constant within a group: take any row's value.
    pub aggregates: Vec<MergeAggregate>,
    /// The statement to send to every shard when it must differ from the client's: OFFSET
    /// folded into LIMIT, and hidden `sum`/`count` columns appended for each `avg`.
    pub shard_sql: Option<String>,
    /// Trailing columns of `shard_sql`'s rows the client must not see.
    pub hidden_columns: usize,
    /// The statement groups by the shard key of its one sharded table: every group lies on one
    /// shard, so the shards' grouped rows are final and are only merged (no re-aggregation).
    pub grouped_on_shards: bool,
}

impl MergeSpec {
    /// Plain concatenation is enough.
    pub fn is_concatenation(&self) -> bool {
        self.order_by.is_empty()
            && self.offset.is_none()
            && self.limit.is_none()
            && self.group_by.is_empty()
            && self.aggregates.is_empty()
    }

    /// Whether every shard's LIMIT keeps each group it returns whole (always true without
    /// grouping or LIMIT): the ORDER BY must put all the group columns first, so that a group
    /// in the global top N is in each shard's top N.
    pub fn limit_keeps_groups_whole(&self) -> bool {
        if self.limit.is_none() || (self.group_by.is_empty() && self.aggregates.is_empty()) {
            return true;
        }
        if self.group_by.is_empty() {
            return true;
        }
        let mut covered = std::collections::HashSet::new();
        for key in &self.order_by {
            let SortColumn::Position(p) = key.column else {
                return false;
            };
            if !self.group_by.contains(&p) {
                return false;
            }
            covered.insert(p);
            if self.group_by.iter().all(|g| covered.contains(g)) {
                return true;
            }
        }
        false
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub column: SortColumn,
    pub descending: bool,
    /// PostgreSQL's default: NULLS LAST for ascending, NULLS FIRST for descending.
    pub nulls_first: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortColumn {
    /// 0-based output column.
    Position(usize),
    /// An output column found by name in RowDescription (the select list has a `*`).
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowCount {
    Value(u64),
    /// Parameter `$n`.
    Param(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeAggregate {
    pub column: usize,
    pub kind: AggregateKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AggregateKind {
    /// Sum of the shards' counts.
    Count,
    Sum,
    Min,
    Max,
    /// Σ sum / Σ count over the hidden columns of `shard_sql` (NULL when the count is 0).
    Avg {
        sum_column: usize,
        count_column: usize,
    },
}

const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "bit_xor",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "mode",
    "percentile_cont",
    "percentile_disc",
    "xmlagg",
    "range_agg",
    "range_intersect_agg",
    "any_value",
    "json_arrayagg",
    "json_objectagg",
];

pub(crate) fn function_name(name: &ObjectName) -> String {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(id)) => id.value.to_lowercase(),
        Some(ObjectNamePart::Function(f)) => f.name.value.to_lowercase(),
        None => String::new(),
    }
}

fn is_aggregate(f: &Function) -> bool {
    AGGREGATES.contains(&function_name(&f.name).as_str())
        || !f.within_group.is_empty()
        || f.filter.is_some()
}

/// Finds function calls at the level of the visited node, not inside nested queries (a
/// scalar subquery's `count(*)` is not an aggregate of the outer query).
struct CallFinder<F: Fn(&Function) -> bool> {
    depth: usize,
    wanted: F,
}

impl<F: Fn(&Function) -> bool> sqlparser::ast::Visitor for CallFinder<F> {
    type Break = ();

    fn pre_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        match e {
            Expr::Function(f) if self.depth == 0 && (self.wanted)(f) => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    }
}

fn has_call<V: Visit>(v: &V, wanted: impl Fn(&Function) -> bool) -> bool {
    v.visit(&mut CallFinder { depth: 0, wanted }).is_break()
}

/// Whether `v` calls an aggregate or window function (outside nested queries).
pub(crate) fn has_aggregate_or_window<V: Visit>(v: &V) -> bool {
    has_call(v, |f| f.over.is_some() || is_aggregate(f))
}

fn has_window<V: Visit>(v: &V) -> bool {
    has_call(v, |f| f.over.is_some())
}

fn mergeable_kind(f: &Function) -> Result<Option<&'static str>, MergeError> {
    let name = function_name(&f.name);
    if !is_aggregate(f) {
        return Ok(None);
    }
    if let FunctionArguments::List(l) = &f.args {
        if l.duplicate_treatment == Some(sqlparser::ast::DuplicateTreatment::Distinct) {
            return Err(MergeError::DistinctAggregate(name));
        }
    }
    if !f.within_group.is_empty() {
        return Err(MergeError::OrderedSetAggregate(name));
    }
    match name.as_str() {
        "count" => Ok(Some("count")),
        "sum" => Ok(Some("sum")),
        "min" => Ok(Some("min")),
        "max" => Ok(Some("max")),
        "avg" => Ok(Some("avg")),
        _ => Err(MergeError::OtherAggregate(name)),
    }
}

fn position_literal(e: &Expr) -> Option<usize> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse::<usize>().ok().filter(|p| *p >= 1).map(|p| p - 1),
            _ => None,
        },
        _ => None,
    }
}

fn row_count(e: &Expr) -> Option<RowCount> {
    match e {
        Expr::Nested(inner) => row_count(inner),
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok().map(RowCount::Value),
            Value::Placeholder(p) => p
                .strip_prefix('$')
                .and_then(|n| n.parse().ok())
                .map(RowCount::Param),
            _ => None,
        },
        _ => None,
    }
}

/// Output column of an ORDER BY / GROUP BY expression: a position, an output alias, or the
/// same expression (or the same column name) as a select-list item.
fn output_column(e: &Expr, items: &[SelectItem]) -> Option<usize> {
    if let Some(p) = position_literal(e) {
        return (p < items.len()).then_some(p);
    }
    let text = e.to_string();
    let last_name = |e: &Expr| match e {
        Expr::Identifier(id) => Some(id.value.to_lowercase()),
        Expr::CompoundIdentifier(ids) => ids.last().map(|i| i.value.to_lowercase()),
        _ => None,
    };
    if let Expr::Identifier(id) = e {
        let name = id.value.to_lowercase();
        let alias = items.iter().position(|i| match i {
            SelectItem::ExprWithAlias { alias, .. } => alias.value.to_lowercase() == name,
            _ => false,
        });
        if alias.is_some() {
            return alias;
        }
    }
    items.iter().position(|i| match i {
        SelectItem::UnnamedExpr(x) | SelectItem::ExprWithAlias { expr: x, .. } => {
            x.to_string() == text || (last_name(x).is_some() && last_name(x) == last_name(e))
        }
        _ => false,
    })
}

fn agg_of(item: &SelectItem) -> Option<&Function> {
    match item {
        SelectItem::UnnamedExpr(Expr::Function(f))
        | SelectItem::ExprWithAlias {
            expr: Expr::Function(f),
            ..
        } => Some(f),
        _ => None,
    }
}

/// How to merge a read that may run on several shards, or why it cannot be merged.
pub(crate) fn merge_spec(q: &Query) -> Result<MergeSpec, MergeError> {
    let s: &Select = match &*q.body {
        SetExpr::Select(s) => s,
        SetExpr::SetOperation { op, .. } => return Err(MergeError::SetOperation(*op)),
        _ => return Err(MergeError::NotASelect),
    };
    if s.distinct.is_some() {
        return Err(MergeError::Distinct);
    }
    if s.having.is_some() {
        return Err(MergeError::Having);
    }
    if has_window(&s.projection) || !s.named_window.is_empty() || has_window(&q.order_by) {
        return Err(MergeError::Window);
    }
    let items = &s.projection;
    let wildcard = items.iter().any(|i| {
        matches!(
            i,
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
        )
    });
    let mut spec = MergeSpec::default();
    let mut avgs = Vec::new();
    for (col, item) in items.iter().enumerate() {
        if let Some(f) = agg_of(item) {
            if let Some(kind) = mergeable_kind(f)? {
                let kind = match kind {
                    "count" => AggregateKind::Count,
                    "sum" => AggregateKind::Sum,
                    "min" => AggregateKind::Min,
                    "max" => AggregateKind::Max,
                    _ => {
                        avgs.push((col, f.clone()));
                        continue;
                    }
                };
                spec.aggregates.push(MergeAggregate { column: col, kind });
                continue;
            }
        }
        if has_aggregate_or_window(item) {
            return Err(MergeError::OverAggregates);
        }
    }
    let grouped = match &s.group_by {
        GroupByExpr::All(_) => return Err(MergeError::GroupByAll),
        GroupByExpr::Expressions(exprs, mods) => {
            if !mods.is_empty() {
                return Err(MergeError::GroupingSets);
            }
            for e in exprs {
                if matches!(e, Expr::GroupingSets(_) | Expr::Cube(_) | Expr::Rollup(_)) {
                    return Err(MergeError::GroupingSets);
                }
                let col = output_column(e, items)
                    .filter(|_| !wildcard)
                    .ok_or(MergeError::GroupByNotSelected)?;
                spec.group_by.push(col);
            }
            !exprs.is_empty()
        }
    };
    if (grouped || !spec.aggregates.is_empty() || !avgs.is_empty()) && wildcard {
        return Err(MergeError::AggregatesWithWildcard);
    }
    if let Some(ob) = &q.order_by {
        let OrderByKind::Expressions(exprs) = &ob.kind else {
            return Err(MergeError::OrderByAll);
        };
        for o in exprs {
            if matches!(o.options.sort, Some(sqlparser::ast::OrderBySort::Using(_))) {
                return Err(MergeError::OrderByUsing);
            }
            let descending = matches!(o.options.sort, Some(sqlparser::ast::OrderBySort::Desc));
            // A position (`ORDER BY 1`) counts output columns, which `*` expands: with a
            // wildcard it is still a position (checked against the RowDescription when
            // merging), while names are looked up in the RowDescription.
            let column = match output_column(&o.expr, items) {
                Some(p) if !wildcard => SortColumn::Position(p),
                _ if wildcard && position_literal(&o.expr).is_some() => {
                    SortColumn::Position(position_literal(&o.expr).unwrap_or_default())
                }
                _ => match (&o.expr, wildcard) {
                    (Expr::Identifier(id), true) => SortColumn::Name(id.value.to_lowercase()),
                    (Expr::CompoundIdentifier(ids), true) if !grouped => SortColumn::Name(
                        ids.last()
                            .map(|i| i.value.to_lowercase())
                            .unwrap_or_default(),
                    ),
                    _ => return Err(MergeError::OrderByNotSelected),
                },
            };
            spec.order_by.push(SortKey {
                column,
                descending,
                nulls_first: o.options.nulls_first.unwrap_or(descending),
            });
        }
    }
    let mut offset_expr = None;
    match &q.limit_clause {
        None => {}
        Some(LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        }) => {
            if !limit_by.is_empty() {
                return Err(MergeError::LimitBy);
            }
            if let Some(l) = limit {
                if !matches!(l, Expr::Value(v) if v.value == Value::Null) {
                    spec.limit = Some(row_count(l).ok_or(MergeError::BadLimit)?);
                }
            }
            if let Some(o) = offset {
                spec.offset = Some(row_count(&o.value).ok_or(MergeError::BadOffset)?);
                offset_expr = Some(o.value.clone());
            }
        }
        Some(LimitClause::OffsetCommaLimit { .. }) => return Err(MergeError::OffsetCommaLimit),
    }
    if let Some(f) = &q.fetch {
        if f.with_ties || f.percent {
            return Err(MergeError::FetchWithTies);
        }
        let n = f
            .quantity
            .as_ref()
            .map_or(Some(RowCount::Value(1)), row_count);
        spec.limit = Some(n.ok_or(MergeError::BadFetch)?);
    }
    if !q.locks.is_empty() && (spec.limit.is_some() || spec.offset.is_some()) {
        return Err(MergeError::LockWithLimit);
    }
    if offset_expr.is_some() || !avgs.is_empty() {
        spec.shard_sql = Some(shard_query(q, items.len(), &avgs, offset_expr, &mut spec));
    }
    Ok(spec)
}

/// The per-shard text: hidden sum/count per avg, OFFSET dropped and added to LIMIT.
fn shard_query(
    q: &Query,
    width: usize,
    avgs: &[(usize, Function)],
    offset: Option<Expr>,
    spec: &mut MergeSpec,
) -> String {
    let mut q = q.clone();
    if let SetExpr::Select(s) = &mut *q.body {
        for (i, (col, f)) in avgs.iter().enumerate() {
            let mut sum = f.clone();
            sum.name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new("sum"))]);
            let mut count = f.clone();
            count.name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new("count"))]);
            s.projection
                .push(SelectItem::UnnamedExpr(Expr::Function(sum)));
            s.projection
                .push(SelectItem::UnnamedExpr(Expr::Function(count)));
            spec.aggregates.push(MergeAggregate {
                column: *col,
                kind: AggregateKind::Avg {
                    sum_column: width + 2 * i,
                    count_column: width + 2 * i + 1,
                },
            });
        }
        spec.hidden_columns = 2 * avgs.len();
        spec.aggregates.sort_by_key(|a| a.column);
    }
    if let Some(off) = offset {
        if let Some(LimitClause::LimitOffset { limit, offset, .. }) = &mut q.limit_clause {
            *offset = None;
            if let Some(l) = limit {
                *l = match (row_count(l), row_count(&off)) {
                    (Some(RowCount::Value(a)), Some(RowCount::Value(b))) => {
                        Expr::value(Value::Number(a.saturating_add(b).to_string(), false))
                    }
                    _ => Expr::Nested(Box::new(Expr::BinaryOp {
                        left: Box::new(l.clone()),
                        op: BinaryOperator::Plus,
                        right: Box::new(off),
                    })),
                };
            }
        }
    }
    q.to_string()
}
