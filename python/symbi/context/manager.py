"""``ContextManager``: agent memory, a runtime component named ``"context"``.

Four kinds of memory (see :data:`~symbi.context.MemoryKind`):

* **short-term**: the last ``short_term_window`` items of each agent, in memory;
* **working**: scratch items of one task (:meth:`ContextManager.begin_task` /
  :meth:`~ContextManager.end_task`, or ``async with cm.task(agent) as task_id``), dropped
  when the task ends;
* **long-term**: persistent in SQLite and vector-indexed, private to the agent, expiring
  ``context.knowledge_retention_days`` after being stored (0 keeps items forever); expired
  items are never returned and are deleted by :meth:`~ContextManager.housekeep`;
* **shared knowledge**: collections readable across agents. Every read and write is an
  enforcement point of the policy engine (actions ``read_knowledge`` and
  ``write_knowledge``, the collection as resource) and is recorded to the audit sink
  (``knowledge.read``, ``knowledge.write``, ``knowledge.delete``, ``knowledge.denied``).
  Without a policy engine every shared access is denied (fail closed). A write or delete
  is recorded inside its transaction, from the worker thread doing it (so the sink's
  ``record`` must be thread-safe, as :class:`~symbi.audit.AuditLog`'s is): it is committed
  only if the sink took the event, and then even if the caller timed out or was cancelled.

Every write is visible to the next search as soon as its call returns. Blocking work
(embedding, SQLite, the index) runs in worker threads, and every call takes a
``timeout`` (default ``default_timeout``; :class:`~symbi.errors.RequestTimeout` past it).

The store remembers which embedder made its embeddings; opened with another one (another
class, model or dimension) it re-embeds every stored item from its content during
:meth:`~ContextManager.open`, which is bounded by ``open_timeout``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

import anyio
import msgspec
import numpy as np
import numpy.typing as npt
from anyio.abc import TaskGroup

from ..components import ComponentHealth, Housekeeper
from ..config import Config, ContextConfig
from ..embed import Embedder, HashingEmbedder
from ..errors import (
    AuditStorageError,
    InvalidArgument,
    PolicyDenied,
    RequestTimeout,
    ResourceLimitExceeded,
    RuntimeStateError,
)
from ..policy import AuditSink, PolicyEngine, PolicyRequest
from ..vector.filters import MISSING, check_filter, index_scalar, is_utf8, matches
from ..vector.store import EmbeddedVectorStore, VectorStore
from .cache import ByteLRU, CacheStats
from .memory import ShortTermMemory, WorkingMemory, rank
from .store import ContextStore, StoredItem, scope
from .types import MEMORY_KINDS, ContextId, ContextItem, KnowledgeItem

__all__ = ["AgentMemory", "ContextManager", "ContextStats"]

log = logging.getLogger("symbi.context")

T = TypeVar("T")
Vec = npt.NDArray[np.float32]

_PREFIX = {"short_term": "st", "working": "wk", "long_term": "lt", "shared": "sh"}
_COLLECTION = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_DAY = 86_400.0


class ContextStats(msgspec.Struct, frozen=True, kw_only=True):
    backend: str
    long_term: int
    shared: int
    short_term: int
    working: int
    open_tasks: int
    cache: CacheStats
    rebuilt_index: bool
    expired: int
    #: Items re-embedded on open because the embedder changed (0: it did not).
    reembedded: int = 0


def _bad(argument: str, message: str, expected: str, got: Any = None) -> InvalidArgument:
    return InvalidArgument(message, argument=argument, expected=expected, got=got)


def _agent(agent_id: Any) -> str:
    if (
        not isinstance(agent_id, str)
        or not agent_id.strip()
        or len(agent_id) > 256
        or not is_utf8(agent_id)
    ):
        raise _bad(
            "agent_id",
            f"agent_id must be a non-empty UTF-8 str of at most 256 characters, got {agent_id!r}",
            "non-empty str",
            agent_id,
        )
    return agent_id


def _positive_int(argument: str, v: Any, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
        raise _bad(argument, f"{argument} must be an int in 1..{hi}, got {v!r}", f"1..{hi}", v)
    return v


def _metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise _bad(
            "metadata", "metadata must be a dict", "dict[str, JSON value]", type(metadata).__name__
        )
    out = dict(metadata)
    for key, v in out.items():
        if not isinstance(key, str) or not key or key.startswith(("_", "$")) or not is_utf8(key):
            raise _bad(
                "metadata",
                f"metadata keys must be non-empty UTF-8 str not starting with '_' or '$' "
                f"(reserved), got {key!r}",
                "str keys without a leading '_' or '$'",
                key,
            )
        # Scalars are indexed for filters: refuse up front what the index cannot hold,
        # rather than commit an item that then cannot be indexed.
        if isinstance(v, int) and index_scalar(v) is MISSING:
            raise _bad(
                "metadata",
                f"metadata[{key!r}] = {v} does not fit in 64 bits (-2**63 .. 2**63-1); "
                "store large numbers as str",
                "ints in -2**63 .. 2**63-1",
                v,
            )
    try:
        # ensure_ascii=False + encode: a lone surrogate anywhere fails here, not in SQLite.
        json.dumps(out, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise _bad("metadata", f"metadata strings must be valid UTF-8: {e}", "UTF-8 str") from None
    except (TypeError, ValueError) as e:
        raise _bad("metadata", f"metadata must be JSON-serialisable: {e}", "JSON values") from None
    return out


def _filter(flt: Any) -> dict[str, Any]:
    if flt is None:
        return {}
    if not isinstance(flt, Mapping):
        raise _bad("filter", "filter must be a dict such as {'lang': 'de'}", "dict", flt)
    check_filter(flt)  # the index's language, checked up front for every kind of memory
    return dict(flt)


def _embedder_id(embedder: Embedder) -> str:
    """What the store records about the embedder that made its embeddings: class, model
    name (if it has one) and dimension."""
    cls = type(embedder)
    model = None
    for attr in ("model", "model_name", "model_id"):
        v = getattr(embedder, attr, None)
        if isinstance(v, str) and v:
            model = v
            break
    return json.dumps(
        {"class": f"{cls.__module__}.{cls.__qualname__}", "model": model, "dim": embedder.dim},
        sort_keys=True,
    )


class _OpenAttempt:
    """The hand-over between :meth:`ContextManager.open` and its worker thread: whoever
    comes first decides whether the store stays open (the worker finished) or is closed
    by the worker (the caller gave up)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._abandoned = False
        self._kept = False

    def abandoned(self) -> bool:
        return self._abandoned

    def keep(self) -> bool:
        with self._lock:
            self._kept = not self._abandoned
            return self._kept

    def abandon(self) -> bool:
        """The caller gives up; False when the worker already kept the store open."""
        with self._lock:
            self._abandoned = not self._kept
            return self._abandoned


