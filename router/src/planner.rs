//! From statement text to a [`Plan`]: hints, `SHARDGATE ROUTE`, parsing (with the text
//! fallbacks where sqlparser fails), classification, key analysis, merge analysis, and the
//! combination of several statements in one text.
//!
//! A statement that touches both sharded and unsharded tables is placed by its sharded part:
//! unsharded tables it reads are expected to exist wherever that is (e.g. small reference
//! tables copied to every shard); if they do not, PostgreSQL reports the missing table.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    CopyLegacyOption, CopyOption, CopySource, CopyTarget, Expr, ObjectType, Query, SelectItem,
    SetExpr, Statement, TableFactor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::analysis::{Analysis, Rules};
use crate::classify::{classify, fallback, rewrite_key_locks, rewrite_table};
use crate::copy_in::{CopyInSpec, CopyOutSpec};
use crate::gather::gather_spec;
use crate::hints::find_hints;
use crate::keys::union;
use crate::merge::{merge_spec, MergeError, MergeSpec};
use crate::plan::{KeyExpr, Placement, Plan, Refusal, StatementKind};
use crate::reference::{place_reference_ddl, place_reference_write, refuse_one_copy_writes};
use crate::rules::norm;
use crate::text::{code_tokens, leading_words, split_statements, TokKind};

/// What planning needs from the router's configuration.
pub(crate) struct Planner {
    pub rules: Rules,
    pub side_effects: HashSet<String>,
}

fn parse(sql: &str) -> Result<Vec<Statement>, sqlparser::parser::ParserError> {
    Parser::parse_sql(&PostgreSqlDialect {}, sql)
}

/// Texts longer than this are planned on a thread with a large stack (sqlparser's AST is
/// recursive: a chain of many thousands of operators needs deep recursion to drop or clone).
pub(crate) const LARGE_TEXT: usize = 32 * 1024;
pub(crate) const LARGE_STACK: usize = 512 << 20;
/// Operators beyond which a text is refused rather than parsed (PostgreSQL's 54001).
const MAX_OPERATORS: usize = 200_000;

fn operator_count(sql: &str) -> usize {
    code_tokens(sql)
        .iter()
        .filter(|t| match t.kind {
            TokKind::Word => {
                let w = &sql[t.range.clone()];
                w.eq_ignore_ascii_case("and") || w.eq_ignore_ascii_case("or")
            }
            TokKind::Other => sql[t.range.clone()]
                .chars()
                .all(|c| "+-*/%^<>=!~|&#@".contains(c)),
            _ => false,
        })
        .count()
}

/// A plan for a text that cannot be analysed safely.
pub(crate) fn too_complex(sql: &str) -> Plan {
    let mut plan = Plan::simple(fallback(sql), "");
    plan.refusal = Some(Refusal {
        code: "54001",
        message: "statement too complex for shardgate to analyse".into(),
        hint: Some("split it into smaller statements".into()),
        hint_overrides: false,
    });
    plan
}

impl Planner {
    pub(crate) fn plan(&self, sql: &str) -> Plan {
        if sql.len() > LARGE_TEXT && operator_count(sql) > MAX_OPERATORS {
            return too_complex(sql);
        }
        let mut plan = self.plan_text(sql);
        match find_hints(sql) {
            Ok(h) => {
                plan.hint = h.route;
                plan.role_hint = h.role;
            }
            Err(e) => {
                plan.refusal.get_or_insert(Refusal {
                    code: "22023",
                    message: e.to_string(),
                    hint: Some(
                        "write /* shardgate: shard_key=<key> */, /* shardgate: shard=<name> */ or /* shardgate: role=primary|replica|auto */"
                            .into(),
                    ),
                    hint_overrides: false,
                });
            }
        }
        plan
    }

