use super::*;
use proptest::prelude::*;

/// The HTTP head of a message these tests made.
trait HeadOf {
    fn http_head(&self) -> &HttpHead;
}

impl HeadOf for Message {
    fn http_head(&self) -> &HttpHead {
        match &self.l7 {
            L7::Http(head) => head,
            other => panic!("not HTTP: {other:?}"),
        }
    }
}

/// Feeds `chunks` as consecutive transfers, each captured up to `cap` bytes.
fn run(
    stream: &mut Stream,
    heads: &mut HeadQueue,
    seq0: u32,
    chunks: &[&[u8]],
    cap: usize,
) -> Vec<Message> {
    let mut out = Vec::new();
    let mut seq = seq0;
    for (i, c) in chunks.iter().enumerate() {
        let t = Transfer {
            seq,
            len: c.len() as u32,
            data: &c[..c.len().min(cap)],
            ts_ns: 100 + i as u64,
            tid: 7,
        };
        stream.feed(t, heads, &mut out);
        seq = seq.wrapping_add(c.len() as u32);
    }
    out
}

fn one(chunks: &[&[u8]]) -> Vec<Message> {
    run(
        &mut Stream::new(),
        &mut HeadQueue::new(),
        1000,
        chunks,
        usize::MAX,
    )
}

#[test]
fn request_in_one_read() {
    let m = one(&[b"GET /a/b?x=1 HTTP/1.1\r\nHost: shop\r\n\r\n"]);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].http_head().method, "GET");
    assert_eq!(m[0].http_head().path, "/a/b");
    assert_eq!(m[0].http_head().host, "shop");
    assert_eq!(m[0].http_head().version, "HTTP/1.1");
    assert_eq!(m[0].seq, 1000);
    assert_eq!(m[0].bytes, 37);
}

#[test]
fn request_split_over_many_reads_with_a_body() {
    let whole = b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
    let parts: Vec<&[u8]> = whole.chunks(3).collect();
    let m = one(&parts);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].http_head().method, "POST");
    assert_eq!(m[0].start_ns, 100);
    assert_eq!(m[0].end_ns, 100 + parts.len() as u64 - 1);
    assert_eq!(m[0].bytes, whole.len() as u64);
}

#[test]
fn pipelined_requests_in_one_read_get_their_own_seq() {
    let a = b"GET /1 HTTP/1.1\r\n\r\n";
    let b = b"GET /2 HTTP/1.1\r\n\r\n";
    let both = [&a[..], &b[..]].concat();
    let m = one(&[&both]);
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].seq, 1000);
    assert_eq!(m[1].seq, 1000 + a.len() as u32);
    assert_eq!(m[1].http_head().path, "/2");
}

#[test]
fn body_not_captured_is_skipped_by_length() {
    // The capture holds only the head; the 10 000-byte body is skipped by its length.
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n".to_vec();
    let mut first = head.clone();
    first.extend(vec![b'x'; 4000]);
    let rest = vec![b'y'; 6000];
    let next = b"HTTP/1.1 204 No Content\r\n\r\n";
    let mut heads: HeadQueue = [false, false].into();
    let m = run(
        &mut Stream::new(),
        &mut heads,
        5,
        &[&first, &rest, next],
        head.len(),
    );
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].http_head().status, 200);
    assert_eq!(m[0].bytes, head.len() as u64 + 10_000);
    assert_eq!(m[1].seq, 5 + first.len() as u32 + 6000);
    assert_eq!(m[1].http_head().status, 204);
}

#[test]
fn chunked_response() {
    let resp: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5\r\nhello\r\n",
        b"3;ext=1\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ];
    let mut heads: HeadQueue = [false, false].into();
    let m = run(&mut Stream::new(), &mut heads, 0, resp, usize::MAX);
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].end_ns, 102);
    let total: usize = resp[..3].iter().map(|c| c.len()).sum();
    assert_eq!(m[0].bytes, total as u64);
    assert_eq!(m[1].seq, total as u32);
}

