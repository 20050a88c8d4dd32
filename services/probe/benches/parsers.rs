//! Parser throughput per protocol, in one run: the whole per-connection path of
//! the probe's user space (sequence cursor, protocol detection, framing, the
//! fields kept) over a keep-alive connection, as `Conn::feed` runs it for each
//! ring record. Messages per second and MB per second per core, for HTTP/1.x
//! (the baseline), Redis (one command per write, and pipelines of 10) and
//! PostgreSQL (a parameterized query, extended protocol: Parse, Bind,
//! Describe, Execute, Sync, answered by a one-row result), MySQL (a
//! `COM_QUERY` answered by a one-row result set) and gRPC (a unary call on
//! HTTP/2: HEADERS and DATA, answered by HEADERS, DATA and trailers, header
//! fields from the compression table as on a connection in use).
//!
//! `cargo bench -p espan-probe --bench parsers [-- --exchanges 200000 --passes 5]`

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use espan_probe::conn::{Conn, Direction};
use espan_probe::message::Transfer;

/// One workload: what a client writes and what the server answers, per
/// exchange (a transfer each), and how many messages each side holds.
struct Workload {
    name: &'static str,
    request: Vec<u8>,
    response: Vec<u8>,
    /// Messages in one request transfer (and as many in the response).
    per_transfer: u64,
    /// What each side sends once, first (HTTP/2's preface and settings, and a
    /// first call that fills the compression tables); not measured.
    preamble: Option<(Vec<u8>, Vec<u8>)>,
}

fn workloads() -> Vec<Workload> {
    let body = r#"{"id":12345,"ok":1}"#;
    let http = Workload {
        name: "HTTP/1.1",
        request: b"GET /api/orders/12345 HTTP/1.1\r\nHost: shop:8080\r\nUser-Agent: python-requests/2.34\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n".to_vec(),
        response: format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
        per_transfer: 1,
        preamble: None,
    };
    let get = b"*2\r\n$3\r\nGET\r\n$10\r\nuser:12345\r\n".to_vec();
    let value = format!("${}\r\n{body}\r\n", body.len()).into_bytes();
    let redis = Workload {
        name: "Redis",
        request: get.clone(),
        response: value.clone(),
        per_transfer: 1,
        preamble: None,
    };
    let pipeline = Workload {
        name: "Redis, pipelines of 10",
        request: get.repeat(10),
        response: value.repeat(10),
        per_transfer: 10,
        preamble: None,
    };
    let postgres = Workload {
        name: "PostgreSQL",
        request: [
            pg_msg(b'P', b"\0SELECT v FROM items WHERE k = $1\0\0\0"),
            pg_msg(b'B', b"\0\0\0\0\0\x01\0\0\0\x05c1234\0\0"),
            pg_msg(b'D', b"P\0"),
            pg_msg(b'E', b"\0\0\0\0\0"),
            pg_msg(b'S', b""),
        ]
        .concat(),
        response: [
            pg_msg(b'1', b""),
            pg_msg(b'2', b""),
            pg_msg(
                b'T',
                b"\0\x01v\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
            ),
            pg_msg(b'D', b"\0\x01\0\0\0\x0512345"),
            pg_msg(b'C', b"SELECT 1\0"),
            pg_msg(b'Z', b"I"),
        ]
        .concat(),
        per_transfer: 1,
        preamble: None,
    };
    let mysql = Workload {
        name: "MySQL",
        request: my_packet(0, b"\x03SELECT v FROM items WHERE k = 'c1234' LIMIT 1"),
        response: [
            my_packet(1, b"\x01"),
            my_packet(
                2,
                b"\x03def\x04test\x05items\x05items\x01v\x01v\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00",
            ),
            my_packet(3, b"\xfe\x00\x00\x22\x00"),
            my_packet(4, b"\x0512345"),
            my_packet(5, b"\xfe\x00\x00\x22\x00"),
        ]
        .concat(),
        per_transfer: 1,
        preamble: None,
    };
    vec![http, redis, pipeline, postgres, mysql, grpc()]
}

