//! OTLP over gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
//!
//! The request is sent as the bytes [`crate::sinks::Encoding`] made, through a
//! pass-through codec, so a retry re-sends them instead of cloning and
//! re-encoding the message (the generated client takes the message by value).

use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use espan::redact::redact;
use futures::future::BoxFuture;
use http::uri::PathAndQuery;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::codec::{
    BufferSettings, Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder,
};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::sinks::tls::OtlpTls;
use crate::sinks::{Payload, Sent, SinkError};

/// The gRPC method path.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Sends encoded export requests over one HTTP/2 channel (multiplexed, so the
/// concurrency limit above it sets how many are in flight). Several
/// connections were measured too: no faster on this machine.
#[derive(Clone)]
pub struct GrpcSink {
    grpc: tonic::client::Grpc<Channel>,
    metadata: Arc<MetadataMap>,
    /// The endpoint as messages name it (user info and query redacted).
    endpoint: Arc<str>,
}

impl GrpcSink {
    /// A sink for `endpoint` (`http://host:4317`, or `https://` with `tls`).
    /// Connects lazily: a backend that is down at start-up is retried like
    /// one that goes down later.
    pub fn new(
        endpoint: &str,
        headers: &[(String, String)],
        gzip: bool,
        tls: &OtlpTls,
    ) -> Result<Self, String> {
        let uri = http::Uri::from_str(endpoint).map_err(|e| format!("not a URI: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err("expected http://host:port or https://host:port".into()),
        };
        if !https && (tls.ca.is_some() || tls.client.is_some()) {
            return Err("TLS files are given but the endpoint is http://; use https://".into());
        }
        let mut channel = Endpoint::from(uri)
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if https {
            channel = channel
                .tls_config(client_tls(tls)?)
                .map_err(|e| format!("TLS settings: {e}"))?;
        }
        let channel = channel.connect_lazy();
        let mut grpc = tonic::client::Grpc::new(channel);
        if gzip {
            grpc = grpc
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        let mut metadata = MetadataMap::new();
        for (key, value) in headers {
            let key = MetadataKey::from_bytes(key.as_bytes())
                .map_err(|_| format!("header name {key:?} is not valid gRPC metadata"))?;
            let value = MetadataValue::try_from(value.as_str())
                .map_err(|_| format!("header {key:?} has a value gRPC cannot carry"))?;
            metadata.append(key, value);
        }
        Ok(Self {
            grpc,
            metadata: Arc::new(metadata),
            endpoint: redact(endpoint).into(),
        })
    }

    async fn send(mut self, payload: Payload) -> Result<Sent, SinkError> {
        self.grpc.ready().await.map_err(|e| SinkError::Retryable {
            reason: redact(&format!("gRPC {}: {e}", self.endpoint)),
            retry_after: None,
        })?;
        let body_len = payload.body.len();
        let mut request = tonic::Request::new(payload.body);
        *request.metadata_mut() = (*self.metadata).clone();
        let path = PathAndQuery::from_static(EXPORT_PATH);
        let codec = PassThrough { body_len };
        match self.grpc.unary(request, path, codec).await {
            Ok(response) => Ok(response
                .into_inner()
                .partial_success
                .map(|p| Sent {
                    dropped_spans: u64::try_from(p.rejected_spans).unwrap_or(0),
                    message: p.error_message,
                })
                .unwrap_or_default()),
            Err(status) => Err(classify(&self.endpoint, &status)),
        }
    }
}

/// The TLS of a gRPC channel: the given CA in place of the built-in (Mozilla) roots
/// (webpki's when none is given), and the client certificate for mutual TLS.
fn client_tls(tls: &OtlpTls) -> Result<ClientTlsConfig, String> {
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(&ca.pem)),
        None => config.with_webpki_roots(),
    };
    if let Some((cert, key)) = &tls.client {
        config = config.identity(Identity::from_pem(&cert.pem, &key.pem));
    }
    Ok(config)
}

