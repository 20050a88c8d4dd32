//! The ring buffer reader: a thread that drains the kernel's records, keeps the
//! traced-pid map up to date, and feeds transfers to the assembler. The kernel
//! wakes it only when the ring fills up (batched wake-ups keep the per-syscall
//! cost down), so it also polls on a short timer.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use espan::wire::ESpan;
use espan_common::{
    CloseEvent, ConnectEvent, DATA_HEADER_LEN, DIR_EGRESS, DIR_INGRESS, DataEvent, EVENT_CLOSE,
    EVENT_CONNECT, EVENT_DATA, EVENT_EXEC, EVENT_EXIT, EVENT_FORK, ProcEvent, counter,
};
use tokio::sync::mpsc;

use crate::assemble::{Assembler, DataIn, ProcInfo};
use crate::conn::Direction;
use crate::loader::Loaded;
use crate::message::Transfer;
use crate::metrics::Metrics;
use crate::procs::{ProcFacts, Selection, all_pids, children_of, tgid_of};
use crate::reorder::{self, Reorder};
use crate::runtime;

/// How long a transfer whose record came before an earlier one's waits for it
/// (usually microseconds; a thread preempted between its bytes and its record
/// on a loaded machine, milliseconds).
const REORDER_WAIT: Duration = Duration::from_millis(200);

/// Whether a transfer's record came before the record of an earlier transfer
/// on its socket: it starts ahead of its stream, or says the other direction
/// stands ahead of where that stream has got to (one past is a FIN).
fn crossed(assembler: &Assembler, head: &DataHead) -> bool {
    let next = |dir| assembler.next_seq(head.sk, dir);
    reorder::ahead(head.seq, next(head.dir), 0)
        || reorder::ahead(head.other_seq, next(head.dir.opposite()), 1)
}

/// A decoded ring record.
#[derive(Debug)]
pub enum Record<'a> {
    Data { head: DataHead, payload: &'a [u8] },
    Close { sk: u64, ts_ns: u64 },
    Connect { tid: u32, sk: u64, ts_ns: u64 },
    Exec { pid: u32 },
    Fork { pid: u32, parent: u32 },
    Exit { pid: u32 },
}

/// The fields of a [`DataEvent`] before its payload.
#[derive(Debug, Clone, Copy)]
pub struct DataHead {
    pub dir: Direction,
    pub pid: u32,
    pub tid: u32,
    pub sk: u64,
    pub ts_ns: u64,
    pub seq: u32,
    pub len: u32,
    /// The other direction's counter (see [`DataEvent::other_seq`]).
    pub other_seq: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Why a record did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error("record of {0} bytes is too short")]
    Short(usize),
    #[error("unknown record kind {0}")]
    Kind(u32),
    #[error("bad field: {0}")]
    Field(&'static str),
}

