//! The turn rule: in-process parents for event loops (nginx, Node.js, asyncio),
//! where one thread serves many requests and the thread rule is unsound.
//!
//! An event loop runs a request's handler when an event wakes it: the read that
//! completes the request, or the read that brings the answer of a call it made.
//! The handler runs until it waits again, and a call it makes on the way is
//! written before the loop reads anything else. So a client request written on a
//! thread right after the event that woke request X, with no other traced socket
//! event of that thread in between, is X's call — provided nothing else could
//! have run in that gap. Something else could if another request on the thread
//! were runnable too (read, or woken by its call's answer, and not waiting on a
//! call of its own): a timer or an untraced descriptor could resume it without a
//! traced event. So the rule gives a parent only when the woken request is the
//! only one on its thread that is not waiting on a call, and a call outstanding
//! for longer than [`WAIT_TRUST_NS`] no longer counts as waiting (its own timeout
//! could resume its request).
//!
//! A new upstream connection is written to in a later turn (after the connect
//! completes); its first request belongs to the request whose turn made the
//! `connect`, by the same rule applied at the connect.
//!
//! A turn lasts at most [`TURN_MAX_NS`]: the bound narrows the one case the
//! rule cannot see, a task tied to no request (a periodic timer) that writes a
//! call right after a request's read while that request waits on something
//! untraced (a file, a lock).
//!
//! Go: a goroutine's syscalls run on whichever thread the scheduler picks, but
//! a handler that sends its request to net/http's per-connection write loop
//! makes that goroutine the next to run on its thread (the channel send puts it
//! in `runnext`), so the write usually follows the read on the same thread. The
//! rule holds there if "runnable" counts the whole process's requests, not the
//! thread's (the caller passes those), and without connection origins (net/http
//! dials in a goroutine of its own and gives the connection to whichever request
//! waits first).

use std::collections::HashMap;

/// How long a request waiting on its call is trusted not to resume on its own
/// (a timeout, a retry) (ns). Client timeouts under a second are rare; under
/// load, calls take hundreds of ms, and a shorter trust leaves most turns
/// ambiguous (measured: in-process recall through nginx fell to 18% at 200 ms
/// with the machine's 2 cores busy).
pub const WAIT_TRUST_NS: u64 = 1_000_000_000;

/// The longest a turn lasts: a call written later than this after the event
/// that woke its request is not named by it. A handler that calls out does so
/// within tens of µs; the bound keeps a background task (a timer not tied to a
/// request) that happens to write after a request's read while that request
/// waits on something untraced from being taken for that request's call, but
/// in a narrow window.
pub const TURN_MAX_NS: u64 = 50_000_000;

/// How long a connection's origin waits for its first request (ns).
const ORIGIN_TTL_NS: u64 = 10_000_000_000;

/// What a thread's last traced socket event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    /// It woke this request (server span id), at this time (monotonic ns).
    Woke(u64, u64),
    /// Anything else.
    Other,
}

/// Calls a served request is waiting on.
#[derive(Debug, Clone, Copy, Default)]
struct Waiting {
    calls: u32,
    /// When the oldest outstanding call (or connect) began (monotonic ns).
    since_ns: u64,
}

/// The turn rule's state (see the module doc).
#[derive(Debug, Default)]
pub struct Turns {
    last: HashMap<u32, Last>,
    /// Server span → the calls it waits on.
    waiting: HashMap<u64, Waiting>,
    /// Client span → the served request it was made for (by this rule).
    calls: HashMap<u64, u64>,
    /// Socket → the request whose turn connected it, and when.
    origins: HashMap<u64, (u64, u64)>,
}

impl Turns {
    /// The request whose turn thread `tid` is in, if the rule may name it:
    /// `served` are the server spans the thread serves.
    pub fn sole_woken(&self, tid: u32, served: &[u64], now_ns: u64) -> Option<u64> {
        let Some(&Last::Woke(x, at)) = self.last.get(&tid) else {
            return None;
        };
        if !served.contains(&x) || now_ns.saturating_sub(at) > TURN_MAX_NS {
            return None;
        }
        let others_wait = served.iter().filter(|&&s| s != x).all(|s| {
            self.waiting
                .get(s)
                .is_some_and(|w| w.calls > 0 && now_ns.saturating_sub(w.since_ns) < WAIT_TRUST_NS)
        });
        others_wait.then_some(x)
    }

    /// Thread `tid`'s last event, at `now_ns`, woke `request`, or (None) did
    /// something else.
    pub fn set_last(&mut self, tid: u32, request: Option<u64>, now_ns: u64) {
        let last = match request {
            Some(x) => Last::Woke(x, now_ns),
            None => Last::Other,
        };
        self.last.insert(tid, last);
    }

    /// `request` started a call (a client request, or a connect for one).
    fn wait(&mut self, request: u64, now_ns: u64) {
        let w = self.waiting.entry(request).or_default();
        if w.calls == 0 {
            w.since_ns = now_ns;
        }
        w.calls += 1;
    }

    /// Thread `tid` connected socket `sk`: its first request will belong to the
    /// request whose turn this was.
    pub fn connect(&mut self, tid: u32, sk: u64, served: &[u64], now_ns: u64) {
        if let Some(x) = self.sole_woken(tid, served, now_ns) {
            self.origins.insert(sk, (x, now_ns));
            self.wait(x, now_ns);
        }
        self.set_last(tid, None, now_ns);
    }

