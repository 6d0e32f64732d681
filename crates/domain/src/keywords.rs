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

impl Keyword {
    /// The keyword `body` is, if the whole message is one.
    pub fn of(body: &str) -> Option<Keyword> {
        let word = body.trim().to_uppercase();
        if word.is_empty() || word.contains(char::is_whitespace) {
            return None;
        }
        let word = word.trim_end_matches(['.', '!']);
        if OPT_OUT.contains(&word) {
            Some(Keyword::OptOut)
        } else if OPT_IN.contains(&word) {
            Some(Keyword::OptIn)
        } else if HELP.contains(&word) {
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
}
