//! Parser throughput per protocol, in one run: the whole per-connection path of
//! the probe's user space (sequence cursor, protocol detection, framing, the
//! fields kept) over a keep-alive connection, as `Conn::feed` runs it for each
//! ring record. Messages per second and MB per second per core, for HTTP/1.x
//! (the baseline), Redis (one command per write, and pipelines of 10) and
//! PostgreSQL (a parameterized query, extended protocol: Parse, Bind,
//! Describe, Execute, Sync, answered by a one-row result) and MySQL (a
//! `COM_QUERY` answered by a one-row result set).
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
    };
    let get = b"*2\r\n$3\r\nGET\r\n$10\r\nuser:12345\r\n".to_vec();
    let value = format!("${}\r\n{body}\r\n", body.len()).into_bytes();
    let redis = Workload {
        name: "Redis",
        request: get.clone(),
        response: value.clone(),
        per_transfer: 1,
    };
    let pipeline = Workload {
        name: "Redis, pipelines of 10",
        request: get.repeat(10),
        response: value.repeat(10),
        per_transfer: 10,
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
    };
    vec![http, redis, pipeline, postgres, mysql]
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