    /// The request whose turn connected socket `sk`, taken by the socket's
    /// first client request (whichever rule then names its parent), or dropped
    /// when the socket closes.
    pub fn take_origin(&mut self, sk: u64) -> Option<u64> {
        let (origin, _) = self.origins.remove(&sk)?;
        if let Some(w) = self.waiting.get_mut(&origin) {
            w.calls = w.calls.saturating_sub(1);
        }
        Some(origin)
    }

    /// The parent of client span `call`: `origin` if its socket was connected
    /// in a request's turn and this is the socket's first request, else
    /// `adjacent`, the request whose turn its first transfer was in (if the rule
    /// named one then). Only a request still among `served` (its thread's) can
    /// be named; the parent then waits on the call.
    pub fn client_call(
        &mut self,
        call: u64,
        origin: Option<u64>,
        adjacent: Option<u64>,
        served: &[u64],
        now_ns: u64,
    ) -> Option<u64> {
        let parent = origin.or(adjacent).filter(|p| served.contains(p))?;
        self.wait(parent, now_ns);
        self.calls.insert(call, parent);
        Some(parent)
    }

    /// Client span `call` ended (answered or not): the request it was made for,
    /// which no longer waits on it.
    pub fn call_ended(&mut self, call: u64) -> Option<u64> {
        let parent = self.calls.remove(&call)?;
        if let Some(w) = self.waiting.get_mut(&parent) {
            w.calls = w.calls.saturating_sub(1);
        }
        Some(parent)
    }

    /// Server span `request` was answered (or given up): forget it.
    pub fn served(&mut self, request: u64) {
        self.waiting.remove(&request);
    }

    /// Drops connect origins that never saw a request, and threads' state of a
    /// process that ended.
    pub fn expire(&mut self, now_ns: u64) {
        self.origins
            .retain(|_, &mut (_, at)| now_ns.saturating_sub(at) < ORIGIN_TTL_NS);
    }

    /// Thread `tid` ended.
    pub fn forget_thread(&mut self, tid: u32) {
        self.last.remove(&tid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_right_after_the_only_runnable_request_was_read_is_its_call() {
        let mut t = Turns::default();
        t.set_last(1, Some(10), 0);
        assert_eq!(t.sole_woken(1, &[10], 0), Some(10));
        assert_eq!(t.client_call(100, None, Some(10), &[10], 0), Some(10));
        // Another thread's turn says nothing about thread 1.
        assert_eq!(t.sole_woken(2, &[10], 0), None);
        // A turn ends after TURN_MAX_NS ...
        assert_eq!(t.sole_woken(1, &[10], TURN_MAX_NS), Some(10));
        assert_eq!(t.sole_woken(1, &[10], TURN_MAX_NS + 1), None);
        // ... and with anything else on the thread.
        t.set_last(1, None, 0);
        assert_eq!(t.sole_woken(1, &[10], 0), None);
    }

    #[test]
    fn another_runnable_request_makes_the_turn_ambiguous() {
        let mut t = Turns::default();
        // 10 was read and made no call yet: it could resume on a timer.
        t.set_last(1, Some(11), 0);
        assert_eq!(t.sole_woken(1, &[10, 11], 0), None);
        // Once 10 waits on a call, 11's turn is 11's alone.
        t.set_last(1, Some(10), 0);
        let adjacent = t.sole_woken(1, &[10], 0);
        t.client_call(100, None, adjacent, &[10], 0);
        t.set_last(1, Some(11), 0);
        assert_eq!(t.sole_woken(1, &[10, 11], 1), Some(11));
        // ... until its call has waited long enough to time out.
        t.set_last(1, Some(11), WAIT_TRUST_NS);
        assert_eq!(t.sole_woken(1, &[10, 11], WAIT_TRUST_NS), None);
        t.set_last(1, Some(11), 1);
        // Its answer makes it runnable again.
        assert_eq!(t.call_ended(100), Some(10));
        assert_eq!(t.sole_woken(1, &[10, 11], 1), None);
    }

    #[test]
    fn a_connection_opened_in_a_turn_carries_that_request_to_its_first_call() {
        let mut t = Turns::default();
        t.set_last(1, Some(10), 0);
        t.connect(1, 7, &[10], 0);
        // The connect ends the turn, and 10 now waits on it.
        t.set_last(1, Some(11), 0);
        assert_eq!(t.sole_woken(1, &[10, 11], 1), Some(11));
        // The first request on the new connection, written in another turn, is 10's.
        let origin = t.take_origin(7);
        assert_eq!(t.client_call(100, origin, Some(11), &[10, 11], 2), Some(10));
        // The next one on it goes by its turn.
        assert_eq!(t.take_origin(7), None);
        assert_eq!(t.client_call(101, None, None, &[10, 11], 3), None);
        // A request no longer served is never named.
        t.set_last(1, Some(12), 0);
        t.connect(1, 8, &[12], 4);
        let origin = t.take_origin(8);
        assert_eq!(t.client_call(102, origin, None, &[13], 5), None);
    }

    #[test]
    fn a_connect_in_an_ambiguous_turn_gives_its_connection_no_origin() {
        let mut t = Turns::default();
        t.set_last(1, Some(11), 0);
        t.connect(1, 7, &[10, 11], 0);
        assert_eq!(t.take_origin(7), None);
        t.set_last(1, Some(10), 0);
        t.connect(1, 8, &[10], 2);
        t.take_origin(8);
        assert!(t.origins.is_empty());
        assert_eq!(t.waiting[&10].calls, 0);
    }
}
