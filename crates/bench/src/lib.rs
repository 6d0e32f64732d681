//! Herald's benchmark harness: the scenarios behind `herald bench`, each run end to end on a
//! fresh database and reported as a table or one JSON object. Numbers come from here, never
//! from timed tests; the smoke tests only check that every message is accounted for.

mod broadcast;
mod campaign;
mod child;
pub mod db;
mod dispatch;
mod drip;
mod fanout;
mod idle;
mod import;
pub mod process;
pub mod report;
pub mod stub;
mod stub_load;
pub mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};

pub use db::StoreKind;
pub use report::Report;

/// The built-in scenarios.
pub const SCENARIOS: &[(&str, &str)] = &[
    (
        "dispatch-sim",
        "N queued messages dispatched to the in-process simulator, instant delivery",
    ),
    (
        "dispatch-http",
        "N queued messages sent with the Twilio adapter to the HTTP provider stub",
    ),
    (
        "fanout",
        "N messages materialised (render, encode, price) and stored queued, in bounded memory",
    ),
    (
        "import",
        "a CSV file of N contacts imported (upsert by phone, per-row report), in bounded memory",
    ),
    (
        "broadcast",
        "a broadcast to a lead status of N contacts resolved and queued in the background, in bounded memory",
    ),
    (
        "campaign",
        "a campaign to a lead status of N contacts: audience snapshotted, then released to the queue",
    ),
    (
        "drip",
        "N contacts of a segment enrolled in a drip, then its first step taken for each by the automation runner",
    ),
    (
        "idle",
        "resident memory of an idle `herald serve` after start-up",
    ),
    (
        "stub",
        "the provider stub's own capacity: N Twilio-shaped sends from an in-process client",
    ),
];

/// How to run a scenario.
#[derive(Clone, Debug)]
pub struct Options {
    pub scenario: String,
    pub store: StoreKind,
    /// SQLite: the file to use. PostgreSQL: the server on which a throwaway database is made.
    pub database_url: Option<String>,
    pub messages: u64,
    pub batch_size: u32,
    pub max_in_flight: usize,
    /// The `herald` executable, for scenarios that start helper processes (default: this one).
    pub herald_exe: Option<PathBuf>,
    /// How long `idle` waits after start-up before measuring.
    pub idle_settle: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scenario: "dispatch-sim".into(),
            store: StoreKind::Sqlite,
            database_url: None,
            messages: 100_000,
            batch_size: 1_000,
            max_in_flight: 256,
            herald_exe: None,
            idle_settle: Duration::from_secs(3),
        }
    }
}

impl Options {
    /// The `herald` executable that helper processes are started from.
    pub fn exe(&self) -> Result<PathBuf> {
        match &self.herald_exe {
            Some(path) => Ok(path.clone()),
            None => Ok(std::env::current_exe()?),
        }
    }
}

/// Run one scenario on a fresh database and return what it measured.
pub async fn run(options: &Options) -> Result<Report> {
    if !SCENARIOS.iter().any(|(name, _)| *name == options.scenario) {
        let known: Vec<&str> = SCENARIOS.iter().map(|(name, _)| *name).collect();
        bail!(
            "unknown scenario {:?}; known: {}",
            options.scenario,
            known.join(", ")
        );
    }
    if options.scenario == "stub" {
        return stub_load::run(options).await;
    }
    let db = db::BenchDb::create(options.store, options.database_url.as_deref()).await?;
    let result = match options.scenario.as_str() {
        "dispatch-sim" => {
            let target = dispatch::Target {
                name: "simulator",
                live: None,
                final_status: "delivered",
            };
            dispatch::run(options, &db, target).await
        }
        "dispatch-http" => dispatch::run_http(options, &db).await,
        "fanout" => fanout::run(options, &db).await,
        "idle" => idle::run(options, &db).await,
        "import" => import::run(options, &db).await,
        "broadcast" => broadcast::run(options, &db).await,
        "campaign" => campaign::run(options, &db).await,
        "drip" => drip::run(options, &db).await,
        _ => unreachable!("checked above"),
    };
    db.finish().await?;
    result
}
