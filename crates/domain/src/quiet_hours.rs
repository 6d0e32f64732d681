//! Quiet hours: the local times at which promotional messages may reach a recipient, and the
//! next time they may when now is not one.
//!
//! A recipient's local time comes from their own time zone when it is known. Otherwise it
//! comes from their number's country; a country spanning several zones (the United States,
//! Brazil) sends only when it is within the window in *every* zone, so nobody is woken because
//! their number did not say where they live. Should no such time exist in the next two days (a
//! country whose zones are too far apart, like Russia), the country's first zone in the time
//! zone database (`zone.tab`) decides. Transitions to and from daylight saving time are
//! handled by the time zone rules themselves: the window is a local wall-clock window.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::phone::Region;

/// The IANA time zone database's list of zones by country (public domain).
const ZONE_TAB: &str = include_str!("../data/zone.tab");

/// A daily window of local time, `start` included and `end` excluded. A window whose end is
/// before its start runs over midnight (`22:00–06:00`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: Time,
    pub end: Time,
}

impl Default for Window {
    /// 09:00–21:00.
    fn default() -> Window {
        Window {
            start: Time::constant(9, 0, 0, 0),
            end: Time::constant(21, 0, 0, 0),
        }
    }
}

impl Window {
    /// Whether the local time `at` is inside the window.
    pub fn contains(&self, at: Time) -> bool {
        if self.start <= self.end {
            self.start <= at && at < self.end
        } else {
            at >= self.start || at < self.end
        }
    }

    fn contains_instant(&self, at: Timestamp, zone: &TimeZone) -> bool {
        self.contains(at.to_zoned(zone.clone()).time())
    }

    /// The window's openings in `zone` from a day before `from` to two days after it.
    fn openings(&self, from: Timestamp, zone: &TimeZone) -> Vec<Timestamp> {
        let today = from.to_zoned(zone.clone()).date();
        (-1..=2)
            .filter_map(|days| {
                let date = today.checked_add(jiff::Span::new().days(days)).ok()?;
                // A start that falls in a DST gap opens at the first valid time after it.
                date.to_datetime(self.start)
                    .to_zoned(zone.clone())
                    .ok()
                    .map(|z| z.timestamp())
            })
            .collect()
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start.hour(),
            self.start.minute(),
            self.end.hour(),
            self.end.minute()
        )
    }
}

/// Why a window could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a quiet-hours window is written `HH:MM-HH:MM` with different times, like `09:00-21:00`")]
pub struct WindowError;

impl FromStr for Window {
    type Err = WindowError;

    fn from_str(s: &str) -> Result<Window, WindowError> {
        let (start, end) = s.split_once('-').ok_or(WindowError)?;
        let time = |t: &str| {
            let (h, m) = t.trim().split_once(':').ok_or(WindowError)?;
            let h: i8 = h.parse().map_err(|_| WindowError)?;
            let m: i8 = m.parse().map_err(|_| WindowError)?;
            Time::new(h, m, 0, 0).map_err(|_| WindowError)
        };
        let window = Window {
            start: time(start)?,
            end: time(end)?,
        };
        if window.start == window.end {
            return Err(WindowError);
        }
        Ok(window)
    }
}

/// Where a recipient is, as far as Herald knows.
#[derive(Clone, Debug)]
pub enum Whereabouts<'a> {
    /// Their own time zone.
    Zone(&'a TimeZone),
    /// Only their number's country.
    Country(Region),
    /// Neither: no window applies.
    Unknown,
}

impl<'a> Whereabouts<'a> {
    /// The recipient's own zone when known, else their number's country.
    pub fn of(zone: Option<&'a TimeZone>, country: Option<Region>) -> Whereabouts<'a> {
        match (zone, country) {
            (Some(zone), _) => Whereabouts::Zone(zone),
            (None, Some(country)) => Whereabouts::Country(country),
            (None, None) => Whereabouts::Unknown,
        }
    }
}

/// The windows in force: one by default, and per-country overrides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuietHours {
    pub default: Window,
    pub countries: HashMap<Region, Window>,
}

impl QuietHours {
    /// The first instant at or after `now` inside the recipient's window: `now` itself when it
    /// already is, `None` when no window applies (an unknown place).
    pub fn next_allowed(
        &self,
        now: Timestamp,
        to: Whereabouts<'_>,
        country: Option<Region>,
    ) -> Option<Timestamp> {
        let window = country
            .and_then(|c| self.countries.get(&c))
            .copied()
            .unwrap_or(self.default);
        match to {
            Whereabouts::Zone(zone) => {
                Some(earliest_in_all(window, now, std::slice::from_ref(zone))?)
            }
            Whereabouts::Country(region) => {
                let zones = zones_of(region);
                if zones.is_empty() {
                    return None;
                }
                earliest_in_all(window, now, zones)
                    .or_else(|| earliest_in_all(window, now, &zones[..1]))
            }
            Whereabouts::Unknown => None,
        }
    }
}

/// The first instant at or after `now` that is inside `window` in every zone of `zones`, within
/// two days.
fn earliest_in_all(window: Window, now: Timestamp, zones: &[TimeZone]) -> Option<Timestamp> {
    let inside_all = |at: Timestamp| zones.iter().all(|z| window.contains_instant(at, z));
    if inside_all(now) {
        return Some(now);
    }
    let mut candidates: Vec<Timestamp> = zones
        .iter()
        .flat_map(|z| window.openings(now, z))
        .filter(|at| *at > now && *at <= now + SignedDuration::from_hours(48))
        .collect();
    candidates.sort();
    candidates.dedup();
    candidates.into_iter().find(|at| inside_all(*at))
}

