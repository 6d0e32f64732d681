//! `herald provider …` and `herald route …`: provider accounts and routes from the command line.
//! They validate through the same engine functions as the API, so both accept exactly the same
//! things, and open the database directly, so they work while a server runs on it.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use herald_engine::accounts::{self, AccountError, AccountInput, FieldError};
use herald_engine::clock::{Clock, SystemClock};
use herald_store::{ProviderAccount, RouteKey};
use serde_json::json;
use uuid::Uuid;

use crate::commands::ready_store;
use crate::config::{DatabaseUrl, FileConfig};

/// A secret given on the command line or in the environment, never printed.
#[derive(Clone)]
pub struct SecretArg(String);

impl std::str::FromStr for SecretArg {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(SecretArg(text.to_owned()))
    }
}

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("****")
    }
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    #[arg(long)]
    org: Uuid,
    /// twilio, sns or simulator.
    #[arg(long)]
    kind: String,
    /// Unique within the organization.
    #[arg(long)]
    name: String,
    /// Twilio: the account SID (AC…).
    #[arg(long)]
    account_sid: Option<String>,
    /// Twilio: the auth token (better passed in the environment than on the command line).
    #[arg(long, env = "HERALD_PROVIDER_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<SecretArg>,
    /// Twilio: another API base URL (a mock).
    #[arg(long)]
    base_url: Option<String>,
    /// SNS: the AWS region, e.g. us-east-1.
    #[arg(long)]
    region: Option<String>,
    /// SNS: the access key id.
    #[arg(long)]
    access_key_id: Option<String>,
    /// SNS: the secret access key (better passed in the environment).
    #[arg(
        long,
        env = "HERALD_PROVIDER_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    secret_access_key: Option<SecretArg>,
    /// SNS: another endpoint (a local SNS).
    #[arg(long)]
    endpoint: Option<String>,
    /// A sender, repeatable: an E.164 number (+14155550100), a Twilio Messaging Service SID
    /// (MG…) or an alphanumeric sender ID.
    #[arg(long = "sender")]
    senders: Vec<String>,
    #[arg(long)]
    messages_per_second: Option<f64>,
    #[arg(long)]
    segments_per_second: Option<f64>,
    #[arg(long)]
    per_sender_messages_per_second: Option<f64>,
    /// Add it disabled: in routes, but passed over.
    #[arg(long)]
    disabled: bool,
    /// Print the account as JSON (without secrets).
    #[arg(long)]
    json: bool,
}

/// A sender's type, read from its shape.
fn sender(value: &str) -> (String, String) {
    let kind = if value.starts_with('+') {
        "phone_number"
    } else if value.len() == 34 && value.starts_with("MG") {
        "messaging_service_sid"
    } else {
        "alphanumeric_id"
    };
    (kind.to_owned(), value.to_owned())
}

pub async fn add(file: &FileConfig, url: &DatabaseUrl, args: AddArgs) -> Result<()> {
    let key = file.secret_key()?;
    let mut credentials = BTreeMap::new();
    let given = [
        ("account_sid", args.account_sid),
        ("auth_token", args.auth_token.map(|s| s.0)),
        ("base_url", args.base_url),
        ("region", args.region),
        ("access_key_id", args.access_key_id),
        ("secret_access_key", args.secret_access_key.map(|s| s.0)),
        ("endpoint", args.endpoint),
    ];
    for (name, value) in given {
        if let Some(value) = value {
            credentials.insert(name.to_owned(), value);
        }
    }
    let input = AccountInput {
        name: Some(args.name),
        kind: Some(args.kind),
        credentials: (!credentials.is_empty()).then_some(credentials),
        senders: Some(args.senders.iter().map(|s| sender(s)).collect()),
        messages_per_second: args.messages_per_second,
        segments_per_second: args.segments_per_second.map(Some),
        sender_messages_per_second: args.per_sender_messages_per_second.map(Some),
        enabled: Some(!args.disabled),
    };
    let store = ready_store(file, url).await?;
    let account = accounts::create_account(
        store.as_ref(),
        key.as_ref(),
        args.org,
        &input,
        SystemClock.now(),
    )
    .await
    .map_err(|error| explain(error, "there is no organization with this id"))?;
    if args.json {
        println!("{}", account_json(&account));
    } else {
        println!(
            "Provider account {} ({}, {}) added to organization {}.",
            account.id,
            account.name,
            account.kind.as_str(),
            account.org_id
        );
    }
    Ok(())
}

