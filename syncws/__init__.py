"""syncws: hook-based WebSockets, pub/sub and Server-Sent Events for sync Python.

This module is the public face: everything a user imports comes from here.
The layers underneath (see ``docs/architecture.md``) are, bottom to top,
:mod:`syncws.base`, :mod:`syncws.protocol`, :mod:`syncws.pubsub`,
:mod:`syncws.server`, :mod:`syncws.web`, :mod:`syncws.channels`,
:mod:`syncws.integrations` and :mod:`syncws.cli`; each imports only from the
ones below it (:mod:`syncws.client`, the channels client, only from
``base`` and ``protocol``).
"""

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
from .base.logs import JsonFormatter
from .base.options import ServerOptions
from .base.version import __version__
from .channels import Channels

# Importing the integrations registers them with the server layer (the Flask
# preparer, the gevent-websocket app wrapper); it patches nothing by itself.
from .integrations import flask as _flask_integration  # noqa: F401
from .integrations import gevent_websocket as _gevent_websocket_integration  # noqa: F401
from .integrations import metrics as _metrics_integration  # noqa: F401
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
from .web import admin as _admin_api  # noqa: F401  # registers the admin API with the server layer
from .web.app import App
from .web.mount import mount
from .web.static import client_js

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
