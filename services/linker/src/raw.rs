//! ESPANS and TRACES messages as the service reads and writes them: a span stays
//! the bytes it arrived as, from the ESPANS message to the TRACES message.
//!
//! Reading a message finds each span's bytes, decodes the span once to validate it
//! and take its [`LinkFacts`], and keeps only the facts and a slice of the message
//! (no copy). Writing a trace copies those slices into the `LinkedSpan`s of a
//! `TraceBatch`. The result is exactly what prost writes for the decoded spans
//! (tested), without an `ESpan` per span held in the window or encoded again.
//!
//! The protobuf primitives that find the spans and write the envelopes are
//! [`espan::protowire`]'s.

use bytes::Bytes;
use espan::protowire::{self, FIXED64, LEN, ReadError, Reader, VARINT};
use espan::wire::{self, ESpan, SpanProblem, WireError};
use prost::Message;

use crate::engine::{FinishedTrace, LinkFacts};
use crate::store::trace_id_hex;

/// A span as the service carries it through the engine: its id (for the
/// message id of its trace) and its protobuf bytes as received.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawSpan {
    /// `span_id`.
    pub span_id: u64,
    /// The encoded `ESpan`, a slice of the ESPANS message.
    pub bytes: Bytes,
}

/// A read span: what the engine needs and what it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadSpan {
    /// What linking reads.
    pub facts: LinkFacts,
    /// Index of its `host` in [`SpansMessage::hosts`].
    pub host: u32,
    /// The span itself.
    pub raw: RawSpan,
}

/// A read ESPANS message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpansMessage {
    /// The batch's `host`: the probe that sent it.
    pub host: String,
    /// The valid spans, in order.
    pub spans: Vec<ReadSpan>,
    /// The `host` values the spans name (usually one).
    pub hosts: Vec<String>,
    /// Spans that failed validation, and why.
    pub rejected: Vec<(u64, SpanProblem)>,
}

/// The batch-level fields, decoded by prost (which skips the spans).
#[derive(Clone, PartialEq, Message)]
struct MessageHead {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(string, tag = "2")]
    host: String,
}

const SPANS_FIELD: u32 = 5;

/// Reads an ESPANS message: the same checks and the same spans as
/// [`wire::decode_espan_batch`], but each span kept as a slice of `data`.
pub fn read_spans_message(data: &Bytes) -> Result<SpansMessage, WireError> {
    let head = MessageHead::decode(&data[..])?;
    if head.version != wire::WIRE_VERSION {
        return Err(WireError::UnknownVersion {
            found: head.version,
        });
    }
    if head.host.is_empty() {
        return Err(WireError::InvalidBatch("host is empty"));
    }
    let mut batch = SpansMessage {
        host: head.host,
        ..SpansMessage::default()
    };
    let mut reader = Reader::new(data);
    while let Some((field, wire_type)) = reader.key()? {
        // The batch's own fields must have their own wire types (as prost checks).
        let expected = match field {
            1 | 4 => Some(VARINT),
            2 | SPANS_FIELD => Some(LEN),
            3 => Some(FIXED64),
            _ => None,
        };
        match expected {
            Some(t) if t != wire_type => {
                return Err(ReadError::WrongWireType { field, wire_type }.into());
            }
            _ if field == SPANS_FIELD => {
                let span = reader.bytes_range()?;
                read_span(&mut batch, data.slice(span))?;
            }
            _ => reader.skip(field, wire_type)?,
        }
    }
    Ok(batch)
}

fn read_span(batch: &mut SpansMessage, bytes: Bytes) -> Result<(), WireError> {
    let span = ESpan::decode(&bytes[..])?;
    if let Err(problem) = wire::validate_span(&span) {
        batch.rejected.push((span.span_id, problem));
        return Ok(());
    }
    let host = match batch.hosts.iter().position(|h| *h == span.host) {
        Some(i) => i as u32,
        None => {
            batch.hosts.push(span.host.clone());
            (batch.hosts.len() - 1) as u32
        }
    };
    batch.spans.push(ReadSpan {
        facts: LinkFacts::of(&span),
        host,
        raw: RawSpan {
            span_id: span.span_id,
            bytes,
        },
    });
    Ok(())
}

