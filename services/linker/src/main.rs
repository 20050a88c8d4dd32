//! `espan-linker`: see `espan_linker` for the layout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use espan::config::{self, GoDuration};
use espan::{shutdown, telemetry};
use espan_linker::api::{self, ListQuery};
use espan_linker::settings::{Command, Settings};
use espan_linker::store::{Store, StoreError};
use espan_linker::{cli, metrics::Metrics, service};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let loaded = config::load::<Settings>();
    let settings = loaded.settings;
    let command = loaded.cli.command.unwrap_or(Command::Run);
    telemetry::init_logging_with(if matches!(command, Command::Run) {
        "info"
    } else {
        "warn"
    });
    loaded.unknown_keys.warn();
    match command {
        Command::Run => run(settings).await,
        Command::Config => {
            println!("{settings:#?}");
            Ok(())
        }
        Command::Traces {
            since,
            service,
            limit,
        } => {
            let since =
                GoDuration::parse(&since).map_err(|e| anyhow::anyhow!("--since {since:?}: {e}"))?;
            if !(1..=api::MAX_LIST).contains(&limit) {
                anyhow::bail!("--limit {limit}: must be 1 to {}", api::MAX_LIST);
            }
            let query = ListQuery {
                since,
                service,
                limit,
            };
            let text = match open_for_reading(&settings).await? {
                Some(store) => api::list_text(&store, &query, service::now_ns()).await?,
                None => {
                    ask_running_linker(&settings, &format!("/api/traces?{}", query.to_query()))
                        .await?
                }
            };
            print!("{text}");
            Ok(())
        }
        Command::Trace { id } => {
            let id = cli::parse_trace_id(&id).map_err(anyhow::Error::msg)?;
            let text = match open_for_reading(&settings).await? {
                Some(store) => api::trace_text(&store, &id).await?.with_context(|| {
                    format!(
                        "trace {id} is not in the store at {}",
                        settings.db_path.display()
                    )
                })?,
                None => ask_running_linker(&settings, &format!("/api/trace/{id}")).await?,
            };
            print!("{text}");
            Ok(())
        }
    }
}

/// The store, or `None` when a running linker has it open.
async fn open_for_reading(settings: &Settings) -> anyhow::Result<Option<Store>> {
    if !settings.db_path.exists() {
        anyhow::bail!(
            "no store at {} (set --db-path or ENV_INPUT_EBPFTRACE_DB_PATH)",
            settings.db_path.display()
        );
    }
    match Store::open_waiting(
        &settings.db_path,
        &settings.store_sync,
        Duration::from_secs(1),
    )
    .await
    {
        Ok(store) => Ok(Some(store)),
        Err(StoreError::Locked { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

async fn ask_running_linker(settings: &Settings, path: &str) -> anyhow::Result<String> {
    let mut addr: SocketAddr = settings.api_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let (status, body) = api::get_text(addr, path).await.with_context(|| {
        format!(
            "the store at {} is in use and the linker's API at {addr} did not answer (set --api-addr to its address)",
            settings.db_path.display()
        )
    })?;
    match status {
        200 => Ok(body),
        _ => anyhow::bail!("{}", body.trim_end()),
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let (trigger, stop) = shutdown::channel();
    let store = Arc::new(Store::open(&settings.db_path, &settings.store_sync).await?);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let health = telemetry::Health::default();
    health.set_failing("starting");
    let addr = telemetry::serve(
        settings.metrics_addr,
        registry,
        health.clone(),
        stop.clone(),
    )
    .await?;
    let api_addr = api::serve(settings.api_addr, store.clone(), stop.clone()).await?;
    tracing::info!(%addr, %api_addr, db_path = %settings.db_path.display(), nats = %settings.nats.shown_url(), window = ?settings.window,
        sampling_rate = settings.sampling_rate, "espan-linker starting");
    let mut service = tokio::spawn(service::run(settings, store, metrics, health, stop));
    tokio::select! {
        _ = shutdown::signal() => {
            tracing::info!("shutting down");
            trigger.trigger();
        }
        result = &mut service => return flatten(result),
    }
    match tokio::time::timeout(Duration::from_secs(30), service).await {
        Ok(result) => flatten(result),
        Err(_) => anyhow::bail!("did not stop within 30 s"),
    }
}

fn flatten(result: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match result {
        Ok(result) => result,
        Err(join) => Err(anyhow::anyhow!("linker task failed: {join}")),
    }
}
