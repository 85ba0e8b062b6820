"""Agent memory: the four kinds, retention, policy-checked sharing, persistence, the
cache bound, visibility of writes, and bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

import symbi
from symbi.context import ContextManager
from symbi.errors import (
    ContextStoreError,
    InvalidArgument,
    PolicyDenied,
    ResourceLimitExceeded,
    RuntimeStateError,
)

pytestmark = pytest.mark.anyio

SHARING_POLICY = """
policy team_knowledge {
    allow: [read_knowledge, write_knowledge] if resource == "team"
    allow: [read_knowledge] if resource == "public"
}
"""


class Sink:
    """An AuditSink that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def record(self, event_type: str, agent_id: str, details: dict[str, Any]) -> None:
        self.events.append((event_type, agent_id, details))

    def types(self) -> list[str]:
        return [e[0] for e in self.events]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def policy() -> symbi.PolicyEngine:
    pe = symbi.PolicyEngine(enforce_policies=True)
    pe.register(SHARING_POLICY)
    return pe


async def test_long_term_is_private_ranked_and_immediately_visible(tmp_path: Path):
    async with ContextManager(path=tmp_path, dim=128) as cm:
        a = await cm.store_context("alice", "The audit trail is signed and hash chained")
        await cm.store_context("alice", "Sandboxes isolate untrusted code")
        await cm.store_context("bob", "Bob's audit notes are private to bob")
        # Visible to the very next search: no background indexing delay.
        hits = await cm.retrieve_context("alice", "hash chained audit trail", k=5)
        assert hits[0].id == a and hits[0].kind == "long_term"
        assert hits[0].score is not None and hits[0].score > hits[-1].score - 1e-9
        assert all(h.agent_id == "alice" for h in hits)  # bob's memory is not visible
        bobs = await cm.retrieve_context("bob", "audit notes")
        assert bobs[0].id.startswith("lt:")


