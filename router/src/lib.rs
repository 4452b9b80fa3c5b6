//! SQL to route: PostgreSQL-compatible hashing of shard keys, the consistent-hash ring,
//! statement classification, shard-key extraction and route resolution.
//!
//! Entry point: [`Router`] — [`Router::plan`] analyses a statement text once (cached by text)
//! into a [`Plan`]; [`Router::route`] turns a plan plus Bind parameters and hints into a
//! [`Route`].

mod analysis;
mod cache;
mod classify;
mod copy_in;
pub mod cursor;
mod dml;
mod fingerprint;
pub mod gather;
pub mod hash;
mod hints;
mod keys;
mod large;
pub mod merge;
mod normalize;
mod observe;
mod params;
pub mod plan;
mod planner;
mod reference;
mod reference_fill;
pub mod ring;
mod router;
mod rules;
mod shapes;
mod split;
mod text;
mod words;

#[cfg(test)]
mod tests;

pub use cache::CacheStats;
pub use copy_in::{
    CopyDataError, CopyFormat, CopyInSpec, CopyItem, CopyOutSpec, CopyRows, KeyField,
};
pub use fingerprint::{
    fingerprint_hash, fingerprint_hash_and_words, fingerprint_text, MAX_FINGERPRINT_TEXT,
};
pub use gather::{GatherRelation, GatherSpec};
pub use merge::{AggregateKind, MergeAggregate, MergeSpec, RowCount, SortColumn, SortKey};
pub use normalize::{normalize, Normalized};
pub use params::BoundParams;
pub use plan::{
    Hint, KeyExpr, KeyValue, Placement, Plan, Refusal, RoleHint, ShardgateParam, ShardgateSetting,
    StatementKind,
};
pub use reference::{default_is_constant, ReferenceInsert, ReferenceWrite};
pub use reference_fill::{fill_defaults, quote_ident, typed_literal, values_rows, FilledColumn};
pub use ring::{Ring, RingError, ShardIndex};
pub use router::{Route, RouteError, Router, RouterError};
pub use shapes::QueryPlan;
pub use shardgate_config::KeyType;
pub use split::{InsertPart, InsertRowKeys, InsertSplit};
pub use text::{code_words, first_word, leading_names, normalize_sql, split_statements};
pub use words::{WordSet, SESSION_WORDS};

/// The project's one SQL lexer, for the proxy's text checks (session tracking, pinning).
pub mod lexer {
    pub use crate::text::{
        code_tokens, code_words, leading_names, split_statements, Lexer, Tok, TokKind,
    };
}
