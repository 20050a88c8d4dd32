//! The engine's two big indexes (spans by `(host, span_id)`, call chains by
//! `(req_seq, resp_seq)`) as hash tables of node indices.
//!
//! A slot holds the node index and 32 bits of the key's hash, 8 bytes in all,
//! where a map of keys and values took 24: the tables stay in cache far longer.
//! A key is compared on the node itself, which is read only when the hash bits
//! already agree. The stored hash bits let the table grow without reading a
//! single node.
//!
//! Hand-written (open addressing, linear probing, deletion by backward shift)
//! rather than hashbrown's `HashTable`, because the engine must know where a key
//! lands before it looks: it prefetches the slots of a whole message's spans a
//! few spans ahead, so their cache misses overlap instead of coming one after
//! the other (`hashbrown` does not say where a key's bucket is). The tables are
//! larger than any cache, so nearly every probe is a miss.

use super::node_id::NodeId;
use super::prefetch::prefetch;

/// A free slot: no node ([`NodeId::bits`] are never 0).
const EMPTY: u64 = 0;

fn pack(node: NodeId, hash: u32) -> u64 {
    (u64::from(hash) << 32) | u64::from(node.bits())
}

/// The slot's node, `None` when it is empty.
fn node_of(slot: u64) -> Option<NodeId> {
    NodeId::from_bits(slot as u32)
}

fn hash_of(slot: u64) -> u32 {
    (slot >> 32) as u32
}

#[derive(Default)]
pub(super) struct NodeIndex {
    /// A power of two long (or empty).
    slots: Vec<u64>,
    len: usize,
}

impl NodeIndex {
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    fn home(&self, hash: u32) -> usize {
        hash as usize & self.mask()
    }

    /// Asks the memory for the slot where `hash` starts, ahead of a lookup.
    pub(super) fn prefetch(&self, hash: u64) {
        if let Some(slot) = self.slots.get(self.home(hash as u32)) {
            prefetch(slot);
        }
    }

    /// The first node whose stored hash bits are `hash`'s, key unchecked: what a
    /// lookup of `hash` will most likely read next, to prefetch it.
    pub(super) fn likely(&self, hash: u64) -> Option<NodeId> {
        self.get(hash, |_| true)
    }

    /// Where the key is (`Ok`) or would go (`Err`).
    fn find(
        &self,
        hash: u32,
        mut is_key: impl FnMut(NodeId) -> bool,
    ) -> Result<(usize, NodeId), usize> {
        let mask = self.mask();
        let mut i = self.home(hash);
        loop {
            let slot = self.slots[i];
            let Some(node) = node_of(slot) else {
                return Err(i);
            };
            if hash_of(slot) == hash && is_key(node) {
                return Ok((i, node));
            }
            i = (i + 1) & mask;
        }
    }

    /// The node under `hash` for which `is_key` holds.
    pub(super) fn get(&self, hash: u64, is_key: impl FnMut(NodeId) -> bool) -> Option<NodeId> {
        if self.len == 0 {
            return None;
        }
        self.find(hash as u32, is_key).ok().map(|(_, node)| node)
    }

    /// Puts `node` under its key, unless the key is there: then the node that
    /// has it.
    pub(super) fn insert(
        &mut self,
        hash: u64,
        is_key: impl FnMut(NodeId) -> bool,
        node: NodeId,
    ) -> Result<(), NodeId> {
        self.reserve_one();
        let hash = hash as u32;
        match self.find(hash, is_key) {
            Ok((_, known)) => Err(known),
            Err(i) => {
                self.slots[i] = pack(node, hash);
                self.len += 1;
                Ok(())
            }
        }
    }

    /// Puts `node` under its key and returns the node it replaced (`None` if
    /// the key was new).
    pub(super) fn put(
        &mut self,
        hash: u64,
        is_key: impl FnMut(NodeId) -> bool,
        node: NodeId,
    ) -> Option<NodeId> {
        self.reserve_one();
        let hash = hash as u32;
        match self.find(hash, is_key) {
            Ok((i, old)) => {
                self.slots[i] = pack(node, hash);
                Some(old)
            }
            Err(i) => {
                self.slots[i] = pack(node, hash);
                self.len += 1;
                None
            }
        }
    }

