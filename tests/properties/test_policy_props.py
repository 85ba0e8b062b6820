"""Properties of the policy engine: DSL <-> dict round-trips, deny overrides allow, batch
decisions equal single decisions, and comparisons of mismatched types fail closed."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from symbi.policy import Deny, Policy, PolicyEngine, PolicyRequest, Principal, Resource

KEYWORDS = {
    "if",
    "in",
    "true",
    "false",
    "and",
    "or",
    "not",
    "null",
    "with",
    "policy",
    "allow",
    "deny",
    "require",
    "audit",
}

idents = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True).filter(lambda s: s not in KEYWORDS)
texts = st.text(max_size=8)
ints = st.integers(-(2**63), 2**63 - 1)
floats = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.one_of(idents, texts), inner, max_size=3)
    ),
    max_leaves=6,
)


def quote(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif not c.isprintable():
            out.append(f"\\u{{{ord(c):x}}}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def lit(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return quote(v)
    return "[" + ", ".join(lit(x) for x in v) + "]"


list_lits = st.lists(st.one_of(st.booleans(), ints, floats, texts), max_size=3)
paths = st.one_of(
    st.just("action"),
    st.just("principal"),
    st.just("resource.id"),
    st.builds(lambda a: f"principal.attrs.{a}", idents),
    st.builds(lambda a: f"principal.{a}", idents.filter(lambda s: s not in ("id", "attrs"))),
    st.builds(lambda a, b: f"resource.attrs.{a}.{b}", idents, idents),
    st.builds(lambda a: f"context.{a}", idents),
    st.builds(
        lambda a: f"{a}.x",
        idents.filter(
            lambda s: (
                s not in ("principal", "resource", "action", "agent", "user", "subject", "context")
            )
        ),
    ),
)
operands = st.one_of(paths, st.builds(lit, scalars), st.builds(lit, list_lits))
comparisons = st.builds(
    lambda a, op, b: f"{a} {op} {b}",
    operands,
    st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "in", "not in"]),
    operands,
)
conditions = st.recursive(
    st.one_of(comparisons, paths, st.sampled_from(["true", "false"])),
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"{a} && {b}", inner, inner),
        st.builds(lambda a, b: f"({a} || {b})", inner, inner),
        st.builds(lambda a: f"!({a})", inner),
    ),
    max_leaves=5,
)
actions = st.lists(st.one_of(idents, texts.filter(bool), st.just("*")), min_size=1, max_size=3)
rules = st.fixed_dictionaries(
    {"effect": st.sampled_from(["allow", "deny"]), "actions": actions},
    optional={"if": conditions},
)
policy_dicts = st.fixed_dictionaries(
    {
        "name": idents,
        "rules": st.lists(rules, max_size=4),
        "require": st.dictionaries(st.one_of(idents, texts), values, max_size=3),
        "audit": st.dictionaries(idents, values, max_size=2),
    },
    optional={"principals": st.lists(texts.filter(bool), max_size=2)},
)


@settings(max_examples=300, deadline=None)
@given(policy_dicts)
def test_dsl_and_dict_forms_round_trip(d):
    p = Policy.from_dict(d)
    assert Policy.parse(p.to_dsl()) == [p]
    assert Policy.from_dict(p.to_dict()) == p
    assert Policy.from_dict(p.to_dict()).to_dsl() == p.to_dsl()


# --------------------------------------------------------------- decisions

ACTIONS = ["read", "write", "send", "exec"]
small_conditions = st.sampled_from(
    [
        None,
        'principal.role == "admin"',
        "principal.level >= 2",
        'resource.attrs.zone in ["internal", "dmz"]',
        "context.hour < 12 || context.urgent == true",
        '!("pii" in context.labels)',
        "context.missing == 1",  # always an evaluation error
        "principal.role == 3",  # always a type error
    ]
)
small_rules = st.builds(
    lambda effect, acts, cond: {
        "effect": effect,
        "actions": acts,
        **({"if": cond} if cond else {}),
    },
    st.sampled_from(["allow", "deny"]),
    st.lists(st.sampled_from([*ACTIONS, "*"]), min_size=1, max_size=2, unique=True),
    small_conditions,
)
policy_sets = st.lists(
    st.builds(
        lambda i, rs: {"name": f"p{i}", "rules": rs},
        st.integers(0, 99),
        st.lists(small_rules, min_size=1, max_size=3),
    ),
    max_size=5,
)
requests = st.builds(
    lambda pid, role, level, action, zone, hour, urgent, labels: PolicyRequest(
        principal=Principal(id=pid, attrs={"role": role, "level": level}),
        action=action,
        resource=Resource(id="r", attrs={"zone": zone}),
        context={"hour": hour, "urgent": urgent, "labels": labels},
    ),
    st.sampled_from(["a1", "a2"]),
    st.sampled_from(["admin", "dev"]),
    st.integers(0, 4),
    st.sampled_from(ACTIONS),
    st.sampled_from(["internal", "dmz", "public"]),
    st.integers(0, 23),
    st.booleans(),
    st.lists(st.sampled_from(["pii", "public"]), max_size=2),
)


@settings(max_examples=200, deadline=None)
@given(
    policy_sets,
    st.lists(small_rules.filter(lambda r: r["effect"] == "deny"), max_size=3),
    requests,
    st.booleans(),
)
def test_deny_overrides_allow(policies, extra_denies, request, enforce):
    base = PolicyEngine(enforce_policies=enforce, policies=policies)
    more = PolicyEngine(
        enforce_policies=enforce,
        policies=[*policies, {"name": "extra", "rules": extra_denies}],
    )
    # Adding deny rules never turns a denial into an allow.
    if isinstance(base.evaluate(request), Deny):
        assert isinstance(more.evaluate(request), Deny)
    # A matching deny wins over any allow, even `allow: *` with enforcement off.
    more.register({"name": "everything", "rules": [{"effect": "allow", "actions": ["*"]}]})
    more.register(
        {
            "name": "stop",
            "rules": [
                {
                    "effect": "deny",
                    "actions": [request.action],
                    "if": f'principal == "{request.principal_id}"',
                }
            ],
        }
    )
    assert isinstance(more.evaluate(request), Deny)


@settings(max_examples=200, deadline=None)
@given(policy_sets, st.lists(requests, max_size=12), st.booleans())
def test_evaluate_batch_equals_evaluate(policies, reqs, enforce):
    e = PolicyEngine(enforce_policies=enforce, policies=policies)
    assert e.evaluate_batch(reqs) == [e.evaluate(r) for r in reqs]


# ------------------------------------------------------------ type mismatches

# Values of different kinds cannot be compared (null compares with anything, so it is left
# out); ints and floats are one kind. A NaN compares with nothing but null.
KINDS = {
    "bool": st.booleans(),
    "number": st.one_of(ints, floats),
    "string": texts,
    "list": st.lists(st.one_of(st.booleans(), ints, floats, texts), max_size=2),
}
NAN = st.just(float("nan"))


@st.composite
def mismatches(draw):
    """A deny condition comparing `context.x` with values it cannot be compared with, and
    the request context. Every pair of items compared is incomparable, so no `in` can
    match and no list or mapping `==` can be decided."""
    kx = draw(st.sampled_from([*KINDS, "nan"]))
    ky = draw(st.sampled_from([k for k in KINDS if k != kx]))
    n = draw(st.integers(1, 3))
    xs = draw(st.lists(NAN if kx == "nan" else KINDS[kx], min_size=n, max_size=n))
    ys = draw(st.lists(KINDS[ky], min_size=n, max_size=n))
    op = draw(st.sampled_from(["==", "!=", "in", "not in"]))
    shape = draw(st.sampled_from(["scalar", "list", "mapping"]))
    if shape == "scalar":  # x against y, or against a list of ys
        x, y = xs[0], (ys[0] if op in ("==", "!=") else ys)
    elif shape == "list":  # a list of xs against a list of ys of the same length
        x, y = xs, (ys if op in ("==", "!=") else [ys])
    else:  # mappings with the same keys; read from the request, there are no map literals
        x = {f"k{i}": v for i, v in enumerate(xs)}
        y = {f"k{i}": v for i, v in enumerate(ys)}
        y = y if op in ("==", "!=") else [y]
        return f"context.x {op} context.y", {"x": x, "y": y}
    return f"context.x {op} {lit(y)}", {"x": x}


@settings(max_examples=300, deadline=None)
@given(mismatches(), st.booleans())
def test_a_deny_over_mismatched_types_never_allows(case, enforce):
    condition, context = case
    e = PolicyEngine(
        enforce_policies=enforce,
        policies=[
            {"name": "open", "rules": [{"effect": "allow", "actions": ["*"]}]},
            {"name": "guard", "rules": [{"effect": "deny", "actions": ["read"], "if": condition}]},
        ],
    )
    r = PolicyRequest(principal="a", action="read", resource="r", context=context)
    d = e.evaluate(r)
    assert isinstance(d, Deny), (condition, context, d)
    assert "cannot apply" in d.reason and "fail closed" in d.reason, d.reason
    assert e.evaluate_batch([r]) == [d]
