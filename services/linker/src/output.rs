//! The output task: publishes the kept traces to TRACES, stores them, records
//! forgotten spans and deletes the stored batches the engine no longer needs,
//! always in the order the engine task asked (a batch is deleted only after
//! every trace finished before was published).
//!
//! Traces go out many to a message: JetStream's cost is per message, and a
//! trace is ~7 spans. A message's `Nats-Msg-Id` must come out the same when a
//! rebuild after a crash finishes the same traces again, so that JetStream
//! drops the copy; which traces a flush happens to finish together is not
//! stable, but a trace's due time (its last join + window) is. So kept traces
//! wait in buckets of due time until the clock has passed the bucket's end;
//! a whole bucket then goes out, in a fixed order, cut into messages of at
//! most [`MESSAGE_BYTES`] (less if the server takes less), each named after
//! its traces. A trace larger than that goes out in parts ([`crate::parts`]).
//!
//! A message the server refuses for its size can never be published: it is
//! dropped and its spans counted, and the traces after it go on. Any other
//! failure is retried (with backoff, counted) until it goes through.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use espan::bus::{self, Bus};
use espan::shutdown::Shutdown;
use tokio::sync::mpsc;

use crate::engine::{Engine, Finished, FinishedTrace, hash};
use crate::metrics::Metrics;
use crate::parts;
use crate::raw::{self, RawSpan, trace_msg_id};
use crate::store::{Store, trace_id_hex};

/// Output jobs queued at most (each is one consumed message's finished traces,
/// or a flush tick's).
pub(crate) const OUTPUT_QUEUE: usize = 256;

/// Width of a due-time bucket: the longest a kept trace waits for the others
/// due with it.
pub(crate) const BUCKET_NS: u64 = 100_000_000;

/// Largest TRACES message body aimed at (NATS's default max payload is 1 MiB);
/// a larger trace goes in parts.
pub(crate) const MESSAGE_BYTES: usize = 512 * 1024;

/// Room left in a message for what surrounds the traces: the `TraceBatch`
/// envelope, each trace's key and length, the `Nats-Msg-Id` header.
const ENVELOPE_BYTES: usize = 4096;

/// The message size aimed at when the server takes `max_payload` at most.
pub(crate) fn message_bytes(max_payload: usize) -> usize {
    MESSAGE_BYTES.min(max_payload.saturating_sub(ENVELOPE_BYTES).max(1024))
}

/// What the engine task asks of the output task, done in order.
pub(crate) enum Job {
    /// Hold the kept traces until their buckets are complete; the engine's
    /// clock is at `clock`.
    Emit { traces: Vec<Kept>, clock: u64 },
    /// The clock is at `clock`: publish complete buckets; record the spans
    /// forgotten; delete the stored batches below `keep_from` (the engine
    /// reported the `retired` ones retired).
    Retire {
        clock: u64,
        keep_from: u64,
        retired: Vec<u64>,
        forgotten: Vec<(u64, u64)>,
    },
}

/// A kept trace, as the output task needs it.
pub(crate) struct Kept {
    trace: FinishedTrace<RawSpan>,
    due_ns: u64,
    /// The oldest batch holding one of its spans: kept until it is published.
    min_tag: u64,
}

/// The engine task's end of the output queue.
pub(crate) struct ToOutput(pub(crate) mpsc::Sender<Job>);

impl ToOutput {
    /// Hands over the kept traces of `finished` (finished by advancing to `clock`).
    pub(crate) async fn emit(
        &self,
        finished: Vec<Finished<RawSpan>>,
        clock: u64,
    ) -> anyhow::Result<()> {
        let traces: Vec<_> = finished
            .into_iter()
            .filter(|f| f.sampled)
            .map(|f| Kept {
                min_tag: f.tags.first().copied().unwrap_or(u64::MAX),
                due_ns: f.due_ns,
                trace: f.trace,
            })
            .collect();
        if traces.is_empty() {
            return Ok(());
        }
        self.send(Job::Emit { traces, clock }).await
    }

