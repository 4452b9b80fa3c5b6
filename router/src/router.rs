//! The router's public face: build it from the config, [`Router::plan`] a statement text
//! (cached), and [`Router::route`] a plan to shards once parameters and hints are known.
//!
//! Precedence at routing: a comment hint in the text, then the session hint
//! (`SET shardgate.shard_key/shard`), then the keys found in the SQL.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use shardgate_config::{Config, KeyType, KeylessWrites};

use crate::analysis::Rules;
use crate::cache::{CacheStats, PlanCache};
use crate::classify::SIDE_EFFECT_FUNCTIONS;
use crate::hash::{hashint8extended, hashtextextended, uuid_hash_extended};
use crate::params::{parse_key_text, BadValue, BoundParams};
use crate::plan::{Hint, KeyExpr, KeyValue, Placement, Plan, StatementKind};
use crate::planner::{too_complex, Planner, LARGE_STACK, LARGE_TEXT};
use crate::ring::{Ring, RingError, ShardIndex};

/// Where a statement runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Shard(ShardIndex),
    /// Two or more shards, sorted (an IN list or `= ANY` spanning shards).
    Shards(Vec<ShardIndex>),
    AllShards,
}

/// Why a statement cannot be routed; sent to the client as an ErrorResponse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RouteError {
    /// SQLSTATE.
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
}

impl From<BadValue> for RouteError {
    fn from(b: BadValue) -> RouteError {
        RouteError {
            code: b.code,
            message: b.message,
            hint: None,
        }
    }
}

fn feature(message: String, hint: Option<String>) -> RouteError {
    RouteError {
        code: "0A000",
        message,
        hint,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("sharding ring: {0}")]
    Ring(#[from] RingError),
    #[error("sharding config: {0}")]
    Config(String),
}

pub struct Router {
    pub(crate) planner: Planner,
    ring: Ring,
    seed: u64,
    default_shard: ShardIndex,
    pub(crate) default_key_type: KeyType,
    keyless_writes: KeylessWrites,
    /// Plans by statement text.
    cache: PlanCache,
    /// Plans by statement shape (literals as parameters), for simple-protocol statements
    /// (`shapes`); half of the configured byte budget each.
    pub(crate) shapes: PlanCache<crate::shapes::Shape>,
    /// Statement texts sqlparser could not parse (routed by hint, transaction or default).
    unparsed: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("shards", &self.ring.shards())
            .field("default_shard", &self.default_shard)
            .field("tables", &self.planner.rules.tables.len())
            .finish_non_exhaustive()
    }
}

