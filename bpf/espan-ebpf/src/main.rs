//! espan's kernel side: filter by the traced-pid map, copy the first bytes of each
//! TCP transfer with its sequence number into a ring buffer, report process and
//! connection life events. Parsing is user space's job.
//!
//! One hook per transfer: the socket layer's `sock_{send,recv}_length` tracepoint
//! fires inside the syscall, after the bytes moved, with the `struct sock` and
//! the length. It is attached raw (the arguments as the kernel passes them, no
//! trace record built first), as is `inet_sock_set_state`. The user buffer comes from the syscall's own arguments, read from
//! the registers the syscall entry saved (`pt_regs`), so no syscall tracepoint
//! is needed: a syscall on a file, a pipe or a UDP socket, or of an untraced
//! process, costs nothing here.
#![no_std]
#![no_main]

use aya_ebpf::EbpfContext;
use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use aya_ebpf::helpers::generated::{
    bpf_get_current_task_btf, bpf_get_smp_processor_id, bpf_loop,
    bpf_probe_read_kernel as raw_read_kernel, bpf_probe_read_user as raw_read_user,
    bpf_task_pt_regs,
};
use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
};
use aya_ebpf::macros::{map, raw_tracepoint, tracepoint};
use aya_ebpf::maps::{Array, LruHashMap, PerCpuArray, RingBuf};
use aya_ebpf::programs::{RawTracePointContext, TracePointContext};
use espan_common::{
    CloseEvent, ConnectEvent, DIR_EGRESS, DIR_INGRESS, DataEvent, EVENT_CLOSE, EVENT_CONNECT,
    EVENT_DATA, EVENT_EXEC, EVENT_EXIT, EVENT_FORK, H2_CAPTURE, H2_GATHER, MAX_CAPTURE, ProcEvent,
    TRACED_WORDS, counter, layout, syscall,
};

// Set by user space from the kernel's BTF (never hard-coded) and from the config.
#[unsafe(no_mangle)]
static OFF_WRITE_SEQ: u32 = 0;
#[unsafe(no_mangle)]
static OFF_COPIED_SEQ: u32 = 0;
#[unsafe(no_mangle)]
static OFF_RCV_NXT: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SK_FLAGS: u32 = 0;
#[unsafe(no_mangle)]
static SOCK_DONE_BIT: u32 = 1;
#[unsafe(no_mangle)]
static OFF_SK_TYPE_PROTO: u32 = 0;
#[unsafe(no_mangle)]
static TCP_TYPE_PROTO: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SKC_DADDR: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SKC_V6_DADDR: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SKC_V6_RCV_SADDR: u32 = 0;
#[unsafe(no_mangle)]
static OFF_REGS_ARGS: u32 = 0;
#[unsafe(no_mangle)]
static SYSCALL_NRS: [u64; syscall::COUNT] = [u64::MAX; syscall::COUNT];
#[unsafe(no_mangle)]
static TP_FORK_CHILD_PID: u32 = 20;
#[unsafe(no_mangle)]
static CAPTURE_BYTES: u32 = 1024;
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 1 << 20;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const MSG_PEEK: i32 = 2;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;

// A bit per pid: an array lookup is a bounds check and an address, where a hash
// lookup hashes and walks a bucket, and every socket send and receive on the
// host asks it.
#[map]
static TRACED: Array<u64> = Array::with_max_entries(TRACED_WORDS, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

// LRU: a socket whose close was never seen (the probe restarted) ages out.
#[map]
static H2_SOCKS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);

/// The first 8 bytes of HTTP/2's client preface (`PRI * HTTP/2.0…`), as a
/// little-endian u64.
const H2_PREFACE_HEAD: u64 = u64::from_le_bytes(*b"PRI * HT");

/// A data record reserved with `N` bytes of payload room.
#[repr(C)]
struct Record<const N: usize> {
    head: DataEvent,
    data: [u8; N],
}

