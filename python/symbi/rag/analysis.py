"""Stage 1 of the RAG pipeline: query analysis (keywords, filters, intent).

Filters are written inside the query and removed from the text that is searched::

    lang:de  topic:"audit trail"  year>=2020  year<2025  status!=draft

``key:value`` is equality, ``key>=n`` ``key>n`` ``key<=n`` ``key<n`` are ranges (numbers)
and ``key!=value`` excludes; several conditions on one key are combined. The result is a
:class:`~symbi.VectorIndex` filter dict, evaluated during the vector search.

``key:value`` has no space after the colon, so prose such as ``Quick question: how...``
stays text. An analyser given ``known_keys`` (the default one of a
:class:`~symbi.rag.RagPipeline` knows its store's metadata keys) also keeps ``word:text``
as text unless ``word`` is one of those keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any, Optional, Protocol, Union, runtime_checkable

import msgspec

from ..embed.hashing import STOP_WORDS, tokenize
from ..errors import InvalidArgument

__all__ = ["QueryAnalysis", "QueryAnalyzer", "RuleQueryAnalyzer", "stem", "terms"]

# ``key:value`` only when the value follows the colon directly: "Note: the log" is prose.
_FILTER = re.compile(
    r"""(?<![\w"'])(?P<key>[A-Za-z_][\w.]*)(?:\s*(?P<op>>=|<=|!=|>|<)\s*|(?P<colon>:))"""
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


KnownKeys = Union[Collection[str], Callable[[], Collection[str]]]


class RuleQueryAnalyzer:
    """The default analyser: the filter syntax above, stemmed keywords, and an intent
    from the question's opening words (``explain``, ``howto``, ``define``, ``list``,
    ``compare``, ``lookup`` or ``search``).

    ``known_keys`` (the metadata keys the documents have, or a callable returning them
    at each query) makes ``word:text`` a filter only when ``word`` is one of them; other
    ``word:text`` stays part of the searched text. Without it every ``key:value`` is a
    filter."""

    def __init__(self, *, known_keys: Optional[KnownKeys] = None) -> None:
        if known_keys is not None and not (
            callable(known_keys)
            or (isinstance(known_keys, Collection) and not isinstance(known_keys, (str, bytes)))
        ):
            raise InvalidArgument(
                f"known_keys must be a collection of str or a callable returning one, got "
                f"{type(known_keys).__name__}",
                argument="known_keys",
                expected="Collection[str] | Callable[[], Collection[str]] | None",
                got=type(known_keys).__name__,
            )
        self.known_keys = known_keys

    def _keys(self) -> Optional[Collection[str]]:
        if self.known_keys is None:
            return None
        keys = self.known_keys() if callable(self.known_keys) else self.known_keys
        if isinstance(keys, (str, bytes)) or not isinstance(keys, Collection):
            raise InvalidArgument(
                f"known_keys() must return a collection of str, got {type(keys).__name__}",
                argument="known_keys",
                expected="Collection[str]",
                got=type(keys).__name__,
            )
        return keys

    def analyze(self, query: str) -> QueryAnalysis:
        if not isinstance(query, str) or not query.strip():
            raise InvalidArgument(
                "the question must be a non-empty str",
                argument="query",
                expected="non-empty str",
                got=query,
            )
        known = self._keys()
        filters: dict[str, Any] = {}
        kept: list[str] = []  # the query with its filters cut out
        pos = 0
        for m in _FILTER.finditer(query):
            key, val = m.group("key"), _value(m.group("val"))
            op = ":" if m.group("colon") else m.group("op")
            if op == ":" and known is not None and key not in known:
                continue  # "word:text" on a key no document has: prose, not a filter
            kept.append(query[pos : m.start()])
            pos = m.end()
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
        kept.append(query[pos:])
        text = " ".join(" ".join(kept).split())
        lowered = text.lower()
        intent = next((name for name, rx in _INTENTS if rx.search(lowered)), "search")
        seen: dict[str, None] = {}
        for t in terms(text):
            seen.setdefault(t, None)
        return QueryAnalysis(
            query=query, text=text, keywords=list(seen), filters=filters, intent=intent
        )