/// The time zones of a country, as the time zone database lists them (the first is its
/// principal zone). Zones this system's database lacks are left out.
pub fn zones_of(region: Region) -> &'static [TimeZone] {
    static BY_COUNTRY: OnceLock<HashMap<String, Vec<TimeZone>>> = OnceLock::new();
    let by_country = BY_COUNTRY.get_or_init(|| {
        let mut map: HashMap<String, Vec<TimeZone>> = HashMap::new();
        for line in ZONE_TAB.lines().filter(|l| !l.starts_with('#')) {
            let mut fields = line.split('\t');
            let (Some(country), Some(_), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if let Ok(zone) = TimeZone::get(name) {
                map.entry(country.to_owned()).or_default().push(zone);
            }
        }
        map
    });
    by_country
        .get(region.as_str())
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn zone(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    #[test]
    fn windows_read_and_wrap_over_midnight() {
        let day: Window = "09:00-21:00".parse().unwrap();
        assert_eq!(day, Window::default());
        assert!(day.contains(Time::constant(9, 0, 0, 0)));
        assert!(!day.contains(Time::constant(21, 0, 0, 0)));
        let night: Window = "22:00-06:30".parse().unwrap();
        assert!(night.contains(Time::constant(23, 0, 0, 0)));
        assert!(night.contains(Time::constant(6, 0, 0, 0)));
        assert!(!night.contains(Time::constant(12, 0, 0, 0)));
        for bad in ["9-21", "09:00", "25:00-26:00", "09:00-09:00", "a:b-c:d"] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
    }

    #[test]
    fn inside_the_window_is_now_and_outside_is_the_next_opening() {
        let hours = QuietHours::default();
        let paris = zone("Europe/Paris");
        let noon = at("2026-06-01T10:00:00Z"); // 12:00 in Paris
        assert_eq!(
            hours.next_allowed(noon, Whereabouts::Zone(&paris), None),
            Some(noon)
        );
        let night = at("2026-06-01T01:00:00Z"); // 03:00 in Paris
        assert_eq!(
            hours.next_allowed(night, Whereabouts::Zone(&paris), None),
            Some(at("2026-06-01T07:00:00Z")),
            "09:00 the same morning"
        );
        let evening = at("2026-06-01T19:30:00Z"); // 21:30 in Paris
        assert_eq!(
            hours.next_allowed(evening, Whereabouts::Zone(&paris), None),
            Some(at("2026-06-02T07:00:00Z")),
            "09:00 the next morning"
        );
    }

    #[test]
    fn daylight_saving_time_moves_the_opening_in_utc() {
        let hours = QuietHours::default();
        let new_york = zone("America/New_York");
        // DST in the US ends on Sunday 1 November 2026: 09:00 is 13:00 UTC before, 14:00 after.
        assert_eq!(
            hours.next_allowed(
                at("2026-10-31T05:00:00Z"),
                Whereabouts::Zone(&new_york),
                None
            ),
            Some(at("2026-10-31T13:00:00Z"))
        );
        assert_eq!(
            hours.next_allowed(
                at("2026-11-01T05:00:00Z"),
                Whereabouts::Zone(&new_york),
                None
            ),
            Some(at("2026-11-01T14:00:00Z"))
        );
    }

    #[test]
    fn a_country_of_many_zones_waits_until_it_is_daytime_in_all_of_them() {
        let hours = QuietHours::default();
        let us = Region::parse("US").unwrap();
        assert!(zones_of(us).len() > 10);
        // 14:00 UTC is 09:00 in New York (EST) but 04:00 in Honolulu.
        let next = hours
            .next_allowed(
                at("2026-12-01T14:00:00Z"),
                Whereabouts::Country(us),
                Some(us),
            )
            .unwrap();
        for z in zones_of(us) {
            assert!(
                Window::default().contains_instant(next, z),
                "{z:?} at {next}"
            );
        }
        // Honolulu opens at 19:00 UTC, when New York is at 14:00.
        assert_eq!(next, at("2026-12-01T19:00:00Z"));
    }

    #[test]
    fn per_country_windows_override_the_default_and_unknown_places_are_not_held() {
        let india = Region::parse("IN").unwrap();
        let hours = QuietHours {
            default: Window::default(),
            countries: HashMap::from([(india, "10:00-20:00".parse().unwrap())]),
        };
        // 09:30 in Kolkata (UTC+5:30): inside the default, outside India's window.
        let now = at("2026-03-02T04:00:00Z");
        assert_eq!(
            hours.next_allowed(now, Whereabouts::Country(india), Some(india)),
            Some(at("2026-03-02T04:30:00Z"))
        );
        assert_eq!(hours.next_allowed(now, Whereabouts::Unknown, None), None);
    }

    #[test]
    fn a_country_too_wide_for_one_window_follows_its_first_zone() {
        let russia = Region::parse("RU").unwrap();
        let next = QuietHours::default()
            .next_allowed(
                at("2026-03-02T00:00:00Z"),
                Whereabouts::Country(russia),
                Some(russia),
            )
            .unwrap();
        assert!(Window::default().contains_instant(next, &zones_of(russia)[0]));
    }
}
