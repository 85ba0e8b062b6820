"""Retrieval-augmented generation over your documents, with the seed's five replaceable
stages (query analysis, vector search, document retrieval, hybrid ranking, generation).

>>> from symbi.rag import example_pipeline
>>> ans = example_pipeline().run("How does symbi detect tampering with the audit trail?")
>>> ans.citations[0].doc_id
'audit-trail'
"""

from __future__ import annotations

from .analysis import QueryAnalysis, QueryAnalyzer, RuleQueryAnalyzer, stem, terms
from .bm25 import BM25Index, mmr, rrf
from .documents import Chunk, Document, DocumentStore, chunk_text, load_markdown
from .generation import (
    Answer,
    Citation,
    ExtractiveGenerator,
    Generator,
    LLMGenerator,
    OpenAIChatClient,
    build_prompt,
)
from .pipeline import (
    Candidate,
    DocumentRetriever,
    HybridRanker,
    HybridRetriever,
    IndexVectorSearcher,
    RagPipeline,
    Ranker,
    VectorSearcher,
    example_docs_dir,
    example_pipeline,
    load_examples,
)

__all__ = [
    "Answer",
    "BM25Index",
    "Candidate",
    "Chunk",
    "Citation",
    "Document",
    "DocumentRetriever",
    "DocumentStore",
    "ExtractiveGenerator",
    "Generator",
    "HybridRanker",
    "HybridRetriever",
    "IndexVectorSearcher",
    "LLMGenerator",
    "OpenAIChatClient",
    "QueryAnalysis",
    "QueryAnalyzer",
    "RagPipeline",
    "Ranker",
    "RuleQueryAnalyzer",
    "VectorSearcher",
    "build_prompt",
    "chunk_text",
    "example_docs_dir",
    "example_pipeline",
    "load_examples",
    "load_markdown",
    "mmr",
    "rrf",
    "stem",
    "terms",
]
