//! Message bodies as a handset receives them: the encoding (GSM-7 or UCS-2), the number of
//! segments they cost, how they split into parts, smart encoding, and fitting a body into a
//! segment budget (SPEC §2).
//!
//! Segments are what providers bill and what credits count, so this module is the single
//! definition of them. [`analyze`] and [`split`] share one greedy packing and so always agree;
//! [`truncate_to_segments`] applies the same rule to find the longest prefix that fits.
//! [`analyze`] runs for every message of a campaign, so it never allocates, decides ASCII bodies
//! byte by byte, stops decoding as soon as a body proves to be UCS-2, and only replays the
//! packing when a body is multipart *and* holds characters that cost two units.

mod gsm;
mod smart;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use smart::smart_encode;

/// How a body's characters are put on the air.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Encoding {
    /// The GSM 03.38 alphabet in 7-bit septets: 160 per segment, chosen whenever it can carry
    /// every character because it fits more than twice as much text.
    #[serde(rename = "GSM-7")]
    Gsm7,
    /// UTF-16 code units: 70 per segment, needed as soon as one character is outside GSM-7.
    #[serde(rename = "UCS-2")]
    Ucs2,
}

impl Encoding {
    /// The name used in the API, the database and provider documentation.
    pub fn as_str(&self) -> &'static str {
        match self {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        }
    }

    /// Units a body may hold when it is sent as a single segment.
    pub const fn single_segment_units(self) -> u32 {
        match self {
            Encoding::Gsm7 => 160,
            Encoding::Ucs2 => 70,
        }
    }

    /// Units each segment of a multipart body holds: less than a single segment, because the
    /// concatenation header that lets the handset reassemble the parts takes the rest.
    pub const fn multipart_segment_units(self) -> u32 {
        match self {
            Encoding::Gsm7 => 153,
            Encoding::Ucs2 => 67,
        }
    }

    /// Units `c` costs in a body sent with this encoding; only meaningful for a GSM-7 body when
    /// `c` is a GSM-7 character.
    #[inline]
    fn units(self, c: char) -> u32 {
        match self {
            Encoding::Gsm7 => u32::from(gsm::septets(c)),
            Encoding::Ucs2 => c.len_utf16() as u32,
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a body costs: recorded with every message and shown in previews.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub encoding: Encoding,
    pub segments: u32,
    /// septets for GSM-7, UTF-16 code units for UCS-2
    pub units: u32,
    /// Unicode scalar values in the body
    pub characters: u32,
}

/// Encoding and segment count of a body exactly as it will be sent.
///
/// An empty body is one GSM-7 segment, because that is what sending it costs.
pub fn analyze(body: &str) -> SegmentInfo {
    let totals = Totals::of(body);
    // `doubles` counts the characters that cost two units: extension characters in GSM-7,
    // characters outside the BMP in UCS-2.
    let (encoding, units) = if totals.gsm {
        (Encoding::Gsm7, totals.septets)
    } else {
        (Encoding::Ucs2, totals.utf16)
    };
    let doubles = units - totals.chars;
    let segments = if units <= encoding.single_segment_units() as usize {
        1
    } else if doubles == 0 {
        // No character can straddle a boundary, so every part but the last is full.
        units.div_ceil(encoding.multipart_segment_units() as usize)
    } else {
        pack(body, encoding, |_| {})
    };
    SegmentInfo {
        encoding,
        segments: to_u32(segments),
        units: to_u32(units),
        characters: to_u32(totals.chars),
    }
}

/// The body split into the parts a handset receives (each part's text); concatenation == body;
/// for an empty body one empty part.
///
/// Parts are filled greedily; an extension character or a surrogate pair that would straddle a
/// boundary starts the next part instead, because half of one is garbage on the handset.
pub fn split(body: &str) -> Vec<&str> {
    let info = analyze(body);
    if info.segments == 1 {
        return vec![body];
    }
    let mut parts = Vec::with_capacity(info.segments as usize);
    let mut start = 0;
    pack(body, info.encoding, |boundary| {
        parts.push(&body[start..boundary]);
        start = boundary;
    });
    parts.push(&body[start..]);
    parts
}

/// Longest prefix of `body` that fits in `max_segments` (never cutting an escape sequence or a
/// surrogate pair; in whole chars).
///
/// The prefix is measured on its own: cutting off the only emoji of a long body lets the rest
/// go as GSM-7, which holds more. With `max_segments == 0` nothing fits and the prefix is empty.
pub fn truncate_to_segments(body: &str, max_segments: u32) -> &str {
    if max_segments == 0 {
        return "";
    }
    let info = analyze(body);
    if info.segments <= max_segments {
        return body;
    }
    // Stops at the body's first non-GSM character if the capacity has not run out before it.
    let gsm_end = fitting_prefix_len(body, Encoding::Gsm7, max_segments);
    if info.encoding == Encoding::Gsm7 {
        return &body[..gsm_end];
    }
    // Past the first non-GSM character every prefix is UCS-2. The same text never needs more
    // segments in GSM-7 than in UCS-2, so whichever candidate is longer is the answer.
    let ucs2_end = fitting_prefix_len(body, Encoding::Ucs2, max_segments);
    &body[..gsm_end.max(ucs2_end)]
}

/// What a caller asks of a body before it is queued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BodyOptions {
    /// Replace look-alike characters first, which often turns a UCS-2 body into GSM-7.
    pub smart_encoding: bool,
    /// A ceiling on the segments (and so the cost) of one message.
    pub max_segments: Option<u32>,
    /// Shorten a body over `max_segments` instead of refusing it.
    pub truncate: bool,
}

