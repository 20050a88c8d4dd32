//! Cross-process edges: a CLIENT and a SERVER span with the same
//! `(req_seq, resp_seq)` are one call, if their times (and on one host, their
//! tuples) agree.
//!
//! The rule is the same whatever order spans arrive in: a candidate pair becomes
//! an edge only if each side has exactly one compatible partner. So a second
//! candidate for either side withdraws an edge already made (splitting the open
//! tree), and all of them stay unlinked and are counted as ambiguous. An edge
//! already sent out in a finished trace cannot be withdrawn; the newcomer then
//! stays unlinked.
//!
//! `(0, 0)` means the probe saw no sequence numbers: such spans are never matched.
//! A pair with `resp_seq == 0` on both sides (no response seen) matches like any
//! other: the 32-bit `req_seq`, the time containment and, on one host, the tuple
//! must all agree, and the partner must be unique. A client that saw no response
//! and a server that sent one carry different pairs and do not match.

use super::hash::call_key;
use super::node_id::NodeId;
use super::{BLOCKED, Engine, IN_CALLS, Kind, SameHostTuple};

impl<P> Engine<P> {
    /// Whether client `c` and server `s` can be the two sides of one call.
    fn compatible(&self, c: NodeId, s: NodeId) -> bool {
        let (c, s) = (&self.nodes[c], &self.nodes[s]);
        let same_host = c.host == s.host;
        let tolerance = if same_host {
            self.slack_ns
        } else {
            self.skew_ns
        };
        // The server handles the request while the client waits for the answer.
        let within = s.start_ns.saturating_add(tolerance) >= c.start_ns
            && s.end_ns <= c.end_ns.saturating_add(tolerance);
        if !within {
            return false;
        }
        if !same_host {
            return true; // NAT may rewrite both ends between hosts
        }
        match self.config.same_host_tuple {
            SameHostTuple::Source => c.local_fp == s.remote_fp,
            SameHostTuple::Mirrored => c.local_fp == s.remote_fp && c.remote_fp == s.local_fp,
            SameHostTuple::Ignore => true,
        }
    }

    /// Puts span `n` in its call chain and returns its partner when the match is
    /// unambiguous. Withdraws edges that a second candidate makes ambiguous.
    /// `hash` is the call key's ([`call_key`]).
    pub(super) fn match_call(&mut self, n: NodeId, hash: u64) -> Option<NodeId> {
        let node = &self.nodes[n];
        let key = (node.req_seq, node.resp_seq);
        let kind = node.kind();
        if key == (0, 0) {
            self.stats.no_seq += 1;
            return None;
        }
        // One probe: the current head comes out, `n` goes in as the new head.
        let nodes = &self.nodes;
        let head = self.by_call.put(
            hash,
            |m| {
                let m = &nodes[m];
                (m.req_seq, m.resp_seq) == key
            },
            n,
        );
        let (mut first, mut count, mut taken) = (None, 0u32, false);
        let mut at = head;
        while let Some(m_id) = at {
            let m = &self.nodes[m_id];
            let next = m.next_same_key;
            if self.is_candidate(kind, n, m_id) {
                count += 1;
                first = first.or(Some(m_id));
                taken |= m.blocked() || m.peer.is_some();
            }
            at = next;
        }
        let node = &mut self.nodes[n];
        node.next_same_key = head;
        node.set_flag(IN_CALLS, true);

        if count == 0 {
            return None;
        }
        if count == 1
            && !taken
            && let Some(first) = first
        {
            self.nodes[n].peer = Some(first);
            self.nodes[first].peer = Some(n);
            return Some(first);
        }
        // Ambiguous: nobody on this key that matches `n` keeps or takes an edge.
        self.nodes[n].set_flag(BLOCKED, true);
        let mut at = head;
        while let Some(m) = at {
            at = self.nodes[m].next_same_key;
            if self.is_candidate(kind, n, m) {
                self.stats.ambiguous += 1;
                self.withdraw(m);
                self.nodes[m].set_flag(BLOCKED, true);
            }
        }
        None
    }

    fn is_candidate(&self, kind: Kind, n: NodeId, m: NodeId) -> bool {
        match (kind, self.nodes[m].kind()) {
            (Kind::Client, Kind::Server) => self.compatible(n, m),
            (Kind::Server, Kind::Client) => self.compatible(m, n),
            _ => false,
        }
    }

    /// Undoes the match of `m` with its partner, unless both are finished (then
    /// the edge is already out).
    fn withdraw(&mut self, m: NodeId) {
        let Some(q) = self.nodes[m].peer else {
            return;
        };
        let finished = |n: NodeId| self.nodes[n].is_finished();
        if finished(m) && finished(q) {
            return;
        }
        self.stats.ambiguous += 1;
        self.nodes[m].peer = None;
        self.nodes[q].peer = None;
        self.nodes[q].set_flag(BLOCKED, true);
        let server = if self.nodes[m].kind() == Kind::Server {
            m
        } else {
            q
        };
        self.cut_above(server);
    }

    /// Makes the matched client the server's parent.
    pub(super) fn link_call(&mut self, server: NodeId, client: NodeId) {
        if self.link(server, client) {
            return;
        }
        if self.nodes[server].is_finished() {
            // The server went out as a root before its client came.
            self.stats.late_parent_missed += 1;
        } else {
            // A cycle: the server is already above its own client.
            self.stats.ambiguous += 1;
        }
    }

    pub(super) fn unchain_call(&mut self, key: (u32, u32), n: NodeId) {
        let hash = call_key(key.0, key.1);
        let Some(head) = self.by_call.get(hash, |m| {
            let m = &self.nodes[m];
            (m.req_seq, m.resp_seq) == key
        }) else {
            return;
        };
        let next = self.nodes[n].next_same_key;
        if head == n {
            self.by_call.replace(hash, n, next);
            return;
        }
        let mut at = Some(head);
        while let Some(here) = at {
            let after = self.nodes[here].next_same_key;
            if after == Some(n) {
                self.nodes[here].next_same_key = next;
                return;
            }
            at = after;
        }
    }
}
