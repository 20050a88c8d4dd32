//! HTTP/2 (and gRPC, which is HTTP/2 with trailers) on one connection.
//!
//! Each direction is a sequence of frames (a 9-byte header: length, type,
//! flags, stream id; then the payload). Streams are multiplexed, so a request
//! and its response are paired by stream id, not by order. Every stream makes
//! one exchange: its request is the client's first header block on the
//! stream, its response the server's first final (non-1xx) header block, which
//! ends with the stream (END_STREAM on a DATA or trailing HEADERS frame, or a
//! RST_STREAM either way). Each message keeps the sequence number of the first
//! byte of its first HEADERS frame: the same bytes have the same number on both
//! ends, so the linker pairs client and server per stream as for HTTP/1.x.
//!
//! Header blocks are HPACK-compressed against a table each direction builds as
//! it goes ([`loona_hpack`]); one decoder per direction follows it. Only the
//! pseudo-headers, `content-type`, the gRPC status and message and the trace
//! context are kept. DATA payloads are skipped by their length, so bodies
//! beyond the capture are no problem.
//!
//! What is lost, and why it is still sound:
//! - A header block cut by the capture (or that names a table entry this
//!   decoder never saw) gives the headers read before the cut; the entries the
//!   rest of the block added to the peer's table are unknown, so the decoder
//!   starts afresh after it. HPACK numbers dynamic entries newest first, so a
//!   fresh decoder's entries are exactly the newest of the peer's: a later
//!   reference either names an entry it has (the same one) or one it lacks (an
//!   error, counted as `unknown_headers`), never a wrong one. A connection seen
//!   mid-way ([`starts_session`]) starts the same way.
//! - A frame header beyond the capture (or missed bytes) loses the framing of
//!   that direction (`truncated`): it is followed again from a transfer that
//!   starts with a run of well-formed frames ending exactly at its end, with a
//!   fresh decoder. Responses lost meanwhile leave their requests to the
//!   assembler, which abandons the waiting requests when the answers' direction
//!   loses bytes.

use std::collections::HashMap;

use loona_hpack::Decoder;

use crate::http1::TraceHeaders;
use crate::message::{Exchanges, H2Head, HttpHead, L7, Message, Problems, Side, Transfer};

/// The client connection preface (RFC 9113 §3.4), then a SETTINGS frame.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;

// Frame types (RFC 9113 §6).
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PRIORITY: u8 = 2;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;

// Flags.
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

/// Largest header block assembled; the rest is dropped as if beyond the capture.
const MAX_BLOCK: usize = 16 * 1024;
/// Streams followed at once per connection (peers allow 100 by default).
const MAX_STREAMS: usize = 1024;
/// Bytes of a header value kept (paths, authorities, gRPC messages).
const KEEP: usize = 256;

/// How a connection was found to speak HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// Seen mid-way (opened before the probe started): no preface, and the
    /// other direction may be mid-frame.
    pub mid_way: bool,
    /// The transfer that showed it goes the requests' way (the client's).
    pub requests_this_way: bool,
}

/// Whether transfer `t` starts an HTTP/2 connection: the client's preface, or,
/// on a connection seen mid-way, a transfer that is a run of well-formed frames
/// ending exactly at its end and holding a header block whose first field, read
/// with an empty table, is a request's pseudo-header (this direction carries
/// requests) or `:status` (answers).
pub fn starts_session(t: &Transfer<'_>) -> Option<Start> {
    let preface_cut =
        t.data.len() < PREFACE.len() && t.data.len() >= 16 && PREFACE.starts_with(t.data);
    if t.data.starts_with(PREFACE) || preface_cut {
        return Some(Start {
            mid_way: false,
            requests_this_way: true,
        });
    }
    if t.data.len() as u64 != u64::from(t.len) || !tiles(t.data) {
        return None;
    }
    let mut at = 0;
    while at + FRAME_HEADER <= t.data.len() {
        let head = FrameHead::parse(&t.data[at..at + FRAME_HEADER]);
        let payload = &t.data[at + FRAME_HEADER..at + FRAME_HEADER + head.len as usize];
        if head.kind == HEADERS && head.flags & END_HEADERS != 0 {
            let block = head.block_fragment(payload)?;
            let mut first: Option<Vec<u8>> = None;
            let _ = Decoder::new().decode_with_cb(block, |name, _| {
                first.get_or_insert_with(|| name.into_owned());
            });
            let requests_this_way = match first.as_deref() {
                Some(b":method" | b":scheme" | b":path" | b":authority") => true,
                Some(b":status") => false,
                _ => return None,
            };
            return Some(Start {
                mid_way: true,
                requests_this_way,
            });
        }
        at += FRAME_HEADER + head.len as usize;
    }
    None
}

