//! What espan's three services share.
//!
//! Layout, in the order data flows:
//! - [`wire`]: the eSpan and finished-trace messages (protobuf, versioned), their
//!   encoding and the validation that turns nonsense into typed errors.
//! - [`protowire`]: protobuf's wire format read in place and written directly,
//!   for the paths where prost's whole-message decode and encode cost too much.
//! - [`bus`]: NATS JetStream: streams, pipelined publishing with message ids, a
//!   pull-consumer loop that acks only what its handler made safe, dead letters.
//! - [`nats`]: how a service reaches NATS (URL, credentials, TLS), the same
//!   options for every service.
//! - [`redact`]: secrets taken out of URLs in anything logged or stored.
//! - [`config`]: flags > environment > DataKit-style TOML, read by one loader
//!   for every service, with errors that name the key and the value.
//! - [`telemetry`]: `/metrics` and `/healthz`, logging.
//! - [`shutdown`]: one stop signal for every task.
//! - `testkit` (feature `testkit`, for tests and benches): a real `nats-server`
//!   per test.

pub mod bus;
pub mod config;
pub mod nats;
pub mod protowire;
pub mod redact;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod wire;
