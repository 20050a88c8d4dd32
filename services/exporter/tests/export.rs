//! The exporter against real receivers it did not write: OTLP gRPC and HTTP
//! receivers built from the upstream Python `opentelemetry-proto` package (with
//! grpcio and http.server), and a Dataway stand-in that parses the line protocol
//! with the independent `line-protocol-parser` package. Each test has its own
//! nats-server (`espan::testkit`) and receiver processes on free loopback ports,
//! runs the exporter in-process, and compares what the receiver decoded.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use espan::bus::{self, Bus};
use espan::shutdown;
use espan::testkit::{TestCerts, TestNats, free_port};
use espan::wire::{
    self, AppTrace, ESpan, Endpoint, Http, LinkedSpan, Protocol, SamplingDecision, SpanKind, Trace,
    TraceBatch, TraceFormat,
};
use espan_exporter::run;
use espan_exporter::settings::{DatawaySettings, OtlpSettings, Settings};
use espan_exporter::sinks::otlp::Protocol as OtlpProtocol;
use espan_exporter::sinks::tls::OtlpTls;
use serde_json::{Value, json};
use tempfile::TempDir;

// ---------------------------------------------------------------- receivers

/// A Python receiver process, killed on drop. It appends one JSON line per
/// request it got to `out`.
struct Receiver {
    child: Option<Child>,
    port: u16,
    script: &'static str,
    args: Vec<String>,
    out: PathBuf,
}

impl Receiver {
    /// `script` in tests/receivers with `args`; `port` 0 = any free one.
    fn start(script: &'static str, args: &[&str], port: u16, dir: &Path) -> Self {
        let mut receiver = Self {
            child: None,
            port,
            script,
            args: args.iter().map(|a| a.to_string()).collect(),
            out: dir.join(format!("{script}.jsonl")),
        };
        receiver.spawn();
        receiver
    }

    fn spawn(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/receivers")
            .join(self.script);
        let mut child = Command::new("python3")
            .arg(script)
            .args(&self.args)
            .args(["--port", &self.port.to_string(), "--out"])
            .arg(&self.out)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs (scripts/setup.d/exporter.sh installs its packages)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{} did not start: {line:?}", self.script));
        self.port = port;
        self.child = Some(child);
    }

    /// Kills it: a backend that is down.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, refusing nothing.
    fn restart_healthy(&mut self) {
        self.kill();
        if let Some(at) = self.args.iter().position(|a| a == "--fail") {
            self.args.drain(at..at + 2);
        }
        self.spawn();
    }

    /// Every request it recorded.
    fn records(&self) -> Vec<Value> {
        let mut text = std::fs::read_to_string(&self.out).unwrap_or_default();
        // The receiver may be writing the last line right now: read it next time.
        if !text.ends_with('\n') {
            text.truncate(text.rfind('\n').map_or(0, |i| i + 1));
        }
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).expect("receiver writes JSON lines"))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill();
    }
}

/// OTLP spans of accepted requests, each with its resource's attributes.
fn otlp_spans(records: &[Value]) -> Vec<(Value, Value)> {
    let mut spans = Vec::new();
    for record in records.iter().filter(|r| r["accepted"] == true) {
        for rs in record["request"]["resource_spans"].as_array().unwrap() {
            for ss in rs["scope_spans"].as_array().unwrap() {
                assert_eq!(ss["scope"]["name"], "espan");
                for span in ss["spans"].as_array().unwrap() {
                    spans.push((span.clone(), rs["resource"].clone()));
                }
            }
        }
    }
    spans
}

/// Dataway points of accepted requests.
fn dataway_points(records: &[Value]) -> Vec<Value> {
    let mut points = Vec::new();
    for record in records.iter().filter(|r| r["accepted"] == true) {
        assert_eq!(
            record["token"], "tkn_test",
            "the token travels in the query"
        );
        assert_eq!(
            record["x_points"].as_str(),
            Some(
                record["points"]
                    .as_array()
                    .unwrap()
                    .len()
                    .to_string()
                    .as_str()
            ),
            "X-Points counts the lines, as DataKit sends it"
        );
        for point in record["points"].as_array().unwrap() {
            assert!(
                point.get("unparsable").is_none(),
                "unparsable line: {point}"
            );
            points.push(point.clone());
        }
    }
    points
}

/// OTLP attributes as key → the JSON of their value (int64 are strings in
/// protobuf JSON).
fn attributes(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|kv| {
            let value = kv["value"].as_object().unwrap();
            let (_, inner) = value.iter().next().unwrap();
            (kv["key"].as_str().unwrap().to_owned(), inner.clone())
        })
        .collect()
}

fn map(value: Value) -> BTreeMap<String, Value> {
    serde_json::from_value(value).unwrap()
}

// ---------------------------------------------------------------- data

const START: u64 = 1_700_000_000_000_000_000;

fn endpoint(addr: &str) -> Option<Endpoint> {
    Some(Endpoint::from_socket_addr(addr.parse().unwrap()))
}

/// A SERVER span and the CLIENT call it made, with every field set to a value
/// the tests can recognise.
fn detailed_trace() -> Trace {
    let server = ESpan {
        span_id: 0x1111,
        kind: SpanKind::Server as i32,
        protocol: Protocol::Http1 as i32,
        local: endpoint("10.1.0.5:8080"),
        remote: endpoint("10.1.0.9:51234"),
        req_seq: 1000,
        resp_seq: 2000,
        start_ns: START,
        end_ns: START + 1_500_000,
        pid: 100,
        tid: 101,
        comm: "gunicorn".into(),
        service: "shop".into(),
        local_parent_id: 0,
        http: Some(Http {
            method: "GET".into(),
            path: "/orders/123".into(),
            version: "HTTP/1.1".into(),
            status: 500,
            host: "shop:8080".into(),
        }),
        bytes_in: 300,
        bytes_out: 4000,
        error: String::new(),
        app_trace: None,
        host: "node-1".into(),
        container_id: String::new(),
        conn_id: 7,
        db: None,
        grpc: None,
    };
    let client = ESpan {
        span_id: 0x2222,
        kind: SpanKind::Client as i32,
        local: endpoint("10.1.0.5:40000"),
        remote: endpoint("10.1.0.20:9000"),
        req_seq: 3000,
        resp_seq: 4000,
        start_ns: START + 100_000,
        end_ns: START + 900_000,
        local_parent_id: 0x1111,
        http: Some(Http {
            method: "POST".into(),
            path: "/pay/5f2b8c9e1a4d3e7f6b0c9a12".into(),
            version: "HTTP/1.1".into(),
            status: 0,
            host: "payments:9000".into(),
        }),
        bytes_in: 100,
        bytes_out: 200,
        error: "connection reset".into(),
        app_trace: Some(AppTrace {
            format: TraceFormat::W3c as i32,
            trace_id_high: 0xaaaa,
            trace_id_low: 0xbbbb,
            parent_span_id: 0xcccc,
            sampling: SamplingDecision::Keep as i32,
        }),
        conn_id: 8,
        db: None,
        grpc: None,
        ..server.clone()
    };
    Trace {
        trace_id_high: 0xabcdef,
        trace_id_low: 0x123456,
        spans: vec![
            LinkedSpan {
                span: Some(server),
                parent_id: 0,
            },
            LinkedSpan {
                span: Some(client),
                parent_id: 0x1111,
            },
        ],
        app_trace_id: false,
        late: false,
    }
}

