"""``symbi.bus.Bus``: the runtime component that carries every message, sealed.

See the package docstring (:mod:`symbi.bus`) for the design.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from types import TracebackType
from typing import Any, Callable, Literal, Optional, Protocol, Union
from urllib.parse import quote

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from .._core import BusKeyRing
from ..callbacks import is_async_callable
from ..components import ComponentHealth
from ..deadlines import Deadlines
from ..errors import (
    ComponentError,
    DecryptError,
    DeliveryError,
    InvalidArgument,
    PolicyDenied,
    RateLimited,
    RemoteError,
    ReplayError,
    RequestTimeout,
    RuntimeStateError,
    SignatureError,
    SymbiError,
)
from ..latch import Latch
from ..message import Message, check_message
from ..policy.types import AuditSink, PolicyRequest, Principal, Resource
from . import codec
from .codec import ACK_OK
from .ratelimit import RateLimit, RateLimiter, RateLimitLike, to_rate_limit
from .topics import MAX_TOPIC_BYTES, validate_pattern, validate_topic
from .transport import Incoming, InProcTransport, Transport, TransportSubscription, check_timeout
from .types import BusStats, DeadLetter, LocalDelivery, SecureMessage

__all__ = ["Bus", "Enforcer", "Subscription", "TopicHandler"]

log = logging.getLogger("symbi.bus")

TopicHandler = Callable[[Any, SecureMessage], Awaitable[None]]
#: Attributes of a local agent for policy conditions (``principal.attrs.name``), or None.
Directory = Callable[[str], Optional[Mapping[str, Any]]]

#: Seconds a duplicate waits for the first copy's outcome before acking it anyway.
_MAX_DUP_WAIT = 30.0
_ACK_CACHE = 65_536
_MAX_ERRORS_KEPT = 4096
#: Requests that ended without their reply (timed out, cancelled), kept so a late reply
#: can be verified before it is counted as one.
_ENDED_KEPT = 4096
#: How long a refused topic-key request is remembered (per topic and key id) before
#: the subscriber asks the publisher again, and how many refusals are kept.
_KEY_REFUSAL_S = 30.0
_KEY_REFUSALS_KEPT = 4096
#: An envelope from a sender this runtime has no key for is never verified in the
#: delivery path (a stranger could stall an inbox with made-up sender ids): it is
#: refused at once with this ack reason, which the sending bus retries on, while the
#: sender's bundle is looked up in the background (one lookup per id at a time, at most
#: ``_SENDER_LOOKUPS_MAX`` at once). An id no runtime answered for is not asked again for
#: ``_SENDER_REFUSAL_S`` (at most ``_SENDER_REFUSALS_KEPT`` remembered); at most
#: ``_SENDERS_LEARNT_KEPT`` senders pinned this way are kept (oldest forgotten first).
UNKNOWN_SENDER = "unknown sender, retry"
_SENDER_LOOKUPS_MAX = 64
_SENDER_REFUSAL_S = 30.0
_SENDER_REFUSALS_KEPT = 4096
_SENDERS_LEARNT_KEPT = 4096
#: Envelopes (topic copies, topic-key requests) waiting for their sender's lookup.
_DEFERRED_MAX = 256
#: A subscription takes no topic envelope timestamped more than this before it was made
#: (the seen-id cache is per subscriber and in memory, so a new or restarted subscriber
#: would otherwise accept a captured copy replayed within the replay window). It is the
#: clock skew allowed between runtimes here; the key ring's own window (replay_window_s,
#: the same both ways) is far too wide for this, as it would let the whole window through.
_SUB_SKEW_S = 1.0
_INF = float("inf")
#: The most an envelope adds to its frame (see rust/src/crypto/envelope.rs): the fixed
#: header, sender, recipient (an agent id or a topic) and content type at their longest,
#: the ciphertext length and GCM tag, the signature and a batch proof of 32 hashes.
_ENVELOPE_OVERHEAD = 62 + 255 + max(255, MAX_TOPIC_BYTES) + 255 + 20 + 65 + 9 + 32 * 32


class Enforcer(Protocol):
    """What the bus needs of the policy engine: raise PolicyDenied or return a decision."""

    def enforce(self, request: PolicyRequest) -> Any: ...


class _SealJob:
    __slots__ = ("ctype", "error", "payload", "recipient", "result", "sender", "topic")

    def __init__(self, sender: str, recipient: str, ctype: str, payload: bytes, topic: bool):
        self.sender = sender
        self.recipient = recipient
        self.ctype = ctype
        self.payload = payload
        self.topic = topic
        self.result: bytes = b""
        self.error: Optional[BaseException] = None


class _Batch:
    __slots__ = ("done", "flushed", "jobs")

    def __init__(self, done: anyio.Event) -> None:
        self.jobs: list[_SealJob] = []
        self.done = done
        self.flushed = False


#: Requests of a request_many batch sealed and awaited together (see request_many).
_REQUEST_CHUNK = 4096


class _SenderUnknown(SignatureError):
    """An envelope from a sender whose bundle is being looked up (see ``Bus._open``)."""

    def __init__(self, sender: str, lookup: anyio.Event) -> None:
        super().__init__(
            f"message from unknown sender {sender!r}: its key is being looked up; "
            f"rejected ({UNKNOWN_SENDER})",
            sender=sender,
        )
        self.lookup = lookup


class _Flight:
    """A direct message being delivered; a duplicate arriving meanwhile waits for it."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event: Optional[anyio.Event] = None


#: Marks a direct message whose delivery was cancelled before it took effect: a retry of
#: it (a Duplicate to the replay guard) is then delivered instead of acked.
_NOT_APPLIED = _Flight()


class _Pending:
    __slots__ = ("done", "error", "recipient", "requester", "timed_out", "value")

    def __init__(self, requester: str, recipient: str) -> None:
        self.requester = requester
        self.recipient = recipient
        self.done = Latch()
        self.value: Any = None
        self.error: Optional[BaseException] = None
        self.timed_out = False

    def expire(self) -> None:
        self.timed_out = True
        self.done.set()


class _ReplyJob:
    """A handled request whose reply is waiting to be sealed with others."""

    __slots__ = ("agent", "corr", "ctype", "payload", "reply_to", "requester")

    def __init__(
        self, agent: str, requester: str, corr: str, reply_to: str, ctype: str, payload: bytes
    ) -> None:
        self.agent = agent
        self.requester = requester
        self.corr = corr
        self.reply_to = reply_to
        self.ctype = ctype
        self.payload = payload


class Subscription:
    """A live topic subscription (``bus.subscribe``). ``await sub.unsubscribe()`` ends it."""

    def __init__(
        self,
        bus: Bus,
        pattern: str,
        handler: TopicHandler,
        subscriber: str,
        not_before_ns: int = 0,
    ) -> None:
        self._bus = bus
        #: Topic envelopes timestamped before this (ns since the epoch) are replays here.
        self.not_before_ns = not_before_ns
        self.pattern = pattern
        self.handler = handler
        self.subscriber = subscriber
        self.received = 0
        self.active = True
        self._transport_sub: Optional[TransportSubscription] = None

    async def unsubscribe(self, *, timeout: float = 5.0) -> None:
        check_timeout(timeout)
        self.active = False
        self._bus._forget_subscription(self)
        ts, self._transport_sub = self._transport_sub, None
        if ts is not None:
            with anyio.move_on_after(timeout):
                await ts.unsubscribe()

    def __repr__(self) -> str:
        return f"Subscription({self.pattern!r}, subscriber={self.subscriber!r})"


class _Fanout:
    """A topic copy opened for a subscriber, and the subscriptions it arrived on (their
    handlers have had it; a second arrival on one of them is a replay)."""

    __slots__ = ("meta", "msg", "subs")

    def __init__(self, msg: Any, meta: SecureMessage, sub: Subscription) -> None:
        self.msg = msg
        self.meta = meta
        self.subs: set[Subscription] = {sub}


#: Copies remembered for subscribers with overlapping subscriptions (the other matching
#: subscriptions' deliveries arrive right after the first).
_FANOUT_KEPT = 4096

_PLAIN_TOKEN = re.compile(r"[A-Za-z0-9_\-]+")


def _token(agent: str) -> str:
    """An agent id as one subject token: percent-encoded, dots included (ids made of
    letters, digits, ``-`` and ``_``, as spawned agents' are, need no encoding)."""
    if _PLAIN_TOKEN.fullmatch(agent):
        return agent
    return quote(agent, safe="").replace(".", "%2E")


def check_agent_id(agent_id: object, argument: str = "agent_id") -> str:
    """``agent_id`` if it is a str of 1 to 255 bytes (what an envelope can carry)."""
    if not isinstance(agent_id, str) or not agent_id or len(agent_id.encode()) > 255:
        raise InvalidArgument(
            f"{argument} must be a str of 1 to 255 bytes, got {agent_id!r:.80}",
            argument=argument,
            expected="str of 1..255 bytes",
            got=agent_id,
        )
    return agent_id


def check_batch(msgs: object, to: Union[str, Sequence[str]]) -> tuple[list[Message], list[str]]:
    """Validate a batch call's arguments: ``msgs`` a sequence of Messages, ``to`` one agent
    id or one per message. Returns them as lists, ``to`` repeated for every message."""
    if isinstance(msgs, (str, bytes, Message)) or not isinstance(msgs, Sequence):
        raise InvalidArgument(
            "msgs is a sequence of symbi.Message",
            argument="msgs",
            expected="Sequence[symbi.Message]",
            got=type(msgs).__name__,
        )
    items = [check_message(m) for m in msgs]
    n = len(items)
    if isinstance(to, str):
        targets = [to] * n
    elif isinstance(to, Sequence) and len(to) == n:
        targets = list(to)
    else:
        raise InvalidArgument(
            "to is one agent id, or a sequence of agent ids as long as msgs",
            argument="to",
            expected=f"str | Sequence[str] of length {n}",
            got=to if not isinstance(to, Sequence) else f"{len(to)} ids",
        )
    seen: set[str] = set()
    for t in targets:
        if not isinstance(t, str) or t not in seen:
            seen.add(check_agent_id(t, "to"))
    return items, targets


def batch_outcome(
    out: list[Any], failed: list[Optional[BaseException]], return_exceptions: bool
) -> list[Any]:
    """A batch call's result: with ``return_exceptions`` each failure takes its place in
    the list (as ``asyncio.gather``); without, the first failure in order is raised."""
    if return_exceptions:
        return [err if err is not None else v for v, err in zip(out, failed)]
    first = next((err for err in failed if err is not None), None)
    if first is not None:
        raise first
    return out


