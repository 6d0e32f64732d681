//! The `herald` binary: a thin command line over the crates. `serve` runs the API, the
//! dispatcher and the scheduler in one process; the other commands administer the same
//! database and work while a server is running.

mod accounts;
mod commands;
mod config;
mod contacts;
mod credits;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use config::LogFormat;

/// mimalloc instead of the system allocator: under the dispatcher and the API, glibc's malloc
/// and free took about a fifth of all CPU time; this halves that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "herald", version, about = "Self-hosted SMS platform")]
struct Cli {
    /// A TOML configuration file; flags and HERALD_* variables take precedence over it.
    #[arg(long, env = "HERALD_CONFIG", global = true)]
    config: Option<PathBuf>,

    /// `sqlite:PATH` or `postgres://…` [default: sqlite://herald.db in the working directory]
    #[arg(
        long,
        env = "HERALD_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    database_url: Option<config::DatabaseUrl>,

    /// Encrypts provider credentials at rest: 32 bytes as 64 hex digits or base64
    /// (`openssl rand -base64 32`).
    #[arg(long, env = "HERALD_SECRET_KEY", global = true, hide_env_values = true)]
    secret_key: Option<config::SecretKeyText>,

    /// Lets its bearer grant credits and set spend limits through the API (at least 16
    /// characters).
    #[arg(
        long,
        env = "HERALD_OPERATOR_TOKEN",
        global = true,
        hide_env_values = true
    )]
    operator_token: Option<config::OperatorToken>,

    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", global = true, value_enum)]
    log_format: Option<LogFormat>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP API, the dispatcher and the scheduler.
    Serve {
        /// Address to listen on [default: 127.0.0.1:8080]
        #[arg(long, env = "HERALD_LISTEN")]
        listen: Option<SocketAddr>,
        /// Herald's base URL as providers reach it, for their callbacks.
        #[arg(long, env = "HERALD_PUBLIC_URL")]
        public_url: Option<String>,
    },
    /// Create or update the database schema.
    Migrate,
    /// Manage organizations.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Manage an organization's provider accounts.
    #[command(subcommand)]
    Provider(ProviderCommand),
    /// Manage an organization's routes: which provider accounts serve which destinations.
    #[command(subcommand)]
    Route(RouteCommand),
    /// Manage an organization's contacts.
    #[command(subcommand)]
    Contacts(ContactsCommand),
    /// An organization's credits and monthly spend limit.
    #[command(subcommand)]
    Credits(credits::CreditsCommand),
    /// Run a benchmark scenario on a fresh database and print what it measured.
    Bench(BenchArgs),
}

