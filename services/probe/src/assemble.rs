//! Request ↔ response pairing into eSpans.
//!
//! Each connection gets a role from its first request: read by the process → it
//! is the SERVER side; written → CLIENT. Responses answer requests in order
//! (HTTP/1.x pipelining keeps order), except on HTTP/2, where a response
//! answers the request on its stream. A thread that has read a server request
//! and not yet answered it is "serving" that span; a client request written by
//! that thread gets it as `local_parent_id` (the thread rule). The rule is used
//! only where it is sound ([`crate::runtime`]): for thread-per-request servers,
//! until one of the process's threads is seen serving two requests at once.
//! Event loops (Node.js, nginx, a process seen multiplexing) go by the turn rule
//! ([`crate::turns`]), and so does Go with the whole process's requests counted
//! as runnable. Every client span left without a parent is counted with the
//! reason ([`ParentUnset`]).
//!
//! A socket's CLOSE does not always come after the last bytes its process reads:
//! on a reset the socket reaches CLOSE at once, and the bytes queued before it
//! are read afterwards. A connection that closes with requests unanswered
//! therefore lingers for [`LINGER_NS`]: bytes read later from the same socket
//! (same process, same addresses, continuing the stream's sequence numbers)
//! still complete its messages; then its unanswered requests become spans with
//! an error.
//!
//! Memory is bounded ([`Limits`]): at most `max_conns` connections are
//! followed (beyond, the least recently active eighth is forgotten); the bytes
//! all parsers hold for messages still being read (partial heads, prepared
//! statements) stay under `held_budget` (beyond, the connections holding most
//! are forgotten); a connection with more than [`MAX_WAITING`] requests
//! unanswered is not followed until it closes (a flood, or an answer never
//! seen). Each is counted; a forgotten connection's waiting requests become
//! spans with an error, and its later bytes start it afresh.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;

use espan::wire::{Db, ESpan, Endpoint, Grpc, Http, Protocol, SpanKind};

use crate::conn::{Conn, Direction};
use crate::message::{L7, Message, MysqlFrame, PgFrame, RedisFrame, Transfer};
use crate::runtime::Runtime;
use crate::sql;
use crate::turns::Turns;

/// How long a connection closed with requests unanswered waits for bytes read
/// after its CLOSE (ns).
pub const LINGER_NS: u64 = 2_000_000_000;

/// How long a connection stays quiet before a message left open without
/// framing (see [`crate::http1`]) is taken as ended (ns).
pub const UNFRAMED_QUIET_NS: u64 = 1_000_000_000;

/// Requests waiting for their answers on one connection beyond which it is
/// not followed (until it closes).
pub const MAX_WAITING: usize = 1024;

/// How much the assembler may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections followed at once.
    pub max_conns: usize,
    /// Bytes held by all parsers for messages not yet complete.
    pub held_budget: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_conns: 65_536,
            held_budget: 64 << 20,
        }
    }
}

/// What the assembler counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AssembleStats {
    pub spans: u64,
    /// Client requests whose thread served several requests: parent left 0.
    pub ambiguous_parent: u64,
    /// Requests that never got a response (connection closed or evicted).
    pub unanswered: u64,
    /// Responses with no request waiting, or messages against the connection's role.
    pub unmatched: u64,
    pub malformed: u64,
    pub truncated: u64,
    pub gaps: u64,
    /// Connections dropped for being idle too long.
    pub evicted: u64,
    /// Transfers read from a socket after its CLOSE (queued before a reset).
    pub after_close: u64,
    /// Messages whose framing lay beyond the capture (see [`crate::http1`],
    /// [`crate::resp`]).
    pub unframed: u64,
    /// Header fields that could not be read (see [`crate::h2`]).
    pub unknown_headers: u64,
    /// Times a connection's pairing of requests and answers was lost (Redis,
    /// see [`crate::resp`]); its waiting requests count as unanswered.
    pub desyncs: u64,
    /// Client spans left without a parent, by [`ParentUnset`] reason.
    pub parent_unset: [u64; ParentUnset::ALL.len()],
    /// Connections forgotten because `max_conns` were followed.
    pub evicted_over_cap: u64,
    /// Connections forgotten because the parsers held more than `held_budget`.
    pub evicted_over_budget: u64,
    /// Connections no longer followed for more than [`MAX_WAITING`] requests waiting.
    pub flooded: u64,
}

/// Why a client span's `local_parent_id` is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentUnset {
    /// Thread rule: its thread was serving no request (a root call, or a call
    /// handed to another thread, such as a pool worker).
    NotServing,
    /// Turn rule ([`crate::turns`]): it was not written right after the event
    /// that woke the one request runnable on its thread.
    NoSoleTurn,
    /// Turn rule in a Go process (see [`crate::turns`]): as `NoSoleTurn`,
    /// with the whole process's requests as the runnable ones.
    Go,
}

impl ParentUnset {
    /// Every reason, in the order of [`AssembleStats::parent_unset`].
    pub const ALL: [ParentUnset; 3] = [
        ParentUnset::NotServing,
        ParentUnset::NoSoleTurn,
        ParentUnset::Go,
    ];

    /// Its metric label.
    pub fn label(self) -> &'static str {
        match self {
            ParentUnset::NotServing => "not_serving",
            ParentUnset::NoSoleTurn => "no_sole_turn",
            ParentUnset::Go => "go",
        }
    }

    fn index(self) -> usize {
        ParentUnset::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(0)
    }
}

/// Names for a process's spans, and its runtime.
#[derive(Debug, Clone, Default)]
pub struct ProcInfo {
    pub comm: String,
    pub service: String,
    pub runtime: Runtime,
}

/// One transfer on a connection, as decoded from a kernel record.
#[derive(Debug, Clone, Copy)]
pub struct DataIn<'a> {
    pub pid: u32,
    pub sk: u64,
    pub dir: Direction,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Where the other direction's counter stood (kernel records always have it).
    pub other_seq: Option<u32>,
    pub transfer: Transfer<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Server,
    Client,
}

impl Role {
    /// The direction of this side's responses.
    fn answers(self) -> Direction {
        match self {
            Role::Server => Direction::Egress,
            Role::Client => Direction::Ingress,
        }
    }
}

struct Pending {
    span_id: u64,
    parent: u64,
    msg: Message,
}

struct Entry {
    conn: Conn,
    role: Option<Role>,
    pending: VecDeque<Pending>,
    /// The process's names when the connection was first seen: it may be gone
    /// (and forgotten) by the time a lingering connection's spans are made.
    info: Option<ProcInfo>,
    /// When the socket reached CLOSE (monotonic ns) with requests unanswered.
    closed_ns: Option<u64>,
    /// The last egress transfers' first sequence numbers, each with the request
    /// whose turn it was written in (see [`crate::turns`]), if one alone.
    egress_turns: VecDeque<(u32, Option<u64>)>,
    /// Bytes its parsers held when last measured (part of `Assembler::held`).
    held: u64,
    /// Flooded (see [`MAX_WAITING`]): its bytes are ignored until it closes.
    ignored: bool,
}

/// Egress transfers per connection whose turn is remembered until their
/// message completes.
const EGRESS_TURNS: usize = 4;

/// Turns transfers into eSpans.
pub struct Assembler {
    conns: HashMap<u64, Entry>,
    /// tid → server spans it has read and not answered.
    serving: Serving,
    /// Processes one of whose threads served several requests at once.
    multiplexing: HashSet<u32>,
    /// The turn rule's state.
    turns: Turns,
    /// What the messages completed by the transfer being fed woke: a request
    /// (its server span) or something else (None).
    woke: Vec<Option<u64>>,
    /// Added to CLOCK_MONOTONIC ns to get wall-clock ns.
    wall_offset: i128,
    limits: Limits,
    /// Bytes all parsers hold (the entries' `held`, summed).
    held: u64,
    host: String,
    /// A connection the last transfer showed to speak HTTP/2.
    h2_found: Option<u64>,
    pub stats: AssembleStats,
}

fn random_span_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

/// Wall clock minus CLOCK_MONOTONIC, in ns (the kernel stamps events with the latter).
pub fn measure_wall_offset() -> i128 {
    let mut mono = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut mono) };
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    wall - (mono.tv_sec as i128 * 1_000_000_000 + mono.tv_nsec as i128)
}

