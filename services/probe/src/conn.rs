//! One TCP connection as a traced process sees it: its two byte streams, each
//! reassembled into HTTP/1.x messages by sequence number.

use std::net::SocketAddr;

use crate::http1::{HeadQueue, Message, Stream, Transfer};

/// Which way bytes went, from the traced process's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The process wrote them.
    Egress,
    /// The process read them.
    Ingress,
}

impl Direction {
    pub fn opposite(self) -> Self {
        match self {
            Direction::Egress => Direction::Ingress,
            Direction::Ingress => Direction::Egress,
        }
    }
}

/// Both directions of one connection.
#[derive(Debug)]
pub struct Conn {
    pub pid: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    egress: Stream,
    ingress: Stream,
    heads: HeadQueue,
    pub last_ns: u64,
}

impl Conn {
    pub fn new(pid: u32, local: SocketAddr, remote: SocketAddr) -> Self {
        Self {
            pid,
            local,
            remote,
            egress: Stream::new(),
            ingress: Stream::new(),
            heads: HeadQueue::new(),
            last_ns: 0,
        }
    }

    /// Feeds a transfer; returns the messages it completed.
    pub fn feed(&mut self, dir: Direction, t: Transfer<'_>, out: &mut Vec<(Direction, Message)>) {
        self.last_ns = t.ts_ns;
        let mut done = Vec::new();
        // A message left open without framing on the other side ended before
        // this one starts.
        let other = match dir {
            Direction::Egress => &mut self.ingress,
            Direction::Ingress => &mut self.egress,
        };
        if other.unframed() && crate::http1::looks_like_start(t.data) {
            other.conclude(&mut done);
            out.extend(done.drain(..).map(|m| (dir.opposite(), m)));
        }
        match dir {
            Direction::Egress => self.egress.feed(t, &mut self.heads, &mut done),
            Direction::Ingress => self.ingress.feed(t, &mut self.heads, &mut done),
        }
        out.extend(done.into_iter().map(|m| (dir, m)));
    }

    /// The connection closed: completes responses that end with it.
    pub fn close(&mut self, out: &mut Vec<(Direction, Message)>) {
        let mut done = Vec::new();
        self.egress.close(&mut done);
        out.extend(done.drain(..).map(|m| (Direction::Egress, m)));
        self.ingress.close(&mut done);
        out.extend(done.drain(..).map(|m| (Direction::Ingress, m)));
    }

    /// The socket reached CLOSE: completes messages that end with the connection
    /// and keeps the rest (bytes queued before a reset may still be read).
    pub fn end(&mut self, out: &mut Vec<(Direction, Message)>) {
        let mut done = Vec::new();
        self.egress.end(&mut done);
        out.extend(done.drain(..).map(|m| (Direction::Egress, m)));
        self.ingress.end(&mut done);
        out.extend(done.drain(..).map(|m| (Direction::Ingress, m)));
    }

    /// See [`crate::http1::Stream::sync_to`]: true when `dir` missed bytes.
    pub fn sync(&mut self, dir: Direction, pos: u32) -> bool {
        match dir {
            Direction::Egress => self.egress.sync_to(pos),
            Direction::Ingress => self.ingress.sync_to(pos),
        }
    }

    /// Whether a transfer starting at `seq` continues this connection's stream in
    /// `dir` (true when that stream has seen nothing yet).
    pub fn continues(&self, dir: Direction, seq: u32) -> bool {
        let stream = match dir {
            Direction::Egress => &self.egress,
            Direction::Ingress => &self.ingress,
        };
        stream.next_seq().is_none_or(|next| next == seq)
    }

    /// Ends messages left open without framing (see [`crate::http1`]) when the
    /// connection has been quiet since before `quiet_since_ns`: true if any ended.
    pub fn conclude_quiet(&mut self, quiet_since_ns: u64, out: &mut Vec<(Direction, Message)>) {
        if self.last_ns >= quiet_since_ns {
            return;
        }
        let mut done = Vec::new();
        self.egress.conclude(&mut done);
        out.extend(done.drain(..).map(|m| (Direction::Egress, m)));
        self.ingress.conclude(&mut done);
        out.extend(done.drain(..).map(|m| (Direction::Ingress, m)));
    }

    /// Forgets which waiting requests were HEADs (their answers were lost).
    pub fn forget_heads(&mut self) {
        self.heads.clear();
    }

    /// Problems counted by both streams since the last call, then reset.
    pub fn take_problems(&mut self) -> crate::http1::Problems {
        let mut p = self.egress.problems;
        let q = self.ingress.problems;
        p.malformed += q.malformed;
        p.truncated += q.truncated;
        p.gaps += q.gaps;
        p.unframed += q.unframed;
        self.egress.problems = Default::default();
        self.ingress.problems = Default::default();
        p
    }
}