/// `traces` traces of `per_trace` sample spans each; span ids unique across `batch`.
fn volume_batch(batch: u64, traces: u64, per_trace: u64) -> TraceBatch {
    TraceBatch {
        version: wire::WIRE_VERSION,
        linker: "linker-1".into(),
        boot_id: 1,
        seq: batch,
        traces: (0..traces)
            .map(|t| Trace {
                trace_id_high: batch + 1,
                trace_id_low: t + 1,
                spans: (0..per_trace)
                    .map(|s| LinkedSpan {
                        span: Some(wire::sample::span(batch * 1_000_000 + t * 1_000 + s)),
                        parent_id: 0,
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
    }
}

fn span_ids(batches: &[TraceBatch]) -> Vec<String> {
    let mut ids: Vec<String> = batches
        .iter()
        .flat_map(|b| &b.traces)
        .flat_map(|t| &t.spans)
        .map(|l| format!("{:016x}", l.span.as_ref().unwrap().span_id))
        .collect();
    ids.sort();
    ids
}

// ---------------------------------------------------------------- harness

struct Setup {
    nats: TestNats,
    bus: Bus,
    dir: TempDir,
}

async fn setup() -> Setup {
    let nats = TestNats::start().unwrap();
    // Small streams: the default 10 GiB each is more than a test machine's
    // disk may let JetStream reserve.
    let limits = bus::StreamLimits {
        max_bytes: 256 << 20,
        ..Default::default()
    };
    let bus = nats.bus("test", &limits).await.unwrap();
    Setup {
        nats,
        bus,
        dir: tempfile::Builder::new()
            .prefix("espan-exporter-test")
            .tempdir()
            .unwrap(),
    }
}

fn settings(nats: &TestNats) -> Settings {
    Settings {
        nats: nats.url().into(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        otlp: None,
        dataway: None,
        batch_max_spans: 1000,
        batch_timeout: Duration::from_millis(200),
        batch_max_messages: 64,
        concurrency: 4,
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(500),
        ack_wait: Duration::from_secs(30),
        durable_prefix: "exporter".into(),
        stream_replicas: 1,
    }
}

fn otlp(protocol: OtlpProtocol, port: u16, gzip: bool) -> Option<OtlpSettings> {
    Some(OtlpSettings {
        endpoint: match protocol {
            OtlpProtocol::Grpc => format!("http://127.0.0.1:{port}"),
            OtlpProtocol::HttpProtobuf => format!("http://127.0.0.1:{port}/v1/traces"),
        },
        protocol,
        headers: vec![("x-test".into(), "yes".into())],
        timeout: Duration::from_secs(5),
        gzip,
        tls: Default::default(),
    })
}

fn dataway(port: u16) -> Option<DatawaySettings> {
    Some(DatawaySettings {
        url: format!("http://127.0.0.1:{port}/v1/write/tracing?token=tkn_test"),
        timeout: Duration::from_secs(5),
    })
}

struct Exporter {
    trigger: shutdown::ShutdownTrigger,
    running: run::Running,
}

impl Exporter {
    async fn start(settings: &Settings) -> Self {
        let (trigger, stop) = shutdown::channel();
        let running = run::start(settings, stop).await.unwrap();
        Self { trigger, running }
    }

    async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.running.metrics_addr);
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }

    async fn stop(self) {
        self.trigger.trigger();
        self.running.wait().await.unwrap();
    }
}

async fn publish(bus: &Bus, batches: &mut [TraceBatch]) {
    let mut publisher = bus.publisher(64);
    for (i, batch) in batches.iter_mut().enumerate() {
        let payload = wire::encode_trace_batch(batch);
        publisher
            .publish(
                i as u64,
                bus::trace_subject(&batch.linker),
                format!("{}-{}-{}", batch.linker, batch.boot_id, batch.seq),
                payload,
                None,
            )
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
}

/// Polls `done` until it holds; fails with `what` after a generous minute (a
/// hang, not a speed check).
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gave up waiting: {what}");
}

/// Waits until `receiver` holds as many spans as `want` and the sink's
/// consumer has nothing left, then checks it holds exactly `want`: nothing
/// lost, nothing twice.
async fn assert_received_exactly(
    sink: Sink,
    receiver: &Receiver,
    bus: &Bus,
    want: &[String],
    what: &str,
) {
    wait_until(what, || sink.received_ids(receiver).len() >= want.len()).await;
    wait_drained(bus, &format!("exporter-{}", sink.label())).await;
    assert_eq!(
        sink.received_ids(receiver),
        want,
        "{what}: nothing lost, nothing twice"
    );
}

/// Waits until the durable consumer has nothing undelivered or unacked.
async fn wait_drained(bus: &Bus, durable: &str) {
    let stream = bus
        .jetstream()
        .get_stream(bus::TRACES_STREAM)
        .await
        .unwrap();
    for _ in 0..1200 {
        if let Ok(info) = stream.consumer_info(durable).await
            && info.num_pending == 0
            && info.num_ack_pending == 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("consumer {durable} never drained");
}

fn metric(text: &str, name: &str, sink: &str) -> f64 {
    let prefix = format!("{name}{{sink=\"{sink}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}

// ---------------------------------------------------------------- every field

fn expected_server_span() -> (BTreeMap<String, Value>, BTreeMap<String, Value>) {
    let span = map(json!({
        "trace_id": "0000000000abcdef0000000000123456",
        "span_id": "0000000000001111",
        "name": "GET /orders/{id}",
        "kind": "SPAN_KIND_SERVER",
        "start_time_unix_nano": START.to_string(),
        "end_time_unix_nano": (START + 1_500_000).to_string(),
        "status": {"code": "STATUS_CODE_ERROR"},
    }));
    let attrs = map(json!({
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/orders/123",
        "url.template": "/orders/{id}",
        "http.response.status_code": "500",
        "network.protocol.name": "http",
        "network.protocol.version": "1.1",
        "server.address": "shop",
        "server.port": "8080",
        "client.address": "10.1.0.9",
        "client.port": "51234",
        "network.peer.address": "10.1.0.9",
        "network.peer.port": "51234",
        "network.local.address": "10.1.0.5",
        "network.local.port": "8080",
        "network.transport": "tcp",
        "error.type": "500",
        "thread.id": "101",
        "ebpf.protocol": "http",
        "ebpf.req_seq": "1000",
        "ebpf.resp_seq": "2000",
        "ebpf.conn_id": "0000000000000007",
        "ebpf.bytes_in": "300",
        "ebpf.bytes_out": "4000",
    }));
    (span, attrs)
}

fn expected_client_span() -> (BTreeMap<String, Value>, BTreeMap<String, Value>) {
    let span = map(json!({
        "trace_id": "0000000000abcdef0000000000123456",
        "span_id": "0000000000002222",
        "parent_span_id": "0000000000001111",
        "name": "POST /pay/{hex}",
        "kind": "SPAN_KIND_CLIENT",
        "start_time_unix_nano": (START + 100_000).to_string(),
        "end_time_unix_nano": (START + 900_000).to_string(),
        "status": {"code": "STATUS_CODE_ERROR", "message": "connection reset"},
    }));
    let attrs = map(json!({
        "http.request.method": "POST",
        "url.scheme": "http",
        "url.path": "/pay/5f2b8c9e1a4d3e7f6b0c9a12",
        "url.template": "/pay/{hex}",
        "url.full": "http://payments:9000/pay/5f2b8c9e1a4d3e7f6b0c9a12",
        "network.protocol.name": "http",
        "network.protocol.version": "1.1",
        "server.address": "payments",
        "server.port": "9000",
        "network.peer.address": "10.1.0.20",
        "network.peer.port": "9000",
        "network.local.address": "10.1.0.5",
        "network.local.port": "40000",
        "network.transport": "tcp",
        "error.type": "connection reset",
        "thread.id": "101",
        "ebpf.protocol": "http",
        "ebpf.req_seq": "3000",
        "ebpf.resp_seq": "4000",
        "ebpf.conn_id": "0000000000000008",
        "ebpf.local_parent_id": "0000000000001111",
        "ebpf.bytes_in": "100",
        "ebpf.bytes_out": "200",
        "ebpf.error": "connection reset",
        "ebpf.app_trace.format": "w3c",
        "ebpf.app_trace.trace_id": "000000000000aaaa000000000000bbbb",
        "ebpf.app_trace.parent_span_id": "000000000000cccc",
        "ebpf.app_trace.sampled": true,
    }));
    (span, attrs)
}

async fn every_otlp_field_arrives(protocol: OtlpProtocol, gzip: bool) {
    let s = setup().await;
    let proto_arg = if protocol == OtlpProtocol::Grpc {
        "grpc"
    } else {
        "http"
    };
    let receiver = Receiver::start(
        "otlp_receiver.py",
        &["--protocol", proto_arg],
        0,
        s.dir.path(),
    );
    let mut settings = settings(&s.nats);
    settings.otlp = otlp(protocol, receiver.port, gzip);
    let exporter = Exporter::start(&settings).await;
    let mut batches = vec![TraceBatch {
        version: wire::WIRE_VERSION,
        linker: "linker-1".into(),
        boot_id: 9,
        seq: 1,
        traces: vec![detailed_trace()],
    }];
    publish(&s.bus, &mut batches).await;
    wait_until("2 spans at the receiver", || {
        otlp_spans(&receiver.records()).len() >= 2
    })
    .await;
    wait_drained(&s.bus, "exporter-otlp").await;

    let spans = otlp_spans(&receiver.records());
    assert_eq!(spans.len(), 2, "each span once");
    let records = receiver.records();
    assert_eq!(
        records[0]["headers"]["x-test"], "yes",
        "configured headers reach the backend"
    );
    assert_eq!(
        records[0]["request"]["resource_spans"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "one process, one resource"
    );
    let resource = attributes(&spans[0].1["attributes"]);
    assert_eq!(
        resource,
        map(json!({
            "service.name": "shop",
            "host.name": "node-1",
            "process.pid": "100",
            "process.executable.name": "gunicorn",
        }))
    );
    for ((span, _), (want_span, want_attrs)) in spans
        .iter()
        .zip([expected_server_span(), expected_client_span()])
    {
        let mut got: BTreeMap<String, Value> = map(span.clone());
        let got_attrs = attributes(&got.remove("attributes").unwrap());
        assert_eq!(got, want_span);
        assert_eq!(got_attrs, want_attrs);
    }
    let text = exporter.metrics().await;
    assert_eq!(
        metric(&text, "espan_exporter_spans_exported_total", "otlp"),
        2.0
    );
    exporter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_grpc_receiver_decodes_every_field() {
    every_otlp_field_arrives(OtlpProtocol::Grpc, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_receiver_decodes_every_field_gzipped() {
    every_otlp_field_arrives(OtlpProtocol::HttpProtobuf, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataway_receiver_parses_every_field() {
    let s = setup().await;
    let receiver = Receiver::start("dataway_receiver.py", &[], 0, s.dir.path());
    let mut settings = settings(&s.nats);
    settings.dataway = dataway(receiver.port);
    let exporter = Exporter::start(&settings).await;
    let mut batches = vec![TraceBatch {
        version: wire::WIRE_VERSION,
        linker: "linker-1".into(),
        boot_id: 9,
        seq: 1,
        traces: vec![detailed_trace()],
    }];
    publish(&s.bus, &mut batches).await;
    wait_until("2 points", || {
        dataway_points(&receiver.records()).len() >= 2
    })
    .await;
    wait_drained(&s.bus, "exporter-dataway").await;
    let points = dataway_points(&receiver.records());
    assert_eq!(points.len(), 2);
    let server = &points[0];
    assert_eq!(server["measurement"], "dketrace");
    assert_eq!(server["time"], json!(START));
    assert_eq!(
        map(server["tags"].clone()),
        map(json!({
            "host": "node-1", "operation": "HTTP", "service": "shop", "source_type": "ebpf",
            "span_type": "entry", "status": "error",
        }))
    );
    assert_eq!(
        map(server["fields"].clone()),
        map(json!({
            "trace_id": "0000000000abcdef0000000000123456",
            "span_id": "0000000000001111",
            "parent_id": "0",
            "ebpf_trace_id": "0000000000abcdef0000000000123456",
            "ebpf_parent_id": "0",
            "resource": "GET /orders/{id}",
            "start": START / 1000,
            "duration": 1500,
            "ebpf_span_type": "entry",
            "direction": "incoming",
            "req_seq": 1000,
            "resp_seq": 2000,
            "tid": 101,
            "process_name": "gunicorn",
            "thread_name": "gunicorn",
            "pid": "100",
            "src_ip": "10.1.0.5",
            "src_port": "8080",
            "dst_ip": "10.1.0.9",
            "dst_port": "51234",
            "http_method": "GET",
            "http_route": "/orders/123",
            "http_version": "1.1",
            "http_status_code": "500",
            "http_host": "shop:8080",
            "bytes_read": 300,
            "bytes_written": 4000,
        }))
    );
    let client = &points[1];
    assert_eq!(client["tags"]["span_type"], "exit");
    assert_eq!(client["fields"]["parent_id"], "0000000000001111");
    assert_eq!(client["fields"]["direction"], "outgoing");
    assert_eq!(client["fields"]["err_msg"], "connection reset");
    assert_eq!(
        client["fields"]["app_trace_id"],
        "000000000000aaaa000000000000bbbb"
    );
    assert_eq!(client["fields"]["resource"], "POST /pay/{hex}");
    exporter.stop().await;
}

/// Text that needs escaping, in every field a span carries: the independent
/// parser reads back each point, every value as it was, except what line
/// protocol cannot carry (control characters become spaces; a backslash in a
/// tag becomes a slash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataway_lines_carry_hostile_text() {
    const PIECES: &[&str] = &[
        "a", " ", ",", "=", "\"", "\\", "\n", "\t", "/", "é", "日本", "🙂", "x=y", "\\,",
    ];
    let s = setup().await;
    let receiver = Receiver::start("dataway_receiver.py", &[], 0, s.dir.path());
    let mut settings = settings(&s.nats);
    settings.dataway = dataway(receiver.port);
    let exporter = Exporter::start(&settings).await;
    let text = |n: u64, k: u64| -> String {
        (0..1 + (n * 7 + k) % 6)
            .map(|i| PIECES[((n * 31 + k * 17 + i * 13) % PIECES.len() as u64) as usize])
            .collect()
    };
    let mut batch = volume_batch(0, 1, 60);
    for (n, linked) in batch.traces[0].spans.iter_mut().enumerate() {
        let n = n as u64;
        let span = linked.span.as_mut().unwrap();
        span.service = text(n, 1);
        span.host = text(n, 2);
        span.comm = text(n, 3);
        span.error = text(n, 4);
        let http = span.http.as_mut().unwrap();
        http.path = format!("/{}", text(n, 5));
        http.host = text(n, 6);
        http.method = text(n, 7);
    }
    let sent = batch.traces[0].spans.clone();
    publish(&s.bus, &mut [batch]).await;
    wait_until("60 points", || {
        dataway_points(&receiver.records()).len() >= 60
    })
    .await;
    wait_drained(&s.bus, "exporter-dataway").await;

    let points = dataway_points(&receiver.records());
    let by_id: BTreeMap<String, &Value> = points
        .iter()
        .map(|p| (p["fields"]["span_id"].as_str().unwrap().to_owned(), p))
        .collect();
    let field = |t: &str| t.replace(['\n', '\t'], " ");
    let tag = |t: &str| field(t).replace('\\', "/");
    for linked in &sent {
        let span = linked.span.as_ref().unwrap();
        let point = by_id[&format!("{:016x}", span.span_id)];
        let http = span.http.as_ref().unwrap();
        // An empty tag is left out.
        let tag_or_none = |t: &str| (!t.is_empty()).then(|| Value::from(tag(t)));
        assert_eq!(
            point["tags"].get("service").cloned(),
            tag_or_none(&span.service),
            "{point}"
        );
        assert_eq!(point["tags"].get("host").cloned(), tag_or_none(&span.host));
        assert_eq!(point["fields"]["process_name"], field(&span.comm));
        assert_eq!(point["fields"]["err_msg"], field(&span.error));
        assert_eq!(point["fields"]["http_route"], field(&http.path));
        assert_eq!(point["fields"]["http_host"], field(&http.host));
        assert_eq!(point["fields"]["http_method"], field(&http.method));
    }
    exporter.stop().await;
}

// ---------------------------------------------------------------- failures

#[derive(Clone, Copy, PartialEq)]
enum Sink {
    Grpc,
    Http,
    Dataway,
}

impl Sink {
    fn start_receiver(self, args: &[&str], port: u16, dir: &Path) -> Receiver {
        match self {
            Sink::Grpc => {
                let mut all = vec!["--protocol", "grpc"];
                all.extend_from_slice(args);
                Receiver::start("otlp_receiver.py", &all, port, dir)
            }
            Sink::Http => {
                let mut all = vec!["--protocol", "http"];
                all.extend_from_slice(args);
                Receiver::start("otlp_receiver.py", &all, port, dir)
            }
            Sink::Dataway => Receiver::start("dataway_receiver.py", args, port, dir),
        }
    }

    fn configure(self, settings: &mut Settings, port: u16) {
        match self {
            Sink::Grpc => settings.otlp = otlp(OtlpProtocol::Grpc, port, false),
            Sink::Http => settings.otlp = otlp(OtlpProtocol::HttpProtobuf, port, false),
            Sink::Dataway => settings.dataway = dataway(port),
        }
    }

    fn label(self) -> &'static str {
        if self == Sink::Dataway {
            "dataway"
        } else {
            "otlp"
        }
    }

    fn received_ids(self, receiver: &Receiver) -> Vec<String> {
        let records = receiver.records();
        let mut ids: Vec<String> = if self == Sink::Dataway {
            dataway_points(&records)
                .iter()
                .map(|p| p["fields"]["span_id"].as_str().unwrap().to_owned())
                .collect()
        } else {
            otlp_spans(&records)
                .iter()
                .map(|(s, _)| s["span_id"].as_str().unwrap().to_owned())
                .collect()
        };
        ids.sort();
        ids
    }
}

/// A backend that answers `code` `times` times, then 200, receives every span
/// exactly once.
async fn busy_backend_gets_every_span_once(sink: Sink, code: u16, times: usize) {
    let s = setup().await;
    let fail = format!("{code}:{times}");
    let receiver = sink.start_receiver(&["--fail", &fail], 0, s.dir.path());
    let mut settings = settings(&s.nats);
    sink.configure(&mut settings, receiver.port);
    // Small requests, so the refusals hit several of them.
    settings.batch_max_spans = 10;
    let exporter = Exporter::start(&settings).await;
    let mut batches: Vec<TraceBatch> = (0..4).map(|b| volume_batch(b, 3, 5)).collect();
    let want = span_ids(&batches);
    publish(&s.bus, &mut batches).await;
    assert_received_exactly(sink, &receiver, &s.bus, &want, "every span").await;
    let refused = receiver
        .records()
        .iter()
        .filter(|r| r["accepted"] == false)
        .count();
    assert_eq!(refused, times);
    let text = exporter.metrics().await;
    assert_eq!(
        metric(&text, "espan_exporter_retries_total", sink.label()),
        times as f64
    );
    assert_eq!(
        metric(&text, "espan_exporter_spans_exported_total", sink.label()),
        want.len() as f64
    );
    exporter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_three_times_then_ok_delivers_each_span_once() {
    busy_backend_gets_every_span_once(Sink::Grpc, 503, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_503_three_times_then_ok_delivers_each_span_once() {
    busy_backend_gets_every_span_once(Sink::Http, 503, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataway_503_three_times_then_ok_delivers_each_span_once() {
    busy_backend_gets_every_span_once(Sink::Dataway, 503, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_429_twice_then_ok_delivers_each_span_once() {
    busy_backend_gets_every_span_once(Sink::Http, 429, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_resource_exhausted_twice_then_ok_delivers_each_span_once() {
    busy_backend_gets_every_span_once(Sink::Grpc, 429, 2).await;
}

/// How long the backend stays down: the minute. The consumer's
/// ack_wait is 3 s and the longest retry delay 0.5 s, so JetStream redelivers
/// every message many times over and each request is retried over a hundred
/// times while the backend is away.
const OUTAGE: Duration = Duration::from_secs(60);

/// A backend that is down for a while, then up, loses nothing and receives
/// nothing twice.
async fn outage_loses_nothing(sink: Sink) {
    let s = setup().await;
    let port = free_port().unwrap();
    let mut receiver = sink.start_receiver(&[], port, s.dir.path());
    let mut settings = settings(&s.nats);
    sink.configure(&mut settings, port);
    settings.ack_wait = Duration::from_secs(3);
    settings.batch_max_spans = 20;
    let exporter = Exporter::start(&settings).await;

    let mut first = vec![volume_batch(0, 2, 5)];
    publish(&s.bus, &mut first).await;
    wait_until("the first batch", || {
        sink.received_ids(&receiver).len() >= 10
    })
    .await;
    wait_drained(&s.bus, &format!("exporter-{}", sink.label())).await;

    receiver.kill();
    let mut during: Vec<TraceBatch> = (1..6).map(|b| volume_batch(b, 4, 5)).collect();
    publish(&s.bus, &mut during).await;
    tokio::time::sleep(OUTAGE).await;
    let text = exporter.metrics().await;
    assert!(
        metric(&text, "espan_exporter_retries_total", sink.label()) >= 100.0,
        "the exporter kept retrying"
    );
    assert_eq!(
        metric(&text, "espan_exporter_spans_exported_total", sink.label()),
        10.0,
        "nothing counted as exported while the backend was down"
    );
    receiver.restart_healthy();

    let mut all = first.clone();
    all.extend(during);
    let want = span_ids(&all);
    assert_received_exactly(
        sink,
        &receiver,
        &s.bus,
        &want,
        "every span after the outage",
    )
    .await;
    exporter.stop().await;
}

/// Every sink at once, so the suite waits for the minute only once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_down_for_a_minute_lose_nothing() {
    tokio::join!(
        outage_loses_nothing(Sink::Grpc),
        outage_loses_nothing(Sink::Http),
        outage_loses_nothing(Sink::Dataway),
    );
}

/// A backend that refuses the data for good (400 / INVALID_ARGUMENT): the spans
/// go to the dead-letter stream with the reason, and the message is acked.
async fn refused_data_is_dead_lettered(sink: Sink) {
    let s = setup().await;
    let receiver = sink.start_receiver(&["--fail", "400:-1"], 0, s.dir.path());
    let mut settings = settings(&s.nats);
    sink.configure(&mut settings, receiver.port);
    let exporter = Exporter::start(&settings).await;
    let mut batches = vec![volume_batch(0, 2, 3)];
    let want = span_ids(&batches);
    publish(&s.bus, &mut batches).await;
    let durable = format!("exporter-{}", sink.label());
    wait_drained(&s.bus, &durable).await;

    let mut dead_stream = s
        .bus
        .jetstream()
        .get_stream(bus::DEADLETTER_STREAM)
        .await
        .unwrap();
    let dead = dead_stream
        .get_last_raw_message_by_subject(&bus::deadletter_subject(bus::TRACES_STREAM, &durable))
        .await
        .expect("a dead letter");
    let reason = dead
        .headers
        .get(bus::DEAD_REASON_HEADER)
        .expect("a reason")
        .to_string();
    let expected = if sink == Sink::Grpc {
        "InvalidArgument"
    } else {
        "400"
    };
    assert!(
        reason.contains(expected),
        "reason names the answer: {reason}"
    );
    assert!(
        !reason.contains("tkn_test"),
        "the Dataway token leaked into the reason: {reason}"
    );
    assert_eq!(
        dead.headers.get(bus::DEAD_SUBJECT_HEADER).unwrap().as_str(),
        "trace.linker-1"
    );
    let batch = wire::decode_trace_batch(&dead.payload).unwrap().batch;
    assert_eq!(
        span_ids(&[batch]),
        want,
        "the dead letter holds the refused spans"
    );
    assert_eq!(dead_stream.info().await.unwrap().state.messages, 1);
    let text = exporter.metrics().await;
    assert_eq!(
        metric(&text, "espan_exporter_spans_rejected_total", sink.label()),
        want.len() as f64
    );
    assert_eq!(
        metric(&text, "espan_exporter_spans_exported_total", sink.label()),
        0.0
    );
    exporter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_400_produces_a_dead_letter() {
    refused_data_is_dead_lettered(Sink::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_grpc_invalid_argument_produces_a_dead_letter() {
    refused_data_is_dead_lettered(Sink::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataway_400_produces_a_dead_letter() {
    refused_data_is_dead_lettered(Sink::Dataway).await;
}

/// Messages on TRACES that are not trace batches stop nothing: each is
/// dead-lettered with the reason and counted; spans that fail validation are
/// counted and left out; the valid spans around them are exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_counted_and_the_rest_exported() {
    use prost::Message;

    let s = setup().await;
    let receiver = Sink::Http.start_receiver(&[], 0, s.dir.path());
    let mut settings = settings(&s.nats);
    Sink::Http.configure(&mut settings, receiver.port);
    let exporter = Exporter::start(&settings).await;

    let good = volume_batch(1, 2, 3);
    let mut mixed = volume_batch(2, 2, 3);
    mixed.traces[0].spans[1].span.as_mut().unwrap().span_id = 0;
    mixed.traces[1].spans[0].span.as_mut().unwrap().kind = 42;
    mixed.traces[1].spans[2].span = None;
    let mut want_batches = vec![good.clone(), mixed.clone()];
    for batch in &mut want_batches {
        for trace in &mut batch.traces {
            trace.spans.retain(|l| {
                l.span
                    .as_ref()
                    .is_some_and(|s| wire::validate_span(s).is_ok())
            });
        }
    }
    let want = span_ids(&want_batches);
    let future_version = TraceBatch {
        version: wire::WIRE_VERSION + 1,
        ..volume_batch(3, 1, 1)
    }
    .encode_to_vec();
    let truncated = {
        let bytes = wire::encode_trace_batch(&mut volume_batch(4, 2, 3));
        bytes.slice(..bytes.len() - 5).to_vec()
    };
    let garbage = vec![0xff_u8; 64];
    let bodies: Vec<Vec<u8>> = vec![
        garbage,
        wire::encode_trace_batch(&mut good.clone()).to_vec(),
        truncated,
        wire::encode_trace_batch(&mut mixed.clone()).to_vec(),
        future_version,
    ];
    for body in bodies {
        s.bus
            .jetstream()
            .publish(bus::trace_subject("linker-1"), body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    assert_received_exactly(Sink::Http, &receiver, &s.bus, &want, "the valid spans").await;

    let text = exporter.metrics().await;
    assert_eq!(
        metric(&text, "espan_exporter_messages_dead_lettered_total", "otlp"),
        3.0
    );
    assert_eq!(
        metric(&text, "espan_exporter_spans_invalid_total", "otlp"),
        3.0
    );
    assert_eq!(
        metric(&text, "espan_exporter_spans_exported_total", "otlp"),
        want.len() as f64
    );
    let dead_stream = s
        .bus
        .jetstream()
        .get_stream(bus::DEADLETTER_STREAM)
        .await
        .unwrap();
    let mut dead_stream = dead_stream;
    assert_eq!(dead_stream.info().await.unwrap().state.messages, 3);
    let last = dead_stream
        .get_last_raw_message_by_subject(&bus::deadletter_subject(
            bus::TRACES_STREAM,
            "exporter-otlp",
        ))
        .await
        .unwrap();
    let reason = last
        .headers
        .get(bus::DEAD_REASON_HEADER)
        .unwrap()
        .to_string();
    assert!(reason.starts_with("undecodable"), "{reason}");
    exporter.stop().await;
}

/// Requests are cut by size and by time: full ones leave at once, the rest
/// waits up to batch_timeout for more spans, so small messages arriving
/// together share a request instead of costing one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_leave_when_full_or_after_the_batch_timeout() {
    let s = setup().await;
    let receiver = Sink::Http.start_receiver(&[], 0, s.dir.path());
    let mut settings = settings(&s.nats);
    Sink::Http.configure(&mut settings, receiver.port);
    settings.batch_max_spans = 4;
    settings.batch_timeout = Duration::from_secs(3);
    let exporter = Exporter::start(&settings).await;
    // Five messages of two spans: two full requests of four, then two spans
    // that wait for the timeout.
    let mut batches: Vec<TraceBatch> = (0..5).map(|b| volume_batch(b, 1, 2)).collect();
    let want = span_ids(&batches);
    publish(&s.bus, &mut batches).await;
    assert_received_exactly(Sink::Http, &receiver, &s.bus, &want, "every span").await;

    let mut requests: Vec<(f64, usize)> = receiver
        .records()
        .iter()
        .map(|r| {
            let spans = otlp_spans(std::slice::from_ref(r)).len();
            (r["at"].as_f64().unwrap(), spans)
        })
        .collect();
    requests.sort_by(|a, b| a.0.total_cmp(&b.0));
    let sizes: Vec<usize> = requests.iter().map(|r| r.1).collect();
    assert_eq!(sizes, [4, 4, 2], "by size, then the rest by time");
    let waited = requests[2].0 - requests[1].0;
    assert!(
        waited > 2.0,
        "the partial request waited for the timeout ({waited:.2} s after the full ones)"
    );
    exporter.stop().await;
}

/// A backend that takes requests and never answers: at shutdown the requests
/// already sent end at their timeout, the ones still waiting for a slot are
/// not sent, and every message is left for the next start, which sends it and
/// counts it as redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_silent_backend_takes_one_try_and_the_next_start_resends() {
    let s = setup().await;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming() {
            held.push(stream);
        }
    });
    let mut settings = settings(&s.nats);
    Sink::Http.configure(&mut settings, port);
    settings.batch_max_spans = 5;
    // What was held comes back soon after the stop.
    settings.ack_wait = Duration::from_secs(3);
    let timeout = settings.otlp.as_ref().unwrap().timeout;
    let exporter = Exporter::start(&settings).await;
    // Ten requests of five spans; four in flight at once.
    let mut batches: Vec<TraceBatch> = (0..10).map(|b| volume_batch(b, 1, 5)).collect();
    publish(&s.bus, &mut batches).await;
    for _ in 0..200 {
        let text = exporter.metrics().await;
        if metric(&text, "espan_exporter_spans_in_flight", "otlp") >= 20.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopping = std::time::Instant::now();
    exporter.stop().await;
    let took = stopping.elapsed();
    assert!(
        took < timeout + Duration::from_secs(3),
        "stopped in {took:?}; one try takes at most {timeout:?}"
    );
    let stream = s
        .bus
        .jetstream()
        .get_stream(bus::TRACES_STREAM)
        .await
        .unwrap();
    let info = stream.consumer_info("exporter-otlp").await.unwrap();
    assert_eq!(
        info.ack_floor.stream_sequence, 0,
        "nothing was acked: every message comes back"
    );

    // The next exporter sends them all, and counts them as redelivered: the
    // bound on what a backend may have received twice.
    let receiver = Sink::Http.start_receiver(&[], 0, s.dir.path());
    Sink::Http.configure(&mut settings, receiver.port);
    let next = Exporter::start(&settings).await;
    let want = span_ids(&batches);
    assert_received_exactly(
        Sink::Http,
        &receiver,
        &s.bus,
        &want,
        "every span from the next exporter",
    )
    .await;
    let text = next.metrics().await;
    assert_eq!(
        metric(&text, "espan_exporter_spans_redelivered_total", "otlp"),
        want.len() as f64,
        "every span came in a redelivered message"
    );
    next.stop().await;
}

/// Two sinks, one dead: the other still gets everything (one consumer each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_does_not_hold_back_the_other_sink() {
    let s = setup().await;
    let dataway_rx = Sink::Dataway.start_receiver(&[], 0, s.dir.path());
    let mut settings = settings(&s.nats);
    settings.dataway = dataway(dataway_rx.port);
    // Nothing listens on this port: the OTLP sink retries the whole time.
    settings.otlp = otlp(OtlpProtocol::HttpProtobuf, free_port().unwrap(), false);
    let exporter = Exporter::start(&settings).await;
    let mut batches: Vec<TraceBatch> = (0..3).map(|b| volume_batch(b, 2, 4)).collect();
    let want = span_ids(&batches);
    publish(&s.bus, &mut batches).await;
    wait_until("every span at Dataway", || {
        Sink::Dataway.received_ids(&dataway_rx).len() >= want.len()
    })
    .await;
    wait_drained(&s.bus, "exporter-dataway").await;
    assert_eq!(Sink::Dataway.received_ids(&dataway_rx), want);
    let stream = s
        .bus
        .jetstream()
        .get_stream(bus::TRACES_STREAM)
        .await
        .unwrap();
    let otlp_info = stream.consumer_info("exporter-otlp").await.unwrap();
    assert!(
        otlp_info.num_ack_pending as u64 + otlp_info.num_pending > 0,
        "the OTLP consumer still holds its messages"
    );
    // The backlog shows on /metrics (polled every 2 s, so wait for it).
    let mut depth = 0.0;
    for _ in 0..200 {
        depth = metric(
            &exporter.metrics().await,
            "espan_exporter_queue_depth",
            "otlp",
        );
        if depth > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(depth, 3.0, "the three messages wait for the OTLP sink");
    // The drained Dataway consumer's gauge falls to 0 at its next poll.
    let mut dataway_depth = f64::NAN;
    for _ in 0..200 {
        dataway_depth = metric(
            &exporter.metrics().await,
            "espan_exporter_queue_depth",
            "dataway",
        );
        if dataway_depth == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dataway_depth, 0.0);
    exporter.stop().await;
}

// ---------------------------------------------------------------- the binary

/// The `espan-exporter` binary, configured only through the OTel variables
/// users know: the `…_TRACES_…` endpoint wins over the generic one (which here
/// points nowhere), gRPC is chosen by `OTEL_EXPORTER_OTLP_PROTOCOL`, headers come
/// from `OTEL_EXPORTER_OTLP_HEADERS`; SIGTERM stops it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reads_the_otel_variables_and_stops_on_sigterm() {
    let s = setup().await;
    let receiver = Receiver::start("otlp_receiver.py", &["--protocol", "grpc"], 0, s.dir.path());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_espan-exporter"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ESPAN_NATS_URL", s.nats.url())
        .env("ESPAN_EXPORTER_METRICS_ADDR", "127.0.0.1:0")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", free_port().unwrap()),
        )
        .env(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("http://127.0.0.1:{}", receiver.port),
        )
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_EXPORTER_OTLP_HEADERS", "x-test=from%20env")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut batches: Vec<TraceBatch> = (0..2).map(|b| volume_batch(b, 2, 3)).collect();
    let want = span_ids(&batches);
    publish(&s.bus, &mut batches).await;
    assert_received_exactly(
        Sink::Grpc,
        &receiver,
        &s.bus,
        &want,
        "every span via the binary",
    )
    .await;
    assert_eq!(receiver.records()[0]["headers"]["x-test"], "from env");

    let pid = child.id().unwrap() as i32;
    // SAFETY: kill(2) on the child this test started and has not reaped.
    assert_eq!(unsafe { kill(pid, 15) }, 0, "SIGTERM sent");
    let status = child.wait().await.unwrap();
    assert!(status.success(), "a clean exit on SIGTERM: {status}");
}

/// A bad value stops the binary at start-up with an error naming the variable.
#[tokio::test]
async fn the_binary_names_a_bad_variable() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_espan-exporter"))
        .env_clear()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "udp")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && stderr.contains("udp"),
        "{stderr}"
    );
}

/// `espan-exporter config` with only the given environment.
async fn config_with(env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_espan-exporter"));
    command.env_clear().arg("config");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().await.unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Every OTLP variable in both forms: the `…_TRACES_…` one wins, the generic
/// one applies alone; secrets do not show.
#[tokio::test]
async fn the_traces_variables_win_over_the_generic_ones() {
    let generic = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=generic"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "5000"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
    ];
    let (ok, out, err) = config_with(&generic).await;
    assert!(ok, "{err}");
    for line in [
        "otlp_endpoint = \"http://collector:4318/v1/traces\"",
        "otlp_protocol = \"http/protobuf\"",
        "otlp_headers = \"api-key=<hidden>\"",
        "otlp_timeout = \"5s\"",
        "otlp_compression = \"none\"",
    ] {
        assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
    }
    assert!(!out.contains("generic"), "a header value leaked:\n{out}");

    let mut both = generic.to_vec();
    both.extend([
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://tempo:4317"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-scope-orgid=t1"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2500"),
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
        ("ENV_DATAWAY", "http://dataway:9528?token=tkn_secret"),
    ]);
    let (ok, out, err) = config_with(&both).await;
    assert!(ok, "{err}");
    for line in [
        "otlp_endpoint = \"http://tempo:4317\"",
        "otlp_protocol = \"grpc\"",
        "otlp_headers = \"x-scope-orgid=<hidden>\"",
        "otlp_timeout = \"2.5s\"",
        "otlp_compression = \"gzip\"",
        "dataway = \"http://dataway:9528/v1/write/tracing?<redacted>\"",
    ] {
        assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
    }
    assert!(!out.contains("tkn_secret"), "the token leaked:\n{out}");

    // A signal-specific HTTP endpoint is used as given.
    let (ok, out, err) = config_with(&[(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "http://collector:4318/custom/path",
    )])
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("otlp_endpoint = \"http://collector:4318/custom/path\""),
        "{out}"
    );
}

/// Bad values stop the binary with an error naming the variable, flag or
/// file key, and the value.
#[tokio::test]
async fn bad_values_are_named_with_where_they_came_from() {
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
    for (env, want) in [
        (
            vec![endpoint, ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon")],
            ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon"],
        ),
        (
            vec![endpoint, ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")],
            ["OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"],
        ),
        (
            vec![
                endpoint,
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "no-equals-sign"),
            ],
            ["OTEL_EXPORTER_OTLP_TRACES_HEADERS", "no-equals-sign"],
        ),
        (
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
            ["OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"],
        ),
        (
            vec![("ENV_DATAWAY", "http://dataway:9528")],
            ["ENV_DATAWAY", "token"],
        ),
        (
            vec![endpoint, ("ESPAN_EXPORTER_BATCH_TIMEOUT", "-1s")],
            ["ESPAN_EXPORTER_BATCH_TIMEOUT", "-1s"],
        ),
    ] {
        let (ok, _, err) = config_with(&env).await;
        assert!(!ok, "{env:?} was accepted");
        for part in want {
            assert!(err.contains(part), "{part} not in: {err}");
        }
    }

    let dir = tempfile::Builder::new()
        .prefix("espan-exporter-config")
        .tempdir()
        .unwrap();
    let file = dir.path().join("exporter.toml");
    std::fs::write(
        &file,
        "[[inputs.espan_exporter]]\notlp_endpoint = \"http://127.0.0.1:4317\"\nconcurrency = \"lots\"\n",
    )
    .unwrap();
    let (ok, _, err) = config_with(&[("ESPAN_EXPORTER_CONFIG", file.to_str().unwrap())]).await;
    assert!(!ok);
    assert!(
        err.contains("concurrency") && err.contains("lots") && err.contains("exporter.toml"),
        "{err}"
    );
}

// ---------------------------------------------------------------- TLS

fn pem(path: &Path) -> espan::config::PemFile {
    use espan::config::Setting;
    espan::config::PemFile::from_text(path.to_str().unwrap()).unwrap()
}

/// An OTLP receiver that speaks TLS with `certs`' server certificate and
/// demands a client certificate signed by their CA.
fn tls_receiver(sink: Sink, certs: &TestCerts, dir: &Path) -> Receiver {
    let args = [
        "--tls-cert",
        certs.server_cert.to_str().unwrap(),
        "--tls-key",
        certs.server_key.to_str().unwrap(),
        "--client-ca",
        certs.ca.to_str().unwrap(),
    ];
    sink.start_receiver(&args, 0, dir)
}

/// OTLP over TLS to a receiver with a CA of the test's own and mutual TLS:
/// with the CA and the client certificate every span arrives; without the
/// client certificate, or trusting another CA, none does (the exporter keeps
/// retrying, and the receiver records nothing).
async fn otlp_over_mutual_tls(sink: Sink) {
    let certs = TestCerts::generate();
    let strangers = TestCerts::generate();
    let s = setup().await;
    let receiver = tls_receiver(sink, &certs, s.dir.path());
    let configure = |ca: &Path, client: Option<(&Path, &Path)>| {
        let mut settings = settings(&s.nats);
        sink.configure(&mut settings, receiver.port);
        let otlp = settings.otlp.as_mut().unwrap();
        otlp.endpoint = otlp.endpoint.replace("http://", "https://");
        otlp.tls = OtlpTls {
            ca: Some(pem(ca)),
            client: client.map(|(cert, key)| (pem(cert), pem(key))),
        };
        settings
    };

    for (i, (mut settings, what)) in [
        (configure(&certs.ca, None), "no client certificate"),
        (
            configure(&strangers.ca, Some((&certs.client_cert, &certs.client_key))),
            "another CA",
        ),
        (
            configure(
                &certs.ca,
                Some((&strangers.client_cert, &strangers.client_key)),
            ),
            "a client certificate of another CA",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        // A consumer of its own: what the last one held unacked would come
        // back to the next only after its ack wait.
        settings.durable_prefix = format!("refused-{i}");
        let exporter = Exporter::start(&settings).await;
        publish(&s.bus, &mut [volume_batch(0, 1, 2)]).await;
        for _ in 0..400 {
            let text = exporter.metrics().await;
            if metric(&text, "espan_exporter_retries_total", "otlp") >= 2.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let text = exporter.metrics().await;
        assert!(
            metric(&text, "espan_exporter_retries_total", "otlp") >= 2.0,
            "{what}: the exporter keeps trying\n{text}"
        );
        assert!(receiver.records().is_empty(), "{what}: nothing arrives");
        exporter.stop().await;
    }

    let settings = configure(&certs.ca, Some((&certs.client_cert, &certs.client_key)));
    let exporter = Exporter::start(&settings).await;
    let mut batches = vec![volume_batch(1, 2, 3)];
    let mut want = span_ids(&batches);
    want.extend(span_ids(&[volume_batch(0, 1, 2)]));
    want.sort();
    publish(&s.bus, &mut batches).await;
    assert_received_exactly(sink, &receiver, &s.bus, &want, "every span over mutual TLS").await;
    exporter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_grpc_over_mutual_tls_with_a_ca_of_its_own() {
    otlp_over_mutual_tls(Sink::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_over_mutual_tls_with_a_ca_of_its_own() {
    otlp_over_mutual_tls(Sink::Http).await;
}

/// The binary takes the OTel TLS variables in both forms (the `…_TRACES_…`
/// one wins) and delivers over gRPC with TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reads_the_otel_certificate_variables() {
    let certs = TestCerts::generate();
    let strangers = TestCerts::generate();
    let s = setup().await;
    let receiver = tls_receiver(Sink::Grpc, &certs, s.dir.path());
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let env = [
        ("ESPAN_NATS_URL", s.nats.url()),
        ("ESPAN_EXPORTER_METRICS_ADDR", "127.0.0.1:0".into()),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("https://127.0.0.1:{}", receiver.port),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
        // The generic CA is a stranger's; the TRACES one wins.
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", path(&strangers.ca)),
        ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", path(&certs.ca)),
        (
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            path(&certs.client_cert),
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
            path(&certs.client_key),
        ),
    ];
    let (ok, out, err) = config_with(
        &env.iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<Vec<_>>(),
    )
    .await;
    assert!(ok, "{err}");
    for line in [
        format!("otlp_certificate = {:?}", certs.ca),
        format!("otlp_client_certificate = {:?}", certs.client_cert),
        format!("otlp_client_key = {:?}", certs.client_key),
    ] {
        assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
    }

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_espan-exporter"))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut batches = vec![volume_batch(0, 2, 3)];
    let want = span_ids(&batches);
    publish(&s.bus, &mut batches).await;
    assert_received_exactly(Sink::Grpc, &receiver, &s.bus, &want, "every span via TLS").await;
    child.kill().await.unwrap();

    // A client certificate without its key is a configuration error.
    let (ok, _, err) = config_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:4318"),
        (
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            &path(&certs.client_cert),
        ),
    ])
    .await;
    assert!(!ok);
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE") && err.contains("needs its key"),
        "{err}"
    );
    let (ok, _, err) = config_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:4318"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "/nonexistent/ca.pem",
        ),
    ])
    .await;
    assert!(!ok);
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE") && err.contains("cannot read it"),
        "{err}"
    );
}

/// The binary on a NATS that wants TLS with a client certificate and a
/// password, configured by the shared variables: it connects, consumes and
/// delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reads_traces_from_nats_over_mutual_tls_with_a_password() {
    use espan::nats::{NatsAuth, NatsConnect, NatsTls};
    let certs = TestCerts::generate();
    let nats = TestNats::start_with_config(&format!(
        "{}authorization {{ users: [ {{ user: exporter, password: \"pw_exporter\" }} ] }}\n",
        certs.nats_tls_block(true)
    ))
    .unwrap();
    let url = format!("nats://localhost:{}", nats.port());
    let secured = NatsConnect {
        url: url.clone(),
        auth: NatsAuth::UserPassword {
            user: "exporter".into(),
            password: "pw_exporter".into(),
        },
        tls: NatsTls {
            required: true,
            ca: Some(certs.ca.clone()),
            client: Some((certs.client_cert.clone(), certs.client_key.clone())),
        },
    };
    let bus = Bus::connect(&secured, "test", Duration::from_secs(10))
        .await
        .unwrap();
    bus.ensure_streams(&bus::StreamLimits {
        max_bytes: 64 << 20,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("espan-exporter-nats-tls")
        .tempdir()
        .unwrap();
    let receiver = Receiver::start("otlp_receiver.py", &["--protocol", "http"], 0, dir.path());
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_espan-exporter"))
        .env_clear()
        .env("ESPAN_NATS_URL", &url)
        .env("ESPAN_NATS_USER", "exporter")
        .env("ESPAN_NATS_PASSWORD", "pw_exporter")
        .env("ESPAN_NATS_TLS_CA", path(&certs.ca))
        .env("ESPAN_NATS_TLS_CERT", path(&certs.client_cert))
        .env("ESPAN_NATS_TLS_KEY", path(&certs.client_key))
        .env("ESPAN_EXPORTER_METRICS_ADDR", "127.0.0.1:0")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", receiver.port),
        )
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut batches = vec![volume_batch(0, 2, 3)];
    let want = span_ids(&batches);
    publish(&bus, &mut batches).await;
    assert_received_exactly(
        Sink::Http,
        &receiver,
        &bus,
        &want,
        "every span, NATS over TLS",
    )
    .await;
    child.kill().await.unwrap();
}

// ---------------------------------------------------------------- secrets

/// Secrets planted in every place the exporter takes one.
const PLANTED: [&str; 6] = [
    "pw_PLANTED_nats",
    "tkn_PLANTED_dataway",
    "otlp_PLANTED_password",
    "q_PLANTED_query",
    "hdr_PLANTED_value",
    "pw_PLANTED_wrong",
];

/// Runs `espan-exporter` with `env` until `until` holds for the lines it
/// logged so far (or 60 s pass), then stops it (SIGTERM, or SIGKILL when
/// `kill_hard`), and returns every line it wrote to stderr.
async fn exporter_log(
    env: &[(&str, String)],
    until: impl Fn(&[String]) -> bool,
    kill_hard: bool,
) -> Vec<String> {
    use tokio::io::AsyncBufReadExt;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_espan-exporter"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ESPAN_EXPORTER_METRICS_ADDR", "127.0.0.1:0")
        // Every level, the libraries' too: a secret must not show at any.
        .env("RUST_LOG", "trace")
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let stderr = child.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut stderr = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = stderr.next_line().await {
                lines.lock().unwrap().push(line);
            }
        })
    };
    for _ in 0..1200 {
        if until(&lines.lock().unwrap()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id().unwrap() as i32;
    // SAFETY: kill(2) on the child this test started and has not reaped.
    unsafe { kill(pid, if kill_hard { 9 } else { 15 }) };
    let _ = child.wait().await;
    reader.await.unwrap();
    lines.lock().unwrap().clone()
}

fn assert_no_secret(what: &str, texts: &[String]) {
    for text in texts {
        for secret in PLANTED {
            assert!(!text.contains(secret), "{secret} leaked in {what}: {text}");
        }
    }
}

/// The exporter with a secret in every setting that takes one, against a
/// NATS that wants a password, a Dataway that refuses every request quoting
/// it (token and all) and an OTLP endpoint that is not there: not one log
/// line at any level, dead-letter header, `config` line or `--help` line holds
/// a secret; nor do the lines of a start with a wrong NATS password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_a_dead_letter_or_the_help() {
    let nats = TestNats::start_with_config(
        "authorization { users: [ { user: exporter, password: \"pw_PLANTED_nats\" } ] }\n",
    )
    .unwrap();
    let nats_url = format!("nats://exporter:pw_PLANTED_nats@127.0.0.1:{}", nats.port());
    let bus = Bus::connect(&nats_url, "test", Duration::from_secs(10))
        .await
        .unwrap();
    bus.ensure_streams(&bus::StreamLimits {
        max_bytes: 64 << 20,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("espan-exporter-secrets")
        .tempdir()
        .unwrap();
    let dataway = Receiver::start(
        "dataway_receiver.py",
        &["--fail", "400:-1", "--echo"],
        0,
        dir.path(),
    );
    let env = [
        ("ESPAN_NATS_URL", nats_url.clone()),
        (
            "ENV_DATAWAY",
            format!(
                "http://127.0.0.1:{}?token=tkn_PLANTED_dataway",
                dataway.port
            ),
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!(
                "http://otlp:otlp_PLANTED_password@127.0.0.1:{}/v1/traces?key=q_PLANTED_query",
                free_port().unwrap()
            ),
        ),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "api-key=hdr_PLANTED_value".to_owned(),
        ),
    ];
    publish(&bus, &mut [volume_batch(0, 2, 3)]).await;
    let lines = exporter_log(
        &env,
        |lines| {
            lines.iter().any(|l| l.contains("dead-lettered"))
                && lines.iter().any(|l| l.contains("export failed; retrying"))
        },
        false,
    )
    .await;
    assert!(
        lines.iter().any(|l| l.contains("dead-lettered")),
        "the Dataway refusal was dead-lettered:\n{}",
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("export failed; retrying") && l.contains("<redacted>")),
        "the OTLP failures are logged, their URL redacted:\n{}",
        lines.join("\n")
    );
    assert_no_secret("the exporter's log", &lines);

    let mut dead_stream = bus
        .jetstream()
        .get_stream(bus::DEADLETTER_STREAM)
        .await
        .unwrap();
    let last = dead_stream.info().await.unwrap().state.last_sequence;
    assert!(last > 0, "a dead letter was stored");
    for seq in 1..=last {
        let Ok(letter) = dead_stream.get_raw_message(seq).await else {
            continue;
        };
        let headers: Vec<String> = letter
            .headers
            .iter()
            .flat_map(|(name, values)| values.iter().map(move |v| format!("{name}: {v}")))
            .collect();
        assert!(
            headers
                .iter()
                .any(|h| h.contains(bus::DEAD_REASON_HEADER) && h.contains("400")),
            "{headers:?}"
        );
        assert_no_secret("a dead letter's headers", &headers);
    }

    // A wrong password: NATS refuses, and the log says so without it.
    let mut wrong = env.clone();
    wrong[0].1 = format!("nats://exporter:pw_PLANTED_wrong@127.0.0.1:{}", nats.port());
    let lines = exporter_log(
        &wrong,
        |lines| {
            lines
                .iter()
                .any(|l| l.to_lowercase().contains("authorization"))
        },
        true,
    )
    .await;
    assert!(
        lines
            .iter()
            .any(|l| l.to_lowercase().contains("authorization")),
        "the refusal is logged:\n{}",
        lines.join("\n")
    );
    assert_no_secret("the log of a refused start", &lines);

    // `config` and `--help` with the secrets in the environment.
    let mut secrets = env.to_vec();
    secrets[0].1 = format!("nats://127.0.0.1:{}", nats.port());
    secrets.extend([
        ("ESPAN_NATS_USER", "exporter".to_owned()),
        ("ESPAN_NATS_PASSWORD", "pw_PLANTED_nats".to_owned()),
    ]);
    for args in [&["config"][..], &["--help"][..]] {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_espan-exporter"));
        command.env_clear().args(args);
        for (key, value) in &secrets {
            command.env(key, value);
        }
        let output = command.output().await.unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        assert_no_secret(&format!("espan-exporter {args:?}"), &lines);
        assert_no_secret(
            &format!("espan-exporter {args:?} stderr"),
            &[String::from_utf8_lossy(&output.stderr).into_owned()],
        );
    }
}

unsafe extern "C" {
    fn kill(pid: i32, signal: i32) -> i32;
}

// ---------------------------------------------------------------- parts, dead letters, sinks

/// A 2 MiB trace the linker cut into parts (one per TRACES message, each
/// under max_payload, one trace id) reaches the backend whole: every span
/// once, all under that id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_in_parts_arrives_whole_under_one_id() {
    let s = setup().await;
    let receiver = Sink::Http.start_receiver(&[], 0, s.dir.path());
    let mut settings = settings(&s.nats);
    Sink::Http.configure(&mut settings, receiver.port);
    let exporter = Exporter::start(&settings).await;
    let mut parts: Vec<TraceBatch> = (0..5)
        .map(|part| {
            let mut batch = volume_batch(part, 1, 1000);
            let trace = &mut batch.traces[0];
            trace.trace_id_high = 0x77;
            trace.trace_id_low = 0x88;
            for linked in &mut trace.spans {
                let span = linked.span.as_mut().unwrap();
                span.http.as_mut().unwrap().path = format!("/fan-out/{}", "x".repeat(300));
            }
            batch
        })
        .collect();
    let sizes: Vec<usize> = parts
        .iter_mut()
        .map(|p| wire::encode_trace_batch(p).len())
        .collect();
    assert!(sizes.iter().sum::<usize>() > 2 << 20, "{sizes:?}");
    assert!(sizes.iter().all(|&n| n < 1 << 20), "{sizes:?}");
    let want = span_ids(&parts);
    publish(&s.bus, &mut parts).await;
    assert_received_exactly(Sink::Http, &receiver, &s.bus, &want, "every part").await;
    let trace_ids: std::collections::BTreeSet<String> = otlp_spans(&receiver.records())
        .iter()
        .map(|(span, _)| span["trace_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        trace_ids.into_iter().collect::<Vec<_>>(),
        ["00000000000000770000000000000088"]
    );
    exporter.stop().await;
}

/// Makes DEADLETTER tiny and full, refusing new letters (discard new), as a
/// real one is once its max_bytes is reached.
async fn fill_deadletter(bus: &Bus) {
    let js = bus.jetstream();
    js.delete_stream(bus::DEADLETTER_STREAM).await.unwrap();
    js.create_stream(async_nats::jetstream::stream::Config {
        name: bus::DEADLETTER_STREAM.into(),
        subjects: vec![bus::DEADLETTER_SUBJECTS.into()],
        max_bytes: 4096,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut n = 0;
    for size in [1000, 100, 1] {
        loop {
            n += 1;
            let sent = js
                .publish(format!("deadletter.FILL.x{n}"), vec![b'f'; size].into())
                .await
                .unwrap()
                .await;
            if sent.is_err() {
                break;
            }
        }
    }
}

/// With DEADLETTER full, a TRACES message that must be dead-lettered is
/// nak'd with backoff and counted, and the sink goes on exporting the
/// others. Before, the sink's task ended with the error while the exporter
/// looked healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_deadletter_stream_never_stops_a_sink() {
    let s = setup().await;
    fill_deadletter(&s.bus).await;
    let receiver = Sink::Http.start_receiver(&[], 0, s.dir.path());
    let mut settings = settings(&s.nats);
    Sink::Http.configure(&mut settings, receiver.port);
    let exporter = Exporter::start(&settings).await;
    let mut publisher = s.bus.publisher(4);
    publisher
        .publish(
            0,
            "trace.linker-1".into(),
            "junk".into(),
            bytes::Bytes::from_static(b"\xff\xff junk"),
            None,
        )
        .await
        .unwrap();
    publisher.flush().await.unwrap();
    let mut batches: Vec<TraceBatch> = (1..4).map(|b| volume_batch(b, 2, 5)).collect();
    let want = span_ids(&batches);
    publish(&s.bus, &mut batches).await;
    wait_until("the good spans", || {
        Sink::Http.received_ids(&receiver).len() >= want.len()
    })
    .await;
    assert_eq!(Sink::Http.received_ids(&receiver), want);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let text = exporter.metrics().await;
    assert!(metric(&text, "espan_exporter_dead_letter_failures_total", "otlp") >= 2.0);
    assert!(metric(&text, "espan_exporter_messages_retried_total", "otlp") >= 2.0);
    assert_eq!(
        metric(&text, "espan_exporter_messages_dead_lettered_total", "otlp"),
        0.0
    );
    let ready = reqwest::get(format!("http://{}/readyz", exporter.running.metrics_addr))
        .await
        .unwrap();
    assert!(ready.status().is_success(), "the sink runs");
    exporter.stop().await;
}

/// One sink's consumer that cannot run (its durable exists with another ack
/// policy) stops the exporter with its error and turns /readyz red, while
/// the other sink was fine: watched together, not one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_stops_turns_readyz_red_and_stops_the_exporter() {
    let s = setup().await;
    let receiver = Sink::Http.start_receiver(&[], 0, s.dir.path());
    let mut settings = settings(&s.nats);
    Sink::Http.configure(&mut settings, receiver.port);
    Sink::Dataway.configure(&mut settings, free_port().unwrap());
    let stream = s
        .bus
        .jetstream()
        .get_stream(bus::TRACES_STREAM)
        .await
        .unwrap();
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("exporter-dataway".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let (_trigger, stop) = shutdown::channel();
    let running = run::start(&settings, stop).await.unwrap();
    let addr = running.metrics_addr;
    let stopped = tokio::time::timeout(Duration::from_secs(20), running.wait())
        .await
        .expect("the exporter stops when one sink stopped");
    let error = stopped.unwrap_err().to_string();
    assert!(error.contains("exporter-dataway"), "{error}");
    let ready = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert!(!ready.status().is_success());
    let body = ready.text().await.unwrap();
    assert!(body.contains("dataway consumer stopped"), "{body}");
}
