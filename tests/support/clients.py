"""Test clients: a raw-socket WebSocket client, websocket-client helpers, one-handler apps."""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import uuid
from typing import Any

import pytest
import requests
import websocket

from syncws import App, define_websocket_handler

from .frames import client_frame, split_frame
from .http import new_key, read_head, upgrade_request

OPEN_RAW_CLIENTS: list = []


def new_topic() -> str:
    """A topic no other test uses."""
    return "t" + uuid.uuid4().hex[:12]


class QueuedWebSocket:
    """A websocket-client connection whose messages a reader thread queues (text as ``str``, binary as ``bytes``).

    ``send(**cmd)`` sends a JSON command; ``get``/``get_json`` take the next message or fail the test.
    """

    def __init__(self, url: str, name: str = "") -> None:
        self.name = name or url
        self.ws = websocket.create_connection(url, timeout=5)
        self.ws.settimeout(None)
        self.queue: queue.Queue = queue.Queue()
        self.closed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                opcode, data = self.ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
                self.queue.put(data if opcode == websocket.ABNF.OPCODE_BINARY else data.decode("utf-8"))
        except Exception:
            pass
        finally:
            self.closed.set()

    def send(self, **cmd: Any) -> None:
        self.ws.send(json.dumps(cmd))

    def get(self, timeout: float = 5.0) -> Any:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.name}: nothing received in {timeout} s") from None

    def get_json(self, timeout: float = 5.0) -> Any:
        return json.loads(self.get(timeout))


class HoldingApp:
    """An app whose ``GET /hold`` view blocks until :meth:`release`: fills a server's thread pool on demand."""

    def __init__(self) -> None:
        self.app = App()
        self.app.get("/hold", self._hold)
        self.running: list[int] = []  # one per view that started
        self.answers: list[str] = []  # the bodies the clients got
        self._released = threading.Event()
        self._clients: list[threading.Thread] = []

    def _hold(self, request) -> str:
        self.running.append(1)
        self._released.wait(10)
        return "held"

    def request(self, server, count: int) -> None:
        """Send ``count`` requests to ``/hold``, each from a thread of its own."""
        for _ in range(count):
            client = threading.Thread(
                target=lambda: self.answers.append(requests.get(server.url + "/hold", timeout=10).text)
            )
            client.start()
            self._clients.append(client)

    def release(self) -> None:
        """Let every view return, and wait for the clients' answers."""
        self._released.set()
        for client in self._clients:
            client.join(10)


def app_with(path: str = "/_ws", handler=None, **hooks) -> App:
    """An App with one WebSocket handler on ``path``: ``handler`` if given, else one built from ``hooks``."""
    app = App()
    app.get(path, handler if handler is not None else define_websocket_handler(**hooks))
    return app


class RawClient:
    """A WebSocket client on a bare socket: handshakes (asserting 101), sends masked frames, reads raw ones."""

    def __init__(
        self,
        server,
        path: str = "/_ws",
        *,
        host: str = "127.0.0.1",
        rcvbuf: int | None = None,
        head_chunk: int = 4096,
        timeout: float = 5.0,
        extra: str = "",
    ) -> None:
        """``rcvbuf`` shrinks the receive buffer; ``head_chunk=1`` reads nothing past the 101 head;
        ``extra``: more request header lines, each ending in CRLF."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        OPEN_RAW_CLIENTS.append(self)  # conftest closes whatever a test left open
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", server.port))
        self.sock.sendall(upgrade_request(path, key=new_key(), host=host, extra=extra))
        self.head, self.buf = read_head(self.sock, head_chunk)
        assert self.head.startswith(b"HTTP/1.1 101 "), self.head

    def send_frame(self, opcode: int, payload: bytes = b"", fin: bool = True, mask: bytes | None = None) -> None:
        """Send one frame, masked as a client must (a random mask unless one is given)."""
        self.sock.sendall(client_frame(opcode, payload, fin=fin, mask=mask or os.urandom(4)))

    def _recv_more(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def read_exactly(self, n: int) -> bytes:
        """The next ``n`` raw bytes of the stream."""
        while len(self.buf) < n:
            assert self._recv_more(), f"connection closed after {self.buf!r}"
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_raw_frame(self) -> tuple[int, bytes]:
        """The next frame as (its first byte, payload): FIN, RSV bits and opcode as sent."""
        while (frame := split_frame(self.buf)) is None:
            assert self._recv_more(), "connection closed"
        first = self.buf[0]
        self.buf = self.buf[frame[2] :]
        return first, frame[1]

    def read_frame(self) -> tuple[int, bytes] | None:
        """The next (opcode, payload), or None on EOF."""
        while True:
            frame = split_frame(self.buf)
            if frame is not None:
                opcode, payload, size = frame
                self.buf = self.buf[size:]
                return opcode, payload
            if not self._recv_more():
                return None

    def read_all_frames(self) -> list[tuple[int, bytes]]:
        """Every frame until the server closes the connection."""
        frames = []
        while (frame := self.read_frame()) is not None:
            frames.append(frame)
        return frames

    def read_to_eof(self) -> bytes:
        """Every raw byte left until EOF (a connection reset counts as EOF)."""
        try:
            while self._recv_more():
                pass
        except ConnectionResetError:
            pass
        data, self.buf = self.buf, b""
        return data

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- websocket-client connections ----------------------------------------------


def recv_close(client: websocket.WebSocket) -> tuple[int | None, str]:
    """Read until the server's close frame; return its (code, reason), code None for an empty one."""
    while True:
        opcode, data = client.recv_data(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            return code, data[2:].decode("utf-8")


def assert_nothing_received(client: websocket.WebSocket, wait: float = 0.3) -> None:
    """Assert that no message arrives within ``wait`` seconds; the client's timeout is restored."""
    timeout = client.gettimeout()
    client.settimeout(wait)
    with pytest.raises(websocket.WebSocketTimeoutException):
        client.recv()
    client.settimeout(timeout)
