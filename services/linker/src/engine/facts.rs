//! What linking reads from a span. The engine keeps these few numbers per span
//! and carries the span itself through as an opaque payload, so a caller hands
//! it the span in whatever form it already holds: an [`ESpan`] (tests, tools) or
//! the span's bytes as received (the service, which then neither builds an
//! `ESpan` per span nor encodes one again on the way out).

use espan::wire::ESpan;

use super::hash::endpoint_fingerprint;

/// The fields of an eSpan that linking, trace ids and sampling depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkFacts {
    /// `span_id`.
    pub span_id: u64,
    /// `kind` (a `SpanKind` number).
    pub kind: i32,
    /// `req_seq`.
    pub req_seq: u32,
    /// `resp_seq`.
    pub resp_seq: u32,
    /// `start_ns`.
    pub start_ns: u64,
    /// `end_ns`.
    pub end_ns: u64,
    /// `pid`.
    pub pid: u32,
    /// `local_parent_id`.
    pub local_parent_id: u64,
    /// The local endpoint as a number ([`super::endpoint_fingerprint`]).
    pub local_fp: u64,
    /// The remote endpoint as a number.
    pub remote_fp: u64,
    /// `app_trace`, if the span carried one.
    pub app: Option<AppContext>,
}

/// The application's own trace context: its id and sampling decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppContext {
    /// High 64 bits (0 for a 64-bit Datadog id).
    pub trace_id_high: u64,
    /// Low 64 bits.
    pub trace_id_low: u64,
    /// A `SamplingDecision` number.
    pub sampling: i32,
}

impl LinkFacts {
    /// The facts of a decoded span.
    pub fn of(span: &ESpan) -> Self {
        Self {
            span_id: span.span_id,
            kind: span.kind,
            req_seq: span.req_seq,
            resp_seq: span.resp_seq,
            start_ns: span.start_ns,
            end_ns: span.end_ns,
            pid: span.pid,
            local_parent_id: span.local_parent_id,
            local_fp: endpoint_fingerprint(span.local.as_ref()),
            remote_fp: endpoint_fingerprint(span.remote.as_ref()),
            app: span.app_trace.as_ref().map(|a| AppContext {
                trace_id_high: a.trace_id_high,
                trace_id_low: a.trace_id_low,
                sampling: a.sampling,
            }),
        }
    }
}
