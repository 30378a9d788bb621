"""Raw HTTP over bare sockets: upgrade requests, response heads, exchanges."""

from __future__ import annotations

import base64
import os
import re
import socket

from ..conftest import raw_request

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample Sec-WebSocket-Key


def new_key() -> str:
    """A fresh random Sec-WebSocket-Key."""
    return base64.b64encode(os.urandom(16)).decode()


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
            except TimeoutError:
                pass
            return head + b"\r\n\r\n" + body
        length = int(match.group(1))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body
