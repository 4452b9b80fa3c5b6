//! Reload: re-read the configuration and apply what can change while clients stay
//! connected. Users, pool sizes and timeouts, client limits, each shard's hosts (primary and
//! replicas) and their settings, and logging apply at once; the listening addresses, the
//! admin server, the shard names and the sharding rules need a restart (changing the shard
//! list live is rebalancing's job), so their old values are kept and reported. New hosts are
//! also published in the file topology store (its state file keeps them); with the postgres
//! store the fleet's hosts are the store's, changed with `PUT /api/v1/shards/{name}/hosts`,
//! so a reload applies only replica lists there, locally, as before.

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

/// The shard list: what only a restart (or rebalancing) may change.
fn shard_names(c: &Config) -> Vec<String> {
    c.shards.iter().map(|s| s.name.clone()).collect()
}

impl Shared {
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// What a session's cached pools belong to: the reload generation and the failovers the
    /// current host health followed (a failover gives a shard's writes another host).
    pub(crate) fn pool_generation(&self) -> (u64, u64) {
        self.pool_generation_in(&self.topo())
    }

    /// [`Self::pool_generation`] with the host health of `topo` (a session's view).
    pub(crate) fn pool_generation_in(&self, topo: &crate::topology::Topo) -> (u64, u64) {
        (self.generation(), topo.health.role_epoch())
    }

    /// Applies `new` (already validated) to the running proxy.
    pub(crate) fn apply_config(&self, mut new: Config) -> Applied {
        let old = self.config();
        let mut out = Applied::default();

        // Kept as they are, reported.
        if new.listen.worker_threads != old.listen.worker_threads {
            out.needs_restart.push("listen.worker_threads".into());
            new.listen.worker_threads = old.listen.worker_threads;
        }
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
        if shard_names(&old) != shard_names(&new) {
            out.needs_restart.push(
                "shards (names: the shard map is the topology store's; add or remove shards \
                 with `shardgate admin shards add|remove`)"
                    .into(),
            );
            // The old list, with the hosts the file gives to shards it still names.
            let hosts: Vec<_> = old
                .shards
                .iter()
                .map(|s| {
                    new.shards.iter().find(|n| n.name == s.name).map_or_else(
                        || (s.primary.clone(), s.replicas.clone()),
                        |n| (n.primary.clone(), n.replicas.clone()),
                    )
                })
                .collect();
            new.shards = old.shards.clone();
            for (shard, (primary, replicas)) in new.shards.iter_mut().zip(hosts) {
                shard.primary = primary;
                shard.replicas = replicas;
            }
        }
        let fleet_store = self.store.as_ref().is_some_and(|s| s.kind() == "postgres");
        if fleet_store
            && old
                .shards
                .iter()
                .zip(&new.shards)
                .any(|(o, n)| o.primary != n.primary)
        {
            out.needs_restart.push(
                "shards.primary (with the postgres topology store the fleet's hosts are the \
                 store's: use `shardgate admin shards hosts NAME --primary …` or PUT \
                 /api/v1/shards/{name}/hosts)"
                    .into(),
            );
            for (n, o) in new.shards.iter_mut().zip(&old.shards) {
                n.primary = o.primary.clone();
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
            out.applied.push("shards (hosts)".into());
        }

        self.resize_client_slots(new.listen.max_client_connections);
        self.query_log.set_max(new.stats.max_queries);
        self.pools
            .budgets()
            .set_policy(shardgate_pool::HostPolicy::from_config(&new.pool));
        self.auth.store(Arc::new(auth::Authenticator::new(&new)));
        let new = Arc::new(new);
        self.set_config(Arc::clone(&new));
        if hosts_changed {
            // Same shard map and router; new hosts to watch and balance over.
            // Shards whose hosts did not change keep their failover state; the others start
            // with the primary the file names.
            let topo = self.topo();
            let next = crate::topology::Topo::with_router(
                &new,
                topo.version,
                Arc::clone(&topo.router),
                Some(&topo.health),
            );
            drop(topo);
            self.set_topo(next);
        }
        if hosts_changed || old.replicas != new.replicas || old.users != new.users {
            self.restart_monitor();
        }
        if self.retire_changed_pools(&new) > 0 || hosts_changed {
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        out.applied.extend(self.tls.reload(&old.tls, &new.tls));
        if hosts_changed && !fleet_store {
            // After the swap above: the follower applies the published version on top of it.
            self.publish_reloaded_hosts(&old, &new);
        }
        out
    }

    /// Records hosts a reload changed in the file store (so its state file, which a restart
    /// routes by, keeps them), in the background: the follower then applies that version.
    fn publish_reloaded_hosts(&self, old: &Config, new: &Config) {
        let (Some(store), Ok(runtime)) =
            (self.store.clone(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let changes: Vec<_> = old
            .shards
            .iter()
            .zip(&new.shards)
            .filter(|(o, n)| o.primary != n.primary || o.replicas != n.replicas)
            .map(|(_, n)| (n.name.clone(), n.primary.clone(), n.replicas.clone()))
            .collect();
        runtime.spawn(async move {
            if let Err(e) = crate::hosts::publish_to_store(&store, &changes).await {
                tracing::error!(error = %e.message, hint = %e.hint,
                    "the reloaded hosts apply to this proxy but could not be recorded in the topology store; a restart would route by the old ones");
            }
        });
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
