//! eSpans → DataKit's tracing line protocol, as DataKit's eBPF agent and its
//! `ebpftrace` linker write it for an eBPF span: measurement `dketrace`, the
//! agent's fields (`ebpf_span_type`, `req_seq`, `src_ip`, `start`/`duration` in
//! µs, …) plus the ids the linker adds (`trace_id`, `span_id`, `parent_id`,
//! `ebpf_trace_id`, `ebpf_parent_id`), timestamp = span start in ns.
//!
//! Tags are the standard DataKit span tags (`host`, `service`, `source_type`,
//! `span_type`, `status`, `operation`) so Guance can group by them; the agent
//! writes those as fields too, and DataKit promotes `host` itself. Values and
//! types follow the agent: `status` is `ok`/`warning`/`error` by HTTP code
//! class, `http_status_code`, `pid` and the ports are strings, app ids are
//! decimal when the app propagated Datadog headers. One deliberate difference:
//! `resource` is `{method} {route}` with ids collapsed (as the OTLP span
//! name), where DataKit puts the raw path, so resources stay few;
//! `http_route` keeps the raw path as DataKit does.

use espan::wire::{SpanKind, TraceFormat};

use crate::view::{SpanRef, SpanView};

use super::{
    Text, decimal, hex128, ip_text, otlp::protocol_name, port, route, span_id_hex, trace_id_hex,
};

/// The measurement DataKit writes eBPF spans under.
pub const MEASUREMENT: &str = "dketrace";

/// Appends one line per span to `out`.
pub fn write_lines<'a>(out: &mut String, spans: impl IntoIterator<Item = SpanRef<'a>>) {
    let mut template = String::new();
    for span_ref in spans {
        write_line(out, &mut template, &span_ref);
    }
}

fn write_line(out: &mut String, template: &mut String, span_ref: &SpanRef<'_>) {
    let span = &span_ref.span;
    let server = SpanKind::try_from(span.kind) == Ok(SpanKind::Server);
    let http = span.http.as_ref();
    let status = status_text(span);
    let service = if span.service.is_empty() {
        &span.comm
    } else {
        &span.service
    };
    let operation = match http {
        Some(_) => "HTTP",
        None => protocol_name(span.protocol),
    };

    out.push_str(MEASUREMENT);
    // Tags, sorted by key as InfluxDB prefers; empty values are left out (a tag
    // cannot be empty in line protocol).
    tag(out, "host", span.host);
    tag(out, "operation", operation);
    tag(out, "service", service);
    tag(out, "source_type", "ebpf");
    tag(out, "span_type", if server { "entry" } else { "exit" });
    tag(out, "status", status);

    let mut fields = Fields::new(out);
    fields.string("trace_id", &trace_id_text(span_ref));
    fields.string("span_id", &span_id_hex(span.span_id));
    fields.string("parent_id", &parent_text(span_ref.parent_id));
    fields.string("ebpf_trace_id", &trace_id_hex(&span_ref.trace));
    fields.string("ebpf_parent_id", &parent_text(span_ref.parent_id));
    match http {
        Some(h) if !h.method.is_empty() => {
            route::template_into(h.path, template);
            fields.strings("resource", &[h.method, " ", template]);
        }
        _ => match span.db.as_ref() {
            Some(db) if !db.summary.is_empty() => fields.string("resource", db.summary),
            Some(db) if !db.operation.is_empty() => fields.string("resource", db.operation),
            _ => fields.string("resource", operation),
        },
    }
    fields.int("start", span.start_ns / 1_000);
    fields.int(
        "duration",
        span.end_ns.saturating_sub(span.start_ns) / 1_000,
    );
    fields.string("ebpf_span_type", if server { "entry" } else { "exit" });
    fields.string("direction", if server { "incoming" } else { "outgoing" });
    fields.int("req_seq", u64::from(span.req_seq));
    fields.int("resp_seq", u64::from(span.resp_seq));
    fields.int("tid", u64::from(span.tid));
    fields.string("process_name", span.comm);
    fields.string("thread_name", span.comm);
    fields.string("pid", &decimal(u64::from(span.pid)));
    // Socket view, as the agent writes it: src is this end, dst the peer.
    fields.string("src_ip", &ip_text(span.local.as_ref()));
    fields.string("src_port", &decimal(u64::from(port(span.local.as_ref()))));
    fields.string("dst_ip", &ip_text(span.remote.as_ref()));
    fields.string("dst_port", &decimal(u64::from(port(span.remote.as_ref()))));
    if let Some(h) = http {
        fields.string("http_method", h.method);
        fields.string("http_route", h.path);
        fields.string("http_version", h.version.trim_start_matches("HTTP/"));
        // A string, as DataKit writes it (the field's type must agree with
        // DataKit's own eBPF spans in the same measurement).
        fields.string("http_status_code", &decimal(u64::from(h.status)));
        if !h.host.is_empty() {
            fields.string("http_host", h.host);
        }
    }
    if let Some(grpc) = &span.grpc {
        if let Some(code) = grpc.status_code {
            fields.string("grpc_status_code", &decimal(u64::from(code)));
        }
        if !grpc.message.is_empty() {
            fields.string("grpc_message", grpc.message);
        }
    }
    if let Some(db) = &span.db {
        fields.string("db_system", db.system);
        if !db.operation.is_empty() {
            fields.string("db_operation", db.operation);
        }
        if !db.query.is_empty() {
            fields.string("db_query", db.query);
        }
        if !db.status_code.is_empty() {
            fields.string("db_status_code", db.status_code);
        }
    }
    fields.int("bytes_read", span.bytes_in);
    fields.int("bytes_written", span.bytes_out);
    if let Some(app) = &span.app_trace {
        // As the app's headers carried them: Datadog ids in decimal, others in hex.
        if TraceFormat::try_from(app.format) == Ok(TraceFormat::Datadog) {
            fields.string("app_trace_id", &decimal(app.trace_id_low));
            fields.string("app_parent_id", &decimal(app.parent_span_id));
        } else {
            fields.string("app_trace_id", &hex128(app.trace_id_high, app.trace_id_low));
            fields.string("app_parent_id", &span_id_hex(app.parent_span_id));
        }
    }
    if !span.error.is_empty() {
        fields.string("err_msg", span.error);
    }
    if !span.container_id.is_empty() {
        fields.string("container_id", span.container_id);
    }
    out.push(' ');
    out.push_str(&decimal(span.start_ns));
    out.push('\n');
}

