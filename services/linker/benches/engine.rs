//! The linker's engine alone, on one thread, on synthetic traces (fan-out 1–10,
//! depth 1–6, 6 hosts, 16 services, keep-alive, NAT, 10% reordered or late).
//! Not a test: it prints rates, ratios and memory, and asserts nothing.
//!
//! `taskset -c 1 cargo bench -p espan-linker --bench engine` (pinned to one core
//! for a per-core rate). Env: `ENGINE_BENCH_SPANS` (default 2,000,000),
//! `ENGINE_BENCH_WINDOW_S`, `ENGINE_BENCH_ONLY_THROUGHPUT`, `ENGINE_BENCH_ESPAN`
//! (also time the engine with decoded `ESpan`s as payload), `ENGINE_BENCH_BASELINE=0`
//! (skip the one-span-at-a-time baseline).
//!
//! The input is encoded beforehand as ESPANS messages of 500 spans (the probes'
//! work). Passes:
//! 1. throughput, as the service runs the engine: per message, reading it
//!    (`raw::read_spans_message`) is timed apart as decoding; the engine's time is
//!    `ingest_batch` of its spans (their bytes as payload) and `advance` after
//!    each message; dropping the finished traces is the caller's work, measured
//!    apart. First the same with `ingest_with` of one span at a time, the
//!    baseline the printed ratio is against (each message is stamped with its
//!    last span's arrival, as the service stamps it with its receive time).
//!    The rate that counts is the steady one, once the window and the late
//!    retention are full (as in a linker that has run for a while); the whole
//!    run's is printed too, with the first touch of every page the window fills;
//! 2. accuracy and steady-state memory: the same, keeping `(span, parent)`, and
//!    a digest of the output that names it across builds of the engine. The
//!    truth is `synth`'s, a generator built on the engine's own model of calls
//!    (same matching keys, same clocks): this checks the engine against its
//!    model, not against real traffic, which `integration/`'s accuracy test
//!    scores against the apps' own OpenTelemetry spans;
//! 3. memory per open span: spans ingested with no `advance`, so all stay open.
//!
//! Memory is measured with a counting global allocator (live bytes), which also
//! costs a relaxed atomic add per allocation in pass 1.
//!
//! Rates are spans per second of this thread's CPU time. The DataKit ratio is
//! against DataKit's published sizing for ebpftrace (1e6 spans/min on 4 cores),
//! not a run of DataKit here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use espan::wire::{self, ESpan, ESpanBatch};
use espan_linker::engine::{Engine, EngineConfig, EngineStats, Finished};
use espan_linker::raw::{self, RawSpan};
use espan_linker::synth::{self, Delivery, SynthConfig};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

const BATCH: usize = 500;
/// DataKit's sizing doc for ebpftrace: 1e6 spans/min on 4 cores.
const DATAKIT_PER_CORE: f64 = 4_200.0;

