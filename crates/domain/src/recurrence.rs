//! Recurrence: an RFC 5545 `RRULE` anchored at a local start time in an IANA zone, and the
//! instants it occurs at. A recurring campaign runs once per occurrence.
//!
//! This module owns the meaning of a recurrence for Herald: which rules are accepted (none more
//! frequent than hourly, no `DTSTART` inside the rule), how a wall-clock time becomes an instant
//! across daylight saving time, and how much work answering a question may cost. The expansion
//! of the rule itself (`BYDAY`, `BYMONTHDAY`, `BYSETPOS`, …) is the `rrule` crate's; it speaks
//! chrono, which stays inside this module — callers see jiff only.
//!
//! # Wall-clock times
//!
//! The rule is expanded in *local wall-clock time*, as RFC 5545 does for a `DTSTART` with a
//! `TZID`: a weekly 09:00 Europe/Paris rule is 09:00 in Paris every week, 08:00Z in winter and
//! 07:00Z in summer. Each wall-clock time then becomes an instant in the zone the way jiff's
//! `Disambiguation::Compatible` (and RFC 5545 §3.3.5) does it:
//!
//! - a time that does not exist (the spring-forward gap) is read with the offset before the gap,
//!   so it lands later by the gap's length: 02:30 America/New_York on the day clocks jump from
//!   02:00 to 03:00 runs at 03:30 EDT;
//! - a time that exists twice (the fall-back fold) takes the first, earlier instance: 01:30 on
//!   the day New York falls back runs at 01:30 EDT, not an hour later at 01:30 EST.
//!
//! Occurrences are strictly increasing instants: should two wall-clock times land on the same
//! instant (an hourly rule whose 02:30 moves to 03:30 in the gap, where 03:30 already is), the
//! run happens once, and `COUNT` counts runs.
//!
//! `start` anchors the rule and supplies its time of day. It is itself an occurrence only when
//! it matches the rule, as in the `rrule` crate and python-dateutil (RFC 5545 leaves a start
//! off the rule undefined): start a `BYDAY=MO,WE,FR` rule on a Tuesday and the first run is the
//! Wednesday.
//! Occurrences are whole seconds; a fraction of a second in `start` is dropped.
//!
//! # `UNTIL`
//!
//! `UNTIL` is inclusive. Written in UTC (`20270131T000000Z`) it is that instant, as RFC 5545
//! asks of a rule with a zoned start. Written as a local date-time (`20270131T000000`) it is
//! read in the recurrence's zone, and a bare date (`20270131`) means "through the end of that
//! day" in the zone. The `rrule` crate would read the last two in the *server's* zone, so this
//! module reads `UNTIL` (and `COUNT`, so that it counts runs) itself.
//!
//! # Bounded work
//!
//! Answering "what comes after `t`" walks the rule from its start (`COUNT` and `INTERVAL` are
//! counted from there, so it cannot jump ahead). The walk stops at the rule's end, at
//! [`HORIZON_YEARS`] years after the start, or when the `rrule` crate's loop limit finds no date
//! matching the rule (`BYMONTH=2;BYMONTHDAY=30`). With at most one run an hour, the longest walk
//! is about 900,000 occurrences; a daily rule's is 36,525.

use chrono::TimeZone as _;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Span, Timestamp};
use rrule::{Frequency, RRule, RRuleSet, Unvalidated};

/// Occurrences later than this many years after the start are not produced. A campaign
/// schedule has no use for them, and the bound keeps every question cheap.
pub const HORIZON_YEARS: i16 = 100;

/// A recurrence: an RRULE anchored at a local start time in an IANA zone.
#[derive(Debug, Clone)]
pub struct Recurrence {
    /// The rule as given, without an `RRULE:` prefix.
    rule: String,
    /// The zone's name as given.
    zone_name: String,
    zone: TimeZone,
    start: DateTime,
    /// The rule without `UNTIL` and `COUNT`, anchored at `start` read as if it were UTC: the
    /// `rrule` crate expands it in plain wall-clock time, with no zone to shift it.
    wall_clock: RRuleSet,
    /// The last instant allowed, from `UNTIL`.
    until: Option<Timestamp>,
    /// How many runs at most, from `COUNT`.
    count: Option<u32>,
    /// Wall-clock times after this are not produced (see [`HORIZON_YEARS`]).
    horizon: DateTime,
}

