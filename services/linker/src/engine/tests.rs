//! One test per linking case of issue 3. Spans are built by hand so each test
//! says exactly what the probes saw.

use std::collections::HashMap;
use std::time::Duration;

use espan::wire::{AppTrace, ESpan, Endpoint, SamplingDecision, SpanKind, TraceFormat};

use super::*;

const T0: u64 = 1_700_000_000_000_000_000;
const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;

fn keep_all() -> EngineConfig {
    EngineConfig {
        sampling_rate: 1.0,
        ..EngineConfig::default()
    }
}

fn ep(ip: [u8; 4], port: u32) -> Endpoint {
    Endpoint {
        ip: ip.to_vec(),
        port,
    }
}

/// A span; the tests set what matters to them.
fn span(host: &str, id: u64, kind: SpanKind, seqs: (u32, u32), start: u64, end: u64) -> ESpan {
    ESpan {
        span_id: id,
        kind: kind as i32,
        protocol: espan::wire::Protocol::Http1 as i32,
        local: Some(ep([10, 0, 0, 1], 40_000)),
        remote: Some(ep([10, 0, 0, 2], 8080)),
        req_seq: seqs.0,
        resp_seq: seqs.1,
        start_ns: start,
        end_ns: end,
        pid: 100,
        tid: 101,
        host: host.into(),
        service: format!("svc-{host}"),
        ..ESpan::default()
    }
}

/// A call from `client` (on `ch`) to `server` (on `sh`): the server's view
/// mirrors the client's tuple, its times lie inside the client's.
fn call(ch: &str, client: u64, sh: &str, server: u64, seqs: (u32, u32), at: u64) -> [ESpan; 2] {
    let c_local = ep(
        [10, 0, 1, (client % 200) as u8],
        30_000 + (client % 30_000) as u32,
    );
    let s_local = ep([10, 0, 2, (server % 200) as u8], 8080);
    let mut c = span(ch, client, SpanKind::Client, seqs, at, at + 10 * MS);
    c.local = Some(c_local.clone());
    c.remote = Some(s_local.clone());
    let mut s = span(sh, server, SpanKind::Server, seqs, at + MS / 2, at + 9 * MS);
    s.local = Some(s_local);
    s.remote = Some(c_local);
    s.pid = 200;
    [c, s]
}

/// Ingests everything at `now`, then finishes it all.
fn run(engine: &mut Engine, spans: Vec<ESpan>, now: u64) -> Vec<Finished> {
    for s in spans {
        engine.ingest(s, 1, now);
    }
    engine.advance(now + 30 * SEC)
}

/// span_id → parent_id over all finished traces, each span once.
fn parents(done: &[Finished]) -> HashMap<u64, u64> {
    let mut map = HashMap::new();
    for f in done {
        for l in &f.trace.spans {
            let id = l.span.span_id;
            assert!(map.insert(id, l.parent_id).is_none(), "span {id} twice");
        }
    }
    map
}

fn trace_of(done: &[Finished], span_id: u64) -> &Finished {
    done.iter()
        .find(|f| f.trace.spans.iter().any(|l| l.span.span_id == span_id))
        .unwrap()
}

#[test]
fn a_call_links_the_server_under_its_client() {
    let mut e = Engine::new(keep_all());
    let done = run(&mut e, call("a", 1, "b", 2, (1000, 5000), T0).to_vec(), T0);
    assert_eq!(done.len(), 1);
    assert_eq!(parents(&done), HashMap::from([(1, 0), (2, 1)]));
    let stats = e.stats();
    assert_eq!(stats.linked_cross_process, 1);
    assert_eq!(stats.traces_finished, 1);
    assert_eq!(stats.spans_in_window, 0);
    assert_eq!(stats.spans_retained, 2);
}

