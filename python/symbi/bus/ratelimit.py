"""Per-agent token buckets for the bus.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; each
message takes one. Limits come from the bus settings (per agent, or a default) and from a
policy decision's ``require.rate_limit`` (messages per second), the stricter one winning.
"""

from __future__ import annotations

import time
from typing import Optional, Union

import msgspec

from ..errors import InvalidArgument

__all__ = ["RateLimit", "RateLimiter", "TokenBucket"]


class RateLimit(msgspec.Struct, frozen=True, kw_only=True):
    """``rate`` messages per second with bursts of up to ``burst`` (default: max(1, rate))."""

    rate: float
    burst: Optional[float] = None

    def __post_init__(self) -> None:
        if not (isinstance(self.rate, (int, float)) and self.rate > 0 and self.rate < float("inf")):
            raise InvalidArgument(
                f"rate must be a positive number of messages per second, got {self.rate!r}",
                argument="rate",
                expected="> 0",
                got=self.rate,
            )
        if self.burst is not None and not (
            isinstance(self.burst, (int, float)) and 1 <= self.burst < float("inf")
        ):
            raise InvalidArgument(
                f"burst must be a number >= 1, got {self.burst!r}",
                argument="burst",
                expected=">= 1",
                got=self.burst,
            )

    @property
    def capacity(self) -> float:
        return self.burst if self.burst is not None else max(1.0, float(self.rate))


RateLimitLike = Union[RateLimit, float, int]


def to_rate_limit(value: RateLimitLike, argument: str) -> RateLimit:
    if isinstance(value, RateLimit):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(
            f"{argument} must be a RateLimit or a number of messages per second, "
            f"got {type(value).__name__}",
            argument=argument,
            expected="RateLimit | float",
            got=value,
        )
    try:
        return RateLimit(rate=float(value))
    except InvalidArgument as e:
        raise InvalidArgument(
            f"{argument}: {e.message}", argument=argument, expected="> 0", got=value
        ) from None


class TokenBucket:
    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, limit: RateLimit) -> None:
        self.rate = float(limit.rate)
        self.capacity = float(limit.capacity)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self, now: Optional[float] = None) -> float:
        """Take one token; returns 0.0 on success, else the seconds until one is free."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def retune(self, limit: RateLimit, now: Optional[float] = None) -> None:
        """Switch to ``limit`` keeping what is left: refilled at the old rate up to now,
        then capped at the new capacity (a new limit never hands out a fresh bucket)."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.rate = float(limit.rate)
        self.capacity = float(limit.capacity)
        self.tokens = min(self.tokens, self.capacity)


class RateLimiter:
    """Buckets by agent id. ``limit_for`` picks the configured limit, tightened by a policy."""

    def __init__(
        self, per_agent: dict[str, RateLimit], default: Optional[RateLimit] = None
    ) -> None:
        self._per_agent = per_agent
        self._default = default
        self._buckets: dict[str, tuple[RateLimit, TokenBucket]] = {}

    def limit_for(self, agent: str, policy_rate: Optional[float] = None) -> Optional[RateLimit]:
        limit = self._per_agent.get(agent, self._default)
        if policy_rate is not None and (limit is None or policy_rate < limit.rate):
            limit = RateLimit(rate=policy_rate)
        return limit

    def take(self, agent: str, limit: RateLimit) -> float:
        """One token from ``agent``'s bucket for ``limit``; 0.0 or seconds to wait. An agent
        has one bucket whatever its limit: when the limit changes (messages under different
        policy limits) the bucket is retuned, so alternating them cannot refill it."""
        entry = self._buckets.get(agent)
        if entry is None:
            entry = self._buckets[agent] = (limit, TokenBucket(limit))
        elif entry[0] != limit:
            entry[1].retune(limit)
            entry = self._buckets[agent] = (limit, entry[1])
        return entry[1].take()

    def forget(self, agent: str) -> None:
        self._buckets.pop(agent, None)
