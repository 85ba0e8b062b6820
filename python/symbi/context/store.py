"""``ContextStore``: the durable half of agent memory (long-term items and shared
knowledge).

SQLite (standard library, WAL journal) is the source of truth for items, their metadata
and their embeddings; a :class:`~symbi.vector.VectorStore` (the embedded HNSW index, saved
next to the database, or Qdrant) indexes the embeddings. Each write commits to SQLite and
updates the index before it returns, so it is visible to the next search at once. The
index is flushed on housekeeping and on close together with the database's write epoch;
when they disagree on reopen (a crash between the two), the index is rebuilt from SQLite.

All methods are blocking and thread-safe; the context manager calls them in worker
threads.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import msgspec
import numpy as np
import numpy.typing as npt

from ..errors import ContextStoreError
from ..vector.store import VectorStore
from .cache import ByteLRU

__all__ = ["NEVER", "ContextStore", "StoredItem", "index_metadata", "scope"]

#: ``expires_at`` of items that never expire, as stored in the index metadata.
NEVER = 2**53

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    collection TEXT NOT NULL DEFAULT '',
    content TEXT NOT NULL,
    metadata TEXT NOT NULL,
    embedding BLOB NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS items_expiry ON items(expires_at);
CREATE INDEX IF NOT EXISTS items_owner ON items(kind, agent_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_COLUMNS = "id, kind, agent_id, collection, content, metadata, created_at, expires_at"


class StoredItem(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A row of the store (long-term or shared). Not tracked by the garbage collector
    (it cannot form cycles), so a cache of many items does not slow full collections."""

    id: int
    kind: str
    agent_id: str
    collection: str
    content: str
    metadata: dict[str, Any]
    created_at: float
    expires_at: Optional[float]

    @property
    def nbytes(self) -> int:
        """Approximate memory held by this item, for the byte-bounded cache."""
        return 200 + 2 * len(self.content) + 64 * len(self.metadata)


def index_metadata(item: StoredItem) -> dict[str, Any]:
    """What the vector index stores for filtering: the item's scalar metadata plus the
    reserved ``_scope`` (see :func:`scope`) and ``_exp`` fields."""
    out: dict[str, Any] = {
        k: v for k, v in item.metadata.items() if isinstance(v, (str, int, float, bool))
    }
    out["_scope"] = scope(item.kind, item.agent_id, item.collection)
    out["_exp"] = NEVER if item.expires_at is None else int(item.expires_at)
    return out


def scope(kind: str, agent_id: str, collection: str) -> str:
    """The one index field a search filters on: the owner of long-term items, the
    collection of shared ones (one equality test per visited node)."""
    return f"lt:{agent_id}" if kind == "long_term" else f"sh:{collection}"


