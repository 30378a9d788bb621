"""Pub/sub delivery and recovery: what a publish does in the hub, and a subscribe with history.

A mixin of :class:`~syncws.server.runtime.Runtime`, which holds the state it
uses (the options, the broker, the registry, the in-memory history, the
counters) and the hand-offs into and out of the hub.  Kept apart because it is
the one part of the runtime with an algorithm of its own: no publish is
delivered twice or skipped between a replay and live delivery
(docs/delivery.md), with history in memory or in Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, overload

from ..base.errors import BrokerError, ConfigurationError
from ..base.options import ServerOptions
from ..base.threads import T, Ts, hub_only
from ..base.tracing import Tracer
from ..protocol.payload import Outgoing, to_json
from ..pubsub.broker import Broker, Presence
from ..pubsub.history import NOT_RECOVERED, MemoryHistory, Recovery, check_since, is_after, parse_offset
from ..pubsub.registry import ABSENT, Absent, PresenceInfo, Registry, Subscriber, check_topic, fan_out

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanKind

log = logging.getLogger("syncws")


class Counters:
    """Totals since the server started, for ``server.stats()`` and the metrics (hub thread).

    Kept cheap: a publish adds its recipients in one step, never one
    increment per recipient, so fan-out pays nothing per delivery for them.
    """

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "messages_in",
        "messages_out",
        "overflow_closes",
        "overflow_drops",
        "rate_limited",
        "refused",
        "sse_opened",
        "websocket_opened",
    )

    def __init__(self) -> None:
        self.websocket_opened = 0
        self.sse_opened = 0
        self.messages_in = 0
        self.bytes_in = 0
        self.messages_out = 0
        self.bytes_out = 0
        self.overflow_closes = 0
        self.overflow_drops = 0  # of connections that ended; live ones are summed on demand
        self.rate_limited = 0
        self.refused: dict[int, int] = {}  # upgrades and streams answered without a connection, by status

    def sent(self, count: int, size: int) -> None:
        self.messages_out += count
        self.bytes_out += count * size

    def refuse(self, status: int) -> None:
        self.refused[status] = self.refused.get(status, 0) + 1


class Delivery:
    """Delivery and recovery, for :class:`~syncws.server.runtime.Runtime` (hub thread unless noted)."""

    # What the runtime provides.
    options: ServerOptions
    broker: Broker
    registry: Registry
    history: MemoryHistory | None
    counters: Counters

    if TYPE_CHECKING:

        @property
        def active_tracer(self) -> Tracer | None: ...

        def post_to_hub(self, fn: Callable[[*Ts], object], *args: *Ts) -> bool: ...

        def run_in_hub(self, fn: Callable[[*Ts], T], *args: *Ts, spawn: bool = False) -> T: ...

        def run_off_hub(self, fn: Callable[[], T], *, timeout: float | None = None) -> T: ...

    # -- pub/sub -------------------------------------------------------------------------
    @hub_only
    def deliver(
        self,
        topic: str,
        outgoing: Outgoing,
        namespace: str | None,
        exclude: Subscriber | None = None,
        parent: Context | None = None,
    ) -> None:
        """A local publish (hub thread): local subscribers first, then the broker relays it.

        A broker that stores the history delivers it back instead, with its
        offset.  ``parent``: the trace context of the caller, when it
        published from another thread (``server.publish``).
        """
        tracer = self.active_tracer
        if tracer is None:
            self._deliver(topic, outgoing, namespace, exclude)
            return
        attributes: dict[str, Any] = {"messaging.system": "syncws", "messaging.destination.name": topic}
        if namespace is not None:
            attributes["syncws.namespace"] = namespace
        attributes["syncws.stored"] = self.broker.stores_history
        with self._deliveries_span(tracer, "syncws.publish", tracer.PRODUCER, attributes, parent):
            self._deliver(topic, outgoing, namespace, exclude)

    @contextmanager
    def _deliveries_span(
        self, tracer: Tracer, name: str, kind: SpanKind, attributes: dict[str, Any], parent: Context | None = None
    ) -> Iterator[None]:
        """A span around a delivery, with ``syncws.deliveries``: the recipients it counted (one subtraction)."""
        with tracer.span(name, attributes, parent, kind) as span:
            before = self.counters.messages_out
            yield
            span.set_attribute("syncws.deliveries", self.counters.messages_out - before)

    def _deliver(self, topic: str, outgoing: Outgoing, namespace: str | None, exclude: Subscriber | None) -> None:
        outgoing.topic = topic
        if self.broker.stores_history:
            self.broker.publish_stored(namespace, topic, outgoing, None if exclude is None else exclude.id)
            return
        self._deliver_local(topic, outgoing, namespace, exclude)
        self.broker.relay(namespace, topic, outgoing)

    def deliver_relayed(
        self, namespace: str | None, topic: str, outgoing: Outgoing, exclude_id: str | None = None
    ) -> None:
        """A publish from the broker (any thread): local subscribers only, never relayed."""
        self.post_to_hub(self._deliver_relayed, topic, outgoing, namespace, exclude_id)

    def _deliver_relayed(self, topic: str, outgoing: Outgoing, namespace: str | None, exclude_id: str | None) -> None:
        tracer = self.active_tracer
        if tracer is None:
            self._deliver_from_broker(topic, outgoing, namespace, exclude_id)
            return
        with self._deliveries_span(tracer, "syncws.deliver", tracer.CONSUMER, {"messaging.destination.name": topic}):
            self._deliver_from_broker(topic, outgoing, namespace, exclude_id)

    @hub_only
    def _deliver_from_broker(
        self, topic: str, outgoing: Outgoing, namespace: str | None, exclude_id: str | None
    ) -> None:
        outgoing.topic = topic
        subscribers = None
        exclude = None
        if exclude_id is not None:  # our own publish, back from the broker: not to its sender
            subscribers = self.registry.recipients(topic, namespace)
            exclude = next((sub for sub, _ in subscribers if sub.id == exclude_id), None)
        if outgoing.offset is not None or self.history is None:
            if subscribers is None:
                subscribers = self.registry.recipients(topic, namespace)
            self.counters.sent(fan_out(subscribers, outgoing, exclude), len(outgoing.payload))
        else:
            self._deliver_local(topic, outgoing, namespace, exclude)

    @hub_only
    def _deliver_local(
        self, topic: str, outgoing: Outgoing, namespace: str | None, exclude: Subscriber | None = None
    ) -> None:
        history = self.history
        size = len(outgoing.payload)
        if history is None:
            self.counters.sent(fan_out(self.registry.recipients(topic, namespace), outgoing, exclude=exclude), size)
            return
        # Stored per namespace: the history of (namespace, topic) holds what a
        # subscriber there would have received.
        spaces = (
            (namespace,) if namespace is not None else self.registry.namespaces_of(topic) | history.namespaces(topic)
        )
        for space in spaces:
            stamped = history.append(space, topic, outgoing)
            self.counters.sent(fan_out(self.registry.recipients(topic, space), stamped, exclude=exclude), size)

    def _after(self, fn: Callable[[], None]) -> bool:
        # FIFO through the hub: runs after every delivery handed over before it.
        return self.post_to_hub(fn)

    # -- history and presence ---------------------------------------------------------------
    def subscribe(
        self, sub: Subscriber, topic: str, since: str | None, presence: object = ABSENT, envelope: bool = False
    ) -> Recovery:
        """Subscribe, replaying the stored publishes after ``since`` first (any thread).

        ``envelope``: publishes (the replay too) reach ``sub`` as their JSON envelope.

        With history on, no publish is delivered twice or skipped between the
        replay and live delivery: the replay and the switch to live happen in
        the hub with nothing delivered in between (in memory), or live
        publishes are held back until the read from Redis is placed in their
        order (see :meth:`_subscribe_through_broker`).
        """
        check_topic(topic)
        since = check_since(since)
        presence = self.check_presence(presence)
        tracer = self.active_tracer
        if tracer is None or since is None:
            return self._subscribe(sub, topic, since, presence, envelope)
        with tracer.span("syncws.recovery", {"messaging.destination.name": topic, "syncws.since": since}) as span:
            recovery = self._subscribe(sub, topic, since, presence, envelope)
            span.set_attribute("syncws.replayed", recovery.replayed)
            span.set_attribute("syncws.recovered", recovery.recovered)
            return recovery

    def _subscribe(self, sub: Subscriber, topic: str, since: str | None, presence: object, envelope: bool) -> Recovery:
        if self.history is not None:
            return self.run_in_hub(self._subscribe_in_memory, sub, topic, since, presence, envelope)
        if self.broker.stores_history:
            return self._subscribe_through_broker(sub, topic, since, presence, envelope)
        self.registry.subscribe(sub, topic, presence, envelope)
        return NOT_RECOVERED

    def check_presence(self, info: object) -> PresenceInfo | Absent:
        """``info`` as a :class:`PresenceInfo` (ABSENT stays ABSENT); its JSON within ``max_presence_size``.

        Checked where the app calls, so it gets the error: a value that is not
        JSON-able raises TypeError, a large one :class:`ConfigurationError`
        (one peer could otherwise store 50 infos of 900 KB on every refresh).
        """
        if info is ABSENT:
            return info
        text = to_json(info)
        limit = self.options.max_presence_size
        if limit is not None and len(text) > limit // 4:  # else even 4-byte characters fit
            size = len(text.encode("utf-8"))
            if size > limit:
                raise ConfigurationError(f"presence info is {size} bytes of JSON, over max_presence_size ({limit})")
        return PresenceInfo(info, text)

    @hub_only
    def _subscribe_in_memory(
        self, sub: Subscriber, topic: str, since: str | None, presence: object, envelope: bool
    ) -> Recovery:
        assert self.history is not None
        # Without since nothing is replayed: read the newest offset only.
        entries, recovered, newest = self.history.read(sub.namespace, topic, since, None if since else 0)
        self.registry.subscribe(sub, topic, presence, envelope)
        self._replay(sub, entries, envelope)
        return Recovery(recovered, len(entries), entries[-1].offset if entries else newest)

    @hub_only
    def _replay(self, sub: Subscriber, entries: list[Outgoing], envelope: bool) -> None:
        for entry in entries:
            sub.deliver(entry.envelope if envelope else entry)
            self.counters.sent(1, len(entry.payload))

    def _subscribe_through_broker(
        self, sub: Subscriber, topic: str, since: str | None, presence: object, envelope: bool
    ) -> Recovery:
        """Redis keeps the history: read it without losing or repeating a live publish.

        A stand-in subscriber holds the live publishes while the read runs;
        the broker returns once every publish stored before the read has
        reached the hub, so those the stand-in holds up to the read's newest
        offset are in the read (or older than ``since``), and the rest are
        delivered after the replay.  Redis unreachable: ``recovered`` False,
        nothing replayed, live delivery as without history.
        """
        holder = _Holder(sub.namespace, max(_HOLD_AT_LEAST, self.options.history_size))
        self.registry.subscribe(holder, topic)
        # A read waits at most read_timeout for the subscription's confirmation and
        # about as long for the answer; this bounds the wait even if it hangs.
        timeout = 2 * self.broker.read_timeout + 2
        try:
            reading = self.run_off_hub(
                lambda: self.broker.read_history(sub.namespace, topic, since, None, recovering=True), timeout=timeout
            )
        except TimeoutError:
            reading = None  # as when Redis cannot be read: live delivery, recovered=False
        except BaseException:
            self.registry.unsubscribe(holder, topic)
            raise
        args = (sub, topic, since, presence, envelope, holder, reading)
        return self.run_in_hub(self._finish_subscribe, *args)

    @hub_only
    def _finish_subscribe(
        self,
        sub: Subscriber,
        topic: str,
        since: str | None,
        presence: object,
        envelope: bool,
        holder: _Holder,
        reading: tuple[list[Outgoing], bool, str | None] | None,
    ) -> Recovery:
        try:
            if getattr(sub, "closed", False):
                return NOT_RECOVERED
            entries, recovered, newest = reading if reading is not None else ([], False, None)
            if since is None:
                entries = []
            mark = parse_offset(newest)
            self.registry.subscribe(sub, topic, presence, envelope)
            self._replay(sub, entries, envelope)
            self._replay(sub, [held for held in holder.held if is_after(held.offset, mark)], envelope)
            if holder.overflowed:
                recovered = False  # live publishes past the bound were not kept for this subscriber
            return Recovery(recovered, len(entries), entries[-1].offset if entries else newest)
        finally:
            self.registry.unsubscribe(holder, topic)  # after the real subscribe: no interest churn

    def history_of(
        self, topic: str, namespace: str, since: str | None = None, limit: int | None = None
    ) -> list[Outgoing]:
        """The stored publishes of (namespace, topic) after ``since``, the newest ``limit`` (any thread)."""
        check_topic(topic)
        since = check_since(since)
        if limit == 0:
            return []
        if self.history is not None:
            history = self.history
            return self.run_in_hub(lambda: history.read(namespace, topic, since, limit)[0])
        if self.broker.stores_history:
            broker = self.broker
            reading = self._broker_read("history", topic, lambda: broker.read_history(namespace, topic, since, limit))
            if reading is None:
                raise BrokerError("the history could not be read from the broker")
            entries: list[Outgoing] = reading[0]
            return entries
        return []

    @overload
    def presence(self, topic: str, namespace: str | None) -> list[dict[str, Any]]: ...
    @overload
    def presence(self, topic: str, namespace: str | None, count_only: Literal[True]) -> int: ...
    def presence(self, topic: str, namespace: str | None, count_only: bool = False) -> Presence:
        """Who is subscribed to ``topic``: every process with a broker that shares presence (any thread)."""
        check_topic(topic)
        if self.broker.shares_presence:
            try:
                broker = self.broker
                return self._broker_read("presence", topic, lambda: broker.read_presence(topic, namespace, count_only))
            except BrokerError as exc:
                log.warning("syncws: presence could not be read from the broker, answering for this process: %s", exc)
        local = self.registry.presence(topic, namespace)
        return len(local) if count_only else local

    def _broker_read(self, what: str, topic: str, fn: Callable[[], T]) -> T:
        """A blocking read from the broker (:meth:`run_off_hub`), in a ``syncws.broker.<what>`` span when tracing."""
        tracer = self.active_tracer
        if tracer is None:
            return self.run_off_hub(fn)
        attributes = {"db.system": "redis", "messaging.destination.name": topic}
        with tracer.span("syncws.broker." + what, attributes, None, tracer.CLIENT):
            return self.run_off_hub(fn)


#: A recovery holds at least this many live publishes (else ``history_size``) while it reads.
_HOLD_AT_LEAST = 1000


class _Holder:
    """Holds the live publishes of a topic while a subscriber's history is read.

    At most ``limit``: a read that takes long while a topic is busy would
    otherwise keep every publish meanwhile (180,000 of them, 74 MiB, when
    reads hung).  Past it publishes are not kept and the recovery reports
    ``recovered=False``, so the client knows to reload.
    """

    __slots__ = ("held", "limit", "namespace", "overflowed")

    def __init__(self, namespace: str, limit: int) -> None:
        self.namespace = namespace
        self.limit = limit
        self.held: list[Outgoing] = []
        self.overflowed = False

    @property
    def id(self) -> str:
        return f"holder-{id(self)}"

    @hub_only
    def deliver(self, outgoing: Outgoing) -> None:
        if len(self.held) < self.limit:
            self.held.append(outgoing)
        else:
            self.overflowed = True
