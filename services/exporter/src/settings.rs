//! The exporter's options: flags > environment > TOML (`[[inputs.espan_exporter]]`
//! in the `--config` file) > defaults, through `espan::config`. The OTLP options
//! take the variables OpenTelemetry users know, with the `…_TRACES_…` form
//! winning over the generic one, as the OTLP exporter spec says.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use espan::config::{
    self, ConfigError, GoDuration, Layers, Load, LoadError, Origin, PemFile, Replicas, Setting,
};
use espan::nats::{NatsArgs, NatsConnect};
use espan::redact::redact;

use crate::sinks::tls::OtlpTls;

use crate::sinks::otlp::{Protocol, parse_headers};

/// The TOML table the exporter reads (`[[inputs.espan_exporter]]`).
pub const FILE_TABLE: &str = "espan_exporter";

/// Everything the exporter runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// NATS: URL, credentials, TLS.
    pub nats: NatsConnect,
    /// Where `/metrics` and `/healthz` listen.
    pub metrics_addr: SocketAddr,
    /// The OTLP sink, when an endpoint is configured.
    pub otlp: Option<OtlpSettings>,
    /// The Dataway sink, when `ENV_DATAWAY` (or `--dataway`) is set.
    pub dataway: Option<DatawaySettings>,
    /// Spans per request, at most.
    pub batch_max_spans: usize,
    /// How long a request that is not full waits for more spans.
    pub batch_timeout: Duration,
    /// TRACES messages pulled at once, at most.
    pub batch_max_messages: usize,
    /// Requests in flight per sink.
    pub concurrency: usize,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// JetStream ack wait of the consumers.
    pub ack_wait: Duration,
    /// Durable names are `<prefix>-otlp`, `<prefix>-dataway`.
    pub durable_prefix: String,
    /// Copies of each stream this exporter is the first to create.
    pub stream_replicas: usize,
}

/// The OTLP sink's options.
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// gRPC: `http://host:4317`; HTTP: the URL posted to (with `/v1/traces`).
    pub endpoint: String,
    /// gRPC or HTTP/protobuf.
    pub protocol: Protocol,
    /// Extra headers (or gRPC metadata), e.g. an API key.
    pub headers: Vec<(String, String)>,
    /// Limit on one try.
    pub timeout: Duration,
    /// Gzip the requests.
    pub gzip: bool,
    /// TLS towards an `https://` endpoint.
    pub tls: OtlpTls,
}

/// The Dataway sink's options.
#[derive(Debug, Clone)]
pub struct DatawaySettings {
    /// `http://host:port/v1/write/tracing?token=…`.
    pub url: String,
    /// Limit on one try.
    pub timeout: Duration,
}

/// Exports espan's finished traces from the JetStream stream TRACES to OTLP (gRPC or
/// HTTP/protobuf) and to Guance Dataway. Each configured sink has its own durable
/// consumer, so a slow backend never holds another back; a message is acked only after
/// the backend answered 2xx, and data a backend refuses for good (400) goes to the
/// DEADLETTER stream with the reason.
#[derive(Debug, Parser)]
#[command(name = "espan-exporter", version, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub options: Options,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do; with none, export.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the resolved configuration and exit (checks every value).
    Config,
}

