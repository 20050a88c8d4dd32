//! A span read in place: views of an `ESpan` whose text borrows the TRACES
//! message's bytes, and the trace each belongs to. [`crate::message`] makes them
//! from a checked message; [`crate::convert`] turns them into requests.

use espan::protowire::{self, FIXED64, LEN, ReadError, Reader, VARINT};
use espan::wire::{self, SpanProblem};

/// One span with the trace it belongs to: what every conversion works from.
#[derive(Debug, Clone, Copy)]
pub struct SpanRef<'a> {
    /// The finished trace's ids and flags.
    pub trace: TraceHead,
    /// The span's parent, 0 for a root.
    pub parent_id: u64,
    /// The span, read in place.
    pub span: SpanView<'a>,
}

/// What a trace says besides its spans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceHead {
    /// High half of the trace id.
    pub trace_id_high: u64,
    /// Low half.
    pub trace_id_low: u64,
    /// The id came from the application's own headers.
    pub app_trace_id: bool,
    /// Late spans of a trace finished before.
    pub late: bool,
}

/// One eSpan, its text borrowed from the message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpanView<'a> {
    /// Made by the probe; never 0 once validated.
    pub span_id: u64,
    /// `espan.v1.SpanKind`.
    pub kind: i32,
    /// `espan.v1.Protocol`.
    pub protocol: i32,
    /// This end of the connection.
    pub local: Option<EndpointView<'a>>,
    /// The peer.
    pub remote: Option<EndpointView<'a>>,
    /// TCP sequence of the first request byte.
    pub req_seq: u32,
    /// TCP sequence of the first response byte.
    pub resp_seq: u32,
    /// First request byte, ns since the epoch.
    pub start_ns: u64,
    /// Last response byte.
    pub end_ns: u64,
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Process name.
    pub comm: &'a str,
    /// Service name.
    pub service: &'a str,
    /// CLIENT span: the SERVER span its thread was serving.
    pub local_parent_id: u64,
    /// The HTTP exchange.
    pub http: Option<HttpView<'a>>,
    /// Bytes read.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Why the exchange failed, if it did.
    pub error: &'a str,
    /// Trace context from the request headers.
    pub app_trace: Option<AppTraceView>,
    /// The probe's host.
    pub host: &'a str,
    /// The container, if any.
    pub container_id: &'a str,
    /// The probe's connection id.
    pub conn_id: u64,
    /// The database call (Redis, …).
    pub db: Option<DbView<'a>>,
    /// A gRPC call's outcome (its method and path are in `http`).
    pub grpc: Option<GrpcView<'a>>,
}

/// One end of a TCP connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointView<'a> {
    /// 4 or 16 bytes once validated, network order.
    pub ip: &'a [u8],
    /// At most 65535 once validated.
    pub port: u32,
}

impl EndpointView<'_> {
    /// The socket address, when the ip and port are well-formed.
    pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        let port = u16::try_from(self.port).ok()?;
        let ip: std::net::IpAddr = match self.ip.len() {
            4 => <[u8; 4]>::try_from(self.ip).ok()?.into(),
            16 => <[u8; 16]>::try_from(self.ip).ok()?.into(),
            _ => return None,
        };
        Some(std::net::SocketAddr::new(ip, port))
    }
}

/// The L7 fields of an HTTP exchange.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpView<'a> {
    /// Request method.
    pub method: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// `HTTP/1.1` and the like.
    pub version: &'a str,
    /// Response status, 0 when none was seen.
    pub status: u32,
    /// The `Host` header.
    pub host: &'a str,
}

/// The L7 fields of a database call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DbView<'a> {
    /// OpenTelemetry's `db.system.name`: `redis`.
    pub system: &'a str,
    /// The command or statement kind: `GET`.
    pub operation: &'a str,
    /// A low-cardinality summary, when the protocol has one.
    pub summary: &'a str,
    /// The statement without its literals.
    pub query: &'a str,
    /// The server's error code; empty on success.
    pub status_code: &'a str,
}

/// A gRPC call's outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrpcView<'a> {
    /// `grpc-status`, when the trailers were seen.
    pub status_code: Option<u32>,
    /// `grpc-message`, percent-encoded as sent.
    pub message: &'a str,
}

