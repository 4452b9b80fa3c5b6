//! shardgate's operator surface.
//!
//! - [`AdminServer`]: the admin HTTP server on `admin.listen` — `/health` and `/ready` probes,
//!   `/metrics` in the Prometheus text format, and the `/api/v1` JSON API (shards, pools,
//!   replicas, reload, and adding or removing a shard through the proxy's
//!   [`rebalance::Rebalancer`] — 501 on a proxy without one), guarded by the admin token when
//!   one is set.
//! - [`metrics`]: the process-wide Prometheus recorder and the description of every metric.
//! - [`cli`]: `shardgate admin …`, the command-line client of that API, with a progress bar
//!   for `rebalance status --watch`.
//!
//! The running proxy is seen only through the [`control::ControlPlane`] trait it implements,
//! so this crate never reaches into the proxy's internals.

pub mod cli;
mod client;
pub mod control;
pub mod histogram;
pub mod metrics;
pub mod queries;
pub mod readiness;
pub use shardgate_rebalance as rebalance;
mod server;
mod status;
mod table;
mod transactions;
mod watch;

pub use server::{AdminError, AdminServer, ErrorBody};