fn main() {
    let target: usize = std::env::var("ENGINE_BENCH_SPANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    // About 80 spans per trace; one trace per 4 ms gives ~5 windows of 20 s.
    let config = SynthConfig {
        seed: 42,
        traces: target / 80,
        trace_interval_ns: 4_000_000,
        ..SynthConfig::default()
    };
    let started = Instant::now();
    let synth = synth::generate(&config);
    let n = synth.spans.len();
    let sim_s = (synth.spans[n - 1].arrive_ns - synth.spans[0].arrive_ns) as f64 / 1e9;
    println!(
        "input: {n} spans in {} traces ({:.1} spans/trace), {sim_s:.0} s of traffic, generated in {:.1} s",
        synth.traces,
        n as f64 / synth.traces as f64,
        started.elapsed().as_secs_f64()
    );
    // ENGINE_BENCH_WINDOW_S sets window and late_retention (default 20 s each),
    // to see how the rate depends on how much the engine holds.
    let engine_config = match std::env::var("ENGINE_BENCH_WINDOW_S")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(secs) => EngineConfig {
            window: std::time::Duration::from_secs(secs),
            late_retention: std::time::Duration::from_secs(secs),
            ..EngineConfig::default()
        },
        None => EngineConfig::default(),
    };
    println!(
        "engine: window {:?}, late_retention {:?}, sampling_rate {}",
        engine_config.window, engine_config.late_retention, engine_config.sampling_rate
    );

    // Pass 1: throughput, as the service runs the engine. The probes' side is
    // not timed: every 500 spans are encoded as one ESPANS message beforehand.
    // Per message, the service's reading (`raw::read_spans_message`: the message
    // copied as the bus hands it over, each span validated, its facts taken) is
    // timed apart as decoding; the engine's time is `ingest_with` of each span,
    // with its bytes as payload, and `advance` after each message.
    let messages: Vec<Bytes> = synth
        .spans
        .chunks(BATCH)
        .enumerate()
        .map(|(seq, chunk)| {
            wire::encode_espan_batch(&ESpanBatch {
                version: wire::WIRE_VERSION,
                host: "bench".into(),
                boot_id: 1,
                seq: seq as u64,
                spans: chunk.iter().map(|s| s.span.clone()).collect(),
            })
        })
        .collect();
    if std::env::var_os("COMPRESS").is_some() {
        let t = Instant::now();
        let mut out = 0usize;
        for m in &messages {
            out += lz4_flex::compress_prepend_size(m).len();
        }
        let secs = t.elapsed().as_secs_f64();
        let inb: usize = messages.iter().map(Bytes::len).sum();
        let comp: Vec<Vec<u8>> = messages
            .iter()
            .map(|m| lz4_flex::compress_prepend_size(m))
            .collect();
        let t = Instant::now();
        for c in &comp {
            std::hint::black_box(lz4_flex::decompress_size_prepended(c).unwrap());
        }
        println!(
            "lz4: {inb} -> {out} bytes ({:.2}x), {:.0} MB/s compress, {:.0} MB/s decompress",
            inb as f64 / out as f64,
            inb as f64 / secs / 1e6,
            inb as f64 / t.elapsed().as_secs_f64() / 1e6
        );
    }
    // Each message is stamped with its last span's arrival, as the service
    // stamps a message with its receive time.
    let stamps: Vec<u64> = synth
        .spans
        .chunks(BATCH)
        .map(|c| c.iter().map(|s| s.arrive_ns).max().unwrap_or(0))
        .collect();
    // The baseline, in this process: the same spans one `ingest_with` at a
    // time, which cannot look ahead.
    // `ENGINE_BENCH_BASELINE=0` skips it (for a profile of the service's way).
    let base_rate = (std::env::var("ENGINE_BENCH_BASELINE").as_deref() != Ok("0")).then(|| {
        throughput(&messages, &stamps, &engine_config, Feed::OneByOne)
            .report(n, "bytes as received, one span at a time")
    });
    let t = throughput(&messages, &stamps, &engine_config, Feed::Batch);
    let rate = t.report(
        n,
        "bytes as received, a message at a time (the service's way)",
    );
    if let Some(base_rate) = base_rate {
        println!(
            "  {:.2}x the one-span-at-a-time baseline above",
            rate / base_rate
        );
    }
    println!(
        "decoding (reading each message, validating its spans, not counted above): {:.0} spans/s; \
         decoding and engine together: {:.0} spans/s per core",
        n as f64 / t.decode,
        n as f64 / (t.decode + t.ingest + t.advance)
    );

    // Pass 1b: the same with decoded `ESpan`s as payload (`Engine::ingest`),
    // each batch cloned just before it goes in (untimed, as a decode would make
    // it), for comparison.
    if std::env::var_os("ENGINE_BENCH_ESPAN").is_some() {
        let mut engine = Engine::new(engine_config.clone());
        let mut t = Times::default();
        let mut now = 0;
        for (b, chunk) in synth.spans.chunks(BATCH).enumerate() {
            let c0 = thread_cpu_ns();
            let batch: Vec<ESpan> = chunk.iter().map(|s| s.span.clone()).collect();
            let c1 = thread_cpu_ns();
            now = stamps[b];
            for span in batch {
                engine.ingest(span, b as u64, now);
            }
            advance_timed(&mut engine, now, &mut t, [c0, c1, thread_cpu_ns()]);
        }
        advance_timed(&mut engine, now + 100_000_000_000, &mut t, [None; 3]);
        t.report(n, "decoded ESpans");
    }
    if std::env::var_os("ENGINE_BENCH_ONLY_THROUGHPUT").is_some() {
        return;
    }

    // Pass 2: accuracy against the truth, and steady-state memory.
    let truth: HashMap<u64, (u64, Delivery)> = synth
        .spans
        .iter()
        .map(|s| (s.span.span_id, (s.parent, s.delivery)))
        .collect();
    let base = live();
    let mut engine: Engine<RawSpan> = Engine::new(engine_config.clone());
    let mut got: HashMap<u64, u64> = HashMap::with_capacity(n);
    let mut digest = 0u64;
    let (mut peak_open, mut peak_bytes, mut peak_retained) = (0u64, 0isize, 0u64);
    let mut now = 0;
    for (b, message) in messages.iter().enumerate() {
        now = stamps[b];
        ingest_message(&mut engine, message, b as u64, now, Feed::Batch);
        let before = live();
        let open = engine.stats().spans_in_window;
        if open > peak_open {
            // Bytes the engine holds (messages included): all allocated since
            // `base`, less `got`.
            peak_open = open;
            peak_retained = engine.stats().spans_retained;
            peak_bytes = before - base - (got.capacity() * 24) as isize;
        }
        for f in engine.advance(now) {
            digest = digest.wrapping_add(digest_of(&f));
            for l in f.trace.spans {
                got.insert(l.span.span_id, l.parent_id);
            }
        }
    }
    for f in engine.advance(now + 100_000_000_000) {
        digest = digest.wrapping_add(digest_of(&f));
        for l in f.trace.spans {
            got.insert(l.span.span_id, l.parent_id);
        }
    }
    println!("output digest (same input, same traces): {digest:016x}");
    let (mut edges, mut found, mut false_edges, mut found_on_time, mut edges_on_time) =
        (0, 0, 0, 0, 0);
    for (id, &(parent, delivery)) in &truth {
        let out = got.get(id).copied();
        if parent != 0 {
            edges += 1;
            let on_time = delivery != Delivery::Late && truth[&parent].1 != Delivery::Late;
            edges_on_time += usize::from(on_time);
            if out == Some(parent) {
                found += 1;
                found_on_time += usize::from(on_time);
            }
        }
        if let Some(p) = out
            && p != 0
            && p != parent
        {
            false_edges += 1;
        }
    }
    println!(
        "accuracy against synth's truth (a generator on the engine's own model, not real traffic): \
         {} of {} spans out; true edges found {found}/{edges} ({:.2}%), \
         between spans not late {found_on_time}/{edges_on_time}; false edges {false_edges}",
        got.len(),
        truth.len(),
        100.0 * found as f64 / edges.max(1) as f64
    );
    println!(
        "memory at peak window: {peak_open} open + {peak_retained} retained spans hold {:.0} MB \
         (their ESPANS messages included): {:.0} bytes per open span (retained state included)",
        peak_bytes as f64 / 1e6,
        peak_bytes as f64 / peak_open.max(1) as f64
    );
    drop(engine);

    // Pass 3: memory per open span (nothing finishes), with each payload.
    let k = n.min(200_000);
    let base = live();
    let mut engine: Engine<RawSpan> = Engine::new(engine_config.clone());
    for message in &messages[..k / BATCH] {
        ingest_message(&mut engine, message, 0, 1, Feed::Batch);
    }
    let bytes = live() - base;
    let held: usize = messages[..k / BATCH].iter().map(Bytes::len).sum();
    println!(
        "memory per open span, payload = bytes as received: {:.0} bytes ({k} spans open, of which \
         {:.0} bytes are its share of the ESPANS message)",
        bytes as f64 / k as f64,
        held as f64 / k as f64,
    );
    drop(engine);
    let base = live();
    let mut engine = Engine::new(engine_config);
    for s in &synth.spans[..k] {
        engine.ingest(s.span.clone(), 0, 1);
    }
    let bytes = live() - base;
    let payload: usize = synth.spans[..k].iter().map(|s| heap_of(&s.span)).sum();
    println!(
        "memory per open span, payload = decoded ESpan: {:.0} bytes ({k} spans open, of which {:.0} \
         bytes are the eSpan's own strings and {} its struct)",
        bytes as f64 / k as f64,
        payload as f64 / k as f64,
        std::mem::size_of::<ESpan>()
    );
    drop(engine);
}

