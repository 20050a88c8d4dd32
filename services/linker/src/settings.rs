//! The linker's options: DataKit's `[[inputs.ebpftrace]]` names and
//! `ENV_INPUT_EBPFTRACE_*` variables, plus espan's own, resolved as
//! flags > environment > TOML file > default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use espan::config::{
    self, ByteSize, ConfigError, GoDuration, Layers, Load, LoadError, Rate, Replicas,
};
use espan::nats::{NatsArgs, NatsConnect};

use crate::store::SyncMode;

/// Links eSpans from every probe into traces: consumes the ESPANS stream, keeps
/// the open window in SurrealDB at db_path, samples whole traces and publishes
/// the kept ones to TRACES. DataKit `ebpftrace` users: the same option names,
/// file table and variables work here.
#[derive(Debug, Parser)]
#[command(name = "espan-linker", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub options: Options,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do; with none, run the linker.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the linker (the default).
    Run,
    /// Print the resolved configuration and exit (checks every value).
    Config,
    /// List finished traces from the store, newest last.
    Traces {
        /// Only traces finished within this long ago (e.g. 5m, 1h).
        #[arg(long, default_value = "5m")]
        since: String,
        /// Only traces with a span of this service.
        #[arg(long)]
        service: Option<String>,
        /// At most this many traces, the newest (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Print one trace as an indented tree with durations.
    Trace {
        /// The trace id: 32 hex digits (a 16-digit Datadog id is padded with zeros).
        id: String,
    },
}