/// The encoded `Trace` message of a finished trace (its fields, without a key
/// and length of its own).
pub fn encode_trace(trace: &FinishedTrace<RawSpan>, out: &mut Vec<u8>) {
    if trace.trace_id_high != 0 {
        protowire::put_fixed64(out, 1, trace.trace_id_high);
    }
    if trace.trace_id_low != 0 {
        protowire::put_fixed64(out, 2, trace.trace_id_low);
    }
    for linked in &trace.spans {
        let span = &linked.span.bytes;
        // LinkedSpan { span = 1 (message), parent_id = 2 (fixed64) }
        let parent_field = if linked.parent_id != 0 { 9 } else { 0 };
        protowire::put_key(out, 3, LEN);
        protowire::put_varint(
            out,
            (protowire::len_prefixed_len(1, span.len()) + parent_field) as u64,
        );
        protowire::put_len_prefixed(out, 1, span);
        if linked.parent_id != 0 {
            protowire::put_fixed64(out, 2, linked.parent_id);
        }
    }
    if trace.app_trace_id {
        protowire::put_varint_field(out, 4, 1);
    }
    if trace.late {
        protowire::put_varint_field(out, 5, 1);
    }
}

/// A `TraceBatch` message holding the traces encoded by [`encode_trace`].
pub fn trace_batch<'a>(
    linker: &str,
    boot_id: u64,
    seq: u64,
    traces: impl IntoIterator<Item = &'a [u8]> + Clone,
) -> Bytes {
    let body: usize = traces
        .clone()
        .into_iter()
        .map(|t| protowire::len_prefixed_len(5, t.len()))
        .sum();
    let mut out = Vec::with_capacity(body + linker.len() + 32);
    protowire::put_varint_field(&mut out, 1, u64::from(wire::WIRE_VERSION));
    if !linker.is_empty() {
        protowire::put_len_prefixed(&mut out, 2, linker.as_bytes());
    }
    if boot_id != 0 {
        protowire::put_fixed64(&mut out, 3, boot_id);
    }
    if seq != 0 {
        protowire::put_varint_field(&mut out, 4, seq);
    }
    for trace in traces {
        protowire::put_len_prefixed(&mut out, 5, trace);
    }
    Bytes::from(out)
}