/// How a pass hands a message's spans to the engine.
#[derive(Clone, Copy, PartialEq)]
enum Feed {
    /// `ingest_with` per span.
    OneByOne,
    /// `ingest_batch` per message.
    Batch,
}

/// Reads one ESPANS message (copied, as the bus hands it over) and ingests its
/// spans.
fn ingest_message(engine: &mut Engine<RawSpan>, message: &Bytes, tag: u64, now: u64, feed: Feed) {
    let read = raw::read_spans_message(&Bytes::copy_from_slice(message)).unwrap();
    feed_spans(engine, read, tag, now, feed);
}

fn feed_spans(
    engine: &mut Engine<RawSpan>,
    read: raw::SpansMessage,
    tag: u64,
    now: u64,
    feed: Feed,
) {
    let hosts: Vec<_> = read.hosts.iter().map(|h| engine.host_id(h)).collect();
    let spans = read
        .spans
        .into_iter()
        .map(|span| (hosts[span.host as usize], span.facts, span.raw));
    match feed {
        Feed::OneByOne => {
            for (host, facts, raw) in spans {
                engine.ingest_with(host, &facts, raw, tag, now);
            }
        }
        Feed::Batch => engine.ingest_batch(spans, tag, now),
    }
}

/// Pass 1: the engine's time on every message as the service runs it. The
/// service's reading of a message is timed apart as decoding; the engine's time
/// is ingesting the spans and `advance` after each message; dropping the
/// finished traces is the caller's work, timed apart.
fn throughput(messages: &[Bytes], stamps: &[u64], config: &EngineConfig, feed: Feed) -> Times {
    let mut engine: Engine<RawSpan> = Engine::new(config.clone());
    let mut t = Times::default();
    // Steady state: the window and the late retention have filled (the engine
    // holds as much as it ever will, its tables have stopped growing), as in a
    // linker that has been running for a while.
    let steady_from = stamps.first().copied().unwrap_or(0)
        + (config.window + config.late_retention).as_nanos() as u64
        + 5_000_000_000;
    for (b, message) in messages.iter().enumerate() {
        let now = stamps[b];
        let c0 = thread_cpu_ns();
        let read = raw::read_spans_message(&Bytes::copy_from_slice(message)).unwrap();
        let c1 = thread_cpu_ns();
        let spans = read.spans.len();
        feed_spans(&mut engine, read, b as u64, now, feed);
        let c3 = advance_timed(&mut engine, now, &mut t, [c0, c1, thread_cpu_ns()]);
        if now >= steady_from
            && let (Some(c1), Some(c3)) = (c1, c3)
        {
            t.steady_spans += spans;
            t.steady += (c3 - c1) as f64 / 1e9;
        }
    }
    let last = stamps.last().copied().unwrap_or(0);
    advance_timed(&mut engine, last + 100_000_000_000, &mut t, [None; 3]);
    print_stats(&engine.stats());
    t
}

