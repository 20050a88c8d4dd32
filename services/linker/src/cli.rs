//! `espan-linker traces` and `espan-linker trace <id>`: finished traces read
//! from the store, printed as indented trees with durations.

use std::collections::HashMap;
use std::fmt::Write as _;

use espan::wire::{ESpan, LinkedSpan, SpanKind, Trace};

use crate::store::trace_id_hex;

/// A trace id from the command line: 32 hex digits, or 16 (a 64-bit Datadog id,
/// whose high half is 0). A decimal Datadog id is accepted too.
pub fn parse_trace_id(text: &str) -> Result<String, String> {
    let text = text.trim().to_ascii_lowercase();
    let hex = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
    match text.len() {
        32 if hex(&text) => Ok(text),
        16 if hex(&text) => Ok(format!("{:016x}{text}", 0)),
        _ if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) => text
            .parse::<u64>()
            .map(|low| trace_id_hex(0, low))
            .map_err(|_| format!("{text:?} is not a trace id")),
        _ => Err(format!(
            "{text:?} is not a trace id: expected 32 (or 16) hex digits"
        )),
    }
}

/// Joins a trace's parts (the first finish and late arrivals) into one.
pub fn merge_parts(parts: Vec<Trace>) -> Option<Trace> {
    let mut parts = parts.into_iter();
    let mut trace = parts.next()?;
    for part in parts {
        for span in part.spans {
            let id = span.span.as_ref().map(|s| s.span_id);
            if !trace
                .spans
                .iter()
                .any(|s| s.span.as_ref().map(|s| s.span_id) == id)
            {
                trace.spans.push(span);
            }
        }
    }
    trace.late = false;
    Some(trace)
}

fn duration_ms(span: &ESpan) -> f64 {
    span.end_ns.saturating_sub(span.start_ns) as f64 / 1e6
}

fn kind(span: &ESpan) -> &'static str {
    match SpanKind::try_from(span.kind) {
        Ok(SpanKind::Client) => "CLIENT",
        Ok(SpanKind::Server) => "SERVER",
        _ => "?",
    }
}

fn describe(span: &ESpan) -> String {
    let (method, path, status) = span.http.as_ref().map_or(("", "", 0), |h| {
        (h.method.as_str(), h.path.as_str(), h.status)
    });
    let status = if status == 0 {
        "-".to_owned()
    } else {
        status.to_string()
    };
    let error = if span.error.is_empty() {
        String::new()
    } else {
        format!("  error: {}", span.error)
    };
    format!(
        "{} {}  {} {}  {}  {:.2} ms  [{} pid {}]{}",
        kind(span),
        span.service,
        method,
        path,
        status,
        duration_ms(span),
        span.host,
        span.pid,
        error
    )
}

/// The root span of a trace: no parent, or a parent not in the trace; earliest first.
fn roots(trace: &Trace) -> Vec<&LinkedSpan> {
    let ids: std::collections::HashSet<u64> = trace
        .spans
        .iter()
        .filter_map(|s| s.span.as_ref())
        .map(|s| s.span_id)
        .collect();
    let mut roots: Vec<&LinkedSpan> = trace
        .spans
        .iter()
        .filter(|s| s.parent_id == 0 || !ids.contains(&s.parent_id))
        .collect();
    roots.sort_by_key(|s| s.span.as_ref().map_or(0, |s| s.start_ns));
    roots
}

/// One line per trace: id, root, span count, duration.
pub fn summary_line(trace: &Trace) -> String {
    let id = trace_id_hex(trace.trace_id_high, trace.trace_id_low);
    let root = roots(trace)
        .first()
        .and_then(|s| s.span.as_ref())
        .map(describe)
        .unwrap_or_default();
    format!("{id}  {:>3} spans  {root}", trace.spans.len())
}

