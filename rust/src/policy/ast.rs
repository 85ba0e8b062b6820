//! The policy IR shared by the DSL and the dict form, its DSL printer and its dict-form
//! conversion. Both forms of a policy build exactly this, so `to_dsl`/`to_value` round-trip.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{PolicyError, Result};

/// A typed value: a literal in a policy, or an attribute of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

pub type Map = BTreeMap<String, Value>;

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::Float(_) => "number",
            Value::Str(_) => "string",
            Value::List(_) => "list",
            Value::Map(_) => "mapping",
        }
    }
}

/// Whether a rule grants or forbids its actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

/// Where a field path starts. Paths are normalised when parsed: `principal.role` and
/// `principal.attrs.role` are the same field; an unknown root such as `data.x` reads
/// `context.data.x`; a resource binding such as `read(file)` makes `file.x` read `resource.x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    PrincipalId,
    PrincipalAttr,
    ResourceId,
    ResourceAttr,
    Action,
    Context,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// A condition expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Value),
    Path(Root, Vec<String>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    In(Box<Expr>, Box<Expr>),
}

/// One `allow:` or `deny:` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub effect: Effect,
    /// Action names; `"*"` matches every action.
    pub actions: Vec<String>,
    pub condition: Option<Expr>,
}

/// A policy: rules plus the requirements and audit settings an allow carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    /// When set, the policy applies only to requests from these principal ids.
    pub principals: Option<Vec<String>>,
    pub rules: Vec<Rule>,
    pub require: Map,
    pub audit: Map,
    /// Symbiont's static `conditions: { ... }` block; kept and round-tripped, not evaluated.
    pub conditions: Map,
}

// ------------------------------------------------------------------ DSL printing

pub const KEYWORDS: &[&str] = &[
    "if", "in", "true", "false", "and", "or", "not", "null", "with",
];

pub fn is_ident(s: &str) -> bool {
    let mut cs = s.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !KEYWORDS.contains(&s)
}

pub fn quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn name_or_quoted(s: &str, out: &mut String) {
    if is_ident(s) {
        out.push_str(s);
    } else {
        quote(s, out);
    }
}

pub fn write_value(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => {
            // `{:?}` is the shortest text that reads back as the same f64, and keeps a `.0`.
            let _ = write!(out, "{f:?}");
        }
        Value::Str(s) => quote(s, out),
        Value::List(items) => {
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(it, out);
            }
            out.push(']');
        }
        Value::Map(m) => write_map(m, out),
    }
}

fn write_map(m: &Map, out: &mut String) {
    out.push('{');
    for (i, (k, v)) in m.iter().enumerate() {
        out.push_str(if i > 0 { ", " } else { " " });
        name_or_quoted(k, out);
        out.push_str(": ");
        write_value(v, out);
    }
    out.push_str(if m.is_empty() { "}" } else { " }" });
}

fn write_path(root: Root, path: &[String], out: &mut String) {
    out.push_str(match root {
        Root::PrincipalId => "principal.id",
        Root::PrincipalAttr => "principal.attrs",
        Root::ResourceId => "resource.id",
        Root::ResourceAttr => "resource.attrs",
        Root::Action => "action",
        Root::Context => "context",
    });
    for seg in path {
        out.push('.');
        out.push_str(seg);
    }
}

fn prec(e: &Expr) -> u8 {
    match e {
        Expr::Or(..) => 1,
        Expr::And(..) => 2,
        Expr::Not(..) => 3,
        Expr::Cmp(..) | Expr::In(..) => 4,
        Expr::Lit(_) | Expr::Path(..) => 5,
    }
}

fn write_sub(e: &Expr, min: u8, out: &mut String) {
    if prec(e) < min {
        out.push('(');
        write_expr(e, out);
        out.push(')');
    } else {
        write_expr(e, out);
    }
}

