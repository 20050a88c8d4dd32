//! MySQL and MariaDB (client/server protocol 10) on one connection: one
//! exchange per command (`COM_QUERY`, `COM_STMT_PREPARE`, `COM_STMT_EXECUTE`,
//! `COM_PING`…), from the client's command packet to the last packet of the
//! server's answer (an OK or ERR packet, or a result set to its final EOF/OK,
//! every result set of a multi-statement). Commands that get no answer
//! (`COM_QUIT`, `COM_STMT_CLOSE`, `COM_STMT_SEND_LONG_DATA`) make no span.
//!
//! The server speaks first: a connection is MySQL from its greeting (a packet
//! with sequence id 0 and protocol version 10); the handshake makes no span and
//! the server's first OK ends it. A client that asks for TLS (`CLIENT_SSL` in a
//! short handshake response) is not followed. A connection first seen mid-way
//! is taken up at a `COM_QUERY` packet that fills its transfer.
//!
//! Packets are skipped by their length; a statement's first bytes are kept (the
//! assembler takes its literals out, [`crate::sql`]), a prepared statement's
//! text by the id the server gave it (to name its executions), and an ERR
//! packet's error number. Rows whose packet headers lie beyond the capture
//! leave the answer open until the client's next command (the classic protocol
//! has one command in flight at a time); any other loss of framing stops the
//! pairing until the connection has been quiet (see [`crate::resp`]).

use crate::lenframe::{self, Read, Reader, Statements};
use crate::message::{Exchanges, L7, Message, MysqlFrame, Problems, Side, Transfer};

const COM_QUIT: u8 = 0x01;
const COM_QUERY: u8 = 0x03;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const CLIENT_SSL: u32 = 0x800;
const CLIENT_DEPRECATE_EOF: u32 = 0x0100_0000;
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
/// A packet this long continues in the next one.
const MAX_PACKET: u32 = 0xFF_FFFF;
const KEEP_TEXT: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Greeting, handshake response, authentication: no span.
    Handshake,
    Ready,
    /// TLS: not followed.
    Tls,
    /// Framing lost: not followed until quiet.
    Lost,
}

/// Where the server's answer to the command in flight has got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Its first packet is next.
    First,
    /// Column (or parameter) definitions left, then what follows them.
    Definitions { left: u64, then: AfterDefinitions },
    /// After a group of definitions: an EOF packet, if the server sends one.
    MaybeEof { then: AfterDefinitions },
    /// Rows, until the EOF/OK that ends them.
    Rows,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterDefinitions {
    Rows,
    /// A prepared statement's parameters: its columns' definitions follow.
    Columns(u64),
    /// The end of a prepare answer.
    Done,
}

/// One complete packet as seen by a reader.
struct Packet<'a> {
    seq_id: u8,
    len: u32,
    start: u32,
    ts_ns: u64,
    tid: u32,
    /// Its first bytes, as captured.
    head: &'a [u8],
    /// It continues the previous packet (that one was `MAX_PACKET` long).
    continued: bool,
}

impl<'a> Packet<'a> {
    /// The packet a frame is; `continued` when the one before it in its
    /// direction was `MAX_PACKET` long.
    fn of(frame: &'a lenframe::Frame<'a>, continued: bool) -> Self {
        let h = frame.header;
        Packet {
            seq_id: h[3],
            len: u32::from_le_bytes([h[0], h[1], h[2], 0]),
            start: frame.seq,
            ts_ns: frame.ts_ns,
            tid: frame.tid,
            head: frame.body,
            continued,
        }
    }
}

/// A packet's header: a 3-byte little-endian payload length, a sequence id.
const HEADER: usize = 4;

fn body_len(header: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes([header[0], header[1], header[2], 0]))
}

/// One direction's packets, and whether the last was `MAX_PACKET` long (the
/// next continues it).
#[derive(Debug)]
struct Direction {
    reader: Reader,
    continues: bool,
}

impl Direction {
    fn new() -> Self {
        Self {
            reader: Reader::new(HEADER),
            continues: false,
        }
    }

