//! The linking engine: eSpans and the linker's clock in, finished traces out. No
//! I/O, no clock of its own, no randomness: the same calls give the same traces,
//! which is how the service rebuilds its window after a crash.
//!
//! How spans become traces:
//! - cross-process ([`calls`]): a CLIENT and a SERVER span with the same
//!   `(req_seq, resp_seq)` and compatible times (and, on one host, tuples) are one
//!   call; the server's parent is the client. An edge needs exactly one candidate on
//!   each side; a second candidate withdraws it and both stay unlinked (counted).
//! - intra-process: a CLIENT span's `local_parent_id` names a SERVER span of the
//!   same host and pid.
//!
//! Each span has at most one parent (a server's is its client, a client's is its
//! local parent), so an open trace is a tree. [`groups`] keeps each tree's members,
//! merges two trees when an edge joins them and splits one when an edge is
//! withdrawn. A tree nobody joined for `window` is finished ([`finish`]): it gets
//! its trace id and sampling decision, and its spans stay known for
//! `late_retention` so a late span joins the same trace id and decision.
//!
//! What the engine reads of a span is its [`LinkFacts`]; the span itself is an
//! opaque payload `P` carried through to the finished trace (an `ESpan` for
//! [`Engine::ingest`], the bytes as received for the service).
//!
//! Memory: per span a [`Node`] (one 64-byte cache line: what matching, linking
//! and finishing read) and beside it a [`Cold`] line (payload, tag, app
//! context, local-parent wait), in slabs; 8 bytes in each of two hash tables of
//! node indices ([`index`]); member lists of open traces are reused. Nothing is
//! allocated per span once the engine has warmed up, except what the caller's
//! payload and the output hold.
//!
//! Speed: the window is far larger than the caches, so the engine's time is
//! cache misses. [`Engine::ingest_batch`] hashes a whole message's keys first
//! and asks for each span's index slots, then the nodes they name, several
//! spans ahead ([`prefetch`]); `advance` asks for the next due trace's nodes
//! while it finishes one, and for the nodes and slots it will forget ahead of
//! forgetting them. The output does not depend on any of this.
//!
//! Replay contract: the output depends only on the sequence of calls. A rebuild
//! reproduces a live run if both call `advance(t)` before ingesting a batch
//! stamped `t` (stamps non-decreasing, the same stamp as `now_ns` of its spans).
//! Extra `advance` calls in between, at times up to the next stamp (idle ticks),
//! change nothing: retention counts from each trace's due time, not from when
//! `advance` ran.

mod calls;
pub mod config;
mod due;
mod facts;
mod finish;
mod groups;
pub(crate) mod hash;
mod index;
mod node_id;
mod prefetch;
pub mod trace_id;

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use espan::wire::{ESpan, LinkedSpan, SpanKind, Trace};

pub use config::{ConfigError, EngineConfig, SameHostTuple};
pub use facts::{AppContext, LinkFacts};
pub use hash::{endpoint_fingerprint, fingerprint};
pub use trace_id::TraceId;

use due::DueQueue;
use groups::Group;
use hash::Map;
use index::NodeIndex;
use node_id::NodeId;
use prefetch::prefetch;

/// A host name as the engine numbers it ([`Engine::host_id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostId(u32);

/// What happened to one ingested span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// In an open trace (alone or joined).
    Open,
    /// Joined a trace that was already finished: it will come out in a
    /// [`Finished`] with `trace.late = true`, under that trace's id and decision.
    Late,
    /// The same `(host, span_id)` was seen before: counted once, this copy dropped.
    Duplicate,
}

/// A trace (or a late part of one) the engine is done with. `P` is the span as
/// the caller handed it in.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished<P = ESpan> {
    /// Spans with `parent_id`, trace ids, `app_trace_id` and `late`.
    pub trace: FinishedTrace<P>,
    /// Kept by sampling (publish it) or dropped.
    pub sampled: bool,
    /// The tags of the batches these spans came from, sorted, without repeats.
    pub tags: Vec<u64>,
    /// When it became due (its last join + window, linker clock): the same
    /// however often the engine was advanced, so a replay finds the same.
    pub due_ns: u64,
}

