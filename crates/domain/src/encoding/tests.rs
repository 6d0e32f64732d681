use std::sync::LazyLock;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

use super::*;

fn info(encoding: Encoding, segments: u32, units: u32, characters: u32) -> SegmentInfo {
    SegmentInfo {
        encoding,
        segments,
        units,
        characters,
    }
}

/// Units `part` costs when the whole body goes with `encoding`.
fn units_of(part: &str, encoding: Encoding) -> u32 {
    part.chars().map(|c| encoding.units(c)).sum()
}

#[test]
fn an_empty_body_is_one_empty_gsm_segment() {
    assert_eq!(analyze(""), info(Encoding::Gsm7, 1, 0, 0));
    assert_eq!(split(""), vec![""]);
}

#[test]
fn a_gsm_body_fills_one_segment_then_splits_by_153() {
    let full = "a".repeat(160);
    assert_eq!(analyze(&full), info(Encoding::Gsm7, 1, 160, 160));
    let over = "a".repeat(161);
    assert_eq!(analyze(&over).segments, 2);
    let parts = split(&over);
    assert_eq!((parts[0].len(), parts[1].len()), (153, 8));
}

#[test]
fn extension_characters_cost_two_septets() {
    assert_eq!(analyze("[€]"), info(Encoding::Gsm7, 1, 6, 3));
    assert_eq!(analyze(&"€".repeat(80)).segments, 1);
    assert_eq!(analyze(&"€".repeat(81)).segments, 2);
}

#[test]
fn an_extension_character_that_would_straddle_moves_to_the_next_part() {
    let body = format!("{}€{}", "a".repeat(152), "a".repeat(10));
    let parts = split(&body);
    assert_eq!(parts, vec!["a".repeat(152), format!("€{}", "a".repeat(10))]);
    // Counting septets alone would say 306 / 153 = 2 segments; the escape sequence that
    // cannot straddle the first boundary pushes one septet into a third.
    let tight = format!("{}€{}", "a".repeat(152), "a".repeat(152));
    assert_eq!(analyze(&tight).units, 306);
    assert_eq!(analyze(&tight).segments, 3);
    assert_eq!(split(&tight).len(), 3);
}

#[test]
fn one_character_outside_gsm_makes_the_whole_body_ucs2() {
    assert_eq!(analyze("Hello ç"), info(Encoding::Ucs2, 1, 7, 7));
    // In UCS-2 an extension character is a single UTF-16 unit like any other.
    assert_eq!(analyze("€ç"), info(Encoding::Ucs2, 1, 2, 2));
    assert_eq!(analyze("a\tb").encoding, Encoding::Ucs2);
    assert_eq!(analyze("`").encoding, Encoding::Ucs2);
}

#[test]
fn characters_outside_the_bmp_cost_two_utf16_units() {
    assert_eq!(analyze("😀a"), info(Encoding::Ucs2, 1, 3, 2));
    let body = "😀".repeat(36);
    assert_eq!(analyze(&body), info(Encoding::Ucs2, 2, 72, 36));
}

#[test]
fn a_surrogate_pair_that_would_straddle_moves_to_the_next_part() {
    let body = format!("{}😀{}", "ç".repeat(66), "ç".repeat(10));
    let parts = split(&body);
    assert_eq!(parts, vec!["ç".repeat(66), format!("😀{}", "ç".repeat(10))]);
}

#[test]
fn truncation_keeps_whole_characters_within_the_budget() {
    let body = "a".repeat(200);
    assert_eq!(truncate_to_segments(&body, 1), &body[..160]);
    assert_eq!(truncate_to_segments(&body, 2), body);
    assert_eq!(truncate_to_segments(&body, 0), "");
    let euros = format!("{}€", "a".repeat(159));
    assert_eq!(truncate_to_segments(&euros, 1), &euros[..159]);
}

#[test]
fn truncation_that_drops_the_only_emoji_lets_the_rest_go_as_gsm() {
    let body = format!("{}😀", "a".repeat(300));
    assert_eq!(analyze(&body).segments, 5);
    assert_eq!(truncate_to_segments(&body, 2), "a".repeat(300));
}

