//! Naming a shard's hosts while clients stay connected (`PUT /api/v1/shards/{name}/hosts`, or a
//! reload with the file store): the shard map in the topology store carries every shard's
//! hosts, so a new hosts list is published there as the next map version, which every proxy of
//! the fleet follows (`topology::follow`) and this one applies at once. A shard whose hosts
//! changed starts afresh: the primary named takes the writes (a failover the monitor followed
//! is confirmed, a fenced host named primary is un-fenced); shards whose hosts did not change
//! keep what their monitor learnt.

use std::time::Duration;

use shardgate_admin::control::{SetHostsError, SetHostsOutcome, SetHostsRequest};
use shardgate_config::{Host, Shard};
use shardgate_topology::{ShardMap, Store, StoreError};

use crate::Shared;

/// How long one store read or publish may take.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

fn refused(status: u16, message: String, hint: &str) -> SetHostsError {
    SetHostsError {
        status,
        message,
        hint: hint.to_owned(),
    }
}

fn store_error(e: StoreError) -> SetHostsError {
    refused(
        503,
        format!("the topology store failed: {e}"),
        "check the store in [topology] and try again",
    )
}

async fn bounded<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, SetHostsError> {
    match tokio::time::timeout(STORE_TIMEOUT, f).await {
        Ok(r) => r.map_err(store_error),
        Err(_) => Err(refused(
            503,
            format!("the topology store did not answer {what} within {STORE_TIMEOUT:?}"),
            "check the store in [topology] and try again",
        )),
    }
}

/// Parses the request's addresses and checks the list makes sense.
fn parse_request(request: &SetHostsRequest) -> Result<(Host, Vec<Host>), SetHostsError> {
    let parse = |what: &str, text: &str| {
        shardgate_rebalance::parse_address(text).map_err(|e| {
            refused(
                400,
                format!("bad {what} address: {e}"),
                "give HOST[:PORT], [V6]:PORT, a socket directory or postgres://HOST[:PORT][?sslmode=…]",
            )
        })
    };
    let primary = parse("primary", &request.primary)?;
    let replicas = request
        .replicas
        .iter()
        .map(|r| parse("replica", r))
        .collect::<Result<Vec<_>, _>>()?;
    check_hosts(&primary, &replicas)?;
    Ok((primary, replicas))
}

/// A host listed twice (or the primary among the replicas) is refused.
fn check_hosts(primary: &Host, replicas: &[Host]) -> Result<(), SetHostsError> {
    let mut seen: Vec<(&str, u16)> = vec![(primary.host.as_str(), primary.port)];
    for r in replicas {
        let at = (r.host.as_str(), r.port);
        if seen.contains(&at) {
            return Err(refused(
                400,
                format!("{r} is listed twice"),
                "name each host once: the primary, then the replicas",
            ));
        }
        seen.push(at);
    }
    Ok(())
}

/// `PUT /api/v1/shards/{name}/hosts`.
pub(crate) async fn set_hosts(
    shared: &Shared,
    name: &str,
    request: &SetHostsRequest,
) -> Result<SetHostsOutcome, SetHostsError> {
    let (primary, replicas) = parse_request(request)?;
    let (map, changed) = publish_hosts(shared, &[(name.to_owned(), primary, replicas)]).await?;
    let shard = map.shard(name);
    Ok(SetHostsOutcome {
        shard: name.to_owned(),
        changed,
        topology_version: map.version,
        primary: shard.map_or_else(String::new, |s| s.primary.to_string()),
        replicas: shard.map_or_else(Vec::new, |s| {
            s.replicas.iter().map(ToString::to_string).collect()
        }),
    })
}

/// Publishes new hosts for the named shards as the next shard-map version (refused while a
/// rebalance runs: its commit point is the map) and applies it here. Returns the map holding
/// them and whether anything changed.
pub(crate) async fn publish_hosts(
    shared: &Shared,
    changes: &[(String, Host, Vec<Host>)],
) -> Result<(ShardMap, bool), SetHostsError> {
    let Some(store) = shared.store.clone() else {
        return Err(refused(
            501,
            "this proxy has no topology store".into(),
            "start it with `shardgate serve`",
        ));
    };
    let (map, changed) = publish_to_store(&store, changes).await?;
    if changed {
        for (name, primary, replicas) in changes {
            tracing::warn!(shard = %name, %primary, replicas = ?replicas.iter().map(ToString::to_string).collect::<Vec<_>>(),
                version = map.version, "shard hosts named by the operator: the primary named takes the writes");
        }
    }
    shared.apply_shard_map(&map);
    Ok((map, changed))
}

/// The store side of [`publish_hosts`]: the map holding the hosts, and whether it is new.
pub(crate) async fn publish_to_store(
    store: &Store,
    changes: &[(String, Host, Vec<Host>)],
) -> Result<(ShardMap, bool), SetHostsError> {
    if let Some(job) = bounded("for the rebalance job", store.job()).await? {
        if !job.phase.is_terminal() {
            return Err(refused(
                409,
                format!(
                    "a rebalance ({}) is running: the shard map is its commit point",
                    job.id
                ),
                "wait for it to finish (shardgate admin rebalance status --watch) or abort it",
            ));
        }
    }
    let map = bounded("for the shard map", store.shard_map()).await?;
    let Some(shards) = replaced(&map, changes)? else {
        return Ok((map, false));
    };
    let published = bounded("to the publish", store.publish(map.version, shards)).await?;
    Ok((published, true))
}

/// The map's shards with `changes` applied; `None` when nothing differs.
fn replaced(
    map: &ShardMap,
    changes: &[(String, Host, Vec<Host>)],
) -> Result<Option<Vec<Shard>>, SetHostsError> {
    let mut shards = map.shards.clone();
    let mut changed = false;
    for (name, primary, replicas) in changes {
        let Some(shard) = shards.iter_mut().find(|s| &s.name == name) else {
            return Err(refused(
                404,
                format!("no shard named {name} in the shard map"),
                "list them with `shardgate admin shards list`",
            ));
        };
        if &shard.primary != primary || &shard.replicas != replicas {
            shard.primary = primary.clone();
            shard.replicas = replicas.clone();
            changed = true;
        }
    }
    Ok(changed.then_some(shards))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(primary: &str, replicas: &[&str]) -> SetHostsRequest {
        SetHostsRequest {
            primary: primary.into(),
            replicas: replicas.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn addresses_are_parsed_and_duplicates_refused() {
        let (p, r) = parse_request(&request("127.0.0.1:5433", &["127.0.0.1:5434"])).unwrap();
        assert_eq!((p.port, r[0].port), (5433, 5434));
        let dup = parse_request(&request("127.0.0.1:5433", &["127.0.0.1:5433"])).unwrap_err();
        assert_eq!(dup.status, 400);
        let login = parse_request(&request("postgres://u:secret@h:1", &[])).unwrap_err();
        assert!(!login.message.contains("secret"), "{}", login.message);
    }
}