    /// Reads a transfer, each packet to `on_packet`.
    fn feed(
        &mut self,
        t: &Transfer<'_>,
        keep: usize,
        mut on_packet: impl FnMut(Packet<'_>),
    ) -> Read {
        let continues = &mut self.continues;
        self.reader.feed(
            t,
            body_len,
            |_| keep,
            |_, frame| {
                let continued =
                    std::mem::replace(continues, body_len(frame.header) == Some(MAX_PACKET));
                on_packet(Packet::of(&frame, continued));
            },
        )
    }
}

/// A MySQL connection: both directions and the command in flight.
#[derive(Debug)]
pub struct Session {
    client: Direction,
    server: Direction,
    phase: Phase,
    /// `CLIENT_DEPRECATE_EOF`, once the handshake showed it.
    deprecate_eof: Option<bool>,
    /// A command was sent and its answer has not ended.
    in_flight: bool,
    response: Option<Message>,
    answer: Answer,
    /// The command in flight is a prepare of this text.
    preparing: Option<String>,
    error: String,
    /// The answer is open beyond the capture.
    unframed: bool,
    statements: Statements<u32>,
    pub problems: Problems,
    pub desyncs: u64,
}

impl Session {
    /// A session from the transfer that showed the connection is MySQL: the
    /// greeting, or (`mid_way`) a command.
    pub fn new(mid_way: bool) -> Self {
        Self {
            client: Direction::new(),
            server: Direction::new(),
            phase: if mid_way {
                Phase::Ready
            } else {
                Phase::Handshake
            },
            deprecate_eof: None,
            in_flight: false,
            response: None,
            answer: Answer::First,
            preparing: None,
            error: String::new(),
            unframed: false,
            statements: Statements::default(),
            problems: Problems::default(),
            desyncs: 0,
        }
    }

    fn on_client(&mut self, p: Packet<'_>, out: &mut Vec<(Side, Message)>) {
        if self.phase == Phase::Handshake {
            if p.seq_id == 1 && p.head.len() >= 4 {
                let caps = u32::from_le_bytes([p.head[0], p.head[1], p.head[2], p.head[3]]);
                self.deprecate_eof = Some(caps & CLIENT_DEPRECATE_EOF != 0);
                // An SSL request is the handshake response cut after its
                // fixed part; TLS follows.
                if caps & CLIENT_SSL != 0 && p.len == 32 {
                    self.phase = Phase::Tls;
                }
            }
            return;
        }
        if p.seq_id != 0 || p.continued {
            // The rest of a command longer than a packet.
            return;
        }
        let Some(&command) = p.head.first() else {
            return;
        };
        if matches!(command, COM_QUIT | COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA) {
            if command == COM_STMT_CLOSE && p.head.len() >= 5 {
                let id = u32::from_le_bytes([p.head[1], p.head[2], p.head[3], p.head[4]]);
                self.statements.remove(&id);
            }
            // No answer comes.
            return;
        }
        let body = &p.head[1..];
        let text = match command {
            COM_QUERY => String::from_utf8_lossy(body).into_owned(),
            COM_STMT_PREPARE => {
                let text = String::from_utf8_lossy(body).into_owned();
                self.preparing = Some(text.clone());
                text
            }
            COM_STMT_EXECUTE if body.len() >= 4 => {
                let id = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
                self.statements.get(&id).cloned().unwrap_or_default()
            }
            other => command_name(other).to_owned(),
        };
        if command != COM_STMT_PREPARE {
            self.preparing = None;
        }
        self.answer = Answer::First;
        self.in_flight = true;
        out.push((
            Side::Requests,
            Message {
                l7: L7::Mysql(MysqlFrame::Command { text }),
                seq: p.start,
                start_ns: p.ts_ns,
                end_ns: p.ts_ns,
                first_tid: p.tid,
                last_tid: p.tid,
                bytes: u64::from(p.len) + 4,
                stream: 0,
            },
        ));
    }

    fn on_server(&mut self, p: Packet<'_>, out: &mut Vec<(Side, Message)>) {
        match self.phase {
            Phase::Handshake => {
                // The server's OK after authentication (not the greeting).
                if p.seq_id > 0 && p.head.first() == Some(&0x00) {
                    self.phase = Phase::Ready;
                }
                return;
            }
            Phase::Ready => {}
            Phase::Tls | Phase::Lost => return,
        }
        if !self.in_flight {
            // Nothing asked (a connection seen mid-way, an answer already
            // ended): not an answer to pair.
            return;
        }
        let response = self.response.get_or_insert_with(|| Message {
            l7: L7::Mysql(MysqlFrame::Result {
                error: String::new(),
            }),
            seq: p.start,
            start_ns: p.ts_ns,
            end_ns: p.ts_ns,
            first_tid: p.tid,
            last_tid: p.tid,
            bytes: 0,
            stream: 0,
        });
        response.bytes += u64::from(p.len) + 4;
        response.end_ns = p.ts_ns;
        response.last_tid = p.tid;
        if p.continued {
            return;
        }
        let first = p.head.first().copied().unwrap_or(0);
        let is_eof = first == 0xFE && p.len < 9;
        let ends_rows = first == 0xFE && p.len < MAX_PACKET;
        let done = match self.answer {
            Answer::First => match first {
                0x00 => {
                    if let Some(text) = self.preparing.take() {
                        self.prepared(&p, text)
                    } else {
                        !more_results(ok_status(p.head))
                    }
                }
                0xFF => {
                    self.error = error_number(p.head);
                    true
                }
                // LOCAL INFILE: the client sends a file; not followed.
                0xFB => {
                    self.lose(false);
                    return;
                }
                _ => {
                    let columns = lenenc(p.head).map_or(0, |(n, _)| n);
                    self.answer = Answer::Definitions {
                        left: columns,
                        then: AfterDefinitions::Rows,
                    };
                    columns == 0
                }
            },
            Answer::Definitions { left, then } => {
                if left > 1 {
                    self.answer = Answer::Definitions {
                        left: left - 1,
                        then,
                    };
                    false
                } else {
                    self.after_definitions(then)
                }
            }
            Answer::MaybeEof { then } => {
                if is_eof && p.len == 5 {
                    self.definitions_done(then)
                } else if then == AfterDefinitions::Rows {
                    // No EOF after the columns: this is a row, or the final OK.
                    self.answer = Answer::Rows;
                    self.row_or_end(first, ends_rows, p.head)
                } else {
                    // A prepare answer without EOFs: this is the next group.
                    self.lose(false);
                    return;
                }
            }
            Answer::Rows => self.row_or_end(first, ends_rows, p.head),
        };
        if done {
            self.finish_response(out);
        }
    }

