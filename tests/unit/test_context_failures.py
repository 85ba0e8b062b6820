"""Agent memory under failure: values the index cannot hold, a changed embedder, an open
that is timed out or cancelled, audit records tied to the writes they describe, retention
changes, filters on in-memory kinds, and working-memory batches."""

from __future__ import annotations

import random
import shutil
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import anyio
import numpy as np
import pytest

import symbi
from symbi.context import ContextManager, ContextStore
from symbi.context.cache import ByteLRU
from symbi.embed import HashingEmbedder
from symbi.errors import (
    AuditStorageError,
    ConfigError,
    ContextStoreError,
    InvalidArgument,
    ModelError,
    RequestTimeout,
    ResourceLimitExceeded,
    SymbiError,
    VectorIndexError,
)
from symbi.vector import EmbeddedVectorStore, VectorIndex

pytestmark = pytest.mark.anyio

POLICY = "policy p { allow: [read_knowledge, write_knowledge] if resource == 'team' }"
DAY = 86_400.0


def policy() -> symbi.PolicyEngine:
    pe = symbi.PolicyEngine(enforce_policies=True)
    pe.register(POLICY.replace("'", '"'))
    return pe


class Sink:
    """An AuditSink that keeps what it is given; ``fail_on`` events raise OSError."""

    def __init__(self, fail_on: Sequence[str] = ()) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.fail_on = set(fail_on)

    def record(self, event_type: str, agent_id: str, details: dict[str, Any]) -> None:
        if event_type in self.fail_on:
            raise OSError("audit disk full")
        self.events.append((event_type, agent_id, details))

    def types(self) -> list[str]:
        return [e[0] for e in self.events]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Gated(HashingEmbedder):
    """A HashingEmbedder whose embed() waits for ``gate`` (while ``armed``): a write that
    is still in its worker thread when the caller gives up."""

    __slots__ = ("armed", "entered", "gate")

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.armed = False

    def embed(self, texts: Union[str, Sequence[str]]) -> Any:
        if self.armed:
            self.entered.set()
            assert self.gate.wait(30)
        return super().embed(texts)


class Reversed(HashingEmbedder):
    """Another embedder of the same dimension: the hashing vector with its coordinates
    in reverse order (a different vector space)."""

    __slots__ = ()

    def embed(self, texts: Union[str, Sequence[str]]) -> Any:
        return np.ascontiguousarray(super().embed(texts)[:, ::-1])


class Broken(HashingEmbedder):
    __slots__ = ()

    def embed(self, texts: Union[str, Sequence[str]]) -> Any:
        raise ModelError("the model service is down", model="broken")


class BlockingMarker(EmbeddedVectorStore):
    """An embedded store whose marker() (read on open) waits for ``gate``: a slow open."""

    def __init__(self, dim: int, path: Optional[Path] = None) -> None:
        super().__init__(dim, path)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def marker(self) -> Optional[str]:
        self.entered.set()
        assert self.gate.wait(30)
        return super().marker()


async def eventually(check: Any, what: str) -> None:
    """Wait (bounded) for work a worker thread finishes after its caller gave up."""
    for _ in range(1000):
        if await check():
            return
        await anyio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


FACTS = [
    f"{w} are the favourite animal of customer {i}"
    for i, w in enumerate(["otters", "lions", "eagles", "sharks", "llamas", "bees", "owls"])
]


# ---------------------------------------------------------------- 1: index-bound metadata
async def test_metadata_the_index_cannot_hold_is_refused_before_anything_is_stored(
    tmp_path: Path,
):
    async with ContextManager(path=tmp_path, dim=64) as cm:
        for meta in (
            {"n": 2**63},
            {"n": -(2**63) - 1},
            {"n": 2**70},
            {"s": "\udc80"},
            {"\ud800": 1},
            {"$or": 1},
            {"tags": ["ok", "bad \udc80"]},
        ):
            with pytest.raises(InvalidArgument) as ei:
                await cm.store_context("a", "walrus fact", metadata=meta)
            assert ei.value.argument == "metadata"
        assert (await cm.stats()).long_term == 0
        # The 64-bit limits themselves are fine, and filterable.
        hi = await cm.store_context("a", "walrus high", metadata={"n": 2**63 - 1})
        lo = await cm.store_context("a", "walrus low", metadata={"n": -(2**63)})
        got = await cm.retrieve_context("a", "walrus", filter={"n": {"gt": 0}})
        assert [g.id for g in got] == [hi]
        got = await cm.retrieve_context("a", "walrus", filter={"n": -(2**63)})
        assert [g.id for g in got] == [lo]


