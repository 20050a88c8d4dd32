//! espan's probe: eBPF on tracepoints sees the traced processes' TCP transfers;
//! user space turns them into HTTP/1.x eSpans and publishes them to JetStream.
//!
//! Layout, in the order data flows:
//! - [`loader`]: privilege, tracefs/bpffs, BTF offsets ([`btf`]), tracepoint
//!   layouts; loads and attaches the programs of bpf/espan-ebpf.
//! - [`events`]: the ring buffer reader thread; decodes records, keeps the
//!   traced-pid map current with [`procs`] (DataKit's selection options).
//! - [`conn`]: per-connection reassembly by TCP sequence number, and the
//!   protocol's message boundaries: [`http1`] (HTTP/1.x), [`resp`] (Redis),
//!   [`pg`] (PostgreSQL), [`mysql`] (MySQL, MariaDB), on the shared types of
//!   [`message`]; [`sql`] takes literals out of statements.
//! - [`assemble`]: request ↔ response pairs into eSpans, `local_parent_id` by
//!   the thread rule where the process's [`runtime`] makes it sound, by the
//!   event-loop [`turns`] rule elsewhere (never for Go).
//! - [`publish`]: batches, a bounded buffer, JetStream with msg ids.
//! - [`settings`], [`metrics`]: options and counters.

pub mod assemble;
pub mod btf;
pub mod conn;
pub mod events;
pub mod h2;
pub mod http1;
pub mod lenframe;
pub mod loader;
pub mod message;
pub mod metrics;
pub mod mysql;
pub mod pg;
pub mod procs;
pub mod publish;
pub mod reorder;
pub mod resp;
pub mod runtime;
pub mod settings;
pub mod sql;
pub mod turns;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use espan::bus::{Bus, StreamLimits};
use espan::shutdown::{self, ShutdownTrigger};
use espan::telemetry::{self, Health};
use prometheus_client::registry::Registry;

use crate::events::{Reader, ReaderConfig};
use crate::loader::LoadOptions;
use crate::metrics::Metrics;
use crate::publish::{Outbox, PublishConfig};
use crate::settings::Settings;

/// A running probe; [`RunningProbe::stop`] flushes and stops it.
pub struct RunningProbe {
    pub metrics_addr: SocketAddr,
    pub metrics: Metrics,
    pub boot_id: u64,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
    sealer: tokio::task::JoinHandle<()>,
    sender: tokio::task::JoinHandle<()>,
    trigger: ShutdownTrigger,
}

/// Loads the programs, connects to NATS and starts reading.
pub async fn start(settings: Settings) -> anyhow::Result<RunningProbe> {
    let loaded = loader::load(&LoadOptions {
        capture_bytes: settings.capture_bytes,
        ring_bytes: settings.ring_bytes,
        // Wake the reader early enough that the ring never fills between polls.
        wakeup_bytes: u64::from(settings.ring_bytes / 4),
    })?;
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let health = Health::default();
    let (trigger, shutdown) = shutdown::channel();
    let metrics_addr = telemetry::serve(
        settings.metrics_addr,
        registry,
        health.clone(),
        shutdown.clone(),
    )
    .await?;

    // NATS may be away when the probe starts (or restarts): it connects in the
    // background and buffers meanwhile; `/readyz` says so, `/livez` does not.
    let bus = Bus::connect_in_background(&settings.nats, "espan-probe")
        .await
        .with_context(|| format!("NATS at {} (trace_server)", settings.nats.shown_url()))?;
    if !bus.is_connected() {
        health.set_failing(espan::redact::redact(&format!(
            "NATS at {}: not connected yet",
            bus.url()
        )));
    }

    let boot_id = loop {
        let id: u64 = rand::random();
        if id != 0 {
            break id;
        }
    };
    let publish = PublishConfig {
        host: settings.host.clone(),
        boot_id,
        batch_spans: settings.batch_spans,
        batch_bytes: settings.batch_bytes,
        max_field_bytes: settings.max_field_bytes,
        // The linker owns the streams' limits; these apply only to streams
        // the probe is first to create.
        stream_limits: StreamLimits {
            max_bytes: settings.stream_max_bytes,
            replicas: settings.stream_replicas,
            ..StreamLimits::default()
        },
        batch_interval: settings.batch_interval,
        buffer_bytes: settings.buffer_bytes,
        max_in_flight: 64,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(65_536);
    let outbox = Outbox::new(settings.buffer_bytes, metrics.clone());
    let sealer = tokio::spawn(publish::seal_messages(publish.clone(), rx, outbox.clone()));
    let sender = tokio::spawn(publish::sender(
        publish,
        bus,
        outbox,
        health,
        shutdown,
        Duration::from_secs(5),
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let mut reader = Reader::new(
        loaded,
        ReaderConfig {
            selection: settings.selection.clone(),
            host: settings.host.clone(),
            capture_bytes: settings.capture_bytes,
            poll_interval: Duration::from_millis(10),
            idle_conn: Duration::from_secs(600),
            limits: settings.limits,
        },
        metrics.clone(),
        tx,
        stop.clone(),
    );
    // Select the processes running now before returning, so "running" means
    // they are traced (a restarted probe otherwise missed their first calls).
    reader.scan();
    let reader = std::thread::Builder::new()
        .name("espan-ring".into())
        .spawn(move || reader.run())?;
    Ok(RunningProbe {
        metrics_addr,
        metrics,
        boot_id,
        stop,
        reader: Some(reader),
        sealer,
        sender,
        trigger,
    })
}

impl RunningProbe {
    /// Stops reading, publishes what is buffered (for up to 5 s), detaches.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = tokio::task::spawn_blocking(move || reader.join()).await;
        }
        let _ = (&mut self.sealer).await;
        self.trigger.trigger();
        let _ = (&mut self.sender).await;
    }
}
