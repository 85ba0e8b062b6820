//! Typed evaluation of condition expressions. A missing field or an operator applied to
//! incompatible types is an error, never a silent `false`: the engine turns it into a denial.

use std::cmp::Ordering;

use super::ast::{CmpOp, Expr, Map, Root, Value};
use super::{PolicyError, Result};

/// What a decision is about: who (principal), does what (action), to what (resource), when
/// and where (context). Ids are stored as `Value::Str` so paths can borrow them.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub principal_id: Value,
    pub principal_attrs: Map,
    pub action: Value,
    pub resource_id: Value,
    pub resource_attrs: Map,
    pub context: Map,
}

impl Request {
    pub fn new(principal: &str, action: &str, resource: &str) -> Request {
        Request {
            principal_id: Value::Str(principal.into()),
            principal_attrs: Map::new(),
            action: Value::Str(action.into()),
            resource_id: Value::Str(resource.into()),
            resource_attrs: Map::new(),
            context: Map::new(),
        }
    }

    pub fn action(&self) -> &str {
        match &self.action {
            Value::Str(s) => s,
            _ => "",
        }
    }

    pub fn principal(&self) -> &str {
        match &self.principal_id {
            Value::Str(s) => s,
            _ => "",
        }
    }

    pub fn resource(&self) -> &str {
        match &self.resource_id {
            Value::Str(s) => s,
            _ => "",
        }
    }
}

/// An operand: a borrowed value, or a boolean computed on the way.
enum V<'a> {
    R(&'a Value),
    B(bool),
}

impl V<'_> {
    fn get(&self) -> &Value {
        match self {
            V::R(v) => v,
            V::B(true) => &Value::Bool(true),
            V::B(false) => &Value::Bool(false),
        }
    }
}

fn path_name(root: Root, path: &[String]) -> String {
    let mut s = String::from(match root {
        Root::PrincipalId => "principal.id",
        Root::PrincipalAttr => "principal.attrs",
        Root::ResourceId => "resource.id",
        Root::ResourceAttr => "resource.attrs",
        Root::Action => "action",
        Root::Context => "context",
    });
    for p in path {
        s.push('.');
        s.push_str(p);
    }
    s
}

// Errors are built out of line (`#[cold]`, no inlining) and lookups are not inlined, so the
// frames of the recursive `eval`/`truth` stay small: a condition nested to the parser's
// limit evaluates on a small thread stack.

#[inline(never)]
fn lookup<'a>(req: &'a Request, root: Root, path: &[String]) -> Result<&'a Value> {
    let base: &Map = match root {
        Root::PrincipalId => return Ok(&req.principal_id),
        Root::ResourceId => return Ok(&req.resource_id),
        Root::Action => return Ok(&req.action),
        Root::PrincipalAttr => &req.principal_attrs,
        Root::ResourceAttr => &req.resource_attrs,
        Root::Context => &req.context,
    };
    let Some((first, rest)) = path.split_first() else {
        return Err(PolicyError::Eval(format!(
            "{} is a whole mapping; compare one of its fields",
            path_name(root, path)
        )));
    };
    let missing = || {
        PolicyError::Eval(format!(
            "field {} is missing from the request",
            path_name(root, path)
        ))
    };
    let mut cur = base.get(first).ok_or_else(missing)?;
    for (i, seg) in rest.iter().enumerate() {
        match cur {
            Value::Map(m) => cur = m.get(seg).ok_or_else(missing)?,
            other => {
                return Err(PolicyError::Eval(format!(
                    "{} is a {}, so it has no field {seg:?}",
                    path_name(root, &path[..=i]),
                    other.type_name()
                )))
            }
        }
    }
    Ok(cur)
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// Typed equality: `None` when the types cannot be compared. Null compares with anything
/// (`x == null` asks "is it unset"); NaN with nothing else, as in [`order`].
fn equal(a: &Value, b: &Value) -> Option<bool> {
    Some(match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Null, _) | (_, Value::Null) => false,
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
            let (x, y) = (num(a)?, num(b)?);
            if x.is_nan() || y.is_nan() {
                return None;
            }
            x == y
        }
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::List(x), Value::List(y)) => all_equal(x.iter().zip(y))? && x.len() == y.len(),
        (Value::Map(x), Value::Map(y)) => {
            let shared = x.iter().filter_map(|(k, v)| Some((v, y.get(k)?)));
            all_equal(shared)? && x.len() == y.len() && x.keys().all(|k| y.contains_key(k))
        }
        _ => return None,
    })
}