/// Every option, as text; [`Load::resolve`] parses them so that an error
/// names where the bad value came from. Each flag's file key is its name
/// with `_` for `-`.
#[derive(Debug, Args)]
pub struct Options {
    /// TOML file with an [[inputs.espan_exporter]] table; keys as named below.
    #[arg(long, env = "ESPAN_EXPORTER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// NATS server with JetStream [default: nats://127.0.0.1:4222] (file key nats_url).
    #[arg(
        long,
        env = "ESPAN_NATS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub nats_url: Option<String>,
    /// NATS credentials and TLS.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Address for /metrics and /healthz [default: 0.0.0.0:9533] (file key metrics_addr).
    #[arg(long, env = "ESPAN_EXPORTER_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// OTLP endpoint; enables the OTLP sink. gRPC: http://host:4317. HTTP: a base URL
    /// (http://host:4318, `/v1/traces` is appended) or, from the TRACES variable, the full URL.
    /// Also read from OTEL_EXPORTER_OTLP_ENDPOINT (file key otlp_endpoint).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        value_name = "URL",
        hide_env_values = true
    )]
    pub otlp_endpoint: Option<String>,
    /// grpc or http/protobuf [default: http/protobuf]. Also OTEL_EXPORTER_OTLP_PROTOCOL
    /// (file key otlp_protocol).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        value_name = "PROTOCOL"
    )]
    pub otlp_protocol: Option<String>,
    /// Headers sent with every OTLP request: key=value,key2=value2 (values percent-decoded).
    /// Also OTEL_EXPORTER_OTLP_HEADERS (file key otlp_headers).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        value_name = "LIST",
        hide_env_values = true
    )]
    pub otlp_headers: Option<String>,
    /// Limit on one OTLP try: milliseconds (as the OTel variables) or a duration such as 10s
    /// [default: 10000]. Also OTEL_EXPORTER_OTLP_TIMEOUT (file key otlp_timeout).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        value_name = "DURATION"
    )]
    pub otlp_timeout: Option<String>,
    /// gzip or none [default: none]. Also OTEL_EXPORTER_OTLP_COMPRESSION (file key
    /// otlp_compression).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        value_name = "NAME"
    )]
    pub otlp_compression: Option<String>,
    /// PEM file of the CA(s) that verify an https:// OTLP endpoint, in place of the
    /// built-in (Mozilla) roots. Also OTEL_EXPORTER_OTLP_CERTIFICATE (file key otlp_certificate).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        value_name = "FILE"
    )]
    pub otlp_certificate: Option<String>,
    /// PEM client certificate for mutual TLS with the OTLP endpoint, with
    /// --otlp-client-key. Also OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE (file key
    /// otlp_client_certificate).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
        value_name = "FILE"
    )]
    pub otlp_client_certificate: Option<String>,
    /// PEM private key of --otlp-client-certificate. Also
    /// OTEL_EXPORTER_OTLP_CLIENT_KEY (file key otlp_client_key).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
        value_name = "FILE"
    )]
    pub otlp_client_key: Option<String>,
    /// Guance Dataway, http://host:port?token=tkn_xxx; enables the Dataway sink, which posts
    /// gzip line protocol to <host:port>/v1/write/tracing?token=… (file key dataway).
    #[arg(long, env = "ENV_DATAWAY", value_name = "URL", hide_env_values = true)]
    pub dataway: Option<String>,
    /// Limit on one Dataway try [default: 30s] (file key dataway_timeout).
    #[arg(long, env = "ESPAN_EXPORTER_DATAWAY_TIMEOUT", value_name = "DURATION")]
    pub dataway_timeout: Option<String>,
    /// Spans per request, at most; larger groups are split [default: 1000] (file key
    /// batch_max_spans).
    #[arg(long, env = "ESPAN_EXPORTER_BATCH_MAX_SPANS", value_name = "N")]
    pub batch_max_spans: Option<String>,
    /// A request leaves when it holds batch_max_spans spans or when its first span has waited
    /// this long (as the OpenTelemetry Collector's batch processor) [default: 200ms]
    /// (file key batch_timeout).
    #[arg(long, env = "ESPAN_EXPORTER_BATCH_TIMEOUT", value_name = "DURATION")]
    pub batch_timeout: Option<String>,
    /// TRACES messages pulled from JetStream at once [default: 64] (file key
    /// batch_max_messages).
    #[arg(long, env = "ESPAN_EXPORTER_BATCH_MAX_MESSAGES", value_name = "N")]
    pub batch_max_messages: Option<String>,
    /// Requests in flight per sink [default: 4] (file key concurrency).
    #[arg(long, env = "ESPAN_EXPORTER_CONCURRENCY", value_name = "N")]
    pub concurrency: Option<String>,
    /// First retry delay; it doubles per try, with jitter [default: 200ms] (file key
    /// retry_initial).
    #[arg(long, env = "ESPAN_EXPORTER_RETRY_INITIAL", value_name = "DURATION")]
    pub retry_initial: Option<String>,
    /// Longest retry delay; retries go on until the backend takes the data [default: 30s]
    /// (file key retry_max).
    #[arg(long, env = "ESPAN_EXPORTER_RETRY_MAX", value_name = "DURATION")]
    pub retry_max: Option<String>,
    /// JetStream ack wait of the consumers: a message held this long without an ack or a
    /// progress ack is redelivered, e.g. what an exporter held when it crashed; while it
    /// exports, the exporter sends progress acks (and skips copies of what it already sent)
    /// [default: 30s] (file key ack_wait).
    #[arg(long, env = "ESPAN_EXPORTER_ACK_WAIT", value_name = "DURATION")]
    pub ack_wait: Option<String>,
    /// Durable consumer names are <prefix>-otlp and <prefix>-dataway; replicas sharing a
    /// prefix share the work [default: exporter] (file key durable_prefix).
    #[arg(long, env = "ESPAN_EXPORTER_DURABLE_PREFIX", value_name = "NAME")]
    pub durable_prefix: Option<String>,
    /// Copies of each JetStream stream when this exporter is the first to create it
    /// (1, 3 or 5; keep it equal to the linker's) [default: 1] (file key stream_replicas).
    #[arg(long, env = "ESPAN_STREAM_REPLICAS", value_name = "N")]
    pub stream_replicas: Option<String>,
}

