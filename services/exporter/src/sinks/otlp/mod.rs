//! OTLP sinks: gRPC (`TraceService/Export`) and HTTP/protobuf (`POST /v1/traces`).
//! Both send the same encoded `ExportTraceServiceRequest`.

use espan::config::percent_decode;

pub mod grpc;
pub mod http;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC, port 4317 by convention.
    Grpc,
    /// HTTP with a protobuf body, port 4318 by convention.
    HttpProtobuf,
}

impl Protocol {
    /// Parses `OTEL_EXPORTER_OTLP_PROTOCOL`'s values.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            "http/json" => Err("http/json is not supported; use grpc or http/protobuf".into()),
            other => Err(format!(
                "unknown protocol {other:?}; use grpc or http/protobuf"
            )),
        }
    }
}

/// Parses `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs separated by commas,
/// values percent-decoded (the W3C baggage form the OTLP spec names).
pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut headers = Vec::new();
    for pair in text.split(',') {
        if pair.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not key=value"));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("{pair:?} has an empty key"));
        }
        // The value may be a secret: the error names the header only.
        let value = percent_decode(value.trim()).map_err(|e| format!("header {key:?}: {e}"))?;
        headers.push((key.to_ascii_lowercase(), value));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_pairs_with_percent_decoded_values() {
        assert_eq!(
            parse_headers("api-key=abc%20def, X-Tenant=t1,").unwrap(),
            vec![
                ("api-key".to_owned(), "abc def".to_owned()),
                ("x-tenant".to_owned(), "t1".to_owned())
            ]
        );
        assert!(parse_headers("novalue").is_err());
        assert!(parse_headers("=v").is_err());
        assert!(parse_headers("k=%zz").is_err());
    }

    #[test]
    fn protocols_are_the_otel_names() {
        assert_eq!(Protocol::parse("grpc").unwrap(), Protocol::Grpc);
        assert_eq!(
            Protocol::parse("http/protobuf").unwrap(),
            Protocol::HttpProtobuf
        );
        assert!(
            Protocol::parse("http/json")
                .unwrap_err()
                .contains("not supported")
        );
        assert!(Protocol::parse("udp").is_err());
    }
}
