"""``syncws.compat.gevent_websocket``: the stable name of :mod:`syncws.integrations.gevent_websocket`."""

from .integrations.gevent_websocket import GeventWebSocketApp, WebSocket, WebSocketError, gevent_websocket

__all__ = ["GeventWebSocketApp", "WebSocket", "WebSocketError", "gevent_websocket"]
