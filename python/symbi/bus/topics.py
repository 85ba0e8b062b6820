"""Topic names and NATS-style patterns.

A topic is dot-separated tokens (``data_processing.completed``). A pattern may use ``*``
for exactly one token and ``>`` for one or more trailing tokens (only as the last token),
exactly as NATS subjects do, so the NATS transport hands patterns to the server unchanged.
"""

from __future__ import annotations

from ..errors import InvalidArgument

__all__ = ["topic_matches", "validate_pattern", "validate_topic"]

#: Longest topic or pattern accepted (the envelope header allows 65535 bytes).
MAX_TOPIC_BYTES = 1024
_FORBIDDEN = frozenset(" \t\r\n\x00")


def _tokens(value: object, argument: str, *, wildcards: bool) -> list[str]:
    if not isinstance(value, str):
        raise InvalidArgument(
            f"{argument} must be a str such as 'alerts.security', got {type(value).__name__}",
            argument=argument,
            expected="str",
            got=type(value).__name__,
        )
    if not value or len(value.encode()) > MAX_TOPIC_BYTES:
        raise InvalidArgument(
            f"{argument} must be 1 to {MAX_TOPIC_BYTES} bytes, got {len(value.encode())}",
            argument=argument,
            expected=f"1..{MAX_TOPIC_BYTES} bytes",
            got=value[:80],
        )
    if any(c in _FORBIDDEN for c in value):
        raise InvalidArgument(
            f"{argument} {value!r} contains whitespace or NUL; use dot-separated tokens",
            argument=argument,
            expected="dot-separated tokens without whitespace",
            got=value,
        )
    toks = value.split(".")
    for i, t in enumerate(toks):
        if not t:
            raise InvalidArgument(
                f"{argument} {value!r} has an empty token; tokens are separated by single dots",
                argument=argument,
                expected="non-empty tokens",
                got=value,
            )
        if t in ("*", ">"):
            if not wildcards:
                raise InvalidArgument(
                    f"{argument} {value!r} contains the wildcard {t!r}; wildcards are only "
                    "for subscribe patterns",
                    argument=argument,
                    expected="a topic without * or >",
                    got=value,
                )
            if t == ">" and i != len(toks) - 1:
                raise InvalidArgument(
                    f"{argument} {value!r}: '>' may only be the last token",
                    argument=argument,
                    expected="'>' as the last token",
                    got=value,
                )
        elif "*" in t or ">" in t:
            raise InvalidArgument(
                f"{argument} {value!r}: wildcards must be whole tokens ('a.*', not 'a*')",
                argument=argument,
                expected="wildcards as whole tokens",
                got=value,
            )
    return toks


def validate_topic(topic: object, argument: str = "topic") -> str:
    """A concrete topic (no wildcards); raises InvalidArgument."""
    _tokens(topic, argument, wildcards=False)
    return topic  # type: ignore[return-value]


def validate_pattern(pattern: object, argument: str = "pattern") -> str:
    """A subscription pattern (``*`` and a trailing ``>`` allowed); raises InvalidArgument."""
    _tokens(pattern, argument, wildcards=True)
    return pattern  # type: ignore[return-value]


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` matches ``pattern`` under NATS rules (both assumed valid)."""
    if pattern == topic:
        return True
    p = pattern.split(".")
    t = topic.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(t) > i
        if i >= len(t):
            return False
        if tok != "*" and tok != t[i]:
            return False
    return len(p) == len(t)
