"""permessage-deflate (RFC 7692), without I/O: negotiation, compressing, inflating.

**Negotiation.** :func:`negotiate` reads the client's ``Sec-WebSocket-Extensions``
offers in their order of preference and accepts the first permessage-deflate
offer it can honour; the :class:`Agreement` it returns carries the exact value
of the header for the 101.  An offer with an unknown parameter, a parameter
twice, or a bad value is *declined* (RFC 7692 §5: "MUST decline"), and the next
offer is tried; a header that does not parse at all fails the handshake with
400, like any malformed request.  ``server_max_window_bits=8`` is declined too:
zlib cannot compress with a 256-byte window.

**The server never keeps a compression context.**  The 101 always carries
``server_no_context_takeover`` (RFC 7692 §7.1.1.1 lets a server add it), so
every message is compressed on its own.  What that buys: no compressor per
connection (zlib's deflate state is the large one), and a publish compresses
once for every recipient that agreed to the same window, instead of once per
recipient.  What it costs: repeated small messages compress less well than
with a shared history.

**Inflating** keeps the client's history across messages unless it agreed to
``client_no_context_takeover``; the decompressor is made for the first
compressed message, so a peer that never sends one costs nothing.  The size
limit applies to the *inflated* size and is enforced while inflating: zlib is
never asked for more than the room left, so a small frame that would inflate
to gigabytes is stopped after about the limit (closing with 1009).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

from ..base.errors import HandshakeError, ProtocolError
from .frames import CLOSE_INVALID_DATA, CLOSE_TOO_BIG

__all__ = [
    "EXTENSION",
    "MAX_EXTENSIONS_LENGTH",
    "Agreement",
    "Inflater",
    "compress",
    "negotiate",
    "parse_extensions",
]

EXTENSION = "permessage-deflate"
#: What a sync flush ends with; removed from every compressed message (RFC 7692 §7.2.1).
_TAIL = b"\x00\x00\xff\xff"
_WINDOW_BITS = frozenset(str(bits) for bits in range(8, 16))
_MEM_LEVEL = 5  # 8 KiB of hash table instead of zlib's default 128 KiB (websockets chooses the same)

# RFC 7230 tokens and quoted strings, as RFC 6455 §9.1 writes the header.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
# Matched against stripped text: no two ``\s*`` side by side, so a value padded
# with thousands of spaces is rejected in linear time (two adjacent ``\s*``
# backtrack quadratically: 16,000 spaces cost a second of hub time).
_PARAM = re.compile(rf"({_TOKEN})(?:\s*=\s*({_TOKEN}|{_QUOTED}))?")
_NAME = re.compile(_TOKEN)
#: No real offer comes near this (a full permessage-deflate offer is under 120
#: characters); longer values are refused with 400 before any parsing.  A
#: constant, not an option: ``max_header_size`` already bounds the whole block.
MAX_EXTENSIONS_LENGTH = 4096

Params = list[tuple[str, str | None]]


def parse_extensions(values: list[str]) -> list[tuple[str, Params]]:
    """The offers in ``Sec-WebSocket-Extensions`` header values, in order.

    Raises :class:`HandshakeError` (400) when a value does not follow the
    header's grammar.
    """
    if sum(len(value) for value in values) > MAX_EXTENSIONS_LENGTH:
        raise HandshakeError(400, f"Sec-WebSocket-Extensions is longer than {MAX_EXTENSIONS_LENGTH} characters")
    offers: list[tuple[str, Params]] = []
    for value in values:
        for item in _split(value, ","):
            if not item.strip():
                continue  # "a, , b": empty list elements are allowed (RFC 7230 §7)
            parts = _split(item, ";")
            name = _NAME.fullmatch(parts[0].strip())
            if name is None:
                raise HandshakeError(400, f"malformed Sec-WebSocket-Extensions: {value[:80]!r}")
            params: Params = []
            for part in parts[1:]:
                match = _PARAM.fullmatch(part.strip())
                if match is None:
                    raise HandshakeError(400, f"malformed Sec-WebSocket-Extensions: {value[:80]!r}")
                raw = match.group(2)
                if raw is not None and raw.startswith('"'):
                    raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
                params.append((match.group(1).lower(), raw))
            offers.append((name.group(0).lower(), params))
    return offers


def _split(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


@dataclass(frozen=True)
class Agreement:
    """What one connection agreed to; hashable, so a publish compresses once per distinct agreement."""

    server_max_window_bits: int  # we compress with this window (9-15)
    client_max_window_bits: int  # the client compresses with at most this one (8-15)
    client_no_context_takeover: bool
    header: str  # the Sec-WebSocket-Extensions value of the 101
    #: Messages compressed for one agreement suit every agreement with the same
    #: key.  Made once here: a publish looks it up once per recipient.
    compress_key: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "compress_key", f"deflate{self.server_max_window_bits}")


def negotiate(offers: list[tuple[str, Params]], max_window_bits: int = 15) -> Agreement | None:
    """The first permessage-deflate offer we can accept, or None to decline them all.

    ``max_window_bits`` caps both windows: ours outright, the client's when it
    lets the server choose (``client_max_window_bits`` without a value).
    """
    for name, params in offers:
        if name == EXTENSION:
            agreement = _accept(params, max_window_bits)
            if agreement is not None:
                return agreement
    return None


def _accept(params: Params, cap: int) -> Agreement | None:
    seen: set[str] = set()
    server_bits: int | None = None
    client_bits: int | None = None
    client_may_limit = False
    client_no_takeover = False
    for name, value in params:
        if name in seen:
            return None  # a parameter twice: decline
        seen.add(name)
        if name == "server_no_context_takeover" and value is None:
            pass  # we never keep a context anyway
        elif name == "client_no_context_takeover" and value is None:
            client_no_takeover = True
        elif name == "server_max_window_bits" and value in _WINDOW_BITS:
            server_bits = int(value)
        elif name == "client_max_window_bits" and (value is None or value in _WINDOW_BITS):
            client_may_limit = True
            client_bits = int(value) if value is not None else None
        else:
            return None  # unknown parameter, or a value it cannot have: decline
    ours = min(server_bits or 15, cap)
    if ours < 9:
        return None  # zlib cannot compress with a 256-byte window
    pieces = [EXTENSION, "server_no_context_takeover"]
    if client_no_takeover:
        pieces.append("client_no_context_takeover")
    if server_bits is not None or ours < 15:
        pieces.append(f"server_max_window_bits={ours}")
    theirs = 15
    if client_may_limit:
        theirs = min(client_bits or 15, cap)
        if theirs < 15 or client_bits is not None:
            pieces.append(f"client_max_window_bits={theirs}")
    return Agreement(ours, theirs, client_no_takeover, "; ".join(pieces))


def compress(payload: bytes, window_bits: int, level: int = 6) -> bytes:
    """One message's compressed payload, on its own (no context kept)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -window_bits, _MEM_LEVEL)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4] if data.endswith(_TAIL) else data


