"""What a running server shares with its connections, and nothing more.

Sessions, event streams, the HTTP handler and the keepalive ticker need a few
things from the server: its options, the pub/sub registry, the sets of open
connections, whether a stop has begun, and a way into the hub and into the
hook thread pool.  :class:`Runtime` holds exactly that.  The
:class:`~syncws.server.server.Server` builds one and owns its lifecycle; the
lower modules import this module, never the server, so the layers have no
import cycle and a session can be driven in a test with a bare runtime.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, overload

import gevent

from ..base.errors import BrokerError, ConfigurationError, ServerNotRunning
from ..base.options import ServerOptions
from ..base.threads import RealLock, Reply, T, Ts, hub_only, off_hub, use_threads
from ..base.tracing import Tracer, make_tracer
from ..protocol.payload import Outgoing, to_json
from ..pubsub.broker import Broker, Presence
from ..pubsub.history import NOT_RECOVERED, MemoryHistory, Recovery, check_since, is_after, parse_offset
from ..pubsub.registry import ABSENT, Absent, PresenceInfo, Registry, Subscriber, check_topic, fan_out
from .bridge import HubBridge
from .keepalive import Keepalive
from .outbox import Flusher
from .pool import WorkerPool

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanKind

log = logging.getLogger("syncws")
access_log = logging.getLogger("syncws.access")


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


class Runtime:
    """The state shared by one server and its connections (hub thread unless noted)."""

    def __init__(self, options: ServerOptions, broker: Broker, owner: Any = None) -> None:
        self.options = options
        self.broker = broker
        self.registry = Registry()
        self.registry.on_interest = broker.interest
        #: This process's history, when history is on and the broker keeps none.
        self.history: MemoryHistory | None = None
        broker.configure(
            options.history_size, options.history_ttl, options.presence_ttl, self.registry.presence_slices, self._after
        )
        if options.history_size and not broker.stores_history:
            self.history = MemoryHistory(
                options.history_size, options.history_ttl, max_topics=options.history_max_topics
            )
        if broker.shares_presence:
            self.registry.on_presence = broker.presence_changed
        broker.on_command = self.command_received
        broker.on_gap = self.gap_received
        #: The public object that owns this runtime (``peer.server``).
        self.owner = owner
        self.sessions: set[Any] = set()  # open WebSocket sessions
        self.streams: set[Any] = set()  # open event streams
        self.requests_in_flight = 0  # requests being answered (sessions and streams included)
        self.connections = 0  # WebSocket peers and event streams admitted (the connection caps)
        self.counters = Counters()
        self._per_address: dict[str, int] = {}
        self.access_log = True  # log one line per request and per connection's end ("syncws.access")
        self.draining = False  # a drain has begun: the readiness check fails (server/health.py)
        self.stopping = False  # a stop has begun, or a drain's delay is over: new upgrades get 503
        #: Paths the HTTP handler answers itself, in the hub, before the app sees them:
        #: the health checks and the admin API on the main port.
        self.routes: dict[str, WSGIApplication] = {}
        self.finished = False  # the stop is over
        self.bridge: HubBridge | None = None
        self.flusher: Flusher | None = None
        self.keepalive: Keepalive | None = None
        self._pool: WorkerPool | None = None
        #: OpenTelemetry spans, or None (the ``tracing`` option; base/tracing.py).
        self.tracer = make_tracer(options.tracing)
        #: Views, hooks and event-stream callbacks run in the thread pool (the ``threads`` option).
        self.threaded = use_threads(options.threads)
        self._slots_lock = RealLock()  # admit/release/refuse: views in pool threads call them too

    @property
    def active_tracer(self) -> Tracer | None:
        """The tracer once the app has configured an SDK, else None: then no span is made at all."""
        tracer = self.tracer
        return tracer if tracer is not None and tracer.configured() else None

    # -- logs ------------------------------------------------------------------------------------
    @property
    def logs_ends(self) -> bool:
        """Whether :meth:`log_end` writes a line: callers then gather its fields (a peer's id is made lazily)."""
        return self.access_log and access_log.isEnabledFor(logging.INFO)

    def log_end(self, kind: str, connection: str, path: str, remote: str | None, started: float, **fields: Any) -> None:
        """One ``syncws.access`` line when a WebSocket or an event stream ends, with its fields (docs/operations.md).

        Called only when :attr:`logs_ends`.
        """
        duration = round(time.monotonic() - started, 3)
        what = "WebSocket" if kind == "websocket" else "event stream"
        code = fields.get("code")
        closed = f" {code} {fields.get('reason') or ''}".rstrip() if code is not None else ""
        access_log.info(
            "%s %s %s closed%s after %.3f s",
            remote or "-",
            what,
            path,
            closed,
            duration,
            extra={
                "kind": kind,
                "connection": connection,
                "path": path,
                "remote": remote,
                "duration": duration,
                **fields,
            },
        )

    # -- connection caps ---------------------------------------------------------------------
    def admit(self, address: str | None) -> int | None:
        """Take a connection slot for a new peer or stream (hub thread).

        None when admitted (the caller must :meth:`release` it later), else
        the status to refuse with: 503 at ``max_connections``, 429 at
        ``max_connections_per_ip``.  Any thread (a view in the thread pool opens streams).
        """
        options = self.options
        with self._slots_lock:
            if options.max_connections is not None and self.connections >= options.max_connections:
                return 503
            per_ip = options.max_connections_per_ip
            if per_ip is not None and address is not None and self._per_address.get(address, 0) >= per_ip:
                return 429
            self.connections += 1
            if address is not None:
                self._per_address[address] = self._per_address.get(address, 0) + 1
            return None

    def release(self, address: str | None) -> None:
        """Give back a slot taken by :meth:`admit` (any thread)."""
        with self._slots_lock:
            self.connections = max(0, self.connections - 1)  # (a session a test built by hand took none)
            if address is not None:
                left = self._per_address.get(address, 1) - 1
                if left > 0:
                    self._per_address[address] = left
                else:
                    self._per_address.pop(address, None)

    def refuse(self, status: int) -> None:
        """Count an upgrade or stream answered without a connection (any thread)."""
        with self._slots_lock:
            self.counters.refuse(status)

    def post_to_hub(self, fn: Callable[[*Ts], object], *args: *Ts) -> bool:
        """Run ``fn(*args)`` in the server's hub (any thread); a no-op (False) once it has stopped."""
        bridge = self.bridge
        return bridge is not None and bridge.call(fn, *args)

    def require_bridge(self) -> HubBridge:
        bridge = self.bridge
        if bridge is None:
            raise ServerNotRunning("the server is not running")
        return bridge

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

    # -- revoking (server.disconnect, server.unsubscribe) -------------------------------------
    def command(self, command: dict[str, Any]) -> None:
        """Apply a revoke here and send it to every other process (any thread)."""
        self.post_to_hub(self.apply_command, command)
        self.broker.command(command)

    def command_received(self, command: dict[str, Any]) -> None:
        """A revoke from another process (the broker's thread)."""
        self.post_to_hub(self.apply_command, command)

    def gap_received(self, namespace: str, topic: str) -> None:
        """The broker cannot bridge what ``topic``'s subscribers missed (any thread): they reconnect.

        A peer is closed with 1012 (service restart) and an event stream ends:
        the client comes back with its offset, and its resume tells it
        ``recovered=False``, rather than it going on with a silent gap.
        """
        self.post_to_hub(self._restart_subscribers, namespace, topic)

    @hub_only
    def _restart_subscribers(self, namespace: str, topic: str) -> None:
        for subscriber, _ in self.registry.recipients(topic, namespace):
            restart = getattr(subscriber, "restart", None)
            if restart is not None:
                restart()

    @hub_only
    def apply_command(self, command: dict[str, Any]) -> None:
        """Close or unsubscribe this process's peers of ``command["user"]`` (hub thread).

        Fields are checked where the command was made; one from another
        process is checked again for its types, and a bad one is logged and dropped.
        """
        try:
            op, user = command["op"], command["user"]
            peers = self.registry.peers_of(user)
            if op == "disconnect":
                code, reason = command.get("code", 4003), command.get("reason", "")
                for peer in peers:
                    peer.close(code, reason)
            else:
                topic, namespace = command["topic"], command.get("namespace")
                for peer in peers:
                    if (namespace is None or peer.namespace == namespace) and topic in peer.topics:
                        peer.unsubscribe(topic)
                        if peer.on_revoked is not None:
                            peer.on_revoked(peer, topic)
        except Exception:
            log.exception("syncws: could not apply the command %r", command)

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

    # -- calling into and out of the hub ------------------------------------------------------
    # Three hand-offs, named for where the call runs and whether the caller waits:
    #   post_to_hub   any thread -> hub, queued; the caller goes on (False once stopped)
    #   run_in_hub    any thread -> hub; the caller waits for the result or the exception
    #   run_off_hub   hub -> a thread of gevent's pool, for blocking I/O; the greenlet waits
    # Arguments are checked by the caller before they cross (peer.close checks its code
    # and reason), so that a bad one raises where the app made it, not in the hub.
    def run_in_hub(self, fn: Callable[[*Ts], T], *args: *Ts, spawn: bool = False) -> T:
        """Run ``fn(*args)`` in the hub and return its result (any thread; waits for it).

        ``spawn``: in a greenlet of its own, for a ``fn`` that may wait (a socket
        read or write); otherwise in the hub's loop, where nothing may block.
        """
        bridge = self.bridge
        if bridge is None or bridge.in_hub_thread():
            return fn(*args)
        reply: Reply[T] = Reply()
        if spawn:
            bridge.call(gevent.spawn, reply.run, fn, *args)
        else:
            bridge.call(reply.run, fn, *args)
        try:
            return reply.wait(-1 if spawn else 30)  # (-1: no limit) a socket operation has its own timeouts
        except TimeoutError:
            raise ServerNotRunning("the server's hub did not answer") from None

    def run_off_hub(self, fn: Callable[[], T], *, timeout: float | None = None) -> T:
        """Run blocking I/O (a Redis read) without blocking the hub: in a thread from the hub thread.

        Anywhere else ``fn`` runs at once, where it is.  ``timeout``: from
        the hub, raise :class:`TimeoutError` when the thread has not answered
        by then (what it runs must bound its own waits; this is the backstop
        that keeps a caller from waiting for ever).
        """
        bridge = self.bridge
        if bridge is not None and bridge.in_hub_thread():
            task = gevent.get_hub().threadpool.spawn(off_hub, fn)
            try:
                result: T = task.get(timeout=timeout)
            except gevent.Timeout:
                raise TimeoutError("a blocking call did not return in time") from None
            return result
        return fn()

    # -- views and hooks in threads ------------------------------------------------------------
    def run_in_thread(self, fn: Callable[[*Ts], T], *args: *Ts, context: contextvars.Context | None = None) -> T:
        """Run ``fn(*args)`` in the thread pool; block only the calling greenlet.

        From the hub thread.  Anywhere else (already in a pool thread: an
        ``upgrade`` hook under a view, say) ``fn`` runs at once, where it is.
        The caller's context variables go along, or those of ``context`` (a
        WebSocket whose view ran in a pool thread keeps the view's: Flask's
        app and request contexts); the result is returned and an exception,
        ``SystemExit`` included, re-raised here.
        """
        bridge = self.bridge
        if self.finished or bridge is None or not bridge.in_hub_thread():
            return fn(*args)  # not in the hub, or the pool is gone (a last close hook runs here)
        pool = self._pool
        if pool is None:
            pool = self._pool = WorkerPool(self.options.thread_pool_size, bridge)
        return pool.apply(contextvars.copy_context() if context is None else context.copy(), fn, args)

    def hooks_threaded(self, options: ServerOptions) -> bool:
        """Whether a handler's hooks run in the pool: its own ``threads`` if it set one, else the server's.

        ``options``: the handler's (``WebSocketHandler.options_for``); the
        server's own answer is computed once, in :attr:`threaded`.
        """
        if options is self.options or options.threads == self.options.threads:
            return self.threaded
        return use_threads(options.threads)

    @hub_only
    def thread_stats(self) -> dict[str, Any]:
        """The thread pool, for ``server.stats()`` and the metrics (hub thread)."""
        pool = self._pool
        if pool is None:
            counts = {"size": self.options.thread_pool_size, "busy": 0, "queued": 0, "waited": 0, "tasks": 0}
        else:
            counts = pool.stats()
        return {"enabled": self.threaded, **counts}

    def stop_hook_threads(self) -> None:
        """Idle threads exit; a hook still running finishes in its thread."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


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
