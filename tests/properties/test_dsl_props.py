"""Properties of the DSL parser: printed agents read back the same, embedded policies equal
standalone ones, and no input crashes it (it parses or raises ParseError)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import symbi
from symbi import dsl
from symbi.errors import ParseError

RESERVED = {
    "if",
    "else",
    "let",
    "for",
    "in",
    "match",
    "try",
    "catch",
    "return",
    "true",
    "false",
    "not",
    "null",
    "and",
    "or",
    "with",
}

idents = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True).filter(lambda s: s not in RESERVED)
type_names = st.sampled_from(["String", "int", "float", "bool", "Ticket"])
types = st.one_of(
    type_names,
    st.builds(lambda a, b: f"Map<{a}, {b}>", type_names, type_names),
    st.builds(lambda a: f"List<{a}>", type_names),
)
texts = st.text(max_size=12)
scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63) + 1, 2**63 - 1),
    st.decimals(min_value=-1e6, max_value=1e6, places=3, allow_nan=False).map(float),
    texts,
)
data = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(idents, inner, max_size=3)
    ),
    max_leaves=8,
)


def quote(s: str) -> str:
    out = s.replace("\\", "\\\\").replace('"', '\\"')
    out = out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{out}"'


def show(v: Any) -> str:
    """Print plain data as DSL literal text."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        text = repr(v)
        return text if "e" not in text else f"{v:.3f}"
    if isinstance(v, str):
        return quote(v)
    if isinstance(v, list):
        return "[" + ", ".join(show(x) for x in v) + "]"
    return "{ " + ", ".join(f"{k}: {show(x)}" for k, x in v.items()) + " }"


@st.composite
def agents(draw: st.DrawFn) -> dict[str, Any]:
    params = draw(st.dictionaries(idents, types, max_size=4))
    return {
        "name": draw(idents),
        "params": list(params.items()),
        "return_type": draw(st.none() | types),
        "capabilities": draw(st.lists(idents, max_size=4, unique=True)),
        "memory_mb": draw(st.none() | st.integers(1, 1 << 20)),
        "cpu_cores": draw(st.none() | st.sampled_from([0.25, 0.5, 1, 2, 16])),
        "timeout": draw(
            st.none()
            | st.sampled_from(
                [("30s", 30.0), ("5m", 300.0), ("2.seconds", 2.0), ("1h", 3600.0), ("1500", 1.5)]
            )
        ),
        "sandbox": draw(st.none() | st.sampled_from(["Tier1", "Tier2", "local"])),
        "security": draw(st.none() | idents),
        "extra": draw(st.dictionaries(idents.map(lambda s: "x_" + s), data, max_size=3)),
        "metadata": draw(st.dictionaries(idents, data, max_size=4)),
    }


def print_agent(a: dict[str, Any]) -> str:
    meta = "\n".join(f"    {k} = {show(v)}" for k, v in a["metadata"].items())
    params = ", ".join(f"{n}: {t}" for n, t in a["params"])
    header = f"agent {a['name']}({params})"
    if a["return_type"]:
        header += f" -> {a['return_type']}"
    settings_: list[str] = []
    if a["memory_mb"] is not None:
        settings_.append(f"max_memory_mb = {a['memory_mb']}")
    if a["cpu_cores"] is not None:
        settings_.append(f"max_cpu_cores = {a['cpu_cores']}")
    if a["timeout"] is not None:
        settings_.append(f"timeout = {a['timeout'][0]}")
    if a["sandbox"] is not None:
        settings_.append(f'sandbox = "{a["sandbox"]}"')
    if a["security"] is not None:
        settings_.append(f"security = {a['security']}")
    settings_ += [f"{k} = {show(v)}" for k, v in a["extra"].items()]
    caps = ", ".join(a["capabilities"])
    return (
        f"metadata {{\n{meta}\n}}\n"
        f"{header} {{\n"
        f"    capabilities = [{caps}]\n"
        f"    with {', '.join(settings_)} {{\n        return 1;\n    }}\n"
        "}\n"
    )


@settings(max_examples=200, deadline=None)
@given(agents())
def test_printed_agents_read_back_the_same(a: dict[str, Any]) -> None:
    f = dsl.parse(print_agent(a))
    assert f.metadata == a["metadata"]
    (got,) = f.agents
    assert got.name == a["name"]
    assert got.params == a["params"]
    assert got.return_type == a["return_type"]
    assert got.capabilities == a["capabilities"]
    spec = got.spec()
    assert spec["limits"]["memory_mb"] == a["memory_mb"]
    assert spec["limits"]["cpu_cores"] == a["cpu_cores"]
    assert spec["limits"]["execution_timeout"] == (a["timeout"] and a["timeout"][1])
    assert spec["sandbox"] == a["sandbox"]
    assert spec["security"] == a["security"]
    for k, v in a["extra"].items():
        assert got.with_settings[k] == v


actions = st.lists(idents, min_size=1, max_size=3, unique=True)
conditions = st.one_of(
    st.none(),
    st.builds(lambda f, n: f"principal.attrs.{f} >= {n}", idents, st.integers(-5, 5)),
    st.builds(lambda f, s: f"resource.attrs.{f} == {quote(s)}", idents, texts),
)
rules = st.builds(
    lambda eff, acts, cond: f"{eff}: [{', '.join(acts)}]" + (f" if {cond}" if cond else ""),
    st.sampled_from(["allow", "deny"]),
    actions,
    conditions,
)


@settings(max_examples=150, deadline=None)
@given(idents, st.lists(rules, min_size=1, max_size=4), st.integers(0, 3))
def test_embedded_policies_equal_standalone(name: str, body: list[str], indent: int) -> None:
    block = f"policy {name} {{\n" + "\n".join(" " * indent + r for r in body) + "\n}"
    (alone,) = symbi.policy.parse(block)
    f = dsl.parse(f"agent a {{\n  capabilities = [x]\n  {block}\n}}\n{block}")
    assert f.agent("a").policies == [alone]
    assert f.policies == [alone]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes(text: str) -> None:
    check_total(text)


VOCAB = [
    "agent",
    "a",
    "b",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    "with",
    "=",
    '"s"',
    "1",
    "2.5",
    "30s",
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
    "function",
    "vault://k",
    "-",
    ".",
    "allow",
    "deny",
    "try",
    "catch",
    "return",
    "for",
    "in",
    "#c\n",
    "//c\n",
    "capabilities",
    "type",
    "channel",
    "&&",
    "||",
    "!",
    "+",
    "*",
]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(VOCAB), max_size=40), st.booleans())
def test_token_soup_never_crashes(tokens: list[str], strict: bool) -> None:
    check_total(" ".join(tokens), strict=strict)


def check_total(text: str, strict: bool = True) -> None:
    error: ParseError | None = None
    try:
        dsl.parse(text, "fuzz.symbi", strict=strict)
    except ParseError as e:
        error = e
    if error is not None:
        assert error.source == "fuzz.symbi"
        assert error.line is not None and error.column is not None
        assert 1 <= error.line <= text.count("\n") + text.count("\r") + 1
        assert error.column >= 1
