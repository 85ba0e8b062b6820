"""Reading policies from text and files (.symbi/.policy DSL, .toml and .json dict form)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Union

from .._core import Policy
from ..errors import InvalidArgument, ParseError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

__all__ = ["DSL_SUFFIXES", "from_data", "load_file", "parse"]

DSL_SUFFIXES = (".symbi", ".policy", ".dsl")
_TOML_POS = re.compile(r"at line (\d+), column (\d+)")


def parse(text: str, source: str = "<string>") -> list[Policy]:
    """Every ``policy`` block in ``text``. Errors raise ParseError(source, line, column)."""
    if not isinstance(text, str):
        raise InvalidArgument(
            "policy text must be a str", argument="text", expected="str", got=type(text).__name__
        )
    return Policy.parse(text, source)


def from_data(data: Any, source: str = "<dict>") -> list[Policy]:
    """Policies from decoded TOML/JSON: one policy table, a ``policy = [...]`` list of them
    (``[[policy]]`` in TOML), or a list of policy tables."""
    if isinstance(data, dict) and "policy" in data:
        items = data["policy"]
        if isinstance(items, dict):
            items = [items]
        if set(data) != {"policy"}:
            raise InvalidArgument(
                f"{source}: besides `policy`, found keys {sorted(set(data) - {'policy'})}",
                argument="policy",
                expected="only [[policy]] tables",
                got=sorted(data),
            )
    elif isinstance(data, list):
        items = data
    else:
        items = [data]
    if not isinstance(items, list):
        raise InvalidArgument(
            f"{source}: `policy` must be a table or a list of tables",
            argument="policy",
            expected="list of tables",
            got=type(items).__name__,
        )
    return [Policy.from_dict(item, f"{source}:policy[{i}]") for i, item in enumerate(items)]


def load_file(path: Union[str, Path]) -> list[Policy]:
    """Every policy in a file: DSL (.symbi, .policy, .dsl), TOML (.toml) or JSON (.json)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (*DSL_SUFFIXES, ".toml", ".json"):
        raise InvalidArgument(
            f"cannot tell the policy format of {p}; name it .symbi, .policy, .toml or .json",
            argument="path",
            expected="a .symbi/.policy/.dsl/.toml/.json file",
            got=str(p),
        )
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise InvalidArgument(
            f"cannot read policy file {p}: {e.strerror or e}",
            argument="path",
            expected="a readable file",
            got=str(p),
        ) from e
    except UnicodeDecodeError as e:
        raise ParseError(
            f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8",
            source=str(p),
        ) from e
    if suffix in DSL_SUFFIXES:
        return Policy.parse(text, str(p))
    if suffix == ".toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            m = _TOML_POS.search(str(e))
            line, col = (int(m.group(1)), int(m.group(2))) if m else (None, None)
            raise ParseError(f"{p}:{line}:{col}: {e}", source=str(p), line=line, column=col) from e
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ParseError(
                f"{p}:{e.lineno}:{e.colno}: {e.msg}", source=str(p), line=e.lineno, column=e.colno
            ) from e
    return from_data(data, str(p))