async def test_a_write_the_index_refuses_is_rolled_back(tmp_path: Path):
    store = ContextStore(
        tmp_path, dim=8, vectors=EmbeddedVectorStore(8, tmp_path / "index"), cache=ByteLRU(1 << 20)
    )
    store.open()
    try:
        good = np.eye(8, dtype=np.float32)[:2]
        args: dict[str, Any] = dict(
            kind="long_term", agent_id="a", collection="", created_at=1.0, expires_at=None
        )
        # Row 1 is a zero vector, which the cosine index refuses: neither row is kept.
        bad = np.stack([good[0], np.zeros(8, dtype=np.float32)])
        with pytest.raises(VectorIndexError):
            store.add(contents=["x", "y"], metadata=[{}, {}], embeddings=bad, **args)
        assert store.count() == 0 and store.vectors.count() == 0
        # A content SQLite cannot encode: a typed error, and no transaction left open.
        with pytest.raises(ContextStoreError):
            store.add(contents=["bad \ud800"], metadata=[{}], embeddings=good[:1], **args)
        items = store.add(contents=["x", "y"], metadata=[{}, {}], embeddings=good, **args)
        assert store.count() == 2 and store.vectors.count() == 2
        hits = store.search(good[1], 1, {}, now=0.0)
        assert [h[0].id for h in hits] == [items[1].id]
    finally:
        store.close()


async def test_a_store_holding_unindexable_metadata_from_older_versions_still_opens(
    tmp_path: Path,
):
    async with ContextManager(path=tmp_path, dim=64) as cm:
        bad = await cm.store_context("a", "item from an older version")
        good = await cm.store_context("a", "good item one", metadata={"lang": "de"})
    # What older versions committed before indexing failed, then the index was lost.
    db = sqlite3.connect(tmp_path / "context.sqlite3")
    db.execute(
        "UPDATE items SET metadata=? WHERE id=?",
        ('{"n": 18446744073709551616, "lang": "en"}', int(bad.split(":")[1])),
    )
    db.commit()
    db.close()
    shutil.rmtree(tmp_path / "index")
    async with ContextManager(path=tmp_path, dim=64) as cm:
        assert (await cm.stats()).rebuilt_index
        assert [x.id for x in await cm.retrieve_context("a", "good item one", k=1)] == [good]
        old = await cm.retrieve_context("a", "older version item", filter={"lang": "en"})
        assert [x.id for x in old] == [bad]
        assert old[0].metadata["n"] == 2**64  # kept in SQLite, just not filterable


# ---------------------------------------------------------------- 4: lone surrogates
async def test_text_that_is_not_utf8_is_refused_and_the_store_keeps_working(tmp_path: Path):
    async with ContextManager(path=tmp_path, dim=64) as cm:
        cases = [
            (cm.store_context("a", "hello world \ud800"), "context"),
            (cm.store_context("a\udc80", "hello world"), "agent_id"),
            (cm.retrieve_context("a", "seals \ud800"), "query"),
        ]
        for coro, argument in cases:
            with pytest.raises(InvalidArgument) as ei:
                await coro
            assert ei.value.argument == argument
        cid = await cm.store_context("a", "normal fact about seals")
        assert [x.id for x in await cm.retrieve_context("a", "seals")] == [cid]


# ---------------------------------------------------------------- 2: embedder changes
async def test_a_changed_embedder_of_the_same_dimension_re_embeds_the_store(tmp_path: Path):
    async with ContextManager(path=tmp_path, dim=64) as cm:
        ids = await cm.store_contexts("a", FACTS)
    async with ContextManager(path=tmp_path, dim=64, embedder=Reversed(64)) as cm:
        # Old vectors searched with new queries would rank at random.
        for cid, fact in zip(ids, FACTS):
            assert [x.id for x in await cm.retrieve_context("a", fact, k=1)] == [cid]
        st = await cm.stats()
        assert (st.reembedded, st.rebuilt_index) == (len(FACTS), True)
    # Recorded: the next open with the same embedder does no work.
    async with ContextManager(path=tmp_path, dim=64, embedder=Reversed(64)) as cm:
        st = await cm.stats()
        assert (st.reembedded, st.rebuilt_index) == (0, False)
        assert [x.id for x in await cm.retrieve_context("a", FACTS[3], k=1)] == [ids[3]]


