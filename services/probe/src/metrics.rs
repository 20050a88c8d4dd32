//! The probe's counters, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::assemble::{AssembleStats, ParentUnset};

/// The `reason` label of a counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Every counter the probe keeps; cheap to clone (shared atomics).
#[derive(Clone, Default)]
pub struct Metrics {
    pub data_events: Counter,
    pub close_events: Counter,
    pub connect_events: Counter,
    pub proc_events: Counter,
    /// Ring records that did not decode.
    pub bad_records: Counter,
    /// Transfers whose payload was captured in part only (longer than the
    /// capture, or outside the hooked syscalls).
    pub truncated_captures: Counter,
    /// Kernel side: records lost to a full ring, payload copies that failed.
    pub kernel_ring_full: Gauge,
    pub kernel_copy_failed: Gauge,
    pub kernel_sock_read_failed: Gauge,
    /// Transfers outside the hooked syscalls (sendfile, splice, io_uring, …).
    pub kernel_not_captured: Gauge,
    /// HTTP/2 transfers longer than the whole-frame capture.
    pub kernel_h2_beyond_capture: Gauge,
    pub l7_malformed: Counter,
    pub l7_truncated: Counter,
    pub stream_gaps: Counter,
    /// Transfers whose records came before an earlier transfer's, put back in order.
    pub records_reordered: Counter,
    pub spans: Counter,
    pub ambiguous_parent: Counter,
    /// Client spans left without a parent, by reason (see `assemble::ParentUnset`).
    pub parent_unset: Family<ReasonLabel, Counter>,
    /// Messages whose framing lay beyond the capture.
    pub l7_unframed: Counter,
    /// HTTP/2 header blocks with fields that could not be read.
    pub l7_unknown_headers: Counter,
    /// Redis connections whose pairing was lost (see `resp`).
    pub desyncs: Counter,
    pub unanswered: Counter,
    pub unmatched: Counter,
    pub conns_evicted: Counter,
    /// Transfers read after their socket's CLOSE (bytes queued before a reset).
    pub read_after_close: Counter,
    pub connections: Gauge,
    /// Bytes the parsers hold for messages not yet complete.
    pub parser_memory_bytes: Gauge,
    pub conns_over_cap: Counter,
    pub conns_over_memory: Counter,
    pub conns_flooded: Counter,
    pub traced_processes: Gauge,
    /// Spans lost because the publisher's queue was full.
    pub spans_dropped_queue: Counter,
    /// Spans lost because the buffer (NATS away) was full: the oldest batch goes.
    pub spans_dropped_buffer: Counter,
    pub batches_published: Counter,
    pub spans_published: Counter,
    /// Text fields cut to max_field_size before publishing.
    pub text_fields_capped: Counter,
    /// Batches the server refused for their size, published in smaller parts.
    pub batches_split: Counter,
    /// Spans too large for the server even alone: dropped.
    pub spans_dropped_too_large: Counter,
    pub publish_errors: Counter,
    /// 1 while the sender waits to retry a failed publish.
    pub publish_stalled: Gauge,
    pub buffer_bytes: Gauge,
    pub buffer_batches: Gauge,
    /// Requests still waiting for their answer when the probe stopped.
    pub requests_in_flight_at_stop: Counter,
    /// eSpans not acknowledged by JetStream when the probe stopped.
    pub spans_lost_at_stop: Counter,
}

