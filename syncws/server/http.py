"""The per-connection HTTP handler of the syncws server.

It is gevent's WSGI handler with three changes: ``TCP_NODELAY`` on every
connection, a :class:`Transport` in the environ so a WebSocket handler deep in
the application can take the socket over (and an event stream can watch it),
an empty chunk flushes the response head, and nothing at all is written once a
connection has been upgraded (the WSGI response that unwinds through Flask or
middleware after the session ends is discarded).

It also guards the request head (the request line and headers), which gevent
reads without an overall deadline and with fixed limits:

* ``max_request_line`` bytes for the request line, else **414**;
* ``max_header_size`` bytes and ``max_header_count`` lines of headers, else
  **431** (gevent would parse up to 100 lines of 64 KiB each and print a
  traceback for the 101st);
* ``handshake_timeout`` seconds to receive the whole head, else **408** (a
  slowloris client trickling bytes is cut off; a keep-alive connection on
  which no new request has begun is closed quietly after the same time);
* any other malformed head gets **400**.

Each answer is a short ``text/plain`` body with ``Connection: close``; the
connection is then closed after a brief "lingering close" (our side shut for
writing, the client's remaining bytes read and discarded for at most a
second) so that the client reads the answer instead of a connection reset.
"""

from __future__ import annotations

import enum
import functools
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import gevent
from gevent.pywsgi import OldMessage

from ..base.errors import RequestHeadError
from ..protocol.limits import ForwardedHeader, client_address
from .listener import ClosingHandler, ResilientWSGIServer
from .outbox import send_all
from .runtime import Runtime

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import InputStream, StartResponse, WSGIApplication

    from ..base.options import ServerOptions

log = logging.getLogger("syncws")
ACCESS_LOG = logging.getLogger("syncws.access")

#: environ key under which the syncws server exposes the connection.
TRANSPORT_KEY = "syncws.transport"

_FOLD_WHITESPACE = " \t\r\n"
_AFTER_HEAD = 64 * 1024  # what Transport.accept takes from the HTTP reader at most
LINGER_TIME = 1.0  # seconds to read and discard a rejected client's leftover bytes
LINGER_BYTES = 256 * 1024  # ... and at most this many