impl Settings {
    /// The resolved settings, one `file_key = value` line each, for
    /// `espan-exporter config`. Secrets stay hidden: header values, and every
    /// URL's user info and query (the Dataway token) are redacted.
    pub fn report(&self) -> String {
        let mut lines = vec![
            format!("nats_url = {:?}", self.nats.shown_url()),
            format!("nats_auth = \"{:?}\"", self.nats.auth),
            format!("nats_tls = \"{:?}\"", self.nats.tls),
            format!("metrics_addr = \"{}\"", self.metrics_addr),
        ];
        match &self.otlp {
            None => lines.push("otlp_endpoint = (not set: no OTLP sink)".into()),
            Some(otlp) => {
                let headers: Vec<String> = otlp
                    .headers
                    .iter()
                    .map(|(key, _)| format!("{key}=<hidden>"))
                    .collect();
                lines.extend([
                    format!("otlp_endpoint = {:?}", redact(&otlp.endpoint)),
                    format!(
                        "otlp_protocol = \"{}\"",
                        match otlp.protocol {
                            Protocol::Grpc => "grpc",
                            Protocol::HttpProtobuf => "http/protobuf",
                        }
                    ),
                    format!("otlp_headers = {:?}", headers.join(",")),
                    format!("otlp_timeout = \"{:?}\"", otlp.timeout),
                    format!(
                        "otlp_compression = \"{}\"",
                        if otlp.gzip { "gzip" } else { "none" }
                    ),
                ]);
                let files = [
                    ("otlp_certificate", otlp.tls.ca.as_ref()),
                    (
                        "otlp_client_certificate",
                        otlp.tls.client.as_ref().map(|c| &c.0),
                    ),
                    ("otlp_client_key", otlp.tls.client.as_ref().map(|c| &c.1)),
                ];
                for (key, file) in files {
                    if let Some(file) = file {
                        lines.push(format!("{key} = {:?}", file.path));
                    }
                }
            }
        }
        match &self.dataway {
            None => lines.push("dataway = (not set: no Dataway sink)".into()),
            Some(dataway) => {
                lines.extend([
                    format!("dataway = {:?}", redact(&dataway.url)),
                    format!("dataway_timeout = \"{:?}\"", dataway.timeout),
                ]);
            }
        }
        lines.extend([
            format!("batch_max_spans = {}", self.batch_max_spans),
            format!("batch_timeout = \"{:?}\"", self.batch_timeout),
            format!("batch_max_messages = {}", self.batch_max_messages),
            format!("concurrency = {}", self.concurrency),
            format!("retry_initial = \"{:?}\"", self.retry_initial),
            format!("retry_max = \"{:?}\"", self.retry_max),
            format!("ack_wait = \"{:?}\"", self.ack_wait),
            format!("durable_prefix = {:?}", self.durable_prefix),
            format!("stream_replicas = {}", self.stream_replicas),
        ]);
        lines.join("\n") + "\n"
    }
}

