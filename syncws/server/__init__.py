"""The gevent layer: sockets, greenlets and timers around the sans-I/O protocol.

Imports :mod:`syncws.base`, :mod:`syncws.protocol` and :mod:`syncws.pubsub`;
nothing above it (web, integrations, cli).  ``from syncws.server import
Server, serve`` keeps working, as it did when this was one module.
"""

from ..base.options import ServerOptions
from .server import Server, current_server, publish, serve

__all__ = ["Server", "ServerOptions", "current_server", "publish", "serve"]
