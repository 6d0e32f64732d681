//! `herald credits …`: an organization's credits, metering and monthly spend limit from the
//! command line. Like the other administrative commands they open the database directly, so
//! they work while a server runs on it; grants are recorded in the ledger as made by `cli`.

use anyhow::{Result, bail};
use herald_domain::money::Amount;
use herald_engine::clock::{Clock, SystemClock};
use herald_store::{CreditAccount, CreditGrant, GrantOutcome, GrantRefusal, month_of};
use serde_json::json;
use uuid::Uuid;

use crate::commands::ready_store;
use crate::config::{DatabaseUrl, FileConfig};

#[derive(Debug, clap::Subcommand)]
pub enum CreditsCommand {
    /// Add credits (1 credit = 1 segment); a negative number takes back unreserved ones. The
    /// first grant turns metering on.
    Grant {
        #[arg(long)]
        org: Uuid,
        #[arg(allow_hyphen_values = true)]
        credits: i64,
        /// Why, for the ledger.
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show the balance, reservations, spend limit, this month's spend and recent grants.
    Show {
        #[arg(long)]
        org: Uuid,
        #[arg(long)]
        json: bool,
    },
    /// Set the monthly spend limit (a decimal amount in the price currency), or `none`.
    Limit {
        #[arg(long)]
        org: Uuid,
        limit: String,
    },
    /// Switch metering `on` or `off`; off, sends use no credits.
    Metering {
        #[arg(long)]
        org: Uuid,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

pub async fn run(file: &FileConfig, url: &DatabaseUrl, command: CreditsCommand) -> Result<()> {
    let store = ready_store(file, url).await?;
    let now = SystemClock.now();
    let month = month_of(now);
    match command {
        CreditsCommand::Grant {
            org,
            credits,
            reason,
            json,
        } => {
            if credits == 0 {
                bail!("credits must not be 0");
            }
            let grant = CreditGrant {
                id: Uuid::now_v7(),
                org_id: org,
                credits,
                reason: reason.filter(|r| !r.trim().is_empty()),
                granted_by: "cli".into(),
                created_at: now,
            };
            match store.grant_credits(&grant, None, &month).await? {
                Ok(GrantOutcome::Granted(account)) => print_account(&account, &month, json),
                Ok(_) => bail!("a grant without an idempotency key cannot be a replay"),
                Err(GrantRefusal::NotFound) => bail!("there is no organization {org}"),
                Err(GrantRefusal::WouldOverdraw { available }) => {
                    bail!("only {available} credits are available to take back")
                }
            }
        }
        CreditsCommand::Show { org, json } => {
            let Some(account) = store.credit_account(org, &month).await? else {
                bail!("there is no organization {org}");
            };
            print_account(&account, &month, json);
            if !json {
                for grant in store.list_credit_grants(org, 10).await? {
                    println!(
                        "  {}  {:+}  by {}{}",
                        grant.created_at,
                        grant.credits,
                        grant.granted_by,
                        grant.reason.map(|r| format!(": {r}")).unwrap_or_default()
                    );
                }
            }
        }
        CreditsCommand::Limit { org, limit } => {
            let limit = match limit.as_str() {
                "none" => None,
                text => match Amount::parse(text) {
                    Ok(amount) if amount.micros() >= 0 => Some(amount),
                    _ => bail!("the limit must be a decimal amount such as 250.00, or `none`"),
                },
            };
            if !store.set_spend_limit(org, limit).await? {
                bail!("there is no organization {org}");
            }
            match limit {
                Some(limit) => println!("Monthly spend limit of {org} set to {limit}."),
                None => println!("Monthly spend limit of {org} removed."),
            }
        }
        CreditsCommand::Metering { org, state } => {
            if !store.set_metered(org, state == "on").await? {
                bail!("there is no organization {org}");
            }
            println!("Metering of {org} is {state}.");
        }
    }
    Ok(())
}

fn print_account(account: &CreditAccount, month: &str, json: bool) {
    if json {
        println!(
            "{}",
            json!({
                "org_id": account.org_id, "metered": account.metered,
                "balance": account.balance, "reserved": account.reserved,
                "available": account.available(),
                "monthly_spend_limit": account.spend_limit,
                "month": month, "month_spend": account.month_spend,
            })
        );
        return;
    }
    println!(
        "Organization {}: {} credits, {} reserved, {} available ({}).",
        account.org_id,
        account.balance,
        account.reserved,
        account.available(),
        if account.metered {
            "metered"
        } else {
            "not metered"
        }
    );
    let limit = account
        .spend_limit
        .map(|l| l.to_string())
        .unwrap_or_else(|| "none".into());
    println!(
        "Spent in {month}: {} (monthly limit: {limit}).",
        account.month_spend
    );
}