/// Whether `data` is a run of well-formed frames ending exactly at its end.
fn tiles(data: &[u8]) -> bool {
    let mut at = 0;
    while at < data.len() {
        if at + FRAME_HEADER > data.len() {
            return false;
        }
        let head = FrameHead::parse(&data[at..at + FRAME_HEADER]);
        if !head.plausible() {
            return false;
        }
        at += FRAME_HEADER + head.len as usize;
    }
    at == data.len() && !data.is_empty()
}

/// A frame's 9-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHead {
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHead {
    fn parse(b: &[u8]) -> Self {
        Self {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    /// A frame a peer could have sent: a known type on the kind of stream it
    /// belongs to, with a length its type allows. Used only where framing is
    /// being found (mid-way, after a loss), so stricter than the protocol.
    fn plausible(&self) -> bool {
        let on_stream = self.stream != 0;
        let len_ok = |n: u32| self.len == n;
        match self.kind {
            DATA | HEADERS | CONTINUATION | PUSH_PROMISE => on_stream && self.len <= 1 << 20,
            PRIORITY => on_stream && len_ok(5),
            RST_STREAM => on_stream && len_ok(4),
            SETTINGS => !on_stream && self.len.is_multiple_of(6) && self.len <= 6 * 16,
            PING => !on_stream && len_ok(8),
            GOAWAY => !on_stream && self.len >= 8 && self.len <= 1 << 16,
            WINDOW_UPDATE => len_ok(4),
            _ => false,
        }
    }

    /// The header block fragment of a whole HEADERS payload (padding and
    /// priority taken off); `None` when the lengths do not add up.
    fn block_fragment<'p>(&self, payload: &'p [u8]) -> Option<&'p [u8]> {
        let (mut start, mut pad) = (0usize, 0usize);
        if self.flags & PADDED != 0 {
            pad = usize::from(*payload.first()?);
            start = 1;
        }
        if self.kind == HEADERS && self.flags & PRIORITY_FLAG != 0 {
            start += 5;
        }
        let end = payload.len().checked_sub(pad)?;
        payload.get(start..end)
    }
}

/// Where one direction's reader is in its byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// The client's preface: this many bytes of it left to skip.
    Preface(usize),
    /// A frame header; this many of its bytes are in `head_bytes`.
    Head(usize),
    /// A frame's payload: this many bytes left.
    Payload(u32),
    /// Framing lost: waiting for a transfer that starts with whole frames.
    Lost,
}

/// One direction's frames.
#[derive(Debug)]
struct Reader {
    read: Read,
    head_bytes: [u8; FRAME_HEADER],
    /// The frame whose payload is being read, and the sequence number and
    /// transfer of its first byte.
    frame: FrameHead,
    frame_seq: u32,
    frame_ts: u64,
    frame_tid: u32,
    /// The captured part of a payload that is kept (HEADERS, CONTINUATION,
    /// PUSH_PROMISE, RST_STREAM), and whether some of it was beyond the capture.
    payload: Vec<u8>,
    payload_cut: bool,
    /// The header block being assembled, across CONTINUATION frames.
    block: Block,
    decoder: Hpack,
}

/// One direction's HPACK decoder (its table follows the peer's encoder).
struct Hpack(Decoder<'static>);

impl std::fmt::Debug for Hpack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hpack")
    }
}

/// A header block in assembly: where its first HEADERS frame started.
#[derive(Debug, Default)]
struct Block {
    open: bool,
    /// Bytes of the block (not a PUSH_PROMISE's, which is only decoded).
    bytes: Vec<u8>,
    cut: bool,
    push: bool,
    stream: u32,
    /// Its frames' bytes on the wire, headers included.
    wire_bytes: u64,
    end_stream: bool,
    seq: u32,
    ts: u64,
    tid: u32,
}

