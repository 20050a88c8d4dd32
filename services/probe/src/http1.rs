//! HTTP/1.x message boundaries in one direction of a connection.
//!
//! Input: transfers (a read or a write) with the TCP sequence number of their
//! first byte, their full length, and the first bytes of their payload (the
//! capture may be shorter than the transfer). Output: complete messages, each
//! with the sequence number of its first byte and the times of its first and
//! last transfer. Heads are parsed with httparse; bodies are skipped by length
//! (Content-Length, chunk sizes), so an uncaptured body is no problem. When the
//! stream cannot be followed (malformed, a head cut off by the capture, a chunk
//! size line not captured, a gap) the parser drops into `Lost` and picks the
//! stream up again at the next transfer that starts like a message.
//!
//! A chunked body whose framing lies beyond the captured bytes (a large chunk
//! followed by the next size line in the same transfer), or a head longer than
//! the capture (big cookies, tokens: its first line is kept), is not lost: its message
//! keeps its head and first byte's sequence number and stays open
//! (`Body::Unframed`) until the stream shows where it ended: the next message
//! starting a transfer in this direction, the other direction starting its next
//! message ([`Stream::conclude`], HTTP/1.x is not pipelined in practice), or the
//! connection's end.

use espan::wire::{AppTrace, SamplingDecision, TraceFormat};

use crate::message::{HttpHead, L7, Message, Problems, Transfer};

/// Longest head accepted; a longer one is treated as malformed.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 96;

#[derive(Debug)]
enum Body {
    /// Bytes still to skip.
    Length(u64),
    Chunked(Chunk),
    /// A response without a length: ends when the connection closes.
    UntilClose,
    /// Chunked, but the framing went beyond the captured bytes: ends where the
    /// stream shows it (see the module doc).
    Unframed,
}

#[derive(Debug)]
enum Chunk {
    /// Reading a chunk-size line (kept in `line`).
    Size,
    /// Skipping chunk data, then its CRLF.
    Data(u64),
    /// Reading trailer lines until an empty one.
    Trailer,
}

#[derive(Debug)]
enum State {
    /// Between messages, or collecting a head in `buf`.
    HttpHead,
    Body(Body),
    /// Not following the stream; wait for a transfer that starts a message.
    Lost,
    /// After a 101 (or CONNECT): not HTTP any more.
    Upgraded,
}

/// One direction of one connection.
#[derive(Debug)]
pub struct Stream {
    state: State,
    /// HttpHead bytes collected so far, or the current chunk line.
    buf: Vec<u8>,
    /// The message being read, once its first byte is seen.
    current: Option<Message>,
    pub problems: Problems,
}

impl Default for Stream {
    fn default() -> Self {
        Self::new()
    }
}

/// Tells the response parser whether the request it answers was a HEAD (no body
/// follows then). Requests push, responses pop.
pub type HeadQueue = std::collections::VecDeque<bool>;

pub fn looks_like_start(data: &[u8]) -> bool {
    const STARTS: &[&[u8]] = &[
        b"HTTP/1.",
        b"GET ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"HEAD ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
    ];
    // A first read may hold only part of the method ("PO" of "POST ").
    !data.is_empty()
        && STARTS
            .iter()
            .any(|s| data.starts_with(s) || (data.len() < s.len() && s.starts_with(data)))
}

impl Stream {
    pub fn new() -> Self {
        Self {
            // Until a message start is seen we may be in the middle of anything.
            state: State::Lost,
            buf: Vec::new(),
            current: None,
            problems: Problems::default(),
        }
    }