#[test]
fn keep_alive_many_calls_on_one_connection() {
    // One frontend request makes 50 calls on one connection: the seqs advance by
    // each request's and response's length; every server finds its own client.
    let mut e = Engine::new(keep_all());
    let mut spans = vec![span("a", 1, SpanKind::Server, (7, 9), T0, T0 + SEC)];
    let (mut req, mut resp) = (1_000_000u32, 9_000_000u32);
    for i in 0..50u64 {
        let mut pair = call(
            "a",
            100 + i,
            "b",
            200 + i,
            (req, resp),
            T0 + (i + 1) * 11 * MS,
        );
        // The same connection: the same tuple every time.
        pair[0].local = Some(ep([10, 0, 1, 1], 40_001));
        pair[1].remote = Some(ep([10, 0, 1, 1], 40_001));
        pair[0].local_parent_id = 1;
        spans.extend(pair);
        req = req.wrapping_add(300);
        resp = resp.wrapping_add(4_000);
    }
    let done = run(&mut e, spans, T0 + SEC);
    assert_eq!(done.len(), 1, "one trace");
    let p = parents(&done);
    assert_eq!(p.len(), 101);
    assert_eq!(p[&1], 0);
    for i in 0..50 {
        assert_eq!(p[&(100 + i)], 1, "client under the frontend request");
        assert_eq!(p[&(200 + i)], 100 + i, "server under its own client");
    }
    assert_eq!(e.stats().ambiguous, 0);
}

#[test]
fn pipelined_requests_link_each_to_its_own_response() {
    // Two requests written back to back before either answer: both clients are
    // in flight at once on one connection; the second pair starts where the
    // first request and response end.
    let mut e = Engine::new(keep_all());
    let [c1, s1] = call("a", 1, "b", 2, (500, 800), T0);
    let [mut c2, mut s2] = call("a", 3, "b", 4, (500 + 120, 800 + 2_000), T0);
    c2.local = c1.local.clone();
    s2.remote = s1.remote.clone();
    s2.start_ns = s1.end_ns; // the server answers them in order
    s2.end_ns = s1.end_ns + MS / 2;
    c2.end_ns = s2.end_ns + MS / 2;
    let done = run(&mut e, vec![c2, s1, c1, s2], T0);
    assert_eq!(
        parents(&done),
        HashMap::from([(1, 0), (2, 1), (3, 0), (4, 3)])
    );
}

#[test]
fn sequence_numbers_wrap_at_2_pow_32() {
    let mut e = Engine::new(keep_all());
    let mut spans = Vec::new();
    let (mut req, mut resp) = (u32::MAX - 250, u32::MAX - 10);
    for i in 0..4u64 {
        spans.extend(call(
            "a",
            10 + i,
            "b",
            20 + i,
            (req, resp),
            T0 + i * 20 * MS,
        ));
        req = req.wrapping_add(200);
        resp = resp.wrapping_add(200);
    }
    // The calls after the wrap carry small seqs.
    assert!(spans[4].req_seq < 1_000 && spans[2].resp_seq < 1_000);
    let done = run(&mut e, spans, T0);
    let p = parents(&done);
    for i in 0..4 {
        assert_eq!(p[&(20 + i)], 10 + i);
    }
}

#[test]
fn a_duplicate_delivery_is_counted_once() {
    let mut e = Engine::new(keep_all());
    let [c, s] = call("a", 1, "b", 2, (1, 2), T0);
    assert_eq!(e.ingest(c.clone(), 1, T0), Ingested::Open);
    assert_eq!(e.ingest(s.clone(), 1, T0), Ingested::Open);
    assert_eq!(e.ingest(s.clone(), 2, T0), Ingested::Duplicate);
    assert_eq!(e.ingest(c, 2, T0), Ingested::Duplicate);
    let done = e.advance(T0 + 30 * SEC);
    assert_eq!(parents(&done), HashMap::from([(1, 0), (2, 1)]));
    assert_eq!(e.stats().duplicates, 2);
    assert_eq!(e.stats().ambiguous, 0);
    // The same span_id on another host is another span.
    let mut other = s;
    other.host = "c".into();
    assert_eq!(e.ingest(other, 3, T0 + 30 * SEC), Ingested::Open);
}

#[test]
fn a_server_span_before_its_client_span() {
    let mut e = Engine::new(keep_all());
    let [c, s] = call("a", 1, "b", 2, (1, 2), T0);
    e.ingest(s, 1, T0);
    assert!(
        e.advance(T0 + 10 * SEC).is_empty(),
        "not final within the window"
    );
    e.ingest(c, 1, T0 + 10 * SEC);
    let done = e.advance(T0 + 40 * SEC);
    assert_eq!(parents(&done), HashMap::from([(1, 0), (2, 1)]));
}

