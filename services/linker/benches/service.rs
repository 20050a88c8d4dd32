//! The whole linker on this machine: JetStream ESPANS in → SurrealDB → engine →
//! JetStream TRACES out, with realistic synthetic traces (see `synth`), run
//! in-process against a private nats-server. Prints spans/s of wall time for
//! the stages, and spans per CPU-second the linker used (getrusage of this
//! process, user + system, less the bench's own TRACES reader). That rate is
//! also put against DataKit's published sizing for ebpftrace (1e6 spans/min on
//! 4 cores, i.e. 4,200 spans/s per core): a figure from its docs, not a run of
//! DataKit on this machine.
//!
//! `cargo bench -p espan-linker --bench service` (ESPAN_BENCH_TRACES sets the
//! trace count, default 20000).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use espan::bus::{self, StreamLimits};
use espan::testkit::TestNats;
use espan::wire::{self, ESpan, ESpanBatch};
use espan_linker::metrics::Metrics;
use espan_linker::service;
use espan_linker::settings::Settings;
use espan_linker::synth::{self, SynthConfig};
use futures::StreamExt;
use prost::Message;

/// A `TraceBatch` read only as far as counting its spans.
#[derive(Clone, PartialEq, Message)]
struct CountBatch {
    #[prost(message, repeated, tag = "5")]
    traces: Vec<CountTrace>,
}

#[derive(Clone, PartialEq, Message)]
struct CountTrace {
    #[prost(message, repeated, tag = "3")]
    spans: Vec<Skipped>,
}

/// Any message, its fields skipped.
#[derive(Clone, PartialEq, Message)]
struct Skipped {}

fn count_spans(payload: &[u8]) -> usize {
    let batch = CountBatch::decode(payload).expect("a TraceBatch");
    batch.traces.iter().map(|t| t.spans.len()).sum()
}

/// CPU time (user + system) of process `pid`, ns.
fn process_cpu_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks * 10_000_000)
}

/// CPU time (user + system) of this process (`RUSAGE_SELF`) or of the calling
/// thread (`RUSAGE_THREAD`), ns.
fn rusage_cpu_ns(who: libc::c_int) -> Option<u64> {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        (libc::getrusage(who, &mut usage) == 0).then_some(usage)?
    };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    Some(ns(usage.ru_utime) + ns(usage.ru_stime))
}

/// The process listening on TCP `port` (nats-server, which the testkit starts
/// with `-p <port>`).
fn pid_listening_on(port: u16) -> Option<u32> {
    let wanted = format!("-p\0{port}\0");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            (String::from_utf8_lossy(&cmdline).contains(&wanted)).then_some(pid)
        })
}

/// DataKit's sizing doc for ebpftrace: 1e6 spans/min on 4 cores.
const DATAKIT_SPANS_PER_CORE: f64 = 4_200.0;
const SPANS_PER_BATCH: usize = 500;

fn main() {
    // The linker's warnings (RUST_LOG=debug for more) go to stderr.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let traces = std::env::var("ESPAN_BENCH_TRACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(run(traces));
}

