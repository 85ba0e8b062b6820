"""Agent memory and RAG: symbi's paths against naive baselines on the same data.

Rows:
- context retrieval p50 / p99 at 100k items (quick: 10k), microseconds per
  ``await cm.retrieve_context(...)`` (embed the query, filtered HNSW search, fetch the
  items), against a numpy brute-force cosine scan over every stored embedding plus the
  same SQLite fetch, run through the same worker-thread call. Recall@5 of symbi against
  the brute force is checked outside the timed part and reported in seed_target.
- RAG end to end without an LLM (ms per question): the five-stage pipeline (analysis,
  HNSW search, BM25 retrieval, RRF + MMR ranking, extractive answer) against a baseline
  pipeline with brute-force numpy cosine, no BM25 and no MMR, same extractive answer.
"""

from __future__ import annotations

import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from conftest import size
from symbi.context import ContextManager
from symbi.rag import (
    Document,
    DocumentStore,
    ExtractiveGenerator,
    RagPipeline,
    RuleQueryAnalyzer,
    load_examples,
)

N_ITEMS = size(100_000, 10_000)
N_QUERIES = size(1000, 300)
K = 5
DIM = 384
AGENT = "agent-bench"

_rng = random.Random(11)
_SYL = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "pe", "da", "zu", "ri", "go", "ba"]
VOCAB = sorted({"".join(_rng.choice(_SYL) for _ in range(_rng.randint(2, 4))) for _ in range(6000)})
# Text is clustered like real text: each item has a topic whose 60 words make up ~70% of it.
TOPICS = [_rng.sample(range(len(VOCAB)), 60) for _ in range(300)]


def _sentence(rng: random.Random, n: int) -> str:
    topic = TOPICS[rng.randrange(len(TOPICS))]
    return " ".join(
        VOCAB[rng.choice(topic)] if rng.random() < 0.7 else VOCAB[rng.randrange(len(VOCAB))]
        for _ in range(n)
    )


@pytest.fixture(scope="module")
def memory() -> Any:
    rng = random.Random(7)
    texts = [_sentence(rng, 14) for _ in range(N_ITEMS)]
    sources = [rng.randrange(N_ITEMS) for _ in range(N_QUERIES)]
    # A query is 4 words of one stored item: that item should come back.
    queries = [" ".join(rng.sample(texts[i].split(), 4)) for i in sources]
    others = [_sentence(rng, 14) for _ in range(N_ITEMS // 10)]
    tmp = tempfile.mkdtemp(prefix="symbi-bench-context-")
    cm = ContextManager(path=tmp, dim=DIM, default_timeout=600)

    async def fill() -> None:
        await cm.open()
        for i in range(0, N_ITEMS, 5000):
            await cm.store_contexts(AGENT, texts[i : i + 5000], timeout=600)
        # Another agent's items share the index: the agent filter is part of the work.
        # (Distinct texts: exact duplicate vectors owned by another agent currently make
        # ~1% of filtered HNSW walks come back short and fall back to brute force.)
        await cm.store_contexts("other-agent", others, timeout=600)

    anyio.run(fill)
    db = sqlite3.connect(str(Path(tmp) / "context.sqlite3"), check_same_thread=False)
    rows = db.execute(
        "SELECT id, embedding FROM items WHERE agent_id=? ORDER BY id", (AGENT,)
    ).fetchall()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    mat = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), DIM)
    yield {"cm": cm, "queries": queries, "db": db, "ids": ids, "mat": mat, "tmp": tmp}
    db.close()
    anyio.run(cm.stop)


def _brute(m: dict[str, Any], q: str) -> list[tuple[int, str]]:
    """The naive baseline: embed, scan every embedding, fetch the top k from SQLite."""
    v = m["cm"].embedder.embed([q])[0]
    sims = m["mat"] @ v
    top = np.argpartition(-sims, K)[:K]
    top = top[np.argsort(-sims[top])]
    want = [int(m["ids"][i]) for i in top]
    marks = ",".join("?" * len(want))
    got = dict(m["db"].execute(f"SELECT id, content FROM items WHERE id IN ({marks})", want))
    return [(i, got[i]) for i in want]


def _latencies(call: Any, queries: list[str]) -> np.ndarray:
    async def run() -> list[float]:
        out = []
        for q in queries:
            t0 = time.perf_counter()
            await call(q)
            out.append(time.perf_counter() - t0)
        return out

    return np.array(anyio.run(run)) * 1e6


P50 = {
    "metric": f"context retrieval p50 at {N_ITEMS // 1000}k items",
    "unit": "us",
    "better": "lower",
    "seed_target": "<50 ms",
    "goal": "<2 ms",
}
P99 = {**P50, "metric": f"context retrieval p99 at {N_ITEMS // 1000}k items"}
LAT: dict[str, np.ndarray] = {}


def _symbi_lat(m: dict[str, Any]) -> np.ndarray:
    if "symbi" not in LAT:
        cm = m["cm"]
        LAT["symbi"] = _latencies(
            lambda q: cm.retrieve_context(AGENT, q, k=K, kinds=["long_term"]), m["queries"]
        )
    return LAT["symbi"]


