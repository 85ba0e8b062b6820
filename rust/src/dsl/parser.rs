//! Recursive-descent parser for the Symbiont DSL, after the published grammar
//! (ThirdKeyAI/Symbiont `crates/dsl/tree-sitter-symbiont/grammar.js`, `docs/dsl-specification.md`):
//!
//! ```text
//! program   := item*
//! item      := metadata | agent | policy | type | function | schedule | channel | memory | webhook
//! metadata  := "metadata" "{" (NAME ("=" | ":") data ","?)* "}"
//! agent     := "agent" NAME ("(" (param ","?)* ")")? ("->" type)? "{" agent_item* "}"
//! agent_item:= "capabilities" ("=" | ":") array | policy | function | with      (";" between is fine)
//! with      := "with" (NAME "=" data ","?)* block
//! policy    := "policy" NAME "{" ... "}"          // compiled by crate::policy::parser
//! function  := "function" NAME "(" (param ","?)* ")" ("->" type)? block
//! type      := "type" NAME "=" ("{" (param ","?)* "}" | type)
//! section   := ("schedule"|"channel"|"memory"|"webhook") NAME "{" (NAME ("="|":")? data ","? | NAME "{" ... "}" | policy)* "}"
//! param     := NAME ":" type;   type := NAME ("<" type ("," type)* ">")?
//! block     := "{" stmt* expr? "}"
//! stmt      := "let" NAME "=" expr ";" | "return" expr? ";" | lvalue ("="|"+="|...) expr ";" | expr ";"
//!            | "if" ("let" pattern "=")? expr block ("else" (if | block))?
//!            | "for" NAME "in" expr block | "match" expr "{" (pattern "=>" (block | expr) ","?)* "}"
//!            | "try" block ("catch" "(" NAME NAME? ")" block)*
//! expr      := "||" < "&&" < ("==" "!=" "in") < ("<" ">" "<=" ">=") < ("+" "-") < ("*" "/" "%")
//!              < unary ("!" "not" "-") < postfix (".name" call "[i]") < primary
//! primary   := literal | NAME | NAME "=>" expr | Type "{" fields "}" | "{" fields "}" | "[" exprs "]"
//!            | "(" expr ")" | "if" expr block "else" (if | block) | vault://path
//! ```
//! Literals: strings (`\` escapes, no interpolation), numbers (`1_000`, `3.14`), booleans,
//! durations (`30s`, `5m`, `2h`, `7d`, `1w`, `6months`, `1y`, `30.seconds`).

use crate::policy::parser::parse_policies;

use super::ast::*;
use super::lexer::{describe, lex, unit_seconds, Tok, Token};
use super::{DslError, Result};
use crate::lex::Cursor;

/// Deepest nesting of blocks and expressions accepted, counting operator and `.`/call
/// chains (`a + b + c` is 2 deep): deeper input is refused with an error, never a crash.
pub const MAX_DEPTH: usize = 256;

const RESERVED: &[&str] = &[
    "if", "else", "let", "for", "in", "match", "try", "catch", "return", "true", "false", "not",
];

/// Options of a parse.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// When true (the default), a `policy` block the policy engine cannot compile is an
    /// error. When false it is kept as grammar rules and reported as a warning.
    pub strict_policies: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            strict_policies: true,
        }
    }
}

/// A problem that did not stop the parse (lenient mode only).
#[derive(Debug, Clone, PartialEq)]
pub struct Warning {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parse a whole `.symbi` text. `origin` (a file name) prefixes error positions.
/// The parser recurses once per nesting level; deeply nested text is parsed on a thread with
/// a large stack ([`crate::lex::with_parser_stack`]), so the caller's stack size does not matter.
pub fn parse_file(text: &str, origin: &str, opts: Options) -> Result<(File, Vec<Warning>)> {
    let toks = lex(text, origin)?;
    crate::lex::with_parser_stack(&toks, || {
        let mut p = Parser {
            cur: Cursor::new(&toks),
            text,
            origin,
            opts,
            depth: 0,
            warnings: vec![],
        };
        let f = p.file()?;
        Ok((f, p.warnings))
    })
}

/// Parse with the default (strict) options.
pub fn parse(text: &str, origin: &str) -> Result<File> {
    parse_file(text, origin, Options::default()).map(|(f, _)| f)
}

struct Parser<'a> {
    /// The tokens and the position in them (`peek`, `advance`, `eat`, ... come from the cursor).
    cur: Cursor<'a>,
    text: &'a str,
    origin: &'a str,
    opts: Options,
    depth: usize,
    warnings: Vec<Warning>,
}

fn pos_of(t: &Token) -> Pos {
    Pos {
        line: t.line,
        column: t.col,
    }
}

crate::lex::cursor_methods!(Parser);

