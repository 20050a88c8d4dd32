//! End-to-end tests of espan across real processes on test hosts made of
//! network namespaces: a probe per host, NATS JetStream, the linker, the
//! exporter and an upstream OTLP receiver, tracing a multi-tier app whose own
//! OpenTelemetry spans are the ground truth.
//!
//! - [`netns`]: the hosts, a router with DNAT between them;
//! - [`process`]: child processes with logs, killed on drop;
//! - [`stack`]: espan's services on that network;
//! - [`app`]: the traced app and its client;
//! - [`truth`], [`observed`]: the app's spans and what espan exported;
//! - [`accuracy`]: the two compared (precision, recall, exact traces);
//! - [`chain`]: truth by construction for a caller → third-party middle tier →
//!   backend chain (the runtime tests).
//!
//! The tests (`tests/`) need root, iproute2, iptables, redis-server and the
//! apps' Python venv (`scripts/setup.sh` installs them); they are `#[ignore]`d
//! so that a run without root counts them as not run, and `scripts/test.sh`
//! runs them with `--include-ignored` as root.

pub mod accuracy;
pub mod app;
pub mod chain;
pub mod netns;
pub mod observed;
pub mod process;
pub mod stack;
pub mod truth;

/// Whether this process may load eBPF programs and make namespaces.
pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}
