//! The GSM 03.38 alphabet: which characters GSM-7 can carry and how many septets each costs.
//!
//! This is the table every body is checked against, so it is a 256-entry array for Latin-1 (where
//! nearly all of it lives) and a `match` for the ten Greek capitals and the euro sign, never a
//! scan of a character list.

/// The basic table, in code-point order of the GSM 03.38 chart minus the escape at 0x1B: each
/// costs one septet.
pub(super) const BASIC: [char; 127] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The extension table: each is sent as the escape septet followed by its own, so costs two,
/// and a split must keep the pair together.
pub(super) const EXTENSION: [char; 10] = ['\u{0C}', '^', '{', '}', '\\', '[', '~', ']', '|', '€'];

/// Septets per code point below U+0100; 0 means GSM-7 cannot carry it.
const LATIN1: [u8; 256] = latin1_table();

const fn latin1_table() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < BASIC.len() {
        let cp = BASIC[i] as u32;
        if cp < 256 {
            table[cp as usize] = 1;
        }
        i += 1;
    }
    let mut i = 0;
    while i < EXTENSION.len() {
        let cp = EXTENSION[i] as u32;
        if cp < 256 {
            table[cp as usize] = 2;
        }
        i += 1;
    }
    table
}

/// Septets `c` costs in GSM-7: 1 for the basic table, 2 for the extension table, 0 when GSM-7
/// cannot carry it at all (so the body must go as UCS-2).
#[inline]
pub(super) fn septets(c: char) -> u8 {
    match c as u32 {
        cp @ 0..=0xFF => LATIN1[cp as usize],
        _ => match c {
            'Γ' | 'Δ' | 'Θ' | 'Λ' | 'Ξ' | 'Π' | 'Σ' | 'Φ' | 'Ψ' | 'Ω' => 1,
            '€' => 2,
            _ => 0,
        },
    }
}

/// [`septets`] for one byte of an ASCII body, where no decoding is needed.
#[inline]
pub(super) const fn ascii_septets(byte: u8) -> u8 {
    LATIN1[byte as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_basic_character_costs_one_septet() {
        for c in BASIC {
            assert_eq!(septets(c), 1, "{c:?}");
        }
    }

    #[test]
    fn every_extension_character_costs_two_septets() {
        for c in EXTENSION {
            assert_eq!(septets(c), 2, "{c:?}");
        }
    }

    #[test]
    fn nothing_outside_the_two_tables_is_gsm() {
        let all = (0..=u32::from(char::MAX)).filter_map(char::from_u32);
        let (mut basic, mut extension) = (0, 0);
        for c in all {
            match septets(c) {
                0 => {}
                1 => basic += 1,
                2 => extension += 1,
                other => panic!("{c:?} costs {other}"),
            }
        }
        assert_eq!((basic, extension), (BASIC.len(), EXTENSION.len()));
    }

    #[test]
    fn the_ascii_lookup_agrees_with_the_char_lookup() {
        for byte in 0..=0x7Fu8 {
            assert_eq!(ascii_septets(byte), septets(char::from(byte)));
        }
    }

    #[test]
    fn lookalikes_that_gsm_lacks_are_not_gsm() {
        for c in ['ç', 'á', 'í', 'ó', 'ú', 'ê', '`', '\t', '\u{A0}', 'α', '’'] {
            assert_eq!(septets(c), 0, "{c:?}");
        }
    }
}
