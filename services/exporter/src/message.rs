//! TRACES messages read in place.
//!
//! Decoding a `TraceBatch` with prost copies every string of every span into
//! an allocation of its own, to be freed again once the span is sent: that
//! was the largest part of the exporter's CPU (measured with the bench and
//! callgrind). Here a message is checked once when it arrives — its version,
//! every trace id, every span validated by the rules of
//! [`espan::wire::validate_span`] — and indexed; each span is parsed again,
//! into a [`SpanView`] borrowing the message's bytes, when its request is
//! encoded. Nothing is copied or allocated per span.
//!
//! The outcome is that of [`espan::wire::decode_trace_batch`]: the same
//! messages refused, the same spans kept, the same spans rejected and why
//! (tested on random batches). One difference on input espan never writes: a
//! singular message field given twice is taken from its last occurrence,
//! where prost would merge the two.

use std::ops::Range;

use bytes::Bytes;
use espan::protowire::{FIXED64, LEN, ReadError, Reader, VARINT};
use espan::wire::{self, LinkedSpan, RejectedSpan, SpanProblem};
use prost::Message;

use crate::view::{SpanRef, SpanView, TraceHead, validate};

/// Why a message cannot be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// Not a well-formed `TraceBatch` (truncated, garbage, a string that is not UTF-8).
    #[error("malformed protobuf: {0}")]
    Malformed(#[from] ReadError),
    /// Written by an espan this build does not read.
    #[error(
        "unknown wire version {found}; this build reads version {}",
        wire::WIRE_VERSION
    )]
    UnknownVersion {
        /// The version the batch claims.
        found: u32,
    },
}

/// A checked TRACES message: its bytes, and where its valid spans are.
#[derive(Debug)]
pub struct TracesMessage {
    payload: Bytes,
    /// The linker that finished the traces.
    pub linker: String,
    /// The linker's boot id.
    pub boot_id: u64,
    /// The linker's batch sequence.
    pub seq: u64,
    /// The traces with at least one valid span, or none (a trace may be empty).
    pub traces: Vec<TraceEntry>,
    /// The spans taken out by validation, as `espan::wire` reports them.
    pub rejected: Vec<RejectedSpan>,
}

/// One trace of a [`TracesMessage`].
#[derive(Debug, Clone)]
pub struct TraceEntry {
    /// Its ids and flags.
    pub head: TraceHead,
    /// Its valid spans (read them through [`TracesMessage::spans`]).
    spans: Vec<SpanEntry>,
}

impl TraceEntry {
    /// How many valid spans it has.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when none of its spans was valid.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// Where one valid span is. Never leaves its [`TracesMessage`], whose bytes it
/// indexes (that is what lets [`TracesMessage::spans`] skip re-checking UTF-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SpanEntry {
    /// Its parent, 0 for a root.
    parent_id: u64,
    /// The `LinkedSpan` message's bytes in the payload.
    linked: (u32, u32),
}

impl TracesMessage {
    /// Reads and checks `payload`.
    pub fn decode(payload: Bytes) -> Result<Self, MessageError> {
        let mut version = 0;
        let mut linker = "";
        let mut boot_id = 0;
        let mut seq = 0;
        let mut raw_traces: Vec<Range<usize>> = Vec::new();
        let mut reader = Reader::new(&payload);
        while let Some((field, wire_type)) = reader.key()? {
            match (field, wire_type) {
                (1, VARINT) => version = reader.varint()? as u32,
                (2, LEN) => linker = reader.str()?,
                (3, FIXED64) => boot_id = reader.fixed64()?,
                (4, VARINT) => seq = reader.varint()?,
                (5, LEN) => raw_traces.push(reader.bytes_range()?),
                (1..=5, _) => return Err(ReadError::WrongWireType { field, wire_type }.into()),
                _ => reader.skip(field, wire_type)?,
            }
        }
        if version != wire::WIRE_VERSION {
            return Err(MessageError::UnknownVersion { found: version });
        }
        let linker = linker.to_owned();
        let mut traces = Vec::with_capacity(raw_traces.len());
        let mut rejected = Vec::new();
        let mut index = 0usize;
        for range in raw_traces {
            let (head, linked) = read_trace(&payload, range)?;
            if head.trace_id_high == 0 && head.trace_id_low == 0 {
                // Dropped whole, but a malformed span still spoils the message.
                for (_, range) in &linked {
                    SpanView::from_linked(Reader::new(&payload[range.clone()]))?;
                }
                rejected.push(RejectedSpan {
                    index,
                    span_id: 0,
                    problem: SpanProblem::ZeroSpanId,
                });
                index += linked.len();
                continue;
            }
            let mut spans = Vec::with_capacity(linked.len());
            for (parent_id, range) in linked {
                let verdict = match SpanView::from_linked(Reader::new(&payload[range.clone()]))? {
                    None => Err((0, SpanProblem::ZeroSpanId)),
                    Some(view) => validate(&view).map_err(|problem| (view.span_id, problem)),
                };
                match verdict {
                    Ok(()) => spans.push(SpanEntry {
                        parent_id,
                        linked: (range.start as u32, range.end as u32),
                    }),
                    Err((span_id, problem)) => rejected.push(RejectedSpan {
                        index,
                        span_id,
                        problem,
                    }),
                }
                index += 1;
            }
            traces.push(TraceEntry { head, spans });
        }
        Ok(Self {
            payload,
            linker,
            boot_id,
            seq,
            traces,
            rejected,
        })
    }

