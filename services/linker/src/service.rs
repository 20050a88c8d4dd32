//! The running linker: ESPANS → store → engine → TRACES.
//!
//! Three tasks share the work, so each stage runs while the others wait on I/O:
//! - the consumer reads each group of ESPANS messages (each span validated and
//!   kept as its facts and its bytes as received, [`raw`]), stores the messages
//!   in SurrealDB, lets them be acked only then, and hands the spans to the
//!   engine over a bounded channel (a slow engine holds back consumption, and
//!   JetStream holds the backlog);
//! - the engine task links, and hands what it finishes to the output task, again
//!   over a bounded channel;
//! - the output task ([`crate::output`]) publishes the kept traces to TRACES
//!   (many to a message, grouped by due time, with a `Nats-Msg-Id` naming its
//!   traces, so one re-sent after a restart is stored once), stores them, and
//!   deletes the stored batches the engine no longer needs, always after
//!   everything finished before was published (jobs are done in order).
//!
//! On start the open window is rebuilt from the stored batches, replayed with
//! their original receive times, so the same traces come out with the same ids.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use espan::bus::{
    self, Bus, ConsumerSpec, DeadLetter, DeadLetters, Delivery, Handler, HandlerError, StreamLimits,
};
use espan::shutdown::Shutdown;
use espan::telemetry::Health;
use tokio::sync::mpsc;

use crate::engine::{Engine, EngineConfig};
use crate::metrics::Metrics;
use crate::output::{OUTPUT_QUEUE, Output, ToOutput};
use crate::raw::{self, RawSpan, SpansMessage};
use crate::settings::Settings;
use crate::store::{Store, StoredMessage};

pub use crate::raw::trace_msg_id;

/// How far flush ticks stay behind the wall clock (see the engine loop).
const TICK_MARGIN_NS: u64 = 1_000_000_000;

/// Wall clock, ns since the epoch: the engine's clock.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The engine's settings from the linker's.
pub fn engine_config(settings: &Settings) -> EngineConfig {
    EngineConfig {
        window: settings.window,
        sampling_rate: settings.sampling_rate,
        use_app_trace_id: settings.use_app_trace_id,
        late_retention: settings.late_retention,
        ..EngineConfig::default()
    }
}

/// One read ESPANS message, with its bytes as received (what the store keeps;
/// its spans are slices of them).
pub struct Consumed {
    raw: Bytes,
    batch: SpansMessage,
}

fn decode(bytes: &[u8]) -> Result<Consumed, String> {
    let raw = Bytes::copy_from_slice(bytes);
    let batch = raw::read_spans_message(&raw).map_err(|e| e.to_string())?;
    Ok(Consumed { raw, batch })
}

/// Spans of one stored message, on their way to the engine.
struct Ingest {
    seq: u64,
    received_ns: u64,
    batch: SpansMessage,
}

/// Feeds one message's spans to the engine.
fn ingest(engine: &mut Engine<RawSpan>, batch: SpansMessage, tag: u64, now_ns: u64) {
    let hosts: Vec<_> = batch.hosts.iter().map(|h| engine.host_id(h)).collect();
    let spans = batch
        .spans
        .into_iter()
        .map(|span| (hosts[span.host as usize], span.facts, span.raw));
    engine.ingest_batch(spans, tag, now_ns);
}

/// Stores consumed messages before they are acked.
struct StoreHandler {
    store: Arc<Store>,
    /// Where a batch that names another host than its subject goes.
    dead_letters: DeadLetters,
    to_engine: mpsc::Sender<Vec<Ingest>>,
    metrics: Metrics,
    store_full: Arc<AtomicBool>,
    shutdown: Shutdown,
    last_stamp: u64,
    /// The stamp of the last group handed to the engine task.
    last_sent: u64,
    /// The stamp of the group being stored or on its way to the engine, if
    /// newer than `last_sent`: flush ticks must not overtake it.
    stamped: Arc<AtomicU64>,
}

/// Why a batch cannot be from the probe that published it, if it cannot: a
/// probe may publish only on `espan.<its host>` (NATS permissions see to
/// that), so a batch or a span naming another host there is forged or
/// broken, and linking it would let one host speak for another.
pub fn host_mismatch(subject: &str, batch: &SpansMessage) -> Option<String> {
    if bus::espan_subject(&batch.host) != subject {
        return Some(format!(
            "batch host {:?} does not match its subject {subject}",
            batch.host
        ));
    }
    batch
        .hosts
        .iter()
        .find(|host| **host != batch.host)
        .map(|host| {
            format!(
                "a span of host {host:?} in a batch of host {:?} ({subject})",
                batch.host
            )
        })
}