    /// Feeds one transfer; complete messages are appended to `out`.
    pub fn feed(&mut self, t: Transfer<'_>, heads: &mut HeadQueue, out: &mut Vec<Message>) {
        let data = &t.data[..t.data.len().min(t.len as usize)];
        let len = t.len as usize;
        let mut pos = 0usize;
        if matches!(self.state, State::Body(Body::Unframed)) {
            if looks_like_start(data) {
                // The open message ended with the previous transfer.
                self.finish_unframed(out);
            } else {
                if let Some(m) = &mut self.current {
                    m.bytes += u64::from(t.len);
                    m.end_ns = t.ts_ns;
                    m.last_tid = t.tid;
                }
                return;
            }
        }
        while pos < len {
            match &mut self.state {
                State::Upgraded => return,
                State::Lost => {
                    if pos == 0 && looks_like_start(data) {
                        self.state = State::HttpHead;
                        continue;
                    }
                    return;
                }
                State::HttpHead => {
                    if pos >= data.len() {
                        // The head (or the start of the next one) is beyond the capture.
                        self.problems.truncated += 1;
                        self.lose();
                        return;
                    }
                    if self.current.is_none() {
                        self.buf.clear();
                        self.current = Some(Message::starting(
                            L7::Http(HttpHead::default()),
                            t.seq.wrapping_add(pos as u32),
                            &t,
                        ));
                    }
                    let before = self.buf.len();
                    let take = (data.len() - pos).min(MAX_HEAD + 4 - before);
                    self.buf.extend_from_slice(&data[pos..pos + take]);
                    match parse_head(&self.buf) {
                        Ok(Some((head, head_len, body))) => {
                            let used = head_len - before;
                            pos += used;
                            self.start_body(head, head_len as u64, body, heads, t, out);
                        }
                        Ok(None) => {
                            if self.buf.len() > MAX_HEAD {
                                self.problems.malformed += 1;
                                self.lose();
                                return;
                            }
                            pos += take;
                            if pos < len {
                                // Rest of the head not captured: its first
                                // line still makes the message (big cookies
                                // and tokens must not hide a request).
                                if !self.head_beyond_capture(heads, &t, (len - pos) as u64) {
                                    self.problems.truncated += 1;
                                    self.lose();
                                }
                                return;
                            }
                        }
                        Err(()) => {
                            self.problems.malformed += 1;
                            self.lose();
                            return;
                        }
                    }
                }
                State::Body(Body::Length(left)) => {
                    let n = (*left).min((len - pos) as u64);
                    *left -= n;
                    pos += n as usize;
                    if let Some(m) = &mut self.current {
                        m.bytes += n;
                    }
                    if *left == 0 {
                        self.finish(t, out);
                    }
                }
                State::Body(Body::Unframed) => return,
                State::Body(Body::UntilClose) => {
                    if let Some(m) = &mut self.current {
                        m.bytes += (len - pos) as u64;
                        m.end_ns = t.ts_ns;
                        m.last_tid = t.tid;
                    }
                    return;
                }
                State::Body(Body::Chunked(chunk)) => match chunk {
                    Chunk::Data(left) => {
                        let n = (*left).min((len - pos) as u64);
                        *left -= n;
                        pos += n as usize;
                        if let Some(m) = &mut self.current {
                            m.bytes += n;
                        }
                        if *left == 0 {
                            *chunk = Chunk::Size;
                            self.buf.clear();
                        }
                    }
                    Chunk::Size | Chunk::Trailer => {
                        if pos >= data.len() {
                            // The framing goes on beyond the capture: the
                            // message stays open (see the module doc).
                            self.problems.unframed += 1;
                            if let Some(m) = &mut self.current {
                                m.bytes += (len - pos) as u64;
                                m.end_ns = t.ts_ns;
                                m.last_tid = t.tid;
                            }
                            self.buf.clear();
                            self.state = State::Body(Body::Unframed);
                            return;
                        }
                        // One line at a time.
                        let rest = &data[pos..];
                        let (line_part, complete) = match rest.iter().position(|&b| b == b'\n') {
                            Some(i) => (&rest[..=i], true),
                            None => (rest, false),
                        };
                        self.buf.extend_from_slice(line_part);
                        pos += line_part.len();
                        if let Some(m) = &mut self.current {
                            m.bytes += line_part.len() as u64;
                        }
                        if self.buf.len() > 1024 {
                            self.problems.malformed += 1;
                            self.lose();
                            return;
                        }
                        if !complete {
                            continue;
                        }
                        let is_trailer = matches!(chunk, Chunk::Trailer);
                        let line = std::mem::take(&mut self.buf);
                        if is_trailer {
                            if line == b"\r\n" || line == b"\n" {
                                self.finish(t, out);
                            }
                            continue;
                        }
                        // Chunk data is followed by CRLF, which arrives as an empty line.
                        if line == b"\r\n" || line == b"\n" {
                            continue;
                        }
                        match httparse::parse_chunk_size(&line) {
                            Ok(httparse::Status::Complete((_, 0))) => {
                                if let State::Body(Body::Chunked(c)) = &mut self.state {
                                    *c = Chunk::Trailer;
                                }
                            }
                            Ok(httparse::Status::Complete((_, size))) => {
                                if let State::Body(Body::Chunked(c)) = &mut self.state {
                                    *c = Chunk::Data(size);
                                }
                            }
                            _ => {
                                self.problems.malformed += 1;
                                self.lose();
                                return;
                            }
                        }
                    }
                },
            }
        }
        // A message whose last byte was in this transfer is complete; one still
        // collecting its head keeps going with the next transfer.
    }