/// frontend (a) → checkout (b) → payment (c), and checkout → cart (a).
fn three_hosts() -> (Vec<ESpan>, HashMap<u64, u64>) {
    let mut fe = span("a", 1, SpanKind::Server, (11, 12), T0, T0 + 100 * MS);
    fe.remote = Some(ep([203, 0, 113, 9], 5555));
    let [mut c1, s1] = call("a", 2, "b", 3, (100, 200), T0 + MS);
    c1.local_parent_id = 1;
    let [mut c2, mut s2] = call("b", 4, "c", 5, (300, 400), T0 + 2 * MS);
    c2.local_parent_id = 3;
    c2.pid = 200;
    s2.pid = 300;
    let [mut c3, s3] = call("b", 6, "a", 7, (500, 600), T0 + 3 * MS);
    c3.local_parent_id = 3;
    c3.pid = 200;
    let truth = HashMap::from([(1, 0), (2, 1), (3, 2), (4, 3), (5, 4), (6, 3), (7, 6)]);
    (vec![fe, c1, s1, c2, s2, c3, s3], truth)
}

#[test]
fn out_of_order_across_probes_in_every_order() {
    let (spans, truth) = three_hosts();
    let mut order: Vec<usize> = (0..spans.len()).collect();
    let mut seen_ids = std::collections::HashSet::new();
    // All 5040 orders: each gives the same tree and the same trace id.
    permute(&mut order, 0, &mut |order| {
        let mut e = Engine::new(keep_all());
        let shuffled = order.iter().map(|&i| spans[i].clone()).collect();
        let done = run(&mut e, shuffled, T0);
        assert_eq!(done.len(), 1, "order {order:?}");
        assert_eq!(parents(&done), truth, "order {order:?}");
        seen_ids.insert((done[0].trace.trace_id_high, done[0].trace.trace_id_low));
    });
    assert_eq!(seen_ids.len(), 1);
}

fn permute(v: &mut Vec<usize>, k: usize, f: &mut impl FnMut(&[usize])) {
    if k == v.len() {
        f(v);
        return;
    }
    for i in k..v.len() {
        v.swap(k, i);
        permute(v, k + 1, f);
        v.swap(k, i);
    }
}

#[test]
fn a_span_without_a_peer_stays_a_root_or_a_leaf() {
    let mut e = Engine::new(keep_all());
    let lonely_server = span("a", 1, SpanKind::Server, (1, 2), T0, T0 + MS);
    let lonely_client = span("b", 2, SpanKind::Client, (3, 4), T0, T0 + MS);
    // A client called from a traced request, whose server is not traced: a leaf.
    let parent = span("c", 3, SpanKind::Server, (5, 6), T0, T0 + 10 * MS);
    let mut leaf = span("c", 4, SpanKind::Client, (7, 8), T0 + MS, T0 + 2 * MS);
    leaf.local_parent_id = 3;
    let done = run(&mut e, vec![lonely_server, lonely_client, parent, leaf], T0);
    assert_eq!(done.len(), 3);
    assert_eq!(
        parents(&done),
        HashMap::from([(1, 0), (2, 0), (3, 0), (4, 3)])
    );
    let stats = e.stats();
    assert_eq!(stats.unlinked, 2);
    assert_eq!(stats.linked_local, 1);
    assert_eq!(stats.linked_cross_process, 0);
}