#[inline(always)]
fn global<T: Copy>(v: &T) -> T {
    // SAFETY: a plain read; volatile so the compiler keeps the load user space patches.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
fn ctx_field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: constant offsets inside the tracepoint record, checked against the
    // format file by user space before loading.
    unsafe { core::ptr::read_unaligned(ctx.as_ptr().add(offset).cast::<T>()) }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn is_traced(tgid: u32) -> bool {
    TRACED
        .get(tgid >> 6)
        .is_some_and(|word| (*word >> (tgid & 63)) & 1 == 1)
}

/// Sets or clears `id`'s bit. Not atomic: a bit lost to a concurrent update
/// of the same word is set again by user space from the fork record.
#[inline(always)]
fn set_traced_bit(id: u32, on: bool) {
    if let Some(word) = TRACED.get_ptr_mut(id >> 6) {
        let bit = 1u64 << (id & 63);
        // SAFETY: a valid map value pointer.
        unsafe {
            if on {
                *word |= bit;
            } else if *word & bit != 0 {
                *word &= !bit;
            }
        }
    }
}

#[inline(always)]
fn traced() -> bool {
    is_traced((bpf_get_current_pid_tgid() >> 32) as u32)
}

#[inline(always)]
fn read_kernel<T: Copy>(addr: u64) -> Option<T> {
    // SAFETY: kernel memory read through the helper, which checks the address.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// Most iovecs of one readv/writev/recvmsg/sendmsg whose bytes are captured.
const MAX_IOVECS: u64 = 16;
/// The same on an HTTP/2 socket: gRPC's C core writes each frame header and
/// each payload as an iovec of its own, 60 at once.
const MAX_H2_IOVECS: u64 = 64;

/// Where a syscall's bytes are in user memory.
#[derive(Clone, Copy)]
enum UserBytes {
    /// Not a syscall whose buffer is known (sendfile, splice, io_uring, …).
    Unknown,
    /// One buffer: `(address, size)`.
    Buffer(u64, u64),
    /// An array of `count` iovecs (`struct iovec { void *iov_base; size_t
    /// iov_len; }`, user ABI) at `address`: the bytes run through them in order.
    Vector(u64, u64),
}

/// The bytes of the syscall this transfer happens in, from the registers its
/// entry saved, or `Unknown` when the syscall is not one whose buffer is known
/// or does not move bytes the way `direction` says.
#[inline(always)]
fn syscall_bytes(direction: u32) -> UserBytes {
    // SAFETY: helpers without preconditions; the result is only used as an
    // address for the reading helper.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    if regs == 0 {
        return UserBytes::Unknown;
    }
    // dx, si, di, orig_ax: third, second, first argument, syscall number.
    let Some(r) = read_kernel::<[u64; 4]>(regs + global(&OFF_REGS_ARGS) as u64) else {
        return UserBytes::Unknown;
    };
    let (nr, buf, size) = (r[3], r[1], r[0]);
    let nrs = global(&SYSCALL_NRS);
    // The syscalls that move bytes this way (see espan_common::syscall).
    let (plain, from_to, vec, msg) = if direction == DIR_INGRESS {
        (
            syscall::READ,
            syscall::RECVFROM,
            syscall::READV,
            syscall::RECVMSG,
        )
    } else {
        (
            syscall::WRITE,
            syscall::SENDTO,
            syscall::WRITEV,
            syscall::SENDMSG,
        )
    };
    // read/write, recvfrom/sendto: (fd, buf, len, …).
    if nr == nrs[plain] || nr == nrs[from_to] {
        return UserBytes::Buffer(buf, size);
    }
    // readv/writev: (fd, iov, iovcnt).
    if nr == nrs[vec] {
        return UserBytes::Vector(buf, size);
    }
    // recvmsg/sendmsg: (fd, msghdr, flags); `msg_iov` and `msg_iovlen` are at 16
    // and 24 in the user ABI.
    if nr == nrs[msg] {
        // SAFETY: reading user memory through the helper, which checks the address.
        return match unsafe { bpf_probe_read_user((buf + 16) as *const [u64; 2]) } {
            Ok([iov, count]) => UserBytes::Vector(iov, count),
            Err(_) => UserBytes::Unknown,
        };
    }
    UserBytes::Unknown
}

/// Per-CPU room where the first bytes of several iovecs are gathered (twice the
/// largest capture, so that the verifier can see every copy stays inside).
#[map]
static GATHER: PerCpuArray<[u8; 2 * MAX_CAPTURE]> = PerCpuArray::with_max_entries(1, 0);

/// Copies up to `want` (≤ MAX_CAPTURE) bytes from the `iovcnt` iovecs at `iov`
/// into `dst`, in order; returns how many it copied (fewer when the iovecs
/// hold fewer, or one could not be read).
#[inline(always)]
fn gather_iovecs(iov: u64, iovcnt: u64, want: u64, dst: *mut u8) -> u64 {
    let mut off: u64 = 0;
    let mut i: u64 = 0;
    while i < MAX_IOVECS {
        if i >= iovcnt || off >= want || off >= MAX_CAPTURE as u64 {
            break;
        }
        // SAFETY: reading user memory through the helper, which checks the address.
        let Ok([base, len]) = (unsafe { bpf_probe_read_user((iov + i * 16) as *const [u64; 2]) })
        else {
            break;
        };
        i += 1;
        let mut n = want - off;
        if n > len {
            n = len;
        }
        if n > MAX_CAPTURE as u64 {
            n = MAX_CAPTURE as u64;
        }
        if n > 0 {
            // SAFETY: off < MAX_CAPTURE and n ≤ MAX_CAPTURE, so the copy stays
            // inside the 2 × MAX_CAPTURE bytes at `dst`.
            let rc = unsafe {
                raw_read_user(
                    dst.add(off as usize).cast::<core::ffi::c_void>(),
                    n as u32,
                    base as *const core::ffi::c_void,
                )
            };
            if rc < 0 {
                count(counter::COPY_FAILED);
                break;
            }
        }
        off += n;
    }
    off
}

/// Where the first `n` bytes of the syscall's buffer are copied from (several
/// iovecs are gathered into the per-CPU room first).
#[inline(always)]
fn source_of(bytes: UserBytes, n: u64) -> Source {
    match bytes {
        UserBytes::Unknown => Source::User(0, 0),
        UserBytes::Buffer(buf, size) => Source::User(buf, n.min(size)),
        // One iovec is a buffer. Several (Node.js writes a response's head and
        // body chunks as one writev) are gathered first, so the parser sees the
        // bytes as they go on the wire, not just the first iovec's.
        UserBytes::Vector(iov, 1) => match unsafe { bpf_probe_read_user(iov as *const [u64; 2]) } {
            Ok([buf, size]) => Source::User(buf, n.min(size)),
            Err(_) => Source::User(0, 0),
        },
        UserBytes::Vector(iov, iovcnt) => match GATHER.get_ptr_mut(0) {
            Some(room) => {
                let room = room.cast::<u8>();
                Source::Kernel(room as u64, gather_iovecs(iov, iovcnt, n, room))
            }
            None => Source::User(0, 0),
        },
    }
}

// sock_{send,recv}_length(struct sock *sk, int ret, int flags); user space
// checked these arguments against the kernel's BTF.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> i32 {
    let _ = try_sock_length(ctx.arg(0), ctx.arg::<u64>(1) as i32, DIR_EGRESS);
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> i32 {
    let flags = ctx.arg::<u64>(2) as i32;
    // A peek leaves the bytes (and copied_seq) in place; they come again.
    if flags & MSG_PEEK == 0 {
        let _ = try_sock_length(ctx.arg(0), ctx.arg::<u64>(1) as i32, DIR_INGRESS);
    }
    0
}

/// Whether `sk` is a TCP socket (`sk_type` and `sk_protocol` read together).
#[inline(always)]
fn is_tcp(sk: u64) -> bool {
    read_kernel::<u32>(sk + global(&OFF_SK_TYPE_PROTO) as u64) == Some(global(&TCP_TYPE_PROTO))
}

#[inline(always)]
fn try_sock_length(sk: u64, ret: i32, direction: u32) -> Result<(), i64> {
    if ret <= 0 {
        return Ok(());
    }
    let id = bpf_get_current_pid_tgid();
    if !is_traced((id >> 32) as u32) {
        return Ok(());
    }
    // skc_daddr, skc_rcv_saddr, skc_hash, skc_dport, skc_num, skc_family.
    let Some(tuple) = read_kernel::<[u8; 18]>(sk + global(&OFF_SKC_DADDR) as u64) else {
        count(counter::SOCK_READ_FAILED);
        return Ok(());
    };
    let family = u16::from_ne_bytes([tuple[16], tuple[17]]);
    if (family != AF_INET && family != AF_INET6) || !is_tcp(sk) {
        return Ok(());
    }
    let (seq_off, other_off) = if direction == DIR_EGRESS {
        (global(&OFF_WRITE_SEQ), global(&OFF_COPIED_SEQ))
    } else {
        (global(&OFF_COPIED_SEQ), global(&OFF_WRITE_SEQ))
    };
    // The counter has already moved past these bytes: their first byte is ret back.
    let Some(mut after) = read_kernel::<u32>(sk + seq_off as u64) else {
        count(counter::SOCK_READ_FAILED);
        return Ok(());
    };
    if direction == DIR_INGRESS && consumed_fin(sk, after) {
        // The read also consumed the peer's FIN, which takes one sequence number
        // after the last byte: without this the first byte's seq is off by one.
        after = after.wrapping_sub(1);
    }
    let other: u32 = read_kernel(sk + other_off as u64).unwrap_or(0);
    let len = ret as u32;
    let mut head = DataEvent {
        kind: EVENT_DATA,
        direction,
        pid: (id >> 32) as u32,
        tid: id as u32,
        sk,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        seq: after.wrapping_sub(len),
        len,
        cap_len: 0,
        other_seq: other,
        family,
        lport: u16::from_ne_bytes([tuple[14], tuple[15]]),
        rport_be: u16::from_ne_bytes([tuple[12], tuple[13]]),
        _pad: [0; 2],
        laddr: [0; 16],
        raddr: [0; 16],
    };
    if family == AF_INET6 {
        if let Some(a) = read_kernel(sk + global(&OFF_SKC_V6_RCV_SADDR) as u64) {
            head.laddr = a;
        }
        if let Some(a) = read_kernel(sk + global(&OFF_SKC_V6_DADDR) as u64) {
            head.raddr = a;
        }
    } else {
        head.laddr[..4].copy_from_slice(&tuple[4..8]);
        head.raddr[..4].copy_from_slice(&tuple[0..4]);
    }

    let bytes = syscall_bytes(direction);
    if matches!(bytes, UserBytes::Unknown) {
        count(counter::NOT_CAPTURED);
    }
    // SAFETY: a plain lookup; the value is not read.
    if unsafe { H2_SOCKS.get(&sk) }.is_some() {
        emit_h2(&head, bytes);
        return Ok(());
    }
    // Bytes to copy: what moved, what the buffer holds, what the config allows.
    let mut n = len as u64;
    let cap = global(&CAPTURE_BYTES) as u64;
    if n > cap {
        n = cap;
        // A transfer longer than the capture that starts with HTTP/2's
        // preface (a server reading it with the first requests) is captured
        // whole, or the connection's header compression state would be lost
        // from its first bytes.
        if first_bytes(bytes) == H2_PREFACE_HEAD {
            let _ = H2_SOCKS.insert(sk, 1u32, 0);
            emit_h2(&head, bytes);
            return Ok(());
        }
    }
    let source = source_of(bytes, n);
    if emit_tiered(&head, source) == H2_PREFACE_HEAD {
        // The client's preface: the connection speaks HTTP/2 from here on.
        let _ = H2_SOCKS.insert(sk, 1u32, 0);
    }
    Ok(())
}

/// The first 8 bytes of the syscall's buffer (0 when it has fewer, or none).
#[inline(always)]
fn first_bytes(bytes: UserBytes) -> u64 {
    let addr = match bytes {
        UserBytes::Buffer(buf, size) if size >= 8 => buf,
        UserBytes::Vector(iov, n) if n > 0 => {
            // SAFETY: reading user memory through the helper, which checks the address.
            match unsafe { bpf_probe_read_user(iov as *const [u64; 2]) } {
                Ok([buf, size]) if size >= 8 => buf,
                _ => return 0,
            }
        }
        _ => return 0,
    };
    // SAFETY: as above.
    unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0)
}