    fn start_body(
        &mut self,
        head: HttpHead,
        head_len: u64,
        body: BodyHint,
        heads: &mut HeadQueue,
        t: Transfer<'_>,
        out: &mut Vec<Message>,
    ) {
        self.release_buf();
        let request = head.is_request();
        let upgrade = (head.status == 101) || head.method == "CONNECT";
        let state = if request {
            heads.push_back(head.method == "HEAD");
            match body {
                BodyHint::Chunked => Body::Chunked(Chunk::Size),
                BodyHint::Length(n) => Body::Length(n),
                BodyHint::None => Body::Length(0),
            }
        } else {
            let to_head = if (100..200).contains(&head.status) && head.status != 101 {
                // An interim response: the request still waits for its final one.
                false
            } else {
                heads.pop_front().unwrap_or(false)
            };
            if to_head
                || head.status == 204
                || head.status == 304
                || (100..200).contains(&head.status)
            {
                Body::Length(0)
            } else {
                match body {
                    BodyHint::Chunked => Body::Chunked(Chunk::Size),
                    BodyHint::Length(n) => Body::Length(n),
                    BodyHint::None => Body::UntilClose,
                }
            }
        };
        let interim = !request && (100..200).contains(&head.status) && head.status != 101;
        if let Some(m) = &mut self.current {
            m.l7 = L7::Http(head);
            m.bytes = head_len;
            m.end_ns = t.ts_ns;
            m.last_tid = t.tid;
        }
        if interim {
            // Not a message of its own for pairing: drop it and wait for the final response.
            self.current = None;
            self.state = State::HttpHead;
            return;
        }
        self.state = State::Body(state);
        if let State::Body(Body::Length(0)) = self.state {
            self.finish(t, out);
        }
        if upgrade {
            self.state = State::Upgraded;
        }
    }

    /// The head goes on beyond the captured bytes (`rest` more in this
    /// transfer): what its first line says is kept (method, path, version, or
    /// status), and the message stays open without framing until the stream
    /// shows its end (see the module doc). False when even the first line was
    /// not captured.
    fn head_beyond_capture(&mut self, heads: &mut HeadQueue, t: &Transfer<'_>, rest: u64) -> bool {
        let Some(line_end) = self.buf.windows(2).position(|w| w == b"\r\n") else {
            return false;
        };
        let mut line = self.buf[..line_end + 2].to_vec();
        line.extend_from_slice(b"\r\n");
        let Ok(Some((head, _, _))) = parse_head(&line) else {
            return false;
        };
        if head.is_request() {
            heads.push_back(head.method == "HEAD");
        } else {
            heads.pop_front();
        }
        if let Some(m) = &mut self.current {
            m.l7 = L7::Http(head);
            m.bytes = self.buf.len() as u64 + rest;
            m.touch(t);
        }
        self.release_buf();
        self.problems.unframed += 1;
        self.state = State::Body(Body::Unframed);
        true
    }

    fn finish(&mut self, t: Transfer<'_>, out: &mut Vec<Message>) {
        if let Some(mut m) = self.current.take() {
            m.end_ns = t.ts_ns;
            m.last_tid = t.tid;
            out.push(m);
        }
        self.release_buf();
        self.state = State::HttpHead;
    }

    /// Ends an unframed message where the stream got to (its last transfer).
    fn finish_unframed(&mut self, out: &mut Vec<Message>) {
        if let Some(m) = self.current.take() {
            out.push(m);
        }
        self.release_buf();
        self.state = State::HttpHead;
    }

