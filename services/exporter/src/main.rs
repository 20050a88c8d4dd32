//! `espan-exporter`: see the crate docs of `espan_exporter` and `--help`.

use anyhow::Context;
use espan_exporter::{run, settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    espan::telemetry::init_logging();
    let command = settings::command();
    let matches = command.clone().get_matches();
    let settings = settings::resolve(&command, &matches).context("configuration")?;
    for key in &settings.unknown_file_keys {
        tracing::warn!(key, "unknown key in the config file; ignored");
    }
    if matches.subcommand_name() == Some("config") {
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