class Inflater:
    """Inflates one connection's compressed messages, piece by piece, within a size limit."""

    __slots__ = ("_decompressor", "_produced", "_reset", "_window_bits")

    def __init__(self, agreement: Agreement) -> None:
        # zlib inflates raw deflate with windows of 9-15 bits; a client that
        # agreed to 8 writes what a 9-bit window reads.
        self._window_bits = max(agreement.client_max_window_bits, 9)
        self._reset = agreement.client_no_context_takeover
        self._decompressor: zlib._Decompress | None = None
        self._produced = 0

    def inflate(self, data: bytes, final: bool, limit: int | None) -> bytes:
        """Inflate the next piece of a message; ``final``: it is the message's last.

        ``limit`` bounds the whole message's inflated size: exceeding it is a
        :class:`ProtocolError` with 1009, raised before more than
        ``limit + 1`` bytes were produced.
        """
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = self._decompressor = zlib.decompressobj(-self._window_bits)
        if final:
            data += _TAIL
        room = 0 if limit is None else limit - self._produced + 1
        try:
            out = decompressor.decompress(data, room)
        except zlib.error as exc:
            raise ProtocolError(CLOSE_INVALID_DATA, f"compressed message does not inflate: {exc}") from None
        self._produced += len(out)
        if limit is not None and self._produced > limit:
            raise ProtocolError(CLOSE_TOO_BIG, f"message exceeds {limit} bytes once inflated")
        if final:
            self._produced = 0
            if self._reset:
                self._decompressor = None
        return out
