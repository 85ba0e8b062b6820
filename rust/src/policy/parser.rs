//! Recursive-descent parser for Symbiont policy blocks and condition expressions, over the
//! tokens of [`crate::lex`] in the policy dialect. Nesting is limited to [`MAX_DEPTH`] levels.
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

use crate::lex::{Cursor, Dialect, LexError, Tok, Token};

/// Deepest nesting a policy accepts: each `(`, `!`/`not`, chained `&&`/`||` operator and
/// `[`/`{` of a literal is one level. Deeper text is a parse error, so parsing, evaluating,
/// printing and dropping a condition never recurse more than this.
pub const MAX_DEPTH: usize = 256;

/// Policy tokens: `-3` and `1e5` are numbers; characters policies never use are `Other`
/// tokens, fine outside policy blocks (a policy inside an `agent { }`), an error inside.
static POLICY: Dialect = Dialect {
    puncts: &[
        "==", "!=", "<=", ">=", "&&", "||", "{", "}", "[", "]", "(", ")", ":", ",", ";", ".", "<",
        ">", "!", "=", "*",
    ],
    units: &[],
    long_units: &[],
    digit_separators: false,
    vault_refs: false,
    signed_numbers: true,
    exponents: true,
    lenient_escapes: false,
    strict_chars: None,
    describe_chars: usize::MAX,
};

fn lex(text: &str, source: &str) -> Result<Vec<Token>> {
    POLICY.lex(text).map_err(
        |LexError::Invalid {
             line,
             column,
             message,
         }| {
            PolicyError::Parse {
                origin: source.to_string(),
                line,
                column,
                message,
            }
        },
    )
}

fn describe(t: &Tok) -> String {
    POLICY.describe(t)
}

struct Parser<'a> {
    /// The tokens and the position in them (`peek`, `advance`, `eat`, ... come from the cursor).
    cur: Cursor<'a>,
    source: &'a str,
    /// Names bound to the resource by `action(name)` in the current rule.
    aliases: Vec<String>,
    /// Nesting levels open at the current token (see [`MAX_DEPTH`]).
    depth: usize,
}

crate::lex::cursor_methods!(Parser);

