//! What the sharding readiness report needs of the router beyond a route: the ring slots of
//! the shard keys a statement names (the key skew of observed traffic).

use crate::plan::{KeyExpr, Placement, Plan};
use crate::shapes::QueryPlan;
use crate::{BoundParams, KeyValue, Router};

impl Router {
    /// The ring slot of each shard key `plan` names with these parameters (none for a
    /// statement without keys; a key that does not parse is skipped).
    pub fn key_slots(&self, plan: &Plan, params: &BoundParams<'_>) -> Vec<i64> {
        let Placement::Keys { key_type, keys, .. } = &plan.placement else {
            return Vec::new();
        };
        let mut values: Vec<KeyValue> = Vec::new();
        for k in keys {
            match k {
                KeyExpr::Value(v) => values.push(v.clone()),
                KeyExpr::Param(n) => values.extend(params.key(*n, *key_type).ok().flatten()),
                KeyExpr::ParamArray(n) => {
                    values.extend(params.key_array(*n, *key_type).unwrap_or_default())
                }
            }
        }
        values
            .iter()
            .map(|v| self.ring().slot_of(self.key_hash(v)))
            .collect()
    }

    /// [`Router::key_slots`] of a planned simple-protocol statement (its literals are the
    /// shape's parameters).
    pub fn query_key_slots(&self, query: &QueryPlan<'_>) -> Vec<i64> {
        let values: Vec<Option<&[u8]>> =
            query.literals.iter().map(|l| Some(l.as_bytes())).collect();
        let params = BoundParams {
            values: &values,
            formats: &[],
            types: &[],
        };
        self.key_slots(&query.plan, &params)
    }
}
