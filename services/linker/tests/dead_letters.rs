//! A full DEADLETTER never stops the linker: an ESPANS message that must be
//! dead-lettered (it does not decode) while DEADLETTER refuses new letters is
//! nak'd with backoff and counted, the traces after it still come out, and
//! once there is room the letter is stored. Before, the consumer ended with
//! the error, the linker exited, and restarted into the same message.

mod common;

use std::sync::Arc;
use std::time::Duration;

use espan::bus::{self, Bus};
use espan::testkit::TestNats;
use espan::wire::{self, ESpan, Endpoint, SpanKind};
use espan_linker::metrics::Metrics;
use espan_linker::service;
use espan_linker::settings::Settings;

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

/// A CLIENT span on host-a and the SERVER span of the same call on host-b.
fn call(id: u64) -> Vec<ESpan> {
    let t = 1_750_000_000_000_000_000u64 + id * 1_000_000_000;
    let mut client = wire::sample::span(id);
    client.span_id = id;
    client.kind = SpanKind::Client as i32;
    client.host = "host-a".into();
    client.start_ns = t;
    client.end_ns = t + 9_000_000;
    client.local_parent_id = 0;
    client.app_trace = None;
    client.req_seq = id as u32 * 100;
    client.resp_seq = id as u32 * 100 + 50;
    client.local = Some(Endpoint::from_socket_addr(
        "10.0.0.1:40000".parse().unwrap(),
    ));
    client.remote = Some(Endpoint::from_socket_addr("10.0.0.2:8080".parse().unwrap()));
    let mut server = client.clone();
    server.span_id = id + 1;
    server.kind = SpanKind::Server as i32;
    server.host = "host-b".into();
    server.start_ns = t + 1_000_000;
    server.end_ns = t + 8_000_000;
    std::mem::swap(&mut server.local, &mut server.remote);
    vec![client, server]
}

/// Makes DEADLETTER tiny and full, refusing new letters (discard new), as a
/// real one is once its max_bytes is reached.
async fn fill_deadletter(bus: &Bus) {
    let js = bus.jetstream();
    js.delete_stream(bus::DEADLETTER_STREAM).await.unwrap();
    js.create_stream(async_nats::jetstream::stream::Config {
        name: bus::DEADLETTER_STREAM.into(),
        subjects: vec![bus::DEADLETTER_SUBJECTS.into()],
        max_bytes: 4096,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut n = 0;
    for size in [1000, 100, 1] {
        loop {
            n += 1;
            let sent = js
                .publish(format!("deadletter.FILL.x{n}"), vec![b'f'; size].into())
                .await
                .unwrap()
                .await;
            if sent.is_err() {
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_deadletter_stream_never_stops_the_linker() {
    let nats = TestNats::start().unwrap();
    let bus = nats
        .bus("test", &bus::StreamLimits::default())
        .await
        .unwrap();
    fill_deadletter(&bus).await;
    let db = tempfile::tempdir().unwrap();
    let settings = settings(&nats, db.path());
    let store = Arc::new(
        espan_linker::store::Store::open(&settings.db_path, &settings.store_sync)
            .await
            .unwrap(),
    );
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let (trigger, stop) = espan::shutdown::channel();
    let linker = tokio::spawn(service::run(
        settings,
        store,
        metrics.clone(),
        Default::default(),
        stop,
    ));

    let mut publisher = bus.publisher(4);
    publisher
        .publish(
            0,
            "espan.host-a".into(),
            "junk".into(),
            bytes::Bytes::from_static(b"\xff\xff junk"),
            None,
        )
        .await
        .unwrap();
    publisher.flush().await.unwrap();
    let mut seq = 0;
    common::publish_spans(&bus, &mut seq, &call(10)).await;
    let traces = common::read_traces(&bus, "reader", Duration::from_secs(5)).await;
    assert_eq!(traces.len(), 1, "the trace after the junk came out");
    assert!(!linker.is_finished(), "the linker still runs");
    assert!(metrics.dead_letter_failures.get() >= 1);
    assert!(metrics.consume_retries.get() >= 1);
    assert_eq!(metrics.dead_lettered.get(), 0);

    // Room again: the letter is stored at its next try.
    let mut dead = bus
        .jetstream()
        .get_stream(bus::DEADLETTER_STREAM)
        .await
        .unwrap();
    dead.purge().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while metrics.dead_lettered.get() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(dead.info().await.unwrap().state.messages, 1);
    trigger.trigger();
    linker.await.unwrap().unwrap();
}
