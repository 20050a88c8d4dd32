//! PostgreSQL (frontend/backend protocol 3.0) on one connection: one exchange
//! per query, from the client's `Query` (simple protocol) or its extended-protocol
//! messages up to `Sync` (Parse, Bind, Describe, Execute…), to the server's
//! `ReadyForQuery`. The server answers each in order, so pipelined queries pair
//! as HTTP requests do; each exchange keeps the sequence number of its first
//! byte on both sides, and the linker pairs client and server by them.
//!
//! A connection is PostgreSQL from its startup (`SSLRequest`, answered `N` here,
//! or `StartupMessage`): the startup and authentication exchange makes no span;
//! the server's first `ReadyForQuery` ends it. A connection first seen mid-way
//! is taken up at a `Query` that fills its transfer exactly, or a `Parse`
//! followed by a `Bind`. An `S` answer to `SSLRequest` means TLS: not followed.
//!
//! Messages are skipped by their length, so rows and long statements beyond the
//! capture cost nothing; a statement's first bytes are kept (the assembler takes
//! its literals out, [`crate::sql`]) and an `ErrorResponse`'s SQLSTATE. A named
//! prepared statement's text is remembered from its `Parse` (up to
//! [`Statements::MAX`] per connection), so a later `Bind` of it names its query. Losing
//! the framing (a header beyond the capture, garbage, missed bytes) is handled
//! as for Redis ([`crate::resp`]): a result whose framing lies beyond the
//! capture while it answers the only query waiting (many rows) stays open until
//! the client's next message; otherwise the connection is not paired again
//! until it has been quiet for a while.

use crate::lenframe::{self, Read, Reader, Statements};
use crate::message::{Exchanges, L7, Message, PgFrame, Problems, Side, Transfer};

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const PROTOCOL_3: u32 = 196_608;
/// Longest message length taken as real (PostgreSQL's own limit is 1 GiB).
const MAX_LEN: u32 = 1 << 30;
/// Statement bytes kept.
const KEEP_TEXT: usize = 1024;
/// ErrorResponse bytes kept (the SQLSTATE field comes early).
const KEEP_ERROR: usize = 256;
/// Bind bytes kept: the portal's and the statement's names.
const KEEP_BIND: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Startup and authentication: no span.
    Startup,
    /// Queries and results.
    Ready,
    /// The server accepted TLS: not followed.
    Tls,
    /// Framing lost: not followed until the connection is quiet.
    Lost,
}

/// One complete message.
struct Msg<'a> {
    /// 0 for an untyped startup message.
    kind: u8,
    seq: u32,
    ts_ns: u64,
    tid: u32,
    /// Type byte, length and body.
    bytes: u64,
    /// The body's first bytes, as far as kept and captured.
    body: &'a [u8],
}

impl<'a> Msg<'a> {
    fn of(frame: &'a lenframe::Frame<'a>) -> Self {
        Msg {
            kind: if frame.header.len() == UNTYPED {
                0
            } else {
                frame.header[0]
            },
            seq: frame.seq,
            ts_ns: frame.ts_ns,
            tid: frame.tid,
            bytes: frame.bytes,
            body: frame.body,
        }
    }

    /// An exchange's half whose first message this is.
    fn begins(&self, frame: PgFrame) -> Message {
        Message {
            l7: L7::Postgres(frame),
            seq: self.seq,
            start_ns: self.ts_ns,
            end_ns: self.ts_ns,
            first_tid: self.tid,
            last_tid: self.tid,
            bytes: 0,
            stream: 0,
        }
    }

    /// This message belongs to `half`.
    fn add_to(&self, half: &mut Message) {
        half.bytes += self.bytes;
        half.end_ns = self.ts_ns;
        half.last_tid = self.tid;
    }
}

