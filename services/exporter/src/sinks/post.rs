//! An HTTP POST of one encoded body, shared by OTLP/HTTP and Dataway: the status
//! decides between accepted, retry and rejected.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use espan::redact::redact;
use futures::future::BoxFuture;
use prost::Message;
use reqwest::header::{HeaderMap, HeaderValue};

use super::{Payload, Sent, SinkError};
use crate::sinks::tls::OtlpTls;

/// Posts bodies to one URL with fixed headers.
#[derive(Clone)]
pub struct Post {
    client: reqwest::Client,
    url: Arc<reqwest::Url>,
    /// `url` as messages name it: a Dataway URL holds its token in the query.
    shown_url: Arc<str>,
    headers: Arc<HeaderMap>,
    /// Parse an OTLP `ExportTraceServiceResponse` for partial success.
    otlp_response: bool,
    /// Send `X-Points: <spans>`, as DataKit does to Dataway.
    points_header: bool,
}

impl Post {
    pub(crate) fn new(
        url: reqwest::Url,
        headers: HeaderMap,
        otlp_response: bool,
        points_header: bool,
        tls: &OtlpTls,
    ) -> Result<Self, String> {
        let mut client = reqwest::Client::builder()
            .user_agent(concat!("espan-exporter/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5));
        if let Some(ca) = &tls.ca {
            // The given CA replaces the built-in roots, as OTel's variable says.
            let ca = reqwest::Certificate::from_pem(ca.pem.as_bytes())
                .map_err(|e| format!("{}: not a CA certificate: {e}", ca.path.display()))?;
            client = client
                .tls_built_in_root_certs(false)
                .add_root_certificate(ca);
        }
        if let Some((cert, key)) = &tls.client {
            let pem = format!("{}\n{}", cert.pem, key.pem);
            let identity = reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| {
                format!(
                    "{} and {}: not a client certificate and its key: {e}",
                    cert.path.display(),
                    key.path.display()
                )
            })?;
            client = client.identity(identity);
        }
        let client = client
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            shown_url: redact(url.as_str()).into(),
            url: Arc::new(url),
            headers: Arc::new(headers),
            otlp_response,
            points_header,
        })
    }

    async fn send(self, payload: Payload) -> Result<Sent, SinkError> {
        let mut request = self
            .client
            .post((*self.url).clone())
            .headers((*self.headers).clone());
        if self.points_header {
            request = request.header("X-Points", payload.spans);
        }
        let response =
            request
                .body(payload.body)
                .send()
                .await
                .map_err(|e| SinkError::Retryable {
                    // reqwest names the URL in its errors: without it, the
                    // token stays out of every message.
                    reason: redact(&format!(
                        "POST {}: {}",
                        self.shown_url,
                        error_chain(&e.without_url())
                    )),
                    retry_after: None,
                })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(retry_after);
        let body = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            return Ok(self.sent(&body));
        }
        let text = String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
        // The answer may quote the request, token and all.
        let reason = redact(&format!(
            "POST {} answered {status}: {}",
            self.shown_url,
            text.trim()
        ));
        if is_permanent(status.as_u16()) {
            Err(SinkError::Rejected { reason })
        } else {
            Err(SinkError::Retryable {
                reason,
                retry_after,
            })
        }
    }

    fn sent(&self, body: &[u8]) -> Sent {
        if !self.otlp_response || body.is_empty() {
            return Sent::default();
        }
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
        match ExportTraceServiceResponse::decode(body) {
            Ok(response) => response
                .partial_success
                .map(|p| Sent {
                    dropped_spans: u64::try_from(p.rejected_spans).unwrap_or(0),
                    message: p.error_message,
                })
                .unwrap_or_default(),
            // A 2xx is success whatever the body says.
            Err(_) => Sent::default(),
        }
    }
}

/// Statuses that say "this data is wrong", so no retry can help. Everything
/// else (429, 5xx, and also 401/403/404, which a fixed config or a restarted
/// backend can cure) is retried, so data is never given up on for a reason
/// outside the data.
pub(crate) fn is_permanent(status: u16) -> bool {
    matches!(status, 400 | 413 | 415 | 422)
}

fn retry_after(value: &HeaderValue) -> Option<Duration> {
    value
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl tower::Service<Payload> for Post {
    type Response = Sent;
    type Error = SinkError;
    type Future = BoxFuture<'static, Result<Sent, SinkError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, payload: Payload) -> Self::Future {
        Box::pin(self.clone().send(payload))
    }
}