/// Node.js writes a chunked response as one writev: the head, then each
/// chunk's size line, data and CRLF. Captured only in part, the framing of the
/// later chunks is out of sight; the message stays open and ends where the
/// stream shows it, with its own first byte's sequence number.
#[test]
fn chunked_body_beyond_the_capture_stays_open_until_the_stream_shows_its_end() {
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let body = [
        b"b\r\nfirst part \r\nbb8\r\n".as_slice(),
        &[b'x'; 3000],
        b"\r\n0\r\n\r\n",
    ]
    .concat();
    let first = [head.as_slice(), &body].concat();
    let second = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let mut heads = HeadQueue::from([false, false]);
    let mut stream = Stream::new();
    // 200 bytes captured of the first transfer: the "bb8" chunk's data runs
    // past the capture and the final "0" line with it.
    let out = run(&mut stream, &mut heads, 5000, &[&first], 200);
    assert!(out.is_empty(), "the end is not known yet");
    assert!(stream.unframed());
    assert_eq!(stream.problems.unframed, 1);
    assert_eq!(stream.problems.truncated, 0);
    // The next response starts a transfer: the first one ended before it.
    let mut out = Vec::new();
    let t = Transfer {
        seq: 5000 + first.len() as u32,
        len: second.len() as u32,
        data: second,
        ts_ns: 900,
        tid: 7,
    };
    stream.feed(t, &mut heads, &mut out);
    assert_eq!(out.len(), 2, "{out:#?}");
    assert_eq!((out[0].seq, out[0].http_head().status), (5000, 200));
    assert_eq!(out[0].bytes, first.len() as u64);
    assert_eq!(out[0].end_ns, 100, "ended with its own last transfer");
    assert_eq!(out[1].seq, 5000 + first.len() as u32);

    // Or the connection's end shows it.
    let mut stream = Stream::new();
    let mut heads = HeadQueue::from([false]);
    let out = run(&mut stream, &mut heads, 1, &[&first, &[b'y'; 10]], 200);
    assert!(out.is_empty());
    let mut out = Vec::new();
    stream.end(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].bytes, first.len() as u64 + 10);
    assert_eq!(out[0].end_ns, 101);

    // Or the other direction starting its next message (Stream::conclude).
    let mut stream = Stream::new();
    let mut heads = HeadQueue::from([false]);
    run(&mut stream, &mut heads, 1, &[&first], 200);
    let mut out = Vec::new();
    stream.conclude(&mut out);
    assert_eq!(out.len(), 1);
    assert!(!stream.unframed());
}

#[test]
fn response_to_head_has_no_body_and_until_close_ends_at_close() {
    let mut heads: HeadQueue = [true, false].into();
    let mut s = Stream::new();
    let m = run(
        &mut s,
        &mut heads,
        0,
        &[b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"],
        usize::MAX,
    );
    assert_eq!(
        m.len(),
        1,
        "HEAD response: Content-Length does not announce a body"
    );
    let m = run(
        &mut s,
        &mut heads,
        39,
        &[b"HTTP/1.0 200 OK\r\n\r\nbody", b"more"],
        usize::MAX,
    );
    assert!(m.is_empty());
    let mut out = Vec::new();
    s.close(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].bytes, 19 + 8);
    assert_eq!(out[0].http_head().version, "HTTP/1.0");
}

#[test]
fn interim_100_continue_is_not_the_response() {
    let mut heads: HeadQueue = [false].into();
    let m = run(
        &mut Stream::new(),
        &mut heads,
        0,
        &[
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        ],
        usize::MAX,
    );
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].http_head().status, 201);
    assert_eq!(m[0].seq, 25);
}

#[test]
fn garbage_is_counted_and_the_stream_resyncs() {
    let mut s = Stream::new();
    let mut heads = HeadQueue::new();
    let m = run(
        &mut s,
        &mut heads,
        0,
        &[
            b"GET /ok HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00binary",
            b"GET /again HTTP/1.1\r\n\r\n",
        ],
        usize::MAX,
    );
    assert_eq!(m.len(), 2);
    assert_eq!(m[1].http_head().path, "/again");
    assert_eq!(s.problems.malformed, 1);
}

#[test]
fn a_head_longer_than_the_capture_keeps_its_first_line_until_the_answer() {
    let cookie = "a".repeat(3000);
    let req = format!("GET /big/1?x=2 HTTP/1.1\r\nHost: shop\r\nCookie: {cookie}\r\n\r\n");
    let mut s = Stream::new();
    let mut heads = HeadQueue::new();
    let m = run(&mut s, &mut heads, 500, &[req.as_bytes()], 1024);
    assert!(m.is_empty(), "open until the stream shows its end");
    assert_eq!((s.problems.unframed, s.problems.truncated), (1, 0));
    // The answer starting on the other side ends it.
    let mut out = Vec::new();
    s.conclude(&mut out);
    assert_eq!(out.len(), 1);
    let head = out[0].http_head();
    assert_eq!(
        (head.method.as_str(), head.path.as_str()),
        ("GET", "/big/1")
    );
    assert_eq!((out[0].seq, out[0].bytes), (500, req.len() as u64));
    assert_eq!(heads.len(), 1, "the response will know it answers a GET");
    // A response head too long for the capture keeps its status.
    let resp =
        format!("HTTP/1.1 404 Not Found\r\nSet-Cookie: {cookie}\r\nContent-Length: 0\r\n\r\n");
    let mut r = Stream::new();
    assert!(run(&mut r, &mut heads, 0, &[resp.as_bytes()], 1024).is_empty());
    let mut out = Vec::new();
    r.close(&mut out);
    assert_eq!(out[0].http_head().status, 404);
    assert!(heads.is_empty());
}

#[test]
fn head_beyond_the_capture_is_counted() {
    let mut s = Stream::new();
    let req = b"GET /long HTTP/1.1\r\nX-Big: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let m = run(&mut s, &mut HeadQueue::new(), 0, &[req], 16);
    assert!(m.is_empty());
    assert_eq!(s.problems.truncated, 1);
}

