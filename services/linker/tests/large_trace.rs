//! A trace larger than NATS's max_payload (one request fanning out to 2,500
//! calls: 5,001 spans, ~2.5 MB encoded) through a real nats-server and a real
//! SurrealDB store: it comes out on TRACES in parts, each message under the
//! server's limit, every span once with its parent, and the linker goes on
//! with the traces after it. Before, the whole trace was one message the
//! server refused on every try, and nothing after it came out.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use espan::bus::{self, Bus};
use espan::testkit::TestNats;
use espan::wire::{self, ESpan, Endpoint, SpanKind, Trace};
use espan_linker::metrics::Metrics;
use espan_linker::service;
use espan_linker::settings::Settings;
use futures::StreamExt;

const CALLS: u64 = 2_500;

fn settings(nats: &TestNats, db: &std::path::Path) -> Settings {
    let (_, settings) = Settings::from_args([
        "espan-linker",
        "--db-path",
        db.to_str().unwrap(),
        "--nats-url",
        &nats.url(),
        "--window",
        "1s",
        "--sampling-rate",
        "1",
        "--metrics-addr",
        "127.0.0.1:0",
        "--api-addr",
        "127.0.0.1:0",
        "--flush-interval",
        "100ms",
        "--ack-wait",
        "5s",
    ])
    .unwrap();
    settings
}

fn span(id: u64, kind: SpanKind, host: &str, start: u64, end: u64) -> ESpan {
    let mut s = wire::sample::span(id);
    s.span_id = id;
    s.kind = kind as i32;
    s.host = host.into();
    s.service = host.into();
    s.start_ns = start;
    s.end_ns = end;
    s.local_parent_id = 0;
    s.app_trace = None;
    s
}

/// One front SERVER span on host-a whose thread makes `calls` calls to host-b;
/// each call is a CLIENT span and the back's SERVER span, with a long path.
/// Ids start at `base`, so two fan-outs do not share one.
fn fan_out(base: u64, calls: u64) -> Vec<ESpan> {
    let t = 1_750_000_000_000_000_000u64 + base * 1_000_000_000;
    let front_id = base + 1;
    let front = span(
        front_id,
        SpanKind::Server,
        "host-a",
        t,
        t + (calls + 2) * 100_000,
    );
    let mut spans = vec![front];
    for i in 0..calls {
        let start = t + (i + 1) * 100_000;
        let (req_seq, resp_seq) = ((base + i * 16) as u32, (base + i * 16 + 8) as u32);
        let client_addr = format!("10.0.0.1:{}", 20_000 + i % 40_000);
        let path = format!("/fan-out/{i}/{}", "x".repeat(400));
        let mut call = span(
            base + 10_000 + i,
            SpanKind::Client,
            "host-a",
            start,
            start + 80_000,
        );
        call.local_parent_id = front_id;
        call.req_seq = req_seq;
        call.resp_seq = resp_seq;
        call.local = Some(Endpoint::from_socket_addr(client_addr.parse().unwrap()));
        call.remote = Some(Endpoint::from_socket_addr("10.0.0.2:8080".parse().unwrap()));
        call.http.as_mut().unwrap().path = path.clone();
        let mut back = span(
            base + 20_000 + i,
            SpanKind::Server,
            "host-b",
            start + 10_000,
            start + 70_000,
        );
        back.req_seq = req_seq;
        back.resp_seq = resp_seq;
        back.local = Some(Endpoint::from_socket_addr("10.0.0.2:8080".parse().unwrap()));
        back.remote = Some(Endpoint::from_socket_addr(client_addr.parse().unwrap()));
        back.http.as_mut().unwrap().path = path;
        spans.push(call);
        spans.push(back);
    }
    spans
}

/// Publishes `spans` in ESPANS messages of at most 500 spans, as a probe does.
async fn publish(bus: &Bus, seq: &mut u64, spans: &[ESpan]) {
    for chunk in spans.chunks(500) {
        common::publish_spans(bus, seq, chunk).await;
    }
}

