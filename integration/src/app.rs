//! The traced app (`apps/tier.py`) spread over the test hosts, and its client
//! (`apps/load.py`):
//!
//! ```text
//!  client (root ns) ──► front (host a) ──► back1 (host b)       (directly or through NAT)
//!                                     └──► back2 (host c) ──► redis (host c)
//! ```
//!
//! Each tier records its own spans with the OpenTelemetry SDK (the ground truth)
//! and carries its host's variable, so that host's probe traces it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::Service;
use crate::stack::{Stack, host_var};
use crate::truth::{AppSpan, read_app_spans};

/// How a tier serves requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerModel {
    /// A thread per connection.
    Threaded,
    /// A fixed pool of worker threads, reused.
    Pool,
}

impl ServerModel {
    fn arg(self) -> &'static str {
        match self {
            Self::Threaded => "threaded",
            Self::Pool => "pool",
        }
    }
}

/// The app's shape for one case.
#[derive(Debug, Clone)]
pub struct AppOptions {
    /// W3C trace context crosses the wire (`OTEL_PROPAGATORS=tracecontext`), or
    /// nothing does (`none`: the zero-code case).
    pub propagation: bool,
    /// The front keeps its connections to the backends open.
    pub keepalive: bool,
    /// Calls to back1 per front request.
    pub fanout: u32,
    /// Bytes of padding at the end of back1's paths (0: none): large spans.
    pub path_pad: usize,
    pub front_server: ServerModel,
    pub back_server: ServerModel,
    /// The front reaches back1 through a DNAT'd virtual address.
    pub nat: bool,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            propagation: false,
            keepalive: false,
            fanout: 2,
            path_pad: 0,
            front_server: ServerModel::Threaded,
            back_server: ServerModel::Threaded,
            nat: false,
        }
    }
}

/// The running tiers of one run.
pub struct App {
    // Stopped in this order on drop.
    front: Service,
    back1: Service,
    back2: Service,
    redis: Service,
    pub run: String,
    pub front_addr: SocketAddr,
    dir: PathBuf,
}

const FRONT_PORT: u16 = 8080;
const BACK1_PORT: u16 = 8081;
const BACK2_PORT: u16 = 8082;
const REDIS_PORT: u16 = 6379;

impl App {
    /// Starts redis, back2 and back1, then the front; `run` names the run (it is
    /// part of every path).
    pub fn start(stack: &mut Stack, run: &str, options: &AppOptions) -> Result<Self> {
        let dir = stack.setup.work.join(run);
        std::fs::create_dir_all(&dir)?;
        let (a, b, c) = (
            stack.topo.host("a").clone(),
            stack.topo.host("b").clone(),
            stack.topo.host("c").clone(),
        );

        let mut redis_cmd = c.command("redis-server");
        redis_cmd.args([
            "--bind",
            &c.addr.to_string(),
            "--port",
            &REDIS_PORT.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            // Reached over the test network, without a password.
            "--protected-mode",
            "no",
        ]);
        // Traced by host c's probe: its server side of back2's calls.
        redis_cmd
            .env(host_var(&c.name), "1")
            .env("DKE_SERVICE", "redis");
        let mut redis = Service::spawn(&format!("{run}-redis"), redis_cmd, &dir)?;
        redis.wait_port(
            SocketAddr::from((c.addr, REDIS_PORT)),
            Duration::from_secs(20),
        )?;

        let python = stack.setup.tools.app_python.clone();
        let tier_py = stack.setup.tools.repo.join("integration/apps/tier.py");
        let tier = |role: &str,
                    host: &crate::netns::Host,
                    port: u16,
                    server: ServerModel,
                    extra: &[String]|
         -> Result<Service> {
            let mut cmd = host.command(python.to_str().context("python path")?);
            cmd.arg(&tier_py)
                .arg(role)
                .args([
                    "--host",
                    &host.addr.to_string(),
                    "--port",
                    &port.to_string(),
                ])
                .args(["--server", server.arg()])
                .arg("--spans-out")
                .arg(dir.join(format!("{role}.spans.jsonl")))
                .args(extra)
                .env(host_var(&host.name), "1")
                .env("DKE_SERVICE", role)
                .env("OTEL_SERVICE_NAME", role)
                .env(
                    "OTEL_PROPAGATORS",
                    if options.propagation {
                        "tracecontext"
                    } else {
                        "none"
                    },
                )
                .env("PYTHONUNBUFFERED", "1");
            let mut svc = Service::spawn(&format!("{run}-{role}"), cmd, &dir)?;
            svc.wait_log("READY", Duration::from_secs(60))?;
            svc.wait_port(SocketAddr::from((host.addr, port)), Duration::from_secs(20))?;
            Ok(svc)
        };

        let back2 = tier(
            "back2",
            &c,
            BACK2_PORT,
            options.back_server,
            &["--redis".into(), format!("{}:{REDIS_PORT}", c.addr)],
        )?;
        let back1 = tier("back1", &b, BACK1_PORT, options.back_server, &[])?;
        let back1_addr: Ipv4Addr = if options.nat {
            stack.topo.nat_to("b", BACK1_PORT)?
        } else {
            b.addr
        };
        let mut front_args = vec![
            "--back1".to_owned(),
            format!("http://{back1_addr}:{BACK1_PORT}"),
            "--back2".to_owned(),
            format!("http://{}:{BACK2_PORT}", c.addr),
            "--fanout".to_owned(),
            options.fanout.to_string(),
            "--path-pad".to_owned(),
            options.path_pad.to_string(),
        ];
        if options.keepalive {
            front_args.push("--keepalive".to_owned());
        }
        let front = tier("front", &a, FRONT_PORT, options.front_server, &front_args)?;
        Ok(Self {
            front,
            back1,
            back2,
            redis,
            run: run.to_owned(),
            front_addr: SocketAddr::from((a.addr, FRONT_PORT)),
            dir,
        })
    }

