//! What the engine is told: the window, sampling, and how much to trust clocks and
//! connection tuples.

use std::time::Duration;

/// How the connection tuples of a CLIENT and a SERVER span on the same host must
/// agree before they can be one call. Across hosts tuples are never compared: NAT
/// may rewrite both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SameHostTuple {
    /// The client's local end is the server's remote end. Destination NAT on the
    /// host (Docker published ports, kube-proxy ClusterIPs) rewrites only the other
    /// end, so this holds through it.
    #[default]
    Source,
    /// Both ends mirrored: client local = server remote and client remote = server
    /// local. Breaks under destination NAT on the host.
    Mirrored,
    /// Do not compare tuples (the seq pair and time overlap alone decide).
    Ignore,
}

/// The engine's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// A trace is final when no span has joined it for this long (linker clock).
    pub window: Duration,
    /// Fraction of traces kept, 0..=1, decided by a hash of the trace id.
    pub sampling_rate: f64,
    /// Use the application's own trace id (W3C, B3, Datadog) when a span carried one.
    pub use_app_trace_id: bool,
    /// How long a finished trace's spans stay known, so a late span can join it
    /// (and a duplicate be recognised).
    pub late_retention: Duration,
    /// Tolerated clock difference between two hosts when checking that a server
    /// span lies within its client span.
    pub clock_skew: Duration,
    /// The same tolerance for two spans of one host (one clock; timestamps taken
    /// at slightly different points of the syscalls).
    pub same_host_slack: Duration,
    /// How connection tuples are compared on one host.
    pub same_host_tuple: SameHostTuple,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(20),
            sampling_rate: 0.1,
            use_app_trace_id: true,
            late_retention: Duration::from_secs(20),
            clock_skew: Duration::from_millis(50),
            same_host_slack: Duration::from_millis(1),
            same_host_tuple: SameHostTuple::Source,
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `sampling_rate` outside 0..=1 (or not a number).
    #[error("sampling_rate {0} is not between 0 and 1")]
    SamplingRate(f64),
    /// A zero window would finish every trace at its first span.
    #[error("window must be longer than 0")]
    ZeroWindow,
}

impl EngineConfig {
    /// Checks the settings; the service calls it at start-up to name a bad value.
    /// [`super::Engine::new`] does not need it: it treats a rate above 1 as 1 and
    /// anything else out of range as 0.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sampling_rate) {
            return Err(ConfigError::SamplingRate(self.sampling_rate));
        }
        if self.window.is_zero() {
            return Err(ConfigError::ZeroWindow);
        }
        Ok(())
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
