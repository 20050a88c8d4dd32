//! The whole of espan on the test network: NATS JetStream, a probe per host (each
//! inside its host's namespace, tracing the processes that carry that host's
//! variable), the linker, the exporter, and an OTLP receiver built from the
//! upstream `opentelemetry-proto` package that records every span it is sent.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::{ROOT_ADDR, Topology};
use crate::observed::{Exported, read_exported};
use crate::process::{Service, free_port, http_get, metric};

/// What to start.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Short host names; each gets a namespace and a probe.
    pub hosts: Vec<&'static str>,
    /// The linker's `window`.
    pub window: Duration,
    /// `grpc` or `http/protobuf`.
    pub otlp_protocol: &'static str,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            hosts: vec!["a", "b", "c"],
            window: Duration::from_secs(3),
            otlp_protocol: "grpc",
        }
    }
}

/// Where the built binaries and the test tools are.
#[derive(Debug, Clone)]
pub struct Tools {
    pub bin_dir: PathBuf,
    /// A Python with Flask and the OpenTelemetry SDK (the apps).
    pub app_python: PathBuf,
    pub nats_server: PathBuf,
    pub repo: PathBuf,
}

impl Tools {
    /// Finds them: the binaries in `ESPAN_E2E_BIN_DIR` or next to this test's
    /// target directory, the apps' Python in `ESPAN_E2E_PYTHON` or the venv
    /// `scripts/setup.sh` makes.
    pub fn find() -> Result<Self> {
        let bin_dir = match std::env::var_os("ESPAN_E2E_BIN_DIR") {
            Some(dir) => PathBuf::from(dir),
            // target/<profile>/deps/<test> → target/<profile>
            None => std::env::current_exe()?
                .parent()
                .and_then(Path::parent)
                .context("cannot locate the target directory")?
                .to_path_buf(),
        };
        for bin in ["espan-probe", "espan-linker", "espan-exporter"] {
            if !bin_dir.join(bin).exists() {
                bail!(
                    "{} is missing: build the services first (`cargo test --workspace` does)",
                    bin_dir.join(bin).display()
                );
            }
        }
        let app_python = match std::env::var_os("ESPAN_E2E_PYTHON") {
            Some(p) => PathBuf::from(p),
            None => PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/espan-e2e-venv/bin/python"),
        };
        if !app_python.exists() {
            bail!(
                "{} is missing: `bash scripts/setup.sh` makes the apps' venv (Flask, OpenTelemetry SDK)",
                app_python.display()
            );
        }
        let nats_server = espan::testkit::nats_server_binary()?;
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("repo root")?
            .to_path_buf();
        Ok(Self {
            bin_dir,
            app_python,
            nats_server,
            repo,
        })
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// The variable that makes host `h`'s probe trace a process.
pub fn host_var(host: &str) -> String {
    format!("ESPAN_E2E_HOST_{}", host.to_uppercase())
}

/// Addresses, paths and tools: what starting (or restarting) a service needs.
pub struct Setup {
    pub options: StackOptions,
    pub tools: Tools,
    pub work: PathBuf,
    pub nats_port: u16,
    pub linker_metrics: SocketAddr,
    pub exporter_metrics: SocketAddr,
    pub receiver_out: PathBuf,
    receiver_port: u16,
}

/// Everything running; stopped in field order on drop (the network last).
pub struct Stack {
    pub probes: BTreeMap<String, Service>,
    pub probe_metrics: BTreeMap<String, SocketAddr>,
    pub exporter: Service,
    pub linker: Service,
    pub receiver: Service,
    pub nats: Service,
    pub setup: Setup,
    pub topo: Topology,
}

/// Streams small enough for a test machine's disk.
const STREAM_MAX_BYTES: &str = "256MiB";

impl Stack {
    /// Builds the network and starts every service; `name` names the work
    /// directory (`$TMPDIR/espan-e2e/<name>`, emptied first, kept afterwards).
    pub fn start(name: &str, options: StackOptions) -> Result<Self> {
        let tools = Tools::find()?;
        let work = std::env::temp_dir().join("espan-e2e").join(name);
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let topo = Topology::create(&options.hosts)?;

        let nats_port = free_port()?;
        let nats = start_nats(&tools, &work, nats_port)?;

        let receiver_out = work.join("otlp.jsonl");
        let mut cmd = Command::new("python3");
        cmd.arg(
            tools
                .repo
                .join("services/exporter/tests/receivers/otlp_receiver.py"),
        )
        .arg("--protocol")
        .arg(if options.otlp_protocol == "grpc" {
            "grpc"
        } else {
            "http"
        })
        .arg("--out")
        .arg(&receiver_out);
        let mut receiver = Service::spawn("otlp-receiver", cmd, &work)?;
        receiver.wait_log("PORT ", Duration::from_secs(30))?;
        let receiver_port = receiver
            .log_text()
            .lines()
            .find_map(|l| l.strip_prefix("PORT "))
            .and_then(|p| p.trim().parse().ok())
            .context("receiver port")?;

        let setup = Setup {
            linker_metrics: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            exporter_metrics: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            options,
            tools,
            work,
            nats_port,
            receiver_out,
            receiver_port,
        };
        let linker = setup.spawn_linker()?;
        let exporter = setup.spawn_exporter()?;
        let mut stack = Self {
            probes: BTreeMap::new(),
            probe_metrics: BTreeMap::new(),
            exporter,
            linker,
            receiver,
            nats,
            setup,
            topo,
        };
        for host in stack.setup.options.hosts.clone() {
            stack.start_probe(host)?;
        }
        Ok(stack)
    }

    pub fn nats_url(&self) -> String {
        self.setup.nats_url()
    }

    fn start_probe(&mut self, host: &str) -> Result<()> {
        let h = self.topo.host(host).clone();
        let metrics = SocketAddr::V4(SocketAddrV4::new(h.addr, free_port()?));
        let bin = self.setup.tools.bin("espan-probe");
        let mut cmd = h.command(bin.to_str().context("binary path")?);
        cmd.arg("--trace-server")
            .arg(self.nats_url())
            .arg("--host")
            .arg(format!("host-{host}"))
            .arg("--trace-env-list")
            .arg(host_var(host))
            .arg("--metrics-addr")
            .arg(metrics.to_string())
            .args(["--batch-interval", "100ms"])
            .env("ESPAN_STREAM_MAX_BYTES", STREAM_MAX_BYTES)
            .env("RUST_LOG", "info");
        let mut probe = Service::spawn(&format!("probe-{host}"), cmd, &self.setup.work)?;
        probe.wait_log("probe running", Duration::from_secs(60))?;
        self.probe_metrics.insert(host.to_owned(), metrics);
        self.probes.insert(host.to_owned(), probe);
        Ok(())
    }

    /// kill -9 the linker, then start it again on the same store.
    pub fn crash_linker(&mut self, down_for: Duration) -> Result<()> {
        self.linker.kill9();
        std::thread::sleep(down_for);
        self.linker = self.setup.spawn_linker()?;
        Ok(())
    }

    /// kill -9 the exporter, then start it again (its durable consumers resume).
    pub fn crash_exporter(&mut self, down_for: Duration) -> Result<()> {
        self.exporter.kill9();
        std::thread::sleep(down_for);
        self.exporter = self.setup.spawn_exporter()?;
        Ok(())
    }

    /// kill -9 NATS, then start it again on the same port and store.
    pub fn crash_nats(&mut self, down_for: Duration) -> Result<()> {
        self.nats.kill9();
        std::thread::sleep(down_for);
        self.nats = start_nats(&self.setup.tools, &self.setup.work, self.setup.nats_port)?;
        Ok(())
    }

    /// Stops a probe (SIGTERM: it flushes what it holds, and logs what it could
    /// not), then starts a new one; returns what the old one logged.
    pub fn restart_probe(&mut self, host: &str, down_for: Duration) -> Result<String> {
        let mut log = String::new();
        if let Some(mut old) = self.probes.remove(host) {
            old.stop(Duration::from_secs(10));
            log = old.log_text();
        }
        std::thread::sleep(down_for);
        self.start_probe(host)?;
        Ok(log)
    }

    pub fn linker_metrics_text(&self) -> Result<String> {
        http_get(self.setup.linker_metrics, "/metrics")
    }

    pub fn exporter_metrics_text(&self) -> Result<String> {
        http_get(self.setup.exporter_metrics, "/metrics")
    }

    pub fn probe_metrics_text(&self, host: &str) -> Result<String> {
        http_get(self.probe_metrics[host], "/metrics")
    }

    /// Sum of a metric over every probe.
    pub fn probes_metric(&self, name: &str) -> f64 {
        self.setup
            .options
            .hosts
            .iter()
            .filter_map(|h| self.probe_metrics_text(h).ok())
            .filter_map(|t| metric(&t, name))
            .sum()
    }

    /// Every span the receiver accepted so far.
    pub fn exported(&self) -> Result<Exported> {
        read_exported(&self.setup.receiver_out)
    }

    /// Waits until the receiver holds at least `want` distinct spans that
    /// `filter` selects and nothing new came for `quiet`, or `timeout` passed;
    /// returns what it has.
    pub fn wait_exported(
        &self,
        filter: impl Fn(&crate::observed::ExportedSpan) -> bool,
        want: usize,
        quiet: Duration,
        timeout: Duration,
    ) -> Result<Exported> {
        let start = Instant::now();
        let mut last_count = usize::MAX;
        let mut last_change = Instant::now();
        loop {
            let exported = self.exported()?;
            let count = exported.spans.iter().filter(|s| filter(s)).count();
            if count != last_count {
                last_count = count;
                last_change = Instant::now();
            }
            let settled = last_change.elapsed() >= quiet;
            if (count >= want && settled) || start.elapsed() > timeout {
                return Ok(exported);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Setup {
    pub fn nats_url(&self) -> String {
        format!("nats://{ROOT_ADDR}:{}", self.nats_port)
    }

    pub fn spawn_linker(&self) -> Result<Service> {
        let mut cmd = Command::new(self.tools.bin("espan-linker"));
        cmd.arg("--nats-url")
            .arg(self.nats_url())
            .arg("--db-path")
            .arg(self.work.join("linker-db"))
            .arg("--window")
            .arg(format!("{}ms", self.options.window.as_millis()))
            .args(["--sampling-rate", "1", "--ack-wait", "2s"])
            .arg("--metrics-addr")
            .arg(self.linker_metrics.to_string())
            .args(["--api-addr", "127.0.0.1:0"])
            .env("ESPAN_STREAM_MAX_BYTES", STREAM_MAX_BYTES)
            .env("RUST_LOG", "info");
        let mut linker = Service::spawn("linker", cmd, &self.work)?;
        linker.wait_port(self.linker_metrics, Duration::from_secs(60))?;
        Ok(linker)
    }

    pub fn spawn_exporter(&self) -> Result<Service> {
        let mut cmd = Command::new(self.tools.bin("espan-exporter"));
        cmd.arg("--nats-url")
            .arg(self.nats_url())
            .arg("--metrics-addr")
            .arg(self.exporter_metrics.to_string())
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{}", self.receiver_port),
            )
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", self.options.otlp_protocol)
            .env("RUST_LOG", "info");
        let mut exporter = Service::spawn("exporter", cmd, &self.work)?;
        exporter.wait_port(self.exporter_metrics, Duration::from_secs(30))?;
        Ok(exporter)
    }
}

fn start_nats(tools: &Tools, work: &Path, port: u16) -> Result<Service> {
    let config = work.join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "jetstream {{\n  store_dir: {:?}\n  max_file_store: 4G\n  max_memory_store: 256MB\n  sync_interval: always\n}}\n",
            work.join("nats-store")
        ),
    )?;
    let mut cmd = Command::new(&tools.nats_server);
    cmd.args(["-a", &ROOT_ADDR.to_string(), "-p", &port.to_string(), "-c"])
        .arg(&config);
    let mut nats = Service::spawn("nats", cmd, work)?;
    nats.wait_port(SocketAddr::from((ROOT_ADDR, port)), Duration::from_secs(20))?;
    Ok(nats)
}
