//! What every protocol's parser reads and writes: transfers in, complete
//! messages out (with what each protocol's message says), with the problems
//! it met counted. Parsers depend on this module, never the other way. The parsers ([`crate::http1`],
//! [`crate::resp`]) differ only in where a message ends and what it says.

use espan::wire::AppTrace;

/// One read or write.
#[derive(Debug, Clone, Copy)]
pub struct Transfer<'a> {
    pub seq: u32,
    pub len: u32,
    /// The captured prefix of the payload (`data.len() ≤ len`).
    pub data: &'a [u8],
    pub ts_ns: u64,
    pub tid: u32,
}

/// What a message says, per protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum L7 {
    Http(HttpHead),
    Http2(H2Head),
    Redis(RedisFrame),
    Postgres(PgFrame),
    Mysql(MysqlFrame),
}

impl L7 {
    /// A request (or command), as opposed to its answer.
    pub fn is_request(&self) -> bool {
        match self {
            L7::Http(head) => head.is_request(),
            L7::Http2(h2) => h2.head.is_request(),
            L7::Redis(frame) => frame.is_command(),
            L7::Postgres(frame) => frame.is_query(),
            L7::Mysql(frame) => frame.is_command(),
        }
    }
}

/// The parts of an HTTP/1.x head espan keeps ([`crate::http1`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpHead {
    /// Empty for a response.
    pub method: String,
    /// Without the query.
    pub path: String,
    pub version: String,
    /// 0 for a request.
    pub status: u32,
    pub host: String,
    pub app_trace: Option<AppTrace>,
}

impl HttpHead {
    pub fn is_request(&self) -> bool {
        !self.method.is_empty()
    }
}

/// What an HTTP/2 header block says ([`crate::h2`]): the head as for
/// HTTP/1.x (`:authority` as the host), and gRPC's outcome from the trailers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct H2Head {
    pub head: HttpHead,
    /// `content-type: application/grpc…`.
    pub grpc: bool,
    /// `grpc-status`, when the trailers (or a trailers-only response) carried it.
    pub grpc_status: Option<u32>,
    pub grpc_message: String,
    /// The stream was reset (RST_STREAM) before it ended.
    pub reset: bool,
    /// Some header fields could not be read (cut by the capture, or naming a
    /// compression table entry not seen).
    pub unknown: bool,
    /// An answer's: the bytes of its stream's request frames (a request's
    /// body comes after the request message was made).
    pub request_bytes: u64,
}

/// What a Redis message says ([`crate::resp`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisFrame {
    /// A command, by its name in upper case (empty when beyond the capture).
    Command { name: String },
    /// A reply; `error` is an error reply's code (`ERR`, `WRONGTYPE`), else empty.
    Reply { error: String },
}

impl RedisFrame {
    pub fn is_command(&self) -> bool {
        matches!(self, RedisFrame::Command { .. })
    }
}

/// What a PostgreSQL exchange says ([`crate::pg`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgFrame {
    /// A query, with its statement's first bytes as captured (literals in).
    Query { text: String },
    /// Its result; `sqlstate` is an `ErrorResponse`'s code, else empty.
    Result { sqlstate: String },
}

impl PgFrame {
    pub fn is_query(&self) -> bool {
        matches!(self, PgFrame::Query { .. })
    }
}

/// What a MySQL exchange says ([`crate::mysql`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MysqlFrame {
    /// A command: its statement's first bytes (literals in), or its name when
    /// it has none (`PING`).
    Command { text: String },
    /// Its answer; `error` is an ERR packet's error number, else empty.
    Result { error: String },
}

impl MysqlFrame {
    pub fn is_command(&self) -> bool {
        matches!(self, MysqlFrame::Command { .. })
    }
}

/// A complete message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub l7: L7,
    /// Sequence number of its first byte.
    pub seq: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Thread of the first and of the last transfer.
    pub first_tid: u32,
    pub last_tid: u32,
    /// All its bytes (HTTP: head plus body).
    pub bytes: u64,
    /// The HTTP/2 stream it is on: its answer is the one on the same stream.
    /// 0 where answers come in order.
    pub stream: u32,
}

