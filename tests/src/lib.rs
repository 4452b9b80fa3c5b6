//! Test harness for shardgate: the local PostgreSQL servers of `shardgate-localpg` (re-exported
//! here, so tests name one crate), plus what only tests and benchmarks need: `pgbench` and the
//! client-driver environments (Python, Node), the protocol soak (`soak`), the differential
//! test of cross-shard reads with its generated corpus (`corpus`) and the sharded proxy
//! config those use (`proxy_config`).
//! Used by the end-to-end tests in `tests/tests/` and by the benchmarks.
//!
//! ```no_run
//! use shardgate_tests::{Auth, ClusterOptions, PgCluster};
//!
//! let primary = PgCluster::start(ClusterOptions::default().user("app", "secret", Auth::Scram))?;
//! primary.create_database("app", "app")?;
//! let url = primary.url("app", "secret", "app");
//! # let _ = url;
//! # Ok::<(), shardgate_tests::LocalPgError>(())
//! ```

pub mod corpus;
pub mod drivers;
pub mod http;
mod lock;
pub mod pgbench;
pub mod proxy_config;
pub mod serve;
pub mod soak;

#[cfg(test)]
mod cluster_tests;

pub use drivers::{driver_env_dir, node_env, python_env};
pub use pgbench::{pgbench, pgbench_raw, PgbenchResult};
pub use shardgate_localpg::*;
