"""``HttpEmbedder``: any OpenAI-compatible ``POST /v1/embeddings`` service.

Requests are made with the standard library (``urllib``), so no HTTP client dependency is
needed; use :func:`symbi.embed.embed_async` to call it from async code in a worker thread.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np

from ..deadlines import check_timeout
from ..errors import InvalidArgument, ModelError
from .base import Vectors, check_texts, normalize_rows

__all__ = ["HttpEmbedder"]


class _Deadline:
    """Ends a request at its deadline. A socket timeout bounds each read, not the
    request: a server dripping its answer a byte at a time would hold it for
    ``timeout`` per byte. So a timer shuts the request's sockets down when time is up,
    which makes any blocked read return at once."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            if self.expired:
                self._shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # already closed, or detached by TLS
            sock.shutdown(socket.SHUT_RDWR)


class _WatchedMixin:
    """An urllib handler whose connections register their sockets with a deadline."""

    _deadline: _Deadline

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        deadline = self._deadline

        def connection(host: str, **args: Any) -> Any:
            conn = http_class(host, **args)
            create = conn._create_connection  # the plain TCP socket, before any TLS

            def created(*a: Any, **kw: Any) -> Any:
                sock = create(*a, **kw)
                deadline.watch(sock)
                return sock

            conn._create_connection = created
            connect = conn.connect

            def connected() -> None:
                connect()
                deadline.watch(conn.sock)  # the TLS socket that replaced it, if any

            conn.connect = connected
            return conn

        return super().do_open(connection, req, **kwargs)  # type: ignore[misc]