/// Emits a record in the smallest reservation that holds `source` (see
/// espan_common::CAPTURE_TIERS); returns its first 8 bytes (0 when fewer).
#[inline(always)]
fn emit_tiered(head: &DataEvent, source: Source) -> u64 {
    let n = source.len();
    if n <= 128 {
        emit::<128>(head, source)
    } else if n <= 512 {
        emit::<512>(head, source)
    } else if n <= 1024 {
        emit::<1024>(head, source)
    } else if n <= 2048 {
        emit::<2048>(head, source)
    } else {
        emit::<MAX_CAPTURE>(head, source)
    }
}

/// Room where an HTTP/2 transfer's iovecs are gathered, one entry per CPU
/// (user space sets the count; a per-CPU map's value cannot be this large).
/// Twice H2_GATHER, so that the verifier can see every copy stays inside.
#[map]
static H2_ROOM: Array<[u8; 2 * H2_GATHER]> = Array::with_max_entries(1, 0);

/// An HTTP/2 socket's transfer: every byte, up to H2_CAPTURE (H2_GATHER
/// through several iovecs), in one record, so that a transfer's bytes stay in
/// order with other threads' transfers on the socket.
#[inline(always)]
fn emit_h2(head: &DataEvent, bytes: UserBytes) {
    let len = head.len as u64;
    let limit = match bytes {
        UserBytes::Vector(_, n) if n > 1 => H2_GATHER,
        _ => H2_CAPTURE,
    } as u64;
    let mut want = len;
    if want > limit {
        want = limit;
        count(counter::H2_BEYOND_CAPTURE);
    }
    // Where the bytes are: one user buffer, or the iovecs gathered first.
    let source = match bytes {
        UserBytes::Unknown => Source::User(0, 0),
        UserBytes::Buffer(buf, size) => Source::User(buf, want.min(size)),
        UserBytes::Vector(iov, 1) => match unsafe { bpf_probe_read_user(iov as *const [u64; 2]) } {
            Ok([buf, size]) => Source::User(buf, want.min(size)),
            Err(_) => Source::User(0, 0),
        },
        UserBytes::Vector(iov, iovcnt) => {
            // SAFETY: no preconditions.
            let cpu = unsafe { bpf_get_smp_processor_id() };
            match H2_ROOM.get_ptr_mut(cpu) {
                Some(room) => {
                    let room = room.cast::<u8>();
                    Source::Kernel(room as u64, gather_h2(iov, iovcnt, want, room))
                }
                None => Source::User(0, 0),
            }
        }
    };
    let n = source.len();
    if n <= MAX_CAPTURE as u64 {
        emit_tiered(head, source);
    } else if n <= 4 * MAX_CAPTURE as u64 {
        emit::<{ 4 * MAX_CAPTURE }>(head, source);
    } else if n <= 16 * MAX_CAPTURE as u64 {
        emit::<{ 16 * MAX_CAPTURE }>(head, source);
    } else if n <= 64 * MAX_CAPTURE as u64 {
        emit::<{ 64 * MAX_CAPTURE }>(head, source);
    } else {
        emit::<H2_CAPTURE>(head, source);
    }
}

