//! `espan-exporter`: see the crate docs of `espan_exporter` and `--help`.

use anyhow::Context;
use espan_exporter::run;
use espan_exporter::settings::{Command, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    espan::telemetry::init_logging();
    let loaded = espan::config::load::<Settings>();
    loaded.unknown_keys.warn();
    let settings = loaded.settings;
    if let Some(Command::Config) = loaded.cli.command {
        print!("{}", settings.report());
        return Ok(());
    }
    let (trigger, shutdown) = espan::shutdown::channel();
    let running = run::start(&settings, shutdown)
        .await
        .context("starting the exporter")?;
    tracing::info!(metrics = %running.metrics_addr, "espan-exporter running");
    let wait = running.wait();
    tokio::pin!(wait);
    tokio::select! {
        result = &mut wait => return result.context("exporter stopped"),
        _ = espan::shutdown::signal() => {
            tracing::info!("shutting down: finishing the requests in flight");
            trigger.trigger();
        }
    }
    wait.await.context("exporter stopped")
}
