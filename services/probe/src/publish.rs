//! Batching eSpans and publishing them to `espan.<host>`.
//!
//! [`seal_messages`] seals an ESPANS message (a batch of eSpans) at
//! `batch_spans` spans, at `batch_bytes` encoded bytes or after
//! `batch_interval`, whichever comes first, with every text field cut to
//! `max_field_bytes` (counted); it encodes it and puts it in a bounded buffer.
//! The sender publishes from that buffer with msg id `<host>/<boot_id hex>/<seq>`
//! (so a re-sent batch is stored once) and removes a batch only when JetStream
//! acked it. While NATS is away the buffer fills; when it is over its byte
//! bound the oldest batch is dropped and its spans counted.
//!
//! A batch the server refuses for its size (its `max_payload` is below
//! `batch_bytes`) is never retried as it is: it is replaced by halves, named
//! `<seq>.1`, `<seq>.2` (and `<seq>.1.1`, … if need be), and a span too large
//! even alone is dropped and counted.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use espan::bus::{Bus, espan_subject};
use espan::redact::redact;
use espan::shutdown::Shutdown;
use espan::telemetry::Health;
use espan::wire::{ESpan, ESpanBatch, WIRE_VERSION, encode_espan_batch};
use tokio::sync::{Notify, mpsc};

use crate::metrics::Metrics;

/// Publisher settings.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    pub host: String,
    pub boot_id: u64,
    pub batch_spans: usize,
    /// Encoded bytes a batch holds at most.
    pub batch_bytes: usize,
    /// Bytes a text field of a span holds at most.
    pub max_field_bytes: usize,
    pub batch_interval: Duration,
    /// Bytes of encoded batches kept while NATS is away.
    pub buffer_bytes: u64,
    pub max_in_flight: usize,
    /// Limits of the streams the probe is first to create.
    pub stream_limits: espan::bus::StreamLimits,
}

struct Sealed {
    /// The publisher's tag for it, unique in this process.
    tag: u64,
    /// `<seq>`, or `<seq>.<part>…` for a part of a split batch.
    name: String,
    spans: usize,
    payload: Bytes,
    sent: bool,
}

#[derive(Default)]
struct Buffer {
    queue: VecDeque<Sealed>,
    bytes: u64,
    /// The next tag of a part of a split batch (sealed batches use their seq).
    next_part_tag: u64,
}

/// Tags of parts of split batches start here, far above any seq.
const FIRST_PART_TAG: u64 = 1 << 62;

/// The shared buffer between [`seal_messages`] and the sender.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Mutex<Buffer>>,
    notify: Arc<Notify>,
    bound: u64,
    metrics: Metrics,
}

