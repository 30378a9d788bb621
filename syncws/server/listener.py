"""gevent's WSGI server with an accept loop that survives running out of descriptors.

On ``EMFILE`` (and the other out-of-resources errors) gevent prints a full
traceback for every retry, forever, while the limit lasts.  Here the listener
pauses for :data:`RETRY_DELAY` seconds per failed ``accept`` (the pending
connection keeps the socket readable, so not pausing would spin the CPU), logs
one error line per :data:`LOG_INTERVAL` and one line when it accepts again.
The network errors accept(2) says to treat like ``EAGAIN`` are skipped quietly.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
import time
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer
from gevent.socket import socket as GeventSocket

from ..base.errors import ConfigurationError, ListenError
from .runtime import Runtime

if TYPE_CHECKING:
    import ssl

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: Where a connection comes from: (host, port, ...) for TCP, a path (or "") for a unix socket.
Address = tuple[Any, ...] | str

log = logging.getLogger("syncws")

#: accept() failed for want of resources: wait for some to be freed.
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: accept() failed for this one connection only (see accept(2)): take the next.
TRANSIENT_ERRORS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
    )
    if hasattr(errno, name)
)
RETRY_DELAY = 0.1
LOG_INTERVAL = 60.0
BACKLOG = 1024


def url_for(host: str, port: int, tls: bool = False) -> str:
    """The URL to print for a server bound to (host, port): a wildcard host becomes 127.0.0.1."""
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


def tls_context(
    certfile: str | None, keyfile: str | None, context: ssl.SSLContext | None = None
) -> ssl.SSLContext | None:
    """The server's TLS context: ``context`` as given, or one loaded from the files; None for plain HTTP.

    Built with :mod:`gevent.ssl`, whose sockets yield to other greenlets
    during the TLS handshake and I/O (a standard ``ssl.SSLContext`` is that
    one in a monkey-patched program; pass gevent's otherwise).
    """
    if context is not None:
        if certfile is not None or keyfile is not None:
            raise ConfigurationError("give ssl_context or certfile/keyfile, not both")
        return context
    if certfile is None:
        if keyfile is not None:
            raise ConfigurationError("keyfile needs a certfile")
        return None
    from gevent import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load the TLS certificate {certfile!r}: {exc}") from None
    return context


def bind_listener(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A listening socket to share (``--workers``, ``--reload``), non-blocking as gevent's are.

    Bound like gevent binds ``(host, port)`` in a single process: IPv6 when the
    host contains ':', else IPv4.  ListenError (an OSError) when it cannot be.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenError(host, port, exc) from exc
    except BaseException:
        sock.close()
        raise
    return sock


class ResilientWSGIServer(WSGIServer):
    """gevent's ``WSGIServer``; a failing ``accept`` and a failing ``bind`` are handled differently."""

    #: The state of the syncws server this listener serves (set by ``Server.add_listener``).
    syncws_runtime: Runtime
    #: False when the access log is off: requests are then not even formatted.
    access_log = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Sockets a Transport handed to a greenlet of their own: not closed
        #: when their HTTP handler's greenlet ends (that greenlet closes them).
        self.handed_over: set[socket.socket] = set()

    #: Accepted TCP sockets come with ``TCP_NODELAY`` already: Linux gives them
    #: their listener's, set once in :meth:`init_socket` (a syscall less per connection).
    nodelay_inherited = False

    def init_socket(self) -> None:
        super().init_socket()
        if sys.platform.startswith("linux"):
            try:
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                return  # not TCP (a Unix socket): nothing to inherit
            self.nodelay_inherited = True

    def do_close(self, sock: socket.socket, *args: object) -> None:
        if sock in self.handed_over:
            self.handed_over.discard(sock)
            return
        super().do_close(sock, *args)

    def wrap_socket_and_handle(self, client_socket: socket.socket, address: Address) -> None:
        """TLS: the handshake within ``handshake_timeout``, then the request, as for plain HTTP.

        gevent's version waits for the TLS handshake without a limit (a
        client that connects and says nothing would hold a greenlet for
        ever) and always closes the TLS socket when the request's greenlet
        ends, also one handed over to a WebSocket session.  A client that
        fails the handshake (plain HTTP on the TLS port, a stalled or bad
        TLS client) is closed without an answer; it is logged at debug level.
        """
        limit = self.syncws_runtime.options.handshake_timeout
        client_socket.settimeout(limit)
        # The socket timeout bounds each read; this bounds the whole handshake
        # (a ClientHello trickled a byte a second stayed open for ever).
        try:
            tls_socket = self.wrap_socket(client_socket, **{**self.ssl_args, "do_handshake_on_connect": False})
        except (OSError, ValueError) as exc:
            log.debug("syncws: TLS with %s failed: %s", address, exc)
            client_socket.close()
            return None
        deadline = gevent.Timeout(limit)
        deadline.start()
        try:
            tls_socket.do_handshake()
        except (OSError, ValueError, gevent.Timeout) as exc:  # ssl.SSLError and timeouts are OSErrors
            if isinstance(exc, gevent.Timeout) and exc is not deadline:
                raise  # someone else's
            log.debug("syncws: TLS handshake with %s failed: %r", address, exc)
            tls_socket.close()
            return None
        finally:
            deadline.close()
        tls_socket.settimeout(None)
        try:
            return self.handle(tls_socket, address)
        finally:
            if tls_socket in self.handed_over:
                self.handed_over.discard(tls_socket)
            else:
                tls_socket.close()

    @classmethod
    def get_listener(cls, address: Address, backlog: int | None = None, family: int | None = None) -> socket.socket:
        """gevent's listener, closed again when it cannot bind (port in use, say).

        gevent leaves that socket to the garbage collector, which may close it
        after the hub that owns it is gone.
        """
        sock: socket.socket = GeventSocket(family=family if family is not None else socket.AF_INET)
        try:
            if cls.reuse_addr is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, cls.reuse_addr)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.strerror is not None:
                    exc.strerror = f"{exc.strerror}: {address!r}"  # as gevent says it
                raise
            sock.listen(backlog if backlog is not None else cls.backlog)
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    _failures = 0
    _logged_at: float | None = None
    _logged_failure = False  # an error line went out since the last recovery line

    def do_read(self) -> Any:
        try:
            args = super().do_read()
        except OSError as exc:
            if exc.errno in TRANSIENT_ERRORS:
                return None
            if exc.errno not in RESOURCE_ERRORS:
                raise
            self._out_of_resources(exc)
            return None
        if args and self._failures:
            if self._logged_failure:
                log.warning("syncws: accepting connections again (%d accept attempts failed)", self._failures)
            self._failures = 0
            self._logged_failure = False
        return args

    def _out_of_resources(self, exc: OSError) -> None:
        self._failures += 1
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= LOG_INTERVAL:
            self._logged_at = now
            self._logged_failure = True
            log.error(
                "syncws: cannot accept connections on port %s: %s; retrying every %g s until some are closed",
                self.server_port,
                exc.strerror or exc,
                RETRY_DELAY,
            )
        self.stop_accepting()
        self._timer = self.loop.timer(RETRY_DELAY)
        # gevent's own "resume accepting" callback.
        self._timer.start(self._start_accepting_if_started)


