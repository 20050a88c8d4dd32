//! The eSpan wire format: protobuf batches (see `proto/espan/v1/espan.proto`),
//! encoded by the probe and the linker, decoded and validated by their readers.
//!
//! Decoding never panics. A batch that cannot be trusted as a whole (truncated
//! bytes, unknown version) is a [`WireError`]; a well-formed batch with some
//! nonsense spans keeps its good spans and reports the bad ones, so one broken
//! span never costs the others.

use bytes::Bytes;
use prost::Message;

/// The generated protobuf types (`espan.v1`).
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/espan.v1.rs"));
}

pub use pb::{
    AppTrace, Db, ESpan, ESpanBatch, Endpoint, Grpc, Http, LinkedSpan, Protocol, SamplingDecision,
    SpanKind, Trace, TraceBatch, TraceFormat,
};

/// The batch version this build writes and reads.
pub const WIRE_VERSION: u32 = 1;

/// Why a whole message could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The bytes are not a protobuf message of the expected type (truncated, garbage).
    #[error("malformed protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The same, found by a reader that reads the message in place.
    #[error("malformed protobuf: {0}")]
    Read(#[from] crate::protowire::ReadError),
    /// Written by a newer (or older, incompatible) espan.
    #[error("unknown wire version {found}; this build reads version {WIRE_VERSION}")]
    UnknownVersion {
        /// The version the batch claims.
        found: u32,
    },
    /// A batch-level field is nonsense.
    #[error("invalid batch: {0}")]
    InvalidBatch(&'static str),
}

/// What is wrong with one span of an otherwise readable batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpanProblem {
    /// `span_id` is 0, which means "no span" everywhere else.
    #[error("span_id is 0")]
    ZeroSpanId,
    /// Neither CLIENT nor SERVER.
    #[error("kind {0} is neither CLIENT nor SERVER")]
    BadKind(i32),
    /// A protocol number this build does not know.
    #[error("unknown protocol {0}")]
    BadProtocol(i32),
    /// `start_ns` is 0.
    #[error("start_ns is 0")]
    NoStart,
    /// The exchange ends before it starts.
    #[error("end_ns {end_ns} is before start_ns {start_ns}")]
    EndBeforeStart {
        /// First request byte.
        start_ns: u64,
        /// Last response byte.
        end_ns: u64,
    },
    /// An endpoint is missing or malformed.
    #[error("{side} endpoint: {what}")]
    BadEndpoint {
        /// "local" or "remote".
        side: &'static str,
        /// What is wrong with it.
        what: &'static str,
    },
    /// A span names itself as its local parent.
    #[error("local_parent_id equals span_id")]
    SelfParent,
    /// Only a CLIENT span has a local parent (the server request its thread serves).
    #[error("local_parent_id set on a SERVER span")]
    ParentOnServer,
    /// Not an HTTP status.
    #[error("http status {0} out of range")]
    BadStatus(u32),
    /// The app trace context is present but empty or of an unknown format.
    #[error("app_trace: {0}")]
    BadAppTrace(&'static str),
}

/// A span rejected by validation, with its place in the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedSpan {
    /// Index in the batch as received.
    pub index: usize,
    /// Its `span_id`, as received (may be 0).
    pub span_id: u64,
    /// What is wrong.
    pub problem: SpanProblem,
}

/// A decoded batch: the spans that passed validation, and those that did not.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked<T> {
    /// The batch, holding only valid spans (or traces).
    pub batch: T,
    /// What was taken out, to be counted (and logged) by the caller.
    pub rejected: Vec<RejectedSpan>,
}

/// Encodes an eSpan batch, stamping the current [`WIRE_VERSION`].
pub fn encode_espan_batch(batch: &ESpanBatch) -> Bytes {
    let mut batch = batch.clone();
    batch.version = WIRE_VERSION;
    Bytes::from(batch.encode_to_vec())
}

/// Encodes without copying the spans: the caller's batch gets the version set.
pub fn encode_espan_batch_in_place(batch: &mut ESpanBatch) -> Bytes {
    batch.version = WIRE_VERSION;
    Bytes::from(batch.encode_to_vec())
}