pub async fn list(file: &FileConfig, url: &DatabaseUrl, org_id: Uuid, json: bool) -> Result<()> {
    let store = ready_store(file, url).await?;
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_provider_accounts(org_id, after, 100).await?;
        all.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    if json {
        let accounts: Vec<_> = all.iter().map(account_json).collect();
        println!("{}", serde_json::Value::Array(accounts));
    } else {
        for a in &all {
            let senders: Vec<_> = a.senders.iter().map(|s| s.value.as_str()).collect();
            println!(
                "{}  {:<9}  {}  {}  {}",
                a.id,
                a.kind.as_str(),
                if a.enabled { "enabled " } else { "disabled" },
                a.name,
                senders.join(",")
            );
        }
    }
    Ok(())
}

pub async fn remove(file: &FileConfig, url: &DatabaseUrl, id: Uuid) -> Result<()> {
    let store = ready_store(file, url).await?;
    let Some(account) = store.find_provider_account(id).await? else {
        bail!("there is no provider account {id}");
    };
    accounts::delete_account(store.as_ref(), account.org_id, id)
        .await
        .map_err(|error| explain(error, "the provider account is already gone"))?;
    println!("Provider account {id} ({}) removed.", account.name);
    Ok(())
}

pub async fn set_route(
    file: &FileConfig,
    url: &DatabaseUrl,
    org_id: Uuid,
    country: &str,
    prefix: Option<&str>,
    providers: &[String],
) -> Result<()> {
    let key = accounts::route_key(country, prefix).map_err(fields)?;
    let store = ready_store(file, url).await?;
    if store.get_organization(org_id).await?.is_none() {
        bail!("there is no organization {org_id}");
    }
    let route = accounts::set_route(store.as_ref(), org_id, key, providers, SystemClock.now())
        .await
        .map_err(|error| explain(error, "there is no such organization"))?;
    let ids: Vec<_> = route.accounts.iter().map(Uuid::to_string).collect();
    println!("Route {} → {}", route.key, ids.join(", "));
    Ok(())
}

pub async fn list_routes(
    file: &FileConfig,
    url: &DatabaseUrl,
    org_id: Uuid,
    json: bool,
) -> Result<()> {
    let store = ready_store(file, url).await?;
    if store.get_organization(org_id).await?.is_none() {
        bail!("there is no organization {org_id}");
    }
    let routes = store.list_routes(org_id).await?;
    if json {
        // The same fields as `GET /v1/routes`.
        let routes: Vec<_> = routes
            .iter()
            .map(|r| {
                json!({
                    "country": r.key.country.map(|c| c.as_str().to_owned()),
                    "prefix": r.key.prefix, "providers": r.accounts, "updated_at": r.updated_at,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(routes));
    } else {
        for route in &routes {
            let ids: Vec<_> = route.accounts.iter().map(Uuid::to_string).collect();
            println!("{:<10}  {}", route.key.to_string(), ids.join(", "));
        }
    }
    Ok(())
}

pub async fn remove_route(
    file: &FileConfig,
    url: &DatabaseUrl,
    org_id: Uuid,
    country: &str,
    prefix: Option<&str>,
) -> Result<()> {
    let key = accounts::route_key(country, prefix).map_err(fields)?;
    let store = ready_store(file, url).await?;
    if !store.delete_route(org_id, &key).await? {
        bail!("organization {org_id} has no route {key}");
    }
    println!("Route {key} removed.");
    Ok(())
}

fn account_json(a: &ProviderAccount) -> serde_json::Value {
    let credentials: serde_json::Map<_, _> = a
        .credentials_shown
        .iter()
        .map(|(name, value)| (name.clone(), json!(value)))
        .collect();
    json!({
        "id": a.id, "org_id": a.org_id, "name": a.name, "kind": a.kind.as_str(),
        "enabled": a.enabled, "credentials": credentials,
        "senders": a.senders.iter().map(|s| json!({"type": s.kind.as_str(), "value": s.value})).collect::<Vec<_>>(),
        "rate_limit": {
            "messages_per_second": a.limits.messages_per_second,
            "segments_per_second": a.limits.segments_per_second,
            "per_sender_messages_per_second": a.limits.sender_messages_per_second,
        },
        "created_at": a.created_at, "updated_at": a.updated_at,
    })
}

fn fields(errors: Vec<FieldError>) -> anyhow::Error {
    let lines: Vec<_> = errors
        .iter()
        .map(|e| format!("  {}: {}", e.field, e.message))
        .collect();
    anyhow::anyhow!("invalid input:\n{}", lines.join("\n"))
}

fn explain(error: AccountError, not_found: &str) -> anyhow::Error {
    match error {
        AccountError::Invalid(errors) => fields(errors),
        AccountError::NotFound => anyhow::anyhow!("{not_found}"),
        AccountError::InUse(routes) => {
            let names: Vec<_> = routes.iter().map(RouteKey::to_string).collect();
            anyhow::anyhow!(
                "routes still use this provider account ({}); change or delete them first",
                names.join(", ")
            )
        }
        other => other.into(),
    }
}