/// Copies up to `want` (≤ H2_GATHER) bytes from the `iovcnt` iovecs at `iov`
/// into `dst` (2 × H2_GATHER bytes), in order; returns how many it copied.
#[inline(always)]
fn gather_h2(iov: u64, iovcnt: u64, want: u64, dst: *mut u8) -> u64 {
    let mut g = H2Gather {
        iov,
        iovcnt,
        want,
        off: 0,
        dst: dst as u64,
    };
    // SAFETY: `h2_iovec` has the callback's signature; `g` outlives the loop.
    unsafe {
        bpf_loop(
            MAX_H2_IOVECS as u32,
            h2_iovec as *const () as usize as *mut core::ffi::c_void,
            (&raw mut g).cast::<core::ffi::c_void>(),
            0,
        );
    }
    g.off
}

/// The state of [`gather_h2`]'s loop.
#[repr(C)]
struct H2Gather {
    iov: u64,
    iovcnt: u64,
    want: u64,
    /// Bytes copied so far.
    off: u64,
    dst: u64,
}

/// Copies iovec `index` (`ctx` is an `H2Gather`); 1 stops the loop.
#[inline(never)]
extern "C" fn h2_iovec(index: u32, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: the loop passes the H2Gather on gather_h2's stack.
    let g = unsafe { &mut *ctx.cast::<H2Gather>() };
    let i = index as u64;
    if i >= g.iovcnt || g.off >= g.want || g.off >= H2_GATHER as u64 {
        return 1;
    }
    // SAFETY: reading user memory through the helper, which checks the address.
    let Ok([base, len]) = (unsafe { bpf_probe_read_user((g.iov + i * 16) as *const [u64; 2]) })
    else {
        return 1;
    };
    let mut n = g.want - g.off;
    if n > len {
        n = len;
    }
    if n > H2_GATHER as u64 {
        n = H2_GATHER as u64;
    }
    if n > 0 {
        let at = g.off & (H2_GATHER as u64 - 1);
        // SAFETY: at < H2_GATHER and n ≤ H2_GATHER: inside the room.
        let rc = unsafe {
            raw_read_user(
                (g.dst as *mut u8)
                    .add(at as usize)
                    .cast::<core::ffi::c_void>(),
                n as u32,
                base as *const core::ffi::c_void,
            )
        };
        if rc < 0 {
            count(counter::COPY_FAILED);
            return 1;
        }
    }
    g.off += n;
    0
}

