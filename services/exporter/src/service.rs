//! The stream driver: one durable pull consumer on TRACES per sink.
//!
//! Each message is checked and indexed once ([`crate::message`]) and its spans
//! are cut into requests by size and by time ([`RequestCutter`]): a request leaves
//! when it holds `max_spans` spans, or when its first span has waited
//! `linger`. Requests run concurrently through the sink's tower stack while
//! the driver keeps pulling, so reading, encoding and sending overlap. A
//! message is acked once every request holding its spans was answered 2xx, or
//! refused for good and its spans stored as dead letters; never before. At
//! shutdown the driver stops pulling, lets the requests already sent finish
//! (their retries stop), acks what went through and naks the rest, which
//! comes back after the restart: shutdown takes at most one try's timeout.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use espan::bus::{self, Bus, BusError, ConsumerSpec, DeadLetter, DeadLetters};
use espan::shutdown::Shutdown;
use espan::wire::{self, Trace, TraceBatch};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::message::TracesMessage;
use crate::metrics::SinkMetrics;
use crate::sinks::{Encoding, Sent};
use crate::stack::{SinkService, Verdict, verdict};
use crate::view::SpanRef;

/// One sink's consumer settings.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    /// `otlp` or `dataway`: the metric label and the durable name's suffix.
    pub name: &'static str,
    /// The durable consumer (`batch` is the pull size).
    pub consumer: ConsumerSpec,
    /// Spans per request, at most.
    pub max_spans: usize,
    /// How long a request that is not full waits for more spans.
    pub linger: Duration,
    /// How the sink wants its bodies.
    pub encoding: Encoding,
}

/// One checked TRACES message, shared by the requests holding its spans.
#[derive(Debug)]
pub struct Entry {
    /// The subject it was published on.
    pub subject: String,
    /// Its sequence in the stream.
    pub stream_seq: u64,
    /// Its traces, read in place; the invalid spans are already left out.
    pub batch: TracesMessage,
}

/// A slice of one trace's spans inside one request.
#[derive(Debug, Clone)]
pub struct Part {
    /// The message.
    pub entry: Arc<Entry>,
    /// Which trace of its batch.
    pub trace: usize,
    /// Which of the trace's spans.
    pub spans: Range<usize>,
}

/// The spans of one request to the backend.
#[derive(Debug, Default)]
pub struct Request {
    /// Its spans, message by message, in stream order.
    pub parts: Vec<Part>,
    /// How many.
    pub spans: usize,
    /// The stream sequences of the messages it holds spans of, each once.
    pub seqs: Vec<u64>,
    /// When its first span came in.
    pub since: Option<Instant>,
}

impl Request {
    /// The spans, for the encoder (each parsed in place as it comes).
    pub fn span_refs(&self) -> impl Iterator<Item = SpanRef<'_>> + '_ {
        self.parts
            .iter()
            .flat_map(|part| part.entry.batch.spans(part.trace, part.spans.clone()))
    }
}

/// Cuts messages into requests of at most `max_spans` spans: small traces
/// share a request, a large one is split across several.
#[derive(Debug)]
pub struct RequestCutter {
    max_spans: usize,
    open: Request,
}

impl RequestCutter {
    /// Cuts at `max_spans` spans a request (at least 1).
    pub fn new(max_spans: usize) -> Self {
        Self {
            max_spans: max_spans.max(1),
            open: Request::default(),
        }
    }

    /// Adds every span of `entry`; returns the requests that became full. A
    /// request not yet full stays open for the next message or [`Self::take`].
    pub fn push(&mut self, entry: &Arc<Entry>, now: Instant) -> Vec<Request> {
        let mut full = Vec::new();
        for (t, trace) in entry.batch.traces.iter().enumerate() {
            let mut start = 0;
            while start < trace.len() {
                let end = (start + self.max_spans - self.open.spans).min(trace.len());
                if self.open.seqs.last() != Some(&entry.stream_seq) {
                    self.open.seqs.push(entry.stream_seq);
                }
                self.open.since.get_or_insert(now);
                self.open.parts.push(Part {
                    entry: entry.clone(),
                    trace: t,
                    spans: start..end,
                });
                self.open.spans += end - start;
                start = end;
                if self.open.spans == self.max_spans {
                    full.push(std::mem::take(&mut self.open));
                }
            }
        }
        full
    }

