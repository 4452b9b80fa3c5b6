//! Test harness for shardgate: starts real PostgreSQL servers (primaries and streaming
//! replicas) on 127.0.0.1, runs `psql` and `pgbench`, and prepares client-driver environments.
//! Used by the end-to-end tests in `tests/tests/`, by `shardgate demo` and by the benchmarks.
//!
//! ```no_run
//! use shardgate_tests::{Auth, ClusterOptions, PgCluster};
//!
//! let primary = PgCluster::start(ClusterOptions::default().user("app", "secret", Auth::Scram))?;
//! primary.create_database("app", "app")?;
//! primary.psql("app", "create table t (id int primary key)")?;
//! let replica = primary.start_replica()?;
//! assert_eq!(replica.psql("postgres", "select pg_is_in_recovery()")?, "t");
//! let url = primary.url("app", "secret", "app");
//! # let _ = url;
//! # Ok::<(), shardgate_tests::HarnessError>(())
//! ```
//!
//! Servers are stopped and their directories removed when the [`PgCluster`] is dropped
//! (also on panic), and by a detached watchdog if the test process is killed. When the tests
//! run as root, server programs run as the `postgres` user.

pub mod bin;
pub mod cluster;
pub mod drivers;
pub mod error;
mod lock;
pub mod options;
pub mod pgbench;
pub mod ports;
pub mod process;
pub mod psql;
pub mod soak;
pub mod template;

#[cfg(test)]
mod cluster_tests;

pub use bin::{pg_bin, pg_bindir};
pub use cluster::{percent_encode, PgCluster, HOST};
pub use drivers::{driver_env_dir, node_env, python_env};
pub use error::{HarnessError, Result};
pub use options::{Auth, ClusterOptions, User};
pub use pgbench::{pgbench, pgbench_raw, PgbenchResult};
pub use ports::{free_port, try_free_port};
pub use psql::{psql, psql_url, Target};
