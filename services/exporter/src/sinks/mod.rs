//! The backends: each sink is a tower `Service` that sends one encoded request
//! and says whether the backend took it, refused it for good, or may take it on
//! a later try. Encoding happens once, before the stack, so a retry re-sends the
//! same bytes.

pub mod dataway;
pub mod otlp;
mod post;
pub mod tls;

use std::cell::RefCell;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;

use crate::convert;
use crate::view::SpanRef;

/// One request's body, cheap to clone for retries.
#[derive(Debug, Clone)]
pub struct Payload {
    /// The bytes to send, already encoded (and compressed when the sink wants).
    pub body: Bytes,
    /// How many spans it holds.
    pub spans: u64,
}

/// What a backend said to a request it accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sent {
    /// Spans the backend accepted the request with but dropped (OTLP partial
    /// success); counted, not retried, as the OTLP spec says.
    pub dropped_spans: u64,
    /// The backend's message about them.
    pub message: String,
}

/// Why a request did not go through.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SinkError {
    /// The backend or the way to it failed in a way that may pass (connection
    /// refused, 429, 5xx, a gRPC `UNAVAILABLE`): try again later.
    #[error("{reason}")]
    Retryable {
        /// What happened.
        reason: String,
        /// How long the backend asked us to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The backend refused this data for good (HTTP 400, gRPC
    /// `INVALID_ARGUMENT`): sending it again cannot help.
    #[error("{reason}")]
    Rejected {
        /// The backend's answer.
        reason: String,
    },
}

/// How a sink wants its spans encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// An OTLP `ExportTraceServiceRequest`, gzipped when `gzip`.
    Otlp {
        /// Compress the body (OTLP/HTTP `Content-Encoding: gzip`).
        gzip: bool,
    },
    /// DataKit line protocol, always gzipped (Dataway expects it).
    Dataway,
}

impl Encoding {
    /// Encodes `spans` (about `hint` of them) into one request body.
    pub fn encode<'a>(&self, spans: impl IntoIterator<Item = SpanRef<'a>>, hint: usize) -> Payload {
        let mut count = 0u64;
        let spans = spans.into_iter().inspect(|_| count += 1);
        let mut body = take_buffer();
        match self {
            Encoding::Otlp { gzip: false } => {
                convert::otlp_wire::encode_request_into(spans, &mut body);
            }
            Encoding::Otlp { gzip: true } => {
                SCRATCH.with_borrow_mut(|raw| {
                    raw.clear();
                    convert::otlp_wire::encode_request_into(spans, raw);
                    gzip_into(raw, &mut body);
                });
            }
            Encoding::Dataway => TEXT.with_borrow_mut(|text| {
                text.clear();
                // Lines run 600-800 bytes.
                text.reserve(hint * 800);
                convert::dataway::write_lines(text, spans);
                gzip_into(text.as_bytes(), &mut body);
                shrink(text);
            }),
        }
        Payload {
            body: Bytes::from_owner(PooledBody(body)),
            spans: count,
        }
    }
}

thread_local! {
    /// Uncompressed bodies, reused by each thread that encodes.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Line protocol text, likewise.
    static TEXT: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Request bodies are large (most of a megabyte) and short-lived. Fresh ones
/// from the allocator cost a page fault per 4 KiB (glibc gives large blocks
/// back to the kernel, then takes them again), which cost more than encoding:
/// finished bodies come back here instead.
static BODIES: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Bodies kept for reuse, at most (a few per request in flight).
const POOLED_BODIES: usize = 16;

/// Larger buffers are let go rather than kept.
const MAX_KEPT: usize = 8 << 20;

fn take_buffer() -> Vec<u8> {
    BODIES
        .lock()
        .ok()
        .and_then(|mut pool| pool.pop())
        .unwrap_or_default()
}

fn shrink<T: Shrink>(buffer: &mut T) {
    if buffer.capacity() > MAX_KEPT {
        buffer.release();
    }
}

trait Shrink {
    fn capacity(&self) -> usize;
    fn release(&mut self);
}

impl Shrink for String {
    fn capacity(&self) -> usize {
        String::capacity(self)
    }
    fn release(&mut self) {
        *self = String::new();
    }
}

/// A body that goes back to [`BODIES`] when the transport is done with it.
struct PooledBody(Vec<u8>);

impl AsRef<[u8]> for PooledBody {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        let mut body = std::mem::take(&mut self.0);
        if body.capacity() > MAX_KEPT {
            return;
        }
        body.clear();
        if let Ok(mut pool) = BODIES.lock()
            && pool.len() < POOLED_BODIES
        {
            pool.push(body);
        }
    }
}

fn gzip_into(data: &[u8], out: &mut Vec<u8>) {
    // Fast level: the exporter's cost is CPU, the network here is rarely the
    // bottleneck, and level 1 already shrinks span data several-fold.
    let mut encoder =
        flate2::write::GzEncoder::new(std::mem::take(out), flate2::Compression::fast());
    *out = encoder
        .write_all(data)
        .and_then(|_| encoder.finish())
        .expect("writing to a Vec cannot fail");
}
