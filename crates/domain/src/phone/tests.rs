use std::sync::LazyLock;

use proptest::prelude::*;

use super::*;

fn region(code: &str) -> Region {
    Region::parse(code).unwrap()
}

#[test]
fn a_number_from_a_crown_dependency_belongs_to_it_not_to_the_uk() {
    let number = PhoneNumber::parse("07911 123456", Some(region("GB"))).unwrap();
    assert_eq!(number.e164(), "+447911123456");
    assert_eq!(number.region(), Some(region("GG")));
    assert_eq!(number.country_code(), 44);
}

#[test]
fn a_stored_number_is_rebuilt_as_it_was_parsed() {
    for (input, default) in [
        ("(415) 555-0100", "US"),
        ("07911 123456", "GB"),
        ("+33 6 12 34 56 78", "US"),
        ("+1 204 555 0100", "US"),
    ] {
        let parsed = PhoneNumber::parse(input, Some(region(default))).unwrap();
        let stored = PhoneNumber::stored(parsed.e164(), parsed.region());
        assert_eq!(stored.as_ref(), Some(&parsed), "{input}");
    }
    // Without a region (a non-geographic number) it must be parsed.
    let freephone = PhoneNumber::parse("+800 1234 5678", None).unwrap();
    assert_eq!(
        PhoneNumber::stored(freephone.e164(), freephone.region()),
        None
    );
}

#[test]
fn a_non_geographic_number_has_no_region() {
    let number = PhoneNumber::parse("+800 1234 5678", None).unwrap();
    assert_eq!(number.e164(), "+80012345678");
    assert_eq!(number.region(), None);
    assert_eq!(number.country_code(), 800);
}

#[test]
fn international_input_ignores_the_default_region() {
    // A French default must not strip the 0 that belongs to a Milan landline.
    let milan = PhoneNumber::parse("+39 02 1234 5678", Some(region("FR"))).unwrap();
    assert_eq!(milan.e164(), "+390212345678");
    assert_eq!(milan.region(), Some(region("IT")));
}

#[test]
fn an_international_prefix_is_read_like_a_plus() {
    let cases = [
        ("011 49 1512 3456789", "US", "+4915123456789", "DE"),
        ("00 44 7911 123456", "FR", "+447911123456", "GG"),
        ("00 39 02 1234 5678", "FR", "+390212345678", "IT"),
        ("010 1 415 867 5310", "JP", "+14158675310", "US"),
    ];
    for (input, default_region, e164, number_region) in cases {
        let number = PhoneNumber::parse(input, Some(region(default_region))).unwrap();
        assert_eq!(number.e164(), e164, "{input:?}");
        assert_eq!(number.region(), Some(region(number_region)), "{input:?}");
    }
}

#[test]
fn national_numbers_that_begin_with_the_calling_code_keep_those_digits() {
    let cases = [
        ("393 123 4567", "IT", "+393931234567"),
        ("47 12 34 56", "NO", "+4747123456"),
        ("91987 65432", "IN", "+919198765432"),
        ("6512 3456", "SG", "+6565123456"),
    ];
    for (input, default_region, e164) in cases {
        let number = PhoneNumber::parse(input, Some(region(default_region))).unwrap();
        assert_eq!(number.e164(), e164, "{input:?}");
    }
    // Where the digits only make sense as a calling code, it is still taken as one.
    let us = PhoneNumber::parse("1 415 867 5310", Some(region("US"))).unwrap();
    assert_eq!(us.e164(), "+14158675310");
}

#[test]
fn national_input_without_a_default_region_is_refused_as_such() {
    assert_eq!(
        PhoneNumber::parse("415 867 5310", None),
        Err(PhoneError::MissingRegion)
    );
}

#[test]
fn each_kind_of_bad_input_gets_its_own_reason() {
    let us = Some(region("US"));
    let cases = [
        ("abc", None, PhoneError::NotANumber),
        ("", None, PhoneError::NotANumber),
        ("+999 1234567", None, PhoneError::InvalidCountryCode),
        ("+1 555", None, PhoneError::TooShort),
        ("12345", us, PhoneError::TooShort),
        ("867 5310", us, PhoneError::TooShort),
        ("+1 415 867 53101", None, PhoneError::TooLong),
        ("+1 123 456 7890", None, PhoneError::InvalidForRegion),
        ("+44 1", None, PhoneError::TooShort),
    ];
    for (input, default_region, expected) in cases {
        assert_eq!(
            PhoneNumber::parse(input, default_region),
            Err(expected.clone()),
            "{input:?}"
        );
    }
    let huge = "1".repeat(MAX_INPUT_LEN + 1);
    assert_eq!(PhoneNumber::parse(&huge, us), Err(PhoneError::TooLong));
}

#[test]
fn error_codes_are_stable_snake_case() {
    assert_eq!(PhoneError::InvalidForRegion.code(), "invalid_for_region");
    assert_eq!(PhoneError::MissingRegion.code(), "missing_region");
    assert_eq!(
        PhoneError::TooShort.to_string(),
        "too short for its country"
    );
}