#[test]
fn a_thread_pool_serving_two_requests_at_once() {
    // Two requests reach worker threads 11 and 12 of one process at once; each
    // calls the same downstream service, at the same time, on its own connection.
    let mut e = Engine::new(keep_all());
    let mut r1 = span("b", 1, SpanKind::Server, (10, 20), T0, T0 + 50 * MS);
    let mut r2 = span("b", 2, SpanKind::Server, (30, 40), T0, T0 + 50 * MS);
    r1.tid = 11;
    r2.tid = 12;
    let [mut c1, s1] = call("b", 3, "c", 4, (1_000, 2_000), T0 + MS);
    let [mut c2, s2] = call("b", 5, "c", 6, (3_000, 4_000), T0 + MS);
    for (c, (parent, tid)) in [(&mut c1, (1, 11)), (&mut c2, (2, 12))] {
        c.pid = r1.pid;
        c.tid = tid;
        c.local_parent_id = parent;
    }
    let done = run(&mut e, vec![c2, s1, r1, s2, c1, r2], T0);
    assert_eq!(done.len(), 2);
    assert_eq!(
        parents(&done),
        HashMap::from([(1, 0), (2, 0), (3, 1), (4, 3), (5, 2), (6, 5)])
    );
}

#[test]
fn a_local_parent_of_another_process_or_kind_is_refused() {
    let mut e = Engine::new(keep_all());
    let parent = span("a", 1, SpanKind::Server, (1, 2), T0, T0 + 10 * MS);
    let mut other_pid = span("a", 2, SpanKind::Client, (3, 4), T0 + MS, T0 + 2 * MS);
    other_pid.local_parent_id = 1;
    other_pid.pid = 999;
    let mut client_parent = span("a", 3, SpanKind::Client, (5, 6), T0 + MS, T0 + 2 * MS);
    client_parent.local_parent_id = 2; // a CLIENT span
    // The same, when the child arrives before the span it names.
    let mut early_child = span("a", 4, SpanKind::Client, (7, 8), T0 + MS, T0 + 2 * MS);
    early_child.local_parent_id = 5;
    let named_client = span("a", 5, SpanKind::Client, (9, 10), T0, T0 + 3 * MS);
    let done = run(
        &mut e,
        vec![parent, other_pid, client_parent, early_child, named_client],
        T0,
    );
    assert_eq!(
        parents(&done),
        HashMap::from([(1, 0), (2, 0), (3, 0), (4, 0), (5, 0)])
    );
    assert_eq!(e.stats().rejected_local, 3);
}

#[test]
fn two_candidates_link_neither_and_count_it() {
    // Two servers carry the pair of one client, both within its time: which one
    // answered cannot be told, so none is linked.
    let mut e = Engine::new(keep_all());
    let [c, s1] = call("a", 1, "b", 2, (77, 88), T0);
    let mut s2 = s1.clone();
    s2.span_id = 3;
    s2.host = "c".into();
    let done = run(&mut e, vec![c, s1, s2], T0);
    assert_eq!(parents(&done), HashMap::from([(1, 0), (2, 0), (3, 0)]));
    assert!(e.stats().ambiguous >= 2);
    assert_eq!(e.stats().linked_cross_process, 0);
}

#[test]
fn a_second_candidate_withdraws_an_open_edge_and_splits_the_tree() {
    let mut e = Engine::new(keep_all());
    let [c, s1] = call("a", 1, "b", 2, (77, 88), T0);
    // s1 has a child of its own, which must stay with it.
    let [mut c_below, s_below] = call("b", 4, "d", 5, (900, 901), T0 + MS);
    c_below.local_parent_id = 2;
    c_below.pid = 200;
    let mut s2 = s1.clone();
    s2.span_id = 3;
    s2.host = "c".into();
    for s in [c, s1, c_below, s_below] {
        e.ingest(s, 1, T0);
    }
    assert_eq!(e.stats().traces_in_window, 1);
    e.ingest(s2, 1, T0);
    assert_eq!(e.stats().traces_in_window, 3);
    let done = e.advance(T0 + 30 * SEC);
    assert_eq!(
        parents(&done),
        HashMap::from([(1, 0), (2, 0), (3, 0), (4, 2), (5, 4)])
    );
    assert_eq!(trace_of(&done, 2).trace.spans.len(), 3);
}