/// Reads TRACES messages until none came for `quiet`: their payload sizes
/// and traces.
async fn read_messages(bus: &Bus, quiet: Duration) -> (Vec<usize>, Vec<Trace>) {
    let stream = bus
        .jetstream()
        .get_stream(bus::TRACES_STREAM)
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("reader".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let (mut sizes, mut traces) = (Vec::new(), Vec::new());
    while let Ok(Some(Ok(m))) = tokio::time::timeout(quiet, messages.next()).await {
        m.ack().await.unwrap();
        sizes.push(m.payload.len());
        let batch = wire::decode_trace_batch(&m.payload).unwrap();
        assert!(batch.rejected.is_empty());
        traces.extend(batch.batch.traces);
    }
    (sizes, traces)
}

/// `span_id -> parent_id` of every span of a fan-out, as it must come out.
fn expected_edges(spans: &[ESpan]) -> BTreeMap<u64, u64> {
    spans
        .iter()
        .map(|s| {
            let parent = match (s.kind, s.span_id % 100_000 / 10_000) {
                (k, 1) if k == SpanKind::Client as i32 => s.local_parent_id,
                // A back SERVER span's parent is its call's CLIENT span.
                (_, 2) => s.span_id - 10_000,
                _ => 0,
            };
            (s.span_id, parent)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_over_max_payload_goes_out_in_parts_and_the_next_one_follows() {
    let nats = TestNats::start().unwrap();
    let db = tempfile::tempdir().unwrap();
    let settings = settings(&nats, db.path());
    let bus = Bus::connect(&nats.url(), "test", Duration::from_secs(5))
        .await
        .unwrap();
    let max_payload = bus.max_payload();
    assert_eq!(max_payload, 1 << 20, "the server's default");
    let store = Arc::new(
        espan_linker::store::Store::open(&settings.db_path, &settings.store_sync)
            .await
            .unwrap(),
    );
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let (trigger, stop) = espan::shutdown::channel();
    let linker = tokio::spawn(service::run(
        settings.clone(),
        store.clone(),
        metrics.clone(),
        Default::default(),
        stop,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let big = fan_out(0, CALLS);
    let encoded: usize = big.iter().map(wire::span_len_in_batch).sum();
    assert!(
        encoded > 2 << 20,
        "the trace is over 2 MiB: {encoded} bytes"
    );
    let mut seq = 0;
    publish(&bus, &mut seq, &big).await;
    // The trace after it, finished a window later.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let small = fan_out(1_000_000, 2);
    publish(&bus, &mut seq, &small).await;

    let (sizes, traces) = read_messages(&bus, Duration::from_secs(8)).await;
    assert!(!linker.is_finished(), "the linker still runs");
    assert!(
        sizes.iter().all(|&n| n <= max_payload),
        "every message under max_payload: {sizes:?}"
    );
    let mut by_trace: BTreeMap<(u64, u64), Vec<&Trace>> = BTreeMap::new();
    for trace in &traces {
        by_trace
            .entry((trace.trace_id_high, trace.trace_id_low))
            .or_default()
            .push(trace);
    }
    assert_eq!(by_trace.len(), 2, "the big trace and the one after it");
    let mut seen_parts = BTreeSet::new();
    for (fan, parts_min) in [(&big, 3usize), (&small, 1)] {
        let want = expected_edges(fan);
        let parts = by_trace
            .values()
            .find(|parts| {
                let first = parts[0].spans[0].span.as_ref().unwrap().span_id;
                want.contains_key(&first)
            })
            .expect("the trace came out");
        assert!(parts.len() >= parts_min, "{} parts", parts.len());
        seen_parts.insert(parts.len());
        let mut got = BTreeMap::new();
        for part in parts {
            assert!(!part.late, "a part is not a late part");
            for linked in &part.spans {
                let id = linked.span.as_ref().unwrap().span_id;
                assert!(
                    got.insert(id, linked.parent_id).is_none(),
                    "span {id} twice"
                );
            }
        }
        assert_eq!(got, want, "every span once, with its parent");
    }
    assert!(metrics.trace_parts.get() >= 2);
    assert_eq!(metrics.spans_capped.get(), 0);
    assert_eq!(metrics.spans_dropped_too_large.get(), 0);

    trigger.trigger();
    linker.await.unwrap().unwrap();
}