def _peer_lat(m: dict[str, Any]) -> np.ndarray:
    if "peer" not in LAT:
        LAT["peer"] = _latencies(lambda q: anyio.to_thread.run_sync(_brute, m, q), m["queries"])
    return LAT["peer"]


def _recall(m: dict[str, Any]) -> float:
    """Recall@K of symbi's answers against the exact (brute-force) top K."""

    async def run() -> float:
        hits = 0
        for q in m["queries"][:200]:
            got = {
                int(x.id.split(":")[1])
                for x in await m["cm"].retrieve_context(AGENT, q, k=K, kinds=["long_term"])
            }
            hits += len(got & {i for i, _ in _brute(m, q)})
        return hits / (200 * K)

    return anyio.run(run)


@pytest.mark.parametrize(("row", "pct"), [(P50, 50), (P99, 99)])
def test_retrieval_symbi(benchmark, tag, memory, row, pct):
    r = _recall(memory)
    lat = _symbi_lat(memory)
    tag(
        role="symbi",
        value=float(np.percentile(lat, pct)),
        **{**row, "seed_target": f"{row['seed_target']}; recall@{K} vs brute force {r:.3f}"},
    )
    cm = memory["cm"]
    q = memory["queries"][0]
    benchmark(anyio.run, lambda: cm.retrieve_context(AGENT, q, k=K, kinds=["long_term"]))


@pytest.mark.parametrize(("row", "pct"), [(P50, 50), (P99, 99)])
def test_retrieval_peer_bruteforce(benchmark, tag, memory, row, pct):
    lat = _peer_lat(memory)
    tag(
        role="peer",
        peer="numpy brute-force cosine + SQLite fetch",
        value=float(np.percentile(lat, pct)),
        **row,
    )
    benchmark(_brute, memory, memory["queries"][0])


# ------------------------------------------------------------------ RAG end to end
N_DOCS = size(3000, 600)
QUESTIONS = {
    "How does symbi detect tampering with the audit trail?": "audit-trail",
    "What happens when a message cannot be delivered?": "message-bus",
    "Which sandbox tiers exist?": "sandbox-tiers",
    "What does deny override in a policy?": "policy-engine",
    "Where are agent memory items stored?": "agent-memory",
    "How are unverified MCP tools handled in strict mode?": "mcp-tools",
    "How does the scheduler avoid starvation?": "scheduler",
    "What does a ConfigError name?": "configuration",
}


def _accuracy(run: Any) -> str:
    top1 = sum(run(q).citations[0].doc_id == d for q, d in QUESTIONS.items() if run(q).citations)
    return f"right document first for {top1}/{len(QUESTIONS)} questions"


RAG = {
    "metric": f"RAG end-to-end without an LLM ({N_DOCS} docs)",
    "unit": "ms",
    "better": "lower",
    "seed_target": "<500 ms",
    "goal": "<20 ms",
}


@pytest.fixture(scope="module")
def corpus() -> DocumentStore:
    rng = random.Random(3)
    docs = list(load_examples())
    for i in range(N_DOCS):
        paras = [_sentence(rng, 12) + ". " + _sentence(rng, 10) + "." for _ in range(3)]
        docs.append(
            Document(
                id=f"synthetic-{i}",
                text="\n\n".join(paras),
                title=_sentence(rng, 3),
                metadata={"topic": "noise"},
            )
        )
    store = DocumentStore()
    store.add(docs)
    return store


class BruteForceBaseline:
    """Analysis, brute-force numpy cosine over every chunk, the extractive answer."""

    def __init__(self, store: DocumentStore) -> None:
        self.store = store
        self.ids = np.array(sorted(store._chunks), dtype=np.int64)
        self.mat = np.stack([store.embedding(int(i)) for i in self.ids])
        self.analyzer = RuleQueryAnalyzer()
        self.generator = ExtractiveGenerator()

    def run(self, question: str) -> Any:
        a = self.analyzer.analyze(question)
        v = self.store.embedder.embed([a.text])[0]
        sims = self.mat @ v
        top = np.argpartition(-sims, K)[:K]
        top = top[np.argsort(-sims[top])]
        chunks = self.store.get([int(self.ids[i]) for i in top])
        return self.generator.generate(
            question, a, [(c, float(sims[j])) for c, j in zip(chunks, top)]
        )


def _per_question_ms(benchmark: Any) -> float:
    return float(benchmark.stats.stats.median) * 1e3 / len(QUESTIONS)


def test_rag_symbi(benchmark, tag, corpus):
    pipe = RagPipeline(corpus)
    tag(role="symbi", **{**RAG, "seed_target": f"{RAG['seed_target']}; {_accuracy(pipe.run)}"})
    benchmark(lambda: [pipe.run(q) for q in QUESTIONS])
    tag(value=_per_question_ms(benchmark))


def test_rag_peer_bruteforce(benchmark, tag, corpus):
    base = BruteForceBaseline(corpus)
    tag(role="peer", peer=f"numpy brute-force cosine, no BM25/MMR ({_accuracy(base.run)})", **RAG)
    benchmark(lambda: [base.run(q) for q in QUESTIONS])
    tag(value=_per_question_ms(benchmark))