/// The length of a message's body from its header: a type byte (unless it is
/// a startup message) and a big-endian length that counts itself.
fn body_len(header: &[u8]) -> Option<u32> {
    let (typed, len) = match header.len() {
        4 => (true, &header[..4]),
        // Type bytes are letters, or the digits of Parse/Bind/Close complete.
        _ => (header[0].is_ascii_alphanumeric(), &header[1..5]),
    };
    let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    (typed && (4..=MAX_LEN).contains(&n)).then(|| n - 4)
}

/// The header length of a startup message (no type byte) and of the others.
const UNTYPED: usize = 4;
const TYPED: usize = 5;

/// A PostgreSQL connection: both directions and the exchanges in flight.
#[derive(Debug)]
pub struct Session {
    client: Reader,
    server: Reader,
    phase: Phase,
    /// After an SSLRequest (or GSSENCRequest): the server's one-byte answer is next.
    answer_byte_next: bool,
    /// Queries sent and not yet answered.
    waiting: u64,
    request: Option<Message>,
    response: Option<Message>,
    sqlstate: String,
    /// The response is open beyond the capture (see the module doc).
    unframed: bool,
    /// Named prepared statements' texts, by name.
    statements: Statements<String>,
    pub problems: Problems,
    /// Times the pairing of queries and results was lost.
    pub desyncs: u64,
}

impl Session {
    /// A session from the transfer that showed the connection is PostgreSQL
    /// (see [`starts_session`]).
    pub fn new(mid_way: bool) -> Self {
        let client = Reader::new(if mid_way { TYPED } else { UNTYPED });
        Self {
            client,
            server: Reader::new(TYPED),
            phase: if mid_way {
                Phase::Ready
            } else {
                Phase::Startup
            },
            answer_byte_next: false,
            waiting: 0,
            request: None,
            response: None,
            sqlstate: String::new(),
            unframed: false,
            statements: Statements::default(),
            problems: Problems::default(),
            desyncs: 0,
        }
    }

    fn on_client(&mut self, reader: &mut Reader, m: Msg<'_>, out: &mut Vec<(Side, Message)>) {
        if self.phase == Phase::Startup {
            if m.kind == 0 {
                let code = m
                    .body
                    .get(..4)
                    .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                if code == SSL_REQUEST || code == GSSENC_REQUEST {
                    self.answer_byte_next = true;
                    // The startup message proper comes next, untyped too.
                    reader.header_len = UNTYPED;
                } else {
                    reader.header_len = TYPED;
                }
            }
            // Password and SASL messages: part of the startup.
            return;
        }
        match m.kind {
            // COPY data answers the server, and Terminate expects nothing.
            b'd' | b'c' | b'f' => return,
            b'X' => {
                self.request = None;
                return;
            }
            _ => {}
        }
        let request = self.request.get_or_insert_with(|| {
            m.begins(PgFrame::Query {
                text: String::new(),
            })
        });
        m.add_to(request);
        let text = match m.kind {
            b'Q' => Some(cstring(m.body)),
            // Parse: the statement's name, then its text.
            b'P' => {
                let (name, rest) = split_cstring(m.body);
                let text = cstring(rest);
                if !name.is_empty() {
                    self.statements.insert(name, text.clone());
                }
                Some(text)
            }
            // Bind: the portal's name, then the statement's.
            b'B' => {
                let (_, rest) = split_cstring(m.body);
                let (statement, _) = split_cstring(rest);
                self.statements.get(&statement).cloned()
            }
            // Close of a statement ('S') by name.
            b'C' => {
                if let Some((b'S', name)) = m.body.split_first() {
                    self.statements.remove(&cstring(name));
                }
                None
            }
            _ => None,
        };
        if let (Some(text), L7::Postgres(PgFrame::Query { text: kept })) = (text, &mut request.l7)
            && kept.is_empty()
        {
            *kept = text;
        }
        if matches!(m.kind, b'Q' | b'S')
            && let Some(request) = self.request.take()
        {
            self.waiting += 1;
            out.push((Side::Requests, request));
        }
    }

