//! Metadata and filter predicates.
//!
//! Each vector may carry a small map `field -> str | int | float | bool`. Field names and
//! string values are interned to `u32` symbols, so an equality test is an integer compare.
//! A [`Filter`] is parsed from the Python dict form (in `py.rs`), then compiled against the
//! interner of the index it runs on; the compiled form is evaluated per visited node during
//! graph traversal.
//!
//! Semantics: a missing field fails `eq`, `lt`, `le`, `gt`, `ge` and `in`, and passes `ne`
//! and `nin`. Ints and floats compare numerically with each other; strings compare with
//! strings (ranges: byte order); bools only equal bools.

use std::cmp::Ordering;
use std::collections::HashMap;

/// A literal as given by the caller (metadata value or filter operand).
#[derive(Clone, Debug, PartialEq)]
pub enum Lit {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// A stored metadata value (strings interned).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Str(u32),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// One item's metadata: `(field symbol, value)` sorted by field symbol.
pub type Meta = Box<[(u32, Value)]>;

#[derive(Default, Clone, Debug)]
pub struct Interner {
    map: HashMap<String, u32>,
    strs: Vec<String>,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.map.get(s) {
            return i;
        }
        let i = self.strs.len() as u32;
        self.strs.push(s.to_owned());
        self.map.insert(s.to_owned(), i);
        i
    }
    pub fn get(&self, s: &str) -> Option<u32> {
        self.map.get(s).copied()
    }
    pub fn resolve(&self, i: u32) -> &str {
        &self.strs[i as usize]
    }
    pub fn strings(&self) -> &[String] {
        &self.strs
    }
    pub fn from_strings(strs: Vec<String>) -> Self {
        let map = strs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        Interner { map, strs }
    }

    pub fn make_meta(&mut self, items: &[(String, Lit)]) -> Meta {
        let mut v: Vec<(u32, Value)> = items
            .iter()
            .map(|(k, l)| {
                let f = self.intern(k);
                let val = match l {
                    Lit::Str(s) => Value::Str(self.intern(s)),
                    Lit::Int(i) => Value::Int(*i),
                    Lit::Float(x) => Value::Float(*x),
                    Lit::Bool(b) => Value::Bool(*b),
                };
                (f, val)
            })
            .collect();
        v.sort_by_key(|(f, _)| *f);
        v.dedup_by_key(|(f, _)| *f);
        v.into_boxed_slice()
    }

    pub fn meta_to_lits(&self, m: &Meta) -> Vec<(String, Lit)> {
        m.iter()
            .map(|(f, v)| {
                let lit = match *v {
                    Value::Str(s) => Lit::Str(self.resolve(s).to_owned()),
                    Value::Int(i) => Lit::Int(i),
                    Value::Float(x) => Lit::Float(x),
                    Value::Bool(b) => Lit::Bool(b),
                };
                (self.resolve(*f).to_owned(), lit)
            })
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "lt" => Op::Lt,
            "le" | "lte" => Op::Le,
            "gt" => Op::Gt,
            "ge" | "gte" => Op::Ge,
            _ => return None,
        })
    }
}

/// A filter as parsed from the caller's dict.
#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Cmp {
        field: String,
        op: Op,
        value: Lit,
    },
    In {
        field: String,
        values: Vec<Lit>,
        negate: bool,
    },
}

/// A compiled operand: the literal plus its symbol when it is an interned string.
#[derive(Clone, Debug)]
struct COperand {
    lit: Lit,
    sym: Option<u32>,
}

#[derive(Clone, Debug)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Cmp {
        field: Option<u32>,
        op: Op,
        value: COperand,
    },
    In {
        field: Option<u32>,
        values: Vec<COperand>,
        negate: bool,
    },
}

/// A filter bound to one index's interner.
#[derive(Clone, Debug)]
pub struct Compiled {
    root: Node,
}

fn compile_operand(i: &Interner, l: &Lit) -> COperand {
    let sym = match l {
        Lit::Str(s) => i.get(s),
        _ => None,
    };
    COperand {
        lit: l.clone(),
        sym,
    }
}

fn compile_node(i: &Interner, f: &Filter) -> Node {
    match f {
        Filter::And(v) => Node::And(v.iter().map(|x| compile_node(i, x)).collect()),
        Filter::Or(v) => Node::Or(v.iter().map(|x| compile_node(i, x)).collect()),
        Filter::Not(x) => Node::Not(Box::new(compile_node(i, x))),
        Filter::Cmp { field, op, value } => Node::Cmp {
            field: i.get(field),
            op: *op,
            value: compile_operand(i, value),
        },
        Filter::In {
            field,
            values,
            negate,
        } => Node::In {
            field: i.get(field),
            values: values.iter().map(|x| compile_operand(i, x)).collect(),
            negate: *negate,
        },
    }
}

impl Filter {
    pub fn compile(&self, interner: &Interner) -> Compiled {
        Compiled {
            root: compile_node(interner, self),
        }
    }
}

#[inline]
fn lookup(meta: Option<&Meta>, field: Option<u32>) -> Option<Value> {
    let (m, f) = (meta?, field?);
    m.binary_search_by_key(&f, |(k, _)| *k)
        .ok()
        .map(|ix| m[ix].1)
}

