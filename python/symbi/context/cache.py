"""``ByteLRU``: a thread-safe least-recently-used cache bounded in bytes
(``context.context_cache_size``)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Optional

import msgspec

from ..errors import InvalidArgument

__all__ = ["ByteLRU", "CacheStats"]


class CacheStats(msgspec.Struct, frozen=True, kw_only=True):
    capacity_bytes: int
    bytes: int
    entries: int
    hits: int
    misses: int
    evictions: int


class ByteLRU:
    """Values with a size in bytes; the least recently used are evicted once the total
    would pass ``capacity_bytes``. A value larger than the whole cache is not kept."""

    def __init__(self, capacity_bytes: int) -> None:
        if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int):
            raise InvalidArgument(
                "capacity_bytes must be an int",
                argument="capacity_bytes",
                expected="int",
                got=capacity_bytes,
            )
        self.capacity_bytes = max(0, capacity_bytes)
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0

    def get(self, key: Hashable) -> Optional[Any]:
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                self._misses += 1
                return None
            self._data.move_to_end(key)
            self._hits += 1
            return hit[0]

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if nbytes > self.capacity_bytes:
                return
            self._data[key] = (value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.capacity_bytes:
                _, (_, size) = self._data.popitem(last=False)
                self._bytes -= size
                self._evictions += 1

    def discard(self, key: Hashable) -> None:
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    @property
    def nbytes(self) -> int:
        return self._bytes

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                capacity_bytes=self.capacity_bytes,
                bytes=self._bytes,
                entries=len(self._data),
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
            )
