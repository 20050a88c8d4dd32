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
//! - the output task publishes the kept traces to TRACES (one message per trace
//!   part with a `Nats-Msg-Id`, so one re-sent after a restart is stored once,
//!   many in flight at once), stores them, and deletes the stored batches the
//!   engine no longer needs, always after everything finished before was
//!   published (jobs are done in order).
//!
//! On start the open window is rebuilt from the stored batches, replayed with
//! their original receive times, so the same traces come out with the same ids.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use espan::bus::{self, Bus, ConsumerSpec, Delivery, Handler, HandlerError, StreamLimits};
use espan::shutdown::Shutdown;
use espan::telemetry::Health;
use tokio::sync::mpsc;

use crate::engine::{Engine, EngineConfig, Finished, FinishedTrace};
use crate::metrics::Metrics;
use crate::raw::{self, RawSpan, SpanBatch};
use crate::settings::Settings;
use crate::store::{Store, StoredBatch, trace_id_hex};

pub use crate::raw::trace_msg_id;

/// How far flush ticks stay behind the wall clock (see the engine loop).
const TICK_MARGIN_NS: u64 = 1_000_000_000;

/// Output jobs queued at most (each is one consumed message's finished traces,
/// or a flush tick's).
const OUTPUT_QUEUE: usize = 256;

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
    batch: SpanBatch,
}

fn decode(bytes: &[u8]) -> Result<Consumed, String> {
    let raw = Bytes::copy_from_slice(bytes);
    let batch = raw::read_span_batch(&raw).map_err(|e| e.to_string())?;
    Ok(Consumed { raw, batch })
}

/// Spans of one stored message, on their way to the engine.
struct Ingest {
    seq: u64,
    received_ns: u64,
    batch: SpanBatch,
}

/// Feeds one message's spans to the engine.
fn ingest(engine: &mut Engine<RawSpan>, batch: SpanBatch, tag: u64, now_ns: u64) {
    let hosts: Vec<_> = batch.hosts.iter().map(|h| engine.host_id(h)).collect();
    for span in batch.spans {
        engine.ingest_with(
            hosts[span.host as usize],
            &span.facts,
            span.raw,
            tag,
            now_ns,
        );
    }
}