async fn run(traces: usize) {
    let synth = synth::generate(&SynthConfig {
        traces,
        ..SynthConfig::default()
    });
    let spans: Vec<ESpan> = synth.spans.iter().map(|s| s.span.clone()).collect();
    let total = spans.len();
    let nats = TestNats::start().expect("nats-server (scripts/setup.sh installs it)");
    let bus = nats.bus("bench", &StreamLimits::default()).await.unwrap();

    // Fill ESPANS first (the probes' side, not timed as linker work).
    let started = Instant::now();
    let mut publisher = bus.publisher(256);
    let mut seq = 0u64;
    for chunk in spans.chunks(SPANS_PER_BATCH) {
        // A batch per host, as probes send them (the linker refuses a batch
        // holding another host's spans).
        let mut by_host: std::collections::BTreeMap<&str, Vec<ESpan>> = Default::default();
        for span in chunk {
            by_host.entry(&span.host).or_default().push(span.clone());
        }
        for (host, spans) in by_host {
            seq += 1;
            let batch = ESpanBatch {
                version: 0,
                host: host.into(),
                boot_id: 1,
                seq,
                spans,
            };
            publisher
                .publish(
                    seq,
                    espan::bus::espan_subject(host),
                    format!("{host}/1/{seq}"),
                    wire::encode_espan_batch(&batch),
                    None,
                )
                .await
                .unwrap();
        }
    }
    publisher.flush().await.unwrap();
    let publish = started.elapsed();

    let db = tempfile::tempdir().unwrap();
    let (_, settings) = Settings::from_args([
        "espan-linker",
        "--db-path",
        db.path().to_str().unwrap(),
        "--nats-url",
        &nats.url(),
        "--window",
        "1s",
        "--late-retention",
        "1s",
        "--sampling-rate",
        "1",
        "--metrics-addr",
        "127.0.0.1:0",
        "--api-addr",
        "127.0.0.1:0",
        "--ack-wait",
        "1s",
    ])
    .unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let (trigger, stop) = espan::shutdown::channel();
    let store = std::sync::Arc::new(
        espan_linker::store::Store::open(&settings.db_path, &settings.store_sync)
            .await
            .unwrap(),
    );
    let nats_pid = pid_listening_on(nats.port());
    let nats_cpu0 = nats_pid.and_then(process_cpu_ns);
    let linker_cpu0 = rusage_cpu_ns(libc::RUSAGE_SELF);
    let reader_cpu0 = rusage_cpu_ns(libc::RUSAGE_THREAD);
    eprintln!("linker starts ({total} spans waiting on ESPANS)");
    let started = Instant::now();
    let linker = tokio::spawn(service::run(
        settings,
        store,
        metrics.clone(),
        Default::default(),
        stop,
    ));

    // Count spans arriving on TRACES.
    let stream = bus
        .jetstream()
        .get_stream(bus::TRACES_STREAM)
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("bench".into()),
            // A message the reader's client dropped comes back soon.
            ack_wait: Duration::from_secs(2),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut ingested_at = None;
    let mut out_spans = 0usize;
    let spans_out = std::sync::Arc::new(AtomicU64::new(0));
    // Every second: spans in so far (stored and handed to the engine), spans out.
    let timeline = {
        let (metrics, spans_out) = (metrics.clone(), spans_out.clone());
        tokio::spawn(async move {
            let mut timeline = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let out = spans_out.load(Ordering::Relaxed);
                timeline.push((metrics.spans_in.get(), out));
                if out == u64::MAX {
                    return timeline;
                }
            }
        })
    };
    // Traces whose app headers said "drop" are dropped even at sampling 1.
    let expected = || total - metrics.spans_dropped_by_sampling.get() as usize;
    // A redelivered message is counted once.
    let mut seen = std::collections::HashSet::new();
    let mut read_errors = 0u64;
    while out_spans < expected() {
        match tokio::time::timeout(Duration::from_secs(20), messages.next()).await {
            Ok(Some(Ok(m))) => {
                m.ack().await.ok();
                let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                if !seen.insert(seq) {
                    continue;
                }
                // Counted without decoding each span (this is the exporter's
                // side, on the same two cores).
                out_spans += count_spans(&m.payload);
                spans_out.store(out_spans as u64, Ordering::Relaxed);
            }
            // The reader falling behind (a slow-consumer or heartbeat error)
            // is not the linker's loss: go on reading.
            Ok(Some(Err(error))) => {
                read_errors += 1;
                if read_errors <= 3 {
                    eprintln!("  bench's TRACES reader: {error}");
                }
            }
            _ => break,
        }
        if ingested_at.is_none() && metrics.spans_in.get() as usize >= total {
            ingested_at = Some(started.elapsed());
        }
    }
    let drained = started.elapsed();
    let reader_cpu = rusage_cpu_ns(libc::RUSAGE_THREAD)
        .zip(reader_cpu0)
        .map(|(b, a)| b - a);
    let linker_cpu = rusage_cpu_ns(libc::RUSAGE_SELF)
        .zip(linker_cpu0)
        .map(|(b, a)| b - a);
    let nats_cpu = nats_pid
        .and_then(process_cpu_ns)
        .zip(nats_cpu0)
        .map(|(b, a)| b - a);
    spans_out.store(u64::MAX, Ordering::Relaxed);
    let mut timeline = timeline.await.unwrap();
    timeline.pop();
    let ingested = ingested_at.unwrap_or(drained);
    trigger.trigger();
    linker.await.unwrap().unwrap();

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "linker service: {} traces, {total} spans, window 1s, sampling 1.0, {cores} cores shared with nats-server",
        synth.traces
    );
    println!(
        "  probes' publish (not linker work)          {:>10.0} spans/s",
        total as f64 / publish.as_secs_f64()
    );
    let ingest_rate = total as f64 / ingested.as_secs_f64();
    println!("  consume + store + link                      {ingest_rate:>10.0} spans/s (wall)");
    // The last traces wait one window before they are final: subtract it.
    let through = drained
        .saturating_sub(Duration::from_secs(1))
        .max(Duration::from_millis(1));
    let through_rate = total as f64 / through.as_secs_f64();
    println!("  end to end, TRACES out (minus the window)   {through_rate:>10.0} spans/s (wall)");
    let steps: Vec<String> = timeline
        .windows(2)
        .map(|w| format!("{}/{}", (w[1].0 - w[0].0) / 1000, (w[1].1 - w[0].1) / 1000))
        .collect();
    println!("  per second, thousand spans in/out: {}", steps.join(" "));
    // CPU while the linker ran, in µs per span: the linker's process (its
    // tasks and SurrealDB's threads, but not this bench's reader, which runs
    // on the main thread), nats-server, and the bench's own TRACES reader.
    let per_span = |ns: Option<u64>| {
        ns.map_or("?".into(), |ns| {
            format!(
                "{:.2} s, {:.2}",
                ns as f64 / 1e9,
                ns as f64 / 1e3 / total as f64
            )
        })
    };
    let linker_only = linker_cpu.zip(reader_cpu).map(|(l, r)| l.saturating_sub(r));
    println!(
        "  CPU (s, µs per span): linker {}; nats-server {}; bench's TRACES reader {}; wall {:.2} s",
        per_span(linker_only),
        per_span(nats_cpu),
        per_span(reader_cpu),
        drained.as_secs_f64()
    );
    if let Some(ns) = linker_only.filter(|&ns| ns > 0) {
        let per_cpu_s = total as f64 / (ns as f64 / 1e9);
        println!(
            "  linker: {per_cpu_s:.0} spans per CPU-second (getrusage, user + sys); \
             {:.0}x against DataKit's published sizing ({DATAKIT_SPANS_PER_CORE} spans/s per core)",
            per_cpu_s / DATAKIT_SPANS_PER_CORE
        );
    }
    println!(
        "  spans out {out_spans} of {total} (lost: {}); linker: spans in {}, rejected {}, duplicates {}, \
         dropped by sampling {}, still in the window {}, traces published {} \
         (messages JetStream already held: {}), held for their bucket {}",
        expected().saturating_sub(out_spans),
        metrics.spans_in.get(),
        metrics.spans_rejected.get(),
        metrics.spans_duplicate.get(),
        metrics.spans_dropped_by_sampling.get(),
        metrics.spans_in_window.get(),
        metrics.traces_published.get(),
        metrics.trace_messages_already_stored.get(),
        metrics.traces_held.get(),
    );
}