    /// A group of definitions ended: an EOF may follow, or what comes next.
    fn after_definitions(&mut self, then: AfterDefinitions) -> bool {
        if self.deprecate_eof == Some(true) {
            self.definitions_done(then)
        } else {
            self.answer = Answer::MaybeEof { then };
            false
        }
    }

    fn definitions_done(&mut self, then: AfterDefinitions) -> bool {
        match then {
            AfterDefinitions::Rows => {
                self.answer = Answer::Rows;
                false
            }
            AfterDefinitions::Columns(0) | AfterDefinitions::Done => true,
            AfterDefinitions::Columns(n) => {
                self.answer = Answer::Definitions {
                    left: n,
                    then: AfterDefinitions::Done,
                };
                false
            }
        }
    }

    /// A packet among the rows: the end of this result set is a 0xFE packet
    /// (EOF, or OK) or an ERR; another result set may follow.
    fn row_or_end(&mut self, first: u8, ends_rows: bool, head: &[u8]) -> bool {
        if first == 0xFF {
            self.error = error_number(head);
            return true;
        }
        if !ends_rows {
            return false;
        }
        let status = if head.len() == 5 {
            u16::from_le_bytes([head[3], head[4]])
        } else {
            ok_status(head)
        };
        if more_results(status) {
            self.answer = Answer::First;
            false
        } else {
            true
        }
    }

    /// The OK of a prepare: the statement's id, then its parameters' and
    /// columns' definitions (each group ended by an EOF, unless deprecated).
    fn prepared(&mut self, p: &Packet<'_>, text: String) -> bool {
        let h = p.head;
        if h.len() < 9 {
            return true;
        }
        let id = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
        let columns = u64::from(u16::from_le_bytes([h[5], h[6]]));
        let params = u64::from(u16::from_le_bytes([h[7], h[8]]));
        self.statements.insert(id, text);
        if params > 0 {
            self.answer = Answer::Definitions {
                left: params,
                then: AfterDefinitions::Columns(columns),
            };
            false
        } else if columns > 0 {
            self.answer = Answer::Definitions {
                left: columns,
                then: AfterDefinitions::Done,
            };
            false
        } else {
            true
        }
    }

    fn finish_response(&mut self, out: &mut Vec<(Side, Message)>) {
        if let Some(mut response) = self.response.take() {
            response.l7 = L7::Mysql(MysqlFrame::Result {
                error: std::mem::take(&mut self.error),
            });
            out.push((Side::Answers, response));
        }
        self.in_flight = false;
        self.answer = Answer::First;
        if self.unframed {
            self.unframed = false;
            self.server = Direction::new();
        }
    }

    fn beyond_capture(&mut self, t: &Transfer<'_>, from: u32) {
        if self.phase == Phase::Ready && self.in_flight {
            lenframe::open_beyond_capture(
                &mut self.response,
                t,
                from,
                || {
                    L7::Mysql(MysqlFrame::Result {
                        error: String::new(),
                    })
                },
                &mut self.problems,
            );
            self.unframed = true;
        } else {
            self.lose(true);
        }
    }

