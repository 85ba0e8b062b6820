"""Compliance reports over an audit trail: HIPAA, GDPR and SOX built in, plus custom
frameworks from TOML.

    text = render("/var/lib/symbi/audit", "hipaa", "html", since=datetime(2025, 1, 1))

A framework is a list of controls. Each control has a ``check``:

- ``events``: count the period's events whose type matches ``event_types`` (shell-style
  patterns such as ``"data.read*"``); fails below ``min_events`` or above ``max_events``.
- ``denials``: the same, for policy denials; reported per agent.
- ``integrity``: the trail verifies (chain, signatures, checkpoints). For a list of events
  only their order and chain linkage can be checked: sequence numbers must increase by one
  from event to event (pass the whole trail, not a filtered query) and each event must
  link to the one before.
- ``retention``: the trail still holds its first event (nothing pruned) and its span is
  reported against ``retention_days``.
- ``key_use``: which signing keys signed the period's events (exactly one expected), and
  key events matching ``event_types``.

Custom frameworks (TOML)::

    [frameworks.acme]
    title = "ACME internal controls"
    [[frameworks.acme.controls]]
    id = "AC-1"
    title = "Privileged reads are logged"
    check = "events"
    event_types = ["data.read*", "secret.*"]
    min_events = 1

Outputs: ``markdown``, ``html`` (self-contained, an inline SVG bar chart, no scripts) and
``json``.
"""

from __future__ import annotations

import fnmatch
import html
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, Optional, Union

import msgspec

from ..errors import AuditIntegrityError, InvalidArgument, SymbiError
from .events import AuditEvent
from .log import TimeLike, _ns_to_datetime, _to_ns, query_dir, verify_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "BUILTIN_FRAMEWORKS",
    "Control",
    "ControlResult",
    "Framework",
    "Report",
    "build",
    "load_frameworks",
    "render",
]

Check = Literal["events", "denials", "integrity", "retention", "key_use"]
Format = Literal["markdown", "html", "json"]
Status = Literal["pass", "fail", "info"]


