"""The RAG pipeline: each stage alone, then end to end on the shipped example docs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from symbi.errors import InvalidArgument, RequestTimeout
from symbi.rag import (
    Answer,
    BM25Index,
    Chunk,
    Document,
    DocumentStore,
    ExtractiveGenerator,
    HybridRanker,
    HybridRetriever,
    IndexVectorSearcher,
    LLMGenerator,
    QueryAnalysis,
    RagPipeline,
    RuleQueryAnalyzer,
    chunk_text,
    example_docs_dir,
    example_pipeline,
    load_examples,
    mmr,
    rrf,
    terms,
)

DEMO_QUESTION = "How does symbi detect tampering with the audit trail?"


@pytest.fixture(scope="module")
def pipeline() -> RagPipeline:
    return example_pipeline()


# ------------------------------------------------------------------ stage 1: analysis
def test_analysis_extracts_filters_keywords_and_intent():
    a = RuleQueryAnalyzer().analyze(
        'How are sandboxes isolated? lang:de year>=2020 year<2025 topic:"sandbox tiers" draft!=true'
    )
    assert a.filters == {
        "lang": "de",
        "year": {"gte": 2020, "lt": 2025},
        "topic": "sandbox tiers",
        "draft": {"ne": True},
    }
    assert a.text == "How are sandboxes isolated?"
    assert a.keywords == ["sandbox", "isolat"]
    assert a.intent == "explain"
    intents = {
        q: RuleQueryAnalyzer().analyze(q).intent
        for q in [
            "What is a policy?",
            "How do I configure Qdrant?",
            "compare tier1 vs tier2",
            "list the sandbox tiers",
            "audit trail",
        ]
    }
    assert list(intents.values()) == ["define", "howto", "compare", "list", "search"]


def test_analysis_bad_input():
    with pytest.raises(InvalidArgument):
        RuleQueryAnalyzer().analyze("   ")
    with pytest.raises(InvalidArgument, match="number"):
        RuleQueryAnalyzer().analyze("x year>=recent")


# ------------------------------------------------------------------ chunking and stores
def test_chunking_respects_size_headings_and_keeps_all_text():
    text = "# Title\n\nIntro paragraph.\n\n## Part\n\n" + " ".join(
        f"Sentence number {i} is here." for i in range(60)
    )
    chunks = chunk_text(text, max_chars=200)
    assert all(len(c) <= 200 for c in chunks)
    assert chunks[0].startswith("# Title") and any(c.startswith("## Part") for c in chunks)
    joined = " ".join(chunks)
    assert all(f"number {i} " in joined for i in range(60))
    with pytest.raises(InvalidArgument):
        chunk_text("x", max_chars=10)


def test_document_store_replaces_documents_and_filters():
    s = DocumentStore()
    n = s.add(
        [
            Document(id="a", text="alpha beta", metadata={"lang": "en"}),
            Document(id="b", text="gamma delta", metadata={"lang": "de"}),
        ]
    )
    assert n == 2 and len(s) == 2
    s.add(Document(id="a", text="alpha epsilon", metadata={"lang": "en"}))
    assert len(s) == 2 and sorted(s.documents) == ["a", "b"]
    assert [c.doc_id for c in s.get(list(s.matching({"lang": "de"})))] == ["b"]
    with pytest.raises(InvalidArgument):
        s.add(["not a document"])  # type: ignore[list-item]


# ------------------------------------------------------------------ stages 2-4
def test_vector_search_and_hybrid_retrieval_and_ranking(pipeline: RagPipeline):
    store = pipeline.store
    a = RuleQueryAnalyzer().analyze(DEMO_QUESTION)
    hits = IndexVectorSearcher().search(a, store, 10)
    assert len(hits) == 10 and store.get([hits[0][0]])[0].doc_id == "audit-trail"
    cands = HybridRetriever().retrieve(a, store, hits, 10)
    assert {c.chunk.id for c in cands} >= {i for i, _ in hits}
    assert any(c.bm25_rank == 1 and c.chunk.doc_id == "audit-trail" for c in cands)
    ranked = HybridRanker().rank(a, store, cands, 4)
    assert len(ranked) == 4 and ranked[0][0].doc_id == "audit-trail"
    assert len({c.id for c, _ in ranked}) == 4


def test_filters_in_the_query_restrict_both_searches(pipeline: RagPipeline):
    ans = pipeline.run("Which sandbox tiers exist? topic:isolation")
    assert {c.doc_id for c in ans.citations} == {"sandbox-tiers"}
    ans = pipeline.run("audit trail year<2026")
    assert {c.doc_id for c in ans.citations} == {"configuration"}
    ans = pipeline.run("audit trail topic:nothing-here")
    assert ans.citations == [] and "nothing" in ans.text


def test_mmr_drops_near_duplicates():
    store = DocumentStore()
    body = "The scheduler places every task by priority with aging so nothing starves."
    store.add(
        [
            Document(id="orig", text=body),
            Document(id="copy", text=body),
            Document(id="other", text="Aging in the scheduler raises waiting priorities."),
        ]
    )
    p = RagPipeline(store)
    ans = p.run("scheduler priority aging", k=3)
    docs = [c.doc_id for c in ans.citations]
    assert len(docs) == 2 and "other" in docs and ("orig" in docs) != ("copy" in docs)


# ------------------------------------------------------------------ stage 5 and end to end
def test_demo_question_is_answered_from_the_audit_trail_document(pipeline: RagPipeline):
    ans = pipeline.run(DEMO_QUESTION)
    assert isinstance(ans, Answer)
    assert ans.citations[0].doc_id == "audit-trail"
    assert "[audit-trail#" in ans.text
    assert "verify" in ans.text and "signature" in ans.text
    assert set(ans.timings_ms) == {
        "analysis",
        "vector_search",
        "retrieval",
        "ranking",
        "generation",
    }


def test_load_examples_ships_documents_about_symbi():
    docs = load_examples()
    assert 6 <= len(docs) <= 10
    assert {"audit-trail", "policy-engine", "sandbox-tiers"} <= {d.id for d in docs}
    assert all(d.title and d.metadata["topic"] for d in docs)
    with pytest.raises(InvalidArgument):
        load_examples("/nonexistent/dir")


def test_example_docs_ship_inside_the_package(tmp_path, monkeypatch: pytest.MonkeyPatch):
    import symbi.rag

    monkeypatch.chdir(tmp_path)  # as `symbi demo` from an installed wheel
    d = example_docs_dir()
    assert d.parent == Path(symbi.rag.__file__).resolve().parent
    assert len(load_examples()) == len(list(d.glob("*.md")))
    root = Path(__file__).resolve().parents[2]
    # examples/docs in the checkout links to the copy that is packaged.
    packaged = (root / "python" / "symbi" / "rag" / "example_docs").resolve()
    assert (root / "examples" / "docs").resolve() == packaged
    assert sorted(p.name for p in packaged.glob("*.md")) == sorted(p.name for p in d.glob("*.md"))


def test_llm_generators_sync_and_async(pipeline: RagPipeline):
    prompts: list[str] = []

    def llm(prompt: str) -> str:
        prompts.append(prompt)
        return "Verification recomputes the hash chain [audit-trail#1]."

    p = RagPipeline(pipeline.store, generator=LLMGenerator(llm))
    ans = p.run(DEMO_QUESTION)
    assert ans.text.startswith("Verification") and "[audit-trail#1]" in prompts[0]
    assert DEMO_QUESTION in prompts[0]

    async def allm(prompt: str) -> str:
        return "async answer"

    pa = RagPipeline(pipeline.store, generator=LLMGenerator(allm))
    with pytest.raises(InvalidArgument, match="answer"):
        pa.run(DEMO_QUESTION)
    import anyio

    async def main() -> tuple[Answer, Answer]:
        return (
            await pa.answer(DEMO_QUESTION, timeout=10),
            await pipeline.answer(DEMO_QUESTION, timeout=10),
        )

    a1, a2 = anyio.run(main)
    assert a1.text == "async answer" and a2.citations[0].doc_id == "audit-trail"


def test_custom_stages_replace_the_defaults(pipeline: RagPipeline):
    class OnlyFirst:
        def rank(
            self, analysis: QueryAnalysis, store: DocumentStore, candidates: Sequence, k: int
        ) -> list[tuple[Chunk, float]]:
            return [(candidates[0].chunk, 1.0)]

    class Echo:
        def generate(
            self, question: str, analysis: QueryAnalysis, ranked: Sequence[tuple[Chunk, float]]
        ) -> Answer:
            return ExtractiveGenerator(max_sentences=1).generate(question, analysis, ranked)

    p = RagPipeline(pipeline.store, ranker=OnlyFirst(), generator=Echo())
    assert len(p.run(DEMO_QUESTION).citations) == 1


def test_pipeline_timeout_and_bad_input(pipeline: RagPipeline):
    import time

    import anyio

    def slow(prompt: str) -> str:
        time.sleep(0.5)
        return "late"

    p = RagPipeline(pipeline.store, generator=LLMGenerator(slow))

    async def main() -> None:
        await p.answer(DEMO_QUESTION, timeout=0.1)

    with pytest.raises(RequestTimeout):
        anyio.run(main)
    with pytest.raises(InvalidArgument):
        pipeline.run(DEMO_QUESTION, k=0)
    with pytest.raises(InvalidArgument):
        RagPipeline(pipeline.store, embedder=pipeline.store.embedder)


# ------------------------------------------------------------------ ranking helpers
def test_bm25_rrf_mmr_basics():
    idx = BM25Index()
    idx.add(1, terms("audit trail hash chain"))
    idx.add(2, terms("sandbox tier isolation"))
    idx.add(3, terms("audit audit audit"))
    hits = idx.search(terms("audit chain"), 3)
    assert [d for d, _ in hits] == [1, 3]
    idx.remove(1)
    assert [d for d, _ in idx.search(terms("audit chain"), 3)] == [3]
    assert rrf([[1, 2], [2, 3]]) == pytest.approx({1: 1 / 61, 2: 1 / 62 + 1 / 61, 3: 1 / 62})
    v = {i: np.eye(3, dtype=np.float32)[i % 3] for i in range(4)}  # 0 and 3 are identical
    assert mmr({0: 1.0, 1: 0.5, 2: 0.4, 3: 0.9}, v, 4) == [0, 1, 2]