/// A finished trace, field for field the wire's `Trace` but holding each span as
/// it came in.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedTrace<P = ESpan> {
    /// High 64 bits of the trace id.
    pub trace_id_high: u64,
    /// Low 64 bits of the trace id.
    pub trace_id_low: u64,
    /// The root first, then by start time.
    pub spans: Vec<Linked<P>>,
    /// The trace id came from the application's own headers.
    pub app_trace_id: bool,
    /// Spans that joined after the trace was first finished (only those).
    pub late: bool,
}

/// A span and its parent's `span_id` (0 for a root).
#[derive(Debug, Clone, PartialEq)]
pub struct Linked<P = ESpan> {
    /// The span as it came in.
    pub span: P,
    /// Its parent's span id, 0 for a root.
    pub parent_id: u64,
}

impl FinishedTrace<ESpan> {
    /// The wire's `Trace`.
    pub fn into_wire(self) -> Trace {
        Trace {
            trace_id_high: self.trace_id_high,
            trace_id_low: self.trace_id_low,
            spans: self
                .spans
                .into_iter()
                .map(|l| LinkedSpan {
                    span: Some(l.span),
                    parent_id: l.parent_id,
                })
                .collect(),
            app_trace_id: self.app_trace_id,
            late: self.late,
        }
    }
}

/// Counters since the engine started, and gauges of what it holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Spans ingested, duplicates included.
    pub spans_in: u64,
    /// Spans dropped as a repeat of a known `(host, span_id)`.
    pub duplicates: u64,
    /// Client→server edges in finished traces.
    pub linked_cross_process: u64,
    /// Local-parent edges in finished traces.
    pub linked_local: u64,
    /// Spans finished alone: no parent, no child.
    pub unlinked: u64,
    /// Call edges refused or withdrawn because more than one candidate matched
    /// (or the edge would have closed a cycle).
    pub ambiguous: u64,
    /// `local_parent_id` edges refused: the named span is not a SERVER span of the
    /// same pid, or the edge would have closed a cycle.
    pub rejected_local: u64,
    /// A parent arrived after its child's trace was finished: the child stays a
    /// root of the trace already sent.
    pub late_parent_missed: u64,
    /// Spans with neither req_seq nor resp_seq (no cross-process edge possible).
    pub no_seq: u64,
    /// Spans sent in late parts (`trace.late = true`).
    pub late: u64,
    /// Late parts finished.
    pub late_parts: u64,
    /// Traces finished (late parts not counted).
    pub traces_finished: u64,
    /// Finished traces kept by sampling (late parts not counted).
    pub traces_kept: u64,
    /// Finished traces dropped by sampling (late parts not counted).
    pub traces_dropped_by_sampling: u64,
    /// Spans finished in kept traces and late parts.
    pub spans_kept: u64,
    /// Spans finished in dropped traces and late parts.
    pub spans_dropped_by_sampling: u64,
    /// Spans in open traces now.
    pub spans_in_window: u64,
    /// Open traces now.
    pub traces_in_window: u64,
    /// Finished spans still known for late joins and duplicate detection now.
    pub spans_retained: u64,
}

/// Its number is what a [`Node`] keeps in two bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Client = 0,
    Server = 1,
    /// Not valid on the wire; kept and emitted alone, never linked.
    Other = 2,
}

/// Where a span is: in an open group, or finished in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Home {
    Open(u32),
    Finished(u32),
}

/// [`Home`] packed in 32 bits: the top bit says finished.
const FINISHED_BIT: u32 = 1 << 31;

/// Linux's largest pid is below 2^22 (`PID_MAX_LIMIT`); the bits above hold
/// the node's flags.
const PID_BITS: u32 = 22;
const PID_MASK: u32 = (1 << PID_BITS) - 1;
const KIND_SHIFT: u32 = PID_BITS; // two bits
const BLOCKED: u32 = 1 << (PID_BITS + 2);
const IN_CALLS: u32 = 1 << (PID_BITS + 3);
const WAITING: u32 = 1 << (PID_BITS + 4);

