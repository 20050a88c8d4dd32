//! `/metrics` for the exporter, one series per sink (label `sink`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The `sink` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    /// `otlp` or `dataway`.
    pub sink: String,
}

/// Every exporter metric, registered once.
#[derive(Clone, Default)]
pub struct Metrics {
    exported: Family<SinkLabel, Counter>,
    requests: Family<SinkLabel, Counter>,
    retried: Family<SinkLabel, Counter>,
    rejected: Family<SinkLabel, Counter>,
    dropped_by_backend: Family<SinkLabel, Counter>,
    invalid: Family<SinkLabel, Counter>,
    dead_lettered: Family<SinkLabel, Counter>,
    redelivered: Family<SinkLabel, Counter>,
    dead_letter_failures: Family<SinkLabel, Counter>,
    messages_retried: Family<SinkLabel, Counter>,
    queue_depth: Family<SinkLabel, Gauge>,
    in_flight: Family<SinkLabel, Gauge>,
}

impl Metrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let prefix = registry.sub_registry_with_prefix("espan_exporter");
        prefix.register(
            "spans_exported",
            "Spans the backend accepted (2xx), minus those it said it dropped",
            metrics.exported.clone(),
        );
        prefix.register(
            "requests",
            "Requests the backend accepted",
            metrics.requests.clone(),
        );
        prefix.register(
            "retries",
            "Requests sent again after a retryable failure (connection error, timeout, 429, 5xx)",
            metrics.retried.clone(),
        );
        prefix.register(
            "spans_rejected",
            "Spans the backend refused for good (e.g. 400), put on the dead-letter stream",
            metrics.rejected.clone(),
        );
        prefix.register(
            "spans_dropped_by_backend",
            "Spans the backend accepted the request with but reported dropping (OTLP partial success)",
            metrics.dropped_by_backend.clone(),
        );
        prefix.register(
            "spans_invalid",
            "Spans that failed validation when their batch was decoded, not exported",
            metrics.invalid.clone(),
        );
        prefix.register(
            "messages_dead_lettered",
            "TRACES messages that could not be decoded, put on the dead-letter stream",
            metrics.dead_lettered.clone(),
        );
        prefix.register(
            "spans_redelivered",
            "Spans of TRACES messages delivered again that this process had not exported: held \
             unacked by an exporter that stopped or crashed, or whose ack was lost. Exported again; \
             those a crashed exporter had in flight at the backend may arrive there twice \
             (OTLP has no idempotency key), so this bounds the duplicates",
            metrics.redelivered.clone(),
        );
        prefix.register(
            "dead_letter_failures",
            "Dead letters DEADLETTER did not take (full or unreachable): their messages are nak'd \
             with backoff and tried again",
            metrics.dead_letter_failures.clone(),
        );
        prefix.register(
            "messages_retried",
            "TRACES messages nak'd to come back later (an export or a dead letter not finished)",
            metrics.messages_retried.clone(),
        );
        prefix.register(
            "queue_depth",
            "TRACES messages waiting for this sink: not yet delivered plus delivered and unacked",
            metrics.queue_depth.clone(),
        );
        prefix.register(
            "spans_in_flight",
            "Spans being sent to the backend now (including retries)",
            metrics.in_flight.clone(),
        );
        metrics
    }

    /// The handles of one sink.
    pub fn sink(&self, sink: &str) -> SinkMetrics {
        let label = SinkLabel { sink: sink.into() };
        SinkMetrics {
            exported: self.exported.get_or_create(&label).clone(),
            requests: self.requests.get_or_create(&label).clone(),
            retried: self.retried.get_or_create(&label).clone(),
            rejected: self.rejected.get_or_create(&label).clone(),
            dropped_by_backend: self.dropped_by_backend.get_or_create(&label).clone(),
            invalid: self.invalid.get_or_create(&label).clone(),
            dead_lettered: self.dead_lettered.get_or_create(&label).clone(),
            redelivered: self.redelivered.get_or_create(&label).clone(),
            dead_letter_failures: self.dead_letter_failures.get_or_create(&label).clone(),
            messages_retried: self.messages_retried.get_or_create(&label).clone(),
            queue_depth: self.queue_depth.get_or_create(&label).clone(),
            in_flight: self.in_flight.get_or_create(&label).clone(),
        }
    }
}

/// One sink's metrics (cheap clones sharing the same series).
#[derive(Clone, Default)]
pub struct SinkMetrics {
    /// Spans accepted.
    pub exported: Counter,
    /// Requests accepted.
    pub requests: Counter,
    /// Retries.
    pub retried: Counter,
    /// Spans refused for good and dead-lettered.
    pub rejected: Counter,
    /// Spans the backend dropped on partial success.
    pub dropped_by_backend: Counter,
    /// Spans invalid on decode.
    pub invalid: Counter,
    /// Undecodable messages dead-lettered.
    pub dead_lettered: Counter,
    /// Spans of redelivered messages this process had not exported.
    pub redelivered: Counter,
    /// Dead letters not stored.
    pub dead_letter_failures: Counter,
    /// Messages nak'd to come back.
    pub messages_retried: Counter,
    /// Messages waiting.
    pub queue_depth: Gauge,
    /// Spans being sent.
    pub in_flight: Gauge,
}

impl espan::bus::ConsumeObserver for SinkMetrics {
    fn retried(&self, messages: u64) {
        self.messages_retried.inc_by(messages);
    }
    fn dead_lettered(&self, _reason: &str) {
        self.dead_lettered.inc();
    }
    fn dead_letter_failed(&self, _error: &espan::bus::BusError) {
        self.dead_letter_failures.inc();
    }
}