    /// The valid spans `range` of trace `trace`, each parsed in place as the
    /// iterator reaches it. Panics when the indices are out of bounds.
    pub fn spans(
        &self,
        trace: usize,
        range: Range<usize>,
    ) -> impl Iterator<Item = SpanRef<'_>> + '_ {
        let entry = &self.traces[trace];
        entry.spans[range].iter().map(move |span| SpanRef {
            trace: entry.head,
            parent_id: span.parent_id,
            span: self.view(span),
        })
    }

    /// Every valid span, in order.
    pub fn all_spans(&self) -> impl Iterator<Item = SpanRef<'_>> + '_ {
        (0..self.traces.len()).flat_map(|t| self.spans(t, 0..self.traces[t].spans.len()))
    }

    fn view(&self, entry: &SpanEntry) -> SpanView<'_> {
        let (start, end) = entry.linked;
        let bytes = &self.payload[start as usize..end as usize];
        // SAFETY: `TracesMessage::decode` read these bytes with a checking reader,
        // field by field as `from_linked` reads them, without error, so every
        // string in them is UTF-8. The payload is immutable `Bytes` owned by
        // the batch, and `entry` is one of the batch's own (private) entries.
        let reader = unsafe { Reader::new_utf8_checked(bytes) };
        // The same parse over the same bytes cannot fail now.
        SpanView::from_linked(reader)
            .ok()
            .flatten()
            .expect("a span was parsed once when the batch was decoded")
    }

    /// The valid spans `range` of trace `trace` as prost's `LinkedSpan`s, for
    /// a dead letter.
    pub fn linked_spans(&self, trace: usize, range: Range<usize>) -> Vec<LinkedSpan> {
        self.traces[trace].spans[range]
            .iter()
            .map(|entry| {
                let (start, end) = entry.linked;
                LinkedSpan::decode(&self.payload[start as usize..end as usize]).unwrap_or_default()
            })
            .collect()
    }

    /// How many valid spans it holds.
    pub fn span_count(&self) -> usize {
        self.traces.iter().map(|t| t.spans.len()).sum()
    }
}

/// Each `LinkedSpan` of a trace: its parent, and its bytes in the payload.
type LinkedSpans = Vec<(u64, Range<usize>)>;

/// The trace in `range`: its head and its linked spans.
fn read_trace(
    payload: &[u8],
    range: Range<usize>,
) -> Result<(TraceHead, LinkedSpans), MessageError> {
    let mut head = TraceHead::default();
    let mut spans = Vec::new();
    let mut reader = Reader::new(&payload[range.clone()]);
    while let Some((field, wire_type)) = reader.key()? {
        match (field, wire_type) {
            (1, FIXED64) => head.trace_id_high = reader.fixed64()?,
            (2, FIXED64) => head.trace_id_low = reader.fixed64()?,
            (3, LEN) => {
                let linked = reader.bytes_range()?;
                let linked = range.start + linked.start..range.start + linked.end;
                let parent_id = read_parent(&payload[linked.clone()])?;
                spans.push((parent_id, linked));
            }
            (4, VARINT) => head.app_trace_id = reader.varint()? != 0,
            (5, VARINT) => head.late = reader.varint()? != 0,
            (1..=5, _) => return Err(ReadError::WrongWireType { field, wire_type }.into()),
            _ => reader.skip(field, wire_type)?,
        }
    }
    Ok((head, spans))
}