    fn plan_text(&self, sql: &str) -> Plan {
        if leading_words(sql, 2) == ["SHARDGATE", "ROUTE"] {
            let toks = code_tokens(sql);
            let inner = toks.get(1).map_or("", |t| &sql[t.range.end..]);
            let inner = inner.trim().trim_end_matches(';').trim_end();
            return Plan::simple(
                StatementKind::ShardgateRoute(inner.to_owned()),
                "SHARDGATE ROUTE",
            );
        }
        if let Some(declare) = crate::cursor::declare(sql) {
            // Planned as its query: on one shard the whole DECLARE goes there; over several,
            // a proxy holds the query's merged result for FETCH.
            let mut plan = self.plan_text(&declare.query);
            if matches!(plan.kind, StatementKind::Read { .. }) && plan.statement_count == 1 {
                plan.command = "DECLARE";
                plan.cursor = Some(std::sync::Arc::new(declare));
                return plan;
            }
        }
        match parse(sql) {
            Ok(stmts) if stmts.len() == 1 => {
                let mut plan = self.statement(&stmts[0]);
                self.consider_gather(&mut plan, sql, &stmts[0]);
                plan
            }
            Ok(stmts) if !stmts.is_empty() => {
                let plans = stmts.iter().map(|st| self.statement(st)).collect();
                combine(plans)
            }
            Ok(_) => Plan::simple(StatementKind::Utility, ""),
            Err(e) => {
                tracing::debug!(error = %e, "sqlparser failed on the whole text; trying statement by statement");
                let plans = split_statements(sql)
                    .into_iter()
                    .flat_map(|piece| self.piece(piece))
                    .collect::<Vec<_>>();
                if plans.is_empty() {
                    return Plan::simple(StatementKind::Unparsed, "");
                }
                combine(plans)
            }
        }
    }

    /// One statement's text that did not parse as part of the whole.
    fn piece(&self, piece: &str) -> Vec<Plan> {
        if let Ok(stmts) = parse(piece) {
            return stmts.iter().map(|st| self.statement(st)).collect();
        }
        for rewritten in [rewrite_key_locks(piece), rewrite_table(piece)]
            .into_iter()
            .flatten()
        {
            if let Ok(stmts) = parse(&rewritten) {
                return stmts.iter().map(|st| self.statement(st)).collect();
            }
        }
        let kind = fallback(piece);
        let command = if kind == StatementKind::Unparsed {
            ""
        } else {
            "UTILITY"
        };
        vec![Plan::simple(kind, command)]
    }

    fn statement(&self, st: &Statement) -> Plan {
        let c = classify(st, &self.side_effects);
        let mut plan = Plan::simple(c.kind, c.command);
        plan.refusal = c.refusal;
        match st {
            Statement::Query(_)
            | Statement::Insert(_)
            | Statement::Update(_)
            | Statement::Delete(_)
            | Statement::Merge(_)
            | Statement::Explain { .. } => {
                let mut an = Analysis::new(&self.rules);
                an.statement(st, None, true);
                an.check_coverage(st);
                // Only a bare INSERT splits (not one inside WITH or EXPLAIN).
                let rows = match st {
                    Statement::Insert(_) => an.splittable_rows(),
                    _ => None,
                };
                self.finish(&mut plan, an);
                if plan.refusal.is_none() && plan.unsupported_cross_shard.is_none() {
                    plan.insert_rows = rows.map(std::sync::Arc::new);
                }
                place_reference_write(&self.rules, &mut plan, st);
                if let (Statement::Query(q), StatementKind::Read { .. }) = (st, &plan.kind) {
                    let spec = merge_spec(q);
                    if let (SetExpr::SetOperation { .. }, Err(reason)) = (&*q.body, &spec) {
                        // Say "UNION", not "a subquery", for a set operation at the top.
                        plan.unsupported_cross_shard = Some(reason.to_string());
                    }
                    let spec = spec.map(|spec| self.group_on_shards(q, &plan, spec));
                    self.add_merge(&mut plan, spec);
                }
                if let Statement::Explain { .. } = st {
                    if plan.kind == StatementKind::Utility && plan.placement == Placement::AllShards
                    {
                        // A plan from one shard is representative; EXPLAIN runs nowhere else.
                        plan.placement = Placement::Default;
                        plan.unsupported_cross_shard = None;
                    }
                }
            }
            Statement::Copy {
                source,
                to,
                target,
                options,
                legacy_options,
                ..
            } => {
                self.copy(&mut plan, source, *to);
                if !*to && matches!(target, CopyTarget::Stdin) {
                    self.copy_in(&mut plan, source, options, legacy_options);
                }
                if *to && plan.merge.is_some() {
                    match CopyOutSpec::of(options, legacy_options) {
                        Ok(spec) => plan.copy_out = Some(spec),
                        Err(reason) => {
                            plan.merge = None;
                            plan.unsupported_cross_shard
                                .get_or_insert_with(|| reason.to_string());
                        }
                    }
                }
            }
            Statement::Declare { stmts, .. } => {
                for q in stmts.iter().filter_map(|d| d.for_query.as_deref()) {
                    let mut an = Analysis::new(&self.rules);
                    an.query(q, None, true);
                    an.check_coverage(q);
                    self.finish(&mut plan, an);
                    // FETCH from a cursor cannot be merged across shards.
                    plan.unsupported_cross_shard.get_or_insert(
                        "DECLARE CURSOR over sharded tables without one shard key".into(),
                    );
                }
            }
            _ if matches!(plan.kind, StatementKind::Ddl | StatementKind::Utility) => {
                self.by_relations(&mut plan, st);
            }
            _ => {}
        }
        refuse_one_copy_writes(&self.rules, &mut plan, st);
        if always_one_shard(&plan.placement) {
            plan.unsupported_cross_shard = None;
            plan.merge = None;
        }
        plan
    }

