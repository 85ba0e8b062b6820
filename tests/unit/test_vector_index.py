"""symbi.VectorIndex: recall against numpy brute force, live updates, filters,
compression, persistence, concurrency and bad input."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import symbi
from symbi.errors import SymbiError, VectorIndexError
from symbi.vector import NO_ID, VectorIndex

DIM = 48
N = 4000


def mixture(n: int, dim: int = DIM, clusters: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, (clusters, dim))
    labels = rng.integers(0, clusters, n)
    return (centers[labels] + rng.normal(0.0, 0.5, (n, dim))).astype(np.float32)


def exact(data: np.ndarray, queries: np.ndarray, metric: str, k: int) -> np.ndarray:
    if metric == "cosine":
        d = data / np.linalg.norm(data, axis=1, keepdims=True)
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        dist = 1.0 - q @ d.T
    elif metric == "dot":
        dist = 1.0 - queries @ data.T
    else:
        dist = (queries**2).sum(1)[:, None] - 2 * queries @ data.T + (data**2).sum(1)[None, :]
    return np.argsort(dist, axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return mixture(N)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return mixture(100, seed=1)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_recall_at_defaults_matches_brute_force(data, queries, metric):
    # Inner product is searched on unit vectors (embeddings); on raw vectors it is not a metric.
    d, q = (unit(data), unit(queries)) if metric == "dot" else (data, queries)
    index = VectorIndex(DIM, metric)
    assert index.add(np.arange(N), d) == N
    ids, dist = index.search(q, k=10)
    assert ids.shape == (100, 10) and ids.dtype == np.uint64 and dist.dtype == np.float32
    assert recall(ids.astype(np.int64), exact(d, q, metric, 10)) >= 0.95
    assert np.all(np.diff(dist, axis=1) >= 0)


def test_single_query_and_ef_per_query(data):
    index = VectorIndex(DIM, "l2")
    index.add(range(N), data)
    ids, dist = index.search(data[7], k=5, ef=200)
    assert ids.shape == (5,) and int(ids[0]) == 7 and dist[0] == pytest.approx(0.0, abs=1e-3)
    ids1, _ = index.search(data[7].tolist(), k=5, ef=1)
    assert ids1.shape == (5,)


def test_deleted_ids_are_never_returned_and_repair_keeps_recall(data, queries):
    index = VectorIndex(DIM, "l2")
    index.add(np.arange(N), data)
    gone = np.arange(0, N, 4)
    assert index.delete(gone) == len(gone)
    assert len(index) == N - len(gone)
    assert 0 not in index and 1 in index and not index.contains(0)
    ids, _ = index.search(queries, k=10)
    assert not np.isin(ids, gone).any()
    keep = np.setdiff1d(np.arange(N), gone)
    truth = keep[exact(data[keep], queries, "l2", 10)]
    assert recall(ids.astype(np.int64), truth) >= 0.95
    assert index.stats().deleted == 0  # 25% deletes triggered the repair
    with pytest.raises(VectorIndexError) as e:
        index.delete([0])
    assert e.value.id == 0 and "missing_ok" in str(e.value)
    assert index.delete([0, 1], missing_ok=True) == 1


def test_upsert_replaces_vector_and_metadata(data):
    index = VectorIndex(DIM, "l2")
    index.add(np.arange(100), data[:100], [{"v": 1}] * 100)
    with pytest.raises(VectorIndexError, match="upsert") as e:
        index.add([5], data[200])
    assert e.value.id == 5
    index.upsert([5], data[200], {"v": 2})
    assert len(index) == 100
    rec = index.get(5)
    assert rec.metadata == {"v": 2} and np.allclose(rec.vector, data[200])
    ids, _ = index.search(data[200], k=1)
    assert int(ids[0]) == 5
    ids, _ = index.search(data[5], k=100)
    assert list(ids).count(5) <= 1


def test_get_and_stats(data):
    index = VectorIndex(DIM, "cosine")
    index.add([2**64 - 2, 3], data[:2], [{"a": "x", "n": 1, "f": 0.5, "b": True}, None])
    rec = index.get(2**64 - 2)
    assert rec.metadata == {"a": "x", "n": 1, "f": 0.5, "b": True}
    assert np.linalg.norm(rec.vector) == pytest.approx(1.0, abs=1e-5)  # cosine stores unit vectors
    assert index.get(3).metadata is None
    s = index.stats()
    assert (s.count, s.dim, s.metric, s.m, s.ef_construction) == (2, DIM, "cosine", 16, 200)
    assert "VectorIndex(dim=48" in repr(index)
    assert isinstance(symbi.VectorIndex(4), VectorIndex)


def test_results_padded_when_fewer_than_k(data):
    index = VectorIndex(DIM, "l2")
    index.add([1, 2], data[:2])
    ids, dist = index.search(data[0], k=4)
    assert list(ids[2:]) == [NO_ID, NO_ID] and np.isinf(dist[2:]).all()


def test_filters_on_index_match_brute_force(data, queries):
    rng = np.random.default_rng(3)
    lang = rng.choice(["de", "en", "fr"], N)
    year = rng.integers(2000, 2030, N)
    tag = rng.choice(list("abcdefghij"), N)
    meta = [{"lang": str(lang[i]), "year": int(year[i]), "tag": str(tag[i])} for i in range(N)]
    index = VectorIndex(DIM, "l2")
    index.add(np.arange(N), data, meta)
    cases = [
        ({"lang": "de"}, lang == "de"),
        ({"lang": "de", "year": {"gte": 2020}}, (lang == "de") & (year >= 2020)),
        ({"tag": {"in": ["a", "b"]}}, np.isin(tag, ["a", "b"])),
        ({"year": {"gt": 2010, "le": 2012}}, (year > 2010) & (year <= 2012)),
        ({"$or": [{"tag": "a"}, {"lang": "fr"}]}, (tag == "a") | (lang == "fr")),
        ({"$not": {"lang": {"nin": ["de"]}}}, lang == "de"),
        (  # ~0.2% selectivity: answered exactly
            {"lang": {"ne": "de"}, "tag": "c", "year": {"lt": 2001}},
            (lang != "de") & (tag == "c") & (year < 2001),
        ),
        ({"year": {"eq": 2005.0}}, year == 2005),
    ]
    for flt, mask in cases:
        ids, _ = index.search(queries, k=10, filter=flt)
        allowed = np.flatnonzero(mask)
        got = ids.astype(np.int64)
        real = got[got != np.int64(-1)]
        assert np.isin(real[real >= 0], allowed).all(), flt
        k = min(10, len(allowed))
        truth = allowed[exact(data[allowed], queries, "l2", k)]
        found = got[:, :k]
        assert recall(found, truth) >= 0.95, (flt, recall(found, truth))


def test_one_percent_filter_returns_k_good_results():
    n = 20_000
    data = mixture(n, dim=32, seed=5)
    queries = mixture(50, dim=32, seed=6)
    bucket = np.arange(n) % 100
    index = VectorIndex(32, "l2")
    index.add(np.arange(n), data, [{"bucket": int(b)} for b in bucket])
    ids, _ = index.search(queries, k=10, filter={"bucket": 42})
    allowed = np.flatnonzero(bucket == 42)
    assert np.isin(ids, allowed).all()
    assert recall(ids.astype(np.int64), allowed[exact(data[allowed], queries, "l2", 10)]) >= 0.95


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_sq4_compression_is_8x_smaller_and_keeps_recall(data, queries, metric):
    index = VectorIndex(DIM, metric, compression="sq4")
    index.add(np.arange(N), data)
    s = index.stats()
    assert s.compression == "sq4" and index.compression == "sq4"
    assert s.bytes_per_code <= 0.2 * DIM * 4  # >= 80% smaller than float32
    ids, _ = index.search(queries, k=10)
    assert recall(ids.astype(np.int64), exact(data, queries, metric, 10)) >= 0.95


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_sq8_traversal_keeps_recall(data, queries, metric):
    d, q = (unit(data), unit(queries)) if metric == "dot" else (data, queries)
    index = VectorIndex(DIM, metric, compression="sq8")
    index.add(np.arange(N), d)
    s = index.stats()
    assert s.compression == "sq8" and s.bytes_per_code == 64  # 48 dims padded to 64 bytes
    ids, dists = index.search(q, k=10)
    assert recall(ids.astype(np.int64), exact(d, q, metric, 10)) >= 0.95
    assert np.all(np.diff(dists, axis=1) >= 0)  # exact float32 reranking, sorted


@pytest.mark.parametrize("threads", [None, 1])
def test_duplicates_in_other_scopes_do_not_force_brute_force(threads):
    """Groups of identical vectors whose copies carry different tenants: filtered searches
    stay on the graph (no brute-force fallback) and find the tenant's own copy, also when
    the copies were inserted in parallel and never saw each other (the build then links
    every node the race left unreachable; see ``Core::link_stragglers``)."""
    base = mixture(3000, seed=5)
    tenants = 10
    groups = base[::20]  # 150 vectors, each stored once per tenant
    vectors = np.concatenate([base, np.repeat(groups, tenants, axis=0)])
    meta = [{"t": i % tenants} for i in range(len(base))]
    meta += [{"t": j} for _ in range(len(groups)) for j in range(tenants)]
    index = VectorIndex(DIM, "l2", ef_construction=100)
    index.add(np.arange(len(vectors)), vectors, meta, threads=threads)
    for t in range(tenants):
        ids, _ = index.search(groups, k=10, ef=32, filter={"t": t})
        own = len(base) + np.arange(len(groups)) * tenants + t
        assert all(o in row for o, row in zip(own, ids.tolist()))
    assert index.stats().fallback_searches == 0


@pytest.mark.parametrize("compression", [None, "sq4", "sq8"])
@pytest.mark.parametrize("mmap", [True, False])
def test_save_and_load(tmp_path: Path, data, queries, compression, mmap):
    index = VectorIndex(DIM, "cosine", compression=compression, ef_search=80)
    index.add(np.arange(N), data, [{"i": i} for i in range(N)])
    index.delete([1, 2, 3])
    index.repair()  # save() repairs first; do it here so both sides search the same graph
    before = index.search(queries, k=10)
    index.save(tmp_path / "ix")
    loaded = VectorIndex.load(tmp_path / "ix", mmap=mmap)
    after = loaded.search(queries, k=10)
    assert np.array_equal(before[0], after[0])
    assert np.allclose(before[1], after[1])
    assert len(loaded) == N - 3 and 2 not in loaded
    assert loaded.get(10).metadata == {"i": 10}
    s = loaded.stats()
    assert s.ef_search == 80 and s.compression == compression
    assert (s.mmap is not None) == mmap
    loaded.add([N + 1], data[0])  # still writable after an mmap load
    loaded.save(tmp_path / "ix")  # a new generation over the mapped one
    again = VectorIndex.load(tmp_path / "ix")
    assert len(again) == N - 2
    names = sorted(p.name for p in (tmp_path / "ix").iterdir())
    assert names[0] == "CURRENT" and len(names) == 3


def test_load_errors(tmp_path: Path, data):
    with pytest.raises(VectorIndexError) as e:
        VectorIndex.load(tmp_path / "nothing")
    assert e.value.path is not None
    index = VectorIndex(DIM)
    index.add([1], data[0])
    index.save(tmp_path / "ix")
    binfile = next((tmp_path / "ix").glob("index-*.bin"))
    binfile.write_bytes(binfile.read_bytes()[:-9])
    with pytest.raises(VectorIndexError, match="corrupt"):
        VectorIndex.load(tmp_path / "ix")


def test_concurrent_reads_during_writes(data, queries):
    index = VectorIndex(DIM, "l2")
    index.add(np.arange(1000), data[:1000])
    errors: list[BaseException] = []
    stop = threading.Event()
    seen_sizes: list[int] = []
    # Ids whose delete() has returned: no search that starts afterwards may return them.
    gone: list[np.ndarray] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                deleted = np.concatenate(gone) if gone else np.empty(0, dtype=np.int64)
                ids, dist = index.search(queries[:10], k=5)
                assert np.all(np.diff(dist, axis=1) >= 0)
                assert not np.isin(ids, deleted).any()
                seen_sizes.append(len(index))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for start in range(1000, N, 500):
            index.add(np.arange(start, start + 500), data[start : start + 500])
            dead = np.arange(start - 1000, start - 950)
            index.delete(dead)
            gone.append(dead)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors
    assert len(seen_sizes) > 3
    deleted = np.concatenate([np.arange(s - 1000, s - 950) for s in range(1000, N, 500)])
    ids, _ = index.search(data, k=3)
    assert not np.isin(ids, deleted).any()
    assert len(index) == N - len(deleted)


def test_bad_input(data):
    index = VectorIndex(DIM)
    index.add([1], data[0])
    cases = [
        (lambda: index.add([2], np.ones(DIM + 1)), "vectors"),
        (lambda: index.add([2], np.full(DIM, np.nan)), "vectors"),
        (lambda: index.add([2], np.full(DIM, np.inf)), "vectors"),
        (lambda: index.add([2], np.full(DIM, 1e300)), "vectors"),  # overflows float32
        (lambda: index.add([2], np.zeros(DIM)), "vectors"),  # no direction for cosine
        (lambda: index.add([2, 3], data[:1]), "ids"),
        (lambda: index.add([-1], data[0]), "ids"),
        (lambda: index.add(["x"], data[0]), "ids"),
        (lambda: index.add([2, 2], data[:2]), "ids"),
        (lambda: index.add([2**64 - 1], data[0]), "ids"),
        (lambda: index.add([2], [["a"] * DIM]), "vectors"),
        (lambda: index.add([2], data[0], [{"x": [1]}]), "metadata"),
        (lambda: index.add([2], data[0], [{"x": 2**70}]), "metadata"),
        (lambda: index.add([2], data[0], [{1: 1}]), "metadata"),
        (lambda: index.search(np.ones(DIM - 1)), "queries"),
        (lambda: index.search(np.ones((2, 2, DIM))), "queries"),
        (lambda: index.search(data[0], k=0), "k"),
        (lambda: index.search(data[0], k=-3), "k"),
        (lambda: index.search(data[0], ef=0), "ef"),
        (lambda: index.search(data[0], filter={"x": {"between": 1}}), "filter"),
        (lambda: index.search(data[0], filter={"x": [1]}), "filter"),
        (lambda: index.search(data[0], filter={"$xor": []}), "filter"),
        (lambda: index.search(data[0], filter={"x": {"in": 3}}), "filter"),
        (lambda: index.search(data[0], filter={"x": float("nan")}), "filter"),
        (lambda: index.search(data[0], filter="x == 1"), "filter"),  # type: ignore[arg-type]
        (lambda: index.get(99), "ids"),
        (lambda: VectorIndex(0), "dim"),
        (lambda: VectorIndex(8, "hamming"), "metric"),
        (lambda: VectorIndex(8, compression="pq"), "compression"),
        (lambda: VectorIndex(8, m=1), "m"),
    ]
    for call, argument in cases:
        with pytest.raises(VectorIndexError) as e:
            call()
        assert isinstance(e.value, SymbiError)
        assert e.value.argument == argument, (argument, str(e.value))
        assert len(str(e.value)) > 20
    assert len(index) == 1
    with pytest.raises(VectorIndexError, match="dimension 49, but the index has dimension 48"):
        index.add([5], np.ones(DIM + 1))
