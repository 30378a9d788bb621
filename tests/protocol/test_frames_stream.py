"""Large payloads in pieces: blocked unmasking, ``read_some`` reading, and
UTF-8 failing fast in the middle of a frame (Autobahn 6.4.3/6.4.4)."""

from __future__ import annotations

import io
import os
import random
import socket
import struct

import pytest

from syncws import protocol as ws
from syncws.protocol import (
    OP_BINARY,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    Frame,
    ProtocolError,
    encode_frame,
    unmask,
)

from ..support import BlockingReader, ConnectionClosed, RawClient, app_with, parse_frames, read_messages

MASK = b"\x37\xfa\x21\x3d"


def bytewise(payload: bytes, mask: bytes) -> bytes:
    return bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return encode_frame(opcode, payload, fin=fin, mask=os.urandom(4))


class Stream:
    """``read`` and a ``read_some`` that hands out pieces of random size (1..n)."""

    def __init__(self, data: bytes, seed: int = 0, largest: int | None = None) -> None:
        self._buf = io.BytesIO(data)
        self._random = random.Random(seed)
        self._largest = largest

    def read(self, n: int) -> bytes:
        return self._buf.read(n)

    def read_some(self, n: int) -> bytes:
        if self._largest is not None:
            n = min(n, self._largest)
        return self._buf.read(self._random.randint(1, n))


# -- unmask ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [65535, 65536, 65537, 3 * 65536 + 3, 200_001])
def test_blocked_unmask_matches_bytewise_xor(n):
    payload = os.urandom(n)
    mask = os.urandom(4)
    assert unmask(payload, mask) == bytewise(payload, mask)


def test_unmask_takes_any_bytes_like_object():
    payload = os.urandom(70_000)
    expected = bytewise(payload, MASK)
    assert unmask(bytearray(payload), MASK) == expected
    assert unmask(memoryview(payload), MASK) == expected
    assert unmask(memoryview(payload)[3:], MASK) == bytewise(payload[3:], MASK)


# -- read_some ---------------------------------------------------------------------------


def mixed_stream(seed: int) -> tuple[bytes, list[Frame]]:
    rng = random.Random(seed)
    data, expected = b"", []
    for _ in range(6):
        size = rng.choice([0, 1, 3, 125, 126, 4096, 65535, 65536, 65537, 150_000])
        if rng.random() < 0.5:
            opcode, payload = OP_BINARY, rng.randbytes(size)
        else:
            opcode, payload = OP_TEXT, ("aé€😀" * size).encode("utf-8")[:size].decode("utf-8", "ignore").encode()
        cuts = sorted(rng.randint(0, len(payload)) for _ in range(rng.randint(0, 3)))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=False)]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            data += client_frame(opcode if i == 0 else OP_CONTINUATION, piece, fin=last)
            if last:
                expected.append(Frame(True, opcode, payload))
            if rng.random() < 0.3:  # between fragments it comes out before the message
                data += client_frame(OP_PING, b"ping!")
                expected.append(Frame(True, OP_PING, b"ping!"))
    return data, expected


@pytest.mark.parametrize("seed", range(8))
def test_read_some_in_random_pieces_gives_the_same_messages(seed):
    data, expected = mixed_stream(seed)
    assert read_messages(BlockingReader(io.BytesIO(data).read, None)) == expected
    stream = Stream(data, seed)
    assert read_messages(BlockingReader(stream.read, None, read_some=stream.read_some)) == expected


def test_control_frame_payload_in_one_byte_pieces():
    stream = Stream(client_frame(OP_PING, b"are you there"), largest=1)
    assert BlockingReader(stream.read, None, read_some=stream.read_some).read_message() == Frame(
        True, OP_PING, b"are you there"
    )


def test_eof_inside_a_payload_with_read_some_is_connection_closed():
    stream = Stream(client_frame(OP_BINARY, b"x" * 1000)[:-10])
    with pytest.raises(ConnectionClosed):
        BlockingReader(stream.read, None, read_some=stream.read_some).read_message()


def test_characters_split_between_reads_are_valid():
    text = "€😀é".encode() * 1000
    stream = Stream(client_frame(OP_TEXT, text), largest=3)
    assert BlockingReader(stream.read, None, read_some=stream.read_some).read_message().payload == text


# -- UTF-8 fails fast in the middle of a frame -------------------------------------------------


# a bad byte, an overlong form, a surrogate, a prefix above U+10FFFF, a valid character then 0xff
BAD_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90", b"\xce\xba\xff"]


@pytest.mark.parametrize("bad", BAD_UTF8)
def test_invalid_utf8_fails_before_the_rest_of_the_frame_arrives(bad):
    # The frame announces 1000 bytes; only its first few ever arrive.  Reading
    # it whole would end in ConnectionClosed; validating as it arrives finds
    # the bad bytes first.
    payload = (b"valid " + bad).ljust(1000, b"x")
    partial = client_frame(OP_TEXT, payload)[: 2 + 2 + 4 + len(b"valid " + bad)]
    stream = Stream(partial, largest=8)
    with pytest.raises(ProtocolError) as info:
        BlockingReader(stream.read, None, read_some=stream.read_some).read_message()
    assert info.value.code == ws.CLOSE_INVALID_DATA
    with pytest.raises(ProtocolError) as info:  # all of it in one piece: the same
        BlockingReader(io.BytesIO(partial).read, None).read_message()
    assert info.value.code == ws.CLOSE_INVALID_DATA


def test_server_fails_invalid_utf8_mid_frame_without_waiting_for_the_rest(start_server):
    server = start_server(app_with(message=lambda peer, msg: peer.send(msg)))
    with RawClient(server) as raw:
        payload = (b"hello \xf4\x90\x80\x80").ljust(10_000, b"x")
        mask = os.urandom(4)
        frame = encode_frame(OP_TEXT, payload, mask=mask)
        raw.sock.sendall(frame[: 2 + 2 + 4 + 12])  # header and the first 12 bytes only
        frames = parse_frames(raw.read_to_eof())
    assert frames and frames[0][0] == ws.OP_CLOSE
    assert struct.unpack("!H", frames[0][1][:2])[0] == 1007


def test_sixteen_mib_text_message_through_a_server(start_server):
    server = start_server(
        app_with(message=lambda peer, msg: peer.send(msg)),
        max_message_size=32 * 1024 * 1024,
        max_buffer_size=32 * 1024 * 1024,
    )
    text = ("syncws é€😀 " * (16 * 1024 * 1024 // 16)).encode("utf-8")
    with RawClient(server, timeout=30) as raw:
        raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.sock.sendall(encode_frame(OP_TEXT, text, mask=MASK))
        opcode, payload = raw.read_frame()
    assert opcode == OP_TEXT and payload == text