    /// A plain read over several shards that neither the shard key nor a merge in the proxy
    /// answers exactly is gathered into PostgreSQL instead of refused (when it can be).
    fn consider_gather(&self, plan: &mut Plan, sql: &str, st: &Statement) {
        let plain_read = plan.kind
            == StatementKind::Read {
                locking: false,
                side_effects: false,
            };
        if !plain_read || plan.refusal.is_some() || always_one_shard(&plan.placement) {
            return;
        }
        let reason = match (&plan.unsupported_cross_shard, &plan.merge) {
            (Some(reason), _) => reason.clone(),
            (None, Some(spec)) if !spec.limit_keeps_groups_whole() => {
                "GROUP BY with LIMIT whose ORDER BY does not start with all the group columns"
                    .to_owned()
            }
            _ => return,
        };
        match gather_spec(sql, st, &self.rules, reason) {
            Ok(spec) => {
                plan.gather = Some(spec);
                plan.unsupported_cross_shard = None;
                plan.merge = None;
            }
            Err(why) => {
                tracing::debug!(%why, "cross-shard read cannot be gathered");
            }
        }
    }

    /// A grouped read of one sharded table alone whose GROUP BY holds its shard key: each
    /// shard's groups are complete, so its grouped (and HAVING-free here: `merge_spec` refuses
    /// HAVING) rows only need merging, as plain rows — ORDER BY and LIMIT included, since a
    /// group in the global top N is in its shard's top N. Not with hidden avg columns.
    fn group_on_shards(&self, q: &Query, plan: &Plan, mut spec: MergeSpec) -> MergeSpec {
        if spec.group_by.is_empty() || spec.hidden_columns > 0 || plan.sharded_tables.len() != 1 {
            return spec;
        }
        let SetExpr::Select(select) = &*q.body else {
            return spec;
        };
        let [from] = select.from.as_slice() else {
            return spec;
        };
        let TableFactor::Table { name, .. } = &from.relation else {
            return spec;
        };
        if !from.joins.is_empty() || q.with.is_some() {
            return spec;
        }
        // The one sharded table is referenced once: no subquery over it or another one.
        let mut references = 0;
        let _ = sqlparser::ast::visit_relations(q, |n| {
            if self.rules.lookup(n).is_some() {
                references += 1;
            }
            ControlFlow::<()>::Continue(())
        });
        let Some(rule) = self.rules.lookup(name) else {
            return spec;
        };
        if references != 1 {
            return spec;
        }
        let key = &self.rules.tables[rule].key_column;
        let is_key = |item: &SelectItem| {
            let expr = match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                _ => return false,
            };
            let ident = match expr {
                Expr::Identifier(id) => id,
                Expr::CompoundIdentifier(ids) if ids.len() == 2 => &ids[1],
                _ => return false,
            };
            &norm(ident) == key
        };
        if spec
            .group_by
            .iter()
            .any(|p| select.projection.get(*p).is_some_and(is_key))
        {
            spec.group_by.clear();
            spec.aggregates.clear();
            spec.grouped_on_shards = true;
        }
        spec
    }

    fn finish(&self, plan: &mut Plan, an: Analysis<'_>) {
        let solved = an.solve(an.multi_row_insert);
        plan.placement = solved.placement;
        plan.unsupported_cross_shard = solved.unsupported;
        if plan.refusal.is_none() {
            plan.refusal = an.refusal;
        }
        plan.sharded_tables = an.tables;
        plan.unsharded_tables = an.unsharded_tables;
        plan.other_tables = an.other_tables;
        plan.reference_tables = an.reference_tables;
        plan.key_type = an.key_type;
        plan.key_updates = an.key_updates;
    }

    fn add_merge(&self, plan: &mut Plan, spec: Result<MergeSpec, MergeError>) {
        if plan.placement == Placement::Default {
            return;
        }
        match spec {
            Ok(spec) => plan.merge = Some(spec),
            Err(reason) => {
                plan.unsupported_cross_shard
                    .get_or_insert_with(|| reason.to_string());
            }
        }
    }

    fn copy(&self, plan: &mut Plan, source: &CopySource, to: bool) {
        match source {
            CopySource::Table { table_name, .. } => {
                let Some(rule) = self.rules.lookup(table_name) else {
                    return;
                };
                plan.sharded_tables = vec![table_name.to_string().to_lowercase()];
                plan.key_type = Some(self.rules.tables[rule].key_type);
                plan.placement = Placement::AllShards;
                if to {
                    plan.merge = Some(MergeSpec::default());
                } else {
                    plan.refusal = Some(Refusal {
                        code: "0A000",
                        message: format!(
                            "COPY into sharded table {} from a file or program is not supported: shardgate splits only COPY … FROM STDIN by shard key",
                            plan.sharded_tables[0]
                        ),
                        hint: Some("use COPY … FROM STDIN (psql's \\copy), or COPY to one shard with a /* shardgate: shard=… */ hint".into()),
                        hint_overrides: true,
                    });
                }
            }
            CopySource::Query(q) => {
                let mut an = Analysis::new(&self.rules);
                an.query(q, None, true);
                an.check_coverage(&**q);
                self.finish(plan, an);
                match merge_spec(q) {
                    Ok(spec) if spec.is_concatenation() => self.add_merge(plan, Ok(spec)),
                    Ok(_) => self.add_merge(plan, Err(MergeError::CopyNotConcatenation)),
                    Err(reason) => self.add_merge(plan, Err(reason)),
                }
            }
        }
    }

    /// A `COPY <sharded table> FROM STDIN`: how its rows split by key (`plan.copy_in`); the
    /// refusal `copy` set stays for a proxy that does not split, worded with the reason when
    /// this COPY cannot be split.
    fn copy_in(
        &self,
        plan: &mut Plan,
        source: &CopySource,
        options: &[CopyOption],
        legacy: &[CopyLegacyOption],
    ) {
        let CopySource::Table {
            table_name,
            columns,
        } = source
        else {
            return;
        };
        let Some(rule) = self.rules.lookup(table_name) else {
            return;
        };
        match CopyInSpec::of(
            &self.rules.tables[rule],
            table_name,
            columns,
            options,
            legacy,
        ) {
            Ok(spec) => {
                if let Some(r) = plan.refusal.as_mut() {
                    r.message = format!(
                        "COPY into sharded table {} is split by shard key only in transaction pooling mode, as a statement of its own (not in a pinned session)",
                        plan.sharded_tables[0]
                    );
                }
                plan.copy_in = Some(std::sync::Arc::new(spec));
            }
            Err(reason) => {
                if let Some(r) = plan.refusal.as_mut() {
                    r.message = reason.to_string();
                }
            }
        }
    }

    /// DDL and utility statements: every shard when they name a sharded table.
    fn by_relations(&self, plan: &mut Plan, st: &Statement) {
        let mut names = Vec::new();
        let _ = sqlparser::ast::visit_relations(st, |n| {
            names.push(n.clone());
            ControlFlow::<()>::Continue(())
        });
        if let Statement::Vacuum(v) = st {
            names.extend(v.table_name.iter().cloned());
        }
        if let Statement::Drop {
            object_type: ObjectType::Table,
            names: dropped,
            ..
        } = st
        {
            names.extend(dropped.iter().cloned());
        }
        for name in &names {
            if let Some(rule) = self.rules.lookup(name) {
                let display = name.to_string().to_lowercase();
                if !plan.sharded_tables.contains(&display) {
                    plan.sharded_tables.push(display);
                }
                plan.key_type
                    .get_or_insert(self.rules.tables[rule].key_type);
                plan.placement = Placement::AllShards;
            }
        }
        place_reference_ddl(&self.rules, plan, &names);
    }
}