/// DataKit's status of an HTTP span: `ok` below 400, `warning` for 4xx,
/// `error` from 500 (whichever side saw it); an exchange that failed, or a
/// database call the server answered with an error, is `error`.
fn status_text(span: &SpanView<'_>) -> &'static str {
    if !span.error.is_empty() || span.db.is_some_and(|db| !db.status_code.is_empty()) {
        return "error";
    }
    if let Some(code) = span.grpc.and_then(|g| g.status_code) {
        return if code == 0 { "ok" } else { "error" };
    }
    match span.http.as_ref().map_or(0, |h| h.status) {
        500.. => "error",
        400..=499 => "warning",
        _ => "ok",
    }
}

/// DataKit writes a Datadog-propagated (64-bit) trace id in decimal, as
/// Datadog's own spans carry it, so the two sides join; otherwise hex.
fn trace_id_text(span_ref: &SpanRef<'_>) -> Text<32> {
    let trace = &span_ref.trace;
    let datadog = trace.app_trace_id
        && trace.trace_id_high == 0
        && span_ref
            .span
            .app_trace
            .is_some_and(|a| TraceFormat::try_from(a.format) == Ok(TraceFormat::Datadog));
    if datadog {
        let mut text = Text::new();
        text.push_decimal(trace.trace_id_low);
        text
    } else {
        trace_id_hex(trace)
    }
}

/// DataKit writes "0" for a root's parent.
fn parent_text(parent_id: u64) -> Text<16> {
    if parent_id == 0 {
        let mut text = Text::new();
        text.push_decimal(0);
        text
    } else {
        span_id_hex(parent_id)
    }
}

fn tag(out: &mut String, key: &str, value: &str) {
    if value.is_empty() {
        return;
    }
    out.push(',');
    out.push_str(key);
    out.push('=');
    escape_tag(out, value);
}

/// Tag values escape commas, equals signs and spaces. Line protocol has no
/// escape for a newline, so control characters become (escaped) spaces, and none for a
/// backslash: one before a separator or at the end would swallow what follows,
/// so backslashes become slashes (tags are host and service names).
fn escape_tag(out: &mut String, value: &str) {
    // Most values need no escape: copy them whole.
    if !value
        .bytes()
        .any(|b| matches!(b, b',' | b'=' | b' ' | b'\\') || b.is_ascii_control() || b >= 0x80)
    {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            ',' | '=' | ' ' => {
                out.push('\\');
                out.push(c);
            }
            '\\' => out.push('/'),
            // An escaped space: a bare one would end the tag set.
            c if c.is_control() => out.push_str("\\ "),
            c => out.push(c),
        }
    }
}

