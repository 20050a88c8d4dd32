//! Puts a socket's transfers back in order when two threads' records crossed
//! in the ring.
//!
//! The kernel writes a transfer's record after the bytes moved, outside the
//! socket's lock. When two threads use one socket at once (gRPC's C core reads
//! on one thread and writes on another), a later transfer's record can be
//! reserved before an earlier one's: a read ahead of the read before it, or a
//! write whose record says where the reads stand (`other_seq`) before the
//! record of the read that got them there. Fed as they come, both look like
//! bytes missed (a gap; for HTTP/2 the end of its header compression state;
//! for in-order protocols the waiting requests abandoned). Such a record is
//! therefore held, briefly, until the records before it come; if they do not
//! come in time, it is fed anyway and the bytes were really missed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A transfer more than this ahead of its stream is not a crossed record (a
/// reused socket, or bytes really missed): fed at once.
const MAX_AHEAD: u32 = 4 << 20;
/// Transfers held per socket at most: under load a thread can be preempted
/// between its bytes moving and its record, while the socket's other threads
/// go on (seen: records 100 KB and dozens of transfers out of order on a busy
/// gRPC connection).
const MAX_HELD: usize = 256;
/// Bytes held for all sockets at most (records are copied to be held).
const MAX_HELD_BYTES: usize = 32 << 20;

/// Whether a stream that expects `next` has yet to see bytes before `pos`:
/// `slack` bytes ahead still count as reached (a FIN takes a sequence number
/// that no transfer carries).
pub fn ahead(pos: u32, next: Option<u32>, slack: u32) -> bool {
    next.is_some_and(|next| {
        let by = pos.wrapping_sub(next);
        by > slack && by < MAX_AHEAD
    })
}

/// Transfers held until the records before them come, per socket in the order
/// they arrived.
#[derive(Debug)]
pub struct Reorder<T> {
    held: HashMap<u64, Vec<(Instant, usize, T)>>,
    held_bytes: usize,
    wait: Duration,
}

impl<T> Reorder<T> {
    /// Holds a transfer at most `wait`.
    pub fn new(wait: Duration) -> Self {
        Self {
            held: HashMap::new(),
            held_bytes: 0,
            wait,
        }
    }

    /// Whether another transfer of socket `sk`, of `bytes`, can be held.
    pub fn has_room(&self, sk: u64, bytes: usize) -> bool {
        self.held_bytes + bytes <= MAX_HELD_BYTES
            && self.held.get(&sk).is_none_or(|h| h.len() < MAX_HELD)
    }

    /// Holds `item`, a transfer of `bytes` on socket `sk` received `now`.
    pub fn hold(&mut self, sk: u64, now: Instant, bytes: usize, item: T) {
        self.held_bytes += bytes;
        self.held.entry(sk).or_default().push((now, bytes, item));
    }

    /// Whether any transfer of `sk` is held (the common case is none at all).
    pub fn holds(&self, sk: u64) -> bool {
        self.held.contains_key(&sk)
    }

    /// The transfers held for `sk`, in arrival order.
    pub fn held(&self, sk: u64) -> impl Iterator<Item = &T> {
        self.held
            .get(&sk)
            .into_iter()
            .flatten()
            .map(|(_, _, item)| item)
    }

    /// The first held transfer of `sk` (in arrival order) that `ready` says
    /// can be fed now.
    pub fn take_ready(&mut self, sk: u64, ready: impl Fn(&T) -> bool) -> Option<T> {
        let held = self.held.get_mut(&sk)?;
        let i = held.iter().position(|(_, _, item)| ready(item))?;
        let (_, bytes, item) = held.remove(i);
        if held.is_empty() {
            self.held.remove(&sk);
        }
        self.held_bytes -= bytes;
        Some(item)
    }

    /// The transfers of every socket one of whose transfers was held longer
    /// than the wait (by `now`), in arrival order: what they waited for never
    /// came.
    pub fn expired(&mut self, now: Instant) -> Vec<T> {
        let wait = self.wait;
        let stale: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| {
                h.first()
                    .is_some_and(|(since, _, _)| now.saturating_duration_since(*since) >= wait)
            })
            .map(|(sk, _)| *sk)
            .collect();
        let mut out = Vec::new();
        for sk in stale {
            if let Some(held) = self.held.remove(&sk) {
                for (_, bytes, item) in held {
                    self.held_bytes -= bytes;
                    out.push(item);
                }
            }
        }
        out
    }

    /// Every held transfer, for a stop (each socket's in arrival order).
    pub fn drain(&mut self) -> Vec<T> {
        self.held_bytes = 0;
        self.held
            .drain()
            .flat_map(|(_, held)| held.into_iter().map(|(_, _, item)| item))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ahead_means_by_little_and_not_within_the_slack() {
        assert!(ahead(150, Some(100), 0));
        assert!(!ahead(100, Some(100), 0));
        assert!(!ahead(101, Some(100), 1), "a FIN's sequence number");
        assert!(ahead(102, Some(100), 1));
        assert!(
            !ahead(90, Some(100), 0),
            "behind is a late record, fed as it is"
        );
        assert!(
            !ahead(100 + MAX_AHEAD, Some(100), 0),
            "far ahead: missed bytes"
        );
        assert!(!ahead(150, None, 0), "a stream not seen yet");
        assert!(ahead(5, Some(u32::MAX - 5), 0), "across the wrap");
    }

    #[test]
    fn a_held_transfer_is_taken_once_it_is_ready_in_arrival_order() {
        let mut r = Reorder::new(Duration::from_millis(20));
        let now = Instant::now();
        r.hold(7, now, 10, 150);
        r.hold(7, now, 10, 200);
        assert!(r.holds(7) && !r.holds(8));
        assert_eq!(r.take_ready(7, |&seq| seq == 120), None);
        assert_eq!(r.take_ready(7, |&seq| seq >= 150), Some(150));
        assert_eq!(r.take_ready(7, |&seq| seq >= 150), Some(200));
        assert!(!r.holds(7));
    }

    #[test]
    fn what_waits_too_long_comes_out_in_arrival_order() {
        let mut r = Reorder::new(Duration::from_millis(20));
        let t0 = Instant::now();
        r.hold(7, t0, 1, 3);
        r.hold(7, t0 + Duration::from_millis(15), 1, 1);
        r.hold(8, t0 + Duration::from_millis(15), 1, 9);
        assert!(r.expired(t0 + Duration::from_millis(10)).is_empty());
        assert_eq!(r.expired(t0 + Duration::from_millis(25)), vec![3, 1]);
        assert_eq!(r.drain(), vec![9]);
    }

    #[test]
    fn a_socket_holds_a_bounded_number() {
        let mut r = Reorder::new(Duration::from_millis(20));
        let now = Instant::now();
        for i in 0..MAX_HELD {
            assert!(r.has_room(7, 1));
            r.hold(7, now, 1, i);
        }
        assert!(!r.has_room(7, 1));
        assert!(r.has_room(8, 1));
        assert!(!r.has_room(8, MAX_HELD_BYTES), "the bytes of all sockets");
        r.drain();
        assert!(r.has_room(8, MAX_HELD_BYTES));
    }
}
