"""The secure message bus: direct, request/response and publish/subscribe, every payload
encrypted and signed.

Patterns
    ``await bus.send(msg, sender=a, to=b, timeout=…)`` returns once ``b`` acknowledged
    that the message is in its mailbox. The sender retries with backoff (``ack_timeout``
    per attempt, ``retry_attempts`` in all, within ``timeout``) and always resends the
    *same* sealed bytes; the receiver's replay guard (Rust ``ReplayGuard``) classifies a
    retry as a Duplicate, so it is acked again with the first outcome and never handed to
    the agent twice: each message takes effect exactly once. What cannot be delivered
    (unknown agent, refused, retries exhausted) goes to ``bus.dead_letters`` and the
    sender gets DeliveryError. ``await bus.request(...)`` adds a sealed reply (on
    ``symbi.reply.<bus>.<corr>``) and raises RequestTimeout; a late reply is dropped and
    counted. ``await bus.publish(topic, msg, …)`` / ``bus.subscribe(pattern, handler,
    subscriber=…)`` with NATS wildcards ``*`` and ``>``. Backpressure comes from the
    recipient's bounded mailbox (``LocalDelivery``): wait or fail, never drop.

Security (crypto in Rust, ``symbi._core.BusKeyRing``; see ``rust/src/crypto/mod.rs``)
    Every agent has Ed25519 + X25519 keys held in the bus's key ring; ``sender=None`` is
    the runtime's own identity. Direct payloads are AES-256-GCM under per-pair keys
    (X25519 + HKDF), topics under per-topic group keys; the envelope header is the AEAD's
    associated data and the signature covers header and ciphertext. The receiver verifies,
    checks the timestamp window and the seen-ids cache, decrypts, and only then decodes
    (msgspec msgpack; the content type is the ``symbi.Message`` subclass's qualified
    name). A failure rejects the message, raises SignatureError / DecryptError (also for
    the wrong recipient) / ReplayError, and is audited (``bus.rejected``); the sender of a
    direct message gets the same error class back. Every send/request (action ``send``),
    publish (``publish``) and subscribe (``subscribe``) asks the policy with principal =
    sender, resource = recipient or topic, context = ``message_type``, ``data_labels``;
    a denial raises PolicyDenied, and an AllowWithConditions ``require.rate_limit`` (msgs/s;
    the strictest of the allowing policies) tightens the sender's token bucket. A
    subscription is checked for its pattern, and each copy again for its concrete topic
    (a copy the subscriber may not see is dead-lettered). Per-agent buckets also come from
    ``rate_limits``/``default_rate_limit``; ``rate_limit_mode`` waits or raises RateLimited.

Batch signing under load, single signatures when idle
    Sealing goes through a per-bus batcher. The first send in an event-loop iteration
    becomes the leader: it yields once (``anyio.lowlevel.checkpoint``) so every other task
    that is ready to send joins the batch, then seals everything queued with one
    ``seal_batch`` call per sender — one Ed25519 signature over the Merkle root of that
    sender's envelopes, each carrying its audit path (the receiver verifies the root once
    and caches it, so the rest cost a few hashes). An idle sender is alone in its batch
    and gets an ordinary single signature; the only cost is one loop yield. Batches hold at
    most ``max_batch`` envelopes. ``stats.batches``/``batched_messages``/``single_signed``
    show which path ran.

Across processes (``NatsTransport``)
    Two runtimes share only public bundles: ``symbi.keys.<agent>`` answers with an agent's
    bundle and the asking side pins it on first use (trust on first use: deploy on a
    NATS server you trust, or pin bundles up front with ``bus.add_peer``). A subscriber
    meeting a topic key it does not know asks the publishing agent, with a sealed request
    the publisher's policy must allow (``subscribe``); the key comes back sealed for it.

Buffers
    Sealing and opening reuse buffers kept in the key ring: an envelope is built in place
    (header, then the payload encrypted where it lies, then signature and proof written
    from the batch's tree), an opened payload is decrypted into a pooled buffer, headers
    are read as views of the envelope, and the batch memo and proof scratch are
    overwritten, not reallocated. Once warm, the Rust side allocates per batch, never per
    message (a Rust test counts the allocations); what crosses into Python is the one
    ``bytes``/``str`` object per field that Python needs anyway.

Not done yet: persistence of the dead-letter queue, and JetStream (at-least-once storage
across restarts).
"""

from __future__ import annotations

from .bus import Bus, Enforcer, Subscription, TopicHandler
from .local import MailboxDelivery
from .ratelimit import RateLimit
from .topics import topic_matches, validate_pattern, validate_topic
from .transport import Incoming, InProcTransport, Transport, TransportSubscription
from .types import BusStats, DeadLetter, LocalDelivery, SecureMessage


def __getattr__(name: str) -> object:
    # NatsTransport imports nothing from nats-py until used, but keep it lazy anyway so
    # `import symbi.bus` stays cheap.
    if name == "NatsTransport":
        from .nats import NatsTransport

        return NatsTransport
    raise AttributeError(name)


__all__ = [
    "Bus",
    "BusStats",
    "DeadLetter",
    "Enforcer",
    "InProcTransport",
    "Incoming",
    "LocalDelivery",
    "MailboxDelivery",
    "NatsTransport",
    "RateLimit",
    "SecureMessage",
    "Subscription",
    "TopicHandler",
    "Transport",
    "TransportSubscription",
    "topic_matches",
    "validate_pattern",
    "validate_topic",
]
