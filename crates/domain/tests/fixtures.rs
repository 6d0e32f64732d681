//! The reference vectors shared by every Herald implementation, checked one by one: phone
//! numbers as Google's libphonenumber reads them, and bodies as Twilio's segment calculator
//! counts them. The files in `tests/fixtures/` are copies of `shared/fixtures/`, kept here so the
//! crate tests on its own.

use herald_domain::encoding::{Encoding, analyze, smart_encode, split};
use herald_domain::phone::{PhoneError, PhoneNumber, Region};
use serde_json::Value;

fn load(name: &str) -> Vec<Value> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    json["vectors"]
        .as_array()
        .expect("a `vectors` array")
        .clone()
}

fn encoding(name: &Value) -> Encoding {
    serde_json::from_value(name.clone()).expect("an encoding name")
}

#[test]
fn every_phone_vector_parses_as_libphonenumber_says() {
    let vectors = load("phone_vectors.json");
    assert!(!vectors.is_empty());
    for vector in &vectors {
        let input = vector["input"].as_str().unwrap();
        let default_region = vector["default_region"]
            .as_str()
            .map(|code| Region::parse(code).unwrap());
        let result = PhoneNumber::parse(input, default_region);
        let accepted = vector["parsed"] == true && vector["valid"] == true;
        if !accepted {
            assert!(result.is_err(), "{input:?} must be refused, got {result:?}");
            continue;
        }
        let number = result.unwrap_or_else(|e| panic!("{input:?} must be accepted: {e}"));
        assert_eq!(number.e164(), vector["e164"], "{input:?}");
        assert_eq!(
            number.region().map(|r| r.as_str().to_owned()),
            vector["region"].as_str().map(str::to_owned),
            "{input:?}"
        );
        assert_eq!(
            u64::from(number.country_code()),
            vector["country_code"].as_u64().unwrap(),
            "{input:?}"
        );
    }
}

#[test]
fn unparsable_phone_vectors_are_refused_for_the_right_reason() {
    let reason = |input: &str| PhoneNumber::parse(input, None).unwrap_err();
    assert_eq!(reason("abc"), PhoneError::NotANumber);
    assert_eq!(reason("+999 1234567"), PhoneError::InvalidCountryCode);
    assert_eq!(reason("+1 555"), PhoneError::TooShort);
    let us = Region::parse("US").ok();
    assert_eq!(
        PhoneNumber::parse("12345", us).unwrap_err(),
        PhoneError::TooShort
    );
}

#[test]
fn every_segment_vector_counts_as_twilio_does() {
    let vectors = load("sms_segment_vectors.json");
    assert!(!vectors.is_empty());
    for vector in &vectors {
        let text = vector["text"].as_str().unwrap();
        let label: String = text.chars().take(24).collect();

        let info = analyze(text);
        assert_eq!(info.encoding, encoding(&vector["encoding"]), "{label:?}");
        assert_eq!(
            u64::from(info.segments),
            vector["segments"].as_u64().unwrap(),
            "{label:?}"
        );
        assert_eq!(split(text).len() as u32, info.segments, "{label:?}");

        let smart = analyze(&smart_encode(text));
        let expected = &vector["smart_encoding"];
        assert_eq!(
            smart.encoding,
            encoding(&expected["encoding"]),
            "{label:?} smart"
        );
        assert_eq!(
            u64::from(smart.segments),
            expected["segments"].as_u64().unwrap(),
            "{label:?} smart"
        );
    }
}
