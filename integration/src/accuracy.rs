//! espan's traces against the ground truth of the apps' own spans.
//!
//! Every HTTP call of a run has a unique path, so one side of one call is
//! `(server?, path)` in both worlds. A Redis call is named after the request it
//! was made for, as the app recorded it: `<server path> redis <command> #<n>`;
//! espan's Redis CLIENT span is that call when it was made on the same thread,
//! with the same command, and starts while the app's span of it is open (both
//! clocks are the one kernel's; the app's span also covers connecting, and
//! redis-py's `CLIENT SETINFO` on a new connection). redis-server is traced
//! too: its SERVER span of a call is the one with the client span's sequence
//! numbers (the probe's pairing; the linker's edge between the two is what is
//! scored). Calls the app's
//! instrumentation does not record (redis-py's `CLIENT SETINFO` on a new
//! connection) are left out. Truth edges:
//! - inside a process: an app CLIENT span's nearest SERVER ancestor in the same
//!   service (what the app's SDK recorded as parent chain);
//! - across processes: the CLIENT and the SERVER side of the same path (with
//!   context propagation on, the app's SDK also recorded it, and the two must agree).
//!
//! espan's edges are its exported `parent_span_id`s. Precision = right edges /
//! espan's edges (a false edge is any other, including a parent that is not a
//! span of the run); recall = right edges / truth edges; a trace is exact when
//! espan has all of its spans under one trace id, with exactly its edges, and
//! nothing else under that id.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use crate::observed::{Exported, ExportedSpan};
use crate::truth::AppSpan;

/// One side of one HTTP call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Side {
    pub server: bool,
    pub path: String,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.server { "SERVER" } else { "CLIENT" };
        write!(f, "{kind} {}", self.path)
    }
}

type Edge = (Side, Side);

/// A Redis call the app recorded, to find espan's span of it.
#[derive(Debug, Clone)]
pub struct RedisCall {
    pub thread: u64,
    pub op: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub side: Side,
}

/// The ground truth of one run.
#[derive(Debug, Default)]
pub struct Truth {
    pub sides: BTreeSet<Side>,
    pub redis_calls: Vec<RedisCall>,
    /// parent → child.
    pub edges: BTreeSet<Edge>,
    /// The app's trace id of each side.
    pub app_trace: HashMap<Side, String>,
    /// Where the app's own parent links disagree with the path-derived ones
    /// (a harness problem, reported, never expected).
    pub problems: Vec<String>,
}

fn in_run(path: &str, run: &str) -> bool {
    path.contains(&format!("/{run}/"))
}

impl Truth {
    /// From every app's spans, keeping the HTTP calls of `run`.
    pub fn build(app_spans: &[AppSpan], run: &str, propagation: bool) -> Self {
        let mut t = Truth::default();
        let by_id: HashMap<(&str, &str), &AppSpan> = app_spans
            .iter()
            .map(|s| ((s.service.as_str(), s.span_id.as_str()), s))
            .collect();
        let side_of = |s: &AppSpan| -> Option<Side> {
            let path = s.path.as_ref()?;
            if !in_run(path, run) || !(s.kind == "SERVER" || s.kind == "CLIENT") {
                return None;
            }
            Some(Side {
                server: s.kind == "SERVER",
                path: path.clone(),
            })
        };
        let mut by_side: HashMap<Side, &AppSpan> = HashMap::new();
        for s in app_spans {
            let Some(side) = side_of(s) else { continue };
            if by_side.insert(side.clone(), s).is_some() {
                t.problems.push(format!("{side} recorded twice by the app"));
            }
            t.app_trace.insert(side.clone(), s.trace_id.clone());
            t.sides.insert(side);
        }
        t.add_redis_calls(app_spans, &by_id, run);
        for (side, span) in &by_side {
            if side.server {
                let client = Side {
                    server: false,
                    path: side.path.clone(),
                };
                if let Some(c) = by_side.get(&client) {
                    t.edges.insert((client.clone(), side.clone()));
                    if propagation && span.parent_id.as_deref() != Some(c.span_id.as_str()) {
                        t.problems.push(format!(
                            "{side}: the app's parent is {:?}, not its client {}",
                            span.parent_id, c.span_id
                        ));
                    }
                }
                continue;
            }
            // A client's parent: its nearest SERVER ancestor in the same process.
            let mut cur = span.parent_id.as_deref();
            while let Some(id) = cur {
                let Some(p) = by_id.get(&(span.service.as_str(), id)) else {
                    break;
                };
                if let Some(ps) = side_of(p)
                    && ps.server
                {
                    t.edges.insert((ps, side.clone()));
                    break;
                }
                cur = p.parent_id.as_deref();
            }
        }
        t
    }