impl Assembler {
    pub fn new(host: String, wall_offset: i128) -> Self {
        Self::with_limits(host, wall_offset, Limits::default())
    }

    /// An assembler holding at most what `limits` allow.
    pub fn with_limits(host: String, wall_offset: i128, limits: Limits) -> Self {
        Self {
            limits,
            held: 0,
            conns: HashMap::new(),
            serving: Serving::default(),
            multiplexing: HashSet::new(),
            turns: Turns::default(),
            woke: Vec::new(),
            wall_offset,
            host,
            h2_found: None,
            stats: AssembleStats::default(),
        }
    }

    /// Where `sk`'s stream in `dir` expects its next transfer to start (None
    /// for a connection not followed, or a stream not seen yet).
    pub fn next_seq(&self, sk: u64, dir: Direction) -> Option<u32> {
        self.conns
            .get(&sk)
            .filter(|e| !e.ignored)
            .and_then(|e| e.conn.next_seq(dir))
    }

    /// The socket the last transfer showed to speak HTTP/2. The kernel finds
    /// most by their preface; one seen mid-way (or whose preface came in
    /// pieces) only user space can tell.
    pub fn take_h2_found(&mut self) -> Option<u64> {
        self.h2_found.take()
    }

    fn wall(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.wall_offset).clamp(1, u64::MAX as i128) as u64
    }

    /// Connections being followed.
    pub fn conns(&self) -> usize {
        self.conns.len()
    }

    /// Bytes the parsers hold for messages not yet complete.
    pub fn held_bytes(&self) -> u64 {
        self.held
    }

    /// Requests seen whose answer has not come yet, on every connection.
    pub fn requests_waiting(&self) -> u64 {
        self.conns.values().map(|e| e.pending.len() as u64).sum()
    }

    /// Feeds one transfer; finished spans go to `out`.
    pub fn on_data(
        &mut self,
        d: DataIn<'_>,
        procs: &dyn Fn(u32) -> Option<ProcInfo>,
        out: &mut Vec<ESpan>,
    ) {
        // Whose turn the thread is in, before this transfer ends it.
        let (tid, now_ns) = (d.transfer.tid, d.transfer.ts_ns);
        let turn = match d.dir {
            Direction::Egress => {
                let runtime = match self.conns.get(&d.sk) {
                    Some(e) if e.conn.pid == d.pid => e.info.as_ref().map(|i| i.runtime),
                    _ => procs(d.pid).map(|i| i.runtime),
                };
                let served = self.serving.of(runtime.unwrap_or_default(), d.pid, tid);
                self.turns.sole_woken(tid, served, now_ns)
            }
            Direction::Ingress => None,
        };
        self.turns.set_last(tid, None, now_ns);
        let (mut reused, mut late) = (false, false);
        if let Some(e) = self.conns.get(&d.sk) {
            // A socket that reached CLOSE has given its local port back (the
            // kernel reads 0 there): bytes read after the close show it so.
            let port_given_back = e.closed_ns.is_some() && d.local.port() == 0;
            reused = e.conn.pid != d.pid
                || e.conn.remote != d.remote
                || e.conn.local.ip() != d.local.ip()
                || (e.conn.local.port() != d.local.port() && !port_given_back);
            if e.closed_ns.is_some() && !reused {
                // Bytes after CLOSE belong to the closed connection only if they
                // continue its stream; otherwise the socket is another one now.
                late = e.conn.continues(d.dir, d.transfer.seq);
                reused = !late;
            }
        }
        if reused {
            // The kernel reused the socket's memory for another connection.
            self.finish(d.sk, procs, out);
        }
        if late {
            self.stats.after_close += 1;
        }
        if !self.conns.contains_key(&d.sk) && self.conns.len() >= self.limits.max_conns {
            self.evict_least_recent(procs, out);
        }
        let entry = self.conns.entry(d.sk).or_insert_with(|| Entry {
            conn: Conn::new(d.pid, d.local, d.remote),
            role: None,
            pending: VecDeque::new(),
            info: procs(d.pid),
            closed_ns: None,
            egress_turns: VecDeque::new(),
            held: 0,
            ignored: false,
        });
        if entry.ignored {
            return;
        }
        // Answers missed (bytes of them never seen, so how many is unknown) leave
        // the requests waiting without theirs: a later answer must not be paired
        // with them. Missed bytes show as a transfer that does not continue its
        // stream, or as the other direction's record saying where it stands.
        let answer_dir = entry.role.map(Role::answers);
        let mut missed = false;
        if let Some(pos) = d.other_seq {
            let other = d.dir.opposite();
            missed = entry.conn.sync(other, pos) && answer_dir == Some(other);
        }
        missed |= answer_dir == Some(d.dir) && !entry.conn.continues(d.dir, d.transfer.seq);
        let (p, desyncs) = entry.conn.take_problems();
        self.stats.gaps += p.gaps;
        self.stats.desyncs += desyncs;
        if missed || desyncs > 0 {
            self.abandon(d.sk, procs, out);
        }
        let Some(entry) = self.conns.get_mut(&d.sk) else {
            return;
        };
        if d.dir == Direction::Egress {
            // Remember whose turn this write is in, should a request start here.
            if entry.egress_turns.len() == EGRESS_TURNS {
                entry.egress_turns.pop_front();
            }
            entry.egress_turns.push_back((d.transfer.seq, turn));
        }
        self.woke.clear();
        let mut messages = Vec::new();
        entry.conn.feed(d.dir, d.transfer, &mut messages);
        if entry.conn.take_h2_found() {
            self.h2_found = Some(d.sk);
        }
        let held = entry.conn.held_bytes() as u64;
        self.held = self.held - entry.held + held;
        entry.held = held;
        let (p, desyncs) = entry.conn.take_problems();
        self.stats.malformed += p.malformed;
        self.stats.truncated += p.truncated;
        self.stats.gaps += p.gaps;
        self.stats.unframed += p.unframed;
        self.stats.unknown_headers += p.unknown_headers;
        self.stats.desyncs += desyncs;
        for (dir, msg) in messages {
            self.on_message(d.sk, dir, msg, procs, out);
        }
        // This transfer is now the thread's last event: it woke one request, or
        // did something else.
        let woke = match self.woke.as_slice() {
            [Some(request)] => Some(*request),
            _ => None,
        };
        self.turns.set_last(tid, woke, now_ns);
        if (answer_dir == Some(d.dir) && p.malformed + p.truncated + p.gaps > 0) || desyncs > 0 {
            // The answer being read is lost (a head beyond the capture, garbage),
            // or which answer is whose is.
            self.abandon(d.sk, procs, out);
        }
        if self
            .conns
            .get(&d.sk)
            .is_some_and(|e| e.closed_ns.is_some() && e.pending.is_empty())
        {
            // A closed connection's last answer came: nothing more to wait for.
            self.finish(d.sk, procs, out);
        }
        if self.held > self.limits.held_budget {
            self.evict_over_budget(procs, out);
        }
    }

    /// `max_conns` are followed: forgets the least recently active eighth.
    fn evict_least_recent(
        &mut self,
        procs: &dyn Fn(u32) -> Option<ProcInfo>,
        out: &mut Vec<ESpan>,
    ) {
        let mut by_age: Vec<(u64, u64)> = self
            .conns
            .iter()
            .map(|(&sk, e)| (e.conn.last_ns, sk))
            .collect();
        let n = (by_age.len() / 8).max(1);
        by_age.select_nth_unstable(n - 1);
        for &(_, sk) in &by_age[..n] {
            self.stats.evicted_over_cap += 1;
            self.forget(sk, procs, out);
        }
    }

    /// The parsers hold more than `held_budget`: forgets the connections that
    /// hold most until they hold at most three quarters of it.
    fn evict_over_budget(&mut self, procs: &dyn Fn(u32) -> Option<ProcInfo>, out: &mut Vec<ESpan>) {
        let mut by_held: Vec<(u64, u64)> = self
            .conns
            .iter()
            .filter(|(_, e)| e.held > 0)
            .map(|(&sk, e)| (e.held, sk))
            .collect();
        by_held.sort_unstable_by(|a, b| b.cmp(a));
        let target = self.limits.held_budget / 4 * 3;
        for (_, sk) in by_held {
            if self.held <= target {
                break;
            }
            self.stats.evicted_over_budget += 1;
            self.forget(sk, procs, out);
        }
    }

    /// Stops following `sk`: its waiting requests become spans with an error.
    fn forget(&mut self, sk: u64, procs: &dyn Fn(u32) -> Option<ProcInfo>, out: &mut Vec<ESpan>) {
        self.abandon(sk, procs, out);
        if let Some(e) = self.conns.remove(&sk) {
            self.held -= e.held;
            self.turns.take_origin(sk);
        }
    }

    fn on_message(
        &mut self,
        sk: u64,
        dir: Direction,
        msg: Message,
        procs: &dyn Fn(u32) -> Option<ProcInfo>,
        out: &mut Vec<ESpan>,
    ) {
        let Some(entry) = self.conns.get_mut(&sk) else {
            return;
        };
        if msg.l7.is_request() {
            let role = if dir == Direction::Ingress {
                Role::Server
            } else {
                Role::Client
            };
            if *entry.role.get_or_insert(role) != role {
                self.stats.unmatched += 1;
                return;
            }
            let span_id = random_span_id();
            let mut parent = 0;
            let pid = entry.conn.pid;
            let runtime = entry.info.as_ref().map(|i| i.runtime).unwrap_or_default();
            match role {
                Role::Server => {
                    if self.serving.add(pid, msg.last_tid, span_id) {
                        // Two requests at once on one thread: not thread-per-request.
                        self.multiplexing.insert(pid);
                    }
                    self.woke.push(Some(span_id));
                }
                Role::Client => {
                    let served = self.serving.of(runtime, pid, msg.first_tid);
                    // A socket's origin is for its first request only, whichever
                    // rule names that one's parent. Not in Go: net/http dials in
                    // a goroutine of its own and gives the new connection to
                    // whichever request waits first.
                    let origin = self
                        .turns
                        .take_origin(sk)
                        .filter(|_| runtime != Runtime::Go);
                    let unset = if runtime.thread_rule() && !self.multiplexing.contains(&pid) {
                        // The thread rule (at most one request per thread here).
                        match served.first() {
                            Some(&one) => {
                                parent = one;
                                None
                            }
                            None => Some(ParentUnset::NotServing),
                        }
                    } else {
                        // The turn rule, by the turn the request's first byte
                        // was written in.
                        let turn = entry
                            .egress_turns
                            .iter()
                            .find(|&&(seq, _)| seq == msg.seq)
                            .and_then(|&(_, turn)| turn);
                        match self
                            .turns
                            .client_call(span_id, origin, turn, served, msg.start_ns)
                        {
                            Some(p) => {
                                parent = p;
                                None
                            }
                            None => {
                                if served.len() > 1 {
                                    self.stats.ambiguous_parent += 1;
                                }
                                Some(match runtime {
                                    Runtime::Go => ParentUnset::Go,
                                    _ => ParentUnset::NoSoleTurn,
                                })
                            }
                        }
                    };
                    if let Some(reason) = unset {
                        self.stats.parent_unset[reason.index()] += 1;
                    }
                    self.woke.push(None);
                }
            }
            entry.pending.push_back(Pending {
                span_id,
                parent,
                msg,
            });
            if entry.pending.len() > MAX_WAITING {
                // A flood (or answers never seen): stop following it until it
                // closes rather than hold every request.
                self.stats.flooded += 1;
                self.abandon(sk, procs, out);
                if let Some(e) = self.conns.get_mut(&sk) {
                    e.ignored = true;
                    self.held -= e.held;
                    e.held = 0;
                    e.conn = Conn::new(e.conn.pid, e.conn.local, e.conn.remote);
                }
            }
            return;
        }
        let Some(expected) = entry.role.map(Role::answers) else {
            self.stats.unmatched += 1;
            return;
        };
        let req = match (dir == expected, msg.stream) {
            (false, _) => None,
            (true, 0) => entry.pending.pop_front(),
            // HTTP/2: the request on the same stream.
            (true, stream) => entry
                .pending
                .iter()
                .position(|p| p.msg.stream == stream)
                .and_then(|i| entry.pending.remove(i)),
        };
        let Some(req) = req else {
            self.stats.unmatched += 1;
            return;
        };
        let role = entry.role.unwrap_or(Role::Client);
        if role == Role::Client {
            // The answer to a call wakes the request it was made for.
            let woken = self.turns.call_ended(req.span_id);
            self.woke.push(woken);
        }
        let (pid, local, remote) = (entry.conn.pid, entry.conn.local, entry.conn.remote);
        let info = procs(pid)
            .or_else(|| entry.info.clone())
            .unwrap_or_default();
        let span = self.span(role, pid, local, remote, sk, req, Some(&msg), info);
        out.push(span);
    }

    #[allow(clippy::too_many_arguments)]
    fn span(
        &mut self,
        role: Role,
        pid: u32,
        local: SocketAddr,
        remote: SocketAddr,
        sk: u64,
        req: Pending,
        resp: Option<&Message>,
        info: ProcInfo,
    ) -> ESpan {
        match role {
            Role::Server => {
                self.turns.served(req.span_id);
                self.serving.remove(pid, req.msg.last_tid, req.span_id);
            }
            Role::Client => {
                self.turns.call_ended(req.span_id);
            }
        }
        let bytes_req = match resp.map(|r| &r.l7) {
            Some(L7::Http2(answer)) => answer.request_bytes,
            _ => req.msg.bytes,
        };
        let bytes_resp = resp.map_or(0, |r| r.bytes);
        let (bytes_in, bytes_out) = match role {
            Role::Server => (bytes_req, bytes_resp),
            Role::Client => (bytes_resp, bytes_req),
        };
        let end = resp.map_or(req.msg.end_ns, |r| r.end_ns.max(req.msg.start_ns));
        self.stats.spans += 1;
        let mut stream_error = None;
        let mut grpc = None;
        let (protocol, http, db, app_trace) = match req.msg.l7 {
            L7::Http2(request) => {
                let answer = match resp.map(|r| &r.l7) {
                    Some(L7::Http2(answer)) => Some(answer),
                    _ => None,
                };
                let is_grpc = request.grpc || answer.is_some_and(|a| a.grpc);
                if is_grpc {
                    grpc = Some(Grpc {
                        status_code: answer.and_then(|a| a.grpc_status),
                        message: answer.map(|a| a.grpc_message.clone()).unwrap_or_default(),
                    });
                }
                if let Some(a) = answer.filter(|a| a.reset) {
                    stream_error = Some(if a.head.status == 0 {
                        "stream reset before the response"
                    } else {
                        "stream reset"
                    });
                }
                (
                    if is_grpc {
                        Protocol::Grpc
                    } else {
                        Protocol::Http2
                    },
                    Some(Http {
                        method: request.head.method,
                        path: request.head.path,
                        version: request.head.version,
                        status: answer.map_or(0, |a| a.head.status),
                        host: request.head.host,
                    }),
                    None,
                    request.head.app_trace,
                )
            }
            L7::Http(head) => (
                Protocol::Http1,
                Some(Http {
                    method: head.method,
                    path: head.path,
                    version: head.version,
                    status: match resp.map(|r| &r.l7) {
                        Some(L7::Http(answer)) => answer.status,
                        _ => 0,
                    },
                    host: head.host,
                }),
                None,
                head.app_trace,
            ),
            L7::Redis(command) => (
                Protocol::Redis,
                None,
                Some(Db {
                    system: "redis".into(),
                    operation: match command {
                        RedisFrame::Command { name } => name,
                        RedisFrame::Reply { .. } => String::new(),
                    },
                    status_code: match resp.map(|r| &r.l7) {
                        Some(L7::Redis(RedisFrame::Reply { error })) => error.clone(),
                        _ => String::new(),
                    },
                    ..Db::default()
                }),
                None,
            ),
            sql @ (L7::Postgres(_) | L7::Mysql(_)) => {
                let status = match resp.map(|r| &r.l7) {
                    Some(
                        L7::Postgres(PgFrame::Result { sqlstate: code })
                        | L7::Mysql(MysqlFrame::Result { error: code }),
                    ) => code.clone(),
                    _ => String::new(),
                };
                let (protocol, system, text) = match sql {
                    L7::Postgres(PgFrame::Query { text }) => {
                        (Protocol::Postgres, "postgresql", text)
                    }
                    L7::Postgres(_) => (Protocol::Postgres, "postgresql", String::new()),
                    L7::Mysql(MysqlFrame::Command { text }) => (Protocol::Mysql, "mysql", text),
                    _ => (Protocol::Mysql, "mysql", String::new()),
                };
                (protocol, None, Some(sql_db(system, &text, status)), None)
            }
        };
        ESpan {
            span_id: req.span_id,
            kind: match role {
                Role::Server => SpanKind::Server,
                Role::Client => SpanKind::Client,
            } as i32,
            protocol: protocol as i32,
            local: Some(Endpoint::from_socket_addr(local)),
            remote: Some(Endpoint::from_socket_addr(remote)),
            req_seq: req.msg.seq,
            resp_seq: resp.map_or(0, |r| r.seq),
            start_ns: self.wall(req.msg.start_ns),
            end_ns: self.wall(end),
            pid,
            tid: req.msg.first_tid,
            comm: info.comm,
            service: info.service,
            local_parent_id: if role == Role::Client { req.parent } else { 0 },
            http,
            db,
            bytes_in,
            bytes_out,
            error: match (resp, stream_error) {
                (None, _) => "connection closed before the response".into(),
                (Some(_), Some(e)) => e.into(),
                (Some(_), None) => String::new(),
            },
            grpc,
            app_trace,
            host: self.host.clone(),
            container_id: String::new(),
            conn_id: sk,
        }
    }

    /// The socket reached CLOSE at `ts_ns` (monotonic): responses that end with
    /// the connection complete. A connection with no request waiting is done; one
    /// with requests waiting lingers (see the module doc) until
    /// [`Assembler::expire`] ends it.
    pub fn close(
        &mut self,
        sk: u64,
        ts_ns: u64,
        procs: &dyn Fn(u32) -> Option<ProcInfo>,
        out: &mut Vec<ESpan>,
    ) {
        self.turns.take_origin(sk);
        let Some(entry) = self.conns.get_mut(&sk) else {
            return;
        };
        if entry.closed_ns.is_some() {
            // Closed again: the socket was reused and closed meanwhile.
            self.finish(sk, procs, out);
            return;
        }
        let mut messages = Vec::new();
        entry.conn.end(&mut messages);
        for (dir, msg) in messages {
            self.on_message(sk, dir, msg, procs, out);
        }
        let Some(entry) = self.conns.get_mut(&sk) else {
            return;
        };
        if entry.pending.is_empty() {
            self.finish(sk, procs, out);
        } else {
            entry.closed_ns = Some(ts_ns);
        }
    }

    /// Ends connections that closed with requests unanswered before
    /// `now_ns - LINGER_NS`: their requests become spans with an error.
    pub fn expire(
        &mut self,
        now_ns: u64,
        procs: &dyn Fn(u32) -> Option<ProcInfo>,
        out: &mut Vec<ESpan>,
    ) {
        self.turns.expire(now_ns);
        let due: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, e)| {
                e.closed_ns
                    .is_some_and(|t| t.saturating_add(LINGER_NS) <= now_ns)
            })
            .map(|(&sk, _)| sk)
            .collect();
        for sk in due {
            self.finish(sk, procs, out);
        }
        // Messages left open without framing end once their connection is quiet.
        let quiet_since = now_ns.saturating_sub(UNFRAMED_QUIET_NS);
        let mut ended = Vec::new();
        let mut messages = Vec::new();
        for (&sk, e) in &mut self.conns {
            e.conn.conclude_quiet(quiet_since, &mut messages);
            ended.extend(messages.drain(..).map(|(dir, m)| (sk, dir, m)));
        }
        for (sk, dir, msg) in ended {
            self.on_message(sk, dir, msg, procs, out);
        }
    }

    /// The answers to the requests waiting on `sk` were lost (missed bytes, a
    /// head beyond the capture): pairing a later answer with them would pair the
    /// wrong messages, so they become spans with an error now.
    fn abandon(&mut self, sk: u64, procs: &dyn Fn(u32) -> Option<ProcInfo>, out: &mut Vec<ESpan>) {
        let Some(entry) = self.conns.get_mut(&sk) else {
            return;
        };
        let waiting: Vec<Pending> = entry.pending.drain(..).collect();
        entry.conn.forget_heads();
        let role = entry.role.unwrap_or(Role::Client);
        let (pid, local, remote) = (entry.conn.pid, entry.conn.local, entry.conn.remote);
        let info = procs(pid)
            .or_else(|| entry.info.clone())
            .unwrap_or_default();
        for req in waiting {
            self.stats.unanswered += 1;
            let mut span = self.span(role, pid, local, remote, sk, req, None, info.clone());
            span.error = "response not captured".into();
            out.push(span);
        }
    }

    /// The connection is over: responses that end with it complete, requests
    /// still waiting become spans with an error.
    fn finish(&mut self, sk: u64, procs: &dyn Fn(u32) -> Option<ProcInfo>, out: &mut Vec<ESpan>) {
        let Some(entry) = self.conns.get_mut(&sk) else {
            return;
        };
        let mut messages = Vec::new();
        entry.conn.close(&mut messages);
        for (dir, msg) in messages {
            self.on_message(sk, dir, msg, procs, out);
        }
        let Some(mut entry) = self.conns.remove(&sk) else {
            return;
        };
        self.held -= entry.held;
        let role = entry.role.unwrap_or(Role::Client);
        while let Some(req) = entry.pending.pop_front() {
            self.stats.unanswered += 1;
            let info = procs(entry.conn.pid)
                .or_else(|| entry.info.clone())
                .unwrap_or_default();
            let span = self.span(
                role,
                entry.conn.pid,
                entry.conn.local,
                entry.conn.remote,
                sk,
                req,
                None,
                info,
            );
            out.push(span);
        }
    }

    /// Forgets connections idle since before `older_than_ns` (monotonic): their
    /// close was missed (or they idle for long); waiting requests are counted.
    pub fn sweep(&mut self, older_than_ns: u64) {
        let stale: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, e)| e.conn.last_ns < older_than_ns)
            .map(|(&sk, _)| sk)
            .collect();
        for sk in stale {
            if let Some(e) = self.conns.remove(&sk) {
                self.held -= e.held;
                self.stats.evicted += 1;
                self.stats.unanswered += e.pending.len() as u64;
                for p in e.pending {
                    self.turns.served(p.span_id);
                    self.turns.call_ended(p.span_id);
                    self.serving.remove(e.conn.pid, p.msg.last_tid, p.span_id);
                }
            }
        }
    }

    /// A process ended (`pid` is also its main thread's id): nothing its main
    /// thread served can be a parent any more, and a new process may take its pid.
    pub fn forget_process(&mut self, pid: u32) {
        self.serving.by_thread.remove(&pid);
        self.serving.by_process.remove(&pid);
        self.multiplexing.remove(&pid);
        self.turns.forget_thread(pid);
    }

    /// Thread `tid` began connecting socket `sk` at `ts_ns` (monotonic).
    pub fn connect(&mut self, tid: u32, sk: u64, ts_ns: u64) {
        // Go's origins are not used (see on_message); the thread's list is
        // enough for the rest.
        let served = self.serving.of(Runtime::Threads, 0, tid);
        self.turns.connect(tid, sk, served, ts_ns);
    }
}