impl Message {
    /// A message whose first byte is at `seq` in transfer `t`; `l7` is filled in
    /// once the parser has read enough.
    pub fn starting(l7: L7, seq: u32, t: &Transfer<'_>) -> Self {
        Self {
            l7,
            seq,
            start_ns: t.ts_ns,
            end_ns: t.ts_ns,
            first_tid: t.tid,
            last_tid: t.tid,
            bytes: 0,
            stream: 0,
        }
    }

    /// Its last bytes so far came in transfer `t`.
    pub fn touch(&mut self, t: &Transfer<'_>) {
        self.end_ns = t.ts_ns;
        self.last_tid = t.tid;
    }
}

/// What a parser counts (the caller turns these into metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Problems {
    /// Bytes that are not the protocol (binary traffic, garbage): skipped.
    pub malformed: u64,
    /// A head (or chunk size, or RESP header) lay beyond the captured bytes.
    pub truncated: u64,
    /// A transfer did not start where the previous one ended (lost events).
    pub gaps: u64,
    /// A message's framing lay beyond the capture: it ended where the stream
    /// showed it (see [`crate::http1`], [`crate::resp`]).
    pub unframed: u64,
    /// Header fields that could not be read (an HTTP/2 header block cut by the
    /// capture, or naming a compression table entry from before the probe or
    /// a loss): the message is kept with what was read.
    pub unknown_headers: u64,
}

impl Problems {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: Problems) {
        self.malformed += other.malformed;
        self.truncated += other.truncated;
        self.gaps += other.gaps;
        self.unframed += other.unframed;
        self.unknown_headers += other.unknown_headers;
    }
}

/// Which way a message went on a connection whose client speaks first and
/// whose server answers each request in order (Redis, PostgreSQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client's writes: commands, queries.
    Requests,
    /// The server's: replies, results.
    Answers,
}

/// Both directions of one such connection, for a protocol whose pairing of
/// requests and answers is lost as a whole when its framing is.
pub trait Exchanges: std::fmt::Debug + Send {
    /// Feeds one transfer of `side`; complete messages go to `out`.
    fn feed(&mut self, side: Side, t: Transfer<'_>, out: &mut Vec<(Side, Message)>);
    /// Bytes were missed on `side`: the connection (or, where answers are
    /// paired by stream, that direction) cannot be followed for now.
    fn gap(&mut self, side: Side);
    /// The connection has been quiet: an answer left open is over, and a
    /// connection whose framing was lost is followed again.
    fn resync_if_quiet(&mut self, out: &mut Vec<(Side, Message)>);
    /// The connection ended: an answer left open ends with it.
    fn end(&mut self, out: &mut Vec<(Side, Message)>);
    /// Problems counted, and times the pairing was lost, since the last call.
    fn take_problems(&mut self) -> (Problems, u64);
    /// Bytes held for messages not yet complete and for the connection's
    /// state (prepared statements), as the probe's memory budget counts them.
    fn held_bytes(&self) -> usize;
}

/// Where one direction's byte stream has got to, by TCP sequence number.
#[derive(Debug, Default, Clone, Copy)]
pub struct Cursor {
    next_seq: Option<u32>,
}

impl Cursor {
    /// A transfer of `len` bytes starting at `seq`: true when it does not start
    /// where the previous one ended (bytes were missed).
    pub fn advance(&mut self, seq: u32, len: u32) -> bool {
        let gap = self.next_seq.is_some_and(|next| next != seq);
        self.next_seq = Some(seq.wrapping_add(len));
        gap
    }

    /// The kernel says this direction's counter stood at `pos` (a record of the
    /// other direction carries it). Before any transfer was seen, the next one
    /// must start there. Past where this stream got to means bytes were missed:
    /// true then. One past is a FIN, which takes a sequence number; behind is a
    /// transfer on another thread whose record is still to come.
    pub fn sync_to(&mut self, pos: u32) -> bool {
        match self.next_seq {
            None => self.next_seq = Some(pos),
            Some(next) if (pos.wrapping_sub(next) as i32) > 1 => {
                self.next_seq = Some(pos);
                return true;
            }
            Some(_) => {}
        }
        false
    }

    /// Sequence number the next transfer must start at, once one was seen.
    pub fn next_seq(&self) -> Option<u32> {
        self.next_seq
    }
}