#[test]
fn regions_are_read_in_any_case_and_must_be_known() {
    assert_eq!(region("gg").as_str(), "GG");
    assert_eq!("us".parse::<Region>().unwrap().to_string(), "US");
    for bad in ["", "U", "USA", "ZZ", "001", "1A", "é"] {
        assert_eq!(
            Region::parse(bad),
            Err(PhoneError::UnknownRegion),
            "{bad:?}"
        );
    }
}

#[test]
fn regions_serialize_as_their_code_and_deserialize_validating() {
    assert_eq!(serde_json::to_string(&region("GG")).unwrap(), "\"GG\"");
    assert_eq!(
        serde_json::from_str::<Region>("\"fr\"").unwrap(),
        region("FR")
    );
    assert!(serde_json::from_str::<Region>("\"XX\"").is_err());
}

#[test]
fn numbers_serialize_as_e164_and_deserialize_validating() {
    let number = PhoneNumber::parse("+1 415 867 5310", None).unwrap();
    let json = serde_json::to_string(&number).unwrap();
    assert_eq!(json, "\"+14158675310\"");
    assert_eq!(serde_json::from_str::<PhoneNumber>(&json).unwrap(), number);
    assert!(serde_json::from_str::<PhoneNumber>("\"+1 555\"").is_err());
}

#[test]
fn masking_hides_the_last_four_characters() {
    assert_eq!(mask_phone("+14155550100"), "+1415555****");
    assert_eq!(mask_phone("1234"), "****");
    assert_eq!(mask_phone("12"), "**");
    assert_eq!(mask_phone(""), "");
    assert_eq!(mask_phone("+٤٤١٢٣٤٥"), "+٤٤١****");
    let number = PhoneNumber::parse("+1 415 867 5310", None).unwrap();
    assert_eq!(number.masked(), "+1415867****");
    assert_eq!(number.to_string(), "+14158675310");
}

/// Example national numbers from the metadata itself, so the round trip covers every
/// region and number type libphonenumber knows rather than a hand-picked few.
static EXAMPLES: LazyLock<Vec<(Region, String)>> = LazyLock::new(|| {
    let mut examples = Vec::new();
    for meta in DATABASE.iter() {
        let Ok(region) = Region::parse(meta.id()) else {
            continue;
        };
        for descriptor in number_types(meta) {
            if let Some(example) = descriptor.example() {
                examples.push((region, example.to_owned()));
            }
        }
    }
    examples.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
    examples
});

/// Regions whose international prefix the metadata gives as plain digits that nothing else
/// can follow, so `<prefix> <calling code> <number>` is unambiguous there.
const DIALLING_FROM: [(&str, &str); 6] = [
    ("US", "011"),
    ("GB", "00"),
    ("FR", "00"),
    ("DE", "00"),
    ("JP", "010"),
    ("IN", "00"),
];

proptest! {
    #[test]
    fn parsing_a_numbers_own_e164_gives_the_same_number(
        pick in any::<prop::sample::Index>(),
        tail in "[0-9]{0,3}",
        (from, prefix) in prop::sample::select(&DIALLING_FROM[..]),
    ) {
        let (default_region, example) = &EXAMPLES[pick.index(EXAMPLES.len())];
        // Varying the last digits reaches numbers beyond the examples, valid or not.
        let cut = example.len().saturating_sub(tail.len());
        let input = format!("{}{}", &example[..cut], tail);
        if let Ok(number) = PhoneNumber::parse(&input, Some(*default_region)) {
            let again = PhoneNumber::parse(number.e164(), None);
            prop_assert_eq!(again.as_ref(), Ok(&number));
            let elsewhere = PhoneNumber::parse(number.e164(), Some(region(from)));
            prop_assert_eq!(elsewhere.as_ref(), Ok(&number));
            let code = number.country_code().to_string();
            let dialled = format!("{prefix} {code} {}", &number.e164()[1 + code.len()..]);
            let from_abroad = PhoneNumber::parse(&dialled, Some(region(from)));
            prop_assert_eq!(from_abroad.as_ref(), Ok(&number), "{}", dialled);
        }
    }

    #[test]
    fn parsing_never_panics(input in "\\PC{0,40}", pick in 0usize..4) {
        let default_region = [None, Some(region("US")), Some(region("GB")), Some(region("DE"))][pick];
        let _ = PhoneNumber::parse(&input, default_region);
    }

    #[test]
    fn parsing_phone_shaped_noise_never_panics(input in "[+0-9 ()./xext-]{0,30}", pick in 0usize..3) {
        let default_region = [None, Some(region("US")), Some(region("NZ"))][pick];
        if let Ok(number) = PhoneNumber::parse(&input, default_region) {
            prop_assert!(number.e164().starts_with('+'));
            prop_assert!(number.e164()[1..].bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn masking_keeps_the_length_and_never_reveals_the_last_four(input in "\\PC{0,20}") {
        let masked = mask_phone(&input);
        let original: Vec<char> = input.chars().collect();
        let hidden: Vec<char> = masked.chars().collect();
        prop_assert_eq!(hidden.len(), original.len());
        let keep = original.len().saturating_sub(4);
        prop_assert_eq!(&hidden[..keep], &original[..keep]);
        prop_assert!(hidden[keep..].iter().all(|&c| c == '*'));
    }
}