    /// True when the open request holds spans of message `seq`.
    pub fn holds(&self, seq: u64) -> bool {
        self.open.seqs.last() == Some(&seq)
    }

    /// When the open request has waited long enough, given `linger`.
    pub fn deadline(&self, linger: Duration) -> Option<Instant> {
        self.open.since.map(|since| since + linger)
    }

    /// The open request, if it holds any span.
    pub fn take(&mut self) -> Option<Request> {
        (self.open.spans > 0).then(|| std::mem::take(&mut self.open))
    }
}

/// Exports one sink's share of TRACES.
pub struct Exporter {
    spec: SinkSpec,
    service: SinkService,
    bus: Bus,
    metrics: SinkMetrics,
}

/// What a request task needs: the stack, and where refused spans go.
struct Sender {
    encoding: Encoding,
    service: SinkService,
    bus: Bus,
    dead_letters: DeadLetters,
    metrics: SinkMetrics,
    /// Once it fires, requests not yet sent are not sent: their messages
    /// come back after the restart, and shutdown takes at most one try.
    shutdown: Shutdown,
}

impl Exporter {
    /// An exporter sending through `service`.
    pub fn new(spec: SinkSpec, service: SinkService, bus: Bus, metrics: SinkMetrics) -> Self {
        Self {
            spec,
            service,
            bus,
            metrics,
        }
    }

    /// Consumes until `shutdown`, then finishes the requests in flight.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), BusError> {
        let depth = tokio::spawn(watch_queue_depth(
            self.bus.clone(),
            self.spec.consumer.clone(),
            self.metrics.clone(),
            shutdown.clone(),
        ));
        let spec = &self.spec;
        let sender = Arc::new(Sender {
            encoding: spec.encoding,
            service: self.service,
            dead_letters: DeadLetters::new(
                &self.bus,
                &spec.consumer.stream,
                &spec.consumer.durable,
            ),
            bus: self.bus,
            metrics: self.metrics,
            shutdown: shutdown.clone(),
        });
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let mut driver = Driver {
            cutter: RequestCutter::new(self.spec.max_spans),
            spec: self.spec,
            sender,
            tracked: HashMap::new(),
            recent: RecentSeqs::new(100_000),
            in_flight: 0,
            done_tx,
            done_rx,
        };
        let result = driver.run(shutdown).await;
        depth.abort();
        result
    }
}

/// A message the driver holds until its requests are answered.
struct Tracked {
    message: jetstream::Message,
    /// Requests holding its spans that are not answered yet.
    requests: usize,
    /// A request holding its spans failed (only at shutdown): do not ack.
    failed: bool,
    /// Redeliveries that came while it was being exported; acked with it.
    copies: Vec<jetstream::Message>,
    /// When JetStream last heard about it (delivery or progress ack).
    touched: Instant,
}

/// What became of one request.
struct Done {
    seqs: Vec<u64>,
    spans: u64,
    outcome: Outcome,
}

enum Outcome {
    /// 2xx.
    Sent(Sent),
    /// Refused for good; the spans are on the dead-letter subject.
    Refused,
    /// Neither: shutdown cut its retries short, or dead-lettering failed; its
    /// messages are nak'd with backoff and come back.
    Failed(String),
}

struct Driver {
    spec: SinkSpec,
    sender: Arc<Sender>,
    cutter: RequestCutter,
    tracked: HashMap<u64, Tracked>,
    recent: RecentSeqs,
    in_flight: usize,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
}