/// Stores consumed messages before they are acked.
struct StoreHandler {
    store: Arc<Store>,
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

impl Handler<Consumed> for StoreHandler {
    async fn handle(&mut self, deliveries: Vec<Delivery<Consumed>>) -> Result<(), HandlerError> {
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
        let rows: Vec<StoredBatch> = deliveries
            .iter()
            .map(|d| StoredBatch {
                seq: d.stream_seq,
                received_ns,
                data: d.value.raw.clone(),
            })
            .collect();
        let started = Instant::now();
        if let Err(error) = self.store.put_batches(&rows).await {
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

/// Counts dead letters.
struct Observer(Metrics);
impl bus::ConsumeObserver for Observer {
    fn dead_lettered(&self, _reason: &str) {
        self.0.dead_lettered.inc();
    }
}

/// What the engine task asks of the output task, done in order.
enum Job {
    /// Publish (and store) the kept traces, finished at `finished_ns`.
    Emit {
        traces: Vec<FinishedTrace<RawSpan>>,
        finished_ns: u64,
    },
    /// Record the spans forgotten, then delete the
    /// stored batches below `keep_from` (`retired` of them were reported
    /// retired by the engine).
    Retire {
        keep_from: u64,
        retired: u64,
        forgotten: Vec<(u64, u64)>,
    },
}

/// The engine task's end of the output queue.
struct ToOutput(mpsc::Sender<Job>);

impl ToOutput {
    /// Hands over the kept traces of `finished`.
    async fn emit(&self, finished: Vec<Finished<RawSpan>>, finished_ns: u64) -> anyhow::Result<()> {
        let traces: Vec<_> = finished
            .into_iter()
            .filter(|f| f.sampled)
            .map(|f| f.trace)
            .collect();
        if traces.is_empty() {
            return Ok(());
        }
        self.0
            .send(Job::Emit {
                traces,
                finished_ns,
            })
            .await
            .map_err(|_| anyhow::anyhow!("the output task stopped"))
    }

    /// Asks for the stored batches the engine no longer needs to be deleted.
    async fn retire(
        &self,
        engine: &mut Engine<RawSpan>,
        ingested_up_to: u64,
    ) -> anyhow::Result<()> {
        let retired = engine.take_retired_tags();
        let forgotten = engine.take_forgotten();
        let keep_from = engine
            .live_tags()
            .min()
            .unwrap_or(ingested_up_to + 1)
            .min(ingested_up_to + 1);
        let retired = retired.iter().filter(|t| **t < keep_from).count() as u64;
        self.0
            .send(Job::Retire {
                keep_from,
                retired,
                forgotten,
            })
            .await
            .map_err(|_| anyhow::anyhow!("the output task stopped"))
    }
}

/// Publishes and stores what the engine finishes, and retires stored batches.
struct Output {
    bus: Bus,
    store: Arc<Store>,
    metrics: Metrics,
    subject: String,
    linker: String,
    boot_id: u64,
    next_seq: u64,
    deleted_below: u64,
    /// The next `forgotten` row id.
    next_forgotten: u64,
    shutdown: Shutdown,
}

/// One trace message, ready to publish.
struct Encoded {
    /// The `Trace` message (also what the store keeps).
    body: Vec<u8>,
    msg_id: String,
    id: String,
    spans: u64,
}

/// Traces published in one round (one flush of acks) and stored in one row, at
/// most: bounds how long a round takes when a flush finishes many at once.
const ROUND: usize = 2048;

impl Output {
    /// Does jobs until the engine task is done, in order: traces are published
    /// in rounds of up to [`ROUND`], and a retirement happens only after every
    /// trace handed over before it was published. Storing a round's traces
    /// (for `espan-linker trace`, not needed to publish) runs while the next
    /// round is published.
    async fn run(mut self, mut jobs: mpsc::Receiver<Job>) -> anyhow::Result<()> {
        let mut queued = Vec::new();
        let mut pending: Vec<Encoded> = Vec::new();
        let mut finished_ns = 0;
        let mut storing: Option<tokio::task::JoinHandle<()>> = None;
        while jobs.recv_many(&mut queued, OUTPUT_QUEUE).await > 0 {
            let last = queued.len();
            for (n, job) in queued.drain(..).enumerate() {
                match job {
                    Job::Emit {
                        traces,
                        finished_ns: at,
                    } => {
                        finished_ns = finished_ns.max(at);
                        pending.extend(traces.iter().map(encode));
                    }
                    Job::Retire {
                        keep_from,
                        retired,
                        forgotten,
                    } => {
                        self.round(&mut pending, finished_ns, &mut storing).await?;
                        self.retire(keep_from, retired, forgotten).await?;
                    }
                }
                if pending.len() >= ROUND || n + 1 == last {
                    self.round(&mut pending, finished_ns, &mut storing).await?;
                }
            }
        }
        if let Some(task) = storing {
            task.await.ok();
        }
        Ok(())
    }

    /// Publishes `pending` (retrying until JetStream has them all, since their
    /// batches may be deleted afterwards), then has them stored.
    async fn round(
        &mut self,
        pending: &mut Vec<Encoded>,
        finished_ns: u64,
        storing: &mut Option<tokio::task::JoinHandle<()>>,
    ) -> anyhow::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let traces = std::mem::take(pending);
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.publish(&traces, seq).await {
                Ok(()) => break,
                Err(error) if !self.shutdown.is_triggered() => {
                    tracing::warn!(%error, traces = traces.len(), "publishing traces failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                // Not published and not retired: the next start replays them.
                Err(error) => return Err(error.into()),
            }
        }
        self.metrics.traces_published.inc_by(traces.len() as u64);
        // One store write at a time, in order.
        if let Some(previous) = storing.take() {
            previous.await.ok();
        }
        let store = self.store.clone();
        *storing = Some(tokio::spawn(async move {
            let data = raw::trace_batch("", 0, seq, traces.iter().map(|t| t.body.as_slice()));
            let spans = traces.iter().map(|t| t.spans).sum();
            let ids = traces.into_iter().map(|t| t.id).collect();
            if let Err(error) = store
                .put_trace_batch(seq, finished_ns, ids, spans, data)
                .await
            {
                // Already delivered downstream; only `espan-linker trace` misses them.
                tracing::error!(%error, "storing finished traces failed");
            }
        }));
        Ok(())
    }

    async fn publish(&mut self, traces: &[Encoded], seq: u64) -> Result<(), bus::BusError> {
        let mut publisher = self.bus.publisher(4096);
        for (n, trace) in traces.iter().enumerate() {
            let payload = raw::trace_batch(
                &self.linker,
                self.boot_id,
                seq,
                std::iter::once(trace.body.as_slice()),
            );
            publisher
                .publish(
                    n as u64,
                    self.subject.clone(),
                    trace.msg_id.clone(),
                    payload,
                    None,
                )
                .await?;
        }
        publisher.flush().await?;
        Ok(())
    }

    /// Records the spans forgotten, then deletes stored batches below
    /// `keep_from`, the oldest one the engine still needs (everything finished
    /// before was published by now). The record comes first: a rebuild must
    /// leave out every span of a forgotten trace, or the ones it found would
    /// come out again, apart from the rest.
    async fn retire(
        &mut self,
        keep_from: u64,
        retired: u64,
        forgotten: Vec<(u64, u64)>,
    ) -> anyhow::Result<()> {
        if !forgotten.is_empty() {
            let mut delay = Duration::from_millis(100);
            loop {
                match self
                    .store
                    .put_forgotten(self.next_forgotten, &forgotten)
                    .await
                {
                    Ok(()) => break,
                    Err(error) if !self.shutdown.is_triggered() => {
                        tracing::warn!(%error, "recording forgotten spans failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                    // Nothing deleted: a rebuild sees the whole traces again,
                    // and their messages' ids make JetStream drop them.
                    Err(error) => return Err(error.into()),
                }
            }
            self.next_forgotten += 1;
        }
        if keep_from > self.deleted_below {
            match self.store.delete_batches_below(keep_from).await {
                Ok(()) => {
                    self.metrics.store_batches_deleted.inc_by(retired);
                    self.deleted_below = keep_from;
                }
                Err(error) => tracing::warn!(%error, "deleting retired batches failed; will retry"),
            }
        }
        Ok(())
    }
}

fn encode(trace: &FinishedTrace<RawSpan>) -> Encoded {
    let mut body = Vec::with_capacity(
        trace
            .spans
            .iter()
            .map(|s| s.span.bytes.len() + 16)
            .sum::<usize>()
            + 32,
    );
    raw::encode_trace(trace, &mut body);
    Encoded {
        body,
        msg_id: trace_msg_id(trace),
        id: trace_id_hex(trace.trace_id_high, trace.trace_id_low),
        spans: trace.spans.len() as u64,
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
    let bus = Bus::connect(&settings.nats_url, &settings.name, Duration::from_secs(30)).await?;
    let limits = StreamLimits {
        max_bytes: settings.stream_max_bytes,
        duplicate_window: settings.duplicate_window,
        ..StreamLimits::default()
    };
    bus.ensure_streams(&limits).await?;

    let config = engine_config(&settings);
    config.check().context("linker settings")?;
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
        next_forgotten,
        shutdown: shutdown.clone(),
    };
    let output_task = tokio::spawn(output.run(queued));
    let output = ToOutput(jobs);

    // Rebuild the window: replay stored batches with their original times.
    let stored = store
        .window_batches()
        .await
        .context("reading the stored window")?;
    let mut ingested_up_to = 0;
    let mut engine_clock = 0u64;
    let replayed = stored.len();
    let mut left_out = 0u64;
    for stored in stored {
        let batch = match raw::read_span_batch(&stored.data) {
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
                output.retire(&mut engine, ingested_up_to).await?;
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

    use super::trace_msg_id;
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
}
