//! At start: does every shard allow prepared transactions? With `max_prepared_transactions =
//! 0` a transaction that writes on several shards cannot commit atomically; the commit path
//! then rolls it back with a hint, and this says so in the log before any client meets it.

use shardgate_config::{CrossShardTransactions, Host};
use shardgate_pool::{ConnectTarget, MonitorLogin, ServerConn};
use tracing::{info, warn};

use super::recovery::APPLICATION_NAME;
use crate::Shared;

/// Reads `max_prepared_transactions` on every shard's primary (each bounded by the connect
/// timeout and a query timeout) and logs the shards that have it at 0.
pub(crate) async fn check(shared: &Shared) {
    let config = shared.config();
    if config.sharding.cross_shard_transactions != CrossShardTransactions::TwoPhase {
        return;
    }
    let Some(login) = MonitorLogin::from_config(&config) else {
        return;
    };
    let shards: Vec<(String, Host)> = shared
        .topo()
        .health
        .shards
        .iter()
        .map(|s| (s.name.clone(), s.writer().host.clone()))
        .collect();
    if shards.len() < 2 {
        return;
    }
    for (name, host) in shards {
        let target = ConnectTarget {
            host,
            user: login.user.clone(),
            password: login.password.clone(),
            database: login.database.clone(),
            application_name: APPLICATION_NAME.into(),
            connect_timeout: login.connect_timeout,
        };
        let value = async {
            let mut conn = ServerConn::connect(&target).await.ok()?;
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                conn.query_value("SELECT current_setting('max_prepared_transactions')"),
            )
            .await
            .ok()?
            .ok()
            .flatten()
        }
        .await;
        match value.as_deref() {
            Some("0") => warn!(
                shard = %name,
                "max_prepared_transactions = 0: transactions that write on this shard and another cannot commit atomically and will be rolled back; set it above 0 (and restart the server), or sharding.cross_shard_transactions = \"best_effort\""
            ),
            Some(n) => {
                info!(shard = %name, max_prepared_transactions = n, "two-phase commit available")
            }
            None => info!(shard = %name, "could not read max_prepared_transactions at start"),
        }
    }
}
