//! Batching eSpans and publishing them to `espan.<host>`.
//!
//! [`seal_messages`] seals an ESPANS message (a batch of eSpans) at
//! `batch_spans` spans or after `batch_interval`,
//! encodes it and puts it in a bounded buffer; the sender publishes from that
//! buffer with msg id `<host>/<boot_id hex>/<seq>` (so a re-sent batch is stored
//! once) and removes a batch only when JetStream acked it. While NATS is away the
//! buffer fills; when it is over its byte bound the oldest batch is dropped and
//! its spans counted.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use espan::bus::{Bus, espan_subject, redact};
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
    pub batch_interval: Duration,
    /// Bytes of encoded batches kept while NATS is away.
    pub buffer_bytes: u64,
    pub max_in_flight: usize,
    /// Limits of the streams the probe is first to create.
    pub stream_limits: espan::bus::StreamLimits,
}

struct Sealed {
    seq: u64,
    spans: usize,
    payload: Bytes,
    sent: bool,
}

#[derive(Default)]
struct Buffer {
    queue: VecDeque<Sealed>,
    bytes: u64,
}

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
            seq,
            spans,
            payload,
            sent: false,
        });
        while b.bytes > self.bound && b.queue.len() > 1 {
            if let Some(old) = b.queue.pop_front() {
                b.bytes -= old.payload.len() as u64;
                self.metrics.spans_dropped_buffer.inc_by(old.spans as u64);
                tracing::warn!(
                    seq = old.seq,
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

    fn next_unsent(&self) -> Option<(u64, Bytes)> {
        let mut b = self.lock();
        let s = b.queue.iter_mut().find(|s| !s.sent)?;
        s.sent = true;
        Some((s.seq, s.payload.clone()))
    }

    /// Spans in batches JetStream has not acknowledged.
    pub fn unacked_spans(&self) -> usize {
        self.lock().queue.iter().map(|s| s.spans).sum()
    }

    fn acked(&self, seq: u64) {
        let mut b = self.lock();
        if let Some(i) = b.queue.iter().position(|s| s.seq == seq)
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

/// Collects spans into ESPANS messages until the channel closes (the reader
/// stopped).
pub async fn seal_messages(
    config: PublishConfig,
    mut spans: mpsc::Receiver<ESpan>,
    outbox: Outbox,
) {
    let mut seq = 0u64;
    let mut current: Vec<ESpan> = Vec::new();
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
                Some(span) => {
                    current.push(span);
                    if current.len() >= config.batch_spans {
                        seal(&mut current, &mut seq);
                    }
                }
                None => break,
            },
            _ = tick.tick() => seal(&mut current, &mut seq),
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
                bus.create_missing_streams(&config.stream_limits),
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
            Some((seq, payload)) => {
                let msg_id = format!("{}/{:016x}/{}", config.host, config.boot_id, seq);
                publisher
                    .publish(seq, subject.clone(), msg_id, payload, None)
                    .await
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
                health.set_ok();
            }
            Err(e) => {
                outbox.metrics.publish_errors.inc();
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
        assert_eq!(o.next_unsent().map(|(s, _)| s), Some(2));
        assert_eq!(o.next_unsent(), None);
        o.resend_all();
        assert_eq!(o.next_unsent().map(|(s, _)| s), Some(2));
        o.acked(2);
        assert!(o.is_empty());
        assert_eq!(m.spans_published.get(), 4);
    }
}
