"""The in-memory kinds of agent memory: the short-term window and per-task working
memory. Both keep each item's embedding so they are searched like long-term memory."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from .types import ContextItem

__all__ = ["MemoryEntry", "ShortTermMemory", "WorkingMemory", "rank"]

#: An item and its unit embedding.
MemoryEntry = tuple[ContextItem, npt.NDArray[np.float32]]


def rank(
    entries: Iterable[MemoryEntry], query: npt.NDArray[np.float32], k: int
) -> list[tuple[ContextItem, float]]:
    """The ``k`` entries most similar (cosine) to ``query``, best first."""
    items = list(entries)
    if not items:
        return []
    mat = np.stack([e for _, e in items])
    scores = mat @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return [(items[i][0], float(scores[i])) for i in order]


class ShortTermMemory:
    """The last ``window`` items of each agent; older ones fall out."""

    def __init__(self, window: int) -> None:
        self.window = window
        self._items: dict[str, deque[MemoryEntry]] = {}
        self._lock = threading.Lock()

    def add(self, agent_id: str, entry: MemoryEntry) -> None:
        with self._lock:
            dq = self._items.get(agent_id)
            if dq is None:
                dq = self._items[agent_id] = deque(maxlen=self.window)
            dq.append(entry)

    def entries(self, agent_id: str) -> list[MemoryEntry]:
        with self._lock:
            return list(self._items.get(agent_id, ()))

    def clear(self, agent_id: str) -> None:
        with self._lock:
            self._items.pop(agent_id, None)

    def __len__(self) -> int:
        return sum(len(d) for d in self._items.values())


class WorkingMemory:
    """Scratch items per (agent, task); everything of a task goes when it ends."""

    def __init__(self, max_items_per_task: int) -> None:
        self.max_items = max_items_per_task
        self._tasks: dict[tuple[str, str], list[MemoryEntry]] = {}
        self._lock = threading.Lock()

    def begin(self, agent_id: str, task_id: str) -> bool:
        """Open a task; False if it was already open."""
        with self._lock:
            if (agent_id, task_id) in self._tasks:
                return False
            self._tasks[(agent_id, task_id)] = []
            return True

    def end(self, agent_id: str, task_id: str) -> int:
        """Close a task and drop its items; returns how many were dropped (-1: not open)."""
        with self._lock:
            items = self._tasks.pop((agent_id, task_id), None)
            return -1 if items is None else len(items)

    def is_open(self, agent_id: str, task_id: str) -> bool:
        return (agent_id, task_id) in self._tasks

    def add(self, agent_id: str, task_id: str, entry: MemoryEntry) -> int:
        """Append to an open task; returns the task's item count after (-1: not open,
        0: full)."""
        return self.add_all(agent_id, task_id, [entry])

    def add_all(self, agent_id: str, task_id: str, entries: list[MemoryEntry]) -> int:
        """Append a batch to an open task, all of it or (when it does not fit) none;
        returns the task's item count after (-1: not open, 0: does not fit)."""
        with self._lock:
            items = self._tasks.get((agent_id, task_id))
            if items is None:
                return -1
            if len(items) + len(entries) > self.max_items:
                return 0
            items.extend(entries)
            return len(items)

    def count(self, agent_id: str, task_id: str) -> int:
        """How many items an open task holds (0 when it is not open)."""
        with self._lock:
            return len(self._tasks.get((agent_id, task_id), ()))

    def tasks(self, agent_id: str) -> list[str]:
        with self._lock:
            return [t for (a, t) in self._tasks if a == agent_id]

    def entries(self, agent_id: str, task_id: str) -> list[MemoryEntry]:
        with self._lock:
            return list(self._tasks.get((agent_id, task_id), ()))

    def __len__(self) -> int:
        return sum(len(v) for v in self._tasks.values())