#[test]
fn a_same_pair_far_apart_in_time_is_two_calls() {
    // The same pair again, a minute later on another connection: a coincidence
    // the time check rejects.
    let mut e = Engine::new(keep_all());
    let [c1, s1] = call("a", 1, "b", 2, (5, 6), T0);
    let [c2, s2] = call("a", 3, "b", 4, (5, 6), T0 + 60 * SEC);
    let mut spans = vec![c1, s1, c2, s2];
    let mut done = Vec::new();
    for s in spans.drain(..) {
        let now = s.start_ns;
        e.ingest(s, 1, now);
    }
    done.extend(e.advance(T0 + 120 * SEC));
    assert_eq!(
        parents(&done),
        HashMap::from([(1, 0), (2, 1), (3, 0), (4, 3)])
    );
    assert_eq!(e.stats().ambiguous, 0);
}

#[test]
fn clock_skew_is_tolerated_up_to_the_configured_bound() {
    for (skew_ms, linked) in [(30i64, true), (-30, true), (80, false), (-80, false)] {
        let mut e = Engine::new(keep_all());
        let [c, mut s] = call("a", 1, "b", 2, (5, 6), T0);
        s.start_ns = s.start_ns.saturating_add_signed(skew_ms * MS as i64);
        s.end_ns = s.end_ns.saturating_add_signed(skew_ms * MS as i64);
        let done = run(&mut e, vec![c, s], T0);
        let expect = if linked { 1 } else { 0 };
        assert_eq!(parents(&done)[&2], expect, "skew {skew_ms} ms");
    }
}

#[test]
fn nat_between_hosts_does_not_break_a_link() {
    // The client dials a virtual IP; the server sees the client's node address
    // and a translated port. Only the seqs and times agree.
    let mut e = Engine::new(keep_all());
    let [mut c, mut s] = call("a", 1, "b", 2, (5, 6), T0);
    c.remote = Some(ep([10, 96, 0, 10], 80));
    s.remote = Some(ep([192, 168, 1, 1], 61_000));
    let done = run(&mut e, vec![c, s], T0);
    assert_eq!(parents(&done)[&2], 1);
}

#[test]
fn on_one_host_the_tuple_must_agree() {
    // Destination NAT on the host (a ClusterIP): the source end still agrees.
    let mut e = Engine::new(keep_all());
    let [mut c, s] = call("a", 1, "a", 2, (5, 6), T0);
    c.remote = Some(ep([10, 96, 0, 10], 80));
    assert_eq!(parents(&run(&mut e, vec![c, s], T0))[&2], 1);

    // Another source: another connection that happens to carry the same pair.
    let mut e = Engine::new(keep_all());
    let [c, mut s] = call("a", 1, "a", 2, (5, 6), T0);
    s.remote = Some(ep([10, 0, 9, 9], 1234));
    assert_eq!(parents(&run(&mut e, vec![c, s], T0))[&2], 0);

    // Mirrored mode also wants the other end.
    let mut e = Engine::new(EngineConfig {
        same_host_tuple: SameHostTuple::Mirrored,
        ..keep_all()
    });
    let [mut c, s] = call("a", 1, "a", 2, (5, 6), T0);
    c.remote = Some(ep([10, 96, 0, 10], 80));
    assert_eq!(parents(&run(&mut e, vec![c, s], T0))[&2], 0);
}

#[test]
fn pairs_without_response_or_without_seqs() {
    let mut e = Engine::new(keep_all());
    // Neither side saw a response: (req_seq, 0) on both; unique, in time: linked.
    let [c1, s1] = call("a", 1, "b", 2, (4242, 0), T0);
    // The client gave up before the response the server sent: different pairs.
    let [c2, mut s2] = call("a", 3, "b", 4, (5353, 0), T0);
    s2.resp_seq = 777;
    // No seqs at all: never matched.
    let [c3, s3] = call("a", 5, "b", 6, (0, 0), T0);
    let done = run(&mut e, vec![c1, s1, c2, s2, c3, s3], T0);
    assert_eq!(
        parents(&done),
        HashMap::from([(1, 0), (2, 1), (3, 0), (4, 0), (5, 0), (6, 0)])
    );
    assert_eq!(e.stats().no_seq, 2);
}

fn app(format: TraceFormat, high: u64, low: u64, sampling: SamplingDecision) -> AppTrace {
    AppTrace {
        format: format as i32,
        trace_id_high: high,
        trace_id_low: low,
        parent_span_id: 9,
        sampling: sampling as i32,
    }
}

