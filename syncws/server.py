"""The syncws server: gevent's WSGI server plus the pub/sub state it owns.

A server runs its own gevent hub: in the calling thread (``serve(app)``), or
in a dedicated OS thread (``serve(app, background=True)``) so that a plain,
un-patched program can host it.  Everything that touches sockets happens in
that hub; other threads reach it through :class:`~syncws.bridge.HubBridge`.
"""

from __future__ import annotations

import contextvars
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
from gevent.threadpool import ThreadPool

from .bridge import HubBridge, RealLock
from .broker import make_broker
from .connection import ConnectionHandler
from .flask_compat import patch_flask
from .keepalive import Keepalive
from .limits import check_positive_int, check_seconds, normalize_origins
from .listener import ResilientWSGIServer
from .outbox import OVERFLOW_POLICIES, Flusher
from .payload import Outgoing
from .pubsub import Registry, fan_out

log = logging.getLogger("syncws")

_start_thread = get_original("_thread", "start_new_thread")
_current: Optional["Server"] = None
_current_lock = RealLock()

MiB = 1024 * 1024
DEFAULT_HOOK_THREADS = 10  # pool size for hooks_in_threads=True


@dataclass(frozen=True)
class ServerOptions:
    """Connection limits; see the README's "Limits and security" for why each default."""

    # WebSocket messages and buffers
    max_message_size: Optional[int] = MiB
    max_buffer_size: Optional[int] = MiB
    overflow: str = "close"
    close_timeout: float = 5.0
    # The HTTP request head (every request, upgrades included)
    max_request_line: int = 8192  # bytes, else 414
    max_header_size: int = 16 * 1024  # bytes of all header lines together, else 431
    max_header_count: int = 100  # else 431
    handshake_timeout: Optional[float] = 10.0  # to receive a whole request head, else 408
    # Keepalive
    ping_interval: Optional[float] = 20.0  # ping a peer after this much silence
    ping_timeout: Optional[float] = 20.0  # ... and close it with 1011 if still silent after this
    # Origins allowed to open WebSockets (None: any); requests without Origin always pass
    allowed_origins: Any = None  # None, a list of origins, or a callable(origin) -> bool
    # SIGTERM/SIGINT: how long peers get to answer the 1001 close before the server exits
    shutdown_timeout: float = 5.0
    # Run hooks in a pool of OS threads (True: 10 threads; an int: that many);
    # for hooks that block without yielding to gevent (un-patched I/O, C drivers)
    hooks_in_threads: Any = False

    def __post_init__(self) -> None:
        for name in ("max_message_size", "max_buffer_size", "max_request_line", "max_header_size", "max_header_count"):
            check_positive_int(name, getattr(self, name), optional=name in ("max_message_size", "max_buffer_size"))
        if self.overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, not {self.overflow!r}")
        check_seconds("close_timeout", self.close_timeout, optional=False)
        check_seconds("shutdown_timeout", self.shutdown_timeout, optional=False)
        for name in ("handshake_timeout", "ping_interval", "ping_timeout"):
            check_seconds(name, getattr(self, name))
        object.__setattr__(self, "allowed_origins", normalize_origins(self.allowed_origins))
        threads = self.hooks_in_threads
        if not isinstance(threads, bool):
            check_positive_int("hooks_in_threads", threads)


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
        gevent_websocket: bool = False,
        **options: Any,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be a WSGI callable, not {type(app).__name__}")
        patch_flask()  # Flask: match upgrades as HTTP, the view decides
        if gevent_websocket:
            # An app written for gevent-websocket: upgrade before calling it.
            from .compat import gevent_websocket as upgrade_first

            app = upgrade_first(app)
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
        self.requests_in_flight = 0  # requests being answered (sessions and streams included)
        self.bridge: Optional[HubBridge] = None
        self.flusher: Optional[Flusher] = None
        self.keepalive: Optional[Keepalive] = None
        self._wsgi: Optional[WSGIServer] = None
        self._stopped: Optional[Event] = None
        self._stopping = False
        self._finished = False
        self._thread_done: Optional[Any] = None
        self._hook_pool: Optional[ThreadPool] = None
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

    def run_in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in the hook thread pool; block only the calling greenlet.

        Hub thread only (the session's read loop calls it for hooks when
        ``hooks_in_threads`` is on).  The caller's context variables go along
        (a Flask app or request context, for instance); the result is
        returned and an exception, ``SystemExit`` included, re-raised here.
        """
        if self._finished:
            return fn(*args)  # the pool is gone; a last close hook runs here
        pool = self._hook_pool
        if pool is None:
            size = self.options.hooks_in_threads
            if isinstance(size, bool) or not size:
                size = DEFAULT_HOOK_THREADS
            pool = self._hook_pool = ThreadPool(size, hub=gevent.get_hub())
        ok, value = pool.apply(_run_captured, (contextvars.copy_context(), fn, args))
        if ok:
            return value
        raise value

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
        self._wsgi = ResilientWSGIServer(  # survives EMFILE; see listener.py
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
        self.keepalive = Keepalive(self)
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
        timeout = self.options.shutdown_timeout
        log.info("syncws: shutting down (peers have %g s to close; a second signal exits at once)", timeout)
        self._begin_stop(timeout)

    @property
    def stopping(self) -> bool:
        """True once a stop has begun: new upgrades are answered 503."""
        return self._stopping

    def stop(self, timeout: Optional[float] = None) -> None:
        """Close every peer with 1001, stop accepting and end the server.

        Peers get ``timeout`` seconds (default: the ``shutdown_timeout``
        option, 5 s) to answer the close; meanwhile new upgrade requests on
        connections that are still open get 503.  From another thread this
        waits (up to ``timeout`` plus a margin) for the server's thread to finish.
        """
        if timeout is None:
            timeout = self.options.shutdown_timeout
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
            while self.sessions or self.streams or self.requests_in_flight:
                # A stream whose view was still running when the stop began.
                for stream in list(self.streams):
                    stream.close()
                gevent.sleep(0.02)
        self._finish()

    def _finish(self) -> None:
        global _current
        if self._finished:
            return
        self._finished = True
        if self.keepalive is not None:
            self.keepalive.stop()
        if self._hook_pool is not None:
            # Idle threads exit; a hook still running finishes in its thread.
            pool, self._hook_pool = self._hook_pool, None
            pool.kill()
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


def _run_captured(context: contextvars.Context, fn: Callable[..., Any], args: tuple) -> tuple[bool, Any]:
    # In a pool thread: hand back (ok, result or exception) so that any
    # exception, SystemExit included, reaches the hook's caller in the hub.
    try:
        return True, context.run(fn, *args)
    except BaseException as exc:  # noqa: BLE001 - re-raised by run_in_thread
        return False, exc


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
    Options (see :class:`ServerOptions` and the README's "Limits and
    security"): ``max_message_size``, ``max_buffer_size``, ``overflow``,
    ``close_timeout``, ``max_request_line``, ``max_header_size``,
    ``max_header_count``, ``handshake_timeout``, ``ping_interval``,
    ``ping_timeout``, ``allowed_origins``, ``shutdown_timeout``,
    ``hooks_in_threads``; and ``access_log``, ``broker``, ``gevent_websocket``
    (serve an app written for gevent-websocket: see :mod:`syncws.compat`).
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
