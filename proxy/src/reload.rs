//! Reload: re-read the configuration and apply what can change while clients stay
//! connected. Users, pool sizes and timeouts, client limits, replica lists and their
//! settings, and logging apply at once; the listening addresses, the admin server and the
//! shard map (shard names, primaries, sharding rules) need a restart (changing the shard map
//! live is rebalancing's job), so their old values are kept and reported.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use shardgate_config::Config;

use crate::{auth, pool_setup, Shared};

/// What a reload did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub applied: Vec<String>,
    pub needs_restart: Vec<String>,
}

/// Names the sections of `old` and `new` that differ.
fn changed<T: PartialEq>(out: &mut Vec<String>, name: &str, old: &T, new: &T) {
    if old != new {
        out.push(name.to_owned());
    }
}

/// The shard map without replica lists: what only a restart (or rebalancing) may change.
fn shard_map(c: &Config) -> Vec<(String, shardgate_config::Host)> {
    c.shards
        .iter()
        .map(|s| (s.name.clone(), s.primary.clone()))
        .collect()
}

impl Shared {
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Applies `new` (already validated) to the running proxy.
    pub(crate) fn apply_config(&self, mut new: Config) -> Applied {
        let old = self.config();
        let mut out = Applied::default();

        // Kept as they are, reported.
        if new.listen.addr != old.listen.addr
            || new.listen.unix_socket_dir != old.listen.unix_socket_dir
        {
            out.needs_restart
                .push("listen.addr / listen.unix_socket_dir".into());
            new.listen.addr = old.listen.addr.clone();
            new.listen.unix_socket_dir = old.listen.unix_socket_dir.clone();
        }
        changed(&mut out.needs_restart, "admin", &old.admin, &new.admin);
        new.admin = old.admin.clone();
        changed(
            &mut out.needs_restart,
            "sharding",
            &old.sharding,
            &new.sharding,
        );
        new.sharding = old.sharding.clone();
        if shard_map(&old) != shard_map(&new) {
            out.needs_restart.push(
                "shards (names and primaries: the shard map is the topology store's; add or \
                 remove shards with `shardgate admin shards add|remove`)"
                    .into(),
            );
            let replicas: Vec<_> = old
                .shards
                .iter()
                .map(|s| {
                    new.shards
                        .iter()
                        .find(|n| n.name == s.name)
                        .map_or_else(|| s.replicas.clone(), |n| n.replicas.clone())
                })
                .collect();
            new.shards = old.shards.clone();
            for (shard, r) in new.shards.iter_mut().zip(replicas) {
                shard.replicas = r;
            }
        }

        // Applied.
        let listen_limits = |c: &Config| {
            let mut l = c.listen.clone();
            l.addr.clear();
            l.unix_socket_dir = None;
            l
        };
        changed(
            &mut out.applied,
            "listen",
            &listen_limits(&old),
            &listen_limits(&new),
        );
        changed(&mut out.applied, "users", &old.users, &new.users);
        changed(&mut out.applied, "pool", &old.pool, &new.pool);
        changed(&mut out.applied, "replicas", &old.replicas, &new.replicas);
        changed(&mut out.applied, "log", &old.log, &new.log);
        changed(&mut out.applied, "limits", &old.limits, &new.limits);
        changed(&mut out.applied, "stats", &old.stats, &new.stats);
        changed(
            &mut out.applied,
            "rebalance",
            &old.rebalance,
            &new.rebalance,
        );
        changed(
            &mut out.needs_restart,
            "topology",
            &old.topology,
            &new.topology,
        );
        new.topology = old.topology.clone();
        let hosts_changed = old.shards != new.shards;
        if hosts_changed {
            out.applied.push("shards.replicas".into());
        }

        self.resize_client_slots(new.listen.max_client_connections);
        self.query_log.set_max(new.stats.max_queries);
        self.pools
            .budgets()
            .set_policy(shardgate_pool::HostPolicy::from_config(&new.pool));
        self.auth.store(Arc::new(auth::Authenticator::new(&new)));
        let new = Arc::new(new);
        self.config.store(Arc::clone(&new));
        if hosts_changed {
            // Same shard map and router; new hosts to watch and balance over.
            let topo = self.topo();
            let next =
                crate::topology::Topo::with_router(&new, topo.version, Arc::clone(&topo.router));
            drop(topo);
            self.topo.store(Arc::new(next));
        }
        if hosts_changed || old.replicas != new.replicas || old.users != new.users {
            self.restart_monitor();
        }
        if self.retire_changed_pools(&new) > 0 || hosts_changed {
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        out.applied.extend(self.tls.reload(&old.tls, &new.tls));
        out
    }

    /// Grows or shrinks the client slots to `max` (slots in use are never taken away: a
    /// lower limit applies as clients leave).
    fn resize_client_slots(&self, max: usize) {
        let old = self.max_clients.swap(max, Ordering::Relaxed);
        if max > old {
            self.client_slots.add_permits(max - old);
        } else if old > max {
            let slots = Arc::clone(&self.client_slots);
            let take = u32::try_from(old - max).unwrap_or(u32::MAX);
            tokio::spawn(async move {
                if let Ok(permits) = slots.acquire_many_owned(take).await {
                    permits.forget();
                }
            });
        }
    }

    /// Forgets the pools whose settings or user changed; new checkouts build them again, and
    /// connections in use finish on the old pool, which closes once they are back. Returns
    /// how many were retired.
    fn retire_changed_pools(&self, config: &Config) -> usize {
        let mut retired = 0;
        for pool in self.pools.all() {
            let key = pool.key().clone();
            let keep = config.user(&key.user).is_some_and(|user| {
                let (target, settings) = pool_setup(config, &key, user);
                &settings == pool.settings() && &target == pool.target()
            });
            if !keep {
                self.pools.remove(&key);
                retired += 1;
            }
        }
        retired
    }
}
