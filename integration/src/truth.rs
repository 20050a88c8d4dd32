//! The ground truth: the spans the apps' own OpenTelemetry SDK recorded
//! (`apps/tier.py` writes them as JSON lines).

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// One span the app's OpenTelemetry SDK recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct AppSpan {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_id: Option<String>,
    /// `SERVER`, `CLIENT`, `INTERNAL`.
    pub kind: String,
    pub name: String,
    /// The HTTP path without its query, when the span is an HTTP one.
    pub path: Option<String>,
    pub start_ns: u64,
    pub end_ns: u64,
    /// The native thread id that started the span.
    pub thread: Option<u64>,
    /// A Redis call's command (`INCRBY`), from the redis instrumentation.
    pub redis_op: Option<String>,
}

/// The path of an HTTP span from the attributes of either semantic-convention
/// generation (`url.path`/`url.full` now, `http.target`/`http.url` before).
fn http_path(attrs: &serde_json::Map<String, Value>) -> Option<String> {
    let get = |k: &str| attrs.get(k).and_then(Value::as_str);
    let raw = if let Some(p) = get("url.path").or(get("http.target")) {
        p.to_owned()
    } else {
        let url = get("url.full").or(get("http.url"))?;
        let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
        match after_scheme.find('/') {
            Some(i) => after_scheme[i..].to_owned(),
            None => "/".to_owned(),
        }
    };
    Some(raw.split(['?', '#']).next().unwrap_or_default().to_owned())
}

/// Reads one app's span file.
pub fn read_app_spans(path: &Path) -> Result<Vec<AppSpan>> {
    let raw = match std::fs::read_to_string(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut spans = Vec::new();
    for line in raw.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let empty = serde_json::Map::new();
        let attrs = v
            .get("attributes")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        spans.push(AppSpan {
            service: text("service").unwrap_or_default(),
            trace_id: text("trace_id").unwrap_or_default(),
            span_id: text("span_id").unwrap_or_default(),
            parent_id: text("parent_id"),
            kind: text("kind").unwrap_or_default(),
            name: text("name").unwrap_or_default(),
            path: http_path(attrs),
            start_ns: v.get("start_ns").and_then(Value::as_u64).unwrap_or(0),
            end_ns: v.get("end_ns").and_then(Value::as_u64).unwrap_or(0),
            thread: attrs.get("test.thread").and_then(Value::as_u64),
            redis_op: (attrs.get("db.system").and_then(Value::as_str) == Some("redis"))
                .then(|| text("name").unwrap_or_default()),
        });
    }
    Ok(spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_from_both_conventions() {
        let m = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect::<serde_json::Map<_, _>>()
        };
        assert_eq!(
            http_path(&m(&[("http.target", "/r/x/1?sleep_ms=0")])),
            Some("/r/x/1".into())
        );
        assert_eq!(
            http_path(&m(&[("http.url", "http://10.0.0.1:80/b1/x/1/0")])),
            Some("/b1/x/1/0".into())
        );
        assert_eq!(http_path(&m(&[("url.full", "http://h")])), Some("/".into()));
        assert_eq!(http_path(&m(&[("db.system", "redis")])), None);
    }
}
