//! The consistent-hash ring over PostgreSQL's signed 64-bit hash values.
//!
//! The ring is cut into `2^bits` equal slots (16,384 by default): slot `s` holds the hashes
//! `h` with `h >> (64 - bits) == s`. Which shard owns a slot is decided by rendezvous hashing of
//! (shard name, slot): the shard with the highest weight wins. Every proxy therefore builds the
//! same ring from the same shard list, adding a shard moves only the slots it now wins (about
//! 1/(N+1) of the keys, all to the new shard), and removing one moves only its own slots.
//!
//! Why slots and not random virtual-node positions: with `v` random positions per shard a
//! shard's share has a relative error of about 1/√v (6% for 256), so some shard sets end up
//! 1.2× their fair share. Equal slots dealt by rendezvous hashing give each shard a binomial
//! count of slots: with 16,384 slots the error is √((N-1)/16384) (1.1% for 3 shards, 2% for 8).
//!
//! The same ownership is plain SQL: `(hashint8extended(user_id::int8, seed) >> 50) IN (…)`
//! selects exactly a shard's rows (see [`Ring::predicate`]); the rebalancer uses it for
//! publication row filters.

use crate::hash::hash_bytes_extended;

/// Index of a shard in [`Ring::shards`].
pub type ShardIndex = usize;

/// Default number of slot bits: 2^14 = 16,384 slots.
pub const DEFAULT_SLOT_BITS: u32 = 14;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    shards: Vec<String>,
    bits: u32,
    /// Owner of each slot, indexed by `slot + 2^(bits-1)`.
    owners: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("a ring needs at least one shard")]
    NoShards,
    #[error("at most 65535 shards are supported")]
    TooManyShards,
    #[error("slot bits must be between 8 and 20 (got {0})")]
    BadBits(u32),
    #[error("shard `{0}` appears twice")]
    Duplicate(String),
}

impl Ring {
    /// Builds the ring for `shards` with `2^bits` slots.
    pub fn new<S: AsRef<str>>(shards: &[S], bits: u32) -> Result<Ring, RingError> {
        if shards.is_empty() {
            return Err(RingError::NoShards);
        }
        if shards.len() > u16::MAX as usize {
            return Err(RingError::TooManyShards);
        }
        if !(8..=20).contains(&bits) {
            return Err(RingError::BadBits(bits));
        }
        let names: Vec<String> = shards.iter().map(|s| s.as_ref().to_owned()).collect();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(RingError::Duplicate(n.clone()));
            }
        }
        // Each shard's weights come from its name alone.
        let seeds: Vec<u64> = names
            .iter()
            .map(|n| hash_bytes_extended(n.as_bytes(), 0x5348_4152_4447_4154))
            .collect();
        let slots = 1usize << bits;
        let owners = (0..slots)
            .map(|slot| {
                let mut best = (0u64, 0u16);
                for (idx, seed) in seeds.iter().enumerate() {
                    let w = hash_bytes_extended(&(slot as u32).to_le_bytes(), *seed);
                    // Ties (vanishingly rare) go to the lower index, identically everywhere.
                    if idx == 0 || w > best.0 {
                        best = (w, idx as u16);
                    }
                }
                best.1
            })
            .collect();
        Ok(Ring {
            shards: names,
            bits,
            owners,
        })
    }

    pub fn shards(&self) -> &[String] {
        &self.shards
    }

    pub fn slot_bits(&self) -> u32 {
        self.bits
    }

    pub fn shard_index(&self, name: &str) -> Option<ShardIndex> {
        self.shards.iter().position(|s| s == name)
    }

    /// The slot of hash `h`, as SQL computes it: `h >> (64 - bits)`.
    pub fn slot_of(&self, h: i64) -> i64 {
        h >> (64 - self.bits)
    }

    /// The shard owning hash `h`.
    pub fn shard_for_hash(&self, h: i64) -> ShardIndex {
        let index = (self.slot_of(h) + (1i64 << (self.bits - 1))) as usize;
        self.owners[index] as ShardIndex
    }

    /// The slots a shard owns, ascending (signed, as SQL sees them).
    pub fn slots(&self, shard: ShardIndex) -> Vec<i64> {
        let offset = 1i64 << (self.bits - 1);
        self.owners
            .iter()
            .enumerate()
            .filter(|(_, o)| **o as usize == shard)
            .map(|(i, _)| i as i64 - offset)
            .collect()
    }

    /// A SQL predicate over `hash_expr` (e.g. `hashint8extended(user_id::int8, 0)`) that is true
    /// exactly for the rows this ring assigns to `shard`.
    pub fn predicate(&self, shard: ShardIndex, hash_expr: &str) -> String {
        slots_predicate(&self.slots(shard), self.bits, hash_expr)
    }

    /// The fraction of the hash space each shard owns.
    pub fn shares(&self) -> Vec<f64> {
        let mut counts = vec![0usize; self.shards.len()];
        for o in &self.owners {
            counts[*o as usize] += 1;
        }
        counts
            .iter()
            .map(|c| *c as f64 / self.owners.len() as f64)
            .collect()
    }
}

