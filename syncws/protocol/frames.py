"""RFC 6455 framing, without I/O.

Everything above this module speaks in terms of :class:`Frame`,
:func:`encode_frame` and :class:`FrameParser`.  The parser is fed the bytes a
socket returned and hands back frames; it never reads a socket itself, so the
connection that drives it decides how much work to do before yielding to other
connections, and these rules are tested with plain bytes.
"""

from __future__ import annotations

import codecs
import enum
import functools
import struct
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from ..base.errors import ProtocolError


class Inflater(Protocol):
    """What the parser needs of permessage-deflate (:class:`syncws.protocol.deflate.Inflater`)."""

    def inflate(self, data: bytes, final: bool, limit: int | None) -> bytes: ...


__all__ = [
    "BYTES_PER_FRAGMENT",
    "CLOSE_ABNORMAL",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_INVALID_DATA",
    "CLOSE_NORMAL",
    "CLOSE_NO_STATUS",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TOO_BIG",
    "CONTROL_OPCODES",
    "DATA_OPCODES",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "CloseCode",
    "Frame",
    "FrameParser",
    "Opcode",
    "ProtocolError",
    "decode_close_payload",
    "encode_close_payload",
    "encode_frame",
    "encode_header",
    "is_valid_close_code",
    "max_frames",
    "unmask",
    "unmask_python",
]


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 §5.2)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """Close codes (RFC 6455 §7.4.1 and the IANA registry)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # never sent: "the close frame had no code"
    ABNORMAL = 1006  # never sent: "the connection dropped without a close frame"
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014


# Short names for the members the rest of the package uses most.
OP_CONTINUATION = Opcode.CONTINUATION
OP_TEXT = Opcode.TEXT
OP_BINARY = Opcode.BINARY
OP_CLOSE = Opcode.CLOSE
OP_PING = Opcode.PING
OP_PONG = Opcode.PONG

DATA_OPCODES = (OP_TEXT, OP_BINARY)
CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)

CLOSE_NORMAL = CloseCode.NORMAL
CLOSE_GOING_AWAY = CloseCode.GOING_AWAY
CLOSE_PROTOCOL_ERROR = CloseCode.PROTOCOL_ERROR
CLOSE_NO_STATUS = CloseCode.NO_STATUS
CLOSE_ABNORMAL = CloseCode.ABNORMAL
CLOSE_INVALID_DATA = CloseCode.INVALID_DATA
CLOSE_POLICY_VIOLATION = CloseCode.POLICY_VIOLATION
CLOSE_TOO_BIG = CloseCode.TOO_BIG
CLOSE_INTERNAL_ERROR = CloseCode.INTERNAL_ERROR


class Frame(NamedTuple):
    """One control frame or whole data message.

    A named tuple because one is made per message: 0.22 µs against a frozen
    dataclass's 0.40 µs (timeit, on the development machine).  The parser
    makes them with ``tuple.__new__(Frame, ...)``, which skips the named
    tuple's ``__new__`` written in Python: 0.10 µs (timeit, 2026-12-07).
    """

    fin: bool
    opcode: int
    payload: bytes


_SMALL_PIECE = 4096  # message pieces below this size are copied together (FrameParser._keep)
_BLOCK = 64 * 1024  # unmask in blocks this size: cache-friendly, one key for all blocks


@functools.lru_cache(maxsize=16)
def _block_key(mask: bytes) -> int:
    return int.from_bytes(mask * (_BLOCK // 4), "little")


def _xor(payload: bytes | bytearray | memoryview, mask: bytes, n: int) -> bytes:
    key = (mask * (n // 4 + 1))[:n]
    value = int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
    return value.to_bytes(n, "little")


def unmask_python(payload: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """XOR a payload (any bytes-like object) with the 4-byte mask, at C speed.

    gevent-websocket unmasks byte by byte in Python.  Here the payload becomes
    one big integer XORed with the repeated mask: every step (``from_bytes``,
    ``^``, ``to_bytes``) runs in C.  Large payloads go in 64 KiB blocks that
    share one cached key, about twice as fast as one huge integer (16 MiB:
    ~650 MiB/s against ~280 MiB/s on the reference machine).  This is
    :func:`unmask` when no C implementation is installed.
    """
    n = len(payload)
    if n == 0:
        return b""
    if n <= _BLOCK:
        return _xor(payload, mask, n)
    key = _block_key(bytes(mask))
    view = memoryview(payload)
    full = n - n % _BLOCK
    parts = []
    for i in range(0, full, _BLOCK):
        parts.append((int.from_bytes(view[i : i + _BLOCK], "little") ^ key).to_bytes(_BLOCK, "little"))
    if full < n:
        parts.append(_xor(view[full:], mask, n - full))
    return b"".join(parts)


def load_c_unmask() -> Callable[[Any, bytes], bytes] | None:
    """websockets' C ``apply_mask``, when that library is installed; else None.

    Pure Python tops out at a few hundred MiB/s (see :func:`unmask_python`),
    which makes unmasking most of the CPU of a large message.  The websockets
    package ships the same XOR as a small C function (about 1 GiB/s here; it
    takes any bytes-like object and a 4-byte mask, returns bytes), so syncws
    uses it when present (``pip install 'syncws[speedups]'``) instead of
    carrying a compiled extension of its own.
    """
    try:
        from websockets.speedups import apply_mask
    except ImportError:
        return None
    return apply_mask


#: XOR a payload with a 4-byte mask: the C version when installed, else :func:`unmask_python`.
unmask: Callable[[Any, bytes], bytes] = load_c_unmask() or unmask_python


def encode_header(fin: bool, opcode: int, length: int, mask: bytes | None = None, rsv1: bool = False) -> bytes:
    """A frame header: 2, 4 or 10 bytes, plus the 4-byte mask when one is given.

    ``rsv1`` marks the first frame of a compressed message (permessage-deflate).
    """
    first = opcode | 0x80 if fin else opcode
    if rsv1:
        first |= 0x40
    masked = 0x80 if mask else 0
    if length < 126:
        header = struct.pack("!BB", first, masked | length)
    elif length < 0x10000:
        header = struct.pack("!BBH", first, masked | 126, length)
    else:
        header = struct.pack("!BBQ", first, masked | 127, length)
    return header + mask if mask else header


def encode_frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None, rsv1: bool = False
) -> bytes:
    """Return one complete frame.  Servers send unmasked; clients pass a mask."""
    header = encode_header(fin, opcode, len(payload), mask, rsv1)
    if mask is None:
        return header + payload
    return header + unmask(payload, mask)


def encode_close_payload(code: int | None, reason: str = "") -> bytes:
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


def decode_close_payload(payload: bytes) -> tuple[int | None, str | None]:
    """Parse a received close payload into ``(code, reason)``.

    An empty payload means "no status": both are None.
    """
    if not payload:
        return None, None
    if len(payload) == 1:
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
    (code,) = struct.unpack("!H", payload[:2])
    if not is_valid_close_code(code):
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(CLOSE_INVALID_DATA, "close reason is not valid UTF-8") from None
    return code, reason


_Utf8Decoder = codecs.getincrementaldecoder("utf-8")

#: ``max_message_size`` also bounds the number of frames in one message: a
#: limit of L bytes admits at most ``16 + L // BYTES_PER_FRAGMENT`` frames
#: (16,400 under the 1 MiB default), else 1009.  Each header costs the server
#: work while an empty continuation frame adds nothing to the size, so without
#: this a message of empty fragments could go on for ever.
BYTES_PER_FRAGMENT = 64


_ALWAYS_ALLOWED_FRAMES = 16


def max_frames(max_message_size: int) -> int:
    """How many frames one message may have under this size limit."""
    return _ALWAYS_ALLOWED_FRAMES + max_message_size // BYTES_PER_FRAGMENT


class ParserState(enum.Enum):
    """What the frame parser is waiting for (docs/architecture.md has the diagram)."""

    HEADER = "header"  # a frame's first bytes: opcode, length, mask
    PAYLOAD = "payload"  # the rest of a frame whose header was read


_HEADER, _PAYLOAD = ParserState.HEADER, ParserState.PAYLOAD

#: Every change of the parser's state: (from, what causes it, to); see connection.TRANSITIONS.
PARSER_TRANSITIONS: tuple[tuple[ParserState, str, ParserState], ...] = (
    (_HEADER, "a whole header", _PAYLOAD),
    (_PAYLOAD, "the payload's last byte: a frame", _HEADER),
)
_COMPACT = 64 * 1024  # drop consumed input once this much has piled up in front
_KEEP = 4096  # a buffer larger than this is replaced, not reused, once everything in it is consumed


class FrameParser:
    """Sans-I/O RFC 6455 parser for the server side: bytes in, frames out.

    :meth:`feed` hands it whatever the socket returned; :meth:`next_frame`
    returns the next control frame or complete data message, or None when it
    needs more bytes.  It never blocks and never reads a socket, so the
    caller decides how much work to do between yields, and it is tested with
    plain bytes.

    Costs are bounded by what has arrived, not by what a header announces:

    * a header whose length would take the message over ``max_message_size``
      fails with 1009 before one payload byte is needed (a header claiming
      2**63 bytes costs nothing);
    * payloads are unmasked and (for text) UTF-8 validated piece by piece as
      they arrive, so invalid text fails with 1007 before the rest of its
      frame arrives;
    * a fragmented message is assembled from its pieces, joined once: it
      costs about its size whatever the fragment sizes, and the limit also
      bounds its number of frames (:data:`BYTES_PER_FRAGMENT`);
    * with permessage-deflate (an ``inflater``), a message whose first frame
      has RSV1 set is inflated piece by piece as it arrives, and the limit
      applies to the inflated size (:mod:`syncws.protocol.deflate`);
    * consumed input is dropped as parsing goes on, so the buffer holds at
      most one network read plus an unfinished header.

    Control frames come out as soon as they are whole, also in the middle of
    a fragmented message, so the caller can answer a ping at once.
    """

    def __init__(self, max_message_size: int | None, inflater: Inflater | None = None) -> None:
        self.max_message_size = max_message_size
        self.inflater = inflater  # permessage-deflate was agreed: RSV1 marks a compressed message
        #: Bytes produced by inflating so far: the work a small compressed frame
        #: causes, which its wire size does not show (the I/O layer's fairness counts it).
        self.inflated = 0
        self._compressed = False  # the message being assembled is compressed
        self._buf = bytearray()
        self._pos = 0
        self._state = _HEADER
        # the frame being read
        self._fin = False
        self._opcode = 0
        self._mask = b""
        self._remaining = 0
        self._offset = 0  # payload bytes of this frame already consumed (mask phase)
        # the data message being assembled
        self._message_opcode: int | None = None
        # Unmasked pieces, joined once when the message is whole (see _keep).
        self._message: list[bytes | bytearray] = []
        self._size = 0  # payload bytes announced so far
        self._frames = 0
        self._text = False  # the message being assembled is text: validate its UTF-8
        self._utf8: Any = None  # the incremental decoder, once a piece was not ASCII
        #: True when :meth:`next_frame` returned None for want of bytes: feed more.
        #: (An attribute, not a property: it is read after every frame.)
        self.needs_data = True
        self._frame_done = False  # ... or it finished a frame that ends no message

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet consumed."""
        return len(self._buf) - self._pos

    @property
    def in_frame(self) -> bool:
        """True in the middle of a frame: the input must not end here."""
        return self._state is _PAYLOAD or self.buffered > 0

    def feed(self, data: bytes) -> None:
        self.needs_data = False
        if self._pos >= _COMPACT or (self._pos and self._pos == len(self._buf)):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def release(self) -> None:
        """Nothing more will be fed: let go of the buffers, a half-assembled message and the inflater.

        Freed now, by reference counting, rather than whenever the objects
        that hold this parser are collected (a dead session may sit in a
        reference cycle until the cycle collector runs: after 4,400
        decompression bombs that was 400 MiB).
        """
        self._buf = bytearray()
        self._pos = 0
        self._message = []
        self._utf8 = None
        self.inflater = None

    def next_frame(self) -> Frame | None:
        """The next control frame or whole data message, or None.

        None either because more bytes are needed (:attr:`needs_data`) or
        because one frame of a fragmented message was consumed: the parser
        handles at most one frame per call, so the caller can bound how much
        work one client gets before others are served.
        """
        if self._state is _HEADER and len(self._buf) - self._pos < 2:
            self.needs_data, self._frame_done = True, False  # between messages: no header yet (saves two calls)
            return None
        frame = self._next_frame()
        self.needs_data = frame is None and not self._frame_done
        self._frame_done = False
        return frame

    @property
    def state(self) -> ParserState:
        return self._state

    def _next_frame(self) -> Frame | None:
        if self._state is _HEADER:
            if not self._read_header():
                return None
            self._state = _PAYLOAD
        if self._opcode >= OP_CLOSE:
            # Control frames are at most 125 bytes: wait for all of it.
            if self.buffered < self._remaining:
                return None
            return self._control_frame()
        return self._read_payload()

    # -- headers ---------------------------------------------------------------
    def _read_header(self) -> bool:
        buf, pos = self._buf, self._pos
        available = len(buf) - pos  # at least 2: next_frame() checked
        first, second = buf[pos], buf[pos + 1]
        length = second & 0x7F
        size = 2
        if length == 126:
            size = 4
        elif length == 127:
            size = 10
        if available < size + 4:
            # Check what can be checked already, so a bad frame fails at once.
            self._check_first_byte(first, second)
            return False
        if size == 4:
            length = (buf[pos + 2] << 8) | buf[pos + 3]
        elif size == 10:
            (length,) = struct.unpack_from("!Q", buf, pos + 2)
            if length >> 63:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "frame length with the top bit set")
        opcode = self._check_first_byte(first, second)
        fin = bool(first & 0x80)
        if opcode >= OP_CLOSE:
            if not fin:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
            if length > 125:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "control frame longer than 125 bytes")
        else:
            self._check_sequence(opcode, length, bool(first & 0x40))
        self._mask = bytes(buf[pos + size : pos + size + 4])
        self._pos = pos + size + 4
        self._fin = fin
        self._opcode = opcode
        self._remaining = length
        self._offset = 0
        return True

    def _check_first_byte(self, first: int, second: int) -> int:
        opcode = first & 0x0F
        reserved = first & 0x70
        if reserved:
            if reserved != 0x40 or self.inflater is None:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "reserved bits set without a negotiated extension")
            if opcode == OP_CONTINUATION or opcode >= OP_CLOSE:
                # RFC 7692 §6.1: only a message's first frame says it is compressed.
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "RSV1 set on a continuation or control frame")
        if opcode not in _KNOWN_OPCODES:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if not second & 0x80:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        return opcode

    def _check_sequence(self, opcode: int, length: int, compressed: bool) -> None:
        """Message-level checks of a data frame's header, before its payload."""
        if opcode == OP_CONTINUATION:
            if self._message_opcode is None:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "continuation frame without a message")
            size, frames = self._size + length, self._frames + 1
        else:
            if self._message_opcode is not None:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "new message before the previous one ended")
            size, frames = length, 1
        limit = self.max_message_size
        if limit is not None:
            if size > limit:
                raise ProtocolError(CLOSE_TOO_BIG, f"message exceeds {limit} bytes")
            if frames > _ALWAYS_ALLOWED_FRAMES and frames > max_frames(limit):  # (no call for most messages)
                raise ProtocolError(CLOSE_TOO_BIG, f"message in more than {max_frames(limit)} frames")
        self._size, self._frames = size, frames
        if opcode != OP_CONTINUATION:
            self._message_opcode = opcode
            self._compressed = compressed
            self._text = opcode == OP_TEXT
            self._utf8 = None

    # -- payloads --------------------------------------------------------------
    def _take(self, n: int) -> bytes:
        """Consume ``n`` buffered payload bytes of the current frame, unmasked."""
        pos = self._pos
        data = memoryview(self._buf)[pos : pos + n]
        try:
            shift = self._offset % 4  # keep the mask aligned with the payload offset
            mask = self._mask[shift:] + self._mask[:shift] if shift else self._mask
            result = unmask(data, mask)
        finally:
            data.release()
        self._pos = pos = pos + n
        self._offset += n
        self._remaining -= n
        if pos == len(self._buf) and pos > _KEEP:
            # Everything read is consumed: give a large buffer back now, not
            # on the next read (an idle peer that once sent 64 KiB kept 136 KiB).
            self._buf = bytearray()
            self._pos = 0
        return result

    def _check_utf8(self, data: bytes, final: bool) -> None:
        """Validate one piece of a text message as it arrives (so a bad one fails at once).

        Most text is ASCII, and an ASCII piece is whole characters: the
        caller checks that with ``isascii`` in C and makes no call at all.
        The incremental decoder is made here, for the first piece that is not
        ASCII, and then sees every later piece, since a character may be
        split between pieces.
        """
        decoder = self._utf8
        if decoder is None:
            decoder = self._utf8 = _Utf8Decoder()
        try:
            decoder.decode(data, final)
        except UnicodeDecodeError:
            raise ProtocolError(CLOSE_INVALID_DATA, "text message is not valid UTF-8") from None

    def _keep(self, data: bytes) -> None:
        """Hold one unmasked piece of the message being assembled.

        Large pieces are kept as they are and joined once at the end: copying
        them into one growing buffer and out again would move every byte of a
        16 MiB message twice more.  Small pieces go into a bytearray, so a
        message of many one-byte fragments costs about its size, not an
        object per fragment.
        """
        parts = self._message
        if len(data) >= _SMALL_PIECE:
            parts.append(data)
        elif parts and isinstance(parts[-1], bytearray):
            parts[-1] += data
        else:
            parts.append(bytearray(data))

    def _control_frame(self) -> Frame:
        payload = self._take(self._remaining)
        self._state = _HEADER
        return tuple.__new__(Frame, (True, self._opcode, payload))  # (see Frame)

    def _read_payload(self) -> Frame | None:
        """Consume what has arrived of a data frame; the message once it is whole."""
        n = min(len(self._buf) - self._pos, self._remaining)  # (self.buffered, without a call per frame)
        if n == 0 and self._remaining:
            return None
        single = self._fin and self._offset == 0 and n == self._remaining and not self._message
        data = self._take(n)
        done = self._remaining == 0
        if self._compressed:
            assert self.inflater is not None  # RSV1 is refused without one
            data = self.inflater.inflate(data, self._fin and done, self.max_message_size)
            self.inflated += len(data)
        if self._text and (self._utf8 is not None or not data.isascii()):  # (ASCII needs no call)
            self._check_utf8(data, self._fin and done)
        if not done:
            self._keep(data)
            return None
        self._state = _HEADER
        if not self._fin:
            self._keep(data)
            self._frame_done = True
            return None
        opcode = self._message_opcode
        assert opcode is not None
        if single:
            payload = data
        else:
            self._keep(data)
            payload = b"".join(self._message)
        self._message = []
        self._message_opcode = None
        self._utf8 = None
        self._size = self._frames = 0
        return tuple.__new__(Frame, (True, opcode, payload))  # (see Frame)


_KNOWN_OPCODES = frozenset(DATA_OPCODES + CONTROL_OPCODES + (OP_CONTINUATION,))
