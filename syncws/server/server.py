"""The syncws server: gevent's WSGI server plus the pub/sub state it owns.

A server runs its own gevent hub: in the calling thread (``serve(app)``), or
in a dedicated OS thread (``serve(app, background=True)``) so that a plain,
un-patched program can host it.  Everything that touches sockets happens in
that hub; other threads reach it through :class:`~syncws.server.bridge.HubBridge`.

The server owns a :class:`~syncws.server.runtime.Runtime`, the narrow state its
connections share; it hands that, never itself, to the layers below.  The
lifecycle methods the gunicorn worker and ``--workers`` children need are
public: :meth:`Server.start`, :meth:`Server.add_listener`,
:meth:`Server.stop`, :meth:`Server.finish`, and the :attr:`Server.stopping`
and :attr:`Server.finished` flags.
"""

from __future__ import annotations

import importlib
import json
import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import gevent
from gevent.event import Event
from gevent.pool import Pool

from ..base.errors import ConfigurationError, ListenError, ServerNotRunning
from ..base.logs import JsonFormatter, make_handler
from ..base.options import BY_NAME, ServerOptions, check_option_names, is_seconds
from ..base.threads import RealLock, T, Ts, hub_only, start_thread
from ..protocol.connection import check_close
from ..protocol.frames import CloseCode
from ..protocol.payload import Outgoing
from ..pubsub.broker import Broker
from ..pubsub.factory import make_broker
from ..pubsub.registry import Registry, check_topic, check_user
from .bridge import HubBridge
from .handler import prepare_frameworks
from .health import routes as health_routes
from .http import ConnectionHandler
from .keepalive import Keepalive
from .listener import ResilientWSGIServer, tls_context, url_for
from .outbox import Flusher
from .runtime import Runtime

if TYPE_CHECKING:
    import socket
    import ssl

log = logging.getLogger("syncws")


class HistoryEntry(NamedTuple):
    """One stored publish: its ``offset`` and its ``data`` (as a subscriber would decode it).

    ``data`` is the value for a JSON payload (dict, list, number), ``str``
    for text, ``bytes`` for binary.
    """

    offset: str
    data: Any


def _value_of(outgoing: Outgoing) -> object:
    if outgoing.is_binary:
        return outgoing.payload
    text = outgoing.payload.decode("utf-8")
    return json.loads(text) if outgoing.is_json else text


_current: Server | None = None
_current_lock = RealLock()

#: ``Server(app, wrap="gevent_websocket")``-style app wrappers, by option name.
#: Integrations register here (see :mod:`syncws.integrations.gevent_websocket`),
#: so this layer never imports them.
APP_WRAPPERS: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {}
#: ``Server(app, metrics="host:port")``: the exporter class, ``exporter(server, address)``
#: with ``start()`` and ``stop()``.  :mod:`syncws.integrations.metrics` registers it.
EXPORTERS: dict[str, Callable[[Any, str], Any]] = {}
#: ``Server(app, admin=... or admin_path=...)``: the admin API's class,
#: ``api(server, address, path, key, auth)`` with ``start()`` and ``stop()``.
#: :mod:`syncws.web.admin` registers it.
ADMIN_APIS: dict[str, Callable[..., Any]] = {}


def registered(table: dict[str, T], key: str, module: str) -> T:
    """``table[key]``, importing ``module`` first when it has not registered it yet.

    The integrations sit in the layers above this one: the server names the
    module and imports it when a server first uses it, so ``import syncws``
    loads none of them (and this layer's code never imports theirs).
    """
    if key not in table:
        importlib.import_module(module)
    return table[key]


