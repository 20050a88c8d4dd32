//! `espan-probe`: see src/lib.rs.

use anyhow::Context;
use espan_probe::settings::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    espan::telemetry::init_logging();
    let loaded = espan::config::load::<Settings>();
    if loaded.cli.print_config {
        println!("{:#?}", loaded.settings);
        return Ok(());
    }
    loaded.unknown_keys.warn();
    let probe = espan_probe::start(loaded.settings)
        .await
        .context("cannot start the probe")?;
    tracing::info!(metrics = %probe.metrics_addr, "probe running");
    espan::shutdown::signal().await;
    tracing::info!("stopping: flushing buffered eSpans");
    probe.stop().await;
    Ok(())
}
