use loona_hpack::Encoder;
use proptest::prelude::*;

use super::*;

/// One direction's bytes as a peer writes them, with its own HPACK encoder.
struct Peer {
    bytes: Vec<u8>,
    encoder: Encoder<'static>,
}

impl Peer {
    fn client() -> Self {
        let mut p = Self::server();
        p.bytes.extend_from_slice(PREFACE);
        p.frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
        p
    }

    fn server() -> Self {
        Self {
            bytes: Vec::new(),
            encoder: Encoder::new(),
        }
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> u32 {
        let at = self.bytes.len() as u32;
        let len = payload.len() as u32;
        self.bytes.extend_from_slice(&len.to_be_bytes()[1..]);
        self.bytes.push(kind);
        self.bytes.push(flags);
        self.bytes.extend_from_slice(&stream.to_be_bytes());
        self.bytes.extend_from_slice(payload);
        at
    }

    /// A header block in one HEADERS frame; returns the frame's offset.
    fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) -> u32 {
        let block = self.block(fields);
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        self.frame(HEADERS, flags, stream, &block)
    }

    fn block(&mut self, fields: &[(&str, &str)]) -> Vec<u8> {
        self.encoder
            .encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    fn request(&mut self, stream: u32, path: &str) -> u32 {
        let at = self.headers(
            stream,
            &[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "orders:50051"),
                ("content-type", "application/grpc"),
                ("x-tenant", "acme"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
            ],
            false,
        );
        self.frame(DATA, END_STREAM, stream, &[0, 0, 0, 0, 2, 8, 1]);
        at
    }

    /// Response headers, a message and trailers with `status`.
    fn response(&mut self, stream: u32, grpc_status: &str) -> u32 {
        let at = self.headers(
            stream,
            &[
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("x-tenant", "acme"),
            ],
            false,
        );
        self.frame(DATA, 0, stream, &[0, 0, 0, 0, 3, 8, 1, 16]);
        self.headers(
            stream,
            &[("grpc-status", grpc_status), ("grpc-message", "ok%20then")],
            true,
        );
        at
    }
}

const CLIENT_SEQ: u32 = 1_000_000;
const SERVER_SEQ: u32 = 4_000_000_000; // wraps

fn transfer(seq: u32, data: &[u8], len: usize) -> Transfer<'_> {
    Transfer {
        seq,
        len: len as u32,
        data,
        ts_ns: 1,
        tid: 7,
    }
}

/// Feeds `side`'s bytes from `from` to `to` as one transfer (captured whole).
fn feed(
    s: &mut Session,
    side: Side,
    bytes: &[u8],
    from: usize,
    to: usize,
    out: &mut Vec<(Side, Message)>,
) {
    let base = if side == Side::Requests {
        CLIENT_SEQ
    } else {
        SERVER_SEQ
    };
    s.feed(
        side,
        transfer(base.wrapping_add(from as u32), &bytes[from..to], to - from),
        out,
    );
}

fn head(m: &Message) -> &H2Head {
    match &m.l7 {
        L7::Http2(h) => h,
        other => panic!("not HTTP/2: {other:?}"),
    }
}

fn start() -> Start {
    Start {
        mid_way: false,
        requests_this_way: true,
    }
}

#[test]
fn the_preface_starts_a_session_and_a_mid_way_transfer_tells_its_direction() {
    let c = Peer::client();
    assert_eq!(
        starts_session(&transfer(0, &c.bytes, c.bytes.len())),
        Some(start())
    );
    let mut c = Peer::client();
    let from = c.bytes.len();
    c.request(1, "/a.B/C");
    let t = transfer(0, &c.bytes[from..], c.bytes.len() - from);
    assert_eq!(
        starts_session(&t),
        Some(Start {
            mid_way: true,
            requests_this_way: true
        })
    );
    let mut s = Peer::server();
    s.response(1, "0");
    let t = transfer(0, &s.bytes, s.bytes.len());
    assert_eq!(
        starts_session(&t),
        Some(Start {
            mid_way: true,
            requests_this_way: false
        })
    );
    // HTTP/1.x, RESP, or frames cut by the capture are not HTTP/2.
    for data in [&b"GET / HTTP/1.1\r\n\r\n"[..], b"*1\r\n$4\r\nPING\r\n"] {
        assert_eq!(starts_session(&transfer(0, data, data.len())), None);
    }
    assert_eq!(
        starts_session(&transfer(0, &s.bytes, s.bytes.len() + 10)),
        None
    );
}