/// What matching, linking and finishing read of a span, in one cache line: a
/// probe of the window is one miss, not two or three. The rest is in [`Cold`].
/// It stays until `late_retention` has passed.
#[repr(align(64))]
struct Node {
    span_id: u64,
    start_ns: u64,
    end_ns: u64,
    /// The endpoints' fingerprints folded to 32 bits: compared only between
    /// spans of one host whose 64 bits of sequence numbers and times agree.
    local_fp: u32,
    remote_fp: u32,
    req_seq: u32,
    resp_seq: u32,
    host: u32,
    /// The pid (low [`PID_BITS`]), the kind and the flags.
    pid_flags: u32,
    /// Parent in the same open group (`None` for a root; an edge into a
    /// finished trace is the group's `attach`, never a node).
    parent: Option<NodeId>,
    /// The call partner this span was matched with.
    peer: Option<NodeId>,
    /// Next span with the same call key.
    next_same_key: Option<NodeId>,
    /// [`Home`], packed.
    home: u32,
}

// One cache line, or the point of the split is lost.
const _: () = assert!(std::mem::size_of::<Node>() == 64);

impl Node {
    fn home(&self) -> Home {
        if self.home & FINISHED_BIT == 0 {
            Home::Open(self.home)
        } else {
            Home::Finished(self.home & !FINISHED_BIT)
        }
    }

    fn set_home(&mut self, home: Home) {
        self.home = match home {
            Home::Open(g) => g & !FINISHED_BIT,
            Home::Finished(r) => r | FINISHED_BIT,
        };
    }

    fn is_finished(&self) -> bool {
        self.home & FINISHED_BIT != 0
    }

    fn pid(&self) -> u32 {
        self.pid_flags & PID_MASK
    }

    fn kind(&self) -> Kind {
        match (self.pid_flags >> KIND_SHIFT) & 3 {
            k if k == Kind::Client as u32 => Kind::Client,
            k if k == Kind::Server as u32 => Kind::Server,
            _ => Kind::Other,
        }
    }

    fn flag(&self, flag: u32) -> bool {
        self.pid_flags & flag != 0
    }

    fn set_flag(&mut self, flag: u32, on: bool) {
        if on {
            self.pid_flags |= flag;
        } else {
            self.pid_flags &= !flag;
        }
    }

    /// More than one candidate matched: this span takes no call edge.
    fn blocked(&self) -> bool {
        self.flag(BLOCKED)
    }

    /// It is in its call key's chain.
    fn in_calls(&self) -> bool {
        self.flag(IN_CALLS)
    }

    /// It waits in `awaited` for its local parent.
    fn waiting(&self) -> bool {
        self.flag(WAITING)
    }
}

/// What only finishing, forgetting and waiting for a local parent read of a
/// span: a line of its own, beside its [`Node`] (same index).
#[repr(align(64))]
struct Cold<P> {
    /// The span as it came in, while open; None once sent.
    payload: Option<P>,
    local_parent_id: u64,
    /// Its batch's slot in `tags`.
    tag: u32,
    /// Index of the app context in `apps` while open, `None` when it had none.
    app: Option<u32>,
    /// Next span waiting for the same local parent.
    next_waiting: Option<NodeId>,
}

/// A finished trace's order, after its root: by start (span id and host break
/// ties, so the order is total), then the node.
type SortKey = (u64, u64, u32, NodeId);

/// A live tag and how many known spans came with it.
struct TagRef {
    tag: u64,
    spans: u32,
}

/// A finished trace or late part whose spans are still known.
struct Record {
    id: TraceId,
    app_id: bool,
    sampled: bool,
    nodes: Vec<NodeId>,
}

