//! Lexer and recursive-descent parser for Symbiont policy blocks and condition expressions.
//!
//! Grammar (`//`, `#` and `/* */` are comments; clauses may be separated by `,` or `;`):
//!
//! ```text
//! file      := ( policy | other-token )*          // policy blocks may sit inside `agent { }`
//! policy    := "policy" NAME "{" clause* "}"
//! clause    := ("allow" | "deny") ":" actions ("if" expr)?
//!            | "require" ":" ( map | "[" flag ("," flag)* "]" | flag )
//!            | "audit" ":" ( map | NAME ("with" NAME ("," NAME)*)? )
//!            | "conditions" ":" map
//!            | "principals" ":" "[" (NAME | STRING) ("," ...)* "]"
//! actions   := "[" action ("," action)* "]" | action
//! action    := (NAME | STRING | "*") ( "(" NAME ")" )?   // `read(file)`: `file` names the resource
//! flag      := NAME ("=" literal)?
//! map       := "{" ( (NAME | STRING) ":" literal ","? )* "}"
//! expr      := or;  or := and ("||" and)*;  and := not ("&&" not)*
//! not       := "!" not | cmp;  cmp := primary (("==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not" "in") primary)?
//! primary   := literal | path | "(" expr ")";  path := NAME ("." NAME)*
//! literal   := STRING | NUMBER | "true" | "false" | "null" | "[" literal,* "]" | map
//! ```
//! `and`, `or` and `not` are accepted for `&&`, `||` and `!`.

use super::ast::{CmpOp, Effect, Expr, Map, Policy, Root, Rule, Value};
use super::{PolicyError, Result};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Float(f64),
    Punct(&'static str),
    /// A character policies never use; fine outside policy blocks, an error inside.
    Other(char),
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
    col: usize,
}

const PUNCTS: &[&str] = &[
    "==", "!=", "<=", ">=", "&&", "||", "{", "}", "[", "]", "(", ")", ":", ",", ";", ".", "<", ">",
    "!", "=", "*",
];

struct Lexer<'a> {
    src: &'a str,
    source: &'a str,
    pos: usize,
    line: usize,
    col: usize,
}

impl<'a> Lexer<'a> {
    fn err(&self, line: usize, col: usize, message: String) -> PolicyError {
        PolicyError::Parse {
            origin: self.source.to_string(),
            line,
            column: col,
            message,
        }
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn peek2(&self) -> Option<char> {
        let mut it = self.src[self.pos..].chars();
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

    fn tokens(mut self) -> Result<Vec<Token>> {
        let mut out = Vec::new();
        loop {
            // whitespace and comments
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
                                        "unterminated /* comment; close it with */".into(),
                                    ))
                                }
                                _ => {
                                    self.bump();
                                }
                            }
                        }
                    }
                    _ => break,
                }
            }
            let (line, col) = (self.line, self.col);
            let Some(c) = self.peek() else {
                out.push(Token {
                    tok: Tok::Eof,
                    line,
                    col,
                });
                return Ok(out);
            };
            let tok = if c.is_ascii_alphabetic() || c == '_' {
                let start = self.pos;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == '_') {
                    self.bump();
                }
                Tok::Ident(self.src[start..self.pos].to_string())
            } else if c.is_ascii_digit()
                || (c == '-' && matches!(self.peek2(), Some(d) if d.is_ascii_digit()))
            {
                self.number(line, col)?
            } else if c == '"' {
                self.string(line, col)?
            } else if let Some(p) = PUNCTS
                .iter()
                .find(|p| self.src[self.pos..].starts_with(**p))
            {
                for _ in 0..p.len() {
                    self.bump();
                }
                Tok::Punct(p)
            } else {
                self.bump();
                Tok::Other(c)
            };
            out.push(Token { tok, line, col });
        }
    }

    fn number(&mut self, line: usize, col: usize) -> Result<Tok> {
        let start = self.pos;
        if self.peek() == Some('-') {
            self.bump();
        }
        let digits = |l: &mut Self| {
            while matches!(l.peek(), Some(c) if c.is_ascii_digit()) {
                l.bump();
            }
        };
        digits(self);
        let mut float = false;
        if self.peek() == Some('.') && matches!(self.peek2(), Some(c) if c.is_ascii_digit()) {
            float = true;
            self.bump();
            digits(self);
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            let save = (self.pos, self.line, self.col);
            self.bump();
            if matches!(self.peek(), Some('+' | '-')) {
                self.bump();
            }
            if matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
                float = true;
                digits(self);
            } else {
                (self.pos, self.line, self.col) = save;
            }
        }
        let text = &self.src[start..self.pos];
        if float {
            text.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Tok::Float)
                .ok_or_else(|| self.err(line, col, format!("number {text} is out of range")))
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
                None => {
                    return Err(self.err(line, col, "unterminated string; close it with \"".into()))
                }
                Some('"') => return Ok(Tok::Str(s)),
                Some('\\') => {
                    let (l, c) = (self.line, self.col);
                    match self.bump() {
                        Some('"') => s.push('"'),
                        Some('\\') => s.push('\\'),
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some('r') => s.push('\r'),
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
                                    "bad \\u{...} escape; write \\u{hex} with a valid code point"
                                        .into(),
                                )),
                            }
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

