"""Failure paths of RAG, embedders and vector stores: prose that looks like a filter,
concurrent reads and writes of a DocumentStore, replacements that fail half way, Qdrant
filters the embedded index answers, and timeouts that must be bounded and valid."""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from symbi import VectorIndex
from symbi.embed import HashingEmbedder, HttpEmbedder, embed_async
from symbi.errors import InvalidArgument, ModelError
from symbi.rag import (
    Document,
    DocumentStore,
    HybridRanker,
    HybridRetriever,
    IndexVectorSearcher,
    RagPipeline,
    RuleQueryAnalyzer,
    example_pipeline,
)
from symbi.vector import EmbeddedVectorStore

TAMPER = "How does symbi detect tampering with the audit trail?"


@pytest.fixture(scope="module")
def examples() -> RagPipeline:
    return example_pipeline()


# ------------------------------------------------------------------ 1. query analysis
def test_prose_with_a_colon_is_not_a_filter(examples: RagPipeline):
    ans = examples.run("Quick question: how does symbi detect tampering with the audit trail?")
    assert ans.citations and ans.citations[0].doc_id == "audit-trail"
    a = RuleQueryAnalyzer().analyze("Note: the audit log is signed")
    assert a.filters == {} and a.text == "Note: the audit log is signed"


def test_word_colon_text_is_a_filter_only_on_a_known_key(examples: RagPipeline):
    a = RuleQueryAnalyzer(known_keys={"lang"}).analyze("see Note:the log lang:de year>=2020")
    assert a.filters == {"lang": "de", "year": {"gte": 2020}}
    assert a.text == "see Note:the log"
    # A callable is asked at each query (the pipeline's store grows).
    keys: set[str] = set()
    b = RuleQueryAnalyzer(known_keys=lambda: keys)
    assert b.analyze("x lang:de").filters == {}
    keys.add("lang")
    assert b.analyze("x lang:de").filters == {"lang": "de"}
    with pytest.raises(InvalidArgument):
        RuleQueryAnalyzer(known_keys=5)  # type: ignore[arg-type]
    # The documented syntax still filters on the example docs' front matter keys.
    ans = examples.run("audit trail topic:security")
    assert ans.citations and {c.doc_id for c in ans.citations} <= {
        "audit-trail",
        "policy-engine",
    }


# ------------------------------------------------------------------ 2. concurrent reads
def test_pipeline_queries_survive_concurrent_ingest_and_remove():
    p = RagPipeline(embedder=HashingEmbedder(64))
    p.ingest(
        [
            Document(
                id=f"d{i}", text=f"llama fact {i}. llamas live in the andes.", metadata={"l": "en"}
            )
            for i in range(300)
        ]
    )
    errors: list[str] = []
    done = threading.Event()

    def writer() -> None:
        try:
            for i in range(300):
                p.store.remove(f"d{i}")
                p.ingest(Document(id=f"n{i}", text=f"llama update {i} andes", metadata={"l": "en"}))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(repr(e))
        finally:
            done.set()

    def reader() -> None:
        while not done.is_set():
            try:
                ans = p.run("llamas andes l:en", k=5)
                assert ans.citations
            except BaseException as e:
                errors.append(repr(e))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: the races show up at once
    try:
        threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors[:3]
    assert len(p.store) == 300 and p.store.vectors.count() == 300


def test_ranking_skips_a_chunk_removed_after_retrieval():
    store = DocumentStore(HashingEmbedder(64))
    store.add(
        [
            Document(id="a", text="the scheduler ages waiting tasks"),
            Document(id="b", text="aging in the scheduler raises priorities"),
        ]
    )
    a = RuleQueryAnalyzer().analyze("scheduler aging")
    hits = IndexVectorSearcher().search(a, store, 5)
    cands = HybridRetriever().retrieve(a, store, hits, 5)
    assert {c.chunk.doc_id for c in cands} == {"a", "b"}
    store.remove("a")  # a concurrent remove between retrieval and ranking
    ranked = HybridRanker().rank(a, store, cands, 5)
    assert [c.doc_id for c, _ in ranked] == ["b"]


# ------------------------------------------------------------------ 3. atomic replace
def _texts(p: RagPipeline, q: str) -> list[tuple[str, str]]:
    return [(c.doc_id, c.text) for c in p.run(q).citations]


def test_a_replacement_the_index_refuses_keeps_the_old_version():
    p = RagPipeline(embedder=HashingEmbedder(64))
    p.ingest(Document(id="x", text="the original text about zebras and stripes."))
    for bad in (
        {"n": 2**70},
        {"f": math.nan},
        {"$k": 1},
        {"s": "\udc80"},
        {"doc_id": "other"},
    ):
        with pytest.raises(InvalidArgument):
            p.ingest(Document(id="x", text="new zebra text", metadata=bad))
    # A batch is all or nothing: one bad document, none of them goes in.
    with pytest.raises(InvalidArgument):
        p.ingest(
            [
                Document(id="y", text="fine new doc about okapis"),
                Document(id="x", text="new zebra text", metadata={"n": 2**64}),
            ]
        )
    assert _texts(p, "zebras stripes") == [("x", "the original text about zebras and stripes.")]
    assert p.store.documents == ["x"] and len(p.store) == 1
    assert p.store.vectors.count() == 1


