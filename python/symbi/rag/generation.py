"""Stage 5 of the RAG pipeline: turning ranked chunks into an answer with citations.

* :class:`ExtractiveGenerator` (default): no model; picks the sentences of the top chunks
  that share most keywords with the question and cites each one ``[doc_id#chunk]``.
* :class:`LLMGenerator`: any callable ``prompt -> str`` (sync or async), for example
  :class:`OpenAIChatClient` for an OpenAI-compatible ``/v1/chat/completions`` server.
"""

from __future__ import annotations

import inspect
import json
import re
import urllib.error
import urllib.request
from collections.abc import Awaitable, Sequence
from typing import Any, Callable, Optional, Protocol, Union, runtime_checkable

import msgspec

from ..deadlines import check_timeout
from ..embed.http import post_within
from ..errors import InvalidArgument, ModelError
from .analysis import QueryAnalysis, terms
from .documents import Chunk

__all__ = [
    "Answer",
    "Citation",
    "ExtractiveGenerator",
    "Generator",
    "LLMGenerator",
    "OpenAIChatClient",
    "build_prompt",
]

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


class Citation(msgspec.Struct, frozen=True, kw_only=True):
    """A source of the answer: document, chunk index, title, fused score and text."""

    doc_id: str
    chunk: int
    title: str
    score: float
    text: str

    @property
    def label(self) -> str:
        return f"[{self.doc_id}#{self.chunk}]"


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """The answer text (with ``[doc_id#chunk]`` markers), its citations best first, the
    query analysis and per-stage timings in milliseconds."""

    question: str
    text: str
    citations: list[Citation]
    analysis: QueryAnalysis
    timings_ms: dict[str, float] = msgspec.field(default_factory=dict)


@runtime_checkable
class Generator(Protocol):
    def generate(
        self, question: str, analysis: QueryAnalysis, ranked: Sequence[tuple[Chunk, float]]
    ) -> Union[Answer, Awaitable[Answer]]: ...


def _citations(ranked: Sequence[tuple[Chunk, float]]) -> list[Citation]:
    return [
        Citation(doc_id=c.doc_id, chunk=c.index, title=c.title, score=s, text=c.text)
        for c, s in ranked
    ]


class ExtractiveGenerator:
    """Answers with up to ``max_sentences`` sentences taken from the top ``max_chunks``
    chunks, chosen by keyword overlap with the question (ties favour higher-ranked
    chunks and earlier sentences), each followed by its citation."""

    def __init__(self, *, max_sentences: int = 3, max_chunks: int = 3) -> None:
        self.max_sentences = max_sentences
        self.max_chunks = max_chunks

    def generate(
        self, question: str, analysis: QueryAnalysis, ranked: Sequence[tuple[Chunk, float]]
    ) -> Answer:
        cites = _citations(ranked)
        if not ranked:
            return Answer(
                question=question,
                text="I found nothing about that in the documents.",
                citations=[],
                analysis=analysis,
            )
        want = set(analysis.keywords)
        picks: list[tuple[float, int, int, str, Citation]] = []
        for rank_, (c, _) in enumerate(ranked[: self.max_chunks]):
            for pos, sent in enumerate(s.strip() for s in _SENTENCE.split(c.text)):
                if len(sent) < 20 or sent.startswith("#"):
                    continue
                overlap = len(want & set(terms(sent)))
                if overlap == 0:
                    continue
                score = overlap - 0.5 * rank_ - 0.01 * pos
                picks.append((score, rank_, pos, sent, cites[rank_]))
        picks.sort(key=lambda p: -p[0])
        chosen = sorted(picks[: self.max_sentences], key=lambda p: (p[1], p[2]))
        if not chosen:
            top = cites[0]
            first = next((s for s in _SENTENCE.split(top.text) if not s.startswith("#")), "")
            text = f"{first.strip()} {top.label}"
        else:
            text = " ".join(f"{sent} {cite.label}" for _, _, _, sent, cite in chosen)
        return Answer(question=question, text=text, citations=cites, analysis=analysis)


def build_prompt(question: str, ranked: Sequence[tuple[Chunk, float]]) -> str:
    """A grounded prompt: numbered sources, then the question and the citation rule."""
    parts = ["Answer the question using only these sources. Cite them as [doc_id#chunk].", ""]
    for c, _ in ranked:
        parts.append(f"[{c.doc_id}#{c.index}] {c.title}\n{c.text}\n")
    parts.append(f"Question: {question}\nAnswer:")
    return "\n".join(parts)


class LLMGenerator:
    """Generation by a language model: ``llm(prompt) -> str``, sync or async. The prompt
    is :func:`build_prompt` unless ``prompt_builder`` is given."""

    def __init__(
        self,
        llm: Callable[[str], Union[str, Awaitable[str]]],
        *,
        prompt_builder: Callable[[str, Sequence[tuple[Chunk, float]]], str] = build_prompt,
    ) -> None:
        if not callable(llm):
            raise InvalidArgument(
                "llm must be a callable prompt -> str", argument="llm", expected="callable"
            )
        self.llm = llm
        self.prompt_builder = prompt_builder

    def generate(
        self, question: str, analysis: QueryAnalysis, ranked: Sequence[tuple[Chunk, float]]
    ) -> Union[Answer, Awaitable[Answer]]:
        prompt = self.prompt_builder(question, ranked)
        cites = _citations(ranked)

        async def finish(aw: Optional[Awaitable[str]]) -> Answer:
            # The async LLM is called only once this is awaited, so a caller that
            # drops the awaitable leaves no un-awaited coroutine behind.
            text = await (aw if aw is not None else self.llm(prompt))  # type: ignore[misc]
            return Answer(question=question, text=str(text), citations=cites, analysis=analysis)

        call = getattr(self.llm, "__call__", None)  # noqa: B004 - callable objects too
        if inspect.iscoroutinefunction(self.llm) or inspect.iscoroutinefunction(call):
            return finish(None)
        out = self.llm(prompt)
        if inspect.isawaitable(out):
            return finish(out)
        return Answer(question=question, text=str(out), citations=cites, analysis=analysis)


class OpenAIChatClient:
    """A blocking ``prompt -> str`` callable for an OpenAI-compatible chat server (use it
    in :class:`LLMGenerator`; the pipeline runs it in a worker thread)."""

    def __init__(
        self,
        url: str,
        *,
        model: str,
        api_key: Optional[str] = None,
        timeout: float = 60.0,
        temperature: float = 0.0,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidArgument(
                "url must be an http(s) URL such as http://localhost:8000/v1",
                argument="url",
                expected="http(s) URL",
                got=url,
            )
        url = url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        timeout = check_timeout(timeout)  # finite: the request's deadline timer needs one
        self.model, self._key, self.timeout, self.temperature = model, api_key, timeout, temperature

    def __call__(self, prompt: str) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": self.temperature,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            # The timeout bounds the whole request, not each read (see post_within).
            payload: Any = json.loads(post_within(req, self.timeout))
            return str(payload["choices"][0]["message"]["content"])
        except TimeoutError:
            raise ModelError(
                f"chat service {self.url} did not answer within {self.timeout}s; raise the "
                "timeout or check the server",
                model="chat",
                url=self.url,
            ) from None
        except urllib.error.HTTPError as e:
            raise ModelError(
                f"chat service {self.url} answered HTTP {e.code}",
                model="chat",
                url=self.url,
                status=e.code,
            ) from None
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            raise ModelError(
                f"chat service {self.url} failed: {e!r}", model="chat", url=self.url
            ) from None