/// `(hash_expr >> shift) IN (…)` for a set of slots (`false` when empty).
pub fn slots_predicate(slots: &[i64], bits: u32, hash_expr: &str) -> String {
    if slots.is_empty() {
        return "false".to_owned();
    }
    let list: Vec<String> = slots.iter().map(|s| s.to_string()).collect();
    format!("(({hash_expr}) >> {}) IN ({})", 64 - bits, list.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::hashint8extended;

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    #[test]
    fn shares_are_within_ten_percent_of_fair() {
        for n in 1..=12 {
            for prefix in ["s", "shard-", "pg_", "db"] {
                let ring = Ring::new(&names(prefix, n), DEFAULT_SLOT_BITS).unwrap();
                let fair = 1.0 / n as f64;
                for (i, share) in ring.shares().iter().enumerate() {
                    assert!(
                        *share <= 1.1 * fair,
                        "{prefix}{i} of {n}: {share:.4} vs fair {fair:.4}"
                    );
                }
            }
        }
    }

    #[test]
    fn lookups_agree_with_slots_and_extremes_work() {
        let ring = Ring::new(&["a", "b", "c"], 10).unwrap();
        for k in -2000i64..2000 {
            let h = hashint8extended(k * 7919, 0);
            let s = ring.shard_for_hash(h);
            assert!(ring.slots(s).binary_search(&ring.slot_of(h)).is_ok());
        }
        for extreme in [i64::MIN, i64::MAX, 0, -1] {
            let s = ring.shard_for_hash(extreme);
            assert!(ring.slots(s).contains(&ring.slot_of(extreme)));
        }
    }

    #[test]
    fn adding_a_shard_moves_a_quarter_of_keys_only_to_it() {
        let three = Ring::new(&["s0", "s1", "s2"], DEFAULT_SLOT_BITS).unwrap();
        let four = Ring::new(&["s0", "s1", "s2", "s3"], DEFAULT_SLOT_BITS).unwrap();
        let n = 100_000;
        let mut moved = 0;
        for k in 0..n {
            let h = hashint8extended(k, 0);
            let (before, after) = (three.shard_for_hash(h), four.shard_for_hash(h));
            if three.shards()[before] != four.shards()[after] {
                assert_eq!(
                    four.shards()[after],
                    "s3",
                    "key {k} moved between old shards"
                );
                moved += 1;
            }
        }
        let frac = moved as f64 / n as f64;
        assert!((0.20..=0.30).contains(&frac), "moved {frac}");
    }

    #[test]
    fn removing_a_shard_moves_only_its_keys() {
        let four = Ring::new(&["s0", "s1", "s2", "s3"], DEFAULT_SLOT_BITS).unwrap();
        let three = Ring::new(&["s0", "s1", "s3"], DEFAULT_SLOT_BITS).unwrap();
        for k in 0..50_000 {
            let h = hashint8extended(k, 0);
            let before = &four.shards()[four.shard_for_hash(h)];
            let after = &three.shards()[three.shard_for_hash(h)];
            if before != "s2" {
                assert_eq!(before, after, "key {k} moved though its shard stayed");
            }
        }
    }

    #[test]
    fn shard_order_does_not_matter() {
        let a = Ring::new(&["x", "y", "z"], 12).unwrap();
        let b = Ring::new(&["z", "x", "y"], 12).unwrap();
        for k in 0..10_000 {
            let h = hashint8extended(k, 0);
            assert_eq!(
                a.shards()[a.shard_for_hash(h)],
                b.shards()[b.shard_for_hash(h)]
            );
        }
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(Ring::new::<&str>(&[], 14), Err(RingError::NoShards));
        assert_eq!(
            Ring::new(&["a", "a"], 14),
            Err(RingError::Duplicate("a".into()))
        );
        assert_eq!(Ring::new(&["a"], 40), Err(RingError::BadBits(40)));
    }

    #[test]
    fn predicate_shape() {
        let ring = Ring::new(&["a"], 8).unwrap();
        let p = ring.predicate(0, "hashint8extended(user_id::int8, 0)");
        assert!(
            p.starts_with("((hashint8extended(user_id::int8, 0)) >> 56) IN (-128,-127,"),
            "{p}"
        );
    }
}