/// Whether every pair is equal. Any incomparable pair makes it `None`, even after an
/// unequal one: `[1] == ["1"]` is a type error, as `1 == "1"` is, not `false`.
fn all_equal<'v>(pairs: impl Iterator<Item = (&'v Value, &'v Value)>) -> Option<bool> {
    let mut all = true;
    for (p, q) in pairs {
        all &= equal(p, q)?;
    }
    Some(all)
}

/// Whether `x` equals one of `items`. With no match, an item that cannot be compared with
/// `x` makes it `None`: `"0" in [0, 1]` is a type error, so `not in` cannot turn it true.
fn member(x: &Value, items: &[Value]) -> Option<bool> {
    let mut comparable = true;
    for i in items {
        match equal(x, i) {
            Some(true) => return Some(true),
            Some(false) => {}
            None => comparable = false,
        }
    }
    comparable.then_some(false)
}

fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
        _ => num(a)?.partial_cmp(&num(b)?),
    }
}

/// The innermost pair of values that `equal` cannot compare, to name it in errors.
fn culprit<'v>(a: &'v Value, b: &'v Value) -> (&'v Value, &'v Value) {
    let inner = match (a, b) {
        (Value::List(x), Value::List(y)) => x.iter().zip(y).find(|(p, q)| equal(p, q).is_none()),
        (Value::Map(x), Value::Map(y)) => x
            .iter()
            .filter_map(|(k, v)| Some((v, y.get(k)?)))
            .find(|(p, q)| equal(p, q).is_none()),
        _ => None,
    };
    inner.map_or((a, b), |(p, q)| culprit(p, q))
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Float(f) if f.is_nan() => "NaN",
        v => v.type_name(),
    }
}

#[cold]
#[inline(never)]
fn mismatch(op: &str, a: &Value, b: &Value, e: &Expr) -> PolicyError {
    let (x, y) = match (op, b) {
        ("in", Value::List(items)) => match items.iter().find(|i| equal(a, i).is_none()) {
            Some(i) => culprit(a, i),
            None => (a, b),
        },
        _ => culprit(a, b),
    };
    let detail = if std::ptr::eq(x, a) && std::ptr::eq(y, b) {
        String::new()
    } else {
        format!(" (a {} against a {})", describe(x), describe(y))
    };
    let hint = match op {
        "==" | "!=" => {
            "compare values of one type (ints and floats mix; anything compares with null)"
        }
        "in" if matches!(b, Value::List(_)) => {
            "make the value the same type as the list items (ints and floats mix)"
        }
        "in" => "`in` looks in a list (items), a string (substrings) or a mapping (keys)",
        _ => "order two numbers (not NaN) or two strings",
    };
    PolicyError::Eval(format!(
        "cannot apply `{op}` to a {} and a {}{detail} in `{}`; {hint}",
        describe(a),
        describe(b),
        super::ast::expr_to_string(e)
    ))
}

fn eval<'a>(e: &'a Expr, req: &'a Request) -> Result<V<'a>> {
    Ok(match e {
        Expr::Lit(v) => V::R(v),
        Expr::Path(root, path) => V::R(lookup(req, *root, path)?),
        Expr::Not(x) => V::B(!truth(x, req)?),
        Expr::And(a, b) => V::B(truth(a, req)? && truth(b, req)?),
        Expr::Or(a, b) => V::B(truth(a, req)? || truth(b, req)?),
        Expr::Cmp(op, a, b) => {
            let (x, y) = (eval(a, req)?, eval(b, req)?);
            let (x, y) = (x.get(), y.get());
            let r = match op {
                CmpOp::Eq => equal(x, y),
                CmpOp::Ne => equal(x, y).map(|t| !t),
                CmpOp::Lt => order(x, y).map(|o| o == Ordering::Less),
                CmpOp::Le => order(x, y).map(|o| o != Ordering::Greater),
                CmpOp::Gt => order(x, y).map(|o| o == Ordering::Greater),
                CmpOp::Ge => order(x, y).map(|o| o != Ordering::Less),
            };
            // A NaN operand orders as neither: that is a type problem, not `false`.
            V::B(r.ok_or_else(|| mismatch(op.as_str(), x, y, e))?)
        }
        Expr::In(a, b) => {
            let (x, y) = (eval(a, req)?, eval(b, req)?);
            let (x, y) = (x.get(), y.get());
            V::B(match (x, y) {
                (_, Value::List(items)) => {
                    member(x, items).ok_or_else(|| mismatch("in", x, y, e))?
                }
                (Value::Str(s), Value::Str(hay)) => hay.contains(s.as_str()),
                (Value::Str(s), Value::Map(m)) => m.contains_key(s),
                _ => return Err(mismatch("in", x, y, e)),
            })
        }
    })
}