/// Where a record's payload is copied from: `(address, bytes)` in user memory, or
/// in the per-CPU gather room.
#[derive(Clone, Copy)]
enum Source {
    User(u64, u64),
    Kernel(u64, u64),
}

impl Source {
    #[inline(always)]
    fn len(self) -> u64 {
        match self {
            Source::User(addr, n) if addr != 0 => n,
            Source::User(..) => 0,
            Source::Kernel(_, n) => n,
        }
    }
}

/// Reserves a record with `N` bytes of payload room, copies the header and up to
/// `N` bytes of `source`, submits it; returns the payload's first 8 bytes
/// (0 when fewer were copied).
#[inline(always)]
fn emit<const N: usize>(head: &DataEvent, source: Source) -> u64 {
    let Some(mut entry) = EVENTS.reserve::<Record<N>>(0) else {
        count(counter::RING_FULL);
        return 0;
    };
    let rec = entry.as_mut_ptr();
    let mut n = source.len();
    if n > N as u64 {
        n = N as u64;
    }
    let mut first: u64 = 0;
    // SAFETY: `rec` points at a reserved Record<N>; the header is written whole,
    // the payload copy stays within its N bytes, and 8 bytes are read back
    // only when at least 8 were copied (N ≥ 128).
    unsafe {
        (*rec).head = *head;
        if n > 0 {
            let dst = core::ptr::addr_of_mut!((*rec).data).cast::<core::ffi::c_void>();
            let rc = match source {
                Source::User(addr, _) => raw_read_user(dst, n as u32, addr as *const _),
                Source::Kernel(addr, _) => raw_read_kernel(dst, n as u32, addr as *const _),
            };
            if rc < 0 {
                count(counter::COPY_FAILED);
                n = 0;
            }
        }
        if n >= 8 {
            first = core::ptr::read_unaligned(core::ptr::addr_of!((*rec).data).cast::<u64>());
        }
        (*rec).head.cap_len = n as u32;
    }
    entry.submit(wakeup_flag());
    first
}