/// A body ready to queue: the text to send and what it costs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedBody {
    pub text: String,
    pub info: SegmentInfo,
    /// Whether `text` was shortened to honour `max_segments`, which the API reports.
    pub truncated: bool,
}

/// Why a body was refused before anything was queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body is empty")]
    Empty,
    #[error("body needs {segments} segments, more than max_segments {max}")]
    TooManySegments { segments: u32, max: u32 },
    #[error("max_segments must be at least 1")]
    InvalidMaxSegments,
}

impl BodyError {
    /// A stable snake_case code for API responses; the messages may be reworded, these may not.
    pub fn code(&self) -> &'static str {
        match self {
            BodyError::Empty => "empty_body",
            BodyError::TooManySegments { .. } => "too_many_segments",
            BodyError::InvalidMaxSegments => "invalid_max_segments",
        }
    }
}

/// Apply smart encoding (if asked), then enforce max_segments: reject with TooManySegments, or
/// with `truncate` shorten to fit (then `truncated = true`).
///
/// A body that is empty or only whitespace once smart encoding has run is refused: sending it
/// would bill a segment for nothing.
pub fn prepare_body(body: &str, options: BodyOptions) -> Result<PreparedBody, BodyError> {
    if options.max_segments == Some(0) {
        return Err(BodyError::InvalidMaxSegments);
    }
    let text = if options.smart_encoding {
        smart_encode(body)
    } else {
        body.into()
    };
    if text.trim().is_empty() {
        return Err(BodyError::Empty);
    }
    let info = analyze(&text);
    match options.max_segments {
        Some(max) if info.segments > max => {
            if !options.truncate {
                return Err(BodyError::TooManySegments {
                    segments: info.segments,
                    max,
                });
            }
            let kept = truncate_to_segments(&text, max);
            Ok(PreparedBody {
                text: kept.to_owned(),
                info: analyze(kept),
                truncated: true,
            })
        }
        _ => Ok(PreparedBody {
            text: text.into_owned(),
            info,
            truncated: false,
        }),
    }
}

/// Everything [`analyze`] needs to know about a body.
struct Totals {
    gsm: bool,
    /// Only meaningful while `gsm` holds.
    septets: usize,
    utf16: usize,
    chars: usize,
}

