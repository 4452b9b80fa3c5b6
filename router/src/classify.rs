//! What kind of statement it is: read (and whether it locks rows or calls a function with a
//! side effect), write, DDL, transaction control, session SET, shardgate's own SET/RESET —
//! and, where sqlparser cannot parse PostgreSQL, text fallbacks that still classify
//! transaction control and locking reads correctly (a BEGIN mistaken for "unknown" would
//! break transaction pinning).

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, ObjectName, Query, Reset, ResetStatement, Set, SetExpr, Statement, TransactionAccessMode,
    TransactionMode, Visit, Visitor,
};

use crate::analysis::norm;
use crate::merge::function_name;
use crate::plan::{Refusal, ShardgateParam, ShardgateSetting, StatementKind};
use crate::text::{code_tokens, leading_words, TokKind};

/// Functions that write (or take locks, or must run on the primary) even inside a SELECT.
pub(crate) const SIDE_EFFECT_FUNCTIONS: &[&str] = &[
    "nextval",
    // shardgate.unique_id() calls nextval.
    "unique_id",
    "setval",
    "set_config",
    "pg_notify",
    "txid_current",
    "pg_current_xact_id",
    "pg_advisory_unlock_all",
    "pg_current_wal_lsn",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_logical_emit_message",
    "pg_reload_conf",
    "pg_cancel_backend",
    "pg_terminate_backend",
    "loread",
    "lowrite",
];

/// Side-effect function prefixes: advisory locks and large objects.
const SIDE_EFFECT_PREFIXES: &[&str] = &["pg_advisory_", "pg_try_advisory_", "lo_"];

pub(crate) fn is_side_effect(name: &str, extra: &HashSet<String>) -> bool {
    SIDE_EFFECT_FUNCTIONS.contains(&name)
        || SIDE_EFFECT_PREFIXES.iter().any(|p| name.starts_with(p))
        || extra.contains(name)
}

/// A statement's kind and command tag, or a refusal found while classifying.
pub(crate) struct Classified {
    pub kind: StatementKind,
    pub command: &'static str,
    pub refusal: Option<Refusal>,
}

fn ok(kind: StatementKind, command: &'static str) -> Classified {
    Classified {
        kind,
        command,
        refusal: None,
    }
}

#[derive(Default)]
struct QueryFacts {
    writes: bool,
    locking: bool,
    side_effects: bool,
}

struct FactFinder<'a> {
    facts: QueryFacts,
    extra: &'a HashSet<String>,
}

impl Visitor for FactFinder<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if !q.locks.is_empty() {
            self.facts.locking = true;
        }
        if matches!(
            &*q.body,
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
        ) {
            self.facts.writes = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            if is_side_effect(&function_name(&f.name), self.extra) {
                self.facts.side_effects = true;
            }
        }
        ControlFlow::Continue(())
    }
}

fn query_facts<V: Visit>(v: &V, extra: &HashSet<String>) -> QueryFacts {
    let mut finder = FactFinder {
        facts: QueryFacts::default(),
        extra,
    };
    let _ = v.visit(&mut finder);
    finder.facts
}

fn shardgate_param(name: &ObjectName) -> Option<Result<ShardgateParam, Refusal>> {
    let parts: Vec<String> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident().map(norm))
        .collect();
    match parts.as_slice() {
        [ns, param] if ns == "shardgate" => Some(match param.as_str() {
            "shard_key" => Ok(ShardgateParam::ShardKey),
            "shard" => Ok(ShardgateParam::Shard),
            "role" => Ok(ShardgateParam::Role),
            other => Err(Refusal {
                code: "42704",
                message: format!("unrecognized configuration parameter \"shardgate.{other}\""),
                hint: Some(
                    "shardgate knows shardgate.shard_key, shardgate.shard and shardgate.role"
                        .into(),
                ),
                hint_overrides: false,
            }),
        }),
        _ => None,
    }
}

