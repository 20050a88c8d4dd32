//! espan's linker: eSpans from every probe in, linked and sampled traces out.
//!
//! Layout, in the order data flows:
//! - [`settings`]: DataKit's `[[inputs.ebpftrace]]` options, flags and env.
//! - [`raw`]: ESPANS messages read into each span's facts and bytes; TRACES
//!   messages written from those bytes.
//! - [`engine`]: pure linking (no I/O): spans and a clock in, finished traces out.
//! - [`store`]: SurrealDB at `db_path`: batches as received (the window, rebuilt
//!   after a crash) and finished traces (queryable, retained, deleted in ranges).
//! - `parts`: a finished trace capped and cut into parts that fit a message.
//! - [`service`]: JetStream `ESPANS` → store → engine → JetStream `TRACES`.
//! - [`cli`] and [`api`]: `espan-linker traces` / `trace <id>`, from the store or,
//!   while a linker runs, from its `/api/…`.
//! - `synth` (feature `testkit`): realistic synthetic traces for tests and
//!   benchmarks.

pub mod api;
pub mod cli;
pub mod engine;
pub mod metrics;
mod output;
mod parts;
pub mod raw;
pub mod service;
pub mod settings;
pub mod store;
#[cfg(any(test, feature = "testkit"))]
pub mod synth;
