//! One TCP connection as a traced process sees it: its two byte streams,
//! followed by sequence number, and the messages of the protocol they speak.
//!
//! The protocol is taken from the first transfer that starts like a message of
//! one ([`crate::http1::looks_like_start`], [`crate::resp::looks_like_command`],
//! [`crate::pg::starts_session`], [`crate::mysql::starts_session`]);
//! until then the connection's bytes are only counted along.

use std::net::SocketAddr;

use crate::http1::{self, HeadQueue};
use crate::message::{Cursor, Exchanges, Message, Problems, Side, Transfer};
use crate::{h2, mysql, pg, resp};

/// Which way bytes went, from the traced process's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// The protocol a connection speaks, and its parsers.
// HTTP/1.x, the common case, stays inline; the others are boxed behind a trait.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Parser {
    /// No transfer has started like a message yet.
    Unknown,
    Http1 {
        egress: http1::Stream,
        ingress: http1::Stream,
        heads: HeadQueue,
    },
    /// Redis, PostgreSQL, MySQL (answers in order) and HTTP/2 (answers by stream).
    Exchanges {
        /// The direction requests go (the client's writes).
        requests: Direction,
        session: Box<dyn Exchanges>,
    },
}

/// Both directions of one connection.
#[derive(Debug)]
pub struct Conn {
    pub pid: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    egress: Cursor,
    ingress: Cursor,
    parser: Parser,
    gaps: u64,
    /// Found to speak HTTP/2, not yet told (see [`Conn::take_h2_found`]).
    h2_found: bool,
    pub last_ns: u64,
}

impl Conn {
    pub fn new(pid: u32, local: SocketAddr, remote: SocketAddr) -> Self {
        Self {
            pid,
            local,
            remote,
            egress: Cursor::default(),
            ingress: Cursor::default(),
            parser: Parser::Unknown,
            gaps: 0,
            h2_found: false,
            last_ns: 0,
        }
    }

    fn cursor(&mut self, dir: Direction) -> &mut Cursor {
        match dir {
            Direction::Egress => &mut self.egress,
            Direction::Ingress => &mut self.ingress,
        }
    }

    /// Feeds a transfer; returns the messages it completed.
    pub fn feed(&mut self, dir: Direction, t: Transfer<'_>, out: &mut Vec<(Direction, Message)>) {
        self.last_ns = t.ts_ns;
        if self.cursor(dir).advance(t.seq, t.len) {
            self.missed(dir);
        }
        if matches!(self.parser, Parser::Unknown) {
            // HTTP/2's preface would pass for an HTTP/1.x request line.
            let h2 = h2::starts_session(&t);
            self.h2_found = h2.is_some();
            self.parser = if let Some(start) = h2.filter(|s| !s.mid_way) {
                Parser::Exchanges {
                    requests: dir,
                    session: Box::new(h2::Session::new(start)),
                }
            } else if http1::looks_like_start(t.data) {
                Parser::Http1 {
                    egress: http1::Stream::new(),
                    ingress: http1::Stream::new(),
                    heads: HeadQueue::new(),
                }
            } else if resp::looks_like_command(t.data) {
                Parser::Exchanges {
                    requests: dir,
                    session: Box::new(resp::Session::new()),
                }
            } else if let Some(mid_way) = pg::starts_session(&t) {
                Parser::Exchanges {
                    requests: dir,
                    session: Box::new(pg::Session::new(mid_way)),
                }
            } else if let Some(mid_way) = mysql::starts_session(&t) {
                Parser::Exchanges {
                    // The server speaks first: a greeting goes the answers' way.
                    requests: if mid_way { dir } else { dir.opposite() },
                    session: Box::new(mysql::Session::new(mid_way)),
                }
            } else if let Some(start) = h2 {
                Parser::Exchanges {
                    requests: if start.requests_this_way {
                        dir
                    } else {
                        dir.opposite()
                    },
                    session: Box::new(h2::Session::new(start)),
                }
            } else {
                return;
            };
        }
        match &mut self.parser {
            Parser::Unknown => {}
            Parser::Http1 {
                egress,
                ingress,
                heads,
            } => {
                let (this, other) = match dir {
                    Direction::Egress => (egress, ingress),
                    Direction::Ingress => (ingress, egress),
                };
                let mut done = Vec::new();
                // A message left open without framing on the other side ended
                // before this one starts.
                if other.unframed() && http1::looks_like_start(t.data) {
                    other.conclude(&mut done);
                    out.extend(done.drain(..).map(|m| (dir.opposite(), m)));
                }
                this.feed(t, heads, &mut done);
                out.extend(done.into_iter().map(|m| (dir, m)));
            }
            Parser::Exchanges { requests, session } => {
                let side = if dir == *requests {
                    Side::Requests
                } else {
                    Side::Answers
                };
                let mut done = Vec::new();
                session.feed(side, t, &mut done);
                out.extend(done.into_iter().map(|(s, m)| (direction(*requests, s), m)));
            }
        }
    }

