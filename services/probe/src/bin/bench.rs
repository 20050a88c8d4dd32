//! Overhead of the probe, measured once and printed (not a test):
//!
//! 1. ns per write()/read() syscall on a loopback TCP socket, 10^5 calls of 100
//!    bytes, in a child process that is: not watched (no probe loaded), untraced
//!    (probe loaded, pid not selected: the hooks' pid check), traced (payload
//!    captured, ring buffer records, user space parsing in the probe). Passes
//!    are interleaved. Each sample has the calling thread's CPU time per call
//!    (what the syscall and the hooks in it cost; time the thread waited while
//!    other work ran on a shared machine is not in it) and the wall time. The
//!    added cost is the median over passes of traced minus untraced in the same
//!    pass.
//! 2. An HTTP/1.1 keep-alive server (a child process) under a fixed load from a
//!    paced client (another child), untraced and then traced, in the same run:
//!    throughput, p50/p99 latency, and the probe's CPU and memory (it runs in this
//!    process, which does nothing else meanwhile).
//!
//! `espan-probe-bench [--secs 30] [--rate 5000] [--calls 100000] [--passes 5]`, as root.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use espan::testkit::{TestNats, free_port};
use espan_probe::procs::Selection;
use espan_probe::settings::Settings;

const TRACED_VAR: &str = "ESPAN_BENCH_TRACED";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("sys-write") => return sys(true, args[2].parse()?),
        Some("sys-read") => return sys(false, args[2].parse()?),
        Some("server") => return server(args[2].parse()?),
        Some("peer") => return peer(args[2] == "sink", args[3].parse()?),
        Some("load") => {
            return load(
                args[2].parse()?,
                args[3].parse()?,
                args[4].parse()?,
                args[5].parse()?,
            );
        }
        _ => {}
    }
    let opt = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (secs, rate, calls, passes) = (
        opt("--secs", 30),
        opt("--rate", 5000),
        opt("--calls", 100_000),
        opt("--passes", 5),
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(orchestrate(secs, rate, calls, passes))
}

/// The children run a copy of this binary under another name: the probe never
/// traces `espan-*` binaries (by process name and by executable name).
fn child_exe() -> anyhow::Result<std::path::PathBuf> {
    static EXE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    if let Some(p) = EXE.get() {
        return Ok(p.clone());
    }
    let dir = std::env::temp_dir().join(format!("probe-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let exe = dir.join("bench-child");
    std::fs::copy(std::env::current_exe()?, &exe)?;
    Ok(EXE.get_or_init(|| exe).clone())
}

fn child(args: &[String], traced: bool) -> anyhow::Result<String> {
    let mut cmd = Command::new(child_exe()?);
    cmd.args(args);
    if traced {
        cmd.env(TRACED_VAR, "bench");
    } else {
        cmd.env_remove(TRACED_VAR);
    }
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "child {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// One syscall sample: ns per call, wall clock and the calling thread's CPU time.
struct Sample {
    wall: f64,
    cpu: f64,
}

/// Picks one measure of a [`Sample`].
type Field = fn(&Sample) -> f64;

fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn cpu_secs() -> f64 {
    // SAFETY: valid out pointer.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .map(|v| v.trim().trim_end_matches(" kB").parse().unwrap_or(0))
            })
        })
        .unwrap_or(0)
}