/// What a header block said that espan keeps.
#[derive(Debug, Default)]
struct Fields {
    method: String,
    path: String,
    authority: String,
    status: u32,
    grpc: bool,
    grpc_status: Option<u32>,
    grpc_message: String,
    trace: TraceHeaders,
    /// Some fields could not be read (cut, or an unknown table entry).
    unknown: bool,
}

/// What happened on a stream, from one direction's frames.
enum Event {
    Headers {
        fields: Box<Fields>,
        block: Block,
    },
    /// A DATA frame of `len` bytes (header included); `end`: END_STREAM.
    Data {
        stream: u32,
        len: u64,
        end: bool,
        ts: u64,
        tid: u32,
    },
    Reset {
        stream: u32,
        seq: u32,
        ts: u64,
        tid: u32,
    },
}

impl Reader {
    fn new(read: Read) -> Self {
        Self {
            read,
            head_bytes: [0; FRAME_HEADER],
            frame: FrameHead::parse(&[0; FRAME_HEADER]),
            frame_seq: 0,
            frame_ts: 0,
            frame_tid: 0,
            payload: Vec::new(),
            payload_cut: false,
            block: Block::default(),
            decoder: Hpack(Decoder::new()),
        }
    }

    /// Loses the framing: followed again from a transfer of whole frames.
    fn lose(&mut self) {
        self.read = Read::Lost;
        self.payload = Vec::new();
        self.block = Block::default();
        self.decoder = Hpack(Decoder::new());
    }

    /// Reads transfer `t`; what happened on streams goes to `events`.
    fn feed(&mut self, t: &Transfer<'_>, problems: &mut Problems, events: &mut Vec<Event>) {
        if self.read == Read::Lost {
            if t.data.len() as u64 == u64::from(t.len) && tiles(t.data) {
                self.read = Read::Head(0);
            } else {
                return;
            }
        }
        let len = t.len as usize;
        let mut at = 0usize;
        while at < len {
            let captured = t.data.get(at..).unwrap_or(&[]);
            match self.read {
                Read::Lost => return,
                Read::Preface(left) => {
                    let n = left.min(len - at);
                    at += n;
                    self.read = if n == left {
                        Read::Head(0)
                    } else {
                        Read::Preface(left - n)
                    };
                }
                Read::Head(have) => {
                    if captured.is_empty() {
                        // A frame header beyond the capture: where frames
                        // start from here is unknown.
                        problems.truncated += 1;
                        self.lose();
                        return;
                    }
                    let n = (FRAME_HEADER - have).min(captured.len());
                    self.head_bytes[have..have + n].copy_from_slice(&captured[..n]);
                    if have == 0 {
                        self.frame_seq = t.seq.wrapping_add(at as u32);
                        self.frame_ts = t.ts_ns;
                        self.frame_tid = t.tid;
                    }
                    at += n;
                    if have + n < FRAME_HEADER {
                        self.read = Read::Head(have + n);
                        continue;
                    }
                    self.frame = FrameHead::parse(&self.head_bytes);
                    self.payload.clear();
                    self.payload_cut = false;
                    if self.block.open && self.frame.kind != CONTINUATION {
                        // A header block must go on in CONTINUATION frames.
                        problems.malformed += 1;
                        self.lose();
                        return;
                    }
                    self.read = Read::Payload(self.frame.len);
                    if self.frame.len == 0 {
                        self.frame_done(t, problems, events);
                    }
                }
                Read::Payload(left) => {
                    let n = (left as usize).min(len - at);
                    if self.keeps_payload() {
                        let have = captured.len().min(n);
                        let room = MAX_BLOCK.saturating_sub(self.payload.len());
                        self.payload.extend_from_slice(&captured[..have.min(room)]);
                        self.payload_cut |= have < n || have > room;
                    }
                    at += n;
                    let left = left - n as u32;
                    self.read = Read::Payload(left);
                    if left == 0 {
                        self.frame_done(t, problems, events);
                    }
                }
            }
        }
    }

    fn keeps_payload(&self) -> bool {
        matches!(
            self.frame.kind,
            HEADERS | CONTINUATION | PUSH_PROMISE | RST_STREAM
        )
    }

