"""WebSocket frames on the client side: masked frames out, server frames parsed, a blocking reader
that drives the server's sans-I/O parser."""

from __future__ import annotations

import struct

from syncws.protocol import encode_frame

MASK = b"\x37\xfa\x21\x3d"  # RFC 6455's sample masking key (section 5.7)


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


class BlockingReader:
    """Drives a sans-I/O :class:`syncws.protocol.FrameParser` from a blocking ``read(n)``.

    ``read_some(n)``, when given, is used instead (1 to n bytes per call), as
    the server's socket reads are.  EOF in the middle of a frame, or before
    any frame, raises ``ConnectionClosed`` (a test-side exception).
    """

    def __init__(self, read, max_message_size, read_some=None, chunk: int = 65536) -> None:
        from syncws.protocol import FrameParser

        self.parser = FrameParser(max_message_size)
        self._read = read_some or read
        self._chunk = chunk

    def read_message(self):
        while True:
            frame = self.parser.next_frame()
            if frame is not None:
                return frame
            if not self.parser.needs_data:
                continue
            data = self._read(self._chunk)
            if not data:
                raise ConnectionClosed("input ended" + (" in a frame" if self.parser.in_frame else ""))
            self.parser.feed(data)


class ConnectionClosed(Exception):
    """The input of a :class:`BlockingReader` ended."""


def read_messages(reader) -> list:
    """Every message a BlockingReader returns before its input ends."""
    messages = []
    while True:
        try:
            messages.append(reader.read_message())
        except ConnectionClosed:
            return messages