/// The trace as an indented tree, children in start order.
pub fn render_tree(trace: &Trace) -> String {
    let mut children: HashMap<u64, Vec<&LinkedSpan>> = HashMap::new();
    for span in &trace.spans {
        children.entry(span.parent_id).or_default().push(span);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| s.span.as_ref().map_or(0, |s| s.start_ns));
    }
    let start = trace
        .spans
        .iter()
        .filter_map(|s| s.span.as_ref())
        .map(|s| s.start_ns)
        .min()
        .unwrap_or(0);
    let end = trace
        .spans
        .iter()
        .filter_map(|s| s.span.as_ref())
        .map(|s| s.end_ns)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "trace {}  {} spans  {:.2} ms{}",
        trace_id_hex(trace.trace_id_high, trace.trace_id_low),
        trace.spans.len(),
        end.saturating_sub(start) as f64 / 1e6,
        if trace.app_trace_id {
            "  (the app's own trace id)"
        } else {
            ""
        }
    );
    let roots = roots(trace);
    let count = roots.len();
    for (i, root) in roots.into_iter().enumerate() {
        draw(&mut out, root, &children, "", i + 1 == count, 0);
    }
    out
}

fn draw(
    out: &mut String,
    node: &LinkedSpan,
    children: &HashMap<u64, Vec<&LinkedSpan>>,
    prefix: &str,
    last: bool,
    depth: usize,
) {
    let Some(span) = node.span.as_ref() else {
        return;
    };
    let _ = writeln!(
        out,
        "{prefix}{} {}",
        if last { "└─" } else { "├─" },
        describe(span)
    );
    // Depth bound: a cycle cannot come from the engine, but printing must not loop.
    if depth > 64 {
        return;
    }
    let child_prefix = format!("{prefix}{}", if last { "   " } else { "│  " });
    if let Some(kids) = children.get(&span.span_id) {
        let count = kids.len();
        for (i, kid) in kids.iter().enumerate() {
            draw(out, kid, children, &child_prefix, i + 1 == count, depth + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use espan::wire::sample;

    #[test]
    fn trace_ids_parse_in_every_form() {
        let full = "0af7651916cd43dd8448eb211c80319c";
        assert_eq!(parse_trace_id(full).unwrap(), full);
        assert_eq!(
            parse_trace_id("0AF7651916CD43DD8448EB211C80319C").unwrap(),
            full
        );
        assert_eq!(
            parse_trace_id("8448eb211c80319c").unwrap(),
            "00000000000000008448eb211c80319c"
        );
        assert_eq!(
            parse_trace_id("255").unwrap(),
            "000000000000000000000000000000ff"
        );
        assert!(parse_trace_id("xyz").is_err());
        assert!(parse_trace_id("").is_err());
    }

    #[test]
    fn a_trace_prints_as_a_tree() {
        let mut root = sample::span(1); // server
        root.service = "frontend".into();
        let mut call = sample::span(2); // client
        call.start_ns = root.start_ns + 10;
        call.end_ns = root.end_ns - 10;
        let mut back = sample::span(3);
        back.service = "orders".into();
        let trace = Trace {
            trace_id_high: 1,
            trace_id_low: 2,
            spans: vec![
                LinkedSpan {
                    span: Some(back.clone()),
                    parent_id: call.span_id,
                },
                LinkedSpan {
                    span: Some(root.clone()),
                    parent_id: 0,
                },
                LinkedSpan {
                    span: Some(call.clone()),
                    parent_id: root.span_id,
                },
            ],
            app_trace_id: false,
            late: false,
        };
        let text = render_tree(&trace);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[0].starts_with("trace 00000000000000010000000000000002  3 spans"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("└─ SERVER frontend  GET /api/orders/1  200  0.25 ms"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("   └─ CLIENT frontend  GET /api/orders/2"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("      └─ SERVER orders  GET /api/orders/3"),
            "{text}"
        );
    }

    #[test]
    fn late_parts_merge_without_repeats() {
        let a = LinkedSpan {
            span: Some(sample::span(1)),
            parent_id: 0,
        };
        let b = LinkedSpan {
            span: Some(sample::span(2)),
            parent_id: 2,
        };
        let first = Trace {
            trace_id_high: 0,
            trace_id_low: 9,
            spans: vec![a.clone()],
            app_trace_id: false,
            late: false,
        };
        let late = Trace {
            trace_id_high: 0,
            trace_id_low: 9,
            spans: vec![b.clone(), a.clone()],
            app_trace_id: false,
            late: true,
        };
        let merged = merge_parts(vec![first, late]).unwrap();
        assert_eq!(merged.spans, vec![a, b]);
        assert!(merge_parts(vec![]).is_none());
    }
}
