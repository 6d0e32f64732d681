//! What a segment costs to each country: the configured price table, refined by a provider's
//! pricing API where one is configured.
//!
//! Prices learned from the provider are kept in memory and in the store for 24 hours, so a
//! restart does not ask again. A message to a country whose price is missing or stale is
//! estimated with what is known (the stale price, else the configured one) while the price is
//! fetched in the background: an API call never delays a send request, and an API that fails
//! leaves the configured prices in force.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use herald_domain::message::MessageType;
use herald_domain::money::{Amount, Currency, PriceTable};
use herald_domain::phone::Region;
use herald_store::Store;
use jiff::{SignedDuration, Timestamp};

use crate::clock::Clock;

/// How long a learned price is used before it is asked for again.
pub const PRICE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A provider's pricing API.
#[async_trait]
pub trait PriceSource: Send + Sync + 'static {
    /// Who the prices come from, as stored (`twilio`).
    fn name(&self) -> &str;
    /// The currency of its prices.
    fn currency(&self) -> Currency;
    /// The price of one outbound segment to `region`, `None` when it has none.
    async fn segment_price(&self, region: Region) -> Result<Option<Amount>, String>;
}

#[derive(Clone, Copy, Debug)]
struct Learned {
    price: Amount,
    fetched_at: Timestamp,
}

/// What intake needs to price a message.
pub trait SegmentPrices {
    fn currency(&self) -> Currency;
    /// The estimated cost of `segments` segments of `kind` to `region`.
    fn estimate(&self, region: Option<Region>, kind: MessageType, segments: u32) -> Amount;
}

impl SegmentPrices for PriceTable {
    fn currency(&self) -> Currency {
        PriceTable::currency(self)
    }

    fn estimate(&self, region: Option<Region>, kind: MessageType, segments: u32) -> Amount {
        PriceTable::estimate(self, region, kind, segments)
    }
}

impl SegmentPrices for Arc<PriceBook> {
    fn currency(&self) -> Currency {
        PriceBook::currency(self)
    }

    fn estimate(&self, region: Option<Region>, kind: MessageType, segments: u32) -> Amount {
        PriceBook::estimate(self, region, kind, segments)
    }
}

/// Segment prices for estimates: learned ones where fresh, configured ones otherwise.
pub struct PriceBook {
    configured: PriceTable,
    source: Option<Arc<dyn PriceSource>>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    learned: RwLock<HashMap<Region, Learned>>,
    /// Countries being fetched now, so a burst of messages asks once.
    fetching: Mutex<HashSet<Region>>,
    /// Countries whose price the source could not give, and until when not to ask again: a
    /// failing API must not be asked once per message.
    resting: Mutex<HashMap<Region, Timestamp>>,
}

/// How long to wait before asking again for a price the source could not give.
const RETRY_FAILED: Duration = Duration::from_secs(10 * 60);

