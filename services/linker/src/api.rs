//! What `espan-linker traces` / `trace` print, as text, and the same served by a
//! running linker under `/api/…` on its metrics address: SurrealKV lets one
//! process open the store, so while the linker runs the CLI asks it instead.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;

use crate::cli;
use crate::store::{Store, StoreError};

/// Which traces to list.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    /// Finished within this long ago.
    pub since: Duration,
    /// With a span of this service.
    pub service: Option<String>,
    /// At most this many (the newest).
    pub limit: usize,
}

impl ListQuery {
    /// From `since=5m&service=S&limit=50`.
    pub fn from_query(query: &str) -> Result<Self, String> {
        let mut list = ListQuery {
            since: Duration::from_secs(300),
            service: None,
            limit: 50,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "since" => {
                    list.since = espan::config::GoDuration::parse(value)
                        .map_err(|e| format!("since: {e}"))?
                }
                "service" => list.service = Some(value.to_owned()),
                "limit" => {
                    list.limit = value
                        .parse()
                        .map_err(|_| format!("limit: {value:?} is not a number"))?
                }
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        Ok(list)
    }

    /// The query string of this list.
    pub fn to_query(&self) -> String {
        let mut q = format!("since={}ms&limit={}", self.since.as_millis(), self.limit);
        if let Some(service) = &self.service {
            q.push_str("&service=");
            q.push_str(service);
        }
        q
    }
}

/// The listing as printed: one line per trace, newest last.
pub async fn list_text(
    store: &Store,
    query: &ListQuery,
    now_ns: u64,
) -> Result<String, StoreError> {
    let cutoff = now_ns.saturating_sub(query.since.as_nanos() as u64);
    let mut traces = store.traces_since(cutoff).await?;
    if let Some(service) = &query.service {
        traces.retain(|t| {
            t.spans
                .iter()
                .any(|s| s.span.as_ref().is_some_and(|s| &s.service == service))
        });
    }
    if traces.is_empty() {
        let service = query
            .service
            .as_ref()
            .map(|s| format!(" with service {s}"))
            .unwrap_or_default();
        return Ok(format!(
            "no traces finished in the last {:?}{service}\n",
            query.since
        ));
    }
    let skip = traces.len().saturating_sub(query.limit);
    Ok(traces
        .iter()
        .skip(skip)
        .map(|t| cli::summary_line(t) + "\n")
        .collect())
}

/// The tree of trace `id` (already normalised), or `None` when not stored.
pub async fn trace_text(store: &Store, id: &str) -> Result<Option<String>, StoreError> {
    Ok(cli::merge_parts(store.trace(id).await?).map(|t| cli::render_tree(&t)))
}

/// `/api/traces` and `/api/trace/{id}`.
pub fn routes(store: Arc<Store>) -> Router {
    Router::new()
        .route("/api/traces", get(list))
        .route("/api/trace/{id}", get(one))
        .with_state(store)
}

async fn list(State(store): State<Arc<Store>>, RawQuery(query): RawQuery) -> (StatusCode, String) {
    let query = match ListQuery::from_query(query.as_deref().unwrap_or("")) {
        Ok(query) => query,
        Err(error) => return (StatusCode::BAD_REQUEST, format!("{error}\n")),
    };
    match list_text(&store, &query, crate::service::now_ns()).await {
        Ok(text) => (StatusCode::OK, text),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

async fn one(State(store): State<Arc<Store>>, Path(id): Path<String>) -> (StatusCode, String) {
    let id = match cli::parse_trace_id(&id) {
        Ok(id) => id,
        Err(error) => return (StatusCode::BAD_REQUEST, format!("{error}\n")),
    };
    match trace_text(&store, &id).await {
        Ok(Some(text)) => (StatusCode::OK, text),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            format!("trace {id} is not in the store\n"),
        ),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

/// GET `path` from a running linker at `addr`: (status, body). One request to
/// our own server over loopback, so a plain HTTP/1.0 exchange is enough and the
/// linker needs no HTTP client library.
pub async fn get_text(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{addr} did not answer"),
                )
            })??;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 30 s")
        })??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_round_trip() {
        let q = ListQuery {
            since: Duration::from_secs(90),
            service: Some("front".into()),
            limit: 7,
        };
        assert_eq!(ListQuery::from_query(&q.to_query()).unwrap(), q);
        assert!(ListQuery::from_query("since=soon").is_err());
        assert!(ListQuery::from_query("bogus=1").is_err());
        assert_eq!(ListQuery::from_query("").unwrap().limit, 50);
    }
}
