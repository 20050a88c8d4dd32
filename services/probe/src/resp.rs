//! Redis (RESP2 and RESP3) message boundaries on one connection.
//!
//! The client speaks first: a connection is Redis when a message starting a
//! transfer is a command, an array of bulk strings whose first names a Redis
//! command ([`looks_like_command`]); that direction carries commands from then
//! on. The server answers every command with one reply, in order, so with
//! pipelining (N commands in one write) each command still gets its own reply:
//! each message keeps the sequence number of its first byte, and the linker pairs
//! the two sides by them as for HTTP.
//!
//! Bulk payloads are skipped by their length, so values beyond the capture are no
//! problem. Only a command's name and an error reply's code (`ERR`,
//! `WRONGTYPE`…) are kept, never keys or values. RESP3 pushes (`>`) answer no
//! command and are skipped; after SUBSCRIBE (and its kin) or MONITOR the
//! connection carries pushes only, and is not followed further.
//!
//! Losing the framing (a header beyond the capture, garbage, missed bytes) loses
//! the count of commands waiting, and pairing a later reply with a later command
//! would be wrong, so the connection is not followed until it has been quiet
//! ([`Session::resync_if_quiet`]): then every command has its answer. One
//! exception keeps the common case: a reply whose framing lies beyond the
//! capture while it answers the only command waiting stays open until the client
//! sends its next command (or the connection goes quiet or ends).

use crate::message::{Exchanges, L7, Message, Problems, RedisFrame, Side, Transfer};

/// Deepest nesting of aggregates followed; deeper is taken as garbage.
const MAX_DEPTH: usize = 32;
/// Longest header line followed (type byte, a length or a short string, CRLF);
/// simple strings and errors may be longer, and only their start is kept.
const MAX_LINE: usize = 64 * 1024;
/// Bytes of a line, a command name or an error code kept.
const KEEP: usize = 32;

/// Commands that turn a connection into a stream of pushes.
const SUBSCRIBING: &[&str] = &["MONITOR", "PSUBSCRIBE", "SSUBSCRIBE", "SUBSCRIBE"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a header line (the type byte starts it).
    Line,
    /// Skipping a bulk payload and its CRLF.
    Bulk(u64),
    /// A reply whose framing lies beyond the capture (see the module doc).
    Unframed,
    /// After SUBSCRIBE or MONITOR: pushes only.
    Pushes,
    /// Framing lost: not followed until the connection is quiet.
    Lost,
}

/// What the bulk being skipped is kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    Nothing,
    CommandName,
    ErrorCode,
}

/// What both directions' parsers share.
#[derive(Debug, Default)]
struct Shared {
    /// Commands read and not yet answered.
    waiting: u64,
    /// A SUBSCRIBE-like command was sent: once it is answered, pushes only.
    subscribed: bool,
}

/// One direction's parser.
#[derive(Debug)]
struct Stream {
    side: Side,
    state: State,
    /// The current line's first bytes (without its LF), and how long it is so far.
    line: Vec<u8>,
    line_len: usize,
    /// The last byte of the line so far (a CR before the LF ends it).
    line_last: u8,
    /// Elements left in each open aggregate, outermost first.
    open: Vec<u64>,
    current: Option<Message>,
    /// The message being read is a RESP3 push (no command's answer).
    push: bool,
    /// The next element is a command's first (its name).
    name_next: bool,
    keep: Keep,
    kept: Vec<u8>,
    /// An error reply's code, once read.
    error: String,
}

/// A Redis connection: its command and reply streams.
#[derive(Debug)]
pub struct Session {
    commands: Stream,
    replies: Stream,
    shared: Shared,
    pub problems: Problems,
    /// Times the pairing of commands and replies was lost (see the module doc).
    pub desyncs: u64,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    pub fn new() -> Self {
        Self {
            commands: Stream::new(Side::Requests),
            replies: Stream::new(Side::Answers),
            shared: Shared::default(),
            problems: Problems::default(),
            desyncs: 0,
        }
    }
}