    fn on_server(&mut self, m: Msg<'_>, out: &mut Vec<(Side, Message)>) {
        if self.phase == Phase::Startup {
            if m.kind == b'Z' {
                self.phase = Phase::Ready;
            }
            return;
        }
        if self.response.is_none() && self.waiting == 0 && matches!(m.kind, b'N' | b'A' | b'S') {
            // A notice, a notification or a parameter change between queries.
            return;
        }
        let response = self.response.get_or_insert_with(|| {
            m.begins(PgFrame::Result {
                sqlstate: String::new(),
            })
        });
        m.add_to(response);
        if m.kind == b'E' && self.sqlstate.is_empty() {
            self.sqlstate = sqlstate(m.body);
        }
        if m.kind == b'Z' {
            self.finish_response(out);
        }
    }

    fn finish_response(&mut self, out: &mut Vec<(Side, Message)>) {
        if let Some(mut response) = self.response.take() {
            response.l7 = L7::Postgres(PgFrame::Result {
                sqlstate: std::mem::take(&mut self.sqlstate),
            });
            self.waiting = self.waiting.saturating_sub(1);
            out.push((Side::Answers, response));
        }
        if self.unframed {
            self.unframed = false;
            self.server = Reader::new(TYPED);
        }
    }

    /// The server's transfer goes on beyond the capture at a header.
    fn beyond_capture(&mut self, t: &Transfer<'_>, from: u32) {
        if self.phase == Phase::Ready && self.waiting == 1 {
            lenframe::open_beyond_capture(
                &mut self.response,
                t,
                from,
                || {
                    L7::Postgres(PgFrame::Result {
                        sqlstate: String::new(),
                    })
                },
                &mut self.problems,
            );
            self.unframed = true;
        } else {
            self.lose(true);
        }
    }

    /// Which result answers which query is unknown from here on.
    fn lose(&mut self, truncated: bool) {
        lenframe::count_loss(&mut self.problems, truncated);
        self.gap(Side::Requests);
    }
}

impl Exchanges for Session {
    /// Feeds one transfer of `side`; complete exchanges' halves go to `out`.
    fn feed(&mut self, side: Side, t: Transfer<'_>, out: &mut Vec<(Side, Message)>) {
        if matches!(self.phase, Phase::Tls | Phase::Lost) || t.len == 0 {
            return;
        }
        match side {
            Side::Requests => {
                if self.unframed && !t.data.is_empty() {
                    // The client's next message: the result it waited for is over.
                    self.finish_response(out);
                }
                let keep = |header: &[u8]| match header {
                    [_, _, _, _] => 8,
                    [b'Q' | b'P', ..] => KEEP_TEXT,
                    [b'B' | b'C', ..] => KEEP_BIND,
                    _ => 0,
                };
                let mut client = std::mem::replace(&mut self.client, Reader::new(TYPED));
                let read = client.feed(&t, body_len, keep, |reader, f| {
                    self.on_client(reader, Msg::of(&f), out)
                });
                self.client = client;
                match read {
                    Read::Whole => {}
                    Read::BeyondCapture(_) => self.lose(true),
                    Read::Malformed => self.lose(false),
                }
            }
            Side::Answers => {
                if self.unframed {
                    lenframe::extend_open(&mut self.response, &t);
                    return;
                }
                let mut t = t;
                if self.answer_byte_next {
                    self.answer_byte_next = false;
                    match t.data.first() {
                        Some(b'N') => {
                            t = Transfer {
                                seq: t.seq.wrapping_add(1),
                                len: t.len - 1,
                                data: &t.data[1..],
                                ..t
                            };
                        }
                        // TLS (or GSSAPI encryption) from here on.
                        Some(_) => {
                            self.phase = Phase::Tls;
                            return;
                        }
                        None => return self.lose(true),
                    }
                }
                let keep = |header: &[u8]| if header[0] == b'E' { KEEP_ERROR } else { 0 };
                let mut server = std::mem::replace(&mut self.server, Reader::new(TYPED));
                let read = server.feed(&t, body_len, keep, |_, f| self.on_server(Msg::of(&f), out));
                self.server = server;
                match read {
                    Read::Whole => {}
                    Read::BeyondCapture(from) => self.beyond_capture(&t, from),
                    Read::Malformed => self.lose(false),
                }
            }
        }
    }

