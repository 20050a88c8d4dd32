//! The linker's `/metrics`: what came in, what was linked, what was dropped and
//! why, and how the store is doing.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine::EngineStats;

/// Every metric of the linker, registered once.
#[derive(Clone)]
pub struct Metrics {
    pub batches_in: Counter,
    pub spans_in: Counter,
    pub spans_rejected: Counter,
    /// Batches whose host did not match their subject, dead-lettered.
    pub batches_host_mismatch: Counter,
    pub spans_duplicate: Gauge,
    pub spans_linked_cross_process: Gauge,
    pub spans_linked_local: Gauge,
    pub spans_unlinked: Gauge,
    pub edges_ambiguous: Gauge,
    pub spans_late: Gauge,
    pub traces_finished: Gauge,
    pub traces_kept: Gauge,
    pub traces_dropped_by_sampling: Gauge,
    pub spans_dropped_by_sampling: Gauge,
    pub spans_in_window: Gauge,
    pub traces_in_window: Gauge,
    pub traces_published: Counter,
    pub trace_messages_already_stored: Counter,
    pub traces_held: Gauge,
    pub dead_lettered: Counter,
    pub store_write_seconds: Histogram,
    pub store_bytes: Gauge,
    pub store_full: Gauge,
    pub store_batches_deleted: Counter,
    pub traces_expired: Counter,
    pub spans_capped: Counter,
    pub trace_parts: Counter,
    pub spans_dropped_too_large: Counter,
    pub output_retries: Counter,
    pub output_stalled: Gauge,
    pub consume_retries: Counter,
    pub dead_letter_failures: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them under `espan_linker_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            batches_in: Counter::default(),
            spans_in: Counter::default(),
            spans_rejected: Counter::default(),
            batches_host_mismatch: Counter::default(),
            spans_duplicate: Gauge::default(),
            spans_linked_cross_process: Gauge::default(),
            spans_linked_local: Gauge::default(),
            spans_unlinked: Gauge::default(),
            edges_ambiguous: Gauge::default(),
            spans_late: Gauge::default(),
            traces_finished: Gauge::default(),
            traces_kept: Gauge::default(),
            traces_dropped_by_sampling: Gauge::default(),
            spans_dropped_by_sampling: Gauge::default(),
            spans_in_window: Gauge::default(),
            traces_in_window: Gauge::default(),
            traces_published: Counter::default(),
            trace_messages_already_stored: Counter::default(),
            traces_held: Gauge::default(),
            dead_lettered: Counter::default(),
            store_write_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            store_bytes: Gauge::default(),
            store_full: Gauge::default(),
            store_batches_deleted: Counter::default(),
            traces_expired: Counter::default(),
            spans_capped: Counter::default(),
            trace_parts: Counter::default(),
            spans_dropped_too_large: Counter::default(),
            output_retries: Counter::default(),
            output_stalled: Gauge::default(),
            consume_retries: Counter::default(),
            dead_letter_failures: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("espan_linker");
        r.register(
            "batches_in",
            "ESPANS messages consumed and stored",
            m.batches_in.clone(),
        );
        r.register("spans_in", "Valid spans consumed", m.spans_in.clone());
        r.register(
            "spans_rejected",
            "Spans dropped by validation (malformed)",
            m.spans_rejected.clone(),
        );
        r.register(
            "batches_host_mismatch",
            "ESPANS messages naming another host than their subject espan.<host> (or holding another host's spans), dead-lettered unlinked",
            m.batches_host_mismatch.clone(),
        );
        r.register(
            "spans_duplicate",
            "Spans seen twice (counted once)",
            m.spans_duplicate.clone(),
        );
        r.register(
            "spans_linked_cross_process",
            "Server spans linked to their client by TCP sequence numbers",
            m.spans_linked_cross_process.clone(),
        );
        r.register(
            "spans_linked_local",
            "Client spans linked to the server request of their thread",
            m.spans_linked_local.clone(),
        );
        r.register(
            "spans_unlinked",
            "Spans finished with no edge at all",
            m.spans_unlinked.clone(),
        );
        r.register(
            "edges_ambiguous",
            "Candidate edges refused because the evidence was ambiguous",
            m.edges_ambiguous.clone(),
        );
        r.register(
            "spans_late",
            "Spans that joined a trace after it was finished",
            m.spans_late.clone(),
        );
        r.register(
            "traces_finished",
            "Traces finished",
            m.traces_finished.clone(),
        );
        r.register(
            "traces_kept",
            "Traces kept by sampling",
            m.traces_kept.clone(),
        );
        r.register(
            "traces_dropped_by_sampling",
            "Traces dropped by sampling",
            m.traces_dropped_by_sampling.clone(),
        );
        r.register(
            "spans_dropped_by_sampling",
            "Spans of traces dropped by sampling",
            m.spans_dropped_by_sampling.clone(),
        );
        r.register(
            "spans_in_window",
            "Spans held in open traces now",
            m.spans_in_window.clone(),
        );
        r.register(
            "traces_in_window",
            "Open traces now",
            m.traces_in_window.clone(),
        );
        r.register(
            "traces_published",
            "Traces (and late parts) acknowledged by TRACES",
            m.traces_published.clone(),
        );
        r.register(
            "trace_messages_already_stored",
            "TRACES messages JetStream acknowledged as duplicates of one it holds (same msg id): \
             expected when a restart finishes traces it had published before",
            m.trace_messages_already_stored.clone(),
        );
        r.register(
            "traces_held",
            "Kept traces waiting for the rest of their due-time bucket (at most 100 ms) before they \
             are published together",
            m.traces_held.clone(),
        );
        r.register(
            "dead_lettered",
            "ESPANS messages moved to the dead-letter stream",
            m.dead_lettered.clone(),
        );
        r.register(
            "store_write_seconds",
            "Latency of writing consumed batches to SurrealDB",
            m.store_write_seconds.clone(),
        );
        r.register(
            "store_bytes",
            "Bytes the SurrealDB store takes on disk",
            m.store_bytes.clone(),
        );
        r.register(
            "store_full",
            "1 while the store is at max_store_size and consumption is paused",
            m.store_full.clone(),
        );
        r.register(
            "store_batches_deleted",
            "Stored batches deleted once no longer needed",
            m.store_batches_deleted.clone(),
        );
        r.register(
            "traces_expired",
            "Finished traces deleted after the retention period",
            m.traces_expired.clone(),
        );
        r.register(
            "spans_capped",
            "Spans left out of traces beyond max_trace_spans",
            m.spans_capped.clone(),
        );
        r.register(
            "trace_parts",
            "Extra parts traces were cut into to fit in a TRACES message (0 for a trace that fits)",
            m.trace_parts.clone(),
        );
        r.register(
            "spans_dropped_too_large",
            "Spans of TRACES messages the server refused for their size (a span larger than max_payload): dropped",
            m.spans_dropped_too_large.clone(),
        );
        r.register(
            "output_retries",
            "Retries of a TRACES publish or a store write of the output task that failed",
            m.output_retries.clone(),
        );
        r.register(
            "output_stalled",
            "1 while the output task waits to retry a failed TRACES publish or store write",
            m.output_stalled.clone(),
        );
        r.register(
            "consume_retries",
            "ESPANS messages nak'd to come back later (a failed store write, or a dead letter not stored)",
            m.consume_retries.clone(),
        );
        r.register(
            "dead_letter_failures",
            "ESPANS messages that DEADLETTER did not take (full or unreachable): nak'd with backoff and tried again",
            m.dead_letter_failures.clone(),
        );
        m
    }

    /// Copies the engine's counters (they are cumulative, so gauges mirror them).
    pub fn observe_engine(&self, s: &EngineStats) {
        let set = |g: &Gauge, v: u64| {
            g.set(v as i64);
        };
        set(&self.spans_duplicate, s.duplicates);
        set(&self.spans_linked_cross_process, s.linked_cross_process);
        set(&self.spans_linked_local, s.linked_local);
        set(&self.spans_unlinked, s.unlinked);
        set(&self.edges_ambiguous, s.ambiguous);
        set(&self.spans_late, s.late);
        set(&self.traces_finished, s.traces_finished);
        set(&self.traces_kept, s.traces_kept);
        set(
            &self.traces_dropped_by_sampling,
            s.traces_dropped_by_sampling,
        );
        set(&self.spans_dropped_by_sampling, s.spans_dropped_by_sampling);
        set(&self.spans_in_window, s.spans_in_window);
        set(&self.traces_in_window, s.traces_in_window);
    }
}