    /// Tells the clock, and asks for the stored batches the engine no longer
    /// needs to be deleted.
    pub(crate) async fn retire(
        &self,
        engine: &mut Engine<RawSpan>,
        ingested_up_to: u64,
        clock: u64,
    ) -> anyhow::Result<()> {
        let retired = engine.take_retired_tags();
        let forgotten = engine.take_forgotten();
        let keep_from = engine
            .live_tags()
            .min()
            .unwrap_or(ingested_up_to + 1)
            .min(ingested_up_to + 1);
        self.send(Job::Retire {
            clock,
            keep_from,
            retired,
            forgotten,
        })
        .await
    }

    async fn send(&self, job: Job) -> anyhow::Result<()> {
        self.0
            .send(job)
            .await
            .map_err(|_| anyhow::anyhow!("the output task stopped"))
    }
}

/// Publishes and stores what the engine finishes, and retires stored batches.
pub(crate) struct Output {
    pub(crate) bus: Bus,
    pub(crate) store: Arc<Store>,
    pub(crate) metrics: Metrics,
    pub(crate) subject: String,
    pub(crate) linker: String,
    pub(crate) boot_id: u64,
    /// The next `tracebatch` row id.
    pub(crate) next_seq: u64,
    pub(crate) deleted_below: u64,
    /// Tags the engine retired whose batches are not deleted yet (counted
    /// when they are).
    pub(crate) retired: Vec<u64>,
    /// The next `forgotten` row id.
    pub(crate) next_forgotten: u64,
    /// Size aimed at for one message ([`message_bytes`]).
    pub(crate) message_bytes: usize,
    /// Spans a trace sends at most.
    pub(crate) max_trace_spans: usize,
    pub(crate) shutdown: Shutdown,
}

/// One trace, encoded.
struct Encoded {
    /// The `Trace` message (also what the store keeps).
    body: Vec<u8>,
    msg_id: String,
    id: String,
    spans: u64,
}

/// One TRACES message: traces of one bucket.
struct Message {
    traces: Vec<Encoded>,
    msg_id: String,
}

/// Kept traces of one due-time bucket, waiting for it to be complete.
struct Bucket {
    traces: Vec<Encoded>,
    min_tag: u64,
}

/// Traces published in one round (one flush of acks) and stored in one row, at
/// most: bounds how long a round takes when a flush finishes many at once.
const ROUND: usize = 2048;

impl Output {
    /// Does jobs until the engine task is done, in order: complete buckets are
    /// published in rounds of up to [`ROUND`] traces, and a retirement happens
    /// only after every trace handed over before it was published or is held
    /// with its batches kept. Storing a round's traces (for `espan-linker
    /// trace`, not needed to publish) runs while the next round is published.
    pub(crate) async fn run(mut self, mut jobs: mpsc::Receiver<Job>) -> anyhow::Result<()> {
        let mut queued = Vec::new();
        let mut held: BTreeMap<u64, Bucket> = BTreeMap::new();
        let mut pending: Vec<Message> = Vec::new();
        let mut clock = 0;
        let mut storing: Option<tokio::task::JoinHandle<()>> = None;
        while jobs.recv_many(&mut queued, OUTPUT_QUEUE).await > 0 {
            let last = queued.len();
            for (n, job) in queued.drain(..).enumerate() {
                match job {
                    Job::Emit { traces, clock: at } => {
                        clock = clock.max(at);
                        for kept in traces {
                            let cut =
                                parts::cut(kept.trace, self.max_trace_spans, self.message_bytes);
                            self.metrics.spans_capped.inc_by(cut.capped);
                            self.metrics.trace_parts.inc_by(cut.parts.len() as u64 - 1);
                            for part in &cut.parts {
                                hold(&mut held, kept.due_ns, kept.min_tag, encode(part));
                            }
                        }
                        take_complete(&mut held, clock, self.message_bytes, &mut pending);
                    }
                    Job::Retire {
                        clock: at,
                        keep_from,
                        retired,
                        forgotten,
                    } => {
                        clock = clock.max(at);
                        take_complete(&mut held, clock, self.message_bytes, &mut pending);
                        self.round(&mut pending, clock, &mut storing).await?;
                        self.retired.extend(retired);
                        // Held traces are not published yet: their batches stay.
                        let held_from = held.values().map(|b| b.min_tag).min().unwrap_or(u64::MAX);
                        self.retire(keep_from.min(held_from), forgotten).await?;
                    }
                }
                let waiting: usize = held.values().map(|b| b.traces.len()).sum();
                self.metrics.traces_held.set(waiting as i64);
                let traces: usize = pending.iter().map(|m| m.traces.len()).sum();
                if traces >= ROUND || n + 1 == last {
                    self.round(&mut pending, clock, &mut storing).await?;
                }
            }
        }
        // Held traces stay unpublished: a restart finishes them again, as the
        // open ones, from the stored batches.
        if let Some(task) = storing {
            task.await.ok();
        }
        Ok(())
    }