class _HTTPHandler(_WatchedMixin, urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline


class _HTTPSHandler(_WatchedMixin, urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline


def post_within(req: urllib.request.Request, timeout: float) -> bytes:
    """Send ``req`` and read the whole answer within ``timeout`` seconds in all (a socket
    timeout alone bounds each read). Raises TimeoutError when time is up; HTTP and
    connection errors as urllib raises them (an HTTPError is read inside the deadline)."""
    deadline = _Deadline(timeout)
    opener = urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(deadline))
    with deadline:
        try:
            with opener.open(req, timeout=timeout) as resp:
                raw: bytes = resp.read()
        except urllib.error.HTTPError as e:
            if not deadline.expired:
                e.detail = e.read(500).decode("utf-8", "replace")  # type: ignore[attr-defined]
            raise
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            why = getattr(e, "reason", e)
            if deadline.expired or isinstance(why, TimeoutError):
                raise TimeoutError(f"no whole answer within {timeout}s") from e
            raise
    if deadline.expired:  # the body may have been cut short by the shutdown
        raise TimeoutError(f"no whole answer within {timeout}s")
    return raw


def _endpoint(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith("/embeddings"):
        return url
    return url + "/embeddings"


class HttpEmbedder:
    """Embeddings from an OpenAI-compatible server.

    ``url`` is the API base (``http://host:8000/v1``) or the full ``.../v1/embeddings``
    endpoint; ``api_key`` is sent as ``Authorization: Bearer``; ``model`` is passed
    through. ``dim`` may be given; otherwise it is learned from the first answer (asking
    the server once with a probe text if ``dim`` is read first). Texts are sent in
    batches of ``batch_size``; each request takes at most ``timeout`` seconds in all
    (connecting, sending and reading the answer), :class:`~symbi.errors.ModelError` past it.
    """

    def __init__(
        self,
        url: str,
        *,
        model: str,
        api_key: Optional[str] = None,
        dim: Optional[int] = None,
        timeout: float = 30.0,
        batch_size: int = 256,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidArgument(
                f"url must be an http(s) URL such as http://localhost:8000/v1, got {url!r}",
                argument="url",
                expected="http(s) URL",
                got=url,
            )
        if not isinstance(model, str) or not model:
            raise InvalidArgument(
                "model must be a non-empty str", argument="model", expected="str", got=model
            )
        if api_key is not None and not isinstance(api_key, str):
            raise InvalidArgument(
                "api_key must be a str or None", argument="api_key", expected="str", got=None
            )
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise InvalidArgument(
                "dim must be a positive int or None", argument="dim", expected="int", got=dim
            )
        timeout = check_timeout(timeout)  # also refuses nan/inf: the deadline timer needs one
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgument(
                "batch_size must be a positive int",
                argument="batch_size",
                expected="int >= 1",
                got=batch_size,
            )
        self.url = _endpoint(url)
        self.model = model
        self._key = api_key
        self._dim = dim
        self.timeout = float(timeout)
        self.batch_size = batch_size
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        return f"HttpEmbedder(url={self.url!r}, model={self.model!r}, dim={self._dim})"

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.embed(["dimension probe"])
        assert self._dim is not None
        return self._dim

    def _post(self, texts: list[str]) -> Any:
        body = json.dumps({"input": texts, "model": self.model}).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            raw = post_within(req, self.timeout)
        except TimeoutError:
            raise self._timed_out() from None
        except urllib.error.HTTPError as e:
            detail = getattr(e, "detail", "")
            hint = " (check api_key)" if e.code in (401, 403) else ""
            raise ModelError(
                f"embedding service {self.url} answered HTTP {e.code}{hint}: {detail}",
                model="http",
                url=self.url,
                status=e.code,
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise ModelError(
                f"cannot reach embedding service {self.url}: {getattr(e, 'reason', e)}; "
                "check the URL and that the server is up",
                model="http",
                url=self.url,
            ) from None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise ModelError(
                f"embedding service {self.url} sent invalid JSON: {e}",
                model="http",
                url=self.url,
            ) from None

    def _timed_out(self) -> ModelError:
        return ModelError(
            f"embedding service {self.url} did not answer within {self.timeout}s; raise the "
            "timeout, send smaller batches or check the server",
            model="http",
            url=self.url,
        )

    def _parse(self, payload: Any, n: int) -> Vectors:
        try:
            data = list(payload["data"])
            idx = [d.get("index") for d in data]
            if any(i is not None for i in idx):
                # Each text's vector must come back exactly once: with a repeated index
                # one text's vector would silently stand in for another's.
                if not all(type(i) is int for i in idx) or sorted(idx) != list(range(n)):
                    raise ModelError(
                        f"embedding service {self.url} answered with indexes {idx[:20]} for "
                        f"{n} texts; each of 0..{n - 1} must appear exactly once",
                        model="http",
                        url=self.url,
                    )
                data = [d for _, d in sorted(zip(idx, data), key=lambda p: p[0])]
            mat = np.asarray([d["embedding"] for d in data], dtype=np.float32)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ModelError(
                f"embedding service {self.url} answered without an OpenAI-style "
                f"'data[].embedding' list ({e!r})",
                model="http",
                url=self.url,
            ) from None
        if mat.ndim != 2 or mat.shape[0] != n or not np.isfinite(mat).all():
            raise ModelError(
                f"embedding service {self.url} returned {mat.shape[0] if mat.ndim else 0} "
                f"finite vectors for {n} texts",
                model="http",
                url=self.url,
            )
        with self._lock:
            if self._dim is None:
                self._dim = int(mat.shape[1])
        if mat.shape[1] != self._dim:
            raise ModelError(
                f"embedding service {self.url} returned {mat.shape[1]}-d vectors, but "
                f"dim was declared {self._dim}; check the model or dim",
                model="http",
                url=self.url,
            )
        return normalize_rows(mat)

    def embed(self, texts: Union[str, Sequence[str]]) -> Vectors:
        items = check_texts(texts)
        if not items:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        parts = []
        for i in range(0, len(items), self.batch_size):
            chunk = items[i : i + self.batch_size]
            parts.append(self._parse(self._post(chunk), len(chunk)))
        return np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
