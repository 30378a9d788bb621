"""The per-connection HTTP handler of the syncws server.

It is gevent's WSGI handler with three changes: ``TCP_NODELAY`` on every
connection, a :class:`Transport` in the environ so a WebSocket handler deep in
the application can take the socket over (and an event stream can watch it),
an empty chunk flushes the response head, and nothing at all is written once a
connection has been upgraded (the WSGI response that unwinds through Flask or
middleware after the session ends is discarded).
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Optional

from gevent.pywsgi import WSGIHandler

from .websocket import TRANSPORT_KEY

log = logging.getLogger("syncws")


class Transport:
    """What a WebSocket handler needs from the server to take a connection over."""

    __slots__ = ("socket", "rfile", "server", "remote_address", "upgraded", "reusable", "_at_end")

    def __init__(self, sock: socket.socket, rfile: Any, server: Any, remote_address: Optional[str]) -> None:
        self.socket = sock
        self.rfile = rfile
        self.server = server
        self.remote_address = remote_address
        self.upgraded = False
        self.reusable = True  # False: close the connection after this response
        self._at_end: list = []

    def at_end(self, callback: Any) -> None:
        """Run ``callback`` once this request's response is over, whatever happened."""
        self._at_end.append(callback)

    def finish(self) -> None:
        callbacks, self._at_end = self._at_end, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("syncws: error in end-of-request cleanup")

    def accept(self, head: bytes) -> None:
        """Write the ``101`` head; from now on the socket belongs to the session."""
        self.upgraded = True
        self.socket.sendall(head)


class ConnectionHandler(WSGIHandler):
    def process_result(self) -> None:
        # Like gevent's, except that an empty chunk before the head has gone
        # out sends the head now: a streaming response (SSE) yields b"" so the
        # client sees the 200 before the first event.
        for data in self.result:
            if data:
                self.write(data)
            elif not self.headers_sent and self.status:
                self.write(b"")
        if self.status and not self.headers_sent:
            self.write(b"")
        if self.response_use_chunked:
            self._sendall(b"0\r\n\r\n")

    def handle(self) -> None:
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (unix socket) or already closed
        super().handle()

    def get_environ(self) -> dict:
        environ = super().get_environ()
        address = self.client_address[0] if isinstance(self.client_address, tuple) else self.client_address
        environ[TRANSPORT_KEY] = Transport(self.socket, self.rfile, self.server.syncws, address or None)
        return environ

    def run_application(self) -> None:
        transport = self.environ[TRANSPORT_KEY]
        try:
            try:
                self.result = self.application(self.environ, self.start_response)
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
            self.process_result()
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
                transport.finish()
