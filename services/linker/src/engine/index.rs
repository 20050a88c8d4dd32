//! The engine's two big indexes (spans by `(host, span_id)`, call chains by
//! `(req_seq, resp_seq)`) as hash tables of node indices.
//!
//! A slot holds the node index and 32 bits of the key's hash, 8 bytes in all,
//! where a map of keys and values took 24: the tables stay in cache far longer.
//! A key is compared on the node itself, which is read only when the hash bits
//! already agree. The stored hash bits let the table grow or clear out removed
//! slots without reading a single node.

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use super::NONE;

#[derive(Clone, Copy)]
struct Slot {
    node: u32,
    hash: u32,
}

/// The 64-bit hash the table uses, rebuilt from the stored 32 bits (hashbrown
/// takes its bucket from the low bits and its tag from the top 7).
fn spread(hash: u32) -> u64 {
    (u64::from(hash) << 32) | u64::from(hash)
}

#[derive(Default)]
pub(super) struct NodeIndex {
    table: HashTable<Slot>,
}

impl NodeIndex {
    /// The node under `hash` for which `is_key` holds.
    pub(super) fn get(&self, hash: u64, mut is_key: impl FnMut(u32) -> bool) -> Option<u32> {
        let hash = hash as u32;
        self.table
            .find(spread(hash), |s| s.hash == hash && is_key(s.node))
            .map(|s| s.node)
    }

    /// Puts `node` under its key, unless the key is there: then the node that
    /// has it.
    pub(super) fn insert(
        &mut self,
        hash: u64,
        mut is_key: impl FnMut(u32) -> bool,
        node: u32,
    ) -> Result<(), u32> {
        let hash = hash as u32;
        match self.table.entry(
            spread(hash),
            |s| s.hash == hash && is_key(s.node),
            |s| spread(s.hash),
        ) {
            Entry::Occupied(o) => Err(o.get().node),
            Entry::Vacant(v) => {
                v.insert(Slot { node, hash });
                Ok(())
            }
        }
    }

    /// Puts `node` under its key and returns the node it replaced (NONE if the
    /// key was new).
    pub(super) fn put(&mut self, hash: u64, mut is_key: impl FnMut(u32) -> bool, node: u32) -> u32 {
        let hash = hash as u32;
        match self.table.entry(
            spread(hash),
            |s| s.hash == hash && is_key(s.node),
            |s| spread(s.hash),
        ) {
            Entry::Occupied(mut o) => std::mem::replace(&mut o.get_mut().node, node),
            Entry::Vacant(v) => {
                v.insert(Slot { node, hash });
                NONE
            }
        }
    }

    /// Replaces `old` (found by its index, not its key) with `new`, or removes
    /// it when `new` is NONE.
    pub(super) fn replace(&mut self, hash: u64, old: u32, new: u32) {
        let hash = hash as u32;
        if let Ok(mut entry) = self
            .table
            .find_entry(spread(hash), |s| s.hash == hash && s.node == old)
        {
            if new == NONE {
                entry.remove();
            } else {
                entry.get_mut().node = new;
            }
        }
    }
}
