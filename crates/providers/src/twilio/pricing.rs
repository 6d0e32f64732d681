//! Twilio's Pricing API v2: what an outbound SMS segment costs to a country
//! (`GET {base}/v2/Messaging/Countries/{IsoCountry}`).
//!
//! A country lists a price per carrier and number type; Herald takes the highest current
//! price, so an estimate (and the credit it reserves) is never below what Twilio may charge.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use herald_domain::money::Amount;
use serde::Deserialize;

/// Where Twilio serves the Pricing API.
pub const DEFAULT_BASE_URL: &str = "https://pricing.twilio.com";

/// A Pricing API client for one account.
pub struct TwilioPricing {
    client: reqwest::Client,
    base_url: String,
    authorization: String,
}

#[derive(Debug, Deserialize)]
struct Country {
    #[serde(default)]
    outbound_sms_prices: Vec<Carrier>,
    price_unit: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Carrier {
    #[serde(default)]
    prices: Vec<NumberTypePrice>,
}

#[derive(Debug, Deserialize)]
struct NumberTypePrice {
    current_price: Option<PriceValue>,
    base_price: Option<PriceValue>,
}

/// Twilio writes prices as strings (`"0.0079"`) but numbers are accepted too.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PriceValue {
    Text(String),
    Number(f64),
}

impl PriceValue {
    fn amount(&self) -> Option<Amount> {
        match self {
            PriceValue::Text(text) => Amount::parse(text.trim_start_matches('-')).ok(),
            PriceValue::Number(n) => Amount::parse(&format!("{:.6}", n.abs())).ok(),
        }
    }
}

impl TwilioPricing {
    pub fn new(
        base_url: &str,
        account_sid: &str,
        auth_token: &str,
    ) -> Result<TwilioPricing, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(TwilioPricing {
            client,
            base_url: base_url.trim_end_matches('/').to_owned(),
            authorization: format!(
                "Basic {}",
                STANDARD.encode(format!("{account_sid}:{auth_token}"))
            ),
        })
    }

    /// The highest current outbound price of a segment to `iso_country` (ISO 3166 alpha-2),
    /// in `currency`; `None` when Twilio lists no price there or prices it in another currency.
    pub async fn segment_price(
        &self,
        iso_country: &str,
        currency: &str,
    ) -> Result<Option<Amount>, String> {
        let url = format!("{}/v2/Messaging/Countries/{iso_country}", self.base_url);
        let response = self
            .client
            .get(&url)
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .send()
            .await
            .map_err(|e| format!("pricing request failed: {e}"))?;
        match response.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            status => return Err(format!("the Pricing API answered HTTP {status}")),
        }
        let country: Country = response
            .json()
            .await
            .map_err(|e| format!("unreadable pricing answer: {e}"))?;
        if country
            .price_unit
            .as_deref()
            .is_some_and(|unit| !unit.eq_ignore_ascii_case(currency))
        {
            return Ok(None);
        }
        Ok(country
            .outbound_sms_prices
            .iter()
            .flat_map(|carrier| &carrier.prices)
            .filter_map(|price| {
                price
                    .current_price
                    .as_ref()
                    .or(price.base_price.as_ref())
                    .and_then(PriceValue::amount)
            })
            .max())
    }
}