/// The `Nats-Msg-Id` of a trace message: its trace id and the smallest span id
/// in it (with `-late` for a late part), so a message re-sent after a restart is
/// recognised, while two parts that share a trace id are not taken for copies of
/// each other. They do share one when the app's own id is used and espan could
/// not link every part (e.g. a call whose two sides never matched): keying by
/// the trace id alone made JetStream drop the second part as a duplicate.
pub fn trace_msg_id(trace: &FinishedTrace<RawSpan>) -> String {
    let id = trace_id_hex(trace.trace_id_high, trace.trace_id_low);
    let first = trace
        .spans
        .iter()
        .map(|s| s.span.span_id)
        .min()
        .unwrap_or(0);
    let late = if trace.late { "-late" } else { "" };
    format!("{id}{late}-{first:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, EngineConfig};
    use crate::synth::{self, SynthConfig};
    use espan::wire::{ESpanBatch, Trace, TraceBatch};

    fn synth_batches() -> Vec<ESpanBatch> {
        let synth = synth::generate(&SynthConfig {
            traces: 40,
            ..SynthConfig::default()
        });
        synth
            .spans
            .chunks(37)
            .enumerate()
            .map(|(seq, chunk)| ESpanBatch {
                version: wire::WIRE_VERSION,
                host: "h".into(),
                boot_id: 9,
                seq: seq as u64,
                spans: chunk.iter().map(|s| s.span.clone()).collect(),
            })
            .collect()
    }

    #[test]
    fn reads_the_spans_prost_reads() {
        for mut batch in synth_batches() {
            // One bad span: rejected by both, the same way.
            batch.spans[3].start_ns = 0;
            let data = wire::encode_espan_batch(&batch);
            let prost = wire::decode_espan_batch(&data).unwrap();
            let read = read_spans_message(&data).unwrap();
            assert_eq!(read.spans.len(), prost.batch.spans.len());
            for (r, p) in read.spans.iter().zip(&prost.batch.spans) {
                assert_eq!(r.facts, LinkFacts::of(p));
                assert_eq!(read.hosts[r.host as usize], p.host);
                assert_eq!(ESpan::decode(&r.raw.bytes[..]).unwrap(), *p);
                assert_eq!(r.raw.span_id, p.span_id);
            }
            let rejected: Vec<_> = prost
                .rejected
                .iter()
                .map(|r| (r.span_id, r.problem.clone()))
                .collect();
            assert_eq!(read.rejected, rejected);
        }
    }

    #[test]
    fn refuses_what_prost_refuses() {
        let batch = &synth_batches()[0];
        let data = wire::encode_espan_batch(batch);
        for cut in [1, 7, data.len() / 2, data.len() - 1] {
            let truncated = data.slice(..cut);
            assert_eq!(
                read_spans_message(&truncated).is_err(),
                wire::decode_espan_batch(&truncated).is_err(),
                "cut at {cut}"
            );
        }
        let mut old = batch.clone();
        old.version = 0;
        let mut no_host = batch.clone();
        no_host.host.clear();
        for bad in [old, no_host] {
            let data = Bytes::from(bad.encode_to_vec());
            assert!(read_spans_message(&data).is_err());
            assert!(wire::decode_espan_batch(&data).is_err());
        }
        assert!(read_spans_message(&Bytes::from_static(&[0xff; 12])).is_err());
    }

    #[test]
    fn writes_what_prost_writes() {
        let config = EngineConfig {
            sampling_rate: 1.0,
            ..EngineConfig::default()
        };
        let (mut raw, mut decoded) = (Engine::new(config.clone()), Engine::new(config));
        let (mut out_raw, mut out_decoded) = (Vec::new(), Vec::new());
        for (tag, batch) in synth_batches().into_iter().enumerate() {
            let data = wire::encode_espan_batch(&batch);
            let read = read_spans_message(&data).unwrap();
            for span in read.spans {
                let host = raw.host_id(&read.hosts[span.host as usize]);
                raw.ingest_with(host, &span.facts, span.raw, tag as u64, 1);
            }
            for span in wire::decode_espan_batch(&data).unwrap().batch.spans {
                decoded.ingest(span, tag as u64, 1);
            }
        }
        out_raw.extend(raw.advance(u64::MAX / 2));
        out_decoded.extend(decoded.advance(u64::MAX / 2));
        assert_eq!(out_raw.len(), out_decoded.len());
        assert!(out_raw.iter().any(|f| f.trace.app_trace_id));
        let mut bodies = Vec::new();
        let mut traces = Vec::new();
        for (r, d) in out_raw.iter().zip(out_decoded) {
            let mut body = Vec::new();
            encode_trace(&r.trace, &mut body);
            let expected: Trace = d.trace.into_wire();
            assert_eq!(body, expected.encode_to_vec());
            bodies.push(body);
            traces.push(expected);
        }
        let batch = trace_batch("linker-1", 77, 5, bodies.iter().map(Vec::as_slice));
        let mut expected = TraceBatch {
            version: 0,
            linker: "linker-1".into(),
            boot_id: 77,
            seq: 5,
            traces,
        };
        assert_eq!(batch, wire::encode_trace_batch(&mut expected));
        let empty = trace_batch("", 0, 0, std::iter::empty::<&[u8]>());
        assert_eq!(empty, wire::encode_trace_batch(&mut TraceBatch::default()));
    }

    #[test]
    fn message_ids_are_pinned() {
        // JetStream deduplicates by these ids across linker versions and restarts.
        let span = |span_id| crate::engine::Linked {
            span: RawSpan {
                span_id,
                bytes: Bytes::new(),
            },
            parent_id: 0,
        };
        let mut trace = FinishedTrace {
            trace_id_high: 0x0123_4567_89ab_cdef,
            trace_id_low: 0xfedc_ba98_7654_3210,
            spans: vec![span(0x30), span(0x2a), span(0x1_0000_0000)],
            app_trace_id: true,
            late: false,
        };
        assert_eq!(
            trace_msg_id(&trace),
            "0123456789abcdeffedcba9876543210-000000000000002a"
        );
        trace.late = true;
        assert_eq!(
            trace_msg_id(&trace),
            "0123456789abcdeffedcba9876543210-late-000000000000002a"
        );
        trace.spans.clear();
        assert_eq!(
            trace_msg_id(&trace),
            "0123456789abcdeffedcba9876543210-late-0000000000000000"
        );
    }
}
