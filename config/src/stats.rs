//! `[stats]`: the per-query statistics (`GET /api/v1/queries`, `shardgate admin queries`).

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Stats {
    /// Statement shapes (fingerprints) tracked at most; past it the tenth with the least total
    /// time is dropped. 0 turns the statistics off.
    pub max_queries: usize,
}

impl Default for Stats {
    fn default() -> Self {
        Stats { max_queries: 1000 }
    }
}
