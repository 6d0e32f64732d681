//! Choosing an organization's route for a recipient: the most specific route wins. A route for
//! the recipient's country with the longest prefix its number starts with comes first, then
//! the country's route without a prefix, then the default route.
//!
//! This is a pure function over the routes as stored; skipping disabled accounts, failover and
//! circuit breaking belong to whoever walks the chosen route's accounts.

use herald_domain::phone::Region;
use herald_store::Route;

/// The route for a recipient `e164` (`+14155550100`) in `country` (the number's own region;
/// `None` for non-geographic numbers, which only the default route serves).
pub fn resolve<'a>(routes: &'a [Route], e164: &str, country: Option<Region>) -> Option<&'a Route> {
    let digits = e164.strip_prefix('+').unwrap_or(e164);
    let in_country = |route: &&Route| country.is_some() && route.key.country == country;
    let by_prefix = routes
        .iter()
        .filter(in_country)
        .filter_map(|route| {
            let prefix = route.key.prefix.as_deref()?;
            digits.starts_with(prefix).then_some((prefix.len(), route))
        })
        .max_by_key(|(length, _)| *length)
        .map(|(_, route)| route);
    by_prefix
        .or_else(|| {
            routes
                .iter()
                .filter(in_country)
                .find(|route| route.key.prefix.is_none())
        })
        .or_else(|| {
            routes
                .iter()
                .find(|route| route.key.country.is_none() && route.key.prefix.is_none())
        })
}

#[cfg(test)]
mod tests {
    use herald_store::RouteKey;
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
