"""Helpers shared by the test modules: raw WebSocket and HTTP over bare sockets.

Fixtures stay in ``conftest.py``; what is here is plain functions and classes.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import struct

import pytest
import websocket

from syncws import App, define_websocket_handler
from syncws.protocol import encode_frame

from .conftest import raw_request

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample Sec-WebSocket-Key
MASK = b"\x37\xfa\x21\x3d"  # RFC 6455's sample masking key (section 5.7)


def new_key() -> str:
    """A fresh random Sec-WebSocket-Key."""
    return base64.b64encode(os.urandom(16)).decode()


def app_with(path: str = "/_ws", handler=None, **hooks) -> App:
    """An App with one WebSocket handler on ``path``: ``handler`` if given, else one built from ``hooks``."""
    app = App()
    app.get(path, handler if handler is not None else define_websocket_handler(**hooks))
    return app


# -- HTTP ----------------------------------------------------------------------


def upgrade_request(
    path: str = "/_ws",
    *,
    key: str | None = KEY,
    host: str = "127.0.0.1",
    method: str = "GET",
    version: str | None = "13",
    proto: str = "HTTP/1.1",
    extra: str = "",
) -> bytes:
    """A WebSocket upgrade request; a None key or version leaves that header out; ``extra``: CRLF-ended lines."""
    lines = [f"{method} {path} {proto}", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade"]
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if method != "GET":
        lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("latin-1")


def read_head(sock: socket.socket, chunk_size: int = 4096) -> tuple[bytes, bytes]:
    """Read until the blank line that ends an HTTP head; return (head, the bytes read past it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(chunk_size)
        assert chunk, f"connection closed before the end of the HTTP head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def status_of(data: bytes) -> int:
    """The status code on the first line of an HTTP response."""
    return int(data.split(b"\r\n", 1)[0].split()[1])


def parse_response(data: bytes) -> tuple[int, dict, bytes]:
    """Split an HTTP response into (status, lower-cased headers, body), decoding a chunked body."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete HTTP head in {data!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        decoded = b""
        rest = body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            decoded += rest[:size]
            rest = rest[size + 2 :]
        body = decoded
    return status, headers, body


def answered_without_upgrade(server, path: str, status: int) -> bytes:
    """Upgrade-request ``path``; assert a plain ``status`` answer, no Sec-WebSocket-Accept; return the response."""
    data = raw_request(server, upgrade_request(path))
    assert status_of(data) == status
    assert b"Sec-WebSocket-Accept" not in data
    return data


def http_exchange(server, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw request bytes; return the response head and its Content-Length body (a 101 head as read).

    Without a Content-Length it reads until the server closes or idles.
    """
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        head, body = read_head(sock, 65536)
        if head.startswith(b"HTTP/1.1 101"):
            return head + b"\r\n\r\n" + body
        match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
        if match is None:
            sock.settimeout(0.5)
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    body += chunk
            except socket.timeout:
                pass
            return head + b"\r\n\r\n" + body
        length = int(match.group(1))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body


# -- WebSocket frames ------------------------------------------------------------


def split_frame(data: bytes) -> tuple[int, bytes, int] | None:
    """Parse the unmasked (server) frame that starts ``data``: (opcode, payload, frame size), None if incomplete."""
    if len(data) < 2:
        return None
    assert not data[1] & 0x80, "server frames are never masked"
    n, pos = data[1] & 0x7F, 2
    if n == 126:
        if len(data) < 4:
            return None
        n, pos = struct.unpack("!H", data[2:4])[0], 4
    elif n == 127:
        if len(data) < 10:
            return None
        n, pos = struct.unpack("!Q", data[2:10])[0], 10
    if len(data) < pos + n:
        return None
    return data[0] & 0x0F, data[pos : pos + n], pos + n


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Every (opcode, payload) in ``data``, which must hold whole unmasked frames only."""
    frames = []
    while data:
        frame = split_frame(data)
        assert frame is not None, f"truncated frame in {data!r}"
        opcode, payload, size = frame
        frames.append((opcode, payload))
        data = data[size:]
    return frames


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bytes = MASK) -> bytes:
    """A frame as a client sends it: always masked."""
    return encode_frame(opcode, payload, fin=fin, mask=mask)


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
    ) -> None:
        """``rcvbuf`` shrinks the receive buffer; ``head_chunk=1`` reads nothing past the 101 head."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", server.port))
        self.sock.sendall(upgrade_request(path, key=new_key(), host=host))
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

    def __enter__(self) -> "RawClient":
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
