"""The VectorStore protocol on the embedded index and on Qdrant (qdrant-client's local
mode: the real client code path, no server)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import symbi
from symbi.context import ContextManager
from symbi.errors import ContextStoreError, InvalidArgument
from symbi.vector import EmbeddedVectorStore, VectorStore

qdrant_client = pytest.importorskip(
    "qdrant_client", reason="qdrant-client is not installed: pip install 'symbi[qdrant]'"
)
from symbi.vector.qdrant import QdrantVectorStore, qdrant_filter  # noqa: E402

pytestmark = pytest.mark.anyio

FILTERS = [
    None,
    {"lang": "de"},
    {"year": {"gte": 2020, "lt": 2023}},
    {"tag": {"in": ["a", "c"]}},
    {"tag": {"nin": ["a"]}},
    {"lang": {"ne": "de"}},
    {"$or": [{"lang": "fr"}, {"year": {"lt": 2019}}]},
    {"$not": {"lang": "de"}, "year": {"gt": 2018}},
]


def _data(n: int = 300, dim: int = 16):
    rng = np.random.default_rng(5)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    meta = [
        {"lang": ["de", "en", "fr"][i % 3], "year": 2015 + i % 10, "tag": "abc"[i % 3 - 1]}
        for i in range(n)
    ]
    return list(range(1, n + 1)), vecs, meta, rng.normal(size=(5, dim)).astype(np.float32)


def _brute(ids, vecs, meta, q, flt, k):
    from symbi.vector.filters import matches

    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    sims = unit @ (q / np.linalg.norm(q))
    ok = [i for i in range(len(ids)) if flt is None or matches(meta[i], flt)]
    ok.sort(key=lambda i: -sims[i])
    return [ids[i] for i in ok[:k]]


@pytest.mark.parametrize("flt", FILTERS)
def test_qdrant_and_embedded_agree_with_brute_force(flt):
    ids, vecs, meta, queries = _data()
    stores: list[VectorStore] = [
        EmbeddedVectorStore(16),
        QdrantVectorStore(16, url="qdrant-local://:memory:", collection="t"),
    ]
    for s in stores:
        assert isinstance(s, VectorStore)
        s.upsert(ids, vecs, meta)
        assert s.count() == len(ids)
    for q in queries:
        want = _brute(ids, vecs, meta, q, flt, 10)
        for s in stores:
            got = s.search(q, 10, flt)
            ids_ = [i for i, _ in got]
            if s.backend == "qdrant":  # local mode is exact
                assert ids_ == want, flt
            else:  # HNSW is approximate: recall, not equality
                assert len(set(ids_) & set(want)) >= 9 and len(ids_) == len(want), flt
            scores = [sc for _, sc in got]
            assert scores == sorted(scores, reverse=True)


def test_qdrant_delete_reset_and_persistence(tmp_path: Path):
    ids, vecs, meta, _ = _data(50)
    url = f"qdrant-local://{tmp_path / 'q'}"
    s = QdrantVectorStore(16, url=url)
    s.upsert(ids, vecs, meta)
    s.delete([1, 2, 999])
    assert s.count() == 48
    assert 1 not in [i for i, _ in s.search(vecs[0], 5)]
    s.close()
    s2 = QdrantVectorStore(16, url=url)
    assert s2.count() == 48
    with pytest.raises(ContextStoreError, match="16-d"):
        QdrantVectorStore(8, client=s2.client)
    s2.reset()
    assert s2.count() == 0
    s2.close()


def test_qdrant_bad_input():
    with pytest.raises(InvalidArgument):
        QdrantVectorStore(16)
    with pytest.raises(InvalidArgument):
        QdrantVectorStore(16, url="redis://x")
    with pytest.raises(InvalidArgument):
        qdrant_filter({"a": {"between": 1}})
    with pytest.raises(InvalidArgument):
        qdrant_filter({"a": {"gt": "x"}})
    s = QdrantVectorStore(4, url="qdrant-local://:memory:")
    with pytest.raises(InvalidArgument):
        s.upsert([1], np.ones((1, 3), np.float32), [None])
    with pytest.raises(InvalidArgument):
        s.search(np.ones(4, np.float32), 0)


async def test_context_manager_on_qdrant_from_config(tmp_path: Path):
    pe = symbi.PolicyEngine()
    pe.register("policy p { allow: [read_knowledge, write_knowledge] }")
    cfg = symbi.Config.from_dict(
        {"context": {"vector_db_url": "qdrant-local://:memory:", "embedding_dimension": 64}}
    )
    async with ContextManager.from_config(cfg, policy=pe, audit=None, path=tmp_path) as cm:
        assert (await cm.stats()).backend == "qdrant"
        a = await cm.store_context("a", "qdrant holds the long-term memory")
        await cm.store_context("b", "another agent's qdrant memory")
        got = await cm.retrieve_context("a", "qdrant memory")
        assert [g.id for g in got] == [a]
        k = await cm.share_knowledge("a", "shared through qdrant", collection="c")
        assert [x.id for x in await cm.search_knowledge("b", "shared qdrant", collection="c")] == [
            k
        ]
    # The in-memory Qdrant is gone on reopen: the index is rebuilt from SQLite.
    async with ContextManager.from_config(cfg, policy=pe, audit=None, path=tmp_path) as cm:
        assert (await cm.stats()).rebuilt_index
        assert [g.id for g in await cm.retrieve_context("a", "qdrant memory")] == [a]


def test_qdrant_url_comes_from_the_environment():
    cfg = symbi.Config.load(env={"QDRANT_URL": "qdrant-local://:memory:"})
    cm = ContextManager.from_config(cfg, policy=None, audit=None, path=None)
    assert cm._store.vectors.backend == "qdrant"
