//! Symbiont DSL (`.symbi` files): parse agent definitions into a kept AST and a governance
//! spec. Nothing here executes agent bodies.
//!
//! * [`lexer`]: tokens of the published grammar (durations, `vault://` references, `//` and
//!   `#` comments), with 1-based line:col and byte spans.
//! * [`ast`]: the typed tree (items, statements, expressions), the spec an agent's `with`
//!   attributes become, and [`ast::Tree`], the ordered data form handed to Python.
//! * [`parser`]: recursive descent over the grammar of ThirdKeyAI/Symbiont
//!   (`crates/dsl/tree-sitter-symbiont/grammar.js`). `policy` blocks, top-level or inside
//!   `agent`/`channel`, are compiled by the policy engine's own parser
//!   ([`crate::policy::parser`]), so an embedded policy equals the same policy parsed alone.
//! * [`py`]: the `dsl_parse` binding.

pub mod ast;
pub mod lexer;
pub mod parser;
pub mod py;

/// Everything that can go wrong while reading a DSL file.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DslError {
    /// The text does not follow the grammar, or a governance setting is invalid.
    /// `line` and `column` are 1-based; `message` says what was expected.
    #[error("{origin}:{line}:{column}: {message}")]
    Parse {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
}

pub type Result<T> = std::result::Result<T, DslError>;