    fn lose(&mut self, truncated: bool) {
        lenframe::count_loss(&mut self.problems, truncated);
        self.gap(Side::Requests);
    }
}

impl Exchanges for Session {
    fn feed(&mut self, side: Side, t: Transfer<'_>, out: &mut Vec<(Side, Message)>) {
        if matches!(self.phase, Phase::Tls | Phase::Lost) || t.len == 0 {
            return;
        }
        match side {
            Side::Requests => {
                if self.unframed && !t.data.is_empty() {
                    // The client's next command: the answer it waited for is over.
                    self.finish_response(out);
                }
                let mut client = std::mem::replace(&mut self.client, Direction::new());
                let read = client.feed(&t, KEEP_TEXT, |p| self.on_client(p, out));
                self.client = client;
                if let Read::BeyondCapture(_) = read {
                    self.lose(true);
                }
            }
            Side::Answers => {
                if self.unframed {
                    lenframe::extend_open(&mut self.response, &t);
                    return;
                }
                let mut server = std::mem::replace(&mut self.server, Direction::new());
                let read = server.feed(&t, 64, |p| self.on_server(p, out));
                self.server = server;
                if let Read::BeyondCapture(from) = read {
                    self.beyond_capture(&t, from);
                }
            }
        }
    }

    fn gap(&mut self, _side: Side) {
        if matches!(self.phase, Phase::Tls | Phase::Lost) {
            return;
        }
        self.phase = Phase::Lost;
        self.desyncs += 1;
        self.in_flight = false;
        self.response = None;
        self.unframed = false;
    }

    fn resync_if_quiet(&mut self, out: &mut Vec<(Side, Message)>) {
        if self.unframed {
            self.finish_response(out);
        }
        if self.phase == Phase::Lost {
            self.client = Direction::new();
            self.server = Direction::new();
            self.answer = Answer::First;
            self.preparing = None;
            self.error.clear();
            self.phase = Phase::Ready;
        }
    }

    fn end(&mut self, out: &mut Vec<(Side, Message)>) {
        if self.unframed {
            self.finish_response(out);
        }
    }

    fn held_bytes(&self) -> usize {
        self.client.reader.held_bytes()
            + self.server.reader.held_bytes()
            + self.statements.held_bytes()
    }

    fn take_problems(&mut self) -> (Problems, u64) {
        (
            std::mem::take(&mut self.problems),
            std::mem::take(&mut self.desyncs),
        )
    }
}

/// A length-encoded integer and the bytes after it.
fn lenenc(b: &[u8]) -> Option<(u64, &[u8])> {
    let (&first, rest) = b.split_first()?;
    let width = match first {
        0..=0xFA => return Some((u64::from(first), rest)),
        0xFC => 2,
        0xFD => 3,
        0xFE => 8,
        _ => return None,
    };
    let bytes = rest.get(..width)?;
    let mut n = [0u8; 8];
    n[..width].copy_from_slice(bytes);
    Some((u64::from_le_bytes(n), &rest[width..]))
}

/// The status flags of an OK packet (header, affected rows, last insert id,
/// status), 0 when not captured.
fn ok_status(head: &[u8]) -> u16 {
    let Some((_, rest)) = head.split_first() else {
        return 0;
    };
    lenenc(rest)
        .and_then(|(_, rest)| lenenc(rest))
        .and_then(|(_, rest)| rest.get(..2))
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn more_results(status: u16) -> bool {
    status & SERVER_MORE_RESULTS_EXISTS != 0
}

/// An ERR packet's error number (`1146`).
fn error_number(head: &[u8]) -> String {
    match head.get(1..3) {
        Some(n) => u16::from_le_bytes([n[0], n[1]]).to_string(),
        None => "ERR".into(),
    }
}

/// The name of a command without a statement, as the span's operation.
fn command_name(command: u8) -> &'static str {
    match command {
        0x02 => "USE",
        0x0e => "PING",
        0x11 => "CHANGE USER",
        0x1a => "STMT RESET",
        0x1f => "RESET CONNECTION",
        _ => "COMMAND",
    }
}

/// Whether a transfer shows a MySQL connection: the server's greeting read or
/// written (`Some(false)`), or, first seen mid-way, a client's `COM_QUERY`
/// packet that fills its transfer (`Some(true)`).
pub fn starts_session(t: &Transfer<'_>) -> Option<bool> {
    let d = t.data;
    let len = u32::from_le_bytes([*d.first()?, *d.get(1)?, *d.get(2)?, 0]);
    let (seq_id, first) = (*d.get(3)?, *d.get(4)?);
    if seq_id != 0 {
        return None;
    }
    if first == 10 && len + 4 == t.len && len > 20 {
        // Protocol 10, then the server's version, NUL-terminated.
        let version = d.get(5..)?.split(|&b| b == 0).next()?;
        let printable = !version.is_empty() && version.iter().all(|b| b.is_ascii_graphic());
        return printable.then_some(false);
    }
    (first == COM_QUERY && len >= 2 && len + 4 == t.len).then_some(true)
}

#[cfg(test)]
mod tests;
