"""Topic matching against a reference implementation of the NATS rules, and the
in-process transport routing exactly the matching subscribers."""

from __future__ import annotations

import re

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symbi.bus import InProcTransport, topic_matches, validate_pattern, validate_topic
from symbi.bus.transport import Incoming
from symbi.errors import InvalidArgument

TOKENS = st.sampled_from(["a", "b", "c", "alerts", "x1"])
topics = st.lists(TOKENS, min_size=1, max_size=5).map(".".join)


@st.composite
def patterns(draw: st.DrawFn) -> str:
    toks = draw(st.lists(st.one_of(TOKENS, st.just("*")), min_size=1, max_size=5))
    if draw(st.booleans()):
        toks = [*toks[:-1], ">"] if draw(st.booleans()) else [*toks, ">"]
    return ".".join(toks)


def reference(pattern: str, topic: str) -> bool:
    """NATS semantics as a regex: * = one token, > = one or more trailing tokens."""
    parts = []
    for tok in pattern.split("."):
        if tok == "*":
            parts.append(r"[^.]+")
        elif tok == ">":
            parts.append(r"[^.]+(?:\.[^.]+)*")
        else:
            parts.append(re.escape(tok))
    return re.fullmatch(r"\.".join(parts), topic) is not None


@given(patterns(), topics)
def test_matching_agrees_with_the_reference(pattern: str, topic: str) -> None:
    assert validate_pattern(pattern) == pattern
    assert validate_topic(topic) == topic
    assert topic_matches(pattern, topic) == reference(pattern, topic)


@given(topics)
def test_a_topic_matches_itself_and_the_catch_all(topic: str) -> None:
    assert topic_matches(topic, topic)
    assert topic_matches(">", topic)
    assert topic_matches(".".join("*" for _ in topic.split(".")), topic)


@given(st.sampled_from(["", "a..b", ".a", "a.", "a b", "a*", "a.>.b", "a.b>", "x\x00"]))
def test_invalid_patterns_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_pattern(bad)


@settings(max_examples=60, deadline=None)
@given(st.lists(patterns(), min_size=1, max_size=6), st.lists(topics, min_size=1, max_size=6))
def test_inproc_transport_routes_to_exactly_the_matching_subscribers(
    pats: list[str], tops: list[str]
) -> None:
    async def run() -> list[tuple[int, str]]:
        t = InProcTransport()
        await t.connect(timeout=1)
        got: list[tuple[int, str]] = []
        for i, p in enumerate(pats):

            async def h(inc: Incoming, i: int = i) -> None:
                got.append((i, inc.subject))

            await t.subscribe(p, h, timeout=1)
        for top in tops:
            await t.publish(top, b"x", timeout=1)
        return got

    got = anyio.run(run)
    want = [(i, top) for top in tops for i, p in enumerate(pats) if reference(p, top)]
    assert sorted(got) == sorted(want)
