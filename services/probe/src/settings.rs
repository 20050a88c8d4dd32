//! The probe's options: DataKit's `[[inputs.ebpf]]` names and `ENV_INPUT_EBPF_*`
//! variables, plus espan's own, resolved as flags > environment > TOML > default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser};
use espan::config::{self, ByteSize, ConfigError, GoDuration, Layers, Load, LoadError, Replicas};
use espan::nats::{NatsArgs, NatsConnect};
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

/// Every option, as text; [`Load::resolve`] parses them so that an error
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
    #[arg(
        long,
        env = "ENV_INPUT_EBPF_TRACE_SERVER",
        value_name = "URL",
        hide_env_values = true
    )]
    pub trace_server: Option<String>,
    /// NATS credentials and TLS.
    #[command(flatten)]
    pub nats: NatsArgs,
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
    /// Most bytes per published batch (encoded); a batch is sealed at
    /// batch_spans or at this size, whichever comes first. NATS refuses a
    /// message above its max_payload (1MiB by default). [default: 512KiB]
    #[arg(long, env = "ENV_INPUT_EBPF_BATCH_BYTES", value_name = "SIZE")]
    pub batch_bytes: Option<String>,
    /// Longest text field (path, query, error, service, …) an eSpan carries;
    /// longer ones are cut and counted. [default: 4KiB]
    #[arg(long, env = "ENV_INPUT_EBPF_MAX_FIELD_SIZE", value_name = "SIZE")]
    pub max_field_size: Option<String>,
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
    /// Copies of each JetStream stream when this probe is the first to create
    /// it (1, 3 or 5; keep it equal to the linker's). [default: 1]
    #[arg(long, env = "ESPAN_STREAM_REPLICAS", value_name = "N")]
    pub stream_replicas: Option<String>,
    /// Connections followed at once; beyond, the least recently active are
    /// forgotten (counted). [default: 65536]
    #[arg(long, env = "ENV_INPUT_EBPF_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<String>,
    /// Memory all protocol parsers may hold for messages not yet complete
    /// (partial heads, prepared statements); beyond, the connections holding
    /// most are forgotten (counted). [default: 64MiB]
    #[arg(long, env = "ENV_INPUT_EBPF_PARSER_MEMORY", value_name = "SIZE")]
    pub parser_memory: Option<String>,
    /// Host name in eSpans and the subject. [default: the machine's host name]
    #[arg(long, env = "ENV_INPUT_EBPF_HOST", value_name = "NAME")]
    pub host: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// NATS: URL, credentials, TLS.
    pub nats: NatsConnect,
    pub selection: Selection,
    pub capture_bytes: u32,
    pub ring_bytes: u32,
    pub batch_spans: usize,
    pub batch_bytes: usize,
    pub max_field_bytes: usize,
    pub batch_interval: Duration,
    pub buffer_bytes: u64,
    pub metrics_addr: SocketAddr,
    pub host: String,
    pub stream_max_bytes: u64,
    pub stream_replicas: usize,
    /// What the assembler may hold.
    pub limits: crate::assemble::Limits,
}

/// The env list DataKit uses by default.
pub const DEFAULT_ENV_LIST: &[&str] = &["DK_BPFTRACE_SERVICE", "DD_SERVICE", "OTEL_SERVICE_NAME"];

