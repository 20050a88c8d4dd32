//! Rates of the wire format and of the bus, on this machine:
//! - encode and decode (with validation) of 500-span eSpan batches, against a
//!   plain copy of the same bytes as the baseline;
//! - JetStream publish (pipelined, with msg ids) → pull consume with acks of
//!   eSpan batches, against core NATS publish → subscribe of the same payloads.
//!
//! `cargo bench -p espan` (starts its own nats-server, like the tests).
//! ESPAN_BENCH_BATCHES sets how many batches go through the bus (default 2000).

use std::time::{Duration, Instant};

use espan::bus::{self, ConsumerSpec, Delivery, Handler, HandlerError, StreamLimits};
use espan::testkit::TestNats;
use espan::wire::{self, ESpanBatch};
use futures::StreamExt;

const SPANS_PER_BATCH: usize = 500;

fn rate(items: f64, elapsed: Duration) -> f64 {
    items / elapsed.as_secs_f64()
}

fn codec() {
    let batches: Vec<ESpanBatch> = (0..200)
        .map(|seq| wire::sample::batch(seq, SPANS_PER_BATCH))
        .collect();
    let spans = (batches.len() * SPANS_PER_BATCH) as f64;
    let encoded: Vec<bytes::Bytes> = batches.iter().map(wire::encode_espan_batch).collect();
    let bytes: usize = encoded.iter().map(|b| b.len()).sum();

    let rounds = 5;
    let started = Instant::now();
    let mut copied = 0usize;
    for _ in 0..rounds {
        for b in &encoded {
            copied += std::hint::black_box(b.to_vec()).len();
        }
    }
    let copy = started.elapsed();

    let started = Instant::now();
    for _ in 0..rounds {
        for b in &batches {
            std::hint::black_box(wire::encode_espan_batch(b));
        }
    }
    let encode = started.elapsed();

    let started = Instant::now();
    let mut decoded = 0usize;
    for _ in 0..rounds {
        for b in &encoded {
            decoded += wire::decode_espan_batch(b)
                .expect("valid")
                .batch
                .spans
                .len();
        }
    }
    let decode = started.elapsed();
    assert_eq!(decoded, spans as usize * rounds);
    assert_eq!(copied, bytes * rounds);

    let n = spans * rounds as f64;
    println!(
        "wire: {SPANS_PER_BATCH}-span batches, {:.0} bytes/span",
        bytes as f64 / spans
    );
    println!("  baseline copy       {:>12.0} spans/s", rate(n, copy));
    println!(
        "  encode              {:>12.0} spans/s  ({:.1}x the copy's time)",
        rate(n, encode),
        encode.as_secs_f64() / copy.as_secs_f64()
    );
    println!(
        "  decode + validate   {:>12.0} spans/s  ({:.1}x the copy's time)",
        rate(n, decode),
        decode.as_secs_f64() / copy.as_secs_f64()
    );
}

struct Count {
    spans: usize,
    done: tokio::sync::mpsc::UnboundedSender<()>,
    target: usize,
}

impl Handler<ESpanBatch> for Count {
    async fn handle(&mut self, deliveries: Vec<Delivery<ESpanBatch>>) -> Result<(), HandlerError> {
        for d in deliveries {
            self.spans += d.value.spans.len();
        }
        if self.spans >= self.target {
            let _ = self.done.send(());
        }
        Ok(())
    }
}

async fn bus_rates(batches: usize) {
    let nats = TestNats::start().expect("nats-server (run scripts/setup.sh)");
    let bus = nats.bus("bench", &StreamLimits::default()).await.unwrap();
    let payloads: Vec<bytes::Bytes> = (0..batches as u64)
        .map(|seq| wire::encode_espan_batch(&wire::sample::batch(seq, SPANS_PER_BATCH)))
        .collect();
    let spans = (batches * SPANS_PER_BATCH) as f64;

    // Baseline: core NATS, no persistence, no acks.
    let mut sub = bus.client().subscribe("baseline.x").await.unwrap();
    let started = Instant::now();
    let client = bus.client().clone();
    let sender = {
        let payloads = payloads.clone();
        tokio::spawn(async move {
            for p in payloads {
                client.publish("baseline.x", p).await.unwrap();
            }
            client.flush().await.unwrap();
        })
    };
    let mut got = 0usize;
    while got < batches {
        let m = sub.next().await.unwrap();
        got += wire::decode_espan_batch(&m.payload)
            .unwrap()
            .batch
            .spans
            .len()
            / SPANS_PER_BATCH;
    }
    sender.await.unwrap();
    let core = started.elapsed();

    // JetStream: pipelined publish with msg ids, then a durable pull consumer with acks.
    let started = Instant::now();
    let mut publisher = bus.publisher(256);
    for (seq, p) in payloads.iter().enumerate() {
        publisher
            .publish(
                seq as u64,
                "espan.bench".into(),
                format!("bench/1/{seq}"),
                p.clone(),
                None,
            )
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    let publish = started.elapsed();

    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let (trigger, stop) = espan::shutdown::channel();
    let consumer = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let mut spec = ConsumerSpec::new(bus::ESPANS_STREAM, "bench");
            spec.batch = 64;
            let mut handler = Count {
                spans: 0,
                done: done_tx,
                target: spans as usize,
            };
            let decode = |b: &[u8]| {
                wire::decode_espan_batch(b)
                    .map(|c| c.batch)
                    .map_err(|e| e.to_string())
            };
            bus::consume(&bus, &spec, decode, &mut handler, &bus::NoObserver, stop)
                .await
                .unwrap();
        })
    };
    let started = Instant::now();
    done_rx.recv().await.unwrap();
    let consume = started.elapsed();
    trigger.trigger();
    consumer.await.unwrap();

    println!(
        "bus: {batches} batches of {SPANS_PER_BATCH} spans ({:.0} KiB each), one nats-server on the same 2 cores",
        payloads[0].len() as f64 / 1024.0
    );
    println!(
        "  baseline core NATS pub→sub+decode   {:>12.0} spans/s",
        rate(spans, core)
    );
    println!(
        "  JetStream publish (acked, msg ids)  {:>12.0} spans/s  ({:.2}x baseline)",
        rate(spans, publish),
        rate(spans, publish) / rate(spans, core)
    );
    println!(
        "  JetStream consume (decode, ack)     {:>12.0} spans/s  ({:.2}x baseline)",
        rate(spans, consume),
        rate(spans, consume) / rate(spans, core)
    );
    let both = publish + consume;
    println!(
        "  JetStream publish→consume           {:>12.0} spans/s  ({:.2}x baseline)",
        rate(spans, both),
        rate(spans, both) / rate(spans, core)
    );
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    codec();
    let batches = std::env::var("ESPAN_BENCH_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(bus_rates(batches));
}
