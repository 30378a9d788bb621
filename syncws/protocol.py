"""RFC 6455 framing behind one small interface of our own.

Everything above this module speaks in terms of :class:`Frame`,
:func:`encode_frame` and :class:`FrameReader`; only this module knows that the
header codec comes from gevent-websocket.  Swapping the codec (for wsproto, or a
C extension) touches this file alone.

The reader never buffers a payload before it has checked the announced length
against the limit, so a header that claims 2**63 bytes costs nothing.
"""

from __future__ import annotations

import codecs
import struct
from dataclasses import dataclass
from typing import Callable, Optional

from geventwebsocket.exceptions import ProtocolError as _GWSProtocolError
from geventwebsocket.exceptions import WebSocketError as _GWSError
from geventwebsocket.websocket import Header

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

DATA_OPCODES = (OP_TEXT, OP_BINARY)
CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)

# Close codes used by the server (RFC 6455 §7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011


class ConnectionClosed(Exception):
    """The byte stream ended (EOF or reset) before a close frame arrived."""


class ProtocolViolation(Exception):
    """The peer broke RFC 6455; ``code`` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Frame:
    fin: bool
    opcode: int
    payload: bytes


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR the payload with the 4-byte mask using big-integer arithmetic.

    gevent-websocket unmasks byte by byte in Python; doing it on one integer
    keeps the work in C and makes large messages cheap.
    """
    n = len(payload)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")
    return value.to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: Optional[bytes] = None) -> bytes:
    """Return one complete frame.  Servers send unmasked; clients pass a mask."""
    header = bytes(Header.encode_header(fin, opcode, b"" if mask is None else mask, len(payload), 0))
    if mask is None:
        return header + payload
    return header + unmask(payload, mask)  # the header already carries the mask


def encode_close_payload(code: Optional[int], reason: str = "") -> bytes:
    if code is None:
        return b""
    # Control frames carry at most 125 bytes: cut the reason on a character
    # boundary so a long reason never becomes invalid UTF-8.
    raw = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    return struct.pack("!H", code) + raw


def is_valid_close_code(code: int) -> bool:
    if 1000 <= code <= 1014:
        return code not in (1004, 1005, 1006)
    return 3000 <= code <= 4999


def decode_close_payload(payload: bytes) -> tuple[Optional[int], Optional[str]]:
    """Parse a received close payload into ``(code, reason)``.

    An empty payload means "no status": both are None.
    """
    if not payload:
        return None, None
    if len(payload) == 1:
        raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
    (code,) = struct.unpack("!H", payload[:2])
    if not is_valid_close_code(code):
        raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation(CLOSE_INVALID_DATA, "close reason is not valid UTF-8") from None
    return code, reason


class FrameReader:
    """Reads frames from a blocking ``read(n)`` callable and assembles messages.

    ``read_message`` returns control frames as they come and data messages once
    complete, so the caller can answer pings in the middle of a fragmented
    message.
    """

    def __init__(self, read: Callable[[int], bytes], max_message_size: Optional[int]) -> None:
        self._read = read
        self.max_message_size = max_message_size
        self._fragments: list[bytes] = []
        self._fragment_opcode: Optional[int] = None
        self._fragment_size = 0
        self._utf8 = None

    def _read_exact(self, n: int) -> bytes:
        data = self._read(n)
        if len(data) != n:
            raise ConnectionClosed("connection closed in the middle of a frame")
        return data

    def _read_header(self) -> Header:
        try:
            header = Header.decode_header(self)
        except ConnectionClosed:
            raise
        except _GWSProtocolError as exc:
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, str(exc)) from None
        except _GWSError as exc:
            raise ConnectionClosed(str(exc)) from None
        return header

    # Header.decode_header calls ``stream.read``; EOF must surface as a short read.
    def read(self, n: int) -> bytes:
        return self._read(n)

    def read_frame(self) -> Frame:
        header = self._read_header()
        if header.flags:
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "reserved bits set without a negotiated extension")
        if header.opcode not in DATA_OPCODES + CONTROL_OPCODES + (OP_CONTINUATION,):
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, f"unknown opcode {header.opcode}")
        if not header.mask:
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        limit = self.max_message_size
        if limit is not None and header.opcode not in CONTROL_OPCODES:
            if self._fragment_size + header.length > limit:
                raise ProtocolViolation(CLOSE_TOO_BIG, f"message exceeds {limit} bytes")
        payload = unmask(self._read_exact(header.length), header.mask) if header.length else b""
        return Frame(bool(header.fin), header.opcode, payload)

    def read_message(self) -> Frame:
        """Return the next control frame or complete data message."""
        while True:
            frame = self.read_frame()
            if frame.opcode in CONTROL_OPCODES:
                return frame
            if frame.opcode == OP_CONTINUATION:
                if self._fragment_opcode is None:
                    raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "continuation frame without a message")
            elif self._fragment_opcode is not None:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "new message before the previous one ended")
            else:
                self._fragment_opcode = frame.opcode
                if frame.opcode == OP_TEXT:
                    self._utf8 = codecs.getincrementaldecoder("utf-8")()
            if self._utf8 is not None:
                try:
                    # Validate as fragments arrive so bad text fails fast.
                    self._utf8.decode(frame.payload, final=frame.fin)
                except UnicodeDecodeError:
                    raise ProtocolViolation(CLOSE_INVALID_DATA, "text message is not valid UTF-8") from None
            if frame.fin and not self._fragments:
                opcode = self._fragment_opcode
                self._reset()
                return Frame(True, opcode, frame.payload)
            self._fragments.append(frame.payload)
            self._fragment_size += len(frame.payload)
            if frame.fin:
                opcode = self._fragment_opcode
                payload = b"".join(self._fragments)
                self._reset()
                return Frame(True, opcode, payload)

    def _reset(self) -> None:
        self._fragments = []
        self._fragment_opcode = None
        self._fragment_size = 0
        self._utf8 = None