/// Placements that can never span shards: no merge, nothing cross-shard to refuse.
fn always_one_shard(p: &Placement) -> bool {
    match p {
        Placement::Default => true,
        Placement::AllShards => false,
        Placement::Keys {
            keys,
            single_shard_required,
            ..
        } => {
            *single_shard_required
                || (keys.len() <= 1 && !keys.iter().any(|k| matches!(k, KeyExpr::ParamArray(_))))
        }
    }
}

fn rank(kind: &StatementKind) -> u8 {
    match kind {
        StatementKind::Write | StatementKind::Unparsed => 3,
        StatementKind::Ddl => 2,
        StatementKind::Read { .. } => 1,
        _ => 0,
    }
}

/// Several statements in one text run together on one connection: the most demanding kind
/// (Write > Ddl > Read, flags merged; otherwise the first statement's), the union of their
/// placements (which must then be one shard), the first refusal.
fn combine(mut plans: Vec<Plan>) -> Plan {
    let count = plans.len();
    if count == 1 {
        return plans.remove(0);
    }
    let kinds: Vec<StatementKind> = plans.iter().map(|p| p.kind.clone()).collect();
    let mut out = plans.remove(0);
    out.statement_count = count;
    out.statement_kinds = kinds;
    out.merge = None;
    out.gather = None;
    out.insert_rows = None;
    out.copy_in = None;
    out.copy_out = None;
    for p in plans {
        out.kind = match (&out.kind, &p.kind) {
            (
                StatementKind::Read {
                    locking: a,
                    side_effects: b,
                },
                StatementKind::Read {
                    locking: c,
                    side_effects: d,
                },
            ) => StatementKind::Read {
                locking: *a || *c,
                side_effects: *b || *d,
            },
            (mine, theirs) if rank(theirs) > rank(mine) => theirs.clone(),
            (mine, _) => mine.clone(),
        };
        out.placement = match (out.placement, p.placement) {
            (Placement::Default, other) | (other, Placement::Default) => other,
            (Placement::AllShards, _) | (_, Placement::AllShards) => Placement::AllShards,
            (
                Placement::Keys {
                    key_type: a,
                    keys: ka,
                    ..
                },
                Placement::Keys {
                    key_type: b,
                    keys: kb,
                    ..
                },
            ) if a == b => Placement::Keys {
                key_type: a,
                keys: union(&ka, &kb),
                single_shard_required: true,
            },
            (Placement::Keys { .. }, Placement::Keys { .. }) => {
                out.unsupported_cross_shard
                    .get_or_insert("shard keys of different types in one query string".into());
                Placement::AllShards
            }
        };
        out.unsharded_tables |= p.unsharded_tables;
        for t in p.other_tables {
            if !out.other_tables.contains(&t) {
                out.other_tables.push(t);
            }
        }
        for t in p.reference_tables {
            if !out.reference_tables.contains(&t) {
                out.reference_tables.push(t);
            }
        }
        if out.reference_write.is_none() {
            out.reference_write = p.reference_write;
        }
        for t in p.sharded_tables {
            if !out.sharded_tables.contains(&t) {
                out.sharded_tables.push(t);
            }
        }
        if out.refusal.is_none() {
            out.refusal = p.refusal;
        }
        if out.unsupported_cross_shard.is_none() {
            out.unsupported_cross_shard = p.unsupported_cross_shard;
        }
        if out.key_type.is_none() {
            out.key_type = p.key_type;
        }
        out.key_updates.extend(p.key_updates);
    }
    match &mut out.placement {
        Placement::Keys {
            single_shard_required,
            ..
        } => *single_shard_required = true,
        Placement::AllShards => {
            out.unsupported_cross_shard
                .get_or_insert("several statements in one query string".into());
        }
        Placement::Default => {}
    }
    out
}
