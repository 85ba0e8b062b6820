"""The base class of messages agents exchange: a msgspec Struct, so encoding is fast,
typed and strict.

Every subclass is registered by its qualified name (``module.QualName``) when it is
defined; the bus writes that name as an envelope's content type and decodes the payload
with the registered class (:func:`message_type`). Defining a class again under the same
name (a reloaded module) replaces the entry.
"""

from __future__ import annotations

from typing import Any, Optional

import msgspec

from .errors import InvalidArgument

__all__ = ["Message", "check_message", "message_type", "message_type_name"]

_REGISTRY: dict[str, type[Message]] = {}


class Message(msgspec.Struct, kw_only=True):
    """Subclass this for every message type; handlers are chosen by the subclass."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[message_type_name(cls)] = cls


def message_type_name(cls: type[Message]) -> str:
    """The registry key (and bus content type) of a message class: ``module.QualName``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def message_type(name: str) -> Optional[type[Message]]:
    """The message class registered under ``name``, or None."""
    return _REGISTRY.get(name)


def check_message(msg: object) -> Message:
    """``msg`` if it is a symbi.Message, else InvalidArgument (every entry point that takes
    a message checks it this way)."""
    if not isinstance(msg, Message):
        raise InvalidArgument(
            f"messages are symbi.Message subclasses, got {type(msg).__name__}",
            argument="msg",
            expected="symbi.Message",
            got=type(msg).__name__,
        )
    return msg