/// The `parent_id` of a `LinkedSpan` (its span is read by [`SpanView::from_linked`]).
fn read_parent(bytes: &[u8]) -> Result<u64, MessageError> {
    let mut parent_id = 0;
    let mut reader = Reader::new(bytes);
    while let Some((field, wire_type)) = reader.key()? {
        match (field, wire_type) {
            (1, LEN) => {
                reader.bytes()?;
            }
            (2, FIXED64) => parent_id = reader.fixed64()?,
            (1..=2, _) => return Err(ReadError::WrongWireType { field, wire_type }.into()),
            _ => reader.skip(field, wire_type)?,
        }
    }
    Ok(parent_id)
}

#[cfg(test)]
mod tests {
    use espan::wire::{AppTrace, Db, ESpan, Endpoint, Http, Protocol, Trace, TraceBatch, sample};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::view::EndpointView;

    /// Mostly valid spans with every way of being invalid mixed in.
    fn random_span(rng: &mut StdRng) -> ESpan {
        let mut span = sample::span(rng.random_range(0..1000));
        match rng.random_range(0..20) {
            0 => span.span_id = 0,
            1 => span.kind = rng.random_range(-2..5),
            2 => span.protocol = rng.random_range(-2..9),
            3 => span.start_ns = 0,
            4 => span.end_ns = span.start_ns.saturating_sub(1),
            5 => span.local = None,
            6 => span.remote.as_mut().unwrap().ip = vec![1, 2, 3],
            7 => span.local.as_mut().unwrap().port = 70_000,
            8 => span.local_parent_id = span.span_id,
            9 => span.local_parent_id = 9,
            10 => span.http.as_mut().unwrap().status = rng.random_range(0..2000),
            11 => {
                span.app_trace = Some(AppTrace {
                    format: rng.random_range(-1..5),
                    trace_id_high: rng.random_range(0..2),
                    trace_id_low: rng.random_range(0..2),
                    parent_span_id: rng.random(),
                    sampling: rng.random_range(-1..4),
                })
            }
            12 => {
                span.remote = Some(Endpoint::from_socket_addr("[fd00::1]:443".parse().unwrap()));
                span.error = "reset".into();
                span.container_id = "c0ffee".into();
            }
            13 => {
                span.http = None;
                span.protocol = Protocol::Redis as i32;
                span.db = Some(Db {
                    system: "redis".into(),
                    operation: "HGETALL".into(),
                    status_code: "WRONGTYPE".into(),
                    ..Db::default()
                });
            }
            14 => {
                span.http = Some(Http {
                    method: "é€".into(),
                    path: String::new(),
                    version: "HTTP/2".into(),
                    status: 204,
                    host: "[::1]:8080".into(),
                })
            }
            _ => {}
        }
        span.bytes_in = rng.random();
        span.pid = rng.random();
        span
    }

    fn random_batch(rng: &mut StdRng) -> TraceBatch {
        TraceBatch {
            version: wire::WIRE_VERSION,
            linker: "linker-1".into(),
            boot_id: rng.random(),
            seq: rng.random(),
            traces: (0..rng.random_range(0..6))
                .map(|_| Trace {
                    trace_id_high: rng.random_range(0..3),
                    trace_id_low: rng.random_range(0..3),
                    spans: (0..rng.random_range(0..8))
                        .map(|_| LinkedSpan {
                            span: rng.random_bool(0.95).then(|| random_span(rng)),
                            parent_id: rng.random_range(0..3),
                        })
                        .collect(),
                    app_trace_id: rng.random(),
                    late: rng.random(),
                })
                .collect(),
        }
    }

