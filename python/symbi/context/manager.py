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
  (``knowledge.read``, ``knowledge.write``, ``knowledge.denied``). Without a policy engine
  every shared access is denied (fail closed).

Every write is visible to the next search as soon as its call returns. Blocking work
(embedding, SQLite, the index) runs in worker threads, and every call takes a
``timeout`` (default ``default_timeout``; :class:`~symbi.errors.RequestTimeout` past it).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
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
    InvalidArgument,
    PolicyDenied,
    RequestTimeout,
    ResourceLimitExceeded,
    RuntimeStateError,
)
from ..policy import AuditSink, PolicyEngine, PolicyRequest
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


def _bad(argument: str, message: str, expected: str, got: Any = None) -> InvalidArgument:
    return InvalidArgument(message, argument=argument, expected=expected, got=got)


def _agent(agent_id: Any) -> str:
    if not isinstance(agent_id, str) or not agent_id.strip() or len(agent_id) > 256:
        raise _bad(
            "agent_id",
            f"agent_id must be a non-empty str of at most 256 characters, got {agent_id!r}",
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
    for key in out:
        if not isinstance(key, str) or not key or key.startswith("_"):
            raise _bad(
                "metadata",
                f"metadata keys must be non-empty str not starting with '_' (reserved), "
                f"got {key!r}",
                "str keys without a leading '_'",
                key,
            )
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise _bad("metadata", f"metadata must be JSON-serialisable: {e}", "JSON values") from None
    return out


def _filter(flt: Any) -> dict[str, Any]:
    if flt is None:
        return {}
    if not isinstance(flt, Mapping):
        raise _bad("filter", "filter must be a dict such as {'lang': 'de'}", "dict", flt)
    for key in flt:
        if isinstance(key, str) and key.startswith("_"):
            raise _bad(
                "filter", f"filter key {key!r} is reserved", "keys without a leading '_'", key
            )
    return dict(flt)


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
        self._store = ContextStore(self._path, dim=dim, vectors=vector_store, cache=self.cache)
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
        t = self.default_timeout if timeout is None else timeout
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise _bad("timeout", "timeout must be a positive number of seconds", "> 0", t)
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
        if len(text) > self.max_item_bytes:
            raise _bad(
                argument,
                f"{argument} is {len(text)} characters; the limit is {self.max_item_bytes} "
                "(split it, e.g. with symbi.rag.chunk_text)",
                f"<= {self.max_item_bytes} characters",
                len(text),
            )
        return text

    def _expires(self, now: float) -> Optional[float]:
        return now + self.retention_days * _DAY if self.retention_days > 0 else None

    def _record(self, event: str, agent_id: str, details: dict[str, Any]) -> None:
        if self.audit is None:
            return
        try:
            self.audit.record(event, agent_id, details)
        except Exception as e:
            self._last_error = f"audit sink failed: {e!r}"
            log.exception("audit sink failed to record %s", event)
            raise

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
    async def open(self) -> None:
        """Open (or create) the store; idempotent."""
        if self._closed:
            raise RuntimeStateError("this ContextManager was stopped; create a new one")
        if self._opened:
            return
        with anyio.fail_after(max(60.0, self.default_timeout)):
            await anyio.to_thread.run_sync(self._store.open)
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
        housekeeper when one is given."""

        def work() -> int:
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

            def write() -> list[StoredItem]:
                now = self._clock()
                return self._store.add(
                    kind=kind,
                    agent_id=agent_id,
                    collection=coll,
                    contents=texts,
                    metadata=metas,
                    embeddings=self._nonzero(self._embed(texts), "contexts"),
                    created_at=now,
                    expires_at=self._expires(now),
                )

            stored = await self._run(write, timeout=timeout)
            ids = [ContextId(f"{_PREFIX[kind]}:{it.id}") for it in stored]
            if kind == "shared":
                self._record(
                    "knowledge.write",
                    agent_id,
                    {"collection": coll, "ids": list(ids), "bytes": sum(len(t) for t in texts)},
                )
            return ids

        embs = await self._run(lambda: self._embed(texts), timeout=timeout)
        now = self._clock()
        out: list[ContextId] = []
        for text, meta, emb in zip(texts, metas, embs):
            cid = ContextId(self._next_id(kind))
            item = ContextItem(
                id=cid,
                agent_id=agent_id,
                kind=kind,
                content=text,
                metadata=meta,
                created_at=now,
                task_id=task_id if kind == "working" else None,
            )
            if kind == "short_term":
                self._short.add(agent_id, (item, emb))
            else:
                assert task_id is not None
                n = self._working.add(agent_id, task_id, (item, emb))
                if n == 0:
                    raise ResourceLimitExceeded(
                        f"task {task_id!r} holds {self._working.max_items} working items, the "
                        "limit; end the task or store long-term",
                        agent_id=agent_id,
                        resource="working_memory",
                        limit=float(self._working.max_items),
                        used=float(self._working.max_items),
                    )
                if n < 0:  # the task ended while we embedded
                    raise _bad("task_id", f"task {task_id!r} ended", "an open task", task_id)
            out.append(cid)
        return out

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
            return self._store.get_many([num]).get(num)

        item = await self._run(lookup, timeout=timeout)
        if item is None or item.kind != kind:
            return False
        if kind == "long_term" and item.agent_id != agent_id:
            return False  # another agent's private memory: not visible, so not found
        if kind == "shared":
            self._enforce(agent_id, "write_knowledge", item.collection, op="delete")
        await self._run(self._store.delete, [num], timeout=timeout)
        if kind == "shared":
            self._record(
                "knowledge.delete", agent_id, {"collection": item.collection, "id": context_id}
            )
        return True

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
        tasks); ``filter`` applies to long-term metadata."""
        agent_id = _agent(agent_id)
        query = self._text(query, "query")
        k = _positive_int("k", k, 1000)
        if isinstance(kinds, str) or not all(x in MEMORY_KINDS for x in kinds):
            raise _bad("kinds", f"kinds must be a list drawn from {list(MEMORY_KINDS)}", "list")
        if "shared" in kinds:
            raise _bad("kinds", "shared knowledge is read with search_knowledge()", "private kinds")
        user_filter = _filter(filter)

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
                scored.extend(rank(self._short.entries(agent_id), q, k))
            if "working" in kinds:
                tasks = [task_id] if task_id is not None else self._working.tasks(agent_id)
                entries = [e for t in tasks for e in self._working.entries(agent_id, t)]
                scored.extend(rank(entries, q, k))
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