    /// Bytes were missed: the connection cannot be followed for now.
    fn gap(&mut self, _side: Side) {
        if matches!(self.phase, Phase::Tls | Phase::Lost) {
            return;
        }
        self.phase = Phase::Lost;
        self.desyncs += 1;
        self.request = None;
        self.response = None;
        self.unframed = false;
    }

    /// The connection has been quiet: a result left open is over, and a
    /// connection whose framing was lost is taken up again (every query has
    /// had its answer by now).
    fn resync_if_quiet(&mut self, out: &mut Vec<(Side, Message)>) {
        if self.unframed {
            self.finish_response(out);
        }
        if self.phase == Phase::Lost {
            self.client = Reader::new(TYPED);
            self.server = Reader::new(TYPED);
            self.waiting = 0;
            self.sqlstate.clear();
            self.phase = Phase::Ready;
        }
    }

    /// The connection ended: a result left open ends with it.
    fn end(&mut self, out: &mut Vec<(Side, Message)>) {
        if self.unframed {
            self.finish_response(out);
        }
    }

    fn held_bytes(&self) -> usize {
        self.client.held_bytes() + self.server.held_bytes() + self.statements.held_bytes()
    }

    fn take_problems(&mut self) -> (Problems, u64) {
        (
            std::mem::take(&mut self.problems),
            std::mem::take(&mut self.desyncs),
        )
    }
}

/// A NUL-terminated string and what follows it.
fn split_cstring(body: &[u8]) -> (String, &[u8]) {
    match body.iter().position(|&b| b == 0) {
        Some(end) => (
            String::from_utf8_lossy(&body[..end]).into_owned(),
            &body[end + 1..],
        ),
        None => (String::from_utf8_lossy(body).into_owned(), &[]),
    }
}

/// The text of a NUL-terminated string (as far as captured).
fn cstring(body: &[u8]) -> String {
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// The `C` (SQLSTATE) field of an ErrorResponse body: fields of a type byte and
/// a NUL-terminated string, ended by a 0 byte.
fn sqlstate(body: &[u8]) -> String {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        if field == b'C' {
            let code = &tail[..end];
            if code.len() == 5 && code.iter().all(u8::is_ascii_alphanumeric) {
                return String::from_utf8_lossy(code).into_owned();
            }
            break;
        }
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    // Not captured (or malformed): still an error.
    "XX000".into()
}

/// Whether a client's transfer shows a PostgreSQL connection: its startup
/// (`Some(false)`), or, first seen mid-way, a `Query` that fills the transfer
/// exactly or a `Parse` followed by a `Bind` (`Some(true)`).
pub fn starts_session(t: &Transfer<'_>) -> Option<bool> {
    let d = t.data;
    let be = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(d.get(at..at + 4)?.try_into().ok()?))
    };
    if let (Some(len), Some(code)) = (be(0), be(4)) {
        let startup = (code == SSL_REQUEST || code == GSSENC_REQUEST) && len == 8
            || code == PROTOCOL_3 && (8..=10_000).contains(&len) && len <= t.len;
        if startup {
            return Some(false);
        }
    }
    let len = be(1)?;
    match d.first()? {
        b'Q' => (len >= 5 && len.checked_add(1) == Some(t.len)).then_some(true),
        b'P' => {
            let next = usize::try_from(len).ok()?.checked_add(1)?;
            (len >= 6 && d.get(next) == Some(&b'B')).then_some(true)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