@pytest.mark.parametrize("new_dim", [32, 128])
async def test_a_changed_dimension_re_embeds_the_store(tmp_path: Path, new_dim: int):
    async with ContextManager(path=tmp_path, dim=64) as cm:
        ids = await cm.store_contexts("a", FACTS)
    async with ContextManager(path=tmp_path, dim=new_dim) as cm:
        assert (await cm.stats()).reembedded == len(FACTS)
        for cid, fact in zip(ids, FACTS):
            assert [x.id for x in await cm.retrieve_context("a", fact, k=1)] == [cid]


async def test_an_embedder_that_cannot_re_embed_is_a_config_error_and_changes_nothing(
    tmp_path: Path,
):
    async with ContextManager(path=tmp_path, dim=64) as cm:
        cid = await cm.store_context("a", FACTS[0])
    cm = ContextManager(path=tmp_path, dim=64, embedder=Broken(64))
    with pytest.raises(ConfigError, match="re-embedding") as ei:
        await cm.open()
    assert isinstance(ei.value.__cause__, ModelError)
    await cm.stop()
    # Rolled back: the original embedder still finds everything.
    async with ContextManager(path=tmp_path, dim=64) as cm:
        assert (await cm.stats()).reembedded == 0
        assert [x.id for x in await cm.retrieve_context("a", FACTS[0], k=1)] == [cid]


# ---------------------------------------------------------------- 5: bounded open
async def test_open_past_its_timeout_is_abandoned_and_can_be_retried(tmp_path: Path):
    async with ContextManager(path=tmp_path, dim=64) as cm:
        cid = await cm.store_context("a", "fact about seals")
    vs = BlockingMarker(64, tmp_path / "index")
    cm = ContextManager(path=tmp_path, dim=64, vector_store=vs)
    safety = threading.Timer(20, vs.gate.set)  # old code would block here: fail, not hang
    safety.start()
    try:
        with pytest.raises(RequestTimeout):
            await cm.open(timeout=0.2)
        assert not vs.gate.is_set()  # gave up while the worker was (or was about to be) stuck
        vs.gate.set()
        # The abandoned worker closes what it opened; a retry opens afresh.
        await eventually(lambda: _false(cm._store.is_open), "the abandoned open closed")
        await cm.open()
        assert [x.id for x in await cm.retrieve_context("a", "seals")] == [cid]
    finally:
        safety.cancel()
        vs.gate.set()
        await cm.stop()


async def _false(v: bool) -> bool:
    return not v


async def test_a_cancelled_open_returns_at_once_and_leaves_nothing_open():
    vs = BlockingMarker(64)
    cm = ContextManager(dim=64, vector_store=vs)
    safety = threading.Timer(20, vs.gate.set)
    safety.start()
    try:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(cm.open)
                await anyio.to_thread.run_sync(vs.entered.wait, 10)
                scope.cancel()
        assert not vs.gate.is_set()  # returned while the worker was still blocked
        assert scope.cancelled_caught
        vs.gate.set()
        await eventually(lambda: _false(cm._store.is_open), "the cancelled open closed")
        with pytest.raises(symbi.errors.RuntimeStateError):
            await cm.store_context("a", "not open")
    finally:
        safety.cancel()
        vs.gate.set()


# ---------------------------------------------------------------- 3: audit with the write
async def test_a_shared_write_whose_caller_timed_out_is_still_audited(tmp_path: Path):
    cfg = symbi.Config()
    emb = Gated(64)
    async with symbi.Runtime(cfg) as rt:
        assert rt.audit is not None
        # The runtime's real AuditLog, called from the worker thread doing the write.
        async with ContextManager(dim=64, embedder=emb, policy=policy(), audit=rt.audit) as cm:
            emb.armed = True
            with pytest.raises(RequestTimeout):
                await cm.share_knowledge("alice", "llama secrets", collection="team", timeout=0.2)
            assert await anyio.to_thread.run_sync(emb.entered.wait, 10)
            emb.gate.set()

            async def stored() -> bool:
                return (await cm.stats()).shared == 1

            await eventually(stored, "the abandoned write committed")
            await rt.audit.flush()
            writes = rt.audit.query(agent="alice", type="knowledge.write")
            assert [e.details["ids"] for e in writes] == [["sh:1"]]