/// Print an expression so that parsing the text gives back the same tree.
pub fn write_expr(e: &Expr, out: &mut String) {
    match e {
        Expr::Lit(v) => write_value(v, out),
        Expr::Path(r, p) => write_path(*r, p, out),
        // `!!x` rather than `!(!x)`: printing adds no nesting, so a condition at the parser's
        // depth limit reads back.
        Expr::Not(x) if matches!(**x, Expr::Not(_)) => {
            out.push('!');
            write_expr(x, out);
        }
        Expr::Not(x) => {
            out.push('!');
            write_sub(x, 5, out);
        }
        // Left-associative: the right operand of `a || b` needs brackets if it is an `||`.
        Expr::Or(a, b) => {
            write_sub(a, 1, out);
            out.push_str(" || ");
            write_sub(b, 2, out);
        }
        Expr::And(a, b) => {
            write_sub(a, 2, out);
            out.push_str(" && ");
            write_sub(b, 3, out);
        }
        Expr::Cmp(op, a, b) => {
            write_sub(a, 5, out);
            out.push(' ');
            out.push_str(op.as_str());
            out.push(' ');
            write_sub(b, 5, out);
        }
        Expr::In(a, b) => {
            write_sub(a, 5, out);
            out.push_str(" in ");
            write_sub(b, 5, out);
        }
    }
}

pub fn expr_to_string(e: &Expr) -> String {
    let mut s = String::new();
    write_expr(e, &mut s);
    s
}

