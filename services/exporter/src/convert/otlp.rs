//! eSpans → OTLP (`ExportTraceServiceRequest`), following the current HTTP
//! semantic conventions: one `ResourceSpans` per process (`service.name`,
//! `host.name`, `process.pid`, `process.executable.name`), names
//! `{method} {route}`, status from the response, and the eSpan's own fields as
//! `ebpf.*` attributes.

use std::collections::HashMap;

use espan::wire::{Protocol, SamplingDecision, SpanKind, TraceFormat};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};

use super::{decimal, hex128, ip_text, port, route, span_id_hex, split_host, trace_id_bytes};
use crate::view::{AppTraceView, DbView, EndpointView, GrpcView, HttpView, SpanRef, SpanView};

/// The instrumentation scope every span is reported under.
pub const SCOPE_NAME: &str = "espan";

/// Builds one export request from `spans`, grouped by the process they ran in.
pub fn request<'a>(spans: impl IntoIterator<Item = SpanRef<'a>>) -> ExportTraceServiceRequest {
    let mut resources: Vec<ResourceSpans> = Vec::new();
    let mut index: HashMap<ResourceKey<'a>, usize> = HashMap::new();
    for span_ref in spans {
        let key = ResourceKey::of(&span_ref.span);
        let at = *index.entry(key).or_insert_with(|| {
            resources.push(resource_spans(&span_ref.span));
            resources.len() - 1
        });
        resources[at].scope_spans[0].spans.push(span(&span_ref));
    }
    ExportTraceServiceRequest {
        resource_spans: resources,
    }
}

/// What makes two spans belong to one OTLP resource.
#[derive(Clone, Hash, PartialEq, Eq)]
pub(crate) struct ResourceKey<'a> {
    service: &'a str,
    host: &'a str,
    pid: u32,
    comm: &'a str,
    container_id: &'a str,
}

impl<'a> ResourceKey<'a> {
    pub(crate) fn of(span: &SpanView<'a>) -> Self {
        Self {
            service: span.service,
            host: span.host,
            pid: span.pid,
            comm: span.comm,
            container_id: span.container_id,
        }
    }
}