def _check_timeout(argument: str, t: Any) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
        raise _bad(argument, f"{argument} must be a positive number of seconds", "> 0", t)
    return float(t)


def _collection(collection: Any) -> str:
    if not isinstance(collection, str) or not _COLLECTION.match(collection):
        raise _bad(
            "collection",
            f"collection must be 1-128 characters of letters, digits and _ . : -, got "
            f"{collection!r}",
            "[A-Za-z0-9_.:-]{1,128}",
            collection,
        )
    return collection


class ContextManager:
    """Agent memory (see the module docstring). Use it as a runtime component, or alone
    as ``async with ContextManager(path=...) as cm:``.

    ``path`` is a directory for ``context.sqlite3`` and the index files (``index/``);
    None keeps everything in memory. ``vector_store`` defaults to the embedded HNSW index;
    ``embedder`` to :class:`~symbi.embed.HashingEmbedder` of ``dim`` dimensions.
    ``open_timeout`` bounds :meth:`open` (which may rebuild the index or re-embed the
    store); ``audit.record`` is called from worker threads for writes (see the module
    docstring).
    """

    name = "context"

    def __init__(
        self,
        *,
        path: Union[str, Path, None] = None,
        embedder: Optional[Embedder] = None,
        dim: int = 384,
        vector_store: Optional[VectorStore] = None,
        policy: Optional[PolicyEngine] = None,
        audit: Optional[AuditSink] = None,
        retention_days: int = 365,
        cache_bytes: int = 64 << 20,
        short_term_window: int = 64,
        max_working_items: int = 4096,
        max_item_bytes: int = 1 << 20,
        housekeeper: Optional[Housekeeper] = None,
        default_timeout: float = 10.0,
        index_flush_interval_s: float = 300.0,
        clock: Callable[[], float] = time.time,
        open_timeout: float = 600.0,
    ) -> None:
        _positive_int("dim", dim, 65_536)
        if embedder is None:
            embedder = HashingEmbedder(dim)
        if not isinstance(embedder, Embedder):
            raise _bad("embedder", "embedder needs dim and embed(texts)", "an Embedder", embedder)
        if embedder.dim != dim:
            raise _bad(
                "embedder",
                f"the embedder makes {embedder.dim}-d vectors but dim is {dim}; set "
                "context.embedding_dimension to match",
                f"{dim}-d",
                embedder.dim,
            )
        if isinstance(retention_days, bool) or not isinstance(retention_days, int):
            raise _bad("retention_days", "retention_days must be an int", "int >= 0")
        if retention_days < 0:
            raise _bad("retention_days", "retention_days must be >= 0", "int >= 0", retention_days)
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise _bad("cache_bytes", "cache_bytes must be an int >= 0", "int >= 0", cache_bytes)
        _positive_int("short_term_window", short_term_window, 1_000_000)
        _positive_int("max_working_items", max_working_items, 10_000_000)
        _positive_int("max_item_bytes", max_item_bytes, 1 << 30)
        if not default_timeout > 0:
            raise _bad("default_timeout", "default_timeout must be > 0", "> 0", default_timeout)
        _check_timeout("open_timeout", open_timeout)
        if not index_flush_interval_s > 0:
            raise _bad(
                "index_flush_interval_s",
                "index_flush_interval_s must be > 0",
                "> 0",
                index_flush_interval_s,
            )
        if policy is not None and not isinstance(policy, PolicyEngine):
            raise _bad("policy", "policy must be a symbi.PolicyEngine", "PolicyEngine", policy)
        if audit is not None and not callable(getattr(audit, "record", None)):
            raise _bad("audit", "audit needs record(event_type, agent_id, details)", "AuditSink")
        self._path = None if path is None else Path(path)
        self.embedder = embedder
        self.dim = dim
        if vector_store is None:
            index_dir = None if self._path is None else self._path / "index"
            vector_store = EmbeddedVectorStore(dim, index_dir)
        if vector_store.dim != dim:
            raise _bad("vector_store", f"vector_store is {vector_store.dim}-d, not {dim}-d", "dim")
        # No policy engine: an empty one with enforcement on denies all shared access.
        self.policy = policy if policy is not None else PolicyEngine(enforce_policies=True)
        self.audit = audit
        self.retention_days = retention_days
        self.max_item_bytes = max_item_bytes
        self.default_timeout = float(default_timeout)
        self._clock = clock
        self.cache = ByteLRU(cache_bytes)
        self.open_timeout = float(open_timeout)
        self._store = ContextStore(
            self._path,
            dim=dim,
            vectors=vector_store,
            cache=self.cache,
            embedder_id=_embedder_id(embedder),
            embed=self._embed,
            retention_s=self._retention_s(),
        )
        # Serialises this manager's calls into the audit sink (from the loop and from
        # worker threads).
        self._audit_lock = threading.Lock()
        self._short = ShortTermMemory(short_term_window)
        self._working = WorkingMemory(max_working_items)
        self._seq = 0
        self._housekeeper = housekeeper
        self._expired = 0
        self._last_error: Optional[str] = None
        self._opened = False
        self._closed = False
        self._tg: Optional[TaskGroup] = None
        self._flushing = False
        self._last_flush = time.monotonic()
        self.index_flush_interval_s = float(index_flush_interval_s)

    @classmethod
    def from_config(
        cls,
        config: Union[Config, ContextConfig],
        *,
        policy: Optional[PolicyEngine],
        audit: Optional[AuditSink],
        path: Union[str, Path, None],
        embedder: Optional[Embedder] = None,
        housekeeper: Optional[Housekeeper] = None,
    ) -> ContextManager:
        """The manager ``config`` asks for: ``embedding_dimension``, ``context_cache_size``,
        ``knowledge_retention_days``, and ``vector_db_url`` (Qdrant when set, else the
        embedded index in ``path``)."""
        cc = config.context if isinstance(config, Config) else config
        if not isinstance(cc, ContextConfig):
            raise _bad("config", "config must be a symbi.Config", "Config", type(config).__name__)
        store: Optional[VectorStore] = None
        if cc.vector_db_url:
            from ..vector.qdrant import QdrantVectorStore

            store = QdrantVectorStore(cc.embedding_dimension, url=cc.vector_db_url)
        return cls(
            path=path,
            embedder=embedder,
            dim=cc.embedding_dimension,
            vector_store=store,
            policy=policy,
            audit=audit,
            retention_days=cc.knowledge_retention_days,
            cache_bytes=cc.context_cache_bytes,
            housekeeper=housekeeper,
        )

    # ------------------------------------------------------------------ plumbing
    async def _run(self, fn: Callable[..., T], *args: Any, timeout: Optional[float]) -> T:
        t = _check_timeout("timeout", self.default_timeout if timeout is None else timeout)
        if not self._opened or self._closed:
            raise RuntimeStateError(
                "the context manager is not open; use `async with ContextManager(...)` or "
                "start the runtime first"
            )
        try:
            with anyio.fail_after(t):
                return await anyio.to_thread.run_sync(lambda: fn(*args), abandon_on_cancel=True)
        except TimeoutError:
            raise RequestTimeout(
                f"the context store did not answer within {t}s (a write may still complete); "
                "raise the timeout or check the disk",
                recipient="context",
                timeout=t,
            ) from None

    def _embed(self, texts: list[str]) -> Vec:
        out = self.embedder.embed(texts)
        if out.shape != (len(texts), self.dim):
            from ..errors import ModelError

            raise ModelError(
                f"{type(self.embedder).__name__} returned shape {out.shape} for "
                f"{len(texts)} texts; expected ({len(texts)}, {self.dim})",
                model=type(self.embedder).__name__,
            )
        return out

    def _embed_query(self, text: str) -> Vec:
        key = ("q", text)
        hit = self.cache.get(key)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        vec: Vec = self._embed([text])[0]
        self.cache.put(key, vec, vec.nbytes + 2 * len(text) + 100)
        return vec

    def _text(self, text: Any, argument: str) -> str:
        if not isinstance(text, str) or not text.strip():
            raise _bad(argument, f"{argument} must be a non-empty str", "non-empty str", text)
        if not is_utf8(text):
            raise _bad(
                argument,
                f"{argument} is not valid UTF-8 (it holds a lone surrogate); decode it with "
                "errors='replace' first",
                "UTF-8 str",
            )
        if len(text) > self.max_item_bytes:
            raise _bad(
                argument,
                f"{argument} is {len(text)} characters; the limit is {self.max_item_bytes} "
                "(split it, e.g. with symbi.rag.chunk_text)",
                f"<= {self.max_item_bytes} characters",
                len(text),
            )
        return text

    def _retention_s(self) -> Optional[float]:
        return self.retention_days * _DAY if self.retention_days > 0 else None

    def _expires(self, now: float) -> Optional[float]:
        # Same arithmetic as ContextStore._apply_retention (created_at + retention).
        r = self._retention_s()
        return None if r is None else now + r

    def _record(self, event: str, agent_id: str, details: dict[str, Any]) -> None:
        """Hand one event to the audit sink (from any thread); a failing sink is an
        :class:`~symbi.errors.AuditStorageError`."""
        if self.audit is None:
            return
        try:
            with self._audit_lock:
                self.audit.record(event, agent_id, details)
        except Exception as e:
            self._last_error = f"audit sink failed: {e!r}"
            log.exception("audit sink failed to record %s", event)
            raise AuditStorageError(
                f"the audit sink failed to record {event}: {e!r}; the operation was not "
                "carried out (shared knowledge is only touched when audited). Check the "
                "audit log's disk and state"
            ) from e

    def _enforce(self, agent_id: str, action: str, collection: str, **ctx: Any) -> None:
        req = PolicyRequest(
            principal=agent_id,
            action=action,
            resource=collection,
            context={"collection": collection, "kind": "shared", **ctx},
        )
        try:
            self.policy.enforce(req)
        except PolicyDenied as e:
            reason = getattr(e.decision, "reason", str(e))
            # The denial stands even if the sink fails (logged and shown in health()).
            with contextlib.suppress(AuditStorageError):
                self._record(
                    "knowledge.denied",
                    agent_id,
                    {"action": action, "collection": collection, "reason": reason},
                )
            raise

    def _next_id(self, kind: str) -> str:
        self._seq += 1
        return f"{_PREFIX[kind]}:{self._seq}"

    # ------------------------------------------------------------------ component
    async def open(self, *, timeout: Optional[float] = None) -> None:
        """Open (or create) the store; idempotent. Bounded by ``timeout`` (default
        ``open_timeout``): opening may rebuild the index or re-embed every item, and a
        timeout or cancellation abandons that work (nothing half-done is kept; the next
        open starts again)."""
        if self._closed:
            raise RuntimeStateError("this ContextManager was stopped; create a new one")
        if self._opened:
            return
        t = _check_timeout("timeout", self.open_timeout if timeout is None else timeout)
        attempt = _OpenAttempt()

        def work() -> None:
            self._store.open(should_stop=attempt.abandoned, keep=attempt.keep)

        try:
            with anyio.fail_after(t):
                await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except TimeoutError:
            if attempt.abandon():  # else the store opened just as time ran out: keep it
                raise RequestTimeout(
                    f"opening the context store took longer than {t}s (rebuilding the index "
                    "or re-embedding it); the work was abandoned. Raise open_timeout",
                    recipient="context",
                    timeout=t,
                ) from None
        except BaseException:
            # Cancelled: the worker closes the store again unless it already finished.
            if attempt.abandon():
                raise
            self._mark_open()
            raise
        self._mark_open()

    def _mark_open(self) -> None:
        self._opened = True
        if self._housekeeper is not None:
            self._housekeeper.register("context", self._housekeep_task)

    async def start(self, task_group: TaskGroup) -> None:
        self._tg = task_group
        await self.open()

    async def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._housekeeper is not None:
            self._housekeeper.unregister("context")
        if self._opened:
            with anyio.CancelScope(shield=True), anyio.fail_after(60.0):
                await anyio.to_thread.run_sync(self._store.close)

    async def __aenter__(self) -> ContextManager:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def health(self) -> ComponentHealth:
        if not self._opened or self._closed:
            return ComponentHealth(status="down", detail="not open")
        detail = f"{self._store.vectors.backend} store, {len(self._short)} short-term items"
        if self._last_error:
            return ComponentHealth(status="degraded", detail=f"{detail}; {self._last_error}")
        return ComponentHealth(status="ok", detail=detail)

    async def _housekeep_task(self) -> None:
        """The runtime housekeeper's round: expiry every round (fast); saving the index
        at most every ``index_flush_interval_s``, in the background (it rewrites the
        index files, which takes a while for large indexes)."""
        await self.housekeep(flush=False)
        due = time.monotonic() - self._last_flush >= self.index_flush_interval_s
        if due and not self._flushing:
            if self._tg is not None:
                self._tg.start_soon(self._flush_quietly, name="symbi.context.flush")
            else:
                await self._flush_quietly()

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except Exception as e:  # logged and shown in health(); retried next round
            log.exception("saving the context index failed")
            self._last_error = f"index flush failed: {e}"

    async def flush(self, *, timeout: float = 600.0) -> None:
        """Save the vector index next to the database now (stop() does it too). Not
        needed for durability, which SQLite provides; it only saves a rebuild on reopen."""
        self._flushing = True
        try:
            await self._run(self._store.flush, timeout=timeout)
            self._last_flush = time.monotonic()
        finally:
            self._flushing = False

    async def housekeep(self, *, timeout: Optional[float] = None, flush: bool = True) -> int:
        """Delete expired long-term and shared items (and, with ``flush``, save the
        index); returns how many items expired. Registered with the runtime's
        housekeeper when one is given. A changed ``retention_days`` is applied to the
        items already stored first (expiry is ``created_at`` + the current retention)."""
        if isinstance(self.retention_days, bool) or not isinstance(self.retention_days, int):
            raise _bad("retention_days", "retention_days must be an int", "int >= 0")
        if self.retention_days < 0:
            raise _bad("retention_days", "retention_days must be >= 0", "int >= 0")
        retention = self._retention_s()

        def work() -> int:
            if retention != self._store.retention_s:
                self._store.apply_retention(retention)
            n = self._store.expire(self._clock())
            if flush:
                self._store.flush()
            return n

        try:
            n = await self._run(work, timeout=timeout)
        except Exception as e:
            self._last_error = f"housekeeping failed: {e}"
            raise
        self._last_error = None
        self._expired += n
        return n

    async def stats(self) -> ContextStats:
        def work() -> tuple[int, int]:
            return (
                self._store.count("kind=?", ("long_term",)),
                self._store.count("kind=?", ("shared",)),
            )

        lt, sh = await self._run(work, timeout=None)
        return ContextStats(
            backend=self._store.vectors.backend,
            long_term=lt,
            shared=sh,
            short_term=len(self._short),
            working=len(self._working),
            open_tasks=len(self._working._tasks),
            cache=self.cache.stats(),
            rebuilt_index=self._store.rebuilt,
            expired=self._expired,
            reembedded=self._store.reembedded,
        )

    def for_agent(self, agent_id: str) -> AgentMemory:
        """The memory of one agent, with its id bound (``ctx.memory`` for agents)."""
        return AgentMemory(self, agent_id)

    # ------------------------------------------------------------------ tasks
    def begin_task(self, agent_id: str, task_id: Optional[str] = None) -> str:
        """Open a working-memory scope for a task; returns its id (new if not given)."""
        agent_id = _agent(agent_id)
        if task_id is None:
            task_id = uuid.uuid4().hex[:16]
        elif not isinstance(task_id, str) or not task_id:
            raise _bad("task_id", "task_id must be a non-empty str", "str", task_id)
        if not self._working.begin(agent_id, task_id):
            raise _bad(
                "task_id", f"task {task_id!r} is already open for {agent_id!r}", "a new id", task_id
            )
        return task_id

    def end_task(self, agent_id: str, task_id: str) -> int:
        """Close a task: its working memory is dropped. Returns how many items went."""
        n = self._working.end(_agent(agent_id), task_id)
        if n < 0:
            raise _bad("task_id", f"task {task_id!r} is not open for {agent_id!r}", "open task")
        return n

    @asynccontextmanager
    async def task(self, agent_id: str, task_id: Optional[str] = None) -> AsyncIterator[str]:
        """``async with cm.task(agent) as task_id:``: working memory for the block."""
        tid = self.begin_task(agent_id, task_id)
        try:
            yield tid
        finally:
            self._working.end(agent_id, tid)

    # ------------------------------------------------------------------ writes
    async def store_context(
        self,
        agent_id: str,
        context: str,
        *,
        kind: str = "long_term",
        metadata: Optional[Mapping[str, Any]] = None,
        task_id: Optional[str] = None,
        collection: str = "default",
        timeout: Optional[float] = None,
    ) -> ContextId:
        """Store one item; returns its id. ``kind``: ``long_term`` (default),
        ``short_term``, ``working`` (needs an open ``task_id``) or ``shared`` (policy
        action ``write_knowledge`` on ``collection``)."""
        ids = await self.store_contexts(
            agent_id,
            [context],
            kind=kind,
            metadata=None if metadata is None else [metadata],
            task_id=task_id,
            collection=collection,
            timeout=timeout,
        )
        return ids[0]

    async def store_contexts(
        self,
        agent_id: str,
        contexts: Sequence[str],
        *,
        kind: str = "long_term",
        metadata: Optional[Sequence[Optional[Mapping[str, Any]]]] = None,
        task_id: Optional[str] = None,
        collection: str = "default",
        timeout: Optional[float] = None,
    ) -> list[ContextId]:
        """Store a batch (one embedding call, one transaction); returns their ids."""
        agent_id = _agent(agent_id)
        if kind not in MEMORY_KINDS:
            raise _bad("kind", f"kind must be one of {list(MEMORY_KINDS)}, got {kind!r}", "kind")
        if isinstance(contexts, str) or not isinstance(contexts, Sequence) or not contexts:
            raise _bad("contexts", "contexts must be a non-empty list of str", "list[str]")
        texts = [self._text(c, "context") for c in contexts]
        if metadata is None:
            metas: list[dict[str, Any]] = [{} for _ in texts]
        else:
            if isinstance(metadata, Mapping) or len(metadata) != len(texts):
                raise _bad("metadata", "pass one metadata dict (or None) per context", "list")
            metas = [_metadata(m) for m in metadata]
        if kind == "working" and (
            not isinstance(task_id, str) or not self._working.is_open(agent_id, task_id)
        ):
            raise _bad(
                "task_id",
                f"working memory needs an open task; call begin_task({agent_id!r}) "
                f"first (got task_id={task_id!r})",
                "an open task id",
                task_id,
            )
        coll = _collection(collection) if kind == "shared" else ""
        if kind == "shared":
            self._enforce(
                agent_id,
                "write_knowledge",
                coll,
                items=len(texts),
                bytes=sum(len(t) for t in texts),
            )

        if kind in ("long_term", "shared"):
            nbytes = sum(len(t) for t in texts)

            audited: dict[str, Any] = {}

            def audit(items: list[StoredItem]) -> None:
                # Inside the transaction: committed only if the sink took the event, and
                # then even if our caller has timed out or been cancelled meanwhile.
                what = {"collection": coll, "ids": [f"sh:{it.id}" for it in items]}
                self._record("knowledge.write", agent_id, {**what, "bytes": nbytes})
                audited.update(what)  # only once the sink took it

            def write() -> list[StoredItem]:
                now = self._clock()
                embs = self._nonzero(self._embed(texts), "contexts")
                with self._undo_audit("knowledge.write_failed", agent_id, audited):
                    return self._store.add(
                        kind=kind,
                        agent_id=agent_id,
                        collection=coll,
                        contents=texts,
                        metadata=metas,
                        embeddings=embs,
                        created_at=now,
                        expires_at=self._expires(now),
                        before_commit=audit if kind == "shared" else None,
                    )

            stored = await self._run(write, timeout=timeout)
            return [ContextId(f"{_PREFIX[kind]}:{it.id}") for it in stored]

        if kind == "working":
            assert task_id is not None
            self._working_room(agent_id, task_id, len(texts))
        embs = await self._run(lambda: self._embed(texts), timeout=timeout)
        now = self._clock()
        entries = [
            (
                ContextItem(
                    id=ContextId(self._next_id(kind)),
                    agent_id=agent_id,
                    kind=kind,
                    content=text,
                    metadata=meta,
                    created_at=now,
                    task_id=task_id if kind == "working" else None,
                ),
                emb,
            )
            for text, meta, emb in zip(texts, metas, embs)
        ]
        if kind == "short_term":
            for entry in entries:
                self._short.add(agent_id, entry)
        else:
            assert task_id is not None
            n = self._working.add_all(agent_id, task_id, entries)
            if n < 0:  # the task ended while we embedded
                raise _bad("task_id", f"task {task_id!r} ended", "an open task", task_id)
            if n == 0:  # filled up by another call while we embedded
                raise self._working_full(agent_id, task_id, len(entries))
        return [ContextId(item.id) for item, _ in entries]

    def _working_room(self, agent_id: str, task_id: str, n: int) -> None:
        """Refuse up front a batch that does not fit in the task's working memory."""
        if self._working.count(agent_id, task_id) + n > self._working.max_items:
            raise self._working_full(agent_id, task_id, n)

    def _working_full(self, agent_id: str, task_id: str, n: int) -> ResourceLimitExceeded:
        used = self._working.count(agent_id, task_id)
        return ResourceLimitExceeded(
            f"task {task_id!r} holds {used} of {self._working.max_items} working items; "
            f"{n} more do not fit, so none was stored (a batch is stored whole or not at "
            "all). End the task, store fewer, or store long-term",
            agent_id=agent_id,
            resource="working_memory",
            limit=float(self._working.max_items),
            used=float(used),
        )

    @staticmethod
    def _nonzero(embs: Vec, argument: str) -> Vec:
        empty = np.flatnonzero(~np.any(embs != 0, axis=1))
        if empty.size:
            raise _bad(
                argument,
                f"{argument}[{int(empty[0])}] has nothing the embedder can index (no words); "
                "store text with words in it",
                "text with words",
                int(empty[0]),
            )
        return embs

    async def forget(
        self, agent_id: str, context_id: str, *, timeout: Optional[float] = None
    ) -> bool:
        """Delete one of the agent's own long-term items (shared items need the policy
        action ``write_knowledge``). Returns whether it existed."""
        agent_id = _agent(agent_id)
        kind, num = self._parse_id(context_id)
        if kind not in ("long_term", "shared"):
            raise _bad("context_id", "only long-term and shared items can be forgotten", "lt:/sh:")

        def lookup() -> Optional[StoredItem]:
            it = self._store.get_many([num]).get(num)
            if it is not None and it.expires_at is not None and it.expires_at <= self._clock():
                return None  # expired: never returned, deleted by housekeeping
            return it

        item = await self._run(lookup, timeout=timeout)
        if item is None or item.kind != kind:
            return False
        if kind == "long_term" and item.agent_id != agent_id:
            return False  # another agent's private memory: not visible, so not found
        if kind == "shared":
            self._enforce(agent_id, "write_knowledge", item.collection, op="delete")
        coll = item.collection

        audited: dict[str, Any] = {}

        def audit(n: int) -> None:
            # Inside the transaction, as for writes (see store_contexts).
            if n:
                what = {"collection": coll, "id": context_id}
                self._record("knowledge.delete", agent_id, what)
                audited.update(what)  # only once the sink took it

        def delete() -> int:
            with self._undo_audit("knowledge.delete_failed", agent_id, audited):
                return self._store.delete([num], before_commit=audit if kind == "shared" else None)

        return await self._run(delete, timeout=timeout) > 0

    @contextlib.contextmanager
    def _undo_audit(self, event: str, agent_id: str, audited: dict[str, Any]) -> Iterator[None]:
        """If the operation fails after its audit event was recorded (the COMMIT itself
        failed), record that it did not happen, so the trail never claims a change that
        was rolled back."""
        try:
            yield
        except BaseException as e:
            if audited:
                with contextlib.suppress(AuditStorageError):
                    self._record(event, agent_id, {**audited, "error": repr(e)})
            raise

    @staticmethod
    def _parse_id(context_id: Any) -> tuple[str, int]:
        if isinstance(context_id, str) and ":" in context_id:
            prefix, _, num = context_id.partition(":")
            kinds = {v: k for k, v in _PREFIX.items()}
            if prefix in kinds and num.isdigit():
                return kinds[prefix], int(num)
        raise _bad("context_id", f"not a context id: {context_id!r}", "'lt:<n>' etc.", context_id)

    # ------------------------------------------------------------------ reads
    async def retrieve_context(
        self,
        agent_id: str,
        query: str,
        *,
        k: int = 5,
        kinds: Sequence[str] = ("short_term", "working", "long_term"),
        task_id: Optional[str] = None,
        filter: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
    ) -> list[ContextItem]:
        """The agent's ``k`` items most similar to ``query`` across ``kinds`` (its own
        memory only; shared knowledge is :meth:`search_knowledge`), best first, with
        ``score``. ``task_id`` limits working memory to one task (default: all open
        tasks); ``filter`` (the vector index's filter language, see
        :mod:`symbi.vector.index`) applies to the metadata of every kind."""
        agent_id = _agent(agent_id)
        query = self._text(query, "query")
        k = _positive_int("k", k, 1000)
        if isinstance(kinds, str) or not all(x in MEMORY_KINDS for x in kinds):
            raise _bad("kinds", f"kinds must be a list drawn from {list(MEMORY_KINDS)}", "list")
        if "shared" in kinds:
            raise _bad("kinds", "shared knowledge is read with search_knowledge()", "private kinds")
        if task_id is not None and not isinstance(task_id, str):
            raise _bad("task_id", "task_id must be a str or None", "str", task_id)
        user_filter = _filter(filter)

        def kept(entries: list[Any]) -> list[Any]:
            # The same filter language as the index applies to long-term memory.
            if not user_filter:
                return entries
            return [e for e in entries if matches(e[0].metadata, user_filter)]

        def work() -> list[ContextItem]:
            q = self._embed_query(query)
            if not np.any(q):
                return []
            now = self._clock()
            scored: list[tuple[ContextItem, float]] = []
            if "long_term" in kinds:
                flt = self._scoped(user_filter, scope("long_term", agent_id, ""), now)
                for it, s in self._store.search(q, k, flt, now=now):
                    scored.append((self._context_item(it), s))
            if "short_term" in kinds:
                scored.extend(rank(kept(self._short.entries(agent_id)), q, k))
            if "working" in kinds:
                tasks = [task_id] if task_id is not None else self._working.tasks(agent_id)
                entries = [e for t in tasks for e in self._working.entries(agent_id, t)]
                scored.extend(rank(kept(entries), q, k))
            scored.sort(key=lambda p: -p[1])
            return [msgspec.structs.replace(it, score=s) for it, s in scored[:k]]

        return await self._run(work, timeout=timeout)

    def _scoped(self, user_filter: dict[str, Any], scope_: str, now: float) -> dict[str, Any]:
        """The user's filter plus the reserved fields (which win): the scope, and the
        expiry only once some item may have expired."""
        flt = {**user_filter, "_scope": scope_}
        if now >= self._store.min_expiry:
            flt["_exp"] = {"gt": int(now)}
        return flt

    @staticmethod
    def _context_item(it: StoredItem) -> ContextItem:
        return ContextItem(
            id=f"{_PREFIX[it.kind]}:{it.id}",
            agent_id=it.agent_id,
            kind=it.kind,
            content=it.content,
            metadata=it.metadata,
            created_at=it.created_at,
            expires_at=it.expires_at,
        )

    async def share_knowledge(
        self,
        agent_id: str,
        content: str,
        *,
        collection: str = "default",
        metadata: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
    ) -> ContextId:
        """Add to a shared collection (policy action ``write_knowledge``; audited)."""
        return await self.store_context(
            agent_id,
            content,
            kind="shared",
            metadata=metadata,
            collection=collection,
            timeout=timeout,
        )

    async def search_knowledge(
        self,
        agent_id: str,
        text: str,
        *,
        collection: str = "default",
        k: int = 5,
        filter: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
    ) -> list[KnowledgeItem]:
        """Search a shared collection (policy action ``read_knowledge`` on the
        collection; every read is audited with the ids returned)."""
        agent_id = _agent(agent_id)
        coll = _collection(collection)
        text = self._text(text, "text")
        k = _positive_int("k", k, 1000)
        user_filter = _filter(filter)
        self._enforce(agent_id, "read_knowledge", coll, k=k)

        def work() -> list[KnowledgeItem]:
            q = self._embed_query(text)
            if not np.any(q):
                return []
            now = self._clock()
            flt = self._scoped(user_filter, scope("shared", "", coll), now)
            return [
                KnowledgeItem(
                    id=f"sh:{it.id}",
                    collection=it.collection,
                    content=it.content,
                    source_agent=it.agent_id,
                    metadata=it.metadata,
                    created_at=it.created_at,
                    expires_at=it.expires_at,
                    score=s,
                )
                for it, s in self._store.search(q, k, flt, now=now)
            ]

        found = await self._run(work, timeout=timeout)
        self._record(
            "knowledge.read",
            agent_id,
            {"collection": coll, "results": len(found), "ids": [f.id for f in found]},
        )
        return found