/// Every option of the linker. Values are strings here and parsed by
/// [`Load::resolve`], so that an error names where a bad value came from.
#[derive(Debug, Args)]
pub struct Options {
    /// TOML file with an [[inputs.ebpftrace]] table (DataKit's input config).
    #[arg(long, env = "ESPAN_LINKER_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Directory of the SurrealDB store (the window, finished traces). [default: /var/lib/espan/linker]
    #[arg(long, env = "ENV_INPUT_EBPFTRACE_DB_PATH", value_name = "DIR")]
    pub db_path: Option<String>,
    /// Use the app's own W3C/Datadog trace id when a span carried one. [default: true]
    #[arg(
        long,
        env = "ENV_INPUT_EBPFTRACE_USE_APP_TRACE_ID",
        value_name = "BOOL"
    )]
    pub use_app_trace_id: Option<String>,
    /// A trace is finished when no span joined it for this long (at least 1s). [default: 20s]
    #[arg(long, env = "ENV_INPUT_EBPFTRACE_WINDOW", value_name = "DURATION")]
    pub window: Option<String>,
    /// Fraction of traces kept, 0 to 1, decided per trace by a hash of its trace id
    /// (the app's own sampling decision wins). [default: 0.1]
    #[arg(long, env = "ENV_INPUT_EBPFTRACE_SAMPLING_RATE", value_name = "RATE")]
    pub sampling_rate: Option<String>,
    /// NATS server with JetStream. [default: nats://127.0.0.1:4222]
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
    /// This linker's name: subject trace.<name> and the durable consumer. [default: espan-linker]
    #[arg(long, env = "ESPAN_LINKER_NAME", value_name = "NAME")]
    pub name: Option<String>,
    /// Address of /metrics, /livez and /readyz. [default: 0.0.0.0:9530]
    #[arg(long, env = "ESPAN_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Address of the trace query API (/api/traces, /api/trace/ID; what
    /// `espan-linker traces` asks while the linker runs). Loopback by default:
    /// traces hold what the traced services sent; expose it knowingly.
    /// [default: 127.0.0.1:9532]
    #[arg(long, env = "ESPAN_API_ADDR", value_name = "ADDR")]
    pub api_addr: Option<String>,
    /// How long finished traces stay queryable in the store. [default: 1h]
    #[arg(long, env = "ESPAN_RETENTION", value_name = "DURATION")]
    pub retention: Option<String>,
    /// How long a finished trace still accepts late spans. [default: the window]
    #[arg(long, env = "ESPAN_LATE_RETENTION", value_name = "DURATION")]
    pub late_retention: Option<String>,
    /// Store size at which the linker stops acking (JetStream keeps the backlog). [default: 10GiB]
    #[arg(long, env = "ESPAN_MAX_STORE_SIZE", value_name = "SIZE")]
    pub max_store_size: Option<String>,
    /// SurrealDB disk sync: every (commit, grouped), never, or an interval like 1s. [default: every]
    #[arg(long, env = "ESPAN_STORE_SYNC", value_name = "MODE")]
    pub store_sync: Option<String>,
    /// How often finished traces are flushed out. [default: 200ms]
    #[arg(long, env = "ESPAN_FLUSH_INTERVAL", value_name = "DURATION")]
    pub flush_interval: Option<String>,
    /// ESPANS messages handed to the store at once, at most. [default: 64]
    #[arg(long, env = "ESPAN_CONSUME_BATCH", value_name = "N")]
    pub consume_batch: Option<String>,
    /// How long JetStream waits for an ack before it redelivers a message. After a
    /// crash, unacked messages come back after this long, and their spans join
    /// traces finished meanwhile as late parts, so keep it well below
    /// late_retention. [default: 5s]
    #[arg(long, env = "ESPAN_ACK_WAIT", value_name = "DURATION")]
    pub ack_wait: Option<String>,
    /// Bytes each JetStream stream may hold (the server must have room for all
    /// three: ESPANS, TRACES, DEADLETTER). [default: 2GiB]
    #[arg(long, env = "ESPAN_STREAM_MAX_BYTES", value_name = "SIZE")]
    pub stream_max_bytes: Option<String>,
    /// How long ESPANS and TRACES keep a message the linker or exporter has not
    /// taken (0 = no limit; dead letters never expire). For streams the linker
    /// creates. [default: 24h]
    #[arg(long, env = "ESPAN_STREAM_MAX_AGE", value_name = "DURATION")]
    pub stream_max_age: Option<String>,
    /// How long JetStream remembers message ids (de-duplication of re-sent traces
    /// after a restart). [default: 10m]
    #[arg(long, env = "ESPAN_DUPLICATE_WINDOW", value_name = "DURATION")]
    pub duplicate_window: Option<String>,
    /// Copies of each JetStream stream the linker creates (1, 3 or 5; more
    /// than 1 needs a JetStream cluster). A stream that exists keeps its own.
    /// [default: 1]
    #[arg(long, env = "ESPAN_STREAM_REPLICAS", value_name = "N")]
    pub stream_replicas: Option<String>,
    /// Spans a trace sends at most: the root and the earliest are kept, the
    /// rest counted (espan_linker_spans_capped). A trace larger than a TRACES
    /// message goes out in parts under one trace id. [default: 20000]
    #[arg(long, env = "ESPAN_MAX_TRACE_SPANS", value_name = "N")]
    pub max_trace_spans: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub db_path: PathBuf,
    pub use_app_trace_id: bool,
    pub window: Duration,
    pub sampling_rate: f64,
    /// NATS: URL, credentials, TLS.
    pub nats: NatsConnect,
    pub name: String,
    pub metrics_addr: SocketAddr,
    /// Where the trace query API listens.
    pub api_addr: SocketAddr,
    pub retention: Duration,
    pub late_retention: Duration,
    pub max_store_size: u64,
    pub store_sync: SyncMode,
    pub flush_interval: Duration,
    pub consume_batch: usize,
    pub ack_wait: Duration,
    pub stream_max_bytes: u64,
    pub stream_max_age: Duration,
    pub duplicate_window: Duration,
    pub max_trace_spans: usize,
    pub stream_replicas: usize,
}

impl Load for Settings {
    type Cli = Cli;
    const INPUT: &'static str = "ebpftrace";

    fn config_file(cli: &Cli) -> Option<&Path> {
        cli.options.config.as_deref()
    }