fn resource_spans(span: &SpanView<'_>) -> ResourceSpans {
    let mut attributes = Vec::with_capacity(5);
    resource_attributes(&mut attributes, span);
    ResourceSpans {
        resource: Some(Resource {
            attributes,
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: SCOPE_NAME.into(),
                version: SCOPE_VERSION.into(),
                ..Default::default()
            }),
            spans: Vec::new(),
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

/// The scope's version: this crate's.
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Receives attributes in order. The message builder (a `Vec<KeyValue>`) and
/// the direct wire writer (`otlp_wire`) both implement it, so what a span holds
/// is said once, here.
pub trait Attributes {
    /// A string attribute.
    fn str(&mut self, key: &'static str, value: &str);
    /// An integer attribute.
    fn int(&mut self, key: &'static str, value: i64);
    /// A boolean attribute.
    fn bool(&mut self, key: &'static str, value: bool);
}

impl Attributes for Vec<KeyValue> {
    fn str(&mut self, key: &'static str, value: &str) {
        self.push(string(key, value));
    }
    fn int(&mut self, key: &'static str, value: i64) {
        self.push(int(key, value));
    }
    fn bool(&mut self, key: &'static str, value: bool) {
        self.push(boolean(key, value));
    }
}

/// The resource of the process `span` ran in.
pub fn resource_attributes(out: &mut impl Attributes, span: &SpanView<'_>) {
    let service = if span.service.is_empty() {
        // The probe falls back to the process name; keep the same rule here.
        &span.comm
    } else {
        &span.service
    };
    out.str("service.name", service);
    out.str("host.name", span.host);
    out.int("process.pid", i64::from(span.pid));
    out.str("process.executable.name", span.comm);
    if !span.container_id.is_empty() {
        out.str("container.id", span.container_id);
    }
}

/// What a span says besides its attributes (its name is in [`Scratch::name`]).
pub struct Head<'a> {
    /// OTLP span kind.
    pub kind: span::SpanKind,
    /// Status code and message.
    pub status: (status::StatusCode, &'a str),
}

/// Buffers reused from span to span, so describing one does not allocate.
#[derive(Debug, Default)]
pub struct Scratch {
    /// The span name that [`describe`] wrote: `{method} {template}`, or the
    /// protocol.
    pub name: String,
    template: String,
    text: String,
}

/// The methods the HTTP semantic conventions call known: RFC 9110's, PATCH
/// (RFC 5789) and QUERY. Any other is reported as `_OTHER`, with the method
/// itself in `http.request.method_original`.
pub const KNOWN_METHODS: [&str; 10] = [
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE",
];

/// `method` when the conventions know it (case-sensitively, as they say).
pub fn known_method(method: &str) -> Option<&'static str> {
    KNOWN_METHODS.iter().copied().find(|known| *known == method)
}

/// The scheme of every HTTP exchange the probe sees: it reads plaintext off
/// the socket, so TLS traffic never becomes an HTTP span.
pub const SCHEME: &str = "http";

/// Name (into `scratch.name`), kind and status of `espan`, then its
/// attributes into `out`.
///
/// The name is `{method} {template}`: the path with its ids collapsed
/// ([`route::template`]), reported as `url.template`. It is not `http.route`,
/// which the conventions reserve for the route the server framework matched
/// (eBPF never sees it); `url.path` keeps the real path.
pub fn describe<'a>(
    out: &mut impl Attributes,
    span_ref: &SpanRef<'a>,
    scratch: &mut Scratch,
) -> Head<'a> {
    let espan = &span_ref.span;
    let kind = SpanKind::try_from(espan.kind).unwrap_or(SpanKind::Unspecified);
    scratch.name.clear();
    match (espan.http.as_ref(), espan.db.as_ref()) {
        (Some(h), _) if espan.grpc.is_some() => grpc_attributes(out, h, espan.grpc, scratch),
        (Some(h), _) => http_attributes(out, espan, h, kind, scratch),
        (None, Some(db)) => db_attributes(out, espan, db, scratch),
        (None, None) => scratch.name.push_str(protocol_name(espan.protocol)),
    }
    network_attributes(out, espan, kind);
    let status = status(espan, kind);
    match status {
        Ending::Fine => {}
        Ending::Failed(error) => out.str("error.type", error),
        Ending::HttpError(code) => out.str("error.type", &decimal(u64::from(code))),
        Ending::DbError(code) => out.str("error.type", code),
        Ending::GrpcError(code) => out.str("error.type", grpc_status_name(code)),
    }
    out.int("thread.id", i64::from(espan.tid));
    ebpf_attributes(out, span_ref);
    Head {
        kind: match kind {
            SpanKind::Client => span::SpanKind::Client,
            SpanKind::Server => span::SpanKind::Server,
            SpanKind::Unspecified => span::SpanKind::Unspecified,
        },
        status: match status {
            Ending::Fine => (status::StatusCode::Unset, ""),
            Ending::Failed(error) => (status::StatusCode::Error, error),
            Ending::HttpError(_) | Ending::DbError(_) | Ending::GrpcError(_) => {
                (status::StatusCode::Error, "")
            }
        },
    }
}

/// The `http.*` and `url.*` attributes, and the span name.
fn http_attributes(
    out: &mut impl Attributes,
    espan: &SpanView<'_>,
    h: &HttpView<'_>,
    kind: SpanKind,
    scratch: &mut Scratch,
) {
    route::template_into(h.path, &mut scratch.template);
    let method = known_method(h.method);
    if h.method.is_empty() {
        scratch.name.push_str(protocol_name(espan.protocol));
    } else {
        // The conventions' name for a method they do not know is `HTTP`.
        scratch.name.push_str(method.unwrap_or("HTTP"));
        scratch.name.push(' ');
        scratch.name.push_str(&scratch.template);
        out.str("http.request.method", method.unwrap_or("_OTHER"));
        if method.is_none() {
            out.str("http.request.method_original", h.method);
        }
    }
    out.str("url.scheme", SCHEME);
    out.str("url.path", h.path);
    out.str("url.template", &scratch.template);
    if kind == SpanKind::Client {
        full_url(&mut scratch.text, espan, h);
        out.str("url.full", &scratch.text);
    }
    if h.status != 0 {
        out.int("http.response.status_code", i64::from(h.status));
    }
    out.str("network.protocol.name", "http");
    if let Some(version) = h.version.strip_prefix("HTTP/") {
        out.str("network.protocol.version", version);
    }
}

/// The `rpc.*` attributes of a gRPC call, and the span name
/// `{rpc.service}/{rpc.method}` (from the path `/{service}/{method}`).
fn grpc_attributes(
    out: &mut impl Attributes,
    h: &HttpView<'_>,
    grpc: Option<GrpcView<'_>>,
    scratch: &mut Scratch,
) {
    out.str("rpc.system", "grpc");
    let (service, method) = h
        .path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .unwrap_or(("", ""));
    if service.is_empty() || method.is_empty() {
        scratch.name.push_str("grpc");
    } else {
        scratch.name.push_str(service);
        scratch.name.push('/');
        scratch.name.push_str(method);
        out.str("rpc.service", service);
        out.str("rpc.method", method);
    }
    if let Some(code) = grpc.and_then(|g| g.status_code) {
        out.int("rpc.grpc.status_code", i64::from(code));
    }
    if h.status != 0 {
        out.int("http.response.status_code", i64::from(h.status));
    }
    out.str("network.protocol.name", "http");
    out.str("network.protocol.version", "2");
}

/// gRPC's name for a status code (`error.type` of a failed call).
fn grpc_status_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("_OTHER")
}

/// The `db.*` attributes, and the span name: the operation (`GET`), as the
/// conventions name a span without a query summary or target.
fn db_attributes(
    out: &mut impl Attributes,
    espan: &SpanView<'_>,
    db: &DbView<'_>,
    scratch: &mut Scratch,
) {
    let name = [db.summary, db.operation, db.system]
        .into_iter()
        .find(|n| !n.is_empty())
        .unwrap_or_else(|| protocol_name(espan.protocol));
    scratch.name.push_str(name);
    if !db.system.is_empty() {
        out.str("db.system.name", db.system);
    }
    if !db.operation.is_empty() {
        out.str("db.operation.name", db.operation);
    }
    if !db.summary.is_empty() {
        out.str("db.query.summary", db.summary);
    }
    if !db.query.is_empty() {
        out.str("db.query.text", db.query);
    }
    if !db.status_code.is_empty() {
        out.str("db.response.status_code", db.status_code);
    }
}

/// The URL a client called: the `Host` header (or the address it connected
/// to) and the path. The probe strips the query, so there is none.
fn full_url(out: &mut String, espan: &SpanView<'_>, h: &HttpView<'_>) {
    out.clear();
    out.push_str(SCHEME);
    out.push_str("://");
    if !h.host.is_empty() {
        out.push_str(h.host);
    } else if let Some(addr) = espan.remote.as_ref().and_then(EndpointView::socket_addr) {
        let ip = ip_text(espan.remote.as_ref());
        if addr.is_ipv6() {
            out.push('[');
            out.push_str(&ip);
            out.push(']');
        } else {
            out.push_str(&ip);
        }
        if addr.port() != 80 {
            out.push(':');
            out.push_str(&decimal(u64::from(addr.port())));
        }
    }
    out.push_str(if h.path.is_empty() { "/" } else { h.path });
}

fn span(span_ref: &SpanRef<'_>) -> Span {
    let espan = &span_ref.span;
    let parent = span_ref.parent_id;
    let mut attributes = Vec::with_capacity(28);
    let mut scratch = Scratch::default();
    let head = describe(&mut attributes, span_ref, &mut scratch);
    Span {
        trace_id: trace_id_bytes(&span_ref.trace).to_vec(),
        span_id: espan.span_id.to_be_bytes().to_vec(),
        parent_span_id: if parent == 0 {
            Vec::new()
        } else {
            parent.to_be_bytes().to_vec()
        },
        name: scratch.name,
        kind: head.kind as i32,
        start_time_unix_nano: espan.start_ns,
        end_time_unix_nano: espan.end_ns,
        attributes,
        status: Some(Status {
            message: head.status.1.to_owned(),
            code: head.status.0 as i32,
        }),
        ..Default::default()
    }
}

/// `server.*`, `client.*`, `network.peer.*`, `network.local.*`.
fn network_attributes(out: &mut impl Attributes, espan: &SpanView<'_>, kind: SpanKind) {
    let local_ip = ip_text(espan.local.as_ref());
    let remote_ip = ip_text(espan.remote.as_ref());
    let local_port = port(espan.local.as_ref());
    let remote_port = port(espan.remote.as_ref());
    let host_header = espan
        .http
        .as_ref()
        .map(|h| h.host)
        .filter(|h| !h.is_empty())
        .map(split_host);
    // The conventions want the server as the client named it, the same on both
    // sides of a call: the Host header (port 80 when it names none, the http
    // default), else the socket's server end (remote for a client span, local
    // for a server span).
    let (server_address, server_port) = match host_header {
        Some((name, port)) => (name, port.map_or(80, u32::from)),
        None if kind == SpanKind::Client => (remote_ip.as_str(), remote_port),
        None => (local_ip.as_str(), local_port),
    };
    if !server_address.is_empty() {
        out.str("server.address", server_address);
    }
    if server_port != 0 {
        out.int("server.port", i64::from(server_port));
    }
    if kind == SpanKind::Server && !remote_ip.is_empty() {
        out.str("client.address", &remote_ip);
        out.int("client.port", i64::from(remote_port));
    }
    if !remote_ip.is_empty() {
        out.str("network.peer.address", &remote_ip);
        out.int("network.peer.port", i64::from(remote_port));
    }
    if !local_ip.is_empty() {
        out.str("network.local.address", &local_ip);
        out.int("network.local.port", i64::from(local_port));
    }
    out.str("network.transport", "tcp");
}

/// How a span ended, for its status and `error.type`.
#[derive(Clone, Copy)]
enum Ending<'a> {
    /// Fine, or an HTTP status that is no error on this side.
    Fine,
    /// The exchange failed (reset, closed before the response): the message.
    Failed(&'a str),
    /// An HTTP status that is an error on this side.
    HttpError(u32),
    /// A database's error code (`WRONGTYPE`, a SQLSTATE).
    DbError(&'a str),
    /// A gRPC status that fails the call.
    GrpcError(u32),
}

/// A failed exchange is an error; an HTTP status is one from 400 up for a
/// client, from 500 up for a server (a 404 is the server working as meant).
fn status<'a>(espan: &SpanView<'a>, kind: SpanKind) -> Ending<'a> {
    if !espan.error.is_empty() {
        return Ending::Failed(espan.error);
    }
    if let Some(db) = &espan.db
        && !db.status_code.is_empty()
    {
        return Ending::DbError(db.status_code);
    }
    if let Some(code) = espan.grpc.and_then(|g| g.status_code) {
        // The conventions: any status but OK fails a client call; a server
        // fails only on the codes that mean its own fault.
        let failed = match kind {
            SpanKind::Client => code != 0,
            _ => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
        };
        return if failed {
            Ending::GrpcError(code)
        } else {
            Ending::Fine
        };
    }
    let code = espan.http.as_ref().map_or(0, |h| h.status);
    let failed = match kind {
        SpanKind::Client => code >= 400,
        _ => code >= 500,
    };
    if failed {
        Ending::HttpError(code)
    } else {
        Ending::Fine
    }
}

