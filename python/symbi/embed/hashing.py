"""``HashingEmbedder``: an offline, model-free, deterministic embedder.

It is **lexical**, not semantic: texts are close when they share words, word pairs and
word fragments, not when they mean the same thing with different words. Features are

* word unigrams (lower-cased, English stop words dropped), weight 1;
* word bigrams of the remaining words, weight 0.7 (so word order counts a little);
* character 3- and 4-grams of each word with boundary marks (``<tam``, ``mpe>``), which
  make inflections and typos overlap (``tamper``/``tampering``), total weight 0.8 per word.

Each feature is hashed (CRC-32) to one of ``dim`` buckets with a sign taken from another
bit of the hash (the "signed hashing trick", so collisions cancel out on average instead
of piling up), the weights are summed, and the vector is L2-normalised. The same text
gives the same vector in every process and on every machine.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Union

import numpy as np

from ..errors import InvalidArgument
from .base import Vectors, check_texts

__all__ = ["STOP_WORDS", "HashingEmbedder", "tokenize"]

_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*", re.UNICODE)

#: Words too common to say anything about a text; dropped from word features.
STOP_WORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
    ]
)


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens of ``text``, stop words included."""
    return [m.group(0).replace("\u2019", "'") for m in _WORD.finditer(text.lower())]


class HashingEmbedder:
    """Signed feature hashing of word uni/bi-grams and character n-grams (see the module
    docstring). Lexical, offline, deterministic and thread-safe."""

    __slots__ = ("_dim", "_features")

    def __init__(self, dim: int = 384) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or not 8 <= dim <= 65_536:
            raise InvalidArgument(
                f"dim must be an int in 8..65536, got {dim!r}",
                argument="dim",
                expected="int in 8..65536",
                got=dim,
            )
        self._dim = dim
        # Per-word features (bucket, signed weight), memoised: words repeat a lot.
        self._features = lru_cache(maxsize=1 << 16)(self._word_features)

    @property
    def dim(self) -> int:
        return self._dim

    def __repr__(self) -> str:
        return f"HashingEmbedder(dim={self._dim})"

    def _bucket(self, feature: str, weight: float) -> tuple[int, float]:
        h = zlib.crc32(feature.encode("utf-8"))
        return h % self._dim, (weight if h & 0x80000000 else -weight)

    def _word_features(self, word: str) -> tuple[tuple[int, float], ...]:
        out = [self._bucket("w:" + word, 1.0)]
        marked = f"<{word}>"
        grams = [marked[i : i + n] for n in (3, 4) for i in range(len(marked) - n + 1)]
        if grams:
            w = 0.8 / len(grams) ** 0.5
            out.extend(self._bucket("c:" + g, w) for g in grams)
        return tuple(out)

    def features(self, text: str) -> dict[int, float]:
        """The text's hashed features: bucket -> summed signed weight (before scaling)."""
        words = [w for w in tokenize(text) if w not in STOP_WORDS]
        acc: dict[int, float] = {}
        for w in words:
            for b, v in self._features(w):
                acc[b] = acc.get(b, 0.0) + v
        for a, b2 in zip(words, words[1:]):
            b, v = self._bucket(f"b:{a} {b2}", 0.7)
            acc[b] = acc.get(b, 0.0) + v
        return acc

    def embed(self, texts: Union[str, Sequence[str]]) -> Vectors:
        """An ``(n, dim)`` float32 array of unit rows (a text without words gives zeros)."""
        items = check_texts(texts)
        out = np.zeros((len(items), self._dim), dtype=np.float32)
        for row, text in enumerate(items):
            feats = self.features(text)
            if feats:
                idx = np.fromiter(feats.keys(), dtype=np.intp, count=len(feats))
                val = np.fromiter(feats.values(), dtype=np.float32, count=len(feats))
                norm = float(np.sqrt(np.dot(val, val)))
                if norm > 0:
                    out[row, idx] = val / norm
        return out
