//! The administrative commands: migrate, organizations and API keys. They open the database
//! directly, so they work while a server runs on it (SQLite waits its turn for the write lock).

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use herald_domain::message::Mode;
use herald_domain::phone::Region;
use herald_engine::clock::{Clock, SystemClock};
use herald_engine::keys;
use herald_store::{Organization, Store, StoreError};
use herald_store_postgres::{PostgresConfig, PostgresStore};
use herald_store_sqlite::{SqliteConfig, SqliteStore};
use serde_json::json;
use uuid::Uuid;

use crate::config::{DatabaseUrl, FileConfig};

/// Open the store the URL names.
pub async fn open_store(file: &FileConfig, url: &DatabaseUrl) -> Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = if url.is_sqlite() {
        let config = SqliteConfig {
            synchronous_full: file.sqlite_synchronous_full()?,
            ..SqliteConfig::default()
        };
        Arc::new(
            SqliteStore::connect(url.expose(), &config)
                .await
                .with_context(|| format!("cannot open {url}"))?,
        )
    } else if url.is_postgres() {
        Arc::new(
            PostgresStore::connect(url.expose(), &PostgresConfig::default())
                .await
                .with_context(|| format!("cannot connect to {url}"))?,
        )
    } else {
        bail!("unsupported database URL {url}: use sqlite:PATH or postgres://…");
    };
    Ok(store)
}

/// Open and migrate: every command works on an up-to-date schema.
pub async fn ready_store(file: &FileConfig, url: &DatabaseUrl) -> Result<Arc<dyn Store>> {
    let store = open_store(file, url).await?;
    store
        .migrate()
        .await
        .context("cannot migrate the database")?;
    Ok(store)
}

pub async fn migrate(file: &FileConfig, url: &DatabaseUrl) -> Result<()> {
    ready_store(file, url).await?;
    println!("Database {url} is up to date.");
    Ok(())
}

/// A new organization and its first live and test keys.
pub struct NewOrganization {
    pub org: Organization,
    pub live_key: String,
    pub test_key: String,
}

pub fn new_organization(
    name: &str,
    region: Region,
    clock: &dyn Clock,
) -> (NewOrganization, Vec<herald_store::NewApiKey>) {
    let now = clock.now();
    let org = Organization {
        id: Uuid::now_v7(),
        name: name.to_owned(),
        default_region: region,
        created_at: now,
    };
    let live = keys::generate(org.id, Mode::Live, Some("default live key".into()), now);
    let test = keys::generate(org.id, Mode::Test, Some("default test key".into()), now);
    let records = vec![live.record, test.record];
    (
        NewOrganization {
            org,
            live_key: live.secret,
            test_key: test.secret,
        },
        records,
    )
}

pub async fn create_org(
    file: &FileConfig,
    url: &DatabaseUrl,
    name: &str,
    region: Option<&str>,
    countries: &[String],
    json: bool,
) -> Result<()> {
    let name = name.trim();
    if name.is_empty() {
        bail!("the organization name must not be empty");
    }
    let region = match region {
        Some(code) => Region::parse(code)
            .ok()
            .with_context(|| format!("{code:?} is not a region code"))?,
        None => file.default_region()?,
    };
    let countries = countries
        .iter()
        .map(|code| {
            Region::parse(code.trim())
                .ok()
                .with_context(|| format!("{code:?} is not a country code"))
        })
        .collect::<Result<Vec<_>>>()?;
    let store = ready_store(file, url).await?;
    let (created, records) = new_organization(name, region, &SystemClock);
    store.create_organization(&created.org, &records).await?;
    if !countries.is_empty() {
        store
            .set_allowed_countries(created.org.id, &countries)
            .await?;
    }
    if json {
        println!(
            "{}",
            json!({"org_id": created.org.id, "live_key": created.live_key, "test_key": created.test_key})
        );
    } else {
        print_organization(&created);
    }
    Ok(())
}

pub fn print_organization(created: &NewOrganization) {
    println!(
        "Organization {} ({}) created.",
        created.org.name, created.org.id
    );
    println!("  live key: {}", created.live_key);
    println!("  test key: {}", created.test_key);
    println!("These keys are shown once. Store them now.");
}

pub async fn create_key(
    file: &FileConfig,
    url: &DatabaseUrl,
    org_id: Uuid,
    test: bool,
    name: Option<String>,
    json: bool,
) -> Result<()> {
    let store = ready_store(file, url).await?;
    let mode = if test { Mode::Test } else { Mode::Live };
    let key = keys::generate(org_id, mode, name, SystemClock.now());
    match store.create_api_key(&key.record).await {
        Ok(_) => {}
        Err(StoreError::Conflict(_)) => bail!("there is no organization {org_id}"),
        Err(error) => return Err(error.into()),
    }
    if json {
        println!(
            "{}",
            json!({"key_id": key.record.id, "key": key.secret, "mode": mode.as_str(), "org_id": org_id})
        );
    } else {
        println!(
            "{} key {} created for organization {org_id}:",
            mode.as_str(),
            key.record.id
        );
        println!("  {}", key.secret);
        println!("This key is shown once. Store it now.");
    }
    Ok(())
}

pub async fn revoke_key(file: &FileConfig, url: &DatabaseUrl, key_id: Uuid) -> Result<()> {
    let store = ready_store(file, url).await?;
    match store.revoke_api_key(key_id, SystemClock.now()).await? {
        Some(key) => {
            let at = key.revoked_at.map(|t| t.to_string()).unwrap_or_default();
            println!("Key {} ({}…) revoked at {at}.", key.id, key.prefix);
            Ok(())
        }
        None => bail!("there is no API key {key_id}"),
    }
}

pub async fn list_keys(
    file: &FileConfig,
    url: &DatabaseUrl,
    org_id: Uuid,
    json: bool,
) -> Result<()> {
    let store = ready_store(file, url).await?;
    let keys = store.list_api_keys(org_id).await?;
    if json {
        let keys: Vec<_> = keys
            .iter()
            .map(|k| json!({
                "key_id": k.id, "mode": k.mode.as_str(), "prefix": k.prefix, "name": k.name,
                "created_at": k.created_at, "last_used_at": k.last_used_at, "revoked_at": k.revoked_at,
            }))
            .collect();
        println!("{}", serde_json::Value::Array(keys));
    } else {
        for k in &keys {
            let state = if k.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            };
            println!(
                "{}  {}  {}…  {state}  {}",
                k.id,
                k.mode.as_str(),
                k.prefix,
                k.name.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}
