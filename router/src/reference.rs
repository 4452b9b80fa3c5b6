//! Reference tables (`[[sharding.reference_tables]]`): small tables with an identical copy on
//! every shard.
//!
//! Reads need no particular shard: a reference table is neither a sharded table (it adds no
//! placement) nor an unsharded one (it does not pull the statement to the default shard), so a
//! read of reference tables alone is placed on the default shard outside a transaction and
//! runs on the transaction's shard inside one, and a read joining sharded tables goes where
//! those tables' keys say. Writes (and DDL) run on every shard at once, through the proxy's
//! broadcast, and must give every copy the same rows: a write that reads sharded or
//! default-shard-only tables, calls a function whose value differs per shard (`now()`,
//! `random()`, `nextval()` …) or asks for a column's DEFAULT is refused with 0A000. An INSERT
//! that leaves columns to their defaults is looked up by the proxy in the catalog
//! ([`ReferenceInsert`]): a default that is not a constant (serial, identity, `now()`) is
//! evaluated once on the default shard and written into the INSERT every shard runs
//! (`reference_fill`).

use std::ops::ControlFlow;

use sqlparser::ast::{
    CopySource, Expr, FromTable, ObjectName, SetExpr, Statement, TableFactor, TableObject, Visit,
    Visitor,
};

use crate::plan::{Placement, Plan, Refusal, StatementKind};
use crate::rules::{name_parts, Rules};

/// Functions whose value differs between the shards running the same write (time, randomness,
/// sequences, transaction ids, the server's identity).
pub(crate) const VOLATILE_FUNCTIONS: &[&str] = &[
    "now",
    "current_timestamp",
    "current_time",
    "current_date",
    "localtime",
    "localtimestamp",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "random",
    "random_normal",
    "setseed",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "uuidv4",
    "uuidv7",
    "nextval",
    "currval",
    "lastval",
    "setval",
    "txid_current",
    "txid_current_if_assigned",
    "txid_current_snapshot",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "pg_current_snapshot",
    "pg_backend_pid",
    "inet_server_addr",
    "inet_server_port",
    "pg_postmaster_start_time",
    "unique_id",
];

/// What the proxy needs to run a write to reference tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceWrite {
    /// The reference tables written (as written, lower-cased), for messages.
    pub tables: Vec<String>,
    /// For a single INSERT into a reference table: what to check against the catalog before
    /// running it on every shard.
    pub insert: Option<ReferenceInsert>,
}

/// An INSERT into a reference table: which columns it gives values for. The other columns
/// take their defaults on each shard, which must then be constants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceInsert {
    /// The table for `to_regclass`: each name part double-quoted as PostgreSQL folded it.
    pub regclass: String,
    /// The table as written, for messages.
    pub table: String,
    /// The listed columns (as folded); `None` without a column list.
    pub columns: Option<Vec<String>>,
    /// Without a column list: the values each VALUES row gives (the narrowest row), the
    /// first that many columns; `None` for `INSERT … SELECT` (taken to give every column).
    pub width: Option<usize>,
}

impl ReferenceInsert {
    /// Whether the INSERT gives a value for the column at `position` (0-based) named `name`.
    pub fn gives(&self, position: usize, name: &str) -> bool {
        match (&self.columns, self.width) {
            (Some(cols), _) => cols.iter().any(|c| c == name),
            (None, Some(width)) => position < width,
            (None, None) => true,
        }
    }
}

/// Whether a column default (as `pg_get_expr` prints it) is a constant, the same on every
/// shard: no function call (`nextval(…)`, `now()`) and none of the SQL value functions
/// (`CURRENT_TIMESTAMP`, `CURRENT_USER`, …). Casts of literals (`'free'::text`,
/// `(0)::numeric`) are constants.
pub fn default_is_constant(expr: &str) -> bool {
    let mut outside_quotes = String::with_capacity(expr.len());
    let mut quoted = false;
    for c in expr.chars() {
        if c == '\'' {
            quoted = !quoted;
            outside_quotes.push(' ');
        } else if !quoted {
            outside_quotes.push(c.to_ascii_lowercase());
        }
    }
    let bytes = outside_quotes.as_bytes();
    let call = bytes.iter().enumerate().any(|(i, b)| {
        *b == b'('
            && outside_quotes[..i]
                .trim_end()
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '"')
    });
    let value_function = outside_quotes
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|w| {
            matches!(
                w,
                "current_timestamp"
                    | "current_time"
                    | "current_date"
                    | "localtime"
                    | "localtimestamp"
                    | "current_user"
                    | "current_role"
                    | "session_user"
                    | "user"
                    | "current_catalog"
                    | "current_schema"
            )
        });
    !call && !value_function
}

