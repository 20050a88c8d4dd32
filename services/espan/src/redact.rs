//! Text with the secrets URLs carry taken out: the one way to log, show or
//! store anything that may quote a URL (an error, a URL from the config, a
//! backend's answer).

const REDACTED: &str = "<redacted>";

/// Displays what it holds with [`redact`] applied: the one way to log or
/// store text that may quote a URL (an error, a URL from the config), e.g.
/// `tracing::warn!(error = %Redacted(&error), …)`.
pub struct Redacted<T>(pub T);

impl<T: std::fmt::Display> std::fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.0.to_string()))
    }
}

/// `text` with the secrets URLs carry taken out, for anything stored or logged
/// that may quote a URL (a backend's error names the URL it posted to, and a
/// Dataway URL holds its token in the query). In every URL the user info
/// (`user:password@`), the query (`?token=…`) and the fragment become
/// `<redacted>`; so do a `?query` and a `user@` without a scheme (DataKit's
/// `host:port?token=…`). The scheme, host and path stay, so the text still
/// says which endpoint answered what.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if ends_url(c) {
            redact_word(&text[start..i], &mut out);
            out.push(c);
            start = i + c.len_utf8();
        }
    }
    redact_word(&text[start..], &mut out);
    out
}

/// Characters that end a URL quoted in prose or in an error message.
fn ends_url(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '"' | '\'' | '`' | '<' | '>' | '(' | ')' | '[' | ']' | '{' | '}'
        )
}

fn redact_word(word: &str, out: &mut String) {
    let body_at = word.find("://").map_or(0, |i| i + 3);
    let (scheme, body) = word.split_at(body_at);
    // A `?` with nothing after it is punctuation, not a query.
    let cut = body
        .find(|c| c == '?' || (body_at > 0 && c == '#'))
        .filter(|&i| i + 1 < body.len());
    let address = &body[..cut.unwrap_or(body.len())];
    out.push_str(scheme);
    let host_end = address.find('/').unwrap_or(address.len());
    match address[..host_end].rfind('@') {
        Some(at) => {
            out.push_str(REDACTED);
            out.push_str(&address[at..]);
        }
        None => out.push_str(address),
    }
    if let Some(i) = cut {
        out.push_str(&body[i..i + 1]);
        out.push_str(REDACTED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_removes_planted_secrets_and_keeps_the_endpoint() {
        let secrets = ["tkn_PLANTED", "hunter2", "alice", "frag_PLANTED"];
        for (text, want) in [
            (
                "POST http://dataway:9528/v1/write/tracing?token=tkn_PLANTED answered 400 Bad Request: bad line",
                "POST http://dataway:9528/v1/write/tracing?<redacted> answered 400 Bad Request: bad line",
            ),
            (
                "error sending request for url (https://alice:hunter2@collector:4318/v1/traces?x=1&token=tkn_PLANTED#frag_PLANTED): refused",
                "error sending request for url (https://<redacted>@collector:4318/v1/traces?<redacted>): refused",
            ),
            (
                "nats://alice:hunter2@10.0.0.1:4222 is down",
                "nats://<redacted>@10.0.0.1:4222 is down",
            ),
            ("http://h/p#frag_PLANTED", "http://h/p#<redacted>"),
            (
                "dataway \"127.0.0.1:9528?token=tkn_PLANTED\" refused",
                "dataway \"127.0.0.1:9528?<redacted>\" refused",
            ),
            (
                "handler failed 3 times: why? store full (no url here), #3",
                "handler failed 3 times: why? store full (no url here), #3",
            ),
            ("", ""),
            (
                "日本語 http://例え.jp/パス?秘密=tkn_PLANTED",
                "日本語 http://例え.jp/パス?<redacted>",
            ),
        ] {
            let got = redact(text);
            assert_eq!(got, want, "{text}");
            for secret in secrets {
                assert!(!got.contains(secret), "{secret} in {got}");
            }
        }
    }
}
