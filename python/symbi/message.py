"""The base class of messages agents exchange: a msgspec Struct, so encoding is fast,
typed and strict."""

from __future__ import annotations

import msgspec

__all__ = ["Message"]


class Message(msgspec.Struct, kw_only=True):
    """Subclass this for every message type; handlers are chosen by the subclass."""