def test_duplicate_ids_in_one_batch_are_refused_and_remove_leaves_nothing():
    p = RagPipeline(embedder=HashingEmbedder(64))
    with pytest.raises(InvalidArgument, match="twice"):
        p.ingest(
            [
                Document(id="d", text="llamas eat grass in the andes."),
                Document(id="d", text="penguins live in antarctica."),
            ]
        )
    assert len(p.store) == 0 and p.store.vectors.count() == 0
    p.ingest(Document(id="d", text="llamas eat grass in the andes."))
    p.ingest(Document(id="d", text="penguins live in antarctica."))
    assert _texts(p, "llamas grass") in ([], [("d", "penguins live in antarctica.")])
    p.store.remove("d")
    assert len(p.store) == 0 and p.store.vectors.count() == 0
    assert p.run("llamas grass").citations == []


class _Embeddings(BaseHTTPRequestHandler):
    """An OpenAI-style embeddings server. ``mode`` picks a misbehaviour: ``fail`` (HTTP
    500 when a text contains FAIL), ``drip`` (the answer one byte at a time), ``dup``
    (index 0 twice), ``partial`` (an index on one item only)."""

    mode = "fail"
    hashing = HashingEmbedder(48)

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        texts = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["input"]
        vecs = self.hashing.embed(texts).tolist()
        data: list[dict[str, Any]] = [{"index": i, "embedding": v} for i, v in enumerate(vecs)]
        if self.mode == "fail" and any("FAIL" in t for t in texts):
            return self._send(500, b'{"error": "model crashed"}')
        if self.mode == "dup":
            data = [{"index": 0, "embedding": v} for v in vecs]
        if self.mode == "partial":
            del data[-1]["index"]
        body = json.dumps({"data": data}).encode()
        if self.mode != "drip":
            return self._send(200, body)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for b in body:  # each byte well within the socket timeout
                self.wfile.write(bytes([b]))
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass  # the client hung up at its deadline

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[str]:
    _Embeddings.mode = "fail"
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Embeddings)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)


def test_a_replacement_whose_embedding_fails_keeps_the_old_version(server: str):
    p = RagPipeline(embedder=HttpEmbedder(server, model="m", dim=48))
    p.ingest(Document(id="x", text="the original text about zebras and stripes."))
    with pytest.raises(ModelError):
        p.ingest(Document(id="x", text="FAIL new zebra text"))
    assert _texts(p, "zebras stripes") == [("x", "the original text about zebras and stripes.")]
    assert len(p.store) == 1 and p.store.vectors.count() == 1


# ------------------------------------------------------------------ 4. Qdrant filters
VALUES: list[Any] = [1, 1.0, True, "1", 2.5, 0, False, None, "a", -3, 2**60, 2**60 + 1]
FILTERS: list[dict[str, Any]] = [
    {"v": 1},
    {"v": 1.0},
    {"v": 2.5},
    {"v": -3.0},
    {"v": True},
    {"v": {"eq": 2.5}},
    {"v": {"ne": 1.0}},
    {"v": {"in": [1, 2.5]}},
    {"v": {"in": [True, 1, "1"]}},
    {"v": {"in": [0, False]}},
    {"v": {"in": []}},
    {"v": {"nin": [True, 2.5, "a"]}},
    {"v": {"nin": []}},
    {"v": 2**60 + 1},
    {"v": {"in": [2**60, 2.5]}},
    {"$or": []},
    {"$or": [{"v": "a"}, {"v": {"gt": 2}}]},
    {"$not": {"v": {"in": [1, "a"]}}},
    {"$and": [{"v": {"gte": 0}}, {"v": {"lt": 2}}]},
]


@pytest.fixture(scope="module")
def both_backends() -> tuple[Any, Any, Any]:
    pytest.importorskip("qdrant_client", reason="qdrant-client is not installed")
    from symbi.vector.qdrant import QdrantVectorStore

    vecs = np.random.default_rng(0).normal(size=(len(VALUES), 8)).astype(np.float32)
    meta = [{"v": v} if v is not None else {} for v in VALUES]
    q = QdrantVectorStore(8, url="qdrant-local://:memory:", collection="f")
    e = EmbeddedVectorStore(8)
    for s in (q, e):
        s.upsert(list(range(len(VALUES))), vecs, meta)
    return q, e, vecs[0]


def test_qdrant_answers_filters_as_the_embedded_index_does(both_backends):
    # Numbers equal by value across int/float, bools only bools, mixed-type "in": the
    # embedded index's semantics; Qdrant's MatchValue takes no float at all.
    q, e, query = both_backends
    differ = {}
    for flt in FILTERS:
        want = sorted(i for i, _ in e.search(query, 20, flt))
        got = sorted(i for i, _ in q.search(query, 20, flt))
        if got != want:
            differ[repr(flt)] = (got, want)
    assert not differ


