//! Pure conversions from finished traces to what each backend takes. No I/O:
//! the sinks send the bytes these functions make.

pub mod dataway;
pub mod otlp;
pub mod otlp_wire;
pub mod route;

use std::fmt::Write as _;

use crate::view::{EndpointView, TraceHead};

/// The trace id as 16 bytes, high half first (W3C / OTLP order).
pub fn trace_id_bytes(trace: &TraceHead) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&trace.trace_id_high.to_be_bytes());
    id[8..].copy_from_slice(&trace.trace_id_low.to_be_bytes());
    id
}

/// The trace id as 32 lower-case hex digits.
pub fn trace_id_hex(trace: &TraceHead) -> Text<32> {
    hex128(trace.trace_id_high, trace.trace_id_low)
}

/// A span id as 16 lower-case hex digits.
pub fn span_id_hex(id: u64) -> Text<16> {
    let mut text = Text::new();
    text.push_hex(id);
    text
}

/// 128 bits as 32 lower-case hex digits, high half first.
pub fn hex128(high: u64, low: u64) -> Text<32> {
    let mut text = Text::new();
    text.push_hex(high);
    text.push_hex(low);
    text
}

/// The ip of an endpoint as text (`10.0.0.1`, `::1`), empty when absent.
pub fn ip_text(endpoint: Option<&EndpointView<'_>>) -> Text<45> {
    let mut text = Text::new();
    match endpoint.and_then(EndpointView::socket_addr).map(|a| a.ip()) {
        None => {}
        Some(std::net::IpAddr::V4(ip)) => {
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push(b'.');
                }
                text.push_decimal(u64::from(octet));
            }
        }
        Some(std::net::IpAddr::V6(ip)) => {
            // At most 45 bytes (an IPv4-mapped address), so it always fits.
            let _ = write!(text, "{ip}");
        }
    }
    text
}