    /// Replaces `old` (found by its id, not its key) with `new`, or removes it
    /// when `new` is `None`.
    pub(super) fn replace(&mut self, hash: u64, old: NodeId, new: Option<NodeId>) {
        if self.len == 0 {
            return;
        }
        let hash = hash as u32;
        let Ok((i, _)) = self.find(hash, |n| n == old) else {
            return;
        };
        match new {
            Some(new) => self.slots[i] = pack(new, hash),
            None => self.remove_at(i),
        }
    }

    /// Empties slot `i` and moves later slots of the same run back, so that no
    /// lookup meets a hole before its key (no tombstones to clean up later).
    fn remove_at(&mut self, mut i: usize) {
        let mask = self.mask();
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let slot = self.slots[j];
            if slot == EMPTY {
                break;
            }
            // A slot may move back to `i` only if its home is not after `i`.
            let home = self.home(hash_of(slot));
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(i) & mask {
                self.slots[i] = slot;
                i = j;
            }
        }
        self.slots[i] = EMPTY;
        self.len -= 1;
    }

    /// Room for one more at a load of at most 3/4 (linear probing slows fast
    /// beyond that).
    fn reserve_one(&mut self) {
        if (self.len + 1) * 4 <= self.slots.len() * 3 {
            return;
        }
        let size = (self.slots.len() * 2).max(16);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; size]);
        let mask = self.mask();
        for slot in old.into_iter().filter(|&s| s != EMPTY) {
            let mut i = self.home(hash_of(slot));
            while self.slots[i] != EMPTY {
                i = (i + 1) & mask;
            }
            self.slots[i] = slot;
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Keys live in `keys[node]`; hashes are deliberately poor (few bits), so
    /// runs are long and wrap around the table's end.
    #[test]
    fn behaves_as_a_map_under_inserts_and_removals() {
        let mut keys: Vec<u64> = Vec::new();
        let mut index = NodeIndex::default();
        let mut model: HashMap<u64, NodeId> = HashMap::new();
        let hash = |k: u64| (k % 7) * 0x1111_1111 + (k % 3);
        let mut state = 0x1234_5678_u64;
        for step in 0..20_000u32 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let key = (state >> 33) % 500;
            if step % 3 == 2 {
                // Remove the node holding `key`, if any.
                if let Some(node) = model.remove(&key) {
                    index.replace(hash(key), node, None);
                }
            } else {
                let node = NodeId::new(keys.len());
                keys.push(key);
                let got = index.insert(hash(key), |n| keys[n.index()] == key, node);
                match model.get(&key) {
                    Some(&old) => assert_eq!(got, Err(old)),
                    None => {
                        assert_eq!(got, Ok(()));
                        model.insert(key, node);
                    }
                }
            }
            assert_eq!(index.len(), model.len());
        }
        for key in 0..500 {
            let got = index.get(hash(key), |n| keys[n.index()] == key);
            assert_eq!(got, model.get(&key).copied(), "key {key}");
        }
    }

    #[test]
    fn put_replaces_and_replace_renames() {
        let keys = [10u64, 20, 10, 30];
        let mut index = NodeIndex::default();
        let is = |key: u64| move |n: NodeId| keys[n.index()] == key;
        let id = NodeId::new;
        assert_eq!(index.put(1, is(10), id(0)), None);
        assert_eq!(index.put(1, is(20), id(1)), None); // same hash bits, other key
        assert_eq!(index.put(1, is(10), id(2)), Some(id(0)));
        assert_eq!(index.get(1, is(10)), Some(id(2)));
        assert_eq!(index.likely(1), Some(id(2)));
        index.replace(1, id(2), Some(id(3))); // by node, not by key
        assert_eq!(index.get(1, |n| n == id(3)), Some(id(3)));
        index.replace(1, id(3), None);
        assert_eq!(index.get(1, is(20)), Some(id(1)));
        assert_eq!(index.len(), 1);
        index.replace(99, id(7), None); // absent: nothing happens
        assert_eq!(index.len(), 1);
    }
}