/// Decodes and validates an eSpan batch.
pub fn decode_espan_batch(bytes: &[u8]) -> Result<Checked<ESpanBatch>, WireError> {
    let mut batch = ESpanBatch::decode(bytes)?;
    check_version(batch.version)?;
    if batch.host.is_empty() {
        return Err(WireError::InvalidBatch("host is empty"));
    }
    let spans = std::mem::take(&mut batch.spans);
    let mut rejected = Vec::new();
    batch.spans = spans
        .into_iter()
        .enumerate()
        .filter_map(|(index, span)| match validate_span(&span) {
            Ok(()) => Some(span),
            Err(problem) => {
                rejected.push(RejectedSpan {
                    index,
                    span_id: span.span_id,
                    problem,
                });
                None
            }
        })
        .collect();
    Ok(Checked { batch, rejected })
}

/// Encodes a batch of finished traces, stamping the current [`WIRE_VERSION`].
pub fn encode_trace_batch(batch: &mut TraceBatch) -> Bytes {
    batch.version = WIRE_VERSION;
    Bytes::from(batch.encode_to_vec())
}

/// Decodes and validates a batch of finished traces. A trace with an invalid span
/// keeps its other spans; a trace with a zero id is dropped whole and reported
/// under index = its position, span_id = 0.
pub fn decode_trace_batch(bytes: &[u8]) -> Result<Checked<TraceBatch>, WireError> {
    let mut batch = TraceBatch::decode(bytes)?;
    check_version(batch.version)?;
    let mut rejected = Vec::new();
    let mut index = 0usize;
    batch.traces.retain_mut(|trace| {
        if trace.trace_id_high == 0 && trace.trace_id_low == 0 {
            rejected.push(RejectedSpan {
                index,
                span_id: 0,
                problem: SpanProblem::ZeroSpanId,
            });
            index += trace.spans.len();
            return false;
        }
        trace.spans.retain(|linked| {
            let verdict = match &linked.span {
                None => Err(SpanProblem::ZeroSpanId),
                Some(span) => validate_span(span),
            };
            let keep = match verdict {
                Ok(()) => true,
                Err(problem) => {
                    rejected.push(RejectedSpan {
                        index,
                        span_id: linked.span.as_ref().map_or(0, |s| s.span_id),
                        problem,
                    });
                    false
                }
            };
            index += 1;
            keep
        });
        true
    });
    Ok(Checked { batch, rejected })
}

fn check_version(found: u32) -> Result<(), WireError> {
    if found == WIRE_VERSION {
        Ok(())
    } else {
        Err(WireError::UnknownVersion { found })
    }
}

/// Checks one span for values that cannot be true.
pub fn validate_span(span: &ESpan) -> Result<(), SpanProblem> {
    let endpoint = |e: Option<&Endpoint>| e.map(|e| (e.ip.len(), e.port));
    check_span(&CheckedFields {
        span_id: span.span_id,
        kind: span.kind,
        protocol: span.protocol,
        start_ns: span.start_ns,
        end_ns: span.end_ns,
        local: endpoint(span.local.as_ref()),
        remote: endpoint(span.remote.as_ref()),
        local_parent_id: span.local_parent_id,
        http_status: span.http.as_ref().map(|h| h.status),
        app_trace: span
            .app_trace
            .as_ref()
            .map(|a| (a.format, a.trace_id_high, a.trace_id_low, a.sampling)),
    })
}

