//! Open traces as trees: a group per tree, merged when an edge joins two trees,
//! split when an edge is withdrawn.
//!
//! Every span has at most one parent, so a group is exactly one tree and an edge
//! from a root to a span of its own group would close a cycle: such an edge is
//! refused. A group's members are a list of node indices (lists are reused, so
//! no allocation per span), which finishing reads in one sweep of independent
//! loads where a chain through the nodes would cost a cache miss per member, one
//! after the other. Merging relabels the smaller group (amortised O(log n) per
//! span) and appends its list; splitting walks the members, and happens only when
//! a call turns out ambiguous.

use super::node_id::NodeId;
use super::{Engine, Home, Kind, TraceId};

/// An open trace (or an open late part of a finished one).
pub(super) struct Group {
    pub(super) members: Vec<NodeId>,
    /// Linker time of the last span that joined.
    pub(super) last_join: u64,
    /// Bumped when the slot is freed, so stale due-queue entries are recognised.
    pub(super) generation: u32,
    pub(super) live: bool,
    /// Has an entry in the due queue.
    pub(super) scheduled: bool,
    /// Set when the root's parent is a span of a finished trace: the group is a
    /// late part of that trace.
    pub(super) attach: Option<Attach>,
}

/// The edge from a late part's root to a finished trace, with what the late part
/// inherits (copied: the finished spans may be forgotten before the part ends).
#[derive(Debug, Clone, Copy)]
pub(super) struct Attach {
    pub(super) child: NodeId,
    pub(super) parent_span_id: u64,
    pub(super) id: TraceId,
    pub(super) app_id: bool,
    pub(super) sampled: bool,
}

/// Lists longer than this are freed rather than kept for reuse, so a few huge
/// traces do not leave every new group holding a huge list.
const SPARE_LIST_MAX: usize = 1024;

impl<P> Engine<P> {
    /// An empty member list, reused if one is spare.
    pub(super) fn take_list(&mut self) -> Vec<NodeId> {
        self.spare_lists.pop().unwrap_or_default()
    }

    /// Keeps an emptied member list for reuse.
    pub(super) fn give_list(&mut self, mut list: Vec<NodeId>) {
        if list.capacity() <= SPARE_LIST_MAX {
            list.clear();
            self.spare_lists.push(list);
        }
    }

    /// A group of one span; scheduled by the caller once the span has settled.
    pub(super) fn new_group(&mut self, n: NodeId, now_ns: u64) -> u32 {
        let mut members = self.take_list();
        members.push(n);
        self.group_of(members, now_ns)
    }

    /// A group of `members` (their homes are set here).
    fn group_of(&mut self, members: Vec<NodeId>, last_join: u64) -> u32 {
        let g = match self.free_groups.pop() {
            Some(g) => g,
            None => {
                self.groups.push(Group {
                    members: Vec::new(),
                    last_join: 0,
                    generation: 0,
                    live: false,
                    scheduled: false,
                    attach: None,
                });
                (self.groups.len() - 1) as u32
            }
        };
        for &m in &members {
            self.nodes[m].set_home(Home::Open(g));
        }
        let group = &mut self.groups[g as usize];
        group.members = members;
        group.last_join = last_join;
        group.live = true;
        group.scheduled = false;
        group.attach = None;
        self.stats.traces_in_window += 1;
        g
    }

    /// Puts a group in the due queue if it is not there yet.
    pub(super) fn schedule(&mut self, g: u32) {
        let group = &mut self.groups[g as usize];
        if !group.scheduled {
            group.scheduled = true;
            let due = group.last_join.saturating_add(self.window_ns);
            self.due.push(due, g, group.generation);
        }
    }

    /// Frees a group slot and hands back its members and attachment.
    pub(super) fn release_group(&mut self, g: u32) -> (Vec<NodeId>, Option<Attach>) {
        let group = &mut self.groups[g as usize];
        let members = std::mem::take(&mut group.members);
        group.live = false;
        group.scheduled = false;
        group.generation = group.generation.wrapping_add(1);
        let attach = group.attach.take();
        self.free_groups.push(g);
        self.stats.traces_in_window = self.stats.traces_in_window.saturating_sub(1);
        (members, attach)
    }

    /// Makes `parent` the parent of `child`, a root. False (and nothing changed)
    /// when the edge would close a cycle, the child already hangs under a finished
    /// trace, or the child itself is finished.
    pub(super) fn link(&mut self, child: NodeId, parent: NodeId) -> bool {
        let Home::Open(gc) = self.nodes[child].home() else {
            return false;
        };
        if self.nodes[child].parent.is_some() || self.groups[gc as usize].attach.is_some() {
            return false;
        }
        match self.nodes[parent].home() {
            Home::Open(gp) => {
                if gp == gc {
                    return false; // the parent is in the child's own tree
                }
                self.nodes[child].parent = Some(parent);
                self.merge(gp, gc);
                true
            }
            Home::Finished(r) => {
                let record = &self.records[r as usize];
                self.groups[gc as usize].attach = Some(Attach {
                    child,
                    parent_span_id: self.nodes[parent].span_id,
                    id: record.id,
                    app_id: record.app_id,
                    sampled: record.sampled,
                });
                true
            }
        }
    }

    /// Joins the child group into the parent group (the parent keeps its
    /// attachment; the child, a root with a new parent, has none).
    fn merge(&mut self, gp: u32, gc: u32) {
        let (big, small) =
            if self.groups[gp as usize].members.len() >= self.groups[gc as usize].members.len() {
                (gp, gc)
            } else {
                (gc, gp)
            };
        let last_join = self.groups[gp as usize]
            .last_join
            .max(self.groups[gc as usize].last_join);
        let attach = self.groups[gp as usize].attach;
        let (small_members, _) = self.release_group(small);
        for &m in &small_members {
            self.nodes[m].set_home(Home::Open(big));
        }
        let group = &mut self.groups[big as usize];
        group.members.extend_from_slice(&small_members);
        group.last_join = last_join;
        group.attach = attach;
        self.give_list(small_members);
        // `big` keeps its due entry (if any); a later last_join is seen when
        // the entry comes up.
    }

    /// Removes the call edge into SERVER span `s` (its parent is its client, or
    /// the finished trace its group hangs under). The subtree under `s` becomes a
    /// group of its own.
    pub(super) fn cut_above(&mut self, s: NodeId) {
        let Home::Open(g) = self.nodes[s].home() else {
            return;
        };
        if self.nodes[s].kind() != Kind::Server {
            return;
        }
        if self.nodes[s].parent.is_none() {
            let group = &mut self.groups[g as usize];
            if group.attach.is_some_and(|a| a.child == s) {
                group.attach = None;
            }
            return;
        }
        self.nodes[s].parent = None;
        let members = std::mem::take(&mut self.groups[g as usize].members);
        let limit = members.len();
        let (mut under, mut rest) = (self.take_list(), self.take_list());
        for m in members.iter().copied() {
            // Walk up: the chain ends at a root, at most `limit` steps away.
            let mut at = Some(m);
            let mut below = false;
            for _ in 0..=limit {
                let Some(here) = at else {
                    break;
                };
                if here == s {
                    below = true;
                    break;
                }
                at = self.nodes[here].parent;
            }
            if below {
                under.push(m);
            } else {
                rest.push(m);
            }
        }
        self.give_list(members);
        self.groups[g as usize].members = rest;
        let last_join = self.groups[g as usize].last_join;
        let g2 = self.group_of(under, last_join);
        self.schedule(g2);
    }
}