/// Writes `k=v` pairs, the first after a space, the rest after commas.
struct Fields<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Fields<'a> {
    fn new(out: &'a mut String) -> Self {
        Self { out, first: true }
    }

    fn key(&mut self, key: &str) {
        self.out.push(if self.first { ' ' } else { ',' });
        self.first = false;
        self.out.push_str(key);
        self.out.push('=');
    }

    fn string(&mut self, key: &str, value: &str) {
        self.strings(key, &[value]);
    }

    /// A string field made of `parts`, written one after the other.
    fn strings(&mut self, key: &str, parts: &[&str]) {
        self.key(key);
        self.out.push('"');
        for value in parts {
            if !value
                .bytes()
                .any(|b| matches!(b, b'"' | b'\\') || b.is_ascii_control() || b >= 0x80)
            {
                self.out.push_str(value);
                continue;
            }
            for c in value.chars() {
                match c {
                    '"' | '\\' => {
                        self.out.push('\\');
                        self.out.push(c);
                    }
                    c if c.is_control() => self.out.push(' '),
                    c => self.out.push(c),
                }
            }
        }
        self.out.push('"');
    }

    /// An integer field; line protocol's integers are signed 64-bit, so a
    /// larger value is clamped.
    fn int(&mut self, key: &str, value: u64) {
        self.key(key);
        self.out.push_str(&decimal(value.min(i64::MAX as u64)));
        self.out.push('i');
    }
}

#[cfg(test)]
mod tests {
    use espan::wire::{AppTrace, ESpan, LinkedSpan, Trace, sample};

    use super::*;
    use crate::convert::testing::Encoded;

    fn line_of(span: ESpan, parent_id: u64, trace: Trace) -> String {
        let trace = Trace {
            spans: vec![LinkedSpan {
                span: Some(span),
                parent_id,
            }],
            ..trace
        };
        let mut out = String::new();
        write_lines(&mut out, Encoded::new(&trace).refs());
        out
    }

    fn trace() -> Trace {
        Trace {
            trace_id_high: 0xabc,
            trace_id_low: 0xdef,
            ..Default::default()
        }
    }

    #[test]
    fn a_server_span_is_written_as_datakit_writes_it() {
        let span = sample::span(1);
        let line = line_of(span.clone(), 0, trace());
        let want = format!(
            "dketrace,host=host-a,operation=HTTP,service=frontend,source_type=ebpf,span_type=entry,status=ok \
             trace_id=\"0000000000000abc0000000000000def\",span_id=\"0000000000000002\",parent_id=\"0\",\
             ebpf_trace_id=\"0000000000000abc0000000000000def\",ebpf_parent_id=\"0\",\
             resource=\"GET /api/orders/{{id}}\",start={start}i,duration=250i,ebpf_span_type=\"entry\",\
             direction=\"incoming\",req_seq={req}i,resp_seq={resp}i,tid=4244i,process_name=\"python3\",\
             thread_name=\"python3\",pid=\"4242\",src_ip=\"10.0.0.1\",src_port=\"40001\",dst_ip=\"10.0.0.2\",\
             dst_port=\"8080\",http_method=\"GET\",http_route=\"/api/orders/1\",http_version=\"1.1\",\
             http_status_code=\"200\",http_host=\"backend:8080\",bytes_read=512i,bytes_written=1024i {ts}\n",
            start = span.start_ns / 1000,
            req = span.req_seq,
            resp = span.resp_seq,
            ts = span.start_ns,
        );
        assert_eq!(line, want);
    }

