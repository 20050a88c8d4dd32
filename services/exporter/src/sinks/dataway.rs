//! Guance Dataway: gzip line protocol POSTed to `<ENV_DATAWAY>/v1/write/tracing`
//! with the workspace token from the URL's query and, as DataKit sends it, the
//! number of points in `X-Points`.

use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderValue};

use super::post::Post;

/// The Dataway path for tracing points.
pub const TRACING_PATH: &str = "/v1/write/tracing";

/// The write URL for `dataway` (`http://host:port?token=tkn_xxx`): same scheme,
/// host and query, path `/v1/write/tracing`.
pub fn write_url(dataway: &str) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(dataway).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {} is not http or https", url.scheme()));
    }
    if url.host_str().is_none() {
        return Err("no host".into());
    }
    if !url
        .query_pairs()
        .any(|(k, v)| k == "token" && !v.is_empty())
    {
        return Err("no token (expected http://host:port?token=tkn_xxx)".into());
    }
    let base = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{base}{TRACING_PATH}"));
    Ok(url)
}

/// A sink posting to `url` (from [`write_url`]).
pub fn sink(url: reqwest::Url) -> Result<Post, String> {
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    // Dataway is reached with the system's roots.
    Post::new(url, headers, false, true, &Default::default())
}

#[cfg(test)]
mod tests {
    use super::write_url;

    #[test]
    fn the_tracing_path_is_added_and_the_token_kept() {
        assert_eq!(
            write_url("http://127.0.0.1:9528?token=tkn_abc")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9528/v1/write/tracing?token=tkn_abc"
        );
        assert_eq!(
            write_url("https://openway.example/?token=tkn_x")
                .unwrap()
                .as_str(),
            "https://openway.example/v1/write/tracing?token=tkn_x"
        );
        assert!(
            write_url("http://127.0.0.1:9528")
                .unwrap_err()
                .contains("token")
        );
        assert!(write_url("ftp://h?token=t").unwrap_err().contains("scheme"));
        assert!(write_url("127.0.0.1:9528").is_err());
    }
}
