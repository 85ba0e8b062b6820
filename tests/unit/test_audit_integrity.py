"""Audit-trail integrity on reopen and in verification: the store never forks its trail or
destroys bytes, verification names the right problem, and time filters are exact."""

from __future__ import annotations

import gc
import shutil
import struct
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import msgspec
import pytest

from symbi.audit import AuditLog, query_dir, verify_dir, verify_inclusion
from symbi.cli.main import main
from symbi.errors import AuditIntegrityError, InvalidArgument

pytestmark = pytest.mark.anyio

SEG = "00000000000000000000.seg"


def write(path: Path, n: int, *, close: bool = True, **kw: int) -> None:
    """``n`` events; ``close=False`` leaves no closing checkpoint (as after a crash)."""

    async def go() -> None:
        log = AuditLog(path, **kw)
        if close:
            async with log:
                for i in range(n):
                    await log.append(f"a{i % 2}", "t", {"i": i})
        else:
            for i in range(n):
                await log.append(f"a{i % 2}", "t", {"i": i})  # written directly, no stop()

    anyio.run(go)


def frames(seg: Path) -> list[int]:
    buf, pos, out = seg.read_bytes(), 0, []
    while pos < len(buf):
        out.append(pos)
        pos += 8 + struct.unpack_from("<I", buf, pos)[0]
    return out


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def reopen(d: Path) -> AuditLog:
    log = AuditLog(d)
    log.query(limit=0)  # opens the store for appending
    return log


# ------------------------------------------------------------------ reopening
def test_reopen_refuses_a_trail_shorter_than_its_signed_checkpoint(tmp_path: Path) -> None:
    write(tmp_path, 6)  # closed: a signed checkpoint over 6 events
    seg = tmp_path / SEG
    seg.write_bytes(seg.read_bytes()[: frames(seg)[3] + 10])  # cut mid-record 3
    before = snapshot(tmp_path)
    with pytest.raises(AuditIntegrityError) as e:
        reopen(tmp_path)
    assert (e.value.kind, e.value.sequence) == ("missing", 3)
    assert "symbi audit verify" in str(e.value)
    assert snapshot(tmp_path) == before  # nothing cut, nothing appended
    # Read-only verification agrees, even when torn tails are allowed.
    with pytest.raises(AuditIntegrityError) as e:
        verify_dir(tmp_path, allow_torn_tail=True)
    assert (e.value.kind, e.value.sequence) == ("missing", 3)


async def test_async_with_a_refused_store_raises_the_integrity_error(tmp_path: Path) -> None:
    await anyio.to_thread.run_sync(write, tmp_path, 4)
    seg = tmp_path / SEG
    seg.write_bytes(seg.read_bytes()[: frames(seg)[2]])
    with pytest.raises(AuditIntegrityError):  # not an ExceptionGroup
        async with AuditLog(tmp_path):
            pass