impl Policy {
    /// The policy as a Symbiont DSL block.
    pub fn to_dsl(&self) -> String {
        let mut out = String::new();
        out.push_str("policy ");
        out.push_str(&self.name);
        out.push_str(" {\n");
        if let Some(ps) = &self.principals {
            out.push_str("    principals: [");
            for (i, p) in ps.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                quote(p, &mut out);
            }
            out.push_str("]\n");
        }
        for r in &self.rules {
            out.push_str("    ");
            out.push_str(r.effect.as_str());
            out.push_str(": [");
            for (i, a) in r.actions.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                if a == "*" {
                    out.push('*');
                } else {
                    name_or_quoted(a, &mut out);
                }
            }
            out.push(']');
            if let Some(c) = &r.condition {
                out.push_str(" if ");
                write_expr(c, &mut out);
            }
            out.push('\n');
        }
        for (kw, m) in [
            ("require", &self.require),
            ("audit", &self.audit),
            ("conditions", &self.conditions),
        ] {
            if !m.is_empty() {
                out.push_str("    ");
                out.push_str(kw);
                out.push_str(": ");
                write_map(m, &mut out);
                out.push('\n');
            }
        }
        out.push_str("}\n");
        out
    }

    /// The dict form: `{"name", "rules": [{"effect", "actions", "if"?}], "require", "audit",
    /// "conditions", "principals"?}`.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), Value::Str(self.name.clone()));
        if let Some(ps) = &self.principals {
            m.insert(
                "principals".into(),
                Value::List(ps.iter().cloned().map(Value::Str).collect()),
            );
        }
        let rules = self
            .rules
            .iter()
            .map(|r| {
                let mut rm = Map::new();
                rm.insert("effect".into(), Value::Str(r.effect.as_str().into()));
                rm.insert(
                    "actions".into(),
                    Value::List(r.actions.iter().cloned().map(Value::Str).collect()),
                );
                if let Some(c) = &r.condition {
                    rm.insert("if".into(), Value::Str(expr_to_string(c)));
                }
                Value::Map(rm)
            })
            .collect();
        m.insert("rules".into(), Value::List(rules));
        m.insert("require".into(), Value::Map(self.require.clone()));
        m.insert("audit".into(), Value::Map(self.audit.clone()));
        m.insert("conditions".into(), Value::Map(self.conditions.clone()));
        Value::Map(m)
    }

    /// Build a policy from its dict form. `source` names it in errors (e.g. a file name).
    pub fn from_value(v: &Value, source: &str) -> Result<Policy> {
        let bad = |field: &str, message: String| PolicyError::InvalidPolicy {
            field: field.into(),
            message,
        };
        let Value::Map(m) = v else {
            return Err(bad(
                "<policy>",
                format!("expected a mapping, got a {}", v.type_name()),
            ));
        };
        const KNOWN: &[&str] = &[
            "name",
            "principals",
            "rules",
            "require",
            "audit",
            "conditions",
        ];
        if let Some(k) = m.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(bad(
                k,
                format!("unknown key; a policy has the keys {KNOWN:?}"),
            ));
        }
        let name = match m.get("name") {
            Some(Value::Str(s)) if is_ident(s) => s.clone(),
            Some(Value::Str(s)) => {
                return Err(bad(
                    "name",
                    format!(
                        "{s:?} is not a name: use letters, digits and _, not starting with a digit"
                    ),
                ))
            }
            Some(o) => {
                return Err(bad(
                    "name",
                    format!("expected a string, got a {}", o.type_name()),
                ))
            }
            None => return Err(bad("name", "missing; every policy needs a name".into())),
        };
        let str_list = |field: &str, v: &Value| -> Result<Vec<String>> {
            let Value::List(items) = v else {
                return Err(bad(
                    field,
                    format!("expected a list of strings, got a {}", v.type_name()),
                ));
            };
            items
                .iter()
                .map(|i| match i {
                    Value::Str(s) if !s.is_empty() => Ok(s.clone()),
                    o => Err(bad(field, format!("expected non-empty strings, got {o:?}"))),
                })
                .collect()
        };
        let principals = match m.get("principals") {
            None | Some(Value::Null) => None,
            Some(v) => Some(str_list("principals", v)?),
        };
        let map_field = |field: &str| -> Result<Map> {
            match m.get(field) {
                None | Some(Value::Null) => Ok(Map::new()),
                Some(Value::Map(x)) => {
                    check_finite(field, x)?;
                    Ok(x.clone())
                }
                Some(o) => Err(bad(
                    field,
                    format!("expected a mapping, got a {}", o.type_name()),
                )),
            }
        };
        let mut rules = Vec::new();
        match m.get("rules") {
            None | Some(Value::Null) => {}
            Some(Value::List(rs)) => {
                for (i, r) in rs.iter().enumerate() {
                    let f = format!("rules[{i}]");
                    let Value::Map(rm) = r else {
                        return Err(bad(
                            &f,
                            format!("expected a mapping, got a {}", r.type_name()),
                        ));
                    };
                    if let Some(k) = rm
                        .keys()
                        .find(|k| !["effect", "actions", "if"].contains(&k.as_str()))
                    {
                        return Err(bad(
                            &format!("{f}.{k}"),
                            "unknown key; a rule has effect, actions and if".into(),
                        ));
                    }
                    let effect = match rm.get("effect") {
                        Some(Value::Str(s)) if s == "allow" => Effect::Allow,
                        Some(Value::Str(s)) if s == "deny" => Effect::Deny,
                        o => {
                            return Err(bad(
                                &format!("{f}.effect"),
                                format!("expected \"allow\" or \"deny\", got {o:?}"),
                            ))
                        }
                    };
                    let actions = match rm.get("actions") {
                        Some(v) => str_list(&format!("{f}.actions"), v)?,
                        None => {
                            return Err(bad(
                                &format!("{f}.actions"),
                                "missing; list the actions".into(),
                            ))
                        }
                    };
                    if actions.is_empty() {
                        return Err(bad(
                            &format!("{f}.actions"),
                            "empty; list at least one action, or \"*\"".into(),
                        ));
                    }
                    let condition = match rm.get("if") {
                        None | Some(Value::Null) => None,
                        Some(Value::Str(text)) => Some(super::parser::parse_condition(
                            text,
                            &format!("{source}:{f}.if"),
                            &[],
                        )?),
                        Some(o) => {
                            return Err(bad(
                                &format!("{f}.if"),
                                format!("expected condition text, got a {}", o.type_name()),
                            ))
                        }
                    };
                    rules.push(Rule {
                        effect,
                        actions,
                        condition,
                    });
                }
            }
            Some(o) => {
                return Err(bad(
                    "rules",
                    format!("expected a list, got a {}", o.type_name()),
                ))
            }
        }
        Ok(Policy {
            name,
            principals,
            rules,
            require: map_field("require")?,
            audit: map_field("audit")?,
            conditions: map_field("conditions")?,
        })
    }
}

fn check_finite(field: &str, m: &Map) -> Result<()> {
    fn ok(v: &Value) -> bool {
        match v {
            Value::Float(f) => f.is_finite(),
            Value::List(l) => l.iter().all(ok),
            Value::Map(m) => m.values().all(ok),
            _ => true,
        }
    }
    if m.values().all(ok) {
        Ok(())
    } else {
        Err(PolicyError::InvalidPolicy {
            field: field.into(),
            message: "numbers must be finite (no NaN or inf)".into(),
        })
    }
}
