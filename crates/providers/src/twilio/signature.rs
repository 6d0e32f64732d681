//! Twilio's webhook signatures (`X-Twilio-Signature`): base64 of an HMAC, keyed with the
//! account's auth token, over the URL Twilio called followed by every form parameter, sorted
//! by name, as name then value with no separators.
//!
//! The HMAC is SHA-1 unless the request carries `X-Twilio-Webhooks-Signature-Settings` naming
//! HMAC-SHA256, which Twilio's webhook settings can choose; the signed string is the same.
//!
//! Twilio computes the URL as it saw it, so behind a reverse proxy the URL must be rebuilt from
//! Herald's configured public base URL, not from the request. Like Twilio's own libraries, a
//! URL is accepted with or without its scheme's default port, since proxies add or drop it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The header in which Twilio names the signing algorithm when it is not the default.
pub const SETTINGS_HEADER: &str = "x-twilio-webhooks-signature-settings";

/// The HMAC behind a signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
}

impl Algorithm {
    /// The algorithm a request's signature settings header names: SHA-1 when there is no
    /// header, `None` when the header names something Herald cannot check, so such a request
    /// is refused rather than checked the wrong way. The header is read loosely
    /// (`algorithm=HMAC-SHA256`, `HMAC-SHA256`, or a JSON object with an `algorithm` field all
    /// name SHA-256) because only the algorithm in it matters here.
    pub fn from_settings(header: Option<&str>) -> Option<Algorithm> {
        let Some(header) = header else {
            return Some(Algorithm::Sha1);
        };
        let normalized: String = header
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_lowercase();
        if normalized.contains("sha256") {
            Some(Algorithm::Sha256)
        } else if normalized.contains("sha1") {
            Some(Algorithm::Sha1)
        } else {
            None
        }
    }
}

/// The string Twilio signs: the URL, then each parameter's name and value, sorted.
fn feed(mac: &mut impl Mac, url: &str, params: &[(String, String)]) {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
}

/// The signature Twilio sends for a request to `url` with form `params`, with `algorithm`.
pub fn compute_with(
    algorithm: Algorithm,
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
) -> String {
    let key = auth_token.as_bytes();
    match algorithm {
        Algorithm::Sha1 => {
            let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key length");
            feed(&mut mac, url, params);
            STANDARD.encode(mac.finalize().into_bytes())
        }
        Algorithm::Sha256 => {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            feed(&mut mac, url, params);
            STANDARD.encode(mac.finalize().into_bytes())
        }
    }
}

/// The (SHA-1) signature Twilio sends for a request to `url` with form `params`.
pub fn compute(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    compute_with(Algorithm::Sha1, auth_token, url, params)
}

/// Whether `signature` is Twilio's for this request under `algorithm`, compared in constant
/// time.
pub fn is_valid_with(
    algorithm: Algorithm,
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    url_variants(url).iter().any(|candidate| {
        let expected = compute_with(algorithm, auth_token, candidate, params);
        bool::from(expected.as_bytes().ct_eq(signature.as_bytes()))
    })
}

/// Whether `signature` is Twilio's (SHA-1) signature for this request.
pub fn is_valid(auth_token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    is_valid_with(Algorithm::Sha1, auth_token, url, params, signature)
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
    fn the_settings_header_chooses_the_algorithm() {
        assert_eq!(Algorithm::from_settings(None), Some(Algorithm::Sha1));
        for header in [
            "algorithm=HMAC-SHA256",
            "HMAC-SHA256",
            r#"{"algorithm":"HMAC_SHA256"}"#,
        ] {
            assert_eq!(
                Algorithm::from_settings(Some(header)),
                Some(Algorithm::Sha256),
                "{header}"
            );
        }
        assert_eq!(
            Algorithm::from_settings(Some("algorithm=HMAC-SHA1")),
            Some(Algorithm::Sha1)
        );
        assert_eq!(Algorithm::from_settings(Some("algorithm=ED25519")), None);
    }

    #[test]
    fn a_sha256_signature_validates_only_as_sha256() {
        let p = params(&[("MessageSid", "SM1"), ("MessageStatus", "sent")]);
        let url = "https://h.example/hooks/twilio/status";
        let sha256 = compute_with(Algorithm::Sha256, "tok", url, &p);
        // 32 bytes of HMAC-SHA256, base64.
        assert_eq!(sha256.len(), 44);
        assert!(is_valid_with(Algorithm::Sha256, "tok", url, &p, &sha256));
        assert!(!is_valid_with(Algorithm::Sha1, "tok", url, &p, &sha256));
        assert!(!is_valid_with(Algorithm::Sha256, "tok2", url, &p, &sha256));
        let sha1 = compute("tok", url, &p);
        assert!(!is_valid_with(Algorithm::Sha256, "tok", url, &p, &sha1));
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