#[test]
fn sequence_numbers_wrap() {
    let m = run(
        &mut Stream::new(),
        &mut HeadQueue::new(),
        u32::MAX - 3,
        &[b"GET /1 HTTP/1.1\r\n\r\n", b"GET /2 HTTP/1.1\r\n\r\n"],
        usize::MAX,
    );
    assert_eq!(m[1].seq, (u32::MAX - 3).wrapping_add(19));
}

#[test]
fn trace_context_headers_any_case() {
    let m = one(&[b"GET / HTTP/1.1\r\nTraceParent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"]);
    let t = m[0].http_head().app_trace.unwrap();
    assert_eq!(t.format, TraceFormat::W3c as i32);
    assert_eq!(t.trace_id_high, 0x0af7651916cd43dd);
    assert_eq!(t.trace_id_low, 0x8448eb211c80319c);
    assert_eq!(t.parent_span_id, 0xb7ad6b7169203331);
    assert_eq!(t.sampling, SamplingDecision::Keep as i32);

    let m = one(&[b"GET / HTTP/1.1\r\nX-Datadog-Trace-Id: 12345\r\nx-datadog-parent-id: 678\r\nx-datadog-sampling-priority: 0\r\n\r\n"]);
    let t = m[0].http_head().app_trace.unwrap();
    assert_eq!(
        (t.format, t.trace_id_low, t.parent_span_id),
        (TraceFormat::Datadog as i32, 12345, 678)
    );
    assert_eq!(t.sampling, SamplingDecision::Drop as i32);

    let m = one(&[
        b"GET / HTTP/1.1\r\nb3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1\r\n\r\n",
    ]);
    let t = m[0].http_head().app_trace.unwrap();
    assert_eq!(t.format, TraceFormat::B3 as i32);
    assert_eq!(t.trace_id_low, 0x64fe8b2a57d3eff7);
    assert_eq!(t.parent_span_id, 0xe457b5a2e4d86bd1);

    let m = one(&[b"GET / HTTP/1.1\r\nX-B3-TraceId: 463ac35c9f6413ad\r\nX-B3-SpanId: a2fb4a1d1a96d312\r\n\r\n"]);
    let t = m[0].http_head().app_trace.unwrap();
    assert_eq!((t.trace_id_high, t.trace_id_low), (0, 0x463ac35c9f6413ad));

    // Malformed contexts are ignored, not guessed at.
    let m = one(&[b"GET / HTTP/1.1\r\ntraceparent: 00-zz-yy-01\r\n\r\n"]);
    assert!(m[0].http_head().app_trace.is_none());
}

#[test]
fn conflicting_content_lengths_are_malformed() {
    let mut s = Stream::new();
    run(
        &mut s,
        &mut HeadQueue::new(),
        0,
        &[b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"],
        usize::MAX,
    );
    assert_eq!(s.problems.malformed, 1);
}

proptest! {
    /// Any bytes, cut anywhere, captured to any length, with any seq jumps: no panic.
    #[test]
    fn never_panics(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..12),
        cap in 0usize..400,
        jumps in proptest::collection::vec(any::<bool>(), 12),
    ) {
        let mut s = Stream::new();
        let mut heads = HeadQueue::new();
        let mut out = Vec::new();
        let mut seq = 0u32;
        let mut fed = 0u64;
        for (i, c) in chunks.iter().enumerate() {
            if jumps[i] { seq = seq.wrapping_add(7); }
            let t = Transfer { seq, len: c.len() as u32, data: &c[..c.len().min(cap)], ts_ns: i as u64, tid: 1 };
            s.feed(t, &mut heads, &mut out);
            seq = seq.wrapping_add(c.len() as u32);
            fed += c.len() as u64;
        }
        s.close(&mut out);
        // Whatever came out is made of bytes that went in.
        let parsed: u64 = out.iter().map(|m| m.bytes).sum();
        prop_assert!(parsed <= fed, "{parsed} bytes of messages from {fed} bytes fed");
    }

    /// Valid requests split at random points parse to the same messages.
    #[test]
    fn split_points_do_not_matter(cuts in proptest::collection::vec(1usize..40, 1..20), n in 1usize..5) {
        let mut whole = Vec::new();
        for i in 0..n {
            whole.extend_from_slice(format!("POST /r/{i} HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc").as_bytes());
        }
        let mut parts = Vec::new();
        let mut at = 0;
        for c in cuts {
            if at >= whole.len() { break; }
            let end = (at + c).min(whole.len());
            parts.push(&whole[at..end]);
            at = end;
        }
        if at < whole.len() { parts.push(&whole[at..]); }
        let m = one(&parts);
        prop_assert_eq!(m.len(), n);
        for (i, msg) in m.iter().enumerate() {
            prop_assert_eq!(&msg.http_head().path, &format!("/r/{i}"));
        }
    }
}