    /// Publishes `pending` (retrying until JetStream has them all, since their
    /// batches may be deleted afterwards), then has them stored.
    async fn round(
        &mut self,
        pending: &mut Vec<Message>,
        finished_ns: u64,
        storing: &mut Option<tokio::task::JoinHandle<()>>,
    ) -> anyhow::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let messages = std::mem::take(pending);
        let seq = self.next_seq;
        self.next_seq += 1;
        // Given up only at shutdown: not published and not retired, the next
        // start replays them.
        let sent: Vec<AtomicBool> = messages.iter().map(|_| AtomicBool::new(false)).collect();
        let dropped: Vec<AtomicBool> = messages.iter().map(|_| AtomicBool::new(false)).collect();
        let metrics = self.metrics.clone();
        retried(&self.shutdown, &metrics, "publishing traces", || {
            self.publish(&messages, &sent, &dropped, seq)
        })
        .await?;
        let published: usize = messages
            .iter()
            .zip(&dropped)
            .filter(|(_, dropped)| !dropped.load(Ordering::Relaxed))
            .map(|(m, _)| m.traces.len())
            .sum();
        self.metrics.traces_published.inc_by(published as u64);
        let traces: Vec<Encoded> = messages.into_iter().flat_map(|m| m.traces).collect();
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

    /// Publishes the messages not `sent` yet and marks them; a message the
    /// server refuses for its size is dropped, counted, and marked `sent` and
    /// `dropped`.
    async fn publish(
        &self,
        messages: &[Message],
        sent: &[AtomicBool],
        dropped: &[AtomicBool],
        seq: u64,
    ) -> Result<(), bus::BusError> {
        let mut publisher = self.bus.publisher(4096);
        for (n, message) in messages.iter().enumerate() {
            if sent[n].load(Ordering::Relaxed) {
                continue;
            }
            let payload = raw::trace_batch(
                &self.linker,
                self.boot_id,
                seq,
                message.traces.iter().map(|t| t.body.as_slice()),
            );
            let published = publisher
                .publish(
                    n as u64,
                    self.subject.clone(),
                    message.msg_id.clone(),
                    payload,
                    None,
                )
                .await;
            match published {
                Ok(acked) => self.mark_sent(&acked, sent),
                Err(error) if error.is_too_large() => {
                    let spans: u64 = message.traces.iter().map(|t| t.spans).sum();
                    self.metrics.spans_dropped_too_large.inc_by(spans);
                    tracing::error!(%error, spans, msg_id = %message.msg_id, "TRACES message too large for the server: dropped");
                    sent[n].store(true, Ordering::Relaxed);
                    dropped[n].store(true, Ordering::Relaxed);
                }
                Err(error) => return Err(error),
            }
        }
        let acked = publisher.flush().await?;
        self.mark_sent(&acked, sent);
        Ok(())
    }

