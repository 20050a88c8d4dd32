//! Truth by construction for a chain of three tiers, where the middle tier is a
//! third-party runtime that records no spans of its own:
//!
//! ```text
//!  caller (host a) ──GET /m/<run>/<i>──► middle (host b) ──GET /b/<run>/<i>──► backend (host c)
//! ```
//!
//! Every request has its own `<i>`, so each side of each call is one
//! `(kind, service, path)`, and the true edges of request `i` are: the caller's
//! CLIENT span → the middle's SERVER span and the backend's SERVER span → the
//! middle's CLIENT span (cross-host, linked by TCP sequence numbers), and the
//! middle's SERVER span → its own CLIENT span (in-process: the runtime rule).

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::observed::ExportedSpan;

/// The services of the three tiers, as the probes name them (`DKE_SERVICE`).
#[derive(Debug, Clone, Copy)]
pub struct Tiers<'a> {
    pub caller: &'a str,
    pub middle: &'a str,
    pub backend: &'a str,
}

/// How espan did on one case.
#[derive(Debug, Default, Clone)]
pub struct ChainScore {
    pub case: String,
    pub requests: usize,
    /// Spans of the run exported, of the `4 × requests` expected.
    pub spans: usize,
    /// Cross-host edges (caller → middle, middle → backend) right, of `2 × requests`.
    pub cross_right: usize,
    /// In-process edges (middle SERVER → middle CLIENT) right, of `requests`.
    pub inproc_right: usize,
    /// Parents that are not the span's true parent.
    pub false_edges: Vec<String>,
    /// Requests whose four spans share one trace id, with exactly the three true
    /// edges and nothing else under that id.
    pub exact_traces: usize,
    /// Spans exported twice or more.
    pub duplicates: usize,
}

