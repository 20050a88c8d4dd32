//! `/metrics` (Prometheus text), `/livez` and `/readyz`, served the same way by
//! every service, plus log set-up.
//!
//! `/livez` answers 200 while the process serves HTTP at all: what a liveness
//! probe should restart on. `/readyz` answers 503 with the reason while a
//! dependency is failing (NATS away, the store full): a probe, a linker or an
//! exporter waiting for NATS keeps its buffer and its window instead of being
//! restarted into an empty one. `/healthz` is `/readyz`, kept for setups that
//! used it.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::shutdown::Shutdown;

/// What `/readyz` answers: ready, or not with a reason (e.g. "NATS unreachable").
#[derive(Clone, Default)]
pub struct Health(Arc<RwLock<Option<String>>>);

impl Health {
    /// Healthy from now on.
    pub fn set_ok(&self) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
    /// Not ready, with the reason `/readyz` reports.
    pub fn set_failing(&self, reason: impl Into<String>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(reason.into());
    }
    /// `None` when healthy.
    pub fn failing(&self) -> Option<String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    health: Health,
}

/// Binds `addr` and serves `/metrics`, `/livez` and `/readyz` until `shutdown`.
/// Returns the bound address (useful with port 0) once listening.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    health: Health,
    shutdown: Shutdown,
) -> std::io::Result<SocketAddr> {
    serve_with(addr, registry, health, Router::new(), shutdown).await
}

/// Like [`serve`], with a service's own routes beside `/metrics` and the probes'.
pub async fn serve_with(
    addr: SocketAddr,
    registry: Registry,
    health: Health,
    routes: Router,
    shutdown: Shutdown,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen for /metrics on {addr}: {e}"),
        )
    })?;
    let bound = listener.local_addr()?;
    let state = AppState {
        registry: Arc::new(registry),
        health,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/healthz", get(readyz))
        .with_state(state)
        .merge(routes);
    tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.wait());
        if let Err(error) = server.await {
            tracing::error!(%error, "metrics server stopped");
        }
    });
    Ok(bound)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("encoding metrics failed: {error}"),
        ),
    }
}

async fn livez() -> impl IntoResponse {
    (StatusCode::OK, "alive\n")
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.health.failing() {
        None => (StatusCode::OK, "ok\n".to_owned()),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("failing: {reason}\n"),
        ),
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    init_logging_with("info");
}

/// Logs to stderr, filtered by `RUST_LOG`, else by `default` (e.g. `warn` for
/// command-line tools whose output is the point).
pub fn init_logging_with(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}
