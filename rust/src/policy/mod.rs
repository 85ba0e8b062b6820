//! Policy engine: parse Symbiont policy blocks (or their dict form) into one IR, compile it
//! into an index by action, and decide requests (deny overrides allow, fail closed).
//!
//! * [`ast`]: the IR (policies, rules, typed condition expressions, values), its DSL printer
//!   and its dict-form conversion.
//! * [`parser`]: recursive-descent parser over the shared tokenizer (crate::lex) for policy text, with line:col errors.
//! * [`condition`]: typed evaluation of condition expressions against a request.
//! * [`engine`]: the compiled, atomically swapped policy set and the decision procedure.
//! * [`py`]: Python bindings (`Policy`, `PolicyEngineCore`, decision classes).

pub mod ast;
pub mod condition;
pub mod engine;
pub mod parser;
pub mod py;

/// Everything that can go wrong in the policy module.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum PolicyError {
    /// Policy text could not be parsed. `line` and `column` are 1-based.
    #[error("{origin}:{line}:{column}: {message}")]
    Parse {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A policy in dict form has a missing or mistyped field.
    #[error("invalid policy: `{field}`: {message}")]
    InvalidPolicy { field: String, message: String },
    /// A request (or a value inside it) cannot be used for a decision.
    #[error("malformed policy request: `{field}`: {message}")]
    BadRequest { field: String, message: String },
    /// A condition could not be evaluated (missing field, incompatible types).
    #[error("{0}")]
    Eval(String),
    /// No policy is registered under this id.
    #[error("no policy with id {0:?} is registered; list ids with engine.ids()")]
    UnknownPolicy(String),
}

pub type Result<T> = std::result::Result<T, PolicyError>;
