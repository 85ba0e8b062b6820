//! Tokens of the Symbiont DSL: the shared tokenizer ([`crate::lex`]) in the DSL's dialect.
//! `//` and `#` start line comments (`/* */` is accepted too, as the policy engine accepts
//! it); durations (`30s`, `60.seconds`), `1_000` and `vault://` references are tokens;
//! unknown string escapes stay as written. Positions are 1-based line:col counted in
//! characters; `start..end` is the token's byte span, used to hand `policy` blocks to the
//! policy parser.

use crate::lex::{Dialect, LexError};
pub use crate::lex::{Tok, Token};

use super::{DslError, Result};

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

/// The DSL's tokens.
static DSL: Dialect = Dialect {
    // Longest first, so `==` wins over `=`.
    puncts: &[
        "->", "=>", "==", "!=", "<=", ">=", "&&", "||", "+=", "-=", "*=", "/=", "%=", "{", "}",
        "[", "]", "(", ")", ":", ";", ",", ".", "=", "<", ">", "!", "+", "-", "*", "/", "%",
    ],
    units: UNITS,
    long_units: LONG_UNITS,
    digit_separators: true,
    vault_refs: true,
    signed_numbers: false,
    exponents: false,
    lenient_escapes: true,
    strict_chars: Some("Symbiont DSL"),
    describe_chars: 40,
};

/// Seconds in one `unit`, for duration literals and duration strings such as `"30m"`.
pub fn unit_seconds(unit: &str) -> Option<f64> {
    UNITS
        .iter()
        .chain(LONG_UNITS)
        .find(|(u, _)| *u == unit)
        .map(|(_, s)| *s)
}

/// Every token of `text`, ending with `Eof`. `origin` (a file name) prefixes errors.
pub fn lex(text: &str, origin: &str) -> Result<Vec<Token>> {
    DSL.lex(text).map_err(
        |LexError::Invalid {
             line,
             column,
             message,
         }| DslError::Parse {
            origin: origin.to_string(),
            line,
            column,
            message,
        },
    )
}

/// How a token reads in an error message.
pub fn describe(t: &Tok) -> String {
    DSL.describe(t)
}
