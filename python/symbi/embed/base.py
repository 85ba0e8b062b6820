"""The :class:`Embedder` protocol and the input checks every embedder shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Protocol, Union, runtime_checkable

import anyio
import numpy as np
import numpy.typing as npt

from ..deadlines import check_timeout
from ..errors import InvalidArgument, RequestTimeout

__all__ = ["Embedder", "check_texts", "embed_async", "normalize_rows"]

#: What ``embed`` returns: an (n, dim) float32 array, one row per text.
Vectors = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors. ``dim`` is the vector length; ``embed`` returns an
    ``(len(texts), dim)`` float32 array whose rows are L2-normalised (cosine-ready)."""

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vectors: ...


def check_texts(texts: Union[str, Sequence[str]], *, argument: str = "texts") -> list[str]:
    """``texts`` as a list of str, or :class:`InvalidArgument` saying what is wrong.
    A single str is accepted as one text."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence):
        raise InvalidArgument(
            f"{argument} must be a list of str, got {type(texts).__name__}",
            argument=argument,
            expected="list[str]",
            got=type(texts).__name__,
        )
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise InvalidArgument(
                f"{argument}[{i}] must be a str, got {type(t).__name__}",
                argument=argument,
                expected="list[str]",
                got=type(t).__name__,
            )
    return out


def normalize_rows(mat: Any) -> Vectors:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), as C-contiguous float32."""
    arr = np.ascontiguousarray(mat, dtype=np.float32)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


#: Seconds :func:`embed_async` waits when ``timeout`` is not given.
DEFAULT_TIMEOUT = 30.0


async def embed_async(
    embedder: Embedder,
    texts: Union[str, Sequence[str]],
    *,
    timeout: Optional[float] = DEFAULT_TIMEOUT,
) -> Vectors:
    """``embedder.embed(texts)`` in a worker thread, bounded by ``timeout`` seconds
    (a positive finite number; None means the default, 30 s;
    :class:`~symbi.errors.RequestTimeout` past it)."""
    # Never unbounded: None is the default, not "wait forever".
    timeout = check_timeout(DEFAULT_TIMEOUT if timeout is None else timeout)
    # Not isinstance(embedder, Embedder): on Python < 3.12 that reads .dim, which may
    # be a blocking request (HttpEmbedder learning its dimension) on the event loop.
    if not callable(getattr(type(embedder), "embed", None)):
        raise InvalidArgument(
            f"embedder must be a symbi.embed.Embedder (with .dim and .embed(texts)), "
            f"got {type(embedder).__name__}",
            argument="embedder",
            expected="an Embedder",
            got=type(embedder).__name__,
        )
    items = check_texts(texts)
    try:
        with anyio.fail_after(timeout):
            return await anyio.to_thread.run_sync(embedder.embed, items, abandon_on_cancel=True)
    except TimeoutError:
        raise RequestTimeout(
            f"embedding {len(items)} texts took longer than {timeout}s; raise the timeout "
            "or embed smaller batches",
            recipient=type(embedder).__name__,
            timeout=timeout,
        ) from None
