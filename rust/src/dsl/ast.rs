//! The DSL's typed tree and its data form.
//!
//! Items (`agent`, `policy`, `function`, `type`, `metadata`, `schedule`/`channel`/`memory`/
//! `webhook`) hold statements and expressions exactly as written; bodies are kept, never
//! executed. [`Tree`] is the ordered, JSON-like form every node converts to (`to_tree`),
//! which is what Python receives: dicts carry `"kind"`, `"line"` and `"column"`.

use std::fmt;

use crate::policy::ast::Policy;

/// A 1-based source position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// `String`, `int`, `Name`, or `Name<T, U>`.
#[derive(Debug, Clone, PartialEq)]
pub enum Type {
    Named(String),
    Generic(String, Vec<Type>),
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Named(n) => f.write_str(n),
            Type::Generic(n, args) => {
                write!(f, "{n}<")?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str(">")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    pub ty: Type,
    pub pos: Pos,
}

/// A literal value (`metadata`, `with` attributes, block properties): the grammar's `value`,
/// arrays and records of them.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A bare identifier used as a value (`sandbox = docker`).
    Ident(String),
    Duration {
        text: String,
        seconds: f64,
    },
    Vault(String),
    List(Vec<Data>),
    Record(Vec<(String, Data)>),
}

impl Data {
    pub fn type_name(&self) -> &'static str {
        match self {
            Data::Str(_) => "a string",
            Data::Int(_) | Data::Float(_) => "a number",
            Data::Bool(_) => "a boolean",
            Data::Ident(_) => "a name",
            Data::Duration { .. } => "a duration",
            Data::Vault(_) => "a vault reference",
            Data::List(_) => "a list",
            Data::Record(_) => "a record",
        }
    }

    /// A string or bare name, as text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Data::Str(s) | Data::Ident(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_number(&self) -> Option<f64> {
        match self {
            Data::Int(i) => Some(*i as f64),
            Data::Float(f) => Some(*f),
            _ => None,
        }
    }
}

/// An `ident = value` entry with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    pub name: String,
    pub value: Data,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Duration { text: String, seconds: f64 },
    Vault(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    Lit(Lit),
    Name(String),
    Array(Vec<Expr>),
    /// `{ k: v }` or `TypeName { k: v }`.
    Record {
        type_name: Option<String>,
        fields: Vec<(String, Expr)>,
    },
    Unary {
        op: &'static str,
        operand: Box<Expr>,
    },
    Binary {
        op: &'static str,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    Member {
        object: Box<Expr>,
        name: String,
    },
    Call {
        callee: Box<Expr>,
        args: Vec<Arg>,
    },
    Index {
        object: Box<Expr>,
        index: Box<Expr>,
    },
    Lambda {
        param: String,
        body: Box<Expr>,
    },
    If(Box<IfNode>),
}

/// A call argument; `name` is set for `f(x = 1)` / `f(x: 1)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Arg {
    pub name: Option<String>,
    pub value: Expr,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Pattern {
    Wildcard,
    Name(String),
    Lit(Lit),
    /// `Some(x)`.
    Ctor(String, Vec<Pattern>),
}

