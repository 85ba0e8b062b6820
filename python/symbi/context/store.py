"""``ContextStore``: the durable half of agent memory (long-term items and shared
knowledge).

SQLite (standard library, WAL journal) is the source of truth for items, their metadata
and their embeddings; a :class:`~symbi.vector.VectorStore` (the embedded HNSW index, saved
next to the database, or Qdrant) indexes the embeddings. Each write commits to SQLite and
updates the index before it returns, so it is visible to the next search at once. The
index is flushed on housekeeping and on close together with the database's write epoch;
when they disagree on reopen (a crash between the two), the index is rebuilt from SQLite.
A write is indexed inside its SQLite transaction, so a write the index refuses is rolled
back: SQLite and the index never disagree about what is stored.

The ``meta`` table also records which embedder made the stored embeddings; opened with a
different one, the store re-embeds every item from its stored content (see :meth:`open`).
Expiry follows the current retention: on open the store recomputes ``expires_at`` as
``created_at`` + retention for every item.

All methods are blocking and thread-safe; the context manager calls them in worker
threads.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

from ..errors import ConfigError, ContextStoreError, SymbiError
from ..vector.filters import MISSING, index_scalar
from ..vector.store import VectorStore
from .cache import ByteLRU

__all__ = ["NEVER", "ContextStore", "StoredItem", "index_metadata", "scope"]

log = logging.getLogger("symbi.context")

T = TypeVar("T")

#: Rows per embedding call when re-embedding on open.
_REEMBED_BATCH = 256

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


class _Abandoned(Exception):
    """The caller of :meth:`ContextStore.open` gave up (timeout or cancellation)."""


def index_metadata(item: StoredItem) -> dict[str, Any]:
    """What the vector index stores for filtering: the item's scalar metadata plus the
    reserved ``_scope`` (see :func:`scope`) and ``_exp`` fields. Values the index cannot
    hold are left out (the manager refuses them on write; this keeps a rebuild of a store
    written by older versions from failing on them)."""
    out: dict[str, Any] = {}
    for k, v in item.metadata.items():
        if index_scalar(k) is MISSING or k.startswith("$"):
            continue
        v = index_scalar(v)
        if v is not MISSING:
            out[k] = v
    out["_scope"] = scope(item.kind, item.agent_id, item.collection)
    out["_exp"] = NEVER if item.expires_at is None else int(item.expires_at)
    return out


def scope(kind: str, agent_id: str, collection: str) -> str:
    """The one index field a search filters on: the owner of long-term items, the
    collection of shared ones (one equality test per visited node)."""
    return f"lt:{agent_id}" if kind == "long_term" else f"sh:{collection}"


class ContextStore:
    """Items in SQLite at ``path / "context.sqlite3"`` (in memory when ``path`` is None),
    indexed in ``vectors``; item bodies cached in ``cache``.

    ``embedder_id`` names the embedder that makes new embeddings (class, model, dim) and
    ``embed`` is that embedder (texts -> (n, dim) float32); with both, :meth:`open`
    re-embeds a store whose embeddings another embedder made. ``retention_s`` is how long
    items live after ``created_at`` (None: forever); :meth:`open` applies it to every
    item already stored."""

    def __init__(
        self,
        path: Optional[Path],
        *,
        dim: int,
        vectors: VectorStore,
        cache: ByteLRU,
        embedder_id: Optional[str] = None,
        embed: Optional[Callable[[list[str]], npt.NDArray[np.float32]]] = None,
        retention_s: Optional[float] = None,
    ) -> None:
        self.path = path
        self.dim = dim
        self.vectors = vectors
        self.cache = cache
        self.embedder_id = embedder_id
        self._embed = embed
        self.retention_s = retention_s
        #: The retention the stored ``expires_at`` values follow (set by open).
        self._applied_retention: Optional[tuple[Optional[float]]] = None
        #: How many items open() re-embedded (0 when the embedder was unchanged).
        self.reembedded = 0
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

    def _fail(
        self,
        what: str,
        e: BaseException,
        hint: str = "check the directory's permissions and free space",
    ) -> ContextStoreError:
        return ContextStoreError(
            f"context store {what} failed on {self._where()}: {e}; {hint}",
            path=self._where(),
            backend="sqlite",
        )

    def open(
        self,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        keep: Callable[[], bool] = lambda: True,
    ) -> None:
        """Open the database; apply the current retention; re-embed the items if another
        embedder made them; rebuild the index if it disagrees with SQLite.

        ``should_stop`` is polled between steps and batches: once it returns True the
        open is abandoned (nothing half-done is committed, the database is closed).
        ``keep`` is asked last, under the lock: False also closes the store again (the
        caller gave up just as it finished)."""
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
            self._applied_retention = None
            try:
                self._stop_if(should_stop)
                self._apply_retention()
                self._stop_if(should_stop)
                self._check_embedder(should_stop)
                self._stop_if(should_stop)
                self._sync_index(should_stop)
                self._refresh_min_expiry()
                if not keep():
                    raise _Abandoned()
            except BaseException as e:
                # Never leave a half-opened store behind: a retry opens it afresh. The
                # index is not saved (it may be half rebuilt; its marker says so).
                if db.in_transaction:
                    db.execute("ROLLBACK")
                db.close()
                self._db = None
                if isinstance(e, _Abandoned):
                    log.info("opening the context store %s was abandoned", self._where())
                    return
                if isinstance(e, sqlite3.Error):
                    raise self._fail("open", e) from e
                raise

    @staticmethod
    def _stop_if(should_stop: Callable[[], bool]) -> None:
        if should_stop():
            raise _Abandoned()

    def _meta(self, key: str) -> Optional[str]:
        row = self._conn().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def _set_meta(db: sqlite3.Connection, key: str, value: Optional[str]) -> None:
        if value is None:
            db.execute("DELETE FROM meta WHERE key=?", (key,))
        else:
            db.execute(
                "INSERT INTO meta(key, value) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, value),
            )

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(db)`` in one write transaction, rolled back on any exception (and the
        in-memory epoch with it)."""
        db = self._conn()
        epoch = self._epoch
        db.execute("BEGIN IMMEDIATE")
        try:
            out = fn(db)
            db.execute("COMMIT")
        except BaseException:
            self._epoch = epoch
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return out

    def _apply_retention(self) -> int:
        """Make every item expire ``retention_s`` after its ``created_at`` (the current
        setting, not the one in force when it was written); returns how many changed.
        The index's copy of the expiry is then stale, so it is marked for a rebuild."""
        want = (self.retention_s,)
        if self._applied_retention == want:
            return 0
        r = self.retention_s

        def work(db: sqlite3.Connection) -> int:
            # Same float arithmetic as a write (created_at + retention), so unchanged
            # items compare equal and are left alone.
            n = db.execute(
                "UPDATE items SET expires_at = (CASE WHEN ? IS NULL THEN NULL "
                "ELSE created_at + ? END) "
                "WHERE expires_at IS NOT (CASE WHEN ? IS NULL THEN NULL ELSE created_at + ? END)",
                (r, r, r, r),
            ).rowcount
            if n:
                self._bump(db)
                self._set_meta(db, "reindex", "1")
            return int(n)

        n = self._transaction(work)
        self._applied_retention = want
        if n:
            self.cache.clear()  # cached items carry the old expires_at
            log.info(
                "context store %s: applied the retention of %s to %d stored items",
                self._where(),
                "forever" if r is None else f"{r / 86_400:g} days",
                n,
            )
        return n

    def apply_retention(self, retention_s: Optional[float]) -> int:
        """Switch to a new retention (housekeeping does this when the manager's setting
        changed): recompute every ``expires_at`` and reindex. Returns how many changed."""
        with self._lock:
            self.retention_s = retention_s
            n = self._apply_retention()
            if n:
                self._sync_index(lambda: False)
                self._refresh_min_expiry()
            return n

    def _check_embedder(self, should_stop: Callable[[], bool]) -> None:
        """Compare the embedder that made the stored embeddings with ours; re-embed all
        items from their stored content when they differ."""
        if self.embedder_id is None:
            return
        db = self._conn()
        stored = self._meta("embedder")
        (count,) = db.execute("SELECT COUNT(*) FROM items").fetchone()
        (wrong_dim,) = db.execute(
            "SELECT COUNT(*) FROM items WHERE length(embedding) != ?", (4 * self.dim,)
        ).fetchone()
        if stored == self.embedder_id and not wrong_dim:
            return
        if count == 0 or (stored is None and not wrong_dim):
            # Empty, or written before embedders were recorded with vectors of our size:
            # nothing tells them apart, so record ours from now on.
            self._transaction(lambda d: self._set_meta(d, "embedder", self.embedder_id))
            return
        self._reembed(stored, int(count), should_stop)

    def _reembed(self, stored: Optional[str], count: int, should_stop: Callable[[], bool]) -> None:
        embed = self._embed
        ours = self.embedder_id
        what = (
            f"the context store {self._where()} holds {count} items embedded by "
            f"{stored or 'an unrecorded embedder of another size'}, not by {ours}"
        )
        if embed is None:
            raise ConfigError(
                f"{what}, and no embedder was given to re-embed them; open it with the "
                "embedder that made them or give the store one",
                key="context.embedding_dimension",
            )
        log.warning("%s: re-embedding them from their stored content", what)

        def work(db: sqlite3.Connection) -> None:
            last = -1
            while True:
                self._stop_if(should_stop)
                rows = db.execute(
                    "SELECT id, content FROM items WHERE id > ? ORDER BY id LIMIT ?",
                    (last, _REEMBED_BATCH),
                ).fetchall()
                if not rows:
                    break
                try:
                    embs = np.ascontiguousarray(embed([r[1] for r in rows]), dtype=np.float32)
                except Exception as e:
                    raise ConfigError(
                        f"{what}; re-embedding them failed: {e}. Fix the embedder, or open "
                        "the store with the embedder that made it, or move the directory "
                        "aside to start empty",
                        key="context.embedding_dimension",
                    ) from e
                if embs.shape != (len(rows), self.dim) or not np.all(np.isfinite(embs)):
                    bad = f"shape {embs.shape}" if embs.ndim != 2 else "non-finite values"
                    raise ConfigError(
                        f"{what}; re-embedding them failed: the embedder returned {bad}. "
                        "Fix the embedder, or open the store with the one that made it",
                        key="context.embedding_dimension",
                    )
                empty = np.flatnonzero(~np.any(embs != 0, axis=1))
                if empty.size:
                    raise ConfigError(
                        f"{what}; the new embedder cannot index item {rows[int(empty[0])][0]} "
                        "(it makes a zero vector of its content). Open the store with the "
                        "embedder that made it, or delete that item first",
                        key="context.embedding_dimension",
                    )
                db.executemany(
                    "UPDATE items SET embedding=? WHERE id=?",
                    [(e.tobytes(), r[0]) for e, r in zip(embs, rows)],
                )
                last = rows[-1][0]
            self._set_meta(db, "embedder", ours)
            self._set_meta(db, "reindex", "1")
            self._bump(db)

        self._transaction(work)
        self.reembedded = count
        log.warning("context store %s: re-embedded %d items with %s", self._where(), count, ours)

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

    def _sync_index(self, should_stop: Callable[[], bool]) -> None:
        """Rebuild the vector index from SQLite if it missed writes (or has extra ones),
        or if its expiries or vectors are out of date (the ``reindex`` flag)."""
        db = self._conn()
        (count,) = db.execute("SELECT COUNT(*) FROM items").fetchone()
        reindex = self._meta("reindex") is not None
        marker = self.vectors.marker()
        stale = marker != str(self._epoch) if marker is not None else None
        if stale is None:
            stale = self.vectors.count() != count
        if not stale and not reindex:
            return
        self.rebuilt = True
        self.vectors.reset()
        cur = db.execute(f"SELECT {_COLUMNS}, embedding FROM items ORDER BY id")
        while True:
            self._stop_if(should_stop)
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
        if reindex:
            # Cleared only once the rebuilt index is saved: a crash before redoes it.
            self._transaction(lambda d: self._set_meta(d, "reindex", None))

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
        before_commit: Optional[Callable[[list[StoredItem]], None]] = None,
    ) -> list[StoredItem]:
        """Insert items and index them, in one transaction; visible to searches on return.

        The index is updated before the commit and ``before_commit(items)`` (e.g. the
        audit record) runs last: if either fails the transaction is rolled back and the
        items are taken out of the index again, so nothing is stored."""
        with self._lock:
            items: list[StoredItem] = []
            indexed = False

            def work(db: sqlite3.Connection) -> None:
                nonlocal indexed
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
                # Indexed inside the transaction (and under the lock): an item the index
                # refuses is never committed, and a flush always pairs the index with the
                # epoch it contains.
                indexed = True
                self.vectors.upsert(
                    [it.id for it in items], embeddings, [index_metadata(it) for it in items]
                )
                if before_commit is not None:
                    before_commit(items)

            try:
                self._transaction(work)
            except BaseException as e:
                if indexed:
                    self._unindex([it.id for it in items])
                if isinstance(e, sqlite3.Error):
                    raise self._fail("write", e) from e
                if isinstance(e, SymbiError) or not isinstance(e, Exception):
                    raise
                raise self._fail("write", e, hint="nothing was stored") from e
            for it in items:
                self.cache.put(("item", it.id), it, it.nbytes)
            if expires_at is not None:
                self.min_expiry = min(self.min_expiry, expires_at)
            return items

    def _unindex(self, ids: list[int]) -> None:
        """Take rolled-back items out of the index again (their ids may be reused)."""
        if not ids:
            return
        try:
            self.vectors.delete(ids)
        except Exception:
            # The index now holds ids SQLite does not: searches skip them (they are
            # looked up in SQLite) and the count mismatch rebuilds the index on reopen.
            log.exception("could not remove rolled-back items %s from the index", ids[:10])

    def delete(
        self,
        ids: Iterable[int],
        *,
        before_commit: Optional[Callable[[int], None]] = None,
    ) -> int:
        """Delete items; returns how many existed. ``before_commit(n)`` (e.g. the audit
        record) runs inside the transaction: if it fails nothing is deleted."""
        id_list = [int(i) for i in ids]
        if not id_list:
            return 0
        with self._lock:

            def work(db: sqlite3.Connection) -> int:
                n = 0
                for start in range(0, len(id_list), 500):
                    part = id_list[start : start + 500]
                    marks = ",".join("?" * len(part))
                    n += db.execute(f"DELETE FROM items WHERE id IN ({marks})", part).rowcount
                self._bump(db)
                if before_commit is not None:
                    before_commit(n)
                return n

            try:
                n = self._transaction(work)
            except sqlite3.Error as e:
                raise self._fail("delete", e) from e
            except SymbiError:
                raise
            except Exception as e:
                raise self._fail("delete", e, hint="nothing was deleted") from e
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

    def recent(
        self, kind: str, agent_id: str, limit: int, *, now: Optional[float] = None
    ) -> list[StoredItem]:
        """The newest items of an owner; with ``now``, only those not yet expired."""
        alive = "" if now is None else "AND (expires_at IS NULL OR expires_at > ?) "
        args: tuple[Any, ...] = (kind, agent_id) + (() if now is None else (now,)) + (limit,)
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    f"SELECT {_COLUMNS} FROM items WHERE kind=? AND agent_id=? {alive}"
                    "ORDER BY id DESC LIMIT ?",
                    args,
                )
                .fetchall()
            )
        return [self._item(r) for r in rows]