def test_qdrant_refuses_what_it_cannot_express_with_invalid_argument(both_backends):
    q, _, query = both_backends
    for flt in (
        {"v": math.nan},
        {"v": {"in": [1, None]}},
        {"v": {"ne": math.inf}},
        {"v": 2**70},
        {"v": {"in": [[1]]}},
        {"$or": {"v": 1}},
        {"$and": [5]},
        {"$not": 5},
        {5: 1},
    ):
        with pytest.raises(InvalidArgument):
            q.search(query, 5, flt)
    with pytest.raises(InvalidArgument):
        q.search(query[:4], 2)  # not Qdrant's shape error as a store failure


def test_rag_on_qdrant_filters_on_a_float(both_backends):
    from symbi.vector.qdrant import QdrantVectorStore

    emb = HashingEmbedder(64)
    qs = QdrantVectorStore(64, url="qdrant-local://:memory:", collection="rag")
    p = RagPipeline(DocumentStore(emb, vector_store=qs))
    p.ingest(
        [
            Document(id="half", text="llama facts", metadata={"w": 0.5, "n": 2}),
            Document(id="one", text="llama facts too", metadata={"w": 1.0, "n": 3}),
        ]
    )
    assert {c.doc_id for c in p.run("llama w:0.5").citations} == {"half"}
    assert {c.doc_id for c in p.run("llama w:1").citations} == {"one"}


# ------------------------------------------------------------------ 5. timeouts
BAD_TIMEOUTS: list[Any] = ["5", math.nan, math.inf, 0, -1, True]


def test_answer_and_embed_async_validate_their_timeout(examples: RagPipeline):
    async def main() -> None:
        for t in BAD_TIMEOUTS:
            with pytest.raises(InvalidArgument):
                await examples.answer(TAMPER, timeout=t)
            with pytest.raises(InvalidArgument):
                await embed_async(HashingEmbedder(8), ["x"], timeout=t)
        # None is the documented default (30 s), never "wait forever".
        ans = await examples.answer(TAMPER, timeout=None)
        assert ans.citations[0].doc_id == "audit-trail"
        assert (await embed_async(HashingEmbedder(8), ["x"], timeout=None)).shape == (1, 8)

    anyio.run(main)
    for t in BAD_TIMEOUTS:
        with pytest.raises(InvalidArgument):
            HttpEmbedder("http://127.0.0.1:9/v1", model="m", timeout=t)


def test_http_embedder_timeout_bounds_the_whole_request(server: str):
    # The server answers a byte every 0.05 s: no single read ever waits 0.5 s, but the
    # whole answer takes seconds, so only a deadline on the request can end it.
    _Embeddings.mode = "drip"
    with pytest.raises(ModelError, match=r"did not answer within 0\.5s"):
        HttpEmbedder(server, model="m", dim=48, timeout=0.5).embed(["a"])


@pytest.mark.parametrize("mode", ["dup", "partial"])
def test_http_embedder_refuses_answers_with_bad_indexes(server: str, mode: str):
    _Embeddings.mode = mode
    with pytest.raises(ModelError, match="exactly once"):
        HttpEmbedder(server, model="m", dim=48).embed(["a", "b"])


def test_vector_index_save_and_load_refuse_a_non_path(tmp_path: Path):
    ix = VectorIndex(4)
    for bad in (5, None, b"/tmp/x"):
        with pytest.raises(InvalidArgument):
            ix.save(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            VectorIndex.load(bad)  # type: ignore[arg-type]
    ix.save(tmp_path / "ix")
    assert len(VectorIndex.load(str(tmp_path / "ix"))) == 0


class _Chat(BaseHTTPRequestHandler):
    """An OpenAI-style chat server: answers at once, or (``drip``) one byte at a time."""

    drip = False

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        prompt = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = prompt["messages"][0]["content"].upper()
        body = json.dumps({"choices": [{"message": {"content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for i in range(0, len(body), 1 if self.drip else len(body)):
                self.wfile.write(body[i : i + (1 if self.drip else len(body))])
                self.wfile.flush()
                if self.drip:
                    time.sleep(0.05)
        except OSError:
            pass  # the client hung up at its deadline


def test_chat_client_timeout_bounds_the_whole_request():
    from symbi.rag.generation import OpenAIChatClient

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Chat)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        _Chat.drip = False
        assert OpenAIChatClient(url, model="m", timeout=5)("hi") == "HI"
        # A byte every 0.05 s: no single read waits 0.5 s, only a request deadline ends it.
        _Chat.drip = True
        with pytest.raises(ModelError, match=r"did not answer within 0\.5s"):
            OpenAIChatClient(url, model="m", timeout=0.5)("hi")
        for bad in (float("nan"), float("inf"), 0, "5"):
            with pytest.raises(InvalidArgument):
                OpenAIChatClient(url, model="m", timeout=bad)  # type: ignore[arg-type]
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)
