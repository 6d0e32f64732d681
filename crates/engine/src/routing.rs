//! Which provider a message goes to: routes by destination, failover between the providers of a
//! route, and a circuit breaker per provider.
//!
//! A route is an ordered list of providers for a destination country, optionally narrowed to a
//! number prefix; the most specific prefix wins, then the country, then the default route.
//! The first attempt goes to the route's first provider whose breaker is closed; a message
//! retried after a transient refusal moves on to the next provider, so a failing account is
//! stepped around after the retry policy's backoff rather than hammered. Permanent refusals are
//! about the message, not the provider, and are never failed over (the dispatcher fails them).
//!
//! A breaker opens after a run of consecutive failures (transient refusals or no answer) and
//! stays open for a cool-down; then one message probes the provider, and its result closes the
//! breaker or opens it again. Breakers live in each process: several processes sharing a
//! database each learn a provider's health on their own, which costs a few failed calls each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_domain::phone::Region;
use herald_store::Route as StoredRoute;
use jiff::{SignedDuration, Timestamp};

/// One route: where messages to `country` (and, if given, to numbers starting with `prefix`)
/// go, in order of preference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub country: Option<Region>,
    /// E.164 digits without the `+`, e.g. `1415`.
    pub prefix: Option<String>,
    /// Provider names, first preferred.
    pub providers: Vec<String>,
}

/// Every route, and the default for destinations no route names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    pub routes: Vec<Route>,
    /// When empty, every live provider in the order they were configured.
    pub default: Vec<String>,
}

impl RouteTable {
    /// The providers for a message to `to` (E.164) in `country`: the route with the longest
    /// matching prefix, else the route for the country, else the default.
    pub fn candidates(&self, to: &str, country: Option<Region>) -> &[String] {
        most_specific(&self.routes, to, country, |route| {
            (route.country, route.prefix.as_deref())
        })
        .map_or(&self.default[..], |route| &route.providers[..])
    }
}

/// The most specific of `routes` for a recipient `e164` in `country`: the longest prefix the
/// number starts with (among routes for its country, or for any country), else the route for
/// its country, else a route for any destination. `key` gives a route's country (`None`: any)
/// and prefix.
fn most_specific<'a, R>(
    routes: &'a [R],
    e164: &str,
    country: Option<Region>,
    key: impl Fn(&R) -> (Option<Region>, Option<&str>),
) -> Option<&'a R> {
    let digits = e164.trim_start_matches('+');
    let by_prefix = routes
        .iter()
        .filter_map(|route| {
            let (route_country, prefix) = key(route);
            let prefix = prefix?;
            let country_fits = route_country.is_none() || route_country == country;
            (country_fits && digits.starts_with(prefix)).then_some((prefix.len(), route))
        })
        .max_by_key(|(length, _)| *length)
        .map(|(_, route)| route);
    by_prefix
        .or_else(|| {
            routes
                .iter()
                .find(|route| matches!(key(route), (Some(c), None) if Some(c) == country))
        })
        .or_else(|| routes.iter().find(|route| key(route) == (None, None)))
}

/// An organization's routes as stored (ordered provider accounts per country and prefix)
/// follow the same precedence; skipping disabled accounts is the caller's.
/// The stored route for a recipient `e164` (`+14155550100`) in `country` (the number's own region;
/// `None` for non-geographic numbers, which only the default route serves).
pub fn resolve<'a>(
    routes: &'a [StoredRoute],
    e164: &str,
    country: Option<Region>,
) -> Option<&'a StoredRoute> {
    most_specific(routes, e164, country, |route| {
        (route.key.country, route.key.prefix.as_deref())
    })
}

/// When a breaker opens and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failures_to_open: u32,
    /// How long an open breaker keeps traffic away before one message probes the provider.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures_to_open: 5,
            cool_down: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Timestamp,
    },
    /// Cool-down over; one probe is out and nothing else goes until it answers.
    Probing,
}

