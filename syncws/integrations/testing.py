"""A test client for your own tests: serve an app on a free port and talk to it for real.

::

    from syncws.testing import TestClient

    def test_echo():
        with TestClient(app) as client, client.websocket("/_ws") as ws:
            ws.send("hello")
            assert ws.receive() == "hello"

``TestClient(app, **server_options)`` serves any WSGI app (a syncws ``App``,
Flask, Django through ``mount``) with the syncws server on 127.0.0.1, a free
port, in a background thread, and stops it on exit.  Everything goes over
real sockets, so what a test sees is what a browser would: the handshake,
hooks, pub/sub, SSE framing, the limits.  It needs nothing beyond syncws: the
WebSocket client, the SSE reader and the HTTP calls are small and built on
the standard library.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import select
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from ..base.errors import SyncwsError
from ..protocol.frames import (
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    decode_close_payload,
    encode_close_payload,
    encode_frame,
)
from ..protocol.handshake import accept_key
from ..protocol.payload import encode
from ..server.server import Server, serve

__all__ = ["ConnectionClosed", "Event", "EventStream", "HandshakeRefused", "Response", "TestClient", "WebSocket"]


class ConnectionClosed(SyncwsError):
    """The server closed the WebSocket: ``code`` (None for an empty close frame or a dropped
    connection) and ``reason``."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed: {code} {reason!r}")
        self.code = code
        self.reason = reason


class HandshakeRefused(SyncwsError):
    """The server answered the upgrade with something other than 101 (``response`` says what)."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"upgrade refused: {response.status_code} {response.text.strip()!r}")
        self.response = response


@dataclass(frozen=True)
class Response:
    """A plain HTTP response: ``status_code``, ``headers`` (lower-cased names), ``content``."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


