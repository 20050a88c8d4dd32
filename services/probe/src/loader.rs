//! Loading and attaching the kernel programs: checks privilege, mounts tracefs
//! and bpffs when missing, finds struct offsets in the kernel's BTF, checks the
//! tracepoint record layouts against their format files, then loads the object
//! built by build.rs with those values patched in.

use std::path::Path;

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::{RawTracePoint, TracePoint};
use aya::{Ebpf, EbpfLoader, include_bytes_aligned};
use espan_common::{MAX_CAPTURE, globals, layout, maps, syscall};

use crate::btf::Btf;

/// The object aya-build produced from bpf/espan-ebpf.
static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/espan"));

const TRACEFS: &str = "/sys/kernel/tracing";
const BPFFS: &str = "/sys/fs/bpf";

/// Why the probe cannot start; each names what is missing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Not root (loading tracing programs needs CAP_BPF and CAP_PERFMON).
    #[error(
        "the probe needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN to mount tracefs); running as uid {0}"
    )]
    NotRoot(u32),
    /// No BTF: the kernel was built without CONFIG_DEBUG_INFO_BTF.
    #[error(
        "no kernel BTF at /sys/kernel/btf/vmlinux ({0}); the probe needs a kernel with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf(std::io::Error),
    /// BTF was there but lacks what the probe reads.
    #[error("kernel BTF: {0}")]
    Btf(#[from] crate::btf::BtfError),
    /// tracefs is not mounted and mounting it failed.
    #[error("tracefs is not mounted at {TRACEFS} and mounting it failed: {0}")]
    NoTracefs(std::io::Error),
    /// A tracepoint is missing or its record differs from what the programs read.
    #[error("tracepoint {0}: {1}")]
    Tracepoint(String, String),
    /// The kernel refused the object or a program.
    #[error("loading the eBPF programs failed: {0}")]
    Load(String),
    /// The `struct sock` layout differs from what the programs assume.
    #[error("unexpected struct sock layout: {0}")]
    Layout(String),
}

/// Load-time settings.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Payload bytes copied per transfer.
    pub capture_bytes: u32,
    /// Ring buffer size in bytes (rounded up to a power of two pages).
    pub ring_bytes: u32,
    /// Bytes waiting in the ring that make the kernel wake the reader.
    pub wakeup_bytes: u64,
}

/// The loaded programs and the maps user space uses.
pub struct Loaded {
    /// Kept alive: dropping it detaches everything.
    pub ebpf: Ebpf,
    /// One bit per tgid (see `espan_common::maps::TRACED`).
    pub traced: Array<MapData, u64>,
    pub events: RingBuf<MapData>,
    pub counters: PerCpuArray<MapData, u64>,
    /// Sockets whose transfers are captured whole (see `espan_common::maps::H2_SOCKS`).
    pub h2_socks: aya::maps::HashMap<MapData, u64, u32>,
}

/// The syscalls whose user buffer the programs capture, in the order of
/// `espan_common::syscall`, by this machine's numbers.
const SYSCALL_NRS: [u64; syscall::COUNT] = [
    libc::SYS_read as u64,
    libc::SYS_write as u64,
    libc::SYS_recvfrom as u64,
    libc::SYS_sendto as u64,
    libc::SYS_readv as u64,
    libc::SYS_writev as u64,
    libc::SYS_recvmsg as u64,
    libc::SYS_sendmsg as u64,
];

/// The raw tracepoints attached, with the argument types the programs take
/// (after the context pointer), as [`Btf::tracepoint_args`] writes them.
const RAW_TRACEPOINTS: &[(&str, &[&str])] = &[
    ("sock_send_length", &["*sock", "int", "int"]),
    ("sock_recv_length", &["*sock", "int", "int"]),
    ("inet_sock_set_state", &["*sock", "int", "int"]),
];

/// Struct offsets the programs need, from BTF.
#[derive(Debug, Clone, Copy)]
pub struct Offsets {
    pub write_seq: u32,
    pub copied_seq: u32,
    pub rcv_nxt: u32,
    pub sk_flags: u32,
    /// Bit number of `SOCK_DONE` in `sk_flags`.
    pub sock_done_bit: u32,
    pub skc_daddr: u32,
    /// The 4 bytes of `sk_type` and `sk_protocol`, and their value for TCP.
    pub sk_type_proto: u32,
    pub tcp_type_proto: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// `pt_regs.dx`, followed by `si`, `di` and `orig_ax` (x86_64).
    pub regs_args: u32,
}

