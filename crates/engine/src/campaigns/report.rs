//! What a campaign will cost before it runs ([`estimate`]) and how it went ([`analytics`]).
//!
//! An estimate resolves the audience exactly as a run's snapshot would (the same
//! de-duplication, exclusions, suppressions and variant assignment), without storing anything,
//! and prices every message it would send. Analytics read a campaign's released messages with
//! their history, and its recipients' replies and opt-outs after their message.

use std::collections::{BTreeMap, HashMap, HashSet};

use herald_domain::message::Mode;
use herald_domain::money::Amount;
use herald_domain::status::MessageStatus;
use herald_store::{Campaign, Organization, RecipientState, RunBooks, Scope, StoreError, month_of};
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use uuid::Uuid;

use super::runner::{Tally, excluded_numbers, resolve_targets};
use super::{CampaignSpec, check};
use crate::Engine;
use crate::accounts::FieldError;
use crate::broadcasts::{Position, next_targets};

#[derive(Clone, Debug, Default, Serialize)]
pub struct Suppressed {
    pub opted_out: u64,
    pub no_consent: u64,
    pub not_permitted: u64,
    pub missing_variables: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct VariantEstimate {
    pub name: String,
    pub recipients: u64,
    pub segments: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CountryEstimate {
    pub country: Option<String>,
    pub recipients: u64,
    pub segments: u64,
    pub cost: Amount,
}

#[derive(Clone, Debug, Serialize)]
pub struct CreditCheck {
    /// Whether the organization's sends use credits at all.
    pub metered: bool,
    pub available: i64,
    pub balance_ok: bool,
    pub spend_limit: Option<Amount>,
    pub month_spend: Amount,
    pub spend_limit_ok: bool,
}

/// What running a campaign now would do.
#[derive(Clone, Debug, Serialize)]
pub struct Estimate {
    /// Recipients after de-duplication and exclusions: the audience a run would snapshot.
    pub audience: u64,
    /// Of them, those that would be sent a message.
    pub recipients: u64,
    pub suppressed: Suppressed,
    #[serde(flatten)]
    pub dropped: Tally,
    pub segments: u64,
    pub variants: Vec<VariantEstimate>,
    pub by_country: Vec<CountryEstimate>,
    pub estimated_cost: Amount,
    pub currency: String,
    pub credits_needed: u64,
    pub credits: CreditCheck,
}

/// Estimate `spec` for `org` (a saved campaign's spec, or one not saved). `campaign_id` fixes
/// the variant assignment; an unsaved campaign gets one of its own, so the split is as likely.
pub async fn estimate(
    engine: &Engine,
    org: &Organization,
    scope: Scope,
    api_key_id: Option<Uuid>,
    campaign_id: Uuid,
    spec: CampaignSpec,
) -> Result<Result<Estimate, Vec<FieldError>>, StoreError> {
    let checked = match check(engine, org, scope, api_key_id, spec, true).await? {
        Ok(checked) => checked,
        Err(errors) => return Ok(Err(errors)),
    };
    let store = engine.store.as_ref();
    let now = engine.clock.now();
    let occurrence = super::first_occurrence(&checked.spec, now)
        .ok()
        .map_or(now, |at| at);

    let excluded = excluded_numbers(engine, org, &checked, now).await?;

    let entries = checked.spec.audience.entries();
    let mut seen = HashSet::new();
    let mut tally = Tally::default();
    let mut suppressed = Suppressed::default();
    let mut audience = 0;
    let mut recipients = 0;
    let mut segments = 0u64;
    let mut cost = Amount::from_micros(0);
    let mut variants: Vec<VariantEstimate> = checked
        .spec
        .effective_variants()
        .into_iter()
        .map(|v| VariantEstimate {
            name: v.name,
            recipients: 0,
            segments: 0,
        })
        .collect();
    let mut countries: BTreeMap<Option<String>, CountryEstimate> = BTreeMap::new();
    let mut at = Position::default();
    while let Some((targets, next)) =
        next_targets(store, org.id, &checked.audience, &entries, at, now).await?
    {
        let resolved = resolve_targets(
            engine,
            org,
            &campaign_id,
            &checked,
            occurrence,
            targets,
            &excluded,
            &mut seen,
            &mut tally,
        )
        .await?;
        for recipient in resolved {
            audience += 1;
            if recipient.state == RecipientState::Suppressed {
                match recipient.reason.as_deref() {
                    Some("opted_out") => suppressed.opted_out += 1,
                    Some("no_consent") => suppressed.no_consent += 1,
                    Some("not_permitted") => suppressed.not_permitted += 1,
                    _ => suppressed.missing_variables += 1,
                }
                continue;
            }
            let send =
                checked
                    .spec
                    .send_request(&recipient.phone, recipient.country, &recipient.body);
            let Ok(message) = engine.prepare(org, scope, api_key_id, &send) else {
                suppressed.missing_variables += 1;
                continue;
            };
            recipients += 1;
            let n = u64::from(message.segments);
            segments += n;
            cost = cost.plus(message.estimated_cost);
            if let Some(v) = variants.get_mut(usize::from(recipient.variant)) {
                v.recipients += 1;
                v.segments += n;
            }
            let country = message.country.map(|c| c.as_str().to_owned());
            let entry = countries
                .entry(country.clone())
                .or_insert_with(|| CountryEstimate {
                    country,
                    recipients: 0,
                    segments: 0,
                    cost: Amount::from_micros(0),
                });
            entry.recipients += 1;
            entry.segments += n;
            entry.cost = entry.cost.plus(message.estimated_cost);
        }
        at = next;
    }

    let account = store
        .credit_account(org.id, &month_of(now))
        .await?
        .unwrap_or_else(|| herald_store::CreditAccount::unmetered(org.id));
    // Test-mode messages only reach the simulator and never use credits.
    let metered = account.metered && scope.mode == Mode::Live;
    let credits_needed = if metered { segments } else { 0 };
    let credits = CreditCheck {
        metered,
        available: account.available(),
        balance_ok: !metered
            || i64::try_from(credits_needed).unwrap_or(i64::MAX) <= account.available(),
        spend_limit: account.spend_limit,
        month_spend: account.month_spend,
        spend_limit_ok: !metered
            || account
                .spend_limit
                .is_none_or(|limit| account.month_spend.plus(cost) <= limit),
    };
    Ok(Ok(Estimate {
        audience,
        recipients,
        suppressed,
        dropped: tally,
        segments,
        variants,
        by_country: countries.into_values().collect(),
        estimated_cost: cost,
        currency: engine.prices.currency().as_str().to_owned(),
        credits_needed,
        credits,
    }))
}

/// Timeline bucket width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    Minute,
    Hour,
}

impl Bucket {
    fn width(self) -> SignedDuration {
        match self {
            Bucket::Minute => SignedDuration::from_mins(1),
            Bucket::Hour => SignedDuration::from_hours(1),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Costs {
    pub estimated: Amount,
    pub actual: Amount,
    /// Per message a provider accepted.
    pub estimated_per_message: Option<Amount>,
    pub actual_per_message: Option<Amount>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TimelinePoint {
    pub at: Timestamp,
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProviderStats {
    pub provider: String,
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
    pub delivery_rate: Option<f64>,
    /// Median time from the provider accepting a message to its delivery report.
    pub median_delivery_latency_ms: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VariantStats {
    pub name: String,
    pub recipients: u64,
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
    pub delivery_rate: Option<f64>,
    pub replies: u64,
    pub opt_outs: u64,
}

/// How a campaign went, over all its runs.
#[derive(Clone, Debug, Serialize)]
pub struct Analytics {
    pub runs: u32,
    /// Every recipient of every run, in exactly one bucket.
    pub books: RunBooks,
    /// Messages a provider accepted (whatever became of them after).
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
    pub suppressed: u64,
    pub delivery_rate: Option<f64>,
    pub cost: Costs,
    pub currency: Option<String>,
    pub replies: u64,
    pub opt_outs: u64,
    pub timeline: Vec<TimelinePoint>,
    pub providers: Vec<ProviderStats>,
    pub variants: Vec<VariantStats>,
}

/// The books of all a campaign's runs, added up.
pub async fn books(engine: &Engine, campaign: &Campaign) -> Result<RunBooks, StoreError> {
    let mut total = RunBooks::default();
    let mut after = None;
    loop {
        let page = engine
            .store
            .list_runs(campaign.scope(), campaign.id, after, 100)
            .await?;
        for run in &page.items {
            total.add(&engine.store.run_books(run.id).await?);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(total),
        }
    }
}

fn rate(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

fn per(total: Amount, count: u64) -> Option<Amount> {
    (count > 0).then(|| Amount::from_micros(total.micros() / count as i64))
}

fn median(values: &mut [i64]) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    Some(values[values.len() / 2])
}

#[derive(Default)]
struct Counts {
    recipients: u64,
    sent: u64,
    delivered: u64,
    failed: u64,
}

/// A campaign's analytics, with a timeline of `bucket`s by when messages were sent.
pub async fn analytics(
    engine: &Engine,
    campaign: &Campaign,
    bucket: Bucket,
) -> Result<Analytics, StoreError> {
    let store = engine.store.as_ref();
    let scope = campaign.scope();
    let spec = CampaignSpec::from_campaign(campaign)?;
    let names: Vec<String> = spec
        .effective_variants()
        .into_iter()
        .map(|v| v.name)
        .collect();
    let mut variants: Vec<Counts> = names.iter().map(|_| Counts::default()).collect();
    let mut providers: BTreeMap<String, (Counts, Vec<i64>)> = BTreeMap::new();
    let mut timeline: BTreeMap<i64, TimelinePoint> = BTreeMap::new();
    let mut totals = Counts::default();
    let mut cost = Costs::default();
    let mut currency = None;
    let width = bucket.width();
    let mut after = None;
    loop {
        let (facts, next) = store
            .campaign_facts(scope, campaign.id, after, 1_000)
            .await?;
        for fact in &facts {
            let v = usize::from(fact.variant);
            if v >= variants.len() {
                variants.resize_with(v + 1, Counts::default);
            }
            variants[v].recipients += 1;
            currency.get_or_insert_with(|| fact.currency.clone());
            let delivered = fact.status == MessageStatus::Delivered;
            let failed = matches!(
                fact.status,
                MessageStatus::Failed | MessageStatus::Undelivered
            );
            if let Some(sent_at) = fact.sent_at {
                totals.sent += 1;
                variants[v].sent += 1;
                cost.estimated = cost
                    .estimated
                    .plus(Amount::from_micros(fact.estimated_cost));
                cost.actual = cost.actual.plus(Amount::from_micros(
                    fact.actual_cost.unwrap_or(fact.estimated_cost),
                ));
                let key = sent_at.as_second().div_euclid(width.as_secs()) * width.as_secs();
                let point = timeline.entry(key).or_insert_with(|| TimelinePoint {
                    at: Timestamp::from_second(key).unwrap_or(sent_at),
                    sent: 0,
                    delivered: 0,
                    failed: 0,
                });
                point.sent += 1;
                point.delivered += u64::from(delivered);
                point.failed += u64::from(failed);
                if let Some(provider) = &fact.provider {
                    let (counts, latencies) = providers.entry(provider.clone()).or_default();
                    counts.sent += 1;
                    counts.delivered += u64::from(delivered);
                    counts.failed += u64::from(failed);
                    if let Some(delivered_at) = fact.delivered_at {
                        latencies.push(delivered_at.duration_since(sent_at).as_millis() as i64);
                    }
                }
            }
            if delivered {
                totals.delivered += 1;
                variants[v].delivered += 1;
            }
            if failed {
                totals.failed += 1;
                variants[v].failed += 1;
            }
        }
        match next {
            Some(key) => after = Some(key),
            None => break,
        }
    }
    let responses: HashMap<u16, (u64, u64)> = store
        .campaign_responses(scope, campaign.id)
        .await?
        .into_iter()
        .map(|(v, replies, opt_outs)| (v, (replies, opt_outs)))
        .collect();
    let books = books(engine, campaign).await?;
    cost.estimated_per_message = per(cost.estimated, totals.sent);
    cost.actual_per_message = per(cost.actual, totals.sent);
    Ok(Analytics {
        runs: campaign.runs,
        books,
        sent: totals.sent,
        delivered: totals.delivered,
        failed: totals.failed,
        suppressed: books.suppressed,
        delivery_rate: rate(totals.delivered, totals.sent),
        cost,
        currency,
        replies: responses.values().map(|r| r.0).sum(),
        opt_outs: responses.values().map(|r| r.1).sum(),
        timeline: timeline.into_values().collect(),
        providers: providers
            .into_iter()
            .map(|(provider, (counts, mut latencies))| ProviderStats {
                provider,
                sent: counts.sent,
                delivered: counts.delivered,
                failed: counts.failed,
                delivery_rate: rate(counts.delivered, counts.sent),
                median_delivery_latency_ms: median(&mut latencies),
            })
            .collect(),
        variants: variants
            .into_iter()
            .enumerate()
            .map(|(i, counts)| {
                let (replies, opt_outs) = responses.get(&(i as u16)).copied().unwrap_or_default();
                VariantStats {
                    name: names
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| format!("variant {i}")),
                    recipients: counts.recipients,
                    sent: counts.sent,
                    delivered: counts.delivered,
                    failed: counts.failed,
                    delivery_rate: rate(counts.delivered, counts.sent),
                    replies,
                    opt_outs,
                }
            })
            .collect(),
    })
}