def _short_response(status: str, text: str) -> bytes:
    body = (text + "\n").encode("utf-8")
    head = (
        f"HTTP/1.1 {status}\r\n"
        "Connection: close\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class Transport:
    """What a WebSocket handler needs from the server to take a connection over."""

    __slots__ = (
        "_at_end",
        "_listener",
        "aborted",
        "body_bytes",
        "chunked",
        "handed_over",
        "hub_body",
        "remote_address",
        "reusable",
        "rfile",
        "runtime",
        "socket",
        "upgraded",
    )

    def __init__(
        self,
        sock: socket.socket,
        rfile: Any,
        runtime: Runtime,
        remote_address: str | None,
        listener: ResilientWSGIServer | None = None,
    ) -> None:
        self.socket = sock
        self.rfile = rfile
        self.runtime = runtime
        self.remote_address = remote_address
        self._listener = listener
        self.upgraded = False
        self.handed_over = False  # hand_over() was called: the HTTP handler must let go of the socket
        self.reusable = True  # False: close the connection after this response
        self.aborted = False  # abort() was called: errors on this socket are expected
        #: The response body must be iterated in the hub (an event stream's), even when
        #: the view ran in the thread pool.
        self.hub_body = False
        #: Set once the response head has gone out for an empty first chunk: the
        #: body may then write to the socket itself (an event stream does), as
        #: HTTP chunks when True.  None: it must go through the WSGI iterable.
        self.chunked: bool | None = None
        self.body_bytes = 0  # ... and what it handed to the socket so (for the access log)
        self._at_end: list[Callable[[], object]] = []

    def at_end(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` once this request's response is over, whatever happened."""
        self._at_end.append(callback)

    def finish(self) -> None:
        callbacks, self._at_end = self._at_end, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("syncws: error in end-of-request cleanup")

    def abort(self) -> None:
        """Close the connection now, even under a write blocked on a client that stopped reading.

        ``shutdown`` alone does not wake such a write (the kernel keeps the
        unsent bytes and waits for the client's window); closing the socket
        does, with an error that the handler then ends quietly.
        """
        self.aborted = True
        self.reusable = False
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.socket.close()

    def accept(self, head: bytes) -> bytes:
        """Write the ``101`` head and hand the socket over; return the bytes already received.

        From now on the socket belongs to the session, which reads it with
        ``recv``.  A client may send frames right behind its upgrade request:
        those may sit in the HTTP reader's buffer, so one non-blocking read
        takes them (and whatever the socket has now).  The reader is then
        closed, which frees its 8 KiB buffer and leaves the socket open: an
        idle peer keeps no read buffer at all (a buffered ``read1(64 KiB)``
        allocates its 64 KiB before it waits, for as long as the peer is idle).
        """
        self.upgraded = True
        sock = self.socket
        send_all(sock, head)
        received = b""
        try:
            timeout = sock.gettimeout()
            sock.settimeout(0.0)
            try:
                received = self.rfile.read1(_AFTER_HEAD) or b""
            finally:
                sock.settimeout(timeout)
        except (OSError, ValueError):
            pass  # the client is already gone: the session's first recv says so
        self.rfile.close()
        self.rfile = None
        return received

    def hand_over(self, run: Callable[[], Any]) -> bool:
        """Serve the rest of the connection with ``run`` in a greenlet of its own.

        The HTTP handler's greenlet then ends, and with it everything the
        request left on its stack: the handler object, its parsed head, the
        routing state and a deep saved C stack.  For an idle WebSocket that is
        about a quarter of what it costs (docs/performance.md).  The new
        greenlet joins the listener's pool, so a stop still ends it; ``run``
        must close the socket when it is done.  Returns False (and does
        nothing) when there is no listener to hand over to.
        """
        listener = self._listener
        if listener is None:
            return False
        self.handed_over = True
        listener.handed_over.add(self.socket)
        listener.pool.start(_ConnectionGreenlet(_serve_handed_over, run, self.socket))
        return True


if TYPE_CHECKING:
    _Greenlet: TypeAlias = gevent.Greenlet[[], None]
else:
    _Greenlet = gevent.Greenlet  # not subscriptable at run time


class _ConnectionGreenlet(_Greenlet):
    """A connection's greenlet after the hand-over.

    gevent records the spawner's stack (ten frames) in every greenlet for
    debugging; for a greenlet that lives as long as its connection that is
    about a kilobyte each, for a stack nobody looks at.
    """

    spawning_stack_limit = 0


def _serve_handed_over(run: Callable[[], object], sock: socket.socket) -> None:
    try:
        run()
    except Exception:
        # What gevent's handler did when the session ran in its greenlet:
        # log, and close the socket that ``run`` did not get to close.
        log.exception("syncws: error in a WebSocket session")
        sock.close()


class _RequestHeaders(OldMessage):
    """The request's headers as gevent expects them, with ``get`` answered from a dict.

    gevent asks for a header six times per request, and ``email``'s ``get``
    lowers every header's name on each ask and runs three more functions per
    answer: with this class a handshake makes 547 Python calls, with
    ``OldMessage`` 573 (``python3 scripts/profile calls handshake``).  The
    answers are the same: the first value under the name, as compat32 gives
    it for text decoded from ISO-8859-1 (which holds no surrogates).  gevent
    only reads these headers and deletes one (Content-Length beside chunked).
    """

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        super().__init__()
        self._headers = pairs  # email.message.Message's own storage
        first: dict[str, str] = {}
        for name, value in pairs:
            first.setdefault(name.lower(), value)
        self._first = first

    def get(self, name: str, failobj: Any = None) -> Any:
        return self._first.get(name.lower(), failobj)

    def __delitem__(self, name: str) -> None:  # gevent drops Content-Length beside chunked
        super().__delitem__(name)
        self._first.pop(name.lower(), None)


class ConnectionHandler(ClosingHandler):
    status: Any  # gevent's: the status line, str or bytes depending on where it was set
    socket: Any  # gevent's; None once the connection is handed over (Transport.hand_over)
    result: Iterable[bytes] | None  # gevent's: the app's response body while it is sent
    code: int  # gevent's: the response's status code (negated after a failed write)

    @functools.cached_property  # read about seven times per request
    def runtime(self) -> Runtime:
        """The state of the syncws server this connection belongs to."""
        server = self.server
        assert isinstance(server, ResilientWSGIServer)
        return server.syncws_runtime

    def process_result(self) -> None:
        # Like gevent's, except that an empty chunk before the head has gone
        # out sends the head now: a streaming response (SSE) yields b"" so the
        # client sees the 200 before the first event.
        for data in self.result or ():
            if data:
                self.write(data)
            elif not self.headers_sent and self.status:
                self.write(b"")
                self._open_raw_body()
        if self.status and not self.headers_sent:
            self.write(b"")
        if self.response_use_chunked:
            self._sendall(b"0\r\n\r\n")  # gevent's

    def _open_raw_body(self) -> None:
        """Let the body write to the socket itself: its head is out, nothing of it yet.

        Not when a middleware has declared a body of its own (a length, an
        encoding such as gzip): the bytes must then go through it.
        """
        declared = {name.lower() for name, _value in self.response_headers}  # gevent's: latin-1 bytes
        if b"content-length" not in declared and b"content-encoding" not in declared:
            self.environ[TRANSPORT_KEY].chunked = bool(self.response_use_chunked)

    def _sendall(self, data: bytes | bytearray) -> None:
        """gevent's, without the ``getsockopt(SO_SNDBUF)`` (:func:`~syncws.server.outbox.send_all`)."""
        try:
            total = send_all(self.socket, data)
        except OSError as exc:  # as gevent's: the access log shows it, the code turns negative
            self.status = f"socket error: {exc}"
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += total

    def handle(self) -> None:
        if not self.server.nodelay_inherited:  # (ResilientWSGIServer.init_socket)
            try:
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # not TCP (unix socket) or already closed
        super().handle()  # ClosingHandler's: the reader is closed at the end

    # -- the request head ---------------------------------------------------
    def handle_one_request(self) -> bool | None:
        """gevent's, with limits and a deadline on reading the request head."""
        if self.rfile.closed:
            return None
        options = self.runtime.options
        self._head_started = False
        self.response_length = 0
        timer = gevent.Timeout(options.handshake_timeout)  # None: never fires
        timer.start()
        try:
            try:
                outcome = self._read_head(options)
            except gevent.Timeout as exc:
                if exc is not timer:
                    raise
                outcome = self._head_timed_out(options.handshake_timeout)
        finally:
            timer.close()
        if isinstance(outcome, RequestHeadError):
            self._reject(outcome)  # outside the deadline: it must not cut the answer
            return None
        if not outcome:
            return None  # nothing to answer: close the connection
        self.environ = self.get_environ()
        self.application = self.server.application
        runtime = self.runtime
        runtime.requests_in_flight += 1  # a stop waits for these (within its timeout)
        try:
            self.handle_one_response()
        finally:
            runtime.requests_in_flight -= 1
        if self.environ[TRANSPORT_KEY].handed_over:
            # Another greenlet serves the socket now: gevent must neither read
            # from it nor close it when this handler ends (see the listener's do_close).
            self.socket = None
            return None
        if self.close_connection or self.rfile.closed:
            return None
        return True  # keep-alive: read the next request

    def _read_head(self, options: ServerOptions) -> bool | RequestHeadError:
        """Read and parse the request line and headers.

        True: a request to serve; False: the client is gone, close quietly;
        a :class:`RequestHeadError`: answer it and close.
        """
        rfile = self.rfile
        limit = options.max_request_line
        try:
            if not rfile.peek(1):
                return False  # the client closed between requests
            self._head_started = True
            raw = rfile.readline(limit + 2)  # + room for CRLF
        except (OSError, ValueError):
            return False
        if not raw:
            return False
        line = raw.rstrip(b"\r\n")
        if len(line) > limit:
            self.requestline = line[:64].decode("latin-1") + "..."
            return RequestHeadError(414, f"Request line longer than {limit} bytes")
        if not raw.endswith(b"\n"):
            return False  # EOF in the middle of the request line
        self.requestline = line.decode("latin-1")
        try:
            # gevent's parsing; it reads the headers through MessageClass below.
            if not self.read_request(self.requestline):
                return RequestHeadError(400, "Bad request")
        except RequestHeadError as exc:
            return exc
        except (ConnectionError, TimeoutError, EOFError):
            return False
        except Exception as exc:  # gevent's _InvalidClientRequest, a bad Content-Length, ...
            log.info("syncws: bad request from %s: %s", self._client_ip(), exc)
            return RequestHeadError(400, "Bad request")
        return True

    def MessageClass(self, fp: Any, *args: Any) -> Any:
        """The headers, read within ``max_header_size`` bytes and ``max_header_count`` lines.

        Parsed here, line by line, into the message class gevent expects,
        rather than through ``email.parser`` (which ``http.client`` uses): with
        it, an upgrade cost 1.36 times the raw gevent-websocket stack's server
        CPU, without it 1.07 (``scripts/bench_compare``).  The result is what
        ``email``'s compat32 policy gives for well-formed headers.  What it
        would have accepted from a malformed head is refused with 400 instead,
        as RFC 7230 §3.2 asks: a line without a colon, an empty name,
        whitespace before the colon, a continuation line first.  An obsolete
        line folding (a line starting with a space) is joined to the header it
        continues with one space (§3.2.4).
        """
        options = self.runtime.options
        max_size, max_count = options.max_header_size, options.max_header_count
        pairs: list[tuple[str, str]] = []
        size = 0
        while True:
            line = fp.readline(max_size - size + 3)  # room for the blank line's CRLF
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise EOFError("connection closed in the request headers")
            size += len(line)
            if size > max_size:
                raise RequestHeadError(431, f"Request headers larger than {max_size} bytes")
            if not line.endswith(b"\n"):
                raise EOFError("connection closed in the request headers")
            text = line.decode("iso-8859-1")
            if text[0] in " \t":
                if not pairs:
                    raise RequestHeadError(400, "A continuation line before any header")
                name, value = pairs[-1]
                pairs[-1] = (name, value + " " + text.strip(_FOLD_WHITESPACE))
                continue
            name, colon, value = text.partition(":")
            if not colon or not name:
                raise RequestHeadError(400, "A header line without a name and a colon")
            if name != name.rstrip(" \t"):
                # RFC 7230 §3.2.4: MUST be refused with 400; proxies disagree
                # on such a name, which is what smuggling attacks use.
                raise RequestHeadError(400, "Whitespace between a header name and its colon")
            pairs.append((name, value.lstrip(" \t").rstrip("\r\n")))
            if len(pairs) > max_count:
                raise RequestHeadError(431, f"More than {max_count} request headers")
        return _RequestHeaders(pairs)

    def _head_timed_out(self, timeout: float | None) -> bool | RequestHeadError:
        if not self._head_started:
            return False  # an idle keep-alive connection: nothing to answer
        if not getattr(self, "requestline", None):
            self.requestline = "-"
        return RequestHeadError(408, f"Request head not received within {timeout or 0:g} s")

    def _reject(self, error: RequestHeadError) -> None:
        """Answer a broken request head with its status; the caller then closes."""
        status = f"{error.status} {HTTPStatus(error.status).phrase}"
        text = error.message
        log.info("syncws: %s from %s: %s", status.split()[0], self._client_ip(), text)
        response = _short_response(status, text)
        self.status = status.encode("latin-1")  # gevent keeps it as bytes
        self._orig_status = status
        self.response_length = len(response)
        self.close_connection = True
        try:
            send_all(self.socket, response)
        except OSError:
            return
        self.time_finish = time.time()
        self.log_request()
        self._linger()

    def _linger(self) -> None:
        """Shut our side, then swallow what the client still sends (bounded).

        Closing a socket with unread input makes the kernel send a reset,
        which can destroy our answer before the client has read it.
        """
        sock = self.socket
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        received = 0
        with gevent.Timeout(LINGER_TIME, False):  # False: expire quietly
            try:
                while received < LINGER_BYTES:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    received += len(chunk)
            except OSError:
                pass

    def _client_ip(self) -> str:
        address: Any = self.client_address
        return str(address[0] if isinstance(address, tuple) else address or "-")

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> Callable[[bytes], object]:
        if self.runtime.stopping and not any(name.lower() == "connection" for name, _ in headers):
            # Draining: answer, then close, so the client does not reuse the connection.
            headers = [*headers, ("Connection", "close")]
        return super().start_response(status, headers, exc_info)

    def log_request(self) -> None:
        # gevent formats the access-log line (a datetime, the status, the
        # timing) even when its log is a no-op: 3-4% of a WebSocket
        # handshake's CPU, for nothing, when the access log is off.
        if not self.server.access_log or not ACCESS_LOG.isEnabledFor(logging.INFO):
            return
        # gevent's line, with the request's fields for a structured format (--log-format json).
        status = self._orig_status or self.status or b"0"
        if isinstance(status, bytes):
            status = status.decode("latin-1")
        started, finished = getattr(self, "time_start", None), getattr(self, "time_finish", None)
        environ = self.environ or {}
        transport = environ.get(TRANSPORT_KEY)
        ACCESS_LOG.info(
            "%s",
            self.format_request(),
            extra={
                "method": getattr(self, "command", None),
                "path": environ.get("PATH_INFO"),
                "status": int(status.split()[0]) if status[:3].isdigit() else None,
                "remote": transport.remote_address if transport is not None else self._client_ip(),
                "duration": round(finished - started, 6) if started and finished else None,
                "bytes": self.response_length,
            },
        )

    def _call_application(
        self, application: WSGIApplication, environ: dict[str, Any], transport: Transport
    ) -> Iterable[bytes]:
        """Call the app here, in the connection's greenlet, or in the thread pool (the ``threads`` option).

        In the pool, a view that blocks (``time.sleep``, a C driver) holds one
        pool thread, never the hub.  What the view touches of the connection
        goes through the hub: the request body (:class:`HubInput`), the
        ``write`` callable of ``start_response``, a WebSocket upgrade (see
        ``handler.py``).  A body that may block (a generator) is pulled in the
        pool too, a chunk per hand-off (:class:`ThreadedBody`); a list, and an
        event stream's body, are iterated here.
        """
        runtime = self.runtime
        route = runtime.routes.get(environ["PATH_INFO"]) if runtime.routes else None
        if route is not None:  # a health check or the admin API: the server's own, in the hub
            return route(environ, self.start_response)
        if not runtime.threaded or getattr(application, "syncws_in_hub", False):
            return application(environ, self.start_response)
        environ["wsgi.input"] = HubInput(environ["wsgi.input"], runtime)
        return runtime.run_in_thread(_open_body, application, environ, self._start_response_in_thread, transport)

    def _start_response_in_thread(
        self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> Callable[[bytes], object]:
        self.start_response(status, headers, exc_info)
        runtime = self.runtime
        return lambda data: runtime.run_in_hub(self.write, data, spawn=True)  # PEP 3333's write(), through the hub

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        client: Any = self.client_address  # (host, port), or a path for a unix socket
        address = client[0] if isinstance(client, tuple) else client
        trusted = self.runtime.options.trusted_proxies
        if trusted:
            kind = ForwardedHeader(self.runtime.options.forwarded_header)
            address = client_address(address or None, environ.get(kind.environ_key), trusted, kind)
        environ[TRANSPORT_KEY] = Transport(self.socket, self.rfile, self.runtime, address or None, self.server)
        return environ

    def run_application(self) -> None:
        environ = self.environ
        application = self.application
        assert environ is not None and application is not None
        transport = environ[TRANSPORT_KEY]
        try:
            try:
                self.result = self._call_application(application, environ, transport)
            except Exception:
                if not transport.upgraded:
                    raise  # gevent answers 500 as usual
                # After a 101 an HTTP error page would corrupt the stream.
                log.exception("syncws: error after the WebSocket session ended")
            if transport.upgraded:
                # The session has ended; the socket is closed.  Write nothing.
                self.close_connection = True
                self.status = "101 Switching Protocols"
                self._orig_status = self.status
                return
            try:
                self.process_result()
            except OSError:
                if not transport.aborted:
                    raise
                self.close_connection = True  # we hung up on purpose (abort); nothing to report
                return
            if not transport.reusable:
                self.close_connection = True
        finally:
            close = getattr(self.result, "close", None)
            try:
                if close is not None:
                    close()
            finally:
                close = None
                self.result = None
                self.response_length += transport.body_bytes
                transport.finish()


class _End(enum.Enum):
    END = "end"  # what ThreadedBody's next chunk is once the body is over


_END: Final = _End.END


def _open_body(
    application: WSGIApplication, environ: dict[str, Any], start_response: StartResponse, transport: Transport
) -> Iterable[bytes]:
    # In a pool thread: the app's call, and the first chunk of a body that may block.
    result = application(environ, start_response)
    if transport.upgraded or transport.hub_body or isinstance(result, (list, tuple)):
        return result
    return ThreadedBody(result, transport.runtime)


class ThreadedBody:
    """A response body whose chunks are pulled in the thread pool: a generator may block there.

    Made in a pool thread, where it takes the first chunk at once (one
    hand-off for the call and the first chunk); each later chunk is one more
    hand-off, and so is the end (where the app's ``close`` runs, in the pool).
    """

    def __init__(self, result: Iterable[bytes], runtime: Runtime) -> None:
        self._result = result
        self._runtime = runtime
        self._iterator = iter(result)
        self._closed = False
        self._first = self._next()

    def _next(self) -> bytes | _End:
        chunk = next(self._iterator, _END)
        if chunk is _END:
            self._close()
        return chunk

    def __iter__(self) -> Iterator[bytes]:
        chunk, self._first = self._first, _END
        while chunk is not _END:
            yield chunk
            chunk = self._runtime.run_in_thread(self._next)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            close = getattr(self._result, "close", None)
            if close is not None:
                close()

    def close(self) -> None:
        if not self._closed:
            self._runtime.run_in_thread(self._close)


class HubInput:
    """The request body for a view in the thread pool: each read runs in the hub, which owns the socket."""

    __slots__ = ("_input", "_runtime")

    def __init__(self, wsgi_input: InputStream, runtime: Runtime) -> None:
        self._input = wsgi_input
        self._runtime = runtime

    def read(self, size: int | None = -1) -> bytes:
        return self._runtime.run_in_hub(self._input.read, _size(size), spawn=True)

    def readline(self, size: int | None = -1) -> bytes:
        return self._runtime.run_in_hub(self._input.readline, _size(size), spawn=True)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return self._runtime.run_in_hub(self._input.readlines, _size(hint), spawn=True)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


def _size(size: int | None) -> int:
    # io's None ("read all") is PEP 3333's -1: the server's input takes an int.
    return -1 if size is None else size