impl Metrics {
    /// Registers everything under `espan_probe_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("espan_probe");
        macro_rules! reg {
            ($field:ident, $help:expr) => {
                r.register(stringify!($field), $help, self.$field.clone());
            };
        }
        reg!(data_events, "Payload records read from the ring buffer");
        reg!(close_events, "TCP close records read from the ring buffer");
        reg!(
            connect_events,
            "TCP connects by traced threads read from the ring buffer"
        );
        reg!(
            proc_events,
            "Process exec/fork/exit records read from the ring buffer"
        );
        reg!(
            bad_records,
            "Ring buffer records that did not decode (skipped)"
        );
        reg!(
            truncated_captures,
            "Transfers whose payload was captured in part only (capture size, or not at all)"
        );
        reg!(
            kernel_ring_full,
            "Records the kernel lost because the ring buffer was full"
        );
        reg!(
            kernel_copy_failed,
            "Payload copies from user memory that failed in the kernel"
        );
        reg!(
            kernel_sock_read_failed,
            "Socket field reads that failed in the kernel"
        );
        reg!(
            kernel_h2_beyond_capture,
            "HTTP/2 transfers longer than the 64 KiB captured whole (their frames beyond it are not read; the connection's framing is found again later)"
        );
        reg!(
            kernel_not_captured,
            "Transfers made outside read/write/readv/writev/recvfrom/sendto/recvmsg/sendmsg (sendfile, splice, io_uring, ...): sequence numbers only"
        );
        reg!(
            l7_malformed,
            "Stretches of traffic on traced sockets that are not the protocol they speak (HTTP/1.x, HTTP/2, Redis, PostgreSQL, MySQL) as expected (skipped)"
        );
        reg!(
            l7_truncated,
            "Message heads or framing beyond the captured bytes (HTTP heads and chunk sizes, HTTP/2 frame headers, Redis headers, SQL packet headers): skipped"
        );
        reg!(
            stream_gaps,
            "Transfers that did not start where the previous one ended"
        );
        reg!(spans, "eSpans made");
        reg!(
            ambiguous_parent,
            "Client spans whose thread served several requests and whose turn named none (local_parent_id left 0)"
        );
        r.register(
            "parent_unset",
            "Client spans left without a local parent, by reason: not_serving (thread rule: its thread served no request), no_sole_turn (event loop: not written right after the event that woke the one runnable request of its thread), go (as no_sole_turn, in a Go process, where every request of the process counts as runnable)",
            self.parent_unset.clone(),
        );
        reg!(
            l7_unframed,
            "Messages whose framing lay beyond the captured bytes (HTTP chunked bodies, Redis replies; ended where the stream showed it)"
        );
        reg!(
            records_reordered,
            "Transfers whose kernel record came before an earlier transfer's on the same socket (two threads back to back), put back in order"
        );
        reg!(
            l7_unknown_headers,
            "HTTP/2 header blocks with fields that could not be read (cut by the capture, or naming a compression table entry from before the probe started or before a loss): the span keeps the fields read"
        );
        reg!(
            desyncs,
            "Times a Redis connection's pairing of commands and replies was lost (framing lost or bytes missed): its waiting commands become spans with an error, and it is followed again once quiet for 1 s"
        );
        reg!(
            unanswered,
            "Requests without a response (connection closed or forgotten)"
        );
        reg!(unmatched, "Responses without a waiting request");
        reg!(conns_evicted, "Idle connections forgotten");
        reg!(
            read_after_close,
            "Transfers read from a socket after its close (bytes queued before a reset)"
        );
        reg!(connections, "Connections followed now");
        reg!(
            parser_memory_bytes,
            "Bytes the protocol parsers hold for messages not yet complete (bounded by parser_memory)"
        );
        reg!(
            conns_over_cap,
            "Connections forgotten because max_connections were followed (least recently active first; waiting requests reported with an error)"
        );
        reg!(
            conns_over_memory,
            "Connections forgotten because the parsers held more than parser_memory (those holding most first)"
        );
        reg!(
            conns_flooded,
            "Connections no longer followed (until they close) for having more than 1024 requests waiting"
        );
        reg!(traced_processes, "Processes traced now");
        reg!(
            spans_dropped_queue,
            "eSpans dropped because the publish queue was full"
        );
        reg!(
            spans_dropped_buffer,
            "eSpans dropped because the buffer was full while NATS was away"
        );
        reg!(batches_published, "Batches acknowledged by JetStream");
        reg!(spans_published, "eSpans in acknowledged batches");
        reg!(publish_errors, "Failed publishes (retried)");
        reg!(
            publish_stalled,
            "1 while publishing is stalled: a publish failed and the sender waits to retry"
        );
        reg!(
            text_fields_capped,
            "Text fields (path, query, error, …) cut to max_field_size before publishing"
        );
        reg!(
            batches_split,
            "Batches larger than the server's max_payload, published in smaller parts instead"
        );
        reg!(
            spans_dropped_too_large,
            "eSpans larger than the server's max_payload even alone: dropped"
        );
        reg!(buffer_bytes, "Bytes of batches waiting for JetStream");
        reg!(buffer_batches, "Batches waiting for JetStream");
        reg!(
            requests_in_flight_at_stop,
            "Requests still waiting for their answer when the probe stopped (no span made)"
        );
        reg!(
            spans_lost_at_stop,
            "eSpans JetStream had not acknowledged when the probe stopped"
        );
    }

    /// Adds the assembler's counts since `before`.
    pub fn add_assemble(&self, before: &AssembleStats, now: &AssembleStats) {
        let d = |a: u64, b: u64| b.saturating_sub(a);
        self.l7_malformed.inc_by(d(before.malformed, now.malformed));
        self.l7_truncated.inc_by(d(before.truncated, now.truncated));
        self.stream_gaps.inc_by(d(before.gaps, now.gaps));
        self.spans.inc_by(d(before.spans, now.spans));
        self.ambiguous_parent
            .inc_by(d(before.ambiguous_parent, now.ambiguous_parent));
        for (i, reason) in ParentUnset::ALL.iter().enumerate() {
            let n = d(before.parent_unset[i], now.parent_unset[i]);
            if n > 0 {
                self.parent_unset
                    .get_or_create(&ReasonLabel {
                        reason: reason.label(),
                    })
                    .inc_by(n);
            }
        }
        self.l7_unframed.inc_by(d(before.unframed, now.unframed));
        self.l7_unknown_headers
            .inc_by(d(before.unknown_headers, now.unknown_headers));
        self.desyncs.inc_by(d(before.desyncs, now.desyncs));
        self.conns_over_cap
            .inc_by(d(before.evicted_over_cap, now.evicted_over_cap));
        self.conns_over_memory
            .inc_by(d(before.evicted_over_budget, now.evicted_over_budget));
        self.conns_flooded.inc_by(d(before.flooded, now.flooded));
        self.unanswered.inc_by(d(before.unanswered, now.unanswered));
        self.unmatched.inc_by(d(before.unmatched, now.unmatched));
        self.conns_evicted.inc_by(d(before.evicted, now.evicted));
        self.read_after_close
            .inc_by(d(before.after_close, now.after_close));
    }
}
