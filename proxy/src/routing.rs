//! Choosing the shard for each unit of work, and what the proxy answers itself because no
//! shard is needed yet.
//!
//! A detached batch is routed by its first Query or Bind (the router decides from the
//! statement text, cached, and the Bind's parameter values). While a transaction holds a server
//! connection, every later statement must route to the same shard: a statement for another
//! shard is refused with 0A000 naming both. A `BEGIN` in the simple protocol is answered by the
//! proxy and sent to the server only with the transaction's first statement, so the
//! transaction lands on that statement's shard rather than on the default one.

use std::sync::Arc;

use shardgate_router::{
    BoundParams, Hint, KeyExpr, Placement, Plan, Route, RouteError, ShardIndex, ShardgateParam,
    StatementKind,
};
use shardgate_wire::backend::{self, TransactionStatus};
use shardgate_wire::{frontend, sqlstate, Frame};

use crate::session::Session;

/// Where a detached batch goes.
pub(crate) enum Target {
    Shard(ShardIndex),
    /// Several shards: a cross-shard read (merged) or a broadcast (DDL, or keyless writes when
    /// `sharding.keyless_writes = "broadcast"`).
    Many {
        shards: Vec<ShardIndex>,
        plan: Arc<Plan>,
    },
}

fn protocol_error(e: impl std::fmt::Display) -> RouteError {
    RouteError {
        code: sqlstate::PROTOCOL_VIOLATION,
        message: e.to_string(),
        hint: None,
    }
}

pub(crate) fn feature_error(message: String, hint: &str) -> RouteError {
    RouteError {
        code: sqlstate::FEATURE_NOT_SUPPORTED,
        message,
        hint: Some(hint.to_owned()),
    }
}

impl Session {
    fn hint(&self) -> Option<&Hint> {
        self.local_hint.as_ref().or(self.session_hint.as_ref())
    }

    pub(crate) fn shard_name(&self, shard: ShardIndex) -> &str {
        self.shared
            .router
            .shard_names()
            .get(shard)
            .map_or("?", String::as_str)
    }

    /// Applies `SET [LOCAL] shardgate.shard_key|shard` statements of a plan to the session.
    pub(crate) fn observe_shardgate_sets(&mut self, plan: &Plan) {
        for kind in &plan.statement_kinds {
            let StatementKind::ShardgateSet(set) = kind else {
                continue;
            };
            let hint = set.value.clone().map(|v| match set.name {
                ShardgateParam::ShardKey => Hint::ShardKey(v),
                ShardgateParam::Shard => Hint::Shard(v),
            });
            if set.local {
                self.local_hint = hint;
            } else {
                self.session_hint = hint;
            }
        }
    }