/// OTLP's retryable codes (plus UNKNOWN and INTERNAL, which proxies and broken
/// connections produce); only INVALID_ARGUMENT says the data itself is bad.
/// A `google.rpc.RetryInfo` in the status details sets the least delay before
/// the next try, as the OTLP spec asks.
fn classify(endpoint: &str, status: &Status) -> SinkError {
    // The backend's message may quote what it was sent.
    let reason = redact(&format!(
        "gRPC {endpoint} answered {:?}: {}",
        status.code(),
        status.message()
    ));
    match status.code() {
        Code::InvalidArgument => SinkError::Rejected { reason },
        _ => SinkError::Retryable {
            reason,
            retry_after: retry_delay(status.details()),
        },
    }
}

/// The delay of a `google.rpc.RetryInfo` among the details of a
/// `google.rpc.Status` (the `grpc-status-details-bin` trailer).
fn retry_delay(details: &[u8]) -> Option<Duration> {
    const RETRY_INFO: &str = "type.googleapis.com/google.rpc.RetryInfo";
    let status = RpcStatus::decode(details).ok()?;
    let info = status
        .details
        .iter()
        .find(|any| any.type_url == RETRY_INFO)?;
    let delay = RetryInfo::decode(&info.value[..]).ok()?.retry_delay?;
    let seconds = u64::try_from(delay.seconds).ok()?;
    let nanos = u32::try_from(delay.nanos).ok()?;
    Some(Duration::new(seconds, nanos.min(999_999_999)))
}

// The few fields of google/rpc/status.proto, error_details.proto and
// google/protobuf/{any,duration}.proto that `retry_delay` reads.

#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

impl tower::Service<Payload> for GrpcSink {
    type Response = Sent;
    type Error = SinkError;
    type Future = BoxFuture<'static, Result<Sent, SinkError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is awaited inside `send`, on the clone that sends.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, payload: Payload) -> Self::Future {
        Box::pin(self.clone().send(payload))
    }
}

/// Encodes pre-encoded bytes as they are; decodes the response with prost.
/// Made per request with the body's length, so tonic's buffer is allocated
/// once at its final size (from its default 8 KiB it grows by reallocation,
/// copying the body several times over).
#[derive(Clone, Copy)]
struct PassThrough {
    body_len: usize,
}

/// gRPC's message prefix: compression flag and length.
const GRPC_HEADER: usize = 5;

impl Codec for PassThrough {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = PassThrough;
    type Decoder = PassThrough;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for PassThrough {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        // tonic's defaults are 8 KiB and a 32 KiB yield threshold.
        BufferSettings::new((self.body_len + GRPC_HEADER).max(8 << 10), 32 << 10)
    }
}

impl Decoder for PassThrough {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        ExportTraceServiceResponse::decode(bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("undecodable Export response: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details(type_url: &str, seconds: i64, nanos: i32) -> Bytes {
        let info = RetryInfo {
            retry_delay: Some(ProtoDuration { seconds, nanos }),
        };
        let status = RpcStatus {
            details: vec![ProtoAny {
                type_url: type_url.into(),
                value: info.encode_to_vec(),
            }],
        };
        status.encode_to_vec().into()
    }

    #[test]
    fn retry_info_sets_the_delay_and_invalid_argument_is_final() {
        let status = Status::with_details(
            Code::ResourceExhausted,
            "slow down",
            details("type.googleapis.com/google.rpc.RetryInfo", 2, 500_000_000),
        );
        match classify("http://c:4317", &status) {
            SinkError::Retryable { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_millis(2500)))
            }
            other => panic!("{other:?}"),
        }
        let other_detail = Status::with_details(
            Code::Unavailable,
            "down",
            details("type.googleapis.com/google.rpc.DebugInfo", 2, 0),
        );
        assert!(matches!(
            classify("e", &other_detail),
            SinkError::Retryable {
                retry_after: None,
                ..
            }
        ));
        assert!(matches!(
            classify("e", &Status::unavailable("down")),
            SinkError::Retryable {
                retry_after: None,
                ..
            }
        ));
        let bad = classify("e", &Status::invalid_argument("bad span"));
        assert!(
            matches!(&bad, SinkError::Rejected { reason } if reason.contains("bad span")),
            "{bad:?}"
        );
        assert_eq!(
            retry_delay(b"\xff\xff"),
            None,
            "garbage details are ignored"
        );
    }
}
