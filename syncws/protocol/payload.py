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


def to_json(value: object) -> str:
    """Compact JSON, as JavaScript's ``JSON.stringify`` writes it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def encode(data: object) -> tuple[int, bytes]:
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


_JSON_TYPES = (dict, list, tuple, bool, int, float)


class Outgoing:
    """One serialised message, framed lazily and at most once.

    A publish builds one of these and hands the same object to every
    recipient, so 1,000 subscribers cost one serialisation and one frame.
    A publish stored in a topic's history gets a *stamped* copy per
    namespace (:meth:`stamped`): it carries the topic and the offset, for
    the forms that show them (an SSE ``id:``, a JSON envelope), and shares
    the raw frames with the original.
    """

    __slots__ = ("_frame", "_memo", "_shared", "compress", "is_json", "offset", "opcode", "payload", "topic")

    def __init__(self, data: object, compress: bool | None = None) -> None:
        self.opcode, self.payload = encode(data)
        #: For peers that agreed to permessage-deflate: True always compress,
        #: False never, None when the payload reaches the compression threshold.
        self.compress = compress
        #: The payload is the JSON text of a dict, list or number: an envelope
        #: embeds it as a JSON value rather than as a string.
        self.is_json = isinstance(data, _JSON_TYPES)
        self.topic: str | None = None
        self.offset: str | None = None
        self._frame: bytes | None = None
        self._memo: dict[str, Any] | None = None
        self._shared: Outgoing | None = None

    @classmethod
    def from_payload(
        cls, opcode: int, payload: bytes, compress: bool | None = None, *, is_json: bool = False
    ) -> Outgoing:
        """An already-serialised payload (relayed from another process, read from a history)."""
        self = cls.__new__(cls)
        self.opcode, self.payload = opcode, payload
        self.compress = compress
        self.is_json = is_json
        self.topic = None
        self.offset = None
        self._frame = None
        self._memo = None
        self._shared = None
        return self

    def stamped(self, topic: str, offset: str | None) -> Outgoing:
        """A copy that carries the history offset it was stored under.

        The raw frames (plain and compressed) stay built once, on this
        object, however many namespaces' copies share them.
        """
        copy = Outgoing.from_payload(self.opcode, self.payload, self.compress, is_json=self.is_json)
        copy.topic, copy.offset = topic, offset
        copy._shared = self._shared or self
        return copy

    @property
    def is_binary(self) -> bool:
        return self.opcode == OP_BINARY

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            shared = self._shared
            self._frame = encode_frame(self.opcode, self.payload) if shared is None else shared.frame
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
        owner = self._shared or self
        frame: bytes = owner.memo(agreement.compress_key, _deflated_frame, agreement)
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

    @property
    def envelope(self) -> Outgoing:
        """This message as ``{"topic", "offset", "data"}`` JSON text, built once.

        For subscriptions that asked for an envelope: raw frames carry no
        offset.  ``data`` is the JSON value itself for a dict/list/number
        payload (spliced in, not parsed again), the string for text, and
        base64 with ``"encoding": "base64"`` for binary.
        """
        envelope: Outgoing = self.memo("envelope", _envelope)
        return envelope


def _envelope(outgoing: Outgoing) -> Outgoing:
    head = f'{{"topic":{to_json(outgoing.topic)},"offset":{to_json(outgoing.offset)},"data":'
    payload = outgoing.payload
    if outgoing.opcode == OP_BINARY:
        text = f'{head}"{base64.b64encode(payload).decode("ascii")}","encoding":"base64"}}'
        return Outgoing.from_payload(OP_TEXT, text.encode("utf-8"), outgoing.compress)
    if outgoing.is_json:
        body = payload  # already JSON text: spliced in as a value
    else:
        body = to_json(payload.decode("utf-8")).encode("utf-8")
    return Outgoing.from_payload(OP_TEXT, head.encode("utf-8") + body + b"}", outgoing.compress)


def _deflated_frame(outgoing: Outgoing, agreement: Agreement) -> bytes:
    compressed = compress(outgoing.payload, agreement.server_max_window_bits)
    if len(compressed) >= len(outgoing.payload):
        return outgoing.frame  # incompressible: send it as it is
    return encode_frame(outgoing.opcode, compressed, rsv1=True)


def _as_text(opcode: int, payload: bytes) -> str:
    if opcode == OP_BINARY:
        return base64.b64encode(payload).decode("ascii")
    return payload.decode("utf-8")


def as_text(data: object) -> str:
    """A value as text by the payload rules; binary values become base64.

    Used where only text can travel (SSE ``data``).
    """
    if isinstance(data, str):
        return data
    return _as_text(*encode(data))
