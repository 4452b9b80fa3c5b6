//! Unit tests of planning and routing against a fixed config (no database needed: the hash
//! functions are proven against PostgreSQL elsewhere).

mod lexer_equivalence;
mod lexer_reference;
mod plans;
mod references;
mod rng;
mod routes;
mod shapes;
mod split_props;
mod splits;

use std::path::Path;

use shardgate_config::Config;

use crate::plan::{KeyExpr, KeyValue};
use crate::Router;

pub(crate) const CONFIG: &str = r#"
[[users]]
name = "app"
password = "secret"

[[shards]]
name = "s0"
primary = { host = "127.0.0.1", port = 5432 }

[[shards]]
name = "s1"
primary = { host = "127.0.0.1", port = 5433 }

[[shards]]
name = "s2"
primary = { host = "127.0.0.1", port = 5434 }

[sharding]
route_cache_size = 100

[[sharding.tables]]
name = "orders"

[[sharding.tables]]
name = "users"

[[sharding.tables]]
name = "public.items"

[[sharding.tables]]
name = '"Events"'
key_column = "tenant"
key_type = "text"

[[sharding.tables]]
name = "sessions"
key_column = "sid"
key_type = "uuid"
"#;

/// The test config with `extra` lines in its `[sharding]` table.
pub(crate) fn config(extra: &str) -> Config {
    let text = CONFIG.replace(
        "route_cache_size = 100\n",
        &format!("route_cache_size = 100\n{extra}\n"),
    );
    match Config::from_toml(&text, Path::new("test.toml")) {
        Ok(c) => c,
        Err(e) => panic!("test config: {e}"),
    }
}

pub(crate) fn router() -> Router {
    match Router::new(&config("")) {
        Ok(r) => r,
        Err(e) => panic!("router: {e}"),
    }
}

pub(crate) fn int(v: i64) -> KeyExpr {
    KeyExpr::Value(KeyValue::Int(v))
}

pub(crate) fn text(s: &str) -> KeyExpr {
    KeyExpr::Value(KeyValue::Text(s.into()))
}