async def test_a_shared_write_whose_caller_was_cancelled_is_still_audited():
    sink = Sink()
    emb = Gated(64)
    async with ContextManager(dim=64, embedder=emb, policy=policy(), audit=sink) as cm:
        emb.armed = True
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: cm.share_knowledge("alice", "llamas", collection="team"))
                await anyio.to_thread.run_sync(emb.entered.wait, 10)
                scope.cancel()
        emb.gate.set()

        async def stored() -> bool:
            return (await cm.stats()).shared == 1

        await eventually(stored, "the cancelled write committed")
        assert sink.types() == ["knowledge.write"]


async def test_a_failing_audit_sink_stores_and_deletes_nothing():
    sink = Sink(fail_on=["knowledge.write"])
    async with ContextManager(dim=64, policy=policy(), audit=sink) as cm:
        with pytest.raises(AuditStorageError) as ei:
            await cm.share_knowledge("alice", "walrus migration data", collection="team")
        assert isinstance(ei.value, SymbiError) and isinstance(ei.value.__cause__, OSError)
        assert (await cm.stats()).shared == 0
        assert await cm.search_knowledge("bob", "walrus migration", collection="team") == []
        assert cm.health().status == "degraded"

        sink.fail_on = {"knowledge.delete"}
        kid = await cm.share_knowledge("alice", "walrus migration data", collection="team")
        with pytest.raises(AuditStorageError):
            await cm.forget("alice", kid)
        found = await cm.search_knowledge("bob", "walrus migration", collection="team")
        assert [f.id for f in found] == [kid]
        sink.fail_on = set()
        assert await cm.forget("alice", kid) is True
        assert sink.types()[-1] == "knowledge.delete"
        assert await cm.search_knowledge("bob", "walrus migration", collection="team") == []


# ---------------------------------------------------------------- 6: current retention
async def test_a_lowered_retention_applies_to_items_already_stored(tmp_path: Path):
    clock = Clock()
    async with ContextManager(path=tmp_path, dim=64, retention_days=365, clock=clock) as cm:
        old = await cm.store_context("a", "old fact about walruses")
    clock.now += 40 * DAY
    async with ContextManager(path=tmp_path, dim=64, retention_days=30, clock=clock) as cm:
        new = await cm.store_context("a", "new fact about walruses")
        got = await cm.retrieve_context("a", "fact about walruses", k=10)
        assert [g.id for g in got] == [new]
        assert got[0].expires_at == clock.now + 30 * DAY
        assert await cm.forget("a", old) is False  # expired items are not found
        assert await cm.housekeep() == 1
        assert (await cm.stats()).long_term == 1
        # A change at run time is applied by the next housekeeping round.
        cm.retention_days = 10
        clock.now += 11 * DAY
        assert await cm.housekeep() == 1
        assert await cm.retrieve_context("a", "fact about walruses", k=10) == []


async def test_a_raised_retention_applies_to_items_already_stored(tmp_path: Path):
    clock = Clock()
    async with ContextManager(path=tmp_path, dim=64, retention_days=2, clock=clock) as cm:
        cid = await cm.store_context("a", "fact about kiwis")
    clock.now += 3 * DAY
    async with ContextManager(path=tmp_path, dim=64, retention_days=0, clock=clock) as cm:
        got = await cm.retrieve_context("a", "kiwis")
        assert [(g.id, g.expires_at) for g in got] == [(cid, None)]
        assert await cm.housekeep() == 0