    fn resolve(_: &Cli, layers: &Layers<'_>) -> Result<Self, ConfigError> {
        let window: GoDuration =
            layers.get("window", "window", GoDuration(Duration::from_secs(20)))?;
        if window.0 < Duration::from_secs(1) {
            return Err(layers.invalid(
                "window",
                "window",
                format!("{:?}", window.0),
                "the window must be at least 1s",
            ));
        }
        let late_retention = layers
            .get_opt::<GoDuration>("late_retention", "late_retention")?
            .map_or(window.0, |d| d.0);
        let metrics_addr = layers.get(
            "metrics_addr",
            "metrics_addr",
            "0.0.0.0:9530".parse::<SocketAddr>().expect("valid"),
        )?;
        let api_addr = layers.get(
            "api_addr",
            "api_addr",
            "127.0.0.1:9532".parse::<SocketAddr>().expect("valid"),
        )?;
        let consume_batch: usize = layers.get("consume_batch", "consume_batch", 64)?;
        if consume_batch == 0 {
            return Err(layers.invalid("consume_batch", "consume_batch", 0, "must be at least 1"));
        }
        let nats_url: String =
            layers.get("nats_url", "nats_url", "nats://127.0.0.1:4222".to_owned())?;
        let max_trace_spans: usize = layers.get("max_trace_spans", "max_trace_spans", 20_000)?;
        let stream_replicas = layers
            .get(
                "stream_replicas",
                "stream_replicas",
                Replicas::new(1).expect("valid"),
            )?
            .get();
        if max_trace_spans == 0 {
            return Err(layers.invalid(
                "max_trace_spans",
                "max_trace_spans",
                0,
                "must be at least 1",
            ));
        }
        Ok(Settings {
            db_path: layers.get("db_path", "db_path", PathBuf::from("/var/lib/espan/linker"))?,
            use_app_trace_id: layers.get("use_app_trace_id", "use_app_trace_id", true)?,
            window: window.0,
            sampling_rate: layers
                .get(
                    "sampling_rate",
                    "sampling_rate",
                    Rate::new(0.1).expect("valid"),
                )?
                .get(),
            nats: NatsArgs::resolve(layers, espan::bus::nats_url(&nats_url))?,
            name: layers.get("name", "name", "espan-linker".to_owned())?,
            metrics_addr,
            api_addr,
            retention: layers
                .get::<GoDuration>(
                    "retention",
                    "retention",
                    GoDuration(Duration::from_secs(3600)),
                )?
                .0,
            late_retention,
            max_store_size: layers
                .get("max_store_size", "max_store_size", ByteSize(10 << 30))?
                .0,
            store_sync: layers.get("store_sync", "store_sync", SyncMode::default())?,
            flush_interval: layers
                .get::<GoDuration>(
                    "flush_interval",
                    "flush_interval",
                    GoDuration(Duration::from_millis(200)),
                )?
                .0,
            consume_batch,
            ack_wait: layers
                .get::<GoDuration>("ack_wait", "ack_wait", GoDuration(Duration::from_secs(5)))?
                .0,
            stream_max_bytes: layers
                .get("stream_max_bytes", "stream_max_bytes", ByteSize(2 << 30))?
                .0,
            stream_max_age: layers
                .get::<GoDuration>(
                    "stream_max_age",
                    "stream_max_age",
                    GoDuration(Duration::from_secs(24 * 3600)),
                )?
                .0,
            duplicate_window: layers
                .get::<GoDuration>(
                    "duplicate_window",
                    "duplicate_window",
                    GoDuration(Duration::from_secs(600)),
                )?
                .0,
            max_trace_spans,
            stream_replicas,
        })
    }
}

impl Settings {
    /// What in these settings makes "acked" less than "on disk", said at
    /// start-up: a store that never syncs loses the window's batches (already
    /// acked on ESPANS) in a power cut.
    pub fn durability_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.store_sync.0 == "never" {
            warnings.push(
                "store_sync=never: SurrealDB never fsyncs, so batches acked on ESPANS can be lost \
                 in a power cut or kernel crash (a killed process loses nothing); use \"every\" \
                 or an interval unless that loss is acceptable"
                    .to_owned(),
            );
        }
        warnings
    }

    /// Parses `args` (first item = program name) the way `main` does.
    pub fn from_args<I, T>(args: I) -> Result<(Cli, Settings), LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        config::load_from::<Settings, _, _>(args).map(|loaded| (loaded.cli, loaded.settings))
    }
}
