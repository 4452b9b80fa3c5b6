//! `[sharding] mode = "observe"`: the proxy pools for the one configured database and plans
//! every executed statement against the sharding rules for `sharding.observe_shards` shards
//! (a router of its own over shards named `v0…`), without routing by them. Per fingerprint
//! it counts what each call would do (one shard, scatter and how, broadcast, split, refused
//! and why, with one example), per unsharded table how it is used, and the ring slots of the
//! keys seen; `report` makes the readiness report from them. Everything is bounded: the
//! statements by `stats.max_queries`, the tables by `MAX_TABLES`, the slots by the ring.

use std::collections::HashMap;
use std::sync::Mutex;

use shardgate_admin::readiness::{
    KeySkew, ObservedStatement, ShardShare, ShardingReadiness, SlotCount, TableUse, WouldRoute,
};
use shardgate_config::{Config, Shard};
use shardgate_router::{BoundParams, Plan, Route, Router, RouterError, StatementKind};

/// Unsharded tables tracked at most.
const MAX_TABLES: usize = 1000;
/// Example texts are cut to this many characters.
const EXAMPLE_CHARS: usize = 500;
/// A table that never returned more rows than this to a read of it alone may be "small".
const SMALL_TABLE_ROWS: u64 = 10_000;
/// The report lists at most this many statements per section and slots.
const REPORT_STATEMENTS: usize = 50;
const REPORT_SLOTS: usize = 10;

