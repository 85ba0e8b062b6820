"""Okapi BM25 over chunk terms, and the rank-fusion and diversity helpers of the ranking
stage: reciprocal-rank fusion and maximal marginal relevance."""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Optional

import numpy as np
import numpy.typing as npt

__all__ = ["BM25Index", "mmr", "rrf"]


class BM25Index:
    """An inverted index scored with BM25 (``k1``, ``b``; idf ``ln(1 + (N-df+.5)/(df+.5))``,
    so scores are never negative). Thread-safe; documents can be added at any time."""

    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self._postings: dict[str, dict[int, int]] = {}
        self._lengths: dict[int, int] = {}
        self._total = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._lengths)

    def add(self, doc_id: int, tokens: Sequence[str]) -> None:
        with self._lock:
            if doc_id in self._lengths:
                self._remove(doc_id)
            for term, tf in Counter(tokens).items():
                self._postings.setdefault(term, {})[doc_id] = tf
            self._lengths[doc_id] = len(tokens)
            self._total += len(tokens)

    def remove(self, doc_id: int) -> None:
        with self._lock:
            self._remove(doc_id)

    def _remove(self, doc_id: int) -> None:
        n = self._lengths.pop(doc_id, None)
        if n is None:
            return
        self._total -= n
        for term in [t for t, p in self._postings.items() if doc_id in p]:
            del self._postings[term][doc_id]
            if not self._postings[term]:
                del self._postings[term]

    def idf(self, term: str) -> float:
        n = len(self._lengths)
        df = len(self._postings.get(term, ()))
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))

    def scores(self, query: Iterable[str]) -> dict[int, float]:
        """BM25 score of every document containing at least one query term."""
        with self._lock:
            n = len(self._lengths)
            if n == 0:
                return {}
            avg = self._total / n or 1.0
            out: dict[int, float] = {}
            for term, qtf in Counter(query).items():
                posting = self._postings.get(term)
                if not posting:
                    continue
                idf = self.idf(term)
                for doc, tf in posting.items():
                    norm = tf + self.k1 * (1 - self.b + self.b * self._lengths[doc] / avg)
                    out[doc] = out.get(doc, 0.0) + qtf * idf * tf * (self.k1 + 1) / norm
            return out

    def search(
        self, query: Iterable[str], k: int, allowed: Optional[set[int]] = None
    ) -> list[tuple[int, float]]:
        """The top ``k`` (doc, score), best first (ties by id), optionally among
        ``allowed`` docs only."""
        sc = self.scores(query)
        items = [(d, s) for d, s in sc.items() if allowed is None or d in allowed]
        items.sort(key=lambda p: (-p[1], p[0]))
        return items[:k]


def rrf(rankings: Sequence[Sequence[int]], k: int = 60) -> dict[int, float]:
    """Reciprocal-rank fusion: ``sum(1 / (k + rank))`` over the rankings (rank from 1)
    each id appears in. Higher is better."""
    out: dict[int, float] = {}
    for ranking in rankings:
        for r, doc in enumerate(ranking, start=1):
            out[doc] = out.get(doc, 0.0) + 1.0 / (k + r)
    return out


def mmr(
    relevance: Mapping[int, float],
    vectors: Mapping[int, npt.NDArray[np.float32]],
    k: int,
    *,
    lambda_: float = 0.7,
    duplicate_threshold: float = 0.95,
) -> list[int]:
    """Maximal marginal relevance: pick ``k`` ids greedily by
    ``lambda * relevance - (1 - lambda) * max similarity to those picked``; ids whose
    cosine similarity to a picked one reaches ``duplicate_threshold`` are dropped as
    near-duplicates. Relevance is rescaled to 0..1 first."""
    if not relevance or k <= 0:
        return []
    ids = sorted(relevance, key=lambda d: (-relevance[d], d))
    hi, lo = relevance[ids[0]], relevance[ids[-1]]
    span = (hi - lo) or 1.0
    rel = {d: (relevance[d] - lo) / span for d in ids}
    picked: list[int] = []
    left = list(ids)
    while left and len(picked) < k:
        best, best_score = None, -math.inf
        for d in left:
            sim = max((float(vectors[d] @ vectors[p]) for p in picked), default=0.0)
            s = lambda_ * rel[d] - (1 - lambda_) * sim
            if s > best_score:
                best, best_score = d, s
        assert best is not None
        picked.append(best)
        left = [
            d for d in left if d != best and float(vectors[d] @ vectors[best]) < duplicate_threshold
        ]
    return picked
