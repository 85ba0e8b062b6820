"""``symbi``: demo, version, config check, bench.

Exit codes: 0 success, 1 the command ran and found a failure, 2 bad arguments or config.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence
from typing import Optional

import symbi
from symbi.errors import SymbiError

__all__ = ["main"]


def _cmd_version(args: argparse.Namespace) -> int:
    from symbi import _core  # build facts are not part of the public API

    info = _core.build_info()
    print(
        f"symbi {symbi.__version__} (core {info['version']}, {info['profile']}, "
        f"{info['target_arch']}-{info['target_os']}, abi3) "
        f"on {platform.python_implementation()} {platform.python_version()}"
    )
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    cfg = symbi.Config.load(args.file)
    sys.stdout.write(f"# effective config: {args.file} plus SYMBI_* environment overrides\n")
    sys.stdout.write(cfg.to_toml())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(config_path=args.config, audit_dir=args.audit_dir)


def _cmd_policy_check(args: argparse.Namespace) -> int:
    from symbi.policy import load_file

    failed = 0
    for f in args.files:
        try:
            policies = load_file(f)
        except SymbiError as e:
            print(f"{e}", file=sys.stderr)
            failed += 1
            continue
        names = ", ".join(p.name for p in policies)
        print(f"ok {f}: {len(policies)} policies ({names})")
    return 1 if failed else 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(
        quick=args.quick, only=args.only, json_out=args.json, benches_dir=args.dir, rust=args.rust
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="symbi", description="Run autonomous AI agents securely.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    v = sub.add_parser("version", help="print versions and build facts")
    v.set_defaults(func=_cmd_version)

    d = sub.add_parser("demo", help="run the main job on embedded defaults")
    d.add_argument("--config", metavar="FILE", help="a TOML config (default: built-in defaults)")
    d.add_argument("--audit-dir", metavar="DIR", help="write the demo's audit trail to DIR")
    d.set_defaults(func=_cmd_demo)

    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    cc = csub.add_parser("check", help="validate FILE and print the effective config")
    cc.add_argument("file", metavar="FILE")
    cc.set_defaults(func=_cmd_config_check)

    b = sub.add_parser("bench", help="run benches/ with each peer in the same run")
    b.add_argument("--quick", action="store_true", help="small data, few rounds")
    b.add_argument("--only", metavar="AREA", help="one area, e.g. audit")
    b.add_argument("--json", metavar="FILE", help="write the rows to FILE as JSON")
    b.add_argument("--dir", metavar="DIR", help="the benches directory (default: ./benches)")
    b.add_argument("--rust", action="store_true", help="also run the criterion benches (cargo)")
    b.set_defaults(func=_cmd_bench)

    from . import audit as audit_cli
    from . import dsl as dsl_cli

    audit_cli.add_parser(sub)
    dsl_cli.add_parser(sub)

    pc = sub.add_parser("policy", help="policy tools")
    psub = pc.add_subparsers(dest="policy_command", metavar="ACTION")
    psub.required = True
    pcc = psub.add_parser("check", help="parse policy files (.symbi, .policy, .toml, .json)")
    pcc.add_argument("files", nargs="+", metavar="FILE")
    pcc.set_defaults(func=_cmd_policy_check)
    return p


def _first_symbi_error(exc: BaseException) -> Optional[SymbiError]:
    """The first :class:`SymbiError` in ``exc``, looking inside (nested) exception groups
    (a task group wraps what its tasks raise; ``BaseExceptionGroup`` is 3.11+ only)."""
    if isinstance(exc, SymbiError):
        return exc
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, (tuple, list)):
        for e in inner:
            if isinstance(e, BaseException):
                found = _first_symbi_error(e)
                if found is not None:
                    return found
    return None


def _only_keyboard_interrupts(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    inner = getattr(exc, "exceptions", None)
    return (
        isinstance(inner, (tuple, list))
        and bool(inner)
        and all(isinstance(e, BaseException) and _only_keyboard_interrupts(e) for e in inner)
    )


def _report_error(command: str, e: SymbiError) -> int:
    print(f"symbi {command}: {type(e).__name__}: {e}", file=sys.stderr)
    return 2 if isinstance(e, (symbi.errors.ConfigError, symbi.errors.InvalidArgument)) else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except SymbiError as e:
        return _report_error(args.command, e)
    except KeyboardInterrupt:
        return 130
    except BaseException as e:  # an exception group from a task group: report its cause
        if _only_keyboard_interrupts(e):
            return 130
        found = _first_symbi_error(e)
        if found is None:
            raise
        return _report_error(args.command, found)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
