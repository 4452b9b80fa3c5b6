//! The third strategy for a cross-shard read, after push-down and merging in the proxy:
//! gather the rows of the sharded relations it reads into temporary tables on one
//! coordinating connection and run the statement there, so PostgreSQL itself computes the
//! answer (DISTINCT, windows, HAVING, set operations, any aggregate, joins not on the key…).
//!
//! The router prepares the text: every reference to a sharded table becomes
//! `pg_temp.<table>` (exact whatever the client's search_path, and schema-qualified names
//! included), and each sharded table gets the `SELECT` its shards answer and the `LIKE` source
//! its temporary copy is created from. Running it is the proxy's (`proxy::gather`).

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, InTarget, ObjectName, Query, SetExpr, Statement, TableFactor, Value, Visit, Visitor,
};
use sqlparser::tokenizer::Location;

use crate::rules::{name_parts, Rules};
use crate::text::{code_tokens, Tok, TokKind};

/// How a read is gathered into PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatherSpec {
    /// Why neither push-down nor a merge in the proxy answers it exactly.
    pub reason: String,
    /// The sharded tables it reads, each once.
    pub relations: Vec<GatherRelation>,
    /// The client's statement with every sharded table reference made `pg_temp.<table>`.
    pub sql: String,
}

/// One sharded table of a gathered read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatherRelation {
    /// The table as the client wrote it (`orders`, `public.orders`, `"Orders"`): the source
    /// of the temporary table's columns (`LIKE`) and of the rows the shards send.
    pub source: String,
    /// The temporary table's name as SQL (the last part of `source`, quoted as written).
    pub temp: String,
    /// The query every shard answers with its rows of the table.
    pub fetch_sql: String,
}

/// Why a read cannot be gathered (only logged: the read is refused for its first reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum GatherError {
    #[error("only a SELECT can be gathered")]
    NotSelect,
    #[error("a CTE named like the sharded table {0} in a statement that needs gathering")]
    CteNamedLikeTable(String),
    #[error("a sharded table reference shardgate cannot locate in the text")]
    NotInText,
    #[error("a sharded table reference shardgate cannot locate")]
    NotInTokens,
    #[error("sharded tables named {0} in different schemas in one statement")]
    SameNameInSchemas(String),
    #[error("no sharded table found to gather")]
    NoShardedTable,
    #[error("overlapping table references")]
    Overlapping,
}

/// The gather plan for the single statement `st` of `sql`, or why it cannot be gathered.
pub(crate) fn gather_spec(
    sql: &str,
    st: &Statement,
    rules: &Rules,
    reason: String,
) -> Result<GatherSpec, GatherError> {
    let Statement::Query(q) = st else {
        return Err(GatherError::NotSelect);
    };
    let ctes = cte_names(q);
    let mut names: Vec<ObjectName> = Vec::new();
    let _ = sqlparser::ast::visit_relations(st, |n| {
        if rules.lookup(n).is_some() {
            names.push(n.clone());
        }
        ControlFlow::<()>::Continue(())
    });
    let toks = code_tokens(sql);
    let lines = line_starts(sql);
    let mut relations: Vec<GatherRelation> = Vec::new();
    // (byte range in `sql`, replacement)
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    for name in &names {
        let parts = name_parts(name);
        let last = parts.last().cloned().unwrap_or_default();
        if ctes.contains(&last) {
            return Err(GatherError::CteNamedLikeTable(last));
        }
        let first = name
            .0
            .first()
            .and_then(|p| p.as_ident())
            .ok_or(GatherError::NotInText)?;
        let start = offset_of(sql, &lines, first.span.start).ok_or(GatherError::NotInText)?;
        let (range, idents) =
            name_tokens(sql, &toks, start, parts.len()).ok_or(GatherError::NotInTokens)?;
        let source = sql[range.clone()].to_owned();
        let temp = idents.last().cloned().unwrap_or_default();
        match relations.iter().find(|r| fold(&r.temp) == last) {
            Some(r) if fold_name(&r.source) != fold_name(&source) && parts.len() > 1 => {
                return Err(GatherError::SameNameInSchemas(last));
            }
            Some(_) => {}
            None => relations.push(GatherRelation {
                fetch_sql: format!("SELECT * FROM {source}"),
                source: source.clone(),
                temp: temp.clone(),
            }),
        }
        edits.push((range, format!("pg_temp.{temp}")));
    }
    if relations.is_empty() {
        return Err(GatherError::NoShardedTable);
    }
    if let ([relation], [_]) = (relations.as_mut_slice(), names.as_slice()) {
        if let Some(filter) = pushed_filter(q) {
            relation.fetch_sql = format!("SELECT * FROM {} {filter}", relation.source);
        }
    }
    edits.sort_by_key(|(r, _)| r.start);
    edits.dedup_by_key(|(r, _)| r.start);
    let mut out = String::with_capacity(sql.len() + 16 * edits.len());
    let mut at = 0;
    for (range, text) in edits {
        if range.start < at {
            return Err(GatherError::Overlapping);
        }
        out.push_str(&sql[at..range.start]);
        out.push_str(&text);
        at = range.end;
    }
    out.push_str(&sql[at..]);
    Ok(GatherSpec {
        reason,
        relations,
        sql: out,
    })
}

