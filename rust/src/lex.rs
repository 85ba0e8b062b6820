//! The one tokenizer of symbi's languages: the Symbiont DSL (`.symbi` files) and policy text
//! (policy blocks and condition expressions). Both share whitespace, comments (`//`, `#` and
//! `/* */`), identifiers, double-quoted strings, numbers and 1-based line:col positions counted
//! in characters; a [`Dialect`] says what differs (punctuation, durations, `vault://`
//! references, signed numbers and exponents, escapes, characters no token starts with).
//! `start..end` of a token is its byte span, used to hand `policy` blocks of a DSL file to the
//! policy parser.
//!
//! Errors are [`LexError`]s without a file name; each parser adds its origin to them.

/// Stack of the thread a deeply nested parse moves to. Recursive descent uses a few KiB of
/// stack per nesting level (tens in debug builds); with this much, the parsers' depth limits
/// are reached long before the stack ends, whatever the caller's stack size.
const PARSER_STACK: usize = 64 << 20;

/// Nesting a parse may reach on the caller's own stack; text that could nest deeper is parsed
/// on a thread with [`PARSER_STACK`] bytes of stack.
const CALLER_LEVELS: usize = 32;

thread_local! {
    static ON_PARSER_STACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// An upper bound of how deep a recursive-descent parse of `toks` can nest: the deepest
/// bracket nesting plus every token that can nest without a bracket (prefix operators,
/// lambdas, generics, `else if`).
pub fn nesting_bound(toks: &[Token]) -> usize {
    let (mut depth, mut deepest, mut prefix) = (0usize, 0usize, 0usize);
    for t in toks {
        match &t.tok {
            Tok::Punct("(" | "[" | "{") => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            Tok::Punct(")" | "]" | "}") => depth = depth.saturating_sub(1),
            Tok::Punct("!" | "-" | "<" | "=>") => prefix += 1,
            Tok::Ident(w) if w == "not" || w == "if" => prefix += 1,
            _ => {}
        }
    }
    deepest + prefix
}

/// Run `parse` where the stack is deep enough for `toks`: on this thread when they cannot
/// nest more than a few levels (or this is already a parser thread), else on a thread with a
/// large stack, so a deep parse is bounded by the parser's depth limit, never by the
/// caller's stack size (small in some embedding threads).
pub fn with_parser_stack<T: Send>(toks: &[Token], parse: impl Fn() -> T + Sync) -> T {
    if ON_PARSER_STACK.with(|on| on.get()) || nesting_bound(toks) <= CALLER_LEVELS {
        return parse();
    }
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("symbi-parse".into())
            .stack_size(PARSER_STACK)
            .spawn_scoped(scope, || {
                ON_PARSER_STACK.with(|on| on.set(true));
                parse()
            });
        match worker {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            // No thread available: parse on this one (the depth limit still applies).
            Err(_) => parse(),
        }
    })
}

/// Largest text either language accepts, in bytes. Every token is kept in memory while a
/// file parses, so this bounds the memory of one parse (a few hundred MiB at worst).
pub const MAX_INPUT_BYTES: usize = 4 << 20;

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
    /// A character no token of the dialect starts with (dialects without `strict_chars`).
    Other(char),
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

/// Text that is not made of tokens of the dialect. `line` and `column` are 1-based.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum LexError {
    #[error("{line}:{column}: {message}")]
    Invalid {
        line: usize,
        column: usize,
        message: String,
    },
}

