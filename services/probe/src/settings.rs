//! The probe's options: DataKit's `[[inputs.ebpf]]` names and `ENV_INPUT_EBPF_*`
//! variables, plus espan's own, resolved as flags > environment > TOML > default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};
use espan::config::{self, ByteSize, ConfigError, FileTable, GoDuration, Layers};
use espan_common::MAX_CAPTURE;

use crate::procs::Selection;

/// Sees the HTTP/1.x requests and responses of the selected processes on their
/// TCP sockets with eBPF (tracepoints only) and publishes eSpans to NATS
/// JetStream (subject espan.<host>). Needs root. DataKit `ebpf` users: the same
/// option names, file table and variables work here.
#[derive(Debug, Parser)]
#[command(name = "espan-probe", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub options: Options,
    /// Print the resolved configuration and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Every option, as text; [`Settings::resolve`] parses them so that an error
/// names where the bad value came from.
#[derive(Debug, Args)]
pub struct Options {
    /// TOML file with an [[inputs.ebpf]] table (DataKit's input config).
    #[arg(long, env = "ESPAN_PROBE_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// DataKit plugins; tracing needs `ebpf-trace` when the list is given. [default: ebpf-net,ebpf-trace]
    #[arg(long, env = "ENV_INPUT_EBPF_ENABLED_PLUGINS", value_name = "LIST")]
    pub enabled_plugins: Option<String>,
    /// DataKit L7 protocols; HTTP/1.x needs `httpflow` when the list is given. [default: httpflow]
    #[arg(long, env = "ENV_INPUT_EBPF_L7NET_ENABLED", value_name = "LIST")]
    pub l7net_enabled: Option<String>,
    /// NATS server with JetStream: `host:port` or `nats://…`. [default: 127.0.0.1:4222]
    #[arg(long, env = "ENV_INPUT_EBPF_TRACE_SERVER", value_name = "URL")]
    pub trace_server: Option<String>,
    /// Trace every process (except blacklisted ones). [default: false]
    #[arg(long, env = "ENV_INPUT_EBPF_TRACE_ALL_PROCESS", value_name = "BOOL")]
    pub trace_all_process: Option<String>,
    /// Trace processes with any of these variables set; they also name the service.
    /// [default: DK_BPFTRACE_SERVICE,DD_SERVICE,OTEL_SERVICE_NAME]
    #[arg(long, env = "ENV_INPUT_EBPF_TRACE_ENV_LIST", value_name = "LIST")]
    pub trace_env_list: Option<String>,
    /// Never trace processes with any of these variables set.
    #[arg(long, env = "ENV_INPUT_EBPF_TRACE_ENV_BLACKLIST", value_name = "LIST")]
    pub trace_env_blacklist: Option<String>,
    /// Trace processes with these names.
    #[arg(long, env = "ENV_INPUT_EBPF_TRACE_NAME_LIST", value_name = "LIST")]
    pub trace_name_list: Option<String>,
    /// Never trace processes with these names.
    #[arg(long, env = "ENV_INPUT_EBPF_TRACE_NAME_BLACKLIST", value_name = "LIST")]
    pub trace_name_blacklist: Option<String>,
    /// Payload bytes copied per read or write (at most 4096). [default: 1024]
    #[arg(long, env = "ENV_INPUT_EBPF_CAPTURE_BYTES", value_name = "SIZE")]
    pub capture_bytes: Option<String>,
    /// Kernel ring buffer size. [default: 8MiB]
    #[arg(long, env = "ENV_INPUT_EBPF_RING_BUFFER_SIZE", value_name = "SIZE")]
    pub ring_buffer_size: Option<String>,
    /// Most eSpans per published batch. [default: 500]
    #[arg(long, env = "ENV_INPUT_EBPF_BATCH_SPANS", value_name = "N")]
    pub batch_spans: Option<String>,
    /// Longest wait before a batch is published. [default: 200ms]
    #[arg(long, env = "ENV_INPUT_EBPF_BATCH_INTERVAL", value_name = "DURATION")]
    pub batch_interval: Option<String>,
    /// Encoded batches kept while NATS is away; beyond, the oldest are dropped
    /// and counted. [default: 64MiB]
    #[arg(long, env = "ENV_INPUT_EBPF_BUFFER_SIZE", value_name = "SIZE")]
    pub buffer_size: Option<String>,
    /// Address of /metrics and /healthz. [default: 0.0.0.0:9531]
    #[arg(long, env = "ENV_INPUT_EBPF_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Bytes each JetStream stream may hold when this probe creates or updates the
    /// streams (keep it equal to the linker's). [default: 2GiB]
    #[arg(long, env = "ESPAN_STREAM_MAX_BYTES", value_name = "SIZE")]
    pub stream_max_bytes: Option<String>,
    /// Host name in eSpans and the subject. [default: the machine's host name]
    #[arg(long, env = "ENV_INPUT_EBPF_HOST", value_name = "NAME")]
    pub host: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub nats_url: String,
    pub selection: Selection,
    pub capture_bytes: u32,
    pub ring_bytes: u32,
    pub batch_spans: usize,
    pub batch_interval: Duration,
    pub buffer_bytes: u64,
    pub metrics_addr: SocketAddr,
    pub host: String,
    pub stream_max_bytes: u64,
    /// Keys of the file table no option uses (logged as likely typos).
    pub unknown_keys: Vec<String>,
}