class AgentMemory:
    """One agent's view of a :class:`ContextManager` (what an agent sees as
    ``ctx.memory``): the same calls with the agent id bound."""

    __slots__ = ("_cm", "agent_id")

    def __init__(self, cm: ContextManager, agent_id: str) -> None:
        self._cm = cm
        self.agent_id = _agent(agent_id)

    async def store(
        self,
        text: str,
        *,
        kind: str = "long_term",
        metadata: Optional[Mapping[str, Any]] = None,
        task_id: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> ContextId:
        return await self._cm.store_context(
            self.agent_id, text, kind=kind, metadata=metadata, task_id=task_id, timeout=timeout
        )

    async def search(
        self,
        query: str,
        *,
        k: int = 5,
        kinds: Sequence[str] = ("short_term", "working", "long_term"),
        filter: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
    ) -> list[ContextItem]:
        return await self._cm.retrieve_context(
            self.agent_id, query, k=k, kinds=kinds, filter=filter, timeout=timeout
        )

    async def share(
        self,
        text: str,
        *,
        collection: str = "default",
        metadata: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
    ) -> ContextId:
        return await self._cm.share_knowledge(
            self.agent_id, text, collection=collection, metadata=metadata, timeout=timeout
        )

    async def search_knowledge(
        self,
        text: str,
        *,
        collection: str = "default",
        k: int = 5,
        timeout: Optional[float] = None,
    ) -> list[KnowledgeItem]:
        return await self._cm.search_knowledge(
            self.agent_id, text, collection=collection, k=k, timeout=timeout
        )

    def task(self, task_id: Optional[str] = None) -> Any:
        """``async with memory.task() as task_id:`` working memory for the block."""
        return self._cm.task(self.agent_id, task_id)
