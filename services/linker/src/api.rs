//! What `espan-linker traces` / `trace` print, as text, and the same served by a
//! running linker under `/api/…` on its own address (`api_addr`, loopback by
//! default: the traces' contents are not for the whole network): SurrealKV lets
//! one process open the store, so while the linker runs the CLI asks it instead.
//! A listing reads the store newest first and only as far as its `limit`
//! (at most [`MAX_LIST`]) needs, however long `since` is.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;

use crate::cli;
use crate::store::{Store, StoreError};

/// The most traces one listing may ask for.
pub const MAX_LIST: usize = 1000;

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
                        .map_err(|_| format!("limit: {value:?} is not a number"))?;
                    if !(1..=MAX_LIST).contains(&list.limit) {
                        return Err(format!("limit: {value} is not 1 to {MAX_LIST}"));
                    }
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
    let service = query.service.as_deref();
    let (traces, _) = store
        .newest_traces(cutoff, query.limit.min(MAX_LIST), |t| {
            service.is_none_or(|service| {
                t.spans
                    .iter()
                    .any(|s| s.span.as_ref().is_some_and(|s| s.service == service))
            })
        })
        .await?;
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
    Ok(traces.iter().map(|t| cli::summary_line(t) + "\n").collect())
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

/// Serves [`routes`] on `addr` until `shutdown`; returns the bound address.
pub async fn serve(
    addr: std::net::SocketAddr,
    store: Arc<Store>,
    shutdown: espan::shutdown::Shutdown,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen for /api on {addr}: {e}"))
    })?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        tracing::warn!(%bound, "the trace query API listens beyond loopback: traces are readable by whoever reaches it");
    }
    tokio::spawn(async move {
        let server = axum::serve(listener, routes(store)).with_graceful_shutdown(shutdown.wait());
        if let Err(error) = server.await {
            tracing::error!(%error, "trace query API stopped");
        }
    });
    Ok(bound)
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
    use crate::store::SyncMode;
    use espan::wire::{LinkedSpan, Trace, sample};

    #[tokio::test]
    async fn the_api_is_its_own_listener_and_caps_what_a_listing_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Store::open(dir.path(), &SyncMode("never".into()))
                .await
                .unwrap(),
        );
        let now = crate::service::now_ns();
        for seq in 1..=5u64 {
            let trace = Trace {
                trace_id_high: 0,
                trace_id_low: seq,
                spans: vec![LinkedSpan {
                    span: Some(sample::span(seq)),
                    parent_id: 0,
                }],
                app_trace_id: false,
                late: false,
            };
            store
                .put_traces(seq, now - 1000 + seq, &[trace])
                .await
                .unwrap();
        }
        let (_trigger, stop) = espan::shutdown::channel();
        let api = serve("127.0.0.1:0".parse().unwrap(), store, stop.clone())
            .await
            .unwrap();
        let (status, body) = get_text(api, "/api/traces?since=10000h&limit=2")
            .await
            .unwrap();
        assert_eq!((status, body.lines().count()), (200, 2), "{body}");
        let (status, body) = get_text(api, "/api/traces?limit=5000").await.unwrap();
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("1 to 1000"), "{body}");
        // The metrics listener does not serve the traces.
        let metrics = espan::telemetry::serve(
            "127.0.0.1:0".parse().unwrap(),
            prometheus_client::registry::Registry::default(),
            espan::telemetry::Health::default(),
            stop,
        )
        .await
        .unwrap();
        assert_eq!(get_text(metrics, "/api/traces").await.unwrap().0, 404);
    }

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
        assert!(ListQuery::from_query("limit=1000").is_ok());
        assert!(ListQuery::from_query("limit=1001").is_err());
        assert!(ListQuery::from_query("limit=0").is_err());
    }
}
