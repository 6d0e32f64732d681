//! Recipients: phone numbers normalised to E.164 with libphonenumber metadata, the regions they
//! belong to, and masking them for logs.
//!
//! A [`PhoneNumber`] only exists once libphonenumber both parsed the input *and* judged the result
//! a valid number for its country, so every layer after the API boundary can trust it. Its region
//! comes from the number itself rather than from the default region used to read it: a British
//! caller typing `07911 123456` reaches Guernsey (`GG`), and that is the country whose prices,
//! quiet hours and routes apply.
//!
//! The `phonenumber` crate departs from Google's libphonenumber in a few places that matter
//! here: it applies the default region's national-prefix rules to numbers that carry their own
//! country code, strips leading digits equal to the calling code from valid national numbers,
//! and forgets leading zeros when looking up a number's region. [`PhoneNumber::parse`] reads
//! around each of these so that it answers as libphonenumber does.

use std::fmt;
use std::str::FromStr;

use phonenumber::country::{self, Source};
use phonenumber::metadata::{DATABASE, Descriptor};
use phonenumber::{Metadata, ParseError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// libphonenumber refuses longer input outright; checking first keeps a hostile request from
/// making us run the metadata regexes over megabytes of text.
const MAX_INPUT_LEN: usize = 250;

/// ISO 3166-1 alpha-2 region code as known to libphonenumber metadata (e.g. "US", "GG").
///
/// Organisations choose a default region for national-format input, and every number carries
/// the region it was issued in; both must be regions the metadata can actually interpret, so the
/// only way to get one is [`Region::parse`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Region(country::Id);

impl Region {
    /// Read a region code, in any letter case; codes the metadata does not know are refused so a
    /// typo in an organisation's settings fails when it is saved, not when its first message is.
    pub fn parse(s: &str) -> Result<Region, PhoneError> {
        let bytes = s.as_bytes();
        if bytes.len() != 2 || !bytes.iter().all(u8::is_ascii_alphabetic) {
            return Err(PhoneError::UnknownRegion);
        }
        let upper = s.to_ascii_uppercase();
        // The metadata also files non-geographic numbers under "001"; the length check above
        // keeps that pseudo-region out.
        let id = country::Id::from_str(&upper).map_err(|_| PhoneError::UnknownRegion)?;
        if DATABASE.by_id(upper.as_str()).is_none() {
            return Err(PhoneError::UnknownRegion);
        }
        Ok(Region(id))
    }

    /// The upper-case two-letter code, as stored and as shown in the API.
    pub fn as_str(&self) -> &str {
        self.0.as_ref()
    }

    /// The country calling code of the region (`1` for US and CA, `44` for GB and GG): routes
    /// by number prefix must start with it to ever match a number of the region.
    pub fn calling_code(&self) -> u16 {
        // `parse` only admits regions the metadata has, so the lookup cannot miss.
        DATABASE
            .by_id(self.as_str())
            .map_or(0, |meta| meta.country_code())
    }

    fn id(self) -> country::Id {
        self.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Region {
    type Err = PhoneError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Region::parse(s)
    }
}

impl Serialize for Region {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Region {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Region::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A recipient that libphonenumber accepted as a valid number, held in E.164 form.
///
/// E.164 is the one spelling every provider accepts and the key opt-outs and contacts are
/// matched on, so it is computed once here and never re-derived from user input.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct PhoneNumber {
    e164: String,
    region: Option<Region>,
    country_code: u16,
}

impl PhoneNumber {
    /// Parse user input; national-format input uses `default_region`.
    ///
    /// Surrounding whitespace and punctuation are ignored, and an extension (`ext123`) is
    /// dropped because SMS cannot dial one. Input that parses but is not a valid number is
    /// refused with the reason libphonenumber's length rules give for it.
    pub fn parse(input: &str, default_region: Option<Region>) -> Result<PhoneNumber, PhoneError> {
        let input = input.trim();
        if input.len() > MAX_INPUT_LEN {
            return Err(PhoneError::TooLong);
        }
        // phonenumber 0.3 applies the default region's national-prefix rules even to numbers
        // that carry their own country code, so `+39 02…` read with FR loses the 0 that is part
        // of the Italian number. libphonenumber ignores the default region for such input, so
        // it is not passed on.
        let region = if has_plus_sign(input) {
            None
        } else {
            default_region
        };
        // The same defect strikes after an international prefix (`011 49 1512…` from the US
        // can come out as a different, valid German number), so such input is read in `+` form.
        let parsed = match region.and_then(|region| idd_to_plus(input, region)) {
            Some(international) => read(&international, None)?,
            None => read_national(input, region)?,
        };

        let country_code = parsed.country().code();
        let national = parsed.national().to_string();
        if !parsed.is_valid() {
            return Err(invalid_reason(country_code, national.len()));
        }
        Ok(PhoneNumber {
            e164: format!("+{country_code}{national}"),
            region: region_of(country_code, &national),
            country_code,
        })
    }

    /// A number this system validated and stored earlier (a contact's), rebuilt from its E.164
    /// form and region without parsing it again: parsing costs tens of microseconds, which a
    /// broadcast to a million contacts would pay for every one. `None` for a non-geographic
    /// number (no region), which must be parsed.
    pub fn stored(e164: &str, region: Option<Region>) -> Option<PhoneNumber> {
        let region = region?;
        Some(PhoneNumber {
            e164: e164.to_owned(),
            region: Some(region),
            country_code: region.calling_code(),
        })
    }

    /// The number in E.164, e.g. `+14155550100`: what providers are sent and what is stored.
    pub fn e164(&self) -> &str {
        &self.e164
    }

    /// The region that issued the number, derived from the number itself (`+44 7911 123456` is
    /// `GG`, not `GB`); `None` only for non-geographic numbers such as `+800` freephone.
    pub fn region(&self) -> Option<Region> {
        self.region
    }

    /// The country calling code (`1` for NANP, `44` for the UK and its dependencies).
    pub fn country_code(&self) -> u16 {
        self.country_code
    }

    /// The number as it may appear in logs, which must never hold a full recipient.
    pub fn masked(&self) -> String {
        mask_phone(&self.e164)
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.e164)
    }
}

impl FromStr for PhoneNumber {
    type Err = PhoneError;

    /// Reads international input only, since there is no region to interpret a national one.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PhoneNumber::parse(s, None)
    }
}

impl Serialize for PhoneNumber {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.e164)
    }
}

