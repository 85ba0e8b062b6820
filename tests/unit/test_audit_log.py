"""AuditLog: durable appends, queries, live streams, verification and inclusion proofs."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timezone
from pathlib import Path

import anyio
import pytest

import symbi
from symbi.audit import (
    AuditEvent,
    AuditLog,
    AuditSink,
    query_dir,
    verify_dir,
    verify_inclusion,
)
from symbi.errors import (
    AuditIntegrityError,
    AuditStorageError,
    InvalidArgument,
    RequestTimeout,
    RuntimeStateError,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_append_returns_a_signed_chained_event(tmp_path: Path) -> None:
    async with AuditLog(tmp_path) as log:
        a = await log.append("agent-1", "data.read", {"table": "patients", "rows": 3})
        b = await log.append("agent-2", "policy.deny", {"reason": "no"})
    assert isinstance(a, AuditEvent)
    assert (a.sequence, b.sequence) == (0, 1)
    assert a.prev_hash == bytes(32) and b.prev_hash == a.chain_hash
    assert len(a.signature) == 64 and len(a.key_id) == 16
    assert a.details == {"table": "patients", "rows": 3}
    assert len(a.event_id) == 36 and a.event_id[14] == "4"  # uuid4
    assert abs(a.time - datetime.now(timezone.utc).timestamp()) < 60
    rep = verify_dir(tmp_path)
    assert rep.events == 2 and rep.head == b.chain_hash


async def test_key_files_private_and_reused(tmp_path: Path) -> None:
    async with AuditLog(tmp_path) as log:
        await log.append("a", "t")
        pk = log.public_key
    assert stat.S_IMODE(os.stat(tmp_path / "audit.key").st_mode) == 0o600
    assert (tmp_path / "audit.pub").read_bytes() == pk
    async with AuditLog(tmp_path) as log:
        assert log.public_key == pk
        assert (await log.append("a", "t")).sequence == 1
    os.chmod(tmp_path / "audit.key", 0o644)
    with pytest.raises(symbi.errors.ComponentError):
        async with symbi.Runtime(
            symbi.Config.from_dict({"security": {"audit_storage": str(tmp_path)}})
        ):
            pass
    with pytest.raises(AuditStorageError, match="chmod 600"):
        AuditLog(tmp_path).query()


async def test_recorded_events_are_durable_after_stop(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    assert isinstance(log, AuditSink)
    async with anyio.create_task_group() as tg:
        await log.start(tg)
        for i in range(50):
            log.record("policy.deny", f"agent-{i % 2}", {"i": i})
        await log.stop()
    evs = query_dir(tmp_path)
    assert [e.details["i"] for e in evs] == list(range(50))
    with pytest.raises(RuntimeStateError):
        log.record("x", "y", {})


async def test_record_before_start_is_flushed_by_stop(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.record("boot", "runtime", {})
    await log.stop()
    assert [e.event_type for e in query_dir(tmp_path)] == ["boot"]


async def test_concurrent_appends_share_batches(tmp_path: Path) -> None:
    async with AuditLog(tmp_path, checkpoint_every=64) as log:

        async def worker(i: int) -> None:
            for j in range(20):
                await log.append(f"a{i}", "load", {"j": j})

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(worker, i)
        # Group commit: the 50 appenders' events of a round share one batch (20 rounds,
        # set by the event loop's order, not by timing); allow rounds split in two and more.
        assert log._batches <= 50
        rep = log.verify()
    assert rep.events == 1000 and rep.checkpoints >= 1000 // 64
    seqs = [e.sequence for e in query_dir(tmp_path)]
    assert seqs == list(range(1000))


async def test_query_filters(tmp_path: Path) -> None:
    async with AuditLog(tmp_path) as log:
        for i in range(30):
            await log.append(f"agent-{i % 3}", "even" if i % 2 == 0 else "odd", {"i": i})
        mid = log.query(after=14, limit=1)[0]
        got = log.query(agent="agent-1", type="odd")
        assert [e.details["i"] for e in got] == [1, 7, 13, 19, 25]
        assert [e.sequence for e in log.query(after=25)] == [26, 27, 28, 29]
        assert len(log.query(limit=4)) == 4
        assert log.query(since=mid.time - 1e-3, limit=1)[0].sequence <= 15
        assert log.query(until=0.0) == []
        assert len(log.query(since=datetime(2000, 1, 1))) == 30
        with pytest.raises(InvalidArgument):
            log.query(limit=-1)
        with pytest.raises(InvalidArgument):
            log.query(since="yesterday")  # type: ignore[arg-type]
    assert [e.sequence for e in query_dir(tmp_path, agent="agent-2", limit=2)] == [2, 5]


async def test_stream_follows_live_events_with_filter() -> None:
    async with AuditLog(None) as log:
        got: list[AuditEvent] = []

        async def consume() -> None:
            async for ev in log.stream(agent="b", timeout=2.0):
                got.append(ev)
                if len(got) == 3:
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.sleep(0.01)
            for i in range(6):
                await log.append("a" if i % 2 else "b", "t", {"i": i})
        assert [e.details["i"] for e in got] == [0, 2, 4]
        # A stream with nothing to deliver ends after its timeout.
        assert [e async for e in log.stream(type="nothing", timeout=0.05)] == []


async def test_in_memory_log_verifies_and_proves() -> None:
    async with AuditLog(None, checkpoint_every=8) as log:
        for i in range(21):
            await log.append("a", "t", {"i": i})
        assert log.verify().events == 21
        for seq in (0, 7, 8, 20):
            proof = log.prove(seq)
            verify_inclusion(proof, proof.checkpoint, log.public_key)
            assert proof.event.sequence == seq
        cks = log.checkpoints()
        assert [c.size for c in cks][:2] == [8, 16]


async def test_inclusion_proof_rejects_forgeries(tmp_path: Path) -> None:
    async with AuditLog(tmp_path, checkpoint_every=4) as log:
        for i in range(10):
            await log.append("a", "t", {"i": i})
        proof = log.prove(5)
        pk = log.public_key
        other = log.prove(6)
    verify_inclusion(proof, proof.checkpoint, pk)
    with pytest.raises(AuditIntegrityError) as e:
        verify_inclusion(proof, proof.checkpoint, AuditLog(None).public_key)
    assert e.value.kind == "signature"
    with pytest.raises(InvalidArgument):
        verify_inclusion(proof, proof.checkpoint, b"short")
    forged = type(proof)(
        **{
            **{f: getattr(proof, f) for f in proof.__struct_fields__},
            "path": list(reversed(proof.path)),
        }
    )
    with pytest.raises(AuditIntegrityError) as e:
        verify_inclusion(forged, proof.checkpoint, pk)
    assert (e.value.kind, e.value.sequence) == ("inclusion", 5)
    swapped = type(proof)(
        **{**{f: getattr(proof, f) for f in proof.__struct_fields__}, "canonical": other.canonical}
    )
    with pytest.raises(AuditIntegrityError) as e:
        verify_inclusion(swapped, proof.checkpoint, pk)
    assert e.value.kind == "link"


async def test_append_validates_and_times_out() -> None:
    async with AuditLog(None) as log:
        with pytest.raises(InvalidArgument):
            await log.append("", "t")
        with pytest.raises(InvalidArgument):
            await log.append("a", "t", {"x": object()})
        with pytest.raises(InvalidArgument):
            await log.append("a", "t", {1: 2})  # type: ignore[dict-item]
        with pytest.raises(InvalidArgument):
            await log.append("a", "t", timeout=0)
        with pytest.raises(RequestTimeout):
            await log.append("a", "t", timeout=1e-9)
    with pytest.raises(RuntimeStateError):
        await log.append("a", "t")


async def test_runtime_wires_audit_first(tmp_path: Path) -> None:
    cfg = symbi.Config.from_dict({"security": {"audit_storage": str(tmp_path / "trail")}})
    async with symbi.Runtime(cfg) as rt:
        assert rt.audit is not None and rt.components[0] is rt.audit
        rt.audit.record("runtime.test", "rt", {"ok": True})
        assert rt.health().components["audit"].status == "ok"
    assert verify_dir(tmp_path / "trail").events >= 1
    off = symbi.Config.from_dict({"security": {"audit_enabled": False}})
    assert symbi.Runtime(off).audit is None


def test_verify_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(AuditStorageError):
        verify_dir(tmp_path / "nope")
    with pytest.raises(AuditStorageError):
        verify_dir(tmp_path)  # no audit.pub
    with pytest.raises(InvalidArgument):
        verify_dir(123)  # type: ignore[arg-type]


async def test_pinned_public_key(tmp_path: Path) -> None:
    async with AuditLog(tmp_path) as log:
        await log.append("a", "t")
        pk = log.public_key
    assert verify_dir(tmp_path, public_key=pk).events == 1
    other = AuditLog(None).public_key
    with pytest.raises(AuditIntegrityError) as e:
        verify_dir(tmp_path, public_key=other)
    assert e.value.kind == "signature"