/// The application's own trace context.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppTraceView {
    /// `espan.v1.TraceFormat`.
    pub format: i32,
    /// High half of its trace id.
    pub trace_id_high: u64,
    /// Low half.
    pub trace_id_low: u64,
    /// The caller's span id.
    pub parent_span_id: u64,
    /// `espan.v1.SamplingDecision`.
    pub sampling: i32,
}

impl<'a> SpanView<'a> {
    /// The span of the `LinkedSpan` message `reader` reads, `None` when it
    /// has none. A span field given more than once is merged, as protobuf
    /// readers do.
    pub fn from_linked(mut reader: Reader<'a>) -> Result<Option<Self>, ReadError> {
        let mut span: Option<SpanView<'a>> = None;
        while let Some((field, wire_type)) = reader.key()? {
            match (field, wire_type) {
                (1, LEN) => span.get_or_insert_default().read(&mut reader.message()?)?,
                (2, FIXED64) => {
                    reader.fixed64()?;
                }
                (1..=2, _) => return Err(ReadError::WrongWireType { field, wire_type }),
                _ => reader.skip(field, wire_type)?,
            }
        }
        Ok(span)
    }

    /// Reads an `ESpan` message over `self`: fields present replace, nested
    /// messages merge.
    pub fn merge(&mut self, bytes: &'a [u8]) -> Result<(), ReadError> {
        self.read(&mut Reader::new(bytes))
    }

    fn read(&mut self, reader: &mut Reader<'a>) -> Result<(), ReadError> {
        let span = self;
        // One match on the whole key (field and wire type), which compiles to
        // a jump table: this runs about 25 times per span, twice.
        while let Some(key) = reader.raw_key()? {
            match key {
                SPAN_ID => span.span_id = reader.fixed64()?,
                KIND => span.kind = reader.varint()? as i32,
                PROTOCOL => span.protocol = reader.varint()? as i32,
                LOCAL => endpoint(span.local.get_or_insert_default(), reader.message()?)?,
                REMOTE => endpoint(span.remote.get_or_insert_default(), reader.message()?)?,
                REQ_SEQ => span.req_seq = reader.varint()? as u32,
                RESP_SEQ => span.resp_seq = reader.varint()? as u32,
                START_NS => span.start_ns = reader.fixed64()?,
                END_NS => span.end_ns = reader.fixed64()?,
                PID => span.pid = reader.varint()? as u32,
                TID => span.tid = reader.varint()? as u32,
                COMM => span.comm = reader.str()?,
                SERVICE => span.service = reader.str()?,
                LOCAL_PARENT_ID => span.local_parent_id = reader.fixed64()?,
                HTTP => http(span.http.get_or_insert_default(), reader.message()?)?,
                BYTES_IN => span.bytes_in = reader.varint()?,
                BYTES_OUT => span.bytes_out = reader.varint()?,
                ERROR => span.error = reader.str()?,
                APP_TRACE => app_trace(span.app_trace.get_or_insert_default(), reader.message()?)?,
                HOST => span.host = reader.str()?,
                CONTAINER_ID => span.container_id = reader.str()?,
                CONN_ID => span.conn_id = reader.fixed64()?,
                DB => db(span.db.get_or_insert_default(), reader.message()?)?,
                GRPC => grpc(span.grpc.get_or_insert_default(), reader.message()?)?,
                k if k >> 3 <= 24 => {
                    return Err(ReadError::WrongWireType {
                        field: k >> 3,
                        wire_type: (k & 7) as u8,
                    });
                }
                k => reader.skip(k >> 3, (k & 7) as u8)?,
            }
        }
        Ok(())
    }
}