/// What a breaker says about a provider right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Closed,
    /// Open until this time.
    Open(Timestamp),
    Probing,
}

/// One provider's circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// Whether a message may go to the provider now. Once the cool-down is over, the first
    /// caller becomes the probe and is let through; others are kept away until it answers.
    pub fn try_acquire(&self, now: Timestamp) -> bool {
        let mut state = self.state.lock().expect("breaker lock");
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *state = State::Probing;
                true
            }
            State::Open { .. } | State::Probing => false,
        }
    }

    /// The provider answered (accepted or refused the message itself): it is healthy.
    pub fn succeeded(&self) {
        *self.state.lock().expect("breaker lock") = State::Closed { failures: 0 };
    }

    /// The provider failed (transient refusal, or no answer).
    pub fn failed(&self, now: Timestamp) {
        let mut state = self.state.lock().expect("breaker lock");
        let open = State::Open {
            until: now + SignedDuration::try_from(self.config.cool_down).unwrap_or_default(),
        };
        *state = match *state {
            State::Closed { failures } if failures + 1 < self.config.failures_to_open => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            State::Closed { .. } | State::Probing => open,
            // A call that started before the breaker opened: the cool-down already runs.
            State::Open { until } => State::Open { until },
        };
    }

    /// The account itself was refused (bad credentials, no permission): rest it at once.
    pub fn trip(&self, now: Timestamp) {
        *self.state.lock().expect("breaker lock") = State::Open {
            until: now + SignedDuration::try_from(self.config.cool_down).unwrap_or_default(),
        };
    }

    /// A call that was chosen but not made (shutdown, a lease about to end): if it was the
    /// probe, let the next caller probe instead.
    pub fn abandon(&self, now: Timestamp) {
        let mut state = self.state.lock().expect("breaker lock");
        if *state == State::Probing {
            *state = State::Open { until: now };
        }
    }

    pub fn health(&self) -> Health {
        match *self.state.lock().expect("breaker lock") {
            State::Closed { .. } => Health::Closed,
            State::Open { until } => Health::Open(until),
            State::Probing => Health::Probing,
        }
    }
}

/// The breakers of every provider, by name.
#[derive(Debug, Default)]
pub struct Breakers {
    config: BreakerConfig,
    /// Grows as organizations' accounts are first used.
    by_name: Mutex<HashMap<String, Arc<Breaker>>>,
}

impl Breakers {
    pub fn new<'a>(config: BreakerConfig, names: impl IntoIterator<Item = &'a str>) -> Breakers {
        Breakers {
            config,
            by_name: Mutex::new(
                names
                    .into_iter()
                    .map(|name| (name.to_owned(), Arc::new(Breaker::new(config))))
                    .collect(),
            ),
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Breaker>> {
        self.by_name
            .lock()
            .expect("breakers lock")
            .get(name)
            .cloned()
    }

    /// The breaker of `name`, created closed on first use.
    pub fn get_or_create(&self, name: &str) -> Arc<Breaker> {
        self.by_name
            .lock()
            .expect("breakers lock")
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Breaker::new(self.config)))
            .clone()
    }

    pub fn config(&self) -> BreakerConfig {
        self.config
    }
}

/// The choice for one send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Send to this provider (an index into the candidates).
    Send(usize),
    /// Every provider of the route is resting; try again at this time.
    Wait(Timestamp),
}