impl Totals {
    fn of(body: &str) -> Totals {
        let bytes = body.as_bytes();
        if body.is_ascii() {
            // One byte is one char and one UTF-16 unit; only the septets need a lookup.
            let mut septets = 0;
            let mut gsm = true;
            for &byte in bytes {
                let cost = gsm::ascii_septets(byte);
                gsm &= cost != 0;
                septets += usize::from(cost);
            }
            return Totals {
                gsm,
                septets,
                utf16: bytes.len(),
                chars: bytes.len(),
            };
        }
        let mut septets = 0;
        let mut chars = 0;
        for c in body.chars() {
            match gsm::septets(c) {
                0 => {
                    // UCS-2 from here on: count the rest with byte scans the compiler
                    // vectorises. A four-byte UTF-8 sequence is the one kind that needs a
                    // surrogate pair.
                    let chars = body.chars().count();
                    let astral = bytes.iter().filter(|&&b| b >= 0xF0).count();
                    return Totals {
                        gsm: false,
                        septets: 0,
                        utf16: chars + astral,
                        chars,
                    };
                }
                cost => septets += usize::from(cost),
            }
            chars += 1;
        }
        // Every GSM-7 character is in the BMP.
        Totals {
            gsm: true,
            septets,
            utf16: chars,
            chars,
        }
    }
}

/// Cost in units of the character a UTF-8 byte starts, or 0 for a continuation byte (which can
/// never start a part). Working on bytes keeps the greedy packing free of UTF-8 decoding.
///
/// The GSM-7 table is only meaningful for a body known to be all GSM-7: there the only character
/// of three UTF-8 bytes is `€`, an extension character, and every other non-ASCII one (Latin-1
/// letters, the Greek capitals) costs one septet.
const GSM7_BYTE_COST: [u8; 256] = byte_costs(Encoding::Gsm7);
const UCS2_BYTE_COST: [u8; 256] = byte_costs(Encoding::Ucs2);

const fn byte_costs(encoding: Encoding) -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = match (encoding, byte) {
            (Encoding::Gsm7, 0x00..=0x7F) => gsm::ascii_septets(byte as u8),
            (Encoding::Ucs2, 0x00..=0x7F) => 1,
            (_, 0x80..=0xBF) => 0,
            (Encoding::Gsm7, 0xE2) => 2,
            (Encoding::Ucs2, 0xF0..=0xFF) => 2,
            _ => 1,
        };
        byte += 1;
    }
    table
}

/// Pack a multipart body into parts greedily: a character goes in the current part unless it
/// would overflow it, in which case it opens the next. Reports the byte offset where each part
/// after the first starts and returns the number of parts; [`analyze`] and [`split`] both use
/// it, which is what keeps them in agreement.
fn pack(body: &str, encoding: Encoding, mut on_boundary: impl FnMut(usize)) -> usize {
    let costs = match encoding {
        Encoding::Gsm7 => &GSM7_BYTE_COST,
        Encoding::Ucs2 => &UCS2_BYTE_COST,
    };
    let capacity = encoding.multipart_segment_units();
    let mut parts = 1;
    let mut used = 0;
    for (at, &byte) in body.as_bytes().iter().enumerate() {
        // A continuation byte costs nothing, so it never overflows a part: parts always start
        // on a character boundary.
        let cost = u32::from(costs[usize::from(byte)]);
        if used + cost > capacity {
            on_boundary(at);
            parts += 1;
            used = 0;
        }
        used += cost;
    }
    parts
}

/// Length in bytes of the longest prefix of `body` that, sent with `encoding`, fits in
/// `max_segments` (at least 1). For GSM-7 it also stops before the first character GSM-7
/// cannot carry.
fn fitting_prefix_len(body: &str, encoding: Encoding, max_segments: u32) -> usize {
    // With two or more segments allowed, any prefix past the single-segment capacity is
    // multipart, and one within it needs at most two multipart-sized parts: either way the
    // multipart packing decides.
    let (capacity, mut parts_left) = if max_segments == 1 {
        (encoding.single_segment_units(), 0)
    } else {
        (encoding.multipart_segment_units(), max_segments - 1)
    };
    let mut used = 0;
    for (at, c) in body.char_indices() {
        let cost = encoding.units(c);
        if cost == 0 {
            return at;
        }
        if used + cost > capacity {
            if parts_left == 0 {
                return at;
            }
            parts_left -= 1;
            used = 0;
        }
        used += cost;
    }
    body.len()
}

/// Bodies are bounded far below 4 GiB by the API; saturating keeps the arithmetic total anyway.
fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
