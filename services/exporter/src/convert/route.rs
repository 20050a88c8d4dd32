//! Route templating: a URL path with its ids collapsed to placeholders, so span
//! names stay low-cardinality (`GET /api/orders/{id}`, not one name per order).
//!
//! eBPF sees the path the client sent, never the route the app matched, so this
//! is a guess from the shape of each segment: decimal numbers, UUIDs and long
//! hex strings are ids; anything else is kept.

/// Placeholder for a decimal number segment.
pub const ID: &str = "{id}";
/// Placeholder for a UUID segment.
pub const UUID: &str = "{uuid}";
/// Placeholder for a long hex segment (hashes, object ids).
pub const HEX: &str = "{hex}";

/// Hex segments at least this long are ids (a 24-char Mongo id, a 40-char sha1);
/// shorter all-hex words such as `cafe` or `beef` are kept.
const MIN_HEX_LEN: usize = 16;

/// `path` with id-like segments replaced; an empty path is `/`.
pub fn template(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    template_into(path, &mut out);
    out
}

/// [`template`] into `out` (cleared first), reusing its buffer.
pub fn template_into(path: &str, out: &mut String) {
    out.clear();
    if path.is_empty() {
        out.push('/');
        return;
    }
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(placeholder(segment).unwrap_or(segment));
    }
}

/// The placeholder for an id-like segment, `None` for a segment to keep.
fn placeholder(segment: &str) -> Option<&'static str> {
    if segment.is_empty() {
        return None;
    }
    let bytes = segment.as_bytes();
    if bytes.iter().all(u8::is_ascii_digit) {
        return Some(ID);
    }
    if is_uuid(bytes) {
        return Some(UUID);
    }
    if bytes.len() >= MIN_HEX_LEN
        && bytes.iter().all(u8::is_ascii_hexdigit)
        && bytes.iter().any(u8::is_ascii_digit)
    {
        return Some(HEX);
    }
    None
}

/// 8-4-4-4-12 hex digits.
fn is_uuid(bytes: &[u8]) -> bool {
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::template;

    #[test]
    fn ids_become_placeholders_and_words_stay() {
        let cases = [
            ("", "/"),
            ("/", "/"),
            ("/healthz", "/healthz"),
            ("/api/orders/42", "/api/orders/{id}"),
            ("/api/orders/42/items/7", "/api/orders/{id}/items/{id}"),
            (
                "/users/123e4567-E89B-12d3-a456-426614174000/avatar",
                "/users/{uuid}/avatar",
            ),
            ("/objects/5f2b8c9e1a4d3e7f6b0c9a12", "/objects/{hex}"),
            (
                "/commits/da39a3ee5e6b4b0d3255bfef95601890afd80709",
                "/commits/{hex}",
            ),
            // Short hex and all-letter hex words are words.
            ("/cafe/beef/deadbeef", "/cafe/beef/deadbeef"),
            ("/abcdefabcdefabcdef", "/abcdefabcdefabcdef"),
            // Versions and mixed segments are kept.
            ("/v1/items/v2beta", "/v1/items/v2beta"),
            ("/a//b/", "/a//b/"),
            // Not quite a UUID.
            (
                "/x/123e4567-e89b-12d3-a456-42661417400",
                "/x/123e4567-e89b-12d3-a456-42661417400",
            ),
        ];
        for (path, want) in cases {
            assert_eq!(template(path), want, "path {path:?}");
        }
    }
}
