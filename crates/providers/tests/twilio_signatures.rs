//! Every reference signature computed with Twilio's own Python library validates, and any change
//! to the URL, a parameter or the token does not.

use herald_providers::twilio::signature;
use serde_json::Value;

fn vectors() -> Vec<Value> {
    parse(include_str!("fixtures/twilio_signature_vectors.json"))
}

/// The same inputs signed with HMAC-SHA256, for the variant Twilio's webhook settings choose.
fn sha256_vectors() -> Vec<Value> {
    parse(include_str!(
        "fixtures/twilio_signature_sha256_vectors.json"
    ))
}

fn parse(text: &str) -> Vec<Value> {
    let file: Value = serde_json::from_str(text).unwrap();
    file["vectors"].as_array().unwrap().clone()
}

fn params(vector: &Value) -> Vec<(String, String)> {
    vector["params"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn every_reference_vector_validates() {
    for vector in vectors() {
        let token = vector["auth_token"].as_str().unwrap();
        let url = vector["url"].as_str().unwrap();
        let expected = vector["signature"].as_str().unwrap();
        assert_eq!(
            signature::compute(token, url, &params(&vector)),
            expected,
            "{url}"
        );
        assert!(
            signature::is_valid(token, url, &params(&vector), expected),
            "{url}"
        );
    }
}

#[test]
fn any_change_breaks_the_signature() {
    for vector in vectors() {
        let token = vector["auth_token"].as_str().unwrap();
        let url = vector["url"].as_str().unwrap();
        let good = vector["signature"].as_str().unwrap();
        let params = params(&vector);
        assert!(
            !signature::is_valid(&format!("{token}x"), url, &params, good),
            "token"
        );
        assert!(
            !signature::is_valid(token, &format!("{url}x"), &params, good),
            "url"
        );
        assert!(
            !signature::is_valid(token, &url.replacen("https", "http", 1), &params, good),
            "scheme"
        );
        for i in 0..params.len() {
            let mut changed = params.clone();
            changed[i].1.push('!');
            assert!(
                !signature::is_valid(token, url, &changed, good),
                "value of {}",
                params[i].0
            );
            let mut fewer = params.clone();
            fewer.remove(i);
            assert!(
                !signature::is_valid(token, url, &fewer, good),
                "without {}",
                params[i].0
            );
        }
        let mut more = params.clone();
        more.push(("Extra".into(), "1".into()));
        assert!(
            !signature::is_valid(token, url, &more, good),
            "extra parameter"
        );
        assert!(
            !signature::is_valid(token, url, &params, ""),
            "empty signature"
        );
    }
}

#[test]
fn every_sha256_reference_vector_validates_and_any_change_breaks_it() {
    use signature::Algorithm::{Sha1, Sha256};
    for vector in sha256_vectors() {
        let token = vector["auth_token"].as_str().unwrap();
        let url = vector["url"].as_str().unwrap();
        let good = vector["signature"].as_str().unwrap();
        let params = params(&vector);
        assert_eq!(
            signature::compute_with(Sha256, token, url, &params),
            good,
            "{url}"
        );
        assert!(signature::is_valid_with(Sha256, token, url, &params, good));
        assert!(!signature::is_valid_with(Sha1, token, url, &params, good));
        assert!(!signature::is_valid_with(
            Sha256,
            &format!("{token}x"),
            url,
            &params,
            good
        ));
        assert!(!signature::is_valid_with(
            Sha256,
            token,
            &format!("{url}x"),
            &params,
            good
        ));
        for i in 0..params.len() {
            let mut changed = params.clone();
            changed[i].1.push('!');
            assert!(!signature::is_valid_with(
                Sha256, token, url, &changed, good
            ));
        }
    }
}