@dataclass(frozen=True)
class Event:
    """One server-sent event as ``EventSource`` would dispatch it."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class TestClient:
    """Serve ``app`` for the duration of a ``with`` block; see the module docstring."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, app: Any, **server_options: Any) -> None:
        server_options.setdefault("access_log", False)
        self._app = app
        self._options = server_options
        self.server: Server | None = None

    def __enter__(self) -> TestClient:
        self.server = serve(self._app, "127.0.0.1", 0, background=True, **self._options)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.stop(timeout=2)
            self.server = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return self._running().url

    def _running(self) -> Server:
        if self.server is None:
            raise RuntimeError("the TestClient is not running: use it in a with block")
        return self.server

    # -- WebSockets and event streams -------------------------------------------------
    def websocket(
        self, path: str, headers: Mapping[str, str] | None = None, subprotocols: list[str] | None = None
    ) -> WebSocket:
        """Open a WebSocket (a context manager); :class:`HandshakeRefused` when there is no 101.

        Returns once the server's ``open`` hook for it has run (or the server
        has sent something or closed, at most 5 s): with the ``threads`` option
        hooks of different peers run in different threads, and a test that
        connects two clients and then sends expects both to be subscribed.
        """
        server = self._running()
        ws = WebSocket(server.port, path, headers or {}, subprotocols or [])
        ws._wait_for_open(server)
        return ws

    def event_stream(self, path: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> EventStream:
        """GET an event stream: iterate it for :class:`Event` objects; it ends when the server ends it."""
        return EventStream(self._running().port, path, headers or {}, timeout)

    # -- plain HTTP and pub/sub -------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        data: bytes | str | Mapping[str, str] | None = None,
        json: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """One HTTP request; ``data`` (bytes, str or a form dict) or ``json`` as the body."""
        body, all_headers = _body(data, json)
        all_headers.update(headers or {})
        connection = http.client.HTTPConnection("127.0.0.1", self._running().port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=all_headers)
            answer = connection.getresponse()
            return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
        finally:
            connection.close()

    def get(self, path: str, **kwargs: Any) -> Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Response:
        return self.request("POST", path, **kwargs)

    def publish(self, topic: str, data: object, namespace: str | None = None) -> None:
        """``server.publish``: reaches the subscribers of the served app (and other processes)."""
        self._running().publish(topic, data, namespace=namespace)


def _body(data: bytes | str | Mapping[str, str] | None, payload: object) -> tuple[bytes | None, dict[str, str]]:
    if payload is not None:
        return json.dumps(payload).encode("utf-8"), {"Content-Type": "application/json"}
    if isinstance(data, Mapping):
        return urlencode(data).encode("ascii"), {"Content-Type": "application/x-www-form-urlencoded"}
    if isinstance(data, str):
        return data.encode("utf-8"), {"Content-Type": "text/plain; charset=utf-8"}
    return data, {}


def _open_hook_ran(runtime: Any, address: Any) -> bool:
    # In the server's hub: whether the session of the client at ``address`` has run its open hook.
    for session in runtime.sessions:
        try:
            if session.socket.getpeername() == address:
                return bool(session.opened)
        except OSError:
            continue
    return False


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionClosed(None, "the server closed the connection during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


class WebSocket:
    """A WebSocket client connection of the test client (text as ``str``, binary as ``bytes``)."""

    def __init__(self, port: int, path: str, headers: Mapping[str, str], subprotocols: list[str]) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._buffer = b""
        self.close_code: int | None = None
        self.close_reason = ""
        self._closed = False
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if subprotocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self._sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head, self._buffer = _read_head(self._sock)
        status, response_headers = _parse_head(head)
        if status != 101:
            self._sock.settimeout(1)
            body = self._buffer
            length = int(response_headers.get("content-length", "0") or 0)
            while len(body) < length:
                chunk = self._sock.recv(65536)
                if not chunk:
                    break
                body += chunk
            self._sock.close()
            raise HandshakeRefused(Response(status, response_headers, body))
        if response_headers.get("sec-websocket-accept") != accept_key(key):
            self._sock.close()
            raise ConnectionClosed(None, "the server's Sec-WebSocket-Accept is wrong")
        #: The subprotocol the server chose ("" when none).
        self.subprotocol = response_headers.get("sec-websocket-protocol", "")
        self.headers = response_headers

    def _wait_for_open(self, server: Server) -> None:
        address = self._sock.getsockname()
        runtime = server.runtime
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not runtime.run_in_hub(_open_hook_ran, runtime, address):
            if self._buffer or select.select([self._sock], [], [], 0.002)[0]:
                return  # the server sent something (a welcome, a close): open has done its part

    def __enter__(self) -> WebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending ----------------------------------------------------------------------------
    def send(self, data: object) -> None:
        """Send ``data`` by the payload rules: str text, bytes binary, dict/list/numbers JSON text."""
        if self._closed:
            raise ConnectionClosed(self.close_code, self.close_reason)
        opcode, payload = encode(data)
        self._sock.sendall(encode_frame(opcode, payload, mask=os.urandom(4)))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """The close handshake: our close frame, then the server's answer (at most 2 s)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.sendall(encode_frame(OP_CLOSE, encode_close_payload(code, reason), mask=os.urandom(4)))
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                opcode, payload = self._frame(deadline - time.monotonic())
                if opcode == OP_CLOSE:
                    self.close_code, reason_text = decode_close_payload(payload)
                    self.close_reason = reason_text or ""
                    break
        except (OSError, TimeoutError, ConnectionClosed):
            pass
        finally:
            self._sock.close()

    # -- receiving ------------------------------------------------------------------------
    def receive(self, timeout: float = 1.0) -> str | bytes:
        """The next message; TimeoutError if none comes in time, ConnectionClosed once closed."""
        if self._closed:
            raise ConnectionClosed(self.close_code, self.close_reason)
        deadline = time.monotonic() + timeout
        pieces: list[bytes] = []
        kind = None
        while True:
            opcode, payload = self._frame(deadline - time.monotonic())
            if opcode == OP_PING:
                self._sock.sendall(encode_frame(OP_PONG, payload, mask=os.urandom(4)))
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                self._closed = True
                code, reason = decode_close_payload(payload)
                self.close_code, self.close_reason = code, reason or ""
                try:
                    self._sock.sendall(encode_frame(OP_CLOSE, payload[:2], mask=os.urandom(4)))
                except OSError:
                    pass
                self._sock.close()
                raise ConnectionClosed(self.close_code, self.close_reason)
            if opcode != OP_CONTINUATION:
                kind = opcode
            pieces.append(payload)
            if self._fin:
                data = b"".join(pieces)
                return data.decode("utf-8") if kind == OP_TEXT else data

    def receive_json(self, timeout: float = 1.0) -> Any:
        return json.loads(self.receive(timeout))

    def _frame(self, timeout: float) -> tuple[int, bytes]:
        """One frame (opcode, payload); sets ``_fin``."""
        header = self._read(2, timeout)
        self._fin = bool(header[0] & 0x80)
        opcode = header[0] & 0x0F
        length = header[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read(2, timeout))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read(8, timeout))[0]
        return opcode, self._read(length, timeout)

    def _read(self, count: int, timeout: float) -> bytes:
        while len(self._buffer) < count:
            if timeout <= 0:
                raise TimeoutError("no message from the server in time")
            self._sock.settimeout(timeout)
            started = time.monotonic()
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise TimeoutError("no message from the server in time") from None
            except OSError:
                chunk = b""
            if not chunk:
                self._closed = True
                self._sock.close()
                raise ConnectionClosed(self.close_code, self.close_reason or "the connection was dropped")
            self._buffer += chunk
            timeout -= time.monotonic() - started
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data


class EventStream:
    """An event stream of the test client: iterate for :class:`Event`; a context manager."""

    def __init__(self, port: int, path: str, headers: Mapping[str, str], timeout: float) -> None:
        self.timeout = timeout
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self._connection.request("GET", path, headers={"Accept": "text/event-stream", **headers})
        answer = self._connection.getresponse()
        self.status_code = answer.status
        self.headers = {k.lower(): v for k, v in answer.getheaders()}
        self._answer = answer
        self._buffer = ""
        self._last_id: str | None = None

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            sock = self._connection.sock
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._answer.close()
        self._connection.close()

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self.next_event()
            if event is None:
                return
            yield event

    def next_event(self) -> Event | None:
        """The next event; None once the stream has ended; TimeoutError after ``timeout`` seconds."""
        while True:
            block, sep, rest = self._buffer.partition("\n\n")
            if sep:
                self._buffer = rest
                event = self._parse(block)
                if event is not None:
                    return event
                continue
            try:
                chunk = self._answer.read1(65536)
            except TimeoutError:
                raise TimeoutError("no event from the server in time") from None
            if not chunk:
                return None
            self._buffer += chunk.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")

    def _parse(self, block: str) -> Event | None:
        data, kind, retry = [], "message", None
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "event":
                kind = value
            elif name == "id":
                self._last_id = value
            elif name == "retry" and value.isdigit():
                retry = int(value)
        if not data:
            return None
        return Event("\n".join(data), kind, self._last_id, retry)
