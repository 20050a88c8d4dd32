//! espan's exporter: finished traces in from JetStream, OTLP and Dataway out.
//!
//! Layout, in the order data flows:
//! - [`settings`]: flags > environment (the OTel `OTEL_EXPORTER_OTLP_*`
//!   variables, `ENV_DATAWAY`) > TOML > defaults.
//! - [`service`]: one durable consumer on `TRACES` per sink; reads each
//!   `TraceBatch` in place ([`message`]: checked and indexed, spans parsed
//!   without copying; an unreadable message is dead-lettered and counted), cuts
//!   its spans into requests by size and time, keeps several requests in
//!   flight, acks a message after every request holding its spans got 2xx,
//!   dead-letters what a backend refuses for good.
//! - [`view`]: a span as the conversions see it, read in place from the
//!   message's bytes, with the trace it belongs to.
//! - [`convert`]: pure conversions, eSpan → OTLP (`convert::otlp` defines the
//!   content and builds opentelemetry-proto messages; `convert::otlp_wire`
//!   writes the same request straight to bytes, the fast path the sinks use;
//!   route templating in `convert::route`) and → DataKit line protocol
//!   (`convert::dataway`).
//! - [`stack`]: the tower layers around each sink: concurrency limit, retry with
//!   exponential backoff and jitter, timeout.
//! - [`sinks`]: the transports, each a tower `Service` sending one encoded body:
//!   OTLP gRPC, OTLP HTTP/protobuf, Dataway.
//! - [`metrics`]: exported, retried, rejected, queue depth, per sink.
//! - [`run`]: wires it together for `main`.

pub mod convert;
pub mod message;
pub mod metrics;
pub mod run;
pub mod service;
pub mod settings;
pub mod sinks;
pub mod stack;
pub mod view;