/// The linker's pure part. See the module documentation. `P` is the span as the
/// caller hands it in; the engine only carries it through.
pub struct Engine<P = ESpan> {
    config: EngineConfig,
    window_ns: u64,
    retention_ns: u64,
    skew_ns: u64,
    slack_ns: u64,
    nodes: Vec<Node>,
    /// Beside each node (same index), the rest of its span.
    cold: Vec<Cold<P>>,
    free_nodes: Vec<NodeId>,
    /// Open spans' app contexts (most spans have none).
    apps: Vec<AppContext>,
    free_apps: Vec<u32>,
    groups: Vec<Group>,
    free_groups: Vec<u32>,
    records: Vec<Record>,
    free_records: Vec<u32>,
    /// Emptied member lists, kept for new groups (no allocation per span).
    spare_lists: Vec<Vec<NodeId>>,
    /// Finishing's sort keys, kept for the next trace.
    sort_scratch: Vec<SortKey>,
    /// Open groups by due time (lazy: a stale entry is skipped or pushed again).
    due: DueQueue,
    /// Records by due time, for `late_retention` (a heap: one entry per trace,
    /// and expiry must not depend on the order traces were finished in).
    retained: BinaryHeap<Reverse<(u64, u32)>>,
    /// Every known span (open or retained) by `(host, span_id)`.
    by_span: NodeIndex,
    /// CLIENT spans waiting for a local parent not seen yet: the head of the
    /// chain per `(host, span_id)` awaited. Small: parents are usually awaited
    /// only while their own call is still running.
    awaited: Map<(u32, u64), NodeId>,
    /// Heads of the chains of spans per call key.
    by_call: NodeIndex,
    hosts: Map<String, u32>,
    host_hashes: Vec<u64>,
    /// The host interned last: batches come from one host at a time.
    last_host: Option<u32>,
    host_names: Vec<String>,
    /// The live tags (batches that still hold a known span) and their counts of
    /// such spans, in slots a node names (no hashing per span); `tag_slots`
    /// finds a tag's slot, once per batch thanks to `last_tag`.
    tags: Vec<TagRef>,
    free_tags: Vec<u32>,
    tag_slots: Map<u64, u32>,
    last_tag: Option<(u64, u32)>,
    retired: Vec<u64>,
    /// Spans forgotten since the last [`Engine::take_forgotten`], as (tag,
    /// span id): a rebuild from the tagged batches must leave them out.
    forgotten: Vec<(u64, u64)>,
    /// Whether to fill `forgotten` (only a caller that takes it does).
    track_forgotten: bool,
    /// [`Engine::ingest_batch`]'s spans and their index hashes, kept for the
    /// next batch (no allocation per batch).
    batch: Vec<(u32, LinkFacts, P)>,
    batch_keys: Vec<SpanKeys>,
    /// `expire`'s nodes to forget, and `advance`'s groups due, kept for the
    /// next call.
    expiring: Vec<NodeId>,
    ready: Vec<(u32, u32, u64)>,
    stats: EngineStats,
}

/// The hashes of a span's keys in the indexes, computed for a whole batch before
/// any is probed, so that each can be prefetched ahead.
#[derive(Clone, Copy)]
struct SpanKeys {
    span: u64,
    call: u64,
    /// Of its local parent's `(host, span_id)`; 0 when it names none.
    parent: u64,
}

impl SpanKeys {
    fn of(host: u32, facts: &LinkFacts) -> Self {
        Self {
            span: hash::span_key(host, facts.span_id),
            call: hash::call_key(facts.req_seq, facts.resp_seq),
            parent: if facts.local_parent_id == 0 {
                0
            } else {
                hash::span_key(host, facts.local_parent_id)
            },
        }
    }
}

/// How many spans ahead [`Engine::ingest_batch`] asks for index slots, and (half
/// as far) for the nodes those slots name. Enough to cover a miss's latency with
/// the work of the spans in between, few enough that the lines are still in L1.
const AHEAD: usize = 16;

impl Engine<ESpan> {
    /// Takes one span. `tag` is the caller's name for where it came from (the
    /// store's batch id); `now_ns` is the linker's clock. Never panics.
    pub fn ingest(&mut self, span: ESpan, tag: u64, now_ns: u64) -> Ingested {
        let facts = LinkFacts::of(&span);
        let host = self.intern_host(&span.host);
        let keys = SpanKeys::of(host, &facts);
        self.insert(host, &facts, span, tag, now_ns, keys)
    }
}

impl<P> Engine<P> {
    /// An empty engine.
    pub fn new(config: EngineConfig) -> Self {
        let window_ns = config::nanos(config.window).max(1);
        Self {
            window_ns,
            retention_ns: config::nanos(config.late_retention),
            skew_ns: config::nanos(config.clock_skew),
            slack_ns: config::nanos(config.same_host_slack),
            config,
            nodes: Vec::new(),
            free_nodes: Vec::new(),
            cold: Vec::new(),
            apps: Vec::new(),
            free_apps: Vec::new(),
            groups: Vec::new(),
            free_groups: Vec::new(),
            records: Vec::new(),
            free_records: Vec::new(),
            spare_lists: Vec::new(),
            sort_scratch: Vec::new(),
            due: DueQueue::default(),
            retained: BinaryHeap::new(),
            by_span: NodeIndex::default(),
            awaited: Map::default(),
            by_call: NodeIndex::default(),
            hosts: Map::default(),
            host_hashes: Vec::new(),
            last_host: None,
            host_names: Vec::new(),
            tags: Vec::new(),
            free_tags: Vec::new(),
            tag_slots: Map::default(),
            last_tag: None,
            retired: Vec::new(),
            forgotten: Vec::new(),
            track_forgotten: false,
            batch: Vec::new(),
            batch_keys: Vec::new(),
            expiring: Vec::new(),
            ready: Vec::new(),
            stats: EngineStats::default(),
        }
    }

