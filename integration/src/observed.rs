//! What espan exported: the OTLP receiver's JSON lines (one decoded
//! `ExportTraceServiceRequest` per line, ids in hex) turned into spans.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// One span as an OTLP backend received it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedSpan {
    pub service: String,
    pub host: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root.
    pub parent_span_id: String,
    /// `SPAN_KIND_SERVER` / `SPAN_KIND_CLIENT`.
    pub kind: String,
    pub name: String,
    /// `url.path`.
    pub path: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: HashMap<String, String>,
    /// When the receiver accepted the request that first carried it (s since
    /// the epoch).
    pub received_at: f64,
}

impl ExportedSpan {
    pub fn is_server(&self) -> bool {
        self.kind == "SPAN_KIND_SERVER"
    }
}

/// Every distinct span received, and how many copies of each came.
#[derive(Debug, Default)]
pub struct Exported {
    pub spans: Vec<ExportedSpan>,
    /// span id → copies received (1 when exactly once).
    pub copies: HashMap<String, u32>,
    /// Requests the receiver refused (only when a test makes it refuse).
    pub refused_requests: usize,
    /// Later copies that differ from the first in trace or parent: the span
    /// linked again differently, not merely sent again.
    pub inconsistent_copies: u32,
}

impl Exported {
    /// Spans received more than once (extra copies counted).
    pub fn duplicates(&self) -> u32 {
        self.copies.values().map(|&n| n.saturating_sub(1)).sum()
    }
}

fn attr_value(v: &Value) -> String {
    for key in ["string_value", "int_value", "double_value", "bool_value"] {
        if let Some(x) = v.get(key) {
            return match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
        }
    }
    String::new()
}

fn attrs(list: Option<&Value>) -> HashMap<String, String> {
    list.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|kv| {
                    Some((
                        kv.get("key")?.as_str()?.to_owned(),
                        attr_value(kv.get("value")?),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn number(v: &Value, key: &str) -> u64 {
    match v.get(key) {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

/// Reads the receiver's file (missing file: nothing received yet). A line cut
/// short (the receiver is writing it) is left for the next read.
pub fn read_exported(path: &Path) -> Result<Exported> {
    let raw = match std::fs::read_to_string(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut out = Exported::default();
    // span id → its index in `out.spans`.
    let mut first: HashMap<String, usize> = HashMap::new();
    for line in raw.lines() {
        let Ok(record) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if record.get("accepted") != Some(&Value::Bool(true)) {
            out.refused_requests += 1;
            continue;
        }
        let received_at = record.get("at").and_then(Value::as_f64).unwrap_or(0.0);
        let resource_spans = record
            .pointer("/request/resource_spans")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for rs in resource_spans {
            let resource = attrs(rs.pointer("/resource/attributes"));
            let scopes = rs
                .get("scope_spans")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for ss in scopes {
                for span in ss
                    .get("spans")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
                {
                    let attributes = attrs(span.get("attributes"));
                    let s = ExportedSpan {
                        service: resource.get("service.name").cloned().unwrap_or_default(),
                        host: resource.get("host.name").cloned().unwrap_or_default(),
                        trace_id: text(&span, "trace_id"),
                        span_id: text(&span, "span_id"),
                        parent_span_id: text(&span, "parent_span_id"),
                        kind: text(&span, "kind"),
                        name: text(&span, "name"),
                        path: attributes.get("url.path").cloned().unwrap_or_default(),
                        start_ns: number(&span, "start_time_unix_nano"),
                        end_ns: number(&span, "end_time_unix_nano"),
                        attributes,
                        received_at,
                    };
                    let n = out.copies.entry(s.span_id.clone()).or_insert(0);
                    *n += 1;
                    if *n == 1 {
                        first.insert(s.span_id.clone(), out.spans.len());
                        out.spans.push(s);
                    } else {
                        let earlier = &out.spans[first[&s.span_id]];
                        if (&earlier.trace_id, &earlier.parent_span_id)
                            != (&s.trace_id, &s.parent_span_id)
                        {
                            out.inconsistent_copies += 1;
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}