#[test]
fn a_w3c_128_bit_app_trace_id_is_the_trace_id() {
    let id = (0x4bf9_2f35_77b3_4da6, 0xa3ce_929d_0e0e_4736);
    let mut e = Engine::new(keep_all());
    let [c, mut s] = call("a", 1, "b", 2, (5, 6), T0);
    s.app_trace = Some(app(TraceFormat::W3c, id.0, id.1, SamplingDecision::Unset));
    let done = run(&mut e, vec![c, s], T0);
    let t = &done[0].trace;
    assert_eq!((t.trace_id_high, t.trace_id_low), id);
    assert!(t.app_trace_id);
}

#[test]
fn a_datadog_64_bit_app_trace_id_goes_in_the_low_half() {
    let mut e = Engine::new(keep_all());
    let [c, mut s] = call("a", 1, "b", 2, (5, 6), T0);
    s.app_trace = Some(app(
        TraceFormat::Datadog,
        0,
        1_234_567_890_123,
        SamplingDecision::Unset,
    ));
    let done = run(&mut e, vec![c, s], T0);
    let t = &done[0].trace;
    assert_eq!((t.trace_id_high, t.trace_id_low), (0, 1_234_567_890_123));
    assert!(t.app_trace_id);
}

#[test]
fn the_app_id_nearest_the_root_wins_and_can_be_turned_off() {
    let spans = || {
        let (mut spans, _) = three_hosts();
        spans[4].app_trace = Some(app(TraceFormat::W3c, 5, 5, SamplingDecision::Unset)); // depth 4
        spans[2].app_trace = Some(app(TraceFormat::W3c, 3, 3, SamplingDecision::Unset)); // depth 2
        spans
    };
    let mut e = Engine::new(keep_all());
    let t = &run(&mut e, spans(), T0)[0].trace;
    assert_eq!((t.trace_id_high, t.trace_id_low), (3, 3));

    let mut e = Engine::new(EngineConfig {
        use_app_trace_id: false,
        ..keep_all()
    });
    let t = &run(&mut e, spans(), T0)[0].trace;
    assert!(!t.app_trace_id);
    let root = &spans()[0];
    let derived = trace_id::derived(hash::hash_bytes(b"a"), root.span_id, root.start_ns);
    assert_eq!(
        (t.trace_id_high, t.trace_id_low),
        (derived.high, derived.low)
    );
}

/// 1000 independent calls through an engine with this rate: how many kept.
fn kept_at(rate: f64) -> usize {
    let mut e = Engine::new(EngineConfig {
        sampling_rate: rate,
        ..EngineConfig::default()
    });
    let mut spans = Vec::new();
    for i in 0..1000u64 {
        spans.extend(call(
            "a",
            2 * i + 1,
            "b",
            2 * i + 2,
            (i as u32, 1),
            T0 + i * 20 * MS,
        ));
    }
    let done = run(&mut e, spans, T0);
    assert_eq!(done.len(), 1000);
    for f in &done {
        let id = TraceId {
            high: f.trace.trace_id_high,
            low: f.trace.trace_id_low,
        };
        assert_eq!(f.sampled, trace_id::keep_by_rate(id, rate));
    }
    let stats = e.stats();
    assert_eq!(stats.traces_kept + stats.traces_dropped_by_sampling, 1000);
    stats.traces_kept as usize
}

#[test]
fn sampling_at_0_0p1_and_1() {
    assert_eq!(kept_at(0.0), 0);
    assert_eq!(kept_at(1.0), 1000);
    let tenth = kept_at(0.1);
    // The ids are fixed, so this count is too; it must be near 100.
    assert!((70..=130).contains(&tenth), "kept {tenth} of 1000 at 0.1");
}

#[test]
fn the_apps_own_decision_beats_the_rate() {
    for (rate, decision, kept) in [
        (1.0, SamplingDecision::Drop, false),
        (0.0, SamplingDecision::Keep, true),
    ] {
        let mut e = Engine::new(EngineConfig {
            sampling_rate: rate,
            ..EngineConfig::default()
        });
        let [c, mut s] = call("a", 1, "b", 2, (5, 6), T0);
        s.app_trace = Some(app(TraceFormat::W3c, 1, 2, decision));
        let done = run(&mut e, vec![c, s], T0);
        assert_eq!(done[0].sampled, kept);
    }
}

