//! Choosing the shard for each unit of work (what the proxy answers itself because no shard
//! is needed yet is `local_answer`).
//!
//! A detached batch is routed by its first Query or Bind (the router decides from the
//! statement text, cached, and the Bind's parameter values). While a transaction holds a server
//! connection, every later statement must route to the same shard: a statement for another
//! shard is refused with 0A000 naming both. A `BEGIN` in the simple protocol is answered by the
//! proxy (`local_answer`) and sent to the server only with the transaction's first statement,
//! so the transaction lands on that statement's shard rather than on the default one.

use std::sync::Arc;

use shardgate_router::{
    BoundParams, Hint, KeyExpr, Placement, Plan, RoleHint, Route, RouteError, ShardIndex,
    StatementKind,
};
use shardgate_wire::backend::TransactionStatus;
use shardgate_wire::{frontend, sqlstate, Frame};

use crate::session::Session;

/// Where a detached batch goes.
pub(crate) enum Target {
    Shard(ShardIndex),
    /// Boxed: rare, and far larger than a shard index.
    Elsewhere(Box<Elsewhere>),
}

/// Where a detached batch for more than one shard goes.
pub(crate) enum Elsewhere {
    /// Several shards: a cross-shard read (merged) or a broadcast (DDL, or keyless writes when
    /// `sharding.keyless_writes = "broadcast"`).
    Many {
        shards: Vec<ShardIndex>,
        plan: Arc<Plan>,
    },
    /// A multi-row INSERT whose rows belong to several shards: one INSERT per shard.
    SplitInsert(shardgate_router::InsertSplit),
    /// A `COPY <sharded table> FROM STDIN`: each row to the shard of its key.
    SplitCopy(crate::copy_split::CopySplit),
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
    /// A proxy whose lease on the topology ran out routes nothing (see `topology::Lease`).
    fn check_lease(&self) -> Result<(), RouteError> {
        self.shared.lease.check()
    }

    pub(crate) fn shard_name(&self, shard: ShardIndex) -> String {
        self.shared
            .topo()
            .router
            .shard_names()
            .get(shard)
            .map_or_else(|| "?".to_owned(), String::clone)
    }