/// For a SELECT over one sharded table alone (no join, no CTE, no set operation) whose WHERE
/// is made of columns, literals and operators only (no function, subquery or parameter): that
/// WHERE with the table's alias, for the shards to apply before sending rows. Rows it removes
/// cannot reach any aggregate, window, DISTINCT or output, since WHERE is applied first.
fn pushed_filter(q: &Query) -> Option<String> {
    if q.with.is_some() {
        return None;
    }
    let SetExpr::Select(select) = &*q.body else {
        return None;
    };
    let ([from], Some(selection)) = (select.from.as_slice(), &select.selection) else {
        return None;
    };
    if !from.joins.is_empty() {
        return None;
    }
    let TableFactor::Table {
        alias, args: None, ..
    } = &from.relation
    else {
        return None;
    };
    if alias.as_ref().is_some_and(|a| !a.columns.is_empty()) {
        return None;
    }
    struct Plain(bool);
    impl Visitor for Plain {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            let ok = match e {
                Expr::Value(v) => !matches!(v.value, Value::Placeholder(_)),
                Expr::In { target, .. } => matches!(target, InTarget::List(_)),
                Expr::Identifier(_)
                | Expr::CompoundIdentifier(_)
                | Expr::BinaryOp { .. }
                | Expr::UnaryOp { .. }
                | Expr::Nested(_)
                | Expr::IsNull(_)
                | Expr::IsNotNull(_)
                | Expr::IsTrue(_)
                | Expr::IsFalse(_)
                | Expr::IsNotTrue(_)
                | Expr::IsNotFalse(_)
                | Expr::IsDistinctFrom(..)
                | Expr::IsNotDistinctFrom(..)
                | Expr::Between { .. }
                | Expr::Like { .. }
                | Expr::ILike { .. } => true,
                _ => false,
            };
            if ok {
                ControlFlow::Continue(())
            } else {
                self.0 = false;
                ControlFlow::Break(())
            }
        }
    }
    let mut plain = Plain(true);
    let _ = selection.visit(&mut plain);
    if !plain.0 {
        return None;
    }
    let alias = alias
        .as_ref()
        .map_or(String::new(), |a| format!("AS {} ", a.name));
    Some(format!("{alias}WHERE {selection}"))
}