impl Load for Settings {
    type Cli = Cli;
    const INPUT: &'static str = FILE_TABLE;

    fn config_file(cli: &Cli) -> Option<&Path> {
        cli.options.config.as_deref()
    }

    fn resolve(_: &Cli, layers: &Layers<'_>) -> Result<Self, ConfigError> {
        let otel = Otel { layers };

        let otlp = match otel.get::<String>(
            "otlp_endpoint",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "otlp_endpoint",
        )? {
            None => None,
            Some((endpoint, from)) => {
                let protocol = match otel.get::<String>(
                    "otlp_protocol",
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                    "otlp_protocol",
                )? {
                    Some((text, origin)) => {
                        Protocol::parse(&text).map_err(|reason| invalid(origin, &text, reason))?
                    }
                    None => Protocol::HttpProtobuf,
                };
                let endpoint = match protocol {
                    Protocol::Grpc => endpoint,
                    Protocol::HttpProtobuf => {
                        let signal_specific =
                            from == Origin::Env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into());
                        crate::sinks::otlp::http::traces_url(
                            &endpoint,
                            signal_specific
                                || endpoint.trim_end_matches('/').ends_with("/v1/traces"),
                        )
                        .map_err(|reason| invalid(from.clone(), &endpoint, reason))?
                        .to_string()
                    }
                };
                let headers = match otel.get::<String>(
                    "otlp_headers",
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "otlp_headers",
                )? {
                    Some((text, origin)) => {
                        parse_headers(&text).map_err(|reason| invalid(origin, &text, reason))?
                    }
                    None => Vec::new(),
                };
                let timeout = match otel.get::<OtlpTimeout>(
                    "otlp_timeout",
                    "OTEL_EXPORTER_OTLP_TIMEOUT",
                    "otlp_timeout",
                )? {
                    Some((t, _)) => t.0,
                    None => Duration::from_secs(10),
                };
                let gzip = match otel.get::<String>(
                    "otlp_compression",
                    "OTEL_EXPORTER_OTLP_COMPRESSION",
                    "otlp_compression",
                )? {
                    Some((text, origin)) => match text.trim() {
                        "gzip" => true,
                        "none" | "" => false,
                        _ => return Err(invalid(origin, &text, "expected gzip or none".into())),
                    },
                    None => false,
                };
                let tls = otlp_tls(&otel)?;
                Some(OtlpSettings {
                    endpoint,
                    protocol,
                    headers,
                    timeout,
                    gzip,
                    tls,
                })
            }
        };

        let dataway = match layers.get_opt::<String>("dataway", "dataway")? {
            None => None,
            Some(text) => {
                let origin = layers.origin_of("dataway", "dataway");
                if text.contains(',') {
                    return Err(invalid(
                        origin,
                        &text,
                        "one Dataway URL, please (espan sends to one)".into(),
                    ));
                }
                let url = crate::sinks::dataway::write_url(text.trim())
                    .map_err(|reason| invalid(origin, &text, reason))?;
                Some(DatawaySettings {
                    url: url.to_string(),
                    timeout: layers.get(
                        "dataway_timeout",
                        "dataway_timeout",
                        Duration::from_secs(30),
                    )?,
                })
            }
        };

