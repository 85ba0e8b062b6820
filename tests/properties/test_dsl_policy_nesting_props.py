"""Neither parser crashes on any input: random printable text and deeply nested soups of
brackets and operators either parse or raise ParseError, and whatever parses as a policy
also decides a request without crashing."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

import symbi
from symbi import dsl
from symbi.errors import ParseError
from symbi.policy import Policy, PolicyEngine, PolicyRequest

printable = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126) | st.sampled_from("\n\t"),
    max_size=300,
)

PIECES = [
    "(", ")", "[", "]", "{", "}", "!", "not ", "-", "x", "1", '"s"', " && ", " || ", " == ",
    " in ", " => ", "<", ">", ",", ":", ";", ".", "if a ", " else ", "true", "f(",
]  # fmt: skip
# Runs of one piece, some long enough to pass any depth limit.
soups = st.lists(
    st.tuples(st.sampled_from(PIECES), st.integers(1, 600)), min_size=1, max_size=12
).map(lambda runs: "".join(piece * n for piece, n in runs))

WRAPPERS = [
    "{}",
    "policy p {{ allow: read if {} }}",
    "policy p {{ require: {{ k: {} }} }}",
    "function f() {{ {} }}",
    "agent a {{ with timeout = 30s {{ {} }} }}",
    "metadata {{ k = {} }}",
]


def policy_total(text: str) -> None:
    try:
        policies = symbi.policy.parse(text)
    except ParseError:
        return
    engine = PolicyEngine()
    for p in policies:
        engine.register(p)
    engine.evaluate(PolicyRequest(principal="a", action="read", resource="r"))


def condition_total(text: str) -> None:
    rule = {"effect": "allow", "actions": ["read"], "if": text}
    try:
        p = Policy.from_dict({"name": "p", "rules": [rule]})
    except ParseError:
        return
    engine = PolicyEngine()
    engine.register(p)
    engine.evaluate(PolicyRequest(principal="a", action="read", resource="r"))


def dsl_total(text: str) -> None:
    for strict in (True, False):
        with contextlib.suppress(ParseError):
            dsl.parse(text, strict=strict)


def total(text: str) -> None:
    policy_total(text)
    condition_total(text)
    dsl_total(text)


@settings(max_examples=300, deadline=None)
@given(printable)
def test_printable_text_never_crashes_either_parser(text: str) -> None:
    total(text)


@settings(max_examples=200, deadline=None)
@given(soups, st.sampled_from(WRAPPERS))
def test_deep_soups_never_crash_either_parser(soup: str, wrapper: str) -> None:
    total(wrapper.format(soup))