    /// The frame being read is complete.
    fn frame_done(&mut self, t: &Transfer<'_>, problems: &mut Problems, events: &mut Vec<Event>) {
        self.read = Read::Head(0);
        let f = self.frame;
        match f.kind {
            DATA => events.push(Event::Data {
                stream: f.stream,
                len: u64::from(f.len) + FRAME_HEADER as u64,
                end: f.flags & END_STREAM != 0,
                ts: t.ts_ns,
                tid: t.tid,
            }),
            RST_STREAM => events.push(Event::Reset {
                stream: f.stream,
                seq: self.frame_seq,
                ts: t.ts_ns,
                tid: t.tid,
            }),
            HEADERS | PUSH_PROMISE => {
                let payload = std::mem::take(&mut self.payload);
                let (fragment, cut) = if self.payload_cut {
                    // Padding cannot be told from the block: take what is
                    // there after the fixed fields.
                    let mut skip = usize::from(f.flags & PADDED != 0);
                    if f.kind == HEADERS && f.flags & PRIORITY_FLAG != 0 {
                        skip += 5;
                    }
                    (payload.get(skip..).unwrap_or(&[]), true)
                } else {
                    match f.block_fragment(&payload) {
                        Some(b) => (b, false),
                        None => {
                            problems.malformed += 1;
                            (&[][..], true)
                        }
                    }
                };
                // A PUSH_PROMISE starts with the promised stream id.
                let fragment = if f.kind == PUSH_PROMISE {
                    fragment.get(4..).unwrap_or(&[])
                } else {
                    fragment
                };
                self.block = Block {
                    open: true,
                    bytes: fragment.to_vec(),
                    cut,
                    push: f.kind == PUSH_PROMISE,
                    stream: f.stream,
                    wire_bytes: u64::from(f.len) + FRAME_HEADER as u64,
                    end_stream: f.kind == HEADERS && f.flags & END_STREAM != 0,
                    seq: self.frame_seq,
                    ts: self.frame_ts,
                    tid: self.frame_tid,
                };
                self.payload = payload;
                self.payload.clear();
                if f.flags & END_HEADERS != 0 {
                    self.block_done(problems, events);
                }
            }
            CONTINUATION => {
                if !self.block.open || f.stream != self.block.stream {
                    problems.malformed += 1;
                    self.lose();
                    return;
                }
                let room = MAX_BLOCK.saturating_sub(self.block.bytes.len());
                self.block.cut |= self.payload_cut || self.payload.len() > room;
                if !self.block.cut {
                    self.block.bytes.extend_from_slice(&self.payload);
                }
                self.payload.clear();
                self.block.wire_bytes += u64::from(f.len) + FRAME_HEADER as u64;
                if f.flags & END_HEADERS != 0 {
                    self.block_done(problems, events);
                }
            }
            _ => {}
        }
    }

    /// A header block is complete: decode it (always, to keep the table in step).
    fn block_done(&mut self, problems: &mut Problems, events: &mut Vec<Event>) {
        let mut block = std::mem::take(&mut self.block);
        block.open = false;
        let mut fields = Fields::default();
        let decoded = self.decoder.0.decode_with_cb(&block.bytes, |name, value| {
            fields.offer(&name, &value);
        });
        if decoded.is_err() || block.cut {
            // What the rest of the block added to the peer's table is unknown:
            // start afresh (see the module doc).
            fields.unknown = true;
            problems.unknown_headers += 1;
            self.decoder = Hpack(Decoder::new());
        }
        if block.push {
            return;
        }
        block.bytes = Vec::new();
        events.push(Event::Headers {
            fields: Box::new(fields),
            block,
        });
    }

    fn held_bytes(&self) -> usize {
        // The decoder's table is bounded by its size setting (4 KiB unless the
        // peer signals more); counted at that.
        self.payload.capacity() + self.block.bytes.capacity() + 4096
    }
}

