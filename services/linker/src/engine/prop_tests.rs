//! Properties over generated input: no false edge on realistic traces (with
//! reordering, late spans, duplicates and colliding sequence pairs), no span lost
//! or sent twice, the same output for the same input, and no panic on nonsense.

use std::collections::{HashMap, HashSet};

use espan::wire::{ESpan, Endpoint, SpanKind};
use proptest::prelude::*;

use super::*;
use crate::synth::{self, Delivery, SynthConfig};

const SEC: u64 = 1_000_000_000;

/// Feeds spans in order (`now` = their arrival), advancing every `cadence`
/// spans, then finishes everything.
fn feed(config: EngineConfig, spans: &[(ESpan, u64)], cadence: usize) -> (Vec<Finished>, Engine) {
    let mut engine = Engine::new(config);
    let mut out = Vec::new();
    let mut now = 0;
    for (i, (span, at)) in spans.iter().enumerate() {
        now = now.max(*at);
        engine.ingest(span.clone(), i as u64 / 100, now);
        if i % cadence.max(1) == 0 {
            out.extend(engine.advance(now));
        }
    }
    out.extend(engine.advance(now + 100 * SEC));
    (out, engine)
}

/// span_id → parent_id as emitted; panics if a span comes out twice.
fn emitted(done: &[Finished]) -> HashMap<u64, u64> {
    let mut map = HashMap::new();
    for f in done {
        for l in &f.trace.spans {
            let id = l.span.span_id;
            assert!(
                map.insert(id, l.parent_id).is_none(),
                "span {id} sent twice"
            );
        }
    }
    map
}