/// Evaluate a condition to a boolean. Non-boolean results are a type error.
pub fn truth(e: &Expr, req: &Request) -> Result<bool> {
    match eval(e, req)? {
        V::B(b) => Ok(b),
        V::R(Value::Bool(b)) => Ok(*b),
        V::R(other) => Err(not_bool(e, other)),
    }
}

#[cold]
#[inline(never)]
fn not_bool(e: &Expr, v: &Value) -> PolicyError {
    PolicyError::Eval(format!(
        "`{}` is a {}, not a bool; compare it, e.g. `{} == ...`",
        super::ast::expr_to_string(e),
        v.type_name(),
        super::ast::expr_to_string(e)
    ))
}

#[cfg(test)]
mod tests {
    use super::super::parser::parse_condition;
    use super::*;

    fn req() -> Request {
        let mut r = Request::new("agent-1", "send", "agent-2");
        r.principal_attrs
            .insert("role".into(), Value::Str("analyst".into()));
        r.principal_attrs.insert("level".into(), Value::Int(3));
        r.resource_attrs
            .insert("labels".into(), Value::List(vec![Value::Str("pii".into())]));
        r.context.insert("hour".into(), Value::Float(9.5));
        r
    }

    fn check(text: &str) -> Result<bool> {
        truth(&parse_condition(text, "c", &[]).unwrap(), &req())
    }

    #[test]
    fn typed_operators() {
        assert_eq!(check("principal.role == \"analyst\""), Ok(true));
        assert_eq!(check("principal.level >= 3 && context.hour < 10"), Ok(true));
        assert_eq!(
            check("principal == \"agent-1\" && resource.id == \"agent-2\" && action == \"send\""),
            Ok(true)
        );
        assert_eq!(check("\"pii\" in resource.labels"), Ok(true));
        assert_eq!(check("\"ana\" in principal.role"), Ok(true));
        assert_eq!(check("principal.level in [1, 2]"), Ok(false));
        assert_eq!(
            check("!(principal.level > 3) || nope"),
            Ok(true),
            "|| short-circuits"
        );
    }