class Server:
    """A syncws server for one WSGI app (see :func:`serve` for the options)."""

    def __init__(
        self,
        app: Callable[..., Any],
        host: str = "127.0.0.1",
        port: int = 3000,
        *,
        access_log: bool = True,
        broker: Broker | str | None = None,
        listener: socket.socket | None = None,
        gevent_websocket: bool = False,
        certfile: str | None = None,
        keyfile: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        metrics: str | None = None,
        admin: str | None = None,
        admin_path: str | None = None,
        admin_key: str | None = None,
        admin_auth: Callable[[Any], Any] | None = None,
        log_format: str = "text",
        **options: Any,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be a WSGI callable, not {type(app).__name__}")
        check_option_names(options, "Server()")
        prepare_frameworks()  # Flask: match upgrades as HTTP, the view decides
        if gevent_websocket:
            # An app written for gevent-websocket: upgrade before calling it.
            app = registered(APP_WRAPPERS, "gevent_websocket", "syncws.integrations.gevent_websocket")(app)
        self.app = app
        self.host = host
        self.port = port
        self.access_log = access_log
        #: The TLS context (https:// and wss://), or None for plain HTTP.
        self.ssl_context = tls_context(certfile, keyfile, ssl_context)
        self.runtime = Runtime(ServerOptions(**options), make_broker(broker), owner=self)
        self._route_health_checks()
        self._add_side_services(metrics, admin, admin_path, admin_key, admin_auth)
        #: ``"json"``: :func:`serve` logs one JSON object per line (docs/operations.md).
        self.log_format = BY_NAME["log_format"].validate(log_format)
        self.runtime.access_log = access_log
        self._wsgi: list[ResilientWSGIServer] = []
        self._stopped: Event | None = None
        self._thread_done: Any | None = None
        # An already-bound, listening socket to accept on instead of binding
        # (host, port); ``python -m syncws --workers N`` shares one this way.
        self._listener = listener

    def _add_side_services(
        self,
        metrics: str | None,
        admin: str | None,
        admin_path: str | None,
        admin_key: str | None,
        admin_auth: Callable[[Any], Any] | None,
    ) -> None:
        """The metrics exporter and the admin API, each when asked for (their integrations load then)."""
        #: The Prometheus exporter when ``metrics`` names an address (see docs/operations.md).
        self.metrics = (
            registered(EXPORTERS, "prometheus", "syncws.integrations.metrics")(self, metrics) if metrics else None
        )
        #: The HTTP admin API when ``admin`` or ``admin_path`` is set (docs/reference/admin.md).
        self.admin = None
        if admin or admin_path:
            self.admin = registered(ADMIN_APIS, "http", "syncws.web.admin")(
                self, admin, admin_path, admin_key, admin_auth
            )

    def _route_health_checks(self) -> None:
        """The health checks on the main port, under the ``health_path`` option (answered in the hub)."""
        health_path = self.options.health_path
        if health_path is not None:
            if not health_path.startswith("/"):
                raise ConfigurationError(f"health_path must start with '/', not {health_path!r}")
            self.runtime.routes.update(health_routes(self.runtime, health_path))

    # -- state ---------------------------------------------------------------
    @property
    def options(self) -> ServerOptions:
        return self.runtime.options

    @property
    def broker(self) -> Broker:
        return self.runtime.broker

    @property
    def registry(self) -> Registry:
        return self.runtime.registry

    @property
    def sessions(self) -> set[Any]:
        """The open WebSocket sessions (hub thread)."""
        return self.runtime.sessions

    @property
    def streams(self) -> set[Any]:
        """The open event streams (hub thread)."""
        return self.runtime.streams

    @property
    def url(self) -> str:
        """``http://host:port``, or ``https://`` with TLS."""
        return url_for(self.host, self.port, self.ssl_context is not None)

    @property
    def peers(self) -> frozenset[Any]:
        """Every connected WebSocket peer, all namespaces (a snapshot)."""
        return self.runtime.registry.peers()

    @property
    def stopping(self) -> bool:
        """True once a stop has begun: new upgrades are answered 503."""
        return self.runtime.stopping

    @property
    def draining(self) -> bool:
        """True once a drain has begun (SIGTERM or :meth:`drain`): the readiness check fails."""
        return self.runtime.draining

    @property
    def finished(self) -> bool:
        """True once the server has stopped (its connections are closed or abandoned)."""
        return self.runtime.finished

    def call_in_hub(self, fn: Callable[[*Ts], object], *args: *Ts) -> None:
        """Queue ``fn(*args)`` for the server's hub and return at once (any thread); a no-op once it has stopped."""
        self.runtime.post_to_hub(fn, *args)

    # -- pub/sub -------------------------------------------------------------
    def publish(self, topic: str, data: object, *, namespace: str | None = None, compress: bool | None = None) -> None:
        """Send to every subscriber of ``topic`` (in every namespace when None).

        Safe from any greenlet or OS thread: the message is serialised here,
        once, and delivery is handed to the server's hub.  ``compress`` as for
        :meth:`Peer.send <syncws.Peer.send>` (compressed at most once per
        window size, whatever the number of recipients).
        """
        runtime = self.runtime
        bridge = runtime.require_bridge()
        tracer = runtime.active_tracer
        parent = None if tracer is None else tracer.current()  # the publish span's parent: this caller's span
        bridge.call(runtime.deliver, topic, Outgoing(data, compress), namespace, None, parent)

    def disconnect(self, *, user: str | int, reason: str = "", code: int = 4003) -> None:
        """Close every connection of ``user`` (:meth:`Peer.identify <syncws.Peer.identify>`) on every process.

        Through the broker when there is one (a process that Redis cannot
        reach misses it); 4003 is the channels protocol's "disconnected"
        code, after which its clients do not reconnect.  Any thread.
        """
        check_close(code, reason)
        self.runtime.command({"op": "disconnect", "user": check_user(user), "reason": reason, "code": code})

    def unsubscribe(self, user: str | int, topic: str, *, namespace: str | None = None) -> None:
        """Remove ``user``'s subscriptions to ``topic`` (in ``namespace``, else every one) on every process.

        The peer's ``on_revoked`` callback is told (a channels client gets an
        ``unsubscribed`` message).  Any thread.
        """
        check_topic(topic)
        self.runtime.command({"op": "unsubscribe", "user": check_user(user), "topic": topic, "namespace": namespace})

    def history(
        self, topic: str, namespace: str | None = None, since: str | None = None, limit: int | None = None
    ) -> list[HistoryEntry]:
        """The stored publishes of ``topic`` in ``namespace``, oldest first.

        For apps that render state on load.  ``since`` (exclusive) as in
        recovery; ``limit`` keeps the newest.  ``namespace`` None: the
        namespace ``"/"``.  Empty when history is off.  Any thread; from a
        hook it blocks that hook only.  :class:`~syncws.BrokerError` when the
        Redis broker cannot be read.
        """
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise ConfigurationError(f"limit must be a non-negative integer or None, not {limit!r}")
        entries = self.runtime.history_of(topic, "/" if namespace is None else namespace, since, limit)
        return [HistoryEntry(entry.offset or "", _value_of(entry)) for entry in entries]

    def presence(self, topic: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Who is subscribed to ``topic`` now: ``[{"id": ..., "info": ...}]``.

        Every WebSocket peer subscribed to it (with the ``presence=`` info it
        passed, default None) and every event stream that passed
        ``presence=``; across every process with the Redis broker, this
        process's otherwise.  ``namespace`` None: every namespace.
        """
        return self.runtime.presence(topic, namespace)

    def presence_count(self, topic: str, namespace: str | None = None) -> int:
        """How many entries :meth:`presence` would return."""
        return self.runtime.presence(topic, namespace, count_only=True)

    def stats(self) -> dict[str, Any]:
        """What this server process is doing and has done, as plain data (any thread).

        ``connections``: open WebSocket peers and event streams, in total and
        by namespace; ``totals``: connections opened, messages and bytes
        received and sent (payload bytes; a publish counts once per
        recipient) since the start; ``overflow``: peers and streams closed
        because they stopped reading, messages dropped by the ``drop``
        policy; ``rate_limited``: messages over a peer's rate limit;
        ``refused``: upgrades and streams answered without a connection, by
        status; ``broker``: relays, drops and reconnects (the Redis broker;
        zeros in-process); ``history`` and ``presence``: stored entries and
        local presence entries; ``threads``: the pool of the ``threads``
        option (``enabled``, ``size``, ``busy``, ``queued``: waiting for a
        thread now, ``waited``: how many found every thread busy, ``tasks``:
        how many ran).  What each means for an operator:
        docs/operations.md.
        """
        result: dict[str, Any] = self.runtime.run_in_hub(self._stats)
        return result

    @hub_only
    def _stats(self) -> dict[str, Any]:
        runtime = self.runtime
        counters = runtime.counters
        by_namespace: dict[str, dict[str, int]] = {}
        for session in runtime.sessions:
            entry = by_namespace.setdefault(session.peer.namespace, {"websocket": 0, "sse": 0})
            entry["websocket"] += 1
        for stream in runtime.streams:
            entry = by_namespace.setdefault(stream.namespace, {"websocket": 0, "sse": 0})
            entry["sse"] += 1
        broker = runtime.broker
        live_drops = sum(session.outbox.dropped for session in runtime.sessions if session.outbox.policy == "drop")
        memory = runtime.history
        history = (
            {**memory.counts(), "evicted": memory.evicted}
            if memory is not None
            else {"histories": 0, "entries": 0, "evicted": 0}
        )
        return {
            "connections": {
                "websocket": len(runtime.sessions),
                "sse": len(runtime.streams),
                "by_namespace": by_namespace,
            },
            "totals": {
                "websocket_connections": counters.websocket_opened,
                "sse_connections": counters.sse_opened,
                "messages_in": counters.messages_in,
                "bytes_in": counters.bytes_in,
                "messages_out": counters.messages_out,
                "bytes_out": counters.bytes_out,
            },
            "overflow": {"closes": counters.overflow_closes, "drops": counters.overflow_drops + live_drops},
            "rate_limited": counters.rate_limited,
            "refused": dict(counters.refused),
            "broker": broker.stats(),
            "history": {"size": runtime.options.history_size, "in_redis": broker.stores_history, **history},
            "presence": {"local_entries": runtime.registry.presence_count()},
            "threads": runtime.thread_stats(),
        }

    def close_all(self, code: int = CloseCode.GOING_AWAY, reason: str = "going away") -> None:
        """Close every connected peer with ``code`` and ``reason`` (any thread)."""
        self.runtime.require_bridge().call(self._close_all, code, reason)

    def _close_all(self, code: int, reason: str) -> None:
        for session in list(self.runtime.sessions):
            session.close(code, reason)

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> Server:
        """Bind and start accepting in the current thread's hub (non-blocking).

        ListenError (an OSError) when the address cannot be bound.
        """
        global _current
        runtime = self.runtime
        first = self._listener if self._listener is not None else (self.host, self.port)
        try:
            self.add_listener(first)
        except ListenError:
            raise
        except OSError as exc:
            raise ListenError(self.host, self.port, exc) from exc
        self.port = self._wsgi[0].server_port or self.port
        hub = gevent.get_hub()
        runtime.bridge = HubBridge(hub)
        runtime.flusher = Flusher(hub)
        runtime.stream_flusher = Flusher(hub, settle=True)
        runtime.keepalive = Keepalive(runtime.sessions)
        runtime.broker.start(runtime.deliver_relayed, runtime.registry.interests)
        self._stopped = Event()
        for side in (self.metrics, self.admin):
            if side is not None:
                try:
                    side.start()
                except BaseException:
                    self.finish()
                    raise
        with _current_lock:
            _current = self
        log.debug("syncws: serving on %s", self.url)
        return self

    def add_listener(self, listener: socket.socket | tuple[str, int]) -> None:
        """Accept on one more socket (or ``(host, port)``) too, with the same state.

        The gunicorn worker serves every ``-b`` address this way; all of them
        stop with the server.
        """
        wsgi = ResilientWSGIServer(  # survives EMFILE; see listener.py
            listener,
            self.app,
            handler_class=ConnectionHandler,
            log=logging.getLogger("syncws.access") if self.access_log else None,
            error_log=logging.getLogger("syncws.error"),
            # A pool, so that stop() can end every connection greenlet: without
            # one gevent abandons them, and an idle keep-alive connection stays
            # open with nothing serving it (a browser would send its next
            # request, e.g. an EventSource reconnect, there and wait forever).
            spawn=Pool(),
            **({"ssl_context": self.ssl_context} if self.ssl_context is not None else {}),
        )
        wsgi.syncws_runtime = self.runtime
        wsgi.access_log = self.access_log
        wsgi.start()
        self._wsgi.append(wsgi)

    def serve_forever(self, *, handle_signals: bool = True) -> None:
        """Start (if needed) and block until :meth:`stop` or SIGTERM/SIGINT.

        ``handle_signals=False`` installs no signal handlers: the caller does
        (a ``--workers`` child stops on its master's SIGTERM only).
        """
        if not self._wsgi:
            self.start()
        assert self._stopped is not None
        handlers = []
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                handlers.append(gevent.signal_handler(sig, self._on_signal, sig))
        try:
            self._stopped.wait()
        finally:
            for handler in handlers:
                handler.cancel()

    def _on_signal(self, sig: int = signal.SIGINT) -> None:
        runtime = self.runtime
        if runtime.stopping or runtime.draining:
            log.warning("syncws: second signal, exiting now")
            self.finish()
            return
        if sig == signal.SIGTERM:  # a deploy or a supervisor: drain
            self._begin_drain(self.options.drain_delay, self.options.drain_period)
            return
        timeout = self.options.shutdown_timeout
        log.info("syncws: shutting down (peers have %g s to close; a second signal exits at once)", timeout)
        self._begin_stop(timeout)

    def drain(self, delay: float | None = None, period: float | None = None) -> None:
        """Stop for a deploy, without a reconnect storm: what SIGTERM does.

        At once the readiness check fails (the load balancer stops sending
        new clients here).  After ``delay`` seconds (default: the
        ``drain_delay`` option) new upgrades and event streams are answered
        503 with ``Retry-After``; the open WebSockets are closed with 1012
        (service restart: reconnect, to another instance) and the event
        streams end with a ``retry:`` hint, each at a random moment of the
        next ``period`` seconds (``drain_period``), so their reconnects
        arrive spread out.  The server ends once every connection is gone,
        or ``shutdown_timeout`` after the period.  From another thread this
        waits for the end.
        """
        options = self.options
        delay = options.drain_delay if delay is None else delay
        period = options.drain_period if period is None else period
        for name, value in (("delay", delay), ("period", period)):
            if not (value == 0 or is_seconds(value)):
                raise ConfigurationError(f"{name} must be a number of seconds, 0 or more, not {value!r}")
        bridge = self.runtime.bridge
        if bridge is None:
            return
        if bridge.in_hub_thread():
            self._begin_drain(delay, period)
            return
        bridge.call(self._begin_drain, delay, period)
        self._wait_for_thread(delay + period + options.shutdown_timeout)

    def _begin_drain(self, delay: float, period: float) -> None:
        runtime = self.runtime
        if runtime.draining or runtime.stopping:
            return
        runtime.draining = True
        log.info(
            "syncws: draining: not ready now, refusing new connections in %g s, closing the open ones over %g s "
            "(a second signal exits at once)",
            delay,
            period,
        )
        gevent.spawn(self._drain_connections, delay, period)

    def _drain_connections(self, delay: float, period: float) -> None:
        runtime = self.runtime
        gevent.sleep(delay)
        if self._over():  # a second signal ended the server meanwhile
            return
        runtime.stopping = True  # new upgrades and streams: 503 with Retry-After
        connections: list[Any] = [*runtime.sessions, *runtime.streams]
        random.shuffle(connections)
        count = len(connections)
        log.info("syncws: closing %d connections over %g s", count, period)
        start = time.monotonic()
        end = start + period
        step = period / count if count else 0.0
        earliest = start
        for index, connection in enumerate(connections):
            # Slot ``index`` of ``count`` equal slots, at a random moment within it:
            # an even spread with jitter, whatever the number of connections.  After
            # a late wake-up (a busy hub) the overdue ones follow at twice the pace,
            # not all at once, until the period is over.
            at = min(max(start + (index + random.random()) * step, earliest), end)
            wait = at - time.monotonic()
            if wait > 0:
                gevent.sleep(wait)
            if self._over():
                return
            if log.isEnabledFor(logging.DEBUG):
                log.debug("syncws: drain: closing %s", _id_of(connection), extra={"connection": _id_of(connection)})
            _restart(connection)
            earliest = time.monotonic() + step / 2
        for connection in [*runtime.sessions, *runtime.streams]:  # upgrades that were under way
            _restart(connection)
        self._drain(self.options.shutdown_timeout)

    def _over(self) -> bool:
        """Whether the server has finished (a method: it changes while a greenlet sleeps)."""
        return self.runtime.finished

    def _wait_for_thread(self, timeout: float) -> None:
        if self._thread_done is not None:
            if self._thread_done.acquire(timeout=timeout + 5):
                self._thread_done.release()

    def stop(self, timeout: float | None = None) -> None:
        """Close every peer with 1001, stop accepting and end the server.

        Peers get ``timeout`` seconds (default: the ``shutdown_timeout``
        option, 5 s) to answer the close; meanwhile new upgrade requests on
        connections that are still open get 503.  From another thread this
        waits (up to ``timeout`` plus a margin) for the server's thread to finish.
        """
        if timeout is None:
            timeout = self.options.shutdown_timeout
        bridge = self.runtime.bridge
        if bridge is None:
            return
        if bridge.in_hub_thread():
            self._begin_stop(timeout)
            return
        bridge.call(self._begin_stop, timeout)
        self._wait_for_thread(timeout)

    def _begin_stop(self, timeout: float) -> None:
        runtime = self.runtime
        if runtime.stopping:
            return
        runtime.stopping = True
        for wsgi in self._wsgi:
            wsgi.close()  # stop accepting
        self._close_all(CloseCode.GOING_AWAY, "going away")
        for stream in list(runtime.streams):
            stream.close()
        gevent.spawn(self._drain, timeout)

    def _drain(self, timeout: float) -> None:
        runtime = self.runtime
        with gevent.Timeout(timeout, False):  # False: expire quietly
            while runtime.sessions or runtime.streams or runtime.requests_in_flight:
                # A stream whose view was still running when the stop began.
                for stream in list(runtime.streams):
                    stream.close()
                gevent.sleep(0.02)
        self.finish()

    def finish(self) -> None:
        """End the server now (hub thread): no drain, connections still open are dropped.

        :meth:`stop` ends with this once its drain is over; a second signal,
        or a supervisor whose own deadline has passed, calls it directly.
        """
        global _current
        runtime = self.runtime
        if runtime.finished:
            return
        runtime.finished = True
        if runtime.keepalive is not None:
            runtime.keepalive.stop()
        runtime.stop_hook_threads()
        for side in (self.metrics, self.admin):
            if side is not None:
                side.stop()
        runtime.broker.stop()
        for wsgi in self._wsgi:
            wsgi.stop(timeout=0)
        with _current_lock:
            if _current is self:
                _current = None
        bridge, runtime.bridge = runtime.bridge, None
        if bridge is not None:
            bridge.close()
        if self._stopped is not None:
            self._stopped.set()

    def start_in_thread(self, timeout: float = 10.0) -> Server:
        """Run the server in a new OS thread with its own hub; return once bound."""
        ready = RealLock()
        ready.acquire()
        done = RealLock()
        done.acquire()
        self._thread_done = done
        failure: list[BaseException] = []

        def run() -> None:
            try:
                try:
                    self.start()
                except BaseException as exc:
                    failure.append(exc)
                    return
                finally:
                    ready.release()
                assert self._stopped is not None
                self._stopped.wait()
            finally:
                try:
                    gevent.get_hub().destroy(destroy_loop=True)
                except Exception:
                    pass
                done.release()

        start_thread(run)
        if not ready.acquire(timeout=timeout):
            raise ServerNotRunning("syncws server did not start in time")
        if failure:
            raise failure[0]
        return self

    def __repr__(self) -> str:
        return f"<syncws.Server {self.url}>"


def _id_of(connection: Any) -> str:
    """A session's peer id, or an event stream's id (for the drain's debug lines)."""
    peer = getattr(connection, "peer", None)
    return str(peer.id if peer is not None else connection.id)


def _restart(connection: Any) -> None:
    """Close one connection of a drain: 1012 for a peer, a ``retry:`` hint and the end for a stream."""
    if hasattr(connection, "peer"):  # a WebSocket session
        connection.close(CloseCode.SERVICE_RESTART, "service restart")
    else:
        # EventSource waits ``retry`` ms before it reconnects: a second or two, at random.
        connection.restart(retry=random.randint(*STREAM_RETRY_MS))


#: The ``retry:`` hint (milliseconds) of an event stream a drain ends: a random value in this range.
STREAM_RETRY_MS = (1000, 3000)


def serve(
    app: Callable[..., Any],
    host: str = "127.0.0.1",
    port: int = 3000,
    *,
    background: bool = False,
    **options: Any,
) -> Server:
    """Serve a WSGI app (a syncws ``App``, Flask, any callable) with WebSocket support.

    ``background=True`` starts the server in its own thread and returns the
    running :class:`Server` at once.  Otherwise this blocks until stopped
    (SIGTERM, Ctrl-C or :meth:`Server.stop`), logging the URL when it starts
    and a line when it stops, as ``python -m syncws`` does; when logging is
    not configured it logs to stderr.

    Options: every row of the option table (``docs/reference/options.md``:
    ``max_message_size``, ``ping_interval``, ...), and ``access_log``,
    ``broker``, ``certfile``/``keyfile`` or ``ssl_context`` (TLS: https://
    and wss://), ``gevent_websocket`` (serve an app written for
    gevent-websocket: see :mod:`syncws.compat`).
    """
    check_option_names(options, "serve()", ("listener", "gevent_websocket", "ssl_context", "admin_auth"))
    server = Server(app, host, port, **options)
    _ensure_logging(server.log_format)
    if background:
        server.start_in_thread()
        log.info("syncws: serving on %s (in a background thread; server.stop() stops it)", server.url)
        return server
    try:
        server.start()
    except ListenError as exc:
        # A script's main call: one line that says what to change, not a chained traceback.
        raise SystemExit(f"syncws: error: {exc}") from None
    log.info("syncws: serving on %s (Ctrl-C to stop)", server.url)
    server.serve_forever()
    log.info("syncws: stopped")
    return server


def _ensure_logging(log_format: str) -> None:
    """Give a foreground server's log lines somewhere to go when the program set up none.

    A program that configured logging keeps its own handlers: with
    ``log_format="json"`` it is told to put :class:`~syncws.JsonFormatter`
    on them instead.
    """
    if logging.getLogger().handlers or log.handlers:
        if log_format == "json" and not _formats_json():
            log.warning(
                "syncws: log_format='json' has no effect: logging is configured already; "
                "set syncws.JsonFormatter() on your handler (docs/operations.md)"
            )
        return
    log.addHandler(make_handler(log_format, sys.stderr))
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


def _formats_json() -> bool:
    handlers = [*logging.getLogger().handlers, *log.handlers]
    return any(isinstance(handler.formatter, JsonFormatter) for handler in handlers)


def current_server() -> Server:
    with _current_lock:
        server = _current
    if server is None:
        raise ServerNotRunning("no syncws server is running in this process")
    return server


def publish(topic: str, data: object, *, namespace: str | None = None, compress: bool | None = None) -> None:
    """Publish through the most recently started server of this process."""
    current_server().publish(topic, data, namespace=namespace, compress=compress)