async fn orchestrate(secs: u64, rate: u64, calls: u64, passes: u64) -> anyhow::Result<()> {
    let nats = TestNats::start()?;
    let sample = |what: &str, traced: bool| -> anyhow::Result<Sample> {
        let out = child(&[what.to_owned(), calls.to_string()], traced)?;
        let mut v = out.split_whitespace().map(str::parse::<f64>);
        match (v.next(), v.next()) {
            (Some(Ok(wall)), Some(Ok(cpu))) => Ok(Sample { wall, cpu }),
            _ => anyhow::bail!("bad sample {out:?}"),
        }
    };
    let mut none = [Vec::new(), Vec::new()];
    for _ in 0..passes {
        none[0].push(sample("sys-write", false)?);
        none[1].push(sample("sys-read", false)?);
    }
    let (_, mut settings) = Settings::from_args(["espan-probe"])?;
    settings.nats = nats.url().into();
    settings.metrics_addr = "127.0.0.1:0".parse()?;
    settings.stream_max_bytes = 1 << 30;
    settings.selection = Selection {
        env_list: vec![TRACED_VAR.into()],
        ..Default::default()
    };
    let probe = espan_probe::start(settings).await?;
    let (mut untraced, mut traced) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for _ in 0..passes {
        for (i, what) in ["sys-write", "sys-read"].into_iter().enumerate() {
            untraced[i].push(sample(what, false)?);
            traced[i].push(sample(what, true)?);
        }
    }
    println!(
        "per-syscall cost, {calls} calls of 100 bytes on loopback TCP, {passes} passes; ns/call, median: CPU time of the calling thread [wall time]"
    );
    println!(
        "{:<8} {:>15} {:>15} {:>15} {:>15} {:>15}",
        "syscall", "no probe", "untraced", "traced", "added(traced)", "added(untr.)"
    );
    for (i, name) in ["write", "read"].into_iter().enumerate() {
        let med = |v: &[Sample], f: Field| median(v.iter().map(f).collect());
        let cpu: Field = |s| s.cpu;
        let wall: Field = |s| s.wall;
        let cell = |v: &[Sample]| format!("{:.0} [{:.0}]", med(v, cpu), med(v, wall));
        // Traced minus untraced within each pass, then the median.
        let added = |f: Field| {
            median(
                traced[i]
                    .iter()
                    .zip(&untraced[i])
                    .map(|(t, u)| f(t) - f(u))
                    .collect(),
            )
        };
        println!(
            "{name:<8} {:>15} {:>15} {:>15} {:>15} {:>15}",
            cell(&none[i]),
            cell(&untraced[i]),
            cell(&traced[i]),
            format!("{:.0} [{:.0}]", added(cpu), added(wall)),
            format!(
                "{:.0} [{:.0}]",
                med(&untraced[i], cpu) - med(&none[i], cpu),
                med(&untraced[i], wall) - med(&none[i], wall)
            ),
        );
    }
    let raw = |v: &[Vec<Sample>; 2]| -> Vec<Vec<(u64, u64)>> {
        v.iter()
            .map(|s| s.iter().map(|x| (x.cpu as u64, x.wall as u64)).collect())
            .collect()
    };
    println!(
        "raw samples (cpu, wall) [write, read]: none {:?} untraced {:?} traced {:?}",
        raw(&none),
        raw(&untraced),
        raw(&traced)
    );

    println!(
        "\nHTTP/1.1 keep-alive server, {rate} req/s for {secs} s over 8 connections, loopback"
    );
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "server", "req/s", "p50 µs", "p99 µs", "errors", "probe CPU %", "probe RSS MiB"
    );
    let mut results = Vec::new();
    for traced in [false, true] {
        let port = free_port()?;
        let mut srv = Command::new(child_exe()?);
        srv.args(["server", &port.to_string()]);
        if traced {
            srv.env(TRACED_VAR, "bench-server");
        } else {
            srv.env_remove(TRACED_VAR);
        }
        let mut srv = srv.spawn()?;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let spans_before = probe.metrics.spans.get();
        let (cpu0, t0) = (cpu_secs(), Instant::now());
        let args = vec![
            "load".into(),
            port.to_string(),
            rate.to_string(),
            secs.to_string(),
            "8".into(),
        ];
        let out = tokio::task::spawn_blocking(move || child(&args, false)).await??;
        let (cpu, wall) = (cpu_secs() - cpu0, t0.elapsed().as_secs_f64());
        let _ = srv.kill();
        let _ = srv.wait();
        let f: Vec<f64> = out
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        let rss = rss_kib() as f64 / 1024.0;
        println!(
            "{:<10} {:>10.0} {:>10.1} {:>10.1} {:>10.0} {:>12.1} {:>12.1}",
            if traced { "traced" } else { "untraced" },
            f[0],
            f[1],
            f[2],
            f[3],
            100.0 * cpu / wall,
            rss
        );
        results.push((f, probe.metrics.spans.get() - spans_before));
    }
    let (u, t) = (&results[0].0, &results[1].0);
    println!(
        "throughput ratio traced/untraced {:.3}; p50 ratio {:.2} (+{:.1} µs); p99 ratio {:.2}; server spans made while traced: {}",
        t[0] / u[0],
        t[1] / u[1],
        t[1] - u[1],
        t[2] / u[2],
        results[1].1
    );
    println!(
        "probe counters: ring full {}, truncated captures {}, malformed {}, dropped {}",
        probe.metrics.kernel_ring_full.get(),
        probe.metrics.truncated_captures.get(),
        probe.metrics.l7_malformed.get(),
        probe.metrics.spans_dropped_queue.get() + probe.metrics.spans_dropped_buffer.get()
    );
    probe.stop().await;
    if let Some(dir) = child_exe()?.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