    /// The route of one Query or Bind; `None` for other messages.
    pub(crate) fn route_frame(
        &mut self,
        frame: &Frame,
    ) -> Result<Option<(Route, Arc<Plan>)>, RouteError> {
        match frame.tag() {
            frontend::QUERY => {
                let text = frontend::query_text(frame).map_err(protocol_error)?;
                let plan = self.shared.router.plan(text);
                self.observe_shardgate_sets(&plan);
                let route = self
                    .shared
                    .router
                    .route(&plan, &BoundParams::NONE, self.hint())?;
                Ok(Some((route, plan)))
            }
            frontend::BIND => {
                let bind = frontend::bind(frame).map_err(protocol_error)?;
                let (text, types) = if bind.statement.is_empty() {
                    match &self.unnamed {
                        Some((t, ty)) => (t.clone(), ty.clone()),
                        // No unnamed statement: the server will say so.
                        None => return Ok(None),
                    }
                } else {
                    match self.statements.get(bind.statement) {
                        Some(s) => (s.query.clone(), s.param_types.clone()),
                        None => return Ok(None),
                    }
                };
                let params = frontend::bind_params(frame, &bind).map_err(protocol_error)?;
                let plan = self.shared.router.plan(&text);
                let bound = BoundParams {
                    values: &params.values,
                    formats: &params.formats,
                    types: &types,
                };
                let route = self.shared.router.route(&plan, &bound, self.hint())?;
                Ok(Some((route, plan)))
            }
            frontend::PARSE => {
                let parse = frontend::parse(frame).map_err(protocol_error)?;
                if parse.name.is_empty() {
                    self.unnamed = Some((parse.query.to_owned(), parse.param_types.clone()));
                }
                let plan = self.shared.router.plan(parse.query);
                self.observe_shardgate_sets(&plan);
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Where a detached batch goes: the route of its first Query or Bind; a batch with neither
    /// (Parse/Describe only) goes to the default shard.
    pub(crate) fn route_batch(&mut self, batch: &[Frame]) -> Result<Target, RouteError> {
        for frame in batch {
            if let Some((route, plan)) = self.route_frame(frame)? {
                return Ok(match route {
                    Route::Shard(s) => Target::Shard(s),
                    Route::Shards(shards) => Target::Many { shards, plan },
                    Route::AllShards => Target::Many {
                        shards: (0..self.shared.router.shard_names().len()).collect(),
                        plan,
                    },
                });
            }
        }
        Ok(Target::Shard(self.shared.router.default_shard()))
    }

    /// Checks that a statement sent while holding a server connection belongs to its shard.
    pub(crate) fn check_pinned(&mut self, frame: &Frame) -> Result<(), RouteError> {
        let Some((route, plan)) = self.route_frame(frame)? else {
            return Ok(());
        };
        // Statements without sharded tables (transaction control, SET, SELECT 1, and tables
        // every shard has) run where the transaction is.
        if matches!(plan.placement, Placement::Default)
            && plan.hint.is_none()
            && self.hint().is_none()
        {
            return Ok(());
        }
        let here = self.shard;
        match route {
            Route::Shard(s) if s == here => Ok(()),
            Route::Shard(s) => Err(feature_error(
                format!(
                    "this transaction is on shard {}, but the statement belongs to shard {}",
                    self.shard_name(here),
                    self.shard_name(s)
                ),
                "a transaction runs on one shard: commit it and run the statement in its own transaction",
            )),
            Route::Shards(_) | Route::AllShards => Err(feature_error(
                format!(
                    "this transaction is on shard {}, but the statement needs several shards",
                    self.shard_name(here)
                ),
                "run cross-shard statements outside a transaction, or restrict it with the shard key",
            )),
        }
    }

    /// Answers batches that need no server: `SHARDGATE ROUTE`, and a BEGIN (and an empty
    /// transaction's COMMIT/ROLLBACK) while the shard is not known yet. Returns whether it did.
    pub(crate) fn answer_locally(&mut self, batch: &[Frame]) -> bool {
        let [frame] = batch else { return false };
        if frame.tag() != frontend::QUERY {
            return false;
        }
        let Ok(text) = frontend::query_text(frame) else {
            return false;
        };
        let plan = self.shared.router.plan(text);
        if plan.statement_count != 1 {
            return false;
        }
        match &plan.kind {
            StatementKind::ShardgateRoute(inner) => {
                self.answer_route(inner);
                true
            }
            StatementKind::Begin { .. }
                if self.status == TransactionStatus::Idle
                    && !self.mode_is_session()
                    && self.shared.router.shard_names().len() > 1 =>
            {
                self.deferred_begin = Some(text.to_owned());
                backend::write_command_complete(&mut self.io.out, "BEGIN");
                self.status = TransactionStatus::InTransaction;
                self.io.push_ready(self.status);
                true
            }
            StatementKind::Commit | StatementKind::Rollback if self.deferred_begin.is_some() => {
                self.deferred_begin = None;
                self.local_hint = None;
                let tag = if plan.kind == StatementKind::Commit {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                };
                backend::write_command_complete(&mut self.io.out, tag);
                self.status = TransactionStatus::Idle;
                self.io.push_ready(self.status);
                true
            }
            _ => false,
        }
    }

    /// `SHARDGATE ROUTE <statement>`: one row saying where the statement would go and why.
    fn answer_route(&mut self, sql: &str) {
        let explained = explain(&self.shared.router, sql, self.hint());
        backend::write_text_row_description(&mut self.io.out, &["shard", "role", "keys", "reason"]);
        let row: Vec<Option<&str>> = explained.iter().map(|v| Some(v.as_str())).collect();
        backend::write_data_row(&mut self.io.out, &row);
        backend::write_command_complete(&mut self.io.out, "SELECT 1");
        self.io.push_ready(self.status);
    }
}

fn key_text(v: &shardgate_router::KeyValue) -> String {
    use shardgate_router::KeyValue;
    match v {
        KeyValue::Int(i) => i.to_string(),
        KeyValue::Text(t) => format!("'{}'", t.replace('\'', "''")),
        KeyValue::Uuid(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )
        }
    }
}

/// Where `sql` would go, as (shard, role, keys, reason), for `SHARDGATE ROUTE` and
/// `shardgate check --route`.
pub fn explain(router: &shardgate_router::Router, sql: &str, hint: Option<&Hint>) -> [String; 4] {
    let plan = router.plan(sql);
    let names = router.shard_names();
    let keys = match &plan.placement {
        Placement::Keys { keys, .. } => keys
            .iter()
            .map(|k| match k {
                KeyExpr::Value(v) => key_text(v),
                KeyExpr::Param(n) => format!("${n}"),
                KeyExpr::ParamArray(n) => format!("any(${n})"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    };
    let role = match plan.kind {
        StatementKind::Read {
            locking: false,
            side_effects: false,
        } => "primary (reads use replicas once configured)",
        _ => "primary",
    };
    let from_params = matches!(&plan.placement, Placement::Keys { keys, .. }
        if keys.iter().any(|k| !matches!(k, KeyExpr::Value(_))));
    let routed = if from_params && plan.hint.is_none() && hint.is_none() {
        let tables = plan.sharded_tables.join(", ");
        return [
            "decided at Bind".to_owned(),
            role.to_owned(),
            keys,
            format!("shard key of {tables} comes from a parameter: the shard owning its value"),
        ];
    } else {
        router.route(&plan, &BoundParams::NONE, plan.hint.as_ref().or(hint))
    };
    let (shard, reason) = match routed {
        Ok(Route::Shard(s)) => {
            let name = names.get(s).cloned().unwrap_or_default();
            let why = if plan.hint.is_some() || hint.is_some() {
                "routing hint".to_owned()
            } else {
                match &plan.placement {
                    Placement::Default if plan.sharded_tables.is_empty() => {
                        "no sharded table: default shard".to_owned()
                    }
                    Placement::Default => "default shard".to_owned(),
                    Placement::Keys { .. } => {
                        format!("shard key of {}", plan.sharded_tables.join(", "))
                    }
                    Placement::AllShards => "single shard configured".to_owned(),
                }
            };
            (name, why)
        }
        Ok(Route::Shards(v)) => (
            v.iter()
                .filter_map(|s| names.get(*s).cloned())
                .collect::<Vec<_>>()
                .join(","),
            "shard keys on several shards: results merged".to_owned(),
        ),
        Ok(Route::AllShards) => (
            names.join(","),
            match plan.kind {
                StatementKind::Ddl => "DDL on a sharded table: every shard".to_owned(),
                StatementKind::Write => {
                    "write without a shard key: every shard (keyless_writes = broadcast)".to_owned()
                }
                _ => "no shard key: every shard, results merged".to_owned(),
            },
        ),
        Err(e) => (
            String::new(),
            format!("refused ({}): {}", e.code, e.message),
        ),
    };
    let keys = if keys.is_empty() && matches!(plan.placement, Placement::Keys { .. }) {
        "parameters".to_owned()
    } else {
        keys
    };
    [shard, role.to_owned(), keys, reason]
}