/// The `db` fields of an SQL exchange: the statement without its literals,
/// its summary and operation, the server's error code.
fn sql_db(system: &str, statement: &str, status_code: String) -> Db {
    let query = sql::without_literals(statement);
    let (operation, summary) = sql::summarize(&query);
    Db {
        system: system.into(),
        operation,
        summary,
        query,
        status_code,
    }
}

/// Server spans read and not yet answered, by thread and by process.
#[derive(Debug, Default)]
struct Serving {
    by_thread: HashMap<u32, Vec<u64>>,
    by_process: HashMap<u32, Vec<u64>>,
}

impl Serving {
    /// `span` was read by thread `tid` of `pid`; true if that thread was
    /// already serving another.
    fn add(&mut self, pid: u32, tid: u32, span: u64) -> bool {
        let thread = self.by_thread.entry(tid).or_default();
        let busy = !thread.is_empty();
        thread.push(span);
        self.by_process.entry(pid).or_default().push(span);
        busy
    }

    /// `span` was answered or given up.
    fn remove(&mut self, pid: u32, tid: u32, span: u64) {
        for (map, key) in [(&mut self.by_thread, tid), (&mut self.by_process, pid)] {
            if let Some(list) = map.get_mut(&key) {
                list.retain(|&id| id != span);
                if list.is_empty() {
                    map.remove(&key);
                }
            }
        }
    }