/// 16 streams on one connection, requests in batches, responses in another
/// order: each response pairs with its stream, with the sequence number of
/// its first HEADERS frame on both ends.
#[test]
fn sixteen_multiplexed_streams_pair_by_stream_id_with_frame_sequence_numbers() {
    let mut client = Peer::client();
    let mut server = Peer::server();
    server.frame(SETTINGS, 0, 0, &[]);
    let mut req_at = HashMap::new();
    let mut resp_at = HashMap::new();
    for i in 0..16u32 {
        let stream = 2 * i + 1;
        req_at.insert(
            stream,
            client.request(stream, &format!("/shop.Orders/Get{i}")),
        );
    }
    for i in (0..16u32).rev() {
        let stream = 2 * i + 1;
        let status = if i % 5 == 0 { "5" } else { "0" };
        resp_at.insert(stream, server.response(stream, status));
    }
    let mut s = Session::new(start());
    let mut out = Vec::new();
    // The client writes in three batches, the server in frames of any size.
    let cuts = [0, 200, 777, client.bytes.len()];
    for w in cuts.windows(2) {
        feed(&mut s, Side::Requests, &client.bytes, w[0], w[1], &mut out);
    }
    let mut at = 0;
    while at < server.bytes.len() {
        let to = (at + 61).min(server.bytes.len());
        feed(&mut s, Side::Answers, &server.bytes, at, to, &mut out);
        at = to;
    }
    let requests: Vec<_> = out
        .iter()
        .filter(|(side, _)| *side == Side::Requests)
        .collect();
    let answers: Vec<_> = out
        .iter()
        .filter(|(side, _)| *side == Side::Answers)
        .collect();
    assert_eq!((requests.len(), answers.len()), (16, 16));
    for (_, m) in &requests {
        let h = head(m);
        assert_eq!(m.seq, CLIENT_SEQ + req_at[&m.stream]);
        assert_eq!(h.head.method, "POST");
        assert_eq!(
            h.head.path,
            format!("/shop.Orders/Get{}", (m.stream - 1) / 2)
        );
        assert_eq!(h.head.host, "orders:50051");
        assert!(h.grpc && !h.unknown);
        assert_eq!(
            h.head.app_trace.as_ref().map(|t| t.parent_span_id),
            Some(0xb7ad_6b71_6920_3331)
        );
    }
    for (_, m) in &answers {
        let h = head(m);
        assert_eq!(m.seq, SERVER_SEQ.wrapping_add(resp_at[&m.stream]));
        assert_eq!(h.head.status, 200);
        let i = (m.stream - 1) / 2;
        assert_eq!(h.grpc_status, Some(if i % 5 == 0 { 5 } else { 0 }));
        assert_eq!(h.grpc_message, "ok%20then");
        // HEADERS + DATA (7 bytes) + trailers one way, HEADERS + DATA one way.
        assert!(m.bytes > 2 * 9 + 8 && h.request_bytes > 9 + 7 + 9, "{m:?}");
    }
    let (p, desyncs) = s.take_problems();
    assert_eq!((p, desyncs), (Problems::default(), 0));
}

#[test]
fn a_reset_ends_a_stream_and_informational_headers_are_not_the_response() {
    let mut client = Peer::client();
    let mut server = Peer::server();
    client.request(1, "/a.B/Slow");
    client.request(3, "/a.B/Fast");
    server.headers(3, &[(":status", "100")], false);
    let at3 = server.headers(3, &[(":status", "204")], true);
    let rst = server.frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]);
    let mut s = Session::new(start());
    let mut out = Vec::new();
    feed(
        &mut s,
        Side::Requests,
        &client.bytes,
        0,
        client.bytes.len(),
        &mut out,
    );
    feed(
        &mut s,
        Side::Answers,
        &server.bytes,
        0,
        server.bytes.len(),
        &mut out,
    );
    let answers: Vec<_> = out
        .iter()
        .filter(|(side, _)| *side == Side::Answers)
        .collect();
    assert_eq!(answers.len(), 2);
    let (_, fast) = answers[0];
    assert_eq!((fast.stream, fast.seq), (3, SERVER_SEQ.wrapping_add(at3)));
    assert_eq!(head(fast).head.status, 204);
    assert!(!head(fast).reset);
    let (_, slow) = answers[1];
    assert_eq!((slow.stream, slow.seq), (1, SERVER_SEQ.wrapping_add(rst)));
    assert!(head(slow).reset);
}