#[test]
fn late_spans_join_their_finished_trace() {
    let mut e = Engine::new(EngineConfig {
        sampling_rate: 0.5,
        ..EngineConfig::default()
    });
    let (spans, truth) = three_hosts();
    let (on_time, late): (Vec<_>, Vec<_>) = spans.into_iter().partition(|s| s.span_id <= 4);
    for s in on_time {
        e.ingest(s, 1, T0);
    }
    let first = e.advance(T0 + 20 * SEC);
    assert_eq!(first.len(), 1);
    let id = (first[0].trace.trace_id_high, first[0].trace.trace_id_low);
    // 5 is a server whose client (4) is finished; 6 a client whose local parent
    // (3) is finished; 7 is 6's server, joining the late part.
    for s in late {
        assert_eq!(e.ingest(s, 2, T0 + 25 * SEC), Ingested::Late);
    }
    let second = e.advance(T0 + 45 * SEC);
    assert_eq!(second.len(), 2, "one late part per finished parent reached");
    for part in &second {
        assert!(part.trace.late);
        assert_eq!((part.trace.trace_id_high, part.trace.trace_id_low), id);
        assert_eq!(part.sampled, first[0].sampled);
        assert_eq!(part.tags, vec![2]);
    }
    let mut all = first.clone();
    all.extend(second);
    assert_eq!(parents(&all), truth);
    assert_eq!(e.stats().late, 3);
    assert_eq!(e.stats().late_parts, 2);
    assert_eq!(e.stats().traces_finished, 1);
}

#[test]
fn after_late_retention_a_late_span_starts_over() {
    let mut e = Engine::new(keep_all());
    let [c, s] = call("a", 1, "b", 2, (5, 6), T0);
    e.ingest(c, 1, T0);
    e.advance(T0 + 20 * SEC); // finished
    e.advance(T0 + 40 * SEC); // and forgotten
    assert_eq!(e.stats().spans_retained, 0);
    assert_eq!(e.ingest(s, 2, T0 + 41 * SEC), Ingested::Open);
    let done = e.advance(T0 + 70 * SEC);
    assert_eq!(parents(&done), HashMap::from([(2, 0)]));
}

#[test]
fn a_parent_after_its_finished_child_is_counted_not_linked() {
    let mut e = Engine::new(keep_all());
    let [c, s] = call("a", 1, "b", 2, (5, 6), T0);
    e.ingest(s, 1, T0);
    let first = e.advance(T0 + 20 * SEC);
    assert_eq!(e.ingest(c, 2, T0 + 21 * SEC), Ingested::Open);
    let second = e.advance(T0 + 50 * SEC);
    assert_eq!(
        parents(&[first, second].concat()),
        HashMap::from([(1, 0), (2, 0)])
    );
    assert_eq!(e.stats().late_parent_missed, 1);
}

#[test]
fn tags_stay_live_until_late_retention_then_retire() {
    let mut e = Engine::new(keep_all());
    let [c, s] = call("a", 1, "b", 2, (5, 6), T0);
    e.ingest(c, 10, T0);
    e.ingest(s, 11, T0);
    e.ingest(span("a", 1, SpanKind::Client, (5, 6), T0, T0 + MS), 12, T0); // duplicate
    let mut live: Vec<_> = e.live_tags().collect();
    live.sort();
    assert_eq!(live, vec![10, 11]);
    assert_eq!(
        e.take_retired_tags(),
        vec![12],
        "a batch of duplicates only"
    );
    let done = e.advance(T0 + 20 * SEC);
    assert_eq!(done[0].tags, vec![10, 11]);
    assert!(e.is_live(10) && e.is_live(11), "kept for late joins");
    assert!(e.take_retired_tags().is_empty());
    e.advance(T0 + 40 * SEC);
    assert_eq!(e.live_tags().count(), 0);
    assert_eq!(e.take_retired_tags(), vec![10, 11]);
    assert!(e.take_retired_tags().is_empty());
}

