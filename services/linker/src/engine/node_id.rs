//! Which span a [`Node`] (and its [`Cold`] line) is: its slot in the slabs.
//!
//! Every link between spans (parent, call partner, next in a chain) is one, so
//! it must stay 4 bytes to keep a [`Node`] in one cache line. It is stored one
//! up in a `NonZeroU32`, which leaves 0 for `None`: an absent link is an
//! `Option<NodeId>` of 4 bytes, not a sentinel index to remember to check.

use std::num::NonZeroU32;
use std::ops::{Index, IndexMut};

use super::{Cold, Node};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct NodeId(NonZeroU32);

const _: () = assert!(std::mem::size_of::<Option<NodeId>>() == 4);

impl NodeId {
    /// The node at slab position `index` (below `u32::MAX`: 256 GiB of nodes).
    pub(super) fn new(index: usize) -> Self {
        let id = u32::try_from(index + 1).ok().and_then(NonZeroU32::new);
        Self(id.expect("fewer than u32::MAX nodes"))
    }

    /// Its slab position.
    pub(super) fn index(self) -> usize {
        (self.0.get() - 1) as usize
    }

    /// Its 32 bits as the indexes store them: never 0, so a slot of 0 is empty.
    pub(super) fn bits(self) -> u32 {
        self.0.get()
    }

    /// The node whose [`NodeId::bits`] these are; `None` for 0.
    pub(super) fn from_bits(bits: u32) -> Option<Self> {
        NonZeroU32::new(bits).map(Self)
    }
}

impl Index<NodeId> for Vec<Node> {
    type Output = Node;
    fn index(&self, id: NodeId) -> &Node {
        &self[id.index()]
    }
}

impl IndexMut<NodeId> for Vec<Node> {
    fn index_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self[id.index()]
    }
}

impl<P> Index<NodeId> for Vec<Cold<P>> {
    type Output = Cold<P>;
    fn index(&self, id: NodeId) -> &Cold<P> {
        &self[id.index()]
    }
}

impl<P> IndexMut<NodeId> for Vec<Cold<P>> {
    fn index_mut(&mut self, id: NodeId) -> &mut Cold<P> {
        &mut self[id.index()]
    }
}