impl Exchanges for Session {
    /// Feeds one transfer of `side`; complete messages go to `out`.
    fn feed(&mut self, side: Side, t: Transfer<'_>, out: &mut Vec<(Side, Message)>) {
        if side == Side::Requests
            && self.replies.state == State::Unframed
            && self.commands.at_boundary()
            && !t.data.is_empty()
        {
            // The client sends its next command: the reply it waited for is over.
            self.replies.finish_unframed(&mut self.shared, out);
        }
        let (stream, other) = match side {
            Side::Requests => (&mut self.commands, &mut self.replies),
            Side::Answers => (&mut self.replies, &mut self.commands),
        };
        if stream.feed(t, &mut self.shared, &mut self.problems, out) == Outcome::Lost {
            // Which reply answers which command is unknown from here on.
            stream.lose();
            other.lose();
            self.desyncs += 1;
        }
    }

    /// Bytes were missed: the connection cannot be followed for now.
    fn gap(&mut self, _side: Side) {
        if self.commands.state != State::Lost || self.replies.state != State::Lost {
            self.desyncs += 1;
        }
        self.commands.lose();
        self.replies.lose();
    }

    /// The connection has been quiet: a reply left open is over, and a connection
    /// whose framing was lost is followed again (every command has had its answer
    /// by now, so counting starts afresh).
    fn resync_if_quiet(&mut self, out: &mut Vec<(Side, Message)>) {
        if self.replies.state == State::Unframed {
            self.replies.finish_unframed(&mut self.shared, out);
        }
        if self.commands.state == State::Lost || self.replies.state == State::Lost {
            self.commands = Stream::new(Side::Requests);
            self.replies = Stream::new(Side::Answers);
            self.shared = Shared::default();
        }
    }

    /// The connection ended: a reply left open ends with it.
    fn end(&mut self, out: &mut Vec<(Side, Message)>) {
        if self.replies.state == State::Unframed {
            self.replies.finish_unframed(&mut self.shared, out);
        }
    }

    fn held_bytes(&self) -> usize {
        [&self.commands, &self.replies]
            .iter()
            .map(|s| s.line.capacity() + s.kept.capacity() + s.open.capacity() * 8)
            .sum()
    }

    fn take_problems(&mut self) -> (Problems, u64) {
        (
            std::mem::take(&mut self.problems),
            std::mem::take(&mut self.desyncs),
        )
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Followed,
    Lost,
}

impl Stream {
    fn new(side: Side) -> Self {
        Self {
            side,
            state: State::Line,
            line: Vec::new(),
            line_len: 0,
            line_last: 0,
            open: Vec::new(),
            current: None,
            push: false,
            name_next: false,
            keep: Keep::Nothing,
            kept: Vec::new(),
            error: String::new(),
        }
    }

    fn at_boundary(&self) -> bool {
        self.state == State::Line && self.current.is_none()
    }

    fn lose(&mut self) {
        if self.state != State::Pushes {
            self.state = State::Lost;
        }
        self.current = None;
        self.open.clear();
        self.line.clear();
        self.line_len = 0;
    }