    /// True while a message whose end the stream has not shown is open.
    pub fn unframed(&self) -> bool {
        matches!(self.state, State::Body(Body::Unframed))
    }

    /// The other direction started its next message: a message left open
    /// without framing ended before it (HTTP/1.x answers in turn).
    pub fn conclude(&mut self, out: &mut Vec<Message>) {
        if self.unframed() {
            self.finish_unframed(out);
        }
    }

    fn lose(&mut self) {
        self.current = None;
        self.release_buf();
        self.state = State::Lost;
    }

    /// The connection closed: a response read until close is complete now.
    pub fn close(&mut self, out: &mut Vec<Message>) {
        self.end(out);
        self.lose();
    }

    /// The socket reached CLOSE, but bytes the kernel queued before it (a reset
    /// leaves them readable) may still be read: completes a message that ends
    /// with the connection and keeps any other state.
    pub fn end(&mut self, out: &mut Vec<Message>) {
        if let State::Body(Body::UntilClose | Body::Unframed) = self.state
            && let Some(m) = self.current.take()
        {
            out.push(m);
            self.lose();
        }
    }

    /// Bytes were missed before the next transfer (the connection counts
    /// them): what is half read is lost.
    pub fn gap(&mut self) {
        self.lose();
    }

    /// Empties the head buffer, giving a large one's memory back (a long head
    /// must not keep its 16 KiB for the connection's life).
    fn release_buf(&mut self) {
        if self.buf.capacity() > 2048 {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }

    /// Bytes held for the message being read (its head so far).
    pub fn held_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// True while nothing is half read.
    pub fn idle(&self) -> bool {
        self.current.is_none()
    }
}

enum BodyHint {
    None,
    Length(u64),
    Chunked,
}

/// `Ok(None)`: incomplete; `Err`: not HTTP/1.x.
fn parse_head(buf: &[u8]) -> Result<Option<(HttpHead, usize, BodyHint)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    if buf.starts_with(b"HTTP/") {
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let mut head = HttpHead {
                    version: version(resp.version),
                    status: u32::from(resp.code.unwrap_or(0)),
                    ..HttpHead::default()
                };
                let body = body_hint(resp.headers, &mut head)?;
                Ok(Some((head, n, body)))
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(_) => Err(()),
        }
    } else {
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let path = req.path.unwrap_or("");
                let path = path.split(['?', '#']).next().unwrap_or("");
                let mut head = HttpHead {
                    method: req.method.unwrap_or("").to_owned(),
                    path: path.to_owned(),
                    version: version(req.version),
                    ..HttpHead::default()
                };
                let body = body_hint(req.headers, &mut head)?;
                Ok(Some((head, n, body)))
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(_) => Err(()),
        }
    }
}

fn version(v: Option<u8>) -> String {
    match v {
        Some(0) => "HTTP/1.0".into(),
        _ => "HTTP/1.1".into(),
    }
}