def test_complete_damaged_last_record_is_corruption_not_a_torn_tail(tmp_path: Path) -> None:
    write(tmp_path, 6, close=False)
    seg = tmp_path / SEG
    buf = bytearray(seg.read_bytes())
    last = frames(seg)[-1]
    buf[(last + len(buf)) // 2] ^= 1  # a full-length frame with a bad CRC
    seg.write_bytes(bytes(buf))
    before = snapshot(tmp_path)
    with pytest.raises(AuditIntegrityError) as e:
        reopen(tmp_path)
    assert (e.value.kind, e.value.sequence) == ("corrupt", 5)
    assert snapshot(tmp_path) == before
    with pytest.raises(AuditIntegrityError) as e:
        verify_dir(tmp_path, allow_torn_tail=True)
    assert (e.value.kind, e.value.sequence) == ("corrupt", 5)


@pytest.mark.parametrize("kind", ["partial frame", "zero-filled blocks"])
def test_torn_tail_is_moved_to_a_quarantine_file(tmp_path: Path, kind: str) -> None:
    write(tmp_path, 4, close=False)
    seg = tmp_path / SEG
    buf = seg.read_bytes()
    offs = frames(seg)
    record = buf[offs[1] : offs[2]]
    tail = record[: len(record) // 2] if kind == "partial frame" else bytes(4096)
    seg.write_bytes(buf + tail)
    assert verify_dir(tmp_path, allow_torn_tail=True).events == 4
    log = reopen(tmp_path)
    rep = log.open_report
    assert rep.truncated_bytes == len(tail) and rep.truncated_file == str(seg)
    assert rep.quarantine_file == str(seg) + ".torn"
    assert Path(rep.quarantine_file).read_bytes() == tail
    assert seg.read_bytes() == buf
    assert log.next_sequence == 4


def test_missing_checkpoint_file_is_reported_and_refused(tmp_path: Path) -> None:
    write(tmp_path, 5)
    (tmp_path / "checkpoints.log").unlink()
    seg = tmp_path / SEG
    seg.write_bytes(seg.read_bytes()[: frames(seg)[-1]])  # and the last event cut off
    with pytest.raises(AuditIntegrityError) as e:
        verify_dir(tmp_path)
    assert (e.value.kind, e.value.sequence) == ("checkpoint", None)
    with pytest.raises(AuditIntegrityError) as e:
        reopen(tmp_path)
    assert e.value.kind == "checkpoint"
    assert not (tmp_path / "checkpoints.log").exists()


# --------------------------------------------------------------- verification
def test_foreign_public_key_names_event_zero(tmp_path: Path) -> None:
    write(tmp_path / "t", 40, segment_bytes=4096, checkpoint_every=0)
    write(tmp_path / "other", 1)
    shutil.copy(tmp_path / "other" / "audit.pub", tmp_path / "t" / "audit.pub")
    with pytest.raises(AuditIntegrityError) as e:
        verify_dir(tmp_path / "t")
    assert (e.value.kind, e.value.sequence) == ("signature", 0)


def test_damaged_checkpoint_file_names_no_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, 40, segment_bytes=4096, checkpoint_every=0)
    ck = tmp_path / "checkpoints.log"
    buf = bytearray(ck.read_bytes())
    buf[len(buf) // 2] ^= 1
    ck.write_bytes(bytes(buf))
    with pytest.raises(AuditIntegrityError) as e:
        verify_dir(tmp_path)
    assert (e.value.kind, e.value.sequence) == ("checkpoint", None)
    assert main(["audit", "verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "checkpoint file is damaged (checkpoint)" in out and "sequence" not in out
    # The store still opens (its events are intact), and its own verify says the same.
    log = reopen(tmp_path)
    assert log.open_report.damaged_regions == 1
    with pytest.raises(AuditIntegrityError) as e:
        log.verify()
    assert (e.value.kind, e.value.sequence) == ("checkpoint", None)


def test_checkpoint_with_a_bad_signature_names_no_event(tmp_path: Path) -> None:
    write(tmp_path, 3)
    ck = tmp_path / "checkpoints.log"
    buf = bytearray(ck.read_bytes())
    # Re-frame the checkpoint with one signature byte changed (a valid CRC).
    (n,) = struct.unpack_from("<I", buf, 0)
    body = bytearray(buf[8 : 8 + n])
    body[-1] ^= 1
    ck.write_bytes(struct.pack("<II", n, zlib.crc32(bytes(body))) + bytes(body))
    with pytest.raises(AuditIntegrityError) as e:
        verify_dir(tmp_path)
    assert (e.value.kind, e.value.sequence) == ("checkpoint", None)


def test_verify_dir_validates_its_arguments(tmp_path: Path) -> None:
    write(tmp_path, 1)
    for bad in ("key", 32):
        with pytest.raises(InvalidArgument):
            verify_dir(tmp_path, public_key=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        verify_dir(tmp_path, allow_torn_tail="yes")  # type: ignore[arg-type]


# --------------------------------------------------------------- time filters
async def test_time_filters_are_exact() -> None:
    async with AuditLog() as log:
        evs = [await log.append("a", "t", {"i": i}) for i in range(40)]
        for ev in evs:
            # Float seconds: ev.time >= since, ev.time < until, with no rounding.
            assert ev.sequence in {x.sequence for x in log.query(since=ev.time)}
            assert ev.sequence not in {x.sequence for x in log.query(until=ev.time)}
            # Int nanoseconds (ev.timestamp) are exact bounds.
            assert log.query(since=ev.timestamp)[0].timestamp >= ev.timestamp
            assert ev.sequence in {x.sequence for x in log.query(since=ev.timestamp)}
            assert ev.sequence not in {x.sequence for x in log.query(until=ev.timestamp)}
            assert [x.sequence for x in log.query(since=ev.timestamp, until=ev.timestamp + 1)] == [
                x.sequence for x in evs if x.timestamp == ev.timestamp
            ]
            # A datetime is converted with integer arithmetic.
            us = ev.timestamp // 1000
            dt = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us)
            assert ev.sequence in {x.sequence for x in log.query(since=dt)}
            after = dt + timedelta(microseconds=1)
            assert ev.sequence not in {x.sequence for x in log.query(since=after)}


def test_cli_query_takes_int_nanoseconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, 3)
    evs = query_dir(tmp_path)
    t = evs[1].timestamp
    args = ["audit", "query", str(tmp_path), "--since", str(t), "--until", str(t + 1)]
    assert main([*args, "--format", "jsonl"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line]
    assert len(rows) == sum(1 for e in evs if e.timestamp == t) >= 1
    assert f'"timestamp":{t}' in rows[0]


# ------------------------------------------------------------------- streams
async def test_stream_receives_events_appended_before_iteration_starts() -> None:
    async with AuditLog(None) as log:
        stream = log.stream(timeout=1.0)
        await log.append("a", "t", {"i": 0})
        await log.append("a", "t", {"i": 1})
        got = []
        async for ev in stream:
            got.append(ev.details["i"])
            if len(got) == 2:
                break
        assert got == [0, 1]
        await stream.aclose()
        assert log._subs == []
        # A stream dropped without iterating unsubscribes when collected.
        dropped = log.stream(agent="x")
        assert len(log._subs) == 1
        del dropped
        gc.collect()
        assert log._subs == []
        # Bad arguments fail at the call, not at the first iteration.
        with pytest.raises(InvalidArgument):
            log.stream(buffer=0)
        with pytest.raises(InvalidArgument):
            log.stream(timeout=-1)


async def test_proof_with_look_alike_event_fields_is_rejected() -> None:
    async with AuditLog(None) as log:
        for _ in range(3):
            await log.append("alice", "data.read", {"rows": 1, "ok": True})
        p, key = log.prove(1), log.public_key
    verify_inclusion(p, p.checkpoint, key)
    for change in (
        {"details": {"rows": True, "ok": True}},
        {"details": {"rows": 1.0, "ok": True}},
        {"sequence": True},
        {"agent_id": "mallory", "event_type": "nothing", "sequence": 77},
    ):
        forged = msgspec.structs.replace(p, event=msgspec.structs.replace(p.event, **change))
        with pytest.raises(AuditIntegrityError) as e:
            verify_inclusion(forged, forged.checkpoint, key)
        assert (e.value.kind, e.value.sequence) == ("link", 1), change
    with pytest.raises(InvalidArgument):
        verify_inclusion(msgspec.structs.replace(p, canonical="x"), p.checkpoint, key)  # type: ignore[arg-type]