#[derive(Debug, Subcommand)]
enum ContactsCommand {
    /// Import contacts from a CSV file: each row creates a contact or updates the one with its
    /// number. The first row names the columns (`phone`, `first_name`, …, `custom.<name>`).
    Import {
        /// The CSV file.
        file: std::path::PathBuf,
        /// The organization.
        #[arg(long)]
        org: uuid::Uuid,
        /// Read a column as a field: `Header:field` (`Mobile:phone`, `Sales:custom.total_sales`,
        /// `Notes:ignore`); repeat for several.
        #[arg(long = "map")]
        map: Vec<String>,
        /// Print the result as JSON, without a progress bar.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ProviderCommand {
    /// Add a provider account (its secrets are encrypted with the server's secret key).
    Add(Box<accounts::AddArgs>),
    /// List an organization's provider accounts (never their secrets).
    List {
        #[arg(long)]
        org: uuid::Uuid,
        #[arg(long)]
        json: bool,
    },
    /// Remove a provider account that no route uses.
    Remove { id: uuid::Uuid },
}

#[derive(Debug, Subcommand)]
enum RouteCommand {
    /// Create or replace a route.
    Set {
        #[arg(long)]
        org: uuid::Uuid,
        /// ISO 3166-1 alpha-2 code, or `default` for the default route.
        #[arg(long)]
        country: String,
        /// E.164 digits the number starts with, e.g. 1415.
        #[arg(long)]
        prefix: Option<String>,
        /// Provider account ids, in the order to try them.
        #[arg(long, value_delimiter = ',', required = true)]
        providers: Vec<String>,
    },
    /// List an organization's routes: the default first, then by country and prefix.
    List {
        #[arg(long)]
        org: uuid::Uuid,
        #[arg(long)]
        json: bool,
    },
    /// Remove a route; its destinations then follow the next matching route.
    Remove {
        #[arg(long)]
        org: uuid::Uuid,
        /// ISO 3166-1 alpha-2 code, or `default` for the default route.
        #[arg(long)]
        country: String,
        /// E.164 digits the number starts with, e.g. 1415.
        #[arg(long)]
        prefix: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// dispatch-sim, dispatch-http, fanout, import, broadcast or idle (`herald bench list` describes them).
    scenario: String,
    /// Which store to measure.
    #[arg(long, value_enum, default_value = "sqlite")]
    store: BenchStore,
    /// Messages (or rows) to process.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Messages per claim.
    #[arg(long, default_value_t = 1_000)]
    batch_size: u32,
    /// Provider calls in flight at once.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// stub-server: the address to listen on.
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// stub-server: delay before each delivery report.
    #[arg(long, default_value_t = 0)]
    report_delay_ms: u64,
    /// stub-server: where Kannel's SMSC takes delivery reports.
    #[arg(long)]
    kannel_dlr_url: Option<String>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum BenchStore {
    Sqlite,
    Postgres,
}

#[derive(Debug, Subcommand)]
enum OrgCommand {
    /// Create an organization with a live and a test API key (shown once).
    Create {
        name: String,
        /// Region for national-format numbers, e.g. US, GB, IN.
        #[arg(long)]
        region: Option<String>,
        /// Destination countries it may send to, e.g. GB,GG,JE [default: its region only].
        #[arg(long, value_delimiter = ',')]
        countries: Vec<String>,
        /// Print {"org_id", "live_key", "test_key"} as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Create an API key (shown once).
    Create {
        #[arg(long)]
        org: uuid::Uuid,
        /// A test key, which only ever reaches the simulator.
        #[arg(long)]
        test: bool,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key; requests with it are refused from then on.
    Revoke { key_id: uuid::Uuid },
    /// List an organization's keys (never their secrets).
    List {
        #[arg(long)]
        org: uuid::Uuid,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut file = config::FileConfig::load(cli.config.as_deref())?;
    if let Some(key) = cli.secret_key {
        file.secret_key = Some(key);
    }
    if let Some(token) = cli.operator_token {
        file.operator_token = Some(token);
    }
    let cli_database_url = cli.database_url.as_ref().map(|url| url.expose().to_owned());
    let database_url = cli
        .database_url
        .or(file.database_url.clone())
        .unwrap_or_else(|| config::DatabaseUrl::new("sqlite://herald.db"));
    let log_format = cli.log_format.or(file.log_format).unwrap_or_default();
    serve::init_logging(log_format, file.log_level.as_deref());
    match cli.command {
        Command::Serve { listen, public_url } => {
            let listen = match (listen, file.listen.as_deref()) {
                (Some(listen), _) => listen,
                (None, Some(text)) => text
                    .parse()
                    .map_err(|_| anyhow::anyhow!("listen {text:?} is not an address"))?,
                (None, None) => SocketAddr::from(([127, 0, 0, 1], 8080)),
            };
            let public_url = public_url.or(file.public_url.clone());
            serve::serve(&file, &database_url, listen, public_url).await
        }
        Command::Migrate => commands::migrate(&file, &database_url).await,
        Command::Org(OrgCommand::Create {
            name,
            region,
            countries,
            json,
        }) => {
            commands::create_org(
                &file,
                &database_url,
                &name,
                region.as_deref(),
                &countries,
                json,
            )
            .await
        }
        Command::Key(KeyCommand::Create {
            org,
            test,
            name,
            json,
        }) => commands::create_key(&file, &database_url, org, test, name, json).await,
        Command::Key(KeyCommand::Revoke { key_id }) => {
            commands::revoke_key(&file, &database_url, key_id).await
        }
        Command::Provider(ProviderCommand::Add(args)) => {
            accounts::add(&file, &database_url, *args).await
        }
        Command::Provider(ProviderCommand::List { org, json }) => {
            accounts::list(&file, &database_url, org, json).await
        }
        Command::Provider(ProviderCommand::Remove { id }) => {
            accounts::remove(&file, &database_url, id).await
        }
        Command::Route(RouteCommand::Set {
            org,
            country,
            prefix,
            providers,
        }) => {
            accounts::set_route(
                &file,
                &database_url,
                org,
                &country,
                prefix.as_deref(),
                &providers,
            )
            .await
        }
        Command::Route(RouteCommand::List { org, json }) => {
            accounts::list_routes(&file, &database_url, org, json).await
        }
        Command::Route(RouteCommand::Remove {
            org,
            country,
            prefix,
        }) => accounts::remove_route(&file, &database_url, org, &country, prefix.as_deref()).await,
        Command::Contacts(ContactsCommand::Import {
            file: path,
            org,
            map,
            json,
        }) => contacts::import(&file, &database_url, org, &path, &map, json).await,
        Command::Credits(command) => credits::run(&file, &database_url, command).await,
        Command::Bench(args) => bench(args, cli_database_url).await,
        Command::Key(KeyCommand::List { org, json }) => {
            commands::list_keys(&file, &database_url, org, json).await
        }
    }
}

/// `herald bench`: the database URL, if given, names the SQLite file or the PostgreSQL server
/// on which a throwaway database is created.
async fn bench(args: BenchArgs, database_url: Option<String>) -> anyhow::Result<()> {
    if args.scenario == "stub-server" {
        let config = herald_bench::stub::StubConfig {
            report_delay: std::time::Duration::from_millis(args.report_delay_ms),
            kannel_dlr_url: args.kannel_dlr_url,
            ..herald_bench::stub::StubConfig::default()
        };
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        println!("stub listening on {}", listener.local_addr()?);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            stop.cancel();
        });
        herald_bench::stub::serve(listener, config, shutdown).await?;
        return Ok(());
    }
    if args.scenario == "list" {
        for (name, description) in herald_bench::SCENARIOS {
            println!("{name:<14} {description}");
        }
        println!(
            "{:<14} serve the provider stub (for bench/compare-kannel.sh)",
            "stub-server"
        );
        return Ok(());
    }
    let options = herald_bench::Options {
        scenario: args.scenario,
        store: match args.store {
            BenchStore::Sqlite => herald_bench::StoreKind::Sqlite,
            BenchStore::Postgres => herald_bench::StoreKind::Postgres,
        },
        database_url,
        messages: args.messages,
        batch_size: args.batch_size.max(1),
        max_in_flight: args.max_in_flight.max(1),
        ..herald_bench::Options::default()
    };
    let report = herald_bench::run(&options).await?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}