// The keys of `ESpan`'s fields.
const SPAN_ID: u32 = protowire::key(1, FIXED64);
const KIND: u32 = protowire::key(2, VARINT);
const PROTOCOL: u32 = protowire::key(3, VARINT);
const LOCAL: u32 = protowire::key(4, LEN);
const REMOTE: u32 = protowire::key(5, LEN);
const REQ_SEQ: u32 = protowire::key(6, VARINT);
const RESP_SEQ: u32 = protowire::key(7, VARINT);
const START_NS: u32 = protowire::key(8, FIXED64);
const END_NS: u32 = protowire::key(9, FIXED64);
const PID: u32 = protowire::key(10, VARINT);
const TID: u32 = protowire::key(11, VARINT);
const COMM: u32 = protowire::key(12, LEN);
const SERVICE: u32 = protowire::key(13, LEN);
const LOCAL_PARENT_ID: u32 = protowire::key(14, FIXED64);
const HTTP: u32 = protowire::key(15, LEN);
const BYTES_IN: u32 = protowire::key(16, VARINT);
const BYTES_OUT: u32 = protowire::key(17, VARINT);
const ERROR: u32 = protowire::key(18, LEN);
const APP_TRACE: u32 = protowire::key(19, LEN);
const HOST: u32 = protowire::key(20, LEN);
const CONTAINER_ID: u32 = protowire::key(21, LEN);
const CONN_ID: u32 = protowire::key(22, FIXED64);
const DB: u32 = protowire::key(23, LEN);
const GRPC: u32 = protowire::key(24, LEN);

fn endpoint<'a>(endpoint: &mut EndpointView<'a>, mut reader: Reader<'a>) -> Result<(), ReadError> {
    while let Some((field, wire_type)) = reader.key()? {
        match (field, wire_type) {
            (1, LEN) => endpoint.ip = reader.bytes()?,
            (2, VARINT) => endpoint.port = reader.varint()? as u32,
            (1..=2, _) => return Err(ReadError::WrongWireType { field, wire_type }),
            _ => reader.skip(field, wire_type)?,
        }
    }
    Ok(())
}

fn http<'a>(http: &mut HttpView<'a>, mut reader: Reader<'a>) -> Result<(), ReadError> {
    while let Some((field, wire_type)) = reader.key()? {
        match (field, wire_type) {
            (1, LEN) => http.method = reader.str()?,
            (2, LEN) => http.path = reader.str()?,
            (3, LEN) => http.version = reader.str()?,
            (4, VARINT) => http.status = reader.varint()? as u32,
            (5, LEN) => http.host = reader.str()?,
            (1..=5, _) => return Err(ReadError::WrongWireType { field, wire_type }),
            _ => reader.skip(field, wire_type)?,
        }
    }
    Ok(())
}

fn db<'a>(db: &mut DbView<'a>, mut reader: Reader<'a>) -> Result<(), ReadError> {
    while let Some((field, wire_type)) = reader.key()? {
        match (field, wire_type) {
            (1, LEN) => db.system = reader.str()?,
            (2, LEN) => db.operation = reader.str()?,
            (3, LEN) => db.summary = reader.str()?,
            (4, LEN) => db.query = reader.str()?,
            (5, LEN) => db.status_code = reader.str()?,
            (1..=5, _) => return Err(ReadError::WrongWireType { field, wire_type }),
            _ => reader.skip(field, wire_type)?,
        }
    }
    Ok(())
}

fn grpc<'a>(grpc: &mut GrpcView<'a>, mut reader: Reader<'a>) -> Result<(), ReadError> {
    while let Some((field, wire_type)) = reader.key()? {
        match (field, wire_type) {
            (1, VARINT) => grpc.status_code = Some(reader.varint()? as u32),
            (2, LEN) => grpc.message = reader.str()?,
            (1..=2, _) => return Err(ReadError::WrongWireType { field, wire_type }),
            _ => reader.skip(field, wire_type)?,
        }
    }
    Ok(())
}

fn app_trace(app: &mut AppTraceView, mut reader: Reader<'_>) -> Result<(), ReadError> {
    while let Some((field, wire_type)) = reader.key()? {
        match (field, wire_type) {
            (1, VARINT) => app.format = reader.varint()? as i32,
            (2, FIXED64) => app.trace_id_high = reader.fixed64()?,
            (3, FIXED64) => app.trace_id_low = reader.fixed64()?,
            (4, FIXED64) => app.parent_span_id = reader.fixed64()?,
            (5, VARINT) => app.sampling = reader.varint()? as i32,
            (1..=5, _) => return Err(ReadError::WrongWireType { field, wire_type }),
            _ => reader.skip(field, wire_type)?,
        }
    }
    Ok(())
}

/// [`espan::wire::validate_span`]'s rules (the same function), on a view.
pub fn validate(span: &SpanView<'_>) -> Result<(), SpanProblem> {
    let endpoint = |e: Option<&EndpointView<'_>>| e.map(|e| (e.ip.len(), e.port));
    wire::check_span(&wire::CheckedFields {
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