async def test_visible_within_10ms_while_writes_continue(tmp_path: Path):
    """A write is found by a search started right after it returns, while other writes
    keep arriving (the seed's 10 ms visibility bound, met with 0 ms)."""
    async with ContextManager(path=tmp_path, dim=128) as cm:

        async def writer() -> None:
            for i in range(50):
                await cm.store_context("w", f"background filler item number {i}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            for i in range(10):
                cid = await cm.store_context("a", f"unique marker zebra{i} quokka{i}")
                got = await cm.retrieve_context("a", f"zebra{i} quokka{i}", k=1)
                assert got[0].id == cid


async def test_short_term_window_is_bounded():
    async with ContextManager(dim=64, short_term_window=3) as cm:
        ids = [
            await cm.store_context("a", f"note {i} about apples", kind="short_term")
            for i in range(5)
        ]
        got = await cm.retrieve_context("a", "apples note", k=10, kinds=["short_term"])
        assert {g.id for g in got} == set(ids[-3:])
        assert all(g.kind == "short_term" for g in got)


async def test_working_memory_lives_and_dies_with_its_task():
    async with ContextManager(dim=64, max_working_items=2) as cm:
        async with cm.task("a") as task:
            await cm.store_context(
                "a", "scratch: draft plan for migration", kind="working", task_id=task
            )
            got = await cm.retrieve_context("a", "draft plan", kinds=["working"])
            assert [g.task_id for g in got] == [task]
            await cm.store_context("a", "second scratch", kind="working", task_id=task)
            with pytest.raises(ResourceLimitExceeded) as ei:
                await cm.store_context("a", "third scratch", kind="working", task_id=task)
            assert ei.value.resource == "working_memory"
        assert await cm.retrieve_context("a", "draft plan", kinds=["working"]) == []
        # Explicit begin/end, and working memory without an open task is refused.
        t = cm.begin_task("a", "t1")
        await cm.store_context("a", "x marks the spot", kind="working", task_id=t)
        assert cm.end_task("a", t) == 1
        with pytest.raises(InvalidArgument, match="begin_task"):
            await cm.store_context("a", "orphan", kind="working", task_id=t)
        with pytest.raises(InvalidArgument):
            cm.end_task("a", t)


async def test_retention_hides_then_housekeeping_deletes(tmp_path: Path):
    clock = Clock()
    async with ContextManager(path=tmp_path, dim=64, retention_days=2, clock=clock) as cm:
        old = await cm.store_context("a", "old fact about kiwis")
        clock.now += 1.5 * 86_400
        new = await cm.store_context("a", "new fact about kiwis")
        assert {h.id for h in await cm.retrieve_context("a", "kiwis fact")} == {old, new}
        clock.now += 1 * 86_400  # old is 2.5 days old: expired, new is 1 day old
        assert [h.id for h in await cm.retrieve_context("a", "kiwis fact")] == [new]
        assert (await cm.stats()).long_term == 2  # hidden, not yet deleted
        assert await cm.housekeep() == 1
        assert (await cm.stats()).long_term == 1
    async with ContextManager(path=tmp_path, dim=64, retention_days=0, clock=clock) as cm:
        keep = await cm.store_context("a", "kept forever")
        clock.now += 10_000 * 86_400
        # The current retention (0: forever) applies to what was stored before too.
        assert await cm.housekeep() == 0
        assert {h.id for h in await cm.retrieve_context("a", "kept forever")} == {keep, new}


async def test_housekeeper_runs_expiry_and_saves_the_index(tmp_path: Path):
    clock = Clock()
    hk = symbi.Housekeeper(0.05)
    cm = ContextManager(
        path=tmp_path,
        dim=64,
        retention_days=1,
        clock=clock,
        housekeeper=hk,
        index_flush_interval_s=0.01,
    )
    async with cm:  # as a component outside a runtime: start, stop, housekeeping
        await cm.store_context("a", "ephemeral fact")
        await cm.store_context("a", "second fact")
        clock.now += 2 * 86_400
        await anyio.sleep(0.02)
        await hk.run_once()
        st = await cm.stats()
        assert (st.long_term, st.expired) == (0, 2)
        for _ in range(100):  # the index save runs in the background
            if (tmp_path / "index" / "symbi-store-marker").exists():
                break
            await anyio.sleep(0.02)
        assert (tmp_path / "index" / "symbi-store-marker").exists()
        assert cm.health().status == "ok"
    assert "context" not in hk._tasks


async def test_shared_knowledge_is_policy_checked_and_audited():
    sink = Sink()
    async with ContextManager(dim=128, policy=policy(), audit=sink) as cm:
        kid = await cm.share_knowledge(
            "alice", "Deploys happen on Tuesdays", collection="team", metadata={"team": "ops"}
        )
        found = await cm.search_knowledge("bob", "when do deploys happen", collection="team")
        assert [f.id for f in found] == [kid]
        assert found[0].source_agent == "alice" and found[0].metadata == {"team": "ops"}
        # Shared items are not part of anyone's private memory.
        assert await cm.retrieve_context("alice", "deploys Tuesdays") == []
        assert sink.types() == ["knowledge.write", "knowledge.read"]
        assert sink.events[1][2]["ids"] == [kid]

        with pytest.raises(PolicyDenied) as ei:
            await cm.share_knowledge("mallory", "fake news", collection="public")
        assert ei.value.request.action == "write_knowledge"
        with pytest.raises(PolicyDenied):
            await cm.search_knowledge("mallory", "secrets", collection="hr")
        assert sink.types()[-2:] == ["knowledge.denied", "knowledge.denied"]
        assert sink.events[-1][1:] == (
            "mallory",
            {
                "action": "read_knowledge",
                "collection": "hr",
                "reason": sink.events[-1][2]["reason"],
            },
        )
        assert (await cm.stats()).shared == 1  # the denied write stored nothing


async def test_without_a_policy_engine_sharing_is_denied():
    async with ContextManager(dim=64) as cm:
        with pytest.raises(PolicyDenied):
            await cm.share_knowledge("a", "x y z")
        with pytest.raises(PolicyDenied):
            await cm.search_knowledge("a", "x y z")


async def test_policy_denials_reach_the_runtime_audit_log(tmp_path: Path):
    cfg = symbi.Config()
    async with symbi.Runtime(cfg) as rt:
        cm = ContextManager.from_config(cfg, policy=rt.policy, audit=rt.audit, path=tmp_path)
        async with cm:
            with pytest.raises(PolicyDenied):
                await cm.search_knowledge("agent-x", "anything", collection="secret")
        assert rt.audit is not None
        await rt.audit.flush()
        kinds = {e.event_type for e in rt.audit.query(agent="agent-x")}
        assert {"policy.denied", "knowledge.denied"} <= kinds


async def test_persistence_after_reopen(tmp_path: Path):
    sink = Sink()
    async with ContextManager(path=tmp_path, dim=128, policy=policy(), audit=sink) as cm:
        lt = await cm.store_context("a", "persistent memory of the ocean", metadata={"n": 1})
        sh = await cm.share_knowledge("a", "shared memory of mountains", collection="team")
    async with ContextManager(path=tmp_path, dim=128, policy=policy(), audit=sink) as cm:
        st = await cm.stats()
        assert (st.long_term, st.shared, st.rebuilt_index) == (1, 1, False)
        got = await cm.retrieve_context("a", "ocean memory")
        assert got[0].id == lt and got[0].metadata == {"n": 1}
        assert (await cm.search_knowledge("b", "mountains", collection="team"))[0].id == sh
        assert await cm.forget("a", lt) is True
        assert await cm.forget("a", lt) is False


# Stores one item, saves the index (housekeep), then keeps storing until it is killed,
# printing "<id>\t<content>" once each write has returned.
CRASH_WRITER = r"""
import sys, anyio
from symbi.context import ContextManager

async def main(path):
    cm = ContextManager(path=path, dim=64)
    await cm.open()
    text = "flushed item alpha"
    print(await cm.store_context("a", text), text, sep="\t", flush=True)
    await cm.housekeep()  # saves the index with the current epoch
    i = 0
    while True:
        text = f"unflushed item beta {i}"
        print(await cm.store_context("a", text), text, sep="\t", flush=True)
        i += 1

anyio.run(main, sys.argv[1])
"""


def _write_then_kill_9(path: Path, acks: int) -> dict[str, str]:
    """Run CRASH_WRITER until it acknowledged ``acks`` writes, SIGKILL it mid-stream, and
    return every acknowledged {id: content}."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    watchdog = threading.Timer(120, proc.kill)  # a hung writer fails the test, not hangs it
    watchdog.start()
    acked: dict[str, str] = {}

    def take(line: str) -> None:
        if line.endswith("\n"):
            cid, text = line[:-1].split("\t")
            acked[cid] = text

    try:
        assert proc.stdout is not None
        while len(acked) < acks:
            line = proc.stdout.readline()
            if not line:
                break
            take(line)
        os.kill(proc.pid, signal.SIGKILL)
        for line in proc.stdout.read().splitlines(keepends=True):
            take(line)  # acknowledged before the kill landed
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return acked


async def test_index_is_rebuilt_after_a_crash_lost_its_unsaved_writes(tmp_path: Path):
    acked = _write_then_kill_9(tmp_path, 30)
    assert len(acked) >= 30, f"the writer acknowledged only {len(acked)} writes"
    async with ContextManager(path=tmp_path, dim=64) as cm:
        st = await cm.stats()
        # The saved index predates the writes after housekeep(): rebuilt from SQLite.
        assert st.rebuilt_index
        assert len(acked) <= st.long_term <= len(acked) + 1  # + the write in flight
        found = {x.id: x.content for x in await cm.retrieve_context("a", "item", k=1000)}
        assert acked.items() <= found.items()
        last = list(acked)[-1]
        assert (await cm.retrieve_context("a", acked[last], k=1))[0].id == last


async def test_cache_is_bounded_in_bytes():
    async with ContextManager(dim=64, cache_bytes=4_000) as cm:
        for i in range(40):
            await cm.store_context("a", f"item {i} " + "lorem ipsum " * 10)
        st = (await cm.stats()).cache
        assert st.bytes <= 4_000 and st.evictions > 0 and st.entries < 40
        # Evicted items are read back from SQLite.
        assert len(await cm.retrieve_context("a", "item 0 lorem", k=5)) == 5


async def test_from_config_honours_context_settings(tmp_path: Path):
    cfg = symbi.Config.from_dict(
        {
            "context": {
                "embedding_dimension": 96,
                "context_cache_size": "2KB",
                "knowledge_retention_days": 7,
            }
        }
    )
    cm = ContextManager.from_config(cfg, policy=None, audit=None, path=tmp_path)
    assert (cm.dim, cm.cache.capacity_bytes, cm.retention_days) == (96, 2000, 7)
    # The runtime builds its own manager from the same settings.
    cfg = cfg.replace(context=msgspec.structs.replace(cfg.context, storage_path=str(tmp_path)))
    async with symbi.Runtime(cfg) as rt:
        cm = rt.context
        assert (cm.dim, cm.cache.capacity_bytes, cm.retention_days) == (96, 2000, 7)
        assert rt.health().components["context"].status == "ok"
        await cm.store_context("a", "component mode works")
    assert cm.health().status == "down"
    with pytest.raises(RuntimeStateError):
        await cm.store_context("a", "after stop")


async def test_bad_input_is_typed():
    async with ContextManager(dim=64) as cm:
        cases = [
            (cm.store_context("", "x"), "agent_id"),
            (cm.store_context("a", ""), "context"),
            (cm.store_context("a", 42), "context"),  # type: ignore[arg-type]
            (cm.store_context("a", "x", kind="forever"), "kind"),
            (cm.store_context("a", "x", metadata={"_kind": "shared"}), "metadata"),
            (cm.store_context("a", "x", metadata={"f": object()}), "metadata"),
            (cm.store_context("a", "!!!"), "contexts"),
            (cm.retrieve_context("a", "x", k=0), "k"),
            (cm.retrieve_context("a", "x", filter={"_agent": "b"}), "filter"),
            (cm.retrieve_context("a", "x", kinds=["shared"]), "kinds"),
            (cm.search_knowledge("a", "x", collection="no spaces"), "collection"),
            (cm.forget("a", "nonsense"), "context_id"),
            (cm.retrieve_context("a", "x", timeout=0), "timeout"),
        ]
        for coro, argument in cases:
            with pytest.raises(InvalidArgument) as ei:
                await coro
            assert ei.value.argument == argument, argument
    with pytest.raises(InvalidArgument):
        ContextManager(dim=64, embedder=symbi.embed.HashingEmbedder(32))
    with pytest.raises(RuntimeStateError):
        await ContextManager(dim=64).store_context("a", "not opened")


async def test_unwritable_directory_is_a_store_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ContextStoreError) as ei:
        await ContextManager(path=blocker / "sub", dim=64).open()
    assert "file" in (ei.value.path or "")


async def test_agent_memory_binds_the_agent():
    async with ContextManager(dim=64, policy=policy()) as cm:
        mem = cm.for_agent("alice")
        cid = await mem.store("alice remembers the lighthouse")
        assert [x.id for x in await mem.search("lighthouse")] == [cid]
        assert await cm.for_agent("bob").search("lighthouse") == []
        async with mem.task() as t:
            await mem.store("scratch lighthouse notes", kind="working", task_id=t)
            assert len(await mem.search("lighthouse notes", kinds=["working"])) == 1
        kid = await mem.share("team lighthouse fact", collection="team")
        assert [x.id for x in await mem.search_knowledge("lighthouse", collection="team")] == [kid]
        with pytest.raises(InvalidArgument):
            cm.for_agent("")