impl PriceBook {
    /// Prices from `configured`, refined by `source` when given. A source whose currency is not
    /// the configured one is not used: its prices could not be compared or added up.
    pub fn new(
        configured: PriceTable,
        source: Option<Arc<dyn PriceSource>>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> PriceBook {
        let source = source.filter(|source| {
            let same = source.currency() == configured.currency();
            if !same {
                tracing::warn!(
                    source = source.name(),
                    "the pricing API's currency differs from [prices] currency; using configured prices"
                );
            }
            same
        });
        PriceBook {
            configured,
            source,
            store,
            clock,
            learned: RwLock::default(),
            fetching: Mutex::default(),
            resting: Mutex::default(),
        }
    }

    pub fn currency(&self) -> Currency {
        self.configured.currency()
    }

    /// Read the prices stored by earlier runs (fresh or not: a stale price is still a better
    /// estimate than none, and is refreshed on first use).
    pub async fn load(&self) {
        let Some(source) = &self.source else { return };
        match self.store.cached_prices(source.name()).await {
            Ok(prices) => {
                let mut learned = self.learned.write().expect("price lock");
                for (region, price, fetched_at) in prices {
                    learned.insert(region, Learned { price, fetched_at });
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read cached prices"),
        }
    }

    /// The estimated cost of `segments` segments of `kind` to `region`. Fetches the price in
    /// the background when it is missing or stale (inside a Tokio runtime).
    pub fn estimate(
        self: &Arc<Self>,
        region: Option<Region>,
        kind: MessageType,
        segments: u32,
    ) -> Amount {
        let Some(region) = region else {
            return self.configured.estimate(None, kind, segments);
        };
        let learned = self
            .learned
            .read()
            .expect("price lock")
            .get(&region)
            .copied();
        let stale = learned.is_none_or(|learned| {
            self.clock.now().duration_since(learned.fetched_at)
                >= SignedDuration::try_from(PRICE_TTL).unwrap_or_default()
        });
        if stale && self.source.is_some() {
            self.refresh_later(region);
        }
        match learned {
            Some(learned) => learned.price.times(segments),
            None => self.configured.estimate(Some(region), kind, segments),
        }
    }

    fn refresh_later(self: &Arc<Self>, region: Region) {
        let now = self.clock.now();
        if self
            .resting
            .lock()
            .expect("price lock")
            .get(&region)
            .is_some_and(|until| now < *until)
        {
            return;
        }
        if !self.fetching.lock().expect("price lock").insert(region) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.fetching.lock().expect("price lock").remove(&region);
            return;
        };
        let book = self.clone();
        runtime.spawn(async move {
            book.refresh(region).await;
            book.fetching.lock().expect("price lock").remove(&region);
        });
    }

    /// Ask the source for `region`'s price now, and keep it.
    pub async fn refresh(&self, region: Region) {
        let Some(source) = &self.source else { return };
        let rest = || {
            let until =
                self.clock.now() + SignedDuration::try_from(RETRY_FAILED).unwrap_or_default();
            self.resting
                .lock()
                .expect("price lock")
                .insert(region, until);
        };
        let price = match source.segment_price(region).await {
            Ok(Some(price)) => price,
            Ok(None) => {
                rest();
                return;
            }
            Err(error) => {
                tracing::warn!(%region, %error, "cannot fetch a price; configured prices stay in force");
                rest();
                return;
            }
        };
        let fetched_at = self.clock.now();
        self.learned
            .write()
            .expect("price lock")
            .insert(region, Learned { price, fetched_at });
        if let Err(error) = self
            .store
            .cache_price(source.name(), region, price, fetched_at)
            .await
        {
            tracing::warn!(%error, "cannot store a fetched price");
        }
    }
}

/// Twilio prices SMS in US dollars.
#[async_trait]
impl PriceSource for herald_providers::twilio::pricing::TwilioPricing {
    fn name(&self) -> &str {
        herald_providers::twilio::NAME
    }

    fn currency(&self) -> Currency {
        Currency::parse("USD").expect("USD is a currency")
    }

    async fn segment_price(&self, region: Region) -> Result<Option<Amount>, String> {
        herald_providers::twilio::pricing::TwilioPricing::segment_price(
            self,
            &region.to_string(),
            "USD",
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use herald_domain::money::Price;
    use herald_store_sqlite::{SqliteConfig, SqliteStore};

    use super::*;
    use crate::clock::ManualClock;

    struct Counting {
        calls: AtomicUsize,
        price: &'static str,
    }

    #[async_trait]
    impl PriceSource for Counting {
        fn name(&self) -> &str {
            "test"
        }

        fn currency(&self) -> Currency {
            Currency::parse("USD").unwrap()
        }

        async fn segment_price(&self, _: Region) -> Result<Option<Amount>, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(Some(Amount::parse(self.price).unwrap()))
        }
    }

    #[tokio::test]
    async fn stored_prices_are_used_until_they_are_a_day_old() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("h.db").display());
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::connect(&url, &SqliteConfig::default())
                .await
                .unwrap(),
        );
        store.migrate().await.unwrap();
        let start: Timestamp = "2026-05-01T09:00:00Z".parse().unwrap();
        let fr = Region::parse("FR").unwrap();
        store
            .cache_price("test", fr, Amount::parse("0.05").unwrap(), start)
            .await
            .unwrap();

        let clock = Arc::new(ManualClock::new(start + SignedDuration::from_hours(1)));
        let source = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            price: "0.06",
        });
        let configured = PriceTable::new(
            Currency::parse("USD").unwrap(),
            Price::flat(Amount::parse("0.01").unwrap()),
        );
        let book = Arc::new(PriceBook::new(
            configured,
            Some(source.clone()),
            store.clone(),
            clock.clone(),
        ));
        book.load().await;
        let kind = MessageType::Transactional;
        // What an earlier run learned, fresh: used, and the API is not asked.
        assert_eq!(book.estimate(Some(fr), kind, 2).micros(), 100_000);
        tokio::task::yield_now().await;
        assert_eq!(source.calls.load(Ordering::SeqCst), 0);

        // A day later it is stale: still used for this estimate, and fetched again.
        clock.advance(SignedDuration::from_hours(24));
        assert_eq!(book.estimate(Some(fr), kind, 1).micros(), 50_000);
        for _ in 0..100 {
            if book.estimate(Some(fr), kind, 1).micros() == 60_000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(book.estimate(Some(fr), kind, 1).micros(), 60_000);
        assert_eq!(source.calls.load(Ordering::SeqCst), 1, "a burst asks once");
        // Non-geographic numbers keep the configured price.
        assert_eq!(book.estimate(None, kind, 1).micros(), 10_000);
    }
}