/// Bytes `span` adds to an encoded [`ESpanBatch`]: its own encoding, its
/// field key and its length prefix (what sealing a batch by size counts).
pub fn span_len_in_batch(span: &ESpan) -> usize {
    let len = span.encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

/// Cuts every text field of `span` (path, query, service, error, …) to at
/// most `max_bytes` bytes, at a character boundary; returns how many it cut.
/// One long field (a path padded by a client, a huge SQL statement) must not
/// make a span, and so a message, too large to publish.
pub fn cap_text_fields(span: &mut ESpan, max_bytes: usize) -> u64 {
    let mut cut = 0;
    let mut cap = |text: &mut String| {
        if text.len() > max_bytes {
            let mut end = max_bytes;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            cut += 1;
        }
    };
    cap(&mut span.comm);
    cap(&mut span.service);
    cap(&mut span.error);
    cap(&mut span.host);
    cap(&mut span.container_id);
    if let Some(http) = span.http.as_mut() {
        cap(&mut http.method);
        cap(&mut http.path);
        cap(&mut http.version);
        cap(&mut http.host);
    }
    if let Some(grpc) = span.grpc.as_mut() {
        cap(&mut grpc.message);
    }
    if let Some(db) = span.db.as_mut() {
        cap(&mut db.system);
        cap(&mut db.operation);
        cap(&mut db.summary);
        cap(&mut db.query);
        cap(&mut db.status_code);
    }
    cut
}

/// The fields of a span that validation looks at, so that a reader that does
/// not decode into [`ESpan`] (the exporter reads messages in place) applies the
/// same rules through [`check_span`].
#[derive(Debug, Clone, Copy)]
pub struct CheckedFields {
    pub span_id: u64,
    pub kind: i32,
    pub protocol: i32,
    pub start_ns: u64,
    pub end_ns: u64,
    /// `(ip length, port)`, when the endpoint is present.
    pub local: Option<(usize, u32)>,
    pub remote: Option<(usize, u32)>,
    pub local_parent_id: u64,
    pub http_status: Option<u32>,
    /// `(format, trace_id_high, trace_id_low, sampling)`.
    pub app_trace: Option<(i32, u64, u64, i32)>,
}

/// The rules of [`validate_span`].
pub fn check_span(span: &CheckedFields) -> Result<(), SpanProblem> {
    if span.span_id == 0 {
        return Err(SpanProblem::ZeroSpanId);
    }
    let kind = SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified);
    if kind == SpanKind::Unspecified {
        return Err(SpanProblem::BadKind(span.kind));
    }
    if Protocol::try_from(span.protocol).is_err() {
        return Err(SpanProblem::BadProtocol(span.protocol));
    }
    if span.start_ns == 0 {
        return Err(SpanProblem::NoStart);
    }
    if span.end_ns < span.start_ns {
        return Err(SpanProblem::EndBeforeStart {
            start_ns: span.start_ns,
            end_ns: span.end_ns,
        });
    }
    check_endpoint("local", span.local)?;
    check_endpoint("remote", span.remote)?;
    if span.local_parent_id != 0 {
        if span.local_parent_id == span.span_id {
            return Err(SpanProblem::SelfParent);
        }
        if kind == SpanKind::Server {
            return Err(SpanProblem::ParentOnServer);
        }
    }
    if let Some(status) = span.http_status
        && status != 0
        && !(100..=999).contains(&status)
    {
        return Err(SpanProblem::BadStatus(status));
    }
    if let Some((format, high, low, sampling)) = span.app_trace {
        let format = TraceFormat::try_from(format).unwrap_or(TraceFormat::Unspecified);
        if format == TraceFormat::Unspecified {
            return Err(SpanProblem::BadAppTrace("unknown format"));
        }
        if high == 0 && low == 0 {
            return Err(SpanProblem::BadAppTrace("trace id is 0"));
        }
        if SamplingDecision::try_from(sampling).is_err() {
            return Err(SpanProblem::BadAppTrace("unknown sampling decision"));
        }
    }
    Ok(())
}

fn check_endpoint(side: &'static str, endpoint: Option<(usize, u32)>) -> Result<(), SpanProblem> {
    let Some((ip_len, port)) = endpoint else {
        return Err(SpanProblem::BadEndpoint {
            side,
            what: "missing",
        });
    };
    if ip_len != 4 && ip_len != 16 {
        return Err(SpanProblem::BadEndpoint {
            side,
            what: "ip is neither 4 nor 16 bytes",
        });
    }
    if port > u32::from(u16::MAX) {
        return Err(SpanProblem::BadEndpoint {
            side,
            what: "port above 65535",
        });
    }
    Ok(())
}

impl Endpoint {
    /// An endpoint from a socket address.
    pub fn from_socket_addr(addr: std::net::SocketAddr) -> Self {
        let ip = match addr.ip() {
            std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
            std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        Self {
            ip,
            port: u32::from(addr.port()),
        }
    }

    /// The socket address, when the ip is well-formed.
    pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        let port = u16::try_from(self.port).ok()?;
        let ip: std::net::IpAddr = match self.ip.len() {
            4 => <[u8; 4]>::try_from(&self.ip[..]).ok()?.into(),
            16 => <[u8; 16]>::try_from(&self.ip[..]).ok()?.into(),
            _ => return None,
        };
        Some(std::net::SocketAddr::new(ip, port))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.socket_addr() {
            Some(addr) => write!(f, "{addr}"),
            None => write!(f, "<invalid endpoint>"),
        }
    }
}

/// A batch of spans to test with: valid, varied, and deterministic.
pub mod sample {
    use super::*;