/// Names of every CTE in the query, folded.
fn cte_names(q: &Query) -> HashSet<String> {
    struct Ctes(HashSet<String>);
    impl Visitor for Ctes {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            if let Some(with) = &query.with {
                for cte in &with.cte_tables {
                    self.0.insert(crate::rules::norm(&cte.alias.name));
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut v = Ctes(HashSet::new());
    let _ = q.visit(&mut v);
    v.0
}

fn line_starts(sql: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

/// Byte offset of a 1-based (line, column in characters) location.
fn offset_of(sql: &str, lines: &[usize], loc: Location) -> Option<usize> {
    let line_start = *lines.get(usize::try_from(loc.line).ok()?.checked_sub(1)?)?;
    let col = usize::try_from(loc.column).ok()?.checked_sub(1)?;
    let rest = &sql[line_start..];
    let off = if col == 0 {
        0
    } else {
        rest.char_indices().nth(col).map_or(rest.len(), |(i, _)| i)
    };
    (off <= rest.len()).then_some(line_start + off)
}

/// The tokens of a dotted name of `parts` parts starting at byte `start`: its byte range and
/// each part's text.
fn name_tokens(
    sql: &str,
    toks: &[Tok],
    start: usize,
    parts: usize,
) -> Option<(std::ops::Range<usize>, Vec<String>)> {
    let i = toks.iter().position(|t| t.range.start == start)?;
    let mut idents = Vec::new();
    let mut j = i;
    loop {
        let t = toks.get(j)?;
        let text = &sql[t.range.clone()];
        let ident = match t.kind {
            TokKind::Word => true,
            TokKind::Quoted => text.starts_with('"'),
            _ => false,
        };
        if !ident {
            return None;
        }
        idents.push(text.to_owned());
        if idents.len() == parts {
            return Some((start..t.range.end, idents));
        }
        let dot = toks.get(j + 1)?;
        if &sql[dot.range.clone()] != "." {
            return None;
        }
        j += 2;
    }
}

/// An identifier as written, folded as PostgreSQL does.
fn fold(ident: &str) -> String {
    match ident.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => ident.to_lowercase(),
    }
}

fn fold_name(name: &str) -> String {
    name.split('.').map(fold).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn rules() -> Rules {
        let table = |name: &str| shardgate_config::ShardedTable {
            name: name.into(),
            key_column: None,
            key_type: None,
        };
        let c = shardgate_config::Sharding {
            tables: vec![table("orders"), table("users")],
            ..Default::default()
        };
        Rules::from_config(&c).unwrap()
    }

    fn spec(sql: &str) -> Result<GatherSpec, GatherError> {
        let st = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0);
        gather_spec(sql, &st, &rules(), "r".into())
    }

    #[test]
    fn rewrites_every_sharded_reference() {
        let s = spec("select u.name, sum(o.amount) from users u join public.orders o on o.user_id = u.user_id\n where exists (select 1 from  orders) group by 1").unwrap();
        assert_eq!(
            s.sql,
            "select u.name, sum(o.amount) from pg_temp.users u join pg_temp.orders o on o.user_id = u.user_id\n where exists (select 1 from  pg_temp.orders) group by 1"
        );
        assert_eq!(s.relations.len(), 2);
        assert_eq!(s.relations[0].source, "users");
        assert_eq!(s.relations[1].source, "public.orders");
        assert_eq!(s.relations[1].fetch_sql, "SELECT * FROM public.orders");
    }

    #[test]
    fn keeps_text_around_non_ascii_and_quotes() {
        let s =
            spec("select 'ü€', count(distinct x) from \"orders\" where note = 'orders'").unwrap();
        assert_eq!(
            s.sql,
            "select 'ü€', count(distinct x) from pg_temp.\"orders\" where note = 'orders'"
        );
    }

    #[test]
    fn plain_filters_of_one_table_go_to_the_shards() {
        let s = spec("select count(distinct status) from orders o where o.amount > 10.5 and status in ('a', 'O''B') or qty is null").unwrap();
        assert_eq!(
            s.relations[0].fetch_sql,
            "SELECT * FROM orders AS o WHERE o.amount > 10.5 AND status IN ('a', 'O''B') OR qty IS NULL"
        );
        for sql in [
            "select count(distinct status) from orders where amount > $1",
            "select count(distinct status) from orders where lower(status) = 'a'",
            "select count(distinct status) from orders where user_id in (select user_id from users)",
            "select distinct o.status from orders o join users u on u.name = o.status where o.qty > 1",
            "select distinct status from orders where qty > 1 union select name from users",
        ] {
            let s = spec(sql).unwrap();
            assert!(s.relations.iter().all(|r| !r.fetch_sql.contains("WHERE")), "{sql}");
        }
    }

    #[test]
    fn a_cte_named_like_a_sharded_table_is_not_gathered() {
        assert!(
            spec("with orders as (select * from orders) select distinct x from orders").is_err()
        );
    }
}