impl Parser<'_> {
    // ------------------------------------------------------------- helpers

    fn pos(&self) -> Pos {
        pos_of(&self.toks[self.i])
    }

    fn err_at(&self, pos: Pos, message: impl Into<String>) -> DslError {
        DslError::Parse {
            origin: self.origin.to_string(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
        }
    }

    /// "expected X, found Y" at the current token.
    fn expected(&self, what: impl AsRef<str>) -> DslError {
        self.err_at(
            self.pos(),
            format!(
                "expected {}, found {}",
                what.as_ref(),
                describe(self.peek())
            ),
        )
    }

    fn expect(&mut self, p: &str, why: &str) -> Result<()> {
        if self.eat(p) {
            Ok(())
        } else {
            Err(self.expected(format!("`{p}` {why}")))
        }
    }

    /// A name that is not a reserved word.
    fn name(&mut self, what: &str) -> Result<String> {
        match self.peek().clone() {
            Tok::Ident(s) if !RESERVED.contains(&s.as_str()) => {
                self.advance();
                Ok(s)
            }
            _ => Err(self.expected(what)),
        }
    }

    /// Any identifier (property keys may be words such as `agent` or `memory`).
    fn word(&mut self, what: &str) -> Result<String> {
        match self.peek().clone() {
            Tok::Ident(s) => {
                self.advance();
                Ok(s)
            }
            _ => Err(self.expected(what)),
        }
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err_at(
                self.pos(),
                format!("nested more than {MAX_DEPTH} levels deep; split the code into functions"),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn separators(&mut self) {
        while self.eat(";") || self.eat(",") {}
    }

    // ------------------------------------------------------------- items

    fn file(&mut self) -> Result<File> {
        let mut f = File::default();
        loop {
            self.separators();
            let kw = match self.peek() {
                Tok::Eof => return Ok(f),
                Tok::Ident(s) => s.clone(),
                _ => return Err(self.expected(TOP_LEVEL)),
            };
            match kw.as_str() {
                "metadata" => {
                    let attrs = self.metadata()?;
                    for a in attrs {
                        if f.metadata.iter().any(|m| m.name == a.name) {
                            return Err(self.err_at(
                                a.pos,
                                format!("duplicate metadata key `{}`; give it once", a.name),
                            ));
                        }
                        f.metadata.push(a);
                    }
                }
                "agent" => {
                    let a = self.agent()?;
                    if let Some(prev) = f.agents.iter().find(|p| p.name == a.name) {
                        return Err(self.err_at(
                            a.pos,
                            format!(
                                "agent `{}` is already defined at line {}; agent names must be unique",
                                a.name, prev.pos.line
                            ),
                        ));
                    }
                    f.agents.push(a);
                }
                "policy" => {
                    let p = self.policy_block()?;
                    f.policies.push(p);
                }
                "type" => {
                    let t = self.type_def()?;
                    f.types.push(t);
                }
                "function" => {
                    let func = self.function()?;
                    f.functions.push(func);
                }
                "schedule" | "channel" | "memory" | "webhook" => {
                    let s = self.section()?;
                    f.sections.push(s);
                }
                _ => return Err(self.expected(TOP_LEVEL)),
            }
        }
    }

    fn metadata(&mut self) -> Result<Vec<Attr>> {
        self.advance(); // `metadata`
        self.expect("{", "to open the metadata block")?;
        let mut out = Vec::new();
        loop {
            self.separators();
            if self.eat("}") {
                return Ok(out);
            }
            let pos = self.pos();
            let name = self.word("a metadata key such as version, or `}`")?;
            if !self.eat("=") && !self.eat(":") {
                return Err(self.expected(format!("`=` or `:` after metadata key `{name}`")));
            }
            let value = self.data()?;
            out.push(Attr { name, value, pos });
        }
    }

    fn agent(&mut self) -> Result<Agent> {
        let pos = self.pos();
        self.advance(); // `agent`
        let name = self.name("an agent name")?;
        let params = if self.is_punct("(") {
            self.params()?
        } else {
            vec![]
        };
        let return_type = if self.eat("->") {
            Some(self.ty()?)
        } else {
            None
        };
        self.expect("{", "to open the agent body")?;
        let mut a = Agent {
            name,
            params,
            return_type,
            capabilities: vec![],
            policies: vec![],
            functions: vec![],
            with_blocks: vec![],
            spec: AgentSpec::default(),
            pos,
        };
        loop {
            self.separators();
            if self.eat("}") {
                break;
            }
            match self.peek() {
                Tok::Ident(w) if w == "capabilities" => {
                    self.advance();
                    if !self.eat("=") && !self.eat(":") {
                        return Err(self.expected("`=` or `:` after `capabilities`"));
                    }
                    for c in self.capability_list()? {
                        if !a.capabilities.contains(&c) {
                            a.capabilities.push(c);
                        }
                    }
                }
                Tok::Ident(w) if w == "policy" => {
                    let p = self.policy_block()?;
                    if a.policies.iter().any(|q| q.name() == p.name()) {
                        return Err(self.err_at(
                            self.pos(),
                            format!("agent `{}` has two policies named `{}`", a.name, p.name()),
                        ));
                    }
                    a.policies.push(p);
                }
                Tok::Ident(w) if w == "function" => {
                    let f = self.function()?;
                    a.functions.push(f);
                }
                Tok::Ident(w) if w == "with" => {
                    let w = self.with_block()?;
                    a.with_blocks.push(w);
                }
                Tok::Eof => return Err(self.expected("`}` to close the agent")),
                _ => {
                    return Err(self
                        .expected("an agent item: capabilities, policy, function, with, or `}`"))
                }
            }
        }
        a.spec = self.spec(&a)?;
        Ok(a)
    }

    fn capability_list(&mut self) -> Result<Vec<String>> {
        self.expect("[", "to open the capability list")?;
        let mut out = Vec::new();
        loop {
            if self.eat("]") {
                return Ok(out);
            }
            match self.peek().clone() {
                Tok::Str(s) if !s.is_empty() => out.push(s),
                Tok::Ident(s) if !RESERVED.contains(&s.as_str()) => out.push(s),
                _ => return Err(self.expected("a capability (a name or a non-empty string)")),
            }
            self.advance();
            if !self.eat(",") {
                self.expect("]", "to close the capability list")?;
                return Ok(out);
            }
        }
    }

    fn params(&mut self) -> Result<Vec<Param>> {
        self.expect("(", "to open the parameter list")?;
        let mut out: Vec<Param> = Vec::new();
        loop {
            if self.eat(")") {
                return Ok(out);
            }
            let pos = self.pos();
            let name = self.name("a parameter name or `)`")?;
            if out.iter().any(|p| p.name == name) {
                return Err(self.err_at(pos, format!("duplicate parameter `{name}`")));
            }
            self.expect(":", &format!("and a type after parameter `{name}`"))?;
            let ty = self.ty()?;
            out.push(Param { name, ty, pos });
            self.eat(",");
        }
    }

    fn ty(&mut self) -> Result<Type> {
        self.enter()?;
        let name = self.name("a type such as String, int or Result<T, E>")?;
        let t = if self.eat("<") {
            let mut args = vec![self.ty()?];
            while self.eat(",") {
                args.push(self.ty()?);
            }
            self.expect(">", "to close the type arguments")?;
            Type::Generic(name, args)
        } else {
            Type::Named(name)
        };
        self.leave();
        Ok(t)
    }

    fn type_def(&mut self) -> Result<TypeDef> {
        let pos = self.pos();
        self.advance(); // `type`
        let name = self.name("a type name")?;
        self.expect("=", &format!("after `type {name}`"))?;
        let spec = if self.eat("{") {
            let mut fields: Vec<Param> = Vec::new();
            loop {
                if self.eat("}") {
                    break;
                }
                let fpos = self.pos();
                let fname = self.word("a field name or `}`")?;
                self.expect(":", &format!("and a type after field `{fname}`"))?;
                let ty = self.ty()?;
                fields.push(Param {
                    name: fname,
                    ty,
                    pos: fpos,
                });
                self.eat(",");
            }
            TypeSpec::Struct(fields)
        } else {
            TypeSpec::Alias(self.ty()?)
        };
        Ok(TypeDef { name, spec, pos })
    }

    fn function(&mut self) -> Result<Function> {
        let pos = self.pos();
        self.advance(); // `function`
        let name = self.name("a function name")?;
        if !self.is_punct("(") {
            return Err(self.expected(format!("`(` and the parameters of function `{name}`")));
        }
        let params = self.params()?;
        let return_type = if self.eat("->") {
            Some(self.ty()?)
        } else {
            None
        };
        let body = self.block()?;
        Ok(Function {
            name,
            params,
            return_type,
            body,
            pos,
        })
    }

    fn with_block(&mut self) -> Result<WithBlock> {
        let pos = self.pos();
        self.advance(); // `with`
        let mut attrs: Vec<Attr> = Vec::new();
        while !self.is_punct("{") {
            let apos = self.pos();
            let name =
                self.word("a setting such as sandbox = \"Tier1\", or `{` to start the body")?;
            self.expect("=", &format!("after `{name}`"))?;
            let value = self.data()?;
            if attrs.iter().any(|a| a.name == name) {
                return Err(self.err_at(apos, format!("`{name}` is set twice in this with block")));
            }
            attrs.push(Attr {
                name,
                value,
                pos: apos,
            });
            self.eat(",");
        }
        let body = self.block()?;
        Ok(WithBlock { attrs, body, pos })
    }

    fn section(&mut self) -> Result<Section> {
        let pos = self.pos();
        let kind = self.word("a block keyword")?;
        let name = self.name(&format!("a {kind} name"))?;
        self.expect("{", &format!("to open {kind} `{name}`"))?;
        let mut s = Section {
            kind,
            name,
            props: vec![],
            blocks: vec![],
            policies: vec![],
            pos,
        };
        loop {
            self.separators();
            if self.eat("}") {
                return Ok(s);
            }
            if self.is_word("policy") && matches!(self.peek_at(1), Tok::Ident(_)) {
                let p = self.policy_block()?;
                s.policies.push(p);
                continue;
            }
            let key = self.word(&format!("a property of {} `{}`, or `}}`", s.kind, s.name))?;
            if self.eat("{") {
                let mut props = Vec::new();
                loop {
                    self.separators();
                    if self.eat("}") {
                        break;
                    }
                    props.push(self.property(&key)?);
                }
                s.blocks.push((key, props));
            } else {
                self.i -= 1;
                let a = self.property(&s.kind.clone())?;
                s.props.push(a);
            }
        }
    }

    /// `NAME ("=" | ":")? data`.
    fn property(&mut self, within: &str) -> Result<Attr> {
        let pos = self.pos();
        let name = self.word(&format!("a property of `{within}`, or `}}`"))?;
        if !self.eat("=") {
            self.eat(":");
        }
        let value = self.data()?;
        Ok(Attr { name, value, pos })
    }

    /// A literal value: the grammar's `value` (string, duration, number, boolean, name),
    /// `vault://` references, arrays and records of them.
    fn data(&mut self) -> Result<Data> {
        self.enter()?;
        let saved = self.i;
        let t = self.peek().clone();
        self.advance();
        let v = match t {
            Tok::Str(s) => Data::Str(s),
            Tok::Int(i) => Data::Int(i),
            Tok::Float(f) => Data::Float(f),
            Tok::Duration { text, seconds } => Data::Duration { text, seconds },
            Tok::Vault(v) => Data::Vault(v),
            Tok::Ident(w) if w == "true" => Data::Bool(true),
            Tok::Ident(w) if w == "false" => Data::Bool(false),
            Tok::Ident(w) if !RESERVED.contains(&w.as_str()) => Data::Ident(w),
            Tok::Punct("-") if matches!(self.peek(), Tok::Int(_) | Tok::Float(_)) => {
                match self.advance().tok {
                    Tok::Int(i) => Data::Int(-i),
                    Tok::Float(f) => Data::Float(-f),
                    _ => unreachable!("checked above"),
                }
            }
            Tok::Punct("[") => {
                let mut items = Vec::new();
                loop {
                    if self.eat("]") {
                        break;
                    }
                    items.push(self.data()?);
                    if !self.eat(",") {
                        self.expect("]", "to close the list")?;
                        break;
                    }
                }
                Data::List(items)
            }
            Tok::Punct("{") => {
                let mut fields: Vec<(String, Data)> = Vec::new();
                loop {
                    self.separators();
                    if self.eat("}") {
                        break;
                    }
                    let kpos = self.pos();
                    let key = match self.peek().clone() {
                        Tok::Ident(k) | Tok::Str(k) => {
                            self.advance();
                            k
                        }
                        _ => return Err(self.expected("a record key or `}`")),
                    };
                    if !self.eat(":") && !self.eat("=") {
                        return Err(self.expected(format!("`:` after key `{key}`")));
                    }
                    let v = self.data()?;
                    if fields.iter().any(|(k, _)| *k == key) {
                        return Err(self.err_at(kpos, format!("duplicate key `{key}`")));
                    }
                    fields.push((key, v));
                }
                Data::Record(fields)
            }
            _ => {
                self.i = saved;
                return Err(self.expected(
                    "a value (string, number, duration, true/false, name, list or record)",
                ));
            }
        };
        self.leave();
        Ok(v)
    }

    // ------------------------------------------------------------- policies

    /// `policy NAME { ... }`: find the block by its braces, then hand exactly its text to the
    /// policy engine's parser. The text is preceded by blank lines and spaces up to its
    /// position, so the policy parser's line:col are positions in this file.
    fn policy_block(&mut self) -> Result<PolicyItem> {
        let start = self.i;
        let pos = self.pos();
        self.advance(); // `policy`
        let name = self.name("a policy name")?;
        if !self.is_punct("{") {
            return Err(self.expected(format!("`{{` to open policy `{name}`")));
        }
        let end = self.matching_close(self.i)?;
        let (first, last) = (&self.toks[start], &self.toks[end]);
        let mut text = String::with_capacity(last.end - first.start + first.line + first.col);
        text.extend(std::iter::repeat_n('\n', first.line - 1));
        text.extend(std::iter::repeat_n(' ', first.col - 1));
        text.push_str(&self.text[first.start..last.end]);
        let compiled = parse_policies(&text, self.origin);
        let item = match compiled {
            Ok(mut ps) if ps.len() == 1 => PolicyItem::Compiled(Box::new(ps.remove(0))),
            Ok(_) => {
                return Err(self.err_at(
                    pos,
                    format!("policy `{name}` could not be read as one block"),
                ))
            }
            Err(e) => {
                let (line, column, message) = match e {
                    crate::policy::PolicyError::Parse {
                        line,
                        column,
                        message,
                        ..
                    } => (line, column, message),
                    other => (pos.line, pos.column, other.to_string()),
                };
                let error_pos = Pos { line, column };
                let engine_err = self.err_at(error_pos, format!("in policy `{name}`: {message}"));
                if self.opts.strict_policies {
                    return Err(engine_err);
                }
                // Lenient: the block must still follow the published grammar.
                self.i = start + 3;
                let rules = match self.grammar_rules(end) {
                    Ok(r) => r,
                    Err(_) => return Err(engine_err),
                };
                self.warnings.push(Warning {
                    line,
                    column,
                    message: format!(
                        "policy `{name}` is kept but not enforced: symbi's policy engine cannot compile it: {message}"
                    ),
                });
                PolicyItem::Unsupported {
                    name,
                    pos,
                    error: message,
                    error_pos,
                    rules,
                }
            }
        };
        self.i = end;
        self.advance();
        Ok(item)
    }

    /// The index of the `}` closing the `{` at `open`, checking bracket balance and depth.
    fn matching_close(&self, open: usize) -> Result<usize> {
        let mut stack: Vec<(&str, usize)> = Vec::new();
        for k in open..self.toks.len() {
            let t = &self.toks[k];
            match &t.tok {
                Tok::Punct(p @ ("{" | "(" | "[")) => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(self.err_at(
                            pos_of(t),
                            format!("nested more than {MAX_DEPTH} levels deep"),
                        ));
                    }
                    stack.push((p, k));
                }
                Tok::Punct(p @ ("}" | ")" | "]")) => {
                    let want = match *p {
                        "}" => "{",
                        ")" => "(",
                        _ => "[",
                    };
                    match stack.pop() {
                        Some((o, _)) if o == want => {
                            if stack.is_empty() {
                                return Ok(k);
                            }
                        }
                        Some((o, at)) => {
                            let close = match o {
                                "{" => "}",
                                "(" => ")",
                                _ => "]",
                            };
                            return Err(self.err_at(
                                pos_of(t),
                                format!(
                                    "expected `{close}` to close the `{o}` at line {}, found `{p}`",
                                    self.toks[at].line
                                ),
                            ));
                        }
                        None => unreachable!("the scan starts at an opening brace"),
                    }
                }
                Tok::Eof => {
                    return Err(self.err_at(
                        pos_of(t),
                        format!(
                        "expected `}}` to close the policy opened at line {}, found end of input",
                        self.toks[open].line
                    ),
                    ))
                }
                _ => {}
            }
        }
        unreachable!("the token list ends with Eof")
    }

    /// Rules of a policy body per the published grammar, up to the closing `}` at `end`.
    fn grammar_rules(&mut self, end: usize) -> Result<Vec<PolicyRule>> {
        let mut rules = Vec::new();
        loop {
            self.separators();
            if self.i >= end {
                return Ok(rules);
            }
            let pos = self.pos();
            let kind = self.word("a policy rule: allow, deny, require or audit")?;
            self.expect(":", &format!("after `{kind}`"))?;
            let value = self.expr(false)?;
            let guard = if self.eat_word("if") {
                Some(self.expr(false)?)
            } else {
                None
            };
            rules.push(PolicyRule {
                kind,
                value,
                guard,
                pos,
            });
        }
    }

    // ------------------------------------------------------------- spec

    fn spec(&self, a: &Agent) -> Result<AgentSpec> {
        let mut spec = AgentSpec::default();
        let mut seen: Vec<&Attr> = Vec::new();
        for w in &a.with_blocks {
            for attr in &w.attrs {
                if let Some(prev) = seen.iter().find(|p| p.name == attr.name) {
                    if prev.value != attr.value {
                        return Err(self.err_at(
                            attr.pos,
                            format!(
                                "`{}` is set differently at line {}; give each setting once",
                                attr.name, prev.pos.line
                            ),
                        ));
                    }
                }
                seen.push(attr);
                let bad = |expected: &str| {
                    self.err_at(
                        attr.pos,
                        format!(
                            "`{}` must be {expected}, got {}",
                            attr.name,
                            attr.value.type_name()
                        ),
                    )
                };
                match attr.name.as_str() {
                    "max_memory_mb" => match attr.value.as_number() {
                        Some(v) if v > 0.0 => spec.memory_mb = Some(v),
                        Some(v) => {
                            return Err(self
                                .err_at(attr.pos, format!("`max_memory_mb` must be > 0, got {v}")))
                        }
                        None => return Err(bad("a number of megabytes > 0")),
                    },
                    "max_cpu_cores" => match attr.value.as_number() {
                        Some(v) if v > 0.0 && v <= 1024.0 => spec.cpu_cores = Some(v),
                        Some(v) => {
                            return Err(self.err_at(
                                attr.pos,
                                format!("`max_cpu_cores` must be > 0 and <= 1024, got {v}"),
                            ))
                        }
                        None => return Err(bad("a number of cores > 0")),
                    },
                    "timeout" => {
                        let secs = match &attr.value {
                            Data::Duration { seconds, .. } => Some(*seconds),
                            // Symbiont's published agents write bare numbers in
                            // milliseconds (`timeout = 60000 // 1 minute`).
                            Data::Int(_) | Data::Float(_) => {
                                attr.value.as_number().map(|ms| ms / 1000.0)
                            }
                            Data::Str(s) => duration_text(s),
                            _ => return Err(bad(
                                "a duration such as 30.seconds, \"5m\" or a number of milliseconds",
                            )),
                        };
                        match secs {
                            Some(v) if v > 0.0 && v.is_finite() => spec.execution_timeout = Some(v),
                            Some(v) => return Err(self.err_at(attr.pos, format!("`timeout` must be > 0 seconds, got {v}"))),
                            None => {
                                return Err(self.err_at(
                                    attr.pos,
                                    format!(
                                        "`timeout` {:?} is not a duration; write 30s, 5m, 2h or 30.seconds",
                                        attr.value.as_text().unwrap_or_default()
                                    ),
                                ))
                            }
                        }
                    }
                    "sandbox" => {
                        let Some(v) = attr.value.as_text() else {
                            return Err(bad("a sandbox tier name such as \"Tier1\""));
                        };
                        spec.sandbox = Some(match v.to_ascii_lowercase().as_str() {
                            "tier1" | "docker" => "Tier1".into(),
                            "tier2" | "gvisor" => "Tier2".into(),
                            "tier3" | "firecracker" => "Tier3".into(),
                            "local" | "tier0" => "local".into(),
                            "e2b" => "e2b".into(),
                            _ => {
                                return Err(self.err_at(
                                    attr.pos,
                                    format!(
                                        "unknown sandbox {v:?}; use Tier1 (docker), Tier2 (gvisor), Tier3 (firecracker), e2b or local"
                                    ),
                                ))
                            }
                        });
                    }
                    "security" | "memory" => {
                        let Some(v) = attr.value.as_text() else {
                            return Err(bad("a name or a string"));
                        };
                        if attr.name == "security" {
                            spec.security = Some(v.to_string());
                        } else {
                            spec.memory = Some(v.to_string());
                        }
                    }
                    // Symbiont ignores attributes it does not know; they stay in the settings.
                    _ => {}
                }
            }
        }
        Ok(spec)
    }

    // ------------------------------------------------------------- statements

    fn block(&mut self) -> Result<Block> {
        self.enter()?;
        let pos = self.pos();
        self.expect("{", "to open a block")?;
        let mut stmts = Vec::new();
        let mut tail = None;
        loop {
            if self.eat("}") {
                break;
            }
            if *self.peek() == Tok::Eof {
                return Err(self.expected(format!(
                    "`}}` to close the block opened at line {}",
                    pos.line
                )));
            }
            match self.stmt()? {
                StmtOrTail::Stmt(s) => stmts.push(s),
                StmtOrTail::Tail(e) => {
                    tail = Some(Box::new(e));
                    self.expect("}", "to close the block")?;
                    break;
                }
            }
        }
        self.leave();
        Ok(Block { stmts, tail, pos })
    }

    fn stmt(&mut self) -> Result<StmtOrTail> {
        let pos = self.pos();
        let kw = match self.peek() {
            Tok::Ident(w) => w.clone(),
            _ => String::new(),
        };
        let kind = match kw.as_str() {
            "let" => {
                self.advance();
                let name = self.name("a variable name after `let`")?;
                self.expect("=", &format!("after `let {name}`"))?;
                let value = self.expr(false)?;
                self.expect(";", "to end the let statement")?;
                StmtKind::Let { name, value }
            }
            "return" => {
                self.advance();
                let value = if self.is_punct(";") {
                    None
                } else {
                    Some(self.expr(false)?)
                };
                self.expect(";", "to end the return statement")?;
                StmtKind::Return(value)
            }
            "if" => {
                let node = self.if_node(false)?;
                self.eat(";");
                StmtKind::If(node)
            }
            "for" => {
                self.advance();
                let var = self.name("a loop variable after `for`")?;
                if !self.eat_word("in") {
                    return Err(self.expected(format!("`in` after `for {var}`")));
                }
                let iter = self.expr(true)?;
                let body = self.block()?;
                self.eat(";");
                StmtKind::For { var, iter, body }
            }
            "match" => {
                self.advance();
                let subject = self.expr(true)?;
                let arms = self.arms()?;
                self.eat(";");
                StmtKind::Match { subject, arms }
            }
            "try" => {
                self.advance();
                let body = self.block()?;
                let mut catches = Vec::new();
                while self.is_word("catch") {
                    let cpos = self.pos();
                    self.advance();
                    self.expect("(", "after `catch`")?;
                    let first = self.name("the name the error is bound to")?;
                    let (ty, name) = if matches!(self.peek(), Tok::Ident(_)) {
                        (Some(first), self.name("the name the error is bound to")?)
                    } else {
                        (None, first)
                    };
                    self.expect(")", "after the catch binding")?;
                    let body = self.block()?;
                    catches.push(Catch {
                        ty,
                        name,
                        body,
                        pos: cpos,
                    });
                }
                self.eat(";");
                StmtKind::Try { body, catches }
            }
            _ => {
                let e = self.expr(false)?;
                let op = match self.peek() {
                    Tok::Punct(p @ ("=" | "+=" | "-=" | "*=" | "/=" | "%=")) => Some(*p),
                    _ => None,
                };
                if let Some(op) = op {
                    if !matches!(
                        e.kind,
                        ExprKind::Name(_) | ExprKind::Member { .. } | ExprKind::Index { .. }
                    ) {
                        return Err(self.err_at(
                            self.pos(),
                            "can only assign to a name, a field (a.b) or an element (a[i])",
                        ));
                    }
                    self.advance();
                    let value = self.expr(false)?;
                    self.expect(";", "to end the assignment")?;
                    StmtKind::Assign {
                        target: e,
                        op,
                        value,
                    }
                } else if self.eat(";") {
                    StmtKind::Expr(e)
                } else if self.is_punct("}") {
                    return Ok(StmtOrTail::Tail(e));
                } else {
                    return Err(self.expected("`;` after the expression"));
                }
            }
        };
        Ok(StmtOrTail::Stmt(Stmt { kind, pos }))
    }

    /// `if` (statement when `need_else` is false, expression when true).
    fn if_node(&mut self, need_else: bool) -> Result<IfNode> {
        self.enter()?;
        let pos = self.pos();
        self.advance(); // `if`
        let pattern = if self.eat_word("let") {
            let p = self.pattern()?;
            self.expect("=", "after the `if let` pattern")?;
            Some(p)
        } else {
            None
        };
        let cond = self.expr(true)?;
        let then = self.block()?;
        let otherwise = if self.eat_word("else") {
            if self.is_word("if") {
                Some(Else::If(Box::new(self.if_node(need_else)?)))
            } else {
                Some(Else::Block(self.block()?))
            }
        } else if need_else {
            return Err(self.expected("`else`: an `if` used as a value needs an else branch"));
        } else {
            None
        };
        self.leave();
        Ok(IfNode {
            pattern,
            cond,
            then,
            otherwise,
            pos,
        })
    }

    fn arms(&mut self) -> Result<Vec<Arm>> {
        self.expect("{", "to open the match arms")?;
        let mut arms = Vec::new();
        loop {
            if self.eat("}") {
                return Ok(arms);
            }
            let pos = self.pos();
            let pattern = self.pattern()?;
            self.expect("=>", "after the match pattern")?;
            // `{ key: ...` is a record value; any other `{` (also `{}`) opens a block.
            let record = matches!(self.peek_at(1), Tok::Ident(_) | Tok::Str(_))
                && matches!(self.peek_at(2), Tok::Punct(":"));
            let body = if self.is_punct("{") && !record {
                ArmBody::Block(self.block()?)
            } else {
                ArmBody::Expr(self.expr(false)?)
            };
            arms.push(Arm { pattern, body, pos });
            if !self.eat(",")
                && !self.is_punct("}")
                && matches!(arms.last().map(|a| &a.body), Some(ArmBody::Expr(_)))
            {
                return Err(self.expected("`,` or `}` after the match arm"));
            }
        }
    }

    fn pattern(&mut self) -> Result<Pattern> {
        self.enter()?;
        let saved = self.i;
        let t = self.peek().clone();
        self.advance();
        let p = match t {
            Tok::Ident(w) if w == "_" => Pattern::Wildcard,
            Tok::Ident(w) if w == "true" => Pattern::Lit(Lit::Bool(true)),
            Tok::Ident(w) if w == "false" => Pattern::Lit(Lit::Bool(false)),
            Tok::Ident(w) if !RESERVED.contains(&w.as_str()) => {
                if self.eat("(") {
                    let mut args = Vec::new();
                    loop {
                        if self.eat(")") {
                            break;
                        }
                        args.push(self.pattern()?);
                        if !self.eat(",") {
                            self.expect(")", "to close the pattern")?;
                            break;
                        }
                    }
                    Pattern::Ctor(w, args)
                } else {
                    Pattern::Name(w)
                }
            }
            Tok::Str(s) => Pattern::Lit(Lit::Str(s)),
            Tok::Int(i) => Pattern::Lit(Lit::Int(i)),
            Tok::Float(f) => Pattern::Lit(Lit::Float(f)),
            Tok::Duration { text, seconds } => Pattern::Lit(Lit::Duration { text, seconds }),
            Tok::Punct("-") if matches!(self.peek(), Tok::Int(_) | Tok::Float(_)) => {
                match self.advance().tok {
                    Tok::Int(i) => Pattern::Lit(Lit::Int(-i)),
                    Tok::Float(f) => Pattern::Lit(Lit::Float(-f)),
                    _ => unreachable!(),
                }
            }
            _ => {
                self.i = saved;
                return Err(self.expected("a pattern: a literal, a name, `_` or Name(patterns)"));
            }
        };
        self.leave();
        Ok(p)
    }

    // ------------------------------------------------------------- expressions

    /// `{` at `k` opens a record (not a block) when it is `{}` or `{ key: ...`.
    fn looks_like_record(&self, k: usize) -> bool {
        let at = |n: usize| &self.toks[(k + n).min(self.toks.len() - 1)].tok;
        matches!(at(0), Tok::Punct("{"))
            && (matches!(at(1), Tok::Punct("}"))
                || (matches!(at(1), Tok::Ident(_) | Tok::Str(_))
                    && matches!(at(2), Tok::Punct(":"))))
    }

    /// An expression. `no_struct` forbids `Name { ... }` literals at the top level (after
    /// `if`, `match`, `for ... in`, where `{` opens the block).
    fn expr(&mut self, no_struct: bool) -> Result<Expr> {
        self.enter()?;
        let e = self.binary(0, no_struct);
        self.leave();
        e
    }

    fn binary(&mut self, level: usize, ns: bool) -> Result<Expr> {
        const LEVELS: &[&[&str]] = &[
            &["||"],
            &["&&"],
            &["==", "!=", "in"],
            &["<", ">", "<=", ">="],
            &["+", "-"],
            &["*", "/", "%"],
        ];
        if level == LEVELS.len() {
            return self.unary(ns);
        }
        let mut lhs = self.binary(level + 1, ns)?;
        let mut chained = 0;
        loop {
            let op = match self.peek() {
                Tok::Punct(p) => LEVELS[level].iter().find(|o| *o == p).copied(),
                Tok::Ident(w) if w == "in" => LEVELS[level].iter().find(|o| **o == "in").copied(),
                _ => None,
            };
            let Some(op) = op else {
                self.depth -= chained;
                return Ok(lhs);
            };
            let pos = lhs.pos;
            self.advance();
            // Each operator wraps the tree one level deeper.
            self.enter()?;
            chained += 1;
            let rhs = self.binary(level + 1, ns)?;
            lhs = Expr {
                kind: ExprKind::Binary {
                    op,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs),
                },
                pos,
            };
        }
    }

    fn unary(&mut self, ns: bool) -> Result<Expr> {
        let pos = self.pos();
        let op = match self.peek() {
            Tok::Punct("!") => Some("!"),
            Tok::Punct("-") => Some("-"),
            Tok::Ident(w) if w == "not" => Some("not"),
            _ => None,
        };
        if let Some(op) = op {
            self.advance();
            self.enter()?;
            let operand = self.unary(ns)?;
            self.leave();
            return Ok(Expr {
                kind: ExprKind::Unary {
                    op,
                    operand: Box::new(operand),
                },
                pos,
            });
        }
        self.postfix(ns)
    }

    fn postfix(&mut self, ns: bool) -> Result<Expr> {
        let mut e = self.primary(ns)?;
        let mut chained = 0;
        loop {
            let pos = e.pos;
            if matches!(self.peek(), Tok::Punct("." | "(" | "[")) {
                self.enter()?;
                chained += 1;
            }
            if self.eat(".") {
                let name = self.word("a field or method name after `.`")?;
                e = Expr {
                    kind: ExprKind::Member {
                        object: Box::new(e),
                        name,
                    },
                    pos,
                };
            } else if self.eat("(") {
                let args = self.args()?;
                e = Expr {
                    kind: ExprKind::Call {
                        callee: Box::new(e),
                        args,
                    },
                    pos,
                };
            } else if self.eat("[") {
                let index = self.expr(false)?;
                self.expect("]", "to close the index")?;
                e = Expr {
                    kind: ExprKind::Index {
                        object: Box::new(e),
                        index: Box::new(index),
                    },
                    pos,
                };
            } else {
                self.depth -= chained;
                return Ok(e);
            }
        }
    }

    fn args(&mut self) -> Result<Vec<Arg>> {
        let mut args = Vec::new();
        loop {
            if self.eat(")") {
                return Ok(args);
            }
            let named = matches!(self.peek(), Tok::Ident(w) if !RESERVED.contains(&w.as_str()))
                && matches!(self.peek_at(1), Tok::Punct("=" | ":"));
            let name = if named {
                let n = self.word("an argument name")?;
                self.advance();
                Some(n)
            } else {
                None
            };
            let value = self.expr(false)?;
            args.push(Arg { name, value });
            if !self.eat(",") {
                self.expect(")", "to close the argument list")?;
                return Ok(args);
            }
        }
    }

    fn record_fields(&mut self) -> Result<Vec<(String, Expr)>> {
        // The current token is `{`.
        self.advance();
        let mut fields: Vec<(String, Expr)> = Vec::new();
        loop {
            if self.eat("}") {
                return Ok(fields);
            }
            let kpos = self.pos();
            let key = match self.peek().clone() {
                Tok::Ident(k) | Tok::Str(k) => {
                    self.advance();
                    k
                }
                _ => return Err(self.expected("a field name or `}`")),
            };
            self.expect(":", &format!("after field `{key}`"))?;
            let v = self.expr(false)?;
            if fields.iter().any(|(k, _)| *k == key) {
                return Err(self.err_at(kpos, format!("duplicate field `{key}`")));
            }
            fields.push((key, v));
            self.eat(",");
        }
    }

    fn primary(&mut self, ns: bool) -> Result<Expr> {
        let pos = self.pos();
        let lit = |l: Lit| Expr {
            kind: ExprKind::Lit(l),
            pos,
        };
        let tok = self.peek().clone();
        let e = match tok {
            Tok::Str(s) => {
                self.advance();
                lit(Lit::Str(s))
            }
            Tok::Int(i) => {
                self.advance();
                lit(Lit::Int(i))
            }
            Tok::Float(f) => {
                self.advance();
                lit(Lit::Float(f))
            }
            Tok::Duration { text, seconds } => {
                self.advance();
                lit(Lit::Duration { text, seconds })
            }
            Tok::Vault(v) => {
                self.advance();
                lit(Lit::Vault(v))
            }
            Tok::Ident(w) if w == "true" || w == "false" => {
                self.advance();
                lit(Lit::Bool(w == "true"))
            }
            Tok::Ident(w) if w == "if" => Expr {
                kind: ExprKind::If(Box::new(self.if_node(true)?)),
                pos,
            },
            Tok::Ident(w) if !RESERVED.contains(&w.as_str()) => {
                self.advance();
                if self.eat("=>") {
                    let body = self.expr(ns)?;
                    Expr {
                        kind: ExprKind::Lambda {
                            param: w,
                            body: Box::new(body),
                        },
                        pos,
                    }
                } else if !ns && self.looks_like_record(self.i) {
                    Expr {
                        kind: ExprKind::Record {
                            type_name: Some(w),
                            fields: self.record_fields()?,
                        },
                        pos,
                    }
                } else {
                    Expr {
                        kind: ExprKind::Name(w),
                        pos,
                    }
                }
            }
            Tok::Punct("{") => Expr {
                kind: ExprKind::Record {
                    type_name: None,
                    fields: self.record_fields()?,
                },
                pos,
            },
            Tok::Punct("[") => {
                self.advance();
                let mut items = Vec::new();
                loop {
                    if self.eat("]") {
                        break;
                    }
                    items.push(self.expr(false)?);
                    if !self.eat(",") {
                        self.expect("]", "to close the array")?;
                        break;
                    }
                }
                Expr {
                    kind: ExprKind::Array(items),
                    pos,
                }
            }
            Tok::Punct("(") => {
                self.advance();
                let e = self.expr(false)?;
                self.expect(")", "to close `(`")?;
                e
            }
            _ => return Err(self.expected("an expression")),
        };
        Ok(e)
    }
}

