//! Spans per second through each sink: trace batches already waiting on TRACES
//! (a real nats-server), the exporter consuming and sending them, and a minimal
//! receiver in this process that decodes as far as counting needs, counts and
//! discards. Prints the rate, the exporter's own count of exported spans next
//! to the receiver's, and CPU time per span for the exporter and the receiver
//! apart (the receiver runs on a thread of its own). Also prints the encoding
//! cost alone.
//!
//! `cargo bench -p espan-exporter` (N spans per sink: ESPAN_BENCH_SPANS, default
//! 200000; only some parts: ESPAN_BENCH_SINKS=encode,grpc,http,dataway). The
//! time runs until the exporter counts every span exported (the receiver
//! answered 2xx for it).

use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use espan::bus;
use espan::shutdown;
use espan::testkit::TestNats;
use espan::wire::{self, LinkedSpan, Trace, TraceBatch};
use espan_exporter::message::TracesMessage;
use espan_exporter::run;
use espan_exporter::settings::{DatawaySettings, OtlpSettings, Settings};
use espan_exporter::sinks::Encoding;
use espan_exporter::sinks::otlp::Protocol;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;

const SPANS_PER_TRACE: u64 = 10;
const TRACES_PER_BATCH: u64 = 50;

fn batch(seq: u64) -> TraceBatch {
    TraceBatch {
        version: wire::WIRE_VERSION,
        linker: "bench".into(),
        boot_id: 1,
        seq,
        traces: (0..TRACES_PER_BATCH)
            .map(|t| Trace {
                trace_id_high: seq + 1,
                trace_id_low: t + 1,
                spans: (0..SPANS_PER_TRACE)
                    .map(|s| LinkedSpan {
                        span: Some(wire::sample::span(seq * 10_000 + t * 100 + s)),
                        parent_id: if s == 0 { 0 } else { 1 },
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
    }
}

#[derive(Clone, Default)]
struct Count(Arc<AtomicU64>);

/// The request, decoded only as far as counting needs: each span stays an
/// undecoded byte slice, so the receiver costs little of the machine's 2 cores.
#[derive(Clone, PartialEq, prost::Message)]
struct CountRequest {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<CountResource>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CountResource {
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<CountScope>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CountScope {
    #[prost(bytes = "bytes", repeated, tag = "2")]
    spans: Vec<Bytes>,
}

impl CountRequest {
    fn spans(&self) -> u64 {
        self.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len() as u64)
            .sum()
    }
}

/// What a receiver speaks.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// OTLP/gRPC: HTTP/2, a length-prefixed message, `grpc-status` trailer.
    Grpc,
    /// OTLP/HTTP: a protobuf body.
    Http,
    /// Dataway: gzip line protocol.
    Dataway,
}

/// A receiver on a thread of its own (with a single-threaded runtime), so its
/// CPU time can be told apart from the exporter's.
struct Receiver {
    addr: SocketAddr,
    count: Count,
    tid: u32,
}

fn start_receiver(kind: Kind) -> Receiver {
    let count = Count::default();
    let (ready, ready_rx) = std::sync::mpsc::channel();
    let counter = count.clone();
    std::thread::Builder::new()
        .name("receiver".into())
        .spawn(move || {
            let tid = std::fs::read_link("/proc/thread-self")
                .ok()
                .and_then(|p| p.file_name()?.to_str()?.parse().ok())
                .unwrap_or(0);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                ready.send((listener.local_addr().unwrap(), tid)).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve(kind, counter.clone(), stream));
                }
            });
        })
        .unwrap();
    let (addr, tid) = ready_rx.recv().unwrap();
    Receiver { addr, count, tid }
}

async fn serve(kind: Kind, count: Count, stream: tokio::net::TcpStream) {
    let io = hyper_util::rt::TokioIo::new(stream);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let count = count.clone();
        async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let spans = match kind {
                // 1 byte compressed flag, 4 bytes length, the message.
                Kind::Grpc => CountRequest::decode(body.slice(5..)).unwrap().spans(),
                Kind::Http => CountRequest::decode(body).unwrap().spans(),
                Kind::Dataway => {
                    let mut text = String::new();
                    flate2::read::GzDecoder::new(&body[..])
                        .read_to_string(&mut text)
                        .unwrap();
                    text.lines().count() as u64
                }
            };
            count.0.fetch_add(spans, Ordering::Relaxed);
            Ok::<_, Infallible>(match kind {
                Kind::Grpc => grpc_ok(),
                _ => hyper::Response::new(Reply::new(futures::stream::iter(Vec::new()))),
            })
        }
    });
    let _ = match kind {
        Kind::Grpc => {
            // Larger HTTP/2 windows than h2's 64 KiB default, as real
            // collectors have (grpc-go sizes them from the measured
            // bandwidth-delay product): a 700 KB request would otherwise
            // stall on WINDOW_UPDATE round trips. Frames stay 16 KiB, the
            // default of grpc-go and of h2.
            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .initial_stream_window_size(4 << 20)
                .initial_connection_window_size(16 << 20)
                .serve_connection(io, service)
                .await
        }
        _ => {
            hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
        }
    };
}