impl Driver {
    async fn run(&mut self, shutdown: Shutdown) -> Result<(), BusError> {
        let mut spec = self.spec.consumer.clone();
        // A message is never given up for a reason outside its data.
        spec.max_deliver = 0;
        let consume_error = |reason: String| BusError::Consume {
            stream: spec.stream.clone(),
            consumer: spec.durable.clone(),
            reason,
        };
        let mut messages = bus::pull_messages(&self.sender.bus, &spec).await?;
        let stop = shutdown.wait();
        tokio::pin!(stop);
        // A message held longer than ack_wait would be redelivered; while this
        // process works on it (a backend down for long), it says so with a
        // progress ack. So ack_wait can stay short, and what a crashed
        // exporter held comes back within ack_wait, not minutes later.
        let mut progress =
            tokio::time::interval((spec.ack_wait / 3).max(Duration::from_millis(100)));
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let deadline = self.cutter.deadline(self.spec.linger);
            let linger = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some(done) = self.done_rx.recv() => self.finish(done).await,
                _ = &mut stop => break,
                _ = progress.tick() => self.keep_alive(spec.ack_wait / 3).await,
                _ = linger => {
                    if let Some(request) = self.cutter.take() {
                        self.dispatch(request);
                    }
                }
                next = messages.next() => match next {
                    None => return Err(consume_error("message stream ended".into())),
                    Some(Err(error)) => {
                        tracing::warn!(sink = self.spec.name, %error, "pull failed; continuing");
                    }
                    Some(Ok(message)) => self.take(message).await.map_err(consume_error)?,
                },
            }
        }

        // Shutdown: requests already sent finish (their retries stop); the
        // rest, and what is held, fail at once and are nak'd, to come back.
        if let Some(request) = self.cutter.take() {
            self.dispatch(request);
        }
        while self.in_flight > 0 {
            match self.done_rx.recv().await {
                Some(done) => self.finish(done).await,
                None => break,
            }
        }
        Ok(())
    }

    /// Takes one delivered message: a copy of one being exported waits for it,
    /// a copy of one exported lately is acked, anything else is decoded and
    /// batched.
    async fn take(&mut self, message: jetstream::Message) -> Result<(), String> {
        let (stream_seq, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered),
            Err(error) => {
                // Not a JetStream delivery we can ack: leave it, it comes back.
                tracing::warn!(sink = self.spec.name, %error, subject = %message.subject, "message without delivery info; skipped");
                return Ok(());
            }
        };
        if self.recent.contains(stream_seq) {
            ack(&message).await;
            return Ok(());
        }
        if let Some(tracked) = self.tracked.get_mut(&stream_seq) {
            tracked.copies.push(message);
            return Ok(());
        }
        let batch = match TracesMessage::decode(message.payload.clone()) {
            Ok(batch) => batch,
            Err(error) => {
                let reason = format!("undecodable: {error}");
                let metrics = &self.sender.metrics;
                match self
                    .sender
                    .dead_letters
                    .take_message(&message, stream_seq, &reason)
                    .await
                {
                    Ok(()) => {
                        metrics.dead_lettered.inc();
                    }
                    Err(error) => {
                        // DEADLETTER full or away: this message comes back
                        // later; the others go on.
                        tracing::error!(sink = self.spec.name, %error, stream_seq, delivered, "dead letter not stored; the message comes back after a backoff");
                        metrics.dead_letter_failures.inc();
                        self.nak(&message, delivered).await;
                    }
                }
                return Ok(());
            }
        };
        if delivered > 1 {
            // Not exported by this process: another exporter held it, or its
            // ack was lost. Sent again; the count bounds possible duplicates.
            self.sender
                .metrics
                .redelivered
                .inc_by(batch.span_count() as u64);
        }
        if let Some(first) = batch.rejected.first() {
            let invalid = batch.rejected.len() as u64;
            self.sender.metrics.invalid.inc_by(invalid);
            tracing::warn!(sink = self.spec.name, stream_seq, invalid, problem = %first.problem, "spans failed validation; not exported");
        }
        let entry = Arc::new(Entry {
            subject: message.subject.to_string(),
            stream_seq,
            batch,
        });
        let full = self.cutter.push(&entry, Instant::now());
        let requests = full.iter().filter(|r| r.seqs.contains(&stream_seq)).count()
            + usize::from(self.cutter.holds(stream_seq));
        self.tracked.insert(
            stream_seq,
            Tracked {
                message,
                requests,
                failed: false,
                copies: Vec::new(),
                touched: Instant::now(),
            },
        );
        for request in full {
            self.dispatch(request);
        }
        // A message without a valid span is done at once.
        self.settle(stream_seq).await;
        Ok(())
    }

    /// Progress-acks every held message JetStream has not heard of for `after`.
    async fn keep_alive(&mut self, after: Duration) {
        let now = Instant::now();
        for tracked in self.tracked.values_mut() {
            if now.duration_since(tracked.touched) < after {
                continue;
            }
            tracked.touched = now;
            if let Err(error) = tracked.message.ack_with(jetstream::AckKind::Progress).await {
                tracing::debug!(sink = self.spec.name, %error, "progress ack failed; the message may be redelivered (copies are recognised)");
            }
        }
    }

    fn dispatch(&mut self, request: Request) {
        self.in_flight += 1;
        let sender = self.sender.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let _ = done.send(sender.send(request).await);
        });
    }

    async fn finish(&mut self, done: Done) {
        self.in_flight -= 1;
        let metrics = &self.sender.metrics;
        let failed = match done.outcome {
            Outcome::Sent(sent) => {
                metrics.requests.inc();
                metrics
                    .exported
                    .inc_by(done.spans.saturating_sub(sent.dropped_spans));
                if sent.dropped_spans > 0 {
                    metrics.dropped_by_backend.inc_by(sent.dropped_spans);
                    tracing::warn!(sink = self.spec.name, dropped = sent.dropped_spans, message = %sent.message, "backend accepted the request but dropped spans");
                }
                false
            }
            Outcome::Refused => {
                metrics.rejected.inc_by(done.spans);
                false
            }
            Outcome::Failed(error) => {
                tracing::warn!(sink = self.spec.name, error = %espan::redact::Redacted(&error), "export unfinished; its messages come back after a backoff");
                true
            }
        };
        for seq in done.seqs {
            if let Some(tracked) = self.tracked.get_mut(&seq) {
                tracked.requests = tracked.requests.saturating_sub(1);
                tracked.failed |= failed;
            }
            self.settle(seq).await;
        }
    }

    /// Acks message `seq` (and its copies) once no request holds its spans;
    /// one whose export failed is nak'd, to come back.
    async fn settle(&mut self, seq: u64) {
        let Some(tracked) = self.tracked.get(&seq) else {
            return;
        };
        if tracked.requests > 0 {
            return;
        }
        let tracked = self.tracked.remove(&seq).expect("present");
        if tracked.failed {
            let delivered = tracked.message.info().map_or(1, |i| i.delivered);
            self.nak(&tracked.message, delivered).await;
            return;
        }
        ack(&tracked.message).await;
        for copy in &tracked.copies {
            ack(copy).await;
        }
        self.recent.insert(seq);
    }
}

