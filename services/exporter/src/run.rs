//! Wiring for `main` (and for tests that run the exporter in-process): connect,
//! make sure the streams exist, build each sink's stack, run its consumer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use espan::bus::{self, Bus, ConsumerSpec, StreamLimits};
use espan::redact::{Redacted, redact};
use espan::shutdown::{self, Shutdown, ShutdownTrigger};
use espan::telemetry::{self, Health};
use prometheus_client::registry::Registry;

use crate::metrics::Metrics;
use crate::service::{Exporter, SinkSpec};
use crate::settings::Settings;
use crate::sinks::otlp::Protocol;
use crate::sinks::{Encoding, dataway, otlp};
use crate::stack::{self, StackConfig};

/// Why the exporter could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// NATS or JetStream failed.
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    /// A sink could not be set up from its settings.
    #[error("{sink} sink: {reason}")]
    Sink {
        /// Which sink.
        sink: &'static str,
        /// Why.
        reason: String,
    },
    /// `/metrics` could not listen.
    #[error(transparent)]
    Metrics(#[from] std::io::Error),
}

/// A running exporter.
pub struct Running {
    /// Where `/metrics` listens.
    pub metrics_addr: SocketAddr,
    tasks: tokio::task::JoinSet<(&'static str, Result<(), bus::BusError>)>,
    health: Health,
    /// Stops every sink: fired by the service's shutdown, or by one sink
    /// that stopped on its own.
    stop_sinks: Arc<ShutdownTrigger>,
    sinks_stopping: Shutdown,
}

impl Running {
    /// Waits until every consumer stopped. They are watched together: one
    /// that stops before shutdown (an error, or its stream ended) turns
    /// `/readyz` red at once and stops the others, so the exporter exits with
    /// its error instead of running on, half of it silently gone.
    pub async fn wait(mut self) -> Result<(), RunError> {
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            let (sink, result) = joined.unwrap_or_else(|e| {
                (
                    "a sink",
                    Err(bus::BusError::Consume {
                        stream: bus::TRACES_STREAM.into(),
                        consumer: "?".into(),
                        reason: format!("task failed: {e}"),
                    }),
                )
            });
            let result = match result {
                Ok(()) if !self.sinks_stopping.is_triggered() => Err(bus::BusError::Consume {
                    stream: bus::TRACES_STREAM.into(),
                    consumer: sink.into(),
                    reason: "stopped before shutdown".into(),
                }),
                other => other,
            };
            if let Err(error) = result {
                tracing::error!(sink, error = %Redacted(&error), "consumer stopped; stopping the exporter");
                self.health
                    .set_failing(redact(&format!("{sink} consumer stopped: {error}")));
                self.stop_sinks.trigger();
                first_error.get_or_insert(RunError::Bus(error));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Starts `/metrics` and one consumer per configured sink.
pub async fn start(settings: &Settings, shutdown: Shutdown) -> Result<Running, RunError> {
    // The sinks stop on the service's shutdown, or when one of them stopped.
    let (stop_sinks, sinks_stopping) = shutdown::channel();
    let stop_sinks = Arc::new(stop_sinks);
    let forward = stop_sinks.clone();
    let service_stopping = shutdown.clone();
    tokio::spawn(async move {
        service_stopping.wait().await;
        forward.trigger();
    });
    let bus = Bus::connect(&settings.nats, "espan-exporter", Duration::from_secs(30)).await?;
    // Streams that exist keep their settings; one this exporter is the first
    // to need gets the defaults and the configured replicas.
    bus.ensure_streams(&StreamLimits {
        replicas: settings.stream_replicas,
        ..StreamLimits::default()
    })
    .await?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let health = Health::default();
    let metrics_addr = telemetry::serve(
        settings.metrics_addr,
        registry,
        health.clone(),
        shutdown.clone(),
    )
    .await?;

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(otlp) = &settings.otlp {
        let config = stack_config(settings, otlp.timeout);
        let sink_metrics = metrics.sink("otlp");
        let fail = |reason| RunError::Sink {
            sink: "otlp",
            reason,
        };
        let (service, encoding) = match otlp.protocol {
            Protocol::Grpc => (
                stack::build(
                    "otlp",
                    otlp::grpc::GrpcSink::new(&otlp.endpoint, &otlp.headers, otlp.gzip, &otlp.tls)
                        .map_err(fail)?,
                    &config,
                    sink_metrics.clone(),
                    sinks_stopping.clone(),
                ),
                // tonic compresses gRPC messages itself.
                Encoding::Otlp { gzip: false },
            ),
            Protocol::HttpProtobuf => {
                let url = reqwest::Url::parse(&otlp.endpoint).map_err(|e| fail(e.to_string()))?;
                (
                    stack::build(
                        "otlp",
                        otlp::http::sink(url, &otlp.headers, otlp.gzip, &otlp.tls).map_err(fail)?,
                        &config,
                        sink_metrics.clone(),
                        sinks_stopping.clone(),
                    ),
                    Encoding::Otlp { gzip: otlp.gzip },
                )
            }
        };
        let spec = sink_spec(settings, "otlp", encoding);
        tracing::info!(endpoint = %Redacted(&otlp.endpoint), protocol = ?otlp.protocol, durable = %spec.consumer.durable, "OTLP sink");
        let exporter = Exporter::new(spec, service, bus.clone(), sink_metrics);
        let stop = sinks_stopping.clone();
        tasks.spawn(async move { ("otlp", exporter.run(stop).await) });
    }
    if let Some(settings_dataway) = &settings.dataway {
        let config = stack_config(settings, settings_dataway.timeout);
        let sink_metrics = metrics.sink("dataway");
        let fail = |reason| RunError::Sink {
            sink: "dataway",
            reason,
        };
        let url = reqwest::Url::parse(&settings_dataway.url).map_err(|e| fail(e.to_string()))?;
        let service = stack::build(
            "dataway",
            dataway::sink(url).map_err(fail)?,
            &config,
            sink_metrics.clone(),
            sinks_stopping.clone(),
        );
        let spec = sink_spec(settings, "dataway", Encoding::Dataway);
        tracing::info!(url = %Redacted(&settings_dataway.url), durable = %spec.consumer.durable, "Dataway sink");
        let exporter = Exporter::new(spec, service, bus.clone(), sink_metrics);
        let stop = sinks_stopping.clone();
        tasks.spawn(async move { ("dataway", exporter.run(stop).await) });
    }
    health.set_ok();
    Ok(Running {
        metrics_addr,
        tasks,
        health,
        stop_sinks,
        sinks_stopping,
    })
}

/// A sink's tower settings: its own timeout, the shared rest.
fn stack_config(settings: &Settings, timeout: std::time::Duration) -> StackConfig {
    StackConfig {
        timeout,
        concurrency: settings.concurrency,
        retry_initial: settings.retry_initial,
        retry_max: settings.retry_max,
    }
}

fn sink_spec(settings: &Settings, name: &'static str, encoding: Encoding) -> SinkSpec {
    let mut consumer = ConsumerSpec::new(
        bus::TRACES_STREAM,
        &format!("{}-{name}", settings.durable_prefix),
    );
    consumer.ack_wait = settings.ack_wait;
    consumer.batch = settings.batch_max_messages;
    // Messages decoded and waiting for their requests, at most: bounds memory
    // while a backend is down.
    consumer.max_ack_pending = (settings.batch_max_messages * 4).max(256) as i64;
    SinkSpec {
        name,
        consumer,
        max_spans: settings.batch_max_spans,
        linger: settings.batch_timeout,
        encoding,
    }
}