    /// Redis calls: a side named after the nearest SERVER ancestor in the same
    /// process, and the edge from it.
    fn add_redis_calls(
        &mut self,
        app_spans: &[AppSpan],
        by_id: &HashMap<(&str, &str), &AppSpan>,
        run: &str,
    ) {
        let mut calls: Vec<&AppSpan> = app_spans
            .iter()
            .filter(|s| s.redis_op.is_some() && s.kind == "CLIENT")
            .collect();
        calls.sort_by_key(|s| s.start_ns);
        let mut ordinal: HashMap<(String, String), usize> = HashMap::new();
        for call in calls {
            let mut cur = call.parent_id.as_deref();
            let mut server = None;
            while let Some(id) = cur {
                let Some(p) = by_id.get(&(call.service.as_str(), id)) else {
                    break;
                };
                if p.kind == "SERVER" {
                    server = p.path.clone().filter(|path| in_run(path, run));
                    break;
                }
                cur = p.parent_id.as_deref();
            }
            let (Some(path), Some(op), Some(thread)) = (server, call.redis_op.clone(), call.thread)
            else {
                continue;
            };
            let n = ordinal.entry((path.clone(), op.clone())).or_default();
            *n += 1;
            let side = Side {
                server: false,
                path: format!("{path} redis {op} #{n}"),
            };
            self.edges
                .insert((Side { server: true, path }, side.clone()));
            self.app_trace.insert(side.clone(), call.trace_id.clone());
            self.sides.insert(side.clone());
            // redis-server's side of the call.
            let server_side = Side {
                server: true,
                path: side.path.clone(),
            };
            self.edges.insert((side.clone(), server_side.clone()));
            self.app_trace
                .insert(server_side.clone(), call.trace_id.clone());
            self.sides.insert(server_side);
            self.redis_calls.push(RedisCall {
                thread,
                op,
                start_ns: call.start_ns,
                end_ns: call.end_ns,
                side,
            });
        }
    }

    /// The app's Redis call that an exported Redis client span is: same
    /// thread, same command, starting while the app's span is open (1 ms
    /// either side for the two clocks' readings).
    pub fn redis_call(&self, e: &ExportedSpan) -> Option<&Side> {
        if e.is_server() || e.attributes.get("db.system.name").map(String::as_str) != Some("redis")
        {
            return None;
        }
        let thread: u64 = e.attributes.get("thread.id")?.parse().ok()?;
        let op = e.attributes.get("db.operation.name")?;
        const SLACK_NS: u64 = 1_000_000;
        self.redis_calls
            .iter()
            .find(|c| {
                c.thread == thread
                    && &c.op == op
                    && c.start_ns.saturating_sub(SLACK_NS) <= e.start_ns
                    && e.start_ns <= c.end_ns + SLACK_NS
            })
            .map(|c| &c.side)
    }

    /// The traces: sets of sides joined by edges, each with its root.
    pub fn traces(&self) -> Vec<(Side, BTreeSet<Side>)> {
        let mut children: HashMap<&Side, Vec<&Side>> = HashMap::new();
        let mut has_parent = BTreeSet::new();
        for (p, c) in &self.edges {
            children.entry(p).or_default().push(c);
            has_parent.insert(c);
        }
        let mut out = Vec::new();
        for root in self.sides.iter().filter(|s| !has_parent.contains(s)) {
            let mut members = BTreeSet::new();
            let mut stack = vec![root];
            while let Some(s) = stack.pop() {
                if members.insert(s.clone())
                    && let Some(cs) = children.get(s)
                {
                    stack.extend(cs.iter().copied());
                }
            }
            out.push((root.clone(), members));
        }
        out
    }
}

