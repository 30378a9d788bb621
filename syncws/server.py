"""The syncws server: gevent's WSGI server plus the pub/sub state it owns.

A server runs its own gevent hub: in the calling thread (``serve(app)``), or
in a dedicated OS thread (``serve(app, background=True)``) so that a plain,
un-patched program can host it.  Everything that touches sockets happens in
that hub; other threads reach it through :class:`~syncws.bridge.HubBridge`.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

import gevent
from gevent.event import Event
from gevent.monkey import get_original
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

from .bridge import HubBridge, RealLock
from .broker import make_broker
from .connection import ConnectionHandler
from .flask_compat import route_upgrades_as_http
from .outbox import OVERFLOW_POLICIES, Flusher
from .payload import Outgoing
from .pubsub import Registry, fan_out

log = logging.getLogger("syncws")

_start_thread = get_original("_thread", "start_new_thread")
_current: Optional["Server"] = None
_current_lock = RealLock()

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServerOptions:
    """Connection limits; see the README's options table for why each default."""

    max_message_size: Optional[int] = MiB
    max_buffer_size: Optional[int] = MiB
    overflow: str = "close"
    close_timeout: float = 5.0

    def __post_init__(self) -> None:
        for name in ("max_message_size", "max_buffer_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive int or None, not {value!r}")
        if self.overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, not {self.overflow!r}")
        if self.close_timeout <= 0:
            raise ValueError("close_timeout must be positive")