impl Offsets {
    /// Reads them from `btf`, checking that the IPv4 tuple is laid out as the
    /// kernel program reads it (one 16-byte read from `skc_daddr`).
    pub fn from_btf(btf: &Btf) -> Result<Self, LoadError> {
        let mut o = Self {
            write_seq: btf.member_offset("tcp_sock", "write_seq")?,
            copied_seq: btf.member_offset("tcp_sock", "copied_seq")?,
            rcv_nxt: btf.member_offset("tcp_sock", "rcv_nxt")?,
            sk_flags: btf.member_offset("sock", "skc_flags")?,
            sock_done_bit: match btf.enum_value("sock_flags", "SOCK_DONE")? {
                bit @ 0..64 => bit as u32,
                other => {
                    return Err(LoadError::Layout(format!(
                        "SOCK_DONE is {other}, not a bit of sk_flags"
                    )));
                }
            },
            skc_daddr: btf.member_offset("sock", "skc_daddr")?,
            sk_type_proto: 0,
            tcp_type_proto: 0,
            skc_v6_daddr: btf.member_offset("sock", "skc_v6_daddr")?,
            skc_v6_rcv_saddr: btf.member_offset("sock", "skc_v6_rcv_saddr")?,
            regs_args: Self::regs_args(btf)?,
        };
        for (field, want) in [
            ("skc_rcv_saddr", 4),
            ("skc_dport", 12),
            ("skc_num", 14),
            ("skc_family", 16),
        ] {
            let got = btf.member_offset("sock", field)?;
            if got != o.skc_daddr + want {
                return Err(LoadError::Layout(format!(
                    "{field} at {got}, expected skc_daddr ({}) + {want}",
                    o.skc_daddr
                )));
            }
        }
        // u16 sk_type and u16 sk_protocol, side by side (their order changed
        // between kernels): one 4-byte read, compared with TCP's value.
        const SOCK_STREAM: u32 = 1;
        const IPPROTO_TCP: u32 = 6;
        let ty = btf.member_offset("sock", "sk_type")?;
        let protocol = btf.member_offset("sock", "sk_protocol")?;
        (o.sk_type_proto, o.tcp_type_proto) = if protocol == ty + 2 {
            (ty, u32::from_ne_bytes(pair(SOCK_STREAM, IPPROTO_TCP)))
        } else if ty == protocol + 2 {
            (protocol, u32::from_ne_bytes(pair(IPPROTO_TCP, SOCK_STREAM)))
        } else {
            return Err(LoadError::Layout(format!(
                "sk_type at {ty} and sk_protocol at {protocol} are not side by side"
            )));
        };
        Ok(o)
    }

    /// Where the syscall's saved arguments and number are in `struct pt_regs`:
    /// the programs read `dx`, `si`, `di` and `orig_ax` as four consecutive
    /// 8-byte words (x86_64's layout; other architectures are refused).
    fn regs_args(btf: &Btf) -> Result<u32, LoadError> {
        if !cfg!(target_arch = "x86_64") {
            return Err(LoadError::Layout(
                "the probe reads syscall arguments from x86_64 registers; this is another architecture"
                    .into(),
            ));
        }
        let dx = btf.member_offset("pt_regs", "dx")?;
        for (i, reg) in ["si", "di", "orig_ax"].into_iter().enumerate() {
            let got = btf.member_offset("pt_regs", reg)?;
            let want = dx + 8 * (i as u32 + 1);
            if got != want {
                return Err(LoadError::Layout(format!(
                    "pt_regs.{reg} at {got}, expected {want} (dx at {dx})"
                )));
            }
        }
        Ok(dx)
    }
}

/// Two u16 values as the 4 bytes they take in memory, first one first.
fn pair(first: u32, second: u32) -> [u8; 4] {
    let (a, b) = ((first as u16).to_ne_bytes(), (second as u16).to_ne_bytes());
    [a[0], a[1], b[0], b[1]]
}