fn read<T: Copy>(bytes: &[u8]) -> Result<T, RecordError> {
    if bytes.len() < size_of::<T>() {
        return Err(RecordError::Short(bytes.len()));
    }
    // SAFETY: length checked; T is a plain #[repr(C)] struct of integers and arrays.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ring record; never panics on bad input.
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, RecordError> {
    let kind: u32 = read(bytes)?;
    match kind {
        EVENT_DATA => {
            // The header; the payload stays in place after it.
            let ev: DataEvent = read(bytes)?;
            let dir = match ev.direction {
                DIR_EGRESS => Direction::Egress,
                DIR_INGRESS => Direction::Ingress,
                _ => return Err(RecordError::Field("direction")),
            };
            let cap = ev.cap_len as usize;
            if cap > ev.len as usize {
                return Err(RecordError::Field("cap_len above len"));
            }
            let payload = bytes
                .get(DATA_HEADER_LEN..DATA_HEADER_LEN + cap)
                .ok_or(RecordError::Field("cap_len beyond the record"))?;
            let (lip, rip) = match ev.family {
                2 => (
                    IpAddr::V4(Ipv4Addr::new(
                        ev.laddr[0],
                        ev.laddr[1],
                        ev.laddr[2],
                        ev.laddr[3],
                    )),
                    IpAddr::V4(Ipv4Addr::new(
                        ev.raddr[0],
                        ev.raddr[1],
                        ev.raddr[2],
                        ev.raddr[3],
                    )),
                ),
                10 => (
                    IpAddr::V6(Ipv6Addr::from(ev.laddr)),
                    IpAddr::V6(Ipv6Addr::from(ev.raddr)),
                ),
                _ => return Err(RecordError::Field("family")),
            };
            Ok(Record::Data {
                head: DataHead {
                    dir,
                    pid: ev.pid,
                    tid: ev.tid,
                    sk: ev.sk,
                    ts_ns: ev.ts_ns,
                    seq: ev.seq,
                    len: ev.len,
                    other_seq: ev.other_seq,
                    local: SocketAddr::new(lip, ev.lport),
                    remote: SocketAddr::new(rip, u16::from_be(ev.rport_be)),
                },
                payload,
            })
        }
        EVENT_CLOSE => {
            let c: CloseEvent = read(bytes)?;
            Ok(Record::Close {
                sk: c.sk,
                ts_ns: c.ts_ns,
            })
        }
        EVENT_CONNECT => {
            let c: ConnectEvent = read(bytes)?;
            Ok(Record::Connect {
                tid: c.tid,
                sk: c.sk,
                ts_ns: c.ts_ns,
            })
        }
        EVENT_EXEC | EVENT_FORK | EVENT_EXIT => {
            let p: ProcEvent = read(bytes)?;
            Ok(match kind {
                EVENT_EXEC => Record::Exec { pid: p.pid },
                EVENT_FORK => Record::Fork {
                    pid: p.pid,
                    parent: p.ppid,
                },
                _ => Record::Exit { pid: p.pid },
            })
        }
        other => Err(RecordError::Kind(other)),
    }
}

/// Bytes of a ring record that carry something: a data record's header and
/// captured payload, all of any other record.
fn used_len(item: &[u8]) -> usize {
    match read::<DataEvent>(item) {
        Ok(ev) if ev.kind == EVENT_DATA => (DATA_HEADER_LEN + ev.cap_len as usize).min(item.len()),
        _ => item.len(),
    }
}

/// Reader settings.
#[derive(Clone)]
pub struct ReaderConfig {
    pub selection: Selection,
    pub host: String,
    pub capture_bytes: u32,
    /// Longest wait between two drains of the ring.
    pub poll_interval: Duration,
    /// Connections idle this long are forgotten.
    pub idle_conn: Duration,
    /// What the assembler may hold.
    pub limits: crate::assemble::Limits,
}

/// Everything the reader thread owns.
pub struct Reader {
    loaded: Loaded,
    config: ReaderConfig,
    assembler: Assembler,
    procs: HashMap<u32, ProcInfo>,
    self_pid: u32,
    metrics: Metrics,
    spans: mpsc::Sender<ESpan>,
    stop: Arc<AtomicBool>,
    /// Reused buffer for records copied out of the ring.
    scratch: Vec<u8>,
    /// Transfers whose records came before an earlier transfer's.
    reorder: Reorder<(DataHead, Vec<u8>)>,
}

impl Reader {
    pub fn new(
        loaded: Loaded,
        config: ReaderConfig,
        metrics: Metrics,
        spans: mpsc::Sender<ESpan>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let assembler = Assembler::with_limits(
            config.host.clone(),
            crate::assemble::measure_wall_offset(),
            config.limits,
        );
        Self {
            loaded,
            config,
            assembler,
            procs: HashMap::new(),
            self_pid: std::process::id(),
            metrics,
            spans,
            stop,
            scratch: Vec::new(),
            reorder: Reorder::new(REORDER_WAIT),
        }
    }

    /// Selects among the processes running now.
    pub fn scan(&mut self) {
        for pid in all_pids() {
            self.consider(pid);
        }
    }

    fn consider(&mut self, pid: u32) {
        let facts = if pid == self.self_pid {
            None
        } else {
            ProcFacts::read(pid)
        };
        if facts.is_none() && pid != self.self_pid && self.procs.contains_key(&pid) {
            // Gone already (a short-lived child such as a curl a script ran):
            // it keeps what it inherited, for the records it left in the ring;
            // its exit record forgets it.
            return;
        }
        let decision = facts.and_then(|f| {
            let mut info = self.config.selection.decide(&f)?;
            info.runtime = runtime::detect(pid, &f.comm, &f.exe);
            Some(info)
        });
        match decision {
            Some(info) => self.trace(pid, info),
            None => self.untrace(pid),
        }
    }

    fn trace(&mut self, pid: u32, info: ProcInfo) {
        if let Err(e) = self.set_traced(pid, true) {
            tracing::warn!(pid, "cannot add to the traced map: {e}");
            return;
        }
        tracing::debug!(pid, service = %info.service, runtime = info.runtime.label(), "tracing");
        self.procs.insert(pid, info.clone());
        self.metrics.traced_processes.set(self.procs.len() as i64);
        // A child forked before the bit was set made no fork record (nginx's
        // master forks its workers within milliseconds of its exec): children
        // that exist now are traced here, later ones by their fork record.
        for child in children_of(pid) {
            if !self.procs.contains_key(&child) {
                self.trace(child, info.clone());
            }
        }
    }

    fn untrace(&mut self, pid: u32) {
        if self.procs.remove(&pid).is_some() {
            let _ = self.set_traced(pid, false);
            self.metrics.traced_processes.set(self.procs.len() as i64);
        }
    }

    /// Sets or clears `pid`'s bit in the kernel's traced map. The kernel sets
    /// a traced process's children's bits itself (at fork), so the word is
    /// read from the map, not from a copy, right before it is written.
    fn set_traced(&mut self, pid: u32, on: bool) -> anyhow::Result<()> {
        let index = pid / 64;
        if index >= espan_common::TRACED_WORDS {
            anyhow::bail!("pid {pid} beyond the kernel's pid limit");
        }
        let word = self.loaded.traced.get(&index, 0)?;
        let bit = 1u64 << (pid % 64);
        let new = if on { word | bit } else { word & !bit };
        if new != word {
            self.loaded.traced.set(index, new, 0)?;
        }
        Ok(())
    }

    /// Runs until `stop` is set.
    /// Call [`Reader::scan`] first, so that processes already running are traced
    /// from the moment the probe says it is running.
    pub fn run(mut self) {
        let fd = self.loaded.events.as_raw_fd();
        let mut last_housekeeping = Instant::now();
        let mut spans = Vec::new();
        let timeout = self.config.poll_interval.as_millis().clamp(1, 1000) as i32;
        while !self.stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, timeout) };
            self.drain(&mut spans);
            self.feed_expired(false, &mut spans);
            self.send(&mut spans);
            if last_housekeeping.elapsed() >= Duration::from_secs(1) {
                last_housekeeping = Instant::now();
                self.housekeeping(&mut spans);
                self.send(&mut spans);
            }
        }
        // Drain what is left so a stop loses nothing already seen; connections
        // still waiting for bytes after their close end now.
        self.drain(&mut spans);
        self.feed_expired(true, &mut spans);
        let before = self.assembler.stats;
        let procs = &self.procs;
        self.assembler
            .expire(u64::MAX, &|pid| procs.get(&pid).cloned(), &mut spans);
        let after = self.assembler.stats;
        self.metrics.add_assemble(&before, &after);
        self.send(&mut spans);
        // Calls still in progress now can never become spans: count them.
        let waiting = self.assembler.requests_waiting();
        if waiting > 0 {
            self.metrics.requests_in_flight_at_stop.inc_by(waiting);
            tracing::info!(
                requests = waiting,
                "stopping with requests still waiting for their answer: no spans for them"
            );
        }
    }

    fn send(&self, spans: &mut Vec<ESpan>) {
        for span in spans.drain(..) {
            if self.spans.try_send(span).is_err() {
                self.metrics.spans_dropped_queue.inc();
            }
        }
    }

    fn drain(&mut self, spans: &mut Vec<ESpan>) {
        let before = self.assembler.stats;
        // Records are copied out of the ring before handling (the ring item
        // borrows it), into one buffer, and only the bytes they use: a data
        // record's size tier is mostly empty room.
        let mut bytes = std::mem::take(&mut self.scratch);
        let mut ends: Vec<usize> = Vec::with_capacity(256);
        loop {
            bytes.clear();
            ends.clear();
            while ends.len() < 256 {
                match self.loaded.events.next() {
                    Some(item) => {
                        bytes.extend_from_slice(&item[..used_len(&item)]);
                        ends.push(bytes.len());
                    }
                    None => break,
                }
            }
            if ends.is_empty() {
                break;
            }
            let mut start = 0;
            for &end in &ends {
                self.handle(&bytes[start..end], spans);
                start = end;
            }
        }
        self.scratch = bytes;
        let now = self.assembler.stats;
        self.metrics.add_assemble(&before, &now);
    }

    fn handle(&mut self, bytes: &[u8], spans: &mut Vec<ESpan>) {
        let procs = &self.procs;
        let lookup = |pid: u32| procs.get(&pid).cloned();
        match decode(bytes) {
            Ok(Record::Data { head, payload }) => {
                self.metrics.data_events.inc();
                if (payload.len() as u32) < head.len {
                    self.metrics.truncated_captures.inc();
                }
                if crossed(&self.assembler, &head) && self.reorder.has_room(head.sk, payload.len())
                {
                    self.reorder.hold(
                        head.sk,
                        Instant::now(),
                        payload.len(),
                        (head, payload.to_vec()),
                    );
                    // It may be the other half of a read and a write that each
                    // wait for the other.
                    self.feed_now_in_order(head.sk, spans);
                    return;
                }
                self.feed(head, payload, true, spans);
                self.feed_now_in_order(head.sk, spans);
            }
            Ok(Record::Close { sk, ts_ns }) => {
                self.metrics.close_events.inc();
                self.assembler.close(sk, ts_ns, &lookup, spans);
            }
            Ok(Record::Connect { tid, sk, ts_ns }) => {
                self.metrics.connect_events.inc();
                self.assembler.connect(tid, sk, ts_ns);
            }
            Ok(Record::Exec { pid }) => {
                self.metrics.proc_events.inc();
                self.consider(pid);
            }
            Ok(Record::Fork { pid, parent }) => {
                self.metrics.proc_events.inc();
                // A new thread shares its parent's entry; only a new process
                // needs one. One already gone (a short-lived child, such as the
                // curl a script ran) cannot be told from a thread, and gets one
                // too: its records are in the ring, and housekeeping drops the
                // entry within a second.
                if tgid_of(pid).is_none_or(|tgid| tgid == pid)
                    && let Some(info) = self.procs.get(&parent).cloned()
                {
                    self.trace(pid, info);
                }
            }
            Ok(Record::Exit { pid }) => {
                self.metrics.proc_events.inc();
                self.assembler.forget_process(pid);
                self.untrace(pid);
            }
            Err(e) => {
                tracing::debug!("bad ring record: {e}");
                self.metrics.bad_records.inc();
            }
        }
    }

    /// Feeds the transfers held for `sk` that are in order now.
    ///
    /// A read and a write in flight at once can each say the other came
    /// first (each syscall's record reads the other direction's counter after
    /// the other moved it): then neither is ever in order by the other's
    /// record. When the bytes a held transfer's `other_seq` points past are
    /// themselves held, it is fed without that check.
    fn feed_now_in_order(&mut self, sk: u64, spans: &mut Vec<ESpan>) {
        while self.reorder.holds(sk) {
            let assembler = &self.assembler;
            let next = |dir| assembler.next_seq(sk, dir);
            let in_order = |(head, _): &(DataHead, Vec<u8>)| !crossed(assembler, head);
            if let Some((head, bytes)) = self.reorder.take_ready(sk, in_order) {
                self.metrics.records_reordered.inc();
                self.feed(head, &bytes, true, spans);
                continue;
            }
            let held_starts: Vec<(Direction, u32)> = self
                .reorder
                .held(sk)
                .map(|(head, _)| (head.dir, head.seq))
                .collect();
            let crossing = |(head, _): &(DataHead, Vec<u8>)| {
                let other = head.dir.opposite();
                !reorder::ahead(head.seq, next(head.dir), 0)
                    && next(other).is_some_and(|n| held_starts.contains(&(other, n)))
            };
            let Some((head, bytes)) = self.reorder.take_ready(sk, crossing) else {
                break;
            };
            self.metrics.records_reordered.inc();
            self.feed(head, &bytes, false, spans);
        }
    }

    /// Feeds one transfer, in its stream's order, to the assembler;
    /// `trust_other`: whether its `other_seq` may tell of bytes missed the
    /// other way.
    fn feed(&mut self, head: DataHead, payload: &[u8], trust_other: bool, spans: &mut Vec<ESpan>) {
        let procs = &self.procs;
        let lookup = |pid: u32| procs.get(&pid).cloned();
        self.assembler.on_data(
            DataIn {
                pid: head.pid,
                sk: head.sk,
                dir: head.dir,
                other_seq: trust_other.then_some(head.other_seq),
                local: head.local,
                remote: head.remote,
                transfer: Transfer {
                    seq: head.seq,
                    len: head.len,
                    data: payload,
                    ts_ns: head.ts_ns,
                    tid: head.tid,
                },
            },
            &lookup,
            spans,
        );
        if let Some(sk) = self.assembler.take_h2_found() {
            // The kernel captures its frames whole from now on.
            if let Err(e) = self.loaded.h2_socks.insert(sk, 1, 0) {
                tracing::debug!("cannot mark an HTTP/2 socket: {e}");
            }
        }
    }

    /// Feeds the transfers held longer than the reorder wait (or all of them,
    /// at a stop): the bytes before them were missed.
    fn feed_expired(&mut self, all: bool, spans: &mut Vec<ESpan>) {
        let expired = if all {
            self.reorder.drain()
        } else {
            self.reorder.expired(Instant::now())
        };
        for (head, bytes) in expired {
            self.feed(head, &bytes, true, spans);
        }
    }

    fn housekeeping(&mut self, spans: &mut Vec<ESpan>) {
        let sum = |index: u32| -> i64 {
            self.loaded
                .counters
                .get(&index, 0)
                .map(|v| v.iter().sum::<u64>() as i64)
                .unwrap_or(0)
        };
        self.metrics.kernel_ring_full.set(sum(counter::RING_FULL));
        self.metrics
            .kernel_copy_failed
            .set(sum(counter::COPY_FAILED));
        self.metrics
            .kernel_sock_read_failed
            .set(sum(counter::SOCK_READ_FAILED));
        self.metrics
            .kernel_not_captured
            .set(sum(counter::NOT_CAPTURED));
        self.metrics
            .kernel_h2_beyond_capture
            .set(sum(counter::H2_BEYOND_CAPTURE));
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let now_ns = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
        let before = self.assembler.stats;
        let procs = &self.procs;
        self.assembler
            .expire(now_ns, &|pid| procs.get(&pid).cloned(), spans);
        self.assembler
            .sweep(now_ns.saturating_sub(self.config.idle_conn.as_nanos() as u64));
        let after = self.assembler.stats;
        self.metrics.add_assemble(&before, &after);
        self.metrics.connections.set(self.assembler.conns() as i64);
        self.metrics
            .parser_memory_bytes
            .set(self.assembler.held_bytes() as i64);
        // Processes whose exit was missed (ring full) are dropped here.
        let gone: Vec<u32> = self
            .procs
            .keys()
            .copied()
            .filter(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        for pid in gone {
            self.untrace(pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_or_unknown_records_are_errors() {
        assert!(matches!(decode(&[]), Err(RecordError::Short(0))));
        assert!(matches!(
            decode(&[9, 0, 0, 0, 0, 0, 0, 0]),
            Err(RecordError::Kind(9))
        ));
        assert!(matches!(decode(&[1, 0, 0, 0]), Err(RecordError::Short(4))));
    }

    #[test]
    fn data_record_round_trip() {
        let mut bytes = vec![0u8; DATA_HEADER_LEN + 16];
        let mut ev: DataEvent = read(&bytes).unwrap();
        ev.kind = EVENT_DATA;
        ev.direction = DIR_INGRESS;
        ev.pid = 7;
        ev.len = 10;
        ev.cap_len = 3;
        ev.family = 2;
        ev.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        ev.lport = 8080;
        ev.rport_be = 5000u16.to_be();
        bytes[DATA_HEADER_LEN..DATA_HEADER_LEN + 3].copy_from_slice(b"GET");
        // SAFETY: DataEvent is plain data of this size.
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast::<DataEvent>(), ev) };
        assert_eq!(used_len(&bytes), DATA_HEADER_LEN + 3);
        let Ok(Record::Data { head, payload }) = decode(&bytes) else {
            panic!("expected a data record");
        };
        assert_eq!(payload, b"GET");
        assert_eq!(head.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(head.remote.port(), 5000);
        // cap_len above len is rejected.
        ev.cap_len = 11;
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast::<DataEvent>(), ev) };
        assert!(decode(&bytes).is_err());
        // A record cut short is rejected, not read past its end.
        ev.cap_len = 3;
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast::<DataEvent>(), ev) };
        assert!(decode(&bytes[..DATA_HEADER_LEN + 1]).is_err());
    }
}