/// After a read that returned data: did it also consume the peer's FIN? The FIN
/// arrived (`SOCK_DONE`, set by `tcp_fin` only, not by a reset) and `copied_seq`
/// reached `rcv_nxt`, which counts the FIN. A read that returned data cannot come
/// after the FIN was consumed, so it was this one. `copied_seq` was read first: a
/// FIN arriving meanwhile leaves `rcv_nxt` one past it, so no false match.
#[inline(always)]
fn consumed_fin(sk: u64, copied_seq: u32) -> bool {
    // SAFETY: kernel memory reads through the helper.
    let flags: u64 =
        match unsafe { bpf_probe_read_kernel((sk + global(&OFF_SK_FLAGS) as u64) as *const u64) } {
            Ok(f) => f,
            Err(_) => return false,
        };
    if flags & (1u64 << (global(&SOCK_DONE_BIT) & 63)) == 0 {
        return false;
    }
    // SAFETY: as above.
    match unsafe { bpf_probe_read_kernel((sk + global(&OFF_RCV_NXT) as u64) as *const u32) } {
        Ok(rcv_nxt) => rcv_nxt == copied_seq,
        Err(_) => false,
    }
}

/// Batch wake-ups: a wake-up per record would cost microseconds per syscall; the
/// reader polls on a short timer and is woken only when the ring fills up.
#[inline(always)]
fn wakeup_flag() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= global(&WAKEUP_BYTES) {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

// inet_sock_set_state(const struct sock *sk, const int oldstate, const int newstate).
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    let state = ctx.arg::<u64>(2) as i32;
    if state == TCP_SYN_SENT {
        // Inside connect(), on the connecting thread.
        let sk: u64 = ctx.arg(0);
        if traced() && is_tcp(sk) {
            connect_event(sk);
        }
        return 0;
    }
    if state != TCP_CLOSE {
        return 0;
    }
    let sk: u64 = ctx.arg(0);
    if !is_tcp(sk) {
        return 0;
    }
    let _ = H2_SOCKS.remove(&sk);
    if let Some(mut entry) = EVENTS.reserve::<CloseEvent>(0) {
        entry.write(CloseEvent {
            kind: EVENT_CLOSE,
            _pad: 0,
            sk,
            // SAFETY: no preconditions.
            ts_ns: unsafe { bpf_ktime_get_ns() },
        });
        entry.submit(wakeup_flag());
    } else {
        count(counter::RING_FULL);
    }
    0
}