#[test]
fn truncation_of_a_body_that_starts_ucs2_counts_in_utf16() {
    let body = format!("😀{}", "a".repeat(300));
    let kept = truncate_to_segments(&body, 2);
    assert_eq!(kept, format!("😀{}", "a".repeat(132)));
    assert_eq!(analyze(kept), info(Encoding::Ucs2, 2, 134, 133));
}

#[test]
fn preparing_refuses_empty_and_blank_bodies() {
    for body in ["", "   ", "\n\t"] {
        assert_eq!(
            prepare_body(body, BodyOptions::default()),
            Err(BodyError::Empty)
        );
    }
    let invisible = BodyOptions {
        smart_encoding: true,
        ..BodyOptions::default()
    };
    assert_eq!(prepare_body("\u{200B}", invisible), Err(BodyError::Empty));
}

#[test]
fn preparing_enforces_max_segments() {
    let body = "a".repeat(200);
    let strict = BodyOptions {
        max_segments: Some(1),
        ..BodyOptions::default()
    };
    let err = prepare_body(&body, strict).unwrap_err();
    assert_eq!(
        err,
        BodyError::TooManySegments {
            segments: 2,
            max: 1
        }
    );
    assert_eq!(err.code(), "too_many_segments");
    assert_eq!(
        err.to_string(),
        "body needs 2 segments, more than max_segments 1"
    );

    let lenient = BodyOptions {
        truncate: true,
        ..strict
    };
    let prepared = prepare_body(&body, lenient).unwrap();
    assert_eq!(prepared.text, "a".repeat(160));
    assert_eq!(prepared.info, info(Encoding::Gsm7, 1, 160, 160));
    assert!(prepared.truncated);

    let zero = BodyOptions {
        max_segments: Some(0),
        ..BodyOptions::default()
    };
    assert_eq!(prepare_body("hi", zero), Err(BodyError::InvalidMaxSegments));
    assert_eq!(BodyError::InvalidMaxSegments.code(), "invalid_max_segments");
    assert_eq!(BodyError::Empty.code(), "empty_body");
}

#[test]
fn preparing_with_smart_encoding_can_turn_ucs2_into_gsm() {
    let body = "It’s “done” — thanks…";
    let plain = prepare_body(body, BodyOptions::default()).unwrap();
    assert_eq!(plain.info.encoding, Encoding::Ucs2);
    assert!(!plain.truncated);
    let smart = BodyOptions {
        smart_encoding: true,
        max_segments: Some(1),
        truncate: false,
    };
    let prepared = prepare_body(body, smart).unwrap();
    assert_eq!(prepared.text, "It's \"done\" - thanks...");
    assert_eq!(prepared.info.encoding, Encoding::Gsm7);
}

#[test]
fn encodings_use_their_standard_names() {
    assert_eq!(Encoding::Gsm7.as_str(), "GSM-7");
    assert_eq!(Encoding::Ucs2.to_string(), "UCS-2");
    assert_eq!(serde_json::to_string(&Encoding::Gsm7).unwrap(), "\"GSM-7\"");
    assert_eq!(
        serde_json::from_str::<Encoding>("\"UCS-2\"").unwrap(),
        Encoding::Ucs2
    );
}

/// Every character Smart Encoding replaces; all of them are in the BMP.
static SMART_KEYS: LazyLock<Vec<char>> = LazyLock::new(|| {
    (0..=0xFFFF)
        .filter_map(char::from_u32)
        .filter(|&c| smart::replacement(c).is_some())
        .collect()
});

fn basic_char() -> impl Strategy<Value = char> {
    select(&gsm::BASIC[..])
}

fn extension_char() -> impl Strategy<Value = char> {
    select(&gsm::EXTENSION[..])
}

fn gsm_char() -> impl Strategy<Value = char> {
    prop_oneof![4 => basic_char(), 1 => extension_char()]
}

fn bmp_char() -> impl Strategy<Value = char> {
    prop_oneof![
        proptest::char::range('\u{80}', '\u{D7FF}'),
        proptest::char::range('\u{E000}', '\u{FFFF}'),
    ]
}