impl Driver {
    /// Naks `message`, delivered `delivered` times, to come back after a
    /// backoff that grows with each delivery; counted.
    async fn nak(&self, message: &jetstream::Message, delivered: i64) {
        let delay = self.spec.consumer.backoff(delivered);
        if let Err(error) = message.ack_with(jetstream::AckKind::Nak(Some(delay))).await {
            tracing::warn!(sink = self.spec.name, %error, "nak failed; the message comes back after ack_wait");
        }
        self.sender.metrics.messages_retried.inc();
    }
}

async fn ack(message: &jetstream::Message) {
    // A lost ack means a redelivery, which `RecentSeqs` recognises.
    if let Err(error) = message.ack().await {
        tracing::warn!(%error, subject = %message.subject, "ack failed; the message may be redelivered");
    }
}

impl Sender {
    /// Sends one request through the stack and says what became of it.
    async fn send(&self, request: Request) -> Done {
        let mut service = self.service.clone();
        // A slot first, then encode: at most `concurrency` encoded bodies at once.
        let outcome = match service.ready().await {
            Err(error) => Outcome::Failed(error.to_string()),
            Ok(_) if self.shutdown.is_triggered() => {
                Outcome::Failed("shutting down before it was sent".into())
            }
            Ok(service) => {
                let payload = self.encoding.encode(request.span_refs(), request.spans);
                let spans = payload.spans as i64;
                self.metrics.in_flight.inc_by(spans);
                let result = service.call(payload).await;
                self.metrics.in_flight.dec_by(spans);
                match result {
                    Ok(sent) => Outcome::Sent(sent),
                    Err(error) if verdict(&error) == Verdict::GiveUp => {
                        match self.dead_letter(&request, &error.to_string()).await {
                            Ok(()) => Outcome::Refused,
                            Err(reason) => {
                                self.metrics.dead_letter_failures.inc();
                                Outcome::Failed(reason)
                            }
                        }
                    }
                    Err(error) => Outcome::Failed(error.to_string()),
                }
            }
        };
        Done {
            spans: request.spans as u64,
            seqs: request.seqs,
            outcome,
        }
    }