    fn feed(
        &mut self,
        t: Transfer<'_>,
        shared: &mut Shared,
        problems: &mut Problems,
        out: &mut Vec<(Side, Message)>,
    ) -> Outcome {
        let len = t.len as usize;
        let data = &t.data[..t.data.len().min(len)];
        let mut pos = 0usize;
        match self.state {
            State::Pushes | State::Lost => return Outcome::Followed,
            State::Unframed => {
                // More of the reply left open.
                if let Some(m) = &mut self.current {
                    m.bytes += u64::from(t.len);
                    m.touch(&t);
                }
                return Outcome::Followed;
            }
            _ => {}
        }
        while pos < len {
            match self.state {
                State::Pushes | State::Lost | State::Unframed => return Outcome::Followed,
                State::Bulk(left) => {
                    let n = left.min((len - pos) as u64) as usize;
                    if self.keep != Keep::Nothing && self.kept.len() < KEEP {
                        // Keep the payload's first bytes, as far as captured (the
                        // two last bytes of `left` are the CRLF).
                        let payload_left = left.saturating_sub(2) as usize;
                        let end = (pos + n.min(payload_left)).min(data.len());
                        if pos < end {
                            let room = KEEP - self.kept.len();
                            let take = (end - pos).min(room);
                            self.kept.extend_from_slice(&data[pos..pos + take]);
                        }
                    }
                    pos += n;
                    if let Some(m) = &mut self.current {
                        m.bytes += n as u64;
                    }
                    let left = left - n as u64;
                    if left > 0 {
                        self.state = State::Bulk(left);
                        continue;
                    }
                    self.state = State::Line;
                    self.bulk_done();
                    if self.element_done(&t, shared, out) == Outcome::Lost {
                        problems.malformed += 1;
                        return Outcome::Lost;
                    }
                }
                State::Line => {
                    if pos >= data.len() {
                        // The rest of the transfer lies beyond the capture.
                        return self.beyond_capture(&t, pos, shared.waiting, problems);
                    }
                    if self.current.is_none() {
                        self.current = Some(Message::starting(
                            L7::Redis(RedisFrame::Reply {
                                error: String::new(),
                            }),
                            t.seq.wrapping_add(pos as u32),
                            &t,
                        ));
                        self.push = false;
                        self.error.clear();
                    }
                    let rest = &data[pos..];
                    let (part, complete) = match rest.iter().position(|&b| b == b'\n') {
                        Some(i) => (&rest[..=i], true),
                        None => (rest, false),
                    };
                    let content = if complete {
                        &part[..part.len() - 1]
                    } else {
                        part
                    };
                    let room = (KEEP + 1).saturating_sub(self.line.len());
                    self.line
                        .extend_from_slice(&content[..content.len().min(room)]);
                    self.line_len += content.len();
                    if let Some(&last) = content.last() {
                        self.line_last = last;
                    }
                    pos += part.len();
                    if let Some(m) = &mut self.current {
                        m.bytes += part.len() as u64;
                    }
                    if self.line_len > MAX_LINE {
                        problems.malformed += 1;
                        return Outcome::Lost;
                    }
                    if !complete {
                        continue;
                    }
                    let mut line = std::mem::take(&mut self.line);
                    let (line_len, cr) = (self.line_len, self.line_last == b'\r');
                    self.line_len = 0;
                    self.line_last = 0;
                    if !cr {
                        // RESP lines end with CRLF.
                        problems.malformed += 1;
                        return Outcome::Lost;
                    }
                    // Drop the CR when it was kept; a longer line keeps its start.
                    line.truncate((line_len - 1).min(KEEP));
                    if self.header(&line, &t, shared, out) == Outcome::Lost {
                        problems.malformed += 1;
                        return Outcome::Lost;
                    }
                }
            }
        }
        Outcome::Followed
    }

    /// The transfer goes on beyond the captured bytes at a header.
    fn beyond_capture(
        &mut self,
        t: &Transfer<'_>,
        pos: usize,
        waiting: u64,
        problems: &mut Problems,
    ) -> Outcome {
        let answers_the_only_command = self.side == Side::Answers && !self.push && waiting == 1;
        if answers_the_only_command {
            problems.unframed += 1;
            let m = self.current.get_or_insert_with(|| {
                // The reply starts where the capture ends.
                Message::starting(
                    L7::Redis(RedisFrame::Reply {
                        error: String::new(),
                    }),
                    t.seq.wrapping_add(pos as u32),
                    t,
                )
            });
            m.bytes += (t.len as usize - pos) as u64;
            m.touch(t);
            self.state = State::Unframed;
            return Outcome::Followed;
        }
        problems.truncated += 1;
        Outcome::Lost
    }