impl Fields {
    fn offer(&mut self, name: &[u8], value: &[u8]) {
        let text = || {
            let v = &value[..value.len().min(KEEP)];
            String::from_utf8_lossy(v).into_owned()
        };
        match name {
            b":method" => self.method = text(),
            b":path" => {
                let v = &value[..value.len().min(KEEP)];
                let end = v.iter().position(|&c| c == b'?').unwrap_or(v.len());
                self.path = String::from_utf8_lossy(&v[..end]).into_owned();
            }
            b":authority" => self.authority = text(),
            b":status" => {
                self.status = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0)
            }
            b"content-type" => self.grpc = value.starts_with(b"application/grpc"),
            b"grpc-status" => {
                self.grpc_status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok())
            }
            b"grpc-message" => self.grpc_message = text(),
            _ => {
                if let (Ok(n), Ok(v)) = (std::str::from_utf8(name), std::str::from_utf8(value)) {
                    self.trace.offer(n, v);
                }
            }
        }
    }

    fn into_head(self, request: bool) -> H2Head {
        H2Head {
            head: HttpHead {
                method: if request && self.method.is_empty() {
                    // A request whose method was not read is still a request.
                    "_OTHER".into()
                } else if request {
                    self.method
                } else {
                    String::new()
                },
                path: self.path,
                version: "HTTP/2".into(),
                status: self.status,
                host: self.authority,
                app_trace: if request {
                    self.trace.app_trace()
                } else {
                    None
                },
            },
            grpc: self.grpc,
            grpc_status: self.grpc_status,
            grpc_message: self.grpc_message,
            reset: false,
            unknown: self.unknown,
            request_bytes: 0,
        }
    }
}

/// A stream's exchange so far.
#[derive(Debug)]
struct StreamState {
    /// The request was seen (not for a stream first seen by its response).
    request: bool,
    grpc: bool,
    /// Bytes of the stream's frames each way so far.
    request_bytes: u64,
    response_bytes: u64,
    /// The response's first final header block, once seen.
    response: Option<Message>,
}

/// Both directions of one HTTP/2 connection.
#[derive(Debug)]
pub struct Session {
    requests: Reader,
    answers: Reader,
    streams: HashMap<u32, StreamState>,
    problems: Problems,
}

impl Session {
    /// A session from the client's preface, or from a transfer of whole
    /// frames on a connection seen mid-way, whose other direction may be
    /// mid-frame: it is followed from its first transfer of whole frames.
    pub fn new(start: Start) -> Self {
        let (requests, answers) = match start {
            Start { mid_way: false, .. } => (Read::Preface(PREFACE.len()), Read::Head(0)),
            Start {
                requests_this_way: true,
                ..
            } => (Read::Head(0), Read::Lost),
            Start {
                requests_this_way: false,
                ..
            } => (Read::Lost, Read::Head(0)),
        };
        Self {
            requests: Reader::new(requests),
            answers: Reader::new(answers),
            streams: HashMap::new(),
            problems: Problems::default(),
        }
    }

    fn on_event(&mut self, side: Side, event: Event, out: &mut Vec<(Side, Message)>) {
        match (side, event) {
            (Side::Requests, Event::Headers { fields, block }) => {
                if self.streams.contains_key(&block.stream) {
                    // Request trailers: nothing espan keeps.
                    return;
                }
                if self.streams.len() >= MAX_STREAMS {
                    self.problems.malformed += 1;
                    return;
                }
                let grpc = fields.grpc;
                let msg = Message {
                    l7: L7::Http2((*fields).into_head(true)),
                    seq: block.seq,
                    start_ns: block.ts,
                    end_ns: block.ts,
                    first_tid: block.tid,
                    last_tid: block.tid,
                    bytes: 0,
                    stream: block.stream,
                };
                self.streams.insert(
                    block.stream,
                    StreamState {
                        request: true,
                        grpc,
                        request_bytes: block.wire_bytes,
                        response_bytes: 0,
                        response: None,
                    },
                );
                out.push((Side::Requests, msg));
            }
            (Side::Answers, Event::Headers { fields, block }) => {
                let state = self.streams.entry(block.stream).or_insert(StreamState {
                    request: false,
                    grpc: fields.grpc,
                    request_bytes: 0,
                    response_bytes: 0,
                    response: None,
                });
                state.response_bytes += block.wire_bytes;
                match &mut state.response {
                    None => {
                        if (100..200).contains(&fields.status) {
                            // Informational: the final response follows.
                            return;
                        }
                        let grpc = state.grpc || fields.grpc;
                        let mut head = (*fields).into_head(false);
                        head.grpc |= grpc;
                        state.response = Some(Message {
                            l7: L7::Http2(head),
                            seq: block.seq,
                            start_ns: block.ts,
                            end_ns: block.ts,
                            first_tid: block.tid,
                            last_tid: block.tid,
                            bytes: 0,
                            stream: block.stream,
                        });
                    }
                    Some(msg) => {
                        // Trailers: the gRPC outcome.
                        if let L7::Http2(head) = &mut msg.l7 {
                            if fields.grpc_status.is_some() {
                                head.grpc_status = fields.grpc_status;
                                head.grpc_message = fields.grpc_message;
                            }
                            head.unknown |= fields.unknown;
                        }
                        msg.end_ns = block.ts;
                        msg.last_tid = block.tid;
                    }
                }
                if block.end_stream {
                    self.end_stream(block.stream, block.ts, block.tid, out);
                }
            }
            (
                side,
                Event::Data {
                    stream,
                    len,
                    end,
                    ts,
                    tid,
                },
            ) => {
                if let Some(state) = self.streams.get_mut(&stream) {
                    match side {
                        Side::Requests => state.request_bytes += len,
                        Side::Answers => state.response_bytes += len,
                    }
                }
                if end && side == Side::Answers {
                    self.end_stream(stream, ts, tid, out);
                }
            }
            (
                _,
                Event::Reset {
                    stream,
                    seq,
                    ts,
                    tid,
                },
            ) => {
                let Some(mut state) = self.streams.remove(&stream) else {
                    return;
                };
                if !state.request {
                    return;
                }
                // The exchange ends here; a response never begun is the reset
                // itself (its bytes are the same on both ends).
                let mut msg = state.response.take().unwrap_or(Message {
                    l7: L7::Http2(H2Head::default()),
                    seq,
                    start_ns: ts,
                    end_ns: ts,
                    first_tid: tid,
                    last_tid: tid,
                    bytes: 0,
                    stream,
                });
                if let L7::Http2(head) = &mut msg.l7 {
                    head.reset = true;
                }
                msg.end_ns = ts;
                msg.last_tid = tid;
                out.push((Side::Answers, state.counted(msg)));
            }
        }
    }

