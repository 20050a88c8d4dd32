//! Crash safety: spans are published while the linker runs as a real process;
//! it is killed with SIGKILL in the middle and started again on the same store.
//! Every trace must come out exactly once, complete, with the same ids as an
//! uninterrupted run of the engine over the same spans.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use espan::bus::StreamLimits;
use espan::testkit::TestNats;
use espan_linker::engine::{Engine, EngineConfig};
use espan_linker::synth::{self, SynthConfig};

const WINDOW: Duration = Duration::from_secs(2);

fn start_linker(nats: &TestNats, db: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_espan-linker"))
        .args(["--db-path", db.to_str().unwrap(), "--nats-url", &nats.url()])
        .args([
            "--window",
            "2s",
            "--sampling-rate",
            "1",
            "--metrics-addr",
            "127.0.0.1:0",
            "--api-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--flush-interval",
            "100ms",
            "--store-sync",
            "every",
            "--ack-wait",
            "1s",
        ])
        .env(
            "RUST_LOG",
            std::env::var("LINKER_LOG").unwrap_or("warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("start espan-linker")
}

#[tokio::test]
async fn kill_9_in_the_middle_loses_and_repeats_nothing() {
    let config = SynthConfig {
        seed: 42,
        traces: 300,
        hosts: 3,
        services: 6,
        // ~12 s of traffic, so the kill lands in the middle, after many
        // traces were finished and then forgotten (window + late retention:
        // 4 s) while batches holding some of their spans were still stored.
        trace_interval_ns: 40_000_000,
        max_spans_per_trace: 40,
        reordered: 0.0,
        late: 0.0,
        ..SynthConfig::default()
    };
    let synth = synth::generate(&config);
    let total_spans = synth.spans.len();

    // The reference: the engine alone over the same spans, in the same batches.
    let mut reference = Engine::new(EngineConfig {
        window: WINDOW,
        sampling_rate: 1.0,
        late_retention: WINDOW,
        ..EngineConfig::default()
    });
    let mut expected = Vec::new();
    for (n, s) in synth.spans.iter().enumerate() {
        reference.ingest(s.span.clone(), n as u64, s.arrive_ns);
    }
    expected.extend(reference.advance(u64::MAX / 2));
    let mut expected: Vec<_> = expected
        .iter()
        .filter(|f| f.sampled)
        .map(|f| common::shape(&f.trace.clone().into_wire()))
        .collect();
    expected.sort();
    let expected_spans: usize = expected.iter().map(|e| e.3.len()).sum();
    assert!(expected_spans > total_spans / 2, "most traces are kept");

    let nats = TestNats::start().unwrap();
    let limits = StreamLimits {
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    };
    let bus = nats.bus("test", &limits).await.unwrap();
    let db = tempfile::tempdir().unwrap();
    let mut linker = start_linker(&nats, db.path());

    // Publish in real time (arrival offsets from the generator), every 100 ms.
    let first = synth.spans[0].arrive_ns;
    let started = Instant::now();
    let mut next = 0;
    let mut seq = 0;
    let mut killed = false;
    while next < total_spans {
        let elapsed = started.elapsed().as_nanos() as u64;
        let upto = synth.spans[next..]
            .iter()
            .take_while(|s| s.arrive_ns - first <= elapsed)
            .count();
        let chunk: Vec<_> = synth.spans[next..next + upto]
            .iter()
            .map(|s| s.span.clone())
            .collect();
        next += upto;
        if !chunk.is_empty() {
            common::publish_spans(&bus, &mut seq, &chunk).await;
        }
        if !killed && next > total_spans / 2 && std::env::var("NO_KILL").is_err() {
            // SIGKILL: no flush, no goodbye.
            linker.kill().unwrap();
            linker.wait().unwrap();
            killed = true;
            tokio::time::sleep(Duration::from_millis(500)).await;
            linker = start_linker(&nats, db.path());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(killed || std::env::var("NO_KILL").is_ok());

    let got = common::read_traces(&bus, "crash-reader", WINDOW * 4).await;
    linker.kill().unwrap();
    linker.wait().unwrap();

    // A message in flight at the kill comes back after ack_wait, by which time
    // its trace may be finished: its spans then come out as a late part under
    // the same trace id. Join the parts, then compare with the reference.
    let mut merged: BTreeMap<(u64, u64), Vec<(u64, u64)>> = BTreeMap::new();
    for (high, low, _late, edges) in got.iter().map(common::shape) {
        merged.entry((high, low)).or_default().extend(edges);
    }
    let mut seen = std::collections::HashSet::new();
    let repeated: Vec<u64> = merged
        .values()
        .flatten()
        .map(|(span, _)| *span)
        .filter(|span| !seen.insert(*span))
        .collect();
    if !repeated.is_empty() {
        for t in got.iter().map(common::shape) {
            if t.3.iter().any(|(s, _)| repeated.contains(s)) {
                eprintln!(
                    "part with a repeated span: trace {:x}{:016x} late={} (span, parent): {:?}",
                    t.0, t.1, t.2, t.3
                );
            }
        }
    }
    assert!(
        repeated.is_empty(),
        "spans published more than once: {repeated:?}"
    );
    // (Traces whose app headers said "drop" are dropped even at sampling 1.)
    assert_eq!(
        seen.len(),
        expected_spans,
        "every kept span comes out exactly once"
    );
    let mut shapes: Vec<_> = merged
        .into_iter()
        .map(|((high, low), mut edges)| {
            edges.sort_unstable();
            (high, low, false, edges)
        })
        .collect();
    shapes.sort();
    assert_eq!(shapes.len(), expected.len());
    assert!(
        shapes == expected,
        "the traces differ from an uninterrupted run"
    );
}