impl<'de> Deserialize<'de> for PhoneNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        PhoneNumber::parse(&text, None).map_err(serde::de::Error::custom)
    }
}

/// Mask any phone-like string for logs: keep everything except the last 4 characters, which
/// become '*'. `"+14155550100"` -> `"+1415555****"`. Strings of 4 or fewer chars become all '*'.
///
/// Works on raw strings too, so input that failed to parse can still be logged safely.
pub fn mask_phone(s: &str) -> String {
    let count = s.chars().count();
    let keep = count.saturating_sub(4);
    let mut masked = String::with_capacity(s.len());
    masked.extend(s.chars().take(keep));
    masked.extend(std::iter::repeat_n('*', count - keep));
    masked
}

/// Why a recipient was refused; the API returns [`PhoneError::code`] so clients can react
/// without parsing English.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("not a phone number")]
    NotANumber,
    #[error("unknown country calling code")]
    InvalidCountryCode,
    #[error("too short for its country")]
    TooShort,
    #[error("too long for its country")]
    TooLong,
    #[error("not a valid number for its country")]
    InvalidForRegion,
    #[error("national number given without a default region")]
    MissingRegion,
    #[error("unknown region code")]
    UnknownRegion,
}

impl PhoneError {
    /// A stable snake_case code for API responses and metrics; the messages may be reworded,
    /// these may not.
    pub fn code(&self) -> &'static str {
        match self {
            PhoneError::NotANumber => "not_a_number",
            PhoneError::InvalidCountryCode => "invalid_country_code",
            PhoneError::TooShort => "too_short",
            PhoneError::TooLong => "too_long",
            PhoneError::InvalidForRegion => "invalid_for_region",
            PhoneError::MissingRegion => "missing_region",
            PhoneError::UnknownRegion => "unknown_region",
        }
    }

    fn from_parse(error: &ParseError) -> PhoneError {
        match error {
            ParseError::NoNumber | ParseError::MalformedInteger(_) => PhoneError::NotANumber,
            ParseError::InvalidCountryCode => PhoneError::InvalidCountryCode,
            ParseError::TooShortAfterIdd | ParseError::TooShortNsn => PhoneError::TooShort,
            ParseError::TooLong => PhoneError::TooLong,
        }
    }
}

