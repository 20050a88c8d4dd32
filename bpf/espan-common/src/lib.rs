//! The records the kernel programs write into the ring buffer, shared by both
//! sides (`#[repr(C)]`, no pointers). Every record starts with a `u32` kind.
#![no_std]

/// A payload transfer on a TCP socket ([`DataEvent`]).
pub const EVENT_DATA: u32 = 1;
/// A TCP socket moved to CLOSE ([`CloseEvent`]).
pub const EVENT_CLOSE: u32 = 2;
/// A process called exec ([`ProcEvent`]); user space decides whether to trace it.
pub const EVENT_EXEC: u32 = 3;
/// A traced process forked ([`ProcEvent`], `pid` = child, `ppid` = parent).
pub const EVENT_FORK: u32 = 4;
/// A traced process exited ([`ProcEvent`]).
pub const EVENT_EXIT: u32 = 5;
/// A traced thread connected a TCP socket ([`ConnectEvent`]).
pub const EVENT_CONNECT: u32 = 6;

/// The process sent the bytes.
pub const DIR_EGRESS: u32 = 0;
/// The process received the bytes.
pub const DIR_INGRESS: u32 = 1;

/// Most payload bytes one record can carry; the configured capture size is at
/// most this. Enough for a request line and a typical set of headers.
pub const MAX_CAPTURE: usize = 4096;

/// On an HTTP/2 connection every byte of a transfer is captured, up to this
/// many, in one record: frames are batched many to a read or write, and a frame
/// header beyond the capture would lose the framing and, with it, the
/// connection's header compression state (see the probe's `h2` module).
pub const H2_CAPTURE: usize = 256 * MAX_CAPTURE;

/// The same for a transfer through several iovecs, gathered first in a room
/// of twice this size per possible CPU (512 KiB each).
pub const H2_GATHER: usize = 64 * MAX_CAPTURE;

/// Payload room of the sizes a data record is reserved in (the ring buffer
/// needs a constant size per reservation): the smallest that holds the bytes to
/// copy is taken, so a short transfer does not take 4 KiB of the ring.
pub const CAPTURE_TIERS: [usize; 5] = [128, 512, 1024, 2048, MAX_CAPTURE];

/// The head of a data record: one read or write on a TCP socket of a traced
/// process. The record is this header, then `cap_len` payload bytes (then the
/// unused rest of its size tier).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    /// [`EVENT_DATA`].
    pub kind: u32,
    /// [`DIR_EGRESS`] or [`DIR_INGRESS`].
    pub direction: u32,
    /// Process (tgid) and thread.
    pub pid: u32,
    pub tid: u32,
    /// The `struct sock` address: the connection's id while it lives.
    pub sk: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the transfer finished.
    pub ts_ns: u64,
    /// TCP sequence number of the transfer's first byte.
    pub seq: u32,
    /// Bytes transferred.
    pub len: u32,
    /// Payload bytes that follow the header (≤ len; less means truncated, or
    /// not captured at all for a transfer outside the hooked syscalls, e.g.
    /// sendfile).
    pub cap_len: u32,
    /// The other direction's counter at the same moment: `copied_seq` (bytes
    /// read so far) for a write, `write_seq` for a read. User space learns from
    /// it where that direction stands, and so notices bytes it never saw.
    pub other_seq: u32,
    /// AF_INET or AF_INET6.
    pub family: u16,
    /// Local port, host order.
    pub lport: u16,
    /// Remote port, network order (as the kernel keeps it).
    pub rport_be: u16,
    pub _pad: [u8; 2],
    /// Local and remote address, network order; IPv4 in the first 4 bytes.
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
}

/// Size of a [`DataEvent`]: the payload starts here.
pub const DATA_HEADER_LEN: usize = core::mem::size_of::<DataEvent>();

/// A TCP socket closed.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CloseEvent {
    /// [`EVENT_CLOSE`].
    pub kind: u32,
    pub _pad: u32,
    pub sk: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the state change.
    pub ts_ns: u64,
}

/// A traced thread began a TCP connect (the socket entered SYN_SENT inside its
/// `connect`): which request a new connection is for is the turn it was made in.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnectEvent {
    /// [`EVENT_CONNECT`].
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub _pad: u32,
    pub sk: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the state change.
    pub ts_ns: u64,
}

/// A process event: exec, fork or exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcEvent {
    /// [`EVENT_EXEC`], [`EVENT_FORK`] or [`EVENT_EXIT`].
    pub kind: u32,
    pub pid: u32,
    pub ppid: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, every bit pattern valid, no padding the kernel leaves unset
    // that user space would interpret.
    unsafe impl aya::Pod for super::DataEvent {}
    unsafe impl aya::Pod for super::CloseEvent {}
    unsafe impl aya::Pod for super::ProcEvent {}
    unsafe impl aya::Pod for super::ConnectEvent {}
}

/// Tracepoint record layouts the programs read with constant offsets (the
/// cheapest access). User space checks each against the kernel's format file
/// (`/sys/kernel/tracing/events/<group>/<name>/format`) before loading and refuses
/// to start on a kernel whose layout differs: `(field, offset, size)`.
pub mod layout {
    /// `sched:sched_process_exec`.
    pub const EXEC: &[(&str, usize, usize)] = &[("pid", 12, 4)];
    pub const EXEC_PID: usize = 12;
    // `sched:sched_process_fork` moved `child_pid` between kernels (44, then 20
    // with `__data_loc` comms): its offset is a global, `TP_FORK_CHILD_PID`.
}