impl StoreHandler {
    /// Dead-letters the deliveries whose host does not match their subject
    /// and returns the others.
    async fn refuse_foreign_hosts(
        &self,
        deliveries: Vec<Delivery<Consumed>>,
    ) -> Result<Vec<Delivery<Consumed>>, HandlerError> {
        let mut kept = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let Some(reason) = host_mismatch(&delivery.subject, &delivery.value.batch) else {
                kept.push(delivery);
                continue;
            };
            // Stored before the group is acked; if it fails, the group comes back.
            self.dead_letters
                .store(DeadLetter {
                    source_subject: &delivery.subject,
                    stream_seq: delivery.stream_seq,
                    piece: None,
                    payload: delivery.value.raw.clone(),
                    reason: &reason,
                })
                .await
                .map_err(|e| HandlerError(e.to_string()))?;
            self.metrics.batches_host_mismatch.inc();
            self.metrics.dead_lettered.inc();
        }
        Ok(kept)
    }
}

impl Handler<Consumed> for StoreHandler {
    async fn handle(&mut self, deliveries: Vec<Delivery<Consumed>>) -> Result<(), HandlerError> {
        let deliveries = self.refuse_foreign_hosts(deliveries).await?;
        if deliveries.is_empty() {
            return Ok(());
        }
        // A full store: hold these messages unacked (JetStream keeps the rest)
        // until retention and retirement make room.
        while self.store_full.load(Ordering::Relaxed) {
            if self.shutdown.is_triggered() {
                return Err(HandlerError("shutting down".into()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Receive stamps never go back (the engine's clock must not), even if
        // the wall clock does.
        let received_ns = now_ns().max(self.last_stamp + 1);
        self.last_stamp = received_ns;
        self.stamped.store(received_ns, Ordering::Release);
        let rows: Vec<StoredMessage> = deliveries
            .iter()
            .map(|d| StoredMessage {
                seq: d.stream_seq,
                received_ns,
                data: d.value.raw.clone(),
            })
            .collect();
        let started = Instant::now();
        if let Err(error) = self.store.put_messages(&rows).await {
            // Not coming: ticks need not wait for it.
            self.stamped.store(self.last_sent, Ordering::Release);
            return Err(HandlerError(error.to_string()));
        }
        self.metrics
            .store_write_seconds
            .observe(started.elapsed().as_secs_f64());
        let mut ingest = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            self.metrics.batches_in.inc();
            self.metrics
                .spans_in
                .inc_by(d.value.batch.spans.len() as u64);
            self.metrics
                .spans_rejected
                .inc_by(d.value.batch.rejected.len() as u64);
            ingest.push(Ingest {
                seq: d.stream_seq,
                received_ns,
                batch: d.value.batch,
            });
        }
        // Stored: safe to ack even if the engine task is gone (a restart replays it).
        let _ = self.to_engine.send(ingest).await;
        self.last_sent = received_ns;
        Ok(())
    }
}

/// Counts dead letters and retries.
struct Observer(Metrics);
impl bus::ConsumeObserver for Observer {
    fn retried(&self, messages: u64) {
        self.0.consume_retries.inc_by(messages);
    }
    fn dead_lettered(&self, _reason: &str) {
        self.0.dead_lettered.inc();
    }
    fn dead_letter_failed(&self, _error: &bus::BusError) {
        self.0.dead_letter_failures.inc();
    }
}

/// Where a flush tick moves the engine's clock. Not past a group stamped but
/// not taken yet (being stored, or queued): its stamp moves the clock when it
/// comes, as it will when a rebuild replays it. Ticks also lag the wall clock
/// by a margin, for a group being stamped right now.
fn tick_clock(engine_clock: u64, stamped: &AtomicU64, last_taken: u64) -> u64 {
    if stamped.load(Ordering::Acquire) > last_taken {
        engine_clock
    } else {
        engine_clock.max(now_ns().saturating_sub(TICK_MARGIN_NS))
    }
}

/// Runs the linker until `shutdown`.
pub async fn run(
    settings: Settings,
    store: Arc<Store>,
    metrics: Metrics,
    health: Health,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let bus = Bus::connect(&settings.nats, &settings.name, Duration::from_secs(30)).await?;
    let limits = StreamLimits {
        max_bytes: settings.stream_max_bytes,
        duplicate_window: settings.duplicate_window,
        replicas: settings.stream_replicas,
        max_age: settings.stream_max_age,
    };
    bus.ensure_streams(&limits).await?;

    let config = engine_config(&settings);
    config.check().context("linker settings")?;
    for warning in settings.durability_warnings() {
        tracing::warn!("{warning}");
    }
    if settings.late_retention <= settings.ack_wait {
        // What a crashed predecessor took but did not store comes back after
        // ack_wait; later than late_retention, it can no longer join its trace.
        tracing::warn!(
            late_retention = ?settings.late_retention,
            ack_wait = ?settings.ack_wait,
            "late_retention is not above ack_wait: after a crash, spans redelivered then start traces of their own"
        );
    }
    let mut engine: Engine<RawSpan> = Engine::new(config);
    engine.track_forgotten(true);
    let (forgotten, next_forgotten) = store
        .forgotten_spans()
        .await
        .context("reading the forgotten spans")?;
    let (jobs, queued) = mpsc::channel(OUTPUT_QUEUE);
    let output = Output {
        bus: bus.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        subject: bus::trace_subject(&settings.name),
        linker: settings.name.clone(),
        boot_id: rand::random(),
        next_seq: store.next_trace_batch_seq().await?,
        deleted_below: 0,
        retired: Vec::new(),
        next_forgotten,
        message_bytes: crate::output::message_bytes(bus.max_payload()),
        max_trace_spans: settings.max_trace_spans,
        shutdown: shutdown.clone(),
    };
    let output_task = tokio::spawn(output.run(queued));
    let output = ToOutput(jobs);

    // Rebuild the window: replay stored batches with their original times.
    let stored = store
        .window_messages()
        .await
        .context("reading the stored window")?;
    let mut ingested_up_to = 0;
    let mut engine_clock = 0u64;
    let replayed = stored.len();
    let mut left_out = 0u64;
    for stored in stored {
        let batch = match raw::read_spans_message(&stored.data) {
            Ok(batch) => batch,
            Err(error) => {
                tracing::error!(seq = stored.seq, %error, "stored batch does not decode; skipped");
                continue;
            }
        };
        // The same order as live: the clock moves to the batch's stamp, then its
        // spans go in, so a replay finishes the same traces the same way.
        let finished = engine.advance(stored.received_ns);
        output.emit(finished, stored.received_ns).await?;
        // Spans forgotten before the stop stay forgotten (see Engine::
        // take_forgotten): the rebuilt window is the one that ran.
        let mut batch = batch;
        let before = batch.spans.len();
        batch
            .spans
            .retain(|span| !forgotten.contains(&(stored.seq, span.facts.span_id)));
        left_out += (before - batch.spans.len()) as u64;
        ingest(&mut engine, batch, stored.seq, stored.received_ns);
        ingested_up_to = ingested_up_to.max(stored.seq);
        engine_clock = engine_clock.max(stored.received_ns);
    }
    if replayed > 0 {
        tracing::info!(
            batches = replayed,
            spans = engine.stats().spans_in,
            forgotten_left_out = left_out,
            "window rebuilt from the store"
        );
    }
    health.set_ok();

    let (to_engine, mut from_consumer) = mpsc::channel::<Vec<Ingest>>(64);
    let stamped = Arc::new(AtomicU64::new(engine_clock));
    // The stamp of the last group the engine took.
    let mut last_taken = engine_clock;
    let store_full = Arc::new(AtomicBool::new(false));
    let mut spec = ConsumerSpec::new(bus::ESPANS_STREAM, &settings.name);
    spec.batch = settings.consume_batch;
    spec.ack_wait = settings.ack_wait;
    spec.max_ack_pending = 10_000;
    // Handler failures are store failures, which pass: retry, never dead-letter.
    spec.max_deliver = 0;
    let consumer = {
        let bus = bus.clone();
        let mut handler = StoreHandler {
            store: store.clone(),
            dead_letters: DeadLetters::new(&bus, bus::ESPANS_STREAM, &settings.name),
            to_engine,
            metrics: metrics.clone(),
            store_full: store_full.clone(),
            shutdown: shutdown.clone(),
            last_stamp: engine_clock,
            last_sent: engine_clock,
            stamped: stamped.clone(),
        };
        let observer = Observer(metrics.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            bus::consume(&bus, &spec, decode, &mut handler, &observer, shutdown).await
        })
    };

    let mut flush = tokio::time::interval(settings.flush_interval);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut housekeeping = tokio::time::interval(Duration::from_secs(5));
    let store_bytes = Arc::new(AtomicU64::new(store.disk_bytes()));
    // The engine's clock moves only with the stamps of the groups it takes
    // and with ticks that no stamped group is waiting behind, so a rebuild,
    // which advances to each stored batch's stamp, finishes the same traces
    // the same way (and publishes them under the same msg ids). Messages a
    // crashed predecessor took but did not store come back after ack_wait and
    // join their traces as late parts, under the same trace ids.
    let stop = shutdown.clone().wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            received = from_consumer.recv() => {
                let Some(group) = received else { break };
                for next in group {
                    let finished = engine.advance(next.received_ns);
                    output.emit(finished, next.received_ns).await?;
                    last_taken = last_taken.max(next.received_ns);
                    ingest(&mut engine, next.batch, next.seq, next.received_ns);
                    ingested_up_to = ingested_up_to.max(next.seq);
                    engine_clock = engine_clock.max(next.received_ns);
                }
            }
            _ = flush.tick() => {
                let now = tick_clock(engine_clock, &stamped, last_taken);
                engine_clock = now;
                let finished = engine.advance(now);
                output.emit(finished, now).await?;
                output.retire(&mut engine, ingested_up_to, now).await?;
                metrics.observe_engine(&engine.stats());
            }
            _ = housekeeping.tick() => {
                let cutoff = now_ns().saturating_sub(settings.retention.as_nanos() as u64);
                match store.expire_traces(cutoff).await {
                    Ok(n) => {
                        metrics.traces_expired.inc_by(n);
                    }
                    Err(error) => tracing::warn!(%error, "expiring old traces failed"),
                }
                let bytes = store.disk_bytes();
                store_bytes.store(bytes, Ordering::Relaxed);
                metrics.store_bytes.set(bytes as i64);
                let full = bytes >= settings.max_store_size;
                if full != store_full.swap(full, Ordering::Relaxed) {
                    if full {
                        tracing::warn!(bytes, limit = settings.max_store_size, "store full: consumption paused, JetStream holds the backlog");
                        health.set_failing(format!("store full ({bytes} of {} bytes)", settings.max_store_size));
                    } else {
                        tracing::info!(bytes, "store below its limit again: consuming");
                        health.set_ok();
                    }
                }
                metrics.store_full.set(i64::from(full));
            }
        }
    }
    // Flush what is finished; open traces stay in the store for the next start.
    let now = tick_clock(engine_clock, &stamped, last_taken);
    let finished = engine.advance(now);
    output.emit(finished, now).await.ok();
    drop(output);
    let published = output_task.await;
    let consumed = consumer.await;
    match published {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "not all finished traces were published; the next start replays them")
        }
        Err(join) => return Err(anyhow::anyhow!("output task failed: {join}")),
    }
    match consumed {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.into()),
        Err(join) => Err(anyhow::anyhow!("consumer task failed: {join}")),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use std::sync::atomic::AtomicU64;

    use super::{TICK_MARGIN_NS, now_ns, tick_clock, trace_msg_id};
    use crate::engine::{FinishedTrace, Linked};
    use crate::raw::RawSpan;

    fn part(span_ids: &[u64], late: bool) -> FinishedTrace<RawSpan> {
        FinishedTrace {
            trace_id_high: 1,
            trace_id_low: 2,
            spans: span_ids
                .iter()
                .map(|&span_id| Linked {
                    span: RawSpan {
                        span_id,
                        bytes: Bytes::new(),
                    },
                    parent_id: 0,
                })
                .collect(),
            app_trace_id: true,
            late,
        }
    }

    #[test]
    fn parts_sharing_a_trace_id_have_their_own_msg_ids() {
        let a = trace_msg_id(&part(&[7, 3, 9], false));
        let b = trace_msg_id(&part(&[8, 4], false));
        assert_ne!(a, b);
        // The same part sent again (a replay after a crash) keeps its id.
        assert_eq!(a, trace_msg_id(&part(&[9, 7, 3], false)));
        assert_ne!(a, trace_msg_id(&part(&[7, 3, 9], true)));
        assert_eq!(a, "00000000000000010000000000000002-0000000000000003");
    }

    #[test]
    fn a_tick_waits_for_a_stamped_group_the_engine_has_not_taken() {
        let engine_clock = 1_000;
        // Stamped at 2_000, the engine's last group at 1_500: one is on its way.
        let stamped = AtomicU64::new(2_000);
        assert_eq!(tick_clock(engine_clock, &stamped, 1_500), engine_clock);
        // Taken: the tick follows the wall clock, a margin behind.
        let before = now_ns() - TICK_MARGIN_NS;
        let moved = tick_clock(engine_clock, &stamped, 2_000);
        assert!(moved >= before && moved <= now_ns() - TICK_MARGIN_NS);
        // Never back.
        let ahead = now_ns() + 10 * TICK_MARGIN_NS;
        assert_eq!(tick_clock(ahead, &stamped, 2_000), ahead);
    }
}