/// What one language's tokens look like, beyond what all share.
#[derive(Debug)]
pub struct Dialect {
    /// Punctuation, longest first (so `==` wins over `=`).
    pub puncts: &'static [&'static str],
    /// Units written right after a number (`30s`) that make it a duration; an unknown word
    /// there is an error. Empty: a number followed by a word is two tokens.
    pub units: &'static [(&'static str, f64)],
    /// Units written after a dot (`30.seconds`).
    pub long_units: &'static [(&'static str, f64)],
    /// `1_000`: an underscore between digits.
    pub digit_separators: bool,
    /// `vault://path` is one token.
    pub vault_refs: bool,
    /// `-3` (a `-` right before a digit) is one number token.
    pub signed_numbers: bool,
    /// `1e5`, `2.5E-3` are floats.
    pub exponents: bool,
    /// Unknown escapes stay as written (`"\d"` is a backslash and a d) and `\0` is NUL.
    /// Otherwise an unknown escape is an error.
    pub lenient_escapes: bool,
    /// `Some(language)`: a character no token starts with is an error naming the language.
    /// `None`: it is a [`Tok::Other`] token for the parser to judge.
    pub strict_chars: Option<&'static str>,
    /// Strings quoted in error messages ([`Dialect::describe`]) are cut to this many chars.
    pub describe_chars: usize,
}

impl Dialect {
    /// Every token of `text`, ending with `Eof`.
    pub fn lex(&self, text: &str) -> Result<Vec<Token>, LexError> {
        if text.len() > MAX_INPUT_BYTES {
            return Err(LexError::Invalid {
                line: 1,
                column: 1,
                message: format!(
                    "the text is {} bytes, more than the limit of {MAX_INPUT_BYTES} bytes ({} MiB); split it into several files",
                    text.len(),
                    MAX_INPUT_BYTES >> 20
                ),
            });
        }
        Lexer {
            d: self,
            src: text,
            pos: 0,
            line: 1,
            col: 1,
        }
        .tokens()
    }

    /// How a token reads in an error message.
    pub fn describe(&self, t: &Tok) -> String {
        match t {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Str(s) if s.chars().count() > self.describe_chars => {
                let short: String = s.chars().take(self.describe_chars).collect();
                format!("string {short:?}")
            }
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Int(i) => format!("number {i}"),
            Tok::Float(f) => format!("number {f}"),
            Tok::Duration { text, .. } => format!("duration {text}"),
            Tok::Vault(v) => format!("`{v}`"),
            Tok::Punct(p) => format!("`{p}`"),
            Tok::Other(c) => format!("`{c}`"),
            Tok::Eof => "end of input".into(),
        }
    }
}

/// A position in a token list, with the lookahead both parsers use. The list ends with `Eof`,
/// where the position stays.
pub struct Cursor<'a> {
    pub toks: &'a [Token],
    pub i: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(toks: &'a [Token]) -> Self {
        Cursor { toks, i: 0 }
    }

    pub fn peek(&self) -> &'a Tok {
        &self.toks[self.i].tok
    }

    pub fn peek_at(&self, n: usize) -> &'a Tok {
        &self.toks[(self.i + n).min(self.toks.len() - 1)].tok
    }

    /// The current token; the position moves on (but not past `Eof`).
    pub fn advance(&mut self) -> Token {
        let t = self.toks[self.i].clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }

    pub fn is_punct(&self, p: &str) -> bool {
        matches!(self.peek(), Tok::Punct(q) if *q == p)
    }

    pub fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Tok::Ident(x) if x == w)
    }

    pub fn eat(&mut self, p: &str) -> bool {
        let yes = self.is_punct(p);
        if yes {
            self.advance();
        }
        yes
    }

    pub fn eat_word(&mut self, w: &str) -> bool {
        let yes = self.is_word(w);
        if yes {
            self.advance();
        }
        yes
    }
}

/// Gives a parser struct with a `cur: Cursor` field the cursor's methods (`self.peek()`,
/// `self.eat("{")`, `self.i`, ...), by dereferencing to the cursor.
macro_rules! cursor_methods {
    ($parser:ident) => {
        impl<'a> std::ops::Deref for $parser<'a> {
            type Target = $crate::lex::Cursor<'a>;
            fn deref(&self) -> &Self::Target {
                &self.cur
            }
        }

        impl std::ops::DerefMut for $parser<'_> {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.cur
            }
        }
    };
}
pub(crate) use cursor_methods;

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