class ContextStore:
    """Items in SQLite at ``path / "context.sqlite3"`` (in memory when ``path`` is None),
    indexed in ``vectors``; item bodies cached in ``cache``."""

    def __init__(
        self,
        path: Optional[Path],
        *,
        dim: int,
        vectors: VectorStore,
        cache: ByteLRU,
    ) -> None:
        self.path = path
        self.dim = dim
        self.vectors = vectors
        self.cache = cache
        self._lock = threading.RLock()
        self._db: Optional[sqlite3.Connection] = None
        self._epoch = 0
        self.rebuilt = False
        #: The earliest ``expires_at`` of any stored item (inf: none expires). While the
        #: clock is before it, searches need no expiry filter.
        self.min_expiry = math.inf

    # ------------------------------------------------------------------ lifecycle
    def _where(self) -> str:
        return str(self.path / "context.sqlite3") if self.path is not None else ":memory:"

    def _fail(self, what: str, e: BaseException) -> ContextStoreError:
        return ContextStoreError(
            f"context store {what} failed on {self._where()}: {e}; check the directory's "
            "permissions and free space",
            path=self._where(),
            backend="sqlite",
        )

    def open(self) -> None:
        with self._lock:
            if self._db is not None:
                return
            try:
                if self.path is not None:
                    self.path.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self._where(), check_same_thread=False, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                row = db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
            except (sqlite3.Error, OSError) as e:
                raise self._fail("open", e) from e
            self._db = db
            self._epoch = int(row[0]) if row else 0
            self._sync_index()
            self._refresh_min_expiry()

    def _refresh_min_expiry(self) -> None:
        (m,) = self._conn().execute("SELECT MIN(expires_at) FROM items").fetchone()
        self.min_expiry = math.inf if m is None else float(m)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise ContextStoreError(
                "the context store is closed; open the ContextManager first",
                path=self._where(),
                backend="sqlite",
            )
        return self._db

    def _sync_index(self) -> None:
        """Rebuild the vector index from SQLite if it missed writes (or has extra ones)."""
        db = self._conn()
        (count,) = db.execute("SELECT COUNT(*) FROM items").fetchone()
        marker = self.vectors.marker()
        stale = marker != str(self._epoch) if marker is not None else None
        if stale is None:
            stale = self.vectors.count() != count
        if not stale:
            return
        self.rebuilt = True
        self.vectors.reset()
        cur = db.execute(f"SELECT {_COLUMNS}, embedding FROM items ORDER BY id")
        while True:
            rows = cur.fetchmany(4096)
            if not rows:
                break
            items = [self._item(r) for r in rows]
            mat = np.frombuffer(b"".join(r[8] for r in rows), dtype=np.float32)
            self.vectors.upsert(
                [it.id for it in items],
                mat.reshape(len(items), self.dim),
                [index_metadata(it) for it in items],
            )
        self.vectors.flush(str(self._epoch))

    def flush(self) -> None:
        """Save the index with the current epoch (a no-op when nothing changed)."""
        with self._lock:
            if self._db is not None:
                self.vectors.flush(str(self._epoch))

    def close(self) -> None:
        with self._lock:
            if self._db is None:
                return
            try:
                self.vectors.flush(str(self._epoch))
            finally:
                self.vectors.close()
                self._db.close()
                self._db = None

    @property
    def is_open(self) -> bool:
        return self._db is not None

    # ------------------------------------------------------------------ writes
    def _bump(self, db: sqlite3.Connection) -> None:
        self._epoch += 1
        db.execute(
            "INSERT INTO meta(key, value) VALUES('epoch', ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (str(self._epoch),),
        )

    def add(
        self,
        *,
        kind: str,
        agent_id: str,
        collection: str,
        contents: Sequence[str],
        metadata: Sequence[Mapping[str, Any]],
        embeddings: npt.NDArray[np.float32],
        created_at: float,
        expires_at: Optional[float],
    ) -> list[StoredItem]:
        """Insert items (one transaction) and index them; visible to searches on return."""
        with self._lock:
            db = self._conn()
            items: list[StoredItem] = []
            try:
                db.execute("BEGIN IMMEDIATE")
                for content, meta, emb in zip(contents, metadata, embeddings):
                    cur = db.execute(
                        "INSERT INTO items(kind, agent_id, collection, content, metadata, "
                        "embedding, created_at, expires_at) VALUES (?,?,?,?,?,?,?,?)",
                        (
                            kind,
                            agent_id,
                            collection,
                            content,
                            json.dumps(dict(meta), separators=(",", ":")),
                            np.ascontiguousarray(emb, dtype=np.float32).tobytes(),
                            created_at,
                            expires_at,
                        ),
                    )
                    assert cur.lastrowid is not None
                    items.append(
                        StoredItem(
                            id=cur.lastrowid,
                            kind=kind,
                            agent_id=agent_id,
                            collection=collection,
                            content=content,
                            metadata=dict(meta),
                            created_at=created_at,
                            expires_at=expires_at,
                        )
                    )
                self._bump(db)
                db.execute("COMMIT")
            except sqlite3.Error as e:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise self._fail("write", e) from e
            # Indexed under the lock, so the index never misses a committed item for long
            # and a flush always pairs the index with the epoch it contains.
            self.vectors.upsert(
                [it.id for it in items], embeddings, [index_metadata(it) for it in items]
            )
            for it in items:
                self.cache.put(("item", it.id), it, it.nbytes)
            if expires_at is not None:
                self.min_expiry = min(self.min_expiry, expires_at)
            return items

    def delete(self, ids: Iterable[int]) -> int:
        id_list = [int(i) for i in ids]
        if not id_list:
            return 0
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
                n = 0
                for start in range(0, len(id_list), 500):
                    part = id_list[start : start + 500]
                    marks = ",".join("?" * len(part))
                    n += db.execute(f"DELETE FROM items WHERE id IN ({marks})", part).rowcount
                self._bump(db)
                db.execute("COMMIT")
            except sqlite3.Error as e:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise self._fail("delete", e) from e
            self.vectors.delete(id_list)
            for i in id_list:
                self.cache.discard(("item", i))
            self._refresh_min_expiry()
            return n

    def expire(self, now: float) -> int:
        """Delete every item whose ``expires_at`` has passed; returns how many."""
        with self._lock:
            try:
                rows = (
                    self._conn()
                    .execute(
                        "SELECT id FROM items WHERE expires_at IS NOT NULL AND expires_at <= ?",
                        (now,),
                    )
                    .fetchall()
                )
            except sqlite3.Error as e:
                raise self._fail("expiry scan", e) from e
            return self.delete(r[0] for r in rows)

    # ------------------------------------------------------------------ reads
    @staticmethod
    def _item(r: Sequence[Any]) -> StoredItem:
        return StoredItem(
            id=r[0],
            kind=r[1],
            agent_id=r[2],
            collection=r[3],
            content=r[4],
            metadata=json.loads(r[5]),
            created_at=r[6],
            expires_at=r[7],
        )

    def get_many(self, ids: Sequence[int]) -> dict[int, StoredItem]:
        """The items with these ids that exist (cache first, then SQLite)."""
        out: dict[int, StoredItem] = {}
        missing: list[int] = []
        for i in ids:
            hit = self.cache.get(("item", i))
            if hit is None:
                missing.append(i)
            else:
                out[i] = hit
        if missing:
            marks = ",".join("?" * len(missing))
            with self._lock:
                try:
                    rows = (
                        self._conn()
                        .execute(f"SELECT {_COLUMNS} FROM items WHERE id IN ({marks})", missing)
                        .fetchall()
                    )
                except sqlite3.Error as e:
                    raise self._fail("read", e) from e
            for r in rows:
                it = self._item(r)
                out[it.id] = it
                self.cache.put(("item", it.id), it, it.nbytes)
        return out

    def search(
        self,
        query: npt.NDArray[np.float32],
        k: int,
        flt: Mapping[str, Any],
        *,
        now: float,
    ) -> list[tuple[StoredItem, float]]:
        """The ``k`` items closest to ``query`` that match ``flt`` and have not expired."""
        hits = self.vectors.search(query, k, flt)
        found = self.get_many([i for i, _ in hits])
        out = []
        for i, score in hits:
            it = found.get(i)
            if it is not None and (it.expires_at is None or it.expires_at > now):
                out.append((it, score))
        return out

    def count(self, where: str = "", args: Sequence[Any] = ()) -> int:
        with self._lock:
            sql = "SELECT COUNT(*) FROM items" + (f" WHERE {where}" if where else "")
            return int(self._conn().execute(sql, tuple(args)).fetchone()[0])

    def recent(self, kind: str, agent_id: str, limit: int) -> list[StoredItem]:
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    f"SELECT {_COLUMNS} FROM items WHERE kind=? AND agent_id=? "
                    "ORDER BY id DESC LIMIT ?",
                    (kind, agent_id, limit),
                )
                .fetchall()
            )
        return [self._item(r) for r in rows]