/// Compare a stored value with an operand; `None` when they are not comparable.
#[inline]
fn compare(i: &Interner, v: Value, o: &COperand) -> Option<Ordering> {
    match (v, &o.lit) {
        (Value::Str(s), Lit::Str(t)) => match o.sym {
            Some(sym) if sym == s => Some(Ordering::Equal),
            _ => Some(i.resolve(s).as_bytes().cmp(t.as_bytes())),
        },
        (Value::Int(a), Lit::Int(b)) => Some(a.cmp(b)),
        (Value::Int(a), Lit::Float(b)) => (a as f64).partial_cmp(b),
        (Value::Float(a), Lit::Int(b)) => a.partial_cmp(&(*b as f64)),
        (Value::Float(a), Lit::Float(b)) => a.partial_cmp(b),
        (Value::Bool(a), Lit::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

#[inline]
fn equals(i: &Interner, v: Value, o: &COperand) -> bool {
    match (v, &o.lit) {
        // Fast path: an interned string equals only its own symbol.
        (Value::Str(s), Lit::Str(_)) => o.sym == Some(s),
        (Value::Bool(_), Lit::Bool(_)) => compare(i, v, o) == Some(Ordering::Equal),
        (Value::Bool(_), _) | (_, Lit::Bool(_)) => false,
        _ => compare(i, v, o) == Some(Ordering::Equal),
    }
}

fn eval(i: &Interner, n: &Node, meta: Option<&Meta>) -> bool {
    match n {
        Node::And(v) => v.iter().all(|x| eval(i, x, meta)),
        Node::Or(v) => v.iter().any(|x| eval(i, x, meta)),
        Node::Not(x) => !eval(i, x, meta),
        Node::Cmp { field, op, value } => {
            let Some(v) = lookup(meta, *field) else {
                return *op == Op::Ne;
            };
            match op {
                Op::Eq => equals(i, v, value),
                Op::Ne => !equals(i, v, value),
                Op::Lt | Op::Le | Op::Gt | Op::Ge => {
                    if matches!(v, Value::Bool(_)) {
                        return false;
                    }
                    match compare(i, v, value) {
                        None => false,
                        Some(o) => match op {
                            Op::Lt => o == Ordering::Less,
                            Op::Le => o != Ordering::Greater,
                            Op::Gt => o == Ordering::Greater,
                            _ => o != Ordering::Less,
                        },
                    }
                }
            }
        }
        Node::In {
            field,
            values,
            negate,
        } => {
            let hit = match lookup(meta, *field) {
                None => false,
                Some(v) => values.iter().any(|o| equals(i, v, o)),
            };
            hit != *negate
        }
    }
}

impl Compiled {
    #[inline]
    pub fn matches(&self, interner: &Interner, meta: Option<&Meta>) -> bool {
        eval(interner, &self.root, meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Lit {
        Lit::Str(x.into())
    }

    #[test]
    fn predicates() {
        let mut i = Interner::default();
        let m = i.make_meta(&[
            ("lang".into(), s("de")),
            ("year".into(), Lit::Int(2021)),
            ("score".into(), Lit::Float(0.5)),
            ("ok".into(), Lit::Bool(true)),
        ]);
        let m = Some(&m);
        let t = |f: Filter| f.compile(&i).matches(&i, m);
        let cmp = |field: &str, op, value| Filter::Cmp {
            field: field.into(),
            op,
            value,
        };
        assert!(t(cmp("lang", Op::Eq, s("de"))));
        assert!(!t(cmp("lang", Op::Eq, s("en"))));
        assert!(!t(cmp("lang", Op::Eq, s("never-seen"))));
        assert!(t(cmp("lang", Op::Ne, s("never-seen"))));
        assert!(t(cmp("year", Op::Ge, Lit::Int(2020))));
        assert!(t(cmp("year", Op::Lt, Lit::Float(2021.5))));
        assert!(!t(cmp("year", Op::Gt, Lit::Int(2021))));
        assert!(t(cmp("score", Op::Le, Lit::Float(0.5))));
        assert!(t(cmp("ok", Op::Eq, Lit::Bool(true))));
        assert!(!t(cmp("ok", Op::Eq, Lit::Int(1))));
        assert!(!t(cmp("missing", Op::Eq, Lit::Int(1))));
        assert!(t(cmp("missing", Op::Ne, Lit::Int(1))));
        assert!(t(cmp("lang", Op::Gt, s("da"))));
        assert!(t(Filter::In {
            field: "lang".into(),
            values: vec![s("en"), s("de")],
            negate: false
        }));
        assert!(!t(Filter::In {
            field: "lang".into(),
            values: vec![s("en"), s("de")],
            negate: true
        }));
        assert!(t(Filter::Or(vec![
            cmp("lang", Op::Eq, s("en")),
            cmp("year", Op::Eq, Lit::Int(2021))
        ])));
        assert!(!t(Filter::Not(Box::new(cmp("lang", Op::Eq, s("de"))))));
        assert!(t(Filter::And(vec![])));
        // No metadata at all.
        let f = cmp("lang", Op::Eq, s("de")).compile(&i);
        assert!(!f.matches(&i, None));
    }
}