    /// One complete header line (with its CRLF).
    fn header(
        &mut self,
        line: &[u8],
        t: &Transfer<'_>,
        shared: &mut Shared,
        out: &mut Vec<(Side, Message)>,
    ) -> Outcome {
        let Some((&kind, rest)) = line.split_first() else {
            return Outcome::Lost;
        };
        let top = self.open.is_empty();
        if top && self.side == Side::Requests && kind != b'*' {
            // Commands are arrays (inline commands are not followed).
            return Outcome::Lost;
        }
        let name_next = std::mem::take(&mut self.name_next);
        match kind {
            b'+' | b':' | b'_' | b',' | b'#' | b'(' => self.element_done(t, shared, out),
            b'-' => {
                if top {
                    self.error = error_code(rest);
                }
                self.element_done(t, shared, out)
            }
            b'$' | b'!' | b'=' => {
                let Some(n) = length(rest) else {
                    return Outcome::Lost;
                };
                if n < 0 {
                    // A null bulk string.
                    return self.element_done(t, shared, out);
                }
                self.keep = if name_next {
                    Keep::CommandName
                } else if kind == b'!' && top {
                    Keep::ErrorCode
                } else {
                    Keep::Nothing
                };
                self.kept.clear();
                self.state = State::Bulk(n as u64 + 2);
                Outcome::Followed
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let Some(n) = length(rest) else {
                    return Outcome::Lost;
                };
                if top && kind == b'>' {
                    self.push = true;
                }
                let elements = match kind {
                    b'%' => n.saturating_mul(2),
                    // An attribute map comes before the value it describes.
                    b'|' => n.saturating_mul(2).saturating_add(1),
                    _ => n,
                };
                if elements <= 0 {
                    // Empty or null.
                    return self.element_done(t, shared, out);
                }
                if self.open.len() == MAX_DEPTH {
                    return Outcome::Lost;
                }
                self.open.push(elements as u64);
                if top && self.side == Side::Requests {
                    self.name_next = true;
                }
                Outcome::Followed
            }
            _ => Outcome::Lost,
        }
    }

    /// A bulk payload was skipped: what it was kept for gets it.
    fn bulk_done(&mut self) {
        let kept = std::mem::take(&mut self.kept);
        match std::mem::replace(&mut self.keep, Keep::Nothing) {
            Keep::Nothing => {}
            Keep::CommandName => {
                if let Some(Message {
                    l7: L7::Redis(frame),
                    ..
                }) = &mut self.current
                {
                    *frame = RedisFrame::Command {
                        name: command_name(&kept),
                    };
                }
            }
            Keep::ErrorCode => self.error = error_code(&kept),
        }
    }

    /// An element (scalar, bulk or whole aggregate) is complete.
    fn element_done(
        &mut self,
        t: &Transfer<'_>,
        shared: &mut Shared,
        out: &mut Vec<(Side, Message)>,
    ) -> Outcome {
        while let Some(left) = self.open.last_mut() {
            *left -= 1;
            if *left > 0 {
                return Outcome::Followed;
            }
            self.open.pop();
        }
        // The message is complete.
        let Some(mut m) = self.current.take() else {
            return Outcome::Followed;
        };
        m.touch(t);
        match self.side {
            Side::Requests => {
                let L7::Redis(frame) = &mut m.l7 else {
                    return Outcome::Lost;
                };
                if !frame.is_command() {
                    // The array did not start with a bulk string.
                    *frame = RedisFrame::Command {
                        name: String::new(),
                    };
                }
                let subscribing = matches!(frame, RedisFrame::Command { name }
                    if SUBSCRIBING.contains(&name.as_str()));
                shared.waiting += 1;
                out.push((Side::Requests, m));
                if subscribing {
                    shared.subscribed = true;
                    self.state = State::Pushes;
                }
            }
            Side::Answers => {
                if self.push {
                    // Answers no command.
                    return Outcome::Followed;
                }
                m.l7 = L7::Redis(RedisFrame::Reply {
                    error: std::mem::take(&mut self.error),
                });
                shared.waiting = shared.waiting.saturating_sub(1);
                out.push((Side::Answers, m));
                if shared.subscribed && shared.waiting == 0 {
                    self.state = State::Pushes;
                }
            }
        }
        Outcome::Followed
    }

