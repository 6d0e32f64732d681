//! Message templates (SPEC §2): bodies with `{{variable}}` and `{{variable | default: "x"}}`
//! placeholders, parsed once when they are saved and rendered for every message.
//!
//! A [`Template`] only exists parsed: [`Template::parse`] either returns one or a
//! [`ParseError`] whose code is stable (clients match on it) and whose position points at the
//! fault, so an editor can underline it. Only `{{` and `}}` are special; a single brace is
//! ordinary text. Rendering never fails half-way: it either produces the whole text or names
//! every required variable that was missing, so a send can be refused before anything is queued.

use std::borrow::Cow;
use std::fmt;

/// A parsed template: literal text and placeholders, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    variables: Vec<Variable>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Placeholder {
        name: String,
        default: Option<String>,
        /// The tag as written, shown in place of a missing variable by a lenient render.
        source: String,
    },
}

/// A variable a template uses. It is required when at least one of its placeholders has no
/// default: that placeholder has nothing to show without a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    /// The first default given for it, if any.
    pub default: Option<String>,
    pub required: bool,
}

/// What went wrong, as a stable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParseErrorCode {
    /// `{{` without its `}}` (or another `{{` before it).
    UnclosedTag,
    /// `}}` outside any placeholder.
    UnexpectedClose,
    /// `{{ }}` or `{{ | default: "x" }}`.
    EmptyVariable,
    /// A variable name with characters other than letters, digits, `_` and `.`.
    InvalidVariable,
    /// A filter other than `default`.
    UnknownFilter,
    /// `default` without `: "text"`, an unterminated string, or an unknown escape.
    MalformedDefault,
}

impl ParseErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ParseErrorCode::UnclosedTag => "unclosed_tag",
            ParseErrorCode::UnexpectedClose => "unexpected_close",
            ParseErrorCode::EmptyVariable => "empty_variable",
            ParseErrorCode::InvalidVariable => "invalid_variable",
            ParseErrorCode::UnknownFilter => "unknown_filter",
            ParseErrorCode::MalformedDefault => "malformed_default",
        }
    }
}

/// Why a body is not a template, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub code: ParseErrorCode,
    /// What was wrong, for people.
    pub detail: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
    /// 0-based offset from the start of the body, in characters (not bytes, so it is the same
    /// number in every client language that indexes by character).
    pub offset: u32,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at line {}, column {} (offset {}): {}",
            self.code.as_str(),
            self.line,
            self.column,
            self.offset,
            self.detail
        )
    }
}

impl std::error::Error for ParseError {}

/// A render refused because required variables had no value: all of them, in the order the
/// template first uses them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingVariables(pub Vec<String>);

impl fmt::Display for MissingVariables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "missing required variables: {}", self.0.join(", "))
    }
}

impl std::error::Error for MissingVariables {}

/// The result of a lenient render: what could be rendered, with each missing placeholder left
/// as written, and the names that were missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    pub missing: Vec<String>,
}

impl Template {
    /// Parse `body`; the only way to get a [`Template`].
    pub fn parse(body: &str) -> Result<Template, ParseError> {
        Parser::new(body).run()
    }

    /// The variables used, each once, in order of first use.
    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// Names of the variables that must be given.
    pub fn required(&self) -> impl Iterator<Item = &str> {
        self.variables
            .iter()
            .filter(|v| v.required)
            .map(|v| v.name.as_str())
    }

    /// The text with every placeholder filled, or every missing required variable. A default
    /// applies when the value is missing or empty.
    pub fn render<'a>(
        &self,
        lookup: impl Fn(&str) -> Option<Cow<'a, str>>,
    ) -> Result<String, MissingVariables> {
        let rendered = self.render_lenient(lookup);
        if rendered.missing.is_empty() {
            Ok(rendered.text)
        } else {
            Err(MissingVariables(rendered.missing))
        }
    }

    /// Like [`Template::render`], but a missing variable leaves its placeholder as written, so
    /// a preview can still show (and count) the rest.
    pub fn render_lenient<'a>(&self, lookup: impl Fn(&str) -> Option<Cow<'a, str>>) -> Rendered {
        let mut text = String::new();
        let mut missing: Vec<String> = Vec::new();
        for part in &self.parts {
            match part {
                Part::Text(literal) => text.push_str(literal),
                Part::Placeholder {
                    name,
                    default,
                    source,
                } => match (lookup(name), default) {
                    (Some(value), Some(default)) if value.is_empty() => text.push_str(default),
                    (Some(value), _) => text.push_str(&value),
                    (None, Some(default)) => text.push_str(default),
                    (None, None) => {
                        text.push_str(source);
                        if !missing.contains(name) {
                            missing.push(name.clone());
                        }
                    }
                },
            }
        }
        Rendered { text, missing }
    }
}