/// One run compared.
#[derive(Debug, Clone, Default)]
pub struct Score {
    pub case: String,
    pub propagation: bool,
    pub truth_spans: usize,
    pub found_spans: usize,
    /// espan spans of the run that the truth does not have.
    pub extra_spans: usize,
    pub truth_edges: usize,
    pub espan_edges: usize,
    pub right_edges: usize,
    pub false_edges: Vec<String>,
    pub missed_edges: Vec<String>,
    /// Truth sides espan did not export.
    pub missing_spans: Vec<String>,
    pub traces: usize,
    pub exact_traces: usize,
    /// Traces whose espan trace id equals the app's (with propagation on).
    pub app_id_traces: usize,
    pub duplicates: u32,
    pub problems: Vec<String>,
}

impl Score {
    pub fn precision(&self) -> f64 {
        if self.espan_edges == 0 {
            1.0
        } else {
            self.right_edges as f64 / self.espan_edges as f64
        }
    }

    pub fn recall(&self) -> f64 {
        if self.truth_edges == 0 {
            1.0
        } else {
            self.right_edges as f64 / self.truth_edges as f64
        }
    }
}

/// Compares what espan exported for `run` with the truth.
pub fn score(
    case: &str,
    propagation: bool,
    truth: &Truth,
    exported: &Exported,
    run: &str,
) -> Score {
    let mut s = Score {
        case: case.to_owned(),
        propagation,
        truth_spans: truth.sides.len(),
        truth_edges: truth.edges.len(),
        problems: truth.problems.clone(),
        ..Score::default()
    };
    let by_id: HashMap<&str, &ExportedSpan> = exported
        .spans
        .iter()
        .map(|e| (e.span_id.as_str(), e))
        .collect();
    // redis-server's spans: the calls whose client spans have their sequence numbers.
    let seqs = |e: &ExportedSpan| {
        (
            e.attributes.get("ebpf.req_seq").cloned(),
            e.attributes.get("ebpf.resp_seq").cloned(),
        )
    };
    let redis_by_seqs: HashMap<_, &Side> = exported
        .spans
        .iter()
        .filter_map(|e| Some((seqs(e), truth.redis_call(e)?)))
        .collect();
    let side = |e: &ExportedSpan| -> Option<Side> {
        if in_run(&e.path, run) {
            return Some(Side {
                server: e.is_server(),
                path: e.path.clone(),
            });
        }
        if e.is_server() && e.attributes.get("db.system.name").map(String::as_str) == Some("redis")
        {
            return redis_by_seqs.get(&seqs(e)).map(|client| Side {
                server: true,
                path: client.path.clone(),
            });
        }
        truth.redis_call(e).cloned()
    };
    let mut espan_side: BTreeMap<Side, &ExportedSpan> = BTreeMap::new();
    for e in &exported.spans {
        let Some(sd) = side(e) else { continue };
        s.duplicates += exported.copies.get(&e.span_id).map_or(0, |n| n - 1);
        if espan_side.insert(sd.clone(), e).is_some() {
            s.problems.push(format!("espan has {sd} twice"));
        }
    }
    for sd in &truth.sides {
        if espan_side.contains_key(sd) {
            s.found_spans += 1;
        } else {
            s.missing_spans.push(sd.to_string());
        }
    }
    s.extra_spans = espan_side
        .keys()
        .filter(|sd| !truth.sides.contains(*sd))
        .count();
    let mut espan_edges: BTreeSet<Edge> = BTreeSet::new();
    for (sd, e) in &espan_side {
        if e.parent_span_id.is_empty() {
            continue;
        }
        s.espan_edges += 1;
        match by_id.get(e.parent_span_id.as_str()).and_then(|p| side(p)) {
            Some(ps) => {
                let edge = (ps, sd.clone());
                if truth.edges.contains(&edge) {
                    s.right_edges += 1;
                } else {
                    s.false_edges.push(format!("{} → {}", edge.0, edge.1));
                }
                espan_edges.insert(edge);
            }
            None => s.false_edges.push(format!(
                "{sd}: parent {} is not a span of the run",
                e.parent_span_id
            )),
        }
    }
    for edge in &truth.edges {
        if !espan_edges.contains(edge) {
            s.missed_edges.push(format!("{} → {}", edge.0, edge.1));
        }
    }
    let mut per_trace_id: HashMap<&str, usize> = HashMap::new();
    for e in espan_side.values() {
        *per_trace_id.entry(e.trace_id.as_str()).or_default() += 1;
    }
    for (root, members) in truth.traces() {
        s.traces += 1;
        let spans: Vec<&&ExportedSpan> = members.iter().filter_map(|m| espan_side.get(m)).collect();
        let ids: BTreeSet<&str> = spans.iter().map(|e| e.trace_id.as_str()).collect();
        let complete = spans.len() == members.len() && ids.len() == 1;
        let edges_match = truth
            .edges
            .iter()
            .filter(|(p, _)| members.contains(p))
            .all(|e| espan_edges.contains(e))
            && espan_edges
                .iter()
                .filter(|(_, c)| members.contains(c))
                .all(|e| truth.edges.contains(e));
        let alone = ids
            .iter()
            .next()
            .is_some_and(|id| per_trace_id.get(id) == Some(&members.len()));
        if complete && edges_match && alone {
            s.exact_traces += 1;
        }
        if propagation
            && let (Some(app), Some(id)) = (truth.app_trace.get(&root), ids.iter().next())
            && ids.len() == 1
            && app == id
        {
            s.app_id_traces += 1;
        }
    }
    s
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// The report, one row per run.
pub fn table(scores: &[Score]) -> String {
    let header = [
        "case",
        "propagation",
        "spans found",
        "edges (espan/truth)",
        "false",
        "precision",
        "recall",
        "exact traces",
        "app trace ids",
        "dups",
    ];
    let rows: Vec<Vec<String>> = scores
        .iter()
        .map(|s| {
            vec![
                s.case.clone(),
                if s.propagation { "on" } else { "off" }.to_owned(),
                format!("{}/{}", s.found_spans, s.truth_spans),
                format!("{}/{}", s.espan_edges, s.truth_edges),
                s.false_edges.len().to_string(),
                pct(s.precision()),
                pct(s.recall()),
                format!("{}/{}", s.exact_traces, s.traces),
                if s.propagation {
                    format!("{}/{}", s.app_id_traces, s.traces)
                } else {
                    "-".to_owned()
                },
                s.duplicates.to_string(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "| {} |", padded.join(" | "));
    };
    line(&mut out, header.iter().map(|h| h.to_string()).collect());
    let _ = writeln!(
        out,
        "|{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        line(&mut out, r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(service: &str, id: &str, parent: Option<&str>, kind: &str, path: &str) -> AppSpan {
        AppSpan {
            service: service.into(),
            trace_id: "t1".into(),
            span_id: id.into(),
            parent_id: parent.map(Into::into),
            kind: kind.into(),
            name: String::new(),
            path: Some(path.into()),
            start_ns: 0,
            end_ns: 0,
            thread: None,
            redis_op: None,
        }
    }

    fn esp(id: &str, parent: &str, kind: &str, path: &str, trace: &str) -> ExportedSpan {
        ExportedSpan {
            service: String::new(),
            host: String::new(),
            trace_id: trace.into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            kind: kind.into(),
            name: String::new(),
            path: path.into(),
            start_ns: 0,
            end_ns: 0,
            attributes: HashMap::new(),
            received_at: 0.0,
        }
    }

    fn truth() -> Truth {
        let spans = vec![
            app("front", "1", None, "SERVER", "/r/x/1"),
            app("front", "i", Some("1"), "INTERNAL", "/not-http"),
            app("front", "2", Some("i"), "CLIENT", "/b1/x/1/0"),
            app("back1", "3", Some("2"), "SERVER", "/b1/x/1/0"),
            app("front", "9", None, "SERVER", "/r/other/1"),
        ];
        Truth::build(&spans, "x", true)
    }

    #[test]
    fn redis_calls_are_found_by_thread_command_and_start() {
        let call = |id: &str, op: &str, thread: u64, start_ns: u64| AppSpan {
            name: op.into(),
            path: None,
            start_ns,
            end_ns: start_ns + 500_000,
            thread: Some(thread),
            redis_op: Some(op.into()),
            ..app("back2", id, Some("s"), "CLIENT", "")
        };
        let spans = vec![
            app("back2", "s", None, "SERVER", "/b2/x/1"),
            call("r1", "INCRBY", 7, 1_000_000),
            call("r2", "GET", 7, 2_000_000),
        ];
        let t = Truth::build(&spans, "x", true);
        // back2's request, two calls, redis-server's side of each.
        assert_eq!(t.sides.len(), 5);
        assert_eq!(t.edges.len(), 4);
        let redis = |id: &str, parent: &str, kind: &str, op: &str, thread: &str, start_ns: u64| {
            let mut e = esp(id, parent, kind, "", "T");
            e.start_ns = start_ns;
            let seq = format!("{start_ns}");
            e.attributes = [
                ("db.system.name", "redis"),
                ("db.operation.name", op),
                ("thread.id", thread),
                ("ebpf.req_seq", seq.as_str()),
                ("ebpf.resp_seq", "1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
            e
        };
        let client = "SPAN_KIND_CLIENT";
        let server = "SPAN_KIND_SERVER";
        let exported = Exported {
            spans: vec![
                esp("a", "", server, "/b2/x/1", "T"),
                redis("b", "a", client, "INCRBY", "7", 1_050_000),
                redis("c", "a", client, "GET", "7", 2_040_000),
                // redis-server's spans: the same sequence numbers as b and c
                // (its own thread, its own start).
                redis("bs", "b", server, "INCRBY", "99", 1_050_000),
                redis("cs", "c", server, "GET", "99", 2_040_000),
                // redis-py's CLIENT SETINFO: not the app's, not scored.
                redis("d", "a", client, "CLIENT", "7", 900_000),
            ],
            ..Exported::default()
        };
        let s = score("redis", true, &t, &exported, "x");
        assert_eq!((s.found_spans, s.right_edges), (5, 4));
        assert!(s.false_edges.is_empty() && s.missed_edges.is_empty());
        assert_eq!(s.exact_traces, 1);
        // On another thread, or far from the call, it is not that call (and
        // redis-server's span of it is not found either).
        let elsewhere = Exported {
            spans: vec![
                esp("a", "", server, "/b2/x/1", "T"),
                redis("b", "a", client, "INCRBY", "8", 1_050_000),
                redis("c", "a", client, "GET", "7", 90_000_000),
                redis("bs", "b", server, "INCRBY", "99", 1_050_000),
            ],
            ..Exported::default()
        };
        let s = score("redis", true, &t, &elsewhere, "x");
        assert_eq!(
            (s.found_spans, s.right_edges, s.missing_spans.len()),
            (1, 0, 4)
        );
    }

    #[test]
    fn truth_edges_cross_and_in_process() {
        let t = truth();
        assert_eq!(t.sides.len(), 3);
        assert_eq!(t.edges.len(), 2);
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        assert_eq!(t.traces().len(), 1);
    }

    #[test]
    fn exact_trace_and_a_false_edge() {
        let t = truth();
        let good = Exported {
            spans: vec![
                esp("a", "", "SPAN_KIND_SERVER", "/r/x/1", "T"),
                esp("b", "a", "SPAN_KIND_CLIENT", "/b1/x/1/0", "T"),
                esp("c", "b", "SPAN_KIND_SERVER", "/b1/x/1/0", "T"),
            ],
            ..Exported::default()
        };
        let s = score("c", true, &t, &good, "x");
        assert_eq!((s.right_edges, s.false_edges.len()), (2, 0));
        assert_eq!(s.exact_traces, 1);
        assert_eq!(s.precision(), 1.0);
        // The server hung under the front's server span instead: a false edge.
        let bad = Exported {
            spans: vec![
                esp("a", "", "SPAN_KIND_SERVER", "/r/x/1", "T"),
                esp("b", "a", "SPAN_KIND_CLIENT", "/b1/x/1/0", "T"),
                esp("c", "a", "SPAN_KIND_SERVER", "/b1/x/1/0", "T"),
            ],
            ..Exported::default()
        };
        let s = score("c", true, &t, &bad, "x");
        assert_eq!(s.false_edges.len(), 1);
        assert_eq!(s.exact_traces, 0);
        assert!(s.precision() < 1.0 && s.recall() < 1.0);
    }

    #[test]
    fn a_missing_edge_lowers_recall_only() {
        let t = truth();
        let split = Exported {
            spans: vec![
                esp("a", "", "SPAN_KIND_SERVER", "/r/x/1", "T"),
                esp("b", "a", "SPAN_KIND_CLIENT", "/b1/x/1/0", "T"),
                esp("c", "", "SPAN_KIND_SERVER", "/b1/x/1/0", "U"),
            ],
            ..Exported::default()
        };
        let s = score("c", false, &t, &split, "x");
        assert_eq!(s.precision(), 1.0);
        assert_eq!(s.recall(), 0.5);
        assert_eq!(s.exact_traces, 0);
    }
}
