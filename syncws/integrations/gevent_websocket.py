"""Run apps written for gevent-websocket on the syncws server, unchanged.

gevent-websocket upgrades *before* it calls the application: the app finds a
ready WebSocket at ``environ["wsgi.websocket"]`` and loops over its blocking
``receive()``::

    def app(environ, start_response):
        ws = environ["wsgi.websocket"]
        while not ws.closed:
            message = ws.receive()
            if message is None:
                break
            ws.send(message)
        return []

:func:`gevent_websocket` wraps such an app (``serve(app,
gevent_websocket=True)`` does it for you).  For an upgrade request it runs
the syncws handshake (origin check, 503 while stopping, ...) through the same
code as :class:`~syncws.websocket.WebSocketHandler`, then calls the app with a
:class:`WebSocket` in the environ.  Frames are read by the syncws session
(limits, keepalive pings and timeouts, the close handshake, the 1001 on
shutdown) and written through its outbox; ``receive()`` takes them from a
small inbox, so a slow app slows the reading down instead of buffering
without bound.  Other requests go to the app untouched.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import geventwebsocket.exceptions
from gevent.event import Event

from ..base.errors import ConfigurationError, SyncwsError
from ..base.options import check_overrides
from ..protocol import handshake
from ..protocol.frames import CLOSE_INTERNAL_ERROR, CLOSE_NORMAL, OP_BINARY, OP_TEXT, encode_frame
from ..protocol.message import Message
from ..server.handler import WebSocketHandler
from ..server.hooks import CloseDetails, Hooks
from ..server.http import TRANSPORT_KEY
from ..server.peer import Peer
from ..server.server import APP_WRAPPERS
from ..server.session import Session

log = logging.getLogger("syncws")


class WebSocketError(geventwebsocket.exceptions.WebSocketError, SyncwsError):  # apps catch gevent-websocket's
    """Raised by :meth:`WebSocket.send` on a closed WebSocket, as gevent-websocket does."""


#: Received messages waiting for ``receive()``; when full, the session stops
#: reading the socket until the app catches up (TCP backpressure).
INBOX_SIZE = 16


class _Inbox:
    """A bounded queue between the session's read loop and the app (hub thread only)."""

    def __init__(self, size: int) -> None:
        self.items: deque[str | bytes] = deque()
        self.size = size
        self.ended = False  # the session is over: nothing more will arrive
        self.dropped = False  # the app has returned: nobody will read
        self._ready = Event()
        self._space = Event()
        self._space.set()

    def put(self, item: str | bytes) -> None:
        while len(self.items) >= self.size and not self.dropped:
            self._space.clear()
            self._space.wait()
        if not self.dropped:
            self.items.append(item)
            self._ready.set()

    def get(self) -> str | bytes | None:
        """The next message, or None once the session ended and all were taken."""
        while not self.items:
            if self.ended or self.dropped:
                return None
            self._ready.clear()
            self._ready.wait()
        item = self.items.popleft()
        if len(self.items) < self.size:
            self._space.set()
        return item

    def end(self) -> None:
        self.ended = True
        self._ready.set()

    def drop(self) -> None:
        self.dropped = True
        self.items.clear()
        self._ready.set()
        self._space.set()


class WebSocket:
    """What gevent-websocket puts at ``environ["wsgi.websocket"]``, backed by a syncws session.

    Use it from the greenlet the app runs in (as with gevent-websocket);
    ``send`` and ``close`` also work from other greenlets and OS threads.
    """

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.version = "13"
        self._session: Session | None = None
        self._inbox = _Inbox(INBOX_SIZE)
        self._closed_here = False

    # -- gevent-websocket's attributes ---------------------------------------
    @property
    def path(self) -> str | None:
        return self.environ.get("PATH_INFO")

    @property
    def origin(self) -> str | None:
        return self.environ.get("HTTP_ORIGIN")

    @property
    def protocol(self) -> str | None:
        return self._session.protocol if self._session is not None else None

    @property
    def peer(self) -> Peer | None:
        """The syncws :class:`~syncws.peer.Peer`: subscribe to topics, ``peer.server.publish``..."""
        return self._session.peer if self._session is not None else None

    @property
    def closed(self) -> bool:
        """True once closed, except that messages received before a client's close are still readable."""
        session = self._session
        if session is None or self._closed_here:
            return True
        return session.closed and not self._inbox.items

    # -- reading and writing -------------------------------------------------
    def receive(self) -> str | bytes | None:
        """Block until a message arrives: ``str`` (text), ``bytes`` (binary), or None once closed."""
        if self._closed_here:
            return None
        message: str | bytes | None = self._inbox.get()
        return message

    read_message = receive

    def send(self, message: str | bytes | bytearray | memoryview, binary: bool | None = None) -> None:
        """Send a message; text unless ``binary`` (default: binary for bytes-like values)."""
        session = self._session
        if session is None or session.closed or self._closed_here:
            raise WebSocketError("Socket is dead")
        if binary is None:
            binary = not isinstance(message, str)
        payload = message.encode("utf-8") if isinstance(message, str) else bytes(message)
        frame = encode_frame(OP_BINARY if binary else OP_TEXT, payload)
        session.runtime.post_to_hub(_put, session, frame)

    def close(self, code: int = 1000, message: bytes | str = b"") -> None:
        """Start the close handshake with ``code``; a no-op when already closed."""
        session = self._session
        if session is None or self._closed_here:
            return
        self._closed_here = True
        reason = message.decode("utf-8", "replace") if isinstance(message, (bytes, bytearray)) else str(message)
        session.runtime.post_to_hub(_close, session, code, reason)

    # -- the session's hooks (hub thread) ------------------------------------
    def _on_message(self, peer: Peer, message: Message) -> None:
        self._inbox.put(message.raw_data)

    def _on_close(self, peer: Peer, details: CloseDetails) -> None:
        self._inbox.end()

    def __repr__(self) -> str:
        return f"<syncws.compat.WebSocket {self.path!r} {'closed' if self.closed else 'open'}>"


