"""syncws: hook-based WebSockets, pub/sub and Server-Sent Events for sync Python.

This module is the public face: everything a user imports comes from here.
The layers underneath (see ``docs/architecture.md``) are, bottom to top,
:mod:`syncws.base`, :mod:`syncws.protocol`, :mod:`syncws.pubsub`,
:mod:`syncws.server`, :mod:`syncws.web`, :mod:`syncws.channels`,
:mod:`syncws.integrations` and :mod:`syncws.cli`; each imports only from the
ones below it (:mod:`syncws.client`, the channels client, only from
``base`` and ``protocol``).

Importing :mod:`syncws` loads only the exceptions and the version: every
other name is imported the first time it is used (PEP 562's module
``__getattr__``), so a program, a CLI or a test run that imports syncws pays
for the parts it touches (``import syncws`` then costs about what importing
gevent and werkzeug costs; ``scripts/import_time`` measures it).
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING

from .base.errors import (
    BrokerError,
    ClientClosed,
    ConfigurationError,
    DependencyMissing,
    HandshakeError,
    HTTPError,
    ImportStringError,
    ListenError,
    ProtocolError,
    Refused,
    RequestFailed,
    RequestHeadError,
    RPCError,
    ServerNotRunning,
    SyncwsError,
)
from .base.version import __version__

#: Each lazily imported public name, and the module it comes from.
_LAZY = {
    "JsonFormatter": ".base.logs",
    "ServerOptions": ".base.options",
    "Channels": ".channels",
    "Message": ".protocol.message",
    "EventStreamMessage": ".protocol.sse",
    "Broker": ".pubsub.broker",
    "Recovery": ".pubsub.history",
    "Publisher": ".pubsub.publisher",
    "WebSocketHandler": ".server.handler",
    "define_websocket_handler": ".server.handler",
    "CloseDetails": ".server.hooks",
    "Hooks": ".server.hooks",
    "Peer": ".server.peer",
    "HistoryEntry": ".server.server",
    "Server": ".server.server",
    "current_server": ".server.server",
    "publish": ".server.server",
    "serve": ".server.server",
    "ConnectionLimitError": ".server.streams",
    "EventStream": ".server.streams",
    "create_event_stream": ".server.streams",
    "App": ".web.app",
    "mount": ".web.mount",
    "client_js": ".web.static",
}

if _TYPE_CHECKING:  # what type checkers and editors see: the same names, imported eagerly
    from .base.logs import JsonFormatter
    from .base.options import ServerOptions
    from .channels import Channels
    from .protocol.message import Message
    from .protocol.sse import EventStreamMessage
    from .pubsub.broker import Broker
    from .pubsub.history import Recovery
    from .pubsub.publisher import Publisher
    from .server.handler import WebSocketHandler, define_websocket_handler
    from .server.hooks import CloseDetails, Hooks
    from .server.peer import Peer
    from .server.server import HistoryEntry, Server, current_server, publish, serve
    from .server.streams import ConnectionLimitError, EventStream, create_event_stream
    from .web.app import App
    from .web.mount import mount
    from .web.static import client_js


def __getattr__(name: str) -> object:
    """Import a public name's module on first use; AttributeError for any other name."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'syncws' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next lookup is a plain one
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY} - {"annotations"})


__all__ = [
    "App",
    "Broker",
    "BrokerError",
    "Channels",
    "ClientClosed",
    "CloseDetails",
    "ConfigurationError",
    "ConnectionLimitError",
    "DependencyMissing",
    "EventStream",
    "EventStreamMessage",
    "HTTPError",
    "HandshakeError",
    "HistoryEntry",
    "Hooks",
    "ImportStringError",
    "JsonFormatter",
    "ListenError",
    "Message",
    "Peer",
    "ProtocolError",
    "Publisher",
    "RPCError",
    "Recovery",
    "Refused",
    "RequestFailed",
    "RequestHeadError",
    "Server",
    "ServerNotRunning",
    "ServerOptions",
    "SyncwsError",
    "WebSocketHandler",
    "__version__",
    "client_js",
    "create_event_stream",
    "current_server",
    "define_websocket_handler",
    "mount",
    "publish",
    "serve",
]
