"""The WebSocket and SSE wire protocols, without I/O.

Nothing in this package touches a socket, a clock or gevent: it is fed bytes
and returns events and bytes, so every rule of RFC 6455 and of the SSE format
is tested with plain bytes.  The server layer (:mod:`syncws.server`) drives it.
"""

from .frames import *  # noqa: F403 - the frame layer is this package's main face
from .frames import __all__ as _frames_all

__all__ = list(_frames_all)