/// The value of `SET shardgate.x = v`: a literal, a bare word, or DEFAULT (= reset).
fn setting_value(values: &[Expr]) -> Result<Option<String>, Refusal> {
    let bad = || Refusal {
        code: "22023",
        message: "SET shardgate.* takes one value: a number, a string or DEFAULT".into(),
        hint: None,
        hint_overrides: false,
    };
    let [value] = values else {
        return Err(bad());
    };
    match value {
        Expr::Identifier(id)
            if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default") =>
        {
            Ok(None)
        }
        Expr::Identifier(id) => Ok(Some(id.value.clone())),
        Expr::Value(v) => match &v.value {
            sqlparser::ast::Value::Number(n, _) => Ok(Some(n.clone())),
            sqlparser::ast::Value::SingleQuotedString(s)
            | sqlparser::ast::Value::EscapedStringLiteral(s) => Ok(Some(s.clone())),
            sqlparser::ast::Value::DollarQuotedString(d) => Ok(Some(d.value.clone())),
            _ => Err(bad()),
        },
        Expr::UnaryOp {
            op: sqlparser::ast::UnaryOperator::Minus,
            expr,
        } => match &**expr {
            Expr::Value(v) => match &v.value {
                sqlparser::ast::Value::Number(n, _) => Ok(Some(format!("-{n}"))),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

fn shardgate_set(
    param: Result<ShardgateParam, Refusal>,
    value: Result<Option<String>, Refusal>,
    local: bool,
) -> Classified {
    match (param, value) {
        (Ok(ShardgateParam::Role), Ok(Some(v))) if crate::plan::RoleHint::parse(&v).is_none() => {
            Classified {
                kind: StatementKind::Set,
                command: "SET",
                refusal: Some(Refusal {
                    code: "22023",
                    message: format!("invalid value for parameter \"shardgate.role\": \"{v}\""),
                    hint: Some("use primary, replica or auto".into()),
                    hint_overrides: false,
                }),
            }
        }
        (Ok(name), Ok(value)) => ok(
            StatementKind::ShardgateSet(ShardgateSetting { name, value, local }),
            "SET",
        ),
        (Err(r), _) | (_, Err(r)) => Classified {
            kind: StatementKind::Set,
            command: "SET",
            refusal: Some(r),
        },
    }
}

/// Classifies a parsed statement.
pub(crate) fn classify(st: &Statement, extra: &HashSet<String>) -> Classified {
    use StatementKind as K;
    match st {
        Statement::Query(q) => {
            let facts = query_facts(q, extra);
            if facts.writes {
                return ok(K::Write, "WITH");
            }
            if matches!(&*q.body, SetExpr::Select(s) if s.into.is_some()) {
                return ok(K::Ddl, "SELECT INTO");
            }
            ok(
                K::Read {
                    locking: facts.locking,
                    side_effects: facts.side_effects,
                },
                "SELECT",
            )
        }
        Statement::Insert(_) => ok(K::Write, "INSERT"),
        Statement::Update(_) => ok(K::Write, "UPDATE"),
        Statement::Delete(_) => ok(K::Write, "DELETE"),
        Statement::Merge(_) => ok(K::Write, "MERGE"),
        Statement::Call(_) => ok(K::Write, "CALL"),
        Statement::Copy { to: false, .. } => ok(K::Write, "COPY"),
        Statement::Copy {
            to: true, source, ..
        } => {
            let facts = query_facts(source, extra);
            ok(
                K::Read {
                    locking: facts.locking,
                    side_effects: facts.side_effects,
                },
                "COPY",
            )
        }
        Statement::StartTransaction { modes, .. } => ok(
            K::Begin {
                read_only: modes.contains(&TransactionMode::AccessMode(
                    TransactionAccessMode::ReadOnly,
                )),
            },
            "BEGIN",
        ),
        Statement::Commit { .. } => ok(K::Commit, "COMMIT"),
        Statement::Rollback {
            savepoint: None, ..
        } => ok(K::Rollback, "ROLLBACK"),
        Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => ok(K::TransactionOther, "SAVEPOINT"),
        Statement::Set(Set::SetTransaction { session: true, .. }) => ok(K::Set, "SET"),
        Statement::Set(Set::SetTransaction { modes, .. }) => ok(
            K::SetTransaction {
                read_only: modes.contains(&TransactionMode::AccessMode(
                    TransactionAccessMode::ReadOnly,
                )),
            },
            "SET",
        ),
        Statement::Set(Set::SingleAssignment {
            scope,
            variable,
            values,
            ..
        }) => match shardgate_param(variable) {
            Some(param) => shardgate_set(
                param,
                setting_value(values),
                matches!(scope, Some(sqlparser::ast::ContextModifier::Local)),
            ),
            None => ok(K::Set, "SET"),
        },
        Statement::Set(_) | Statement::Discard { .. } => ok(K::Set, "SET"),
        Statement::Reset(ResetStatement {
            reset: Reset::ConfigurationParameter(name),
        }) => match shardgate_param(name) {
            Some(param) => shardgate_set(param, Ok(None), false),
            None => ok(K::Set, "RESET"),
        },
        Statement::Reset(_) => ok(K::Set, "RESET"),
        Statement::Explain {
            analyze, statement, ..
        } => {
            let inner = classify(statement, extra);
            if *analyze && matches!(inner.kind, K::Write | K::Ddl) {
                Classified {
                    command: "EXPLAIN",
                    ..inner
                }
            } else {
                ok(K::Utility, "EXPLAIN")
            }
        }
        Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowCreate { .. }
        | Statement::LISTEN { .. }
        | Statement::UNLISTEN { .. }
        | Statement::NOTIFY { .. }
        | Statement::Vacuum(_)
        | Statement::Analyze(_)
        | Statement::Prepare { .. }
        | Statement::Execute { .. }
        | Statement::Deallocate { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. } => ok(K::Utility, "UTILITY"),
        _ => ok(K::Ddl, "DDL"),
    }
}

/// Replaces `FOR NO KEY UPDATE` with `FOR UPDATE` and `FOR KEY SHARE` with `FOR SHARE`
/// (sqlparser 0.64 parses neither); `None` when the text has no such clause.
pub(crate) fn rewrite_key_locks(sql: &str) -> Option<String> {
    let toks = code_tokens(sql);
    let word = |i: usize| {
        toks.get(i)
            .filter(|t| t.kind == TokKind::Word)
            .map(|t| sql[t.range.clone()].to_ascii_uppercase())
    };
    let mut out = String::new();
    let mut last = 0;
    for i in 0..toks.len() {
        if word(i).as_deref() != Some("FOR") {
            continue;
        }
        let (drop_to, keep) = match (
            word(i + 1).as_deref(),
            word(i + 2).as_deref(),
            word(i + 3).as_deref(),
        ) {
            (Some("NO"), Some("KEY"), Some("UPDATE")) => (i + 3, "UPDATE"),
            (Some("KEY"), Some("SHARE"), _) => (i + 2, "SHARE"),
            _ => continue,
        };
        let from = toks[i].range.end;
        let to = toks[drop_to].range.end;
        out.push_str(&sql[last..from]);
        out.push(' ');
        out.push_str(keep);
        last = to;
    }
    if last == 0 {
        return None;
    }
    out.push_str(&sql[last..]);
    Some(out)
}

/// `TABLE name` (which sqlparser 0.64 does not parse at top level) as `SELECT * FROM name`.
pub(crate) fn rewrite_table(sql: &str) -> Option<String> {
    let toks = code_tokens(sql);
    let first = toks.first()?;
    (first.kind == TokKind::Word && sql[first.range.clone()].eq_ignore_ascii_case("table"))
        .then(|| format!("SELECT * FROM {}", &sql[first.range.end..]))
}

/// Classification of text sqlparser cannot parse, from its leading keywords.
pub(crate) fn fallback(sql: &str) -> StatementKind {
    use StatementKind as K;
    let words = leading_words(sql, 3);
    let w = |i: usize| words.get(i).map(String::as_str);
    let all: Vec<String> = code_tokens(sql)
        .into_iter()
        .filter(|t| t.kind == TokKind::Word)
        .map(|t| sql[t.range].to_ascii_uppercase())
        .collect();
    let read_only = all.windows(2).any(|p| p[0] == "READ" && p[1] == "ONLY");
    match (w(0), w(1)) {
        (Some("BEGIN" | "START"), _) => K::Begin { read_only },
        (Some("COMMIT" | "END" | "ROLLBACK" | "ABORT"), Some("PREPARED" | "TO")) => {
            K::TransactionOther
        }
        (Some("COMMIT" | "END"), _) => K::Commit,
        (Some("ROLLBACK" | "ABORT"), _) => K::Rollback,
        (Some("PREPARE"), Some("TRANSACTION")) => K::TransactionOther,
        (Some("SAVEPOINT" | "RELEASE"), _) => K::TransactionOther,
        (Some("SET"), Some("CONSTRAINTS")) => K::TransactionOther,
        (Some("SET"), Some("TRANSACTION")) => K::SetTransaction { read_only },
        (Some("SET" | "RESET" | "DISCARD"), _) => K::Set,
        _ => K::Unparsed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lock_rewrites() {
        assert_eq!(
            rewrite_key_locks("SELECT 1 FROM t for  no key update SKIP LOCKED").as_deref(),
            Some("SELECT 1 FROM t for UPDATE SKIP LOCKED")
        );
        assert_eq!(
            rewrite_key_locks("SELECT 'for key share' FROM t FOR KEY SHARE").as_deref(),
            Some("SELECT 'for key share' FROM t FOR SHARE")
        );
        assert_eq!(rewrite_key_locks("SELECT 1 FOR UPDATE"), None);
        assert_eq!(
            rewrite_table(" TABLE orders").as_deref(),
            Some("SELECT * FROM  orders")
        );
    }

    #[test]
    fn fallbacks() {
        assert_eq!(
            fallback("BEGIN TRANSACTION READ ONLY DEFERRABLE"),
            StatementKind::Begin { read_only: true }
        );
        assert_eq!(
            fallback("COMMIT PREPARED 'x'"),
            StatementKind::TransactionOther
        );
        assert_eq!(
            fallback("PREPARE TRANSACTION 'x'"),
            StatementKind::TransactionOther
        );
        assert_eq!(
            fallback("SET CONSTRAINTS ALL DEFERRED"),
            StatementKind::TransactionOther
        );
        assert_eq!(fallback("DO $$ begin end $$"), StatementKind::Unparsed);
    }
}