/// The env list DataKit uses by default.
pub const DEFAULT_ENV_LIST: &[&str] = &["DK_BPFTRACE_SERVICE", "DD_SERVICE", "OTEL_SERVICE_NAME"];

fn invalid(
    layers: &Layers<'_>,
    id: &str,
    key: &str,
    value: impl std::fmt::Display,
    why: &str,
) -> ConfigError {
    config::check(
        layers.origin_of(id, key),
        value,
        Err::<(), _>(why.to_owned()),
    )
    .unwrap_err()
}

/// The machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Settings {
    /// Resolves every option from `matches` (of [`Cli`]'s command).
    pub fn resolve(
        command: &clap::Command,
        matches: &clap::ArgMatches,
        options: &Options,
    ) -> Result<Self, ConfigError> {
        let file = options
            .config
            .as_deref()
            .map(|p| FileTable::load(p, "ebpf"))
            .transpose()?;
        let layers = Layers::new(command, matches, file);
        let plugins: Option<Vec<String>> = layers.get_opt("enabled_plugins", "enabled_plugins")?;
        if let Some(p) = &plugins
            && !p.iter().any(|p| p == "ebpf-trace")
        {
            return Err(invalid(
                &layers,
                "enabled_plugins",
                "enabled_plugins",
                p.join(","),
                "tracing needs ebpf-trace",
            ));
        }
        let l7: Option<Vec<String>> = layers.get_opt("l7net_enabled", "l7net_enabled")?;
        if let Some(p) = &l7
            && !p.iter().any(|p| p == "httpflow")
        {
            return Err(invalid(
                &layers,
                "l7net_enabled",
                "l7net_enabled",
                p.join(","),
                "HTTP/1.x tracing needs httpflow",
            ));
        }
        let trace_server: String =
            layers.get("trace_server", "trace_server", "127.0.0.1:4222".to_owned())?;
        let capture = layers
            .get("capture_bytes", "capture_bytes", ByteSize(1024))?
            .0;
        if !(64..=MAX_CAPTURE as u64).contains(&capture) {
            return Err(invalid(
                &layers,
                "capture_bytes",
                "capture_bytes",
                capture,
                "must be 64 to 4096 bytes",
            ));
        }
        let ring = layers
            .get("ring_buffer_size", "ring_buffer_size", ByteSize(8 << 20))?
            .0;
        if !((64 << 10)..=(1 << 30)).contains(&ring) {
            return Err(invalid(
                &layers,
                "ring_buffer_size",
                "ring_buffer_size",
                ring,
                "must be 64KiB to 1GiB",
            ));
        }
        let batch_spans: usize = layers.get("batch_spans", "batch_spans", 500)?;
        if batch_spans == 0 {
            return Err(invalid(
                &layers,
                "batch_spans",
                "batch_spans",
                0,
                "must be at least 1",
            ));
        }
        let batch_interval = layers
            .get::<GoDuration>(
                "batch_interval",
                "batch_interval",
                GoDuration(Duration::from_millis(200)),
            )?
            .0;
        if batch_interval.is_zero() {
            return Err(invalid(
                &layers,
                "batch_interval",
                "batch_interval",
                "0s",
                "must be above 0",
            ));
        }
        let selection = Selection {
            trace_all: layers.get("trace_all_process", "trace_all_process", false)?,
            env_list: layers.get(
                "trace_env_list",
                "trace_env_list",
                DEFAULT_ENV_LIST.iter().map(|s| s.to_string()).collect(),
            )?,
            env_blacklist: layers.get("trace_env_blacklist", "trace_env_blacklist", Vec::new())?,
            name_list: layers.get("trace_name_list", "trace_name_list", Vec::new())?,
            name_blacklist: layers.get(
                "trace_name_blacklist",
                "trace_name_blacklist",
                Vec::new(),
            )?,
        };
        let settings = Settings {
            nats_url: espan::bus::nats_url(&trace_server),
            selection,
            capture_bytes: capture as u32,
            ring_bytes: ring as u32,
            batch_spans,
            batch_interval,
            buffer_bytes: layers
                .get("buffer_size", "buffer_size", ByteSize(64 << 20))?
                .0,
            metrics_addr: layers.get(
                "metrics_addr",
                "metrics_addr",
                "0.0.0.0:9531".parse::<SocketAddr>().expect("valid"),
            )?,
            host: layers.get("host", "host", hostname())?,
            stream_max_bytes: layers
                .get("stream_max_bytes", "stream_max_bytes", ByteSize(2 << 30))?
                .0,
            unknown_keys: Vec::new(),
        };
        Ok(Settings {
            unknown_keys: layers.unknown_file_keys(),
            ..settings
        })
    }

    /// Parses `args` (first item = program name) the way `main` does.
    pub fn from_args<I, T>(args: I) -> Result<(Cli, Settings), anyhow::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let command = Cli::command();
        let matches = command.clone().try_get_matches_from(args)?;
        let cli = Cli::from_arg_matches(&matches)?;
        let settings = Settings::resolve(&command, &matches, &cli.options)?;
        Ok((cli, settings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_flags() {
        let (_, s) = Settings::from_args(["espan-probe"]).unwrap();
        assert_eq!(s.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(s.selection.env_list, DEFAULT_ENV_LIST);
        assert!(!s.selection.trace_all);
        let (_, s) = Settings::from_args([
            "espan-probe",
            "--trace-server",
            "nats://10.0.0.1:4222",
            "--trace-name-list",
            "curl, python3",
            "--capture-bytes",
            "2KiB",
        ])
        .unwrap();
        assert_eq!(s.nats_url, "nats://10.0.0.1:4222");
        assert_eq!(s.selection.name_list, ["curl", "python3"]);
        assert_eq!(s.capture_bytes, 2048);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = Settings::from_args(["espan-probe", "--capture-bytes", "10"]).unwrap_err();
        assert!(e.to_string().contains("--capture-bytes"), "{e}");
        let e = Settings::from_args(["espan-probe", "--enabled-plugins", "ebpf-net"]).unwrap_err();
        assert!(e.to_string().contains("ebpf-trace"), "{e}");
    }

    #[test]
    fn file_table() {
        let dir = espan::testkit::tempfile_dir::TempDir::new("probe-settings").unwrap();
        let path = dir.path().join("ebpf.conf");
        std::fs::write(
            &path,
            "[[inputs.ebpf]]\ntrace_server = \"127.0.0.1:4333\"\ntrace_env_list = [\"MY_SVC\"]\ntrace_all_process = true\ntypo_key = 1\n",
        )
        .unwrap();
        let (_, s) =
            Settings::from_args(["espan-probe", "--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(s.nats_url, "nats://127.0.0.1:4333");
        assert_eq!(s.selection.env_list, ["MY_SVC"]);
        assert!(s.selection.trace_all);
        assert_eq!(s.unknown_keys, ["typo_key"]);
    }
}