def _put(session: Session, frame: bytes) -> None:
    if not session.closed:
        session.outbox.put(frame)


def _close(session: Session, code: int, reason: str) -> None:
    try:
        session.close(code, reason)
    except ConfigurationError:  # an invalid code: close as gevent-websocket would, with 1000
        session.close(CLOSE_NORMAL, reason)


def _no_start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> Callable[[bytes], None]:
    # After the 101 nothing the app "answers" can reach the client.
    return lambda data: None


class GeventWebSocketApp:
    """The WSGI wrapper :func:`gevent_websocket` returns."""

    #: An app written for gevent-websocket waits on gevent objects: the server
    #: calls it in the hub, never in the thread pool (see the ``threads`` option).
    syncws_in_hub = True

    def __init__(self, app: Callable[..., Any], **overrides: Any) -> None:
        self.app = app
        # The inbox and its events belong to the hub: these hooks never run
        # in the thread pool, whatever the server's threads option says.
        self.overrides = {**overrides, "threads": "off"}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if (
            "wsgi.websocket" in environ  # already upgraded (run by gevent-websocket itself)
            or TRANSPORT_KEY not in environ  # not the syncws server: it cannot upgrade
            or not handshake.is_upgrade_request(environ)
        ):
            result: Iterable[bytes] = self.app(environ, start_response)
            return result
        socket = WebSocket(environ)
        handler = WebSocketHandler(Hooks(message=socket._on_message, close=socket._on_close), self.overrides)
        outcome = handler.accept(environ)
        if not isinstance(outcome, Session):
            if outcome is None:  # the client left during the handshake
                start_response("101 Switching Protocols", [])
                return []
            refused: Iterable[bytes] = outcome(environ, start_response)  # 400, 403, 503...
            return refused
        socket._session = outcome
        environ["wsgi.websocket"] = socket
        environ["wsgi.websocket_version"] = socket.version
        reader = gevent.spawn(outcome.run)  # the read loop; the app keeps this greenlet
        try:
            result = self.app(environ, _no_start_response)
            close = getattr(result, "close", None)
            if close is not None:
                close()
        except Exception:
            log.exception("syncws: gevent-websocket app raised for %s", environ.get("PATH_INFO"))
            socket._closed_here = True
            outcome.runtime.post_to_hub(_close, outcome, CLOSE_INTERNAL_ERROR, "internal error")
        finally:
            socket._inbox.drop()  # unblocks a read loop waiting for room
            socket.close()  # 1000 when the app returned with the connection open
            reader.join()  # the close handshake (bounded by close_timeout)
        start_response("101 Switching Protocols", [])
        return []

    def __getattr__(self, name: str) -> Any:  # e.g. a Flask app's attributes
        return getattr(self.app, name)

    def __repr__(self) -> str:
        return f"<syncws.compat.gevent_websocket {self.app!r}>"


def gevent_websocket(app: Callable[..., Any], **overrides: Any) -> GeventWebSocketApp:
    """Wrap a WSGI app written for gevent-websocket so it runs on the syncws server.

    ``overrides`` are the per-handler settings of ``define_websocket_handler``
    (``max_message_size``, ``ping_interval``, ``ping_timeout``,
    ``allowed_origins``); by default the server's apply.
    """
    if "threads" in overrides:
        raise TypeError("threads does not apply: a gevent-websocket app runs in its own greenlet, in the hub")
    return GeventWebSocketApp(app, **check_overrides(overrides))


APP_WRAPPERS["gevent_websocket"] = gevent_websocket
