//! `herald serve`: open and migrate the database, create the first organization on first run,
//! start the engine and the HTTP API, and shut down cleanly on SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use herald_engine::Engine;
use herald_engine::clock::SystemClock;
use herald_web::AppState;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::commands::{self, new_organization};
use crate::config::{DatabaseUrl, FileConfig, LogFormat};

/// Logs go to stderr, so stdout carries only what the command itself prints (keys, JSON).
/// `HERALD_LOG` (or `RUST_LOG`) overrides the level, e.g. `HERALD_LOG=debug`.
pub fn init_logging(format: LogFormat, level: Option<&str>) {
    let filter = std::env::var("HERALD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .or_else(|| level.map(str::to_owned))
        .unwrap_or_else(|| "info,sqlx=warn".to_owned());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

pub async fn serve(
    file: &FileConfig,
    url: &DatabaseUrl,
    listen: SocketAddr,
    public_url: Option<String>,
) -> Result<()> {
    let store = commands::open_store(file, url).await?;
    store
        .migrate()
        .await
        .context("cannot migrate the database")?;
    tracing::info!(database = %url, "database ready");

    let name = file
        .organization_name
        .as_deref()
        .unwrap_or("Default organization");
    let (first, records) = new_organization(name, file.default_region()?, &SystemClock);
    if store.bootstrap_organization(&first.org, &records).await? {
        println!("First start: created an organization and its API keys.");
        commands::print_organization(&first);
    }

    let twilio = twilio(file, public_url.as_deref())?;
    let mut live: Vec<Arc<dyn herald_providers::Provider>> = twilio.provider.into_iter().collect();
    let mut sns_hook = None;
    if let Some(sns) = file.sns()? {
        sns_hook = sns
            .webhook_secret
            .map(|secret| Arc::new(herald_web::hooks::SnsHook::new(secret.into_bytes())));
        live.push(Arc::new(herald_providers::sns::Sns::new(sns.config).await));
    }
    let providers = if live.is_empty() {
        "simulator".to_owned()
    } else {
        live.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
    };
    let mut config = file.engine()?;
    config.public_url = public_url.clone();
    if config.secret_key.is_none() {
        tracing::info!(
            "no secret key (--secret-key, HERALD_SECRET_KEY): provider accounts with credentials cannot be added"
        );
    }
    let mut engine = Engine::with_providers(store.clone(), Arc::new(SystemClock), config, live)
        .context("the [routing] configuration is not valid")?;
    if let Some(pricing) = twilio.pricing {
        engine = engine.with_price_source(Arc::new(pricing)).await;
    }
    let engine = Arc::new(engine);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    println!("Herald is listening on http://{address} (API docs at http://{address}/docs)");
    tracing::info!(%address, providers, "serving");

    let shutdown = CancellationToken::new();
    let mut workers = engine.start(shutdown.clone());
    workers.spawn(herald_engine::broadcasts::resume_periodically(
        engine.clone(),
        shutdown.clone(),
    ));
    workers.spawn(herald_engine::campaigns::runner::run_periodically(
        engine.clone(),
        shutdown.clone(),
    ));
    workers.spawn(herald_engine::automation::runner::run_periodically(
        engine.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let app = herald_web::app(AppState {
        engine: engine.clone(),
        twilio: twilio.hook,
        sns: sns_hook,
        replays: Default::default(),
    });
    let served = herald_web::serve(listener, app, shutdown.clone()).await;
    // However the server stopped, let the workers return claimed work before exiting.
    shutdown.cancel();
    while workers.join_next().await.is_some() {}
    tracing::info!("stopped");
    served.context("the HTTP server failed")
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down: finishing requests and returning unsent messages to the queue");
    shutdown.cancel();
}

/// The server's Twilio account: its provider for live traffic, the verifier of its callbacks
/// when Herald knows the public URL Twilio signs, and its Pricing API unless turned off.
#[derive(Default)]
struct TwilioSetup {
    provider: Option<Arc<dyn herald_providers::Provider>>,
    hook: Option<herald_web::hooks::TwilioHook>,
    pricing: Option<herald_providers::twilio::pricing::TwilioPricing>,
}

/// The server's Twilio account, when configured.
fn twilio(file: &FileConfig, public_url: Option<&str>) -> Result<TwilioSetup> {
    let Some(mut config) = file.twilio()? else {
        return Ok(TwilioSetup::default());
    };
    let pricing = file.twilio_pricing(&config)?;
    let hook = match public_url {
        Some(public_url) => {
            let public_url = public_url.trim_end_matches('/').to_owned();
            config.status_callback = Some(format!("{public_url}/hooks/twilio/status"));
            Some(herald_web::hooks::TwilioHook {
                auth_token: config.auth_token.clone(),
                public_url,
            })
        }
        None => {
            tracing::warn!(
                "no public URL (--public-url, HERALD_PUBLIC_URL): Twilio will send no status callbacks"
            );
            None
        }
    };
    let provider =
        herald_providers::twilio::Twilio::new(config).context("cannot set up the Twilio client")?;
    Ok(TwilioSetup {
        provider: Some(Arc::new(provider)),
        hook,
        pricing,
    })
}