/// `if cond { } else ...` (statement or expression); `pattern` is set for `if let`.
#[derive(Debug, Clone, PartialEq)]
pub struct IfNode {
    pub pattern: Option<Pattern>,
    pub cond: Expr,
    pub then: Block,
    pub otherwise: Option<Else>,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Else {
    Block(Block),
    If(Box<IfNode>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub stmts: Vec<Stmt>,
    /// A final expression without `;`: the block's value.
    pub tail: Option<Box<Expr>>,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stmt {
    pub kind: StmtKind,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StmtKind {
    Let {
        name: String,
        value: Expr,
    },
    Assign {
        target: Expr,
        op: &'static str,
        value: Expr,
    },
    Return(Option<Expr>),
    Expr(Expr),
    If(IfNode),
    For {
        var: String,
        iter: Expr,
        body: Block,
    },
    Match {
        subject: Expr,
        arms: Vec<Arm>,
    },
    Try {
        body: Block,
        catches: Vec<Catch>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ArmBody {
    Block(Block),
    Expr(Expr),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Arm {
    pub pattern: Pattern,
    pub body: ArmBody,
    pub pos: Pos,
}

/// `catch (e)` or `catch (ErrorType e)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Catch {
    pub ty: Option<String>,
    pub name: String,
    pub body: Block,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    pub params: Vec<Param>,
    pub return_type: Option<Type>,
    pub body: Block,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TypeSpec {
    Alias(Type),
    Struct(Vec<Param>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TypeDef {
    pub name: String,
    pub spec: TypeSpec,
    pub pos: Pos,
}

/// One rule of a policy block as the published grammar reads it: `kind: value (if guard)?`.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRule {
    pub kind: String,
    pub value: Expr,
    pub guard: Option<Expr>,
    pub pos: Pos,
}

/// A `policy` block: compiled by the policy engine, or (in lenient mode) kept as grammar
/// rules with the reason the engine refused it.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyItem {
    Compiled(Box<Policy>),
    Unsupported {
        name: String,
        pos: Pos,
        error: String,
        error_pos: Pos,
        rules: Vec<PolicyRule>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct WithBlock {
    pub attrs: Vec<Attr>,
    pub body: Block,
    pub pos: Pos,
}

/// What an agent's `with` attributes mean to the runtime. Unset fields are `None`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentSpec {
    pub memory_mb: Option<f64>,
    pub cpu_cores: Option<f64>,
    /// Seconds.
    pub execution_timeout: Option<f64>,
    /// `Tier1`, `Tier2`, `Tier3`, `local` or `e2b`.
    pub sandbox: Option<String>,
    pub security: Option<String>,
    pub memory: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub name: String,
    pub params: Vec<Param>,
    pub return_type: Option<Type>,
    pub capabilities: Vec<String>,
    pub policies: Vec<PolicyItem>,
    pub functions: Vec<Function>,
    pub with_blocks: Vec<WithBlock>,
    pub spec: AgentSpec,
    pub pos: Pos,
}

/// `schedule`, `channel`, `memory` or `webhook`: properties, nested property blocks
/// (`search { }`, `filter { }`, `data_classification { }`) and, in channels, policies.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub kind: String,
    pub name: String,
    pub props: Vec<Attr>,
    pub blocks: Vec<(String, Vec<Attr>)>,
    pub policies: Vec<PolicyItem>,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct File {
    pub metadata: Vec<Attr>,
    pub agents: Vec<Agent>,
    pub policies: Vec<PolicyItem>,
    pub functions: Vec<Function>,
    pub types: Vec<TypeDef>,
    pub sections: Vec<Section>,
}

// ------------------------------------------------------------------ data form

/// Ordered, JSON-like data (plus policies), the form handed to Python.
#[derive(Debug, Clone, PartialEq)]
pub enum Tree {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Tree>),
    Tuple(Vec<Tree>),
    Dict(Vec<(String, Tree)>),
    Policy(Box<Policy>),
}

impl Tree {
    pub fn get(&self, key: &str) -> Option<&Tree> {
        match self {
            Tree::Dict(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

fn s(v: &str) -> Tree {
    Tree::Str(v.to_string())
}

fn opt<T>(v: &Option<T>, f: impl Fn(&T) -> Tree) -> Tree {
    v.as_ref().map_or(Tree::None, f)
}

fn node(kind: &str, pos: Pos, mut fields: Vec<(&str, Tree)>) -> Tree {
    let mut items = vec![
        ("kind".to_string(), s(kind)),
        ("line".to_string(), Tree::Int(pos.line as i64)),
        ("column".to_string(), Tree::Int(pos.column as i64)),
    ];
    items.extend(fields.drain(..).map(|(k, v)| (k.to_string(), v)));
    Tree::Dict(items)
}

impl Data {
    /// Plain data: names and durations become their text, records ordered dicts.
    pub fn to_tree(&self) -> Tree {
        match self {
            Data::Str(v) | Data::Ident(v) | Data::Vault(v) => s(v),
            Data::Duration { text, .. } => s(text),
            Data::Int(i) => Tree::Int(*i),
            Data::Float(f) => Tree::Float(*f),
            Data::Bool(b) => Tree::Bool(*b),
            Data::List(items) => Tree::List(items.iter().map(Data::to_tree).collect()),
            Data::Record(fields) => Tree::Dict(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_tree()))
                    .collect(),
            ),
        }
    }
}

/// `[(name, type), ...]`.
pub fn params_tree(params: &[Param]) -> Tree {
    Tree::List(
        params
            .iter()
            .map(|p| Tree::Tuple(vec![s(&p.name), Tree::Str(p.ty.to_string())]))
            .collect(),
    )
}

/// Attributes as an ordered dict of plain values.
pub fn attrs_tree(attrs: &[Attr]) -> Tree {
    Tree::Dict(
        attrs
            .iter()
            .map(|a| (a.name.clone(), a.value.to_tree()))
            .collect(),
    )
}

impl Lit {
    pub fn to_tree(&self, pos: Pos) -> Tree {
        match self {
            Lit::Str(v) => node("string", pos, vec![("value", s(v))]),
            Lit::Int(i) => node("int", pos, vec![("value", Tree::Int(*i))]),
            Lit::Float(f) => node("float", pos, vec![("value", Tree::Float(*f))]),
            Lit::Bool(b) => node("bool", pos, vec![("value", Tree::Bool(*b))]),
            Lit::Duration { text, seconds } => node(
                "duration",
                pos,
                vec![("text", s(text)), ("seconds", Tree::Float(*seconds))],
            ),
            Lit::Vault(v) => node("vault", pos, vec![("path", s(v))]),
        }
    }
}

impl Expr {
    pub fn to_tree(&self) -> Tree {
        let p = self.pos;
        match &self.kind {
            ExprKind::Lit(l) => l.to_tree(p),
            ExprKind::Name(n) => node("name", p, vec![("name", s(n))]),
            ExprKind::Array(items) => node(
                "array",
                p,
                vec![(
                    "items",
                    Tree::List(items.iter().map(Expr::to_tree).collect()),
                )],
            ),
            ExprKind::Record { type_name, fields } => node(
                "record",
                p,
                vec![
                    ("type", opt(type_name, |t| s(t))),
                    (
                        "fields",
                        Tree::List(
                            fields
                                .iter()
                                .map(|(k, v)| Tree::Tuple(vec![s(k), v.to_tree()]))
                                .collect(),
                        ),
                    ),
                ],
            ),
            ExprKind::Unary { op, operand } => node(
                "unary",
                p,
                vec![("op", s(op)), ("operand", operand.to_tree())],
            ),
            ExprKind::Binary { op, lhs, rhs } => node(
                "binary",
                p,
                vec![
                    ("op", s(op)),
                    ("left", lhs.to_tree()),
                    ("right", rhs.to_tree()),
                ],
            ),
            ExprKind::Member { object, name } => node(
                "member",
                p,
                vec![("object", object.to_tree()), ("name", s(name))],
            ),
            ExprKind::Call { callee, args } => node(
                "call",
                p,
                vec![
                    ("callee", callee.to_tree()),
                    (
                        "args",
                        Tree::List(
                            args.iter()
                                .map(|a| {
                                    Tree::Tuple(vec![opt(&a.name, |n| s(n)), a.value.to_tree()])
                                })
                                .collect(),
                        ),
                    ),
                ],
            ),
            ExprKind::Index { object, index } => node(
                "index",
                p,
                vec![("object", object.to_tree()), ("index", index.to_tree())],
            ),
            ExprKind::Lambda { param, body } => node(
                "lambda",
                p,
                vec![("param", s(param)), ("body", body.to_tree())],
            ),
            ExprKind::If(i) => i.to_tree(),
        }
    }
}

impl Pattern {
    /// `{"pattern": "wildcard" | "name" | "literal" | "constructor", ...}`.
    pub fn to_tree(&self) -> Tree {
        let kind = |k: &str| ("pattern".to_string(), s(k));
        match self {
            Pattern::Wildcard => Tree::Dict(vec![kind("wildcard")]),
            Pattern::Name(n) => Tree::Dict(vec![kind("name"), ("name".into(), s(n))]),
            Pattern::Lit(l) => {
                let v = match l {
                    Lit::Str(v) | Lit::Vault(v) => s(v),
                    Lit::Int(i) => Tree::Int(*i),
                    Lit::Float(f) => Tree::Float(*f),
                    Lit::Bool(b) => Tree::Bool(*b),
                    Lit::Duration { text, .. } => s(text),
                };
                Tree::Dict(vec![kind("literal"), ("value".into(), v)])
            }
            Pattern::Ctor(n, args) => Tree::Dict(vec![
                kind("constructor"),
                ("name".into(), s(n)),
                (
                    "args".into(),
                    Tree::List(args.iter().map(Pattern::to_tree).collect()),
                ),
            ]),
        }
    }
}

impl IfNode {
    pub fn to_tree(&self) -> Tree {
        node(
            "if",
            self.pos,
            vec![
                ("pattern", opt(&self.pattern, Pattern::to_tree)),
                ("condition", self.cond.to_tree()),
                ("then", self.then.to_tree()),
                (
                    "else",
                    opt(&self.otherwise, |e| match e {
                        Else::Block(b) => b.to_tree(),
                        Else::If(i) => i.to_tree(),
                    }),
                ),
            ],
        )
    }
}

impl Block {
    pub fn to_tree(&self) -> Tree {
        node(
            "block",
            self.pos,
            vec![
                (
                    "statements",
                    Tree::List(self.stmts.iter().map(Stmt::to_tree).collect()),
                ),
                ("value", opt(&self.tail, |e| e.to_tree())),
            ],
        )
    }
}

impl Stmt {
    pub fn to_tree(&self) -> Tree {
        let p = self.pos;
        match &self.kind {
            StmtKind::Let { name, value } => node(
                "let",
                p,
                vec![("name", s(name)), ("value", value.to_tree())],
            ),
            StmtKind::Assign { target, op, value } => node(
                "assign",
                p,
                vec![
                    ("target", target.to_tree()),
                    ("op", s(op)),
                    ("value", value.to_tree()),
                ],
            ),
            StmtKind::Return(v) => node("return", p, vec![("value", opt(v, Expr::to_tree))]),
            StmtKind::Expr(e) => node("expr", p, vec![("expr", e.to_tree())]),
            StmtKind::If(i) => i.to_tree(),
            StmtKind::For { var, iter, body } => node(
                "for",
                p,
                vec![
                    ("var", s(var)),
                    ("iterable", iter.to_tree()),
                    ("body", body.to_tree()),
                ],
            ),
            StmtKind::Match { subject, arms } => node(
                "match",
                p,
                vec![
                    ("subject", subject.to_tree()),
                    (
                        "arms",
                        Tree::List(
                            arms.iter()
                                .map(|a| {
                                    node(
                                        "arm",
                                        a.pos,
                                        vec![
                                            ("pattern", a.pattern.to_tree()),
                                            (
                                                "body",
                                                match &a.body {
                                                    ArmBody::Block(b) => b.to_tree(),
                                                    ArmBody::Expr(e) => e.to_tree(),
                                                },
                                            ),
                                        ],
                                    )
                                })
                                .collect(),
                        ),
                    ),
                ],
            ),
            StmtKind::Try { body, catches } => node(
                "try",
                p,
                vec![
                    ("body", body.to_tree()),
                    (
                        "catches",
                        Tree::List(
                            catches
                                .iter()
                                .map(|c| {
                                    node(
                                        "catch",
                                        c.pos,
                                        vec![
                                            ("type", opt(&c.ty, |t| s(t))),
                                            ("name", s(&c.name)),
                                            ("body", c.body.to_tree()),
                                        ],
                                    )
                                })
                                .collect(),
                        ),
                    ),
                ],
            ),
        }
    }
}

impl Function {
    pub fn to_tree(&self) -> Tree {
        node(
            "function",
            self.pos,
            vec![
                ("name", s(&self.name)),
                ("params", params_tree(&self.params)),
                (
                    "return_type",
                    opt(&self.return_type, |t| Tree::Str(t.to_string())),
                ),
                ("body", self.body.to_tree()),
            ],
        )
    }
}

impl TypeDef {
    pub fn to_tree(&self) -> Tree {
        let (alias, fields) = match &self.spec {
            TypeSpec::Alias(t) => (Tree::Str(t.to_string()), Tree::None),
            TypeSpec::Struct(fs) => (Tree::None, params_tree(fs)),
        };
        node(
            "type",
            self.pos,
            vec![
                ("name", s(&self.name)),
                ("alias", alias),
                ("fields", fields),
            ],
        )
    }
}

impl PolicyItem {
    pub fn name(&self) -> &str {
        match self {
            PolicyItem::Compiled(p) => &p.name,
            PolicyItem::Unsupported { name, .. } => name,
        }
    }

    pub fn compiled(&self) -> Option<&Policy> {
        match self {
            PolicyItem::Compiled(p) => Some(p),
            PolicyItem::Unsupported { .. } => None,
        }
    }

    /// The refused policy's data form (`None` for a compiled one).
    pub fn unsupported_tree(&self) -> Option<Tree> {
        match self {
            PolicyItem::Compiled(_) => None,
            PolicyItem::Unsupported {
                name,
                pos,
                error,
                error_pos,
                rules,
            } => Some(node(
                "policy",
                *pos,
                vec![
                    ("name", s(name)),
                    ("error", s(error)),
                    ("error_line", Tree::Int(error_pos.line as i64)),
                    ("error_column", Tree::Int(error_pos.column as i64)),
                    (
                        "rules",
                        Tree::List(
                            rules
                                .iter()
                                .map(|r| {
                                    node(
                                        "rule",
                                        r.pos,
                                        vec![
                                            ("rule", s(&r.kind)),
                                            ("value", r.value.to_tree()),
                                            ("guard", opt(&r.guard, Expr::to_tree)),
                                        ],
                                    )
                                })
                                .collect(),
                        ),
                    ),
                ],
            )),
        }
    }
}

/// `(compiled policies, refused policies)` of a list of policy blocks.
pub fn policies_trees(items: &[PolicyItem]) -> (Tree, Tree) {
    (
        Tree::List(
            items
                .iter()
                .filter_map(PolicyItem::compiled)
                .map(|p| Tree::Policy(Box::new(p.clone())))
                .collect(),
        ),
        Tree::List(
            items
                .iter()
                .filter_map(PolicyItem::unsupported_tree)
                .collect(),
        ),
    )
}

fn num(v: Option<f64>) -> Tree {
    v.map_or(Tree::None, Tree::Float)
}

impl AgentSpec {
    pub fn to_tree(&self) -> Tree {
        Tree::Dict(vec![
            (
                "limits".into(),
                Tree::Dict(vec![
                    ("memory_mb".into(), num(self.memory_mb)),
                    ("cpu_cores".into(), num(self.cpu_cores)),
                    ("execution_timeout".into(), num(self.execution_timeout)),
                ]),
            ),
            ("sandbox".into(), opt(&self.sandbox, |v| s(v))),
            ("security".into(), opt(&self.security, |v| s(v))),
            ("memory".into(), opt(&self.memory, |v| s(v))),
        ])
    }
}

impl Agent {
    /// The settings of all `with` blocks together, in order.
    pub fn settings(&self) -> Vec<Attr> {
        let mut out: Vec<Attr> = Vec::new();
        for w in &self.with_blocks {
            for a in &w.attrs {
                match out.iter_mut().find(|o| o.name == a.name) {
                    Some(o) => *o = a.clone(),
                    None => out.push(a.clone()),
                }
            }
        }
        out
    }

    pub fn to_tree(&self) -> Tree {
        let (policies, unsupported) = policies_trees(&self.policies);
        node(
            "agent",
            self.pos,
            vec![
                ("name", s(&self.name)),
                ("params", params_tree(&self.params)),
                (
                    "return_type",
                    opt(&self.return_type, |t| Tree::Str(t.to_string())),
                ),
                (
                    "capabilities",
                    Tree::List(self.capabilities.iter().map(|c| s(c)).collect()),
                ),
                ("policies", policies),
                ("unsupported_policies", unsupported),
                (
                    "functions",
                    Tree::List(self.functions.iter().map(Function::to_tree).collect()),
                ),
                (
                    "with_blocks",
                    Tree::List(
                        self.with_blocks
                            .iter()
                            .map(|w| {
                                node(
                                    "with",
                                    w.pos,
                                    vec![
                                        ("settings", attrs_tree(&w.attrs)),
                                        ("body", w.body.to_tree()),
                                    ],
                                )
                            })
                            .collect(),
                    ),
                ),
                ("with_settings", attrs_tree(&self.settings())),
                ("spec", self.spec.to_tree()),
            ],
        )
    }
}

impl Section {
    pub fn to_tree(&self) -> Tree {
        let (policies, unsupported) = policies_trees(&self.policies);
        node(
            &self.kind,
            self.pos,
            vec![
                ("name", s(&self.name)),
                ("properties", attrs_tree(&self.props)),
                (
                    "blocks",
                    Tree::Dict(
                        self.blocks
                            .iter()
                            .map(|(k, attrs)| (k.clone(), attrs_tree(attrs)))
                            .collect(),
                    ),
                ),
                ("policies", policies),
                ("unsupported_policies", unsupported),
            ],
        )
    }
}

impl File {
    pub fn to_tree(&self) -> Tree {
        let (policies, unsupported) = policies_trees(&self.policies);
        Tree::Dict(vec![
            ("metadata".into(), attrs_tree(&self.metadata)),
            (
                "agents".into(),
                Tree::List(self.agents.iter().map(Agent::to_tree).collect()),
            ),
            ("policies".into(), policies),
            ("unsupported_policies".into(), unsupported),
            (
                "functions".into(),
                Tree::List(self.functions.iter().map(Function::to_tree).collect()),
            ),
            (
                "types".into(),
                Tree::List(self.types.iter().map(TypeDef::to_tree).collect()),
            ),
            (
                "blocks".into(),
                Tree::List(self.sections.iter().map(Section::to_tree).collect()),
            ),
        ])
    }
}