    /// Ends the reply left open (see the module doc).
    fn finish_unframed(&mut self, shared: &mut Shared, out: &mut Vec<(Side, Message)>) {
        if let Some(mut m) = self.current.take() {
            m.l7 = L7::Redis(RedisFrame::Reply {
                error: std::mem::take(&mut self.error),
            });
            shared.waiting = shared.waiting.saturating_sub(1);
            out.push((Side::Answers, m));
        }
        self.open.clear();
        self.state = State::Line;
    }
}

/// A RESP length or count (`-1` for null).
fn length(digits: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(digits).ok()?;
    let n: i64 = s.parse().ok()?;
    (n >= -1).then_some(n)
}

/// A command's name: letters (and the dots of module commands), upper case.
fn command_name(bytes: &[u8]) -> String {
    if bytes.is_empty()
        || bytes.len() > KEEP
        || !bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'|'))
    {
        return String::new();
    }
    String::from_utf8_lossy(bytes).to_ascii_uppercase()
}

/// An error reply's code: its first word when it is one (`WRONGTYPE`), else `ERR`.
fn error_code(message: &[u8]) -> String {
    let word = message.split(|&b| b == b' ').next().unwrap_or_default();
    if !word.is_empty()
        && word.len() <= KEEP
        && word
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
    {
        String::from_utf8_lossy(word).into_owned()
    } else {
        "ERR".into()
    }
}

/// Whether a transfer starts with a Redis command: an array whose first element
/// is a bulk string naming a known command (or a module's `NAME.SUB`). A reply
/// array of strings that happens to start with a command's name is the risk
/// this guards against, for connections seen mid-way.
pub fn looks_like_command(data: &[u8]) -> bool {
    let Some(rest) = data.strip_prefix(b"*") else {
        return false;
    };
    let mut lines = rest.split(|&b| b == b'\n');
    let (Some(count), Some(len), Some(name)) = (lines.next(), lines.next(), lines.next()) else {
        return false;
    };
    let count = count.strip_suffix(b"\r").and_then(length);
    let len = len
        .strip_suffix(b"\r")
        .and_then(|l| l.strip_prefix(b"$"))
        .and_then(length);
    let (Some(count), Some(len), Some(name)) = (count, len, name.strip_suffix(b"\r")) else {
        return false;
    };
    if count < 1 || len < 1 || name.len() != len as usize {
        return false;
    }
    let name = command_name(name);
    KNOWN_COMMANDS.binary_search(&name.as_str()).is_ok()
        || name
            .split_once('.')
            .is_some_and(|(m, c)| !m.is_empty() && !c.is_empty())
}