        let positive = |id: &str, key: &str, default: usize| -> Result<usize, ConfigError> {
            let value: usize = layers.get(id, key, default)?;
            if value == 0 {
                return Err(layers.invalid(id, key, 0, "must be at least 1"));
            }
            Ok(value)
        };
        let settings = Settings {
            nats: NatsArgs::resolve(
                layers,
                layers.get("nats_url", "nats_url", "nats://127.0.0.1:4222".to_owned())?,
            )?,
            metrics_addr: layers.get(
                "metrics_addr",
                "metrics_addr",
                SocketAddr::from(([0, 0, 0, 0], 9533)),
            )?,
            otlp,
            dataway,
            batch_max_spans: positive("batch_max_spans", "batch_max_spans", 1000)?,
            batch_timeout: layers.get(
                "batch_timeout",
                "batch_timeout",
                Duration::from_millis(200),
            )?,
            batch_max_messages: positive("batch_max_messages", "batch_max_messages", 64)?,
            concurrency: positive("concurrency", "concurrency", 4)?,
            retry_initial: layers.get(
                "retry_initial",
                "retry_initial",
                Duration::from_millis(200),
            )?,
            retry_max: layers.get("retry_max", "retry_max", Duration::from_secs(30))?,
            ack_wait: layers.get("ack_wait", "ack_wait", Duration::from_secs(30))?,
            durable_prefix: layers.get(
                "durable_prefix",
                "durable_prefix",
                "exporter".to_owned(),
            )?,
            stream_replicas: layers
                .get(
                    "stream_replicas",
                    "stream_replicas",
                    Replicas::new(1).expect("valid"),
                )?
                .get(),
        };
        if settings.otlp.is_none() && settings.dataway.is_none() {
            return Err(ConfigError::Conflict(
                "no sink configured: set OTEL_EXPORTER_OTLP_ENDPOINT (or --otlp-endpoint) and/or ENV_DATAWAY (or --dataway)".into(),
            ));
        }
        Ok(settings)
    }
}

impl Settings {
    /// Parses `args` (first item = program name) the way `main` does.
    pub fn from_args<I, T>(args: I) -> Result<(Cli, Settings), LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        config::load_from::<Settings, _, _>(args).map(|loaded| (loaded.cli, loaded.settings))
    }
}

/// The OTel variables: flag or `…_TRACES_…` variable, then the generic
/// variable, then the file.
struct Otel<'a> {
    layers: &'a Layers<'a>,
}

impl Otel<'_> {
    fn get<T: Setting>(
        &self,
        id: &str,
        generic_var: &str,
        file_key: &str,
    ) -> Result<Option<(T, Origin)>, ConfigError> {
        if !self.layers.given(id)
            && let Some(value) = self.layers.env_opt::<T>(generic_var)?
        {
            return Ok(Some((value, Origin::Env(generic_var.into()))));
        }
        let origin = self.layers.origin_of(id, file_key);
        Ok(self.layers.get_opt::<T>(id, file_key)?.map(|v| (v, origin)))
    }
}

/// The OTLP TLS files, each from its flag or `…_TRACES_…` variable, the
/// generic variable or the file; a client certificate needs its key.
fn otlp_tls(otel: &Otel<'_>) -> Result<OtlpTls, ConfigError> {
    let ca = otel.get::<PemFile>(
        "otlp_certificate",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        "otlp_certificate",
    )?;
    let cert = otel.get::<PemFile>(
        "otlp_client_certificate",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        "otlp_client_certificate",
    )?;
    let key = otel.get::<PemFile>(
        "otlp_client_key",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        "otlp_client_key",
    )?;
    let client = match (cert, key) {
        (Some((cert, _)), Some((key, _))) => Some((cert, key)),
        (None, None) => None,
        (Some((cert, origin)), None) => {
            return Err(invalid(
                origin,
                &cert.path.display().to_string(),
                "a client certificate needs its key (OTEL_EXPORTER_OTLP_CLIENT_KEY)".into(),
            ));
        }
        (None, Some((key, origin))) => {
            return Err(invalid(
                origin,
                &key.path.display().to_string(),
                "a client key needs its certificate (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE)".into(),
            ));
        }
    };
    Ok(OtlpTls {
        ca: ca.map(|(ca, _)| ca),
        client,
    })
}

/// OTLP timeouts: plain integers are milliseconds (the OTel variables' unit);
/// anything else is a duration like `10s`.
struct OtlpTimeout(Duration);

