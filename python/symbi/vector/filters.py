"""The vector-index filter language (``{"lang": "de"}``, ``{"year": {"gte": 2020}}``,
``{"tag": {"in": [...]}}``, ``$and``/``$or``/``$not``) evaluated in Python, for items that
are not in an index: agent short-term and working memory, and the keyword side of the RAG
document store.

It mirrors ``rust/src/vector/filter.rs`` and the parser in ``rust/src/vector/py.rs`` so a
filter means the same on every kind of memory: a missing field fails ``eq``, ranges and
``in`` and passes ``ne`` and ``nin``; ints and floats compare numerically, strings with
strings (byte order, which for valid UTF-8 is code-point order), bools only equal bools;
metadata values that the index cannot hold (lists, dicts, None...) count as missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

from ..errors import InvalidArgument

__all__ = ["check_filter", "index_scalar", "is_utf8", "matches"]

_I64 = (-(2**63), 2**63 - 1)
_RANGES = {"lt", "le", "lte", "gt", "ge", "gte"}
_OPS = {"eq", "ne", *_RANGES, "in", "nin"}
Scalar = Union[str, int, float, bool]


class _Missing:
    __slots__ = ()


MISSING: Any = _Missing()


def is_utf8(s: str) -> bool:
    """Whether SQLite and the index can take ``s`` (no lone surrogates)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def index_scalar(v: Any) -> Any:
    """``v`` if the vector index can store it as a metadata value, else :data:`MISSING`
    (non-scalars, ints outside 64 bits, non-finite floats, strings that are not UTF-8)."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v if _I64[0] <= v <= _I64[1] else MISSING
    if isinstance(v, float):
        return v if v == v and v not in (float("inf"), float("-inf")) else MISSING
    if isinstance(v, str):
        return v if is_utf8(v) else MISSING
    return MISSING


def _bad(path: str, message: str, got: Any = None) -> InvalidArgument:
    return InvalidArgument(
        f"invalid filter at {path}: {message}",
        argument="filter",
        expected="a filter dict such as {'lang': 'de'} or {'year': {'gte': 2020}}",
        got=got,
    )


def _operand(v: Any, path: str) -> None:
    if not isinstance(v, (str, int, float)):
        raise _bad(
            path,
            f"operand of type {type(v).__name__} is not supported; use str, int, float or bool",
            v,
        )
    if index_scalar(v) is MISSING:
        raise _bad(path, "operands must be finite, 64-bit and valid UTF-8", v)


def check_filter(flt: Any, path: str = "filter") -> None:
    """Raise :class:`InvalidArgument` unless ``flt`` is a valid filter (what the index's
    parser accepts). Field names starting with ``_`` are reserved at any depth."""
    if not isinstance(flt, Mapping):
        raise _bad(path, f"expected a dict, got {type(flt).__name__}", flt)
    for key, v in flt.items():
        if not isinstance(key, str) or not is_utf8(key):
            raise _bad(path, "filter keys must be field names (str) or $and/$or/$not", key)
        here = f"{path}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(v, (list, tuple, set, frozenset)):
                raise _bad(here, f"expected a list, tuple or set, got {type(v).__name__}", v)
            for i, sub in enumerate(v):
                check_filter(sub, f"{here}[{i}]")
        elif key == "$not":
            check_filter(v, here)
        elif key.startswith("$"):
            raise _bad(here, "unknown operator; use $and, $or or $not", key)
        elif key.startswith("_"):
            raise _bad(here, f"filter key {key!r} is reserved", key)
        elif isinstance(v, Mapping):
            if not v:
                raise _bad(here, 'empty condition; give an operator such as {"eq": value}', v)
            for op, operand in v.items():
                if not isinstance(op, str):
                    raise _bad(here, "operator names are str", op)
                p = f"{here}.{op}"
                if op not in _OPS:
                    raise _bad(p, "unknown operator; use eq, ne, lt, lte, gt, gte, in or nin", op)
                if op in ("in", "nin"):
                    if not isinstance(operand, (list, tuple, set, frozenset)):
                        raise _bad(
                            p, f"expected a list, tuple or set, got {type(operand).__name__}"
                        )
                    for x in operand:
                        _operand(x, p)
                else:
                    _operand(operand, p)
        else:
            _operand(v, here)


def _equals(have: Any, want: Any) -> bool:
    if isinstance(have, bool) or isinstance(want, bool):
        return isinstance(have, bool) and isinstance(want, bool) and have == want
    return _compare(have, want) == 0


def _compare(have: Any, want: Any) -> Union[int, None]:
    """-1/0/1, or None when the two are not comparable (as the index decides)."""
    if isinstance(have, bool) or isinstance(want, bool):
        return None
    if isinstance(have, str) and isinstance(want, str):
        return (have > want) - (have < want)
    if isinstance(have, str) or isinstance(want, str):
        return None
    if isinstance(have, int) and isinstance(want, int):
        return (have > want) - (have < want)
    # The index compares an int with a float as f64 (two ints exactly).
    a, b = float(have), float(want)
    return (a > b) - (a < b)


def matches(meta: Mapping[str, Any], flt: Mapping[str, Any]) -> bool:
    """Whether metadata ``meta`` passes filter ``flt`` (checked with
    :func:`check_filter` first); top-level keys are ANDed."""
    for key, cond in flt.items():
        if key == "$and":
            if not all(matches(meta, c) for c in cond):
                return False
        elif key == "$or":
            if not any(matches(meta, c) for c in cond):
                return False
        elif key == "$not":
            if matches(meta, cond):
                return False
        else:
            have = index_scalar(meta.get(key, MISSING))
            ops = cond.items() if isinstance(cond, Mapping) else (("eq", cond),)
            for op, want in ops:
                if not _holds(have, op, want):
                    return False
    return True


def _holds(have: Any, op: str, want: Any) -> bool:
    if op in ("in", "nin"):
        hit = have is not MISSING and any(_equals(have, w) for w in want)
        return hit != (op == "nin")
    if have is MISSING:
        return op == "ne"
    if op == "eq":
        return _equals(have, want)
    if op == "ne":
        return not _equals(have, want)
    c = _compare(have, want)
    if c is None:
        return False
    if op == "lt":
        return c < 0
    if op in ("le", "lte"):
        return c <= 0
    if op == "gt":
        return c > 0
    return c >= 0
