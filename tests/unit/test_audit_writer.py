"""AuditLog's write path: group commit, per-batch wake-ups, the deadline watchdog,
cancellation, and record() from other threads."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest

from symbi.audit import AuditEvent, AuditLog, query_dir, verify_dir
from symbi.errors import RequestTimeout

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # trio is not a dependency (see tests/conftest.py)


async def _occupy_threads(tg: anyio.abc.TaskGroup, release: threading.Event) -> None:
    """Take every token of anyio's worker-thread limiter, so that no batch reaches the
    store (as if the disk hung) until ``release`` is set."""
    limiter = anyio.to_thread.current_default_thread_limiter()
    for _ in range(int(limiter.total_tokens)):
        tg.start_soon(anyio.to_thread.run_sync, release.wait, 30.0)
    while limiter.available_tokens:
        await anyio.sleep(0.001)


async def test_returned_events_equal_stored_ones(tmp_path: Path) -> None:
    got: list[AuditEvent] = []
    async with AuditLog(tmp_path, checkpoint_every=50) as log:

        async def worker(w: int) -> None:
            for i in range(25):
                got.append(await log.append(f"w{w}", "eq.test", {"i": i, "w": w, "t": (1, 2)}))
                if i % 5 == 0:
                    log.record("eq.record", f"w{w}", {"i": i})

        async with anyio.create_task_group() as tg:
            for w in range(40):
                tg.start_soon(worker, w)
        await log.flush()
        assert log.backlog == 0
    stored = {e.sequence: e for e in query_dir(tmp_path)}
    assert sorted(stored) == list(range(1000 + 200))
    assert all(stored[e.sequence] == e for e in got)
    assert got[0].details["t"] == [1, 2]
    assert verify_dir(tmp_path).events == 1200


async def test_timed_out_append_is_still_written_once(tmp_path: Path) -> None:
    release = threading.Event()
    async with AuditLog(tmp_path) as log, anyio.create_task_group() as tg:
        await _occupy_threads(tg, release)
        results: dict[str, object] = {}

        async def append(name: str, timeout: float) -> None:
            try:
                results[name] = await log.append("a", name, timeout=timeout)
            except RequestTimeout as e:
                results[name] = e

        with anyio.fail_after(10):
            async with anyio.create_task_group() as inner:
                inner.start_soon(append, "short", 0.05)
                inner.start_soon(append, "long", 20.0)
                # The watchdog wakes the short waiter; the long one keeps waiting.
                while "short" not in results:
                    await anyio.sleep(0.01)
                assert isinstance(results["short"], RequestTimeout)
                assert "long" not in results
                release.set()
        assert isinstance(results["long"], AuditEvent)
    types = [e.event_type for e in query_dir(tmp_path)]
    assert sorted(types) == ["long", "short"]


async def test_cancelled_append_is_written_once_and_not_duplicated(tmp_path: Path) -> None:
    release = threading.Event()
    async with AuditLog(tmp_path) as log, anyio.create_task_group() as tg:
        await _occupy_threads(tg, release)
        with anyio.move_on_after(0.05) as scope:
            await log.append("a", "cancelled", {"n": 1}, timeout=None)
        assert scope.cancelled_caught
        release.set()
        ev = await log.append("a", "after", timeout=10)
        await log.flush(timeout=10)
    evs = query_dir(tmp_path)
    assert [e.event_type for e in evs] == ["cancelled", "after"]
    assert ev.sequence == 1 and ev.prev_hash == evs[0].chain_hash
    assert verify_dir(tmp_path).events == 2


async def test_flush_times_out_while_stuck_then_succeeds(tmp_path: Path) -> None:
    release = threading.Event()
    async with AuditLog(tmp_path) as log, anyio.create_task_group() as tg:
        await _occupy_threads(tg, release)
        log.record("stuck", "a", {})
        with pytest.raises(RequestTimeout):
            await log.flush(timeout=0.05)
        release.set()
        await log.flush(timeout=10)
        assert log.backlog == 0
    assert [e.event_type for e in query_dir(tmp_path)] == ["stuck"]


async def test_record_from_other_threads_wakes_the_writer() -> None:
    async with AuditLog(None) as log:
        got: list[AuditEvent] = []

        async def consume() -> None:
            async for ev in log.stream(type="thread", timeout=5.0):
                got.append(ev)
                if len(got) == 200:
                    return

        def produce(k: int) -> None:
            for i in range(50):
                log.record("thread", f"t{k}", {"i": i})

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.sleep(0.01)
            # No append, no flush on the loop: only the threads' wake-ups move the writer.
            threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                await anyio.to_thread.run_sync(t.join)
        assert len(got) == 200
        assert sorted((e.agent_id, e.details["i"]) for e in got) == sorted(
            (f"t{k}", i) for k in range(4) for i in range(50)
        )
        assert [e.sequence for e in got] == list(range(200))


async def test_many_appenders_share_few_commits() -> None:
    async with AuditLog(None) as log:

        async def worker(w: int) -> None:
            for _ in range(10):
                await log.append(f"w{w}", "t", timeout=10)

        async with anyio.create_task_group() as tg:
            for w in range(100):
                tg.start_soon(worker, w)
        assert log.next_sequence == 1000
        assert log._batches <= 200  # group commit: a batch per round, not per append
        assert log.verify().events == 1000


async def test_cancelled_writer_leaves_nothing_unwritten(tmp_path: Path) -> None:
    release = threading.Event()
    log = AuditLog(tmp_path)
    async with anyio.create_task_group() as outer:
        async with anyio.create_task_group() as tg:
            await log.start(tg)
            await log.append("a", "first")
            await _occupy_threads(outer, release)
            log.record("stuck", "a", {"n": 1})
            await anyio.sleep(0.02)  # handed to a commit task, which waits for a thread
            tg.cancel_scope.cancel()  # a hard shutdown: writer and commit task cancelled
        release.set()
    await log.stop()
    assert [e.event_type for e in query_dir(tmp_path)] == ["first", "stuck"]
    assert verify_dir(tmp_path).events == 2