    /// Bytes were missed in `dir`: what is half read there is lost (for Redis
    /// and PostgreSQL, the pairing of both directions; see [`crate::resp`]).
    fn missed(&mut self, dir: Direction) {
        self.gaps += 1;
        match &mut self.parser {
            Parser::Unknown => {}
            Parser::Http1 {
                egress, ingress, ..
            } => match dir {
                Direction::Egress => egress.gap(),
                Direction::Ingress => ingress.gap(),
            },
            Parser::Exchanges { requests, session } => session.gap(if dir == *requests {
                Side::Requests
            } else {
                Side::Answers
            }),
        }
    }

    /// The connection closed: completes responses that end with it.
    pub fn close(&mut self, out: &mut Vec<(Direction, Message)>) {
        self.each_ended(out, |s, done| s.close(done), |e, done| e.end(done));
    }

    /// The socket reached CLOSE: completes messages that end with the connection
    /// and keeps the rest (bytes queued before a reset may still be read).
    pub fn end(&mut self, out: &mut Vec<(Direction, Message)>) {
        self.each_ended(out, |s, done| s.end(done), |e, done| e.end(done));
    }

    /// Applies an end (`http` to both HTTP streams, `exchanges` to the others).
    fn each_ended(
        &mut self,
        out: &mut Vec<(Direction, Message)>,
        http: impl Fn(&mut http1::Stream, &mut Vec<Message>),
        exchanges: impl Fn(&mut dyn Exchanges, &mut Vec<(Side, Message)>),
    ) {
        match &mut self.parser {
            Parser::Unknown => {}
            Parser::Http1 {
                egress, ingress, ..
            } => {
                let mut done = Vec::new();
                http(egress, &mut done);
                out.extend(done.drain(..).map(|m| (Direction::Egress, m)));
                http(ingress, &mut done);
                out.extend(done.drain(..).map(|m| (Direction::Ingress, m)));
            }
            Parser::Exchanges { requests, session } => {
                let mut done = Vec::new();
                exchanges(session.as_mut(), &mut done);
                out.extend(done.into_iter().map(|(s, m)| (direction(*requests, s), m)));
            }
        }
    }

    /// The kernel says `dir`'s counter stood at `pos`: true when `dir` missed
    /// bytes (see [`Cursor::sync_to`]).
    pub fn sync(&mut self, dir: Direction, pos: u32) -> bool {
        let missed = self.cursor(dir).sync_to(pos);
        if missed {
            self.missed(dir);
        }
        missed
    }

    /// Where `dir`'s stream expects its next transfer to start.
    pub fn next_seq(&self, dir: Direction) -> Option<u32> {
        match dir {
            Direction::Egress => self.egress.next_seq(),
            Direction::Ingress => self.ingress.next_seq(),
        }
    }

    /// Whether a transfer starting at `seq` continues this connection's stream in
    /// `dir` (true when that stream has seen nothing yet).
    pub fn continues(&self, dir: Direction, seq: u32) -> bool {
        self.next_seq(dir).is_none_or(|next| next == seq)
    }

    /// Ends messages left open without framing when the connection has been
    /// quiet since before `quiet_since_ns`; a Redis or PostgreSQL connection
    /// whose pairing was lost is followed again (see [`crate::resp`]).
    pub fn conclude_quiet(&mut self, quiet_since_ns: u64, out: &mut Vec<(Direction, Message)>) {
        if self.last_ns >= quiet_since_ns {
            return;
        }
        self.each_ended(
            out,
            |s, done| s.conclude(done),
            |e, done| e.resync_if_quiet(done),
        );
    }

    /// Whether this connection was found to speak HTTP/2 since the last call.
    pub fn take_h2_found(&mut self) -> bool {
        std::mem::take(&mut self.h2_found)
    }

    /// Bytes its parsers hold (see [`Exchanges::held_bytes`]).
    pub fn held_bytes(&self) -> usize {
        match &self.parser {
            Parser::Unknown => 0,
            Parser::Http1 {
                egress, ingress, ..
            } => egress.held_bytes() + ingress.held_bytes(),
            Parser::Exchanges { session, .. } => session.held_bytes(),
        }
    }

    /// Forgets which waiting requests were HEADs (their answers were lost).
    pub fn forget_heads(&mut self) {
        if let Parser::Http1 { heads, .. } = &mut self.parser {
            heads.clear();
        }
    }

    /// Problems counted since the last call, then reset; `desyncs` counts the
    /// times a connection's pairing of requests and answers was lost in either
    /// direction (its waiting requests are abandoned).
    pub fn take_problems(&mut self) -> (Problems, u64) {
        let mut p = Problems {
            gaps: std::mem::take(&mut self.gaps),
            ..Problems::default()
        };
        let mut desyncs = 0;
        match &mut self.parser {
            Parser::Unknown => {}
            Parser::Http1 {
                egress, ingress, ..
            } => {
                p.add(std::mem::take(&mut egress.problems));
                p.add(std::mem::take(&mut ingress.problems));
            }
            Parser::Exchanges { session, .. } => {
                let (q, n) = session.take_problems();
                p.add(q);
                desyncs = n;
            }
        }
        (p, desyncs)
    }
}

/// The direction of a side, given the direction of its requests.
fn direction(requests: Direction, side: Side) -> Direction {
    match side {
        Side::Requests => requests,
        Side::Answers => requests.opposite(),
    }
}