fn mount_if_missing(target: &str, fstype: &str, marker: &str) -> std::io::Result<()> {
    if Path::new(target).join(marker).exists() {
        return Ok(());
    }
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL in constants");
    let (src, tgt, fst) = (c(fstype), c(target), c(fstype));
    // SAFETY: valid C strings; mount(2) does not keep the pointers.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fst.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Checks `(field, offset, size)` against `events/<group>/<name>/format`.
fn check_format(group: &str, name: &str, fields: &[(&str, usize, usize)]) -> Result<(), LoadError> {
    let path = format!("{TRACEFS}/events/{group}/{name}/format");
    let err = |why: String| LoadError::Tracepoint(format!("{group}:{name}"), why);
    let text =
        std::fs::read_to_string(&path).map_err(|e| err(format!("cannot read {path}: {e}")))?;
    for &(field, offset, size) in fields {
        let found = parse_format_field(&text, field)
            .ok_or_else(|| err(format!("no field {field} in {path}")))?;
        if found != (offset, size) {
            return Err(err(format!(
                "field {field} is at offset {} size {}, the programs read offset {offset} size {size}",
                found.0, found.1
            )));
        }
    }
    Ok(())
}

/// `(offset, size)` of a field in a tracepoint format file.
pub fn parse_format_field(text: &str, field: &str) -> Option<(usize, usize)> {
    for line in text.lines() {
        let line = line.trim();
        let Some(decl) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = decl.split(';').map(str::trim);
        let name_part = parts.next()?;
        // "unsigned long buf" / "char comm[16]" / "__data_loc char[] filename"
        let last = name_part.rsplit(' ').next()?;
        let bare = last.split('[').next()?;
        if bare != field {
            continue;
        }
        let mut offset = None;
        let mut size = None;
        for p in parts {
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        return Some((offset?, size?));
    }
    None
}

/// Loads and attaches everything.
pub fn load(options: &LoadOptions) -> Result<Loaded, LoadError> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        return Err(LoadError::NotRoot(uid));
    }
    mount_if_missing(TRACEFS, "tracefs", "events").map_err(LoadError::NoTracefs)?;
    // bpffs is only needed for pinning; a failure there is not fatal.
    if let Err(e) = mount_if_missing(BPFFS, "bpf", "") {
        tracing::debug!("bpffs not mounted at {BPFFS}: {e}");
    }
    let btf = Btf::from_sys_fs().map_err(LoadError::NoBtf)??;
    let offsets = Offsets::from_btf(&btf)?;
    tracing::info!(?offsets, "struct offsets from BTF");

    // The raw tracepoints' arguments, as the programs take them.
    for &(name, args) in RAW_TRACEPOINTS {
        let got = btf.tracepoint_args(name)?;
        if got != args {
            return Err(LoadError::Tracepoint(
                format!("sock:{name}"),
                format!("arguments are {got:?}, the programs take {args:?}"),
            ));
        }
    }
    check_format("sched", "sched_process_exec", layout::EXEC)?;
    let fork_format =
        std::fs::read_to_string(format!("{TRACEFS}/events/sched/sched_process_fork/format"))
            .map_err(|e| LoadError::Tracepoint("sched:sched_process_fork".into(), e.to_string()))?;
    let fork_child_pid = match parse_format_field(&fork_format, "child_pid") {
        Some((off, 4)) => off as u32,
        other => {
            return Err(LoadError::Tracepoint(
                "sched:sched_process_fork".into(),
                format!("child_pid is {other:?}, expected a 4-byte field"),
            ));
        }
    };

    let capture = options.capture_bytes.min(MAX_CAPTURE as u32);
    let ring = options.ring_bytes.max(1 << 16).next_power_of_two();
    let mut ebpf = EbpfLoader::new()
        .override_global(globals::OFF_WRITE_SEQ, &offsets.write_seq, true)
        .override_global(globals::OFF_COPIED_SEQ, &offsets.copied_seq, true)
        .override_global(globals::OFF_RCV_NXT, &offsets.rcv_nxt, true)
        .override_global(globals::OFF_SK_FLAGS, &offsets.sk_flags, true)
        .override_global(globals::SOCK_DONE_BIT, &offsets.sock_done_bit, true)
        .override_global(globals::OFF_SKC_DADDR, &offsets.skc_daddr, true)
        .override_global(globals::OFF_SK_TYPE_PROTO, &offsets.sk_type_proto, true)
        .override_global(globals::TCP_TYPE_PROTO, &offsets.tcp_type_proto, true)
        .override_global(globals::OFF_SKC_V6_DADDR, &offsets.skc_v6_daddr, true)
        .override_global(
            globals::OFF_SKC_V6_RCV_SADDR,
            &offsets.skc_v6_rcv_saddr,
            true,
        )
        .override_global(globals::OFF_REGS_ARGS, &offsets.regs_args, true)
        .override_global(globals::SYSCALL_NRS, &SYSCALL_NRS, true)
        .override_global(globals::TP_FORK_CHILD_PID, &fork_child_pid, true)
        .override_global(globals::CAPTURE_BYTES, &capture, true)
        .override_global(globals::WAKEUP_BYTES, &options.wakeup_bytes, true)
        .map_max_entries(maps::EVENTS, ring)
        .map_max_entries(maps::H2_ROOM, possible_cpus()?)
        .load(OBJECT)
        .map_err(|e| LoadError::Load(e.to_string()))?;

    for &(name, _) in RAW_TRACEPOINTS {
        let p: &mut RawTracePoint = ebpf
            .program_mut(name)
            .ok_or_else(|| LoadError::Load(format!("program {name} missing from the object")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| LoadError::Load(e.to_string()))?;
        p.load()
            .map_err(|e| LoadError::Load(format!("{name}: {e}")))?;
        p.attach(name)
            .map_err(|e| LoadError::Tracepoint(format!("sock:{name}"), e.to_string()))?;
    }
    let mut attach = |prog: &str, group: &str, name: &str| -> Result<(), LoadError> {
        let p: &mut TracePoint = ebpf
            .program_mut(prog)
            .ok_or_else(|| LoadError::Load(format!("program {prog} missing from the object")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| LoadError::Load(e.to_string()))?;
        p.load()
            .map_err(|e| LoadError::Load(format!("{prog}: {e}")))?;
        p.attach(group, name)
            .map_err(|e| LoadError::Tracepoint(format!("{group}:{name}"), e.to_string()))?;
        Ok(())
    };
    for (group, name) in [
        ("sched", "sched_process_exec"),
        ("sched", "sched_process_fork"),
        ("sched", "sched_process_exit"),
    ] {
        attach(name, group, name)?;
    }

    let take = |ebpf: &mut Ebpf, name: &str| {
        ebpf.take_map(name)
            .ok_or_else(|| LoadError::Load(format!("map {name} missing from the object")))
    };
    let traced = Array::try_from(take(&mut ebpf, maps::TRACED)?)
        .map_err(|e| LoadError::Load(e.to_string()))?;
    let events = RingBuf::try_from(take(&mut ebpf, maps::EVENTS)?)
        .map_err(|e| LoadError::Load(e.to_string()))?;
    let counters = PerCpuArray::try_from(take(&mut ebpf, maps::COUNTERS)?)
        .map_err(|e| LoadError::Load(e.to_string()))?;
    let h2_socks = aya::maps::HashMap::try_from(take(&mut ebpf, maps::H2_SOCKS)?)
        .map_err(|e| LoadError::Load(e.to_string()))?;
    Ok(Loaded {
        ebpf,
        traced,
        events,
        counters,
        h2_socks,
    })
}

/// CPUs the kernel may run a program on (`/sys/devices/system/cpu/possible`):
/// the HTTP/2 gathering room has an entry for each.
fn possible_cpus() -> Result<u32, LoadError> {
    let n = aya::util::nr_cpus()
        .map_err(|(path, e)| LoadError::Load(format!("cannot read {path}: {e}")))?;
    Ok(n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_fields_parse() {
        let text = "name: sock_send_length\nID: 1\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:char comm[16];\toffset:24;\tsize:16;\tsigned:0;\n";
        assert_eq!(parse_format_field(text, "sk"), Some((8, 8)));
        assert_eq!(parse_format_field(text, "comm"), Some((24, 16)));
        assert_eq!(parse_format_field(text, "nope"), None);
        assert_eq!(
            parse_format_field("field:int x; offset:zz; size:4;", "x"),
            None
        );
    }
}