/// Run libphonenumber's parser, translating its errors into ours.
fn read(input: &str, region: Option<Region>) -> Result<phonenumber::PhoneNumber, PhoneError> {
    phonenumber::parse(region.map(Region::id), input).map_err(|error| match error {
        // Without a region libphonenumber reports national input as a bad country code; the
        // caller's real mistake is the missing region, so say that instead.
        ParseError::InvalidCountryCode if region.is_none() && !has_plus_sign(input) => {
            PhoneError::MissingRegion
        }
        error => PhoneError::from_parse(&error),
    })
}

/// Rewrite input dialled with `region`'s international prefix (`00 44 7911…` from France) in
/// `+` form (`+44 7911…`), keeping everything after the prefix as typed. `None` when the prefix
/// cannot be located among plain ASCII digits.
fn idd_to_plus(input: &str, region: Region) -> Option<String> {
    let idd = DATABASE.by_id(region.as_str())?.international_prefix()?;
    let digits: String = input.chars().filter(char::is_ascii_digit).collect();
    let prefix_len = idd.find(&digits).filter(|m| m.start() == 0)?.end();
    // No calling code starts with 0, so libphonenumber does not take such a match for a prefix.
    if digits[prefix_len..].starts_with('0') || prefix_len == digits.len() {
        return None;
    }
    let mut seen = 0;
    for (at, c) in input.char_indices() {
        if seen == prefix_len {
            return Some(format!("+{}", &input[at..]));
        }
        if c.is_ascii_digit() {
            seen += 1;
        } else if c.is_alphanumeric() {
            return None;
        }
    }
    None
}

/// Read input that does not start with the default region's international prefix, working
/// around phonenumber 0.3 stripping too eagerly from national input: leading digits equal to
/// the calling code (Italian mobiles starting 39, Norwegian ones starting 47) and national
/// prefixes that are really part of the number. libphonenumber keeps them when the input is a
/// valid number as it stands, so it is read that way too: always when the calling code was
/// taken from the digits, and for ordinary national input when the stripped reading is invalid.
fn read_national(
    input: &str,
    region: Option<Region>,
) -> Result<phonenumber::PhoneNumber, PhoneError> {
    let parsed = read(input, region)?;
    if region.is_none() {
        return Ok(parsed);
    }
    let try_whole = match parsed.code().source() {
        // An international prefix that `idd_to_plus` could not place among plain digits: the
        // reading may be mangled, and a wrong number is worse than a refusal.
        Source::Idd => return Err(PhoneError::NotANumber),
        Source::Number => true,
        Source::Default => !parsed.is_valid(),
        Source::Plus => false,
    };
    if try_whole && let Some(whole) = read_as_significant(parsed.country().code(), input) {
        return Ok(whole);
    }
    Ok(parsed)
}