class Bus:
    """The secure message bus; a runtime component named ``"bus"``.

    Keyword arguments (all optional):

    - ``policy``: an enforcer (``rt.policy``); every send, request, publish and subscribe
      asks it (principal = sender, action ``send``/``publish``/``subscribe``, resource =
      recipient or topic, context = ``message_type``, ``data_labels``).
    - ``audit``: an AuditSink; every rejected envelope, dead letter and rate-limit hit is
      recorded.
    - ``transport``: :class:`InProcTransport` (default) or :class:`NatsTransport`.
    - ``ack_timeout`` (1.0 s): how long one delivery attempt waits for the recipient's
      ack before retrying; ``retry_attempts`` (5) and ``retry_backoff`` (0.02 s, doubling,
      capped at ``retry_backoff_max``) shape the retries, all within the call's timeout.
    - ``rate_limits`` ({agent: RateLimit | msgs/s}), ``default_rate_limit`` and
      ``rate_limit_mode`` (``"wait"``: wait for a token within the timeout, ``"fail"``:
      raise RateLimited at once).
    - ``replay_window_s`` (30 s), ``max_message_bytes`` (1 MiB encoded), ``max_batch``
      (1024 envelopes per batch signature), ``handler_timeout`` (30 s per topic handler
      call), ``max_dead_letters`` (10,000 kept), ``connect_timeout`` (5 s).
    """

    name = "bus"

    def __init__(
        self,
        *,
        policy: Optional[Enforcer] = None,
        audit: Optional[AuditSink] = None,
        transport: Optional[Transport] = None,
        ack_timeout: float = 1.0,
        retry_attempts: int = 5,
        retry_backoff: float = 0.02,
        retry_backoff_max: float = 0.5,
        rate_limits: Optional[Mapping[str, RateLimitLike]] = None,
        default_rate_limit: Optional[RateLimitLike] = None,
        rate_limit_mode: Literal["wait", "fail"] = "wait",
        replay_window_s: float = 30.0,
        max_message_bytes: int = 1024 * 1024,
        max_batch: int = 1024,
        handler_timeout: float = 30.0,
        max_dead_letters: int = 10_000,
        connect_timeout: float = 5.0,
        runtime_id: Optional[str] = None,
    ) -> None:
        if policy is not None and not callable(getattr(policy, "enforce", None)):
            raise InvalidArgument(
                "policy needs an enforce(PolicyRequest) method (e.g. rt.policy)",
                argument="policy",
                expected="an Enforcer",
                got=type(policy).__name__,
            )
        if audit is not None and not callable(getattr(audit, "record", None)):
            raise InvalidArgument(
                "audit needs a record(event_type, agent_id, details) method",
                argument="audit",
                expected="an AuditSink",
                got=type(audit).__name__,
            )
        if transport is None:
            transport = InProcTransport()
        if not isinstance(transport, Transport):
            raise InvalidArgument(
                "transport must implement symbi.bus.Transport (InProcTransport, NatsTransport)",
                argument="transport",
                expected="a Transport",
                got=type(transport).__name__,
            )
        if rate_limit_mode not in ("wait", "fail"):
            raise InvalidArgument(
                f"rate_limit_mode must be 'wait' or 'fail', got {rate_limit_mode!r}",
                argument="rate_limit_mode",
                expected="'wait' | 'fail'",
                got=rate_limit_mode,
            )
        for arg, val, lo in (
            ("retry_attempts", retry_attempts, 1),
            ("max_message_bytes", max_message_bytes, 64),
            ("max_batch", max_batch, 1),
            ("max_dead_letters", max_dead_letters, 1),
        ):
            if isinstance(val, bool) or not isinstance(val, int) or val < lo:
                raise InvalidArgument(
                    f"{arg} must be an int >= {lo}, got {val!r}",
                    argument=arg,
                    expected=f"int >= {lo}",
                    got=val,
                )
        if max_batch > 65_536:
            raise InvalidArgument(
                "max_batch is at most 65536",
                argument="max_batch",
                expected="<= 65536",
                got=max_batch,
            )
        self._ack_timeout = check_timeout(ack_timeout, "ack_timeout")
        self._backoff = check_timeout(retry_backoff, "retry_backoff")
        self._backoff_max = check_timeout(retry_backoff_max, "retry_backoff_max")
        self._handler_timeout = check_timeout(handler_timeout, "handler_timeout")
        self._connect_timeout = check_timeout(connect_timeout, "connect_timeout")
        check_timeout(replay_window_s, "replay_window_s")
        per_agent: dict[str, RateLimit] = {}
        if rate_limits is not None:
            if not isinstance(rate_limits, Mapping):
                raise InvalidArgument(
                    "rate_limits maps agent ids to a RateLimit or messages per second",
                    argument="rate_limits",
                    expected="Mapping[str, RateLimit | float]",
                    got=type(rate_limits).__name__,
                )
            for k, v in rate_limits.items():
                per_agent[str(k)] = to_rate_limit(v, f"rate_limits[{k!r}]")
        default = (
            None
            if default_rate_limit is None
            else to_rate_limit(default_rate_limit, "default_rate_limit")
        )
        self._policy = policy
        self._audit = audit
        self._transport: Transport = transport
        self._retry_attempts = retry_attempts
        self._limiter = RateLimiter(per_agent, default)
        self._rate_mode = rate_limit_mode
        self._max_bytes_cfg = max_message_bytes
        # Clamped at start() so a frame within it always fits the transport's payload.
        self._max_bytes = max_message_bytes
        self._max_batch = max_batch
        self._ring = BusKeyRing(replay_window_s)
        self._replay_window_s = replay_window_s
        self._bus_token = uuid.uuid4().hex[:12]
        # Replies to this bus's requests go to subjects under this prefix.
        self._reply_prefix = f"symbi.reply.{self._bus_token}."
        self._runtime_id = runtime_id or f"symbi.runtime.{self._bus_token}"
        self._agents: set[str] = set()
        self._peers: set[str] = set()
        # Unknown senders being looked up (id -> set when done), ids no runtime answered
        # for (id -> monotonic time until which not asked again), and senders pinned by
        # such a lookup, oldest first (see _SENDER_LOOKUPS_MAX and below it).
        self._sender_lookups: dict[str, anyio.Event] = {}
        self._sender_refused: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._senders_learnt: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._deferred = 0
        self._agent_subs: dict[str, list[TransportSubscription]] = {}
        self._need_subs: set[str] = set()
        self._subscriptions: set[Subscription] = set()
        # The same subscriptions by subscriber, so unregistering an agent is O(its own).
        self._subs_of: dict[str, set[Subscription]] = {}
        # Transport subscribe calls in progress, and the event flush() waits on for them.
        self._making = 0
        self._made: Optional[anyio.Event] = None
        # Copies just opened for a subscriber with several subscriptions: a second
        # subscription matching the same topic must not see a replay and lose the copy.
        self._fanout: collections.OrderedDict[tuple[str, str], _Fanout] = collections.OrderedDict()
        self._inactive: list[Subscription] = []
        self._subscribing = False  # a background _subscribe_pending task is scheduled
        # Transport subscriptions of agents that left, for _unsubscribe_leaving.
        self._leaving: list[TransportSubscription] = []
        self._delivery: Optional[LocalDelivery] = None
        self._directory: Optional[Directory] = None
        self._wiretaps: list[Callable[[bytes], None]] = []
        self._described: dict[str, tuple[Principal, Resource]] = {}
        self._pending: dict[str, _Pending] = {}
        self._ended: collections.OrderedDict[str, _Pending] = collections.OrderedDict()
        # (topic, key id) -> monotonic time until which a refused key is not asked again.
        self._key_refused: collections.OrderedDict[tuple[str, bytes], float] = (
            collections.OrderedDict()
        )
        # Topic-key requests in flight, so concurrent copies ask once.
        self._key_asks: dict[tuple[str, bytes], anyio.Event] = {}
        self._corr = itertools.count(1)
        self._acks: collections.OrderedDict[str, Union[bytes, _Flight]] = collections.OrderedDict()
        self._ack_errors: collections.OrderedDict[str, BaseException] = collections.OrderedDict()
        self._dead: collections.deque[DeadLetter] = collections.deque(maxlen=max_dead_letters)
        self._batch: Optional[_Batch] = None
        self._replies: list[_ReplyJob] = []
        self._deadlines = Deadlines()
        self._event: Callable[[], anyio.Event] = anyio.Event  # see start()
        self._subjects: dict[str, str] = {}
        self._reply_sub: Optional[TransportSubscription] = None
        self._tg: Optional[TaskGroup] = None
        self._own_tg: Optional[TaskGroup] = None
        self._state: Literal["new", "running", "stopped"] = "new"
        self._audit_failures = 0
        self.stats = BusStats()
        self.register_agent(self._runtime_id)

    # ------------------------------------------------------------------ basics
    @property
    def runtime_id(self) -> str:
        """The identity used when ``sender=None`` (the runtime itself)."""
        return self._runtime_id

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def dead_letters(self) -> list[DeadLetter]:
        return list(self._dead)

    @property
    def running(self) -> bool:
        return self._state == "running"

    def set_local_delivery(self, delivery: Optional[LocalDelivery]) -> None:
        """Where messages for this bus's agents go (the runtime's agent host)."""
        if delivery is not None and not isinstance(delivery, LocalDelivery):
            raise InvalidArgument(
                "delivery needs async deliver(msg, to, *, sender, timeout, want_reply) and "
                "wait_reply(handle, *, recipient, timeout)",
                argument="delivery",
                expected="a LocalDelivery",
                got=type(delivery).__name__,
            )
        self._delivery = delivery

    def add_wiretap(self, tap: Callable[[bytes], None]) -> None:
        """Call ``tap(envelope)`` with every envelope this bus seals, before it travels
        (also replies that never leave the process): for tracing, debugging, and
        showing that only ciphertext moves. A tap that raises is logged and ignored."""
        if not callable(tap):
            raise InvalidArgument(
                "tap must be a callable taking envelope bytes",
                argument="tap",
                expected="callable",
                got=type(tap).__name__,
            )
        self._wiretaps.append(tap)

    def _seal_now(
        self, sender: str, recipient: str, ctype: str, payload: bytes, topic: bool
    ) -> bytes:
        env: bytes = self._ring.seal(sender, recipient, ctype, payload, topic)
        if self._wiretaps:
            self._tap([env])
        return env

    def _seal_batch_now(
        self, sender: str, items: list[tuple[str, str, bytes, bool]]
    ) -> list[bytes]:
        envs: list[bytes] = self._ring.seal_batch(sender, items)
        if self._wiretaps:
            self._tap(envs)
        return envs

    def _tap(self, envs: list[bytes]) -> None:
        for tap in self._wiretaps:
            for env in envs:
                try:
                    tap(env)
                except Exception:
                    log.exception("a bus wiretap failed")

    def set_directory(self, directory: Optional[Directory]) -> None:
        """Where the policy requests get agents' attributes: ``directory(agent_id)``
        returns e.g. ``{"name": "planner", "capabilities": [...]}`` for a local agent,
        so policies can say ``resource.attrs.name == "vault"``; None for others."""
        if directory is not None and not callable(directory):
            raise InvalidArgument(
                "directory must be a callable agent_id -> attributes | None",
                argument="directory",
                expected="callable",
                got=type(directory).__name__,
            )
        self._directory = directory
        self._described.clear()

    def _describe(self, agent: str) -> tuple[Union[str, Principal], Union[str, Resource]]:
        if self._directory is None:
            return agent, agent
        pair = self._described.get(agent)
        if pair is None:
            attrs = self._directory(agent)
            if attrs is None:
                return agent, agent  # remote or unknown: not cached, it may appear later
            a = dict(attrs)
            pair = (Principal(id=agent, attrs=a), Resource(id=agent, attrs=a))
            if len(self._described) > 100_000:
                self._described.clear()
            self._described[agent] = pair
        return pair

    def record_dead_letter(
        self,
        msg: Optional[Message],
        *,
        sender: Optional[str],
        recipient: str,
        reason: str,
        message_id: str = "",
        attempts: int = 0,
    ) -> None:
        """Put a message that was accepted but can no longer be handled (its agent was
        terminated with mail queued, a topic copy its mailbox refused) in the dead-letter
        queue, audited like the bus's own."""
        self._dead_letter(message_id, sender or self._runtime_id, recipient, msg, reason, attempts)

    def register_agent(self, agent_id: str) -> bytes:
        """Create ``agent_id``'s identity (Ed25519 + X25519) in this bus's key ring and
        start listening for it; returns its 64-byte public bundle."""
        check_agent_id(agent_id)
        bundle = self._ring.create_identity(agent_id)
        self._described.pop(agent_id, None)
        self._agents.add(agent_id)
        self._peers.add(agent_id)
        self._need_subs.add(agent_id)
        self._subscribe_soon()
        return bundle

    def unregister_agent(self, agent_id: str) -> None:
        """Forget ``agent_id``'s keys and stop listening for it. Unknown ids are ignored."""
        check_agent_id(agent_id)
        if agent_id == self._runtime_id:
            raise InvalidArgument(
                "the runtime's own identity cannot be unregistered",
                argument="agent_id",
                expected="an agent id",
                got=agent_id,
            )
        self._ring.remove(agent_id)
        self._described.pop(agent_id, None)
        self._agents.discard(agent_id)
        self._peers.discard(agent_id)
        self._need_subs.discard(agent_id)
        self._limiter.forget(agent_id)
        subs = self._agent_subs.pop(agent_id, [])
        for s in list(self._subs_of.get(agent_id, ())):
            s.active = False
            self._forget_subscription(s)
            if s._transport_sub is not None:
                subs.append(s._transport_sub)
        self._drop_transport_subs(subs)

    def _drop_transport_subs(self, subs: list[TransportSubscription]) -> None:
        if subs and self._tg is not None:
            # One background task unsubscribes for every agent that left meanwhile.
            self._leaving.extend(subs)
            if len(self._leaving) == len(subs):
                self._tg.start_soon(self._unsubscribe_leaving)

    def bundle(self, agent_id: str) -> bytes:
        """The public bundle of a known agent (local or pinned)."""
        return self._ring.bundle(check_agent_id(agent_id))

    def add_peer(self, agent_id: str, bundle: bytes) -> None:
        """Pin a remote agent's public bundle (instead of looking it up on first use)."""
        if not isinstance(bundle, (bytes, bytearray, memoryview)):
            raise InvalidArgument(
                "bundle must be the 64-byte public bundle from bus.bundle(agent_id) "
                f"(Ed25519 key, X25519 key) as bytes, got {type(bundle).__name__}",
                argument="bundle",
                expected="bytes (64)",
                got=type(bundle).__name__,
            )
        self._ring.add_peer(check_agent_id(agent_id), bytes(bundle))
        self._peers.add(agent_id)
        self._senders_learnt.pop(agent_id, None)  # pinned by hand: never forgotten
        self._sender_refused.pop(agent_id, None)

    async def _unsubscribe_leaving(self) -> None:
        """Drop the transport subscriptions of agents that left, until none is left (a
        stuck transport gets ``ack_timeout`` per round; what remains is dropped when the
        transport closes)."""
        while self._leaving:
            subs, self._leaving = self._leaving, []
            with anyio.move_on_after(self._ack_timeout):
                for s in subs:
                    await s.unsubscribe()

    def _subject(self, prefix: str, agent: str) -> str:
        key = prefix + agent
        s = self._subjects.get(key)
        if s is None:
            if len(self._subjects) > 100_000:
                self._subjects.clear()
            s = self._subjects[key] = f"symbi.{prefix}.{_token(agent)}"
        return s

    # --------------------------------------------------------------- lifecycle
    async def start(self, task_group: TaskGroup) -> None:
        if self._state == "running":
            raise RuntimeStateError("the bus is already running")
        try:
            await self._transport.connect(timeout=self._connect_timeout)
        except SymbiError as e:
            raise ComponentError(
                f"the bus could not connect its {self._transport.name} transport: {e}",
                component=self.name,
            ) from e
        self._clamp_max_bytes()
        self._tg = task_group
        self._state = "running"
        # anyio.Event() looks up the running backend on every call (~2 µs, several per
        # request); resolve the backend's own class once.
        self._event = type(anyio.Event())
        task_group.start_soon(self._deadlines.run, name="symbi.bus.deadlines")
        self._reply_sub = await self._transport.subscribe(
            self._reply_prefix + "*", self._on_reply, timeout=self._connect_timeout
        )
        await self._subscribe_pending()

    def _clamp_max_bytes(self) -> None:
        """The frame limit: ``max_message_bytes``, lowered so that a frame within it,
        sealed, fits the transport's largest payload (a NATS server's max_payload)."""
        self._max_bytes = self._max_bytes_cfg
        try:
            cap = int(self._transport.max_payload) - _ENVELOPE_OVERHEAD
        except Exception:  # a transport without the property: keep the configured limit
            return
        if cap < self._max_bytes:
            self._max_bytes = max(cap, 64)
            log.info(
                "bus frame limit lowered from %d to %d bytes to fit the %s transport's max payload",
                self._max_bytes_cfg,
                self._max_bytes,
                self._transport.name,
            )

    async def stop(self) -> None:
        if self._state != "running":
            return
        self._state = "stopped"
        for p in list(self._pending.values()):
            p.error = RuntimeStateError("the bus stopped before the reply arrived")
            p.done.set()
        subs: list[TransportSubscription] = [s for v in self._agent_subs.values() for s in v]
        subs += [s._transport_sub for s in self._subscriptions if s._transport_sub]
        if self._reply_sub is not None:
            subs.append(self._reply_sub)
        # One deadline for all the unsubscribes (a scope each cost seconds for 100k
        # agents), and the transport is closed whatever they did.
        with anyio.move_on_after(self._connect_timeout, shield=True):
            for s in subs:
                await s.unsubscribe()
        with anyio.move_on_after(self._connect_timeout, shield=True):
            await self._transport.close(timeout=self._connect_timeout)
        self._agent_subs.clear()
        self._need_subs = set(self._agents)
        for sub in self._subscriptions:
            sub._transport_sub = None
        self._inactive = list(self._subscriptions)
        self._tg = None

    def health(self) -> ComponentHealth:
        st = self.stats
        detail = (
            f"{self._transport.name} transport, {len(self._agents) - 1} agents, "
            f"{st.sent} sent, {st.published} published, {st.rejected} rejected, "
            f"{st.dead_letters} dead letters"
        )
        if self._state != "running":
            return ComponentHealth(status="down", detail=f"bus {self._state}; {detail}")
        if not self._transport.connected:
            return ComponentHealth(status="down", detail=f"transport disconnected; {detail}")
        if self._audit_failures:
            return ComponentHealth(
                status="degraded", detail=f"{detail}; audit failed {self._audit_failures} times"
            )
        return ComponentHealth(status="ok", detail=detail)

    async def __aenter__(self) -> Bus:
        """Run the bus standalone (without a Runtime): ``async with Bus() as bus:``."""
        tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            await self.start(tg)
        except BaseException:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
            raise
        self._own_tg = tg
        return self

    async def __aexit__(
        self,
        et: Optional[type[BaseException]],
        ev: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> Optional[bool]:
        tg, self._own_tg = self._own_tg, None
        try:
            await self.stop()
        finally:
            if tg is not None:
                tg.cancel_scope.cancel()
                await tg.__aexit__(et, ev, tb)
        return None

    def _require_running(self) -> None:
        if self._state != "running":
            raise RuntimeStateError(
                f"the bus is {self._state}; start it (it runs inside symbi.Runtime, or "
                "`async with Bus() as bus:`)"
            )

    async def _ready(self) -> None:
        """Raise unless running; first subscribe what is still pending (agents
        registered, or resubscriptions after a reconnect) so replies can arrive."""
        self._require_running()
        if self._need_subs or self._inactive:
            await self._subscribe_pending()

    async def _subscribe_pending(self) -> None:
        if self._state != "running":
            return
        while self._need_subs:
            agent = self._need_subs.pop()
            if agent not in self._agents:
                continue
            subs = await self._make_subs(
                [
                    (self._subject("agent", agent), self._direct_handler(agent)),
                    (self._subject("keys", agent), self._keys_handler(agent)),
                ],
                functools.partial(self._need_subs.add, agent),
            )
            if agent in self._agents:
                self._agent_subs.setdefault(agent, []).extend(subs)
            else:  # unregistered while they were being made
                self._drop_transport_subs(subs)
        while self._inactive:
            sub = self._inactive.pop()
            if sub.active:
                (sub._transport_sub,) = await self._make_subs(
                    [(f"symbi.topic.{sub.pattern}", self._topic_handler(sub))],
                    functools.partial(self._inactive.append, sub),
                )

    async def _make_subs(
        self,
        wanted: list[tuple[str, Callable[[Incoming], Awaitable[None]]]],
        requeue: Callable[[], None],
    ) -> list[TransportSubscription]:
        """Subscribe every (subject, handler) or none: on any failure, cancellation
        included, undo the ones made and ``requeue()`` the owner for the background
        subscriber (or the next use) to retry, instead of leaving it unreachable."""
        made: list[TransportSubscription] = []
        self._making += 1
        try:
            for subject, handler in wanted:
                made.append(
                    await self._transport.subscribe(subject, handler, timeout=self._connect_timeout)
                )
        except BaseException:
            requeue()
            self._subscribe_soon()
            with anyio.move_on_after(self._ack_timeout, shield=True):
                for s in made:
                    try:
                        await s.unsubscribe()
                    except Exception:  # the original failure is what the caller needs
                        log.exception("could not undo the subscription to %s", s.subject)
            raise
        finally:
            self._making -= 1
            if not self._making and self._made is not None:
                self._made.set()  # a flush() waiting on someone else's subscribe
                self._made = None
        return made

    def _subscribe_soon(self) -> None:
        """Have one background task make the pending subscriptions: spawning 100k
        agents in a row schedules one task, not 100k."""
        if not self._subscribing and self._state == "running" and self._tg is not None:
            self._subscribing = True
            self._tg.start_soon(self._subscribe_in_background)

    async def _subscribe_in_background(self) -> None:
        """``_subscribe_pending`` in the runtime's task group, until nothing is pending
        (what is registered meanwhile included): a failure is logged (and retried by the
        next send, ``flush`` or registration), never raised into the task group."""
        try:
            while self._state == "running" and (self._need_subs or self._inactive):
                with anyio.fail_after(self._connect_timeout * 2):
                    await self._subscribe_pending()
        except Exception as e:
            log.warning("the bus could not subscribe yet (will retry on next use): %r", e)
        finally:
            self._subscribing = False

    async def flush(self, *, timeout: float = 5.0) -> None:
        """Wait until every registered agent and subscription is listening on the transport
        (useful right after ``register_agent``/``subscribe`` over NATS)."""
        check_timeout(timeout)
        self._require_running()
        with anyio.fail_after(timeout):
            await self._subscribe_pending()
            while self._making:  # another task (the background subscriber) is mid-way
                if self._made is None:
                    self._made = anyio.Event()
                await self._made.wait()
                await self._subscribe_pending()  # what it handed back, if it failed
            flush = getattr(self._transport, "flush", None)
            if flush is not None:
                await flush(timeout=timeout)

    # ------------------------------------------------------------------ checks
    def _sender_id(self, sender: Optional[str]) -> str:
        if sender is None:
            return self._runtime_id
        check_agent_id(sender, "sender")
        if sender not in self._agents:
            raise InvalidArgument(
                f"sender {sender!r} has no identity on this bus; register_agent() it first",
                argument="sender",
                expected="an agent registered on this bus",
                got=sender,
            )
        return sender

    @staticmethod
    def _check_labels(labels: object) -> list[str]:
        if isinstance(labels, (str, bytes)) or not isinstance(labels, (list, tuple, set)):
            raise InvalidArgument(
                "labels is a sequence of data-label strings, e.g. ('pii',)",
                argument="labels",
                expected="Sequence[str]",
                got=type(labels).__name__,
            )
        out = list(labels)
        if not all(isinstance(x, str) for x in out):
            raise InvalidArgument(
                "every data label must be a str", argument="labels", expected="str", got=out
            )
        return out

    def _record(self, event_type: str, agent_id: str, details: dict[str, Any]) -> None:
        if self._audit is None:
            return
        try:
            self._audit.record(event_type, agent_id or "unknown", details)
        except Exception:
            self._audit_failures += 1
            log.exception("the audit sink failed to record %s", event_type)

    def _authorize(
        self, principal: str, action: str, resource: str, ctype: str, labels: list[str]
    ) -> Optional[float]:
        """Ask the policy; returns a policy rate limit (msgs/s) when the decision has one."""
        if self._policy is None:
            return None
        who = self._describe(principal)[0]
        what: Union[str, Resource] = self._describe(resource)[1] if action == "send" else resource
        req = PolicyRequest(
            principal=who,
            action=action,
            resource=what,
            context={"message_type": ctype, "data_labels": labels},
        )
        try:
            decision = self._policy.enforce(req)
        except PolicyDenied:
            self.stats.policy_denied += 1
            raise
        return self._policy_rate(decision, req)

    @staticmethod
    def _policy_rate(decision: Any, req: PolicyRequest) -> Optional[float]:
        """The strictest ``require.rate_limit`` of all the allowing policies (``require``
        keeps only the first policy's), or None; a malformed one denies."""
        conditions = getattr(decision, "conditions", None)
        if conditions is not None:
            rates = [c.value for c in conditions if c.kind == "require" and c.key == "rate_limit"]
        else:  # an Enforcer whose decisions carry only the merged dict
            require = getattr(decision, "require", None)
            rates = (
                [require["rate_limit"]]
                if isinstance(require, dict) and "rate_limit" in require
                else []
            )
        if not rates:
            return None
        for rate in rates:
            if not (
                isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 < rate < _INF
            ):
                raise PolicyDenied(
                    f"policy requires rate_limit={rate!r}, which is not a positive number of "
                    "messages per second; fix the policy",
                    decision=decision,
                    request=req,
                )
        return float(min(rates))

    async def _rate_limit(self, agent: str, policy_rate: Optional[float], deadline: float) -> None:
        limit = self._limiter.limit_for(agent, policy_rate)
        if limit is None:
            return
        wait = self._limiter.take(agent, limit)
        if wait == 0.0:
            return
        self.stats.rate_limited += 1
        self._record("bus.rate_limited", agent, {"rate": limit.rate, "retry_after": wait})
        while wait > 0.0:
            left = deadline - time.monotonic()
            if self._rate_mode == "fail" or wait > left:
                raise RateLimited(
                    f"agent {agent!r} is over its rate limit of {limit.rate:g} messages/s; "
                    f"retry after {wait:.3f}s"
                    + (" (or raise the timeout)" if self._rate_mode == "wait" else ""),
                    agent_id=agent,
                    retry_after=wait,
                )
            await anyio.sleep(wait)
            wait = self._limiter.take(agent, limit)

    def _dead_letter(
        self,
        msg_id: str,
        sender: str,
        recipient: str,
        msg: Optional[Message],
        reason: str,
        attempts: int,
    ) -> None:
        ctype = codec.type_name_of(msg) if msg is not None else ""
        self._dead.append(
            DeadLetter(
                id=msg_id,
                sender=sender,
                recipient=recipient,
                message_type=ctype,
                reason=reason,
                attempts=attempts,
                timestamp=time.time(),
                message=msg,
            )
        )
        self.stats.dead_letters += 1
        self._record(
            "bus.dead_letter",
            sender,
            {"message_id": msg_id, "recipient": recipient, "type": ctype, "reason": reason},
        )

    def _check_size(self, payload: bytes) -> None:
        if len(payload) > self._max_bytes:
            raise InvalidArgument(
                f"the encoded message is {len(payload)} bytes, over the bus limit of "
                f"{self._max_bytes}; send a reference (a path, a key) instead, or raise "
                "max_message_bytes"
                + (
                    " (the limit is lowered to fit the transport's max payload)"
                    if self._max_bytes < self._max_bytes_cfg
                    else ""
                ),
                argument="msg",
                expected=f"<= {self._max_bytes} bytes encoded",
                got=len(payload),
            )

    # ----------------------------------------------------------------- sealing
    async def _seal(
        self, sender: str, recipient: str, ctype: str, payload: bytes, topic: bool, deadline: float
    ) -> bytes:
        """Seal through the batcher: the first caller in a loop iteration leads, yields once
        so concurrent senders can join, then seals everything queued with one
        ``seal_batch`` per sender. Alone, it is one single-signed envelope."""
        job = _SealJob(sender, recipient, ctype, payload, topic)
        batch = self._batch
        if batch is not None and len(batch.jobs) < self._max_batch:
            batch.jobs.append(job)
            # No timeout needed: the leader flushes on its very next step, and does so in a
            # `finally` even when it is cancelled, so this wait lasts one loop iteration.
            await batch.done.wait()
        else:
            batch = self._batch = _Batch(self._event())
            batch.jobs.append(job)
            try:
                await anyio.lowlevel.checkpoint()
            finally:
                if self._batch is batch:
                    self._batch = None
                self._flush(batch)
        if job.error is not None:
            raise job.error
        return job.result

    def _flush(self, batch: _Batch) -> None:
        if batch.flushed:
            return
        batch.flushed = True
        by_sender: dict[str, list[_SealJob]] = {}
        for j in batch.jobs:
            by_sender.setdefault(j.sender, []).append(j)
        for sender, jobs in by_sender.items():
            try:
                if len(jobs) == 1:
                    j = jobs[0]
                    j.result = self._seal_now(sender, j.recipient, j.ctype, j.payload, j.topic)
                    self.stats.single_signed += 1
                else:
                    out = self._seal_batch_now(
                        sender, [(j.recipient, j.ctype, j.payload, j.topic) for j in jobs]
                    )
                    for j, env in zip(jobs, out):
                        j.result = env
                    self.stats.batches += 1
                    self.stats.batched_messages += len(jobs)
            except SymbiError:
                # One bad item must not sink the others: seal them one by one.
                for j in jobs:
                    try:
                        j.result = self._seal_now(sender, j.recipient, j.ctype, j.payload, j.topic)
                    except SymbiError as e:
                        j.error = e
        batch.done.set()

    # ------------------------------------------------------------------ peers
    async def _ensure_peer(self, agent: str, deadline: float, *, purpose: str) -> None:
        """Know ``agent``'s public bundle: local, pinned, or looked up (then pinned)."""
        if agent in self._peers:
            return
        self.stats.key_lookups += 1
        left = deadline - time.monotonic()
        try:
            data = await self._transport.request(
                self._subject("keys", agent), b"", timeout=max(min(left, self._ack_timeout), 0.001)
            )
        except DeliveryError as e:
            raise DeliveryError(
                f"unknown agent {agent!r}: no runtime on this bus answers for it ({e.reason}); "
                "check the id, and that its runtime is running",
                recipient=agent,
                reason="unknown recipient",
            ) from None
        if len(data) != 64:
            raise DeliveryError(
                f"the key directory answered for {agent!r} with {len(data)} bytes, not a "
                "64-byte bundle",
                recipient=agent,
                reason="unknown recipient",
            )
        if agent not in self._peers:  # a concurrent lookup may have pinned it
            self._ring.add_peer(agent, data)
            self._peers.add(agent)
            self._record("bus.peer_pinned", agent, {"purpose": purpose})

    # ------------------------------------------------------------------ direct
    async def send(
        self,
        msg: Message,
        *,
        sender: Optional[str],
        to: str,
        timeout: float,
        labels: Sequence[str] = (),
    ) -> str:
        """Seal ``msg`` for agent ``to`` and deliver it; returns the message id once the
        recipient acknowledged that it is in its mailbox. Retries with backoff within
        ``timeout``; the id deduplicates, so it takes effect once. Raises DeliveryError (and
        dead-letters it) when it cannot be delivered, PolicyDenied, RateLimited,
        InvalidArgument, or the recipient's SignatureError/DecryptError/ReplayError."""
        msg_id, _ = await self._send(msg, sender, to, timeout, labels, want_reply=False)
        return msg_id

    async def request(
        self,
        msg: Message,
        *,
        sender: Optional[str],
        to: str,
        timeout: float,
        labels: Sequence[str] = (),
    ) -> Any:
        """Send ``msg`` and return the handler's return value (a sealed reply); raises
        RequestTimeout after ``timeout`` seconds in all, or the handler's exception (its
        own object in-process, RemoteError across processes). Late replies are dropped and
        counted (``stats.late_replies``)."""
        _, pending = await self._send(msg, sender, to, timeout, labels, want_reply=True)
        assert pending is not None
        return pending

    async def request_many(
        self,
        msgs: Sequence[Message],
        *,
        sender: Optional[str],
        to: Union[str, Sequence[str]],
        timeout: float,
        labels: Sequence[str] = (),
        return_exceptions: bool = False,
    ) -> list[Any]:
        """``request`` for many messages at once, from one sender, to one agent or to
        ``to[i]`` for ``msgs[i]``; returns the replies in order. Each message is still
        policy-checked, rate-limited, sealed, acknowledged, dead-lettered when
        undeliverable, and answered by a sealed reply; what is shared is the work: one
        policy decision per (recipient, message type), one ``seal_batch`` per
        ``max_batch`` messages, one ``open_batch`` per local recipient, one deadline.

        With ``return_exceptions`` a failed item's exception takes its place in the list
        (as ``asyncio.gather``); without, the first failure (in order) is raised once
        every item has settled."""
        start = time.monotonic()
        timeout = check_timeout(timeout)
        deadline = start + timeout
        items, targets = check_batch(msgs, to)
        n = len(items)
        label_list = self._check_labels(labels)
        sid = self._sender_id(sender)
        await self._ready()
        out: list[Any] = []
        failed: list[Optional[BaseException]] = []
        # In chunks: a chunk's replies are in before the next is sealed, so only a chunk's
        # worth of frames, envelopes and pending requests is alive at once; with all of a
        # 100k batch alive the cycle collector's passes cost a quarter of the time.
        for k in range(0, n, _REQUEST_CHUNK):
            if k and time.monotonic() >= deadline:
                # The batch's time is up: the rest is not sent, each raises RequestTimeout.
                rest = targets[k:]
                out.extend([None] * len(rest))
                failed.extend(self._timed_out(t, timeout) for t in rest)
                self.stats.request_timeouts += len(rest)
                break
            o, f = await self._request_chunk(
                sid,
                items[k : k + _REQUEST_CHUNK],
                targets[k : k + _REQUEST_CHUNK],
                label_list,
                deadline,
                timeout,
            )
            out.extend(o)
            failed.extend(f)
        return batch_outcome(out, failed, return_exceptions)

    async def _request_chunk(
        self,
        sid: str,
        items: list[Message],
        targets: list[str],
        label_list: list[str],
        deadline: float,
        timeout: float,
    ) -> tuple[list[Any], list[Optional[BaseException]]]:
        """Send ``items[i]`` to ``targets[i]`` and wait for the replies until ``deadline``:
        (values, errors), one of the two set per item."""
        n = len(items)
        out: list[Any] = [None] * n
        failed: list[Optional[BaseException]] = [None] * n
        ready = await self._frame_requests(sid, items, targets, label_list, deadline, failed)
        sealed = await self._seal_requests(sid, ready, items, targets, deadline, failed)
        pendings: list[tuple[int, str, _Pending]] = []
        for i, corr, _env in sealed:
            p = _Pending(sid, targets[i])
            self._pending[corr] = p
            pendings.append((i, corr, p))
        self.stats.requests += len(sealed)
        try:
            await self._deliver_many(sid, sealed, targets, items, deadline, failed)
            # One deadline for the lot: wait in order; most are done by the time we look.
            with anyio.move_on_after(max(deadline - time.monotonic(), 0.0)):
                for i, _corr, p in pendings:
                    if failed[i] is None and not p.done.is_set():
                        await p.done.wait()
            for i, _corr, p in pendings:
                if failed[i] is not None:
                    continue
                if not p.done.is_set():
                    p.expire()
                    self.stats.request_timeouts += 1
                    failed[i] = self._timed_out(targets[i], timeout)
                elif p.error is not None:
                    failed[i] = p.error
                else:
                    out[i] = p.value
        finally:
            for _i, corr, _p in pendings:
                self._end_request(corr)
        return out, failed

    async def admit(
        self,
        sender: Optional[str],
        msg: Message,
        to: str,
        labels: Sequence[str],
        deadline: float,
    ) -> None:
        """``admit_many`` for one message: returns once ``sender`` may send ``msg`` to
        ``to``, or raises PolicyDenied or RateLimited (InvalidArgument for bad input)."""
        check_message(msg)
        check_agent_id(to, "to")
        label_list = self._check_labels(labels)
        await self._admit(
            self._sender_id(sender), "send", to, codec.type_name_of(msg), label_list, deadline
        )

    async def _admit(
        self,
        sid: str,
        action: str,
        resource: str,
        ctype: str,
        label_list: list[str],
        deadline: float,
    ) -> None:
        """The policy decision, then the sender's rate limit (the policy's, if it sets
        one); raises PolicyDenied or RateLimited."""
        rate = self._authorize(sid, action, resource, ctype, label_list)
        await self._rate_limit(sid, rate, deadline)

    async def admit_many(
        self,
        sender: Optional[str],
        msgs: Sequence[Message],
        targets: Sequence[str],
        labels: Sequence[str],
        deadline: float,
        failed: list[Optional[BaseException]],
    ) -> list[tuple[int, str]]:
        """(index, content type) of every ``msgs[i]`` that ``sender`` (None: the runtime)
        may send to ``targets[i]`` now: one policy decision per (recipient, type), then
        the sender's rate limit, waiting up to ``deadline`` (``time.monotonic``) when the
        limit is set to wait. The others' PolicyDenied or RateLimited go to ``failed``
        (as long as ``msgs``). The admission control of ``request_many``; the runtime's
        task path admits the work it hands to local agents with it too."""
        items, to = check_batch(msgs, targets)
        if not isinstance(failed, list) or len(failed) != len(items):
            raise InvalidArgument(
                "failed is a list as long as msgs, for the refusals",
                argument="failed",
                expected=f"list of length {len(items)}",
                got=type(failed).__name__,
            )
        label_list = self._check_labels(labels)
        return await self._admit_many(
            self._sender_id(sender), items, to, label_list, deadline, failed
        )

    async def _admit_many(
        self,
        sid: str,
        msgs: list[Message],
        targets: list[str],
        label_list: list[str],
        deadline: float,
        failed: list[Optional[BaseException]],
    ) -> list[tuple[int, str]]:
        decided: dict[tuple[str, str], Union[Optional[float], BaseException]] = {}
        admitted: list[tuple[int, str]] = []
        for i, (msg, t) in enumerate(zip(msgs, targets)):
            ctype = codec.type_name_of(msg)
            key = (t, ctype)
            try:
                if key not in decided:
                    try:
                        decided[key] = self._authorize(sid, "send", t, ctype, label_list)
                    except PolicyDenied as e:
                        decided[key] = e
                        raise
                else:
                    rate = decided[key]
                    if isinstance(rate, BaseException):
                        self.stats.policy_denied += 1
                        raise rate
                rate = decided[key]
                assert not isinstance(rate, BaseException)
                await self._rate_limit(sid, rate, deadline)
            except SymbiError as e:
                failed[i] = e
                continue
            admitted.append((i, ctype))
        return admitted

    async def _frame_requests(
        self,
        sid: str,
        items: list[Message],
        targets: list[str],
        label_list: list[str],
        deadline: float,
        failed: list[Optional[BaseException]],
    ) -> list[tuple[int, str, str, bytes]]:
        """(index, corr, content type, frame) of every request that passes admission
        (policy and rate limit) and the size check; the others' errors go to ``failed``."""
        admitted = await self._admit_many(sid, items, targets, label_list, deadline, failed)
        ready: list[tuple[int, str, str, bytes]] = []  # (index, corr, ctype, frame)
        for i, ctype in admitted:
            corr = f"{next(self._corr):x}"
            try:
                frame = codec.encode_frame(
                    codec.KIND_REQUEST,
                    items[i],
                    corr=corr,
                    reply_to=self._reply_prefix + corr,
                    timeout=max(deadline - time.monotonic(), 0.001),
                )
                self._check_size(frame)
            except SymbiError as e:
                failed[i] = e
                continue
            ready.append((i, corr, ctype, frame))
        return ready

    async def _seal_requests(
        self,
        sid: str,
        ready: list[tuple[int, str, str, bytes]],
        items: list[Message],
        targets: list[str],
        deadline: float,
        failed: list[Optional[BaseException]],
    ) -> list[tuple[int, str, bytes]]:
        """(index, corr, envelope) of the framed requests, sealed in batches of
        ``max_batch``; unknown recipients are dead-lettered into ``failed``."""
        # Recipients' keys, each looked up once.
        unknown: dict[str, DeliveryError] = {}
        for t in {targets[i] for i, *_ in ready}:
            try:
                await self._ensure_peer(t, deadline, purpose="send")
            except DeliveryError as e:
                unknown[t] = e
        sealable: list[tuple[int, str, str, bytes]] = []
        for entry in ready:
            i = entry[0]
            err = unknown.get(targets[i])
            if err is None:
                sealable.append(entry)
            else:
                self._dead_letter("", sid, targets[i], items[i], err.reason or "unknown", 0)
                failed[i] = err
        # Seal in batches of max_batch (one signature each), then register the requests.
        # Grouped by recipient, so each recipient opens a contiguous run of one batch: its
        # proofs share their upper paths, which the opener checks only once.
        sealable.sort(key=lambda e: targets[e[0]])
        sealed: list[tuple[int, str, bytes]] = []  # (index, corr, envelope)
        for k in range(0, len(sealable), self._max_batch):
            chunk = sealable[k : k + self._max_batch]
            jobs = [(targets[i], ctype, frame, False) for i, _c, ctype, frame in chunk]
            try:
                envs = self._seal_batch_now(sid, jobs)
                self.stats.batches += 1
                self.stats.batched_messages += len(chunk)
            except SymbiError as e:
                for i, *_ in chunk:
                    failed[i] = e
                continue
            sealed.extend((i, corr, env) for (i, corr, _t, _f), env in zip(chunk, envs))
        return sealed

    async def _deliver_many(
        self,
        sid: str,
        sealed: list[tuple[int, str, bytes]],
        targets: list[str],
        msgs: list[Message],
        deadline: float,
        failed: list[Optional[BaseException]],
    ) -> None:
        """Deliver sealed envelopes: to local agents straight into ``_on_direct_many``
        (the same checks and acks as over the transport, without a round trip per
        message), to remote ones over the transport, concurrently, with retries."""
        by_local: dict[str, list[tuple[int, bytes]]] = {}
        remote: list[tuple[int, bytes]] = []
        for i, _corr, env in sealed:
            if targets[i] in self._agents and self._delivery is not None:
                by_local.setdefault(targets[i], []).append((i, env))
            else:
                remote.append((i, env))
        for agent, group in by_local.items():
            acks = await self._on_direct_many(agent, [env for _, env in group])
            for (i, env), ack in zip(group, acks):
                err = self._ack_failure(ack, agent, env[6:22].hex(), sid, msgs[i], 1)
                if err is None:
                    self.stats.sent += 1
                else:
                    failed[i] = err

        async def one(i: int, env: bytes) -> None:
            try:
                await self._deliver(targets[i], env, env[6:22].hex(), deadline, msgs[i], sid)
                self.stats.sent += 1
            except SymbiError as e:
                failed[i] = e

        if remote:
            async with anyio.create_task_group() as tg:
                for i, env in remote:
                    tg.start_soon(one, i, env)

    async def _send(
        self,
        msg: Message,
        sender: Optional[str],
        to: str,
        timeout: float,
        labels: Sequence[str],
        *,
        want_reply: bool,
    ) -> tuple[str, Any]:
        start = time.monotonic()
        check_message(msg)
        timeout = check_timeout(timeout)
        deadline = start + timeout
        check_agent_id(to, "to")
        label_list = self._check_labels(labels)
        sid = self._sender_id(sender)
        await self._ready()
        ctype = codec.type_name_of(msg)
        await self._admit(sid, "send", to, ctype, label_list, deadline)
        corr = ""
        reply_to = ""
        pending: Optional[_Pending] = None
        if want_reply:
            corr = f"{next(self._corr):x}"
            reply_to = self._reply_prefix + corr
        payload = codec.encode_frame(
            codec.KIND_REQUEST if want_reply else codec.KIND_MESSAGE,
            msg,
            corr=corr,
            reply_to=reply_to,
            timeout=max(deadline - time.monotonic(), 0.001),
        )
        self._check_size(payload)
        try:
            await self._ensure_peer(to, deadline, purpose="send")
        except DeliveryError as e:
            self._dead_letter("", sid, to, msg, e.reason or "unknown recipient", 0)
            raise
        env = await self._seal(sid, to, ctype, payload, False, deadline)
        msg_id = env[6:22].hex()
        if want_reply:
            pending = _Pending(sid, to)
            self._pending[corr] = pending
            self.stats.requests += 1
        try:
            await self._deliver(to, env, msg_id, deadline, msg, sid)
            self.stats.sent += 1
            if pending is None:
                return msg_id, None
            if not pending.done.is_set():
                # One shared watchdog, not a cancel scope per request (see deadlines.py).
                left = deadline - time.monotonic()
                self._deadlines.add(anyio.current_time() + max(left, 0.0), pending)
                try:
                    await pending.done.wait()
                finally:
                    if not pending.timed_out:
                        self._deadlines.settled()
            if pending.timed_out:
                self.stats.request_timeouts += 1
                raise self._timed_out(to, timeout)
            if pending.error is not None:
                raise pending.error
            return msg_id, pending.value
        finally:
            if want_reply:
                self._end_request(corr)

    def _end_request(self, corr: str) -> None:
        """Forget request ``corr``; one that got no reply is remembered for a while, so
        a reply arriving late is verified before it is counted (see ``_on_reply``)."""
        p = self._pending.pop(corr, None)
        if p is not None and (p.timed_out or not p.done.is_set()):
            self._ended[corr] = p
            if len(self._ended) > _ENDED_KEPT:
                self._ended.popitem(last=False)

    @staticmethod
    def _timed_out(to: str, timeout: float) -> RequestTimeout:
        return RequestTimeout(
            f"no reply from {to!r} within {timeout}s; the agent may be busy or slow; "
            "raise the timeout or check its state",
            recipient=to,
            timeout=timeout,
        )

    async def _deliver(
        self, to: str, env: bytes, msg_id: str, deadline: float, msg: Message, sender: str
    ) -> None:
        subject = self._subject("agent", to)
        backoff = self._backoff
        attempt = 0
        while True:
            attempt += 1
            left = deadline - time.monotonic()
            last = attempt >= self._retry_attempts
            at = left if last else min(left, self._ack_timeout)
            reason = "timeout"
            if at > 0:
                try:
                    ack = await self._transport.request(subject, env, timeout=at)
                except DeliveryError as e:
                    reason = e.reason or "transport error"
                    if reason == "too-large":
                        self._dead_letter(msg_id, sender, to, msg, reason, attempt)
                        raise
                else:
                    err: Optional[BaseException] = codec.decode_ack(ack, to)
                    if isinstance(err, DeliveryError) and err.reason == UNKNOWN_SENDER:
                        # The recipient's runtime is looking up this sender's key: retry.
                        reason = UNKNOWN_SENDER
                    else:
                        err = self._ack_failure(ack, to, msg_id, sender, msg, attempt)
                        if err is None:
                            return
                        raise err
            left = deadline - time.monotonic()
            if last or left <= 0:
                self._dead_letter(msg_id, sender, to, msg, f"retries exhausted: {reason}", attempt)
                raise DeliveryError(
                    f"message {msg_id} to {to!r} was not acknowledged after {attempt} "
                    f"attempt(s) ({reason}); it is in the dead-letter queue",
                    message_id=msg_id,
                    recipient=to,
                    reason=reason,
                )
            self.stats.retries += 1
            await anyio.sleep(min(backoff, max(left / 2, 0.0)))
            backoff = min(backoff * 2, self._backoff_max)

    def _ack_failure(
        self, ack: bytes, to: str, msg_id: str, sender: str, msg: Message, attempts: int
    ) -> Optional[BaseException]:
        """None for a positive ack; else the recipient's error (the very exception when
        it was raised in this process), dead-lettering the message when undeliverable."""
        err: Optional[BaseException] = codec.decode_ack(ack, to)
        if err is None:
            return None
        err = self._ack_errors.pop(msg_id, None) or err
        if isinstance(err, DeliveryError):
            self._dead_letter(msg_id, sender, to, msg, err.reason or str(err), attempts)
        return err

    # --------------------------------------------------------------- receiving
    def _direct_handler(self, agent: str) -> Callable[[Incoming], Awaitable[None]]:
        async def handle(inc: Incoming) -> None:
            ack = await self._on_direct(agent, inc.data)
            await inc.respond(ack)

        return handle

    def _keys_handler(self, agent: str) -> Callable[[Incoming], Awaitable[None]]:
        async def handle(inc: Incoming) -> None:
            await self._on_keys(agent, inc)

        return handle

    def _topic_handler(self, sub: Subscription) -> Callable[[Incoming], Awaitable[None]]:
        async def handle(inc: Incoming) -> None:
            await self._on_topic(sub, inc.data)

        return handle

    def _reject(self, e: SymbiError, opener: str, data: bytes) -> None:
        self.stats.rejected += 1
        kind = {
            SignatureError: "signature",
            DecryptError: "decrypt",
            ReplayError: "replay",
        }.get(type(e), "invalid")
        mid = getattr(e, "message_id", None)
        self._record(
            "bus.rejected",
            opener,
            {"reason": kind, "error": str(e), "message_id": mid, "bytes": len(data)},
        )

    async def _open(
        self,
        opener: str,
        data: bytes,
        *,
        audit: bool = True,
        unknown_sender: Literal["reject", "defer", "wait"] = "reject",
    ) -> tuple[Any, ...]:
        """Verify, replay-check and decrypt. For a sender with no known key, its bundle is
        looked up in the background (``_learn_sender``) and, by ``unknown_sender``: the
        envelope is rejected (a SignatureError); or ``_SenderUnknown`` is raised at once,
        not audited, for the caller to refuse or defer; or the lookup is waited for
        (bounded) and the envelope opened again. Security failures are audited and
        raised as their typed error."""
        try:
            try:
                return self._ring.open(opener, data)
            except InvalidArgument as e:
                unknown = e.got if getattr(e, "argument", None) == "agent" else None
                if not isinstance(unknown, str) or unknown == opener or unknown in self._peers:
                    raise
                lookup = self._learn_sender(unknown)
                if lookup is None:
                    raise SignatureError(
                        f"message from unknown sender {unknown!r}: no key is known for it and "
                        "no runtime answered for it lately; rejected",
                        sender=unknown,
                    ) from None
                if unknown_sender == "defer":
                    raise _SenderUnknown(unknown, lookup) from None
                if unknown_sender == "reject":
                    raise SignatureError(
                        f"message from unknown sender {unknown!r}: no key is known for it; "
                        "rejected",
                        sender=unknown,
                    ) from None
                with anyio.move_on_after(self._ack_timeout + 1.0):
                    await lookup.wait()
                if unknown not in self._peers:
                    raise SignatureError(
                        f"message from unknown sender {unknown!r}: no key is known for it and "
                        "no runtime answers for it; rejected",
                        sender=unknown,
                    ) from None
                return self._ring.open(opener, data)
        except _SenderUnknown:
            raise
        except (SignatureError, DecryptError, ReplayError) as e:
            if audit:
                self._reject(e, opener, data)
            raise
        except InvalidArgument as e:
            raise self._open_failed(e, opener, data) from None

    def _learn_sender(self, agent: str) -> Optional[anyio.Event]:
        """Start (or join) the background lookup of unknown sender ``agent``'s bundle; the
        event is set when it ends. None when no lookup is made: the id was looked up in
        vain lately, too many lookups are in flight, or the bus is not running."""
        lookup = self._sender_lookups.get(agent)
        if lookup is not None:
            return lookup
        until = self._sender_refused.get(agent)
        if until is not None:
            if time.monotonic() < until:
                return None
            del self._sender_refused[agent]
        if self._tg is None or len(self._sender_lookups) >= _SENDER_LOOKUPS_MAX:
            return None
        lookup = self._sender_lookups[agent] = self._event()
        self._tg.start_soon(self._look_up_sender, agent, lookup)
        return lookup

    async def _look_up_sender(self, agent: str, done: anyio.Event) -> None:
        """Look up ``agent``'s bundle (bounded by ``ack_timeout``); remember a failure."""
        try:
            await self._ensure_peer(agent, time.monotonic() + self._ack_timeout, purpose="verify")
        except Exception as e:
            log.info("no key for sender %r: %s", agent, e)
            self._sender_refused[agent] = time.monotonic() + _SENDER_REFUSAL_S
            self._sender_refused.move_to_end(agent)
            while len(self._sender_refused) > _SENDER_REFUSALS_KEPT:
                self._sender_refused.popitem(last=False)
        else:
            if agent in self._peers and agent not in self._agents:
                self._senders_learnt[agent] = None
                while len(self._senders_learnt) > _SENDERS_LEARNT_KEPT:
                    old, _ = self._senders_learnt.popitem(last=False)
                    if old not in self._agents:
                        self._ring.remove(old)
                        self._peers.discard(old)
        finally:
            self._sender_lookups.pop(agent, None)
            done.set()

    def _defer(self, fn: Callable[..., Awaitable[None]], *args: Any) -> bool:
        """Run ``fn(*args)`` in the background (an envelope waiting for its sender's
        lookup), unless too many already wait; False then."""
        if self._tg is None or self._deferred >= _DEFERRED_MAX:
            return False
        self._deferred += 1

        async def run() -> None:
            try:
                await fn(*args)
            finally:
                self._deferred -= 1

        self._tg.start_soon(run)
        return True

    def _refuse_unknown(self, e: _SenderUnknown, opener: str, data: bytes) -> SignatureError:
        """The audited rejection of an envelope from a sender with no known key."""
        err = SignatureError(str(e), sender=e.sender)
        self._reject(err, opener, data)
        return err

    def _open_failed(self, e: BaseException, opener: str, data: bytes) -> SymbiError:
        """The typed, audited error for an envelope that did not open: a security error
        as raised, anything else (a malformed envelope, an unknown party) as a
        SignatureError, since nothing in it can be trusted."""
        err = e if isinstance(e, (SignatureError, DecryptError, ReplayError)) else None
        if err is None:
            err = SignatureError(f"envelope rejected: {e}")
        self._reject(err, opener, data)
        return err

    async def open(
        self, data: Union[bytes, SecureMessage], *, recipient: str
    ) -> tuple[Any, SecureMessage]:
        """Open an envelope addressed to ``recipient`` (a local agent; for a topic envelope,
        a subscriber): verify the signature, check freshness, decrypt, decode. Returns the
        message and its metadata. Raises SignatureError, DecryptError (also for the wrong
        recipient) or ReplayError (a replay or a stale timestamp); each is audited."""
        if isinstance(data, SecureMessage):
            data = data.to_wire()
        if not isinstance(data, (bytes, bytearray)):
            raise InvalidArgument(
                "open takes envelope bytes or a SecureMessage",
                argument="data",
                expected="bytes | SecureMessage",
                got=type(data).__name__,
            )
        data = bytes(data)
        check_agent_id(recipient, "recipient")
        if recipient not in self._agents:
            raise InvalidArgument(
                f"{recipient!r} has no identity on this bus",
                argument="recipient",
                expected="a registered agent",
                got=recipient,
            )
        mid, _s, _r, _topic, _ts, ctype, payload, dup = await self._open(
            recipient, data, unknown_sender="wait"
        )
        if dup:
            err = ReplayError(
                f"message {mid} was already accepted; a replay is rejected", message_id=mid
            )
            self._reject(err, recipient, data)
            raise err
        frame = codec.decode_frame(payload)
        return codec.decode_body(ctype, frame.body), SecureMessage.from_wire(data)

    @staticmethod
    def _left(agent: str) -> bytes:
        return codec.encode_ack_error(
            DeliveryError(f"agent {agent!r} left this bus", reason="unknown recipient"), ""
        )

    async def _on_direct(self, agent: str, data: bytes) -> bytes:
        if agent not in self._agents:
            return self._left(agent)
        try:
            opened = await self._open(agent, data, unknown_sender="defer")
        except _SenderUnknown as e:
            # Not verified here (a lookup could stall this subscription): the sending bus
            # retries, and by then the background lookup has (normally) pinned its key.
            self._refuse_unknown(e, agent, data)
            return codec.encode_ack_error(
                DeliveryError(str(e), recipient=agent, reason=UNKNOWN_SENDER), ""
            )
        except SymbiError as e:
            return codec.encode_ack_error(e, str(getattr(e, "message_id", "") or ""))
        return await self._apply_direct(agent, opened)

    async def _on_direct_many(self, agent: str, envs: list[bytes]) -> list[bytes]:
        """``_on_direct`` for envelopes sealed here for a local agent: opened with one
        ``open_batch`` (one signature check per sealed batch), then applied in order."""
        if agent not in self._agents:
            return [self._left(agent)] * len(envs)
        acks: list[bytes] = []
        for data, opened in zip(envs, self._ring.open_batch(agent, envs)):
            if isinstance(opened, BaseException):
                e = self._open_failed(opened, agent, data)
                acks.append(codec.encode_ack_error(e, str(getattr(e, "message_id", "") or "")))
                continue
            ack = self._apply_now(agent, opened)
            acks.append(ack if ack is not None else await self._apply_direct(agent, opened))
        return acks

    def _apply_now(self, agent: str, opened: tuple[Any, ...]) -> Optional[bytes]:
        """``_apply_direct`` for the common case, without an await: a first copy of a
        well-formed message for an agent with room in its mailbox. Returns None for
        anything else (a duplicate, a bad frame, a full mailbox), which ``_apply_direct``
        then handles (and reports) in full. Nothing else can run between the check and
        the delivery, so no in-flight marker is needed for duplicates to wait on."""
        mid, sender, _rcpt, is_topic, _ts, ctype, payload, dup = opened
        delivery = self._delivery
        try_deliver = getattr(delivery, "try_deliver", None)
        if dup or try_deliver is None or sender not in self._agents:
            return None  # a remote sender is authorised here, in _apply_direct
        try:
            frame, msg = self._decode_direct(is_topic, ctype, payload)
        except SymbiError:
            return None
        try:
            queued, handle = try_deliver(
                msg,
                agent,
                sender=None if sender == self._runtime_id else sender,
                want_reply=frame.kind == codec.KIND_REQUEST,
                size=len(frame.body),
            )
            if not queued:
                return None
            self._delivered(delivery, handle, agent, sender, frame)
            ack = ACK_OK
        except SymbiError as e:
            ack = self._error_ack(e, mid)
        self._remember_ack(mid, ack)
        return ack

    @staticmethod
    def _decode_direct(is_topic: bool, ctype: str, payload: bytes) -> tuple[codec.FrameIn, Any]:
        """The frame and message of an opened direct envelope, or DeliveryError."""
        if is_topic:
            raise DeliveryError(
                "a topic envelope arrived on an agent subject", reason="malformed payload"
            )
        frame = codec.decode_frame(payload)
        if frame.kind not in (codec.KIND_MESSAGE, codec.KIND_REQUEST):
            raise DeliveryError(
                f"unexpected frame kind {frame.kind} on an agent subject",
                reason="malformed payload",
            )
        return frame, codec.decode_body(ctype, frame.body)

    def _delivered(
        self, delivery: Any, handle: Any, agent: str, sender: str, frame: codec.FrameIn
    ) -> None:
        """A direct message is in ``agent``'s mailbox: count it and, for a request,
        arrange for its reply."""
        self.stats.delivered += 1
        if frame.kind != codec.KIND_REQUEST:
            return
        on_reply = getattr(delivery, "on_reply", None)
        if on_reply is not None:  # the agent host: a callback, no task per request
            on_reply(
                handle,
                functools.partial(self._reply_ready, agent, sender, frame.corr, frame.reply_to),
            )
        elif self._tg is not None:
            self._tg.start_soon(
                self._reply, handle, agent, sender, frame.corr, frame.reply_to, frame.timeout
            )

    def _remember_ack(self, mid: str, ack: Union[bytes, _Flight]) -> None:
        """What a later duplicate of ``mid`` gets (a bounded, oldest-first cache)."""
        self._acks[mid] = ack
        if len(self._acks) > _ACK_CACHE:
            self._acks.popitem(last=False)

    def _error_ack(self, e: SymbiError, mid: str) -> bytes:
        """The ack refusing message ``mid``; the error is kept for a local sender."""
        if isinstance(e, DeliveryError) and e.message_id is None:
            e.message_id = mid
        self._ack_errors[mid] = e
        if len(self._ack_errors) > _MAX_ERRORS_KEPT:
            self._ack_errors.popitem(last=False)
        return codec.encode_ack_error(e, mid)

    def _authorize_remote(self, mid: str, sender: str, agent: str, ctype: str, msg: Any) -> None:
        """This runtime's policy on a message another runtime let ``sender`` send to
        local ``agent`` (a local sender was checked at send time). The frame carries no
        data labels, so the decision sees none. A denial is dead-lettered, audited and
        raised (the sender gets it in the error ack)."""
        try:
            self._authorize(sender, "send", agent, ctype, [])
        except PolicyDenied as e:
            why = getattr(e.decision, "reason", None) or str(e)
            self._record(
                "bus.rejected",
                agent,
                {"reason": "policy", "error": str(e), "message_id": mid, "sender": sender},
            )
            self._dead_letter(mid, sender, agent, msg, f"policy denied at recipient: {why}", 1)
            raise

    async def _apply_direct(self, agent: str, opened: tuple[Any, ...]) -> bytes:
        """Deliver an opened direct envelope once (a duplicate gets the first copy's ack)."""
        mid, sender, _rcpt, is_topic, _ts, ctype, payload, dup = opened
        if dup:
            self.stats.duplicates += 1
            prior = self._acks.get(mid)
            if isinstance(prior, _Flight) and prior is not _NOT_APPLIED:
                if prior.event is None:
                    prior.event = self._event()
                with anyio.move_on_after(_MAX_DUP_WAIT):
                    await prior.event.wait()
                prior = self._acks.get(mid)
            if prior is not _NOT_APPLIED:
                return prior if isinstance(prior, bytes) else ACK_OK
            # The first copy was cancelled before it took effect: this one delivers it.
        flight = _Flight()
        self._remember_ack(mid, flight)
        ack = ACK_OK
        settled = False
        try:
            frame, msg = self._decode_direct(is_topic, ctype, payload)
            if sender not in self._agents:
                self._authorize_remote(mid, sender, agent, ctype, msg)
            delivery = self._delivery
            if delivery is None:
                raise DeliveryError(
                    f"agent {agent!r} has no local delivery on this bus (set_local_delivery)",
                    recipient=agent,
                    reason="no local delivery",
                )
            want = frame.kind == codec.KIND_REQUEST
            wait = max(min(frame.timeout, _MAX_DUP_WAIT), 0.001)
            local_sender = None if sender == self._runtime_id else sender
            handle = await delivery.deliver(
                msg, agent, sender=local_sender, timeout=wait, want_reply=want
            )
            settled = True
            self._delivered(delivery, handle, agent, sender, frame)
        except SymbiError as e:
            settled = True
            ack = self._error_ack(e, mid)
        finally:
            if self._acks.get(mid) is flight:
                self._acks[mid] = ack if settled else _NOT_APPLIED
            if flight.event is not None:
                flight.event.set()
        return ack

    async def _reply(
        self,
        handle: Any,
        agent: str,
        requester: str,
        corr: str,
        reply_to: str,
        timeout: float,
    ) -> None:
        delivery = self._delivery
        if delivery is None or not reply_to:
            return
        value: Any = None
        error: Optional[BaseException] = None
        try:
            # Wait past the requester's deadline (up to handler_timeout): a late reply is
            # still sent, so the requester can drop and count it.
            wait = max(timeout, self._handler_timeout)
            value = await delivery.wait_reply(handle, recipient=agent, timeout=wait)
        except RequestTimeout:
            return  # the requester times out on its own
        except Exception as e:
            error = e
        ctype, payload = self._reply_frame(corr, self._is_local(reply_to), value, error)
        if agent not in self._agents:
            self._orphan_reply(agent, requester, corr, self._is_local(reply_to))
            return
        try:
            await self._ensure_peer(
                requester, time.monotonic() + self._ack_timeout, purpose="reply"
            )
            env = self._seal_now(agent, requester, ctype, payload, False)
            await self._transport.publish(reply_to, env, timeout=self._ack_timeout)
            self.stats.replies += 1
        except SymbiError as e:
            await self._reply_failed(agent, requester, corr, reply_to, ctype, e)

    def _reply_ready(
        self,
        agent: str,
        requester: str,
        corr: str,
        reply_to: str,
        value: Any,
        error: Optional[BaseException],
    ) -> None:
        """The handler behind a request finished: queue its reply for sealing. Replies
        that finish in the same loop iteration are sealed together (one signature per
        agent, each with its proof) by one flusher task."""
        if not reply_to:
            return
        local = self._is_local(reply_to)
        ctype, payload = self._reply_frame(corr, local, value, error)
        if agent not in self._agents:
            self._orphan_reply(agent, requester, corr, local)
            return
        self._replies.append(_ReplyJob(agent, requester, corr, reply_to, ctype, payload))
        if len(self._replies) == 1 and self._tg is not None:
            self._tg.start_soon(self._flush_replies)

    def _reply_frame(
        self, corr: str, local: bool, value: Any, error: Optional[BaseException]
    ) -> tuple[str, bytes]:
        """(content type, frame) of a reply: the value, or the error (also when the value
        cannot be encoded or is too large)."""
        if error is None:
            try:
                ctype = codec.type_name_of(value) if isinstance(value, Message) else codec.ANY_TYPE
                payload = codec.encode_frame(codec.KIND_REPLY, value, corr=corr)
                self._check_size(payload)
                return ctype, payload
            except Exception as e:
                error = e
        if local:  # the requester is on this bus: hand it the exception object itself
            self._ack_errors[f"reply:{corr}"] = error
        return codec.ERROR_TYPE, codec.encode_frame(
            codec.KIND_REPLY_ERROR, codec.describe_error(error), corr=corr
        )

    def _orphan_reply(self, agent: str, requester: str, corr: str, local: bool) -> None:
        """The agent was terminated while handling: its key is gone, so it cannot sign a
        reply. A requester on this bus gets the outcome directly; a remote one times out."""
        pending = self._pending.get(corr)
        if local and pending is not None and not pending.done.is_set():
            err = self._ack_errors.pop(f"reply:{corr}", None)
            pending.error = err or DeliveryError(
                f"agent {agent!r} left the bus before its reply could be signed",
                recipient=agent,
                reason="terminated",
            )
            pending.done.set()
        else:
            log.warning("agent %s left the bus before replying to %s", agent, requester)

    async def _flush_replies(self) -> None:
        jobs, self._replies = self._replies, []
        by_agent: dict[str, list[_ReplyJob]] = {}
        for j in jobs:
            by_agent.setdefault(j.agent, []).append(j)
        remote: list[tuple[_ReplyJob, bytes]] = []
        local: dict[str, list[tuple[str, bytes]]] = {}
        for agent, group in by_agent.items():
            if agent not in self._agents:
                for j in group:
                    self._orphan_reply(agent, j.requester, j.corr, self._is_local(j.reply_to))
                continue
            try:
                if len(group) == 1:
                    j = group[0]
                    envs = [self._seal_now(agent, j.requester, j.ctype, j.payload, False)]
                    self.stats.single_signed += 1
                else:
                    envs = self._seal_batch_now(
                        agent, [(j.requester, j.ctype, j.payload, False) for j in group]
                    )
                    self.stats.batches += 1
                    self.stats.batched_messages += len(group)
            except SymbiError:
                # One bad item (a requester that left) must not sink the rest: one by one.
                for j in group:
                    self._seal_one_reply(j, remote, local)
                continue
            for j, env in zip(group, envs):
                if self._is_local(j.reply_to):
                    local.setdefault(j.requester, []).append((j.corr, env))
                else:
                    remote.append((j, env))
            self.stats.replies += len(group)
        for requester, replies in local.items():
            self._accept_replies(requester, replies)
        for j, env in remote:
            try:
                await self._ensure_peer(
                    j.requester, time.monotonic() + self._ack_timeout, purpose="reply"
                )
                await self._transport.publish(j.reply_to, env, timeout=self._ack_timeout)
            except SymbiError as e:
                await self._reply_failed(j.agent, j.requester, j.corr, j.reply_to, j.ctype, e)

    def _seal_one_reply(
        self,
        j: _ReplyJob,
        remote: list[tuple[_ReplyJob, bytes]],
        local: dict[str, list[tuple[str, bytes]]],
    ) -> None:
        try:
            env = self._seal_now(j.agent, j.requester, j.ctype, j.payload, False)
        except SymbiError as e:
            log.warning("could not seal the reply of %s to %s: %s", j.agent, j.requester, e)
            if j.ctype == codec.ERROR_TYPE:
                return
            try:  # the requester still learns the outcome, promptly
                err = DeliveryError(
                    f"the reply of {j.agent!r} could not be sealed: {e}",
                    recipient=j.agent,
                    reason="reply failed",
                )
                ctype, payload = self._reply_frame(j.corr, self._is_local(j.reply_to), None, err)
                env = self._seal_now(j.agent, j.requester, ctype, payload, False)
            except SymbiError:
                return
        self.stats.single_signed += 1
        self.stats.replies += 1
        if self._is_local(j.reply_to):
            local.setdefault(j.requester, []).append((j.corr, env))
        else:
            remote.append((j, env))

    async def _reply_failed(
        self, agent: str, requester: str, corr: str, reply_to: str, ctype: str, e: SymbiError
    ) -> None:
        """A remote requester's reply could not be sent (too large for the transport,
        say): send it a small error reply instead, so it fails promptly rather than
        waiting out its timeout."""
        log.warning("could not send the reply of %s to %s: %s", agent, requester, e)
        if ctype == codec.ERROR_TYPE:
            return  # the error reply itself failed: nothing smaller to send
        reason = getattr(e, "reason", None)
        err = DeliveryError(
            f"the reply of {agent!r} could not be sent"
            + (" (it is too large for the transport)" if reason == "too-large" else "")
            + f": {e}",
            recipient=agent,
            reason="reply too large" if reason == "too-large" else "reply failed",
        )
        try:
            ectype, payload = self._reply_frame(corr, False, None, err)
            env = self._seal_now(agent, requester, ectype, payload, False)
            await self._transport.publish(reply_to, env, timeout=self._ack_timeout)
        except SymbiError as e2:
            log.warning("could not send the error reply of %s to %s: %s", agent, requester, e2)

    def _is_local(self, reply_to: str) -> bool:
        return reply_to.startswith(self._reply_prefix)

    def _accept_replies(self, requester: str, replies: list[tuple[str, bytes]]) -> None:
        """Sealed replies (corr, envelope) for requests ``requester`` made on this bus:
        open them with one ``open_batch`` (both ends are known here, no lookup) and
        complete the requests. Replies to requests that already ended are late: counted,
        not opened."""
        live: list[tuple[str, _Pending, bytes]] = []
        for corr, env in replies:
            pending = self._pending.get(corr)
            if pending is None or pending.done.is_set():
                self.stats.late_replies += 1
            else:
                live.append((corr, pending, env))
        if not live:
            return
        opened = self._ring.open_batch(requester, [env for _, _, env in live])
        for (corr, pending, env), o in zip(live, opened):
            if isinstance(o, BaseException):
                # A forged or broken reply (or the requester left): never completes it.
                self._open_failed(o, requester, env)
            else:
                self._settle(pending, corr, o, env)

    async def _on_reply(self, inc: Incoming) -> None:
        corr = inc.subject.rsplit(".", 1)[-1]
        pending = self._pending.get(corr)
        if pending is None or pending.done.is_set():
            await self._on_late_reply(corr, pending, inc.data)
            return
        try:
            opened = await self._open(pending.requester, inc.data)
        except SymbiError as e:
            if not isinstance(e, (SignatureError, DecryptError, ReplayError)):
                self._reject(e, pending.requester, inc.data)
            return  # a forged or broken reply never completes the request
        self._settle(pending, corr, opened, inc.data)

    async def _on_late_reply(self, corr: str, pending: Optional[_Pending], data: bytes) -> None:
        """Bytes on the reply subject of a request that is no longer waiting: counted as
        a late reply only when they open as the reply of that request from the agent it
        asked; garbage, forgeries and replays are rejected and audited."""
        ended = pending if pending is not None else self._ended.get(corr)
        if ended is None:
            err: SymbiError = SignatureError(
                f"a reply for request {corr!r}, which this bus is not waiting on; rejected"
            )
            self._reject(err, self._runtime_id, data)
            return
        try:
            opened = await self._open(ended.requester, data)  # audits what it raises
        except SymbiError as e:
            if not isinstance(e, (SignatureError, DecryptError, ReplayError)):
                self._reject(e, ended.requester, data)
            return
        try:
            mid, sender, _r, is_topic, _ts, _ctype, payload, dup = opened
            if dup:
                raise ReplayError(
                    f"reply {mid} for request {corr} was already accepted; a replay is rejected",
                    message_id=mid,
                )
            frame = codec.decode_frame(payload)
            if (
                is_topic
                or sender != ended.recipient
                or frame.corr != corr
                or frame.kind not in (codec.KIND_REPLY, codec.KIND_REPLY_ERROR)
            ):
                raise SignatureError(
                    f"a reply for request {corr} does not belong to it (from {sender!r})",
                    sender=sender,
                )
        except SymbiError as e:
            self._reject(e, ended.requester, data)
            return
        self.stats.late_replies += 1

    def _settle(self, pending: _Pending, corr: str, opened: tuple[Any, ...], data: bytes) -> None:
        """Complete ``pending`` with an opened reply envelope, if it belongs to it."""
        try:
            _mid, sender, _r, is_topic, _ts, ctype, payload, dup = opened
            frame = codec.decode_frame(payload)
            if dup or is_topic or sender != pending.recipient or frame.corr != corr:
                raise SignatureError(
                    f"a reply for request {corr} does not belong to it (from {sender!r}); dropped",
                    sender=sender,
                )
            if frame.kind == codec.KIND_REPLY:
                pending.value = codec.decode_body(ctype, frame.body)
            else:
                local = self._ack_errors.pop(f"reply:{corr}", None)
                if local is not None:
                    pending.error = local
                else:
                    info = codec.decode_body(codec.ANY_TYPE, frame.body)
                    pending.error = RemoteError(
                        f"the handler of {pending.recipient!r} raised "
                        f"{info.get('type')}: {info.get('message')}",
                        error_type=str(info.get("type")),
                        recipient=pending.recipient,
                    )
        except SymbiError as e:
            self._reject(e, pending.requester, data)
            return  # a forged or broken reply never completes the request
        pending.done.set()

    # -------------------------------------------------------------- pub / sub
    async def publish(
        self,
        topic: str,
        msg: Message,
        *,
        sender: Optional[str],
        timeout: float,
        labels: Sequence[str] = (),
    ) -> str:
        """Seal ``msg`` under ``topic``'s group key and publish it to every subscriber
        whose pattern matches; returns the message id. Raises PolicyDenied, RateLimited,
        InvalidArgument, or DeliveryError when the transport is down."""
        start = time.monotonic()
        validate_topic(topic)
        check_message(msg)
        timeout = check_timeout(timeout)
        deadline = start + timeout
        label_list = self._check_labels(labels)
        sid = self._sender_id(sender)
        await self._ready()
        ctype = codec.type_name_of(msg)
        await self._admit(sid, "publish", topic, ctype, label_list, deadline)
        payload = codec.encode_frame(codec.KIND_MESSAGE, msg)
        self._check_size(payload)
        env = await self._seal(sid, topic, ctype, payload, True, deadline)
        msg_id = env[6:22].hex()
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise DeliveryError("timed out before publishing", reason="timeout")
            await self._transport.publish(f"symbi.topic.{topic}", env, timeout=left)
        except (DeliveryError, TimeoutError) as e:
            reason = getattr(e, "reason", None) or "timeout"
            self._dead_letter(msg_id, sid, topic, msg, reason, 1)
            raise DeliveryError(
                f"could not publish {msg_id} on {topic!r} ({reason}); it is in the "
                "dead-letter queue",
                message_id=msg_id,
                recipient=topic,
                reason=reason,
            ) from None
        self.stats.published += 1
        return msg_id

    def subscribe(self, pattern: str, handler: TopicHandler, *, subscriber: str) -> Subscription:
        """Call ``await handler(msg, meta)`` for every message published on a topic matching
        ``pattern`` (``*`` one token, ``>`` the rest). ``subscriber`` is a registered agent;
        the policy must allow it to ``subscribe`` to the pattern, and to each concrete
        topic as it arrives (a copy it may not see is dead-lettered). Handlers run in the
        bus's task group, each bounded by ``handler_timeout``; a copy whose handler raises
        or times out is dead-lettered."""
        validate_pattern(pattern)
        if not is_async_callable(handler):
            raise InvalidArgument(
                "handler must be an async function (msg, meta) -> None; a plain function "
                "would fail on every message",
                argument="handler",
                expected="async callable",
                got=type(handler).__name__,
            )
        check_agent_id(subscriber, "subscriber")
        if subscriber not in self._agents:
            raise InvalidArgument(
                f"subscriber {subscriber!r} has no identity on this bus; register_agent() it",
                argument="subscriber",
                expected="a registered agent",
                got=subscriber,
            )
        self._authorize(subscriber, "subscribe", pattern, "", [])
        skew = min(_SUB_SKEW_S, self._replay_window_s)
        sub = Subscription(
            self, pattern, handler, subscriber, time.time_ns() - int(skew * 1_000_000_000)
        )
        self._subscriptions.add(sub)
        self._subs_of.setdefault(subscriber, set()).add(sub)
        self._inactive.append(sub)
        self._subscribe_soon()
        return sub

    def _forget_subscription(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)
        mine = self._subs_of.get(sub.subscriber)
        if mine is not None:
            mine.discard(sub)
            if not mine:
                del self._subs_of[sub.subscriber]

    async def _on_topic(self, sub: Subscription, data: bytes, deferred: bool = False) -> None:
        if not sub.active:
            return
        opener = sub.subscriber
        try:
            try:
                opened = await self._open(
                    opener, data, audit=False, unknown_sender="wait" if deferred else "defer"
                )
            except _SenderUnknown as e:
                # Its publisher's key is being looked up: this copy waits for it apart,
                # so the subscription's other copies are not held up.
                if not self._defer(self._on_topic, sub, data, True):
                    raise self._refuse_unknown(e, opener, data) from None
                return
            except DecryptError as e:
                # Possibly a group key this runtime has not learnt yet: ask the publisher.
                if not await self._learn_topic_key(opener, data):
                    self._reject(e, opener, data)
                    raise
                opened = await self._open(opener, data)
            except (SignatureError, ReplayError) as e:
                self._reject(e, opener, data)
                raise
            mid, sender, topic, is_topic, ts, ctype, payload, dup = opened
            if ts < sub.not_before_ns:
                # Sealed before this subscription existed: a captured copy replayed to a
                # new (or restarted) subscriber, whose seen-id cache never had it.
                why = f"predates the subscription {sub.pattern!r} of {opener!r}"
                self._reject_topic_replay(mid, why, opener, data)
                return
            if dup:
                # Opened already: a replay, unless another subscription of this subscriber
                # matched the same topic; then this handler gets the copy too.
                fan = self._fanout.get((opener, mid))
                if fan is None or sub in fan.subs:
                    # Not another subscription's copy: the same bytes again. Publish never
                    # retries, so this is a replay.
                    self._reject_topic_replay(mid, "was already accepted", opener, data)
                    return
                had_it = any(s.handler == sub.handler for s in fan.subs)
                fan.subs.add(sub)
                if had_it:
                    self.stats.duplicates += 1  # the same handler on overlapping patterns
                    return
                msg, meta = fan.msg, fan.meta
            else:
                if not is_topic:
                    raise DeliveryError("a direct envelope on a topic subject", reason="malformed")
                frame = codec.decode_frame(payload)
                msg = codec.decode_body(ctype, frame.body)
                meta = SecureMessage.from_wire(data)
                if len(self._subs_of.get(opener, ())) > 1:
                    self._fanout[(opener, mid)] = _Fanout(msg, meta, sub)
                    if len(self._fanout) > _FANOUT_KEPT:
                        self._fanout.popitem(last=False)
        except SymbiError as e:
            if not isinstance(e, (SignatureError, DecryptError, ReplayError)):
                self._reject(e, opener, data)
            return
        try:
            # The subscribe-time check saw only the pattern: a wildcard must not carry a
            # topic the policy denies this subscriber. Not cached: the engine exposes no
            # generation to invalidate on, and a decision costs about a microsecond.
            self._authorize(opener, "subscribe", topic, ctype, [])
            if sender not in self._agents:
                # Another runtime's policy let it publish; this runtime's must too.
                try:
                    self._authorize(sender, "publish", topic, ctype, [])
                except PolicyDenied as e:
                    self._record(
                        "bus.rejected",
                        opener,
                        {"reason": "policy", "error": str(e), "message_id": mid, "sender": sender},
                    )
                    raise
        except PolicyDenied as e:
            why = getattr(e.decision, "reason", None) or str(e)
            self._dead_letter(mid, sender, opener, msg, f"topic {topic}: policy denied: {why}", 1)
            return
        sub.received += 1
        self.stats.topic_deliveries += 1
        if self._tg is not None:
            self._tg.start_soon(self._run_handler, sub, msg, meta)

    def _reject_topic_replay(self, mid: str, why: str, opener: str, data: bytes) -> None:
        self.stats.duplicates += 1
        self._reject(
            ReplayError(f"topic message {mid} {why}; a replay is rejected", message_id=mid),
            opener,
            data,
        )

    async def _run_handler(self, sub: Subscription, msg: Any, meta: SecureMessage) -> None:
        """Run a topic handler; a copy it failed on (raised, or ran past
        ``handler_timeout``) is dead-lettered, never just logged."""
        try:
            with anyio.move_on_after(self._handler_timeout) as scope:
                await sub.handler(msg, meta)
            if not scope.cancelled_caught:
                return
            # Its own TimeoutError is an error like any other; only our deadline is this.
            reason = f"handler timed out after {self._handler_timeout:g}s"
            log.warning("topic handler of %s for %r: %s", sub.subscriber, sub.pattern, reason)
        except Exception as e:
            reason = f"handler raised {type(e).__name__}: {e}"
            log.exception("topic handler of %s for %r failed", sub.subscriber, sub.pattern)
        self.stats.handler_errors += 1
        self._dead_letter(
            meta.id, meta.sender, sub.subscriber, msg, f"topic {meta.recipient}: {reason}", 1
        )

    async def _learn_topic_key(self, opener: str, data: bytes) -> bool:
        """Fetch an unknown topic group key from the publishing agent, sealed for
        ``opener``. True when a new key was learnt."""
        try:
            meta = SecureMessage.from_wire(data)
        except SymbiError:
            return False
        if meta.kind != "topic" or self._ring.has_topic_key(meta.recipient, meta.recipient_key_id):
            return False
        publisher = meta.sender
        if publisher not in self._peers:
            return False
        refused = (meta.recipient, meta.recipient_key_id)
        asking = self._key_asks.get(refused)
        if asking is not None:  # another copy asks already: wait for its answer
            with anyio.move_on_after(self._ack_timeout + 1.0):
                await asking.wait()
            return self._ring.has_topic_key(meta.recipient, meta.recipient_key_id)
        asking = self._key_asks[refused] = self._event()
        try:
            return await self._ask_topic_key(opener, meta, publisher, refused)
        finally:
            del self._key_asks[refused]
            asking.set()

    async def _ask_topic_key(
        self, opener: str, meta: SecureMessage, publisher: str, refused: tuple[str, bytes]
    ) -> bool:
        until = self._key_refused.get(refused)
        if until is not None:
            if time.monotonic() < until:
                return False  # refused lately: not asked again for every copy
            del self._key_refused[refused]
        try:
            req = codec.encode_frame(
                codec.KIND_KEY_REQUEST, [meta.recipient, meta.recipient_key_id]
            )
            env = self._seal_now(opener, publisher, codec.KEY_REQUEST_TYPE, req, False)
            answer = await self._transport.request(
                self._subject("keys", publisher), env, timeout=self._ack_timeout
            )
            if not answer:
                self._key_refused[refused] = time.monotonic() + _KEY_REFUSAL_S
                if len(self._key_refused) > _KEY_REFUSALS_KEPT:
                    self._key_refused.popitem(last=False)
                raise DeliveryError(f"{publisher!r} refused the topic key", reason="refused")
            _m, sender, _r, _t, _ts, ctype, payload, _dup = await self._open(opener, answer)
            frame = codec.decode_frame(payload)
            key = codec.decode_body(codec.ANY_TYPE, frame.body)
            if (
                sender != publisher
                or ctype != codec.KEY_RESPONSE_TYPE
                or frame.kind != codec.KIND_KEY_RESPONSE
                or not isinstance(key, bytes)
            ):
                raise SignatureError("a malformed topic-key answer", sender=sender)
            kid = self._ring.add_topic_key(meta.recipient, key)
            if kid != meta.recipient_key_id:
                raise DecryptError(f"{publisher!r} answered with another topic key")
        except SymbiError as e:
            log.warning("could not learn the key of topic %r: %s", meta.recipient, e)
            return False
        self._record(
            "bus.topic_key_learnt", opener, {"topic": meta.recipient, "publisher": publisher}
        )
        return True

    async def _on_keys(self, agent: str, inc: Incoming) -> None:
        """The key directory: an empty request gets ``agent``'s public bundle; a sealed
        topic-key request from an agent the policy lets subscribe gets the group key,
        sealed for that agent."""
        if agent not in self._agents:
            await inc.respond(b"")  # unregistered meanwhile
            return
        if not inc.data:
            await inc.respond(self._ring.bundle(agent))
            return
        answer = b""
        requester: Optional[str] = None
        topic: Optional[str] = None
        try:
            # A requester with no known key is looked up here, bounded (an in-process
            # transport wants the answer before the handler returns).
            _m, requester, _r, is_topic, _ts, ctype, payload, _dup = await self._open(
                agent, inc.data, unknown_sender="wait"
            )
            frame = codec.decode_frame(payload)
            body = codec.decode_body(codec.ANY_TYPE, frame.body)
            if (
                is_topic
                or ctype != codec.KEY_REQUEST_TYPE
                or frame.kind != codec.KIND_KEY_REQUEST
                or not isinstance(body, list)
                or len(body) != 2
            ):
                raise SignatureError("a malformed topic-key request", sender=requester)
            topic, kid = body
            validate_topic(topic)
            if self._ring.topic_key_id(topic) != kid:
                raise DecryptError(f"no current key {kid!r} for topic {topic!r} here")
            self._authorize(requester, "subscribe", topic, "", [])
            key = self._ring.topic_key(topic)
            resp = codec.encode_frame(codec.KIND_KEY_RESPONSE, key)
            answer = self._seal_now(agent, requester, codec.KEY_RESPONSE_TYPE, resp, False)
            self._record("bus.topic_key_shared", agent, {"topic": topic, "to": requester})
        except SymbiError as e:
            log.warning("refused a topic-key request to %s: %s", agent, e)
            self._record(
                "bus.topic_key_refused",
                agent,
                {
                    "topic": topic,
                    "requester": requester,
                    "reason": type(e).__name__,
                    "error": str(e),
                },
            )
        await inc.respond(answer)