enum StmtOrTail {
    Stmt(Stmt),
    Tail(Expr),
}

const TOP_LEVEL: &str =
    "a top-level item: metadata, agent, policy, type, function, schedule, channel, memory or webhook";

/// Seconds in a duration written as a string: `"30s"`, `"5m"`, `"10.seconds"`, `"1h30m"`.
/// A unit is required.
pub fn duration_text(s: &str) -> Option<f64> {
    let s = s.trim();
    for (suffix, unit) in [(".seconds", "s"), (".minutes", "m"), (".hours", "h")] {
        if let Some(n) = s.strip_suffix(suffix) {
            return n
                .trim()
                .parse::<f64>()
                .ok()
                .map(|v| v * unit_seconds(unit).unwrap_or(1.0));
        }
    }
    let mut total = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let u_end = n_end
            + rest[n_end..]
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(rest.len() - n_end);
        let n: f64 = rest[..n_end].parse().ok()?;
        let per = unit_seconds(rest[n_end..u_end].trim())?;
        total += n * per;
        rest = rest[u_end..].trim_start();
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parser::parse_policies;

    const AGENT: &str = r#"
// a complete agent
metadata {
    version = "1.0.0"
    author = "symbi"
    description: "tests",
    tags = ["a", "b"]
}

# hash comment
agent triage(ticket: Ticket, limits: Map<String, int>) -> Result<Report, Error> {
    capabilities = [read, "summarize"];
    policy guard {
        allow: [read, summarize] if principal.attrs.clearance >= 2
        deny: network_access
    };
    function score(t: Ticket) -> int {
        t.priority * 2 + 1
    }
    with memory = "persistent", security = "high", sandbox = "Tier1", timeout = 30.seconds,
         max_memory_mb = 512, max_cpu_cores = 2, network_policy = deny_all {
        let s = score(ticket);
        total += s;
        if let Some(x) = lookup(ticket.id) { log("INFO", x); } else if s > 3 { return none(); }
        for item in ticket.items { items[0].seen = true; }
        match ticket.kind {
            "bug" => { return Report { kind: "bug", score: s }; },
            _ => fallback(kind = ticket.kind, f: x => x + 1),
        }
        try { risky(); } catch (Error e) { log("WARN", e.message); }
        let v = if s >= 10 { "high" } else { "low" };
        let secret = vault://tickets/api-key;
        let ok = !(s in [1, 2, 3]) && not done || -s < 0 % 2;
        Report { kind: v, score: s }
    }
}
"#;

    fn err(text: &str) -> (usize, usize, String) {
        match parse(text, "t.symbi") {
            Err(DslError::Parse {
                line,
                column,
                message,
                ..
            }) => (line, column, message),
            Ok(f) => panic!("expected a parse error, got {f:?}"),
        }
    }

    #[test]
    fn parses_every_construct() {
        let f = parse(AGENT, "t.symbi").unwrap();
        assert_eq!(f.metadata.len(), 4);
        assert_eq!(f.metadata[0].value, Data::Str("1.0.0".into()));
        let a = &f.agents[0];
        assert_eq!(a.name, "triage");
        assert_eq!(
            a.pos,
            Pos {
                line: 11,
                column: 1
            }
        );
        assert_eq!(a.params[1].ty.to_string(), "Map<String, int>");
        assert_eq!(
            a.return_type.as_ref().unwrap().to_string(),
            "Result<Report, Error>"
        );
        assert_eq!(a.capabilities, vec!["read", "summarize"]);
        assert_eq!(a.functions[0].name, "score");
        assert!(a.functions[0].body.tail.is_some());
        assert_eq!(
            a.spec,
            AgentSpec {
                memory_mb: Some(512.0),
                cpu_cores: Some(2.0),
                execution_timeout: Some(30.0),
                sandbox: Some("Tier1".into()),
                security: Some("high".into()),
                memory: Some("persistent".into()),
            }
        );
        let body = &a.with_blocks[0].body;
        let kinds: Vec<&str> = body
            .stmts
            .iter()
            .map(|s| match &s.kind {
                StmtKind::Let { .. } => "let",
                StmtKind::Assign { .. } => "assign",
                StmtKind::Return(_) => "return",
                StmtKind::Expr(_) => "expr",
                StmtKind::If(_) => "if",
                StmtKind::For { .. } => "for",
                StmtKind::Match { .. } => "match",
                StmtKind::Try { .. } => "try",
            })
            .collect();
        assert_eq!(
            kinds,
            vec!["let", "assign", "if", "for", "match", "try", "let", "let", "let"]
        );
        assert!(matches!(
            body.tail.as_deref(),
            Some(Expr { kind: ExprKind::Record { type_name: Some(t), .. }, .. }) if t == "Report"
        ));
        // Precedence: `*` binds tighter than `+`.
        let tail = a.functions[0].body.tail.as_deref().unwrap();
        let ExprKind::Binary { op: "+", lhs, .. } = &tail.kind else {
            panic!("{tail:?}")
        };
        assert!(matches!(lhs.kind, ExprKind::Binary { op: "*", .. }));
        // The data form names every node.
        let t = f.to_tree();
        let agent = &t.get("agents").map(|a| match a {
            Tree::List(l) => l[0].clone(),
            _ => Tree::None,
        });
        assert_eq!(
            agent.as_ref().and_then(|a| a.get("name")),
            Some(&Tree::Str("triage".into()))
        );
    }

    #[test]
    fn embedded_policy_equals_standalone() {
        let f = parse(AGENT, "t.symbi").unwrap();
        let embedded = f.agents[0].policies[0].compiled().unwrap().clone();
        let alone = parse_policies(
            "policy guard {\n allow: [read, summarize] if principal.attrs.clearance >= 2\n deny: network_access }",
            "p",
        )
        .unwrap();
        assert_eq!(embedded, alone[0]);
    }

    #[test]
    fn policy_errors_keep_file_positions() {
        let text = "agent a {\n  policy p {\n    allow: read if x = 1\n  }\n}";
        let (l, c, m) = err(text);
        assert_eq!((l, c), (3, 22), "{m}");
        assert!(
            m.contains("in policy `p`") && m.contains("compare with `==`"),
            "{m}"
        );
        // Lenient: kept as grammar rules, reported as a warning.
        let text = "agent a {\n  policy p {\n    deny: deploy(svc, version) if not ctx.ok\n  }\n}";
        assert!(parse(text, "t").is_err());
        let (f, w) = parse_file(
            text,
            "t",
            Options {
                strict_policies: false,
            },
        )
        .unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].line, w[0].column), (3, 21));
        assert!(
            matches!(&f.agents[0].policies[0], PolicyItem::Unsupported { rules, .. } if rules.len() == 1)
        );
        // ... but grammar errors stay errors.
        let bad = "agent a {\n  policy p {\n    deny: (\n  }\n}";
        assert!(parse_file(
            bad,
            "t",
            Options {
                strict_policies: false
            }
        )
        .is_err());
    }

    #[test]
    fn error_positions() {
        let (l, c, m) = err("agent a {\n  with sandbox = \"Tier1\" {\n    let x = 1\n  }\n}");
        assert_eq!((l, c), (4, 3), "{m}");
        assert!(m.contains("expected `;`"), "{m}");
        let (l, c, m) = err("agent a(x String) {}");
        assert_eq!((l, c), (1, 11));
        assert!(m.contains("expected `:`"), "{m}");
        let (l, c, m) = err("metadata { version = }");
        assert_eq!((l, c), (1, 22));
        assert!(m.starts_with("expected a value"), "{m}");
        let (l, c, m) = err("agnet a {}");
        assert_eq!((l, c), (1, 1));
        assert!(m.contains("top-level item"), "{m}");
        let (l, c, _) = err("agent a {\n with sandbox = \"Tier9\" {}\n}");
        assert_eq!((l, c), (2, 7));
        let (l, c, m) = err("agent a {\n with max_memory_mb = -5 {}\n}");
        assert_eq!((l, c), (2, 7));
        assert!(m.contains("> 0"), "{m}");
        let (l, _, m) = err("agent a { with x = \"open {} }");
        assert_eq!(l, 1);
        assert!(m.contains("unterminated string"), "{m}");
        let (_, _, m) = err("agent a { with timeout = 10px {} }");
        assert!(m.contains("unknown unit `px`"), "{m}");
        let (l, c, m) = err("agent a {\n policy p { allow: [read }\n}");
        assert_eq!((l, c), (2, 26), "{m}");
    }

    #[test]
    fn durations_and_timeouts() {
        let secs = |text: &str| {
            let f = parse(&format!("agent a {{ with timeout = {text} {{}} }}"), "t").unwrap();
            f.agents[0].spec.execution_timeout.unwrap()
        };
        assert_eq!(secs("30s"), 30.0);
        assert_eq!(secs("5m"), 300.0);
        assert_eq!(secs("2.seconds"), 2.0);
        assert_eq!(secs("1h"), 3600.0);
        assert_eq!(secs("60000"), 60.0); // bare numbers are milliseconds
        assert_eq!(secs("\"1h30m\""), 5400.0);
        assert!(parse("agent a { with timeout = \"30\" {} }", "t").is_err());
        assert!(parse("agent a { with timeout = 0s {} }", "t").is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!(
            "function f() {{ {}1{} }}",
            "(".repeat(10_000),
            ")".repeat(10_000)
        );
        let (_, _, m) = err(&deep);
        assert!(m.contains("nested more than"), "{m}");
        let deep = format!(
            "policy p {{ allow: a if {}x{} }}",
            "(".repeat(10_000),
            ")".repeat(10_000)
        );
        let (_, _, m) = err(&deep);
        assert!(m.contains("nested more than"), "{m}");
    }

    /// Every recursive rule, far past the limit: an error naming the limit, never a crash.
    #[test]
    fn every_kind_of_deep_nesting_is_an_error() {
        let n = 100_000;
        let body = |inner: String| format!("function f() {{ {inner} }}");
        let cases = [
            body(format!("{}1{}", "{x: ".repeat(n), "}".repeat(n))),
            body(format!("{}1{}", "T {x: ".repeat(n), "}".repeat(n))),
            body(format!("{}x", "!".repeat(n))),
            body(format!("{}x", "- ".repeat(n))),
            body(format!("{}x", "not ".repeat(n))),
            body(format!("{}1{}", "[".repeat(n), "]".repeat(n))),
            body(format!("{}1", "x => ".repeat(n))),
            body(format!("x{}", " + x".repeat(n))),
            body(format!("x{}", ".y".repeat(n))),
            body(format!("f{}", "()".repeat(n))),
            body(format!("{}x{}", "f(".repeat(n), ")".repeat(n))),
            body(format!(
                "if a {{ 1 }}{} else {{ 2 }}",
                " else if a { 1 }".repeat(n)
            )),
            body(format!("{}1{}", "if a { ".repeat(n), " }".repeat(n))),
            format!("metadata {{ k = {}1{} }}", "[".repeat(n), "]".repeat(n)),
            format!("metadata {{ k = {}1{} }}", "{a: ".repeat(n), "}".repeat(n)),
            format!("type T = {}int{}", "List<".repeat(n), ">".repeat(n)),
            format!(
                "agent a {{ policy p {{ allow: x if {}y }} }}",
                "!".repeat(n)
            ),
            format!("policy p {{ allow: x if y{} }}", " && y".repeat(n)),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .map(|text| (text, err(text).2))
            .filter(|(_, m)| !m.contains("nested more than 256 levels deep"))
            .map(|(text, m)| format!("{text:.60}: {m}"))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    /// Text that could nest deeply moves to a thread with a large stack; shallow text
    /// parses on the caller's, and both give the same answer.
    #[test]
    fn the_depth_limit_is_reachable_and_exact() {
        let at = |k: usize| body_at(&format!("{}1{}", "(".repeat(k), ")".repeat(k)));
        fn body_at(e: &str) -> String {
            format!("function f() {{ {e} }}")
        }
        // The function body `{` and the tail expression are two levels.
        assert!(parse(&at(MAX_DEPTH - 2), "t").is_ok());
        assert!(parse(&at(MAX_DEPTH - 1), "t").is_err());
        assert_eq!(parse(&at(3), "t"), parse(&at(3), "t"));
    }

    #[test]
    fn sections_and_types() {
        let text = r#"
type Info = { path: String, size: int, }
type Id = String
schedule nightly { cron: "0 2 * * *", agent: "triage" }
channel ops {
    platform: "slack"
    policy ch { allow: invoke }
    data_classification { pii: redact, phi: block }
}
memory store { backend "sqlite" search { top_k 5 } }
webhook hook { path "/h" agent triage filter { equals "x" } }
function helper(x: int) -> int { return x; }
policy top { deny: [*] }
"#;
        let f = parse(text, "t").unwrap();
        assert_eq!(f.types.len(), 2);
        assert_eq!(f.sections.len(), 4);
        assert_eq!(f.sections[1].policies.len(), 1);
        assert_eq!(f.sections[1].blocks[0].0, "data_classification");
        assert_eq!(f.sections[2].blocks[0].1[0].value, Data::Int(5));
        assert_eq!(f.functions.len(), 1);
        assert_eq!(f.policies.len(), 1);
    }

    #[test]
    fn garbage_never_panics() {
        let pieces = [
            "agent",
            "a",
            "{",
            "}",
            "(",
            ")",
            "[",
            "]",
            "with",
            "=",
            "\"s\"",
            "1",
            "policy",
            "p",
            ":",
            ";",
            ",",
            "if",
            "else",
            "match",
            "=>",
            "->",
            "let",
            "metadata",
            "30s",
            "#c\n",
            "function",
            "vault://x",
            "-",
            ".",
            "allow",
            "try",
            "catch",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..(seed % 24) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push_str(pieces[(seed % pieces.len() as u64) as usize]);
                text.push(' ');
            }
            let _ = parse_file(
                &text,
                "g",
                Options {
                    strict_policies: false,
                },
            );
            let _ = parse(&text, "g");
        }
    }
}