/// What one call would do.
enum Outcome {
    Single,
    Scatter(String),
    Broadcast(String),
    Split(&'static str),
    Refused(String),
}

struct Statement {
    text: String,
    example: String,
    routes: WouldRoute,
    strategy: Option<String>,
    refusal: Option<String>,
    caveat: Option<String>,
}

#[derive(Default)]
struct Table {
    reads: u64,
    writes: u64,
    with_sharded: u64,
    max_rows_read: u64,
}

struct Observed {
    statements: HashMap<u64, Statement>,
    evicted: u64,
    tables: HashMap<String, Table>,
    /// Keys per ring slot (index: slot + half the ring).
    slots: Vec<u32>,
    keys: u64,
    totals: WouldRoute,
}

pub(crate) struct Observer {
    router: Router,
    max_statements: usize,
    observed: Mutex<Observed>,
}

/// The routing config of an observing proxy: its one shard without the sharding rules (it is
/// a plain pooler).
pub(crate) fn routing_config(config: &Config) -> Config {
    let mut plain = config.clone();
    plain.sharding.tables.clear();
    plain.sharding.reference_tables.clear();
    plain
}

impl Observer {
    /// The observer of `config` (`mode = "observe"`): its rules over `observe_shards` shards.
    pub(crate) fn new(config: &Config) -> Result<Observer, RouterError> {
        let mut planned = config.clone();
        let template = config.shards.first().cloned();
        planned.shards = (0..config.sharding.observe_shards)
            .filter_map(|i| {
                template.clone().map(|t| Shard {
                    name: format!("v{i}"),
                    replicas: Vec::new(),
                    ..t
                })
            })
            .collect();
        planned.sharding.default_shard = None;
        let router = Router::new(&planned)?;
        let slots = 1usize << router.ring().slot_bits();
        Ok(Observer {
            router,
            max_statements: config.stats.max_queries.max(1),
            observed: Mutex::new(Observed {
                statements: HashMap::new(),
                evicted: 0,
                tables: HashMap::new(),
                slots: vec![0; slots],
                keys: 0,
                totals: WouldRoute::default(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One executed call of `sql` (with its Bind parameters, if any) that returned `rows`.
    pub(crate) fn observe(&self, sql: &str, params: Option<&BoundParams<'_>>, rows: u64) {
        let (outcome, plan, slots) = self.plan(sql, params);
        let hash = shardgate_router::fingerprint_hash(sql);
        let mut guard = self.lock();
        let o = &mut *guard;
        if !o.statements.contains_key(&hash) && o.statements.len() >= self.max_statements {
            evict(o, self.max_statements);
        }
        let entry = o.statements.entry(hash).or_insert_with(|| Statement {
            text: shardgate_router::fingerprint_text(sql),
            example: sql.chars().take(EXAMPLE_CHARS).collect(),
            routes: WouldRoute::default(),
            strategy: None,
            refusal: None,
            caveat: None,
        });
        count(&mut entry.routes, &outcome);
        count(&mut o.totals, &outcome);
        match outcome {
            Outcome::Scatter(how) | Outcome::Broadcast(how) => {
                entry.strategy.get_or_insert(how);
            }
            Outcome::Split(how) => {
                entry.strategy.get_or_insert_with(|| how.to_owned());
            }
            Outcome::Refused(why) => {
                entry.refusal.get_or_insert(why);
            }
            Outcome::Single => {}
        }
        if let Some(plan) = &plan {
            if entry.caveat.is_none()
                && entry.refusal.is_none()
                && !plan.other_tables.is_empty()
                && !plan.sharded_tables.is_empty()
            {
                let other = plan.other_tables.join(", ");
                entry.caveat = Some(format!(
                    "reads {other} (not sharded: only the default shard has its rows) with sharded {}: declare {other} as reference tables",
                    plan.sharded_tables.join(", ")
                ));
            }
            note_tables(o, plan, rows);
        }
        let half = o.slots.len() as i64 / 2;
        for slot in slots {
            if let Some(n) = usize::try_from(slot + half)
                .ok()
                .and_then(|i| o.slots.get_mut(i))
            {
                *n = n.saturating_add(1);
                o.keys += 1;
            }
        }
    }

    /// What a call would do, its plan, and the slots of its keys.
    fn plan(
        &self,
        sql: &str,
        params: Option<&BoundParams<'_>>,
    ) -> (Outcome, Option<std::sync::Arc<Plan>>, Vec<i64>) {
        let r = &self.router;
        match params {
            None => {
                let query = r.plan_query(sql);
                let slots = r.query_key_slots(&query);
                match r.route_query(&query, None) {
                    Ok((route, plan)) => (self.classify(&route, &plan), Some(plan), slots),
                    Err(e) => {
                        let plan = r.plan(sql);
                        let outcome = if matches!(r.split_query(&query, None), Ok(Some(_))) {
                            Outcome::Split(
                                "split insert: each shard's rows as one INSERT, committed together",
                            )
                        } else if plan.copy_in.is_some() {
                            Outcome::Split("split COPY: each row to its key's shard")
                        } else {
                            Outcome::Refused(format!("{}: {}", e.code, e.message))
                        };
                        (outcome, Some(plan), slots)
                    }
                }
            }
            Some(params) => {
                let plan = r.plan(sql);
                let slots = r.key_slots(&plan, params);
                let outcome = match r.route(&plan, params, None) {
                    Ok(route) => self.classify(&route, &plan),
                    Err(_) if matches!(r.split_insert(&plan, sql, params, None), Ok(Some(_))) => {
                        Outcome::Split(
                            "split insert: each shard's rows as one INSERT, committed together",
                        )
                    }
                    Err(_) if plan.copy_in.is_some() => {
                        Outcome::Split("split COPY: each row to its key's shard")
                    }
                    Err(e) => Outcome::Refused(format!("{}: {}", e.code, e.message)),
                };
                (outcome, Some(plan), slots)
            }
        }
    }

    fn classify(&self, route: &Route, plan: &Plan) -> Outcome {
        if matches!(route, Route::Shard(_)) {
            return Outcome::Single;
        }
        match plan.kind {
            StatementKind::Read { .. } => {
                Outcome::Scatter(crate::routing::cross_shard_strategy(plan, &self.router))
            }
            StatementKind::Ddl => Outcome::Broadcast("DDL on every shard".into()),
            StatementKind::Write if plan.reference_write.is_some() => {
                Outcome::Broadcast("write to a reference table: every copy at once".into())
            }
            StatementKind::Write => Outcome::Broadcast(
                "keyless write on every shard (sharding.keyless_writes = \"broadcast\")".into(),
            ),
            _ => Outcome::Refused(format!(
                "0A000: {} cannot run on several shards",
                plan.command
            )),
        }
    }

    /// The readiness report of what was observed so far.
    pub(crate) fn report(&self) -> ShardingReadiness {
        let o = self.lock();
        let mut statements: Vec<(&u64, &Statement)> = o.statements.iter().collect();
        statements.sort_by(|a, b| b.1.routes.calls.cmp(&a.1.routes.calls).then(a.0.cmp(b.0)));
        let shown = |s: (&u64, &Statement)| ObservedStatement {
            id: format!("{:016x}", s.0),
            query: s.1.text.clone(),
            example: s.1.example.clone(),
            routes: s.1.routes,
            strategy: s.1.strategy.clone(),
            refusal: s.1.refusal.clone(),
            caveat: s.1.caveat.clone(),
        };
        let refused = statements
            .iter()
            .filter(|s| s.1.routes.refused > 0)
            .take(REPORT_STATEMENTS)
            .map(|s| shown(*s))
            .collect();
        let multi_shard = statements
            .iter()
            .filter(|s| s.1.routes.scatter + s.1.routes.broadcast + s.1.routes.split > 0)
            .take(REPORT_STATEMENTS)
            .map(|s| shown(*s))
            .collect();
        let caveats = statements
            .iter()
            .filter(|s| s.1.caveat.is_some())
            .take(REPORT_STATEMENTS)
            .map(|s| shown(*s))
            .collect();
        let mut tables: Vec<TableUse> = o
            .tables
            .iter()
            .map(|(name, t)| TableUse {
                table: name.clone(),
                reads: t.reads,
                writes: t.writes,
                with_sharded: t.with_sharded,
                max_rows_read: t.max_rows_read,
                reference_candidate: t.with_sharded > 0
                    && t.writes * 10 <= t.reads + t.writes
                    && t.max_rows_read <= SMALL_TABLE_ROWS,
            })
            .collect();
        tables.sort_by(|a, b| {
            b.reference_candidate
                .cmp(&a.reference_candidate)
                .then(b.with_sharded.cmp(&a.with_sharded))
                .then(a.table.cmp(&b.table))
        });
        let totals = o.totals;
        ShardingReadiness {
            planned_shards: self.router.shard_names().len() as u32,
            single_shard_share: if totals.calls == 0 {
                0.0
            } else {
                totals.single_shard as f64 / totals.calls as f64
            },
            totals,
            refused,
            multi_shard,
            caveats,
            tables,
            key_skew: self.key_skew(&o),
            statements_tracked: o.statements.len() as u64,
            statements_evicted: o.evicted,
        }
    }

    fn key_skew(&self, o: &Observed) -> KeySkew {
        let ring = self.router.ring();
        let names = self.router.shard_names();
        let half = o.slots.len() as i64 / 2;
        let shift = 64 - ring.slot_bits();
        let shard_of = |slot: i64| ring.shard_for_hash(slot << shift);
        let mut per_shard = vec![0u64; names.len()];
        let mut seen: Vec<(i64, u64)> = Vec::new();
        for (i, n) in o.slots.iter().enumerate().filter(|(_, n)| **n > 0) {
            let slot = i as i64 - half;
            if let Some(c) = per_shard.get_mut(shard_of(slot)) {
                *c += u64::from(*n);
            }
            seen.push((slot, u64::from(*n)));
        }
        let slots_seen = seen.len() as u64;
        seen.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        KeySkew {
            keys: o.keys,
            slots_seen,
            slots: o.slots.len() as u64,
            top_slots: seen
                .into_iter()
                .take(REPORT_SLOTS)
                .map(|(slot, keys)| SlotCount {
                    slot,
                    shard: names.get(shard_of(slot)).cloned().unwrap_or_default(),
                    keys,
                })
                .collect(),
            shard_shares: names
                .iter()
                .zip(&per_shard)
                .map(|(name, n)| ShardShare {
                    shard: name.clone(),
                    share: if o.keys == 0 {
                        0.0
                    } else {
                        *n as f64 / o.keys as f64
                    },
                })
                .collect(),
        }
    }

    /// Forgets everything observed (with the query statistics' reset).
    pub(crate) fn reset(&self) {
        let mut o = self.lock();
        o.statements.clear();
        o.evicted = 0;
        o.tables.clear();
        o.slots.iter_mut().for_each(|n| *n = 0);
        o.keys = 0;
        o.totals = WouldRoute::default();
    }
}

fn count(routes: &mut WouldRoute, outcome: &Outcome) {
    routes.calls += 1;
    match outcome {
        Outcome::Single => routes.single_shard += 1,
        Outcome::Scatter(_) => routes.scatter += 1,
        Outcome::Broadcast(_) => routes.broadcast += 1,
        Outcome::Split(_) => routes.split += 1,
        Outcome::Refused(_) => routes.refused += 1,
    }
}

/// The unsharded tables of one call: read or written, with a sharded table or alone.
fn note_tables(o: &mut Observed, plan: &Plan, rows: u64) {
    let write = matches!(plan.kind, StatementKind::Write | StatementKind::Ddl);
    let alone = plan.sharded_tables.is_empty() && plan.other_tables.len() == 1;
    for name in &plan.other_tables {
        if !o.tables.contains_key(name) && o.tables.len() >= MAX_TABLES {
            continue;
        }
        let t = o.tables.entry(name.clone()).or_default();
        if write {
            t.writes += 1;
        } else {
            t.reads += 1;
            if alone {
                t.max_rows_read = t.max_rows_read.max(rows);
            }
        }
        if !plan.sharded_tables.is_empty() {
            t.with_sharded += 1;
        }
    }
}

/// Drops the tenth of the statements with the fewest calls (at least one).
fn evict(o: &mut Observed, max: usize) {
    let len = o.statements.len();
    if len == 0 {
        return;
    }
    let drop = (len + 1).saturating_sub(max).max(max / 10).max(1).min(len);
    let mut by_calls: Vec<(u64, u64)> = o
        .statements
        .iter()
        .map(|(h, s)| (s.routes.calls, *h))
        .collect();
    by_calls.select_nth_unstable(drop - 1);
    for (_, h) in &by_calls[..drop] {
        o.statements.remove(h);
    }
    o.evicted += drop as u64;
}