    fn mark_sent(&self, acked: &[bus::Acked], sent: &[AtomicBool]) {
        for ack in acked {
            sent[ack.tag as usize].store(true, Ordering::Relaxed);
        }
        self.count_already_stored(acked);
    }

    fn count_already_stored(&self, acked: &[bus::Acked]) {
        let copies = acked.iter().filter(|a| a.duplicate).count() as u64;
        self.metrics.trace_messages_already_stored.inc_by(copies);
    }

    /// Records the spans forgotten, then deletes stored batches below
    /// `keep_from`, the oldest one the engine still needs (everything finished
    /// before was published by now). The record comes first: a rebuild must
    /// leave out every span of a forgotten trace, or the ones it found would
    /// come out again, apart from the rest.
    async fn retire(&mut self, keep_from: u64, forgotten: Vec<(u64, u64)>) -> anyhow::Result<()> {
        if !forgotten.is_empty() {
            // Given up only at shutdown, with nothing deleted: a rebuild sees
            // the whole traces again, and their messages' ids make JetStream
            // drop them.
            let id = self.next_forgotten;
            let metrics = self.metrics.clone();
            retried(
                &self.shutdown,
                &metrics,
                "recording forgotten spans",
                || self.store.put_forgotten(id, &forgotten),
            )
            .await?;
            self.next_forgotten += 1;
        }
        if keep_from > self.deleted_below {
            match self.store.delete_messages_below(keep_from).await {
                Ok(()) => {
                    let before = self.retired.len();
                    self.retired.retain(|tag| *tag >= keep_from);
                    let deleted = (before - self.retired.len()) as u64;
                    self.metrics.store_batches_deleted.inc_by(deleted);
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

/// Runs `op` until it succeeds, waiting longer after each failure (100 ms
/// doubling to 5 s); gives up only once `shutdown` fired. Each retry is
/// counted, and `output_stalled` is 1 while one is waiting.
async fn retried<F, Fut, E>(
    shutdown: &Shutdown,
    metrics: &Metrics,
    what: &str,
    mut op: F,
) -> Result<(), E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut delay = Duration::from_millis(100);
    let result = loop {
        match op().await {
            Ok(()) => break Ok(()),
            Err(error) if !shutdown.is_triggered() => {
                tracing::warn!(%error, "{what} failed; retrying");
                metrics.output_retries.inc();
                metrics.output_stalled.set(1);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => break Err(error),
        }
    };
    metrics.output_stalled.set(0);
    result
}

/// Holds an encoded kept trace in the bucket of its due time.
fn hold(held: &mut BTreeMap<u64, Bucket>, due_ns: u64, min_tag: u64, trace: Encoded) {
    let bucket = held.entry(due_ns / BUCKET_NS).or_insert(Bucket {
        traces: Vec::new(),
        min_tag: u64::MAX,
    });
    bucket.min_tag = bucket.min_tag.min(min_tag);
    bucket.traces.push(trace);
}

/// Moves every bucket whose due times are all at or before `clock` (so every
/// trace due in it is finished) into `out`, as messages: its traces sorted by
/// msg id, cut at `message_bytes`. The same traces make the same messages.
fn take_complete(
    held: &mut BTreeMap<u64, Bucket>,
    clock: u64,
    message_bytes: usize,
    out: &mut Vec<Message>,
) {
    while let Some(entry) = held.first_entry() {
        let end = (*entry.key() + 1).saturating_mul(BUCKET_NS);
        if end > clock.saturating_add(1) {
            break;
        }
        let bucket_id = *entry.key();
        let mut traces = entry.remove().traces;
        traces.sort_unstable_by(|a, b| a.msg_id.cmp(&b.msg_id));
        let mut message: Vec<Encoded> = Vec::new();
        let mut bytes = 0;
        for trace in traces {
            if !message.is_empty() && bytes + trace.body.len() > message_bytes {
                out.push(name_message(bucket_id, std::mem::take(&mut message)));
                bytes = 0;
            }
            bytes += trace.body.len();
            message.push(trace);
        }
        if !message.is_empty() {
            out.push(name_message(bucket_id, message));
        }
    }
}

/// A message's `Nats-Msg-Id`: its bucket, its first trace's id, how many
/// traces, and a hash of all their ids, so it names exactly these traces.
fn name_message(bucket: u64, traces: Vec<Encoded>) -> Message {
    let mut h = hash::mix64(bucket);
    for t in &traces {
        h = hash::mix64(h ^ hash::hash_bytes(t.msg_id.as_bytes()));
    }
    let msg_id = format!("b{bucket:x}-{}-{}-{h:016x}", traces.len(), traces[0].msg_id);
    Message { traces, msg_id }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(msg_id: &str, bytes: usize) -> Encoded {
        Encoded {
            body: vec![0; bytes],
            msg_id: msg_id.into(),
            id: msg_id.into(),
            spans: 1,
        }
    }

    fn names(messages: &[Message]) -> Vec<(String, Vec<String>)> {
        messages
            .iter()
            .map(|m| {
                let ids = m.traces.iter().map(|t| t.msg_id.clone()).collect();
                (m.msg_id.clone(), ids)
            })
            .collect()
    }

    #[test]
    fn a_bucket_goes_out_once_every_trace_due_in_it_is_finished() {
        let mut held = BTreeMap::new();
        hold(&mut held, 5 * BUCKET_NS + 10, 0, encoded("a", 10));
        hold(&mut held, 6 * BUCKET_NS - 1, 0, encoded("b", 10));
        hold(&mut held, 6 * BUCKET_NS, 0, encoded("c", 10));
        let mut out = Vec::new();
        take_complete(&mut held, 6 * BUCKET_NS - 2, MESSAGE_BYTES, &mut out);
        assert!(
            out.is_empty(),
            "a trace due later in the bucket may still come"
        );
        take_complete(&mut held, 6 * BUCKET_NS - 1, MESSAGE_BYTES, &mut out);
        assert_eq!(names(&out).len(), 1);
        assert_eq!(names(&out)[0].1, vec!["a", "b"]);
        assert_eq!(held.len(), 1, "the next bucket waits");
    }

    #[test]
    fn the_same_traces_make_the_same_messages_in_any_order() {
        let ids = ["t3", "t1", "t4", "t2", "t5"];
        let run = |order: &[usize]| {
            let mut held = BTreeMap::new();
            for &i in order {
                // 200 KiB each: three messages of at most 512 KiB.
                hold(&mut held, 7 * BUCKET_NS, 0, encoded(ids[i], 200 << 10));
            }
            let mut out = Vec::new();
            take_complete(&mut held, u64::MAX, MESSAGE_BYTES, &mut out);
            names(&out)
        };
        let first = run(&[0, 1, 2, 3, 4]);
        assert_eq!(first, run(&[4, 3, 2, 1, 0]));
        assert_eq!(first.len(), 3);
        assert_eq!(first[0].1, vec!["t1", "t2"]);
        // A different set of traces is a different message.
        let mut held = BTreeMap::new();
        hold(&mut held, 7 * BUCKET_NS, 0, encoded("t1", 200 << 10));
        hold(&mut held, 7 * BUCKET_NS, 0, encoded("t2x", 200 << 10));
        let mut out = Vec::new();
        take_complete(&mut held, u64::MAX, MESSAGE_BYTES, &mut out);
        assert_ne!(names(&out)[0].0, first[0].0);
    }

    #[test]
    fn a_trace_larger_than_a_message_goes_alone() {
        let mut held = BTreeMap::new();
        hold(&mut held, 0, 0, encoded("big", MESSAGE_BYTES * 2));
        hold(&mut held, 0, 0, encoded("small", 10));
        let mut out = Vec::new();
        take_complete(&mut held, BUCKET_NS, MESSAGE_BYTES, &mut out);
        let names = names(&out);
        assert_eq!(names.len(), 2);
        assert_eq!(names[0].1, vec!["big"]);
        assert_eq!(names[1].1, vec!["small"]);
    }
}
