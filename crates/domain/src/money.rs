//! Money as exact integers, and the per-country price table that turns segments into an
//! estimated cost before a message is queued (SPEC §2 "Cost").
//!
//! Amounts are kept in micro-units (millionths of the currency unit): provider prices have up to
//! five decimals (`0.00750`), and floating point would make per-organization totals drift.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::message::MessageType;
use crate::phone::Region;

/// An amount in micro-units of some currency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(i64);

const MICROS_PER_UNIT: i64 = 1_000_000;

impl Amount {
    pub const ZERO: Amount = Amount(0);

    pub const fn from_micros(micros: i64) -> Amount {
        Amount(micros)
    }

    pub const fn micros(self) -> i64 {
        self.0
    }

    /// The sum; saturates rather than wrapping on absurd input.
    pub fn plus(self, other: Amount) -> Amount {
        Amount(self.0.saturating_add(other.0))
    }

    /// The cost of `count` units at this price; saturates rather than wrapping on absurd input.
    pub fn times(self, count: u32) -> Amount {
        Amount(self.0.saturating_mul(i64::from(count)))
    }

    /// Parse a decimal such as `"0.0075"` or `"-1.5"`; at most six decimals, so no rounding
    /// ever happens silently.
    pub fn parse(text: &str) -> Result<Amount, AmountError> {
        let text = text.trim();
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
            return Err(AmountError::NotADecimal);
        }
        if fraction.len() > 6 {
            return Err(AmountError::TooPrecise);
        }
        let whole: i64 = whole.parse().map_err(|_| AmountError::TooLarge)?;
        let fraction_micros: i64 = format!("{fraction:0<6}").parse().unwrap_or(0);
        let micros = whole
            .checked_mul(MICROS_PER_UNIT)
            .and_then(|m| m.checked_add(fraction_micros))
            .ok_or(AmountError::TooLarge)?;
        Ok(Amount(if negative { -micros } else { micros }))
    }
}

/// Prints at least two decimals and no needless trailing zeros: `0.0079`, `1.50`, `12.00`.
impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / MICROS_PER_UNIT as u64;
        let mut fraction = format!("{:06}", abs % MICROS_PER_UNIT as u64);
        while fraction.len() > 2 && fraction.ends_with('0') {
            fraction.pop();
        }
        write!(f, "{sign}{whole}.{fraction}")
    }
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Amount::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("not a decimal amount")]
    NotADecimal,
    #[error("more than six decimals")]
    TooPrecise,
    #[error("amount too large")]
    TooLarge,
}

/// An ISO 4217 currency code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    pub const USD: Currency = Currency(*b"USD");

    pub fn parse(code: &str) -> Result<Currency, AmountError> {
        match code.as_bytes() {
            [a, b, c] if code.bytes().all(|b| b.is_ascii_uppercase()) => Ok(Currency([*a, *b, *c])),
            _ => Err(AmountError::NotADecimal),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from three ASCII uppercase letters.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The price of one segment to one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Price {
    pub transactional: Amount,
    pub promotional: Amount,
}

impl Price {
    pub fn flat(amount: Amount) -> Price {
        Price {
            transactional: amount,
            promotional: amount,
        }
    }

    fn for_type(&self, kind: MessageType) -> Amount {
        match kind {
            MessageType::Transactional => self.transactional,
            MessageType::Promotional => self.promotional,
        }
    }
}

/// Per-country segment prices with a fallback for countries not listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceTable {
    currency: Currency,
    default: Price,
    by_region: HashMap<Region, Price>,
}

impl PriceTable {
    pub fn new(currency: Currency, default: Price) -> PriceTable {
        PriceTable {
            currency,
            default,
            by_region: HashMap::new(),
        }
    }

    pub fn with_region(mut self, region: Region, price: Price) -> PriceTable {
        self.by_region.insert(region, price);
        self
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// Price of one segment; non-geographic numbers and unlisted countries use the default.
    pub fn price(&self, region: Option<Region>, kind: MessageType) -> Amount {
        region
            .and_then(|region| self.by_region.get(&region))
            .unwrap_or(&self.default)
            .for_type(kind)
    }

    /// Estimated cost of a message: segments × the destination's price.
    pub fn estimate(&self, region: Option<Region>, kind: MessageType, segments: u32) -> Amount {
        self.price(region, kind).times(segments)
    }
}

impl Default for PriceTable {
    /// A flat list price until the operator configures per-country prices or a provider's
    /// pricing API supplies them.
    fn default() -> Self {
        PriceTable::new(Currency::USD, Price::flat(Amount::from_micros(7_900)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn amounts_parse_and_print_as_exact_decimals() {
        assert_eq!(Amount::parse("0.0075").unwrap().micros(), 7_500);
        assert_eq!(Amount::parse("12").unwrap().micros(), 12_000_000);
        assert_eq!(Amount::parse("-0.00750").unwrap().micros(), -7_500);
        assert_eq!(Amount::from_micros(7_900).to_string(), "0.0079");
        assert_eq!(Amount::from_micros(1_500_000).to_string(), "1.50");
        assert_eq!(Amount::from_micros(-7_500).to_string(), "-0.0075");
        assert_eq!(Amount::ZERO.to_string(), "0.00");
    }

    #[test]
    fn malformed_amounts_are_refused() {
        for bad in [
            "",
            ".5",
            "1.2.3",
            "abc",
            "1e5",
            "0.0000001",
            "99999999999999999999",
        ] {
            assert!(Amount::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_estimate_is_segments_times_the_destination_price() {
        let gb = Region::parse("GB").unwrap();
        let table = PriceTable::default().with_region(
            gb,
            Price {
                transactional: Amount::from_micros(40_000),
                promotional: Amount::from_micros(45_000),
            },
        );
        assert_eq!(
            table
                .estimate(Some(gb), MessageType::Promotional, 3)
                .micros(),
            135_000
        );
        assert_eq!(
            table.estimate(None, MessageType::Transactional, 2).micros(),
            15_800
        );
    }

    proptest! {
        #[test]
        fn printing_then_parsing_gives_back_the_same_amount(micros in -10_i64.pow(15)..10_i64.pow(15)) {
            let amount = Amount::from_micros(micros);
            prop_assert_eq!(Amount::parse(&amount.to_string()).unwrap(), amount);
        }
    }
}