    /// The requests a client call on thread `tid` of `pid` may be made for: the
    /// thread's, or in Go (goroutines move between threads) the process's.
    fn of(&self, runtime: Runtime, pid: u32, tid: u32) -> &[u64] {
        let list = match runtime {
            Runtime::Go => self.by_process.get(&pid),
            _ => self.by_thread.get(&tid),
        };
        list.map_or(&[][..], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SK: u64 = 0xffff_8880_0000_1000;

    fn procs(pid: u32) -> Option<ProcInfo> {
        Some(ProcInfo {
            comm: format!("p{pid}"),
            service: format!("svc{pid}"),
            runtime: Runtime::Threads,
        })
    }

    struct Feed {
        a: Assembler,
        out: Vec<ESpan>,
        ts: u64,
        /// `other_seq` of the next transfer fed.
        other: Option<u32>,
        /// The runtime every process runs on.
        runtime: Runtime,
    }

    impl Feed {
        fn new() -> Self {
            Self {
                a: Assembler::new("h".into(), 1_000_000),
                out: Vec::new(),
                ts: 10,
                other: None,
                runtime: Runtime::Threads,
            }
        }
        fn on(runtime: Runtime) -> Self {
            Self {
                runtime,
                ..Self::new()
            }
        }
        fn connect(&mut self, tid: u32, sk: u64) {
            self.ts += 10;
            self.a.connect(tid, sk, self.ts);
        }
        /// The client span whose request went out on `sk` with `seq`.
        fn client(&self, sk: u64, seq: u32) -> &ESpan {
            self.out
                .iter()
                .find(|s| s.conn_id == sk && s.req_seq == seq && s.kind == SpanKind::Client as i32)
                .expect("the client span")
        }
        /// The server span read on `sk`.
        fn server(&self, sk: u64) -> &ESpan {
            self.out
                .iter()
                .find(|s| s.conn_id == sk && s.kind == SpanKind::Server as i32)
                .expect("the server span")
        }
        #[allow(clippy::too_many_arguments)]
        fn data(
            &mut self,
            pid: u32,
            tid: u32,
            sk: u64,
            dir: Direction,
            seq: u32,
            bytes: &[u8],
            local: u16,
            remote: u16,
        ) {
            self.ts += 10;
            let d = DataIn {
                pid,
                sk,
                dir,
                other_seq: self.other.take(),
                local: SocketAddr::from(([127, 0, 0, 1], local)),
                remote: SocketAddr::from(([127, 0, 0, 1], remote)),
                transfer: Transfer {
                    seq,
                    len: bytes.len() as u32,
                    data: bytes,
                    ts_ns: self.ts,
                    tid,
                },
            };
            let runtime = self.runtime;
            let lookup = move |pid: u32| procs(pid).map(|info| ProcInfo { runtime, ..info });
            self.a.on_data(d, &lookup, &mut self.out);
        }
    }

    const REQ: &[u8] = b"GET /x HTTP/1.1\r\n\r\n";
    const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    #[test]
    fn connections_beyond_the_cap_forget_the_least_recent() {
        let mut f = Feed::new();
        f.a = Assembler::with_limits(
            "h".into(),
            0,
            Limits {
                max_conns: 16,
                held_budget: u64::MAX,
            },
        );
        // 40 connections with a head begun and never finished (a slowloris).
        for i in 0..40u64 {
            f.data(
                1,
                11,
                SK + i,
                Direction::Ingress,
                100,
                b"GET /slow HTTP/1.1\r\nX-A: a",
                80,
                5000 + i as u16,
            );
            assert!(f.a.conns() <= 16);
        }
        assert!(f.a.stats.evicted_over_cap >= 24);
        // A well-behaved exchange is still followed.
        f.data(1, 11, SK + 100, Direction::Ingress, 100, REQ, 80, 6000);
        f.data(1, 11, SK + 100, Direction::Egress, 300, RESP, 80, 6000);
        assert_eq!(f.server(SK + 100).resp_seq, 300);
    }

    #[test]
    fn parsers_holding_more_than_the_budget_forget_the_largest() {
        let mut f = Feed::new();
        f.a = Assembler::with_limits(
            "h".into(),
            0,
            Limits {
                max_conns: 1000,
                held_budget: 64 << 10,
            },
        );
        let partial = [b"GET /big HTTP/1.1\r\nX-A: ".as_slice(), &[b'a'; 8000]].concat();
        for i in 0..20u64 {
            f.data(
                1,
                11,
                SK + i,
                Direction::Ingress,
                100,
                &partial,
                80,
                5000 + i as u16,
            );
            assert!(f.a.held_bytes() <= 64 << 10, "{}", f.a.held_bytes());
        }
        assert!(f.a.stats.evicted_over_budget > 0);
        f.data(1, 11, SK + 100, Direction::Ingress, 100, REQ, 80, 6000);
        f.data(1, 11, SK + 100, Direction::Egress, 300, RESP, 80, 6000);
        assert_eq!(f.server(SK + 100).resp_seq, 300);
        // Connections that end give their bytes back.
        for i in (0..20u64).chain([100]) {
            f.a.close(SK + i, f.ts, &procs, &mut f.out);
        }
        assert_eq!(f.a.held_bytes(), 0);
    }

    #[test]
    fn a_flood_of_requests_without_answers_is_not_followed_until_close() {
        let mut f = Feed::new();
        let rl = REQ.len() as u32;
        for i in 0..=MAX_WAITING as u32 {
            f.data(2, 21, SK, Direction::Egress, 1 + i * rl, REQ, 6000, 80);
        }
        assert_eq!(f.a.stats.flooded, 1);
        assert_eq!(f.out.len(), MAX_WAITING + 1, "every request reported");
        assert!(f.out.iter().all(|s| !s.error.is_empty()));
        // Its answers are not paired with anything.
        f.data(2, 21, SK, Direction::Ingress, 50, RESP, 6000, 80);
        assert_eq!(f.out.len(), MAX_WAITING + 1);
        assert_eq!(f.a.requests_waiting(), 0);
        // Once closed, the socket is followed afresh.
        f.a.close(SK, f.ts, &procs, &mut f.out);
        f.data(2, 21, SK, Direction::Egress, 9000, REQ, 6001, 80);
        f.data(2, 21, SK, Direction::Ingress, 7000, RESP, 6001, 80);
        assert_eq!(f.client(SK, 9000).resp_seq, 7000);
    }

    #[test]
    fn pipelined_redis_calls_are_spans_of_their_own_under_the_request_served() {
        let mut f = Feed::new();
        f.data(1, 11, SK, Direction::Ingress, 100, REQ, 80, 5000);
        let pipeline = b"*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        f.data(1, 11, SK + 1, Direction::Egress, 7000, pipeline, 6000, 6379);
        f.data(
            1,
            11,
            SK + 1,
            Direction::Ingress,
            9000,
            b":1\r\n-WRONGTYPE no\r\n",
            6000,
            6379,
        );
        f.data(1, 11, SK, Direction::Egress, 300, RESP, 80, 5000);
        let server = f.server(SK).clone();
        let incr = f.client(SK + 1, 7000);
        let get = f.client(SK + 1, 7000 + 21);
        assert_eq!((incr.resp_seq, get.resp_seq), (9000, 9004));
        for (span, op, code) in [(incr, "INCR", ""), (get, "GET", "WRONGTYPE")] {
            assert_eq!(span.protocol, Protocol::Redis as i32);
            assert_eq!(span.local_parent_id, server.span_id);
            assert!(span.http.is_none());
            let db = span.db.as_ref().unwrap();
            assert_eq!((db.system.as_str(), db.operation.as_str()), ("redis", op));
            assert_eq!(db.status_code, code);
            espan::wire::validate_span(span).unwrap();
        }
    }

    #[test]
    fn a_redis_connection_that_lost_its_pairing_abandons_the_commands_waiting() {
        let mut f = Feed::new();
        let two = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\n";
        f.data(1, 11, SK, Direction::Egress, 7000, two, 6000, 6379);
        // Bytes of the replies were missed: which reply is whose is unknown.
        f.data(
            1,
            11,
            SK,
            Direction::Ingress,
            9000,
            b"$1\r\nx\r\n",
            6000,
            6379,
        );
        f.data(
            1,
            11,
            SK,
            Direction::Ingress,
            9100,
            b"$1\r\ny\r\n",
            6000,
            6379,
        );
        assert_eq!(f.out.len(), 2);
        assert!(f.out.iter().all(|s| s.resp_seq == 0 || s.req_seq == 7000));
        assert_eq!(f.a.stats.desyncs, 1);
        // A command sent before the connection was quiet is not paired...
        f.data(
            1,
            11,
            SK,
            Direction::Egress,
            7040,
            b"*1\r\n$4\r\nPING\r\n",
            6000,
            6379,
        );
        f.data(
            1,
            11,
            SK,
            Direction::Ingress,
            9107,
            b"+PONG\r\n",
            6000,
            6379,
        );
        assert_eq!(f.out.len(), 2);
        // ...one sent after a quiet second is.
        let quiet = f.ts + UNFRAMED_QUIET_NS + 1;
        f.a.expire(quiet, &procs, &mut f.out);
        f.ts = quiet;
        f.data(
            1,
            11,
            SK,
            Direction::Egress,
            7054,
            b"*1\r\n$4\r\nPING\r\n",
            6000,
            6379,
        );
        f.data(
            1,
            11,
            SK,
            Direction::Ingress,
            9114,
            b"+PONG\r\n",
            6000,
            6379,
        );
        assert_eq!(f.client(SK, 7054).resp_seq, 9114);
        assert_eq!(f.a.stats.desyncs, 1);
    }

    #[test]
    fn server_then_client_call_gets_the_parent() {
        let mut f = Feed::new();
        // Server thread 11 reads a request on conn 1, calls out on conn 2, answers.
        f.data(1, 11, SK, Direction::Ingress, 100, REQ, 80, 5000);
        f.data(1, 11, SK + 1, Direction::Egress, 7000, REQ, 6000, 81);
        f.data(1, 11, SK + 1, Direction::Ingress, 9000, RESP, 6000, 81);
        f.data(1, 11, SK, Direction::Egress, 300, RESP, 80, 5000);
        assert_eq!(f.out.len(), 2);
        let (client, server) = (&f.out[0], &f.out[1]);
        assert_eq!(client.kind, SpanKind::Client as i32);
        assert_eq!(server.kind, SpanKind::Server as i32);
        assert_eq!(client.local_parent_id, server.span_id);
        assert_eq!((client.req_seq, client.resp_seq), (7000, 9000));
        assert_eq!((server.req_seq, server.resp_seq), (100, 300));
        assert_eq!(server.service, "svc1");
        assert_eq!(server.start_ns, 20 + 1_000_000);
        assert_eq!(server.end_ns, 50 + 1_000_000);
        assert_eq!(
            (server.bytes_in, server.bytes_out),
            (REQ.len() as u64, RESP.len() as u64)
        );
        for s in &f.out {
            espan::wire::validate_span(s).unwrap();
        }
        // After the answer the thread serves nothing: a later call has no parent.
        f.data(
            1,
            11,
            SK + 1,
            Direction::Egress,
            7000 + REQ.len() as u32,
            REQ,
            6000,
            81,
        );
        f.data(
            1,
            11,
            SK + 1,
            Direction::Ingress,
            9000 + RESP.len() as u32,
            RESP,
            6000,
            81,
        );
        assert_eq!(f.out[2].local_parent_id, 0);
    }

    #[test]
    fn go_goes_by_its_turn_with_the_whole_process_as_runnable() {
        for runtime in [Runtime::Go, Runtime::NodeJs] {
            let mut f = Feed::on(runtime);
            // X read on thread 11 and its call written there next: X's.
            f.data(1, 11, SK, Direction::Ingress, 100, REQ, 80, 5000);
            f.data(1, 11, SK + 10, Direction::Egress, 7000, REQ, 6000, 81);
            // Y read on thread 12, Z on thread 11; a call on 11 right after.
            f.data(1, 12, SK + 1, Direction::Ingress, 100, REQ, 80, 5001);
            f.data(1, 11, SK + 2, Direction::Ingress, 100, REQ, 80, 5002);
            f.data(1, 11, SK + 11, Direction::Egress, 8000, REQ, 6001, 81);
            for sk in [SK + 10, SK + 11] {
                f.data(1, 11, sk, Direction::Ingress, 9000, RESP, 6000, 81);
            }
            for (sk, port) in [(SK, 5000), (SK + 1, 5001), (SK + 2, 5002)] {
                f.data(1, 11, sk, Direction::Egress, 300, RESP, 80, port);
            }
            let x = f.server(SK).span_id;
            let z = f.server(SK + 2).span_id;
            assert_eq!(f.client(SK + 10, 7000).local_parent_id, x, "{runtime:?}");
            if runtime == Runtime::Go {
                // Y may be running on any thread: not Z's alone.
                assert_eq!(f.client(SK + 11, 8000).local_parent_id, 0);
                assert_eq!(f.a.stats.parent_unset[ParentUnset::Go.index()], 1);
            } else {
                // An event loop's thread is its own: Y is another loop's.
                assert_eq!(f.client(SK + 11, 8000).local_parent_id, z);
            }
        }
    }

    #[test]
    fn an_event_loop_call_is_the_child_of_the_request_whose_turn_wrote_it() {
        let mut f = Feed::on(Runtime::NodeJs);
        // A is read and calls out at once; so does B, while A waits.
        f.data(1, 11, SK, Direction::Ingress, 100, REQ, 80, 5000);
        f.data(1, 11, SK + 10, Direction::Egress, 7000, REQ, 6000, 81);
        f.data(1, 11, SK + 1, Direction::Ingress, 100, REQ, 80, 5001);
        f.data(1, 11, SK + 11, Direction::Egress, 8000, REQ, 6001, 81);
        // A's answer wakes A, which answers; B's wakes B, which calls again.
        f.data(1, 11, SK + 10, Direction::Ingress, 9000, RESP, 6000, 81);
        f.data(1, 11, SK, Direction::Egress, 300, RESP, 80, 5000);
        f.data(1, 11, SK + 11, Direction::Ingress, 9500, RESP, 6001, 81);
        f.data(1, 11, SK + 10, Direction::Egress, 7019, REQ, 6000, 81);
        f.data(1, 11, SK + 10, Direction::Ingress, 9038, RESP, 6000, 81);
        f.data(1, 11, SK + 1, Direction::Egress, 300, RESP, 80, 5001);
        let (a, b) = (f.server(SK).span_id, f.server(SK + 1).span_id);
        assert_eq!(f.client(SK + 10, 7000).local_parent_id, a);
        assert_eq!(f.client(SK + 11, 8000).local_parent_id, b);
        assert_eq!(f.client(SK + 10, 7019).local_parent_id, b);
        // D is read and makes no call (it could resume on a timer); E's turn
        // is then not E's alone, and its call gets no parent.
        f.data(1, 11, SK + 3, Direction::Ingress, 100, REQ, 80, 5003);
        f.data(1, 11, SK + 4, Direction::Ingress, 100, REQ, 80, 5004);
        f.data(1, 11, SK + 11, Direction::Egress, 8019, REQ, 6001, 81);
        f.data(1, 11, SK + 11, Direction::Ingress, 9538, RESP, 6001, 81);
        assert_eq!(f.client(SK + 11, 8019).local_parent_id, 0);
        assert_eq!(f.a.stats.parent_unset[ParentUnset::NoSoleTurn.index()], 1);
        // A call written after anything else on the thread gets none either.
        f.data(1, 11, SK + 3, Direction::Egress, 300, RESP, 80, 5003);
        f.data(1, 11, SK + 10, Direction::Egress, 7038, REQ, 6000, 81);
        f.data(1, 11, SK + 10, Direction::Ingress, 9057, RESP, 6000, 81);
        assert_eq!(f.client(SK + 10, 7038).local_parent_id, 0);
    }

    #[test]
    fn a_connection_opened_in_a_requests_turn_carries_its_first_call() {
        let mut f = Feed::on(Runtime::EventLoop);
        // A is read and connects upstream; B is read and calls on an open one;
        // then A's connection is ready and A's request goes out on it.
        f.data(1, 11, SK, Direction::Ingress, 100, REQ, 80, 5000);
        f.connect(11, SK + 20);
        f.data(1, 11, SK + 1, Direction::Ingress, 100, REQ, 80, 5001);
        f.data(1, 11, SK + 11, Direction::Egress, 8000, REQ, 6001, 81);
        f.data(1, 11, SK + 20, Direction::Egress, 5000, REQ, 6002, 81);
        f.data(1, 11, SK + 20, Direction::Ingress, 6000, RESP, 6002, 81);
        f.data(1, 11, SK + 11, Direction::Ingress, 9000, RESP, 6001, 81);
        f.data(1, 11, SK, Direction::Egress, 300, RESP, 80, 5000);
        f.data(1, 11, SK + 1, Direction::Egress, 300, RESP, 80, 5001);
        let (a, b) = (f.server(SK).span_id, f.server(SK + 1).span_id);
        assert_eq!(f.client(SK + 20, 5000).local_parent_id, a);
        assert_eq!(f.client(SK + 11, 8000).local_parent_id, b);
    }

    #[test]
    fn a_connection_opened_under_the_thread_rule_names_no_later_parent() {
        // asyncio before its loop is found out: X alone is served, connects,
        // calls on the new connection (thread rule) and is answered.
        let mut f = Feed::new();
        f.data(1, 11, SK, Direction::Ingress, 100, REQ, 80, 5000);
        f.connect(11, SK + 20);
        f.data(1, 11, SK + 20, Direction::Egress, 5000, REQ, 6002, 81);
        f.data(1, 11, SK + 20, Direction::Ingress, 6000, RESP, 6002, 81);
        f.data(1, 11, SK, Direction::Egress, 300, RESP, 80, 5000);
        let x = f.server(SK).span_id;
        assert_eq!(f.client(SK + 20, 5000).local_parent_id, x);
        // Then two requests at once: the turn rule; the pooled connection's
        // next request is not X's (X is gone), nor named at all here.
        f.data(1, 11, SK + 1, Direction::Ingress, 100, REQ, 80, 5001);
        f.data(1, 11, SK + 2, Direction::Ingress, 100, REQ, 80, 5002);
        f.data(1, 11, SK + 20, Direction::Egress, 5019, REQ, 6002, 81);
        f.data(1, 11, SK + 20, Direction::Ingress, 6038, RESP, 6002, 81);
        assert_eq!(f.client(SK + 20, 5019).local_parent_id, 0);
    }

    #[test]
    fn a_thread_seen_serving_two_requests_ends_the_thread_rule_for_its_process() {
        let mut f = Feed::new();
        // Thread 11 reads two requests before answering either: an event loop.
        f.data(1, 11, SK, Direction::Ingress, 100, REQ, 80, 5000);
        f.data(1, 11, SK + 2, Direction::Ingress, 100, REQ, 80, 5001);
        f.data(1, 11, SK, Direction::Egress, 300, RESP, 80, 5000);
        // Now it serves one only, but a call it makes is not known to be that one's.
        f.data(1, 11, SK + 1, Direction::Egress, 7000, REQ, 6000, 81);
        f.data(1, 11, SK + 1, Direction::Ingress, 9000, RESP, 6000, 81);
        let client = f
            .out
            .iter()
            .find(|s| s.kind == SpanKind::Client as i32)
            .unwrap();
        assert_eq!(client.local_parent_id, 0);
        assert_eq!(f.a.stats.parent_unset[ParentUnset::NoSoleTurn.index()], 1);
        // Another process keeps the rule.
        f.data(2, 21, SK + 10, Direction::Ingress, 100, REQ, 80, 5000);
        f.data(2, 21, SK + 11, Direction::Egress, 7000, REQ, 6000, 81);
        f.data(2, 21, SK + 11, Direction::Ingress, 9000, RESP, 6000, 81);
        assert_ne!(f.out.last().unwrap().local_parent_id, 0);
        // A new process that takes the pid starts afresh.
        f.a.forget_process(1);
        f.data(1, 12, SK + 20, Direction::Ingress, 100, REQ, 80, 5000);
        f.data(1, 12, SK + 21, Direction::Egress, 7000, REQ, 6000, 81);
        f.data(1, 12, SK + 21, Direction::Ingress, 9000, RESP, 6000, 81);
        assert_ne!(f.out.last().unwrap().local_parent_id, 0);
    }

    #[test]
    fn two_requests_in_flight_on_one_thread_leave_the_parent_unset() {
        let mut f = Feed::new();
        f.data(1, 11, SK, Direction::Ingress, 100, REQ, 80, 5000);
        f.data(1, 11, SK + 2, Direction::Ingress, 100, REQ, 80, 5001);
        f.data(1, 11, SK + 1, Direction::Egress, 7000, REQ, 6000, 81);
        f.data(1, 11, SK + 1, Direction::Ingress, 9000, RESP, 6000, 81);
        assert_eq!(f.out.len(), 1);
        assert_eq!(f.out[0].local_parent_id, 0);
        assert_eq!(f.a.stats.ambiguous_parent, 1);
    }

    #[test]
    fn close_completes_until_close_responses_and_reports_unanswered() {
        let mut f = Feed::new();
        f.data(2, 21, SK, Direction::Egress, 1, REQ, 6000, 80);
        f.data(
            2,
            21,
            SK,
            Direction::Ingress,
            50,
            b"HTTP/1.0 200 OK\r\n\r\nbody...",
            6000,
            80,
        );
        f.a.close(SK, 100, &procs, &mut f.out);
        assert_eq!(f.out.len(), 1);
        assert_eq!(f.out[0].error, "");
        f.data(2, 21, SK + 5, Direction::Egress, 1, REQ, 6001, 80);
        f.a.close(SK + 5, 200, &procs, &mut f.out);
        // The answer may still be read after the close: the request waits.
        assert_eq!(f.out.len(), 1);
        f.a.expire(200 + LINGER_NS - 1, &procs, &mut f.out);
        assert_eq!(f.out.len(), 1);
        f.a.expire(200 + LINGER_NS, &procs, &mut f.out);
        assert_eq!(f.out.len(), 2);
        assert!(!f.out[1].error.is_empty());
        assert_eq!(f.out[1].http.as_ref().unwrap().status, 0);
        assert_eq!(f.a.stats.unanswered, 1);
        assert_eq!(f.a.conns(), 0);
    }

    #[test]
    fn response_read_after_a_reset_close_is_paired() {
        let mut f = Feed::new();
        f.data(2, 21, SK, Direction::Egress, 1, REQ, 6000, 80);
        // A reset: the socket reaches CLOSE, then the process reads what was queued.
        f.a.close(SK, 40, &procs, &mut f.out);
        assert!(f.out.is_empty());
        f.data(2, 21, SK, Direction::Ingress, 50, &RESP[..20], 6000, 80);
        assert!(f.out.is_empty());
        // The closed socket gave its local port back: the kernel reads 0 there now.
        f.data(2, 21, SK, Direction::Ingress, 70, &RESP[20..], 0, 80);
        assert_eq!(f.out.len(), 1);
        let s = &f.out[0];
        assert_eq!(s.error, "");
        assert_eq!((s.req_seq, s.resp_seq), (1, 50));
        assert_eq!(s.http.as_ref().unwrap().status, 200);
        assert_eq!(s.bytes_in, RESP.len() as u64);
        assert_eq!(port(&s.local), 6000);
        assert_eq!(f.a.stats.after_close, 2);
        // Answered: the connection is gone, nothing is reported again later.
        assert_eq!(f.a.conns(), 0);
        f.a.expire(u64::MAX, &procs, &mut f.out);
        assert_eq!(f.out.len(), 1);
        assert_eq!(f.a.stats.unanswered, 0);
    }

    #[test]
    fn bytes_after_close_that_do_not_continue_the_stream_are_not_paired() {
        let mut f = Feed::new();
        f.data(2, 21, SK, Direction::Egress, 1, REQ, 6000, 80);
        // The head of the answer, then CLOSE with its body still to come.
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n";
        f.data(2, 21, SK, Direction::Ingress, 50, head, 6000, 80);
        f.a.close(SK, 40, &procs, &mut f.out);
        assert!(f.out.is_empty());
        // A response elsewhere in sequence space: not this connection's bytes.
        f.data(2, 21, SK, Direction::Ingress, 9_000, RESP, 6000, 80);
        assert_eq!(f.out.len(), 1);
        assert_eq!(f.out[0].error, "connection closed before the response");
        assert_eq!(f.out[0].resp_seq, 0);
        assert_eq!(f.a.stats.unanswered, 1);
        assert_eq!(f.a.stats.unmatched, 1);
        assert_eq!(f.a.stats.after_close, 0);
        // Nor the other direction's.
        f.data(2, 21, SK + 1, Direction::Egress, 1, REQ, 6001, 80);
        f.a.close(SK + 1, 40, &procs, &mut f.out);
        f.data(2, 21, SK + 1, Direction::Egress, 5, REQ, 6001, 80);
        assert_eq!(f.out.len(), 2);
        assert_eq!(f.out[1].error, "connection closed before the response");
    }

    #[test]
    fn a_closed_connection_keeps_the_names_of_an_exited_process() {
        let mut f = Feed::new();
        f.data(2, 21, SK, Direction::Egress, 1, REQ, 6000, 80);
        f.a.close(SK, 40, &procs, &mut f.out);
        // The process exited and was forgotten before its read came.
        let gone = |_: u32| None;
        let d = DataIn {
            pid: 2,
            sk: SK,
            dir: Direction::Ingress,
            local: SocketAddr::from(([127, 0, 0, 1], 6000)),
            remote: SocketAddr::from(([127, 0, 0, 1], 80)),
            other_seq: None,
            transfer: Transfer {
                seq: 50,
                len: RESP.len() as u32,
                data: RESP,
                ts_ns: 90,
                tid: 21,
            },
        };
        f.a.on_data(d, &gone, &mut f.out);
        assert_eq!(f.out.len(), 1);
        assert_eq!(f.out[0].service, "svc2");
    }

    #[test]
    fn a_lost_first_response_is_noticed_from_the_other_direction() {
        let mut f = Feed::new();
        let (rl, pl) = (REQ.len() as u32, RESP.len() as u32);
        // The client has read nothing yet: its answers start at 50.
        f.other = Some(50);
        f.data(2, 21, SK, Direction::Egress, 1, REQ, 6000, 80);
        // The first answer was lost (say the ring was full); when the client
        // writes again it has read it, so its read counter is past it.
        f.other = Some(50 + pl);
        f.data(2, 21, SK, Direction::Egress, 1 + rl, REQ, 6000, 80);
        assert_eq!(f.out.len(), 1);
        assert_eq!(f.out[0].req_seq, 1);
        assert_eq!(f.out[0].resp_seq, 0);
        assert_eq!(f.out[0].error, "response not captured");
        // The second answer pairs with the second request, not the first.
        f.other = Some(1 + 2 * rl);
        f.data(2, 21, SK, Direction::Ingress, 50 + pl, RESP, 6000, 80);
        assert_eq!(f.out.len(), 2);
        assert_eq!((f.out[1].req_seq, f.out[1].resp_seq), (1 + rl, 50 + pl));
        assert_eq!(f.out[1].error, "");
        assert_eq!(f.a.stats.gaps, 1);
        // One past (the peer's FIN, consumed with the last bytes) is no gap.
        f.other = Some(50 + 2 * pl + 1);
        f.data(2, 21, SK, Direction::Egress, 1 + 2 * rl, REQ, 6000, 80);
        assert_eq!(f.a.stats.gaps, 1);
        assert_eq!(f.out.len(), 2);
    }

    #[test]
    fn a_lost_response_does_not_shift_the_pairs_of_a_keep_alive_connection() {
        let mut f = Feed::new();
        let (rl, pl) = (REQ.len() as u32, RESP.len() as u32);
        f.data(2, 21, SK, Direction::Egress, 1, REQ, 6000, 80);
        f.data(2, 21, SK, Direction::Ingress, 50, RESP, 6000, 80);
        // The second answer was lost; the third shows the gap. Without other
        // counters, which request it answers is unknown: none is paired.
        f.data(2, 21, SK, Direction::Egress, 1 + rl, REQ, 6000, 80);
        f.data(2, 21, SK, Direction::Egress, 1 + 2 * rl, REQ, 6000, 80);
        f.data(2, 21, SK, Direction::Ingress, 50 + 2 * pl, RESP, 6000, 80);
        assert_eq!(f.out.len(), 3);
        assert_eq!((f.out[0].req_seq, f.out[0].resp_seq), (1, 50));
        assert!(f.out[1..].iter().all(|s| s.resp_seq == 0), "{:#?}", f.out);
        assert_eq!(f.a.stats.unanswered, 2);
        assert_eq!(f.a.stats.unmatched, 1);
        // Later pairs are right again.
        f.data(2, 21, SK, Direction::Egress, 1 + 3 * rl, REQ, 6000, 80);
        f.data(2, 21, SK, Direction::Ingress, 50 + 3 * pl, RESP, 6000, 80);
        let last = f.out.last().unwrap();
        assert_eq!((last.req_seq, last.resp_seq), (1 + 3 * rl, 50 + 3 * pl));
        // An answer whose head lies beyond the capture keeps its status line and
        // ends when the next request starts: both pairs stay right.
        let big = [b"HTTP/1.1 200 OK\r\nX: ".as_slice(), &[b'a'; 64]].concat();
        f.data(2, 21, SK, Direction::Egress, 1 + 4 * rl, REQ, 6000, 80);
        let d = DataIn {
            pid: 2,
            sk: SK,
            dir: Direction::Ingress,
            local: SocketAddr::from(([127, 0, 0, 1], 6000)),
            remote: SocketAddr::from(([127, 0, 0, 1], 80)),
            other_seq: None,
            transfer: Transfer {
                seq: 50 + 4 * pl,
                len: 5000,
                data: &big,
                ts_ns: 1000,
                tid: 21,
            },
        };
        f.a.on_data(d, &procs, &mut f.out);
        assert_eq!(f.a.stats.unanswered, 2);
        f.data(2, 21, SK, Direction::Egress, 1 + 5 * rl, REQ, 6000, 80);
        let fifth = f.out.last().unwrap();
        assert_eq!((fifth.req_seq, fifth.resp_seq), (1 + 4 * rl, 50 + 4 * pl));
        assert_eq!(fifth.http.as_ref().unwrap().status, 200);
        assert_eq!(fifth.bytes_in, 5000);
        f.data(
            2,
            21,
            SK,
            Direction::Ingress,
            50 + 4 * pl + 5000,
            RESP,
            6000,
            80,
        );
        let last = f.out.last().unwrap();
        assert_eq!(
            (last.req_seq, last.resp_seq),
            (1 + 5 * rl, 50 + 4 * pl + 5000)
        );
    }

    #[test]
    fn response_without_request_is_counted() {
        let mut f = Feed::new();
        f.data(2, 21, SK, Direction::Ingress, 50, RESP, 6000, 80);
        assert!(f.out.is_empty());
        assert_eq!(f.a.stats.unmatched, 1);
    }

    #[test]
    fn reused_socket_address_starts_a_new_connection() {
        let mut f = Feed::new();
        f.data(2, 21, SK, Direction::Egress, 1, REQ, 6000, 80);
        // Same struct sock, other ports: the old connection is gone.
        f.data(2, 21, SK, Direction::Egress, 1, REQ, 6001, 80);
        assert_eq!(f.a.stats.unanswered, 1);
        f.data(2, 21, SK, Direction::Ingress, 9, RESP, 6001, 80);
        assert_eq!(port(&f.out.last().unwrap().local), 6001);
    }

    fn port(e: &Option<Endpoint>) -> u32 {
        e.as_ref().unwrap().port
    }
}
