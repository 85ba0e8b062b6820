"""Compliance reports: built-in and custom frameworks, in Markdown, HTML and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from symbi.audit import AuditLog, query_dir
from symbi.audit.reports import BUILTIN_FRAMEWORKS, build, load_frameworks, render
from symbi.errors import InvalidArgument


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    async def write() -> None:
        async with AuditLog(tmp_path / "t") as log:
            await log.append("nurse-1", "data.read", {"record": "patient-7"})
            await log.append("nurse-1", "phi.export", {"to": "lab"})
            await log.append("bot-2", "policy.deny", {"action": "network_access"})
            await log.append("admin", "policy.register", {"id": "p1"})

    anyio.run(write)
    return tmp_path / "t"


@pytest.mark.parametrize("fw", sorted(BUILTIN_FRAMEWORKS))
def test_builtin_frameworks_render_all_formats(trail: Path, fw: str) -> None:
    md = render(trail, fw, "markdown")
    assert BUILTIN_FRAMEWORKS[fw].title in md and "PASS" in md
    page = render(trail, fw, "html")
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "<script" not in page
    data = json.loads(render(trail, fw, "json"))
    assert data["framework"] == fw and data["total_events"] == 4
    assert {c["id"] for c in data["controls"]} == {c.id for c in BUILTIN_FRAMEWORKS[fw].controls}


def test_hipaa_maps_events_to_controls(trail: Path) -> None:
    r = build(trail, "hipaa")
    by = {c.id: c for c in r.controls}
    assert by["164.312(a)(1)"].events == 2  # data.read + phi.export
    assert by["164.308(a)(1)(ii)(D)"].by_agent == {"bot-2": 1}
    assert by["164.312(b)"].status == "pass"
    assert by["164.316(b)(2)(i)"].status == "pass"


def test_tampered_trail_fails_integrity(trail: Path) -> None:
    seg = next(trail.glob("*.seg"))
    buf = bytearray(seg.read_bytes())
    buf[40] ^= 1
    seg.write_bytes(bytes(buf))
    r = build(trail, "sox")
    assert r.status == "fail"
    assert next(c for c in r.controls if c.check == "integrity").status == "fail"


def test_custom_framework_from_toml(trail: Path, tmp_path: Path) -> None:
    f = tmp_path / "fw.toml"
    f.write_text(
        """
[frameworks.acme]
title = "ACME controls"
[[frameworks.acme.controls]]
id = "AC-1"
title = "Exports are logged"
check = "events"
event_types = ["phi.export"]
min_events = 2
"""
    )
    assert "acme" in load_frameworks(f)
    r = build(trail, "acme", frameworks_file=f)
    assert r.controls[0].events == 1 and r.controls[0].status == "fail"


def test_events_input_and_period(trail: Path) -> None:
    evs = query_dir(trail)
    r = build(evs, "gdpr", since=(evs[1].timestamp + evs[2].timestamp) / 2e9)
    assert r.total_events == 2
    assert "chain linkage" in next(c for c in r.controls if c.check == "integrity").detail


def test_bad_inputs(trail: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        render(trail, "nope")
    with pytest.raises(InvalidArgument):
        render(trail, "hipaa", "pdf")  # type: ignore[arg-type]
    bad = tmp_path / "bad.toml"
    bad.write_text("[frameworks.x]\ntitle = 1\n")
    with pytest.raises(InvalidArgument):
        load_frameworks(bad)


def test_knowledge_access_counts_as_recorded_access(tmp_path: Path) -> None:
    async def write() -> None:
        async with AuditLog(tmp_path / "k") as log:
            for t in ("knowledge.read", "knowledge.write", "knowledge.delete", "knowledge.denied"):
                await log.append("agent-1", t, {"collection": "patients"})

    anyio.run(write)
    for fw, control in (("hipaa", "164.312(a)(1)"), ("gdpr", "Art. 30")):
        c = next(c for c in build(tmp_path / "k", fw).controls if c.id == control)
        assert c.by_type == {"knowledge.read": 1, "knowledge.write": 1, "knowledge.delete": 1}


@pytest.mark.parametrize("order", [[0, 2, 1, 3], [0, 1, 3], [1, 1, 2], [3, 2, 1, 0]])
def test_event_list_must_be_in_order_without_gaps(trail: Path, order: list[int]) -> None:
    evs = query_dir(trail)
    integrity = [
        c for c in build([evs[i] for i in order], "sox").controls if c.check == "integrity"
    ]
    assert integrity[0].status == "fail", integrity[0].detail
    assert "query_dir" in integrity[0].detail
    whole = next(c for c in build(evs, "sox").controls if c.check == "integrity")
    assert whole.status == "info"
