"""What the runtime accepts as a callback, checked when one is registered rather than
when it is first called (where a mistake would only reach a log)."""

from __future__ import annotations

import functools
import inspect

__all__ = ["is_async_callable"]


def is_async_callable(fn: object) -> bool:
    """An ``async def`` function or method, a callable object whose ``__call__`` is one,
    or a ``functools.partial`` of either."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    return callable(fn) and inspect.iscoroutinefunction(type(fn).__call__)
