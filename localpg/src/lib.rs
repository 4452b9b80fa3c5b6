//! Local PostgreSQL servers for shardgate: starts real servers (primaries and streaming
//! replicas) on free 127.0.0.1 ports under a temp dir with the installed server binaries, runs
//! `psql`, and stops them again. `shardgate demo` runs on it; the test harness
//! (`shardgate-tests`) and the benchmarks build on it.
//!
//! ```no_run
//! use shardgate_localpg::{Auth, ClusterOptions, PgCluster};
//!
//! let primary = PgCluster::start(ClusterOptions::default().user("app", "secret", Auth::Scram))?;
//! primary.create_database("app", "app")?;
//! primary.psql("app", "create table t (id int primary key)")?;
//! let replica = primary.start_replica()?;
//! assert_eq!(replica.psql("postgres", "select pg_is_in_recovery()")?, "t");
//! let url = primary.url("app", "secret", "app");
//! # let _ = url;
//! # Ok::<(), shardgate_localpg::LocalPgError>(())
//! ```
//!
//! Servers are stopped and their directories removed when the [`PgCluster`] is dropped
//! (also on panic), and by a detached watchdog if the process is killed. When run as root,
//! server programs run as the `postgres` user.

pub mod bin;
pub mod cluster;
pub mod error;
pub mod options;
pub mod ports;
pub mod process;
pub mod psql;
pub mod template;

pub use bin::{pg_bin, pg_bindir};
pub use cluster::{percent_encode, PgCluster, HOST};
pub use error::{LocalPgError, Result};
pub use options::{Auth, ClusterOptions, User};
pub use ports::{free_port, try_free_port};
pub use psql::{psql, psql_url, Target};