    /// The parser's depth limit bounds every recursion over a condition: one nested to the
    /// limit in each way evaluates, prints, converts and drops on a small thread stack.
    #[test]
    fn conditions_at_the_depth_limit_evaluate_on_a_small_stack() {
        use super::super::parser::MAX_DEPTH as N;
        let list = format!("{}1{}", "[".repeat(N), "]".repeat(N));
        // As deep as `list`'s item, so every level is compared before the `false`.
        let item = format!("{}2{}", "[".repeat(N - 1), "]".repeat(N - 1));
        let cases = [
            (
                format!("{}principal.level == 3{}", "(".repeat(N), ")".repeat(N)),
                true,
            ),
            (format!("{}true", "!".repeat(N)), N % 2 == 0),
            (format!("{}true", "not ".repeat(N)), N % 2 == 0),
            (format!("true{}", " && true".repeat(N)), true),
            (format!("false{}", " || false".repeat(N)), false),
            (format!("{list} == {list}"), true),
            (format!("{item} in {list}"), false),
            (
                format!(
                    "{}!(1 in [2]){}",
                    "(!".repeat(N / 2 - 2),
                    ")".repeat(N / 2 - 2)
                ),
                (N / 2 - 2) % 2 == 0,
            ),
        ];
        let parsed: Vec<(Expr, bool)> = cases
            .iter()
            .map(|(text, want)| (parse_condition(text, "c", &[]).unwrap(), *want))
            .collect();
        // Release builds need a few dozen KiB here; debug frames are many times larger.
        let stack = if cfg!(debug_assertions) {
            4 << 20
        } else {
            256 << 10
        };
        std::thread::Builder::new()
            .stack_size(stack)
            .spawn(move || {
                let r = req();
                for (e, want) in parsed {
                    assert_eq!(truth(&e, &r), Ok(want));
                    let text = super::super::ast::expr_to_string(&e);
                    assert!(!text.is_empty());
                    let copy = e.clone();
                    assert_eq!(copy, e);
                    drop(copy);
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// `in`, `not in` and list or mapping `==`/`!=` over items of another type are type
    /// errors, as `1 == "1"` is: never a `false` that a deny rule reads as "no match".
    #[test]
    fn incomparable_items_are_errors_not_false() {
        let mut r = req();
        let map = |v: Value| Value::Map(Map::from([("a".to_string(), v)]));
        r.context.insert("int_a".into(), map(Value::Int(1)));
        r.context
            .insert("str_a".into(), map(Value::Str("1".into())));
        r.context.insert("float_a".into(), map(Value::Float(1.0)));
        r.context.insert(
            "int_b".into(),
            Value::Map(Map::from([("b".into(), Value::Int(1))])),
        );
        r.context.insert("nan".into(), Value::Float(f64::NAN));
        let check = |text: &str| truth(&parse_condition(text, "c", &[]).unwrap(), &r);
        for text in [
            r#"principal.level in ["3", "4"]"#,
            r#"principal.level not in ["3", "4"]"#,
            r#"principal.level in [1, "3"]"#,
            "principal.role in [1, 2]",
            "resource.labels == [1]",
            "resource.labels != [1]",
            r#"resource.labels == [1, "pii"]"#,
            "[1] == [[1]]",
            "[true] != [1]",
            "context.int_a == context.str_a",
            "context.int_a != context.str_a",
            "context.nan == 1",
            "context.nan != 1",
            "context.nan in [1, 2]",
            "context.nan not in [1, 2]",
        ] {
            assert!(check(text).is_err(), "{text}: {:?}", check(text));
        }
        for (text, want) in [
            // Unequal values of one type are a plain `false`.
            (r#""PII" in resource.labels"#, false),
            (r#""PII" not in resource.labels"#, true),
            ("principal.level in [1, 2.5]", false),
            ("principal.level not in [1, 2.5]", true),
            ("principal.level in [1, 3.0]", true),
            ("principal.level in []", false),
            // null compares with anything; a match wins over items of other types.
            ("principal.level in [null]", false),
            (r#"principal.level in ["x", 3]"#, true),
            (r#"resource.labels == ["pii"]"#, true),
            (r#"resource.labels == ["pii", "x"]"#, false),
            ("resource.labels == []", false),
            ("[null] == [1]", false),
            ("[1, 2] == [1.0, 2]", true),
            ("context.int_a == context.float_a", true),
            ("context.int_a != context.int_b", true),
            ("context.nan == null", false),
        ] {
            assert_eq!(check(text), Ok(want), "{text}");
        }
        let e = check(r#"principal.level in ["3"]"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot apply `in` to a number and a list (a number against a string)")
                && e.contains("make the value the same type as the list items"),
            "{e}"
        );
        let e = check("context.nan != 1").unwrap_err().to_string();
        assert!(e.contains("to a NaN and a number"), "{e}");
    }

    #[test]
    fn errors_are_errors() {
        let e = check("principal.level == \"3\"").unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot apply `==` to a number and a string"),
            "{e}"
        );
        let e = check("principal.clearance == 1").unwrap_err();
        assert!(
            e.to_string()
                .contains("principal.attrs.clearance is missing"),
            "{e}"
        );
        let e = check("principal.role.name == 1").unwrap_err();
        assert!(
            e.to_string().contains("is a string, so it has no field"),
            "{e}"
        );
        let e = check("principal.level").unwrap_err();
        assert!(e.to_string().contains("not a bool"), "{e}");
        assert!(check("principal.level in 3").is_err());
    }
}
