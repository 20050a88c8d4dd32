//! OTLP/HTTP with a protobuf body.

use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use crate::sinks::post::Post;
use crate::sinks::tls::OtlpTls;

/// The signal path appended to a base endpoint.
pub const TRACES_PATH: &str = "/v1/traces";

/// The URL to post to. A signal-specific endpoint
/// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is used as given; a base endpoint
/// (`OTEL_EXPORTER_OTLP_ENDPOINT`) gets `/v1/traces` appended, as the OTLP
/// exporter spec says.
pub fn traces_url(endpoint: &str, signal_specific: bool) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(endpoint).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {} is not http or https", url.scheme()));
    }
    if !signal_specific {
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}{TRACES_PATH}"));
    }
    Ok(url)
}

/// A sink posting to `url` with `headers`; `gzip` says the bodies are gzipped;
/// `tls` applies to an `https://` URL.
pub fn sink(
    url: reqwest::Url,
    headers: &[(String, String)],
    gzip: bool,
    tls: &OtlpTls,
) -> Result<Post, String> {
    let mut map = HeaderMap::new();
    for (key, value) in headers {
        let name = HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| format!("header name {key:?} is not valid"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("header {key:?} has a value HTTP cannot carry"))?;
        map.append(name, value);
    }
    map.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    if gzip {
        map.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    Post::new(url, map, true, false, tls)
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn a_base_endpoint_gets_the_signal_path() {
        let url = |e, s| traces_url(e, s).unwrap().to_string();
        assert_eq!(
            url("http://collector:4318", false),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            url("http://c:4318/otlp/", false),
            "http://c:4318/otlp/v1/traces"
        );
        assert_eq!(url("http://c:4318/custom", true), "http://c:4318/custom");
        assert!(traces_url("collector:4318", false).is_err());
    }
}