fn ebpf_attributes(out: &mut impl Attributes, span_ref: &SpanRef<'_>) {
    let espan = &span_ref.span;
    out.str("ebpf.protocol", protocol_name(espan.protocol));
    out.int("ebpf.req_seq", i64::from(espan.req_seq));
    out.int("ebpf.resp_seq", i64::from(espan.resp_seq));
    out.str("ebpf.conn_id", &span_id_hex(espan.conn_id));
    if espan.local_parent_id != 0 {
        out.str("ebpf.local_parent_id", &span_id_hex(espan.local_parent_id));
    }
    out.int("ebpf.bytes_in", clamp(espan.bytes_in));
    out.int("ebpf.bytes_out", clamp(espan.bytes_out));
    if !espan.error.is_empty() {
        out.str("ebpf.error", espan.error);
    }
    if let Some(app) = &espan.app_trace {
        app_trace_attributes(out, app);
    }
    if span_ref.trace.app_trace_id {
        out.bool("ebpf.trace.app_trace_id", true);
    }
    if span_ref.trace.late {
        out.bool("ebpf.trace.late", true);
    }
}

fn app_trace_attributes(out: &mut impl Attributes, app: &AppTraceView) {
    let format = match TraceFormat::try_from(app.format) {
        Ok(TraceFormat::W3c) => "w3c",
        Ok(TraceFormat::Datadog) => "datadog",
        Ok(TraceFormat::B3) => "b3",
        _ => "unknown",
    };
    out.str("ebpf.app_trace.format", format);
    out.str(
        "ebpf.app_trace.trace_id",
        &hex128(app.trace_id_high, app.trace_id_low),
    );
    out.str(
        "ebpf.app_trace.parent_span_id",
        &span_id_hex(app.parent_span_id),
    );
    match SamplingDecision::try_from(app.sampling) {
        Ok(SamplingDecision::Keep) => out.bool("ebpf.app_trace.sampled", true),
        Ok(SamplingDecision::Drop) => out.bool("ebpf.app_trace.sampled", false),
        _ => {}
    }
}

