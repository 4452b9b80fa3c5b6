//! The normalized plan cache: simple-protocol statements that differ only in their literal
//! values share one plan, planned once from their normalized text (`normalize`), and are routed
//! by their literals as a prepared statement is routed by its Bind values.
//!
//! A shape is trusted only after it is proved once: on its first sight the router plans both
//! the normalized text and the original, and the shape is used only when the two plans agree
//! on everything routing reads (kind, tables, hints, refusals) and every key the original plan
//! took from a literal is the normalized plan's parameter for that literal. A shape that fails
//! the proof is remembered as "plan as written" (the text-keyed cache then serves it). A route
//! that is not a single shard (scatter, broadcast, refusal) is always re-planned from the
//! original text, so merges (which may read `LIMIT` values) and error messages are exactly
//! those of the text itself.

use std::borrow::Cow;
use std::sync::Arc;

use shardgate_config::KeyType;

use crate::normalize::normalize;
use crate::params::{parse_key_text, BoundParams};
use crate::plan::{KeyExpr, Placement, Plan, StatementKind};
use crate::router::{Route, RouteError, Router};
use crate::Hint;

/// What the shape cache knows about a normalized text.
#[derive(Clone)]
pub(crate) enum Shape {
    /// Plan of the normalized text, proved to route like the original texts.
    Normalized(Arc<Plan>),
    /// Plan each text as written.
    AsWritten,
}

/// A simple-protocol statement's plan and the literal values that route it.
#[derive(Debug, Clone)]
pub struct QueryPlan<'a> {
    pub(crate) sql: &'a str,
    /// The plan: of the normalized text when `literals` is not empty, else of `sql` itself.
    pub plan: Arc<Plan>,
    pub(crate) literals: Vec<Cow<'a, str>>,
}

impl QueryPlan<'_> {
    /// Whether the plan is a shared shape routed by the statement's literals.
    pub fn is_normalized(&self) -> bool {
        !self.literals.is_empty()
    }
}

/// The outcome of comparing a normalized plan with the original text's plan.
enum Proof {
    Agrees,
    Differs,
    /// The original depends on this text's values (e.g. a malformed key literal): decide on a
    /// later text of the same shape.
    Undecided,
}

