"""The RAG pipeline: five replaceable stages, each a Protocol with a default.

1. **query analysis** (:class:`~symbi.rag.analysis.QueryAnalyzer`): keywords, in-query
   filters (``lang:de``, ``year>=2020``) and intent;
2. **vector search** (:class:`VectorSearcher`): nearest chunks to the query embedding,
   filters evaluated inside the index;
3. **document retrieval** (:class:`DocumentRetriever`): the candidate chunks, from the
   vector hits plus a BM25 keyword search under the same filters;
4. **ranking** (:class:`Ranker`): hybrid reciprocal-rank fusion of the BM25 and vector
   rankings, then maximal marginal relevance to drop near-duplicates;
5. **generation** (:class:`~symbi.rag.generation.Generator`): extractive with citations
   by default, or any LLM callable.

``pipeline.run(question)`` is blocking (and fast with the defaults);
``await pipeline.answer(question, timeout=...)`` runs it in a worker thread and awaits
an async LLM.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, Optional, Protocol, Union, runtime_checkable

import anyio
import msgspec

from ..deadlines import check_timeout
from ..embed import Embedder
from ..errors import InvalidArgument, RequestTimeout
from .analysis import QueryAnalysis, QueryAnalyzer, RuleQueryAnalyzer
from .bm25 import mmr, rrf
from .documents import Chunk, Document, DocumentStore, load_markdown
from .generation import Answer, ExtractiveGenerator, Generator

__all__ = [
    "Candidate",
    "DocumentRetriever",
    "HybridRanker",
    "HybridRetriever",
    "IndexVectorSearcher",
    "RagPipeline",
    "Ranker",
    "VectorSearcher",
    "example_docs_dir",
    "example_pipeline",
    "load_examples",
]

#: Seconds :meth:`RagPipeline.answer` waits when ``timeout`` is not given.
DEFAULT_TIMEOUT = 30.0


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    """A chunk that may answer the question, with its rank (1-based) in the vector and
    BM25 result lists (None where it was not found)."""

    chunk: Chunk
    vector_rank: Optional[int] = None
    vector_score: Optional[float] = None
    bm25_rank: Optional[int] = None
    bm25_score: Optional[float] = None


@runtime_checkable
class VectorSearcher(Protocol):
    def search(
        self, analysis: QueryAnalysis, store: DocumentStore, k: int
    ) -> list[tuple[int, float]]: ...


@runtime_checkable
class DocumentRetriever(Protocol):
    def retrieve(
        self,
        analysis: QueryAnalysis,
        store: DocumentStore,
        vector_hits: Sequence[tuple[int, float]],
        k: int,
    ) -> list[Candidate]: ...


@runtime_checkable
class Ranker(Protocol):
    def rank(
        self, analysis: QueryAnalysis, store: DocumentStore, candidates: Sequence[Candidate], k: int
    ) -> list[tuple[Chunk, float]]: ...


class IndexVectorSearcher:
    """Embeds the query text (filters removed) and searches the store's vector index
    with the query's filters."""

    def search(
        self, analysis: QueryAnalysis, store: DocumentStore, k: int
    ) -> list[tuple[int, float]]:
        text = analysis.text or analysis.query
        q = store.embedder.embed([text])[0]
        if not q.any():
            return []
        return store.vectors.search(q, k, analysis.filters or None)


class HybridRetriever:
    """Candidates = the vector hits plus the BM25 top ``k`` over the chunks matching the
    same filters."""

    def retrieve(
        self,
        analysis: QueryAnalysis,
        store: DocumentStore,
        vector_hits: Sequence[tuple[int, float]],
        k: int,
    ) -> list[Candidate]:
        allowed = store.matching(analysis.filters) if analysis.filters else None
        lexical = store.bm25.search(analysis.keywords, k, allowed)
        vec = {i: (r, s) for r, (i, s) in enumerate(vector_hits, start=1)}
        lex = {i: (r, s) for r, (i, s) in enumerate(lexical, start=1)}
        ids = list(dict.fromkeys([*vec, *lex]))
        out = []
        for c in store.get(ids):
            vr = vec.get(c.id)
            lr = lex.get(c.id)
            out.append(
                Candidate(
                    chunk=c,
                    vector_rank=vr[0] if vr else None,
                    vector_score=vr[1] if vr else None,
                    bm25_rank=lr[0] if lr else None,
                    bm25_score=lr[1] if lr else None,
                )
            )
        return out


