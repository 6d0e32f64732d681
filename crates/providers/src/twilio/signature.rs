//! Twilio's webhook signatures (`X-Twilio-Signature`): base64 of HMAC-SHA1, keyed with the
//! account's auth token, over the URL Twilio called followed by every form parameter, sorted
//! by name, as name then value with no separators.
//!
//! Twilio computes the URL as it saw it, so behind a reverse proxy the URL must be rebuilt from
//! Herald's configured public base URL, not from the request. Like Twilio's own libraries, a
//! URL is accepted with or without its scheme's default port, since proxies add or drop it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// The signature Twilio sends for a request to `url` with form `params`.
pub fn compute(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac =
        Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes any key length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `signature` is Twilio's for this request, comparing in constant time.
pub fn is_valid(auth_token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    url_variants(url).iter().any(|candidate| {
        let expected = compute(auth_token, candidate, params);
        bool::from(expected.as_bytes().ct_eq(signature.as_bytes()))
    })
}

/// The URL as given, and with its default port added or removed.
fn url_variants(url: &str) -> Vec<String> {
    let mut variants = vec![url.to_owned()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return variants;
    };
    let default_port = match scheme {
        "https" => "443",
        "http" => "80",
        _ => return variants,
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((user, host)) => (format!("{user}@"), host),
        None => (String::new(), authority),
    };
    // An IPv6 literal keeps its colons inside brackets; the port, if any, follows `]:`.
    let (host, port) = match hostport.rfind(':') {
        Some(i) if !hostport[i..].contains(']') => (&hostport[..i], Some(&hostport[i + 1..])),
        _ => (hostport, None),
    };
    match port {
        Some(port) if port == default_port => {
            variants.push(format!("{scheme}://{userinfo}{host}{tail}"))
        }
        None => variants.push(format!("{scheme}://{userinfo}{host}:{default_port}{tail}")),
        Some(_) => {}
    }
    variants
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn default_ports_are_added_and_removed() {
        assert_eq!(
            url_variants("https://a.example/x?y=1"),
            ["https://a.example/x?y=1", "https://a.example:443/x?y=1"]
        );
        assert_eq!(
            url_variants("https://a.example:443/x"),
            ["https://a.example:443/x", "https://a.example/x"]
        );
        assert_eq!(
            url_variants("http://a.example:8080/x"),
            ["http://a.example:8080/x"]
        );
        assert_eq!(
            url_variants("http://[::1]/x"),
            ["http://[::1]/x", "http://[::1]:80/x"]
        );
    }

    #[test]
    fn a_signature_over_the_url_with_its_default_port_validates_without_it() {
        let p = params(&[("MessageStatus", "delivered")]);
        let signed = compute("tok", "https://h.example:443/hooks/twilio/status", &p);
        assert!(is_valid(
            "tok",
            "https://h.example/hooks/twilio/status",
            &p,
            &signed
        ));
        assert!(!is_valid(
            "tok",
            "https://h.example:8443/hooks/twilio/status",
            &p,
            &signed
        ));
    }

    #[test]
    fn parameter_order_does_not_matter_but_every_parameter_counts() {
        let a = params(&[("b", "2"), ("a", "1")]);
        let b = params(&[("a", "1"), ("b", "2")]);
        assert_eq!(
            compute("t", "https://x/", &a),
            compute("t", "https://x/", &b)
        );
        let c = params(&[("a", "1"), ("b", "3")]);
        assert_ne!(
            compute("t", "https://x/", &a),
            compute("t", "https://x/", &c)
        );
    }
}
