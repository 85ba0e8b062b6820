"""Documents, chunking, and the :class:`DocumentStore` the RAG pipeline searches."""

from __future__ import annotations

import operator
import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import msgspec
import numpy as np
import numpy.typing as npt

from ..embed import Embedder, HashingEmbedder
from ..errors import InvalidArgument
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


class DocumentStore:
    """Chunks of documents, indexed for vector search (``vector_store``, default an
    in-memory :class:`~symbi.vector.EmbeddedVectorStore`) and BM25. Thread-safe."""

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
        self._next = 1
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._chunks)

    @property
    def documents(self) -> list[str]:
        return list(self._docs)

    def add(self, documents: Union[Document, Iterable[Document]]) -> int:
        """Chunk, embed and index documents (a document with a known id replaces the old
        one). Returns the number of chunks added."""
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
        new: list[Chunk] = []
        with self._lock:
            for d in docs:
                if d.id in self._docs:
                    self._remove(d.id)
                ids = []
                for i, piece in enumerate(chunk_text(d.text, max_chars=self.max_chars)):
                    meta = {k: v for k, v in d.metadata.items() if isinstance(v, (str, int, float))}
                    meta["doc_id"] = d.id
                    c = Chunk(
                        id=self._next,
                        doc_id=d.id,
                        index=i,
                        text=piece,
                        title=d.title,
                        metadata=meta,
                    )
                    self._next += 1
                    ids.append(c.id)
                    new.append(c)
                self._docs[d.id] = ids
            if not new:
                return 0
            embs = self.embedder.embed([f"{c.title}\n{c.text}" for c in new])
            keep = [i for i in range(len(new)) if np.any(embs[i])]
            new = [new[i] for i in keep]
            embs = embs[keep]
            self.vectors.upsert([c.id for c in new], embs, [c.metadata for c in new])
            for c, e in zip(new, embs):
                self._chunks[c.id] = c
                self._embeddings[c.id] = e
                self.bm25.add(c.id, terms(f"{c.title} {c.text}"))
        return len(new)

    def _remove(self, doc_id: str) -> None:
        ids = self._docs.pop(doc_id, [])
        self.vectors.delete(ids)
        for i in ids:
            self._chunks.pop(i, None)
            self._embeddings.pop(i, None)
            self.bm25.remove(i)

    def remove(self, doc_id: str) -> None:
        if not isinstance(doc_id, str):
            raise InvalidArgument(
                f"doc_id must be the str id of a Document, got {type(doc_id).__name__}",
                argument="doc_id",
                expected="str",
                got=type(doc_id).__name__,
            )
        with self._lock:
            self._remove(doc_id)

    def get(self, ids: Sequence[int]) -> list[Chunk]:
        return [self._chunks[i] for i in ids if i in self._chunks]

    def embedding(self, chunk_id: int) -> npt.NDArray[np.float32]:
        return self._embeddings[chunk_id]

    def matching(self, flt: Mapping[str, Any]) -> set[int]:
        """Chunk ids whose metadata matches a filter (equality, ranges, ne, in/nin), for
        the lexical side of a filtered search."""
        return {i for i, c in self._chunks.items() if _matches(c.metadata, flt)}


_CMP: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "in": lambda have, val: have in val,
    "lt": operator.lt,
    "lte": operator.le,
    "le": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
    "ge": operator.ge,
}


def _matches(meta: Mapping[str, Any], flt: Mapping[str, Any]) -> bool:
    for key, cond in flt.items():
        if key in ("$or", "or"):
            if not any(_matches(meta, c) for c in cond):
                return False
            continue
        if key in ("$not", "not"):
            if _matches(meta, cond):
                return False
            continue
        have = meta.get(key)
        if not isinstance(cond, Mapping):
            if have != cond:
                return False
            continue
        for op, val in cond.items():
            op = op.lstrip("$")
            if op in ("ne", "nin"):
                bad = have == val if op == "ne" else have in val
                if bad:
                    return False
                continue
            if have is None:
                return False
            fn = _CMP.get(op)
            try:
                ok = fn is not None and bool(fn(have, val))
            except TypeError:
                return False
            if not ok:
                return False
    return True