/// Reads the headers espan uses (names are case-insensitive) and how the body ends.
fn body_hint(headers: &[httparse::Header<'_>], head: &mut HttpHead) -> Result<BodyHint, ()> {
    let mut length = None;
    let mut chunked = false;
    let mut ctx = TraceHeaders::default();
    for h in headers {
        let name = h.name;
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value.parse().map_err(|_| ())?;
            if length.is_some_and(|l| l != n) {
                return Err(());
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("host") {
            head.host = value.to_owned();
        } else {
            ctx.offer(name, value);
        }
    }
    head.app_trace = ctx.app_trace();
    Ok(if chunked {
        BodyHint::Chunked
    } else if let Some(n) = length {
        BodyHint::Length(n)
    } else {
        BodyHint::None
    })
}

/// Trace-context headers seen in a request.
#[derive(Debug, Default)]
pub(crate) struct TraceHeaders {
    traceparent: Option<String>,
    dd_trace: Option<String>,
    dd_parent: Option<String>,
    dd_priority: Option<String>,
    b3: Option<String>,
    b3_trace: Option<String>,
    b3_span: Option<String>,
    b3_sampled: Option<String>,
}

impl TraceHeaders {
    pub(crate) fn offer(&mut self, name: &str, value: &str) {
        let slot = if name.eq_ignore_ascii_case("traceparent") {
            &mut self.traceparent
        } else if name.eq_ignore_ascii_case("x-datadog-trace-id") {
            &mut self.dd_trace
        } else if name.eq_ignore_ascii_case("x-datadog-parent-id") {
            &mut self.dd_parent
        } else if name.eq_ignore_ascii_case("x-datadog-sampling-priority") {
            &mut self.dd_priority
        } else if name.eq_ignore_ascii_case("b3") {
            &mut self.b3
        } else if name.eq_ignore_ascii_case("x-b3-traceid") {
            &mut self.b3_trace
        } else if name.eq_ignore_ascii_case("x-b3-spanid") {
            &mut self.b3_span
        } else if name.eq_ignore_ascii_case("x-b3-sampled") {
            &mut self.b3_sampled
        } else {
            return;
        };
        slot.get_or_insert_with(|| value.to_owned());
    }

    /// W3C first, then Datadog, then B3; a malformed header is ignored.
    pub(crate) fn app_trace(&self) -> Option<AppTrace> {
        if let Some(t) = self.traceparent.as_deref().and_then(parse_traceparent) {
            return Some(t);
        }
        if let (Some(trace), Some(parent)) = (&self.dd_trace, &self.dd_parent)
            && let (Ok(low), Ok(parent)) = (trace.parse::<u64>(), parent.parse::<u64>())
            && low != 0
        {
            let sampling = match self
                .dd_priority
                .as_deref()
                .and_then(|p| p.parse::<i32>().ok())
            {
                Some(p) if p > 0 => SamplingDecision::Keep,
                Some(_) => SamplingDecision::Drop,
                None => SamplingDecision::Unset,
            };
            return Some(AppTrace {
                format: TraceFormat::Datadog as i32,
                trace_id_high: 0,
                trace_id_low: low,
                parent_span_id: parent,
                sampling: sampling as i32,
            });
        }
        if let Some(t) = self.b3.as_deref().and_then(parse_b3_single) {
            return Some(t);
        }
        if let (Some(trace), Some(span)) = (&self.b3_trace, &self.b3_span) {
            return b3(trace, span, self.b3_sampled.as_deref());
        }
        None
    }
}

fn hex_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// A 32- or 16-hex-digit trace id as (high, low).
fn hex_trace_id(s: &str) -> Option<(u64, u64)> {
    match s.len() {
        32 => Some((hex_u64(s.get(..16)?)?, hex_u64(s.get(16..)?)?)),
        16 => Some((0, hex_u64(s)?)),
        _ => None,
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
fn parse_traceparent(v: &str) -> Option<AppTrace> {
    let mut parts = v.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || parent.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    let (high, low) = hex_trace_id(trace)?;
    let parent = hex_u64(parent)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if (high, low) == (0, 0) || parent == 0 {
        return None;
    }
    Some(AppTrace {
        format: TraceFormat::W3c as i32,
        trace_id_high: high,
        trace_id_low: low,
        parent_span_id: parent,
        sampling: if flags & 1 == 1 {
            SamplingDecision::Keep
        } else {
            SamplingDecision::Drop
        } as i32,
    })
}

/// `b3: <trace>-<span>[-<sampled>[-<parent>]]` (a lone `0` means "do not sample",
/// without ids: no context).
fn parse_b3_single(v: &str) -> Option<AppTrace> {
    let mut parts = v.split('-');
    let trace = parts.next()?;
    let span = parts.next()?;
    b3(trace, span, parts.next())
}

fn b3(trace: &str, span: &str, sampled: Option<&str>) -> Option<AppTrace> {
    let (high, low) = hex_trace_id(trace)?;
    let span = hex_u64(span)?;
    if (high, low) == (0, 0) {
        return None;
    }
    let sampling = match sampled {
        Some("1") | Some("d") | Some("true") => SamplingDecision::Keep,
        Some("0") | Some("false") => SamplingDecision::Drop,
        _ => SamplingDecision::Unset,
    };
    Some(AppTrace {
        format: TraceFormat::B3 as i32,
        trace_id_high: high,
        trace_id_low: low,
        parent_span_id: span,
        sampling: sampling as i32,
    })
}

#[cfg(test)]
mod tests;