    /// The server ended stream `stream`: its response is complete.
    fn end_stream(&mut self, stream: u32, ts: u64, tid: u32, out: &mut Vec<(Side, Message)>) {
        let Some(mut state) = self.streams.remove(&stream) else {
            return;
        };
        if let Some(mut msg) = state.response.take() {
            msg.end_ns = ts;
            msg.last_tid = tid;
            out.push((Side::Answers, state.counted(msg)));
        }
    }
}

impl StreamState {
    /// The stream's answer, with the bytes each way counted in.
    fn counted(&self, mut answer: Message) -> Message {
        answer.bytes = self.response_bytes;
        if let L7::Http2(head) = &mut answer.l7 {
            head.request_bytes = self.request_bytes;
        }
        answer
    }
}

impl Exchanges for Session {
    fn feed(&mut self, side: Side, t: Transfer<'_>, out: &mut Vec<(Side, Message)>) {
        let mut events = Vec::new();
        let reader = match side {
            Side::Requests => &mut self.requests,
            Side::Answers => &mut self.answers,
        };
        reader.feed(&t, &mut self.problems, &mut events);
        if side == Side::Answers && reader.read == Read::Lost {
            // Responses may have been lost with the framing: the assembler
            // abandons their requests; their streams are forgotten here.
            self.streams.clear();
        }
        for event in events {
            self.on_event(side, event, out);
        }
    }

    fn gap(&mut self, side: Side) {
        match side {
            Side::Requests => self.requests.lose(),
            Side::Answers => {
                self.answers.lose();
                self.streams.clear();
            }
        }
    }

    /// Framing is found again from the traffic itself (see [`Reader::feed`]).
    fn resync_if_quiet(&mut self, _out: &mut Vec<(Side, Message)>) {}

    /// The connection ended: responses begun end with it.
    fn end(&mut self, out: &mut Vec<(Side, Message)>) {
        let mut open: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| s.response.is_some())
            .map(|(&id, _)| id)
            .collect();
        open.sort_unstable();
        for id in open {
            if let Some(mut state) = self.streams.remove(&id)
                && let Some(msg) = state.response.take()
            {
                out.push((Side::Answers, state.counted(msg)));
            }
        }
    }

    fn take_problems(&mut self) -> (Problems, u64) {
        (std::mem::take(&mut self.problems), 0)
    }

    fn held_bytes(&self) -> usize {
        self.requests.held_bytes()
            + self.answers.held_bytes()
            + self.streams.len() * std::mem::size_of::<(u32, StreamState)>()
    }
}

#[cfg(test)]
mod tests;