struct Lexer<'a> {
    d: &'a Dialect,
    src: &'a str,
    pos: usize,
    line: usize,
    col: usize,
}

impl Lexer<'_> {
    fn err(&self, line: usize, column: usize, message: impl Into<String>) -> LexError {
        LexError::Invalid {
            line,
            column,
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

    fn skip_trivia(&mut self) -> Result<(), LexError> {
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

    fn tokens(mut self) -> Result<Vec<Token>, LexError> {
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
            let tok = if self.d.vault_refs && self.rest().starts_with("vault://") {
                self.vault(line, col)?
            } else if c.is_ascii_alphabetic() || c == '_' {
                while matches!(self.peek(), Some(c) if is_ident_char(c)) {
                    self.bump();
                }
                Tok::Ident(self.src[start..self.pos].to_string())
            } else if c.is_ascii_digit()
                || (self.d.signed_numbers
                    && c == '-'
                    && matches!(self.peek2(), Some(d) if d.is_ascii_digit()))
            {
                self.number(line, col)?
            } else if c == '"' {
                self.string(line, col)?
            } else if let Some(p) = self.d.puncts.iter().find(|p| self.rest().starts_with(**p)) {
                for _ in 0..p.len() {
                    self.bump();
                }
                Tok::Punct(p)
            } else if let Some(language) = self.d.strict_chars {
                if c == '\'' {
                    return Err(self.err(line, col, "strings use double quotes: \"text\""));
                }
                return Err(self.err(
                    line,
                    col,
                    format!("unexpected character {c:?}; it is not part of the {language}"),
                ));
            } else {
                self.bump();
                Tok::Other(c)
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

    fn vault(&mut self, line: usize, col: usize) -> Result<Tok, LexError> {
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
        // `\d+`, with separators `\d+(_\d+)*`: an underscore only between digits.
        loop {
            while matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
                self.bump();
            }
            if self.d.digit_separators
                && self.peek() == Some('_')
                && matches!(self.peek2(), Some(c) if c.is_ascii_digit())
            {
                self.bump();
            } else {
                return;
            }
        }
    }

    fn number(&mut self, line: usize, col: usize) -> Result<Tok, LexError> {
        let start = self.pos;
        if self.peek() == Some('-') {
            self.bump();
        }
        self.digits();
        let mut float = false;
        if self.peek() == Some('.') && matches!(self.peek2(), Some(c) if c.is_ascii_digit()) {
            float = true;
            self.bump();
            self.digits();
        }
        if self.d.exponents && matches!(self.peek(), Some('e' | 'E')) {
            let save = (self.pos, self.line, self.col);
            self.bump();
            if matches!(self.peek(), Some('+' | '-')) {
                self.bump();
            }
            if matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
                float = true;
                self.digits();
            } else {
                (self.pos, self.line, self.col) = save;
            }
        }
        let text: String = self.src[start..self.pos]
            .chars()
            .filter(|c| *c != '_')
            .collect();
        let unit = self.unit(&text, line, col)?;
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

    /// A duration unit right after the number (`30s`, `6months`) or `.seconds`: where it ends
    /// and its length in seconds.
    fn unit(&self, text: &str, line: usize, col: usize) -> Result<Option<(usize, f64)>, LexError> {
        if self.d.units.is_empty() {
            return Ok(None);
        }
        let unit_start = self.pos;
        if matches!(self.peek(), Some(c) if c.is_ascii_alphabetic() || c == '_') {
            let end = unit_start
                + self
                    .rest()
                    .find(|c: char| !is_ident_char(c))
                    .unwrap_or(self.rest().len());
            let word = &self.src[unit_start..end];
            return match self.d.units.iter().find(|(u, _)| *u == word) {
                Some((_, s)) => Ok(Some((end, *s))),
                None => {
                    // `ms` is accepted but not advertised.
                    let short: Vec<&str> = (self.d.units.iter().map(|(u, _)| *u))
                        .filter(|u| *u != "ms")
                        .collect();
                    let long: Vec<String> = self
                        .d
                        .long_units
                        .iter()
                        .map(|(u, _)| format!(".{u}"))
                        .collect();
                    Err(self.err(
                        line,
                        col,
                        format!(
                            "unknown unit `{word}` after {text}; durations use {} or {}",
                            short.join(", "),
                            long.join("/")
                        ),
                    ))
                }
            };
        }
        if self.peek() == Some('.') {
            let after = &self.src[unit_start + 1..];
            for (u, s) in self.d.long_units {
                if after.starts_with(u) && !after[u.len()..].starts_with(is_ident_char) {
                    return Ok(Some((unit_start + 1 + u.len(), *s)));
                }
            }
        }
        Ok(None)
    }

    fn string(&mut self, line: usize, col: usize) -> Result<Tok, LexError> {
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
                        Some('0') if self.d.lenient_escapes => s.push('\0'),
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
                        Some(other) if self.d.lenient_escapes => {
                            s.push('\\');
                            s.push(other);
                        }
                        None if self.d.lenient_escapes => {
                            return Err(self.err(
                                line,
                                col,
                                "unterminated string; close it with \"",
                            ))
                        }
                        other => {
                            return Err(self.err(
                                l,
                                c,
                                format!(
                                    "unknown escape \\{}; use \\\" \\\\ \\n \\t \\r or \\u{{hex}}",
                                    other.unwrap_or(' ')
                                ),
                            ))
                        }
                    }
                }
                Some(c) => s.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dialect mixing the DSL's and the policy's choices.
    static PLAIN: Dialect = Dialect {
        puncts: &["==", "=", "(", ")", "-"],
        units: &[("s", 1.0), ("ms", 0.001)],
        long_units: &[("minutes", 60.0)],
        digit_separators: true,
        vault_refs: false,
        signed_numbers: true,
        exponents: true,
        lenient_escapes: false,
        strict_chars: None,
        describe_chars: 3,
    };

    #[test]
    fn positions_count_characters_and_lines() {
        let toks = PLAIN.lex("a /* é\n */ ==\n  \"ü\" # c\n-1e3 @").unwrap();
        let at: Vec<(usize, usize)> = toks.iter().map(|t| (t.line, t.col)).collect();
        assert_eq!(at, vec![(1, 1), (2, 5), (3, 3), (4, 1), (4, 6), (4, 7)]);
        assert_eq!(toks[3].tok, Tok::Float(-1000.0));
        assert_eq!(toks[4].tok, Tok::Other('@'));
        assert_eq!(PLAIN.describe(&Tok::Str("abcdef".into())), "string \"abc\"");
        let toks = PLAIN.lex("1_000s 2.minutes 3").unwrap();
        let secs: Vec<Option<f64>> = (toks.iter().map(|t| match &t.tok {
            Tok::Duration { seconds, .. } => Some(*seconds),
            _ => None,
        }))
        .collect();
        assert_eq!(secs, vec![Some(1000.0), Some(120.0), None, None]);
        let Err(LexError::Invalid { message, .. }) = PLAIN.lex("3px") else {
            panic!("an unknown unit is an error")
        };
        assert_eq!(
            message,
            "unknown unit `px` after 3; durations use s or .minutes"
        );
    }

    #[test]
    fn input_size_is_capped() {
        let big = " ".repeat(MAX_INPUT_BYTES + 1);
        let Err(LexError::Invalid {
            line,
            column,
            message,
        }) = PLAIN.lex(&big)
        else {
            panic!("a text over the limit must be refused")
        };
        assert_eq!((line, column), (1, 1));
        assert!(message.contains("more than the limit"), "{message}");
        assert!(PLAIN.lex(&big[1..]).is_ok());
    }
}