/// Redis command names (sorted), for [`looks_like_command`].
const KNOWN_COMMANDS: &[&str] = &[
    "ACL",
    "APPEND",
    "ASKING",
    "AUTH",
    "BGREWRITEAOF",
    "BGSAVE",
    "BITCOUNT",
    "BITFIELD",
    "BITFIELD_RO",
    "BITOP",
    "BITPOS",
    "BLMOVE",
    "BLMPOP",
    "BLPOP",
    "BRPOP",
    "BRPOPLPUSH",
    "BZMPOP",
    "BZPOPMAX",
    "BZPOPMIN",
    "CLIENT",
    "CLUSTER",
    "COMMAND",
    "CONFIG",
    "COPY",
    "DBSIZE",
    "DECR",
    "DECRBY",
    "DEL",
    "DISCARD",
    "DUMP",
    "ECHO",
    "EVAL",
    "EVALSHA",
    "EVALSHA_RO",
    "EVAL_RO",
    "EXEC",
    "EXISTS",
    "EXPIRE",
    "EXPIREAT",
    "EXPIRETIME",
    "FCALL",
    "FCALL_RO",
    "FLUSHALL",
    "FLUSHDB",
    "FUNCTION",
    "GEOADD",
    "GEODIST",
    "GEOHASH",
    "GEOPOS",
    "GEORADIUS",
    "GEORADIUSBYMEMBER",
    "GEOSEARCH",
    "GEOSEARCHSTORE",
    "GET",
    "GETBIT",
    "GETDEL",
    "GETEX",
    "GETRANGE",
    "GETSET",
    "HDEL",
    "HELLO",
    "HEXISTS",
    "HGET",
    "HGETALL",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HKEYS",
    "HLEN",
    "HMGET",
    "HMSET",
    "HRANDFIELD",
    "HSCAN",
    "HSET",
    "HSETNX",
    "HSTRLEN",
    "HVALS",
    "INCR",
    "INCRBY",
    "INCRBYFLOAT",
    "INFO",
    "KEYS",
    "LASTSAVE",
    "LCS",
    "LINDEX",
    "LINSERT",
    "LLEN",
    "LMOVE",
    "LMPOP",
    "LPOP",
    "LPOS",
    "LPUSH",
    "LPUSHX",
    "LRANGE",
    "LREM",
    "LSET",
    "LTRIM",
    "MEMORY",
    "MGET",
    "MIGRATE",
    "MONITOR",
    "MOVE",
    "MSET",
    "MSETNX",
    "MULTI",
    "OBJECT",
    "PERSIST",
    "PEXPIRE",
    "PEXPIREAT",
    "PEXPIRETIME",
    "PFADD",
    "PFCOUNT",
    "PFMERGE",
    "PING",
    "PSETEX",
    "PSUBSCRIBE",
    "PTTL",
    "PUBLISH",
    "PUBSUB",
    "PUNSUBSCRIBE",
    "QUIT",
    "RANDOMKEY",
    "READONLY",
    "READWRITE",
    "RENAME",
    "RENAMENX",
    "RESET",
    "RESTORE",
    "ROLE",
    "RPOP",
    "RPOPLPUSH",
    "RPUSH",
    "RPUSHX",
    "SADD",
    "SAVE",
    "SCAN",
    "SCARD",
    "SCRIPT",
    "SDIFF",
    "SDIFFSTORE",
    "SELECT",
    "SET",
    "SETBIT",
    "SETEX",
    "SETNX",
    "SETRANGE",
    "SINTER",
    "SINTERCARD",
    "SINTERSTORE",
    "SISMEMBER",
    "SMEMBERS",
    "SMISMEMBER",
    "SMOVE",
    "SORT",
    "SORT_RO",
    "SPOP",
    "SPUBLISH",
    "SRANDMEMBER",
    "SREM",
    "SSCAN",
    "SSUBSCRIBE",
    "STRLEN",
    "SUBSCRIBE",
    "SUNION",
    "SUNIONSTORE",
    "SUNSUBSCRIBE",
    "SWAPDB",
    "TIME",
    "TOUCH",
    "TTL",
    "TYPE",
    "UNLINK",
    "UNSUBSCRIBE",
    "UNWATCH",
    "WAIT",
    "WAITAOF",
    "WATCH",
    "XACK",
    "XADD",
    "XAUTOCLAIM",
    "XCLAIM",
    "XDEL",
    "XGROUP",
    "XINFO",
    "XLEN",
    "XPENDING",
    "XRANGE",
    "XREAD",
    "XREADGROUP",
    "XREVRANGE",
    "XSETID",
    "XTRIM",
    "ZADD",
    "ZCARD",
    "ZCOUNT",
    "ZDIFF",
    "ZDIFFSTORE",
    "ZINCRBY",
    "ZINTER",
    "ZINTERCARD",
    "ZINTERSTORE",
    "ZLEXCOUNT",
    "ZMPOP",
    "ZMSCORE",
    "ZPOPMAX",
    "ZPOPMIN",
    "ZRANDMEMBER",
    "ZRANGE",
    "ZRANGEBYLEX",
    "ZRANGEBYSCORE",
    "ZRANGESTORE",
    "ZRANK",
    "ZREM",
    "ZREMRANGEBYLEX",
    "ZREMRANGEBYRANK",
    "ZREMRANGEBYSCORE",
    "ZREVRANGE",
    "ZREVRANGEBYLEX",
    "ZREVRANGEBYSCORE",
    "ZREVRANK",
    "ZSCAN",
    "ZSCORE",
    "ZUNION",
    "ZUNIONSTORE",
];

#[cfg(test)]
mod tests;
