//! TLS towards a backend, as the sinks use it (settings fill it in).

use espan::config::PemFile;

/// TLS towards the OTLP backend: the OTel `…_CERTIFICATE` variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OtlpTls {
    /// The CA(s) that verify the backend, in place of the built-in (Mozilla) roots.
    pub ca: Option<PemFile>,
    /// A client certificate and its key, for mutual TLS.
    pub client: Option<(PemFile, PemFile)>,
}
