"""syncws: hook-based WebSockets, pub/sub and Server-Sent Events for sync Python."""

from .app import App
from .hooks import CloseDetails, Hooks
from .broker import Broker
from .message import Message
from .mount import mount
from .peer import Peer
from .publisher import Publisher
from .sse import EventStream, create_event_stream
from .sse_format import EventStreamMessage
from .server import Server, current_server, publish, serve
from .websocket import WebSocketHandler, define_websocket_handler

__version__ = "0.1.0"

__all__ = [
    "App",
    "Broker",
    "CloseDetails",
    "EventStream",
    "EventStreamMessage",
    "Hooks",
    "Message",
    "Peer",
    "Publisher",
    "Server",
    "WebSocketHandler",
    "create_event_stream",
    "current_server",
    "define_websocket_handler",
    "mount",
    "publish",
    "serve",
    "__version__",
]

from .flask_compat import patch_flask as _patch_flask  # noqa: E402

_patch_flask()  # when Flask is already imported; define_websocket_handler() covers the rest
