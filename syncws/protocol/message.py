"""The message object handed to the ``message`` hook."""

from __future__ import annotations

import builtins
import io
import json
from typing import Any

from .frames import OP_BINARY, OP_TEXT


class Message:
    """A complete data message received from a peer.

    Text is decoded lazily and cached: most handlers look at a message once,
    many never decode binary payloads at all.
    """

    __slots__ = ("_binary", "_payload", "_text")

    def __init__(self, payload: bytes, is_binary: bool) -> None:
        self._payload = payload
        self._binary = is_binary
        self._text: str | None = None

    @property
    def is_binary(self) -> bool:
        return self._binary

    @property
    def raw_data(self) -> str | bytes:
        """``bytes`` for a binary message, ``str`` for a text message."""
        return self._payload if self._binary else self.text()

    def text(self) -> str:
        if self._text is None:
            self._text = self._payload.decode("utf-8", errors="replace")
        return self._text

    def json(self) -> Any:
        """Parse the payload as JSON; raises ``ValueError`` when it is not JSON."""
        return json.loads(self.text())

    def bytes(self) -> bytes:
        return self._payload

    # CrossWS's (JavaScript) names, as aliases.
    def uint8_array(self) -> builtins.bytes:
        return self._payload

    def array_buffer(self) -> builtins.bytes:
        return self._payload

    def blob(self) -> io.BytesIO:
        return io.BytesIO(self._payload)

    def __syncws_payload__(self) -> tuple[int, builtins.bytes]:
        return (OP_BINARY if self._binary else OP_TEXT), self._payload

    def __str__(self) -> str:
        return self.text()

    def __len__(self) -> int:
        return len(self._payload)

    def __repr__(self) -> str:
        kind = "binary" if self._binary else "text"
        return f"<Message {kind} {len(self._payload)} bytes>"