/// Why a recurrence was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecurrenceError {
    #[error("not a valid RRULE: {0}")]
    InvalidRule(String),
    #[error("the rule must not contain DTSTART: the start is given on its own")]
    StartInRule,
    #[error("unknown time zone `{0}`: expected an IANA name like `Europe/Paris`")]
    UnknownZone(String),
    #[error("{0} would run more than once an hour; a recurring campaign runs at most hourly")]
    TooFrequent(String),
    #[error("the rule has no occurrence at or after its start")]
    NoOccurrence,
}

impl Recurrence {
    /// `rule` is the RRULE value without the `RRULE:` prefix (accepted with it too), e.g.
    /// `FREQ=WEEKLY;BYDAY=MO,WE,FR;UNTIL=20270131T000000Z`. `start` is the first occurrence's
    /// wall-clock time in `zone`, an IANA name like `Europe/Paris`.
    pub fn new(rule: &str, start: DateTime, zone: &str) -> Result<Recurrence, RecurrenceError> {
        let zone_name = zone.trim();
        let tz = TimeZone::get(zone_name)
            .map_err(|_| RecurrenceError::UnknownZone(zone_name.to_owned()))?;

        let rule = rule.trim();
        let rule = strip_prefix_ignore_case(rule, "RRULE:")
            .unwrap_or(rule)
            .trim();
        let parts = RuleParts::split(rule)?;
        let until = parts
            .until
            .as_deref()
            .map(|value| parse_until(value, &tz))
            .transpose()?;
        let count = parts
            .count
            .as_deref()
            .map(|value| {
                value
                    .parse::<u32>()
                    .map_err(|_| invalid(format!("`{value}` is not a valid COUNT value")))
            })
            .transpose()?;

        let parsed: RRule<Unvalidated> = parts.rest.parse().map_err(rrule_error)?;
        refuse_too_frequent(&parsed)?;

        // Whole seconds: the rule has no finer unit.
        let start = start
            .with()
            .subsec_nanosecond(0)
            .build()
            .map_err(|e| invalid(format!("start {start}: {e}")))?;
        // The start as a plain wall-clock reading, handed to the crate as if it were UTC.
        let floating = TimeZone::UTC
            .to_timestamp(start)
            .map_err(|e| invalid(format!("start {start}: {e}")))?
            .as_second();
        let dt_start = rrule::Tz::UTC
            .timestamp_opt(floating, 0)
            .single()
            .ok_or_else(|| invalid(format!("start {start} out of range")))?;
        // `limit` turns on the crate's loop limit, so a rule no date matches ends instead of
        // searching forever.
        let wall_clock = parsed.build(dt_start).map_err(rrule_error)?.limit();

        let recurrence = Recurrence {
            rule: rule.to_owned(),
            zone_name: zone_name.to_owned(),
            zone: tz,
            start,
            wall_clock,
            until,
            count,
            horizon: start
                .checked_add(Span::new().years(HORIZON_YEARS))
                .unwrap_or(DateTime::MAX),
        };
        if recurrence.occurrences().next().is_none() {
            return Err(RecurrenceError::NoOccurrence);
        }
        Ok(recurrence)
    }

    /// Up to `limit` occurrences strictly after `after`, in order, as instants.
    pub fn after(&self, after: Timestamp, limit: usize) -> Vec<Timestamp> {
        self.occurrences()
            .skip_while(|&at| at <= after)
            .take(limit)
            .collect()
    }

    /// The first occurrence at or after `at`, if any.
    pub fn next_at_or_after(&self, at: Timestamp) -> Option<Timestamp> {
        self.occurrences().find(|&occurrence| occurrence >= at)
    }

    /// The rule, without an `RRULE:` prefix.
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// The IANA zone the rule's wall-clock times are in.
    pub fn zone(&self) -> &str {
        &self.zone_name
    }

    /// The anchor's wall-clock time in [`zone`](Self::zone), in whole seconds.
    pub fn start(&self) -> DateTime {
        self.start
    }