# ---------------------------------------------------------------- 7: in-memory filters
async def test_filters_apply_to_short_term_and_working_memory():
    async with ContextManager(dim=64) as cm:
        de = await cm.store_context("a", "zebra note", kind="short_term", metadata={"lang": "de"})
        await cm.store_context("a", "zebra note", kind="short_term", metadata={"lang": "en"})
        await cm.store_context("a", "zebra note", kind="short_term")
        lt = await cm.store_context("a", "zebra note", metadata={"lang": "de", "n": 3})
        async with cm.task("a") as t:
            wk = await cm.store_context(
                "a", "zebra note", kind="working", task_id=t, metadata={"lang": "de", "n": 1}
            )
            await cm.store_context("a", "zebra note", kind="working", task_id=t, metadata={"n": 9})
            got = await cm.retrieve_context("a", "zebra note", k=10, filter={"lang": "de"})
            assert {g.id for g in got} == {de, wk, lt}
            got = await cm.retrieve_context(
                "a", "zebra note", k=10, filter={"$or": [{"n": {"lt": 2}}, {"n": {"gte": 9}}]}
            )
            assert {g.kind for g in got} == {"working"}
            assert len(got) == 2
            got = await cm.retrieve_context(
                "a", "zebra", k=10, kinds=["short_term"], filter={"lang": {"nin": ["de"]}}
            )
            assert len(got) == 2 and de not in {g.id for g in got}
            # A bad filter is refused whatever kinds are searched.
            for flt in ({"x": None}, {1: "x"}, {"$xor": []}, {"$or": [{"_scope": "lt:b"}]}):
                with pytest.raises(InvalidArgument) as ei:
                    await cm.retrieve_context("a", "zebra", kinds=["short_term"], filter=flt)
                assert ei.value.argument == "filter"


async def test_the_in_memory_filter_means_what_the_index_filter_means():
    from symbi.vector.filters import check_filter, matches

    rnd = random.Random(7)
    values: list[Any] = [0, 1, -1, True, False, 0.0, 1.0, 0.5, 2**53 + 1, "a", "b", "", "é"]
    metas = [{f: rnd.choice(values) for f in ("x", "y") if rnd.random() < 0.7} for _ in range(200)]
    metas[0]["x"] = ["not", "a", "scalar"]  # not indexed: a missing field for both
    ix = VectorIndex(4, "cosine")
    vecs = np.random.default_rng(0).normal(size=(len(metas), 4)).astype(np.float32)
    ix.upsert(
        np.arange(1, len(metas) + 1, dtype=np.uint64),
        vecs,
        [{k: v for k, v in m.items() if not isinstance(v, list)} for m in metas],
    )
    ops = ["eq", "ne", "lt", "lte", "gt", "gte", "in", "nin"]

    def make(depth: int = 0) -> dict[str, Any]:
        r = rnd.random()
        if depth < 2 and r < 0.3:
            key = rnd.choice(["$or", "$and"])
            return {key: [make(depth + 1) for _ in range(rnd.randint(0, 3))]}
        if depth < 2 and r < 0.4:
            return {"$not": make(depth + 1)}
        field, op = rnd.choice(["x", "y"]), rnd.choice(ops)
        if op in ("in", "nin"):
            return {field: {op: rnd.sample(values, 2)}}
        return {field: {op: rnd.choice(values)}}

    for _ in range(200):
        flt = make()
        check_filter(flt)
        ids, _ = ix.search(vecs[0], k=len(metas), filter=flt, ef=len(metas))
        want = {int(i) for i in ids if i != 2**64 - 1}
        assert {i + 1 for i, m in enumerate(metas) if matches(m, flt)} == want, flt


# ---------------------------------------------------------------- 8: working batches
async def test_a_working_batch_that_does_not_fit_stores_none_of_it():
    async with ContextManager(dim=64, max_working_items=2) as cm:
        t = cm.begin_task("a")
        with pytest.raises(ResourceLimitExceeded) as ei:
            await cm.store_contexts("a", ["w one", "w two", "w three"], kind="working", task_id=t)
        assert (ei.value.used, ei.value.limit) == (0, 2)
        assert await cm.retrieve_context("a", "w", kinds=["working"], k=10) == []
        ids = await cm.store_contexts("a", ["w one", "w two"], kind="working", task_id=t)
        with pytest.raises(ResourceLimitExceeded) as ei:
            await cm.store_context("a", "w three", kind="working", task_id=t)
        assert ei.value.used == 2
        got = await cm.retrieve_context("a", "w one two", kinds=["working"], k=10)
        assert {g.id for g in got} == set(ids)
        assert cm.end_task("a", t) == 2