/// `input` read as the national significant number of `country_code`, if that is valid.
fn read_as_significant(country_code: u16, input: &str) -> Option<phonenumber::PhoneNumber> {
    phonenumber::parse(None, format!("+{country_code} {input}"))
        .ok()
        .filter(phonenumber::PhoneNumber::is_valid)
}

/// The region that issued a valid number, found as libphonenumber's `getRegionCodeForNumber`
/// does: the only region of its calling code, or the first whose leading digits or number
/// patterns claim it.
///
/// phonenumber 0.3 has this too, but drops the national number's leading zeros first, so
/// every Italian landline (`+39 02…`) would come out without a region.
fn region_of(country_code: u16, national: &str) -> Option<Region> {
    let regions = DATABASE.region(&country_code)?;
    if let [only] = regions.as_slice() {
        // Non-geographic codes are filed under "001", which is not a region.
        return Region::parse(only).ok();
    }
    regions.into_iter().find_map(|id| {
        let meta = DATABASE.by_id(id)?;
        let claims = match meta.leading_digits() {
            Some(pattern) => pattern.find(national).is_some_and(|m| m.start() == 0),
            None => has_known_type(meta, national),
        };
        claims.then(|| Region::parse(id).ok()).flatten()
    })
}

/// Whether `national` matches one of the region's number types (fixed line, mobile, toll
/// free…), i.e. libphonenumber would not call its type UNKNOWN there.
fn has_known_type(meta: &Metadata, national: &str) -> bool {
    let d = meta.descriptors();
    d.general().is_match(national)
        && number_types(meta).any(|descriptor| descriptor.is_match(national))
}

/// The descriptors of the kinds of number a region issues, from which libphonenumber's metadata
/// builder derives the region's possible lengths and types.
fn number_types(meta: &Metadata) -> impl Iterator<Item = &Descriptor> {
    let d = meta.descriptors();
    [
        d.fixed_line(),
        d.mobile(),
        d.toll_free(),
        d.premium_rate(),
        d.shared_cost(),
        d.personal_number(),
        d.voip(),
        d.pager(),
        d.uan(),
        d.voicemail(),
    ]
    .into_iter()
    .flatten()
}

/// libphonenumber accepts an ASCII plus and its full-width twin as the international prefix.
fn has_plus_sign(input: &str) -> bool {
    input.contains(['+', '\u{FF0B}'])
}

/// Classify a parsed but invalid number the way libphonenumber's `isPossibleNumberWithReason`
/// does: by comparing its national length with the lengths its country's numbers can have.
///
/// phonenumber 0.3 keeps that check private and leaves the general descriptor's lengths empty,
/// so the lengths are gathered here from the per-type descriptors, exactly as libphonenumber's
/// metadata builder derives them. Local-only lengths (a US number without its area code) fall
/// below the minimum and so read as too short, which is what the sender needs to hear.
fn invalid_reason(country_code: u16, national_len: usize) -> PhoneError {
    let Some(meta) = main_metadata(country_code) else {
        return PhoneError::InvalidCountryCode;
    };
    let lengths = number_types(meta).flat_map(|d| d.possible_length().iter().copied());
    let (min, max) = lengths.fold((u16::MAX, 0), |(min, max), len| {
        (min.min(len), max.max(len))
    });
    if min > max {
        return PhoneError::InvalidForRegion;
    }
    let len = u16::try_from(national_len).unwrap_or(u16::MAX);
    if len < min {
        PhoneError::TooShort
    } else if len > max {
        PhoneError::TooLong
    } else {
        PhoneError::InvalidForRegion
    }
}

/// The metadata libphonenumber consults for a calling code's lengths: its main region (GB for
/// +44, US for +1), or the single non-geographic entry for codes like +800.
fn main_metadata(country_code: u16) -> Option<&'static Metadata> {
    let all = DATABASE.by_code(&country_code)?;
    all.iter()
        .find(|meta| meta.is_main_country_for_code())
        .or_else(|| all.first())
        .copied()
}

#[cfg(test)]
mod tests;
