//! The set of named prepared statements one server connection holds, least recently used first
//! out when the cap is passed.

const NIL: usize = usize::MAX;

struct Slot {
    name: String,
    /// Towards the most recently used end.
    newer: usize,
    /// Towards the least recently used end.
    older: usize,
}

/// An LRU set of statement names (global names like `sg_12`) with O(1) operations: a hash
/// index into a slab of slots linked from most to least recently used.
pub struct PreparedSet {
    capacity: usize,
    /// foldhash: looked up at every Bind (names are the proxy's own `sg_N`).
    index: foldhash::HashMap<String, usize>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Most recently used.
    newest: usize,
    /// Least recently used: the next to evict.
    oldest: usize,
}

impl PreparedSet {
    /// A set holding at most `capacity` names (at least one).
    pub fn new(capacity: usize) -> Self {
        PreparedSet {
            capacity: capacity.max(1),
            index: Default::default(),
            slots: Vec::new(),
            free: Vec::new(),
            newest: NIL,
            oldest: NIL,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether the name is held; touches it (most recently used) if so.
    pub fn contains(&mut self, name: &str) -> bool {
        match self.index.get(name) {
            Some(&slot) => {
                self.touch(slot);
                true
            }
            None => false,
        }
    }

    /// Records a name (touching it if already held). Returns the least recently used name
    /// if the cap was passed: the caller closes it on the server.
    pub fn insert(&mut self, name: String) -> Option<String> {
        if let Some(&slot) = self.index.get(name.as_str()) {
            self.touch(slot);
            return None;
        }
        if self.index.len() >= self.capacity {
            // Reuse the oldest slot for the new name.
            let slot = self.oldest;
            let evicted = std::mem::replace(&mut self.slots[slot].name, name.clone());
            self.index.remove(evicted.as_str());
            self.index.insert(name, slot);
            self.touch(slot);
            return Some(evicted);
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot].name = name.clone();
                slot
            }
            None => {
                self.slots.push(Slot {
                    name: name.clone(),
                    newer: NIL,
                    older: NIL,
                });
                self.slots.len() - 1
            }
        };
        self.index.insert(name, slot);
        self.link_newest(slot);
        None
    }

    /// Forgets a name (after the statement was closed on the server).
    pub fn remove(&mut self, name: &str) {
        if let Some(slot) = self.index.remove(name) {
            self.unlink(slot);
            self.slots[slot].name = String::new();
            self.free.push(slot);
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Forgets every name (after DISCARD ALL / DEALLOCATE ALL on the server).
    pub fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.free.clear();
        self.newest = NIL;
        self.oldest = NIL;
    }

    fn touch(&mut self, slot: usize) {
        if self.newest != slot {
            self.unlink(slot);
            self.link_newest(slot);
        }
    }

    fn unlink(&mut self, slot: usize) {
        let Slot { newer, older, .. } = self.slots[slot];
        match newer {
            NIL => self.newest = older,
            n => self.slots[n].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            o => self.slots[o].newer = newer,
        }
        self.slots[slot].newer = NIL;
        self.slots[slot].older = NIL;
    }

    fn link_newest(&mut self, slot: usize) {
        self.slots[slot].older = self.newest;
        self.slots[slot].newer = NIL;
        match self.newest {
            NIL => self.oldest = slot,
            n => self.slots[n].newer = slot,
        }
        self.newest = slot;
    }
}

impl std::fmt::Debug for PreparedSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedSet")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names from least to most recently used, walking the links.
    fn order(s: &PreparedSet) -> Vec<String> {
        let mut out = Vec::new();
        let mut at = s.oldest;
        while at != NIL {
            out.push(s.slots[at].name.clone());
            at = s.slots[at].newer;
        }
        out
    }

    #[test]
    fn evicts_least_recently_used() {
        let mut s = PreparedSet::new(3);
        assert_eq!(s.insert("a".into()), None);
        assert_eq!(s.insert("b".into()), None);
        assert_eq!(s.insert("c".into()), None);
        assert!(s.contains("a")); // a is now the newest; b is the oldest
        assert_eq!(s.insert("d".into()), Some("b".into()));
        assert_eq!(order(&s), ["c", "a", "d"]);
        assert!(!s.contains("b"));
        assert_eq!(s.insert("a".into()), None); // re-insert touches
        assert_eq!(s.insert("e".into()), Some("c".into()));
        assert_eq!(order(&s), ["d", "a", "e"]);
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn remove_frees_a_slot() {
        let mut s = PreparedSet::new(2);
        s.insert("a".into());
        s.insert("b".into());
        s.remove("a");
        s.remove("zz");
        assert_eq!(s.len(), 1);
        assert_eq!(s.insert("c".into()), None);
        assert_eq!(order(&s), ["b", "c"]);
        s.remove("c");
        s.remove("b");
        assert!(s.is_empty());
        assert_eq!(order(&s), Vec::<String>::new());
        assert_eq!(s.insert("d".into()), None);
        assert_eq!(s.insert("e".into()), None);
        assert_eq!(s.insert("f".into()), Some("d".into()));
        assert!(s.slots.len() <= 2);
    }

    #[test]
    fn capacity_one_and_zero() {
        let mut s = PreparedSet::new(0);
        assert_eq!(s.capacity(), 1);
        assert_eq!(s.insert("a".into()), None);
        assert_eq!(s.insert("b".into()), Some("a".into()));
        assert!(s.contains("b"));
        s.clear();
        assert!(!s.contains("b"));
        assert_eq!(s.insert("c".into()), None);
    }

    #[test]
    fn matches_a_naive_model() {
        // A deterministic pseudo-random workload checked against a Vec-based LRU.
        let mut s = PreparedSet::new(5);
        let mut model: Vec<String> = Vec::new(); // oldest first
        let mut x: u32 = 12345;
        for _ in 0..5000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let name = format!("sg_{}", (x >> 16) % 9);
            match (x >> 8) % 3 {
                0 => {
                    let held = model.iter().position(|n| *n == name);
                    assert_eq!(s.contains(&name), held.is_some());
                    if let Some(i) = held {
                        let n = model.remove(i);
                        model.push(n);
                    }
                }
                1 => {
                    let expected = match model.iter().position(|n| *n == name) {
                        Some(i) => {
                            let n = model.remove(i);
                            model.push(n);
                            None
                        }
                        None => {
                            model.push(name.clone());
                            (model.len() > 5).then(|| model.remove(0))
                        }
                    };
                    assert_eq!(s.insert(name), expected);
                }
                _ => {
                    model.retain(|n| *n != name);
                    s.remove(&name);
                }
            }
            assert_eq!(order(&s), model);
        }
    }
}
