//! Finishing a tree: its trace id, every span's `parent_id`, the sampling
//! decision; then keeping its spans known for `late_retention`.

use std::cmp::Reverse;

use super::groups::Attach;
use super::node_id::NodeId;
use super::prefetch::prefetch;
use super::trace_id::{self, AppDecision, TraceId};
use super::{AHEAD, Engine, Finished, FinishedTrace, Home, Kind, Linked, Record, hash};

impl<P> Engine<P> {
    /// Finishes group `g`, due at `due_ns`. Retention counts from the due time,
    /// not from when `advance` happened to run, so the result does not depend on
    /// how often the caller advances.
    pub(super) fn finish(&mut self, g: u32, due_ns: u64) -> Finished<P> {
        let (mut members, attach) = self.release_group(g);
        // (`advance` asked for these nodes while it finished the group before.)
        // The root first, then by start: a stable, readable order.
        let mut keyed = std::mem::take(&mut self.sort_scratch);
        keyed.clear();
        for &m in &members {
            let n = &self.nodes[m];
            // A group is one tree: its one root (no parent) sorts first.
            let start = if n.parent.is_none() { 0 } else { n.start_ns };
            keyed.push((start, n.span_id, n.host, m));
        }
        // Ties on the start are rare: compare the rest only then.
        keyed.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| {
                    (self.nodes[a.3].parent.is_some()).cmp(&self.nodes[b.3].parent.is_some())
                })
                .then_with(|| (a.1, a.2).cmp(&(b.1, b.2)))
        });
        members.clear();
        members.extend(keyed.iter().map(|&(.., m)| m));
        self.sort_scratch = keyed;
        let (id, app_id, sampled) = match attach {
            Some(a) => (a.id, a.app_id, a.sampled),
            None => self.decide(&members),
        };

        let r = self.alloc_record(Record {
            id,
            app_id,
            sampled,
            nodes: Vec::new(),
        });
        let mut spans = Vec::with_capacity(members.len());
        let mut tags = Vec::with_capacity(4);
        for &m in &members {
            let parent_id = self.parent_id(m, attach.as_ref());
            let node = &mut self.nodes[m];
            node.set_home(Home::Finished(r));
            if parent_id != 0 {
                match node.kind() {
                    Kind::Server => self.stats.linked_cross_process += 1,
                    _ => self.stats.linked_local += 1,
                }
            }
            let cold = &mut self.cold[m];
            let tag = self.tags[cold.tag as usize].tag;
            if tags.last() != Some(&tag) {
                tags.push(tag);
            }
            if let Some(app) = cold.app.take() {
                self.free_apps.push(app);
            }
            if let Some(span) = cold.payload.take() {
                spans.push(Linked { span, parent_id });
            }
        }
        tags.sort_unstable();
        tags.dedup();

        let count = members.len() as u64;
        self.stats.spans_in_window = self.stats.spans_in_window.saturating_sub(count);
        self.stats.spans_retained += count;
        if sampled {
            self.stats.spans_kept += count;
        } else {
            self.stats.spans_dropped_by_sampling += count;
        }
        let late = attach.is_some();
        if late {
            self.stats.late += count;
            self.stats.late_parts += 1;
        } else {
            self.stats.traces_finished += 1;
            if sampled {
                self.stats.traces_kept += 1;
            } else {
                self.stats.traces_dropped_by_sampling += 1;
            }
            if count == 1 {
                self.stats.unlinked += 1;
            }
        }
        self.records[r as usize].nodes = members;
        self.retained.push(Reverse((due_ns, r)));

        Finished {
            trace: FinishedTrace {
                trace_id_high: id.high,
                trace_id_low: id.low,
                spans,
                app_trace_id: app_id,
                late,
            },
            sampled,
            tags,
            due_ns,
        }
    }

    fn parent_id(&self, m: NodeId, attach: Option<&Attach>) -> u64 {
        if let Some(parent) = self.nodes[m].parent {
            return self.nodes[parent].span_id;
        }
        match attach {
            Some(a) if a.child == m => a.parent_span_id,
            _ => 0,
        }
    }

    /// Trace id and sampling of a new trace; `members` has its root first.
    fn decide(&self, members: &[NodeId]) -> (TraceId, bool, bool) {
        let mut app = AppDecision::default();
        // The app id nearest the root wins: (depth, start, span id).
        let mut best: Option<((usize, u64, u64), TraceId)> = None;
        for &m in members {
            let node = &self.nodes[m];
            let Some(slot) = self.cold[m].app else {
                continue;
            };
            let ctx = &self.apps[slot as usize];
            app.add(ctx.sampling);
            if !self.config.use_app_trace_id || (ctx.trace_id_high == 0 && ctx.trace_id_low == 0) {
                continue;
            }
            let rank = (self.depth(m, members.len()), node.start_ns, node.span_id);
            if best.is_none_or(|(b, _)| rank < b) {
                let id = TraceId {
                    high: ctx.trace_id_high,
                    low: ctx.trace_id_low,
                };
                best = Some((rank, id));
            }
        }
        let (id, app_id) = match best {
            Some((_, id)) => (id, true),
            None => {
                let root = &self.nodes[members[0]];
                let host_hash = self.host_hashes[root.host as usize];
                (
                    trace_id::derived(host_hash, root.span_id, root.start_ns),
                    false,
                )
            }
        };
        let sampled = app
            .decided()
            .unwrap_or_else(|| trace_id::keep_by_rate(id, self.config.sampling_rate));
        (id, app_id, sampled)
    }

    fn depth(&self, m: NodeId, limit: usize) -> usize {
        let mut depth = 0;
        let mut at = self.nodes[m].parent;
        while let Some(parent) = at
            && depth < limit
        {
            at = self.nodes[parent].parent;
            depth += 1;
        }
        depth
    }

    fn alloc_record(&mut self, record: Record) -> u32 {
        match self.free_records.pop() {
            Some(r) => {
                self.records[r as usize] = record;
                r
            }
            None => {
                self.records.push(record);
                (self.records.len() - 1) as u32
            }
        }
    }

    /// Forgets finished traces older than `late_retention`.
    pub(super) fn expire(&mut self, now_ns: u64) {
        let mut expiring = std::mem::take(&mut self.expiring);
        while let Some(&Reverse((finished_at, r))) = self.retained.peek() {
            if finished_at.saturating_add(self.retention_ns) > now_ns {
                break;
            }
            self.retained.pop();
            let nodes = std::mem::take(&mut self.records[r as usize].nodes);
            expiring.extend_from_slice(&nodes);
            self.give_list(nodes);
            self.free_records.push(r);
        }
        // These nodes and their index slots were last touched a retention ago
        // and are cold. One pipeline: at step k the node k is asked for, then
        // the slots of node k - AHEAD (whose node is in by now), and node
        // k - 2 AHEAD is forgotten: the misses overlap where `free_node` alone
        // would take them one after the other.
        let behind = |k: usize, by: usize| k.checked_sub(by).and_then(|i| expiring.get(i));
        for k in 0..expiring.len() + 2 * AHEAD {
            if let Some(&m) = expiring.get(k) {
                prefetch(&self.nodes[m]);
                prefetch(&self.cold[m]);
            }
            if let Some(&m) = behind(k, AHEAD) {
                self.prefetch_index_slots(m);
            }
            if let Some(&n) = behind(k, 2 * AHEAD) {
                self.free_node(n);
            }
        }
        expiring.clear();
        self.expiring = expiring;
    }

    /// Asks for the nodes of a group about to be finished, both halves: they
    /// were last touched a window ago.
    pub(super) fn prefetch_members(&self, members: &[NodeId]) {
        for &m in members {
            prefetch(&self.nodes[m]);
            prefetch(&self.cold[m]);
        }
    }

    /// The index slots `free_node(n)` will visit.
    fn prefetch_index_slots(&self, n: NodeId) {
        let node = &self.nodes[n];
        self.by_span
            .prefetch(hash::span_key(node.host, node.span_id));
        if node.in_calls() {
            self.by_call
                .prefetch(hash::call_key(node.req_seq, node.resp_seq));
        }
    }
}