#[inline(always)]
fn connect_event(sk: u64) {
    let id = bpf_get_current_pid_tgid();
    if let Some(mut entry) = EVENTS.reserve::<ConnectEvent>(0) {
        entry.write(ConnectEvent {
            kind: EVENT_CONNECT,
            pid: (id >> 32) as u32,
            tid: id as u32,
            _pad: 0,
            sk,
            // SAFETY: no preconditions.
            ts_ns: unsafe { bpf_ktime_get_ns() },
        });
        entry.submit(wakeup_flag());
    } else {
        count(counter::RING_FULL);
    }
}

#[inline(always)]
fn proc_event(kind: u32, pid: u32, ppid: u32) {
    if let Some(mut entry) = EVENTS.reserve::<ProcEvent>(0) {
        entry.write(ProcEvent {
            kind,
            pid,
            ppid,
            _pad: 0,
        });
        // Process events are rare and user space should select a new process
        // before it starts talking: wake at once.
        entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    } else {
        count(counter::RING_FULL);
    }
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let pid: i32 = ctx_field(&ctx, layout::EXEC_PID);
    proc_event(EVENT_EXEC, pid as u32, 0);
    0
}

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    if traced() {
        let at = global(&TP_FORK_CHILD_PID) as usize;
        // SAFETY: inside the record (user space took the offset from the format file).
        let child: i32 = match unsafe { ctx.read_at(at) } {
            Ok(c) => c,
            Err(_) => return 0,
        };
        let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
        // The child is traced from its first instruction: a forking server's
        // child (a PostgreSQL backend) talks within a millisecond, before user
        // space could read the fork record. A thread's bit is never looked up
        // (lookups go by tgid) and is cleared at its exit; user space decides
        // about the process (its selection, an exec) from the record.
        set_traced_bit(child as u32, true);
        proc_event(EVENT_FORK, child as u32, parent);
    }
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let _ = ctx;
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // Only the group leader's exit ends the process.
    if tgid == id as u32 {
        if traced() {
            proc_event(EVENT_EXIT, tgid, 0);
        }
    } else {
        // A thread's bit, if its creation set one (a pid is never both a live
        // thread's and a live process's).
        set_traced_bit(id as u32, false);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