fn synth_config(seed: u64, traces: usize) -> SynthConfig {
    SynthConfig {
        seed,
        traces,
        max_spans_per_trace: 40,
        ..SynthConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn synthetic_traces_get_no_false_edge(
        seed in any::<u64>(),
        traces in 5usize..60,
        cadence in 1usize..300,
        dup_every in 3usize..50,
    ) {
        let synth = synth::generate(&synth_config(seed, traces));
        let truth: HashMap<u64, u64> =
            synth.spans.iter().map(|s| (s.span.span_id, s.parent)).collect();
        let mut input: Vec<(ESpan, u64)> =
            synth.spans.iter().map(|s| (s.span.clone(), s.arrive_ns)).collect();
        // Redeliver some spans a little later (a probe retrying a batch).
        let dups: Vec<_> = input.iter().step_by(dup_every).cloned().collect();
        for (span, at) in dups {
            let pos = input.partition_point(|(_, t)| *t <= at + SEC / 10);
            input.insert(pos, (span, at + SEC / 10));
        }
        let (done, engine) = feed(EngineConfig { sampling_rate: 0.5, ..EngineConfig::default() }, &input, cadence);
        let got = emitted(&done);
        prop_assert_eq!(got.len(), truth.len(), "every span once");
        for (id, parent) in &got {
            prop_assert!(*parent == 0 || *parent == truth[id], "false edge {} -> {}", id, parent);
        }
        // Everything on time and whose parent was on time is linked.
        let on_time: HashSet<u64> = synth.spans.iter()
            .filter(|s| s.delivery != Delivery::Late).map(|s| s.span.span_id).collect();
        for s in &synth.spans {
            if s.parent != 0 && on_time.contains(&s.span.span_id) && on_time.contains(&s.parent) {
                prop_assert_eq!(got[&s.span.span_id], s.parent, "missed an edge");
            }
        }
        let stats = engine.stats();
        prop_assert_eq!(stats.ambiguous, 0);
        prop_assert_eq!(stats.spans_in_window, 0);
    }

    #[test]
    fn colliding_sequence_pairs_get_no_false_edge(
        seed in any::<u64>(),
        traces in 5usize..40,
        collide_every in 2usize..8,
    ) {
        let config = SynthConfig { late: 0.0, reordered: 0.2, ..synth_config(seed, traces) };
        let mut synth = synth::generate(&config);
        // Give every n-th call the seq pair of the call generated just before it.
        let calls: Vec<(u32, u32)> = synth.spans.iter()
            .filter(|s| s.span.kind == SpanKind::Server as i32)
            .map(|s| (s.span.req_seq, s.span.resp_seq)).collect();
        let remap: HashMap<(u32, u32), (u32, u32)> = calls.windows(2).enumerate()
            .filter(|(i, _)| i % collide_every == 0)
            .map(|(_, w)| (w[1], w[0])).collect();
        for s in &mut synth.spans {
            if let Some(&to) = remap.get(&(s.span.req_seq, s.span.resp_seq)) {
                s.span.req_seq = to.0;
                s.span.resp_seq = to.1;
            }
        }
        let truth: HashMap<u64, u64> =
            synth.spans.iter().map(|s| (s.span.span_id, s.parent)).collect();
        let input: Vec<(ESpan, u64)> =
            synth.spans.iter().map(|s| (s.span.clone(), s.arrive_ns)).collect();
        let (done, _) = feed(EngineConfig::default(), &input, 50);
        let got = emitted(&done);
        prop_assert_eq!(got.len(), truth.len());
        for (id, parent) in &got {
            prop_assert!(*parent == 0 || *parent == truth[id], "false edge {} -> {}", id, parent);
        }
    }

    #[test]
    fn the_same_input_gives_the_same_traces(seed in any::<u64>(), cadence in 1usize..200) {
        let synth = synth::generate(&synth_config(seed, 30));
        let input: Vec<(ESpan, u64)> =
            synth.spans.iter().map(|s| (s.span.clone(), s.arrive_ns)).collect();
        let config = EngineConfig { sampling_rate: 0.3, ..EngineConfig::default() };
        let (first, _) = feed(config.clone(), &input, cadence);
        let (second, _) = feed(config, &input, cadence);
        prop_assert_eq!(first, second);
    }

    #[test]
    fn extra_advances_between_batches_change_nothing(seed in any::<u64>(), extra in 1u64..5) {
        // The service advances before each batch (stamped when received) and also
        // on idle ticks; a rebuild after a crash replays only the batches. Both
        // must give the same traces.
        let synth = synth::generate(&synth_config(seed, 40));
        let batches: Vec<(u64, Vec<ESpan>)> = synth.spans.chunks(50)
            .map(|c| (c.last().map_or(0, |s| s.arrive_ns), c.iter().map(|s| s.span.clone()).collect()))
            .collect();
        let run = |ticks: u64| {
            let mut engine = Engine::new(EngineConfig { sampling_rate: 0.5, ..EngineConfig::default() });
            let mut out = Vec::new();
            let mut last = 0;
            for (tag, (at, spans)) in batches.iter().enumerate() {
                for k in 1..=ticks {
                    out.extend(engine.advance(last + (at - last) * k / (ticks + 1)));
                }
                out.extend(engine.advance(*at));
                for span in spans {
                    engine.ingest(span.clone(), tag as u64, *at);
                }
                last = *at;
            }
            out.extend(engine.advance(last + 100 * SEC));
            out.sort_by_key(|f| (f.trace.trace_id_high, f.trace.trace_id_low, f.trace.late,
                f.trace.spans.first().map_or(0, |l| l.span.span_id)));
            out
        };
        prop_assert_eq!(run(0), run(extra));
    }

    #[test]
    fn nonsense_is_neither_a_panic_nor_a_loss(
        spans in proptest::collection::vec(arbitrary_span(), 1..120),
        cadence in 1usize..20,
    ) {
        let input: Vec<(ESpan, u64)> = spans.into_iter()
            .enumerate().map(|(i, s)| (s, i as u64 * SEC / 4)).collect();
        let config = EngineConfig {
            window: std::time::Duration::from_secs(2),
            // Nothing forgotten while feeding: a repeated id stays a duplicate.
            late_retention: std::time::Duration::from_secs(60),
            ..EngineConfig::default()
        };
        let (done, engine) = feed(config, &input, cadence);
        let got = emitted(&done);
        let stats = engine.stats();
        prop_assert_eq!(got.len() as u64, stats.spans_in - stats.duplicates, "no span lost");
        prop_assert_eq!(stats.spans_in_window, 0);
        for f in &done {
            let ids: HashSet<u64> = f.trace.spans.iter()
                .map(|l| l.span.span_id).collect();
            let roots = f.trace.spans.iter()
                .filter(|l| l.parent_id == 0 || !ids.contains(&l.parent_id)).count();
            prop_assert_eq!(roots, 1, "a trace is one tree");
            for l in &f.trace.spans {
                prop_assert_ne!(l.parent_id, l.span.span_id);
            }
        }
    }
}

/// Spans drawn from small sets, so ids, seqs and hosts collide often.
fn arbitrary_span() -> impl Strategy<Value = ESpan> {
    (
        (1u64..40, 0i32..4, 0u32..3, 0u32..3, 0usize..3),
        (
            0u64..4 * SEC,
            0u64..2 * SEC,
            0u64..300,
            0u32..3,
            any::<bool>(),
        ),
    )
        .prop_map(
            |((id, kind, req, resp, host), (start, len, parent, pid, v6))| {
                let ip = if v6 {
                    vec![0; 16]
                } else {
                    vec![10, 0, 0, host as u8]
                };
                ESpan {
                    // Ids repeat within a host (duplicates), not across hosts.
                    span_id: host as u64 * 100 + id,
                    kind,
                    req_seq: req,
                    resp_seq: resp,
                    start_ns: start,
                    end_ns: start + len,
                    local_parent_id: parent,
                    pid,
                    host: format!("h{host}"),
                    local: Some(Endpoint {
                        ip: ip.clone(),
                        port: 80,
                    }),
                    remote: Some(Endpoint { ip, port: 80 }),
                    ..ESpan::default()
                }
            },
        )
}