class HybridRanker:
    """Reciprocal-rank fusion (``rrf_k``) of the vector and BM25 rankings, then MMR
    (``mmr_lambda``) over the chunk embeddings, dropping chunks at least
    ``duplicate_threshold`` cosine-similar to one already picked."""

    def __init__(
        self, *, rrf_k: int = 60, mmr_lambda: float = 0.7, duplicate_threshold: float = 0.95
    ) -> None:
        self.rrf_k, self.mmr_lambda, self.duplicate_threshold = (
            rrf_k,
            mmr_lambda,
            duplicate_threshold,
        )

    def rank(
        self, analysis: QueryAnalysis, store: DocumentStore, candidates: Sequence[Candidate], k: int
    ) -> list[tuple[Chunk, float]]:
        by_id = {c.chunk.id: c for c in candidates}
        vec = sorted((c for c in candidates if c.vector_rank), key=lambda c: c.vector_rank or 0)
        lex = sorted((c for c in candidates if c.bm25_rank), key=lambda c: c.bm25_rank or 0)
        fused = rrf([[c.chunk.id for c in vec], [c.chunk.id for c in lex]], k=self.rrf_k)
        # One read of the store: a chunk removed since retrieval is dropped, not a KeyError.
        embs = store.embeddings(fused)
        fused = {i: s for i, s in fused.items() if i in embs}
        order = mmr(
            fused,
            embs,
            k,
            lambda_=self.mmr_lambda,
            duplicate_threshold=self.duplicate_threshold,
        )
        return [(by_id[i].chunk, fused[i]) for i in order]