    /// Every occurrence in order, from the start: wall-clock times from the rule, made instants
    /// in the zone, kept strictly increasing, then bounded by `UNTIL` and `COUNT`.
    fn occurrences(&self) -> impl Iterator<Item = Timestamp> + '_ {
        let mut wall_clock = (&self.wall_clock).into_iter();
        let mut last: Option<Timestamp> = None;
        let mut produced: u32 = 0;
        std::iter::from_fn(move || {
            if self.count.is_some_and(|count| produced >= count) {
                return None;
            }
            loop {
                let wall = civil(wall_clock.next()?.timestamp())?;
                if wall > self.horizon {
                    return None;
                }
                // Gap: later by the gap's length; fold: the earlier instance (module doc).
                let at = self.zone.to_ambiguous_timestamp(wall).compatible().ok()?;
                // Only a wall-clock time moved forward out of a gap can land on or before the
                // previous run; it is that run again, not a new one.
                if last.is_some_and(|last| at <= last) {
                    continue;
                }
                // Runs only increase from here, so the first one past UNTIL ends the rule.
                if self.until.is_some_and(|until| at > until) {
                    return None;
                }
                last = Some(at);
                produced += 1;
                return Some(at);
            }
        })
    }
}

/// A rule's `key=value` parts: `UNTIL` and `COUNT` taken out, the rest for the `rrule` crate.
struct RuleParts {
    until: Option<String>,
    count: Option<String>,
    rest: String,
}

impl RuleParts {
    fn split(rule: &str) -> Result<RuleParts, RecurrenceError> {
        // A `DTSTART:…` line (an iCalendar snippet pasted whole) or a `DTSTART=` part: either
        // would compete with `start`.
        if rule.to_ascii_uppercase().contains("DTSTART") {
            return Err(RecurrenceError::StartInRule);
        }
        if rule.contains(['\n', '\r']) {
            return Err(invalid(
                "expected a single RRULE value, found several lines",
            ));
        }
        let mut parts = RuleParts {
            until: None,
            count: None,
            rest: String::new(),
        };
        // Empty parts (a trailing `;`) are harmless and skipped.
        for part in rule.split(';').filter(|part| !part.trim().is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(invalid(format!("`{part}` is not a NAME=VALUE part")));
            };
            let (key, value) = (key.trim(), value.trim());
            let slot = if key.eq_ignore_ascii_case("UNTIL") {
                &mut parts.until
            } else if key.eq_ignore_ascii_case("COUNT") {
                &mut parts.count
            } else {
                if !parts.rest.is_empty() {
                    parts.rest.push(';');
                }
                parts.rest.push_str(key);
                parts.rest.push('=');
                parts.rest.push_str(value);
                continue;
            };
            if slot.replace(value.to_owned()).is_some() {
                return Err(invalid(format!("{} given twice", key.to_ascii_uppercase())));
            }
        }
        if parts.until.is_some() && parts.count.is_some() {
            // RFC 5545 §3.3.10: they MUST NOT occur in the same rule.
            return Err(invalid("UNTIL and COUNT cannot both be given"));
        }
        Ok(parts)
    }
}

/// The last instant `UNTIL` allows (module doc, "`UNTIL`").
fn parse_until(value: &str, zone: &TimeZone) -> Result<Timestamp, RecurrenceError> {
    let bad = || invalid(format!("`{value}` is not a valid UNTIL value"));
    let upper = value.to_ascii_uppercase();
    if let Some(utc) = upper.strip_suffix('Z') {
        let wall = DateTime::strptime("%Y%m%dT%H%M%S", utc).map_err(|_| bad())?;
        return TimeZone::UTC.to_timestamp(wall).map_err(|_| bad());
    }
    if upper.contains('T') {
        let wall = DateTime::strptime("%Y%m%dT%H%M%S", &upper).map_err(|_| bad())?;
        return zone
            .to_ambiguous_timestamp(wall)
            .compatible()
            .map_err(|_| bad());
    }
    // A bare date: up to, not including, the first instant of the next day in the zone.
    let date = Date::strptime("%Y%m%d", &upper).map_err(|_| bad())?;
    date.tomorrow()
        .and_then(|next| next.to_zoned(zone.clone()))
        .and_then(|next| next.timestamp().checked_sub(SignedDuration::from_nanos(1)))
        .map_err(|_| bad())
}

/// Refuses rules that would run more than once an hour: a campaign run per minute is not a
/// campaign. With a frequency of at least hourly and at most one minute and one second within
/// the hour, every run is in a different hour of the clock.
fn refuse_too_frequent(rule: &RRule<Unvalidated>) -> Result<(), RecurrenceError> {
    let freq = rule.get_freq();
    if matches!(freq, Frequency::Minutely | Frequency::Secondly) {
        return Err(RecurrenceError::TooFrequent(format!("FREQ={freq}")));
    }
    for (name, values) in [
        ("BYMINUTE", rule.get_by_minute()),
        ("BYSECOND", rule.get_by_second()),
    ] {
        let mut distinct = values.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() > 1 {
            let list: Vec<String> = distinct.iter().map(u8::to_string).collect();
            return Err(RecurrenceError::TooFrequent(format!(
                "{name}={}",
                list.join(",")
            )));
        }
    }
    Ok(())
}