/// After a message's spans went in (CPU clock before decoding, before ingest,
/// after ingest): `advance`, timed, and the output dropped, timed apart. Without
/// clocks (the final advance), all of it counts as advancing. Returns the clock
/// after `advance`.
fn advance_timed<P>(
    engine: &mut Engine<P>,
    now: u64,
    t: &mut Times,
    [c0, c1, c2]: [Option<u64>; 3],
) -> Option<u64> {
    let start = thread_cpu_ns();
    let out = engine.advance(now);
    engine.take_retired_tags();
    let c3 = thread_cpu_ns();
    t.traces += out.len();
    drop(out);
    let c4 = thread_cpu_ns();
    match (c0, c1, c2) {
        (None, None, None) => t.add(start, start, start, c3, c4),
        _ => t.add(c0, c1, c2, c3, c4),
    }
    c3
}

/// CPU seconds of a throughput pass, by part (this thread's own time: on a
/// shared machine wall time includes other processes' turns).
#[derive(Default)]
struct Times {
    decode: f64,
    ingest: f64,
    advance: f64,
    drop: f64,
    traces: usize,
    /// Spans and engine seconds once the window is full (see `throughput`).
    steady_spans: usize,
    steady: f64,
}

impl Times {
    /// Adds one batch: decode (c0..c1), ingest (c1..c2), advance (c2..c3) and
    /// dropping the output (c3..c4).
    fn add(
        &mut self,
        c0: Option<u64>,
        c1: Option<u64>,
        c2: Option<u64>,
        c3: Option<u64>,
        c4: Option<u64>,
    ) {
        let d =
            |a: Option<u64>, b: Option<u64>| a.zip(b).map_or(0.0, |(a, b)| (b - a) as f64 / 1e9);
        self.decode += d(c0, c1);
        self.ingest += d(c1, c2);
        self.advance += d(c2, c3);
        self.drop += d(c3, c4);
    }

