"""Documents, chunking, and the :class:`DocumentStore` the RAG pipeline searches."""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import msgspec
import numpy as np
import numpy.typing as npt

from ..embed import Embedder, HashingEmbedder
from ..errors import InvalidArgument, ModelError
from ..vector.filters import check_filter, is_utf8, matches
from ..vector.store import EmbeddedVectorStore, VectorStore
from .analysis import terms
from .bm25 import BM25Index

__all__ = ["Chunk", "Document", "DocumentStore", "chunk_text", "load_markdown"]

_HEADING = re.compile(r"^#{1,6}\s")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(`])")


class Document(msgspec.Struct, frozen=True, kw_only=True):
    """A source document; ``metadata`` scalars become filterable chunk metadata."""

    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class Chunk(msgspec.Struct, frozen=True, kw_only=True):
    """A piece of a document: ``index`` is its position (0-based) in the document."""

    id: int
    doc_id: str
    index: int
    text: str
    title: str = ""
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


def chunk_text(text: str, *, max_chars: int = 700, overlap: int = 1) -> list[str]:
    """Split text into chunks of at most ``max_chars`` along paragraphs (a Markdown
    heading starts a new chunk), then sentences, then words. ``overlap`` sentences of a
    split paragraph are repeated at the start of the next chunk."""
    if not isinstance(text, str):
        raise InvalidArgument("text must be a str", argument="text", expected="str", got=text)
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 50:
        raise InvalidArgument(
            "max_chars must be an int >= 50", argument="max_chars", expected=">= 50", got=max_chars
        )
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    pieces: list[str] = []
    for p in paragraphs:
        if len(p) <= max_chars:
            pieces.append(p)
            continue
        sentences = _SENTENCE.split(p)
        cur: list[str] = []
        for s in sentences:
            while len(s) > max_chars:  # one huge "sentence": cut on words
                cut = s.rfind(" ", 0, max_chars)
                cut = cut if cut > 0 else max_chars
                pieces.append(s[:cut].strip())
                s = s[cut:].strip()
            if cur and len(" ".join([*cur, s])) > max_chars:
                pieces.append(" ".join(cur))
                cur = cur[-overlap:] if overlap else []
                if len(" ".join([*cur, s])) > max_chars:
                    cur = []
            cur.append(s)
        if cur:
            pieces.append(" ".join(cur))
    chunks: list[str] = []
    for piece in pieces:
        if chunks and not _HEADING.match(piece) and len(chunks[-1]) + 2 + len(piece) <= max_chars:
            chunks[-1] += "\n\n" + piece
        else:
            chunks.append(piece)
    return chunks


def load_markdown(path: Union[str, Path]) -> Document:
    """A Markdown file as a :class:`Document`: the id is the file stem, the title the
    first ``# heading``, and an optional front matter block (``---`` / ``key: value``
    lines / ``---``) becomes metadata (numbers and booleans parsed)."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgument(
            f"path must be the path of a Markdown file, got {type(path).__name__}",
            argument="path",
            expected="str | os.PathLike",
            got=type(path).__name__,
        )
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidArgument(
            f"cannot read Markdown file {str(p)!r}: {e.strerror or e}; check the path",
            argument="path",
            expected="a readable Markdown file",
            got=str(p),
        ) from None
    except UnicodeDecodeError as e:
        raise InvalidArgument(
            f"{str(p)!r} is not UTF-8 text ({e.reason}); save it as UTF-8",
            argument="path",
            expected="a UTF-8 Markdown file",
            got=str(p),
        ) from None
    meta: dict[str, Any] = {}
    if text.startswith("---\n"):
        head, sep, body = text[4:].partition("\n---\n")
        if sep:
            text = body
            for line in head.splitlines():
                key, colon, val = line.partition(":")
                if colon and key.strip():
                    v = val.strip()
                    parsed: Any = v
                    if v.lower() in ("true", "false"):
                        parsed = v.lower() == "true"
                    elif re.fullmatch(r"-?\d+", v):
                        parsed = int(v)
                    meta[key.strip()] = parsed
    title = next((ln[2:].strip() for ln in text.splitlines() if ln.startswith("# ")), p.stem)
    meta.setdefault("source", p.name)
    return Document(id=p.stem, text=text.strip(), title=title, metadata=meta)


def _check_document(d: Document) -> None:
    """msgspec checks field types when decoding, not in ``Document(...)``: check here."""
    for field, value, ok, expected in (
        ("id", d.id, isinstance(d.id, str) and bool(d.id), "a non-empty str"),
        ("text", d.text, isinstance(d.text, str), "str"),
        ("title", d.title, isinstance(d.title, str), "str"),
        ("metadata", d.metadata, isinstance(d.metadata, Mapping), "a dict"),
    ):
        if not ok:
            raise InvalidArgument(
                f"Document.{field} must be {expected}, got {value!r} (document id {d.id!r})",
                argument="documents",
                expected=expected,
                got=value,
            )
    if not is_utf8(d.id):
        raise InvalidArgument(
            f"Document.id {d.id!r} is not valid text (lone surrogate)",
            argument="documents",
            expected="a UTF-8 encodable str",
            got=d.id,
        )


def _chunk_metadata(d: Document) -> dict[str, Any]:
    """The filterable metadata of ``d``'s chunks: its str/int/float/bool values, checked
    here against what every vector backend stores, so a value the index would refuse
    fails before anything of an older version of the document is touched."""
    meta: dict[str, Any] = {}
    for k, v in d.metadata.items():
        if not isinstance(v, (str, int, float)):
            continue  # documented: only scalars become filterable chunk metadata
        problem = ""
        if not isinstance(k, str) or k.startswith("$") or not is_utf8(k):
            problem = "keys must be str not starting with '$' (filters reserve it)"
        elif isinstance(v, str) and not is_utf8(v):
            problem = "str values must be valid text (no lone surrogates)"
        elif isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63:
            problem = "ints must fit in 64 bits (-2**63 .. 2**63-1)"
        elif isinstance(v, float) and not math.isfinite(v):
            problem = "floats must be finite"
        elif k == "doc_id" and v != d.id:
            problem = "'doc_id' is set by the store to the document id"
        if problem:
            raise InvalidArgument(
                f"Document {d.id!r}: metadata key {k!r} = {v!r} cannot be indexed: {problem}",
                argument="documents",
                expected="metadata of str, finite float, 64-bit int or bool values",
                got={k: v},
            )
        meta[k] = v
    meta["doc_id"] = d.id
    return meta


class DocumentStore:
    """Chunks of documents, indexed for vector search (``vector_store``, default an
    in-memory :class:`~symbi.vector.EmbeddedVectorStore`) and BM25. Thread-safe: reads
    see a document either before or after a concurrent :meth:`add` replaced it."""

    def __init__(
        self,
        embedder: Optional[Embedder] = None,
        *,
        vector_store: Optional[VectorStore] = None,
        max_chars: int = 700,
    ) -> None:
        if embedder is not None and not isinstance(embedder, Embedder):
            raise InvalidArgument(
                f"embedder must be a symbi.embed.Embedder (with .dim and .embed(texts)), "
                f"got {type(embedder).__name__}; omit it for the default HashingEmbedder",
                argument="embedder",
                expected="an Embedder",
                got=type(embedder).__name__,
            )
        if vector_store is not None and not isinstance(vector_store, VectorStore):
            raise InvalidArgument(
                f"vector_store must be a symbi.vector.VectorStore, got "
                f"{type(vector_store).__name__}; omit it for an in-memory index",
                argument="vector_store",
                expected="a VectorStore",
                got=type(vector_store).__name__,
            )
        if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 50:
            raise InvalidArgument(
                "max_chars must be an int >= 50 (the longest chunk, in characters)",
                argument="max_chars",
                expected=">= 50",
                got=max_chars,
            )
        self.embedder = embedder if embedder is not None else HashingEmbedder(384)
        self.vectors = (
            vector_store if vector_store is not None else EmbeddedVectorStore(self.embedder.dim)
        )
        if self.vectors.dim != self.embedder.dim:
            raise InvalidArgument(
                f"vector_store is {self.vectors.dim}-d but the embedder makes "
                f"{self.embedder.dim}-d vectors",
                argument="vector_store",
                expected=f"{self.embedder.dim}-d",
                got=self.vectors.dim,
            )
        self.max_chars = max_chars
        self.bm25 = BM25Index()
        self._chunks: dict[int, Chunk] = {}
        self._embeddings: dict[int, npt.NDArray[np.float32]] = {}
        self._docs: dict[str, list[int]] = {}
        self._keys: Counter[str] = Counter()  # metadata key -> chunks having it
        self._next = 1
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._chunks)

    @property
    def documents(self) -> list[str]:
        with self._lock:
            return list(self._docs)

    def metadata_keys(self) -> frozenset[str]:
        """The metadata keys of the stored chunks (``doc_id`` included): what a filter
        can match on."""
        with self._lock:
            return frozenset(self._keys)

    def add(self, documents: Union[Document, Iterable[Document]]) -> int:
        """Chunk, embed and index documents (a document with a known id replaces the old
        one). Returns the number of chunks added.

        All or nothing: the documents are checked, embedded and indexed before the old
        versions are dropped, so on any error the store is as it was. Ids must be unique
        within one call (:class:`InvalidArgument` otherwise)."""
        if isinstance(documents, Document):
            docs = [documents]
        elif isinstance(documents, (str, bytes, bytearray, Mapping)) or not isinstance(
            documents, Iterable
        ):
            raise InvalidArgument(
                f"add() takes a symbi.rag.Document or a list of them, got "
                f"{type(documents).__name__}; wrap text as Document(id=..., text=...)",
                argument="documents",
                expected="Document | list[Document]",
                got=type(documents).__name__,
            )
        else:
            docs = list(documents)
        seen: set[str] = set()
        metas: list[dict[str, Any]] = []
        for d in docs:
            if not isinstance(d, Document):
                raise InvalidArgument(
                    "add() takes symbi.rag.Document objects; wrap text as "
                    "Document(id=..., text=...)",
                    argument="documents",
                    expected="Document",
                    got=type(d).__name__,
                )
            _check_document(d)
            if d.id in seen:
                # Both would be indexed and only the last kept track of: an orphan chunk.
                raise InvalidArgument(
                    f"document id {d.id!r} appears twice in one add(); ids must be unique "
                    "(a later add() with the same id replaces the document)",
                    argument="documents",
                    expected="unique Document.id values",
                    got=d.id,
                )
            seen.add(d.id)
            metas.append(_chunk_metadata(d))
        # (doc, index, text, metadata) of every chunk; embedded outside the lock, as the
        # embedder may be slow (a remote service) and readers must not wait for it.
        pieces = [
            (d, i, piece, meta)
            for d, meta in zip(docs, metas)
            for i, piece in enumerate(chunk_text(d.text, max_chars=self.max_chars))
        ]
        embs = np.zeros((0, self.vectors.dim), dtype=np.float32)
        if pieces:  # (an empty new version still replaces the old one below)
            embs = np.asarray(
                self.embedder.embed([f"{d.title}\n{p}" for d, _, p, _ in pieces]),
                dtype=np.float32,
            )
        if embs.shape != (len(pieces), self.vectors.dim):
            raise ModelError(
                f"{type(self.embedder).__name__} returned shape {embs.shape} for "
                f"{len(pieces)} texts; expected ({len(pieces)}, {self.vectors.dim})",
                model=type(self.embedder).__name__,
            )
        with self._lock:
            new: list[Chunk] = []
            rows: list[int] = []
            for row, (d, i, piece, meta) in enumerate(pieces):
                # An all-zero embedding (only stop words) cannot be searched by similarity
                # and the index refuses it; the document keeps its other chunks.
                if not np.any(embs[row]):
                    continue
                new.append(
                    Chunk(
                        id=self._next + len(new),
                        doc_id=d.id,
                        index=i,
                        text=piece,
                        title=d.title,
                        metadata=meta,
                    )
                )
                rows.append(row)
            kept = embs[rows]
            new_ids = [c.id for c in new]
            old_ids = [i for d in docs for i in self._docs.get(d.id, ())]
            # New chunks get fresh ids, so they go in before the old ones go out: if the
            # vector store refuses them, the old versions are untouched.
            try:
                self.vectors.upsert(new_ids, kept, [c.metadata for c in new])
                self.vectors.delete(old_ids)
            except BaseException:
                with contextlib.suppress(Exception):  # a partial upsert (remote store)
                    self.vectors.delete(new_ids)
                raise
            self._next += len(new)
            for i in old_ids:
                self._drop_chunk(i)
            for d in docs:
                self._docs[d.id] = []
            for c, e in zip(new, kept):
                self._chunks[c.id] = c
                self._embeddings[c.id] = e
                self._keys.update(c.metadata.keys())
                self._docs[c.doc_id].append(c.id)
                self.bm25.add(c.id, terms(f"{c.title} {c.text}"))
        return len(new)

    def _drop_chunk(self, i: int) -> None:
        c = self._chunks.pop(i, None)
        self._embeddings.pop(i, None)
        self.bm25.remove(i)
        if c is not None:
            self._keys.subtract(c.metadata.keys())
            self._keys += Counter()  # drops keys no chunk has any more

    def _remove(self, doc_id: str) -> None:
        ids = self._docs.get(doc_id, [])
        self.vectors.delete(ids)  # first: if it fails, the document is still whole
        del self._docs[doc_id]
        for i in ids:
            self._drop_chunk(i)

    def remove(self, doc_id: str) -> None:
        if not isinstance(doc_id, str):
            raise InvalidArgument(
                f"doc_id must be the str id of a Document, got {type(doc_id).__name__}",
                argument="doc_id",
                expected="str",
                got=type(doc_id).__name__,
            )
        with self._lock:
            if doc_id in self._docs:
                self._remove(doc_id)

    def get(self, ids: Sequence[int]) -> list[Chunk]:
        """The chunks with these ids, in order; ids no longer stored are skipped."""
        with self._lock:
            return [self._chunks[i] for i in ids if i in self._chunks]

    def embedding(self, chunk_id: int) -> npt.NDArray[np.float32]:
        """The stored embedding of a chunk (``KeyError`` if it is not stored)."""
        with self._lock:
            return self._embeddings[chunk_id]

    def embeddings(self, ids: Iterable[int]) -> dict[int, npt.NDArray[np.float32]]:
        """The stored embeddings of those chunks still stored, read in one go."""
        with self._lock:
            return {i: self._embeddings[i] for i in ids if i in self._embeddings}

    def matching(self, flt: Mapping[str, Any]) -> set[int]:
        """Chunk ids whose metadata matches a filter (equality, ranges, ne, in/nin), for
        the lexical side of a filtered search."""
        check_filter(flt)
        with self._lock:  # a snapshot: add/remove resize the dict meanwhile
            chunks = list(self._chunks.values())
        return {c.id for c in chunks if matches(c.metadata, flt)}
