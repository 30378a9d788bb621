"""syncws: hook-based WebSockets, pub/sub and Server-Sent Events for sync Python."""

from .app import App
from .hooks import CloseDetails, Hooks
from .message import Message
from .peer import Peer
from .server import Server, current_server, publish, serve
from .websocket import WebSocketHandler, define_websocket_handler

__version__ = "0.1.0"

__all__ = [
    "App",
    "CloseDetails",
    "Hooks",
    "Message",
    "Peer",
    "Server",
    "WebSocketHandler",
    "current_server",
    "define_websocket_handler",
    "publish",
    "serve",
    "__version__",
]