    /// Sends `count` requests (numbered from `first`) from `concurrency` client
    /// threads; `slow` requests make back2 sleep `sleep`. Waits for them all.
    pub fn load(&self, stack: &Stack, load: &Load) -> Result<()> {
        let mut svc = self.spawn_load(stack, load)?;
        let code = svc.wait(Duration::from_secs(600))?;
        if code != 0 {
            bail!("the client failed:\n{}", svc.log_text());
        }
        Ok(())
    }

    /// Starts the client and returns at once (for faults injected meanwhile).
    pub fn spawn_load(&self, stack: &Stack, load: &Load) -> Result<Service> {
        let mut cmd = Command::new("python3");
        cmd.arg(stack.setup.tools.repo.join("integration/apps/load.py"))
            .args(["--host", &self.front_addr.ip().to_string()])
            .args(["--port", &self.front_addr.port().to_string()])
            .args(["--run", &self.run])
            .args(["--first", &load.first.to_string()])
            .args(["--count", &load.count.to_string()])
            .args(["--concurrency", &load.concurrency.to_string()])
            .args(["--sleep-ms", &load.sleep.as_millis().to_string()])
            .arg("--slow")
            .arg(
                load.slow
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .args(["--pace-ms", &load.pace.as_millis().to_string()]);
        if load.keepalive {
            cmd.arg("--keepalive");
        }
        Service::spawn(&format!("{}-load-{}", self.run, load.first), cmd, &self.dir)
    }

    /// Every span the tiers' SDK recorded so far.
    pub fn app_spans(&self) -> Result<Vec<AppSpan>> {
        let mut all = Vec::new();
        for role in ["front", "back1", "back2"] {
            all.extend(read_app_spans(
                &self.dir.join(format!("{role}.spans.jsonl")),
            )?);
        }
        Ok(all)
    }

    /// Stops the tiers (SIGTERM: they flush their spans).
    pub fn stop(mut self) {
        for svc in [
            &mut self.front,
            &mut self.back1,
            &mut self.back2,
            &mut self.redis,
        ] {
            svc.stop(Duration::from_secs(5));
        }
    }
}

/// What the client sends.
#[derive(Debug, Clone)]
pub struct Load {
    pub first: u32,
    pub count: u32,
    pub concurrency: u32,
    /// The client keeps its connection to the front open.
    pub keepalive: bool,
    pub slow: Vec<u32>,
    pub sleep: Duration,
    /// Pause between two requests of one client thread.
    pub pace: Duration,
}

impl Default for Load {
    fn default() -> Self {
        Self {
            first: 0,
            count: 20,
            concurrency: 1,
            keepalive: false,
            slow: Vec::new(),
            sleep: Duration::ZERO,
            pace: Duration::ZERO,
        }
    }
}