impl Router {
    pub fn new(config: &Config) -> Result<Router, RouterError> {
        let s = &config.sharding;
        let names: Vec<&str> = config.shards.iter().map(|sh| sh.name.as_str()).collect();
        let ring = Ring::new(&names, s.slot_bits)?;
        let default_name = s
            .default_shard
            .as_deref()
            .unwrap_or(names.first().copied().unwrap_or_default());
        let default_shard = ring.shard_index(default_name).ok_or_else(|| {
            RouterError::Config(format!(
                "default shard `{default_name}` is not a configured shard"
            ))
        })?;
        let rules = Rules::from_config(s).map_err(|e| RouterError::Config(e.to_string()))?;
        Ok(Router {
            planner: Planner {
                rules,
                side_effects: config
                    .replicas
                    .side_effect_functions
                    .iter()
                    .map(|f| f.to_ascii_lowercase())
                    .collect::<HashSet<_>>(),
            },
            ring,
            seed: s.hash_seed as u64,
            default_shard,
            default_key_type: s.key_type,
            keyless_writes: s.keyless_writes,
            cache: PlanCache::new(s.route_cache_size, s.route_cache_bytes / 2),
            shapes: PlanCache::new(s.route_cache_size, s.route_cache_bytes / 2),
            unparsed: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Adds user functions that have side effects (a SELECT calling one goes to the primary).
    pub fn with_side_effect_functions<S: AsRef<str>>(mut self, names: &[S]) -> Router {
        for n in names {
            let n = n.as_ref().trim().to_lowercase();
            if !SIDE_EFFECT_FUNCTIONS.contains(&n.as_str()) {
                self.planner.side_effects.insert(n);
            }
        }
        self.cache.clear();
        self.shapes.clear();
        self
    }

    /// Analyses a statement text; a repeated text is served from the cache (same `Arc`).
    pub fn plan(&self, sql: &str) -> Arc<Plan> {
        self.cache
            .get_or_insert(sql, || Arc::new(self.plan_uncached(sql)))
    }

    fn plan_uncached(&self, sql: &str) -> Plan {
        let plan = self.plan_text(sql);
        if plan.statement_kinds.contains(&StatementKind::Unparsed)
            || plan.kind == StatementKind::Unparsed
        {
            self.unparsed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // The start of the text only: enough to recognise it, not a data dump.
            let start: String = sql.chars().take(60).collect();
            tracing::info!(statement = %start, len = sql.len(), "SQL parser could not read a statement; routing it by hint, transaction or default shard");
        }
        plan
    }

    fn plan_text(&self, sql: &str) -> Plan {
        if sql.len() <= LARGE_TEXT {
            return self.planner.plan(sql);
        }
        crate::large::LARGE_PLANS.run(|| {
            std::thread::scope(|scope| {
                let worker = std::thread::Builder::new()
                    .name("shardgate-plan".into())
                    .stack_size(LARGE_STACK)
                    .spawn_scoped(scope, || self.planner.plan(sql));
                match worker.map(|w| w.join()) {
                    Ok(Ok(plan)) => plan,
                    _ => {
                        tracing::warn!(len = sql.len(), "planning a large statement failed");
                        too_complex(sql)
                    }
                }
            })
        })
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// How many distinct statement texts sqlparser could not parse (each is planned once;
    /// the cache serves repeats).
    pub fn unparsed_count(&self) -> u64 {
        self.unparsed.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn shard_names(&self) -> &[String] {
        self.ring.shards()
    }

    pub fn default_shard(&self) -> ShardIndex {
        self.default_shard
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Hashes a key with PostgreSQL's function for its type and the configured seed.
    pub fn shard_for_key(&self, key: &KeyValue) -> ShardIndex {
        self.ring.shard_for_hash(self.key_hash(key))
    }

    /// A key's hash: PostgreSQL's function for its type, with the configured seed.
    pub fn key_hash(&self, key: &KeyValue) -> i64 {
        match key {
            KeyValue::Int(v) => hashint8extended(*v, self.seed),
            KeyValue::Text(s) => hashtextextended(s, self.seed),
            KeyValue::Uuid(u) => uuid_hash_extended(u, self.seed),
        }
    }

    /// SQL over `column` selecting exactly the rows the ring gives `shard`.
    pub fn key_predicate(&self, shard: ShardIndex, column: &str, key_type: KeyType) -> String {
        let seed = self.seed as i64;
        let hash = match key_type {
            KeyType::Bigint => format!("hashint8extended({column}::int8, {seed})"),
            KeyType::Text => format!("hashtextextended({column}::text, {seed})"),
            KeyType::Uuid => format!("uuid_hash_extended({column}, {seed})"),
        };
        self.ring.predicate(shard, &hash)
    }

    fn shard_list(&self, shards: &BTreeSet<ShardIndex>) -> String {
        let names: Vec<&str> = shards
            .iter()
            .map(|s| self.ring.shards()[*s].as_str())
            .collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            _ => names.join(""),
        }
    }

    fn hint_shard(&self, hint: &Hint, plan: &Plan) -> Result<ShardIndex, RouteError> {
        match hint {
            Hint::Shard(name) => self.ring.shard_index(name).ok_or_else(|| RouteError {
                code: "42704",
                message: format!(
                    "unknown shard \"{name}\": the configured shards are {}",
                    self.ring.shards().join(", ")
                ),
                hint: None,
            }),
            Hint::ShardKey(text) => {
                let key_type = plan.key_type.unwrap_or(self.default_key_type);
                let key = parse_key_text(key_type, text)?;
                Ok(self.shard_for_key(&key))
            }
        }
    }

    /// The shards of each key expression (NULL keys match nothing and add none).
    fn key_shards(
        &self,
        keys: &[KeyExpr],
        key_type: KeyType,
        params: &BoundParams<'_>,
    ) -> Result<BTreeSet<ShardIndex>, RouteError> {
        let mut shards = BTreeSet::new();
        for k in keys {
            self.each_key_shard(k, key_type, params, |s| {
                shards.insert(s);
            })?;
        }
        Ok(shards)
    }

    /// Passes `add` the shard of each key `k` names: one for a value or a parameter, none for
    /// a NULL parameter, one per element of an array parameter.
    fn each_key_shard(
        &self,
        k: &KeyExpr,
        key_type: KeyType,
        params: &BoundParams<'_>,
        mut add: impl FnMut(ShardIndex),
    ) -> Result<(), RouteError> {
        match k {
            KeyExpr::Value(v) => add(self.shard_for_key(v)),
            KeyExpr::Param(n) => {
                if let Some(v) = params.key(*n, key_type)? {
                    add(self.shard_for_key(&v));
                }
            }
            KeyExpr::ParamArray(n) => {
                for v in params.key_array(*n, key_type)? {
                    add(self.shard_for_key(&v));
                }
            }
        }
        Ok(())
    }

    /// Turns a plan into shards, given bound parameters and the session's hint.
    pub fn route(
        &self,
        plan: &Plan,
        params: &BoundParams<'_>,
        session_hint: Option<&Hint>,
    ) -> Result<Route, RouteError> {
        // A write to reference tables keeps every copy: a session hint (meant for sharded
        // rows) does not narrow it; a hint in its own text does (to repair one copy).
        let session_hint = session_hint.filter(|_| plan.reference_write.is_none());
        let hint = plan.hint.as_ref().or(session_hint);
        if let Some(r) = &plan.refusal {
            if !(r.hint_overrides && hint.is_some()) {
                return Err(RouteError {
                    code: r.code,
                    message: r.message.clone(),
                    hint: r.hint.clone(),
                });
            }
        }
        let route = match (hint, &plan.placement) {
            (Some(h), _) => Route::Shard(self.hint_shard(h, plan)?),
            (None, Placement::Default) => Route::Shard(self.default_shard),
            (None, Placement::AllShards) => Route::AllShards,
            (None, Placement::Keys { key_type, keys, .. })
                if keys.len() == 1 && !matches!(keys[0], KeyExpr::ParamArray(_)) =>
            {
                // One key that names at most one shard (`WHERE user_id = $1`, the usual
                // statement): that shard without building a set; a NULL parameter names none,
                // the default shard.
                let mut shard = self.default_shard;
                self.each_key_shard(&keys[0], *key_type, params, |s| shard = s)?;
                Route::Shard(shard)
            }
            (
                None,
                Placement::Keys {
                    key_type,
                    keys,
                    single_shard_required,
                },
            ) => {
                let shards = self.key_shards(keys, *key_type, params)?;
                match shards.len() {
                    0 => Route::Shard(self.default_shard),
                    1 => Route::Shard(shards.into_iter().next().unwrap_or(self.default_shard)),
                    _ if *single_shard_required => {
                        let list = self.shard_list(&shards);
                        return Err(feature(
                            if plan.command == "INSERT" && plan.statement_count == 1 {
                                format!("INSERT rows go to shards {list}: write them in separate statements")
                            } else {
                                format!("the statement's shard keys are on shards {list}, but it must run on one shard")
                            },
                            Some("split it so that each statement names keys of one shard".into()),
                        ));
                    }
                    _ => Route::Shards(shards.into_iter().collect()),
                }
            }
        };
        let route = match route {
            _ if self.ring.shards().len() == 1 => Route::Shard(0),
            Route::Shards(s) if s.len() == 1 => Route::Shard(s[0]),
            r => r,
        };
        self.check_key_updates(plan, &route, params)?;
        if !matches!(route, Route::Shard(_)) {
            self.check_cross_shard(plan, &route)?;
        }
        Ok(route)
    }

    /// An UPDATE may set the key only to a value of the shard it runs on.
    pub(crate) fn check_key_updates(
        &self,
        plan: &Plan,
        route: &Route,
        params: &BoundParams<'_>,
    ) -> Result<(), RouteError> {
        if plan.key_updates.is_empty() {
            return Ok(());
        }
        let table = plan.sharded_tables.first().map_or("", String::as_str);
        let hint = Some("moving a row between shards needs a DELETE and an INSERT".to_owned());
        let Route::Shard(here) = route else {
            return Err(feature(
                format!("{} of the shard key of {table} on several shards: the rows could belong elsewhere", plan.command),
                hint,
            ));
        };
        let key_type = plan.key_type.unwrap_or(self.default_key_type);
        let targets = self.key_shards(&plan.key_updates, key_type, params)?;
        if let Some(other) = targets.iter().find(|s| *s != here) {
            return Err(feature(
                format!(
                    "{} would move rows of {table} from shard {} to shard {}",
                    plan.command,
                    self.ring.shards()[*here],
                    self.ring.shards()[*other]
                ),
                hint,
            ));
        }
        Ok(())
    }

    fn check_cross_shard(&self, plan: &Plan, route: &Route) -> Result<(), RouteError> {
        if let Some(what) = &plan.unsupported_cross_shard {
            return Err(feature(
                format!("{what} is not supported across shards"),
                Some("restrict the statement to one shard with its shard key, or add a /* shardgate: shard=… */ hint".into()),
            ));
        }
        // A write to reference tables runs on every shard by design.
        let keyless_write = plan.kind == StatementKind::Write
            && *route == Route::AllShards
            && plan.reference_write.is_none();
        if keyless_write && self.keyless_writes == KeylessWrites::Refuse {
            let table = plan.sharded_tables.first().map_or("", String::as_str);
            let key = self
                .planner
                .rules
                .key_column_of(table)
                .unwrap_or("its shard key");
            return Err(feature(
                format!("{} on sharded table {table} without its shard key {key} would run on every shard", plan.command),
                Some(format!(
                    "add `{key} = …` to the statement, or a /* shardgate: shard_key=… */ hint; set sharding.keyless_writes = \"broadcast\" to run such writes on every shard"
                )),
            ));
        }
        Ok(())
    }
}