type Reply = http_body_util::StreamBody<
    futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
>;

/// An `ExportTraceServiceResponse` (empty: full success) as gRPC sends it:
/// the length-prefixed message, then `grpc-status: 0` in the trailers.
fn grpc_ok() -> hyper::Response<Reply> {
    let message = ExportTraceServiceResponse::default().encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = vec![
        Ok(Frame::data(Bytes::from(framed))),
        Ok(Frame::trailers(trailers)),
    ];
    hyper::Response::builder()
        .header("content-type", "application/grpc")
        .body(Reply::new(futures::stream::iter(frames)))
        .unwrap()
}

fn env_or(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The exporter's defaults (`ESPAN_BENCH_BATCH_SPANS`, `ESPAN_BENCH_PULL` and
/// `ESPAN_BENCH_CONCURRENCY` change them, to explore).
fn settings(nats: &TestNats) -> Settings {
    Settings {
        nats: nats.url().into(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        otlp: None,
        dataway: None,
        batch_max_spans: env_or("ESPAN_BENCH_BATCH_SPANS", 1000),
        batch_timeout: Duration::from_millis(200),
        batch_max_messages: env_or("ESPAN_BENCH_PULL", 64),
        concurrency: env_or("ESPAN_BENCH_CONCURRENCY", 4),
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_secs(1),
        ack_wait: Duration::from_secs(60),
        durable_prefix: "bench".into(),
        stream_replicas: 1,
    }
}

async fn run_sink(
    name: &str,
    spans: u64,
    kind: Kind,
    configure: impl FnOnce(&mut Settings, SocketAddr),
) {
    let receiver = start_receiver(kind);
    let count = receiver.count.clone();
    let nats = TestNats::start().unwrap();
    // Small streams: the default 10 GiB each is more than a test machine's
    // disk may let JetStream reserve.
    let limits = bus::StreamLimits {
        max_bytes: 256 << 20,
        ..Default::default()
    };
    let bus = nats.bus("bench", &limits).await.unwrap();
    let batches = spans.div_ceil(SPANS_PER_TRACE * TRACES_PER_BATCH);
    let mut publisher = bus.publisher(256);
    for seq in 0..batches {
        let payload = wire::encode_trace_batch(&mut batch(seq));
        publisher
            .publish(
                seq,
                bus::trace_subject("bench"),
                format!("bench-{seq}"),
                payload,
                None,
            )
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    let total = batches * SPANS_PER_TRACE * TRACES_PER_BATCH;

    let mut settings = settings(&nats);
    configure(&mut settings, receiver.addr);
    let sink = if settings.dataway.is_some() {
        "dataway"
    } else {
        "otlp"
    };
    // One client: building one per poll (TLS roots and all) would cost more
    // CPU than the exporter.
    let client = reqwest::Client::new();
    let (trigger, stop) = shutdown::channel();
    let started = Instant::now();
    let cpu_before = process_cpu_seconds();
    let receiver_before = thread_cpu_seconds(receiver.tid);
    let running = run::start(&settings, stop).await.unwrap();
    let metrics_url = format!("http://{}/metrics", running.metrics_addr);
    // Done when the exporter counts every span as exported: the receiver
    // answered 2xx for all of them.
    let mut exported = 0;
    while exported < total {
        tokio::time::sleep(Duration::from_millis(10)).await;
        exported = exported_spans(&client, &metrics_url, sink).await;
    }
    let elapsed = started.elapsed();
    let cpu = process_cpu_seconds() - cpu_before;
    let receiver_cpu = thread_cpu_seconds(receiver.tid) - receiver_before;
    // Anything sent twice would show by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let exported = exported_spans(&client, &metrics_url, sink).await;
    let received = count.0.load(Ordering::Relaxed);
    trigger.trigger();
    running.wait().await.unwrap();
    println!(
        "{name:<10} {total} spans in {:>6.3} s = {:>8.0} spans/s; exporter exported {exported}, \
         receiver counted {received}{}; CPU per span: exporter {:.2} µs, receiver {:.2} µs",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        if exported == total && received == total {
            ""
        } else {
            " (MISMATCH)"
        },
        (cpu - receiver_cpu) * 1e6 / total as f64,
        receiver_cpu * 1e6 / total as f64,
    );
}

/// The exporter's own `spans_exported` count for `sink`, from `/metrics`.
async fn exported_spans(client: &reqwest::Client, url: &str, sink: &str) -> u64 {
    let prefix = format!("espan_exporter_spans_exported_total{{sink=\"{sink}\"}} ");
    let Ok(response) = client.get(url).send().await else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// User + system CPU time of this process so far (from /proc, 10 ms ticks).
fn process_cpu_seconds() -> f64 {
    cpu_seconds("/proc/self/stat")
}

/// The same for one thread of this process.
fn thread_cpu_seconds(tid: u32) -> f64 {
    cpu_seconds(&format!("/proc/self/task/{tid}/stat"))
}

fn cpu_seconds(stat: &str) -> f64 {
    let stat = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat: 11 and 12 counted from state.
    (ticks(11) + ticks(12)) / 100.0
}

/// Reading a TRACES message and letting it go: in place, as the exporter
/// does, and with prost into owned structs, as it did before.
fn decode_rate() {
    let payload = wire::encode_trace_batch(&mut batch(0));
    let rounds = 200;
    let per_batch = (SPANS_PER_TRACE * TRACES_PER_BATCH) as f64;
    let started = Instant::now();
    for _ in 0..rounds {
        let batch = TracesMessage::decode(payload.clone()).unwrap();
        assert_eq!(batch.span_count() as f64, per_batch);
    }
    let in_place = rounds as f64 * per_batch / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for _ in 0..rounds {
        let checked = wire::decode_trace_batch(&payload).unwrap();
        assert_eq!(checked.batch.traces.len() as u64, TRACES_PER_BATCH);
    }
    let prost = rounds as f64 * per_batch / started.elapsed().as_secs_f64();
    println!(
        "read in place     {in_place:>9.0} spans/s (check and index; each span is parsed again when \
         encoded); with prost {prost:.0} spans/s; {:.0} bytes/span",
        payload.len() as f64 / per_batch
    );
}

fn encode_rate(name: &str, encoding: Encoding) {
    let source = TracesMessage::decode(wire::encode_trace_batch(&mut batch(0))).unwrap();
    let refs = || source.all_spans();
    let count = source.span_count();
    let rounds = 200;
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..rounds {
        bytes += encoding.encode(refs(), count).body.len();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let spans = (rounds * count) as f64;
    println!(
        "encode {name:<9} {:>9.0} spans/s, {:.0} bytes/span",
        spans / elapsed,
        bytes as f64 / spans
    );
}

#[tokio::main]
async fn main() {
    let spans: u64 = std::env::var("ESPAN_BENCH_SPANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let only = std::env::var("ESPAN_BENCH_SINKS").unwrap_or_default();
    let wanted = |sink: &str| only.is_empty() || only.split(',').any(|s| s.trim() == sink);
    if wanted("encode") {
        decode_rate();
        encode_rate("otlp", Encoding::Otlp { gzip: false });
        encode_rate("otlp+gz", Encoding::Otlp { gzip: true });
        encode_rate("dataway", Encoding::Dataway);
    }

    if wanted("grpc") {
        run_sink("otlp grpc", spans, Kind::Grpc, |s, addr| {
            s.otlp = Some(OtlpSettings {
                endpoint: format!("http://{addr}"),
                protocol: Protocol::Grpc,
                headers: Vec::new(),
                timeout: Duration::from_secs(10),
                gzip: false,
                tls: Default::default(),
            })
        })
        .await;
    }
    if wanted("http") {
        run_sink("otlp http", spans, Kind::Http, |s, addr| {
            s.otlp = Some(OtlpSettings {
                endpoint: format!("http://{addr}/v1/traces"),
                protocol: Protocol::HttpProtobuf,
                headers: Vec::new(),
                timeout: Duration::from_secs(10),
                gzip: false,
                tls: Default::default(),
            })
        })
        .await;
    }
    if wanted("dataway") {
        run_sink("dataway", spans, Kind::Dataway, |s, addr| {
            s.dataway = Some(DatawaySettings {
                url: format!("http://{addr}/v1/write/tracing?token=tkn_bench"),
                timeout: Duration::from_secs(10),
            })
        })
        .await;
    }
}