impl Parser<'_> {
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

    fn expect(&mut self, p: &str, what: &str) -> Result<()> {
        if self.eat(p) {
            Ok(())
        } else {
            Err(self.err_here(format!("expected `{p}` {what}")))
        }
    }

    /// One level deeper at the current token; an error past [`MAX_DEPTH`].
    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let t = &self.toks[self.i];
            return Err(self.err_at(
                t,
                format!(
                    "nested more than {MAX_DEPTH} levels deep (each `(`, `!`, chained `&&`/`||` and `[`/`{{` counts); \
                     simplify it, e.g. `x in [a, b]` instead of a long `||` chain"
                ),
            ));
        }
        Ok(())
    }

    fn leave(&mut self, levels: usize) {
        self.depth -= levels;
    }

    fn name(&mut self, what: &str) -> Result<String> {
        match self.peek().clone() {
            Tok::Ident(s) if !super::ast::KEYWORDS.contains(&s.as_str()) => {
                self.advance();
                Ok(s)
            }
            _ => Err(self.err_here(format!("expected {what}"))),
        }
    }

    // ------------------------------------------------------------- policies

    fn file(&mut self) -> Result<Vec<Policy>> {
        let mut out = Vec::new();
        while *self.peek() != Tok::Eof {
            if self.is_word("policy")
                && matches!(self.peek_at(1), Tok::Ident(_))
                && matches!(self.peek_at(2), Tok::Punct("{"))
            {
                out.push(self.policy()?);
            } else if self.is_word("policy") {
                self.advance();
                return Err(self.err_here("expected a policy name and `{` after `policy`"));
            } else {
                self.advance();
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
        self.advance(); // `policy`
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
            self.advance();
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
        let condition = if self.is_word("if") {
            self.advance();
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
        self.advance();
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
                    self.advance();
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
        if self.is_word("with") {
            self.advance();
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
        if self.is_punct("{") {
            self.enter()?;
        }
        self.expect("{", "to open a mapping")?;
        let mut m = Map::new();
        loop {
            while self.eat(",") || self.eat(";") {}
            if self.eat("}") {
                self.leave(1);
                return Ok(m);
            }
            let k = match self.peek().clone() {
                Tok::Ident(s) | Tok::Str(s) => s,
                _ => return Err(self.err_here("expected a key or `}`")),
            };
            self.advance();
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
                self.enter()?;
                self.advance();
                let mut items = Vec::new();
                loop {
                    if self.eat("]") {
                        break;
                    }
                    items.push(self.literal()?);
                    if !self.eat(",") {
                        self.expect("]", "to close the list")?;
                        break;
                    }
                }
                self.leave(1);
                return Ok(Value::List(items));
            }
            Tok::Punct("{") => return self.map().map(Value::Map),
            _ => {
                return Err(self
                    .err_here("expected a value (string, number, true, false, list or mapping)"))
            }
        };
        self.advance();
        Ok(v)
    }

    // ---------------------------------------------------------- expressions

    // Each chained `||`/`&&` wraps the tree one level deeper, so it counts as nesting.

    fn expr(&mut self) -> Result<Expr> {
        let mut e = self.and()?;
        let mut chained = 0;
        while self.is_punct("||") || self.is_word("or") {
            self.enter()?;
            chained += 1;
            self.advance();
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        self.leave(chained);
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr> {
        let mut e = self.not()?;
        let mut chained = 0;
        while self.is_punct("&&") || self.is_word("and") {
            self.enter()?;
            chained += 1;
            self.advance();
            e = Expr::And(Box::new(e), Box::new(self.not()?));
        }
        self.leave(chained);
        Ok(e)
    }

    fn not(&mut self) -> Result<Expr> {
        if self.is_punct("!")
            || (self.is_word("not") && !matches!(self.peek_at(1), Tok::Ident(s) if s == "in"))
        {
            self.enter()?;
            self.advance();
            let e = self.not()?;
            self.leave(1);
            return Ok(Expr::Not(Box::new(e)));
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
            self.advance();
            let rhs = self.primary()?;
            return Ok(Expr::Cmp(op, Box::new(lhs), Box::new(rhs)));
        }
        if self.is_word("in") {
            self.advance();
            let rhs = self.primary()?;
            return Ok(Expr::In(Box::new(lhs), Box::new(rhs)));
        }
        if self.is_word("not") && matches!(self.peek_at(1), Tok::Ident(s) if s == "in") {
            self.advance();
            self.advance();
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
                self.enter()?;
                self.advance();
                let e = self.expr()?;
                self.expect(")", "to close `(`")?;
                self.leave(1);
                Ok(e)
            }
            Tok::Str(_) | Tok::Int(_) | Tok::Float(_) | Tok::Punct("[") | Tok::Punct("{") => {
                Ok(Expr::Lit(self.literal()?))
            }
            Tok::Ident(s) if matches!(s.as_str(), "true" | "false" | "null") => {
                Ok(Expr::Lit(self.literal()?))
            }
            Tok::Ident(s) if !super::ast::KEYWORDS.contains(&s.as_str()) => {
                self.advance();
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
    crate::lex::with_parser_stack(&toks, || {
        Parser {
            cur: Cursor::new(&toks),
            source,
            aliases: vec![],
            depth: 0,
        }
        .file()
    })
}

/// Parse one condition expression (the dict form's `"if"` text). `aliases` name the resource.
pub fn parse_condition(text: &str, source: &str, aliases: &[String]) -> Result<Expr> {
    let toks = lex(text, source)?;
    crate::lex::with_parser_stack(&toks, || {
        let mut p = Parser {
            cur: Cursor::new(&toks),
            source,
            aliases: aliases.to_vec(),
            depth: 0,
        };
        let e = p.expr()?;
        if *p.peek() != Tok::Eof {
            return Err(
                p.err_here("unexpected text after the condition; join conditions with && or ||")
            );
        }
        Ok(e)
    })
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

    /// Each way of nesting, far past the limit: a parse error at the first level too deep.
    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let n = 100_000;
        let cases = [
            format!("{}x == 1{}", "(".repeat(n), ")".repeat(n)),
            format!("{}x", "!".repeat(n)),
            format!("{}x", "not ".repeat(n)),
            format!("x{}", " && x".repeat(n)),
            format!("x{}", " or x".repeat(n)),
            format!("x in {}1{}", "[".repeat(n), "]".repeat(n)),
            format!("x == {}", "{a: ".repeat(n)),
        ];
        for cond in &cases {
            let text = format!("policy p {{\n allow: read if {cond}\n}}");
            let (l, c, m) = err(&text);
            assert!(
                m.contains(&format!("nested more than {MAX_DEPTH} levels deep")),
                "{m}"
            );
            assert_eq!(l, 2, "{m}");
            assert!(c > MAX_DEPTH && c < 20 * MAX_DEPTH, "{c}: {m}");
            let Err(PolicyError::Parse { message, .. }) = parse_condition(cond, "c", &[]) else {
                panic!("{cond:.40}: expected a parse error")
            };
            assert!(message.contains("nested more than"), "{message}");
        }
        let (l, c, m) = err(&format!(
            "policy p {{ require: {{ k: {}1{} }} }}",
            "[".repeat(n),
            "]".repeat(n)
        ));
        // `{` at column 21 is level 1, so level MAX_DEPTH + 1 is the `[` at 26 + MAX_DEPTH - 1.
        assert_eq!((l, c), (1, 26 + MAX_DEPTH - 1), "{m}");
        // The levels are exact: MAX_DEPTH opens are fine, one more is not.
        let at = |k: usize| format!("{}x{}", "(".repeat(k), ")".repeat(k));
        assert!(parse_condition(&at(MAX_DEPTH), "c", &[]).is_ok());
        assert!(parse_condition(&at(MAX_DEPTH + 1), "c", &[]).is_err());
        let chain = |k: usize| format!("x{}", " || x".repeat(k));
        assert!(parse_condition(&chain(MAX_DEPTH), "c", &[]).is_ok());
        assert!(parse_condition(&chain(MAX_DEPTH + 1), "c", &[]).is_err());
        // What is accepted prints as text that is accepted again (no added nesting).
        let list = format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        for text in [
            at(MAX_DEPTH),
            chain(MAX_DEPTH),
            format!("{}x", "!".repeat(MAX_DEPTH)),
            format!("{list} == {list}"),
        ] {
            let e = parse_condition(&text, "c", &[]).unwrap();
            let printed = super::super::ast::expr_to_string(&e);
            assert_eq!(parse_condition(&printed, "c", &[]), Ok(e), "{printed:.60}");
        }
        // Levels close again: many shallow groups in a row are fine.
        let wide = vec!["((x))"; 200].join(" && !");
        assert!(parse_condition(&wide, "c", &[]).is_ok());
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
