"""The HTTP side of the WebSocket opening handshake, without any I/O.

The server decides *whether* to upgrade only after the application has run;
this module answers the mechanical questions: is this an upgrade request, is it
well formed, and what bytes make up the ``101`` reply.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping

from ..base.errors import ConfigurationError, HandshakeError

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUPPORTED_VERSION = "13"

HeadersLike = Mapping[str, str] | Iterable[tuple[str, str]] | None


def _tokens(value: str) -> list[str]:
    """The comma-separated tokens of a header value (already lower-cased by the caller)."""
    return [token.strip() for token in value.split(",")]


def is_upgrade_request(environ: Mapping[str, object]) -> bool:
    """True when the client asks to switch to the WebSocket protocol."""
    upgrade = str(environ.get("HTTP_UPGRADE", "")).lower()
    connection = str(environ.get("HTTP_CONNECTION", "")).lower()
    if upgrade == "websocket" and connection == "upgrade":  # what most clients send: no lists to build
        return True
    return "websocket" in _tokens(upgrade) and "upgrade" in _tokens(connection)


def validate(environ: Mapping[str, object]) -> str:
    """Check an upgrade request and return its ``Sec-WebSocket-Key``.

    Refused (with the status in the :class:`HandshakeError`): not GET (405),
    not HTTP/1.1 or no ``Host`` (400), any body, announced by
    ``Content-Length`` above 0 or by ``Transfer-Encoding`` (400), a version
    other than 13 (426), a missing or malformed key (400).
    """
    if environ.get("REQUEST_METHOD") != "GET":
        raise HandshakeError(405, "WebSocket upgrades must use GET", [("Allow", "GET")])
    if environ.get("SERVER_PROTOCOL") not in ("HTTP/1.1",):
        raise HandshakeError(400, "WebSocket upgrades need HTTP/1.1")
    if not str(environ.get("HTTP_HOST", "")).strip():
        raise HandshakeError(400, "missing Host header")  # RFC 7230 §5.4
    # After the 101 the connection carries frames: bytes a body announced would
    # be read as frames that a proxy inspecting the HTTP request never saw
    # (request smuggling).  So an upgrade may not have a body at all.
    if "HTTP_TRANSFER_ENCODING" in environ:
        raise HandshakeError(400, "a WebSocket upgrade request must not have a body (Transfer-Encoding)")
    if str(environ.get("CONTENT_LENGTH") or "").strip().lstrip("0"):  # "", "0", "00": no body
        raise HandshakeError(400, "a WebSocket upgrade request must not have a body (Content-Length)")
    version = str(environ.get("HTTP_SEC_WEBSOCKET_VERSION", "")).strip()
    if version != SUPPORTED_VERSION:
        raise HandshakeError(426, "unsupported Sec-WebSocket-Version", [("Sec-WebSocket-Version", SUPPORTED_VERSION)])
    key = str(environ.get("HTTP_SEC_WEBSOCKET_KEY", "")).strip()
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(400, "missing or malformed Sec-WebSocket-Key")
    return key


def offered_protocols(environ: Mapping[str, object]) -> list[str]:
    return [p.strip() for p in str(environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "")).split(",") if p.strip()]


def accept_key(key: str) -> str:
    digest = hashlib.sha1((key + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def normalize_headers(headers: HeadersLike) -> list[tuple[str, str]]:
    """Accept a dict, a werkzeug ``Headers`` or a list of pairs."""
    if headers is None:
        return []
    items = headers.items() if hasattr(headers, "items") else headers
    result = []
    for name, value in items:
        name, value = str(name), str(value)
        if any(c in name + value for c in "\r\n"):
            raise ConfigurationError(f"header {name!r} contains a line break")
        result.append((name, value))
    return result


def response_101(key: str, protocol: str | None, extra_headers: list[tuple[str, str]]) -> bytes:
    """The complete ``101 Switching Protocols`` head, ready to write."""
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(key)}",
    ]
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    lines.extend(f"{name}: {value}" for name, value in extra_headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
