//! Trace ids and sampling decisions: pure functions of the trace, so a linker that
//! rebuilds its window after a crash, or another linker, decides exactly alike.

use super::hash::mix64;
use espan::wire::SamplingDecision;

/// A 128-bit trace id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId {
    /// High 64 bits (0 for a 64-bit Datadog id).
    pub high: u64,
    /// Low 64 bits.
    pub low: u64,
}

/// The id of a trace without an application id: from its root span, whose
/// `(host, span_id)` is unique, and its start (against span-id reuse across boots).
pub(crate) fn derived(host_hash: u64, span_id: u64, start_ns: u64) -> TraceId {
    let a = mix64(host_hash ^ mix64(span_id ^ 0x243f_6a88_85a3_08d3));
    let high = mix64(a ^ start_ns.rotate_left(17));
    let low = mix64(a.rotate_left(32) ^ high ^ span_id);
    if high == 0 && low == 0 {
        // Zero means "no trace" on the wire.
        return TraceId { high: 0, low: 1 };
    }
    TraceId { high, low }
}

/// DataKit's and the Datadog agent's rule, `(low + high) * 1111111111111111111 <
/// rate * 2^64`, so espan keeps the same app traces they would. The product of an
/// odd constant is a bijection, so derived (uniform) ids give a uniform fraction.
pub(crate) fn keep_by_rate(id: TraceId, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate.is_nan() || rate <= 0.0 {
        return false;
    }
    let threshold = (rate * 18_446_744_073_709_551_616.0) as u64; // rate * 2^64, below 2^64
    id.low
        .wrapping_add(id.high)
        .wrapping_mul(1_111_111_111_111_111_111)
        < threshold
}

/// The application's own decisions across a trace's spans: a DROP beats a KEEP
/// (as in DataKit); `None` when no span carried one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AppDecision {
    keep: bool,
    drop: bool,
}

impl AppDecision {
    pub(crate) fn add(&mut self, sampling: i32) {
        match SamplingDecision::try_from(sampling) {
            Ok(SamplingDecision::Keep) => self.keep = true,
            Ok(SamplingDecision::Drop) => self.drop = true,
            _ => {}
        }
    }

    pub(crate) fn decided(self) -> Option<bool> {
        if self.drop {
            Some(false)
        } else if self.keep {
            Some(true)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        // Golden values: a linker of another version must derive the same id for
        // the same root span, or a trace split across a rolling upgrade gets two.
        let a = derived(1, 2, 3);
        assert_eq!(
            a,
            TraceId {
                high: 0xffa4_615b_a3e4_580a,
                low: 0x40d6_28b9_052b_9eb3
            }
        );
        assert_eq!(
            derived(
                0x7623_48be_51b1_e57f,
                0x1234_5678_9abc_def0,
                1_700_000_000_000_000_000
            ),
            TraceId {
                high: 0xfd71_a11d_a661_f18b,
                low: 0xe0f1_9e89_72f8_8d65
            }
        );
        assert_ne!(a, derived(1, 3, 3));
        assert_ne!(a, derived(2, 2, 3));
        assert_ne!(a, derived(1, 2, 4));
        assert!(a.high != 0 || a.low != 0);
    }

    #[test]
    fn rate_bounds_keep_all_or_none() {
        for n in 0..1000u64 {
            let id = derived(7, n + 1, 1_000 + n);
            assert!(keep_by_rate(id, 1.0));
            assert!(keep_by_rate(id, 7.0));
            assert!(!keep_by_rate(id, 0.0));
            assert!(!keep_by_rate(id, -1.0));
            assert!(!keep_by_rate(id, f64::NAN));
        }
    }

    #[test]
    fn datadog_rule_matches_the_agent_for_a_known_id() {
        // 64-bit id 1: 1 * K = K = 1111111111111111111, which is 0.0602 * 2^64.
        let id = TraceId { high: 0, low: 1 };
        assert!(!keep_by_rate(id, 0.06));
        assert!(keep_by_rate(id, 0.061));
    }

    #[test]
    fn app_drop_beats_keep() {
        let mut d = AppDecision::default();
        assert_eq!(d.decided(), None);
        d.add(SamplingDecision::Unset as i32);
        assert_eq!(d.decided(), None);
        d.add(SamplingDecision::Keep as i32);
        assert_eq!(d.decided(), Some(true));
        d.add(SamplingDecision::Drop as i32);
        assert_eq!(d.decided(), Some(false));
        d.add(99);
        assert_eq!(d.decided(), Some(false));
    }
}