impl ChainScore {
    pub fn cross_recall(&self) -> f64 {
        ratio(self.cross_right, 2 * self.requests)
    }
    pub fn inproc_recall(&self) -> f64 {
        ratio(self.inproc_right, self.requests)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

/// Scores the spans of run `run` (every path contains `/<run>/`).
pub fn score(
    case: &str,
    run: &str,
    requests: usize,
    tiers: Tiers<'_>,
    exported: &[ExportedSpan],
) -> ChainScore {
    let marker = format!("/{run}/");
    let mine: Vec<&ExportedSpan> = exported
        .iter()
        .filter(|s| s.path.contains(&marker))
        .collect();
    let mut by_side: HashMap<(&str, bool, &str), Vec<&ExportedSpan>> = HashMap::new();
    for s in &mine {
        by_side
            .entry((s.service.as_str(), s.is_server(), s.path.as_str()))
            .or_default()
            .push(s);
    }
    let one = |service: &str, server: bool, path: &str| -> Option<&ExportedSpan> {
        match by_side.get(&(service, server, path)).map(Vec::as_slice) {
            Some([s]) => Some(*s),
            _ => None,
        }
    };
    let mut score = ChainScore {
        case: case.to_owned(),
        requests,
        spans: mine.len(),
        duplicates: by_side.values().filter(|v| v.len() > 1).count(),
        ..ChainScore::default()
    };
    // span id → its true parent's span id ("" for the caller's root span).
    let mut true_parent: HashMap<&str, &str> = HashMap::new();
    let mut requests_of: Vec<[Option<&ExportedSpan>; 4]> = Vec::new();
    for i in 0..requests {
        let (m, b) = (format!("/m/{run}/{i}"), format!("/b/{run}/{i}"));
        let sides = [
            one(tiers.caller, false, &m),
            one(tiers.middle, true, &m),
            one(tiers.middle, false, &b),
            one(tiers.backend, true, &b),
        ];
        let id = |k: usize| sides[k].map_or("", |s| s.span_id.as_str());
        for (k, parent) in [(0, ""), (1, id(0)), (2, id(1)), (3, id(2))] {
            if let Some(s) = sides[k] {
                true_parent.insert(s.span_id.as_str(), parent);
            }
        }
        if let (Some(c), Some(ms)) = (sides[0], sides[1])
            && ms.parent_span_id == c.span_id
        {
            score.cross_right += 1;
        }
        if let (Some(mc), Some(bs)) = (sides[2], sides[3])
            && bs.parent_span_id == mc.span_id
        {
            score.cross_right += 1;
        }
        if let (Some(ms), Some(mc)) = (sides[1], sides[2])
            && mc.parent_span_id == ms.span_id
        {
            score.inproc_right += 1;
        }
        requests_of.push(sides);
    }
    for s in &mine {
        if s.parent_span_id.is_empty() {
            continue;
        }
        match true_parent.get(s.span_id.as_str()) {
            Some(p) if *p == s.parent_span_id => {}
            Some(p) => score.false_edges.push(format!(
                "{} {} {} has parent {} (true: {})",
                s.service,
                if s.is_server() { "SERVER" } else { "CLIENT" },
                s.path,
                s.parent_span_id,
                if p.is_empty() { "none" } else { p }
            )),
            None => score.false_edges.push(format!(
                "{} {} has parent {} but is not one side of one request",
                s.service, s.path, s.parent_span_id
            )),
        }
    }
    let mut per_trace: HashMap<&str, usize> = HashMap::new();
    for s in &mine {
        *per_trace.entry(s.trace_id.as_str()).or_default() += 1;
    }
    for sides in &requests_of {
        let Some(all) = sides.iter().copied().collect::<Option<Vec<_>>>() else {
            continue;
        };
        let trace = all[0].trace_id.as_str();
        let edges_right = all[0].parent_span_id.is_empty()
            && (1..4).all(|k| all[k].parent_span_id == all[k - 1].span_id);
        if edges_right
            && all.iter().all(|s| s.trace_id == trace)
            && per_trace.get(trace) == Some(&4)
        {
            score.exact_traces += 1;
        }
    }
    score
}

/// The scores as a Markdown table, as the README quotes it.
pub fn table(scores: &[ChainScore]) -> String {
    let mut out = String::from(
        "| middle tier | requests | spans exported | cross-host edges | in-process edges | false edges | exact traces |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for s in scores {
        let _ = writeln!(
            out,
            "| {} | {} | {}/{} | {:.1}% ({}/{}) | {:.1}% ({}/{}) | {} | {}/{} |",
            s.case,
            s.requests,
            s.spans,
            4 * s.requests,
            100.0 * s.cross_recall(),
            s.cross_right,
            2 * s.requests,
            100.0 * s.inproc_recall(),
            s.inproc_right,
            s.requests,
            s.false_edges.len(),
            s.exact_traces,
            s.requests,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(service: &str, server: bool, path: &str, id: &str, parent: &str) -> ExportedSpan {
        ExportedSpan {
            service: service.into(),
            host: String::new(),
            trace_id: "t1".into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            kind: if server {
                "SPAN_KIND_SERVER"
            } else {
                "SPAN_KIND_CLIENT"
            }
            .into(),
            name: String::new(),
            path: path.into(),
            start_ns: 0,
            end_ns: 0,
            attributes: HashMap::new(),
            received_at: 0.0,
        }
    }

    const TIERS: Tiers<'static> = Tiers {
        caller: "caller",
        middle: "mid",
        backend: "back",
    };

    #[test]
    fn a_whole_chain_is_exact_and_a_wrong_parent_is_false() {
        let mut spans = vec![
            span("caller", false, "/m/r/0", "c0", ""),
            span("mid", true, "/m/r/0", "m0", "c0"),
            span("mid", false, "/b/r/0", "x0", "m0"),
            span("back", true, "/b/r/0", "b0", "x0"),
        ];
        let s = score("t", "r", 1, TIERS, &spans);
        assert_eq!((s.cross_right, s.inproc_right, s.exact_traces), (2, 1, 1));
        assert!(s.false_edges.is_empty());
        // Request 1's middle CLIENT put under request 0's SERVER: false, and
        // request 0's trace is no longer exact (a fifth span under its id).
        spans.extend([
            span("caller", false, "/m/r/1", "c1", ""),
            span("mid", true, "/m/r/1", "m1", "c1"),
            span("mid", false, "/b/r/1", "x1", "m0"),
            span("back", true, "/b/r/1", "b1", "x1"),
        ]);
        let s = score("t", "r", 2, TIERS, &spans);
        assert_eq!(s.false_edges.len(), 1, "{:?}", s.false_edges);
        assert_eq!(s.inproc_right, 1);
        assert_eq!(s.exact_traces, 0);
        assert!(table(&[s]).contains("| t | 2 | 8/8 |"));
    }
}