    /// The settings it runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The engine's number for a host name (a span's `host`), for
    /// [`Engine::ingest_with`]. The same name always gets the same number.
    pub fn host_id(&mut self, name: &str) -> HostId {
        HostId(self.intern_host(name))
    }

    /// Takes one span given as its facts and, apart, the payload to carry
    /// through (`ingest` for an `ESpan` does both from the span). `host` is
    /// [`Engine::host_id`] of the span's `host`. Never panics.
    pub fn ingest_with(
        &mut self,
        host: HostId,
        facts: &LinkFacts,
        payload: P,
        tag: u64,
        now_ns: u64,
    ) -> Ingested {
        let host = self.known_host(host);
        let keys = SpanKeys::of(host, facts);
        self.insert(host, facts, payload, tag, now_ns, keys)
    }

    /// Takes the spans of one batch (all under `tag`, at `now_ns`), as
    /// [`Engine::ingest_with`] of each in turn would, only faster: the index
    /// slots and nodes each span will probe are asked for several spans ahead,
    /// so their cache misses overlap. The outcome of each span is in the stats.
    pub fn ingest_batch(
        &mut self,
        spans: impl IntoIterator<Item = (HostId, LinkFacts, P)>,
        tag: u64,
        now_ns: u64,
    ) {
        let mut batch = std::mem::take(&mut self.batch);
        let mut keys = std::mem::take(&mut self.batch_keys);
        for (host, facts, payload) in spans {
            let host = self.known_host(host);
            keys.push(SpanKeys::of(host, &facts));
            batch.push((host, facts, payload));
        }
        for k in keys.iter().take(AHEAD) {
            self.prefetch_slots(k);
        }
        for (i, (host, facts, payload)) in batch.drain(..).enumerate() {
            if let Some(k) = keys.get(i + AHEAD) {
                self.prefetch_slots(k);
            }
            if let Some(k) = keys.get(i + AHEAD / 2) {
                self.prefetch_nodes(k, AHEAD / 2);
            }
            self.insert(host, &facts, payload, tag, now_ns, keys[i]);
        }
        keys.clear();
        self.batch = batch;
        self.batch_keys = keys;
    }

    /// Stage one of the lookahead: the index slots a span will probe.
    fn prefetch_slots(&self, keys: &SpanKeys) {
        self.by_span.prefetch(keys.span);
        self.by_call.prefetch(keys.call);
        if keys.parent != 0 {
            self.by_span.prefetch(keys.parent);
        }
    }

    /// Stage two, once the slots are in: the nodes they name (the span's call
    /// partner and local parent, most likely) and the free node the span will
    /// take, about `ahead` spans from now.
    fn prefetch_nodes(&self, keys: &SpanKeys, ahead: usize) {
        if let Some(n) = self.by_call.likely(keys.call) {
            prefetch(&self.nodes[n]);
        }
        if keys.parent != 0
            && let Some(n) = self.by_span.likely(keys.parent)
        {
            prefetch(&self.nodes[n]);
        }
        if let Some(&n) = self.free_nodes.iter().rev().nth(ahead) {
            prefetch(&self.nodes[n]);
            prefetch(&self.cold[n]);
        }
    }

    /// `host` if this engine gave it out, else the unknown host.
    fn known_host(&mut self, host: HostId) -> u32 {
        if (host.0 as usize) < self.host_names.len() {
            host.0
        } else {
            self.intern_host("") // not from this engine: an unknown host
        }
    }