    /// Prints the engine's rate (ingest + advance) and returns it.
    /// Prints the engine's rates (ingest + advance) and returns the steady one.
    fn report(&self, n: usize, payload: &str) -> f64 {
        let cpu = self.ingest + self.advance;
        let rate = n as f64 / cpu;
        let (steady, when) = if self.steady_spans > 0 {
            (
                self.steady_spans as f64 / self.steady,
                "once the window is full",
            )
        } else {
            (rate, "over the whole run") // a pass that does not time its steady state apart
        };
        println!(
            "engine, payload = {payload}: {steady:.0} spans per CPU-second (thread clock) {when} \
             ({:.0}x against DataKit's published sizing of {DATAKIT_PER_CORE} spans/s per core; \
             target 1,000,000: {})",
            steady / DATAKIT_PER_CORE,
            if steady >= 1e6 { "met" } else { "MISSED" }
        );
        println!(
            "  whole run, the window filling (memory touched for the first time) included: {rate:.0} \
             spans/s ({cpu:.2} s on CPU: ingest {:.2} s, advance {:.2} s; {} traces and late parts out)",
            self.ingest, self.advance, self.traces,
        );
        println!(
            "  dropping the finished traces (the caller's work, not counted): {:.2} s on CPU",
            self.drop
        );
        steady
    }
}

fn print_stats(s: &EngineStats) {
    println!(
        "stats: in {} dup {} cross {} local {} unlinked {} ambiguous {} late {} late_parent_missed {} \
         kept {}/{} traces",
        s.spans_in,
        s.duplicates,
        s.linked_cross_process,
        s.linked_local,
        s.unlinked,
        s.ambiguous,
        s.late,
        s.late_parent_missed,
        s.traces_kept,
        s.traces_finished
    );
}

/// A hash of one finished trace: ids, decision and every (span, parent) in
/// order. Summed over traces, it names an output independently of the order
/// traces come out in, so two builds of the engine can be compared.
fn digest_of(f: &Finished<RawSpan>) -> u64 {
    let mut h = DefaultHasher::new();
    (f.trace.trace_id_high, f.trace.trace_id_low, f.trace.late).hash(&mut h);
    (f.trace.app_trace_id, f.sampled, &f.tags).hash(&mut h);
    for l in &f.trace.spans {
        (l.span.span_id, l.parent_id).hash(&mut h);
    }
    h.finish()
}

/// This thread's time on a CPU so far (`CLOCK_THREAD_CPUTIME_ID`: a cheap call,
/// where reading `/proc/thread-self/schedstat` cost ~10 µs five times a message).
fn thread_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Heap bytes of a span's strings and vectors (what its clone allocates; the
/// optional messages are inline in the struct).
fn heap_of(s: &ESpan) -> usize {
    let http = s.http.as_ref().map_or(0, |h| {
        h.method.capacity() + h.path.capacity() + h.version.capacity() + h.host.capacity()
    });
    let ep = |e: &Option<espan::wire::Endpoint>| e.as_ref().map_or(0, |e| e.ip.capacity());
    s.comm.capacity()
        + s.service.capacity()
        + s.host.capacity()
        + s.error.capacity()
        + s.container_id.capacity()
        + http
        + ep(&s.local)
        + ep(&s.remote)
}