impl Outbox {
    pub fn new(bound: u64, metrics: Metrics) -> Self {
        Self {
            inner: Arc::default(),
            notify: Arc::default(),
            bound,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a sealed batch, dropping the oldest ones beyond the bound.
    fn push(&self, seq: u64, spans: usize, payload: Bytes) {
        let mut b = self.lock();
        b.bytes += payload.len() as u64;
        b.queue.push_back(Sealed {
            tag: seq,
            name: seq.to_string(),
            spans,
            payload,
            sent: false,
        });
        while b.bytes > self.bound && b.queue.len() > 1 {
            if let Some(old) = b.queue.pop_front() {
                b.bytes -= old.payload.len() as u64;
                self.metrics.spans_dropped_buffer.inc_by(old.spans as u64);
                tracing::warn!(
                    batch = old.name,
                    spans = old.spans,
                    "buffer full: dropped the oldest batch"
                );
            }
        }
        self.gauges(&b);
        drop(b);
        self.notify.notify_one();
    }

    fn gauges(&self, b: &Buffer) {
        self.metrics.buffer_bytes.set(b.bytes as i64);
        self.metrics.buffer_batches.set(b.queue.len() as i64);
    }

    /// The oldest batch not sent yet: its tag, name and payload.
    fn next_unsent(&self) -> Option<(u64, String, Bytes)> {
        let mut b = self.lock();
        let s = b.queue.iter_mut().find(|s| !s.sent)?;
        s.sent = true;
        Some((s.tag, s.name.clone(), s.payload.clone()))
    }

    /// Replaces the batch `tag`, which the server refused for its size, by
    /// its two halves (unsent, in its place). A batch of one span cannot be
    /// split: it is dropped and counted.
    fn split(&self, tag: u64) {
        let mut b = self.lock();
        let Some(i) = b.queue.iter().position(|s| s.tag == tag) else {
            return;
        };
        let old = b.queue.remove(i).expect("position is in the queue");
        b.bytes -= old.payload.len() as u64;
        let batch = match espan::wire::decode_espan_batch(&old.payload) {
            Ok(checked) => checked.batch,
            // Our own encoding: cannot happen; counted rather than retried.
            Err(_) => ESpanBatch::default(),
        };
        if batch.spans.len() < 2 {
            self.metrics
                .spans_dropped_too_large
                .inc_by(old.spans as u64);
            tracing::error!(
                batch = old.name,
                "an eSpan larger than the server's max_payload: dropped"
            );
            self.gauges(&b);
            return;
        }
        self.metrics.batches_split.inc();
        let (first, second) = halves(batch);
        for (n, half) in [first, second].into_iter().enumerate().rev() {
            let tag = FIRST_PART_TAG + b.next_part_tag;
            b.next_part_tag += 1;
            let payload = encode_espan_batch(&half);
            b.bytes += payload.len() as u64;
            b.queue.insert(
                i,
                Sealed {
                    tag,
                    name: format!("{}.{}", old.name, n + 1),
                    spans: half.spans.len(),
                    payload,
                    sent: false,
                },
            );
        }
        self.gauges(&b);
    }

    /// Spans in batches JetStream has not acknowledged.
    pub fn unacked_spans(&self) -> usize {
        self.lock().queue.iter().map(|s| s.spans).sum()
    }

    fn acked(&self, tag: u64) {
        let mut b = self.lock();
        if let Some(i) = b.queue.iter().position(|s| s.tag == tag)
            && let Some(s) = b.queue.remove(i)
        {
            b.bytes -= s.payload.len() as u64;
            self.metrics.batches_published.inc();
            self.metrics.spans_published.inc_by(s.spans as u64);
        }
        self.gauges(&b);
    }

    fn resend_all(&self) {
        for s in self.lock().queue.iter_mut() {
            s.sent = false;
        }
    }

    /// Batches not yet acked.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The two halves of a batch, each with the batch's fields.
fn halves(mut batch: ESpanBatch) -> (ESpanBatch, ESpanBatch) {
    let second = batch.spans.split_off(batch.spans.len() / 2);
    let other = ESpanBatch {
        spans: second,
        ..batch.clone()
    };
    (batch, other)
}

/// Collects spans into ESPANS messages until the channel closes (the reader
/// stopped).
pub async fn seal_messages(
    config: PublishConfig,
    mut spans: mpsc::Receiver<ESpan>,
    outbox: Outbox,
) {
    let mut seq = 0u64;
    let mut current: Vec<ESpan> = Vec::new();
    // Bytes of `current` encoded, with room for the batch's own fields.
    let envelope = config.host.len() + 32;
    let mut bytes = envelope;
    let mut tick = tokio::time::interval(config.batch_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let seal = |current: &mut Vec<ESpan>, seq: &mut u64| {
        if current.is_empty() {
            return;
        }
        *seq += 1;
        let batch = ESpanBatch {
            version: WIRE_VERSION,
            host: config.host.clone(),
            boot_id: config.boot_id,
            seq: *seq,
            spans: std::mem::take(current),
        };
        let n = batch.spans.len();
        outbox.push(*seq, n, encode_espan_batch(&batch));
    };
    loop {
        tokio::select! {
            span = spans.recv() => match span {
                Some(mut span) => {
                    let capped = espan::wire::cap_text_fields(&mut span, config.max_field_bytes);
                    outbox.metrics.text_fields_capped.inc_by(capped);
                    let size = espan::wire::span_len_in_batch(&span);
                    if !current.is_empty() && bytes + size > config.batch_bytes {
                        seal(&mut current, &mut seq);
                        bytes = envelope;
                    }
                    bytes += size;
                    current.push(span);
                    if current.len() >= config.batch_spans || bytes >= config.batch_bytes {
                        seal(&mut current, &mut seq);
                        bytes = envelope;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                seal(&mut current, &mut seq);
                bytes = envelope;
            }
        }
    }
    seal(&mut current, &mut seq);
}

/// Publishes from the outbox until `shutdown`, then tries for `drain_for` to
/// empty it.
pub async fn sender(
    config: PublishConfig,
    bus: Bus,
    outbox: Outbox,
    health: Health,
    shutdown: Shutdown,
    drain_for: Duration,
) {
    let subject = espan_subject(&config.host);
    let mut publisher = bus.publisher(config.max_in_flight);
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut backoff = Duration::from_millis(100);
    // The streams are made once NATS is there (it may not be at start).
    let mut streams_made = false;
    loop {
        if deadline.is_none() && shutdown.is_triggered() {
            deadline = Some(tokio::time::Instant::now() + drain_for);
        }
        if !streams_made && deadline.is_none() {
            let made = tokio::time::timeout(
                Duration::from_secs(5),
                bus.ensure_streams(&config.stream_limits),
            )
            .await;
            match made {
                Ok(Ok(())) => {
                    streams_made = true;
                    health.set_ok();
                }
                Ok(Err(e)) => health.set_failing(redact(&format!("NATS at {}: {e}", bus.url()))),
                Err(_) => {
                    health.set_failing(redact(&format!("NATS at {}: not reachable", bus.url())))
                }
            }
            if !streams_made {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        }
        if let Some(d) = deadline
            && (tokio::time::Instant::now() >= d
                || (outbox.is_empty() && publisher.in_flight() == 0))
        {
            // What JetStream never acknowledged is lost with this process: count it.
            let lost = outbox.unacked_spans();
            if lost > 0 {
                outbox.metrics.spans_lost_at_stop.inc_by(lost as u64);
                tracing::warn!(
                    spans = lost,
                    "stopping with eSpans JetStream did not acknowledge: lost"
                );
            }
            return;
        }
        let result = match outbox.next_unsent() {
            Some((tag, name, payload)) => {
                let msg_id = format!("{}/{:016x}/{}", config.host, config.boot_id, name);
                match publisher
                    .publish(tag, subject.clone(), msg_id, payload, None)
                    .await
                {
                    Err(e) if e.is_too_large() => {
                        // Permanent: never sent, so nothing in flight is
                        // touched; its halves go next.
                        tracing::warn!("{e}; publishing it in halves");
                        outbox.split(tag);
                        continue;
                    }
                    result => result,
                }
            }
            None if publisher.in_flight() > 0 => publisher.flush().await,
            None => {
                let wait = outbox.notify.notified();
                let _ = tokio::time::timeout(Duration::from_millis(50), wait).await;
                continue;
            }
        };
        match result {
            Ok(acks) => {
                for ack in acks {
                    outbox.acked(ack.tag);
                }
                backoff = Duration::from_millis(100);
                outbox.metrics.publish_stalled.set(0);
                health.set_ok();
            }
            Err(e) => {
                outbox.metrics.publish_errors.inc();
                outbox.metrics.publish_stalled.set(1);
                tracing::warn!("publish failed, will re-send: {e}");
                health.set_failing(format!("NATS: {e}"));
                publisher.abandon();
                outbox.resend_all();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_drops_oldest_beyond_its_bound_and_counts() {
        let m = Metrics::default();
        let o = Outbox::new(10, m.clone());
        o.push(1, 3, Bytes::from_static(b"123456"));
        o.push(2, 4, Bytes::from_static(b"123456"));
        assert_eq!(o.len(), 1);
        assert_eq!(m.spans_dropped_buffer.get(), 3);
        assert_eq!(o.next_unsent().map(|(s, _, _)| s), Some(2));
        assert_eq!(o.next_unsent(), None);
        o.resend_all();
        assert_eq!(o.next_unsent().map(|(s, _, _)| s), Some(2));
        o.acked(2);
        assert!(o.is_empty());
        assert_eq!(m.spans_published.get(), 4);
    }

    #[test]
    fn a_refused_batch_is_halved_in_place_and_a_refused_span_dropped_and_counted() {
        let m = Metrics::default();
        let o = Outbox::new(1 << 30, m.clone());
        let encode = |n| {
            encode_espan_batch(&ESpanBatch {
                version: WIRE_VERSION,
                host: "h".into(),
                boot_id: 1,
                seq: 1,
                spans: long_spans(n, 10),
            })
        };
        o.push(1, 5, encode(5));
        o.push(2, 1, encode(1));
        o.split(1);
        let parts: Vec<(String, usize)> = o
            .lock()
            .queue
            .iter()
            .map(|s| (s.name.clone(), s.spans))
            .collect();
        assert_eq!(
            parts,
            [("1.1".into(), 2), ("1.2".into(), 3), ("2".into(), 1)],
            "the halves in the batch's place, before the next one"
        );
        assert_eq!(m.batches_split.get(), 1);
        o.split(2);
        assert_eq!(m.spans_dropped_too_large.get(), 1);
        assert_eq!(o.len(), 2);
        assert_eq!(o.unacked_spans(), 5);
    }

    fn config(batch_bytes: usize) -> PublishConfig {
        PublishConfig {
            host: "host-a".into(),
            boot_id: 7,
            batch_spans: 500,
            batch_bytes,
            max_field_bytes: 4096,
            batch_interval: Duration::from_secs(3600),
            buffer_bytes: 64 << 20,
            max_in_flight: 16,
            stream_limits: espan::bus::StreamLimits::default(),
        }
    }

    /// `n` spans with a path of `path_bytes` bytes each.
    fn long_spans(n: u64, path_bytes: usize) -> Vec<ESpan> {
        (0..n)
            .map(|i| {
                let mut span = espan::wire::sample::span(i);
                span.http.as_mut().unwrap().path = format!("/{i}/{}", "p".repeat(path_bytes));
                span
            })
            .collect()
    }

    /// Seals `spans` with `config` and returns the sealed payloads.
    async fn seal(config: PublishConfig, spans: Vec<ESpan>, metrics: &Metrics) -> Vec<Bytes> {
        let outbox = Outbox::new(1 << 30, metrics.clone());
        let (tx, rx) = mpsc::channel(spans.len() + 1);
        for span in spans {
            tx.send(span).await.unwrap();
        }
        drop(tx);
        seal_messages(config, rx, outbox.clone()).await;
        let b = outbox.lock();
        b.queue.iter().map(|s| s.payload.clone()).collect()
    }

    #[tokio::test]
    async fn batches_are_sealed_by_bytes_and_long_fields_cut() {
        let metrics = Metrics::default();
        // 300 spans of ~1.2 KiB: under batch_spans, but ~360 KiB.
        let payloads = seal(config(64 << 10), long_spans(300, 1000), &metrics).await;
        assert!(payloads.len() >= 6, "{} batches", payloads.len());
        let mut spans = 0;
        for payload in &payloads {
            assert!(payload.len() <= 64 << 10, "{}", payload.len());
            spans += espan::wire::decode_espan_batch(payload)
                .unwrap()
                .batch
                .spans
                .len();
        }
        assert_eq!(spans, 300);
        assert_eq!(metrics.text_fields_capped.get(), 0);

        let payloads = seal(config(512 << 10), long_spans(3, 10_000), &metrics).await;
        let batch = espan::wire::decode_espan_batch(&payloads[0]).unwrap().batch;
        for span in &batch.spans {
            assert_eq!(span.http.as_ref().unwrap().path.len(), 4096);
        }
        assert_eq!(metrics.text_fields_capped.get(), 3);
    }

    /// A server whose max_payload is below the batch size: the batches it
    /// refuses are published in halves, every span arrives once. Before, the
    /// refused batch was re-sent forever and nothing after it went out.
    #[tokio::test]
    async fn a_batch_over_the_servers_max_payload_goes_out_in_halves() {
        use futures::StreamExt;
        let nats = espan::testkit::TestNats::start_with(espan::testkit::NatsOptions {
            max_payload: Some(32 << 10),
            ..Default::default()
        })
        .unwrap();
        let bus = nats
            .bus("test", &espan::bus::StreamLimits::default())
            .await
            .unwrap();
        let metrics = Metrics::default();
        let outbox = Outbox::new(64 << 20, metrics.clone());
        let config = config(512 << 10);
        let (tx, rx) = mpsc::channel(1024);
        let sealer = tokio::spawn(seal_messages(config.clone(), rx, outbox.clone()));
        let (trigger, stop) = espan::shutdown::channel();
        let sender = tokio::spawn(sender(
            config,
            bus.clone(),
            outbox.clone(),
            Health::default(),
            stop,
            Duration::from_secs(5),
        ));
        // ~120 KiB in one batch: four times what the server takes.
        for span in long_spans(100, 1000) {
            tx.send(span).await.unwrap();
        }
        drop(tx);
        sealer.await.unwrap();

        let stream = bus.jetstream().get_stream("ESPANS").await.unwrap();
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("reader".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let mut ids = Vec::new();
        while ids.len() < 100 {
            let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .expect("every span arrives")
                .unwrap()
                .unwrap();
            m.ack().await.unwrap();
            assert!(m.payload.len() <= 32 << 10);
            let batch = espan::wire::decode_espan_batch(&m.payload).unwrap().batch;
            ids.extend(batch.spans.iter().map(|s| s.span_id));
        }
        ids.sort_unstable();
        assert_eq!(ids, (1..=100).collect::<Vec<u64>>(), "every span once");
        assert!(metrics.batches_split.get() >= 3);
        assert_eq!(metrics.spans_dropped_too_large.get(), 0);
        assert_eq!(metrics.spans_published.get(), 100);
        trigger.trigger();
        sender.await.unwrap();
    }
}