/// A header block cut by the capture keeps the fields read before the cut; the
/// decoder starts afresh after it, so later references to entries it lacks are
/// unknown, never wrong.
#[test]
fn a_cut_header_block_keeps_what_was_read_and_never_misreads_later_blocks() {
    let mut client = Peer::client();
    let first = client.bytes.len();
    client.request(1, "/a.B/One");
    let second = client.bytes.len();
    client.request(3, "/a.B/Two");
    let mut s = Session::new(start());
    let mut out = Vec::new();
    feed(&mut s, Side::Requests, &client.bytes, 0, first, &mut out);
    // The first request's transfer is captured up to the middle of its block
    // (past `:path`, before `x-tenant`, which it adds to the table).
    let cut = first + 9 + 30;
    s.feed(
        Side::Requests,
        transfer(
            CLIENT_SEQ + first as u32,
            &client.bytes[first..cut],
            second - first,
        ),
        &mut out,
    );
    feed(
        &mut s,
        Side::Requests,
        &client.bytes,
        second,
        client.bytes.len(),
        &mut out,
    );
    assert_eq!(out.len(), 2);
    let one = head(&out[0].1);
    assert_eq!(
        (one.head.method.as_str(), one.head.path.as_str()),
        ("POST", "/a.B/One")
    );
    assert!(one.unknown);
    // The second block names `x-tenant` and `traceparent` by their table
    // entries, which the fresh decoder does not have: unknown, and no wrong
    // value (its `:path` came before them and is read).
    let two = head(&out[1].1);
    assert_eq!(two.head.path, "/a.B/Two");
    assert!(two.unknown);
    assert_eq!(out[1].1.seq, CLIENT_SEQ + second as u32);
    // The cut transfer's DATA frame header was beyond the capture too: the
    // framing was found again at the next transfer.
    let (p, _) = s.take_problems();
    assert_eq!((p.unknown_headers, p.truncated), (2, 1));
}

/// A frame header beyond the capture loses the framing; a later transfer of
/// whole frames finds it again.
#[test]
fn framing_lost_beyond_the_capture_is_found_again_at_a_transfer_of_whole_frames() {
    let mut client = Peer::client();
    let a = client.bytes.len();
    client.request(1, "/a.B/One");
    client.request(3, "/a.B/Two");
    let b = client.bytes.len();
    let at5 = client.request(5, "/a.B/Three");
    let mut s = Session::new(start());
    let mut out = Vec::new();
    feed(&mut s, Side::Requests, &client.bytes, 0, a, &mut out);
    // Streams 1 and 3 in one transfer captured to 20 bytes: stream 1's
    // header block is cut and stream 3's frame header is beyond the capture.
    s.feed(
        Side::Requests,
        transfer(CLIENT_SEQ + a as u32, &client.bytes[a..a + 20], b - a),
        &mut out,
    );
    assert_eq!(s.take_problems().0.truncated, 1);
    assert_eq!(s.requests.read, Read::Lost);
    feed(
        &mut s,
        Side::Requests,
        &client.bytes,
        b,
        client.bytes.len(),
        &mut out,
    );
    let last = &out.last().unwrap().1;
    assert_eq!((last.stream, last.seq), (5, CLIENT_SEQ + at5));
    assert_eq!(head(last).head.path, "/a.B/Three");
}

/// A connection seen mid-way: static-table and literal fields are read; entries
/// added before the probe started are unknown.
#[test]
fn a_connection_seen_mid_way_reads_static_and_literal_fields() {
    let mut client = Peer::client();
    let mut server = Peer::server();
    client.request(1, "/a.B/Old");
    server.response(1, "0");
    let (c0, s0) = (client.bytes.len(), server.bytes.len());
    let at3 = client.request(3, "/a.B/New");
    let resp3 = server.response(3, "0");
    let t = transfer(
        CLIENT_SEQ + c0 as u32,
        &client.bytes[c0..],
        client.bytes.len() - c0,
    );
    let begin = starts_session(&t).unwrap();
    assert!(begin.mid_way && begin.requests_this_way);
    let mut s = Session::new(begin);
    let mut out = Vec::new();
    feed(
        &mut s,
        Side::Requests,
        &client.bytes,
        c0,
        client.bytes.len(),
        &mut out,
    );
    feed(
        &mut s,
        Side::Answers,
        &server.bytes,
        s0,
        server.bytes.len(),
        &mut out,
    );
    assert_eq!(out.len(), 2);
    let (req, resp) = (&out[0].1, &out[1].1);
    assert_eq!(
        (req.seq, resp.seq),
        (CLIENT_SEQ + at3, SERVER_SEQ.wrapping_add(resp3))
    );
    assert_eq!(head(req).head.path, "/a.B/New");
    assert!(head(req).unknown);
    assert_eq!(head(resp).head.status, 200);
    // The trailers name `grpc-status` by the entry stream 1's trailers added
    // before the probe started: unknown, not guessed.
    assert_eq!(head(resp).grpc_status, None);
    assert!(head(resp).unknown);
}