    #[test]
    fn a_grpc_call_carries_its_status() {
        let mut span = sample::span(2);
        span.protocol = espan::wire::Protocol::Grpc as i32;
        span.http.as_mut().unwrap().path = "/shop.Orders/Get".into();
        span.http.as_mut().unwrap().method = "POST".into();
        span.grpc = Some(espan::wire::Grpc {
            status_code: Some(5),
            message: "no such order".into(),
        });
        let line = line_of(span.clone(), 0, trace());
        assert!(line.contains(",status=error "), "{line}");
        assert!(
            line.contains(",grpc_status_code=\"5\",grpc_message=\"no such order\","),
            "{line}"
        );
        span.grpc.as_mut().unwrap().status_code = Some(0);
        assert!(line_of(span, 0, trace()).contains(",status=ok "));
    }

    #[test]
    fn a_redis_call_names_its_command_and_its_error() {
        let mut span = sample::span(2);
        span.protocol = espan::wire::Protocol::Redis as i32;
        span.http = None;
        span.db = Some(espan::wire::Db {
            system: "redis".into(),
            operation: "HGET".into(),
            status_code: "WRONGTYPE".into(),
            ..Default::default()
        });
        let line = line_of(span, 0, trace());
        assert!(line.contains(",operation=redis,"), "{line}");
        assert!(line.contains(",status=error "), "{line}");
        assert!(line.contains(",resource=\"HGET\","), "{line}");
        assert!(
            line.contains(
                ",db_system=\"redis\",db_operation=\"HGET\",db_status_code=\"WRONGTYPE\","
            ),
            "{line}"
        );
        assert!(!line.contains("http_"), "{line}");
    }

    #[test]
    fn special_characters_are_escaped_and_newlines_cannot_break_a_line() {
        let mut span = sample::span(2);
        span.service = "my service,a=b".into();
        span.error = "bad \"quote\" \\ and\nnewline".into();
        let line = line_of(span, 9, trace());
        assert!(line.contains(",service=my\\ service\\,a\\=b,"), "{line}");
        assert!(
            line.contains("err_msg=\"bad \\\"quote\\\" \\\\ and newline\""),
            "{line}"
        );
        assert!(
            line.contains(",status=error "),
            "an error is status=error: {line}"
        );
        assert!(line.contains("parent_id=\"0000000000000009\""), "{line}");
        assert_eq!(line.matches('\n').count(), 1);
    }

    #[test]
    fn status_is_ok_warning_or_error_as_datakit_maps_http_codes() {
        for (kind_n, code, error, want) in [
            (1, 200, "", "ok"),
            (1, 302, "", "ok"),
            (2, 404, "", "warning"),
            (1, 404, "", "warning"),
            (1, 503, "", "error"),
            (2, 0, "connection closed before the response", "error"),
        ] {
            let mut span = sample::span(kind_n);
            span.http.as_mut().unwrap().status = code;
            span.error = error.into();
            let line = line_of(span, 0, trace());
            assert!(
                line.contains(&format!(",status={want} ")),
                "{code} {error:?}: {line}"
            );
            assert!(
                line.contains(&format!("http_status_code=\"{code}\"")),
                "{line}"
            );
        }
    }

    #[test]
    fn a_datadog_trace_id_is_decimal() {
        let mut span = sample::span(3);
        span.app_trace = Some(AppTrace {
            format: TraceFormat::Datadog as i32,
            trace_id_high: 0,
            trace_id_low: 1234,
            parent_span_id: 5,
            sampling: 0,
        });
        let trace = Trace {
            trace_id_high: 0,
            trace_id_low: 1234,
            app_trace_id: true,
            ..Default::default()
        };
        let line = line_of(span, 0, trace);
        assert!(line.contains(" trace_id=\"1234\","), "{line}");
        assert!(line.contains("app_trace_id=\"1234\""), "{line}");
        assert!(line.contains("app_parent_id=\"5\""), "{line}");
    }
}
