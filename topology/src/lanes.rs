//! Id lanes: every shard that ever joins the map gets a lane of its own, never handed out
//! again, so the strided sequences of different shards (`INCREMENT BY <lanes>`, values ≡ lane)
//! can never produce the same value. Stored with the shard map and changed only together with
//! its shard list (in the same compare-and-swap), so every proxy and the rebalancer compute the
//! same lanes from the same map version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shardgate_config::Shard;

/// The lane of each shard in the map and the next lane never handed out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdLanes {
    /// Shard name → lane, for the shards in the map.
    #[serde(default)]
    pub assigned: BTreeMap<String, u32>,
    /// Every lane below this one belongs to a shard of the map or to a removed shard: lanes
    /// are handed out in increasing order and never reused.
    #[serde(default)]
    pub next: u32,
}

impl IdLanes {
    /// The lanes for a map holding `shards`: a shard that already has a lane keeps it, a new
    /// one takes the next lanes in ring order, a departed shard's lane is retired (never handed
    /// out again, also not to a later shard of the same name).
    pub fn for_shards(&self, shards: &[Shard]) -> IdLanes {
        let mut next = self
            .next
            .max(self.assigned.values().map(|l| l + 1).max().unwrap_or(0));
        let mut assigned = BTreeMap::new();
        for s in shards {
            let lane = match self.assigned.get(&s.name) {
                Some(l) => *l,
                None => {
                    let l = next;
                    next += 1;
                    l
                }
            };
            assigned.insert(s.name.clone(), lane);
        }
        IdLanes { assigned, next }
    }

    pub fn lane(&self, shard: &str) -> Option<u32> {
        self.assigned.get(shard).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(name: &str) -> Shard {
        Shard {
            name: name.into(),
            primary: Default::default(),
            replicas: Vec::new(),
            admin_user: None,
            admin_password: None,
        }
    }

    fn shards(names: &[&str]) -> Vec<Shard> {
        names.iter().map(|n| shard(n)).collect()
    }

    #[test]
    fn first_map_takes_lanes_in_ring_order() {
        let l = IdLanes::default().for_shards(&shards(&["a", "b"]));
        assert_eq!(l.lane("a"), Some(0));
        assert_eq!(l.lane("b"), Some(1));
        assert_eq!(l.next, 2);
    }

    #[test]
    fn lanes_survive_adds_and_removed_lanes_are_never_reused() {
        let l = IdLanes::default().for_shards(&shards(&["a", "b", "c"]));
        let l = l.for_shards(&shards(&["a", "c"]));
        assert_eq!(
            (l.lane("a"), l.lane("c"), l.lane("b")),
            (Some(0), Some(2), None)
        );
        let l = l.for_shards(&shards(&["a", "c", "d", "b"]));
        assert_eq!(l.lane("d"), Some(3));
        // A shard re-added under an old name still gets a fresh lane.
        assert_eq!(l.lane("b"), Some(4));
        assert_eq!(l.next, 5);
        // Idempotent: the same shard list changes nothing.
        assert_eq!(l.for_shards(&shards(&["a", "c", "d", "b"])), l);
    }

    #[test]
    fn a_hand_edited_next_below_an_assigned_lane_is_raised() {
        let mut l = IdLanes::default().for_shards(&shards(&["a", "b"]));
        l.next = 0;
        let l = l.for_shards(&shards(&["a", "b", "c"]));
        assert_eq!(l.lane("c"), Some(2));
    }
}