/// `calls` syscalls of 100 bytes; prints ns per call. The peer (sink or flood)
/// is an untraced process, so that only the measured side's syscalls are
/// hooked and parsed.
fn sys(write: bool, calls: u64) -> anyhow::Result<()> {
    // Give the probe time to select this process (it reacts to the exec).
    std::thread::sleep(Duration::from_millis(300));
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let mut peer = Command::new(std::env::current_exe()?)
        .args([
            "peer",
            if write { "sink" } else { "flood" },
            &port.to_string(),
        ])
        .env_remove(TRACED_VAR)
        .spawn()?;
    let (s, _) = listener.accept()?;
    let mut buf = [7u8; 100];
    let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
    let (start, cpu0) = (Instant::now(), thread_cpu_ns());
    for _ in 0..calls {
        // SAFETY: valid fd and buffer.
        let n = unsafe {
            if write {
                libc::write(fd, buf.as_ptr().cast(), buf.len())
            } else {
                libc::read(fd, buf.as_mut_ptr().cast(), buf.len())
            }
        };
        anyhow::ensure!(n > 0, "syscall failed");
    }
    let ns = start.elapsed().as_nanos() as f64 / calls as f64;
    let cpu = (thread_cpu_ns() - cpu0) as f64 / calls as f64;
    s.shutdown(std::net::Shutdown::Both)?;
    drop(s);
    let _ = peer.kill();
    let _ = peer.wait();
    println!("{ns:.1} {cpu:.1}");
    Ok(())
}

/// The other end of [`sys`]: reads everything, or writes 64 KiB chunks.
fn peer(sink: bool, port: u16) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    let mut buf = vec![0u8; 65536];
    if sink {
        while s.read(&mut buf)? > 0 {}
    } else {
        while s.write_all(&buf).is_ok() {}
    }
    Ok(())
}

/// A small thread-per-connection HTTP/1.1 keep-alive server (httparse heads).
fn server(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            let mut have = 0;
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&buf[..have]) {
                    Ok(httparse::Status::Complete(n)) => {
                        buf.copy_within(n..have, 0);
                        have -= n;
                        let body = b"hello from the bench server";
                        let resp =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                        if s.write_all(&[resp.as_bytes(), body].concat()).is_err() {
                            return;
                        }
                    }
                    Ok(httparse::Status::Partial) => match s.read(&mut buf[have..]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    },
                    Err(_) => return,
                }
            }
        });
    }
    Ok(())
}

/// Paced load: `rate` req/s over `conns` keep-alive connections for `secs`.
/// Prints "req/s p50_us p99_us errors". Latency is measured from the scheduled
/// send time, so a slow server is not hidden by the client waiting.
fn load(port: u16, rate: u64, secs: u64, conns: u64) -> anyhow::Result<()> {
    let per_conn = Duration::from_secs_f64(conns as f64 / rate as f64);
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs(secs);
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            std::thread::spawn(move || -> (Vec<u32>, u64) {
                let mut lat = Vec::new();
                let mut errors = 0;
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                    return (lat, 1);
                };
                let _ = s.set_nodelay(true);
                let req = format!("GET /bench/{i} HTTP/1.1\r\nHost: bench\r\n\r\n");
                let mut buf = vec![0u8; 4096];
                let mut next = start + per_conn.mul_f64(i as f64 / conns as f64);
                while next < end {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    if s.write_all(req.as_bytes()).is_err() {
                        errors += 1;
                        break;
                    }
                    // Read one response (head + Content-Length body).
                    let mut have = 0;
                    loop {
                        match s.read(&mut buf[have..]) {
                            Ok(0) | Err(_) => {
                                errors += 1;
                                return (lat, errors);
                            }
                            Ok(n) => have += n,
                        }
                        let mut headers = [httparse::EMPTY_HEADER; 16];
                        let mut resp = httparse::Response::new(&mut headers);
                        if let Ok(httparse::Status::Complete(h)) = resp.parse(&buf[..have]) {
                            let len: usize = resp
                                .headers
                                .iter()
                                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                                .unwrap_or(0);
                            if have >= h + len {
                                break;
                            }
                        }
                    }
                    lat.push(next.elapsed().as_micros() as u32);
                    next += per_conn;
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (l, e) = t.join().unwrap_or_default();
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{} {} {} {}",
        all.len() as f64 / secs as f64,
        pct(0.5),
        pct(0.99),
        errors
    );
    Ok(())
}
