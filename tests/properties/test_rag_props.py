"""Invariants of the ranking helpers, chunking, hashing and the query filter syntax."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from symbi.embed import HashingEmbedder
from symbi.rag import BM25Index, RuleQueryAnalyzer, chunk_text, mmr, rrf

WORDS = st.sampled_from(
    ["audit", "trail", "hash", "chain", "policy", "sandbox", "tier", "agent", "memory", "vector"]
)
DOCS = st.lists(st.lists(WORDS, min_size=1, max_size=12), min_size=1, max_size=12)
RANKING = st.lists(st.integers(0, 30), unique=True, max_size=20)


@given(DOCS, st.lists(WORDS, min_size=1, max_size=4))
def test_bm25_scores_are_nonnegative_and_only_for_matching_docs(docs, query):
    idx = BM25Index()
    for i, d in enumerate(docs):
        idx.add(i, d)
    scores = idx.scores(query)
    assert all(s >= 0 for s in scores.values())
    assert set(scores) == {i for i, d in enumerate(docs) if set(d) & set(query)}
    top = idx.search(query, 5)
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)


@given(DOCS, WORDS, st.integers(0, 10), st.lists(WORDS, min_size=1, max_size=12))
def test_bm25_more_occurrences_score_higher_at_equal_length(docs, word, k, filler):
    """Of two equal-length docs in one index, the one with k + 1 occurrences of the query
    term scores strictly higher than the one with k: idf > 0 and tf / (tf + c) rises."""
    idx = BM25Index()
    for i, d in enumerate(docs):
        idx.add(i, d)
    pad = ["pad" if w == word else w for w in filler]
    fewer, more = [word] * k + pad, [word] * (k + 1) + pad[1:]
    assert len(fewer) == len(more)
    idx.add(1000, fewer)
    idx.add(1001, more)
    s = idx.scores([word])
    assert s[1001] > s.get(1000, 0.0)
    if k:
        assert s[1000] > 0


@given(st.lists(RANKING, min_size=1, max_size=4))
def test_rrf_invariants(rankings):
    fused = rrf(rankings)
    assert set(fused) == {d for r in rankings for d in r}
    # Order inside a single ranking is preserved.
    single = rrf(rankings[:1])
    r0 = rankings[0]
    assert all(single[a] > single[b] for a, b in zip(r0, r0[1:]))
    # Symmetric in the order of the rankings.
    back = rrf(list(reversed(rankings)))
    assert all(abs(back[d] - fused[d]) < 1e-12 for d in fused)


@given(
    st.dictionaries(st.integers(0, 40), st.floats(0, 1), min_size=1, max_size=25),
    st.integers(1, 30),
    st.integers(0, 10_000),
)
def test_mmr_returns_distinct_relevant_ids_without_duplicates(rel, k, seed):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(4, 8)).astype(np.float32)
    vecs = {d: base[d % 4] / np.linalg.norm(base[d % 4]) for d in rel}
    out = mmr(rel, vecs, k, duplicate_threshold=0.99)
    assert len(out) == len(set(out)) <= min(k, len(rel))
    assert set(out) <= set(rel)
    assert out[0] == max(rel, key=lambda d: (rel[d], -d))
    # Ids with the same vector are duplicates: at most one of each survives.
    assert len({d % 4 for d in out}) == len(out)


@settings(max_examples=50)
@given(
    st.lists(st.text(alphabet="abcdefgh .\n", min_size=1, max_size=120), max_size=20),
    st.integers(50, 300),
)
def test_chunks_are_bounded_and_lose_no_words(parts, max_chars):
    text = "\n\n".join(parts)
    assume(all(len(w) <= max_chars for w in text.split()))  # longer words are cut
    chunks = chunk_text(text, max_chars=max_chars)
    assert all(len(c) <= max_chars for c in chunks)
    assert set(text.split()) <= set(" ".join(chunks).split())


@given(st.lists(st.text(min_size=0, max_size=40), max_size=5))
def test_hashing_rows_are_unit_or_zero(texts):
    v = HashingEmbedder(32).embed(texts)
    norms = np.linalg.norm(v, axis=1)
    assert np.all((np.abs(norms - 1) < 1e-4) | (norms == 0))
    assert np.isfinite(v).all()


@given(
    st.sampled_from(["lang", "topic", "kind"]),
    st.from_regex(r"[a-z]{1,8}", fullmatch=True),
    st.integers(1900, 2100),
)
def test_query_filters_round_trip(key, value, year):
    a = RuleQueryAnalyzer().analyze(f"find things {key}:{value} year>={year}")
    assert a.filters == {key: value, "year": {"gte": year}}
    assert a.text == "find things"