impl Router {
    /// Plans a simple-protocol statement: by its shape (literals as parameters) when the shape
    /// is proved, else by its text. Route it with [`Router::route_query`].
    pub fn plan_query<'a>(&self, sql: &'a str) -> QueryPlan<'a> {
        let as_written = |plan| QueryPlan {
            sql,
            plan,
            literals: Vec::new(),
        };
        let Some(normalized) = normalize(sql) else {
            return as_written(self.plan(sql));
        };
        match self.shapes.get(&normalized.text) {
            Some(Shape::Normalized(plan)) => QueryPlan {
                sql,
                plan,
                literals: normalized.literals,
            },
            Some(Shape::AsWritten) => as_written(self.plan(sql)),
            None => {
                let original = self.plan(sql);
                let shaped = self.planner.plan(&normalized.text);
                match self.prove(&original, &shaped, &normalized.literals) {
                    Proof::Agrees => {
                        let plan = Arc::new(shaped);
                        self.shapes
                            .insert(&normalized.text, Shape::Normalized(Arc::clone(&plan)));
                        QueryPlan {
                            sql,
                            plan,
                            literals: normalized.literals,
                        }
                    }
                    Proof::Differs => {
                        self.shapes.insert(&normalized.text, Shape::AsWritten);
                        as_written(original)
                    }
                    Proof::Undecided => as_written(original),
                }
            }
        }
    }

    /// Routes a planned simple-protocol statement; returns the route and the plan it used (the
    /// original text's plan whenever the route is not a single shard).
    pub fn route_query(
        &self,
        query: &QueryPlan<'_>,
        session_hint: Option<&Hint>,
    ) -> Result<(Route, Arc<Plan>), RouteError> {
        if query.literals.is_empty() {
            let route = self.route(&query.plan, &BoundParams::NONE, session_hint)?;
            return Ok((route, Arc::clone(&query.plan)));
        }
        let values: Vec<Option<&[u8]>> =
            query.literals.iter().map(|l| Some(l.as_bytes())).collect();
        let params = BoundParams {
            values: &values,
            formats: &[],
            types: &[],
        };
        if let Ok(route @ Route::Shard(_)) = self.route(&query.plan, &params, session_hint) {
            return Ok((route, Arc::clone(&query.plan)));
        }
        let plan = self.plan(query.sql);
        let route = self.route(&plan, &BoundParams::NONE, session_hint)?;
        Ok((route, plan))
    }

    /// [`Router::split_insert`] for a planned simple-protocol statement: the split is always
    /// made from the text's own plan (a shape's plan has parameters where the text has literals).
    pub fn split_query(
        &self,
        query: &QueryPlan<'_>,
        session_hint: Option<&Hint>,
    ) -> Result<Option<crate::InsertSplit>, RouteError> {
        if !query.plan.splittable_insert() {
            return Ok(None);
        }
        let plan = if query.literals.is_empty() {
            Arc::clone(&query.plan)
        } else {
            self.plan(query.sql)
        };
        self.split_insert(&plan, query.sql, &BoundParams::NONE, session_hint)
    }

    /// Whether `shaped` (the plan of the normalized text) routes every text of the shape as the
    /// text's own plan would, judged on `original` and its `literals`.
    fn prove(&self, original: &Plan, shaped: &Plan, literals: &[Cow<'_, str>]) -> Proof {
        if original.refusal.is_some() && original.refusal != shaped.refusal {
            return Proof::Undecided;
        }
        let dml = original
            .statement_kinds
            .iter()
            .all(|k| matches!(k, StatementKind::Read { .. } | StatementKind::Write));
        let same_text_facts = dml
            && original.kind == shaped.kind
            && original.statement_kinds == shaped.statement_kinds
            && original.statement_count == shaped.statement_count
            && original.command == shaped.command
            && original.hint == shaped.hint
            && original.role_hint == shaped.role_hint
            && original.sharded_tables == shaped.sharded_tables
            && original.unsharded_tables == shaped.unsharded_tables
            && original.reference_tables == shaped.reference_tables
            && original.reference_write == shaped.reference_write
            && original.unsupported_cross_shard == shaped.unsupported_cross_shard
            && original.refusal == shaped.refusal
            && original.key_type == shaped.key_type;
        if !same_text_facts {
            return Proof::Differs;
        }
        let placement = match (&original.placement, &shaped.placement) {
            (Placement::Default, Placement::Default)
            | (Placement::AllShards, Placement::AllShards) => true,
            (
                Placement::Keys {
                    key_type,
                    keys,
                    single_shard_required,
                },
                Placement::Keys {
                    key_type: t2,
                    keys: k2,
                    single_shard_required: s2,
                },
            ) => {
                key_type == t2
                    && single_shard_required == s2
                    && same_keys(keys, k2, *key_type, literals)
            }
            _ => false,
        };
        let update_type = original.key_type.unwrap_or(self.default_key_type);
        if placement
            && same_keys(
                &original.key_updates,
                &shaped.key_updates,
                update_type,
                literals,
            )
        {
            Proof::Agrees
        } else {
            Proof::Differs
        }
    }
}

/// Keys of the original plan against the normalized plan's: a literal key must be exactly the
/// parameter standing for that literal.
fn same_keys(
    original: &[KeyExpr],
    shaped: &[KeyExpr],
    key_type: KeyType,
    literals: &[Cow<'_, str>],
) -> bool {
    original.len() == shaped.len()
        && original.iter().zip(shaped).all(|pair| match pair {
            (KeyExpr::Value(a), KeyExpr::Value(b)) => a == b,
            (KeyExpr::Value(v), KeyExpr::Param(n)) => n
                .checked_sub(1)
                .and_then(|i| literals.get(i))
                .is_some_and(|l| parse_key_text(key_type, l).as_ref() == Ok(v)),
            _ => false,
        })
}