fn lex(text: &str, source: &str) -> Result<Vec<Token>> {
    Lexer {
        src: text,
        source,
        pos: 0,
        line: 1,
        col: 1,
    }
    .tokens()
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("`{s}`"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Int(i) => format!("number {i}"),
        Tok::Float(f) => format!("number {f}"),
        Tok::Punct(p) => format!("`{p}`"),
        Tok::Other(c) => format!("`{c}`"),
        Tok::Eof => "end of input".into(),
    }
}

struct Parser<'a> {
    toks: Vec<Token>,
    i: usize,
    source: &'a str,
    /// Names bound to the resource by `action(name)` in the current rule.
    aliases: Vec<String>,
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.i].tok
    }

    fn peek_at(&self, n: usize) -> &Tok {
        &self.toks[(self.i + n).min(self.toks.len() - 1)].tok
    }

    fn next(&mut self) -> Token {
        let t = self.toks[self.i].clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }

    fn err_at(&self, t: &Token, message: String) -> PolicyError {
        PolicyError::Parse {
            origin: self.source.to_string(),
            line: t.line,
            column: t.col,
            message,
        }
    }

    fn err_here(&self, message: impl Into<String>) -> PolicyError {
        let t = &self.toks[self.i];
        self.err_at(t, format!("{}, found {}", message.into(), describe(&t.tok)))
    }

    fn is_punct(&self, p: &str) -> bool {
        matches!(self.peek(), Tok::Punct(q) if *q == p)
    }

    fn is_ident(&self, s: &str) -> bool {
        matches!(self.peek(), Tok::Ident(x) if x == s)
    }

    fn eat(&mut self, p: &str) -> bool {
        if self.is_punct(p) {
            self.next();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, p: &str, what: &str) -> Result<()> {
        if self.eat(p) {
            Ok(())
        } else {
            Err(self.err_here(format!("expected `{p}` {what}")))
        }
    }

    fn name(&mut self, what: &str) -> Result<String> {
        match self.peek().clone() {
            Tok::Ident(s) if !super::ast::KEYWORDS.contains(&s.as_str()) => {
                self.next();
                Ok(s)
            }
            _ => Err(self.err_here(format!("expected {what}"))),
        }
    }

    // ------------------------------------------------------------- policies

    fn file(&mut self) -> Result<Vec<Policy>> {
        let mut out = Vec::new();
        while *self.peek() != Tok::Eof {
            if self.is_ident("policy")
                && matches!(self.peek_at(1), Tok::Ident(_))
                && matches!(self.peek_at(2), Tok::Punct("{"))
            {
                out.push(self.policy()?);
            } else if self.is_ident("policy") {
                self.next();
                return Err(self.err_here("expected a policy name and `{` after `policy`"));
            } else {
                self.next();
            }
        }
        if out.is_empty() {
            let t = self.toks[self.i].clone();
            return Err(self.err_at(
                &t,
                "no policy block found; write `policy name { allow: [action] ... }`".into(),
            ));
        }
        Ok(out)
    }

    fn policy(&mut self) -> Result<Policy> {
        self.next(); // `policy`
        let name = self.name("a policy name")?;
        self.expect("{", "to open the policy body")?;
        let mut p = Policy {
            name,
            principals: None,
            rules: vec![],
            require: Map::new(),
            audit: Map::new(),
            conditions: Map::new(),
        };
        loop {
            while self.eat(",") || self.eat(";") {}
            if self.eat("}") {
                return Ok(p);
            }
            let kw_tok = self.toks[self.i].clone();
            let kw =
                match &kw_tok.tok {
                    Tok::Ident(s) => s.clone(),
                    Tok::Eof => return Err(self.err_here("expected `}` to close the policy")),
                    _ => return Err(self.err_here(
                        "expected a clause: allow, deny, require, audit, conditions or principals",
                    )),
                };
            self.next();
            self.expect(":", &format!("after `{kw}`"))?;
            match kw.as_str() {
                "allow" | "deny" => {
                    let effect = if kw == "allow" { Effect::Allow } else { Effect::Deny };
                    let rule = self.rule(effect)?;
                    p.rules.push(rule);
                }
                "require" => {
                    let m = self.require()?;
                    p.require.extend(m);
                }
                "audit" => {
                    let m = self.audit()?;
                    p.audit.extend(m);
                }
                "conditions" => {
                    let m = self.map()?;
                    p.conditions.extend(m);
                }
                "principals" => {
                    let list = self.principals()?;
                    p.principals.get_or_insert_with(Vec::new).extend(list);
                }
                other => {
                    return Err(self.err_at(
                        &kw_tok,
                        format!("unknown policy clause `{other}`; expected allow, deny, require, audit, conditions or principals"),
                    ))
                }
            }
        }
    }

    fn rule(&mut self, effect: Effect) -> Result<Rule> {
        self.aliases.clear();
        let mut actions = Vec::new();
        let start = self.toks[self.i].clone();
        if self.eat("[") {
            loop {
                if self.eat("]") {
                    break;
                }
                actions.push(self.action()?);
                if !self.eat(",") {
                    self.expect("]", "to close the action list")?;
                    break;
                }
            }
        } else {
            actions.push(self.action()?);
        }
        if actions.is_empty() {
            return Err(self.err_at(
                &start,
                "an action list needs at least one action (or `*`)".into(),
            ));
        }
        let condition = if self.is_ident("if") {
            self.next();
            Some(self.expr()?)
        } else {
            None
        };
        self.aliases.clear();
        Ok(Rule {
            effect,
            actions,
            condition,
        })
    }

    fn action(&mut self) -> Result<String> {
        let name = match self.peek().clone() {
            Tok::Ident(s) if !super::ast::KEYWORDS.contains(&s.as_str()) => s,
            Tok::Str(s) if !s.is_empty() => s,
            Tok::Punct("*") => "*".to_string(),
            _ => return Err(self.err_here("expected an action name, a quoted action or `*`")),
        };
        self.next();
        if self.eat("(") {
            let alias = self.name("the name the resource is bound to, as in read(file)")?;
            self.expect(")", "after the bound name")?;
            if !matches!(alias.as_str(), "any" | "_" | "resource") {
                self.aliases.push(alias);
            }
        }
        Ok(name)
    }

    fn principals(&mut self) -> Result<Vec<String>> {
        self.expect("[", "to open the principal list")?;
        let mut out = Vec::new();
        loop {
            if self.eat("]") {
                return Ok(out);
            }
            match self.peek().clone() {
                Tok::Ident(s) | Tok::Str(s) if !s.is_empty() => {
                    self.next();
                    out.push(s);
                }
                _ => return Err(self.err_here("expected a principal id")),
            }
            if !self.eat(",") {
                self.expect("]", "to close the principal list")?;
                return Ok(out);
            }
        }
    }

    fn require(&mut self) -> Result<Map> {
        if self.is_punct("{") {
            return self.map();
        }
        let mut m = Map::new();
        if self.eat("[") {
            loop {
                if self.eat("]") {
                    break;
                }
                let (k, v) = self.flag()?;
                m.insert(k, v);
                if !self.eat(",") {
                    self.expect("]", "to close the requirement list")?;
                    break;
                }
            }
        } else {
            let (k, v) = self.flag()?;
            m.insert(k, v);
        }
        Ok(m)
    }

    fn flag(&mut self) -> Result<(String, Value)> {
        let k = self.name("a requirement name such as `encryption` or `rate_limit = 100`")?;
        if self.is_punct(".")
            || matches!(
                self.peek(),
                Tok::Punct("==" | "!=" | "<" | "<=" | ">" | ">=")
            )
        {
            return Err(self.err_here(
                "requirements are names or `name = value`; put conditions on requests in `allow: ... if <condition>`",
            ));
        }
        let v = if self.eat("=") {
            self.literal()?
        } else {
            Value::Bool(true)
        };
        Ok((k, v))
    }

    fn audit(&mut self) -> Result<Map> {
        if self.is_punct("{") {
            return self.map();
        }
        let mut m = Map::new();
        let scope =
            self.name("an audit map `{ log_level: \"info\" }` or a scope such as all_operations")?;
        m.insert("scope".into(), Value::Str(scope));
        if self.is_ident("with") {
            self.next();
            let mut with = vec![Value::Str(
                self.name("what to audit with, e.g. digital_signature")?,
            )];
            while self.eat(",") {
                with.push(Value::Str(self.name("what to audit with")?));
            }
            m.insert("with".into(), Value::List(with));
        }
        Ok(m)
    }

    fn map(&mut self) -> Result<Map> {
        self.expect("{", "to open a mapping")?;
        let mut m = Map::new();
        loop {
            while self.eat(",") || self.eat(";") {}
            if self.eat("}") {
                return Ok(m);
            }
            let k = match self.peek().clone() {
                Tok::Ident(s) | Tok::Str(s) => s,
                _ => return Err(self.err_here("expected a key or `}`")),
            };
            self.next();
            if !self.eat(":") && !self.eat("=") {
                return Err(self.err_here(format!("expected `:` after key `{k}`")));
            }
            let v = self.literal()?;
            m.insert(k, v);
        }
    }

    fn literal(&mut self) -> Result<Value> {
        let t = self.toks[self.i].clone();
        let v = match &t.tok {
            Tok::Str(s) => Value::Str(s.clone()),
            Tok::Int(i) => Value::Int(*i),
            Tok::Float(f) => Value::Float(*f),
            Tok::Ident(s) if s == "true" => Value::Bool(true),
            Tok::Ident(s) if s == "false" => Value::Bool(false),
            Tok::Ident(s) if s == "null" => Value::Null,
            // A bare word in a value position is a string: `encryption: aes256`.
            Tok::Ident(s) if !super::ast::KEYWORDS.contains(&s.as_str()) => Value::Str(s.clone()),
            Tok::Punct("[") => {
                self.next();
                let mut items = Vec::new();
                loop {
                    if self.eat("]") {
                        return Ok(Value::List(items));
                    }
                    items.push(self.literal()?);
                    if !self.eat(",") {
                        self.expect("]", "to close the list")?;
                        return Ok(Value::List(items));
                    }
                }
            }
            Tok::Punct("{") => return self.map().map(Value::Map),
            _ => {
                return Err(self
                    .err_here("expected a value (string, number, true, false, list or mapping)"))
            }
        };
        self.next();
        Ok(v)
    }

    // ---------------------------------------------------------- expressions

    fn expr(&mut self) -> Result<Expr> {
        let mut e = self.and()?;
        while self.is_punct("||") || self.is_ident("or") {
            self.next();
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr> {
        let mut e = self.not()?;
        while self.is_punct("&&") || self.is_ident("and") {
            self.next();
            e = Expr::And(Box::new(e), Box::new(self.not()?));
        }
        Ok(e)
    }

    fn not(&mut self) -> Result<Expr> {
        if self.is_punct("!")
            || (self.is_ident("not") && !matches!(self.peek_at(1), Tok::Ident(s) if s == "in"))
        {
            self.next();
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Expr> {
        let lhs = self.primary()?;
        let op = match self.peek() {
            Tok::Punct("==") => Some(CmpOp::Eq),
            Tok::Punct("!=") => Some(CmpOp::Ne),
            Tok::Punct("<") => Some(CmpOp::Lt),
            Tok::Punct("<=") => Some(CmpOp::Le),
            Tok::Punct(">") => Some(CmpOp::Gt),
            Tok::Punct(">=") => Some(CmpOp::Ge),
            _ => None,
        };
        if let Some(op) = op {
            self.next();
            let rhs = self.primary()?;
            return Ok(Expr::Cmp(op, Box::new(lhs), Box::new(rhs)));
        }
        if self.is_ident("in") {
            self.next();
            let rhs = self.primary()?;
            return Ok(Expr::In(Box::new(lhs), Box::new(rhs)));
        }
        if self.is_ident("not") && matches!(self.peek_at(1), Tok::Ident(s) if s == "in") {
            self.next();
            self.next();
            let rhs = self.primary()?;
            return Ok(Expr::Not(Box::new(Expr::In(Box::new(lhs), Box::new(rhs)))));
        }
        if self.is_punct("=") {
            return Err(self.err_here("`=` assigns; compare with `==`"));
        }
        Ok(lhs)
    }

    fn primary(&mut self) -> Result<Expr> {
        let t = self.toks[self.i].clone();
        match &t.tok {
            Tok::Punct("(") => {
                self.next();
                let e = self.expr()?;
                self.expect(")", "to close `(`")?;
                Ok(e)
            }
            Tok::Str(_) | Tok::Int(_) | Tok::Float(_) | Tok::Punct("[") | Tok::Punct("{") => {
                Ok(Expr::Lit(self.literal()?))
            }
            Tok::Ident(s) if matches!(s.as_str(), "true" | "false" | "null") => {
                Ok(Expr::Lit(self.literal()?))
            }
            Tok::Ident(s) if !super::ast::KEYWORDS.contains(&s.as_str()) => {
                self.next();
                let mut segs = vec![s.clone()];
                while self.eat(".") {
                    segs.push(self.name("a field name after `.`")?);
                }
                if self.is_punct("(") {
                    return Err(self.err_here(format!(
                        "function calls are not supported in conditions; compare a field, e.g. `{} == true`",
                        segs.join(".")
                    )));
                }
                self.path(&t, segs)
            }
            _ => Err(self.err_here(
                "expected a value, a field path such as principal.attrs.role, `!` or `(`",
            )),
        }
    }

    fn path(&self, at: &Token, segs: Vec<String>) -> Result<Expr> {
        let root = segs[0].as_str();
        let rest = &segs[1..];
        let split = |id: Root, attr: Root| -> Expr {
            match rest {
                [] => Expr::Path(id, vec![]),
                [one] if one == "id" => Expr::Path(id, vec![]),
                [first, tail @ ..] if first == "attrs" => Expr::Path(attr, tail.to_vec()),
                _ => Expr::Path(attr, rest.to_vec()),
            }
        };
        Ok(match root {
            "principal" | "agent" | "user" | "subject" => {
                split(Root::PrincipalId, Root::PrincipalAttr)
            }
            "resource" => split(Root::ResourceId, Root::ResourceAttr),
            r if self.aliases.iter().any(|a| a == r) => split(Root::ResourceId, Root::ResourceAttr),
            "action" => {
                if !rest.is_empty() {
                    return Err(
                        self.err_at(at, "`action` is the action name and has no fields".into())
                    );
                }
                Expr::Path(Root::Action, vec![])
            }
            "context" => Expr::Path(Root::Context, rest.to_vec()),
            _ => Expr::Path(Root::Context, segs),
        })
    }
}

/// Parse every `policy` block in `text`. `source` (a file name) prefixes error positions.
pub fn parse_policies(text: &str, source: &str) -> Result<Vec<Policy>> {
    let toks = lex(text, source)?;
    Parser {
        toks,
        i: 0,
        source,
        aliases: vec![],
    }
    .file()
}

/// Parse one condition expression (the dict form's `"if"` text). `aliases` name the resource.
pub fn parse_condition(text: &str, source: &str, aliases: &[String]) -> Result<Expr> {
    let toks = lex(text, source)?;
    let mut p = Parser {
        toks,
        i: 0,
        source,
        aliases: aliases.to_vec(),
    };
    let e = p.expr()?;
    if *p.peek() != Tok::Eof {
        return Err(
            p.err_here("unexpected text after the condition; join conditions with && or ||")
        );
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Policy {
        let mut ps = parse_policies(text, "t.symbi").unwrap();
        assert_eq!(ps.len(), 1);
        ps.remove(0)
    }

    fn err(text: &str) -> (usize, usize, String) {
        match parse_policies(text, "t.symbi") {
            Err(PolicyError::Parse {
                line,
                column,
                message,
                ..
            }) => (line, column, message),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn brief_example() {
        let p = one(
            r#"policy name { allow: [read, write] if data.source.trusted == true  deny: [network_access] if resource.host in ["evil.com"]
               require: { encryption: "aes256", rate_limit: 100 }  audit: { log_level: "info", include: ["principal", "action"] } }"#,
        );
        assert_eq!(p.name, "name");
        assert_eq!(p.rules.len(), 2);
        assert_eq!(p.rules[0].actions, vec!["read", "write"]);
        assert_eq!(
            p.rules[0].condition,
            Some(Expr::Cmp(
                CmpOp::Eq,
                Box::new(Expr::Path(
                    Root::Context,
                    vec!["data".into(), "source".into(), "trusted".into()]
                )),
                Box::new(Expr::Lit(Value::Bool(true)))
            ))
        );
        assert_eq!(p.require.get("rate_limit"), Some(&Value::Int(100)));
        assert_eq!(
            p.audit.get("include"),
            Some(&Value::List(vec![
                Value::Str("principal".into()),
                Value::Str("action".into())
            ]))
        );
    }

    #[test]
    fn symbiont_forms_and_comments() {
        let text = r#"
            # a file with an agent around the policy
            agent threat_hunter(scenario: String) -> Report {
                capabilities = ["read", "analyze"]
                policy containment {
                    // bound resource names and bare actions
                    allow: read(file) if file.classification != "secret"
                    deny: write(any)
                    deny: network_access(target) if target.internal == true
                    require: [mfa, rate_limit = 10]
                    audit: all_operations with digital_signature
                    /* static facts */
                    conditions: { retention: "7y" }
                }
            }"#;
        let p = one(text);
        assert_eq!(p.rules.len(), 3);
        assert_eq!(
            p.rules[0].condition,
            Some(Expr::Cmp(
                CmpOp::Ne,
                Box::new(Expr::Path(
                    Root::ResourceAttr,
                    vec!["classification".into()]
                )),
                Box::new(Expr::Lit(Value::Str("secret".into())))
            ))
        );
        assert_eq!(p.rules[1].condition, None);
        assert_eq!(p.require.get("mfa"), Some(&Value::Bool(true)));
        assert_eq!(
            p.audit.get("scope"),
            Some(&Value::Str("all_operations".into()))
        );
        assert_eq!(p.conditions.len(), 1);
    }

    #[test]
    fn precedence_and_paths() {
        let e = parse_condition(
            "!a || b && principal.attrs.role == \"x\" || not c in [1, 2.5]",
            "c",
            &[],
        )
        .unwrap();
        let s = super::super::ast::expr_to_string(&e);
        assert_eq!(
            s,
            "!context.a || context.b && principal.attrs.role == \"x\" || !(context.c in [1, 2.5])"
        );
        assert_eq!(parse_condition(&s, "c", &[]).unwrap(), e);
        assert_eq!(
            parse_condition("principal.role == principal.attrs.role", "c", &[]).unwrap(),
            Expr::Cmp(
                CmpOp::Eq,
                Box::new(Expr::Path(Root::PrincipalAttr, vec!["role".into()])),
                Box::new(Expr::Path(Root::PrincipalAttr, vec!["role".into()]))
            )
        );
    }

    #[test]
    fn error_positions() {
        let (l, c, m) = err("policy p {\n  allow: [read] if principal.role = \"x\"\n}");
        assert_eq!((l, c), (2, 35), "{m}");
        assert!(m.contains("compare with `==`"), "{m}");
        let (l, c, m) = err("policy p {\n  permit: read\n}");
        assert_eq!((l, c), (2, 3));
        assert!(m.contains("unknown policy clause `permit`"), "{m}");
        let (l, c, _) = err("policy p { allow: [read }");
        assert_eq!((l, c), (1, 25));
        let (l, _, m) = err("policy p { allow: read if x == \"open }");
        assert_eq!(l, 1);
        assert!(m.contains("unterminated string"), "{m}");
        let (_, _, m) = err("no policies here");
        assert!(m.contains("no policy block found"), "{m}");
        let (l, c, m) = err("policy p {\n allow: read\n");
        assert_eq!((l, c), (3, 1), "{m}");
    }

    #[test]
    fn dsl_round_trip() {
        let text = r#"policy p { principals: ["a", b] allow: [read, "odd-name", *] if x.y >= -3 && z in "abc"
                      deny: write if !(q == null) require: { "k-1": [1, {a: 2.5e10}] } audit: { log: true } }"#;
        let p = one(text);
        let again = one(&p.to_dsl());
        assert_eq!(p, again);
        let from_dict = Policy::from_value(&p.to_value(), "d").unwrap();
        assert_eq!(p, from_dict);
    }
}