fn astral_char() -> impl Strategy<Value = char> {
    proptest::char::range('\u{1F300}', '\u{1FAFF}')
}

fn smart_key() -> impl Strategy<Value = char> {
    select(SMART_KEYS.clone())
}

/// Bodies of every shape that matters: pure GSM-7 with extension characters, mostly-GSM bodies
/// tipped into UCS-2 by a few other characters, and emoji-heavy ones. Lengths reach several
/// segments so boundaries are exercised.
fn body() -> impl Strategy<Value = String> {
    let mixed = prop_oneof![
        12 => gsm_char(),
        2 => bmp_char(),
        2 => astral_char(),
        // ASCII that GSM-7 lacks, which takes the ASCII fast path to UCS-2.
        1 => select(&['`', '\t', '\u{1}'][..]),
    ];
    let emoji_heavy = prop_oneof![1 => basic_char(), 1 => astral_char(), 1 => extension_char()];
    prop_oneof![
        vec(gsm_char(), 0..500),
        vec(mixed, 0..300),
        vec(emoji_heavy, 0..200),
    ]
    .prop_map(|chars| chars.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn split_and_analyze_agree(body in body()) {
        let info = analyze(&body);
        let parts = split(&body);
        prop_assert_eq!(parts.len() as u32, info.segments);
        prop_assert_eq!(parts.concat(), body.clone());
        prop_assert_eq!(info.characters as usize, body.chars().count());
        prop_assert_eq!(info.units, units_of(&body, info.encoding));
        let gsm = body.chars().all(|c| gsm::septets(c) > 0);
        prop_assert_eq!(info.encoding == Encoding::Gsm7, gsm);
    }

    #[test]
    fn parts_respect_their_limits_and_are_full(body in body()) {
        let info = analyze(&body);
        let parts = split(&body);
        let capacity = if parts.len() == 1 {
            info.encoding.single_segment_units()
        } else {
            info.encoding.multipart_segment_units()
        };
        for part in &parts {
            prop_assert!(units_of(part, info.encoding) <= capacity);
        }
        // A part only ends early when its successor's first character (an escape sequence or
        // a surrogate pair) would not have fitted whole.
        for pair in parts.windows(2) {
            let next = pair[1].chars().next().unwrap();
            let used = units_of(pair[0], info.encoding);
            prop_assert!(used + info.encoding.units(next) > capacity);
        }
    }

    #[test]
    fn truncation_gives_the_longest_prefix_within_the_budget(
        body in body(),
        max in 1u32..5,
    ) {
        let kept = truncate_to_segments(&body, max);
        prop_assert!(body.starts_with(kept));
        prop_assert!(analyze(kept).segments <= max);
        if let Some(next) = body[kept.len()..].chars().next() {
            let longer = &body[..kept.len() + next.len_utf8()];
            prop_assert!(analyze(longer).segments > max);
        } else {
            prop_assert!(analyze(&body).segments <= max);
        }
    }

    #[test]
    fn prepared_bodies_never_exceed_max_segments(body in body(), max in 1u32..4) {
        let options = BodyOptions {
            smart_encoding: true,
            max_segments: Some(max),
            truncate: true,
        };
        if let Ok(prepared) = prepare_body(&body, options) {
            prop_assert!(prepared.info.segments <= max);
            prop_assert_eq!(prepared.info, analyze(&prepared.text));
        }
    }

    #[test]
    fn smart_encoding_table_characters_and_gsm_give_gsm(
        chars in vec(prop_oneof![smart_key(), gsm_char()], 0..200),
    ) {
        let body: String = chars.into_iter().collect();
        prop_assert_eq!(analyze(&smart_encode(&body)).encoding, Encoding::Gsm7);
    }

    #[test]
    fn smart_encoding_is_idempotent(
        chars in vec(prop_oneof![smart_key(), gsm_char(), bmp_char(), astral_char()], 0..200),
    ) {
        let body: String = chars.into_iter().collect();
        let once = smart_encode(&body).into_owned();
        prop_assert_eq!(smart_encode(&once), once.as_str());
    }
}