class Server:
    def __init__(
        self,
        app: Callable,
        host: str = "127.0.0.1",
        port: int = 3000,
        *,
        access_log: bool = True,
        broker: Any = None,
        listener: Any = None,
        **options: Any,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be a WSGI callable, not {type(app).__name__}")
        route_upgrades_as_http(app)  # Flask: match upgrades as HTTP, the view decides
        self.app = app
        self.host = host
        self.port = port
        self.options = ServerOptions(**options)
        self.access_log = access_log
        self.registry = Registry()
        self.broker = make_broker(broker)
        self.registry.on_interest = self.broker.interest
        self.sessions: set = set()
        self.streams: set = set()  # open SSE streams
        self.bridge: Optional[HubBridge] = None
        self.flusher: Optional[Flusher] = None
        self._wsgi: Optional[WSGIServer] = None
        self._stopped: Optional[Event] = None
        self._stopping = False
        self._thread_done: Optional[Any] = None
        # An already-bound, listening socket to accept on instead of binding
        # (host, port); ``python -m syncws --workers N`` shares one this way.
        self._listener = listener

    # -- state ---------------------------------------------------------------
    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def peers(self) -> frozenset:
        """Every connected WebSocket peer, all namespaces (a snapshot)."""
        return self.registry.peers()

    def call_in_hub(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` in the server's hub; a no-op once the server has stopped."""
        bridge = self.bridge
        if bridge is not None:
            bridge.call(fn, *args)

    # -- pub/sub -------------------------------------------------------------
    def publish(self, topic: str, data: Any, *, namespace: Optional[str] = None) -> None:
        """Send to every subscriber of ``topic`` (in every namespace when None).

        Safe from any greenlet or OS thread: the message is serialised here,
        once, and delivery is handed to the server's hub.
        """
        self._require_running()
        outgoing = Outgoing(data)
        self.bridge.call(self._deliver, topic, outgoing, namespace)

    def _deliver(self, topic: str, outgoing: Outgoing, namespace: Optional[str]) -> None:
        self._deliver_local(topic, outgoing, namespace)
        self.broker.relay(namespace, topic, outgoing)

    def deliver_relayed(self, namespace: Optional[str], topic: str, outgoing: Outgoing) -> None:
        """A publish from another process: local subscribers only, never relayed again."""
        self.call_in_hub(self._deliver_local, topic, outgoing, namespace)

    def _deliver_local(self, topic: str, outgoing: Outgoing, namespace: Optional[str]) -> None:
        fan_out(self.registry.subscribers(topic, namespace), outgoing)

    def close_all(self, code: int = 1001, reason: str = "going away") -> None:
        """Close every connected peer with ``code`` and ``reason``."""
        self._require_running()
        self.bridge.call(self._close_all, code, reason)

    def _close_all(self, code: int, reason: str) -> None:
        for session in list(self.sessions):
            session.close(code, reason)

    def _require_running(self) -> None:
        if self.bridge is None:
            raise RuntimeError("the server is not running")

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> "Server":
        """Bind and start accepting in the current thread's hub (non-blocking)."""
        global _current
        logger = logging.getLogger("syncws.access") if self.access_log else None
        self._wsgi = WSGIServer(
            self._listener if self._listener is not None else (self.host, self.port),
            self.app,
            handler_class=ConnectionHandler,
            log=logger,
            error_log=logging.getLogger("syncws.error"),
            # A pool, so that stop() can end every connection greenlet: without
            # one gevent abandons them, and an idle keep-alive connection stays
            # open with nothing serving it (a browser would send its next
            # request, e.g. an EventSource reconnect, there and wait forever).
            spawn=Pool(),
        )
        self._wsgi.syncws = self
        self._wsgi.start()
        self.port = self._wsgi.server_port
        self.bridge = HubBridge(gevent.get_hub())
        self.flusher = Flusher(gevent.get_hub())
        self.broker.start(self)
        self._stopped = Event()
        with _current_lock:
            _current = self
        log.debug("syncws: serving on %s", self.url)
        return self

    def serve_forever(self, *, handle_signals: bool = True) -> None:
        """Start (if needed) and block until :meth:`stop` or SIGTERM/SIGINT.

        ``handle_signals=False`` installs no signal handlers: the caller does
        (a ``--workers`` child stops on its master's SIGTERM only).
        """
        if self._wsgi is None:
            self.start()
        handlers = []
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                handlers.append(gevent.signal_handler(sig, self._on_signal))
        try:
            self._stopped.wait()
        finally:
            for handler in handlers:
                handler.cancel()

    def _on_signal(self) -> None:
        if self._stopping:
            log.warning("syncws: second signal, exiting now")
            self._finish()
            return
        log.info("syncws: shutting down")
        self._begin_stop(5.0)

    def stop(self, timeout: float = 5.0) -> None:
        """Close every peer with 1001, stop accepting and end the server.

        From another thread this waits (up to ``timeout`` plus a margin) for the
        server's thread to finish.
        """
        if self.bridge is None:
            return
        if self.bridge.in_hub_thread():
            self._begin_stop(timeout)
            return
        self.bridge.call(self._begin_stop, timeout)
        if self._thread_done is not None:
            if self._thread_done.acquire(timeout=timeout + 5):
                self._thread_done.release()

    def _begin_stop(self, timeout: float) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._wsgi.close()  # stop accepting
        self._close_all(1001, "going away")
        for stream in list(self.streams):
            stream.close()
        gevent.spawn(self._drain, timeout)

    def _drain(self, timeout: float) -> None:
        with gevent.Timeout(timeout, False):
            while self.sessions or self.streams:
                gevent.sleep(0.02)
        self._finish()

    def _finish(self) -> None:
        global _current
        self.broker.stop()
        if self._wsgi is not None:
            self._wsgi.stop(timeout=0)
        with _current_lock:
            if _current is self:
                _current = None
        if self.bridge is not None:
            bridge, self.bridge = self.bridge, None
            bridge.close()
        if self._stopped is not None:
            self._stopped.set()

    def start_in_thread(self, timeout: float = 10.0) -> "Server":
        """Run the server in a new OS thread with its own hub; return once bound."""
        ready = RealLock()
        ready.acquire()
        done = RealLock()
        done.acquire()
        self._thread_done = done
        failure: list = []

        def run() -> None:
            try:
                try:
                    self.start()
                except BaseException as exc:
                    failure.append(exc)
                    return
                finally:
                    ready.release()
                self._stopped.wait()
            finally:
                try:
                    gevent.get_hub().destroy(destroy_loop=True)
                except Exception:
                    pass
                done.release()

        _start_thread(run, ())
        if not ready.acquire(timeout=timeout):
            raise RuntimeError("syncws server did not start in time")
        if failure:
            raise failure[0]
        return self

    def __repr__(self) -> str:
        return f"<syncws.Server {self.url}>"


def serve(
    app: Callable,
    host: str = "127.0.0.1",
    port: int = 3000,
    *,
    background: bool = False,
    **options: Any,
) -> Server:
    """Serve a WSGI app (a syncws ``App``, Flask, any callable) with WebSocket support.

    ``background=True`` starts the server in its own thread and returns the
    running :class:`Server` at once; otherwise this blocks until stopped.
    Options: ``max_message_size``, ``max_buffer_size``, ``overflow``,
    ``close_timeout``, ``access_log``.
    """
    server = Server(app, host, port, **options)
    if background:
        return server.start_in_thread()
    server.serve_forever()
    return server


def current_server() -> Server:
    with _current_lock:
        server = _current
    if server is None:
        raise RuntimeError("no syncws server is running in this process")
    return server


def publish(topic: str, data: Any, *, namespace: Optional[str] = None) -> None:
    """Publish through the most recently started server of this process."""
    current_server().publish(topic, data, namespace=namespace)