def parse_address(text: str, what: str) -> tuple[str, int]:
    """``"127.0.0.1:9100"`` (or ``":9100"``, ``"[::1]:9100"``) as (host, port); ``what`` names the option."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigurationError(f"{what} must be HOST:PORT (e.g. 127.0.0.1:9100), not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class ClosingHandler(WSGIHandler):
    """gevent's handler, closing its buffered reader when the connection ends.

    gevent drops the reader without closing it, and the socket's real close
    waits for that reader.  Left to the garbage collector, both would be
    closed later, maybe after the hub that owns their watchers is gone
    ("operation on destroyed loop", seen under Python 3.13).  Closed here, in
    the connection's own greenlet.  The main port's handler and the side
    addresses' both build on it.
    """

    def handle(self) -> None:
        rfile = self.rfile
        try:
            super().handle()
        finally:
            try:
                rfile.close()
            except (OSError, ValueError):
                pass


class _SideHandler(ClosingHandler):
    """A side address's handler: a connection cut off by its deadline gets no 500 and no traceback."""

    def handle_error(self, kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if isinstance(value, gevent.Timeout):
            self.close_connection = True
            raise value  # on to SideServer.handle, whose deadline it is
        super().handle_error(kind, value, tb)


class SideServer(WSGIServer):
    """gevent's WSGI server for an address of our own (metrics, admin), bounded: nothing on it reaches the main port.

    A plain ``WSGIServer`` kept every idle connection for ever: 560 of them
    used up the process's descriptors and the public port stopped accepting.
    Here a pool of ``max_connections`` greenlets serves them (while it is
    full, gevent stops accepting and clients wait in the listen backlog,
    which holds no descriptor of ours), and each connection is closed
    ``connection_timeout`` after it was accepted, whatever it is doing.
    """

    connection_timeout = 10.0
    handler_class = _SideHandler

    def handle(self, sock: socket.socket, address: Address) -> None:
        sock.settimeout(self.connection_timeout)
        with gevent.Timeout(self.connection_timeout, False):
            super().handle(sock, address)


def serve_side(
    address: str, what: str, app: WSGIApplication, runtime: Runtime, *, reuse_port: bool = False
) -> SideServer:
    """Bind ``address`` (the ``what`` option's value) and serve ``app`` there, bounded (hub thread).

    The address answers the health checks too (``/health/live``,
    ``/health/ready``), before ``app``; it is bounded by the
    ``metrics_max_connections`` and ``metrics_timeout`` options.
    ``reuse_port``: every worker process binds the same address and any of
    them answers (``SO_REUSEPORT``).  ConfigurationError when it cannot be bound.
    """
    from .health import SIDE_PREFIX, routes  # health imports runtime, as this module does: no cycle

    checks = routes(runtime, SIDE_PREFIX)

    def side_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        check = checks.get(environ.get("PATH_INFO") or "")
        return (check or app)(environ, start_response)

    options = runtime.options
    host, port = parse_address(address, what)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = GeventSocket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port and hasattr(socket, "SO_REUSEPORT"):
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        listener.bind((host, port))
        listener.listen(64)
    except OSError as exc:
        listener.close()
        raise ConfigurationError(f"cannot serve {what} on {host}:{port}: {exc.strerror or exc}") from None
    server = SideServer(
        listener,
        side_app,
        log=None,
        error_log=logging.getLogger("syncws.error"),
        spawn=Pool(options.metrics_max_connections),
    )
    server.connection_timeout = options.metrics_timeout
    server.start()
    return server
