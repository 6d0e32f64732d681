//! Keeping organizations' suppression lists in step with their SNS accounts.
//!
//! SNS keeps its own opted-out list and drops messages to those numbers without a word, so
//! Herald imports it — on a schedule and on demand — to suppress such messages itself and show
//! them as `suppressed`. When an organization takes a number off its list, its SNS accounts
//! are told (`OptInPhoneNumber`) so SNS delivers to it again.

use std::sync::Arc;
use std::time::Duration;

use herald_store::{ProviderKind, Store};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::accounts::open_credentials;
use crate::clock::Clock;
use crate::directory::sns_client;
use crate::secrets::SecretKey;

/// Import the numbers SNS lists as opted out for one of `org_id`'s SNS accounts into the
/// organization's suppression list; answers how many were new, `None` when the organization
/// has no such SNS account.
pub async fn import_sns(
    store: &dyn Store,
    key: Option<&SecretKey>,
    clock: &dyn Clock,
    org_id: Uuid,
    account_id: Uuid,
) -> Result<Option<usize>, String> {
    let opened = open_credentials(store, key, org_id, account_id)
        .await
        .map_err(|e| e.to_string())?;
    let Some((account, credentials)) = opened else {
        return Ok(None);
    };
    let Some(sns) = sns_client(&account, credentials).await else {
        return Ok(None);
    };
    let numbers = sns
        .opted_out_numbers()
        .await
        .map_err(|e| format!("SNS would not list its opted-out numbers: {e:?}"))?;
    let source = format!("{}/{}", ProviderKind::Sns.as_str(), account.id);
    let now = clock.now();
    let mut added = 0;
    for number in numbers {
        if store
            .opt_out(org_id, &number, &source, None, now)
            .await
            .map_err(|e| e.to_string())?
        {
            added += 1;
        }
    }
    Ok(Some(added))
}

/// Tell every SNS account of the organization that `phone` opted back in. Best effort: SNS
/// allows it once in 30 days, and a refusal leaves Herald's own list as the organization set it.
pub async fn sns_opt_in(store: &dyn Store, key: Option<&SecretKey>, org_id: Uuid, phone: &str) {
    let accounts = match store.list_provider_accounts(org_id, None, 100).await {
        Ok(page) => page.items,
        Err(error) => {
            tracing::warn!(%error, "cannot list accounts to opt a number back in at SNS");
            return;
        }
    };
    for account in accounts.into_iter().filter(|a| a.kind == ProviderKind::Sns) {
        let Ok(Some((account, credentials))) =
            open_credentials(store, key, org_id, account.id).await
        else {
            continue;
        };
        if let Some(sns) = sns_client(&account, credentials).await
            && let Err(error) = sns.opt_in(phone).await
        {
            tracing::warn!(?error, account_id = %account.id, "SNS refused to opt a number back in");
        }
    }
}

/// Import every organization's SNS opted-out lists every `every` (never when zero), until
/// `shutdown`.
pub async fn sync_periodically(
    store: Arc<dyn Store>,
    key: Option<SecretKey>,
    every: Duration,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    if every.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        let accounts = match store.accounts_of_kind(ProviderKind::Sns).await {
            Ok(accounts) => accounts,
            Err(error) => {
                tracing::warn!(%error, "cannot list SNS accounts to import their opt-outs");
                continue;
            }
        };
        for (org_id, account_id) in accounts {
            match import_sns(
                store.as_ref(),
                key.as_ref(),
                clock.as_ref(),
                org_id,
                account_id,
            )
            .await
            {
                Ok(Some(added)) if added > 0 => {
                    tracing::info!(%org_id, %account_id, added, "imported SNS opt-outs")
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, %account_id, "cannot import SNS opt-outs"),
            }
        }
    }
}