    fn insert(
        &mut self,
        host: u32,
        facts: &LinkFacts,
        payload: P,
        tag: u64,
        now_ns: u64,
        keys: SpanKeys,
    ) -> Ingested {
        self.stats.spans_in += 1;
        let span_id = facts.span_id;
        let hash = keys.span;
        // One probe on the usual path: insert the id the node will take.
        let slot = self
            .free_nodes
            .last()
            .copied()
            .unwrap_or_else(|| NodeId::new(self.nodes.len()));
        let nodes = &self.nodes;
        let known = self.by_span.insert(
            hash,
            |m| {
                let m = &nodes[m];
                m.span_id == span_id && m.host == host
            },
            slot,
        );
        if known.is_err() {
            self.stats.duplicates += 1;
            if !self.tag_slots.contains_key(&tag) {
                // A batch of duplicates only must still be retired.
                self.retired.push(tag);
            }
            return Ingested::Duplicate;
        }
        let waiting = if self.awaited.is_empty() {
            None
        } else {
            self.awaited.remove(&(host, span_id))
        };
        let n = self.add_node(facts, payload, host, tag);
        debug_assert_eq!(n, slot);
        self.new_group(n, now_ns);

        match self.nodes[n].kind() {
            Kind::Client => {
                self.find_local_parent(n, facts.local_parent_id, keys.parent);
                if let Some(server) = self.match_call(n, keys.call) {
                    self.link_call(server, n);
                }
            }
            Kind::Server => {
                if let Some(client) = self.match_call(n, keys.call) {
                    self.link_call(n, client);
                }
            }
            Kind::Other => {}
        }
        self.adopt_waiting(n, waiting);

        let Home::Open(g) = self.nodes[n].home() else {
            return Ingested::Open; // not reachable: a new span is open
        };
        let group = &mut self.groups[g as usize];
        group.last_join = group.last_join.max(now_ns);
        let late = group.attach.is_some();
        self.schedule(g);
        if late { Ingested::Late } else { Ingested::Open }
    }

    /// Finishes every open trace (and late part) nobody joined for `window`,
    /// kept and dropped alike, and forgets finished spans older than
    /// `late_retention`.
    pub fn advance(&mut self, now_ns: u64) -> Vec<Finished<P>> {
        let mut out = Vec::new();
        let mut not_yet = Vec::new();
        let mut ready = std::mem::take(&mut self.ready);
        while let Some(bucket) = self.due.take_due(now_ns) {
            for &(g, generation) in &bucket {
                if !self.is_current(g, generation) {
                    continue; // merged away or finished since
                }
                let due = self.groups[g as usize]
                    .last_join
                    .saturating_add(self.window_ns);
                if due > now_ns {
                    not_yet.push((due, g, generation)); // joined since, or later in this bucket
                    continue;
                }
                ready.push((g, generation, due));
            }
            self.due.recycle(bucket);
            if let Some(&(first, _, _)) = ready.first() {
                self.prefetch_members(&self.groups[first as usize].members);
            }
            for k in 0..ready.len() {
                // The next group's nodes load while this one finishes.
                if let Some(&(next, generation, _)) = ready.get(k + 1)
                    && self.is_current(next, generation)
                {
                    self.prefetch_members(&self.groups[next as usize].members);
                }
                let (g, generation, due) = ready[k];
                if self.is_current(g, generation) {
                    out.push(self.finish(g, due)); // (not a repeat of one just finished)
                }
            }
            ready.clear();
        }
        self.ready = ready;
        for (due, g, generation) in not_yet {
            self.due.push(due, g, generation);
        }
        self.expire(now_ns);
        out
    }

    /// Whether a due-queue entry still names a live group.
    fn is_current(&self, g: u32, generation: u32) -> bool {
        let group = &self.groups[g as usize];
        group.live && group.generation == generation
    }

    /// Counters and gauges.
    pub fn stats(&self) -> EngineStats {
        self.stats.clone()
    }

