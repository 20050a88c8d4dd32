//! A finished trace as TRACES carries it: at most `max_trace_spans` spans (the
//! rest counted, not sent), cut into parts that each fit in one message.
//!
//! NATS refuses a message above its `max_payload` (1 MiB by default), and one
//! request fanning out to a few thousand calls makes a trace larger than that:
//! sent whole, it was refused on every try and held up every trace after it.
//! A part is a `Trace` with the trace's id and flags and a share of its spans,
//! each with its parent; the exporter sends each part as it comes, as it does a
//! late part, so the backend gets the whole trace under one id.
//!
//! The cut is made from the spans sorted by span id, so the same spans make the
//! same parts, and a rebuild after a crash sends them under the same msg ids
//! ([`crate::raw::trace_msg_id`]: trace id and smallest span id of the part).

use crate::engine::FinishedTrace;
use crate::raw::RawSpan;

/// A trace ready to encode: its parts and the spans the cap left out.
#[derive(Debug)]
pub(crate) struct Parts {
    /// One or more, each at most the part size (a single span larger than
    /// that is a part of its own, and refused when published).
    pub(crate) parts: Vec<FinishedTrace<RawSpan>>,
    /// Spans beyond `max_spans`, not sent.
    pub(crate) capped: u64,
}

/// Bytes a span takes in an encoded `Trace` (its bytes, the `LinkedSpan`
/// envelope and the parent id), rounded up.
fn span_cost(span: &RawSpan) -> usize {
    span.bytes.len() + 24
}

/// Bytes of a `Trace` besides its spans (ids, flags), rounded up.
const TRACE_COST: usize = 32;

/// Keeps the first `max_spans` spans of `trace` (the root, then by start
/// time) and cuts them into parts of at most `part_bytes` encoded bytes.
pub(crate) fn cut(mut trace: FinishedTrace<RawSpan>, max_spans: usize, part_bytes: usize) -> Parts {
    let capped = trace.spans.len().saturating_sub(max_spans) as u64;
    trace.spans.truncate(max_spans);
    let total: usize = TRACE_COST
        + trace
            .spans
            .iter()
            .map(|s| span_cost(&s.span))
            .sum::<usize>();
    if total <= part_bytes {
        return Parts {
            parts: vec![trace],
            capped,
        };
    }
    let mut spans = std::mem::take(&mut trace.spans);
    spans.sort_unstable_by_key(|s| s.span.span_id);
    let mut parts = Vec::new();
    let mut part = Vec::new();
    let mut bytes = TRACE_COST;
    for span in spans {
        let cost = span_cost(&span.span);
        if !part.is_empty() && bytes + cost > part_bytes {
            parts.push(std::mem::take(&mut part));
            bytes = TRACE_COST;
        }
        bytes += cost;
        part.push(span);
    }
    parts.push(part);
    Parts {
        parts: parts
            .into_iter()
            .map(|spans| FinishedTrace {
                spans,
                ..trace.clone()
            })
            .collect(),
        capped,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::engine::Linked;
    use crate::raw::{self, trace_msg_id};

    fn trace(spans: u64, bytes: usize) -> FinishedTrace<RawSpan> {
        FinishedTrace {
            trace_id_high: 5,
            trace_id_low: 6,
            spans: (1..=spans)
                .map(|id| Linked {
                    // Ids out of order, as random ids are.
                    span: RawSpan {
                        span_id: id.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                        bytes: Bytes::from(vec![b'x'; bytes]),
                    },
                    parent_id: if id == 1 { 0 } else { 1 },
                })
                .collect(),
            app_trace_id: true,
            late: false,
        }
    }

    fn encoded_len(trace: &FinishedTrace<RawSpan>) -> usize {
        let mut out = Vec::new();
        raw::encode_trace(trace, &mut out);
        out.len()
    }

    #[test]
    fn a_small_trace_is_one_part_as_it_was() {
        let small = trace(10, 100);
        let parts = cut(small.clone(), 100, 64 << 10);
        assert_eq!(parts.capped, 0);
        assert_eq!(parts.parts.len(), 1);
        assert_eq!(parts.parts[0].spans, small.spans);
    }

    #[test]
    fn a_large_trace_is_cut_into_parts_that_fit_and_keep_every_span_once() {
        let big = trace(5_000, 450);
        assert!(encoded_len(&big) > 2 << 20);
        let part_bytes = 512 << 10;
        let parts = cut(big.clone(), usize::MAX, part_bytes);
        assert_eq!(parts.capped, 0);
        assert!(parts.parts.len() >= 4, "{}", parts.parts.len());
        let mut seen: Vec<(u64, u64)> = Vec::new();
        let mut ids = std::collections::HashSet::new();
        for part in &parts.parts {
            assert!(encoded_len(part) <= part_bytes, "{}", encoded_len(part));
            assert_eq!((part.trace_id_high, part.trace_id_low), (5, 6));
            assert!(part.app_trace_id && !part.late);
            assert!(ids.insert(trace_msg_id(part)), "each part its own msg id");
            seen.extend(part.spans.iter().map(|s| (s.span.span_id, s.parent_id)));
        }
        let mut want: Vec<(u64, u64)> = big
            .spans
            .iter()
            .map(|s| (s.span.span_id, s.parent_id))
            .collect();
        seen.sort_unstable();
        want.sort_unstable();
        assert_eq!(seen, want);
        // The same spans in another order make the same parts.
        let mut shuffled = big;
        shuffled.spans.reverse();
        let again = cut(shuffled, usize::MAX, part_bytes);
        let names = |p: &Parts| p.parts.iter().map(trace_msg_id).collect::<Vec<_>>();
        assert_eq!(names(&again), names(&parts));
    }

    #[test]
    fn spans_beyond_the_cap_are_counted_and_the_root_is_kept() {
        let big = trace(1_000, 10);
        let parts = cut(big.clone(), 300, 1 << 20);
        assert_eq!(parts.capped, 700);
        assert_eq!(parts.parts.len(), 1);
        assert_eq!(parts.parts[0].spans.len(), 300);
        assert_eq!(parts.parts[0].spans[0], big.spans[0], "the root first");
    }

    #[test]
    fn a_span_larger_than_a_part_is_a_part_of_its_own() {
        let mut t = trace(3, 10);
        t.spans[1].span.bytes = Bytes::from(vec![b'y'; 5_000]);
        let parts = cut(t, usize::MAX, 1_000);
        assert!(parts.parts.len() >= 2);
        assert!(
            parts
                .parts
                .iter()
                .any(|p| p.spans.len() == 1 && p.spans[0].span.bytes.len() == 5_000)
        );
    }
}