/// Short ASCII text on the stack: the ids, addresses and numbers every span
/// carries, written without a heap allocation or the formatting machinery.
#[derive(Clone, Copy)]
pub struct Text<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Text<N> {
    /// Empty.
    pub fn new() -> Self {
        Self {
            bytes: [0; N],
            len: 0,
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        let bytes = &self.bytes[..self.len];
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        // SAFETY: `push` is only given ASCII bytes (digits, hex digits, '.')
        // and `write_str` copies whole `&str`s or nothing, so `bytes` is
        // always UTF-8. Checking it again here cost a tenth of the encoding.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// Appends one ASCII byte (callers only pass ASCII).
    fn push(&mut self, byte: u8) {
        debug_assert!(byte.is_ascii());
        if self.len < N {
            self.bytes[self.len] = byte;
            self.len += 1;
        }
    }

    /// Appends 16 lower-case hex digits.
    fn push_hex(&mut self, value: u64) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for shift in (0..16).rev() {
            self.push(DIGITS[((value >> (shift * 4)) & 0xf) as usize]);
        }
    }

    /// Appends `value` in decimal.
    pub fn push_decimal(&mut self, value: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = value;
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        for &digit in &digits[at..] {
            self.push(digit);
        }
    }
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> std::ops::Deref for Text<N> {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> std::fmt::Display for Text<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> std::fmt::Write for Text<N> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.len + s.len() > N {
            return Err(std::fmt::Error);
        }
        self.bytes[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
        self.len += s.len();
        Ok(())
    }
}

/// `value` in decimal, on the stack.
pub fn decimal(value: u64) -> Text<20> {
    let mut text = Text::new();
    text.push_decimal(value);
    text
}

/// The port of an endpoint, 0 when absent.
pub fn port(endpoint: Option<&EndpointView<'_>>) -> u32 {
    endpoint.map_or(0, |e| e.port)
}

/// Splits an HTTP `Host` header into host and port (`backend:8080`, `[::1]:80`).
pub fn split_host(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((addr, tail)) = rest.split_once(']') {
            return (addr, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
        return (host, None);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => match port.parse() {
            Ok(port) => (name, Some(port)),
            Err(_) => (host, None),
        },
        _ => (host, None),
    }
}

/// Spans made with prost's types, turned into the views the conversions
/// take (without validation, so tests can feed anything).
#[cfg(test)]
pub(crate) mod testing {
    use espan::wire::Trace;
    use prost::Message;

    use crate::view::{SpanRef, SpanView, TraceHead};

    /// A trace with each span encoded alone.
    pub struct Encoded {
        head: TraceHead,
        spans: Vec<(u64, Option<Vec<u8>>)>,
    }

    impl Encoded {
        pub fn new(trace: &Trace) -> Self {
            Self {
                head: TraceHead {
                    trace_id_high: trace.trace_id_high,
                    trace_id_low: trace.trace_id_low,
                    app_trace_id: trace.app_trace_id,
                    late: trace.late,
                },
                spans: trace
                    .spans
                    .iter()
                    .map(|l| (l.parent_id, l.span.as_ref().map(Message::encode_to_vec)))
                    .collect(),
            }
        }

        /// The spans (those a linked span had), in order.
        pub fn refs(&self) -> Vec<SpanRef<'_>> {
            self.spans
                .iter()
                .filter_map(|(parent_id, bytes)| {
                    let mut span = SpanView::default();
                    span.merge(bytes.as_ref()?).expect("prost wrote it");
                    Some(SpanRef {
                        trace: self.head,
                        parent_id: *parent_id,
                        span,
                    })
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use espan::wire::{AppTrace, ESpan, Endpoint, Http, LinkedSpan, Trace};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Text with everything that needs escaping somewhere: separators, quotes,
    /// backslashes, control characters, multi-byte UTF-8.
    fn hostile_text(rng: &mut StdRng) -> String {
        const PIECES: &[&str] = &[
            "a", "Z", "7", " ", ",", "=", "\"", "\\", "\n", "\r", "\t", "\0", "/", ":", "[", "]",
            "?", "#", "%", "{", "}", "é", "日本", "🙂", "\u{2028}", "\u{7f}", "GET", "1234",
        ];
        let len = rng.random_range(0..12);
        (0..len)
            .map(|_| PIECES[rng.random_range(0..PIECES.len())])
            .collect()
    }

    /// A span with arbitrary values, including ones validation would refuse:
    /// the encoders must not panic on anything that decodes.
    fn hostile_span(rng: &mut StdRng) -> ESpan {
        let endpoint = |rng: &mut StdRng| {
            rng.random_bool(0.8).then(|| Endpoint {
                ip: (0..[0, 3, 4, 16, 17][rng.random_range(0..5)])
                    .map(|_| rng.random())
                    .collect(),
                port: [0, 80, 8080, 65535, 70000, u32::MAX][rng.random_range(0..6)],
            })
        };
        ESpan {
            span_id: rng.random(),
            kind: rng.random_range(-1..4),
            protocol: rng.random_range(-1..9),
            local: endpoint(rng),
            remote: endpoint(rng),
            req_seq: rng.random(),
            resp_seq: rng.random(),
            start_ns: rng.random(),
            end_ns: rng.random(),
            pid: rng.random(),
            tid: rng.random(),
            comm: hostile_text(rng),
            service: hostile_text(rng),
            local_parent_id: rng.random(),
            http: rng.random_bool(0.8).then(|| Http {
                method: hostile_text(rng),
                path: hostile_text(rng),
                version: hostile_text(rng),
                status: [0, 200, 404, 503, 1000, u32::MAX][rng.random_range(0..6)],
                host: hostile_text(rng),
            }),
            bytes_in: rng.random(),
            bytes_out: rng.random(),
            error: hostile_text(rng),
            app_trace: rng.random_bool(0.5).then(|| AppTrace {
                format: rng.random_range(-1..5),
                trace_id_high: rng.random(),
                trace_id_low: rng.random(),
                parent_span_id: rng.random(),
                sampling: rng.random_range(-1..4),
            }),
            host: hostile_text(rng),
            container_id: hostile_text(rng),
            conn_id: rng.random(),
            db: None,
            grpc: None,
        }
    }

    #[test]
    fn hostile_spans_encode_without_panicking() {
        let mut rng = StdRng::seed_from_u64(5);
        for round in 0..300 {
            let trace = Trace {
                trace_id_high: rng.random(),
                trace_id_low: rng.random(),
                spans: (0..rng.random_range(0..20))
                    .map(|_| LinkedSpan {
                        span: rng.random_bool(0.95).then(|| hostile_span(&mut rng)),
                        parent_id: rng.random(),
                    })
                    .collect(),
                app_trace_id: rng.random(),
                late: rng.random(),
            };
            let encoded = testing::Encoded::new(&trace);
            let refs = encoded.refs();
            let with_span = refs.len();

            // OTLP: valid protobuf, the same request as the struct path.
            let bytes = otlp_wire::encode_request(refs.iter().copied());
            let decoded = ExportTraceServiceRequest::decode(&bytes[..])
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(
                decoded,
                otlp::request(refs.iter().copied()),
                "round {round}"
            );
            let spans: usize = decoded
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            assert_eq!(spans, with_span);

            // Line protocol: one line per span, none broken by what it carries.
            let mut text = String::new();
            dataway::write_lines(&mut text, refs.iter().copied());
            assert_eq!(text.matches('\n').count(), with_span, "round {round}");
            for line in text.lines() {
                assert!(line.starts_with("dketrace,") || line.starts_with("dketrace "));
                assert!(!line.contains('\r'), "{line:?}");
                assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
            }
        }
    }

    #[test]
    fn host_headers_split_into_name_and_port() {
        assert_eq!(split_host("backend:8080"), ("backend", Some(8080)));
        assert_eq!(split_host("backend"), ("backend", None));
        assert_eq!(split_host("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_host("[::1]"), ("::1", None));
        assert_eq!(split_host("::1"), ("::1", None));
        assert_eq!(split_host("a:b"), ("a:b", None));
    }

    #[test]
    fn trace_ids_are_high_half_first() {
        let trace = TraceHead {
            trace_id_high: 0x0102030405060708,
            trace_id_low: 0x090a0b0c0d0e0f10,
            ..Default::default()
        };
        assert_eq!(
            trace_id_bytes(&trace),
            core::array::from_fn(|i| i as u8 + 1)
        );
        assert_eq!(
            trace_id_hex(&trace).as_str(),
            "0102030405060708090a0b0c0d0e0f10"
        );
        assert_eq!(span_id_hex(0xab).as_str(), "00000000000000ab");
        assert_eq!(span_id_hex(u64::MAX).as_str(), "ffffffffffffffff");
    }

    #[test]
    fn stack_text_matches_the_formatting_machinery() {
        for value in [0u64, 7, 10, 99, 255, 65_535, u32::MAX as u64, u64::MAX] {
            assert_eq!(decimal(value).as_str(), value.to_string());
            assert_eq!(span_id_hex(value).as_str(), format!("{value:016x}"));
        }
        for addr in [
            "10.0.0.1:1",
            "255.255.255.255:2",
            "0.0.0.0:3",
            "[::1]:4",
            "[fe80::1:2:3:4]:5",
            "[::ffff:192.168.100.200]:6",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:7",
        ] {
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            let endpoint = Endpoint::from_socket_addr(addr);
            let view = EndpointView {
                ip: &endpoint.ip,
                port: endpoint.port,
            };
            assert_eq!(ip_text(Some(&view)).as_str(), addr.ip().to_string());
        }
        assert_eq!(ip_text(None).as_str(), "");
        let bad = EndpointView {
            ip: &[1, 2, 3],
            port: 80,
        };
        assert_eq!(ip_text(Some(&bad)).as_str(), "");
    }
}