    /// A valid HTTP/1.1 span; `n` varies the ids, seqs and times.
    pub fn span(n: u64) -> ESpan {
        let start_ns = 1_700_000_000_000_000_000 + n * 1_000;
        ESpan {
            span_id: n + 1,
            kind: if n.is_multiple_of(2) {
                SpanKind::Client
            } else {
                SpanKind::Server
            } as i32,
            protocol: Protocol::Http1 as i32,
            local: Some(Endpoint {
                ip: vec![10, 0, 0, 1],
                port: 40000 + (n % 20000) as u32,
            }),
            remote: Some(Endpoint {
                ip: vec![10, 0, 0, 2],
                port: 8080,
            }),
            req_seq: (n as u32).wrapping_mul(2_654_435_761),
            resp_seq: (n as u32).wrapping_mul(2_246_822_519),
            start_ns,
            end_ns: start_ns + 250_000,
            pid: 4242,
            tid: 4243 + (n % 8) as u32,
            comm: "python3".into(),
            service: "frontend".into(),
            local_parent_id: 0,
            http: Some(Http {
                method: "GET".into(),
                path: format!("/api/orders/{n}"),
                version: "HTTP/1.1".into(),
                status: 200,
                host: "backend:8080".into(),
            }),
            bytes_in: 512,
            bytes_out: 1024,
            error: String::new(),
            app_trace: None,
            host: "host-a".into(),
            container_id: String::new(),
            conn_id: n / 10 + 1,
            db: None,
            grpc: None,
        }
    }

