"""How Python values become WebSocket payloads.

Kept in one place so a peer's ``send``, a topic ``publish`` and the SSE bridge
serialise identically, and so a publish serialises exactly once.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from .deflate import Agreement, compress
from .frames import OP_BINARY, OP_TEXT, encode_frame


def to_json(value: Any) -> str:
    """Compact JSON, as JavaScript's ``JSON.stringify`` writes it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def encode(data: Any) -> tuple[int, bytes]:
    """Return ``(opcode, payload bytes)`` for a value a user wants to send."""
    raw = getattr(data, "__syncws_payload__", None)
    if raw is not None:  # a received Message: echo it with its own type
        opcode, payload = raw()
        return int(opcode), bytes(payload)
    if isinstance(data, str):
        return OP_TEXT, data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return OP_BINARY, bytes(data)
    if data is None:
        return OP_TEXT, b""
    if isinstance(data, (dict, list, tuple, bool, int, float)):
        return OP_TEXT, to_json(data).encode("utf-8")
    raise TypeError(f"cannot send {type(data).__name__}: use str, bytes, dict, list, int, float, bool or None")


class Outgoing:
    """One serialised message, framed lazily and at most once.

    A publish builds one of these and hands the same object to every
    recipient, so 1,000 subscribers cost one serialisation and one frame.
    """

    __slots__ = ("_frame", "_memo", "compress", "opcode", "payload")

    def __init__(self, data: Any, compress: bool | None = None) -> None:
        self.opcode, self.payload = encode(data)
        #: For peers that agreed to permessage-deflate: True always compress,
        #: False never, None when the payload reaches the compression threshold.
        self.compress = compress
        self._frame: bytes | None = None
        self._memo: dict[str, Any] | None = None

    @classmethod
    def from_payload(cls, opcode: int, payload: bytes, compress: bool | None = None) -> Outgoing:
        """An already-serialised payload (a message relayed from another process)."""
        self = cls.__new__(cls)
        self.opcode, self.payload = opcode, payload
        self.compress = compress
        self._frame = None
        self._memo = None
        return self

    @property
    def is_binary(self) -> bool:
        return self.opcode == OP_BINARY

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = encode_frame(self.opcode, self.payload)
        return self._frame

    def frame_for(self, agreement: Agreement, threshold: int) -> bytes:
        """The frame for a peer that agreed to permessage-deflate.

        Compressed at most once per window size, however many recipients
        share it (the server keeps no compression context, see
        :mod:`syncws.protocol.deflate`); the plain frame when compression is
        off for this message, the payload is under ``threshold``, or
        compressing did not make it smaller.
        """
        wanted = self.compress
        if wanted is False or (wanted is None and len(self.payload) < threshold):
            return self.frame
        frame: bytes = self.memo(agreement.compress_key, _deflated_frame, agreement)
        return frame

    @property
    def text(self) -> str:
        """The payload as text: decoded UTF-8, or base64 for a binary payload."""
        return _as_text(self.opcode, self.payload)

    def memo(self, key: str, build: Callable[..., Any], *args: Any) -> Any:
        """Build another wire form of this message once (an SSE event, a compressed frame).

        ``build(self, *args)`` runs for the first caller only; a fan-out asks
        once per recipient, so the arguments are passed, not closed over.
        """
        memo = self._memo
        if memo is None:
            memo = self._memo = {}
        found = memo.get(key)
        if found is None:
            found = memo[key] = build(self, *args)
        return found


def _deflated_frame(outgoing: Outgoing, agreement: Agreement) -> bytes:
    compressed = compress(outgoing.payload, agreement.server_max_window_bits)
    if len(compressed) >= len(outgoing.payload):
        return outgoing.frame  # incompressible: send it as it is
    return encode_frame(outgoing.opcode, compressed, rsv1=True)


def _as_text(opcode: int, payload: bytes) -> str:
    if opcode == OP_BINARY:
        return base64.b64encode(payload).decode("ascii")
    return payload.decode("utf-8")


def as_text(data: Any) -> str:
    """A value as text by the payload rules; binary values become base64.

    Used where only text can travel (SSE ``data``).
    """
    if isinstance(data, str):
        return data
    return _as_text(*encode(data))