/// The machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Load for Settings {
    type Cli = Cli;
    const INPUT: &'static str = "ebpf";

    fn config_file(cli: &Cli) -> Option<&Path> {
        cli.options.config.as_deref()
    }

    fn resolve(_: &Cli, layers: &Layers<'_>) -> Result<Self, ConfigError> {
        let plugins: Option<Vec<String>> = layers.get_opt("enabled_plugins", "enabled_plugins")?;
        if let Some(p) = &plugins
            && !p.iter().any(|p| p == "ebpf-trace")
        {
            return Err(layers.invalid(
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
            return Err(layers.invalid(
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
            return Err(layers.invalid(
                "capture_bytes",
                "capture_bytes",
                capture,
                "must be 64 to 4096 bytes",
            ));
        }
        let max_conns: usize = layers.get("max_connections", "max_connections", 65_536)?;
        if !(16..=(1 << 22)).contains(&max_conns) {
            return Err(layers.invalid(
                "max_connections",
                "max_connections",
                max_conns,
                "must be 16 to 4194304",
            ));
        }
        let parser_memory = layers
            .get("parser_memory", "parser_memory", ByteSize(64 << 20))?
            .0;
        if !((1 << 20)..=(16 << 30)).contains(&parser_memory) {
            return Err(layers.invalid(
                "parser_memory",
                "parser_memory",
                parser_memory,
                "must be 1MiB to 16GiB",
            ));
        }
        let ring = layers
            .get("ring_buffer_size", "ring_buffer_size", ByteSize(8 << 20))?
            .0;
        if !((64 << 10)..=(1 << 30)).contains(&ring) {
            return Err(layers.invalid(
                "ring_buffer_size",
                "ring_buffer_size",
                ring,
                "must be 64KiB to 1GiB",
            ));
        }
        let batch_spans: usize = layers.get("batch_spans", "batch_spans", 500)?;
        if batch_spans == 0 {
            return Err(layers.invalid("batch_spans", "batch_spans", 0, "must be at least 1"));
        }
        let batch_bytes = layers
            .get("batch_bytes", "batch_bytes", ByteSize(512 << 10))?
            .0;
        if !(4 << 10..=64 << 20).contains(&batch_bytes) {
            return Err(layers.invalid(
                "batch_bytes",
                "batch_bytes",
                batch_bytes,
                "must be 4KiB to 64MiB",
            ));
        }
        let max_field_bytes = layers
            .get("max_field_size", "max_field_size", ByteSize(4 << 10))?
            .0;
        if !(16..=1 << 20).contains(&max_field_bytes) {
            return Err(layers.invalid(
                "max_field_size",
                "max_field_size",
                max_field_bytes,
                "must be 16B to 1MiB",
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
            return Err(layers.invalid(
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
        Ok(Settings {
            nats: NatsArgs::resolve(layers, espan::bus::nats_url(&trace_server))?,
            selection,
            capture_bytes: capture as u32,
            ring_bytes: ring as u32,
            batch_spans,
            batch_bytes: batch_bytes as usize,
            max_field_bytes: max_field_bytes as usize,
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
            stream_replicas: layers
                .get(
                    "stream_replicas",
                    "stream_replicas",
                    Replicas::new(1).expect("valid"),
                )?
                .get(),
            limits: crate::assemble::Limits {
                max_conns,
                held_budget: parser_memory,
            },
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_flags() {
        let (_, s) = Settings::from_args(["espan-probe"]).unwrap();
        assert_eq!(s.nats.url, "nats://127.0.0.1:4222");
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
        assert_eq!(s.nats.url, "nats://10.0.0.1:4222");
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
        let file = path.to_str().unwrap();
        let loaded =
            config::load_from::<Settings, _, _>(["espan-probe", "--config", file]).unwrap();
        let s = loaded.settings;
        assert_eq!(s.nats.url, "nats://127.0.0.1:4333");
        assert_eq!(s.selection.env_list, ["MY_SVC"]);
        assert!(s.selection.trace_all);
        // The message every service warns with.
        assert_eq!(
            loaded.unknown_keys.to_string(),
            format!(
                "unknown key `typo_key` in [[inputs.ebpf]] of {file}: ignored (misspelt? --help lists every key)"
            )
        );
    }

    /// Flags > environment > file > default. Variables are process-wide, so
    /// each case runs in a child process: this test binary, running only this
    /// test, which then prints what its arguments resolve to.
    #[test]
    fn flags_beat_environment_beat_file_beat_defaults() {
        const CHILD_ARGS: &str = "ESPAN_PROBE_SETTINGS_CHILD_ARGS";
        if let Ok(args) = std::env::var(CHILD_ARGS) {
            let (_, s) = Settings::from_args(args.split('\n')).unwrap();
            println!(
                "resolved: batch_spans={} nats_url={}",
                s.batch_spans, s.nats.url
            );
            return;
        }
        let dir = espan::testkit::tempfile_dir::TempDir::new("probe-precedence").unwrap();
        let path = dir.path().join("ebpf.conf");
        std::fs::write(
            &path,
            "[[inputs.ebpf]]\nbatch_spans = 100\ntrace_server = \"10.0.0.1:4222\"\n",
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let resolve = |args: &[&str], env: &[(&str, &str)]| -> String {
            let mut all = vec!["espan-probe"];
            all.extend(args);
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "settings::tests::flags_beat_environment_beat_file_beat_defaults",
                    "--nocapture",
                ])
                .env_clear()
                .env(CHILD_ARGS, all.join("\n"))
                .envs(env.iter().copied())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
                .lines()
                .find_map(|l| l.strip_prefix("resolved: "))
                .unwrap_or_else(|| panic!("no result in {stdout}"))
                .to_owned()
        };
        let env = ("ENV_INPUT_EBPF_BATCH_SPANS", "200");
        assert_eq!(
            resolve(&[], &[]),
            "batch_spans=500 nats_url=nats://127.0.0.1:4222"
        );
        assert_eq!(
            resolve(&["--config", file], &[]),
            "batch_spans=100 nats_url=nats://10.0.0.1:4222"
        );
        assert_eq!(
            resolve(&[], &[("ESPAN_PROBE_CONFIG", file)]),
            "batch_spans=100 nats_url=nats://10.0.0.1:4222",
            "the file named by its variable"
        );
        assert_eq!(
            resolve(&["--config", file], &[env]),
            "batch_spans=200 nats_url=nats://10.0.0.1:4222"
        );
        assert_eq!(
            resolve(&["--config", file, "--batch-spans", "300"], &[env]),
            "batch_spans=300 nats_url=nats://10.0.0.1:4222"
        );
    }

    #[test]
    fn nats_credentials_in_the_url_are_used_and_never_printed() {
        let (_, s) = Settings::from_args([
            "espan-probe",
            "--trace-server",
            "nats://probe:pw_PLANTED@10.0.0.1:4222",
        ])
        .unwrap();
        assert_eq!(
            s.nats.credentials().unwrap(),
            espan::nats::NatsAuth::UserPassword {
                user: "probe".into(),
                password: "pw_PLANTED".into()
            }
        );
        let printed = format!("{s:#?}");
        assert!(!printed.contains("pw_PLANTED"), "{printed}");
        assert!(
            printed.contains("nats://<redacted>@10.0.0.1:4222"),
            "{printed}"
        );
    }
}