    /// The route of one Query or Bind; `None` for other messages.
    pub(crate) fn route_frame(
        &mut self,
        frame: &Frame,
    ) -> Result<Option<(Route, Arc<Plan>)>, RouteError> {
        match frame.tag() {
            frontend::QUERY => {
                let text = frontend::query_text(frame).map_err(protocol_error)?;
                let sql = self.sql(text);
                let topo = self.shared.topo();
                // By the statement's shape: literals route the shared plan (no parse per value).
                let query = topo.router.plan_query(&sql);
                self.routing.observe_shardgate_sets(&query.plan);
                let (route, plan) = topo.router.route_query(&query, self.routing.hint())?;
                Ok(Some((route, plan)))
            }
            frontend::BIND => {
                let bind = frontend::bind(frame).map_err(protocol_error)?;
                if !bind.statement.is_empty() {
                    // Marks the statement used, for the client's statement cache.
                    self.client_state.statements_mut().get(bind.statement);
                }
                // Not known here: the server will say so.
                let Some((text, types)) = self.bound_statement(bind.statement) else {
                    return Ok(None);
                };
                let params = frontend::bind_params(frame, &bind).map_err(protocol_error)?;
                let plan = self.shared.topo().router.plan(text);
                // Text-format values in the client's encoding, as the server will read them.
                let converted = self.bind_values_utf8(&params.values, &params.formats);
                let converted_refs: Option<Vec<Option<&[u8]>>> = converted
                    .as_ref()
                    .map(|vs| vs.iter().map(|v| v.as_deref()).collect());
                let bound = BoundParams {
                    values: converted_refs.as_deref().unwrap_or(&params.values),
                    formats: &params.formats,
                    types,
                };
                let route = self
                    .shared
                    .topo()
                    .router
                    .route(&plan, &bound, self.routing.hint())?;
                Ok(Some((route, plan)))
            }
            frontend::PARSE => {
                let parse = frontend::parse(frame).map_err(protocol_error)?;
                let text = self.sql(parse.query);
                let plan = self.shared.topo().router.plan(&text);
                if parse.name.is_empty() {
                    self.routing.set_unnamed(&text, &parse.param_types);
                } else {
                    self.routing.note_batch_parse(
                        parse.name,
                        text.into_owned(),
                        parse.param_types.clone(),
                    );
                }
                self.routing.observe_shardgate_sets(&plan);
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// The text and parameter types of the statement a Bind names (`""`: the unnamed one), if
    /// the client prepared it (without marking it used in the client's statement cache).
    pub(crate) fn known_statement(&self, name: &str) -> Option<(&str, &[u32])> {
        if name.is_empty() {
            let (text, types) = self.routing.unnamed()?;
            return Some((text, types));
        }
        let s = self.client_state.statements().peek(name)?;
        Some((&s.query, &s.param_types))
    }

    /// [`Self::known_statement`], or a statement parsed earlier in the batch being routed
    /// (JDBC sends Parse and Bind of a named statement together; a pipelined Parse can be
    /// held too).
    fn bound_statement(&self, name: &str) -> Option<(&str, &[u32])> {
        self.known_statement(name).or_else(|| {
            let (text, types) = self.routing.batch_parse(name)?;
            Some((text.as_str(), types.as_slice()))
        })
    }

    /// A lease that ran out refuses every statement but a ROLLBACK: ending a transaction
    /// routes nothing, and a client must be able to end one that was open when the proxy lost
    /// its store (else its connection stays in a transaction that outlives the partition).
    fn check_lease_for(&self, frame: &Frame) -> Result<(), RouteError> {
        let refused = match self.check_lease() {
            Ok(()) => return Ok(()),
            Err(refused) => refused,
        };
        let text = match frame.tag() {
            frontend::QUERY => frontend::query_text(frame).ok().map(|t| self.sql(t)),
            frontend::BIND => frontend::bind(frame)
                .ok()
                .and_then(|b| self.bound_statement(b.statement))
                .map(|(t, _)| std::borrow::Cow::Borrowed(t)),
            _ => None,
        };
        let plan = text.map(|t| self.shared.topo().router.plan(&t));
        match plan {
            Some(p) if p.kind == StatementKind::Rollback && p.statement_count == 1 => Ok(()),
            _ => Err(refused),
        }
    }

    /// Where a detached batch goes: the route of its first Query or Bind; a batch with neither
    /// (Parse/Describe only) goes to the default shard.
    pub(crate) fn route_batch(&mut self, batch: &[Frame]) -> Result<Target, RouteError> {
        self.check_lease()?;
        if !self.view.topo().routing {
            return Ok(Target::Shard(self.view.topo().router.default_shard()));
        }
        self.routing.clear_batch_parses();
        self.routing.clear_prerouted();
        // Read before routing: a route is kept only under the map it was made by.
        let version = self.shared.topology_version();
        let target = self.route_batch_frames(batch, version);
        self.routing.clear_batch_parses();
        target
    }

    fn route_batch_frames(&mut self, batch: &[Frame], version: u64) -> Result<Target, RouteError> {
        for frame in batch {
            let routed = match self.route_frame(frame) {
                Ok(routed) => routed,
                Err(e) => {
                    if let Some(split) = self.split_of(frame)? {
                        return Ok(Target::Elsewhere(Box::new(Elsewhere::SplitInsert(split))));
                    }
                    return match self.copy_of(frame) {
                        Some(copy) => Ok(Target::Elsewhere(Box::new(Elsewhere::SplitCopy(copy)))),
                        None => Err(e),
                    };
                }
            };
            if let Some((route, plan)) = routed {
                // A BEGIN sent with the transaction's first statement (JDBC sends both in one
                // batch) goes where that statement goes.
                if matches!(plan.kind, StatementKind::Begin { .. })
                    && plan.statement_count == 1
                    && plan.hint.is_none()
                {
                    continue;
                }
                return Ok(match route {
                    Route::Shard(s) => {
                        // The relay checks this message against the shard next (`check_pinned`):
                        // it takes this route instead of planning and routing it again.
                        self.routing
                            .set_prerouted(frame, version, Route::Shard(s), plan);
                        Target::Shard(s)
                    }
                    Route::Shards(shards) => {
                        Target::Elsewhere(Box::new(Elsewhere::Many { shards, plan }))
                    }
                    Route::AllShards => Target::Elsewhere(Box::new(Elsewhere::Many {
                        shards: (0..self.shared.topo().router.shard_names().len()).collect(),
                        plan,
                    })),
                });
            }
        }
        Ok(Target::Shard(self.shared.topo().router.default_shard()))
    }

    /// Whether a batch that arrived while the previous one was still running on the current
    /// server connection (outside a transaction) must go to another shard.
    pub(crate) fn belongs_elsewhere(&mut self, batch: &[Frame]) -> bool {
        if self.txn.has_deferred_begin() {
            // Only statements were prepared here: the BEGIN goes out with the batch, routed.
            return true;
        }
        if self.attachment.map_changed(self.shared.topology_version()) {
            // A new shard map: shard indices may mean other shards now. Route afresh.
            return true;
        }
        // A batch without statements (a Sync, Describe or Close after a Flush) refers to what
        // this connection holds: it stays.
        if !batch.iter().any(|f| {
            matches!(
                f.tag(),
                frontend::QUERY | frontend::PARSE | frontend::BIND | frontend::FUNCTION_CALL
            )
        }) {
            return false;
        }
        // Reads and writes may need different servers of the shard.
        if self.shared.topo().reads_can_leave_primary
            && self.batch_role(batch).read != self.attachment.is_read()
        {
            return true;
        }
        self.routing.clear_batch_parses();
        let elsewhere = self.batch_routes_elsewhere(batch);
        self.routing.clear_batch_parses();
        elsewhere
    }

    fn batch_routes_elsewhere(&mut self, batch: &[Frame]) -> bool {
        for frame in batch {
            match self.route_frame(frame) {
                // A BEGIN waits for the statement that says where the transaction goes (it is
                // deferred, or routed with that statement), whatever shard is at hand.
                Ok(Some((_, plan))) if matches!(plan.kind, StatementKind::Begin { .. }) => {
                    return true
                }
                Ok(Some((Route::Shard(s), _))) => return s != self.attachment.shard(),
                Ok(Some(_)) => return true,
                Ok(None) => {}
                // A COPY or multi-row INSERT the proxy splits over shards runs detached;
                // other errors are reported in order by the normal path.
                Err(_) => {
                    return self.copy_of(frame).is_some()
                        || matches!(self.split_of(frame), Ok(Some(_)))
                }
            }
        }
        false
    }

    /// Checks that a statement sent while holding a server connection belongs to its shard.
    pub(crate) fn check_pinned(&mut self, frame: &Frame) -> Result<(), RouteError> {
        if matches!(frame.tag(), frontend::QUERY | frontend::BIND) {
            self.check_lease_for(frame)?;
        }
        if !self.view.topo().routing {
            return Ok(());
        }
        let prerouted = match frame.tag() {
            frontend::QUERY | frontend::BIND => self
                .routing
                .take_prerouted(frame, self.shared.topology_version()),
            _ => None,
        };
        let routed = match prerouted {
            Some(routed) => Some(routed),
            None => self.route_frame(frame)?,
        };
        let Some((route, plan)) = routed else {
            return Ok(());
        };
        self.note_transaction_statement(frame, &plan);
        if self.txn.shards().is_multi() {
            self.check_multi_control(frame, &plan)?;
        }
        if self.txn.status() == TransactionStatus::Failed {
            // The server answers 25P02, as PostgreSQL would, whatever shard it names.
            return Ok(());
        }
        // Statements without sharded tables (transaction control, SET, SELECT 1, and tables
        // every shard has) run where the transaction is.
        if matches!(plan.placement, Placement::Default)
            && plan.hint.is_none()
            && self.routing.hint().is_none()
        {
            return Ok(());
        }
        if let (Some(why), TransactionStatus::Idle) =
            (self.client_state.pin().reason(), self.txn.status())
        {
            // Pinned (see `pinning`): the session's state lives on this shard's connection.
            if self.attachment.map_changed(self.shared.topology_version()) {
                return Err(feature_error(
                    format!(
                        "the shard map changed while this session was pinned to shard {} by {why}",
                        self.shard_name(self.attachment.shard())
                    ),
                    "reconnect: the session's state cannot follow its keys to their new shards",
                ));
            }
            let here = self.attachment.shard();
            return match route {
                Route::Shard(s) if s == here => Ok(()),
                _ => Err(feature_error(
                    format!(
                        "this session is pinned to shard {} by {why}, but the statement needs {}",
                        self.shard_name(here),
                        match route {
                            Route::Shard(s) => format!("shard {}", self.shard_name(s)),
                            _ => "several shards".to_owned(),
                        }
                    ),
                    "run it from another connection: the pin lasts until this client disconnects",
                )),
            };
        }
        if self.attachment.map_changed(self.shared.topology_version()) {
            // A rebalance published a new shard map while this transaction ran: its keys may
            // live elsewhere now, and shard indices may name other shards. The client retries.
            return Err(RouteError {
                code: sqlstate::SERIALIZATION_FAILURE,
                message: "the shard map changed while this transaction ran (a rebalance moved \
                          keys between shards)"
                    .into(),
                hint: Some("retry the transaction".into()),
            });
        }
        let here = self.attachment.shard();
        if self.txn.status() == TransactionStatus::Idle
            && !matches!(route, Route::Shard(s) if s == here)
        {
            // No transaction block: the statements of one batch (up to its Sync) are one
            // implicit transaction, which runs on one shard.
            return Err(feature_error(
                format!(
                    "the statements of one pipelined batch run as one implicit transaction on shard {}, but this statement belongs to {}",
                    self.shard_name(here),
                    match route {
                        Route::Shard(s) => format!("shard {}", self.shard_name(s)),
                        _ => "several shards".to_owned(),
                    }
                ),
                "wrap the batch in BEGIN … COMMIT (each statement then runs on its own shard, committed together), or end each statement with its own Sync",
            ));
        }
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

/// How a read on several shards is answered: merged in the proxy (and how), or gathered into
/// PostgreSQL (and why).
pub(crate) fn cross_shard_strategy(
    plan: &shardgate_router::Plan,
    router: &shardgate_router::Router,
) -> String {
    if let Some(g) = &plan.gather {
        let coordinator = router
            .shard_names()
            .get(router.default_shard())
            .cloned()
            .unwrap_or_default();
        let tables: Vec<&str> = g.relations.iter().map(|r| r.source.as_str()).collect();
        return format!(
            "gather into PostgreSQL: {} cannot be merged exactly in the proxy, so the shards' rows of {} are copied into temporary tables on {coordinator} and the statement runs there",
            g.reason,
            tables.join(", ")
        );
    }
    let Some(m) = &plan.merge else {
        return "merge in the proxy".to_owned();
    };
    let mut how = Vec::new();
    if m.grouped_on_shards {
        how.push(
            "groups by the shard key are whole on each shard: grouped there, not re-aggregated",
        );
    }
    if !m.group_by.is_empty() || !m.aggregates.is_empty() {
        how.push("re-aggregate the shards' partial groups");
    }
    if !m.order_by.is_empty() {
        how.push("merge-sort by the ORDER BY");
    }
    if m.limit.is_some() || m.offset.is_some() {
        how.push("apply LIMIT/OFFSET");
    }
    if how.is_empty() {
        how.push("concatenate");
    }
    format!("merge in the proxy ({})", how.join(", "))
}

/// For a read joining reference tables with sharded ones: that they do not widen the route.
fn reference_note(plan: &Plan) -> String {
    if plan.reference_tables.is_empty() {
        return String::new();
    }
    format!(
        "; reference tables {} have a copy on every shard",
        plan.reference_tables.join(", ")
    )
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
    let role = if plan.runs_on_replica() && plan.role_hint != Some(RoleHint::Primary) {
        "replica (the primary when the shard has none in rotation)"
    } else {
        "primary"
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
                    Placement::Default
                        if !plan.reference_tables.is_empty() && !plan.unsharded_tables =>
                    {
                        format!(
                            "only reference tables ({}): any one shard has them (the default shard; inside a transaction, the transaction's shard)",
                            plan.reference_tables.join(", ")
                        )
                    }
                    Placement::Default if plan.sharded_tables.is_empty() => {
                        "no sharded table: default shard".to_owned()
                    }
                    Placement::Default => "default shard".to_owned(),
                    Placement::Keys { .. } => {
                        format!(
                            "push down: the shard key of {} decides{}",
                            plan.sharded_tables.join(", "),
                            reference_note(&plan)
                        )
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
            format!(
                "shard keys on several shards: {}",
                cross_shard_strategy(&plan, router)
            ),
        ),
        Ok(Route::AllShards) => (
            names.join(","),
            match plan.kind {
                _ if plan.reference_write.is_some() => format!(
                    "{} on reference table {}: every shard at once, atomically (identical copies; the client gets one copy's answer)",
                    if plan.kind == StatementKind::Ddl { "DDL" } else { "write" },
                    plan.reference_write.as_ref().map(|w| w.tables.join(", ")).unwrap_or_default()
                ),
                StatementKind::Ddl => "DDL on a sharded table: every shard".to_owned(),
                StatementKind::Write => {
                    "write without a shard key: every shard (keyless_writes = broadcast)".to_owned()
                }
                _ => format!(
                    "no shard key: every shard; {}{}",
                    cross_shard_strategy(&plan, router),
                    reference_note(&plan)
                ),
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