class RagPipeline:
    """Retrieval-augmented answers over a :class:`DocumentStore` (see the module
    docstring). Every stage can be swapped by passing another implementation."""

    def __init__(
        self,
        store: Optional[DocumentStore] = None,
        *,
        embedder: Optional[Embedder] = None,
        analyzer: Optional[QueryAnalyzer] = None,
        searcher: Optional[VectorSearcher] = None,
        retriever: Optional[DocumentRetriever] = None,
        ranker: Optional[Ranker] = None,
        generator: Optional[Generator] = None,
        candidates: int = 20,
    ) -> None:
        if store is not None and embedder is not None:
            raise InvalidArgument(
                "pass embedder= or store=, not both (the store has its embedder)",
                argument="embedder",
                expected="one of them",
            )
        if store is not None and not isinstance(store, DocumentStore):
            raise InvalidArgument(
                f"store must be a symbi.rag.DocumentStore, got {type(store).__name__}; "
                "omit it for a new empty store",
                argument="store",
                expected="a DocumentStore",
                got=type(store).__name__,
            )
        stages: tuple[tuple[str, Any, type, str], ...] = (
            ("analyzer", analyzer, QueryAnalyzer, "analyze(question)"),
            ("searcher", searcher, VectorSearcher, "search(analysis, store, k)"),
            ("retriever", retriever, DocumentRetriever, "retrieve(analysis, store, hits, k)"),
            ("ranker", ranker, Ranker, "rank(analysis, store, candidates, k)"),
            ("generator", generator, Generator, "generate(question, analysis, ranked)"),
        )
        for name, stage, proto, method in stages:
            if stage is not None and not isinstance(stage, proto):
                raise InvalidArgument(
                    f"{name} must have a {method} method (a symbi.rag.{proto.__name__}), "
                    f"got {type(stage).__name__}; omit it for the default",
                    argument=name,
                    expected=f"a {proto.__name__}",
                    got=type(stage).__name__,
                )
        self.store = store if store is not None else DocumentStore(embedder)
        # The default analyser knows the store's metadata keys, so "Note: ..." or
        # "word:text" on a key no document has stays part of the question.
        self.analyzer: QueryAnalyzer = analyzer or RuleQueryAnalyzer(
            known_keys=self.store.metadata_keys
        )
        self.searcher: VectorSearcher = searcher or IndexVectorSearcher()
        self.retriever: DocumentRetriever = retriever or HybridRetriever()
        self.ranker: Ranker = ranker or HybridRanker()
        self.generator: Generator = generator or ExtractiveGenerator()
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise InvalidArgument(
                "candidates must be a positive int", argument="candidates", expected=">= 1"
            )
        self.candidates = candidates

    def ingest(self, documents: Any) -> int:
        """Add documents (chunked, embedded, indexed); returns the number of chunks."""
        return self.store.add(documents)

    def retrieve(
        self, question: str, *, k: int = 5
    ) -> tuple[QueryAnalysis, list[tuple[Chunk, float]], dict[str, float]]:
        """Stages 1-4: the analysis, the ranked chunks and the stage timings (ms)."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 100:
            raise InvalidArgument(
                "k must be an int in 1..100", argument="k", expected="1..100", got=k
            )
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        analysis = self.analyzer.analyze(question)
        t1 = time.perf_counter()
        hits = self.searcher.search(analysis, self.store, max(k, self.candidates))
        t2 = time.perf_counter()
        cands = self.retriever.retrieve(analysis, self.store, hits, max(k, self.candidates))
        t3 = time.perf_counter()
        ranked = self.ranker.rank(analysis, self.store, cands, k)
        t4 = time.perf_counter()
        t.update(
            analysis=(t1 - t0) * 1e3,
            vector_search=(t2 - t1) * 1e3,
            retrieval=(t3 - t2) * 1e3,
            ranking=(t4 - t3) * 1e3,
        )
        return analysis, ranked, t

    def run(self, question: str, *, k: int = 5) -> Answer:
        """All five stages, blocking. The generator must be synchronous here (use
        :meth:`answer` for an async LLM)."""
        analysis, ranked, t = self.retrieve(question, k=k)
        t0 = time.perf_counter()
        out = self.generator.generate(question, analysis, ranked)
        if inspect.isawaitable(out):
            if hasattr(out, "close"):
                out.close()
            raise InvalidArgument(
                "this generator is async; call `await pipeline.answer(...)` instead of run()",
                argument="generator",
                expected="a synchronous generator",
            )
        return msgspec.structs.replace(
            out, timings_ms={**t, "generation": (time.perf_counter() - t0) * 1e3}
        )

    async def answer(
        self, question: str, *, k: int = 5, timeout: Optional[float] = DEFAULT_TIMEOUT
    ) -> Answer:
        """All five stages: retrieval in a worker thread, then generation (a sync
        generator in a worker thread, an async one awaited), within ``timeout`` s
        (a positive finite number; None means the default, 30 s)."""
        # Never unbounded: None is the default, not "wait forever".
        timeout = check_timeout(DEFAULT_TIMEOUT if timeout is None else timeout)
        try:
            with anyio.fail_after(timeout):
                analysis, ranked, t = await anyio.to_thread.run_sync(
                    lambda: self.retrieve(question, k=k), abandon_on_cancel=True
                )
                t0 = time.perf_counter()
                result: Union[Answer, Awaitable[Answer]] = await anyio.to_thread.run_sync(
                    lambda: self.generator.generate(question, analysis, ranked),
                    abandon_on_cancel=True,
                )
                if inspect.isawaitable(result):
                    result = await result
                assert isinstance(result, Answer)
        except TimeoutError:
            raise RequestTimeout(
                f"the RAG pipeline did not answer within {timeout}s; raise the timeout or "
                "check the generator",
                recipient="rag",
                timeout=timeout,
            ) from None
        return msgspec.structs.replace(
            result, timings_ms={**t, "generation": (time.perf_counter() - t0) * 1e3}
        )


def example_docs_dir() -> Path:
    """The Markdown documents about symbi that ship inside the package
    (``symbi/rag/example_docs``; ``examples/docs`` in a source checkout links to it)."""
    return Path(__file__).resolve().parent / "example_docs"


def load_examples(path: Union[str, Path, None] = None) -> list[Document]:
    """The Markdown documents about symbi that ship with it (``examples/docs``), or the
    ``.md`` files of directory ``path``, as :class:`Document` objects sorted by id."""
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise InvalidArgument(
            f"path must be a directory of .md files (or None for the bundled examples), "
            f"got {type(path).__name__}",
            argument="path",
            expected="str | os.PathLike | None",
            got=type(path).__name__,
        )
    d = Path(path) if path is not None else example_docs_dir()
    if not d.is_dir() or not any(d.glob("*.md")):
        raise InvalidArgument(
            f"no Markdown documents in {str(d)!r}; pass a directory of .md files",
            argument="path",
            expected="a directory of .md files",
            got=str(d),
        )
    return [load_markdown(p) for p in sorted(d.glob("*.md"))]


def example_pipeline(
    path: Union[str, Path, None] = None, *, embedder: Optional[Embedder] = None
) -> RagPipeline:
    """A :class:`RagPipeline` over :func:`load_examples` (what ``symbi demo`` asks)."""
    pipe = RagPipeline(embedder=embedder)
    pipe.ingest(load_examples(path))
    return pipe