#[test]
fn a_push_promise_keeps_the_table_in_step() {
    let mut client = Peer::client();
    let mut server = Peer::server();
    client.request(1, "/index.html");
    // The promise's block adds `x-push: yes` to the server's table; the
    // response then names it by index.
    let promise = server.block(&[(":method", "GET"), ("x-push", "yes")]);
    let mut payload = 2u32.to_be_bytes().to_vec();
    payload.extend_from_slice(&promise);
    server.frame(PUSH_PROMISE, END_HEADERS, 1, &payload);
    server.headers(1, &[(":status", "200"), ("x-push", "yes")], true);
    let mut s = Session::new(start());
    let mut out = Vec::new();
    feed(
        &mut s,
        Side::Requests,
        &client.bytes,
        0,
        client.bytes.len(),
        &mut out,
    );
    feed(
        &mut s,
        Side::Answers,
        &server.bytes,
        0,
        server.bytes.len(),
        &mut out,
    );
    assert_eq!(out.len(), 2);
    assert!(!head(&out[1].1).unknown);
    assert_eq!(s.take_problems().0, Problems::default());
}

#[test]
fn responses_begun_end_with_the_connection() {
    let mut client = Peer::client();
    let mut server = Peer::server();
    client.request(1, "/a.B/Stream");
    server.headers(1, &[(":status", "200")], false);
    let mut s = Session::new(start());
    let mut out = Vec::new();
    feed(
        &mut s,
        Side::Requests,
        &client.bytes,
        0,
        client.bytes.len(),
        &mut out,
    );
    feed(
        &mut s,
        Side::Answers,
        &server.bytes,
        0,
        server.bytes.len(),
        &mut out,
    );
    assert_eq!(out.len(), 1);
    s.end(&mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(head(&out[1].1).head.status, 200);
}

proptest! {
    /// Any bytes, cut anywhere and captured to any length: no panic, and every
    /// message's sequence number lies inside what was fed.
    #[test]
    fn any_bytes_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..600),
        cuts in proptest::collection::vec(0usize..600, 0..8),
        capture in 0usize..64,
        mid_way in any::<bool>(),
    ) {
        let mut s = Session::new(Start { mid_way, requests_this_way: true });
        let mut out = Vec::new();
        let mut points: Vec<usize> = cuts.into_iter().filter(|&c| c < data.len()).collect();
        points.push(0);
        points.push(data.len());
        points.sort_unstable();
        points.dedup();
        for (i, w) in points.windows(2).enumerate() {
            let side = if i % 2 == 0 { Side::Requests } else { Side::Answers };
            let seen = (w[1] - w[0]).min(capture.max(1) * 16);
            s.feed(side, transfer(w[0] as u32, &data[w[0]..w[0] + seen], w[1] - w[0]), &mut out);
        }
        s.end(&mut out);
        for (_, m) in &out {
            prop_assert!((m.seq as usize) < data.len().max(1));
        }
        let _ = s.held_bytes();
    }

    /// Where transfers split a connection's bytes does not change what it says.
    #[test]
    fn split_points_do_not_matter(cuts in proptest::collection::vec(1usize..2000, 0..12)) {
        let mut client = Peer::client();
        let mut server = Peer::server();
        for i in 0..6u32 {
            client.request(2 * i + 1, &format!("/a.B/M{i}"));
            server.response(2 * i + 1, "0");
        }
        let whole = |s: &mut Session, side, bytes: &[u8], points: &[usize], out: &mut Vec<_>| {
            for w in points.windows(2) {
                feed(s, side, bytes, w[0], w[1], out);
            }
        };
        let points = |len: usize| {
            let mut p: Vec<usize> = cuts.iter().map(|&c| c % len).collect();
            p.push(0);
            p.push(len);
            p.sort_unstable();
            p.dedup();
            p
        };
        let mut one = Session::new(start());
        let mut expected = Vec::new();
        whole(&mut one, Side::Requests, &client.bytes, &[0, client.bytes.len()], &mut expected);
        whole(&mut one, Side::Answers, &server.bytes, &[0, server.bytes.len()], &mut expected);
        let mut split = Session::new(start());
        let mut got = Vec::new();
        whole(&mut split, Side::Requests, &client.bytes, &points(client.bytes.len()), &mut got);
        whole(&mut split, Side::Answers, &server.bytes, &points(server.bytes.len()), &mut got);
        prop_assert_eq!(expected.len(), 12);
        prop_assert_eq!(got, expected);
    }
}
