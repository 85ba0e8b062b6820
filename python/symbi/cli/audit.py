"""``symbi audit verify|query|report DIR``: the audit trail from the command line."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

import msgspec

from symbi.audit import query_dir, verify_dir
from symbi.audit.log import _ns_to_datetime
from symbi.audit.reports import _format, build
from symbi.errors import AuditIntegrityError, InvalidArgument

__all__ = ["add_parser"]


def _time(text: str) -> Union[datetime, float, int]:
    """ISO 8601 (``2026-11-25``, ``2026-11-25T10:00:00+01:00``), Unix seconds, or int
    nanoseconds (an event's ``timestamp``); the library's ``_to_ns`` converts it exactly."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use ISO 8601 such as 2026-11-25T10:00:00Z, or Unix seconds"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _verify(args: argparse.Namespace) -> int:
    key: Optional[bytes] = None
    if args.public_key:
        try:
            key = Path(args.public_key).read_bytes()
        except OSError as e:
            raise InvalidArgument(
                f"cannot read --public-key {args.public_key!r}: {e.strerror or e}; pass the "
                "audit.pub file of the trail (32 raw bytes)",
                argument="--public-key",
                expected="a readable 32-byte key file",
                got=args.public_key,
            ) from None
    try:
        r = verify_dir(args.dir, public_key=key, allow_torn_tail=args.allow_torn_tail)
    except AuditIntegrityError as e:
        print(_broken(args.dir, e))
        return 1
    print(
        f"OK {args.dir}: {r.events} events in {r.segments} segments, {r.checkpoints} "
        f"signed checkpoints, key {r.key_id}, head {r.head.hex()}"
    )
    return 0


def _broken(path: str, e: AuditIntegrityError) -> str:
    if e.sequence is None:  # the checkpoint file, not an event
        return f"BROKEN {path}: the checkpoint file is damaged ({e.kind}): {e}"
    return f"BROKEN {path}: first bad event at sequence {e.sequence} ({e.kind}): {e}"


def _verified(args: argparse.Namespace) -> bool:
    """Verify the trail before reading it: a damaged event must not be silently skipped.
    A directory that is not a trail raises (as ``audit verify`` does); damage prints one
    line on stderr and returns False."""
    try:
        verify_dir(args.dir, allow_torn_tail=args.allow_torn_tail)
    except AuditIntegrityError as e:
        print(f"symbi audit {args.audit_command}: {_broken(args.dir, e)}", file=sys.stderr)
        return False
    return True


def _event_row(e: Any) -> dict[str, Any]:
    return {
        "sequence": e.sequence,
        "time": _ns_to_datetime(e.timestamp).isoformat(),
        "timestamp": e.timestamp,
        "agent_id": e.agent_id,
        "event_type": e.event_type,
        "details": e.details,
        "event_id": e.event_id,
        "chain_hash": e.chain_hash.hex(),
    }


def _query(args: argparse.Namespace) -> int:
    if not _verified(args):
        return 1
    events = query_dir(
        args.dir,
        agent=args.agent,
        type=args.type,
        since=args.since,
        until=args.until,
        limit=args.limit,
    )
    rows = [_event_row(e) for e in events]
    if args.format == "json":
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(rows), indent=2).decode() + "\n")
    elif args.format == "jsonl":
        for r in rows:
            sys.stdout.write(msgspec.json.encode(r).decode() + "\n")
    else:
        for r in rows:
            details = msgspec.json.encode(r["details"]).decode()
            who, what = r["agent_id"], r["event_type"]
            print(f"{r['sequence']:>8}  {r['time']}  {who:<24} {what:<24} {details}")
        print(f"({len(rows)} events)", file=sys.stderr)
    return 0


def _report(args: argparse.Namespace) -> int:
    if not _verified(args):
        return 1
    report = build(
        args.dir,
        args.framework,
        since=args.since,
        until=args.until,
        frameworks_file=args.frameworks,
    )
    text = _format(report, args.format)
    if args.out:
        try:
            Path(args.out).write_text(text, encoding="utf-8")
        except OSError as e:
            raise InvalidArgument(
                f"cannot write the report to --out {args.out!r}: {e.strerror or e}; pass a "
                "path in a directory that exists and that you can write to",
                argument="--out",
                expected="a writable file path",
                got=args.out,
            ) from None
        print(f"wrote {args.format} report to {args.out}")
    else:
        sys.stdout.write(text)
    if report.status == "fail":
        failed = ", ".join(c.id for c in report.controls if c.status == "fail")
        print(
            f"symbi audit report: FAIL: {report.framework} controls {failed} failed; "
            "see the report for details",
            file=sys.stderr,
        )
        return 1
    return 0


def _existing_dir(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a directory with an audit trail")
    return text


def add_parser(sub: Any) -> None:
    a = sub.add_parser("audit", help="verify, query and report on an audit trail")
    asub = a.add_subparsers(dest="audit_command", metavar="ACTION")
    asub.required = True

    v = asub.add_parser("verify", help="verify the chain and signatures (exit 1 if broken)")
    v.add_argument("dir", type=_existing_dir, metavar="DIR")
    v.add_argument("--public-key", metavar="FILE", help="pin this 32-byte Ed25519 public key")
    v.add_argument(
        "--allow-torn-tail", action="store_true", help="accept a crash's unfinished last record"
    )
    v.set_defaults(func=_verify)

    q = asub.add_parser("query", help="list events that match filters")
    q.add_argument("dir", type=_existing_dir, metavar="DIR")
    q.add_argument("--agent")
    q.add_argument("--type", help="event type, e.g. policy.denied")
    q.add_argument(
        "--since", type=_time, help="ISO 8601, Unix seconds, or int nanoseconds (inclusive)"
    )
    q.add_argument("--until", type=_time)
    q.add_argument("--limit", type=int)
    q.add_argument("--format", choices=["table", "json", "jsonl"], default="table")
    q.add_argument(
        "--allow-torn-tail", action="store_true", help="accept a crash's unfinished last record"
    )
    q.set_defaults(func=_query)

    r = asub.add_parser("report", help="a compliance report (HIPAA, GDPR, SOX, or custom)")
    r.add_argument("dir", type=_existing_dir, metavar="DIR")
    r.add_argument("--framework", required=True, help="hipaa, gdpr, sox, or one from --frameworks")
    r.add_argument("--frameworks", metavar="FILE", help="TOML file of custom frameworks")
    r.add_argument("--format", choices=["markdown", "html", "json"], default="markdown")
    r.add_argument("--since", type=_time)
    r.add_argument("--until", type=_time)
    r.add_argument("--out", metavar="FILE")
    r.add_argument(
        "--allow-torn-tail", action="store_true", help="accept a crash's unfinished last record"
    )
    r.set_defaults(func=_report)