    /// Stores what the backend refused on the dead-letter subject, one message
    /// per source message, with the reason; the message ids make a repeat
    /// harmless.
    async fn dead_letter(&self, request: &Request, reason: &str) -> Result<(), String> {
        let mut by_entry: Vec<(Arc<Entry>, usize, usize, Vec<Trace>)> = Vec::new();
        for part in &request.parts {
            let batch = &part.entry.batch;
            let trace = &batch.traces[part.trace];
            let piece = Trace {
                trace_id_high: trace.head.trace_id_high,
                trace_id_low: trace.head.trace_id_low,
                spans: batch.linked_spans(part.trace, part.spans.clone()),
                app_trace_id: trace.head.app_trace_id,
                late: trace.head.late,
            };
            match by_entry.last_mut() {
                Some((entry, _, _, traces)) if Arc::ptr_eq(entry, &part.entry) => {
                    traces.push(piece)
                }
                _ => by_entry.push((
                    part.entry.clone(),
                    part.trace,
                    part.spans.start,
                    vec![piece],
                )),
            }
        }
        for (entry, first_trace, first_span, traces) in by_entry {
            let source = &entry.batch;
            let mut batch = TraceBatch {
                version: wire::WIRE_VERSION,
                linker: source.linker.clone(),
                boot_id: source.boot_id,
                seq: source.seq,
                traces,
            };
            // A request's spans of one message start at one (trace, span):
            // that names the piece.
            let piece = format!("{first_trace}.{first_span}");
            self.dead_letters
                .store(DeadLetter {
                    source_subject: &entry.subject,
                    stream_seq: entry.stream_seq,
                    piece: Some(&piece),
                    payload: wire::encode_trace_batch(&mut batch),
                    reason,
                })
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Stream sequences exported lately, bounded.
struct RecentSeqs {
    order: VecDeque<u64>,
    set: HashSet<u64>,
    capacity: usize,
}

impl RecentSeqs {
    fn new(capacity: usize) -> Self {
        Self {
            order: VecDeque::new(),
            set: HashSet::new(),
            capacity,
        }
    }

    fn contains(&self, seq: u64) -> bool {
        self.set.contains(&seq)
    }

    fn insert(&mut self, seq: u64) {
        if self.set.insert(seq) {
            self.order.push_back(seq);
            if self.order.len() > self.capacity
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// Polls the consumer's backlog into the `queue_depth` gauge.
async fn watch_queue_depth(bus: Bus, spec: ConsumerSpec, metrics: SinkMetrics, shutdown: Shutdown) {
    loop {
        if shutdown.is_triggered() {
            return;
        }
        if let Ok(stream) = bus.jetstream().get_stream(&spec.stream).await
            && let Ok(info) = stream.consumer_info(&spec.durable).await
        {
            metrics
                .queue_depth
                .set((info.num_pending as i64).saturating_add(info.num_ack_pending as i64));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.clone().wait() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use espan::wire::{LinkedSpan, sample};

    use super::*;

    fn entry(seq: u64, trace_sizes: &[usize]) -> Arc<Entry> {
        let traces = trace_sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Trace {
                trace_id_high: 1,
                trace_id_low: i as u64 + 1,
                spans: (0..n as u64)
                    .map(|s| LinkedSpan {
                        span: Some(sample::span(s)),
                        parent_id: 0,
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        let payload = wire::encode_trace_batch(&mut TraceBatch {
            traces,
            ..Default::default()
        });
        Arc::new(Entry {
            subject: "trace.l".into(),
            stream_seq: seq,
            batch: TracesMessage::decode(payload).unwrap(),
        })
    }

    /// (seq, trace, span) of every span a request holds.
    fn spans_of(request: &Request) -> Vec<(u64, usize, usize)> {
        request
            .parts
            .iter()
            .flat_map(|p| p.spans.clone().map(|s| (p.entry.stream_seq, p.trace, s)))
            .collect()
    }

    #[test]
    fn requests_hold_at_most_max_spans_and_cover_every_span_once() {
        let now = Instant::now();
        let mut cutter = RequestCutter::new(4);
        let mut requests = cutter.push(&entry(1, &[3, 5]), now);
        assert_eq!(requests.len(), 2);
        assert!(!cutter.holds(1), "8 spans fill two requests exactly");
        requests.extend(cutter.push(&entry(2, &[1, 7]), now));
        assert!(cutter.take().is_none(), "16 spans make 4 full requests");
        let sizes: Vec<usize> = requests.iter().map(|r| r.spans).collect();
        assert_eq!(sizes, [4, 4, 4, 4]);
        assert_eq!(requests[0].seqs, [1]);
        assert_eq!(requests[1].seqs, [1]);
        assert_eq!(requests[2].seqs, [2]);
        assert_eq!(
            spans_of(&requests[0]),
            [(1, 0, 0), (1, 0, 1), (1, 0, 2), (1, 1, 0)]
        );
        let seen: Vec<_> = requests.iter().flat_map(spans_of).collect();
        let mut want = Vec::new();
        for (seq, sizes) in [(1, [3usize, 5]), (2, [1, 7])] {
            for (t, &n) in sizes.iter().enumerate() {
                want.extend((0..n).map(|s| (seq, t, s)));
            }
        }
        assert_eq!(seen, want);
    }

    #[test]
    fn a_request_not_full_waits_for_its_deadline() {
        let linger = Duration::from_millis(300);
        let start = Instant::now();
        let mut cutter = RequestCutter::new(10);
        assert_eq!(
            cutter.deadline(linger),
            None,
            "nothing held, nothing to wait for"
        );
        assert!(cutter.push(&entry(7, &[2]), start).is_empty());
        assert!(cutter.holds(7));
        let later = start + Duration::from_millis(100);
        assert!(cutter.push(&entry(8, &[3]), later).is_empty());
        assert_eq!(
            cutter.deadline(linger),
            Some(start + linger),
            "the first span's wait counts"
        );
        let request = cutter.take().unwrap();
        assert_eq!((request.spans, request.seqs.as_slice()), (5, &[7, 8][..]));
        assert_eq!(cutter.deadline(linger), None);
        assert!(cutter.take().is_none());
    }

    #[test]
    fn an_empty_message_is_held_by_no_request() {
        let mut cutter = RequestCutter::new(10);
        assert!(cutter.push(&entry(3, &[]), Instant::now()).is_empty());
        assert!(!cutter.holds(3));
        assert!(cutter.take().is_none());
    }

    #[test]
    fn recent_seqs_forget_the_oldest() {
        let mut recent = RecentSeqs::new(2);
        recent.insert(1);
        recent.insert(2);
        recent.insert(2);
        recent.insert(3);
        assert!(!recent.contains(1));
        assert!(recent.contains(2) && recent.contains(3));
    }
}
