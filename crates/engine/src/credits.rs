//! Credits and geo permissions as the API and the CLI use them: granting credits, reading an
//! organization's account, and the destination countries it may send to.
//!
//! Allowed countries are checked on every send, so they are read through a short cache like
//! the directory's routes: a change made in this process takes effect at once, one made by
//! another process within [`FRESH`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_domain::phone::Region;
use herald_store::{NewMessage, Organization, Store, StoreError};
use uuid::Uuid;

use crate::intake::FieldError;

/// How long an organization's allowed countries are used before they are read again.
const FRESH: Duration = Duration::from_secs(5);

/// An organization's allowed countries and when they were read.
type Cached = (Instant, Arc<Vec<Region>>);

/// Organizations' allowed destination countries, read through a short cache.
#[derive(Default)]
pub struct Geo {
    cache: Mutex<HashMap<Uuid, Cached>>,
}

impl Geo {
    /// The countries `org` may send to: those it chose, or its own country when it never chose.
    pub async fn allowed(
        &self,
        store: &dyn Store,
        org: &Organization,
    ) -> Result<Arc<Vec<Region>>, StoreError> {
        if let Some((at, countries)) = self.cache.lock().expect("geo cache").get(&org.id)
            && at.elapsed() < FRESH
        {
            return Ok(countries.clone());
        }
        let countries = Arc::new(
            store
                .allowed_countries(org.id)
                .await?
                .unwrap_or_else(|| vec![org.default_region]),
        );
        self.cache
            .lock()
            .expect("geo cache")
            .insert(org.id, (Instant::now(), countries.clone()));
        Ok(countries)
    }

    /// Forget what was read for `org_id`, after this process changed it.
    pub fn forget(&self, org_id: Uuid) {
        self.cache.lock().expect("geo cache").remove(&org_id);
    }

    /// Refuse `message` when its destination is not among `allowed`: a field error on `to`.
    pub fn check(allowed: &[Region], message: &NewMessage) -> Result<(), FieldError> {
        match message.country {
            Some(country) if allowed.contains(&country) => Ok(()),
            Some(country) => Err(FieldError {
                field: "to",
                code: "country_not_permitted",
                message: format!(
                    "sending to {country} is not permitted for this organization (allowed: {})",
                    list(allowed)
                ),
            }),
            // Numbers of no country (international services, satellite) are a classic route
            // for toll fraud, so they are never in an allow-list.
            None => Err(FieldError {
                field: "to",
                code: "country_not_permitted",
                message: format!(
                    "this number belongs to no country; only numbers of {} are permitted",
                    list(allowed)
                ),
            }),
        }
    }
}

fn list(countries: &[Region]) -> String {
    countries
        .iter()
        .map(Region::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_domain::encoding::Encoding;
    use herald_domain::message::{MessageType, Mode};
    use herald_domain::money::{Amount, Currency};
    use herald_store::Scope;
    use jiff::Timestamp;

    fn to(country: Option<&str>) -> NewMessage {
        NewMessage {
            id: Uuid::nil(),
            scope: Scope {
                org_id: Uuid::nil(),
                mode: Mode::Live,
            },
            api_key_id: None,
            to: "+33612345678".into(),
            country: country.map(|c| Region::parse(c).unwrap()),
            sender: None,
            body: "Bonjour".into(),
            encoding: Encoding::Gsm7,
            segments: 1,
            kind: MessageType::Transactional,
            priority: 0,
            estimated_cost: Amount::from_micros(0),
            currency: Currency::USD,
            send_at: None,
            max_attempts: 1,
            created_at: Timestamp::UNIX_EPOCH,
            broadcast_id: None,
            campaign_run_id: None,
        }
    }

    #[test]
    fn only_allowed_countries_pass_and_the_refusal_names_the_country() {
        let allowed = [Region::parse("US").unwrap(), Region::parse("CA").unwrap()];
        assert!(Geo::check(&allowed, &to(Some("CA"))).is_ok());
        let refused = Geo::check(&allowed, &to(Some("FR"))).unwrap_err();
        assert_eq!(
            (refused.field, refused.code),
            ("to", "country_not_permitted")
        );
        assert!(refused.message.contains("FR"), "{}", refused.message);
        assert!(Geo::check(&allowed, &to(None)).is_err());
    }
}
