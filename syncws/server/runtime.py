"""What a running server shares with its connections, and nothing more.

Sessions, event streams, the HTTP handler and the keepalive ticker need a few
things from the server: its options, the pub/sub registry, the sets of open
connections, whether a stop has begun, and a way into the hub and into the
hook thread pool.  :class:`Runtime` holds exactly that (what a publish and
a recovering subscribe do with it is :mod:`~syncws.server.delivery`'s).  The
:class:`~syncws.server.server.Server` builds one and owns its lifecycle; the
lower modules import this module, never the server, so the layers have no
import cycle and a session can be driven in a test with a bare runtime.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent

from ..base.errors import ServerNotRunning
from ..base.options import ServerOptions
from ..base.threads import RealLock, Reply, T, Ts, hub_only, off_hub, use_threads
from ..base.tracing import Tracer, make_tracer
from ..pubsub.broker import Broker
from ..pubsub.history import MemoryHistory
from ..pubsub.registry import Registry
from .bridge import HubBridge
from .delivery import Counters, Delivery
from .keepalive import Keepalive
from .outbox import Flusher
from .pool import WorkerPool

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

log = logging.getLogger("syncws")
access_log = logging.getLogger("syncws.access")


class Runtime(Delivery):
    """The state shared by one server and its connections (hub thread unless noted).

    Delivery and recovery (publishes to subscribers, history, presence) are
    :class:`~syncws.server.delivery.Delivery`'s, in a module of their own.
    """

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
        self.flusher: Flusher | None = None  # the WebSocket peers'
        self.stream_flusher: Flusher | None = None  # the event streams': it settles (see Flusher)
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
