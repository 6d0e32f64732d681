//! Keywords people text to an organization's number: STOP and its kin opt the number out,
//! START and its kin opt it back in, HELP asks who is writing. A keyword is the whole message,
//! in any case and spacing (`stop`, ` Stop `, `S T O P` is not), as carriers and the CTIA
//! guidelines treat them.

/// What an inbound message asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keyword {
    OptOut,
    OptIn,
    Help,
}

/// Words that opt a number out: the industry's standard set, and the usual words of other
/// languages carriers honour.
pub const OPT_OUT: &[&str] = &[
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "ARRET",
    "ARRÊT",
    "BAJA",
    "ALTO",
];
/// Words that opt a number back in.
pub const OPT_IN: &[&str] = &["START", "UNSTOP", "YES"];
/// Words that ask for help.
pub const HELP: &[&str] = &["HELP", "INFO"];

/// An organization's own words, on top of the standard ones (which cannot be removed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtraWords {
    pub opt_out: Vec<String>,
    pub opt_in: Vec<String>,
}

/// A word as keywords are compared: upper case, without a final `.` or `!`; `None` unless the
/// text is one word.
pub fn normalize(text: &str) -> Option<String> {
    let word = text.trim().to_uppercase();
    if word.is_empty() || word.contains(char::is_whitespace) {
        return None;
    }
    Some(word.trim_end_matches(['.', '!']).to_owned()).filter(|w| !w.is_empty())
}

impl Keyword {
    /// The keyword `body` is, if the whole message is one.
    pub fn of(body: &str) -> Option<Keyword> {
        Keyword::of_with(body, &ExtraWords::default())
    }

    /// The keyword `body` is among the standard words and the organization's `extra` ones.
    pub fn of_with(body: &str, extra: &ExtraWords) -> Option<Keyword> {
        let word = normalize(body)?;
        let listed = |words: &[String]| words.iter().any(|w| normalize(w).as_ref() == Some(&word));
        if OPT_OUT.contains(&word.as_str()) || listed(&extra.opt_out) {
            Some(Keyword::OptOut)
        } else if OPT_IN.contains(&word.as_str()) || listed(&extra.opt_in) {
            Some(Keyword::OptIn)
        } else if HELP.contains(&word.as_str()) {
            Some(Keyword::Help)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_whole_messages_in_any_case() {
        for body in [
            "STOP",
            "stop",
            " Stop \n",
            "StopAll",
            "unsubscribe",
            "arrêt",
            "Baja!",
        ] {
            assert_eq!(Keyword::of(body), Some(Keyword::OptOut), "{body:?}");
        }
        for body in ["START", "unstop", "Yes"] {
            assert_eq!(Keyword::of(body), Some(Keyword::OptIn), "{body:?}");
        }
        assert_eq!(Keyword::of("help"), Some(Keyword::Help));
        for body in [
            "",
            "   ",
            "please stop",
            "STOP sending",
            "stopped",
            "don't stop",
            "S T O P",
        ] {
            assert_eq!(Keyword::of(body), None, "{body:?}");
        }
    }

    #[test]
    fn an_organizations_own_words_count_too() {
        let extra = ExtraWords {
            opt_out: vec!["Stoppen".into(), "désabonner".into()],
            opt_in: vec!["anmelden".into()],
        };
        assert_eq!(Keyword::of_with(" STOPPEN!", &extra), Some(Keyword::OptOut));
        assert_eq!(
            Keyword::of_with("Désabonner", &extra),
            Some(Keyword::OptOut)
        );
        assert_eq!(Keyword::of_with("Anmelden", &extra), Some(Keyword::OptIn));
        assert_eq!(Keyword::of_with("stop", &extra), Some(Keyword::OptOut));
        assert_eq!(Keyword::of("stoppen"), None, "only for that organization");
        assert_eq!(normalize("two words"), None);
    }
}