class Control(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str
    title: str
    check: Check = "events"
    description: str = ""
    event_types: list[str] = msgspec.field(default_factory=list)
    min_events: int = 0
    max_events: Optional[int] = None
    retention_days: Optional[int] = None


class Framework(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    title: str
    controls: list[Control]


class ControlResult(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    title: str
    check: Check
    status: Status
    events: int
    detail: str
    by_type: dict[str, int] = msgspec.field(default_factory=dict)
    by_agent: dict[str, int] = msgspec.field(default_factory=dict)


class Report(msgspec.Struct, frozen=True, kw_only=True):
    framework: str
    title: str
    source: str
    period_start: Optional[str]
    period_end: Optional[str]
    generated_at: str
    total_events: int
    status: Status
    controls: list[ControlResult]
    events_by_type: dict[str, int]


_DENY = ["policy.deny*", "*.denied", "*.deny"]
#: Access to protected data, including the runtime's own knowledge-store events
#: (``knowledge.read`` / ``knowledge.write`` / ``knowledge.delete``, symbi.context).
_ACCESS = [
    "data.access*",
    "data.read*",
    "data.write*",
    "knowledge.read*",
    "knowledge.write*",
    "knowledge.delete*",
    "phi.*",
    "pii.*",
    "*.sensitive*",
]
_KEYS = ["key.*", "crypto.*"]


def _c(id: str, title: str, check: Check, types: Sequence[str] = (), **kw: object) -> Control:
    return msgspec.convert(
        {"id": id, "title": title, "check": check, "event_types": list(types), **kw}, Control
    )


BUILTIN_FRAMEWORKS: dict[str, Framework] = {
    "hipaa": Framework(
        name="hipaa",
        title="HIPAA Security Rule (45 CFR 164.308-316)",
        controls=[
            _c("164.312(b)", "Audit controls: the trail is intact and tamper-evident", "integrity"),
            _c("164.312(a)(1)", "Access control: access to ePHI is recorded", "events", _ACCESS),
            _c(
                "164.308(a)(1)(ii)(D)",
                "Information system activity review: denied actions",
                "denials",
                _DENY,
            ),
            _c("164.312(c)(1)", "Integrity: events signed by one known key", "key_use", _KEYS),
            _c(
                "164.316(b)(2)(i)",
                "Documentation retained for 6 years",
                "retention",
                retention_days=6 * 365,
            ),
        ],
    ),
    "gdpr": Framework(
        name="gdpr",
        title="GDPR (Regulation (EU) 2016/679)",
        controls=[
            _c("Art. 30", "Records of processing activities", "events", _ACCESS),
            _c("Art. 32", "Security of processing: integrity of the records", "integrity"),
            _c("Art. 25", "Data protection by design: policy denials", "denials", _DENY),
            _c(
                "Art. 33",
                "Breach detection: security incidents",
                "events",
                ["security.*", "*.breach*", "*.incident*"],
            ),
            _c(
                "Art. 5(1)(e)",
                "Storage limitation: retention span",
                "retention",
                retention_days=365,
            ),
            _c("Art. 32(1)(a)", "Cryptographic protection: signing keys", "key_use", _KEYS),
        ],
    ),
    "sox": Framework(
        name="sox",
        title="Sarbanes-Oxley (SOX) sections 404 and 802",
        controls=[
            _c("404-AC", "ITGC access control: denied and privileged actions", "denials", _DENY),
            _c(
                "404-CM",
                "ITGC change management: agents, policies, config",
                "events",
                ["agent.*", "policy.register*", "policy.reload*", "config.*"],
            ),
            _c("404-INT", "Completeness and integrity of the audit trail", "integrity"),
            _c("802", "Records retained for 7 years", "retention", retention_days=7 * 365),
            _c("404-KEY", "Key management: signing keys in use", "key_use", _KEYS),
        ],
    ),
}


def load_frameworks(path: Union[str, os.PathLike[str]]) -> dict[str, Framework]:
    """Frameworks defined in a TOML file (see the module docstring)."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8-sig"))
    except OSError as e:
        raise InvalidArgument(
            f"cannot read frameworks file {str(p)!r}: {e}",
            argument="frameworks_file",
            expected="a readable TOML file",
            got=str(p),
        ) from None
    except UnicodeDecodeError as e:
        raise InvalidArgument(
            f"frameworks file {str(p)!r} is not UTF-8 text ({e.reason} at byte {e.start}); "
            "save it as UTF-8",
            argument="frameworks_file",
            expected="a UTF-8 TOML file",
            got=str(p),
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(
            f"{p}: not valid TOML: {e}", argument="frameworks_file", expected="TOML", got=str(p)
        ) from None
    table = raw.get("frameworks")
    if not isinstance(table, dict) or not table:
        raise InvalidArgument(
            f"{p}: define frameworks as [frameworks.<name>] tables",
            argument="frameworks_file",
            expected="[frameworks.<name>]",
            got=sorted(raw),
        )
    out = {}
    for name, body in table.items():
        try:
            out[name.lower()] = msgspec.convert({"name": name.lower(), **body}, Framework)
        except (msgspec.ValidationError, TypeError) as e:
            raise InvalidArgument(
                f"{p}: framework {name!r}: {e}",
                argument="frameworks_file",
                expected="title and [[controls]] with id, title, check",
                got=name,
            ) from None
    return out


def _framework(
    framework: Union[str, Framework], frameworks_file: Optional[Union[str, os.PathLike[str]]]
) -> Framework:
    if isinstance(framework, Framework):
        return framework
    known = dict(BUILTIN_FRAMEWORKS)
    if frameworks_file is not None:
        known.update(load_frameworks(frameworks_file))
    fw = known.get(str(framework).lower())
    if fw is None:
        raise InvalidArgument(
            f"unknown framework {framework!r}; known: {sorted(known)} (add custom ones "
            "with a frameworks TOML file)",
            argument="framework",
            expected=f"one of {sorted(known)}",
            got=framework,
        )
    return fw


def _match(ev_type: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(ev_type, p) for p in patterns)


def _iso(ns: Optional[int]) -> Optional[str]:
    if ns is None:
        return None
    return _ns_to_datetime(ns).isoformat(timespec="seconds")


def _chain_ok(events: Sequence[AuditEvent]) -> Optional[str]:
    """Why a list of events is not an unbroken piece of one trail, or None if it is."""
    for a, b in zip(events, events[1:]):
        if b.sequence != a.sequence + 1:
            how = "goes back" if b.sequence <= a.sequence else "skips"
            return (
                f"the list {how} from event {a.sequence} to event {b.sequence}: events are "
                "missing, reordered or repeated (pass the whole trail in order, e.g. "
                "query_dir(path) without filters)"
            )
        if b.prev_hash != a.chain_hash:
            return f"event {b.sequence} does not link to event {a.sequence}"
    return None


def build(
    source: Union[str, os.PathLike[str], Iterable[AuditEvent]],
    framework: Union[str, Framework],
    *,
    since: Optional[TimeLike] = None,
    until: Optional[TimeLike] = None,
    frameworks_file: Optional[Union[str, os.PathLike[str]]] = None,
) -> Report:
    """Map the events of ``[since, until)`` to the controls of ``framework``."""
    fw = _framework(framework, frameworks_file)
    since_ns, until_ns = _to_ns("since", since), _to_ns("until", until)
    integrity: tuple[Status, str]
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        all_events = query_dir(path)
        try:
            rep = verify_dir(path)
            integrity = (
                "pass",
                f"{rep.events} events verified: chain, Ed25519 signatures, "
                f"{rep.checkpoints} signed checkpoints",
            )
        except AuditIntegrityError as e:
            where = "" if e.sequence is None else f" at sequence {e.sequence}"
            integrity = ("fail", f"{e.kind}{where}: {e}")
        except SymbiError as e:
            integrity = ("fail", str(e))
        label = path
    else:
        all_events = list(source)
        if not all(isinstance(e, AuditEvent) for e in all_events):
            raise InvalidArgument(
                "events must be AuditEvent objects (from query or query_dir)",
                argument="source",
                expected="a store path or AuditEvents",
                got=type(source).__name__,
            )
        broken = _chain_ok(all_events)
        integrity = (
            ("fail", broken)
            if broken
            else ("info", "chain linkage checked; signatures need the store")
        )
        label = f"{len(all_events)} events"
    events = [
        e
        for e in all_events
        if (since_ns is None or e.timestamp >= since_ns)
        and (until_ns is None or e.timestamp < until_ns)
    ]
    results = []
    for c in fw.controls:
        results.append(_evaluate(c, events, all_events, integrity))
    worst: Status = "fail" if any(r.status == "fail" for r in results) else "pass"
    return Report(
        framework=fw.name,
        title=fw.title,
        source=label,
        period_start=_iso(
            since_ns if since_ns is not None else (events[0].timestamp if events else None)
        ),
        period_end=_iso(
            until_ns if until_ns is not None else (events[-1].timestamp if events else None)
        ),
        generated_at=_iso(time.time_ns()) or "",
        total_events=len(events),
        status=worst,
        controls=results,
        events_by_type=dict(Counter(e.event_type for e in events).most_common()),
    )


def _evaluate(
    c: Control,
    events: list[AuditEvent],
    all_events: list[AuditEvent],
    integrity: tuple[Status, str],
) -> ControlResult:
    matched = [e for e in events if _match(e.event_type, c.event_types)]
    by_type = dict(Counter(e.event_type for e in matched).most_common())
    by_agent = dict(Counter(e.agent_id for e in matched).most_common())
    status: Status = "pass"
    if c.check == "integrity":
        status, detail = integrity
        return ControlResult(
            id=c.id, title=c.title, check=c.check, status=status, events=len(events), detail=detail
        )
    if c.check == "retention":
        if not all_events:
            return ControlResult(
                id=c.id,
                title=c.title,
                check=c.check,
                status="info",
                events=0,
                detail="no events yet",
            )
        first = all_events[0]
        days = (all_events[-1].timestamp - first.timestamp) / 86_400e9
        want = c.retention_days
        intact = first.sequence == 0
        status = "pass" if intact else "fail"
        detail = (
            f"trail holds events since {_iso(first.timestamp)} ({days:.1f} days)"
            + (f"; required retention {want} days" if want else "")
            + ("" if intact else f"; events before sequence {first.sequence} are gone")
        )
        return ControlResult(
            id=c.id,
            title=c.title,
            check=c.check,
            status=status,
            events=len(all_events),
            detail=detail,
        )
    if c.check == "key_use":
        keys = Counter(e.key_id for e in events)
        status = "pass" if len(keys) <= 1 else "fail"
        detail = (f"signed by key(s) {dict(keys)}" if keys else "no events in the period") + (
            f"; {len(matched)} key management events" if c.event_types else ""
        )
        return ControlResult(
            id=c.id,
            title=c.title,
            check=c.check,
            status=status,
            events=len(matched),
            detail=detail,
            by_type=by_type,
        )
    n = len(matched)
    if n < c.min_events or (c.max_events is not None and n > c.max_events):
        status = "fail"
    bounds = f" (expected >= {c.min_events}" + (
        f" and <= {c.max_events})" if c.max_events is not None else ")"
    )
    what = "denials" if c.check == "denials" else "events"
    detail = f"{n} {what} matching {c.event_types}" + (bounds if status == "fail" else "")
    return ControlResult(
        id=c.id,
        title=c.title,
        check=c.check,
        status=status,
        events=n,
        detail=detail,
        by_type=by_type,
        by_agent=by_agent,
    )


# ----------------------------------------------------------------------- output
def _markdown(r: Report) -> str:
    lines = [
        f"# {r.title}",
        "",
        f"- Framework: `{r.framework}`  ",
        f"- Source: `{r.source}`  ",
        f"- Period: {r.period_start or '-'} to {r.period_end or '-'}  ",
        f"- Generated: {r.generated_at}  ",
        f"- Events in period: {r.total_events}  ",
        f"- Overall: **{r.status.upper()}**",
        "",
        "| Control | Title | Check | Status | Events | Detail |",
        "|---|---|---|---|---|---|",
    ]
    for c in r.controls:
        detail = c.detail.replace("|", "\\|")
        lines.append(
            f"| {c.id} | {c.title} | {c.check} | {c.status.upper()} | {c.events} | {detail} |"
        )
    if r.events_by_type:
        lines += ["", "## Events by type", "", "| Type | Count |", "|---|---|"]
        lines += [f"| {t} | {n} |" for t, n in r.events_by_type.items()]
    return "\n".join(lines) + "\n"


def _svg_chart(r: Report) -> str:
    bars = [(c.id, c.events, c.status) for c in r.controls]
    w, bar_h, gap, label_w = 640, 22, 8, 170
    h = len(bars) * (bar_h + gap) + gap
    top = max([n for _, n, _ in bars] + [1])
    colors = {"pass": "#2e7d32", "fail": "#c62828", "info": "#1565c0"}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
        f'aria-label="events per control">'
    ]
    for i, (label, n, status) in enumerate(bars):
        y = gap + i * (bar_h + gap)
        bw = int((w - label_w - 60) * n / top)
        font = 'font-size="12" font-family="sans-serif"'
        parts.append(f'<text x="0" y="{y + 15}" {font}>{html.escape(label)}</text>')
        parts.append(
            f'<rect x="{label_w}" y="{y}" width="{max(bw, 1)}" height="{bar_h}" '
            f'fill="{colors[status]}"/>'
        )
        parts.append(f'<text x="{label_w + bw + 6}" y="{y + 15}" {font}>{n}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _html(r: Report) -> str:
    e = html.escape
    rows = "".join(
        f'<tr class="{c.status}"><td>{e(c.id)}</td><td>{e(c.title)}</td><td>{c.check}</td>'
        f"<td>{c.status.upper()}</td><td>{c.events}</td><td>{e(c.detail)}</td></tr>"
        for c in r.controls
    )
    types = "".join(f"<tr><td>{e(t)}</td><td>{n}</td></tr>" for t, n in r.events_by_type.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(r.title)}</title>
<style>
body{{font-family:sans-serif;margin:2em;max-width:60em}}
table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}
tr.fail td{{background:#fdecea}} tr.pass td:nth-child(4){{color:#2e7d32}}
tr.fail td:nth-child(4){{color:#c62828;font-weight:bold}}
</style></head><body>
<h1>{e(r.title)}</h1>
<p>Framework <code>{e(r.framework)}</code> &middot; source <code>{e(r.source)}</code><br>
Period {e(r.period_start or "-")} to {e(r.period_end or "-")}
&middot; generated {e(r.generated_at)}<br>
Events in period: {r.total_events} &middot; overall: <strong>{r.status.upper()}</strong></p>
<h2>Events per control</h2>
{_svg_chart(r)}
<h2>Controls</h2>
<table><tr><th>Control</th><th>Title</th><th>Check</th><th>Status</th><th>Events</th><th>Detail</th></tr>
{rows}</table>
<h2>Events by type</h2>
<table><tr><th>Type</th><th>Count</th></tr>{types}</table>
</body></html>
"""


def render(
    path_or_events: Union[str, os.PathLike[str], Iterable[AuditEvent]],
    framework: Union[str, Framework],
    fmt: Format = "markdown",
    *,
    since: Optional[TimeLike] = None,
    until: Optional[TimeLike] = None,
    frameworks_file: Optional[Union[str, os.PathLike[str]]] = None,
) -> str:
    """A compliance report as Markdown, HTML or JSON text."""
    if fmt not in ("markdown", "html", "json"):
        raise InvalidArgument(
            f"unknown report format {fmt!r}; use markdown, html or json",
            argument="fmt",
            expected="markdown | html | json",
            got=fmt,
        )
    r = build(path_or_events, framework, since=since, until=until, frameworks_file=frameworks_file)
    return _format(r, fmt)


def _format(r: Report, fmt: Format) -> str:
    if fmt == "json":
        return msgspec.json.format(msgspec.json.encode(r), indent=2).decode() + "\n"
    return _markdown(r) if fmt == "markdown" else _html(r)