#[test]
fn forgotten_spans_are_reported_with_their_tags_when_tracked() {
    let mut untracked = Engine::new(keep_all());
    let mut e = Engine::new(keep_all());
    e.track_forgotten(true);
    for engine in [&mut untracked, &mut e] {
        let [c, s] = call("a", 1, "b", 2, (5, 6), T0);
        engine.ingest(c, 10, T0);
        engine.ingest(s, 11, T0);
        // Another trace in batch 11, still open when the first is forgotten.
        engine.ingest(
            span("b", 7, SpanKind::Server, (8, 9), T0, T0 + MS),
            11,
            T0 + 25 * SEC,
        );
    }
    e.advance(T0 + 20 * SEC);
    assert!(
        e.take_forgotten().is_empty(),
        "finished, kept for late joins"
    );
    e.advance(T0 + 41 * SEC);
    let mut forgotten = e.take_forgotten();
    forgotten.sort();
    assert_eq!(forgotten, vec![(10, 1), (11, 2)]);
    assert!(e.is_live(11), "batch 11 still holds the open trace");
    assert!(e.take_forgotten().is_empty(), "each once");
    untracked.advance(T0 + 41 * SEC);
    assert!(
        untracked.take_forgotten().is_empty(),
        "not tracked: nothing kept"
    );
}

#[test]
fn a_trace_stays_open_while_spans_keep_joining() {
    let mut e = Engine::new(keep_all());
    let root = span("a", 1, SpanKind::Server, (1, 2), T0, T0 + 100 * SEC);
    e.ingest(root, 1, T0);
    for i in 0..5u64 {
        let now = T0 + (i + 1) * 15 * SEC;
        assert!(e.advance(now).is_empty(), "joined {i} at 15 s intervals");
        let mut child = span(
            "a",
            10 + i,
            SpanKind::Client,
            (100 + i as u32, 1),
            now,
            now + MS,
        );
        child.local_parent_id = 1;
        e.ingest(child, 1, now);
    }
    let done = e.advance(T0 + 95 * SEC);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].trace.spans.len(), 6);
}

#[test]
fn nonsense_input_never_panics_and_makes_no_edge() {
    let mut e = Engine::new(keep_all());
    let mut weird = vec![
        ESpan::default(),
        ESpan {
            kind: 77,
            span_id: 5,
            ..ESpan::default()
        },
        ESpan {
            span_id: 6,
            kind: SpanKind::Server as i32,
            start_ns: u64::MAX,
            end_ns: 0,
            req_seq: 1,
            resp_seq: 1,
            ..ESpan::default()
        },
        ESpan {
            span_id: 7,
            kind: SpanKind::Client as i32,
            start_ns: 0,
            end_ns: u64::MAX,
            req_seq: 1,
            resp_seq: 1,
            local_parent_id: 7,
            ..ESpan::default()
        },
    ];
    // A cycle: the client names as local parent the server it calls.
    let [mut c, s] = call("a", 8, "a", 9, (3, 3), T0);
    c.local_parent_id = 9;
    c.pid = s.pid;
    weird.extend([c, s]);
    let done = run(&mut e, weird, T0);
    let p = parents(&done);
    assert!(p[&6] == 0 || p[&7] == 0, "no two-span cycle");
    assert!(p[&8] == 0 || p[&9] == 0, "no cycle");
    assert_eq!(e.stats().spans_in_window, 0);
    assert!(
        EngineConfig {
            sampling_rate: f64::NAN,
            ..keep_all()
        }
        .check()
        .is_err()
    );
}

#[test]
fn config_check_names_the_bad_value() {
    let bad = EngineConfig {
        sampling_rate: 1.5,
        ..EngineConfig::default()
    };
    assert_eq!(
        bad.check().unwrap_err().to_string(),
        "sampling_rate 1.5 is not between 0 and 1"
    );
    let zero = EngineConfig {
        window: Duration::ZERO,
        ..EngineConfig::default()
    };
    assert_eq!(zero.check(), Err(ConfigError::ZeroWindow));
    assert!(EngineConfig::default().check().is_ok());
}
