"""``QdrantVectorStore``: the :class:`~symbi.vector.store.VectorStore` protocol on a Qdrant
server (``context.vector_db_url`` / ``QDRANT_URL``) or on qdrant-client's local mode.

Needs the optional extra ``symbi[qdrant]`` (qdrant-client). Filters in the
:class:`~symbi.VectorIndex` dict syntax are translated to Qdrant filters, so they are
evaluated by Qdrant during its search, as in the embedded index.

URLs: ``http(s)://host:6333`` is a server; ``qdrant-local://:memory:`` and
``qdrant-local:///some/dir`` are qdrant-client's local mode (in memory or on disk).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from ..deadlines import check_timeout
from ..errors import ContextStoreError, InvalidArgument
from .store import check_k

__all__ = ["QdrantVectorStore", "qdrant_filter"]

_RANGE_OPS = {"lt": "lt", "lte": "lte", "le": "lte", "gt": "gt", "gte": "gte", "ge": "gte"}


def _models() -> Any:
    try:
        from qdrant_client import models
    except ImportError:
        raise ContextStoreError(
            "the Qdrant backend needs qdrant-client: pip install 'symbi[qdrant]'",
            backend="qdrant",
        ) from None
    return models


def _bad_filter(msg: str, got: Any) -> InvalidArgument:
    return InvalidArgument(
        f"filter: {msg}", argument="filter", expected="a VectorIndex filter dict", got=got
    )


# Floats represent every int up to 2**53 exactly: such ints can be matched as numbers.
_EXACT_FLOAT_INT = 2**53


def _operand(key: str, op: str, val: Any) -> Any:
    """``val`` checked as the embedded index checks filter operands."""
    if isinstance(val, (bool, str)):
        return val
    if isinstance(val, int):
        if not -(2**63) <= val < 2**63:
            raise _bad_filter(f"{key!r}.{op}: integers must fit in 64 bits", val)
        return val
    if isinstance(val, float):
        if not math.isfinite(val):
            raise _bad_filter(f"{key!r}.{op}: floats must be finite (no NaN or infinity)", val)
        return val
    raise _bad_filter(
        f"{key!r}.{op}: operand of type {type(val).__name__} is not supported; use str, "
        "int, float or bool",
        val,
    )


def _equal(models: Any, key: str, values: Sequence[Any]) -> list[Any]:
    """Conditions of which one matches iff the field equals one of ``values``, with the
    embedded index's semantics: numbers compare by value whatever their type (``2``
    matches ``2.0``), bools only bools, strs only strs. Qdrant's MatchValue/MatchAny
    compare types exactly and take no floats, so numbers become point ranges."""
    strs = [v for v in values if isinstance(v, str)]
    out: list[Any] = []
    if strs:
        out.append(models.FieldCondition(key=key, match=models.MatchAny(any=strs)))
    for b in dict.fromkeys(v for v in values if isinstance(v, bool)):
        out.append(models.FieldCondition(key=key, match=models.MatchValue(value=b)))
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    # Beyond 2**53 a float range would also match neighbouring ints: match those exactly.
    big = [v for v in nums if isinstance(v, int) and abs(v) > _EXACT_FLOAT_INT]
    if big:
        out.append(models.FieldCondition(key=key, match=models.MatchAny(any=big)))
    for x in dict.fromkeys(float(v) for v in nums if not (isinstance(v, int) and v in big)):
        out.append(models.FieldCondition(key=key, range=models.Range(gte=x, lte=x)))
    return out


def _any_of(models: Any, conds: list[Any]) -> Any:
    """One condition true iff one of ``conds`` is; an empty list matches nothing."""
    if len(conds) == 1:
        return conds[0]
    if not conds:  # "in []": Qdrant's empty should would match everything
        return models.HasIdCondition(has_id=[])
    return models.Filter(should=conds)


def _field(models: Any, key: str, cond: Any) -> tuple[list[Any], list[Any]]:
    """(must, must_not) conditions for one ``key: cond`` entry."""
    if not isinstance(cond, Mapping):
        if isinstance(cond, (list, tuple, set, dict)) or cond is None:
            raise _bad_filter(f"{key!r}: use {{'in': [...]}} for sets", cond)
        return [_any_of(models, _equal(models, key, [_operand(key, "eq", cond)]))], []
    must: list[Any] = []
    must_not: list[Any] = []
    rng: dict[str, Any] = {}
    for op, val in cond.items():
        name = op.lstrip("$") if isinstance(op, str) else op
        if name == "eq":
            must.append(_any_of(models, _equal(models, key, [_operand(key, op, val)])))
        elif name == "ne":
            must_not.extend(_equal(models, key, [_operand(key, op, val)]))
        elif name in _RANGE_OPS:
            if isinstance(val, bool) or not isinstance(val, (int, float)):
                raise _bad_filter(f"{key!r}.{op} needs a number", val)
            rng[_RANGE_OPS[name]] = _operand(key, op, val)
        elif name in ("in", "nin"):
            if not isinstance(val, (list, tuple)):
                raise _bad_filter(f"{key!r}.{op} needs a list", val)
            conds = _equal(models, key, [_operand(key, op, v) for v in val])
            if name == "in":
                must.append(_any_of(models, conds))
            else:
                must_not.extend(conds)  # must_not: none of them may match
        else:
            raise _bad_filter(f"unknown operator {op!r} on {key!r}", op)
    if rng:
        must.append(models.FieldCondition(key=key, range=models.Range(**rng)))
    return must, must_not


def _sub_filters(key: str, cond: Any) -> list[Mapping[str, Any]]:
    if not isinstance(cond, (list, tuple)) or not all(isinstance(c, Mapping) for c in cond):
        raise _bad_filter(f"{key} needs a list of filter dicts", cond)
    return list(cond)


def qdrant_filter(flt: Optional[Mapping[str, Any]]) -> Any:
    """A ``qdrant_client.models.Filter`` equal to a :class:`~symbi.VectorIndex` filter
    (:class:`InvalidArgument` for a filter it cannot express)."""
    if flt is None:
        return None
    if not isinstance(flt, Mapping):
        raise _bad_filter("must be a dict such as {'lang': 'de'}", flt)
    models = _models()
    try:
        return _build(models, flt)
    except InvalidArgument:
        raise
    except (ValueError, TypeError) as e:  # pydantic's ValidationError is a ValueError
        raise _bad_filter(f"Qdrant cannot express {dict(flt)!r}: {e}", flt) from None


def _build(models: Any, flt: Mapping[str, Any]) -> Any:
    must: list[Any] = []
    must_not: list[Any] = []
    for key, cond in flt.items():
        if not isinstance(key, str):
            raise _bad_filter(f"keys must be str, got {key!r}", key)
        if key in ("$and", "and"):
            must.extend(_build(models, c) for c in _sub_filters(key, cond))
        elif key in ("$or", "or"):
            subs = [_build(models, c) for c in _sub_filters(key, cond)]
            must.append(_any_of(models, subs))
        elif key in ("$not", "not"):
            if not isinstance(cond, Mapping):
                raise _bad_filter(f"{key} needs a filter dict", cond)
            must_not.append(_build(models, cond))
        else:
            m, mn = _field(models, key, cond)
            must.extend(m)
            must_not.extend(mn)
    return models.Filter(must=must or None, must_not=must_not or None)


class QdrantVectorStore:
    """Points in one Qdrant collection (cosine distance), created if missing.

    Pass ``url`` (a server, or ``qdrant-local://...`` for local mode), or a ready
    ``client`` (a ``qdrant_client.QdrantClient``). ``timeout`` bounds each request.
    """

    backend = "qdrant"

    def __init__(
        self,
        dim: int,
        *,
        url: Optional[str] = None,
        client: Any = None,
        collection: str = "symbi_context",
        api_key: Optional[str] = None,
        timeout: float = 10.0,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InvalidArgument("dim must be a positive int", argument="dim", expected="int")
        if not isinstance(collection, str) or not collection:
            raise InvalidArgument(
                "collection must be a non-empty str", argument="collection", expected="str"
            )
        if (url is None) == (client is None):
            raise InvalidArgument(
                "pass exactly one of url= or client=",
                argument="url",
                expected="a Qdrant URL or a QdrantClient",
                got=url,
            )
        timeout = check_timeout(timeout)
        self._models = _models()
        self._dim = dim
        self.collection = collection
        self.url = url or "<client>"
        self._lock = threading.Lock()
        if client is None:
            assert url is not None
            client = self._connect(url, api_key, timeout)
        self._client = client
        self._ensure_collection()

    @staticmethod
    def _connect(url: str, api_key: Optional[str], timeout: float) -> Any:
        from qdrant_client import QdrantClient

        if url.startswith("qdrant-local://"):
            where = url[len("qdrant-local://") :]
            if where in ("", ":memory:"):
                return QdrantClient(location=":memory:")
            return QdrantClient(path=where)
        if not url.startswith(("http://", "https://")):
            raise InvalidArgument(
                f"a Qdrant URL is http(s)://host:6333 or qdrant-local://PATH, got {url!r}",
                argument="vector_db_url",
                expected="http(s)://... or qdrant-local://...",
                got=url,
            )
        return QdrantClient(url=url, api_key=api_key, timeout=int(max(1, timeout)))

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (InvalidArgument, ContextStoreError):
            raise
        except Exception as e:
            raise ContextStoreError(
                f"Qdrant {what} failed on {self.url} (collection {self.collection!r}): {e}; "
                "check that the server is up and the collection's vector size matches",
                path=self.url,
                backend=self.backend,
            ) from e

    def _ensure_collection(self) -> None:
        m = self._models
        exists = self._call("collection check", self._client.collection_exists, self.collection)
        if not exists:
            self._call(
                "create_collection",
                self._client.create_collection,
                self.collection,
                vectors_config=m.VectorParams(size=self._dim, distance=m.Distance.COSINE),
            )
            return
        info = self._call("get_collection", self._client.get_collection, self.collection)
        size = getattr(getattr(info.config.params, "vectors", None), "size", None)
        if size is not None and size != self._dim:
            raise ContextStoreError(
                f"Qdrant collection {self.collection!r} holds {size}-d vectors, not "
                f"{self._dim}-d; use another collection or embedding_dimension",
                path=self.url,
                backend=self.backend,
            )

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def client(self) -> Any:
        return self._client

    def upsert(
        self,
        ids: Sequence[int],
        vectors: Any,
        metadata: Sequence[Optional[Mapping[str, Any]]],
    ) -> None:
        if len(ids) == 0:
            return
        mat = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)
        if mat.shape[1] != self._dim:
            raise InvalidArgument(
                f"vectors must be {self._dim}-d, got {mat.shape[1]}-d",
                argument="vectors",
                expected=f"(n, {self._dim})",
                got=mat.shape,
            )
        points = [
            self._models.PointStruct(id=int(i), vector=v.tolist(), payload=dict(meta or {}))
            for i, v, meta in zip(ids, mat, metadata)
        ]
        self._call("upsert", self._client.upsert, self.collection, points=points, wait=True)

    def delete(self, ids: Sequence[int]) -> None:
        if len(ids) == 0:
            return
        sel = self._models.PointIdsList(points=[int(i) for i in ids])
        self._call("delete", self._client.delete, self.collection, points_selector=sel, wait=True)

    def search(
        self, query: Any, k: int, filter: Optional[Mapping[str, Any]] = None
    ) -> list[tuple[int, float]]:
        k = check_k(k)
        try:
            q = np.asarray(query, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as e:
            raise InvalidArgument(
                f"query must be a {self._dim}-d vector ({e})",
                argument="query",
                expected=f"({self._dim},) floats",
                got=type(query).__name__,
            ) from None
        if q.shape[0] != self._dim:  # else Qdrant's own shape error, as a store failure
            raise InvalidArgument(
                f"query must be a {self._dim}-d vector, got {q.shape[0]}-d",
                argument="query",
                expected=f"({self._dim},)",
                got=q.shape,
            )
        res = self._call(
            "query_points",
            self._client.query_points,
            self.collection,
            query=q.tolist(),
            limit=k,
            query_filter=qdrant_filter(filter),
            with_payload=False,
        )
        return [(int(p.id), float(p.score)) for p in res.points]

    def count(self) -> int:
        res = self._call("count", self._client.count, self.collection, exact=True)
        return int(res.count)

    def reset(self) -> None:
        self._call("delete_collection", self._client.delete_collection, self.collection)
        self._ensure_collection()

    def marker(self) -> Optional[str]:
        return None  # Qdrant persists by itself; its state is trusted as is.

    def flush(self, marker: str) -> None:
        return None  # every write above waited for Qdrant's acknowledgement

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing twice, or a local client gone
            self._client.close()