/// OTLP integers are signed; byte counts never come near 2^63, but never wrap.
fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The protocol's short name, also the span name when there is no HTTP method.
pub fn protocol_name(protocol: i32) -> &'static str {
    match Protocol::try_from(protocol) {
        Ok(Protocol::Http1) => "http",
        Ok(Protocol::Http2) => "http2",
        Ok(Protocol::Grpc) => "grpc",
        Ok(Protocol::Redis) => "redis",
        Ok(Protocol::Postgres) => "postgresql",
        Ok(Protocol::Mysql) => "mysql",
        _ => "unknown",
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    key_value(key, any_value::Value::StringValue(value.to_owned()))
}

fn int(key: &str, value: i64) -> KeyValue {
    key_value(key, any_value::Value::IntValue(value))
}

fn boolean(key: &str, value: bool) -> KeyValue {
    key_value(key, any_value::Value::BoolValue(value))
}

fn key_value(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use espan::wire::{ESpan, Endpoint, Http, LinkedSpan, Trace, sample};

    use crate::convert::testing::Encoded;

    use super::*;

    fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
        attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
        match attr(attributes, key) {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        }
    }

    fn number(attributes: &[KeyValue], key: &str) -> Option<i64> {
        match attr(attributes, key) {
            Some(any_value::Value::IntValue(n)) => Some(*n),
            _ => None,
        }
    }

    fn trace_of(spans: Vec<(ESpan, u64)>) -> Trace {
        Trace {
            trace_id_high: 0x1111_2222_3333_4444,
            trace_id_low: 0x5555_6666_7777_8888,
            spans: spans
                .into_iter()
                .map(|(span, parent_id)| LinkedSpan {
                    span: Some(span),
                    parent_id,
                })
                .collect(),
            app_trace_id: false,
            late: false,
        }
    }

    fn request_of(trace: &Trace) -> ExportTraceServiceRequest {
        request(Encoded::new(trace).refs())
    }

    #[test]
    fn a_server_span_follows_the_http_conventions() {
        let mut server = sample::span(1); // odd n: SERVER
        server.http = Some(Http {
            method: "GET".into(),
            path: "/api/orders/42".into(),
            version: "HTTP/1.1".into(),
            status: 404,
            host: "shop.example:8080".into(),
        });
        server.remote = Some(Endpoint::from_socket_addr(
            "10.0.0.9:51000".parse().unwrap(),
        ));
        server.local = Some(Endpoint::from_socket_addr("10.0.0.1:8080".parse().unwrap()));
        let trace = trace_of(vec![(server.clone(), 0)]);
        let request = request_of(&trace);
        assert_eq!(request.resource_spans.len(), 1);
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.name, "GET /api/orders/{id}");
        assert_eq!(span.kind, span::SpanKind::Server as i32);
        assert_eq!(span.trace_id, hex("11112222333344445555666677778888"));
        assert_eq!(span.span_id, server.span_id.to_be_bytes());
        assert!(span.parent_span_id.is_empty(), "a root has no parent");
        let a = &span.attributes;
        assert_eq!(text(a, "http.request.method").unwrap(), "GET");
        assert_eq!(text(a, "url.path").unwrap(), "/api/orders/42");
        assert_eq!(text(a, "url.template").unwrap(), "/api/orders/{id}");
        assert_eq!(text(a, "url.scheme").unwrap(), "http");
        assert!(
            text(a, "http.route").is_none(),
            "a guessed template is not the framework's route"
        );
        assert!(text(a, "url.full").is_none(), "url.full is for clients");
        assert_eq!(number(a, "http.response.status_code"), Some(404));
        assert_eq!(text(a, "network.protocol.version").unwrap(), "1.1");
        assert_eq!(text(a, "server.address").unwrap(), "shop.example");
        assert_eq!(number(a, "server.port"), Some(8080));
        assert_eq!(text(a, "client.address").unwrap(), "10.0.0.9");
        assert_eq!(number(a, "client.port"), Some(51000));
        assert_eq!(text(a, "network.peer.address").unwrap(), "10.0.0.9");
        assert_eq!(number(a, "ebpf.req_seq"), Some(i64::from(server.req_seq)));
        // A 404 is a server doing its job.
        assert_eq!(
            span.status.as_ref().unwrap().code,
            status::StatusCode::Unset as i32
        );
        assert!(text(a, "error.type").is_none());
    }

    /// A gRPC span of `sample::span(n)` (even n: CLIENT) with `grpc-status` `code`.
    fn grpc_span(n: u64, code: u32) -> ESpan {
        let mut span = sample::span(n);
        span.protocol = Protocol::Grpc as i32;
        span.http = Some(Http {
            method: "POST".into(),
            path: "/shop.Orders/Get".into(),
            version: "HTTP/2".into(),
            status: 200,
            host: "orders:50051".into(),
        });
        span.grpc = Some(espan::wire::Grpc {
            status_code: Some(code),
            message: "no%20such%20order".into(),
        });
        span
    }

    #[test]
    fn a_grpc_call_follows_the_rpc_conventions() {
        let request = request_of(&trace_of(vec![(grpc_span(2, 5), 0)]));
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.name, "shop.Orders/Get");
        let a = &span.attributes;
        assert_eq!(text(a, "rpc.system").unwrap(), "grpc");
        assert_eq!(text(a, "rpc.service").unwrap(), "shop.Orders");
        assert_eq!(text(a, "rpc.method").unwrap(), "Get");
        assert_eq!(number(a, "rpc.grpc.status_code"), Some(5));
        assert_eq!(text(a, "network.protocol.version").unwrap(), "2");
        assert_eq!(text(a, "server.address").unwrap(), "orders");
        assert_eq!(number(a, "server.port"), Some(50051));
        assert!(text(a, "http.request.method").is_none());
        // NOT_FOUND fails the client's call.
        assert_eq!(text(a, "error.type").unwrap(), "NOT_FOUND");
        assert_eq!(
            span.status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
        // A server fails only on the codes that mean its own fault.
        for (code, failed) in [(5, false), (0, false), (13, true), (14, true)] {
            let request = request_of(&trace_of(vec![(grpc_span(1, code), 0)]));
            let span = &request.resource_spans[0].scope_spans[0].spans[0];
            let want = if failed {
                status::StatusCode::Error
            } else {
                status::StatusCode::Unset
            };
            assert_eq!(span.status.as_ref().unwrap().code, want as i32, "{code}");
        }
    }

    #[test]
    fn a_redis_call_follows_the_database_conventions() {
        let mut client = sample::span(2); // even n: CLIENT
        client.protocol = Protocol::Redis as i32;
        client.http = None;
        client.db = Some(espan::wire::Db {
            system: "redis".into(),
            operation: "LPUSH".into(),
            status_code: "WRONGTYPE".into(),
            ..Default::default()
        });
        client.remote = Some(Endpoint::from_socket_addr("10.0.0.7:6379".parse().unwrap()));
        let request = request_of(&trace_of(vec![(client, 0)]));
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.name, "LPUSH");
        assert_eq!(span.kind, span::SpanKind::Client as i32);
        let a = &span.attributes;
        assert_eq!(text(a, "db.system.name").unwrap(), "redis");
        assert_eq!(text(a, "db.operation.name").unwrap(), "LPUSH");
        assert_eq!(text(a, "db.response.status_code").unwrap(), "WRONGTYPE");
        assert_eq!(text(a, "error.type").unwrap(), "WRONGTYPE");
        assert_eq!(text(a, "server.address").unwrap(), "10.0.0.7");
        assert_eq!(number(a, "server.port"), Some(6379));
        assert_eq!(text(a, "ebpf.protocol").unwrap(), "redis");
        assert!(text(a, "http.request.method").is_none());
        assert!(text(a, "url.full").is_none());
        assert_eq!(
            span.status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
    }

    #[test]
    fn a_client_span_is_an_error_from_400_and_names_the_called_server() {
        let mut client = sample::span(2); // even n: CLIENT
        client.local_parent_id = 77;
        client.http.as_mut().unwrap().status = 404;
        client.http.as_mut().unwrap().host = String::new();
        let trace = trace_of(vec![(client.clone(), 77)]);
        let request = request_of(&trace);
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.kind, span::SpanKind::Client as i32);
        assert_eq!(span.parent_span_id, 77u64.to_be_bytes());
        let a = &span.attributes;
        assert_eq!(text(a, "url.template").unwrap(), "/api/orders/{id}");
        assert!(text(a, "http.route").is_none());
        assert_eq!(
            text(a, "url.full").unwrap(),
            "http://10.0.0.2:8080/api/orders/2"
        );
        // No Host header: the remote end is the server.
        assert_eq!(text(a, "server.address").unwrap(), "10.0.0.2");
        assert_eq!(number(a, "server.port"), Some(8080));
        assert!(text(a, "client.address").is_none());
        assert_eq!(text(a, "error.type").unwrap(), "404");
        assert_eq!(text(a, "ebpf.local_parent_id").unwrap(), "000000000000004d");
        assert_eq!(
            span.status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
    }

    #[test]
    fn the_host_header_names_the_server_on_both_sides() {
        for n in [1, 2] {
            let mut span = sample::span(n);
            span.http.as_mut().unwrap().host = "shop.example".into();
            let trace = trace_of(vec![(span, 0)]);
            let request = request_of(&trace);
            let a = &request.resource_spans[0].scope_spans[0].spans[0].attributes;
            assert_eq!(text(a, "server.address").unwrap(), "shop.example");
            assert_eq!(number(a, "server.port"), Some(80), "http's default port");
            if n == 2 {
                assert_eq!(
                    text(a, "url.full").unwrap(),
                    "http://shop.example/api/orders/2"
                );
            }
        }
    }

    #[test]
    fn an_unknown_method_is_other_and_named_http() {
        for (method, want_name, want_attr) in [
            ("PROPFIND", "HTTP /api/orders/{id}", "_OTHER"),
            ("get", "HTTP /api/orders/{id}", "_OTHER"),
            ("QUERY", "QUERY /api/orders/{id}", "QUERY"),
            ("DELETE", "DELETE /api/orders/{id}", "DELETE"),
        ] {
            let mut span = sample::span(1);
            span.http.as_mut().unwrap().method = method.into();
            let trace = trace_of(vec![(span, 0)]);
            let request = request_of(&trace);
            let out = &request.resource_spans[0].scope_spans[0].spans[0];
            assert_eq!(out.name, want_name);
            let a = &out.attributes;
            assert_eq!(text(a, "http.request.method").unwrap(), want_attr);
            let original = text(a, "http.request.method_original");
            if want_attr == "_OTHER" {
                assert_eq!(original.unwrap(), method);
            } else {
                assert!(original.is_none(), "only when it differs");
            }
        }
    }

    #[test]
    fn a_client_url_without_host_header_brackets_ipv6_and_omits_port_80() {
        let mut span = sample::span(2);
        span.http.as_mut().unwrap().host = String::new();
        span.remote = Some(Endpoint::from_socket_addr("[fd00::7]:80".parse().unwrap()));
        let trace = trace_of(vec![(span.clone(), 0)]);
        let first = request_of(&trace);
        let a = &first.resource_spans[0].scope_spans[0].spans[0].attributes;
        assert_eq!(
            text(a, "url.full").unwrap(),
            "http://[fd00::7]/api/orders/2"
        );
        span.remote = Some(Endpoint::from_socket_addr(
            "[fd00::7]:8080".parse().unwrap(),
        ));
        span.http.as_mut().unwrap().path = String::new();
        let trace = trace_of(vec![(span, 0)]);
        let request = request_of(&trace);
        let a = &request.resource_spans[0].scope_spans[0].spans[0].attributes;
        assert_eq!(text(a, "url.full").unwrap(), "http://[fd00::7]:8080/");
    }

    #[test]
    fn a_failed_exchange_is_an_error_with_its_message() {
        let mut span = sample::span(3);
        span.error = "connection reset".into();
        span.http.as_mut().unwrap().status = 0;
        let trace = trace_of(vec![(span, 0)]);
        let request = request_of(&trace);
        let out = &request.resource_spans[0].scope_spans[0].spans[0];
        let status = out.status.as_ref().unwrap();
        assert_eq!(status.code, status::StatusCode::Error as i32);
        assert_eq!(status.message, "connection reset");
        assert!(number(&out.attributes, "http.response.status_code").is_none());
    }

    #[test]
    fn spans_are_grouped_by_process() {
        let a1 = sample::span(1);
        let a2 = sample::span(3);
        let mut b = sample::span(5);
        b.service = "backend".into();
        b.pid = 99;
        b.comm = "java".into();
        let trace = trace_of(vec![(a1, 0), (b, 2), (a2, 0)]);
        let request = request_of(&trace);
        assert_eq!(request.resource_spans.len(), 2);
        let counts: Vec<usize> = request
            .resource_spans
            .iter()
            .map(|r| r.scope_spans[0].spans.len())
            .collect();
        assert_eq!(counts, [2, 1]);
        let backend = request.resource_spans[1].resource.as_ref().unwrap();
        assert_eq!(
            text(&backend.attributes, "service.name").unwrap(),
            "backend"
        );
        assert_eq!(number(&backend.attributes, "process.pid"), Some(99));
        assert_eq!(
            text(&backend.attributes, "process.executable.name").unwrap(),
            "java"
        );
        assert_eq!(text(&backend.attributes, "host.name").unwrap(), "host-a");
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }
}