    /// A batch of `len` valid spans from host `host-a`.
    pub fn batch(seq: u64, len: usize) -> ESpanBatch {
        ESpanBatch {
            version: WIRE_VERSION,
            host: "host-a".into(),
            boot_id: 0x5eed,
            seq,
            spans: (0..len as u64).map(|i| span(seq * 1_000_000 + i)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fields_are_capped_at_a_character_boundary_and_counted() {
        let mut span = sample::span(1);
        span.http.as_mut().unwrap().path = format!("/{}", "é".repeat(3000));
        span.error = "x".repeat(10);
        span.db = Some(Db {
            query: "SELECT ".repeat(1000),
            ..Default::default()
        });
        assert_eq!(cap_text_fields(&mut span, 4096), 2);
        let path = &span.http.as_ref().unwrap().path;
        assert_eq!(path.len(), 4095, "one byte short of 4096: é is two");
        assert_eq!(span.db.as_ref().unwrap().query.len(), 4096);
        assert_eq!(span.error.len(), 10);
        assert_eq!(cap_text_fields(&mut span, 4096), 0, "nothing left to cut");
    }

    #[test]
    fn span_len_in_batch_adds_up_to_the_batch() {
        let batch = sample::batch(3, 50);
        let spans: usize = batch.spans.iter().map(span_len_in_batch).sum();
        let mut empty = batch.clone();
        empty.spans.clear();
        assert_eq!(
            encode_espan_batch(&batch).len(),
            encode_espan_batch(&empty).len() + spans
        );
    }

    #[test]
    fn batch_round_trips() {
        let batch = sample::batch(7, 100);
        let bytes = encode_espan_batch(&batch);
        let checked = decode_espan_batch(&bytes).unwrap();
        assert!(checked.rejected.is_empty());
        assert_eq!(checked.batch, batch);
    }

    #[test]
    fn every_truncation_is_an_error_or_a_shorter_batch_never_a_panic() {
        let bytes = encode_espan_batch(&sample::batch(1, 5));
        for cut in 0..bytes.len() {
            match decode_espan_batch(&bytes[..cut]) {
                Err(_) => {}
                // A cut on a field boundary can still be a valid, smaller message.
                Ok(checked) => assert!(checked.batch.spans.len() <= 5),
            }
        }
    }

    #[test]
    fn truncated_inside_a_span_is_a_decode_error() {
        let bytes = encode_espan_batch(&sample::batch(1, 3));
        let err = decode_espan_batch(&bytes[..bytes.len() - 7]).unwrap_err();
        assert!(matches!(err, WireError::Decode(_)), "{err}");
    }

    #[test]
    fn unknown_version_is_rejected() {
        let mut batch = sample::batch(1, 1);
        batch.version = 9;
        let bytes = Bytes::from(batch.encode_to_vec());
        let err = decode_espan_batch(&bytes).unwrap_err();
        assert!(matches!(err, WireError::UnknownVersion { found: 9 }));
        assert_eq!(
            err.to_string(),
            "unknown wire version 9; this build reads version 1"
        );
        // A message without a version at all (version 0) is not ours either.
        batch.version = 0;
        let err = decode_espan_batch(&batch.encode_to_vec()).unwrap_err();
        assert!(matches!(err, WireError::UnknownVersion { found: 0 }));
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let err = decode_espan_batch(&[0xff; 32]).unwrap_err();
        assert!(matches!(err, WireError::Decode(_)));
    }

    #[test]
    fn nonsense_spans_are_taken_out_and_named_the_rest_kept() {
        let mut batch = sample::batch(1, 12);
        let s = &mut batch.spans;
        s[1].end_ns = s[1].start_ns - 1;
        s[2].span_id = 0;
        s[3].kind = 0;
        s[4].protocol = 77;
        s[5].local = None;
        s[6].remote.as_mut().unwrap().ip = vec![1, 2, 3];
        s[7].remote.as_mut().unwrap().port = 70_000;
        s[8].local_parent_id = s[8].span_id;
        s[9].kind = SpanKind::Server as i32;
        s[9].local_parent_id = 99;
        s[10].http.as_mut().unwrap().status = 1234;
        s[11].app_trace = Some(AppTrace {
            format: TraceFormat::W3c as i32,
            ..Default::default()
        });
        let checked = decode_espan_batch(&encode_espan_batch(&batch)).unwrap();
        assert_eq!(checked.batch.spans.len(), 1);
        assert_eq!(checked.batch.spans[0], batch.spans[0]);
        let problems: Vec<_> = checked
            .rejected
            .iter()
            .map(|r| (r.index, r.problem.clone()))
            .collect();
        let start = batch.spans[1].start_ns;
        assert_eq!(
            problems,
            vec![
                (
                    1,
                    SpanProblem::EndBeforeStart {
                        start_ns: start,
                        end_ns: start - 1
                    }
                ),
                (2, SpanProblem::ZeroSpanId),
                (3, SpanProblem::BadKind(0)),
                (4, SpanProblem::BadProtocol(77)),
                (
                    5,
                    SpanProblem::BadEndpoint {
                        side: "local",
                        what: "missing"
                    }
                ),
                (
                    6,
                    SpanProblem::BadEndpoint {
                        side: "remote",
                        what: "ip is neither 4 nor 16 bytes"
                    }
                ),
                (
                    7,
                    SpanProblem::BadEndpoint {
                        side: "remote",
                        what: "port above 65535"
                    }
                ),
                (8, SpanProblem::SelfParent),
                (9, SpanProblem::ParentOnServer),
                (10, SpanProblem::BadStatus(1234)),
                (11, SpanProblem::BadAppTrace("trace id is 0")),
            ]
        );
        assert_eq!(
            checked.rejected[0].problem.to_string(),
            format!("end_ns {} is before start_ns {start}", start - 1)
        );
    }

    #[test]
    fn batch_without_host_is_rejected() {
        let mut batch = sample::batch(1, 1);
        batch.host.clear();
        let err = decode_espan_batch(&encode_espan_batch(&batch)).unwrap_err();
        assert!(matches!(err, WireError::InvalidBatch("host is empty")));
    }

    #[test]
    fn trace_batch_round_trips_and_drops_bad_spans() {
        let good = sample::span(1);
        let mut bad = sample::span(2);
        bad.end_ns = 0;
        let mut batch = TraceBatch {
            version: 0,
            linker: "l1".into(),
            boot_id: 1,
            seq: 3,
            traces: vec![
                Trace {
                    trace_id_high: 1,
                    trace_id_low: 2,
                    spans: vec![
                        LinkedSpan {
                            span: Some(good.clone()),
                            parent_id: 0,
                        },
                        LinkedSpan {
                            span: Some(bad),
                            parent_id: good.span_id,
                        },
                    ],
                    app_trace_id: false,
                    late: false,
                },
                Trace {
                    trace_id_high: 0,
                    trace_id_low: 0,
                    spans: vec![],
                    app_trace_id: false,
                    late: false,
                },
            ],
        };
        let bytes = encode_trace_batch(&mut batch);
        let checked = decode_trace_batch(&bytes).unwrap();
        assert_eq!(checked.batch.traces.len(), 1);
        assert_eq!(checked.batch.traces[0].spans.len(), 1);
        assert_eq!(checked.rejected.len(), 2);
        assert!(decode_trace_batch(&bytes[..bytes.len() - 3]).is_err());
    }

    #[test]
    fn endpoint_converts_both_ways() {
        let v4: std::net::SocketAddr = "10.1.2.3:8080".parse().unwrap();
        let v6: std::net::SocketAddr = "[fe80::1]:443".parse().unwrap();
        for addr in [v4, v6] {
            let e = Endpoint::from_socket_addr(addr);
            assert_eq!(e.socket_addr(), Some(addr));
            assert_eq!(e.to_string(), addr.to_string());
        }
    }
}
