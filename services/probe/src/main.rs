//! `espan-probe`: see src/lib.rs.

use anyhow::Context;
use espan_probe::settings::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    espan::telemetry::init_logging();
    let (cli, settings) = match Settings::from_args(std::env::args_os()) {
        Ok(parsed) => parsed,
        // --help, --version and usage errors: clap prints them and picks the
        // exit code (0 for help and version, 2 for a bad command line).
        Err(error) => match error.downcast::<clap::Error>() {
            Ok(clap_error) => clap_error.exit(),
            Err(error) => {
                eprintln!("espan-probe: {error}");
                std::process::exit(2);
            }
        },
    };
    if cli.print_config {
        println!("{settings:#?}");
        return Ok(());
    }
    for key in &settings.unknown_keys {
        tracing::warn!("unknown key `{key}` in [[inputs.ebpf]] (ignored)");
    }
    let probe = espan_probe::start(settings)
        .await
        .context("cannot start the probe")?;
    tracing::info!(metrics = %probe.metrics_addr, "probe running");
    espan::shutdown::signal().await;
    tracing::info!("stopping: flushing buffered eSpans");
    probe.stop().await;
    Ok(())
}
