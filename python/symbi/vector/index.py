"""``symbi.VectorIndex``: the typed facade over ``symbi._core.VectorIndexCore``.

Everything heavy runs in Rust with the GIL released, so the methods are plain (blocking)
calls that are safe to run from several threads at once, or in a worker thread from async
code (``await anyio.to_thread.run_sync(index.search, q)``). Searches run concurrently
with adds and deletes.

Distances (smaller is closer): cosine ``1 - cos``, dot ``1 - a.b``, l2 squared Euclidean,
the same conventions as hnswlib. Cosine vectors are normalized at insert and query time.

Filters are dicts evaluated on each item's metadata *during* graph traversal::

    {"lang": "de"}                                  # equality
    {"year": {"gte": 2020, "lt": 2025}}             # ranges: lt, lte, gt, gte (le/ge too), ne
    {"tag": {"in": ["a", "b"]}}                     # sets: in, nin
    {"$or": [{"lang": "de"}, {"$not": {"tag": "x"}}]}   # and/or/not; top-level keys AND

A missing field fails ``eq``/ranges/``in`` and passes ``ne``/``nin``. Filters estimated to
match at most 2% of the items (or any filter on an index of at most 2048 items) are
answered exactly by brute force over the matching items, so very selective filters still
return the k true nearest matches.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional, Union

import msgspec
import numpy as np
import numpy.typing as npt

from .. import _core
from ..errors import InvalidArgument, VectorIndexError

__all__ = ["NO_ID", "VectorIndex", "VectorIndexStats", "VectorRecord"]

#: Id padding the results of a search that found fewer than k items (distance ``inf``).
NO_ID: int = 2**64 - 1

IdsLike = Union[int, Iterable[int], npt.ArrayLike]
MetaValue = Union[str, int, float, bool]


class VectorRecord(msgspec.Struct, frozen=True):
    """One stored item: its id, vector (normalized for cosine) and metadata."""

    id: int
    vector: Any  # numpy.ndarray[float32], shape (dim,)
    metadata: Optional[dict[str, Any]]


class VectorIndexStats(msgspec.Struct, frozen=True, kw_only=True):
    """Size and shape of an index. ``bytes_per_code`` is the compressed size of one
    vector (0 without compression); ``mmap`` is the mapped vectors file, if any;
    ``fallback_searches`` counts graph searches answered by brute force instead."""

    count: int
    deleted: int
    slots: int
    dim: int
    metric: str
    m: int
    ef_construction: int
    ef_search: int
    compression: Optional[str]
    max_level: int
    vector_bytes: int
    code_bytes: int
    bytes_per_code: int
    graph_bytes: int
    mmap: Optional[str]
    simd: str
    #: Graph searches that found fewer than k results and were answered by brute force
    #: instead; stays 0 on a well-connected graph.
    fallback_searches: int = 0


def _bad(argument: str, message: str, got: Any = None) -> VectorIndexError:
    return VectorIndexError(message, argument=argument, got=got)


def _positive(argument: str, value: Any, optional: bool = True) -> Optional[int]:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise _bad(argument, f"{argument} must be a positive int, got {value!r}", value)
    return int(value)


def _ids(ids: IdsLike) -> npt.NDArray[np.uint64]:
    if isinstance(ids, bool):
        raise _bad("ids", "ids must be ints, got a bool", ids)
    if isinstance(ids, (int, np.integer)):
        ids = [int(ids)]
    try:
        if isinstance(ids, np.ndarray):
            arr = ids
        else:
            # Element-wise, so ids above 2**63 never pass through float64.
            arr = np.fromiter((operator.index(x) for x in ids), dtype=np.uint64)  # type: ignore[union-attr, arg-type]
        if arr.size == 0 and arr.ndim == 1:
            return np.zeros(0, dtype=np.uint64)
        if arr.dtype.kind not in "iu" or arr.ndim != 1:
            raise TypeError(f"dtype {arr.dtype}, {arr.ndim} dimensions")
        if arr.dtype.kind == "i" and int(arr.min()) < 0:
            raise OverflowError("negative id")
    except (TypeError, ValueError, OverflowError) as e:
        raise _bad(
            "ids", f"ids must be a 1-D sequence of ints in 0 .. 2**64-2 ({e})", ids
        ) from None
    return np.ascontiguousarray(arr, dtype=np.uint64)


def _matrix(x: Any, argument: str) -> tuple[npt.NDArray[np.float32], bool]:
    """(2-D C-contiguous float32 array, whether the input was a single 1-D vector)."""
    # Fast path for the common case (a float32 numpy array): no copy, no errstate context
    # (which alone costs several microseconds, as much as a small search).
    if type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous:
        if x.ndim == 1:
            return x.reshape(1, -1), True
        if x.ndim == 2:
            return x, False
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise _bad(argument, f"{argument} must be numeric arrays ({e})") from None
    single = arr.ndim == 1
    if single:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise _bad(argument, f"{argument} must be 1-D (one vector) or 2-D (rows), got {arr.ndim}-D")
    return np.ascontiguousarray(arr), single


def _metadata(metadata: Any, n: int) -> Optional[Sequence[Optional[dict[str, Any]]]]:
    if metadata is None:
        return None
    if isinstance(metadata, Mapping):
        metadata = [metadata]
    if isinstance(metadata, (str, bytes)) or not isinstance(metadata, Iterable):
        raise _bad("metadata", "metadata must be a list with one dict (or None) per id")
    out = [None if m is None else dict(m) if isinstance(m, Mapping) else m for m in metadata]
    if len(out) != n:
        raise _bad("metadata", f"got {len(out)} metadata entries for {n} ids; pass one per id")
    return out


def _dir_path(path: Any) -> str:
    # os.fspath raises a bare TypeError for an int or None: say what is expected.
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgument(
            f"path must be a directory path (str or os.PathLike), got {type(path).__name__}",
            argument="path",
            expected="str | os.PathLike",
            got=type(path).__name__,
        )
    p = os.fspath(path)
    if not isinstance(p, str):  # a bytes path: the core takes str
        raise InvalidArgument(
            "path must be a str path, not bytes", argument="path", expected="str", got=p
        )
    return p


class VectorIndex:
    """An HNSW vector index (see the module docstring for metrics and filters).

    ``m`` and ``ef_construction`` shape the graph (defaults 16 and 200, as hnswlib);
    ``ef_search`` is the default search breadth, overridable per query with ``ef``.
    ``compression="sq4"`` traverses the graph on 4-bit codes (8x smaller than float32) and
    reranks the candidates with the float32 vectors (mmap'd after :meth:`load`).
    ``compression="sq8"`` traverses on 8-bit codes (a quarter of the float32 bytes, kept
    *in addition* to them: +25% memory) and reranks the ``ef`` candidates exactly; the
    same recall at a given ``ef`` as float32 traversal, about 1.5x the queries per second
    once the vectors outgrow the CPU caches.
    """

    __slots__ = ("_core",)

    def __init__(
        self,
        dim: int,
        metric: str = "cosine",
        *,
        m: int = 16,
        ef_construction: int = 200,
        ef_search: int = 100,
        compression: Optional[str] = None,
        seed: int = 100,
    ) -> None:
        dim_ = _positive("dim", dim, optional=False)
        if not isinstance(metric, str):
            raise _bad("metric", "metric must be 'cosine', 'dot' or 'l2'", metric)
        if compression is not None and not isinstance(compression, str):
            raise _bad("compression", "compression must be 'sq8', 'sq4' or None", compression)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise _bad("seed", "seed must be a non-negative int", seed)
        self._core = _core.VectorIndexCore(
            dim_ or 0,
            metric,
            _positive("m", m, optional=False) or 0,
            _positive("ef_construction", ef_construction, optional=False) or 0,
            _positive("ef_search", ef_search, optional=False) or 0,
            compression,
            seed,
        )

    @classmethod
    def _wrap(cls, core: _core.VectorIndexCore) -> VectorIndex:
        self = cls.__new__(cls)
        self._core = core
        return self

    # ------------------------------------------------------------------ updates

    def add(
        self,
        ids: IdsLike,
        vectors: Any,
        metadata: Any = None,
        *,
        threads: Optional[int] = None,
    ) -> int:
        """Add new items (a batch, linked on all cores with the GIL released).

        ``vectors`` is one vector or an (n, dim) array; ``metadata`` one dict (or None)
        per id. Raises :class:`VectorIndexError` if an id already exists (use
        :meth:`upsert`). Returns the number of items added.
        """
        return self._add(ids, vectors, metadata, upsert=False, threads=threads)

    def upsert(
        self,
        ids: IdsLike,
        vectors: Any,
        metadata: Any = None,
        *,
        threads: Optional[int] = None,
    ) -> int:
        """Add items, replacing the vector and metadata of ids that already exist."""
        return self._add(ids, vectors, metadata, upsert=True, threads=threads)

    def _add(
        self, ids: IdsLike, vectors: Any, metadata: Any, *, upsert: bool, threads: Optional[int]
    ) -> int:
        id_arr = _ids(ids)
        mat, _ = _matrix(vectors, "vectors")
        if mat.shape[0] != id_arr.shape[0]:
            raise _bad(
                "ids",
                f"got {id_arr.shape[0]} ids for {mat.shape[0]} vectors; pass one id per row",
            )
        meta = _metadata(metadata, id_arr.shape[0])
        return self._core.add(id_arr, mat, meta, upsert, _positive("threads", threads))

    def delete(self, ids: IdsLike, *, missing_ok: bool = False) -> int:
        """Delete items; deleted ids are never returned again. Unknown ids raise
        :class:`VectorIndexError` (``.id``) unless ``missing_ok``; then nothing is deleted."""
        return self._core.delete(_ids(ids), bool(missing_ok))

    def repair(self) -> int:
        """Relink the graph around deleted items now (it also runs by itself when more
        than 10% of the items are unrepaired deletes, and on :meth:`save`)."""
        return self._core.repair()

    # ------------------------------------------------------------------ queries

    def search(
        self,
        queries: Any,
        k: int = 10,
        *,
        ef: Optional[int] = None,
        filter: Optional[Mapping[str, Any]] = None,
        threads: Optional[int] = None,
    ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32]]:
        """The k nearest items to each query: ``(ids, distances)``, closest first.

        A 1-D query gives 1-D arrays of length k; an (n, dim) batch gives (n, k) arrays,
        searched in parallel (``threads``: None = all cores). Missing results (fewer than
        k items match) are padded with :data:`NO_ID` and ``inf``.
        """
        mat, single = _matrix(queries, "queries")
        k_ = _positive("k", k, optional=False) or 0
        if filter is not None and not isinstance(filter, Mapping):
            raise _bad("filter", "filter must be a dict such as {'lang': 'de'}", filter)
        ids, dists = self._core.search(
            mat,
            k_,
            _positive("ef", ef),
            None if filter is None else dict(filter),
            _positive("threads", threads),
        )
        if single:
            return ids[0], dists[0]
        return ids, dists

    def get(self, id: int) -> VectorRecord:
        """The stored vector and metadata of ``id`` (:class:`VectorIndexError` if absent)."""
        ident = int(_ids(id)[0])
        vec, meta = self._core.get(ident)
        return VectorRecord(id=ident, vector=vec, metadata=meta)

    def contains(self, id: int) -> bool:
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)):
            return False
        return 0 <= int(id) < NO_ID and self._core.contains(int(id))

    def __contains__(self, id: object) -> bool:
        return isinstance(id, (int, np.integer)) and self.contains(int(id))

    def __len__(self) -> int:
        return len(self._core)

    def __repr__(self) -> str:
        c = self._core
        return (
            f"VectorIndex(dim={c.dim}, metric={c.metric!r}, compression={c.compression!r}, "
            f"count={len(c)})"
        )

    def stats(self) -> VectorIndexStats:
        return VectorIndexStats(**self._core.stats())

    @property
    def dim(self) -> int:
        return self._core.dim

    @property
    def metric(self) -> str:
        return self._core.metric

    @property
    def compression(self) -> Optional[str]:
        return self._core.compression

    # ------------------------------------------------------------------ persistence

    def save(self, path: Union[str, os.PathLike[str]]) -> None:
        """Write the index to directory ``path`` (created if missing).

        Crash-safe: a new generation is written to temp files, fsynced and renamed, then
        the ``CURRENT`` pointer is swapped atomically and the directory fsynced; older
        generations are removed afterwards. Deleted items are compacted away.
        """
        self._core.save(_dir_path(path))

    @classmethod
    def load(cls, path: Union[str, os.PathLike[str]], *, mmap: bool = True) -> VectorIndex:
        """Open an index saved with :meth:`save`. With ``mmap`` (the default) the float32
        vectors stay in the memory-mapped file and are paged in on demand."""
        return cls._wrap(_core.VectorIndexCore.load(_dir_path(path), bool(mmap)))