/// Choose among `candidates` for attempt `attempt` (1 for the first): start at the provider
/// whose turn it is — the first for a first attempt, the next one for each retry — and take the
/// first whose breaker lets the message through.
pub fn choose(breakers: &Breakers, candidates: &[String], attempt: u32, now: Timestamp) -> Choice {
    // With one provider there is nowhere to fail over to, and the retry policy's backoff
    // already spaces its attempts out.
    if candidates.len() <= 1 {
        return Choice::Send(0);
    }
    let start = attempt.saturating_sub(1) as usize % candidates.len();
    let mut reopens: Option<Timestamp> = None;
    for step in 0..candidates.len() {
        let index = (start + step) % candidates.len();
        let breaker = breakers.get_or_create(&candidates[index]);
        if breaker.try_acquire(now) {
            return Choice::Send(index);
        }
        let at = match breaker.health() {
            Health::Open(until) => until,
            // A probe is out: look again after a short while.
            Health::Probing | Health::Closed => {
                now + SignedDuration::try_from(breakers.config().cool_down / 10).unwrap_or_default()
            }
        };
        reopens = Some(reopens.map_or(at, |earliest| earliest.min(at)));
    }
    Choice::Wait(reopens.unwrap_or(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn region(code: &str) -> Option<Region> {
        Some(Region::parse(code).unwrap())
    }

    #[test]
    fn the_most_specific_route_wins() {
        let table = RouteTable {
            routes: vec![
                Route {
                    country: region("US"),
                    prefix: None,
                    providers: names(&["us"]),
                },
                Route {
                    country: region("US"),
                    prefix: Some("1415".into()),
                    providers: names(&["sf"]),
                },
                Route {
                    country: None,
                    prefix: Some("14155".into()),
                    providers: names(&["sf5"]),
                },
                Route {
                    country: region("GB"),
                    prefix: None,
                    providers: names(&["gb"]),
                },
            ],
            default: names(&["default"]),
        };
        assert_eq!(table.candidates("+14155550100", region("US")), ["sf5"]);
        assert_eq!(table.candidates("+14150000000", region("US")), ["sf"]);
        assert_eq!(table.candidates("+12125550100", region("US")), ["us"]);
        assert_eq!(table.candidates("+447911123456", region("GB")), ["gb"]);
        assert_eq!(table.candidates("+33612345678", region("FR")), ["default"]);
        // A prefix route tied to a country does not catch another country's numbers.
        assert_eq!(table.candidates("+14150000000", region("CA")), ["default"]);
    }

    #[test]
    fn a_breaker_opens_after_a_run_of_failures_and_probes_after_its_cool_down() {
        let breaker = Breaker::new(BreakerConfig {
            failures_to_open: 3,
            cool_down: Duration::from_secs(30),
        });
        breaker.failed(at(0));
        breaker.failed(at(1));
        breaker.succeeded();
        breaker.failed(at(2));
        breaker.failed(at(3));
        assert!(breaker.try_acquire(at(3)), "a success resets the run");
        breaker.failed(at(4));
        assert_eq!(breaker.health(), Health::Open(at(34)));
        assert!(!breaker.try_acquire(at(33)));
        assert!(
            breaker.try_acquire(at(34)),
            "the first caller after the cool-down probes"
        );
        assert!(!breaker.try_acquire(at(34)), "only one probe at a time");
        breaker.failed(at(35));
        assert_eq!(
            breaker.health(),
            Health::Open(at(65)),
            "a failed probe reopens it"
        );
        assert!(breaker.try_acquire(at(65)));
        breaker.abandon(at(66));
        assert!(
            breaker.try_acquire(at(66)),
            "an abandoned probe passes the turn on"
        );
        breaker.succeeded();
        assert_eq!(breaker.health(), Health::Closed);
        assert!(breaker.try_acquire(at(66)));
    }

    #[test]
    fn retries_fail_over_and_open_breakers_are_stepped_around() {
        let config = BreakerConfig {
            failures_to_open: 1,
            cool_down: Duration::from_secs(30),
        };
        let breakers = Breakers::new(config, ["a", "b", "c"]);
        let route = names(&["a", "b", "c"]);
        assert_eq!(choose(&breakers, &route, 1, at(0)), Choice::Send(0));
        assert_eq!(choose(&breakers, &route, 2, at(0)), Choice::Send(1));
        assert_eq!(choose(&breakers, &route, 4, at(0)), Choice::Send(0));

        breakers.get("a").unwrap().failed(at(0));
        assert_eq!(choose(&breakers, &route, 1, at(1)), Choice::Send(1));
        breakers.get("b").unwrap().failed(at(2));
        breakers.get("c").unwrap().failed(at(3));
        assert_eq!(choose(&breakers, &route, 1, at(4)), Choice::Wait(at(30)));
        // After a's cool-down, one message probes it; the others wait for the next opening.
        assert_eq!(choose(&breakers, &route, 1, at(30)), Choice::Send(0));
        assert_eq!(choose(&breakers, &route, 1, at(30)), Choice::Wait(at(32)));
        breakers.get("a").unwrap().succeeded();
        assert_eq!(choose(&breakers, &route, 1, at(31)), Choice::Send(0));
    }

    #[test]
    fn a_lone_provider_is_used_whatever_its_breaker_says() {
        // (and a provider first seen gets a closed breaker)
        let breakers = Breakers::new(
            BreakerConfig {
                failures_to_open: 1,
                cool_down: Duration::from_secs(30),
            },
            ["a"],
        );
        breakers.get("a").unwrap().failed(at(0));
        assert_eq!(choose(&breakers, &names(&["a"]), 1, at(1)), Choice::Send(0));
        assert_eq!(choose(&breakers, &[], 3, at(0)), Choice::Send(0));
    }
}

#[cfg(test)]
mod stored_route_tests {
    use herald_store::{Route, RouteKey};
    use uuid::Uuid;

    use super::*;

    fn route(country: Option<&str>, prefix: Option<&str>) -> Route {
        Route {
            key: RouteKey {
                country: country.map(|c| Region::parse(c).unwrap()),
                prefix: prefix.map(str::to_owned),
            },
            accounts: vec![Uuid::now_v7()],
            updated_at: jiff::Timestamp::UNIX_EPOCH,
        }
    }

    fn region(code: &str) -> Option<Region> {
        Some(Region::parse(code).unwrap())
    }

    #[test]
    fn the_longest_matching_prefix_wins_then_the_country_then_the_default() {
        let routes = vec![
            route(None, None),
            route(Some("US"), None),
            route(Some("US"), Some("1415")),
            route(Some("US"), Some("14155")),
            route(Some("GB"), None),
        ];
        let pick = |e164, country| resolve(&routes, e164, region(country)).map(|r| &r.key);
        assert_eq!(pick("+14155550100", "US"), Some(&routes[3].key));
        assert_eq!(pick("+14156660100", "US"), Some(&routes[2].key));
        assert_eq!(pick("+12125550100", "US"), Some(&routes[1].key));
        assert_eq!(pick("+447911123456", "GB"), Some(&routes[4].key));
        assert_eq!(pick("+33612345678", "FR"), Some(&routes[0].key));
    }

    #[test]
    fn a_prefix_route_serves_only_numbers_of_its_own_country() {
        // Canada shares calling code 1 with the US: a Canadian number starting 1415… (were
        // there one) must not take the US route.
        let routes = vec![route(Some("US"), Some("1")), route(Some("CA"), None)];
        assert_eq!(
            resolve(&routes, "+16135550100", region("CA")).map(|r| &r.key),
            Some(&routes[1].key)
        );
    }

    #[test]
    fn without_a_matching_route_or_default_there_is_no_route() {
        let routes = vec![route(Some("US"), None)];
        assert!(resolve(&routes, "+447911123456", region("GB")).is_none());
        assert!(resolve(&routes, "+80012345678", None).is_none());
        assert!(resolve(&[], "+14155550100", region("US")).is_none());
        let with_default = vec![route(Some("US"), None), route(None, None)];
        assert_eq!(
            resolve(&with_default, "+80012345678", None).map(|r| &r.key),
            Some(&RouteKey::DEFAULT)
        );
    }
}
