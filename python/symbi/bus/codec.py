"""What travels inside an envelope: a small msgpack frame around the encoded message.

The frame is encrypted and signed with the message, so the reply subject, the correlation
id and the delivery deadline cannot be altered in transit. Message payloads are msgspec
msgpack of :class:`symbi.Message` subclasses; the envelope's content type is the class's
qualified name (``symbi.message.message_type_name``), looked up in the type registry on
the receiving side.
"""

from __future__ import annotations

from typing import Any, Optional

import msgspec

from ..errors import DeliveryError, InvalidArgument, SymbiError
from ..message import Message, message_type, message_type_name

__all__ = [
    "ANY_TYPE",
    "ERROR_TYPE",
    "KIND_KEY_REQUEST",
    "KIND_KEY_RESPONSE",
    "KIND_MESSAGE",
    "KIND_REPLY",
    "KIND_REPLY_ERROR",
    "KIND_REQUEST",
    "FrameIn",
    "decode_ack",
    "decode_body",
    "encode_ack_error",
    "encode_frame",
    "type_name_of",
]

KIND_MESSAGE = 0
KIND_REQUEST = 1
KIND_REPLY = 2
KIND_REPLY_ERROR = 3
KIND_KEY_REQUEST = 4
KIND_KEY_RESPONSE = 5

#: Content type of a reply that is not a Message (None, numbers, dicts, ...).
ANY_TYPE = "symbi.bus.any"
#: Content type of a handler's exception travelling back to the requester.
ERROR_TYPE = "symbi.bus.error"
KEY_REQUEST_TYPE = "symbi.bus.topic-key-request"
KEY_RESPONSE_TYPE = "symbi.bus.topic-key"

ACK_OK = b"\x00"
_ACK_ERR = b"\x01"


class _FrameOut(msgspec.Struct, array_like=True):
    kind: int
    body: Any
    corr: str = ""
    reply_to: str = ""
    timeout: float = 0.0


class FrameIn(msgspec.Struct, array_like=True):
    kind: int
    body: msgspec.Raw
    corr: str = ""
    reply_to: str = ""
    timeout: float = 0.0


_encoder = msgspec.msgpack.Encoder()
_frame_decoder = msgspec.msgpack.Decoder(FrameIn)
_any_decoder = msgspec.msgpack.Decoder()
_decoders: dict[type[Message], msgspec.msgpack.Decoder[Any]] = {}
_names: dict[type[Any], str] = {}


def type_name_of(msg: Message) -> str:
    cls = type(msg)
    name = _names.get(cls)
    if name is None:
        name = _names[cls] = message_type_name(cls)
        if len(name.encode()) > 255:
            raise InvalidArgument(
                f"message type name {name[:60]}... is over 255 bytes; use a shorter "
                "module or class name",
                argument="msg",
                expected="a type name of at most 255 bytes",
                got=len(name.encode()),
            )
    return name


def encode_frame(
    kind: int, body: Any, *, corr: str = "", reply_to: str = "", timeout: float = 0.0
) -> bytes:
    try:
        return _encoder.encode(_FrameOut(kind, body, corr, reply_to, timeout))
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidArgument(
            f"the message cannot be encoded as msgpack: {e}; use msgspec-supported field "
            "types (str, int, float, bytes, lists, dicts, Structs, ...)",
            argument="msg",
            expected="a msgpack-encodable symbi.Message",
            got=type(body).__name__,
        ) from None


def decode_frame(payload: bytes) -> FrameIn:
    try:
        return _frame_decoder.decode(payload)
    except msgspec.DecodeError as e:
        raise DeliveryError(
            f"the decrypted payload is not a symbi bus frame ({e}); the sender runs an "
            "incompatible version",
            reason="malformed payload",
        ) from None


def decode_body(content_type: str, body: msgspec.Raw) -> Any:
    """The message (or reply value) a frame carries, typed by the content type."""
    if content_type == ANY_TYPE:
        return _any_decoder.decode(body)
    cls = message_type(content_type)
    if cls is None:
        raise DeliveryError(
            f"unknown message type {content_type!r}; define (import) that symbi.Message "
            "subclass in the receiving process",
            reason="unknown message type",
        )
    dec = _decoders.get(cls)
    if dec is None:
        dec = _decoders[cls] = msgspec.msgpack.Decoder(cls)
    try:
        return dec.decode(body)
    except msgspec.DecodeError as e:
        raise DeliveryError(
            f"the payload does not decode as {content_type}: {e}; sender and receiver "
            "disagree on the message definition",
            reason="malformed payload",
        ) from None


def describe_error(e: BaseException) -> dict[str, Any]:
    cls = type(e)
    return {"type": f"{cls.__module__}.{cls.__qualname__}", "message": str(e)}


def encode_ack_error(e: BaseException, message_id: str) -> bytes:
    reason = getattr(e, "reason", None)
    return _ACK_ERR + _encoder.encode(
        [type(e).__name__, str(e), reason if isinstance(reason, str) else None, message_id]
    )


def decode_ack(ack: bytes, recipient: str) -> Optional[SymbiError]:
    """None for a positive ack, else the error the recipient reported."""
    if ack == ACK_OK:
        return None
    from .. import errors

    try:
        if ack[:1] != _ACK_ERR:
            raise ValueError("bad ack")
        kind, message, reason, mid = _any_decoder.decode(ack[1:])
        kind, message = str(kind), str(message)
    except Exception:
        return DeliveryError(
            f"{recipient!r} answered with a malformed ack", recipient=recipient, reason="bad ack"
        )
    if kind in ("SignatureError",):
        return errors.SignatureError(message, message_id=mid)
    if kind in ("DecryptError", "ReplayError"):
        return getattr(errors, kind)(message, message_id=mid)  # type: ignore[no-any-return]
    if kind == "RateLimited":
        return errors.RateLimited(message)
    if kind == "PolicyDenied":
        return errors.PolicyDenied(message)
    if kind == "InvalidArgument":
        return errors.InvalidArgument(message, argument="msg", expected="see the message")
    if kind == "ResourceLimitExceeded":
        return errors.ResourceLimitExceeded(message)
    return DeliveryError(
        message, message_id=mid, recipient=recipient, reason=reason or f"recipient: {kind}"
    )