    /// Tags that still hold a span of an open trace or of a finished trace whose
    /// late-join state is kept. A batch whose tag is not here is not needed to
    /// rebuild the engine.
    pub fn live_tags(&self) -> impl Iterator<Item = u64> + '_ {
        self.tag_slots.keys().copied()
    }

    /// Whether a tag still holds spans.
    pub fn is_live(&self, tag: u64) -> bool {
        self.tag_slots.contains_key(&tag)
    }

    /// Tags that stopped being live since the last call (or were only ever
    /// duplicates), each once, sorted: the store may delete their batches.
    pub fn take_retired_tags(&mut self) -> Vec<u64> {
        let mut tags = std::mem::take(&mut self.retired);
        tags.sort_unstable();
        tags.dedup();
        tags.retain(|t| !self.tag_slots.contains_key(t));
        tags
    }

    /// Keep a list of the spans forgotten, for [`Engine::take_forgotten`]
    /// (off by default: unused, it would grow).
    pub fn track_forgotten(&mut self, on: bool) {
        self.track_forgotten = on;
        if !on {
            self.forgotten = Vec::new();
        }
    }

    /// Spans forgotten since the last call (their trace finished and past
    /// `late_retention`), as (tag, span id). Rebuilding the window from the
    /// tagged batches, a caller must skip these while any batch of theirs is
    /// left: ingested again, they would form a trace of their own, without the
    /// rest of their trace (whose batches may be gone), and be emitted twice.
    /// Only after [`Engine::track_forgotten`].
    pub fn take_forgotten(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.forgotten)
    }

    fn intern_host(&mut self, name: &str) -> u32 {
        // Batches come from one host at a time: the last one is the usual answer.
        if let Some(last) = self.last_host
            && self.host_names[last as usize] == name
        {
            return last;
        }
        let id = match self.hosts.get(name) {
            Some(&id) => id,
            None => {
                let id = self.host_names.len() as u32;
                self.hosts.insert(name.to_owned(), id);
                self.host_names.push(name.to_owned());
                self.host_hashes.push(hash::hash_bytes(name.as_bytes()));
                id
            }
        };
        self.last_host = Some(id);
        id
    }

    fn add_node(&mut self, facts: &LinkFacts, payload: P, host: u32, tag: u64) -> NodeId {
        let kind = match SpanKind::try_from(facts.kind) {
            Ok(SpanKind::Client) => Kind::Client,
            Ok(SpanKind::Server) => Kind::Server,
            _ => Kind::Other,
        };
        let app = facts.app.map(|app| match self.free_apps.pop() {
            Some(a) => {
                self.apps[a as usize] = app;
                a
            }
            None => {
                self.apps.push(app);
                (self.apps.len() - 1) as u32
            }
        });
        let fold = |fp: u64| (fp ^ (fp >> 32)) as u32;
        let node = Node {
            span_id: facts.span_id,
            start_ns: facts.start_ns,
            end_ns: facts.end_ns,
            local_fp: fold(facts.local_fp),
            remote_fp: fold(facts.remote_fp),
            req_seq: facts.req_seq,
            resp_seq: facts.resp_seq,
            host,
            // A pid beyond Linux's limit can only be a probe's bug: folded.
            pid_flags: (facts.pid & PID_MASK) | ((kind as u32) << KIND_SHIFT),
            parent: None,
            peer: None,
            next_same_key: None,
            home: 0, // set by `new_group`
        };
        let cold = Cold {
            payload: Some(payload),
            local_parent_id: facts.local_parent_id,
            tag: self.tag_slot(tag),
            app,
            next_waiting: None,
        };
        self.stats.spans_in_window += 1;
        match self.free_nodes.pop() {
            Some(n) => {
                self.nodes[n] = node;
                self.cold[n] = cold;
                n
            }
            None => {
                self.nodes.push(node);
                self.cold.push(cold);
                NodeId::new(self.nodes.len() - 1)
            }
        }
    }

    /// The slot of a tag, counting one more span under it.
    fn tag_slot(&mut self, tag: u64) -> u32 {
        let slot = match self.last_tag {
            Some((last, slot)) if last == tag => slot,
            _ => {
                let slot = match self.tag_slots.get(&tag) {
                    Some(&slot) => slot,
                    None => {
                        let tag_ref = TagRef { tag, spans: 0 };
                        let slot = match self.free_tags.pop() {
                            Some(slot) => {
                                self.tags[slot as usize] = tag_ref;
                                slot
                            }
                            None => {
                                self.tags.push(tag_ref);
                                (self.tags.len() - 1) as u32
                            }
                        };
                        self.tag_slots.insert(tag, slot);
                        slot
                    }
                };
                self.last_tag = Some((tag, slot));
                slot
            }
        };
        self.tags[slot as usize].spans += 1;
        slot
    }

    /// Counts one span less under a tag slot; the tag retires at zero.
    fn untag(&mut self, slot: u32) {
        let tag_ref = &mut self.tags[slot as usize];
        tag_ref.spans -= 1;
        if tag_ref.spans == 0 {
            let tag = tag_ref.tag;
            self.tag_slots.remove(&tag);
            self.free_tags.push(slot);
            self.retired.push(tag);
            if self.last_tag.is_some_and(|(_, s)| s == slot) {
                self.last_tag = None;
            }
        }
    }

    /// Forgets a finished span: indexes, chains, partner, tag.
    fn free_node(&mut self, n: NodeId) {
        let node = &self.nodes[n];
        let (host, span_id, peer) = (node.host, node.span_id, node.peer);
        let call_key = node.in_calls().then_some((node.req_seq, node.resp_seq));
        let waiting = node.waiting();
        let cold = &self.cold[n];
        let tag = cold.tag;
        let waiting_key = waiting.then_some((host, cold.local_parent_id));
        self.by_span.replace(hash::span_key(host, span_id), n, None);
        if let Some(key) = call_key {
            self.unchain_call(key, n);
        }
        if let Some(key) = waiting_key {
            self.unchain_waiting(key, n);
        }
        if let Some(peer) = peer
            && self.nodes[peer].peer == Some(n)
        {
            // Its partner can no longer be checked against a newcomer: take no other.
            let p = &mut self.nodes[peer];
            p.peer = None;
            p.set_flag(BLOCKED, true);
        }
        if self.track_forgotten {
            // A rebuild from its batch must not bring it back.
            self.forgotten.push((self.tags[tag as usize].tag, span_id));
        }
        self.untag(tag);
        let node = &mut self.nodes[n];
        node.set_flag(IN_CALLS | WAITING, false);
        node.peer = None;
        node.parent = None;
        self.stats.spans_retained = self.stats.spans_retained.saturating_sub(1);
        self.free_nodes.push(n);
    }

    /// Links a waiting CLIENT span to its local parent, or queues it.
    /// `parent_hash` is the span key of its `local_parent_id`.
    fn find_local_parent(&mut self, n: NodeId, parent_id: u64, parent_hash: u64) {
        let node = &self.nodes[n];
        let (host, pid) = (node.host, node.pid());
        if parent_id == 0 {
            return;
        }
        let found = self.by_span.get(parent_hash, |m| {
            let m = &self.nodes[m];
            m.span_id == parent_id && m.host == host
        });
        let Some(p) = found else {
            // `n` heads the chain of spans waiting for `parent_id`.
            self.cold[n].next_waiting = self.awaited.insert((host, parent_id), n);
            self.nodes[n].set_flag(WAITING, true);
            return;
        };
        let parent = &self.nodes[p];
        if parent.kind() != Kind::Server || parent.pid() != pid || !self.link(n, p) {
            self.stats.rejected_local += 1;
        }
    }

    /// Links the CLIENT spans that were waiting for span `n` (the chain from
    /// `head`), if it is a SERVER span of their process.
    fn adopt_waiting(&mut self, n: NodeId, head: Option<NodeId>) {
        let (pid, is_server) = {
            let node = &self.nodes[n];
            (node.pid(), node.kind() == Kind::Server)
        };
        let mut next = head;
        while let Some(w) = next {
            next = self.cold[w].next_waiting.take();
            let child = &mut self.nodes[w];
            child.set_flag(WAITING, false);
            if child.is_finished() {
                self.stats.late_parent_missed += 1;
            } else if !is_server || child.pid() != pid || !self.link(w, n) {
                self.stats.rejected_local += 1;
            }
        }
    }

    fn unchain_waiting(&mut self, key: (u32, u64), n: NodeId) {
        let Some(head) = self.awaited.get_mut(&key) else {
            return;
        };
        let next = self.cold[n].next_waiting;
        if *head == n {
            match next {
                Some(next) => *head = next,
                None => {
                    self.awaited.remove(&key);
                }
            }
            return;
        }
        let mut at = Some(*head);
        while let Some(here) = at {
            let after = self.cold[here].next_waiting;
            if after == Some(n) {
                self.cold[here].next_waiting = next;
                return;
            }
            at = after;
        }
    }
}