/// A wall-clock reading kept as seconds since 1970-01-01T00:00:00 on the same clock (how the
/// `rrule` crate carries it, in UTC), back to a civil date-time. `None` past year 9999.
fn civil(floating_second: i64) -> Option<DateTime> {
    Timestamp::from_second(floating_second)
        .ok()
        .map(|at| TimeZone::UTC.to_datetime(at))
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// The crate's message without its own "RRule parsing error: " heading.
fn rrule_error(error: rrule::RRuleError) -> RecurrenceError {
    match error {
        rrule::RRuleError::ParserError(e) => invalid(e.to_string()),
        rrule::RRuleError::ValidationError(e) => invalid(e.to_string()),
        other => invalid(other.to_string()),
    }
}

fn invalid(message: impl Into<String>) -> RecurrenceError {
    RecurrenceError::InvalidRule(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;
    use proptest::prelude::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn all(recurrence: &Recurrence) -> Vec<Timestamp> {
        recurrence.after(Timestamp::MIN, 10_000)
    }

    fn wall_times(recurrence: &Recurrence, at: &[Timestamp]) -> Vec<String> {
        let zone = TimeZone::get(recurrence.zone()).unwrap();
        at.iter()
            .map(|t| t.to_zoned(zone.clone()).strftime("%F %T %Z").to_string())
            .collect()
    }

    #[test]
    fn weekly_on_three_days_until_a_date() {
        let r = Recurrence::new(
            "FREQ=WEEKLY;BYDAY=MO,WE,FR;UNTIL=20260116T080000Z",
            date(2026, 1, 5).at(9, 0, 0, 0),
            "Europe/Paris",
        )
        .unwrap();
        // UNTIL is inclusive: the 16th's run is exactly at it.
        assert_eq!(
            all(&r),
            [
                ts("2026-01-05T08:00:00Z"),
                ts("2026-01-07T08:00:00Z"),
                ts("2026-01-09T08:00:00Z"),
                ts("2026-01-12T08:00:00Z"),
                ts("2026-01-14T08:00:00Z"),
                ts("2026-01-16T08:00:00Z"),
            ]
        );
    }

    #[test]
    fn a_start_off_the_rule_is_not_an_occurrence() {
        // 2026-01-06 is a Tuesday.
        let r = Recurrence::new(
            "FREQ=WEEKLY;BYDAY=MO,WE,FR",
            date(2026, 1, 6).at(9, 0, 0, 0),
            "UTC",
        )
        .unwrap();
        assert_eq!(
            r.after(Timestamp::MIN, 2),
            [ts("2026-01-07T09:00:00Z"), ts("2026-01-09T09:00:00Z")]
        );
    }

    #[test]
    fn paris_keeps_its_wall_clock_across_spring_and_autumn() {
        // Paris moves to summer time on 2026-03-29 and back on 2026-10-25.
        let r = Recurrence::new(
            "FREQ=WEEKLY;BYDAY=MO",
            date(2026, 3, 16).at(9, 0, 0, 0),
            "Europe/Paris",
        )
        .unwrap();
        let spring = r.after(ts("2026-03-01T00:00:00Z"), 4);
        assert_eq!(
            spring,
            [
                ts("2026-03-16T08:00:00Z"),
                ts("2026-03-23T08:00:00Z"),
                ts("2026-03-30T07:00:00Z"),
                ts("2026-04-06T07:00:00Z"),
            ]
        );
        let autumn = r.after(ts("2026-10-12T00:00:00Z"), 3);
        assert_eq!(
            autumn,
            [
                ts("2026-10-12T07:00:00Z"),
                ts("2026-10-19T07:00:00Z"),
                ts("2026-10-26T08:00:00Z"),
            ]
        );
        assert_eq!(
            wall_times(&r, &autumn),
            [
                "2026-10-12 09:00:00 CEST",
                "2026-10-19 09:00:00 CEST",
                "2026-10-26 09:00:00 CET",
            ]
        );
    }

    #[test]
    fn new_york_spring_gap_moves_later_by_the_gap() {
        // New York jumps from 02:00 EST to 03:00 EDT on 2026-03-08: 02:30 does not exist that
        // day and runs at 03:30 EDT; the day after, 02:30 EDT exists again.
        let r = Recurrence::new(
            "FREQ=DAILY",
            date(2026, 3, 6).at(2, 30, 0, 0),
            "America/New_York",
        )
        .unwrap();
        let runs = r.after(Timestamp::MIN, 4);
        assert_eq!(
            runs,
            [
                ts("2026-03-06T07:30:00Z"),
                ts("2026-03-07T07:30:00Z"),
                ts("2026-03-08T07:30:00Z"),
                ts("2026-03-09T06:30:00Z"),
            ]
        );
        assert_eq!(
            wall_times(&r, &runs),
            [
                "2026-03-06 02:30:00 EST",
                "2026-03-07 02:30:00 EST",
                "2026-03-08 03:30:00 EDT",
                "2026-03-09 02:30:00 EDT",
            ]
        );
    }

    #[test]
    fn a_start_in_the_gap_moves_but_keeps_the_rule_wall_clock() {
        let r = Recurrence::new(
            "FREQ=WEEKLY",
            date(2026, 3, 8).at(2, 30, 0, 0),
            "America/New_York",
        )
        .unwrap();
        assert_eq!(
            r.after(Timestamp::MIN, 2),
            [ts("2026-03-08T07:30:00Z"), ts("2026-03-15T06:30:00Z")]
        );
    }

    #[test]
    fn new_york_fall_back_takes_the_earlier_instance() {
        // 01:30 happens twice on 2026-11-01 (EDT, then EST): the first one is taken.
        let r = Recurrence::new(
            "FREQ=DAILY;COUNT=3",
            date(2026, 10, 31).at(1, 30, 0, 0),
            "America/New_York",
        )
        .unwrap();
        assert_eq!(
            all(&r),
            [
                ts("2026-10-31T05:30:00Z"),
                ts("2026-11-01T05:30:00Z"),
                ts("2026-11-02T06:30:00Z"),
            ]
        );
    }

    #[test]
    fn hourly_across_the_gap_runs_once_per_instant() {
        // 02:30 becomes 03:30 EDT, the same instant as the 03:30 that follows: one run, and
        // COUNT counts runs.
        let r = Recurrence::new(
            "FREQ=HOURLY;COUNT=4",
            date(2026, 3, 8).at(0, 30, 0, 0),
            "America/New_York",
        )
        .unwrap();
        assert_eq!(
            all(&r),
            [
                ts("2026-03-08T05:30:00Z"),
                ts("2026-03-08T06:30:00Z"),
                ts("2026-03-08T07:30:00Z"),
                ts("2026-03-08T08:30:00Z"),
            ]
        );
    }

    #[test]
    fn count_bounds_the_runs() {
        let r = Recurrence::new(
            "RRULE:FREQ=DAILY;COUNT=3",
            date(2026, 5, 1).at(10, 0, 0, 0),
            "UTC",
        )
        .unwrap();
        assert_eq!(r.rule(), "FREQ=DAILY;COUNT=3");
        assert_eq!(r.zone(), "UTC");
        assert_eq!(
            all(&r),
            [
                ts("2026-05-01T10:00:00Z"),
                ts("2026-05-02T10:00:00Z"),
                ts("2026-05-03T10:00:00Z"),
            ]
        );
        // In the past, the rule simply has nothing more.
        assert!(r.after(ts("2026-05-03T10:00:00Z"), 10).is_empty());
        assert_eq!(r.next_at_or_after(ts("2026-06-01T00:00:00Z")), None);
    }

    #[test]
    fn until_in_the_past_yields_nothing_more() {
        let r = Recurrence::new(
            "FREQ=WEEKLY;UNTIL=20200301T000000Z",
            date(2020, 1, 1).at(9, 0, 0, 0),
            "Europe/Paris",
        )
        .unwrap();
        assert_eq!(r.after(ts("2020-02-26T08:00:00Z"), 10), []);
        assert_eq!(r.after(ts("2020-02-19T08:00:00Z"), 10).len(), 1);
        assert!(r.after(ts("2026-01-01T00:00:00Z"), 10).is_empty());
    }

    #[test]
    fn after_is_strictly_after_and_next_is_at_or_after() {
        let r = Recurrence::new("FREQ=DAILY", date(2026, 5, 1).at(10, 0, 0, 0), "UTC").unwrap();
        let second = ts("2026-05-02T10:00:00Z");
        assert_eq!(
            r.after(second, 2),
            [ts("2026-05-03T10:00:00Z"), ts("2026-05-04T10:00:00Z")]
        );
        assert_eq!(r.after(second - SignedDuration::from_nanos(1), 1), [second]);
        assert_eq!(r.next_at_or_after(second), Some(second));
        assert_eq!(
            r.next_at_or_after(second + SignedDuration::from_nanos(1)),
            Some(ts("2026-05-03T10:00:00Z"))
        );
        assert!(r.after(second, 0).is_empty());
    }

    #[test]
    fn until_as_local_time_or_date_is_read_in_the_zone() {
        let start = date(2026, 1, 5).at(9, 0, 0, 0);
        // 09:00 Paris is 08:00Z: a local UNTIL of 09:00 keeps the 7th's run.
        let local =
            Recurrence::new("FREQ=DAILY;UNTIL=20260107T090000", start, "Europe/Paris").unwrap();
        assert_eq!(all(&local).last(), Some(&ts("2026-01-07T08:00:00Z")));
        // A bare date covers that whole local day.
        let day = Recurrence::new("FREQ=DAILY;UNTIL=20260107", start, "Europe/Paris").unwrap();
        assert_eq!(all(&day).last(), Some(&ts("2026-01-07T08:00:00Z")));
        assert_eq!(all(&day).len(), 3);
    }

    #[test]
    fn bad_rule_text_is_refused() {
        let start = date(2026, 1, 5).at(9, 0, 0, 0);
        for rule in [
            "FREQ=FORTNIGHTLY",
            "BYDAY=MO",
            "FREQ=WEEKLY;BYDAY=XX",
            "FREQ=WEEKLY;UNTIL=tomorrow",
            "FREQ=WEEKLY;COUNT=-1",
            "FREQ=WEEKLY;COUNT=3;UNTIL=20270101T000000Z",
            "FREQ=WEEKLY;COUNT=3;COUNT=4",
            "FREQ=WEEKLY;BYDAY",
            "",
        ] {
            let err = Recurrence::new(rule, start, "UTC").unwrap_err();
            assert!(
                matches!(err, RecurrenceError::InvalidRule(_)),
                "{rule}: {err:?}"
            );
        }
        let err = Recurrence::new("FREQ=FORTNIGHTLY", start, "UTC").unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a valid RRULE: `FORTNIGHTLY` is not a valid frequency."
        );
    }

    #[test]
    fn a_recurrence_can_be_shared_between_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Recurrence>();
    }

    #[test]
    fn the_start_keeps_whole_seconds() {
        let r = Recurrence::new(
            "FREQ=DAILY",
            date(2026, 1, 5).at(9, 0, 0, 750_000_000),
            "UTC",
        )
        .unwrap();
        assert_eq!(r.start(), date(2026, 1, 5).at(9, 0, 0, 0));
        assert_eq!(
            r.next_at_or_after(Timestamp::MIN),
            Some(ts("2026-01-05T09:00:00Z"))
        );
    }

    #[test]
    fn unknown_zone_is_refused() {
        let err = Recurrence::new(
            "FREQ=DAILY",
            date(2026, 1, 5).at(9, 0, 0, 0),
            "Mars/Olympus_Mons",
        )
        .unwrap_err();
        assert_eq!(
            err,
            RecurrenceError::UnknownZone("Mars/Olympus_Mons".into())
        );
    }

    #[test]
    fn more_than_hourly_is_refused() {
        let start = date(2026, 1, 5).at(9, 0, 0, 0);
        for (rule, what) in [
            ("FREQ=MINUTELY;INTERVAL=90", "FREQ=MINUTELY"),
            ("FREQ=SECONDLY", "FREQ=SECONDLY"),
            ("FREQ=HOURLY;BYMINUTE=0,30", "BYMINUTE=0,30"),
            ("FREQ=DAILY;BYSECOND=0,1", "BYSECOND=0,1"),
        ] {
            assert_eq!(
                Recurrence::new(rule, start, "UTC").unwrap_err(),
                RecurrenceError::TooFrequent(what.into()),
                "{rule}"
            );
        }
        assert!(Recurrence::new("FREQ=HOURLY;BYMINUTE=15", start, "UTC").is_ok());
    }

    #[test]
    fn dtstart_in_the_rule_is_refused() {
        let start = date(2026, 1, 5).at(9, 0, 0, 0);
        for rule in [
            "DTSTART:20260105T090000Z\nRRULE:FREQ=DAILY",
            "FREQ=DAILY;DTSTART=20260105T090000Z",
        ] {
            assert_eq!(
                Recurrence::new(rule, start, "UTC").unwrap_err(),
                RecurrenceError::StartInRule
            );
        }
    }

    #[test]
    fn a_rule_without_occurrences_is_refused() {
        let start = date(2026, 1, 5).at(9, 0, 0, 0);
        for rule in [
            "FREQ=DAILY;UNTIL=20250101T000000Z",
            "FREQ=DAILY;COUNT=0",
            // No February has a 30th: the crate's loop limit ends the search.
            "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30",
        ] {
            assert_eq!(
                Recurrence::new(rule, start, "UTC").unwrap_err(),
                RecurrenceError::NoOccurrence,
                "{rule}"
            );
        }
    }

    #[test]
    fn nothing_past_the_horizon() {
        let r = Recurrence::new("FREQ=DAILY", date(2026, 1, 5).at(9, 0, 0, 0), "UTC").unwrap();
        assert!(r.after(ts("2126-01-04T00:00:00Z"), 5).len() == 2);
        assert!(r.after(ts("2200-01-01T00:00:00Z"), 5).is_empty());
        assert_eq!(r.next_at_or_after(ts("9000-01-01T00:00:00Z")), None);
    }

    /// One `NAME=VALUE` part, mostly plausible, sometimes not.
    fn part() -> impl Strategy<Value = String> {
        let number_list = "-?[0-9]{1,3}(,-?[0-9]{1,3}){0,2}";
        let value = prop_oneof![
            "(YEARLY|MONTHLY|WEEKLY|DAILY|HOURLY|MINUTELY)",
            number_list,
            "([+-]?[1-5])?(MO|TU|WE|TH|FR|SA|SU)(,(MO|WE|FR)){0,2}",
            "20[23][0-9][01][0-9][0-3][0-9](T[0-2][0-9][0-5][0-9][0-5][0-9]Z?)?",
        ];
        let key = prop_oneof![
            Just("FREQ"),
            Just("INTERVAL"),
            Just("COUNT"),
            Just("UNTIL"),
            Just("BYDAY"),
            Just("BYMONTHDAY"),
            Just("BYMONTH"),
            Just("BYHOUR"),
            Just("BYMINUTE"),
            Just("BYSETPOS"),
            Just("BYWEEKNO"),
            Just("BYYEARDAY"),
            Just("WKST"),
        ];
        (key, value).prop_map(|(key, value)| format!("{key}={value}"))
    }

    proptest! {
        /// Whatever the text, `new` answers without panicking, and what it accepts yields
        /// strictly increasing runs that `next_at_or_after` agrees with.
        #[test]
        fn any_rule_text_is_answered_and_runs_increase(
            freq in "(YEARLY|MONTHLY|WEEKLY|DAILY|HOURLY)",
            parts in proptest::collection::vec(part(), 0..4),
            day in 0_i32..5000,
            hour in 0_i8..24,
            minute in prop_oneof![Just(0_i8), Just(30), Just(45)],
            zone in prop_oneof![
                Just("UTC"),
                Just("Europe/Paris"),
                Just("America/New_York"),
                Just("Australia/Lord_Howe"),
                Just("America/Santiago"),
                Just("Pacific/Apia"),
            ],
        ) {
            let rule = std::iter::once(format!("FREQ={freq}")).chain(parts).collect::<Vec<_>>().join(";");
            let start = date(2010, 1, 1)
                .checked_add(Span::new().days(day))
                .unwrap()
                .at(hour, minute, 0, 0);
            if let Ok(r) = Recurrence::new(&rule, start, zone) {
                let runs = r.after(Timestamp::MIN, 50);
                prop_assert!(!runs.is_empty());
                prop_assert!(runs.windows(2).all(|w| w[0] < w[1]), "{rule}: {runs:?}");
                prop_assert_eq!(r.next_at_or_after(Timestamp::MIN), Some(runs[0]));
                let later = r.after(runs[0], 49);
                prop_assert_eq!(&later[..], &runs[1..]);
            }
        }
    }
}
