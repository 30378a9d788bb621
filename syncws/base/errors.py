"""Every exception syncws raises on purpose, under one base class.

::

    SyncwsError
    ├── ConfigurationError (also ValueError)   an option or argument has a bad value
    ├── ServerNotRunning (also RuntimeError)   publish()/close_all() with no server running
    ├── DependencyMissing (also RuntimeError)  an optional extra is not installed
    ├── ImportStringError                      ``module:app`` names no WSGI callable
    ├── ListenError (also OSError)             the address cannot be bound (in use, no permission)
    ├── BrokerError (also ConnectionError)     the broker (Redis) could not answer a read
    ├── ProtocolError                          the peer broke RFC 6455; ``code`` is the close code
    ├── Refused                                a channels hook says no; ``reason`` goes to the client
    ├── RPCError                               a channels RPC fails with ``code`` and ``message`` for the client
    ├── RequestFailed                          (client) the server answered a request with an error
    ├── ClientClosed (also ConnectionError)    (client) the connection ended for good; ``code``, ``reason``
    └── HTTPError                              a request is refused; ``status``, ``message``, ``headers``
        ├── HandshakeError                     a malformed WebSocket upgrade request
        └── RequestHeadError                   a request head over the limits or malformed

Five classes outside this module join the family, each beside what it must
also be: ``NoTransportError`` (an event stream under a server that is not
syncws; also werkzeug's ``InternalServerError`` so frameworks render it as a
500) and ``ConnectionLimitError`` (an event stream over a connection cap; a
werkzeug ``HTTPException`` answered with 503 or 429), both in
``server/streams.py``; the test client's ``ConnectionClosed`` and
``HandshakeRefused`` (``integrations/testing.py``: the second carries the test
client's ``Response``); and the gevent-websocket compatibility layer's
``WebSocketError`` (also gevent-websocket's own class, which such apps catch).
Decision: they stay there.  Here, the two HTTP ones would make this module,
which ``import syncws`` loads, import werkzeug (the lazy package's whole
saving) and tie the base layer to it; the test client's two name a type of a
layer above this one.

Why the double bases: code that predates the hierarchy, and callers who know
only the standard library, catch ``ValueError`` or ``RuntimeError``; those
keep working, while ``except SyncwsError`` catches everything syncws means.
Bad types (a hook that is not callable, an app that is not a WSGI callable)
stay plain ``TypeError``, as Python itself raises them.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence


class SyncwsError(Exception):
    """Base class of every exception syncws raises on purpose."""


class ConfigurationError(SyncwsError, ValueError):
    """An option or argument has a value syncws cannot use."""


class ServerNotRunning(SyncwsError, RuntimeError):
    """An operation needs a running server and there is none."""


class DependencyMissing(SyncwsError, RuntimeError):
    """An optional dependency (an extra such as ``syncws[redis]``) is not installed."""


class ImportStringError(SyncwsError):
    """The ``module:app`` string does not name a WSGI callable."""


class ListenError(SyncwsError, OSError):
    """The server cannot listen on its address; the message says which and why."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        text = f"cannot listen on {host}:{port}: {cause.strerror or cause}"
        if cause.errno == errno.EADDRINUSE:
            text += "; another program has that port: pick another (--port, or serve(port=...)) or stop it"
        super().__init__(cause.errno, text)

    def __str__(self) -> str:
        return str(self.strerror)


class BrokerError(SyncwsError, ConnectionError):
    """The broker could not answer a read (``server.history`` with Redis unreachable)."""


class ProtocolError(SyncwsError):
    """The peer broke RFC 6455; ``code`` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Refused(SyncwsError):
    """Raised by a channels ``connect``, ``refresh`` or ``authorize`` hook: no, and why.

    ``reason`` (at most 100 characters are sent) is shown to the client: in
    the close frame for ``connect`` and ``refresh``, in the error reply for
    ``authorize``.
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class RPCError(SyncwsError):
    """Raised by a channels RPC method: the client's call fails with ``{code, message}``.

    Any other exception from a method reaches the client as ``internal``,
    its details in the server's log only.
    """

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class RequestFailed(SyncwsError):
    """The channels client's request got an error reply: ``code`` (``forbidden``, ...) and ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ClientClosed(SyncwsError, ConnectionError):
    """The channels client stopped: closed, or a close code after which it must not reconnect.

    ``code`` is the close code (None when the client itself closed), ``reason`` its reason.
    """

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"the connection is closed ({code}: {reason})" if code is not None else "the client is closed")
        self.code = code
        self.reason = reason


class HTTPError(SyncwsError):
    """A request the server refuses before the application runs.

    ``status`` is the HTTP status code, ``message`` the short text body,
    ``headers`` extra response headers (``Allow`` on a 405, for instance).
    """

    def __init__(self, status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


class HandshakeError(HTTPError):
    """A malformed WebSocket upgrade request (RFC 6455 §4.2.1)."""


class RequestHeadError(HTTPError):
    """A request line or header block over the server's limits, or malformed."""