/// A name as `to_regclass` reads it: each part double-quoted (parts are already folded).
fn regclass_text(parts: &[String]) -> String {
    parts
        .iter()
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// The tables a statement writes (INSERT/UPDATE/DELETE/MERGE targets, data-modifying CTEs
/// included).
fn write_targets(st: &Statement) -> Vec<ObjectName> {
    struct Targets(Vec<ObjectName>);
    impl Visitor for Targets {
        type Break = ();
        fn pre_visit_statement(&mut self, st: &Statement) -> ControlFlow<()> {
            let table_of = |tf: &TableFactor| match tf {
                TableFactor::Table { name, .. } => Some(name.clone()),
                _ => None,
            };
            match st {
                Statement::Insert(i) => {
                    if let TableObject::TableName(n) = &i.table {
                        self.0.push(n.clone());
                    }
                }
                Statement::Update(u) => self.0.extend(table_of(&u.table.relation)),
                Statement::Delete(d) => {
                    self.0.extend(d.tables.iter().cloned());
                    let (FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t)) = &d.from;
                    if let Some(first) = t.first() {
                        self.0.extend(table_of(&first.relation));
                    }
                }
                Statement::Merge(m) => self.0.extend(table_of(&m.table)),
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }
    let mut t = Targets(Vec::new());
    let _ = st.visit(&mut t);
    t.0
}

/// The first function the statement calls whose value differs per shard, and whether it
/// asks for a DEFAULT (`VALUES (…, DEFAULT)`, `SET c = DEFAULT`).
fn per_shard_values(st: &Statement) -> (Option<String>, bool) {
    let mut volatile = None;
    let mut default = false;
    let _ = sqlparser::ast::visit_expressions(st, |e| {
        match e {
            Expr::Function(f) => {
                let name = name_parts(&f.name).pop().unwrap_or_default();
                if volatile.is_none() && VOLATILE_FUNCTIONS.contains(&name.as_str()) {
                    volatile = Some(name);
                }
            }
            Expr::Identifier(id) if id.quote_style.is_none() => {
                let w = id.value.to_ascii_lowercase();
                if w == "default" {
                    default = true;
                } else if volatile.is_none() && VOLATILE_FUNCTIONS.contains(&w.as_str()) {
                    // CURRENT_TIMESTAMP and friends without parentheses.
                    volatile = Some(w);
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    (volatile, default)
}

fn refusal(message: String, hint: &str) -> Refusal {
    Refusal {
        code: "0A000",
        message,
        hint: Some(hint.to_owned()),
        hint_overrides: false,
    }
}

/// A data-modifying statement (or one with data-modifying CTEs) that writes reference tables:
/// every shard, or a refusal when the copies could end up different.
pub(crate) fn place_reference_write(rules: &Rules, plan: &mut Plan, st: &Statement) {
    if rules.references.is_empty() || plan.kind != StatementKind::Write {
        return;
    }
    let written: Vec<ObjectName> = write_targets(st)
        .into_iter()
        .filter(|n| rules.lookup_reference(n))
        .collect();
    if written.is_empty() {
        return;
    }
    let mut tables: Vec<String> = Vec::new();
    for n in &written {
        let display = name_parts(n).join(".");
        if !tables.contains(&display) {
            tables.push(display);
        }
    }
    let list = tables.join(", ");
    let why = if !plan.sharded_tables.is_empty() {
        Some(format!(
            "{} writes reference table {list} and also uses sharded table {}: each shard would write its copy from its own rows, and the copies would differ",
            plan.command,
            plan.sharded_tables.join(", ")
        ))
    } else if plan.unsharded_tables {
        Some(format!(
            "{} writes reference table {list} and also uses a table that lives on the default shard only: the other shards cannot run it",
            plan.command
        ))
    } else {
        None
    };
    let refused = if let Some(message) = why {
        Some(refusal(
            message,
            "read the rows first and write the reference table with their values; or make the other table a reference table too",
        ))
    } else {
        match per_shard_values(st) {
            (Some(f), _) => Some(refusal(
                format!(
                    "{} on reference table {list} calls {f}(), whose value differs between the shards, so their copies would differ",
                    plan.command
                ),
                "compute the value first and give it explicitly (a literal or a parameter)",
            )),
            (None, true) => Some(refusal(
                format!(
                    "{} on reference table {list} asks for a column's DEFAULT, which may differ between the shards' copies",
                    plan.command
                ),
                "give the value explicitly",
            )),
            (None, false) => None,
        }
    };
    if let Some(r) = refused {
        plan.refusal.get_or_insert(r);
    }
    let insert = match st {
        Statement::Insert(ins) if written.len() == 1 => match &ins.table {
            TableObject::TableName(name) => {
                let parts = name_parts(name);
                Some(ReferenceInsert {
                    regclass: regclass_text(&parts),
                    table: parts.join("."),
                    columns: if ins.columns.is_empty() && ins.source.is_some() {
                        None
                    } else {
                        Some(
                            ins.columns
                                .iter()
                                .filter_map(|c| name_parts(c).pop())
                                .collect(),
                        )
                    },
                    width: ins.source.as_ref().and_then(|q| match &*q.body {
                        SetExpr::Values(v) => v.rows.iter().map(|r| r.content.len()).min(),
                        _ => None,
                    }),
                })
            }
            _ => None,
        },
        _ => None,
    };
    plan.placement = Placement::AllShards;
    plan.unsupported_cross_shard = None;
    plan.merge = None;
    plan.gather = None;
    plan.insert_rows = None;
    plan.reference_write = Some(ReferenceWrite { tables, insert });
}

/// DDL naming a reference table runs on every shard.
pub(crate) fn place_reference_ddl(rules: &Rules, plan: &mut Plan, names: &[ObjectName]) {
    if plan.kind != StatementKind::Ddl {
        return;
    }
    let mut tables = Vec::new();
    for n in names.iter().filter(|n| rules.lookup_reference(n)) {
        let display = name_parts(n).join(".");
        if !tables.contains(&display) {
            tables.push(display);
        }
    }
    if tables.is_empty() {
        return;
    }
    plan.placement = Placement::AllShards;
    plan.reference_write = Some(ReferenceWrite {
        tables,
        insert: None,
    });
}

/// Statements that would change one copy of a reference table only: `COPY … FROM` into one
/// (it would load the default shard's copy alone) and `EXPLAIN ANALYZE` of a write to one
/// (it runs on one shard). Refused with 0A000; a `/* shardgate: shard=… */` hint lifts it,
/// for work on one copy on purpose.
pub(crate) fn refuse_one_copy_writes(rules: &Rules, plan: &mut Plan, st: &Statement) {
    if rules.references.is_empty() {
        return;
    }
    let table = match st {
        Statement::Copy {
            source: CopySource::Table { table_name, .. },
            to: false,
            ..
        } if rules.lookup_reference(table_name) => Some(("COPY … FROM", table_name.clone())),
        Statement::Explain {
            analyze: true,
            statement,
            ..
        } => write_targets(statement)
            .into_iter()
            .find(|n| rules.lookup_reference(n))
            .map(|n| ("EXPLAIN ANALYZE", n)),
        _ => None,
    };
    if let Some((what, name)) = table {
        plan.refusal.get_or_insert(Refusal {
            code: "0A000",
            message: format!(
                "{what} on reference table {} would change the copy on one shard only",
                name_parts(&name).join(".")
            ),
            hint: Some("use INSERT (or the statement without EXPLAIN ANALYZE): it runs on every shard; or add a /* shardgate: shard=… */ hint to work on one copy".into()),
            hint_overrides: true,
        });
    }
}
