//! Tokens of the Symbiont DSL. `//` and `#` start line comments (`/* */` is accepted too,
//! as the policy engine accepts it). Positions are 1-based line:col counted in characters;
//! `start..end` is the token's byte span, used to hand `policy` blocks to the policy parser.

use super::{DslError, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Float(f64),
    /// `30s`, `5m`, `60.seconds`, ...: the text as written and its length in seconds.
    Duration {
        text: String,
        seconds: f64,
    },
    /// `vault://path/to/secret`, the whole reference.
    Vault(String),
    Punct(&'static str),
    Eof,
}

#[derive(Debug, Clone)]
pub struct Token {
    pub tok: Tok,
    pub line: usize,
    pub col: usize,
    pub start: usize,
    pub end: usize,
}

/// Longest first, so `==` wins over `=`.
const PUNCTS: &[&str] = &[
    "->", "=>", "==", "!=", "<=", ">=", "&&", "||", "+=", "-=", "*=", "/=", "%=", "{", "}", "[",
    "]", "(", ")", ":", ";", ",", ".", "=", "<", ">", "!", "+", "-", "*", "/", "%",
];

/// Duration units of the grammar (plus `ms`), in seconds.
const UNITS: &[(&str, f64)] = &[
    ("ms", 0.001),
    ("s", 1.0),
    ("m", 60.0),
    ("h", 3600.0),
    ("d", 86_400.0),
    ("w", 604_800.0),
    ("months", 2_592_000.0),
    ("y", 31_536_000.0),
];
const LONG_UNITS: &[(&str, f64)] = &[("seconds", 1.0), ("minutes", 60.0), ("hours", 3600.0)];

/// Seconds in one `unit`, for duration literals and duration strings such as `"30m"`.
pub fn unit_seconds(unit: &str) -> Option<f64> {
    UNITS
        .iter()
        .chain(LONG_UNITS)
        .find(|(u, _)| *u == unit)
        .map(|(_, s)| *s)
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

struct Lexer<'a> {
    src: &'a str,
    origin: &'a str,
    pos: usize,
    line: usize,
    col: usize,
}

impl Lexer<'_> {
    fn err(&self, line: usize, col: usize, message: impl Into<String>) -> DslError {
        DslError::Parse {
            origin: self.origin.to_string(),
            line,
            column: col,
            message: message.into(),
        }
    }

    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek2(&self) -> Option<char> {
        let mut it = self.rest().chars();
        it.next();
        it.next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn skip_trivia(&mut self) -> Result<()> {
        loop {
            match (self.peek(), self.peek2()) {
                (Some(c), _) if c.is_whitespace() => {
                    self.bump();
                }
                (Some('#'), _) | (Some('/'), Some('/')) => {
                    while !matches!(self.peek(), None | Some('\n')) {
                        self.bump();
                    }
                }
                (Some('/'), Some('*')) => {
                    let (l, c) = (self.line, self.col);
                    self.bump();
                    self.bump();
                    loop {
                        match (self.peek(), self.peek2()) {
                            (Some('*'), Some('/')) => {
                                self.bump();
                                self.bump();
                                break;
                            }
                            (None, _) => {
                                return Err(self.err(
                                    l,
                                    c,
                                    "unterminated /* comment; close it with */",
                                ))
                            }
                            _ => {
                                self.bump();
                            }
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn tokens(mut self) -> Result<Vec<Token>> {
        let mut out = Vec::new();
        loop {
            self.skip_trivia()?;
            let (line, col, start) = (self.line, self.col, self.pos);
            let Some(c) = self.peek() else {
                out.push(Token {
                    tok: Tok::Eof,
                    line,
                    col,
                    start,
                    end: start,
                });
                return Ok(out);
            };
            let tok = if self.rest().starts_with("vault://") {
                self.vault(line, col)?
            } else if c.is_ascii_alphabetic() || c == '_' {
                while matches!(self.peek(), Some(c) if is_ident_char(c)) {
                    self.bump();
                }
                Tok::Ident(self.src[start..self.pos].to_string())
            } else if c.is_ascii_digit() {
                self.number(line, col)?
            } else if c == '"' {
                self.string(line, col)?
            } else if let Some(p) = PUNCTS.iter().find(|p| self.rest().starts_with(**p)) {
                for _ in 0..p.len() {
                    self.bump();
                }
                Tok::Punct(p)
            } else if c == '\'' {
                return Err(self.err(line, col, "strings use double quotes: \"text\""));
            } else {
                return Err(self.err(
                    line,
                    col,
                    format!("unexpected character {c:?}; it is not part of the Symbiont DSL"),
                ));
            };
            out.push(Token {
                tok,
                line,
                col,
                start,
                end: self.pos,
            });
        }
    }

    fn vault(&mut self, line: usize, col: usize) -> Result<Tok> {
        let start = self.pos;
        for _ in 0.."vault://".len() {
            self.bump();
        }
        let path_start = self.pos;
        while matches!(self.peek(), Some(c) if is_ident_char(c) || matches!(c, '-' | '/' | '.')) {
            self.bump();
        }
        if self.pos == path_start {
            return Err(self.err(
                line,
                col,
                "a vault reference needs a path: vault://path/to/secret",
            ));
        }
        Ok(Tok::Vault(self.src[start..self.pos].to_string()))
    }

    fn digits(&mut self) {
        // `\d+(_\d+)*`: an underscore only between digits.
        loop {
            while matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
                self.bump();
            }
            if self.peek() == Some('_') && matches!(self.peek2(), Some(c) if c.is_ascii_digit()) {
                self.bump();
            } else {
                return;
            }
        }
    }

    fn number(&mut self, line: usize, col: usize) -> Result<Tok> {
        let start = self.pos;
        self.digits();
        let mut float = false;
        if self.peek() == Some('.') && matches!(self.peek2(), Some(c) if c.is_ascii_digit()) {
            float = true;
            self.bump();
            self.digits();
        }
        let num_end = self.pos;
        let text: String = self.src[start..num_end]
            .chars()
            .filter(|c| *c != '_')
            .collect();
        // A unit right after the digits (`30s`, `6months`) or `.seconds` makes a duration.
        let unit_start = self.pos;
        let mut unit: Option<(usize, f64)> = None;
        if matches!(self.peek(), Some(c) if c.is_ascii_alphabetic() || c == '_') {
            let end = unit_start
                + self
                    .rest()
                    .find(|c: char| !is_ident_char(c))
                    .unwrap_or(self.rest().len());
            let word = &self.src[unit_start..end];
            match UNITS.iter().find(|(u, _)| *u == word) {
                Some((_, s)) => unit = Some((end, *s)),
                None => {
                    return Err(self.err(
                        line,
                        col,
                        format!(
                            "unknown unit `{word}` after {text}; durations use s, m, h, d, w, months, y or .seconds/.minutes/.hours"
                        ),
                    ))
                }
            }
        } else if self.peek() == Some('.') {
            let after = &self.src[unit_start + 1..];
            for (u, s) in LONG_UNITS {
                if after.starts_with(u) && !after[u.len()..].starts_with(is_ident_char) {
                    unit = Some((unit_start + 1 + u.len(), *s));
                    break;
                }
            }
        }
        let value: f64 = text.parse().unwrap_or(f64::INFINITY);
        if let Some((end, per)) = unit {
            while self.pos < end {
                self.bump();
            }
            let seconds = value * per;
            if !seconds.is_finite() {
                return Err(self.err(line, col, format!("duration {text} is out of range")));
            }
            return Ok(Tok::Duration {
                text: self.src[start..end].to_string(),
                seconds,
            });
        }
        if float {
            if value.is_finite() {
                Ok(Tok::Float(value))
            } else {
                Err(self.err(line, col, format!("number {text} is out of range")))
            }
        } else {
            text.parse::<i64>()
                .map(Tok::Int)
                .map_err(|_| self.err(line, col, format!("integer {text} does not fit in 64 bits")))
        }
    }

    fn string(&mut self, line: usize, col: usize) -> Result<Tok> {
        self.bump();
        let mut s = String::new();
        loop {
            match self.bump() {
                None => return Err(self.err(line, col, "unterminated string; close it with \"")),
                Some('"') => return Ok(Tok::Str(s)),
                Some('\\') => {
                    let (l, c) = (self.line, self.col);
                    match self.bump() {
                        Some('"') => s.push('"'),
                        Some('\\') => s.push('\\'),
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some('r') => s.push('\r'),
                        Some('0') => s.push('\0'),
                        Some('u') if self.peek() == Some('{') => {
                            self.bump();
                            let start = self.pos;
                            while matches!(self.peek(), Some(c) if c.is_ascii_hexdigit()) {
                                self.bump();
                            }
                            let hex = &self.src[start..self.pos];
                            let ch = u32::from_str_radix(hex, 16).ok().and_then(char::from_u32);
                            match (ch, self.bump()) {
                                (Some(ch), Some('}')) => s.push(ch),
                                _ => return Err(self.err(
                                    l,
                                    c,
                                    "bad \\u{...} escape; write \\u{hex} with a valid code point",
                                )),
                            }
                        }
                        // The grammar allows any escaped character; others are kept as written
                        // (`"\d+"` stays a backslash and a d).
                        Some(other) => {
                            s.push('\\');
                            s.push(other);
                        }
                        None => {
                            return Err(self.err(
                                line,
                                col,
                                "unterminated string; close it with \"",
                            ))
                        }
                    }
                }
                Some(c) => s.push(c),
            }
        }
    }
}

/// Every token of `text`, ending with `Eof`. `origin` (a file name) prefixes errors.
pub fn lex(text: &str, origin: &str) -> Result<Vec<Token>> {
    Lexer {
        src: text,
        origin,
        pos: 0,
        line: 1,
        col: 1,
    }
    .tokens()
}

/// How a token reads in an error message.
pub fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("`{s}`"),
        Tok::Str(s) => {
            let short: String = s.chars().take(40).collect();
            format!("string {short:?}")
        }
        Tok::Int(i) => format!("number {i}"),
        Tok::Float(f) => format!("number {f}"),
        Tok::Duration { text, .. } => format!("duration {text}"),
        Tok::Vault(v) => format!("`{v}`"),
        Tok::Punct(p) => format!("`{p}`"),
        Tok::Eof => "end of input".into(),
    }
}