/// Names of the globals user space sets at load time (offsets found in the
/// kernel's BTF, and tunables).
pub mod globals {
    /// `offsetof(struct tcp_sock, write_seq)`.
    pub const OFF_WRITE_SEQ: &str = "OFF_WRITE_SEQ";
    /// `offsetof(struct tcp_sock, copied_seq)`.
    pub const OFF_COPIED_SEQ: &str = "OFF_COPIED_SEQ";
    /// `offsetof(struct tcp_sock, rcv_nxt)`.
    pub const OFF_RCV_NXT: &str = "OFF_RCV_NXT";
    /// `offsetof(struct sock, sk_flags)` (`__sk_common.skc_flags`) and the bit of `SOCK_DONE` in it (set when
    /// the peer's FIN arrived): a read that also consumed the FIN moved
    /// `copied_seq` one past its last byte.
    pub const OFF_SK_FLAGS: &str = "OFF_SK_FLAGS";
    pub const SOCK_DONE_BIT: &str = "SOCK_DONE_BIT";
    /// `offsetof(struct sock, __sk_common.skc_daddr)`; `skc_rcv_saddr` follows at +4,
    /// `skc_dport` at +12, `skc_num` at +14 and `skc_family` at +16 (checked in
    /// user space).
    pub const OFF_SKC_DADDR: &str = "OFF_SKC_DADDR";
    /// Offset of the 4 bytes holding `sk_type` and `sk_protocol` (u16 each,
    /// adjacent, in either order), and their value for a TCP socket
    /// (`SOCK_STREAM`, `IPPROTO_TCP`) as the programs read it.
    pub const OFF_SK_TYPE_PROTO: &str = "OFF_SK_TYPE_PROTO";
    pub const TCP_TYPE_PROTO: &str = "TCP_TYPE_PROTO";
    /// `skc_v6_daddr` and `skc_v6_rcv_saddr` (16 bytes each).
    pub const OFF_SKC_V6_DADDR: &str = "OFF_SKC_V6_DADDR";
    pub const OFF_SKC_V6_RCV_SADDR: &str = "OFF_SKC_V6_RCV_SADDR";
    /// Offset of `child_pid` in the `sched_process_fork` record (from its format file).
    pub const TP_FORK_CHILD_PID: &str = "TP_FORK_CHILD_PID";
    /// Offset in `struct pt_regs` of the syscall's saved registers the programs
    /// read in one go: `dx`, `si`, `di`, `orig_ax` (x86_64: third, second and
    /// first argument, syscall number), 8 bytes each, in that order (checked in
    /// user space against BTF).
    pub const OFF_REGS_ARGS: &str = "OFF_REGS_ARGS";
    /// The numbers of the syscalls whose buffer is captured, in the order of
    /// [`super::syscall`].
    pub const SYSCALL_NRS: &str = "SYSCALL_NRS";
    /// Payload bytes to copy per transfer (≤ MAX_CAPTURE).
    pub const CAPTURE_BYTES: &str = "CAPTURE_BYTES";
    /// Wake the reader when this many bytes wait in the ring; otherwise it polls.
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
}

/// The syscalls whose user buffer is captured (indexes into `SYSCALL_NRS`).
pub mod syscall {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const RECVFROM: usize = 2;
    pub const SENDTO: usize = 3;
    pub const READV: usize = 4;
    pub const WRITEV: usize = 5;
    pub const RECVMSG: usize = 6;
    pub const SENDMSG: usize = 7;
    pub const COUNT: usize = 8;
}

/// Words of the traced-process bitmap: a bit for every possible pid
/// (`PID_MAX_LIMIT`, 2^22 on 64-bit kernels), 512 KiB.
pub const TRACED_WORDS: u32 = (1 << 22) / 64;

/// Map names.
pub mod maps {
    /// Traced processes: one bit per tgid ([`super::TRACED_WORDS`] u64 words;
    /// bit `tgid % 64` of word `tgid / 64`). Only user space writes it.
    pub const TRACED: &str = "TRACED";
    /// The ring buffer.
    pub const EVENTS: &str = "EVENTS";
    /// Counters the kernel side keeps (index → count), see `counter`.
    pub const COUNTERS: &str = "COUNTERS";
    /// Sockets that speak HTTP/2 (`struct sock` address → 1): their transfers
    /// are captured whole up to [`super::H2_CAPTURE`]. The kernel adds a socket
    /// that carries the client preface; user space adds one it finds mid-way.
    pub const H2_SOCKS: &str = "H2_SOCKS";
    /// Where an HTTP/2 transfer's iovecs are gathered: an entry per possible CPU.
    pub const H2_ROOM: &str = "H2_ROOM";
}

/// Indexes into the per-CPU `COUNTERS` array.
pub mod counter {
    /// The ring buffer was full: a record was lost.
    pub const RING_FULL: u32 = 0;
    /// Copying the payload from user memory failed.
    pub const COPY_FAILED: u32 = 1;
    /// Reading the socket failed.
    pub const SOCK_READ_FAILED: u32 = 2;
    /// A transfer made outside the hooked syscalls (sendfile, splice, io_uring,
    /// recvmmsg, …): reported without payload.
    pub const NOT_CAPTURED: u32 = 3;
    /// An HTTP/2 transfer longer than [`super::H2_CAPTURE`]: its last record is
    /// cut (user space then loses the framing until it finds it again).
    pub const H2_BEYOND_CAPTURE: u32 = 4;
    pub const LEN: u32 = 5;
}
