"""Properties of symbi.VectorIndex search: sorted results whose distances are the exact
distances of the returned items, and deleted ids never come back."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from symbi.vector import NO_ID, VectorIndex


def exact_dist(metric: str, q: np.ndarray, x: np.ndarray) -> np.ndarray:
    if metric == "cosine":
        q = q / np.linalg.norm(q)
        x = x / np.linalg.norm(x, axis=-1, keepdims=True)
        return 1.0 - x @ q
    if metric == "dot":
        return 1.0 - x @ q
    return ((x - q) ** 2).sum(-1)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 300),
    dim=st.integers(1, 24),
    k=st.integers(1, 20),
    metric=st.sampled_from(["cosine", "dot", "l2"]),
    compression=st.sampled_from([None, "sq4", "sq8"]),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_search_sorted_exact_and_deleted_never_returned(n, dim, k, metric, compression, seed, data):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32) + 0.01
    ids = rng.choice(10**9, size=n, replace=False).astype(np.uint64)
    index = VectorIndex(dim, metric, compression=compression, ef_construction=32)
    index.add(ids, x)
    gone = data.draw(st.lists(st.sampled_from(list(range(n))), unique=True, max_size=n))
    index.delete(ids[gone])
    q = rng.normal(size=(3, dim)).astype(np.float32)
    found, dist = index.search(q, k=k)
    by_id = {int(i): row for i, row in zip(ids, x)}
    alive = n - len(gone)
    for qi in range(3):
        real = found[qi] != NO_ID
        assert real.sum() == min(k, alive)
        assert np.all(np.diff(dist[qi][real]) >= 0)
        assert not np.isin(found[qi][real], ids[gone]).any()
        if real.any():
            vecs = np.stack([by_id[int(i)] for i in found[qi][real]])
            want = exact_dist(metric, q[qi].astype(np.float64), vecs.astype(np.float64))
            assert np.allclose(dist[qi][real], want, rtol=1e-3, atol=1e-3)