impl Setting for OtlpTimeout {
    fn from_text(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(ms) = text.parse::<u64>() {
            return Ok(Self(Duration::from_millis(ms)));
        }
        GoDuration::parse(text).map(Self)
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Integer(ms) if *ms >= 0 => Ok(Self(Duration::from_millis(*ms as u64))),
            toml::Value::String(text) => Self::from_text(text),
            other => Err(format!(
                "expected milliseconds or a duration, found a {}",
                other.type_str()
            )),
        }
    }
}

fn invalid(origin: Origin, value: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        origin,
        value: value.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_args(args: &[&str]) -> Result<Settings, LoadError> {
        Settings::from_args(args.iter().copied()).map(|(_, settings)| settings)
    }

    #[test]
    fn flags_configure_both_sinks() {
        let s = resolve_args(&[
            "x",
            "--otlp-endpoint",
            "http://127.0.0.1:4318",
            "--otlp-headers",
            "api-key=s%3Dcret",
            "--otlp-timeout",
            "2500",
            "--otlp-compression",
            "gzip",
            "--dataway",
            "http://127.0.0.1:9528?token=tkn_1",
            "--concurrency",
            "8",
        ])
        .unwrap();
        let otlp = s.otlp.unwrap();
        assert_eq!(otlp.protocol, Protocol::HttpProtobuf);
        assert_eq!(otlp.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(otlp.headers, [("api-key".to_owned(), "s=cret".to_owned())]);
        assert_eq!(otlp.timeout, Duration::from_millis(2500));
        assert!(otlp.gzip);
        assert_eq!(
            s.dataway.unwrap().url,
            "http://127.0.0.1:9528/v1/write/tracing?token=tkn_1"
        );
        assert_eq!(s.concurrency, 8);
        assert_eq!(s.ack_wait, Duration::from_secs(30));
        assert_eq!(s.batch_timeout, Duration::from_millis(200));
    }

    #[test]
    fn errors_name_the_setting_and_value() {
        let err = resolve_args(&[
            "x",
            "--otlp-endpoint",
            "http://h:4317",
            "--otlp-protocol",
            "udp",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--otlp-protocol") && err.contains("udp"),
            "{err}"
        );
        let err = resolve_args(&["x", "--dataway", "http://h:9528"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--dataway") && err.contains("token"), "{err}");
        let err = resolve_args(&["x"]).unwrap_err().to_string();
        assert!(err.contains("no sink configured"), "{err}");
        let err = resolve_args(&["x", "--dataway", "http://h:1?token=t", "--concurrency", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--concurrency"), "{err}");
    }

    #[test]
    fn a_toml_file_is_the_last_layer_before_defaults() {
        let dir =
            std::env::temp_dir().join(format!("espan-exporter-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("exporter.toml");
        std::fs::write(
            &path,
            "[[inputs.espan_exporter]]\notlp_endpoint = \"http://127.0.0.1:4317\"\notlp_protocol = \"grpc\"\n\
             otlp_timeout = 1500\nbatch_max_spans = \"200\"\nconcurrency = \"3\"\ntypo_key = \"x\"\n",
        )
        .unwrap();
        let path_text = path.to_str().unwrap();
        let loaded =
            config::load_from::<Settings, _, _>(["x", "--config", path_text, "--concurrency", "5"])
                .unwrap();
        let s = loaded.settings;
        let otlp = s.otlp.unwrap();
        assert_eq!(otlp.protocol, Protocol::Grpc);
        assert_eq!(otlp.endpoint, "http://127.0.0.1:4317");
        assert_eq!(otlp.timeout, Duration::from_millis(1500));
        assert_eq!(s.batch_max_spans, 200);
        assert_eq!(s.concurrency, 5, "the flag wins over the file");
        assert_eq!(
            loaded.unknown_keys.to_string(),
            format!(
                "unknown key `typo_key` in [[inputs.espan_exporter]] of {path_text}: ignored (misspelt? --help lists every key)"
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