    /// A view as prost's type, to compare with what prost decoded.
    fn to_espan(view: &SpanView<'_>) -> ESpan {
        let endpoint = |e: &EndpointView<'_>| Endpoint {
            ip: e.ip.to_vec(),
            port: e.port,
        };
        ESpan {
            span_id: view.span_id,
            kind: view.kind,
            protocol: view.protocol,
            local: view.local.as_ref().map(endpoint),
            remote: view.remote.as_ref().map(endpoint),
            req_seq: view.req_seq,
            resp_seq: view.resp_seq,
            start_ns: view.start_ns,
            end_ns: view.end_ns,
            pid: view.pid,
            tid: view.tid,
            comm: view.comm.into(),
            service: view.service.into(),
            local_parent_id: view.local_parent_id,
            http: view.http.map(|h| Http {
                method: h.method.into(),
                path: h.path.into(),
                version: h.version.into(),
                status: h.status,
                host: h.host.into(),
            }),
            bytes_in: view.bytes_in,
            bytes_out: view.bytes_out,
            error: view.error.into(),
            app_trace: view.app_trace.map(|a| AppTrace {
                format: a.format,
                trace_id_high: a.trace_id_high,
                trace_id_low: a.trace_id_low,
                parent_span_id: a.parent_span_id,
                sampling: a.sampling,
            }),
            host: view.host.into(),
            container_id: view.container_id.into(),
            conn_id: view.conn_id,
            db: view.db.map(|d| Db {
                system: d.system.into(),
                operation: d.operation.into(),
                summary: d.summary.into(),
                query: d.query.into(),
                status_code: d.status_code.into(),
            }),
            grpc: view.grpc.map(|g| espan::wire::Grpc {
                status_code: g.status_code,
                message: g.message.into(),
            }),
        }
    }

    #[test]
    fn the_same_spans_are_kept_and_rejected_as_by_espan_wire() {
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..500 {
            let mut source = random_batch(&mut rng);
            let payload = wire::encode_trace_batch(&mut source);
            let want = wire::decode_trace_batch(&payload).unwrap();
            let got = TracesMessage::decode(payload).unwrap();
            assert_eq!(got.rejected, want.rejected, "round {round}");
            assert_eq!(got.linker, want.batch.linker);
            assert_eq!((got.boot_id, got.seq), (want.batch.boot_id, want.batch.seq));
            assert_eq!(got.traces.len(), want.batch.traces.len(), "round {round}");
            for (t, (trace, want)) in got.traces.iter().zip(&want.batch.traces).enumerate() {
                assert_eq!(trace.head.trace_id_high, want.trace_id_high);
                assert_eq!(trace.head.trace_id_low, want.trace_id_low);
                assert_eq!(trace.head.app_trace_id, want.app_trace_id);
                assert_eq!(trace.head.late, want.late);
                let spans: Vec<LinkedSpan> = got
                    .spans(t, 0..trace.len())
                    .map(|r| LinkedSpan {
                        span: Some(to_espan(&r.span)),
                        parent_id: r.parent_id,
                    })
                    .collect();
                assert_eq!(spans, want.spans, "round {round}");
                let raw = got.linked_spans(t, 0..trace.len());
                assert_eq!(raw, want.spans, "the raw bytes are the same spans");
            }
        }
    }

    #[test]
    fn damaged_messages_are_refused_where_prost_refuses_them() {
        let mut rng = StdRng::seed_from_u64(11);
        let (mut read, mut refused) = (0, 0);
        for round in 0..3000 {
            let mut source = random_batch(&mut rng);
            let mut bytes = wire::encode_trace_batch(&mut source).to_vec();
            for _ in 0..rng.random_range(1..3) {
                match rng.random_range(0..4) {
                    0 if !bytes.is_empty() => {
                        let cut = rng.random_range(0..bytes.len());
                        bytes.truncate(cut);
                    }
                    1 | 2 if !bytes.is_empty() => {
                        let at = rng.random_range(0..bytes.len());
                        bytes[at] = rng.random();
                    }
                    _ => bytes.extend((0..rng.random_range(1..8)).map(|_| rng.random::<u8>())),
                }
            }
            let want = wire::decode_trace_batch(&bytes);
            let got = TracesMessage::decode(Bytes::from(bytes));
            match (&want, &got) {
                (Ok(want), Ok(got)) => {
                    read += 1;
                    assert_eq!(got.rejected, want.rejected, "round {round}");
                    let spans: Vec<LinkedSpan> = got
                        .all_spans()
                        .map(|r| LinkedSpan {
                            span: Some(to_espan(&r.span)),
                            parent_id: r.parent_id,
                        })
                        .collect();
                    let want: Vec<LinkedSpan> = want
                        .batch
                        .traces
                        .iter()
                        .flat_map(|t| t.spans.clone())
                        .collect();
                    assert_eq!(spans, want, "round {round}");
                }
                (Err(_), Err(_)) => refused += 1,
                _ => panic!("round {round}: espan says {want:?}, the view {got:?}"),
            }
        }
        assert!(
            read > 300 && refused > 300,
            "both outcomes tried: {read} read, {refused} refused"
        );
    }

    #[test]
    fn an_unknown_version_is_refused() {
        let mut source = TraceBatch {
            version: 0,
            ..Default::default()
        };
        let mut bytes = wire::encode_trace_batch(&mut source).to_vec();
        bytes.clear();
        source.version = wire::WIRE_VERSION + 1;
        bytes.extend(source.encode_to_vec());
        assert_eq!(
            TracesMessage::decode(Bytes::from(bytes)).unwrap_err(),
            MessageError::UnknownVersion {
                found: wire::WIRE_VERSION + 1
            }
        );
    }
}