/// A character with where it sits.
#[derive(Clone, Copy)]
struct Located {
    c: char,
    line: u32,
    column: u32,
    offset: u32,
}

struct Parser {
    chars: Vec<Located>,
    /// End-of-input position, for errors at the end.
    end: Located,
}

impl Parser {
    fn new(body: &str) -> Parser {
        let (mut line, mut column) = (1, 1);
        let mut chars = Vec::with_capacity(body.len());
        for (offset, c) in body.chars().enumerate() {
            chars.push(Located {
                c,
                line,
                column,
                offset: offset as u32,
            });
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        let end = Located {
            c: '\0',
            line,
            column,
            offset: chars.len() as u32,
        };
        Parser { chars, end }
    }

    fn at(&self, i: usize) -> Option<char> {
        self.chars.get(i).map(|l| l.c)
    }

    fn pair(&self, i: usize, c: char) -> bool {
        self.at(i) == Some(c) && self.at(i + 1) == Some(c)
    }

    fn error(&self, i: usize, code: ParseErrorCode, detail: impl Into<String>) -> ParseError {
        let at = self.chars.get(i).copied().unwrap_or(self.end);
        ParseError {
            code,
            detail: detail.into(),
            line: at.line,
            column: at.column,
            offset: at.offset,
        }
    }

    fn run(self) -> Result<Template, ParseError> {
        let mut parts = Vec::new();
        let mut variables: Vec<Variable> = Vec::new();
        let mut text = String::new();
        let mut i = 0;
        while i < self.chars.len() {
            if self.pair(i, '{') {
                let close = self.closing(i)?;
                let (name, default) = self.tag(i + 2, close)?;
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                match variables.iter_mut().find(|v| v.name == name) {
                    Some(known) => {
                        known.required |= default.is_none();
                        if known.default.is_none() {
                            known.default.clone_from(&default);
                        }
                    }
                    None => variables.push(Variable {
                        name: name.clone(),
                        default: default.clone(),
                        required: default.is_none(),
                    }),
                }
                let source = self.chars[i..close + 2].iter().map(|l| l.c).collect();
                parts.push(Part::Placeholder {
                    name,
                    default,
                    source,
                });
                i = close + 2;
            } else if self.pair(i, '}') {
                return Err(self.error(i, ParseErrorCode::UnexpectedClose, "`}}` closes no `{{`"));
            } else {
                text.push(self.chars[i].c);
                i += 1;
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template { parts, variables })
    }

    /// Index of the `}}` closing the tag opened at `open`, skipping quoted strings.
    fn closing(&self, open: usize) -> Result<usize, ParseError> {
        let unclosed = || {
            self.error(
                open,
                ParseErrorCode::UnclosedTag,
                "`{{` is never closed with `}}`",
            )
        };
        let mut i = open + 2;
        let mut quote: Option<usize> = None;
        // Quotes only open a string after `|`, where a default can start; before that a `"`
        // is a bad character in the name and is reported as such.
        let mut filtered = false;
        while i < self.chars.len() {
            let c = self.chars[i].c;
            if quote.is_some() {
                match c {
                    '\\' => i += 1,
                    '"' => quote = None,
                    _ => {}
                }
            } else if c == '"' && filtered {
                quote = Some(i);
            } else if c == '|' {
                filtered = true;
            } else if self.pair(i, '}') {
                return Ok(i);
            } else if self.pair(i, '{') {
                return Err(unclosed());
            }
            i += 1;
        }
        match quote {
            Some(q) => Err(self.error(
                q,
                ParseErrorCode::MalformedDefault,
                "the default's string is never closed with `\"`",
            )),
            None => Err(unclosed()),
        }
    }

    fn skip_space(&self, mut i: usize, end: usize) -> usize {
        while i < end && self.chars[i].c.is_whitespace() {
            i += 1;
        }
        i
    }

    /// Parse the inside of a tag, `chars[start..end]`: a name and an optional default.
    fn tag(&self, start: usize, end: usize) -> Result<(String, Option<String>), ParseError> {
        let mut i = self.skip_space(start, end);
        let name_start = i;
        while i < end && is_name_char(self.chars[i].c) {
            i += 1;
        }
        let name: String = self.chars[name_start..i].iter().map(|l| l.c).collect();
        if name.is_empty() {
            return Err(if i == end || self.chars[i].c == '|' {
                self.error(i, ParseErrorCode::EmptyVariable, "expected a variable name")
            } else {
                self.error(
                    i,
                    ParseErrorCode::InvalidVariable,
                    "variable names use letters, digits, `_` and `.`",
                )
            });
        }
        if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
            return Err(self.error(
                name_start,
                ParseErrorCode::InvalidVariable,
                "a `.` in a variable name must sit between two parts",
            ));
        }
        i = self.skip_space(i, end);
        if i == end {
            return Ok((name, None));
        }
        if self.chars[i].c != '|' {
            return Err(self.error(
                i,
                ParseErrorCode::InvalidVariable,
                "variable names use letters, digits, `_` and `.`",
            ));
        }
        let (default, mut i) = self.default_filter(i + 1, end)?;
        i = self.skip_space(i, end);
        if i < end {
            if self.chars[i].c == '|' {
                let (filter_at, filter) = self.filter_name(i + 1, end);
                if filter != "default" {
                    return Err(self.unknown_filter(filter_at, &filter));
                }
                return Err(self.error(
                    filter_at,
                    ParseErrorCode::MalformedDefault,
                    "a variable takes one default",
                ));
            }
            return Err(self.error(
                i,
                ParseErrorCode::MalformedDefault,
                "expected `}}` after the default",
            ));
        }
        Ok((name, Some(default)))
    }

    fn filter_name(&self, from: usize, end: usize) -> (usize, String) {
        let start = self.skip_space(from, end);
        let mut i = start;
        while i < end && (self.chars[i].c.is_alphanumeric() || self.chars[i].c == '_') {
            i += 1;
        }
        (start, self.chars[start..i].iter().map(|l| l.c).collect())
    }

    fn unknown_filter(&self, at: usize, filter: &str) -> ParseError {
        let detail = if filter.is_empty() {
            "expected a filter name after `|`".to_owned()
        } else {
            format!("unknown filter `{filter}`; the only filter is `default`")
        };
        self.error(at, ParseErrorCode::UnknownFilter, detail)
    }

    /// After `|`: `default: "text"`. Returns the text and the index after its closing quote.
    fn default_filter(&self, from: usize, end: usize) -> Result<(String, usize), ParseError> {
        let (at, filter) = self.filter_name(from, end);
        if filter != "default" {
            return Err(self.unknown_filter(at, &filter));
        }
        let mut i = self.skip_space(at + filter.chars().count(), end);
        if i == end || self.chars[i].c != ':' {
            return Err(self.error(
                i,
                ParseErrorCode::MalformedDefault,
                "expected `:` after `default`",
            ));
        }
        i = self.skip_space(i + 1, end);
        if i == end || self.chars[i].c != '"' {
            return Err(self.error(
                i,
                ParseErrorCode::MalformedDefault,
                "expected a quoted string after `default:`",
            ));
        }
        let mut text = String::new();
        i += 1;
        while i < end {
            match self.chars[i].c {
                '"' => return Ok((text, i + 1)),
                '\\' => match self.at(i + 1) {
                    Some(c @ ('"' | '\\')) if i + 1 < end => {
                        text.push(c);
                        i += 2;
                    }
                    _ => {
                        return Err(self.error(
                            i,
                            ParseErrorCode::MalformedDefault,
                            "only `\\\"` and `\\\\` are escapes",
                        ));
                    }
                },
                c => {
                    text.push(c);
                    i += 1;
                }
            }
        }
        // `closing` only ends a tag outside quotes, so a string always closes before `end`.
        Err(self.error(
            i,
            ParseErrorCode::MalformedDefault,
            "the default's string is never closed with `\"`",
        ))
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.'
}

#[cfg(test)]
mod tests;
