//! The linker service against a real nats-server and a real SurrealDB store:
//! spans in on ESPANS, linked traces out on TRACES, queryable in the store.

mod common;

use std::time::Duration;

use espan::bus::Bus;
use espan::testkit::TestNats;
use espan::wire::{self, ESpan, Endpoint, SpanKind};
use espan_linker::metrics::Metrics;
use espan_linker::service;
use espan_linker::settings::Settings;
use espan_linker::store::trace_id_hex;

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
        "1s",
    ])
    .unwrap();
    settings
}

fn span(id: u64, kind: SpanKind, host: &str, service: &str, start: u64, end: u64) -> ESpan {
    let mut s = wire::sample::span(id);
    s.span_id = id;
    s.kind = kind as i32;
    s.host = host.into();
    s.service = service.into();
    s.start_ns = start;
    s.end_ns = end;
    s.local_parent_id = 0;
    s
}

/// A front server span on host A whose thread calls a back server on host B.
fn two_tier() -> Vec<ESpan> {
    let t = 1_750_000_000_000_000_000u64;
    let front = span(11, SpanKind::Server, "host-a", "front", t, t + 10_000_000);
    let mut call = span(
        12,
        SpanKind::Client,
        "host-a",
        "front",
        t + 1_000_000,
        t + 9_000_000,
    );
    call.local_parent_id = front.span_id;
    call.req_seq = 1_000;
    call.resp_seq = 2_000;
    call.local = Some(Endpoint::from_socket_addr(
        "10.0.0.1:40000".parse().unwrap(),
    ));
    call.remote = Some(Endpoint::from_socket_addr("10.0.0.2:8080".parse().unwrap()));
    let mut back = span(
        21,
        SpanKind::Server,
        "host-b",
        "back",
        t + 2_000_000,
        t + 8_000_000,
    );
    back.req_seq = 1_000;
    back.resp_seq = 2_000;
    back.local = Some(Endpoint::from_socket_addr("10.0.0.2:8080".parse().unwrap()));
    back.remote = Some(Endpoint::from_socket_addr(
        "10.0.0.1:40000".parse().unwrap(),
    ));
    // Server first: the order of arrival must not matter.
    vec![back, call, front]
}

#[tokio::test]
async fn spans_in_linked_trace_out_and_in_the_store() {
    let nats = TestNats::start().unwrap();
    let db = tempfile::tempdir().unwrap();
    let settings = settings(&nats, db.path());
    let bus = Bus::connect(&nats.url(), "test", Duration::from_secs(5))
        .await
        .unwrap();
    let (trigger, stop) = espan::shutdown::channel();
    let store = std::sync::Arc::new(
        espan_linker::store::Store::open(&settings.db_path, &settings.store_sync)
            .await
            .unwrap(),
    );
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let linker = tokio::spawn(service::run(
        settings.clone(),
        store.clone(),
        metrics.clone(),
        Default::default(),
        stop,
    ));

    // The linker creates the streams; wait for them before publishing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut seq = 0;
    common::publish_spans(&bus, &mut seq, &two_tier()).await;
    let traces = common::read_traces(&bus, "reader", Duration::from_secs(8)).await;
    assert_eq!(traces.len(), 1, "{traces:#?}");
    let (_, _, late, edges) = common::shape(&traces[0]);
    assert!(!late);
    assert_eq!(edges, vec![(11, 0), (12, 11), (21, 12)]);
    assert_eq!(metrics.spans_in.get(), 3);
    assert_eq!(metrics.traces_published.get(), 1);

    trigger.trigger();
    linker.await.unwrap().unwrap();
    // The trace is in the store, and no batch is left.
    let id = trace_id_hex(traces[0].trace_id_high, traces[0].trace_id_low);
    let stored = store.trace(&id).await.unwrap();
    assert_eq!(stored, traces);
    assert_eq!(
        store.message_count().await.unwrap(),
        0,
        "finished batches are deleted"
    );
    drop(store);

    // The CLI reads it from the store once the linker is gone.
    let cli = async |args: &[&str]| {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_espan-linker"))
            .arg("--db-path")
            .arg(db.path())
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let tree = cli(&["trace", &id]).await;
    let lines: Vec<&str> = tree.lines().collect();
    assert_eq!(lines.len(), 4, "{tree}");
    assert!(
        lines[0].starts_with(&format!("trace {id}  3 spans  10.00 ms")),
        "{tree}"
    );
    assert!(lines[1].starts_with("└─ SERVER front "), "{tree}");
    assert!(lines[2].starts_with("   └─ CLIENT front "), "{tree}");
    assert!(lines[3].starts_with("      └─ SERVER back "), "{tree}");
    let list = cli(&["traces", "--since", "1h", "--service", "back"]).await;
    assert!(list.starts_with(&id), "{list}");
    let none = cli(&["traces", "--since", "1h", "--service", "nobody"]).await;
    assert!(none.starts_with("no traces finished"), "{none}");
}