/// A unary gRPC call on stream 1, again and again (the parser forgets a stream
/// once it ends), with header blocks as an encoder in use writes them.
fn grpc() -> Workload {
    use loona_hpack::Encoder;
    let request_fields: &[(&[u8], &[u8])] = &[
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/shop.Orders/Get"),
        (b":authority", b"orders:50051"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (
            b"user-agent",
            b"grpc-python/1.85.1 grpc-c/52.0.0 (linux; chttp2)",
        ),
    ];
    let response_fields: &[(&[u8], &[u8])] =
        &[(b":status", b"200"), (b"content-type", b"application/grpc")];
    let trailer_fields: &[(&[u8], &[u8])] = &[(b"grpc-status", b"0"), (b"grpc-message", b"")];
    let (mut client, mut server) = (Encoder::new(), Encoder::new());
    let call = |client: &mut Encoder, server: &mut Encoder| {
        let mut request = h2_frame(1, 0x4, &client.encode(request_fields.iter().copied()));
        request.extend(h2_frame(0, 0x1, b"\0\0\0\0\x07\x08\x01\x12\x0312345"));
        let mut response = h2_frame(1, 0x4, &server.encode(response_fields.iter().copied()));
        response.extend(h2_frame(0, 0, b"\0\0\0\0\x06\x08\x01\x10\x01\x18\x02"));
        response.extend(h2_frame(
            1,
            0x5,
            &server.encode(trailer_fields.iter().copied()),
        ));
        (request, response)
    };
    let (first_request, first_response) = call(&mut client, &mut server);
    let (request, response) = call(&mut client, &mut server);
    let mut preamble_client = espan_probe::h2::PREFACE.to_vec();
    preamble_client.extend(h2_frame(4, 0, b""));
    preamble_client.extend(first_request);
    let mut preamble_server = h2_frame(4, 0, b"");
    preamble_server.extend(first_response);
    Workload {
        name: "gRPC (HTTP/2)",
        request,
        response,
        per_transfer: 1,
        preamble: Some((preamble_client, preamble_server)),
    }
}

/// An HTTP/2 frame of `kind` on stream 1 (0 for SETTINGS).
fn h2_frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    v.push(kind);
    v.push(flags);
    v.extend_from_slice(&u32::from(kind != 4).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// A MySQL packet.
fn my_packet(seq_id: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_le_bytes()[..3].to_vec();
    v.push(seq_id);
    v.extend_from_slice(payload);
    v
}

/// A typed PostgreSQL message.
fn pg_msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Feeds `exchanges` request/response pairs; returns (messages, bytes, seconds).
fn run(w: &Workload, exchanges: u64) -> (u64, u64, f64) {
    let local: SocketAddr = "10.0.0.1:8080".parse().unwrap();
    let remote: SocketAddr = "10.0.0.2:40000".parse().unwrap();
    let mut conn = Conn::new(1, local, remote);
    let mut out = Vec::with_capacity(32);
    let (mut seq_in, mut seq_out) = (1_000u32, 9_000u32);
    let mut messages = 0u64;
    if let Some((request, response)) = &w.preamble {
        for (dir, bytes, seq) in [
            (Direction::Ingress, request, &mut seq_in),
            (Direction::Egress, response, &mut seq_out),
        ] {
            let t = Transfer {
                seq: *seq,
                len: bytes.len() as u32,
                data: bytes,
                ts_ns: 0,
                tid: 7,
            };
            conn.feed(dir, t, &mut out);
            *seq = seq.wrapping_add(bytes.len() as u32);
        }
        assert_eq!(out.len(), 2, "{}: the first call", w.name);
        out.clear();
    }
    let start = Instant::now();
    for i in 0..exchanges {
        // The server's view: it reads the request and writes the answer.
        let t = Transfer {
            seq: seq_in,
            len: w.request.len() as u32,
            data: &w.request,
            ts_ns: i * 2,
            tid: 7,
        };
        conn.feed(Direction::Ingress, t, &mut out);
        seq_in = seq_in.wrapping_add(w.request.len() as u32);
        let t = Transfer {
            seq: seq_out,
            len: w.response.len() as u32,
            data: &w.response,
            ts_ns: i * 2 + 1,
            tid: 7,
        };
        conn.feed(Direction::Egress, t, &mut out);
        seq_out = seq_out.wrapping_add(w.response.len() as u32);
        messages += out.len() as u64;
        black_box(&out);
        out.clear();
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        messages,
        exchanges * 2 * w.per_transfer,
        "{}: every message",
        w.name
    );
    let bytes = exchanges * (w.request.len() + w.response.len()) as u64;
    (messages, bytes, secs)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (exchanges, passes) = (opt("--exchanges", 200_000), opt("--passes", 5));
    let workloads = workloads();
    // Passes interleave the workloads, so a noisy moment costs each alike.
    let mut rates: Vec<Vec<(f64, f64)>> = vec![Vec::new(); workloads.len()];
    for _ in 0..passes {
        for (w, r) in workloads.iter().zip(&mut rates) {
            let (messages, bytes, secs) = run(w, exchanges);
            r.push((messages as f64 / secs, bytes as f64 / secs / 1e6));
        }
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    println!(
        "parser throughput, one core, {exchanges} exchanges per pass, {passes} passes ({cpu}):"
    );
    println!("| protocol | messages/s (median, range) | MB/s (median) | vs HTTP/1.1 |");
    println!("|---|---|---|---|");
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut base = 0.0;
    for (i, (w, r)) in workloads.iter().zip(&rates).enumerate() {
        let mut msgs: Vec<f64> = r.iter().map(|x| x.0).collect();
        let mut mbs: Vec<f64> = r.iter().map(|x| x.1).collect();
        let (lo, hi) = (
            msgs.iter().cloned().fold(f64::MAX, f64::min),
            msgs.iter().cloned().fold(0.0, f64::max),
        );
        let m = median(&mut msgs);
        if i == 0 {
            base = m;
        }
        println!(
            "| {} | {:.2}M ({:.2}M–{:.2}M) | {:.0} | {:.2}× |",
            w.name,
            m / 1e6,
            lo / 1e6,
            hi / 1e6,
            median(&mut mbs),
            m / base
        );
    }
}
