"""Stage 1 of the RAG pipeline: query analysis (keywords, filters, intent).

Filters are written inside the query and removed from the text that is searched::

    lang:de  topic:"audit trail"  year>=2020  year<2025  status!=draft

``key:value`` is equality, ``key>=n`` ``key>n`` ``key<=n`` ``key<n`` are ranges (numbers)
and ``key!=value`` excludes; several conditions on one key are combined. The result is a
:class:`~symbi.VectorIndex` filter dict, evaluated during the vector search.
"""

from __future__ import annotations

import re
from typing import Any, Protocol, runtime_checkable

import msgspec

from ..embed.hashing import STOP_WORDS, tokenize
from ..errors import InvalidArgument

__all__ = ["QueryAnalysis", "QueryAnalyzer", "RuleQueryAnalyzer", "stem", "terms"]

_FILTER = re.compile(
    r"""(?<![\w"'])(?P<key>[A-Za-z_][\w.]*)\s*(?P<op>>=|<=|!=|>|<|:)\s*"""
    r"""(?P<val>"[^"]*"|'[^']*'|[^\s"']+)"""
)
_OPS = {">=": "gte", "<=": "lte", ">": "gt", "<": "lt"}
_INTENTS = (
    ("compare", re.compile(r"\b(compare|comparison|versus|vs\.?|difference|differ)\b")),
    ("howto", re.compile(r"^\s*(how (do|can|should|to)|steps? to)\b")),
    ("explain", re.compile(r"^\s*(how|why)\b")),
    ("list", re.compile(r"^\s*(list|which|name (all|the))\b")),
    ("define", re.compile(r"^\s*(what (is|are)|define|meaning of)\b")),
    ("lookup", re.compile(r"^\s*(who|when|where|what|does|is|are|can)\b")),
)
_SUFFIXES = ("ations", "ation", "ings", "ing", "ied", "ies", "ed", "es", "ly", "s")


def stem(word: str) -> str:
    """A light English suffix stripper (``tampering``/``tampered`` -> ``tamper``)."""
    for suf in _SUFFIXES:
        if word.endswith(suf) and len(word) - len(suf) >= 3:
            base = word[: -len(suf)]
            if suf in ("ied", "ies"):
                return base + "y"
            if suf == "s" and base.endswith("s"):
                return word
            return base
    return word


def terms(text: str) -> list[str]:
    """The stemmed content words of ``text`` (stop words dropped): BM25's tokens."""
    return [stem(w) for w in tokenize(text) if w not in STOP_WORDS and len(w) > 1]


def _value(raw: str) -> Any:
    if raw[:1] in "\"'":
        return raw[1:-1]
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        return raw


class QueryAnalysis(msgspec.Struct, frozen=True, kw_only=True):
    """What the analyser understood: ``text`` is the query without its filters."""

    query: str
    text: str
    keywords: list[str]
    filters: dict[str, Any]
    intent: str


@runtime_checkable
class QueryAnalyzer(Protocol):
    def analyze(self, query: str) -> QueryAnalysis: ...


class RuleQueryAnalyzer:
    """The default analyser: the filter syntax above, stemmed keywords, and an intent
    from the question's opening words (``explain``, ``howto``, ``define``, ``list``,
    ``compare``, ``lookup`` or ``search``)."""

    def analyze(self, query: str) -> QueryAnalysis:
        if not isinstance(query, str) or not query.strip():
            raise InvalidArgument(
                "the question must be a non-empty str",
                argument="query",
                expected="non-empty str",
                got=query,
            )
        filters: dict[str, Any] = {}
        for m in _FILTER.finditer(query):
            key, op, val = m.group("key"), m.group("op"), _value(m.group("val"))
            if op == ":":
                cond: Any = val
            elif op == "!=":
                cond = {"ne": val}
            else:
                if isinstance(val, bool) or not isinstance(val, (int, float)):
                    raise InvalidArgument(
                        f"filter {m.group(0)!r}: {op} needs a number",
                        argument="query",
                        expected="key>=NUMBER",
                        got=m.group(0),
                    )
                cond = {_OPS[op]: val}
            prev = filters.get(key)
            if isinstance(prev, dict) and isinstance(cond, dict):
                prev.update(cond)
            elif prev is not None:
                both = prev if isinstance(prev, dict) else {"eq": prev}
                filters[key] = {**both, **(cond if isinstance(cond, dict) else {"eq": cond})}
            else:
                filters[key] = cond
        text = " ".join(_FILTER.sub(" ", query).split())
        lowered = text.lower()
        intent = next((name for name, rx in _INTENTS if rx.search(lowered)), "search")
        seen: dict[str, None] = {}
        for t in terms(text):
            seen.setdefault(t, None)
        return QueryAnalysis(
            query=query, text=text, keywords=list(seen), filters=filters, intent=intent
        )
