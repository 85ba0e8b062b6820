"""``symbi dsl check FILE...``: parse Symbiont DSL files and report what is wrong.

Prints ``ok FILE: N agents, M policies`` per good file and ``FILE:line:col: error: ...``
per bad one. Exit 0 when all parse, 1 when any fails to parse, 2 when a file is missing.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from symbi import dsl
from symbi.errors import InvalidArgument, ParseError

__all__ = ["add_parser"]


def _cmd_check(args: argparse.Namespace) -> int:
    failed = missing = False
    for f in args.files:
        try:
            parsed = dsl.parse_file(f, strict=not args.lenient)
        except ParseError as e:
            print(dsl.Problem.from_error(e, f), file=sys.stderr)
            failed = True
            continue
        except InvalidArgument as e:
            print(f"{f}: missing: {e}", file=sys.stderr)
            missing = True
            continue
        for w in parsed.warnings:
            print(w, file=sys.stderr)
        n_agents, n_policies = len(parsed.agents), len(parsed.all_policies)
        print(
            f"ok {f}: {n_agents} agent{'' if n_agents == 1 else 's'}, "
            f"{n_policies} polic{'y' if n_policies == 1 else 'ies'}"
        )
    return 2 if missing else 1 if failed else 0


def add_parser(subparsers: Any) -> None:
    """Register ``symbi dsl check`` on the top-level subparsers."""
    p = subparsers.add_parser("dsl", help="Symbiont DSL (.symbi) tools")
    sub = p.add_subparsers(dest="dsl_command", metavar="ACTION")
    sub.required = True
    c = sub.add_parser("check", help="parse .symbi files and report errors with line:col")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument(
        "--lenient",
        action="store_true",
        help="keep policies the policy engine cannot compile (as warnings) instead of failing",
    )
    c.set_defaults(func=_cmd_check)
