"""Sans-I/O tests of :mod:`syncws.protocol`: framing, masking, assembly, limits."""

from __future__ import annotations

import io
import struct
import sys

import pytest

from syncws import protocol as ws
from syncws.protocol import (
    BYTES_PER_FRAGMENT,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Frame,
    FrameParser,
    ProtocolError,
    decode_close_payload,
    encode_close_payload,
    encode_frame,
    frames,
    is_valid_close_code,
    max_frames,
    unmask,
    unmask_python,
)

from ..support import MASK, BlockingReader, ConnectionClosed, client_frame, read_messages


def raw_header(first_byte: int, length: int, mask: bytes | None = MASK) -> bytes:
    """Hand-built header, for what ``encode_frame`` refuses to produce."""
    second = 0x80 if mask is not None else 0
    if length < 126:
        head = bytes([first_byte, second | length])
    elif length <= 0xFFFF:
        head = bytes([first_byte, second | 126]) + struct.pack("!H", length)
    else:
        head = bytes([first_byte, second | 127]) + struct.pack("!Q", length)
    return head + (mask or b"")


def reader_for(data: bytes, max_message_size: int | None = 1 << 20) -> BlockingReader:
    return BlockingReader(io.BytesIO(data).read, max_message_size)


def messages_until_eof(data: bytes, max_message_size: int | None = 1 << 20) -> list[Frame]:
    """Every message a reader returns from ``data`` before the end of the data (ConnectionClosed)."""
    return read_messages(reader_for(data, max_message_size))


def violation_code(data: bytes, max_message_size: int | None = 1 << 20) -> int:
    """Read one message from ``data``, which must raise ProtocolError; return its close code.

    The reader gets ``data`` and nothing more: a parser that wanted more bytes
    before deciding would end in ConnectionClosed instead, and fail the test.
    """
    with pytest.raises(ProtocolError) as info:
        reader_for(data, max_message_size).read_message()
    return info.value.code


# -- unmask ----------------------------------------------------------------------------


def test_unmask_rfc_example():
    # RFC 6455 §5.7: a masked text frame containing "Hello".
    frame = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    assert unmask(frame[6:], frame[2:6]) == b"Hello"


@pytest.mark.parametrize("unmask", [unmask, unmask_python], ids=["installed", "python"])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 125, 126, 1000, 65537])
def test_unmask_matches_bytewise_xor_and_is_an_involution(n, unmask):
    payload = bytes((i * 31 + 7) % 256 for i in range(n))
    mask = b"\x01\x80\xff\x5a"
    expected = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert unmask(payload, mask) == expected
    assert unmask(unmask(payload, mask), mask) == payload
    assert len(unmask(payload, mask)) == n


@pytest.mark.parametrize("n", [0, 3, 4097, 65536, 65536 * 2, 65536 * 3 + 5])
def test_python_and_c_unmask_agree(n):
    payload = bytes((i * 131 + 17) % 256 for i in range(n))
    mask = b"\x9c\x01\xe4\x7f"
    assert unmask_python(payload, mask) == unmask(payload, mask)
    assert unmask_python(memoryview(payload)[1:], mask) == unmask(memoryview(payload)[1:], mask)


def test_c_unmask_is_websockets_when_installed(monkeypatch):
    from websockets.speedups import apply_mask

    assert frames.load_c_unmask() is apply_mask
    assert unmask is apply_mask  # the test extras install websockets: the C path is the one tested
    monkeypatch.setitem(sys.modules, "websockets.speedups", None)  # as if websockets were absent
    assert frames.load_c_unmask() is None


def test_unmask_keeps_leading_zero_bytes():
    # Integer arithmetic must not drop leading zero bytes of the result.
    mask = b"\xaa\xbb\xcc\xdd"
    assert unmask(mask + b"\xaa", mask) == b"\x00\x00\x00\x00\x00"


# -- encoding --------------------------------------------------------------------------


def test_encode_small_unmasked_server_frame():
    assert encode_frame(OP_TEXT, b"hi") == b"\x81\x02hi"
    assert encode_frame(OP_BINARY, b"") == b"\x82\x00"
    assert encode_frame(OP_TEXT, b"ab", fin=False) == b"\x01\x02ab"
    assert encode_frame(OP_CONTINUATION, b"c") == b"\x80\x01c"


def test_encode_16_and_64_bit_lengths():
    payload = b"x" * 126
    frame = encode_frame(OP_BINARY, payload)
    assert frame[:4] == b"\x82\x7e\x00\x7e"
    assert frame[4:] == payload

    payload = b"y" * 65535
    frame = encode_frame(OP_BINARY, payload)
    assert frame[:4] == b"\x82\x7e\xff\xff"
    assert len(frame) == 4 + 65535

    payload = b"z" * 65536
    frame = encode_frame(OP_BINARY, payload)
    assert frame[:2] == b"\x82\x7f"
    assert struct.unpack("!Q", frame[2:10])[0] == 65536
    assert frame[10:] == payload


def test_encode_masked_frame_carries_mask_and_masked_payload():
    frame = encode_frame(OP_TEXT, b"Hello", mask=MASK)
    # Exactly the RFC 6455 §5.7 example.
    assert frame == bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])


def test_close_frame_encoding():
    assert encode_frame(OP_CLOSE, encode_close_payload(1000)) == b"\x88\x02\x03\xe8"
    assert encode_close_payload(None) == b""
    assert encode_close_payload(4000, "bye") == b"\x0f\xa0bye"


# -- reading single frames ---------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 70000])
def test_masked_roundtrip(size):
    payload = bytes(i % 251 for i in range(size))
    reader = reader_for(client_frame(OP_BINARY, payload))
    assert reader.read_message() == Frame(True, OP_BINARY, payload)


def test_reads_rfc_hello_frame():
    frame = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    assert reader_for(frame).read_message() == Frame(True, OP_TEXT, b"Hello")


def test_several_messages_in_one_stream_come_out_in_order():
    data = (
        client_frame(OP_TEXT, b"one")
        + client_frame(OP_BINARY, b"\x00\x01")
        + client_frame(OP_PING, b"p")
        + client_frame(OP_TEXT, b"two")
    )
    assert messages_until_eof(data) == [
        Frame(True, OP_TEXT, b"one"),
        Frame(True, OP_BINARY, b"\x00\x01"),
        Frame(True, OP_PING, b"p"),
        Frame(True, OP_TEXT, b"two"),
    ]


def test_unmasked_client_frame_is_a_protocol_error():
    data = encode_frame(OP_TEXT, b"hello")  # no mask, as a (wrong) client might send
    assert violation_code(data) == ws.CLOSE_PROTOCOL_ERROR == 1002


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70])
def test_reserved_bits_are_a_protocol_error(rsv):
    data = raw_header(0x80 | rsv | OP_TEXT, 2) + unmask(b"hi", MASK)
    assert violation_code(data) == 1002


@pytest.mark.parametrize("opcode", [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_unknown_opcode_is_a_protocol_error(opcode):
    data = raw_header(0x80 | opcode, 1) + unmask(b"x", MASK)
    assert violation_code(data) == 1002


def test_fragmented_control_frame_is_a_protocol_error():
    data = client_frame(OP_PING, b"p", fin=False)
    assert violation_code(data) == 1002


def test_control_frame_longer_than_125_is_a_protocol_error():
    data = raw_header(0x80 | OP_PING, 126) + unmask(b"p" * 126, MASK)
    assert violation_code(data) == 1002


def test_eof_before_a_header_is_connection_closed():
    with pytest.raises(ConnectionClosed):
        reader_for(b"").read_message()
    with pytest.raises(ConnectionClosed):
        reader_for(b"\x81").read_message()


def test_eof_inside_extended_length_or_mask_is_connection_closed():
    with pytest.raises(ConnectionClosed):
        reader_for(b"\x82\xfe\x01").read_message()  # 16-bit length cut short
    with pytest.raises(ConnectionClosed):
        reader_for(b"\x82\x85\x01\x02").read_message()  # mask cut short


def test_eof_inside_payload_is_connection_closed():
    data = client_frame(OP_TEXT, b"hello world")[:-3]
    with pytest.raises(ConnectionClosed):
        reader_for(data).read_message()


# -- fragmentation -----------------------------------------------------------------------


def test_fragmented_text_message_is_assembled():
    data = (
        client_frame(OP_TEXT, b"Hel", fin=False)
        + client_frame(OP_CONTINUATION, b"lo, ", fin=False)
        + client_frame(OP_CONTINUATION, b"", fin=False)
        + client_frame(OP_CONTINUATION, b"world")
    )
    assert messages_until_eof(data) == [Frame(True, OP_TEXT, b"Hello, world")]


def test_fragmented_binary_message_keeps_its_opcode():
    data = client_frame(OP_BINARY, b"\x00\xff", fin=False) + client_frame(OP_CONTINUATION, b"\x80")
    assert reader_for(data).read_message() == Frame(True, OP_BINARY, b"\x00\xff\x80")


def test_reader_is_reset_between_fragmented_messages():
    data = (
        client_frame(OP_BINARY, b"a", fin=False)
        + client_frame(OP_CONTINUATION, b"b")
        + client_frame(OP_TEXT, b"c", fin=False)
        + client_frame(OP_CONTINUATION, b"d")
        + client_frame(OP_TEXT, b"e")
    )
    assert messages_until_eof(data) == [
        Frame(True, OP_BINARY, b"ab"),
        Frame(True, OP_TEXT, b"cd"),
        Frame(True, OP_TEXT, b"e"),
    ]


def test_ping_interleaved_in_a_fragmented_message_is_returned_first():
    data = (
        client_frame(OP_TEXT, b"first ", fin=False)
        + client_frame(OP_PING, b"are you there")
        + client_frame(OP_CONTINUATION, b"half", fin=False)
        + client_frame(OP_PONG, b"")
        + client_frame(OP_CONTINUATION, b" done")
    )
    assert messages_until_eof(data) == [
        Frame(True, OP_PING, b"are you there"),
        Frame(True, OP_PONG, b""),
        Frame(True, OP_TEXT, b"first half done"),
    ]


def test_close_in_the_middle_of_a_fragmented_message_is_returned():
    data = client_frame(OP_TEXT, b"part", fin=False) + client_frame(OP_CLOSE, encode_close_payload(1000))
    frame = reader_for(data).read_message()
    assert frame.opcode == OP_CLOSE
    assert decode_close_payload(frame.payload) == (1000, "")


def test_continuation_without_a_start_is_a_protocol_error():
    data = client_frame(OP_CONTINUATION, b"orphan")
    assert violation_code(data) == 1002


def test_continuation_after_a_finished_message_is_a_protocol_error():
    data = client_frame(OP_TEXT, b"done") + client_frame(OP_CONTINUATION, b"late")
    reader = reader_for(data)
    assert reader.read_message() == Frame(True, OP_TEXT, b"done")
    with pytest.raises(ProtocolError) as info:
        reader.read_message()
    assert info.value.code == 1002


def test_new_data_message_before_the_previous_ended_is_a_protocol_error():
    data = client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_BINARY, b"b")
    assert violation_code(data) == 1002


# -- UTF-8 -------------------------------------------------------------------------------


def test_valid_utf8_text_is_accepted():
    text = "héllo → 世界 🎉".encode()
    assert reader_for(client_frame(OP_TEXT, text)).read_message().payload == text


def test_invalid_utf8_text_is_1007():
    assert violation_code(client_frame(OP_TEXT, b"abc\xff")) == ws.CLOSE_INVALID_DATA == 1007


def test_invalid_utf8_in_binary_is_fine():
    assert reader_for(client_frame(OP_BINARY, b"\xff\xfe")).read_message().payload == b"\xff\xfe"


def test_multibyte_character_split_across_fragments_is_valid():
    euro = "€".encode()  # 3 bytes
    smile = "😀".encode()  # 4 bytes
    data = (
        client_frame(OP_TEXT, b"a" + euro[:1], fin=False)
        + client_frame(OP_CONTINUATION, euro[1:2], fin=False)
        + client_frame(OP_CONTINUATION, euro[2:] + smile[:3], fin=False)
        + client_frame(OP_CONTINUATION, smile[3:] + b"z")
    )
    frame = reader_for(data).read_message()
    assert frame == Frame(True, OP_TEXT, ("a€😀z").encode())


def test_truncated_multibyte_character_at_the_end_is_1007():
    euro = "€".encode()
    data = client_frame(OP_TEXT, b"a" + euro[:2], fin=False) + client_frame(OP_CONTINUATION, b"")
    assert violation_code(data) == 1007


def test_truncated_multibyte_character_in_single_frame_is_1007():
    assert violation_code(client_frame(OP_TEXT, "€".encode()[:2])) == 1007


def test_invalid_utf8_fails_fast_on_the_bad_fragment():
    # The bad bytes are in the first fragment; the rest of the message never arrives.
    assert violation_code(client_frame(OP_TEXT, b"ok\xc0\xaf", fin=False), max_message_size=None) == 1007


# -- size limit --------------------------------------------------------------------------


def test_message_at_the_limit_is_accepted():
    reader = reader_for(client_frame(OP_BINARY, b"x" * 100), max_message_size=100)
    assert reader.read_message().payload == b"x" * 100


def test_oversized_frame_is_1009_from_its_header_alone():
    # Only the header is there; a parser that wanted the payload would end in ConnectionClosed.
    header = raw_header(0x80 | OP_BINARY, 10 * 1024 * 1024)
    assert violation_code(header, max_message_size=1024) == ws.CLOSE_TOO_BIG == 1009


def test_header_claiming_2_to_the_63_bytes_costs_nothing():
    assert violation_code(raw_header(0x80 | OP_TEXT, 2**63 - 1)) == 1009


def test_length_with_the_top_bit_set_is_a_protocol_error_even_without_a_limit():
    header = bytes([0x82, 0xFF]) + struct.pack("!Q", 2**63) + MASK
    assert violation_code(header, max_message_size=None) == 1002


def test_oversized_fragmented_message_is_1009_at_the_header_that_crosses_the_limit():
    # The second header's payload never arrives.
    data = client_frame(OP_TEXT, b"a" * 60, fin=False) + raw_header(OP_CONTINUATION, 60)
    assert violation_code(data, max_message_size=100) == 1009


def test_bad_first_byte_fails_before_the_rest_of_the_header_arrives():
    # RSV1 set; the 8-byte length is still to come.
    assert violation_code(bytes([0x80 | 0x40 | OP_TEXT, 0x80 | 127]), max_message_size=None) == 1002


# -- fragment costs --------------------------------------------------------------------


def test_the_limit_bounds_the_number_of_frames_in_a_message():
    limit = 1000
    allowed = max_frames(limit)
    assert allowed == 16 + limit // BYTES_PER_FRAGMENT == 31
    frames = [client_frame(OP_BINARY, b"x", fin=False)]
    frames += [client_frame(OP_CONTINUATION, b"", fin=False) for _ in range(allowed - 2)]
    frames.append(client_frame(OP_CONTINUATION, b"y"))
    assert len(frames) == allowed
    assert messages_until_eof(b"".join(frames), max_message_size=limit) == [Frame(True, OP_BINARY, b"xy")]
    one_more = b"".join(frames[:-1]) + client_frame(OP_CONTINUATION, b"", fin=False) + frames[-1]
    with pytest.raises(ProtocolError) as info:
        messages_until_eof(one_more, max_message_size=limit)
    assert info.value.code == 1009


def test_the_parser_handles_one_frame_per_call():
    parser = FrameParser(None)
    parser.feed(
        client_frame(OP_TEXT, b"a", fin=False)
        + client_frame(OP_CONTINUATION, b"b", fin=False)
        + client_frame(OP_CONTINUATION, b"c")
    )
    assert parser.next_frame() is None and not parser.needs_data
    assert parser.next_frame() is None and not parser.needs_data
    assert parser.next_frame() == Frame(True, OP_TEXT, b"abc")
    assert parser.next_frame() is None and parser.needs_data


def test_empty_continuations_are_bounded_under_the_default_limit():
    parser = FrameParser(1 << 20)
    parser.feed(client_frame(OP_TEXT, b"", fin=False))
    empty = client_frame(OP_CONTINUATION, b"", fin=False)
    with pytest.raises(ProtocolError) as info:
        for _ in range(1_000_000):
            parser.feed(empty)
            assert parser.next_frame() is None
    assert info.value.code == 1009
    assert parser.buffered < 64


def test_a_message_of_one_byte_fragments_costs_about_its_size():
    import tracemalloc

    size = 16 * 1024
    frames = [client_frame(OP_BINARY, b"a", fin=False)]
    frames += [client_frame(OP_CONTINUATION, b"b", fin=False) for _ in range(size - 2)]
    parser = FrameParser(None)
    tracing = tracemalloc.is_tracing()  # PYTHONTRACEMALLOC may have started it already
    if not tracing:
        tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for frame in frames:
            parser.feed(frame)
            assert parser.next_frame() is None
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        if not tracing:
            tracemalloc.stop()
    # The payload so far is 16 KiB; a list of per-fragment objects would hold ~50x that.
    assert held < 4 * size
    parser.feed(client_frame(OP_CONTINUATION, b"c"))
    frame = parser.next_frame()
    assert frame.payload == b"a" + b"b" * (size - 2) + b"c"


def test_a_message_of_large_and_small_pieces_is_reassembled_in_order():
    # Large pieces are kept by reference, small ones copied together (FrameParser._keep).
    pieces = [b"L" * 5000, b"s", b"t", b"M" * 70_000, b"u", b"N" * 4096]
    stream = client_frame(OP_BINARY, pieces[0], fin=False)
    stream += b"".join(client_frame(OP_CONTINUATION, p, fin=False) for p in pieces[1:-1])
    stream += client_frame(OP_CONTINUATION, pieces[-1])
    parser = FrameParser(None)
    frames = []
    for i in range(0, len(stream), 1000):  # as a socket might deliver it
        parser.feed(stream[i : i + 1000])
        while (frame := parser.next_frame()) is not None or not parser.needs_data:
            if frame is not None:
                frames.append(frame)
    assert frames == [Frame(True, OP_BINARY, b"".join(pieces))]


def test_consumed_input_is_dropped_as_parsing_goes_on():
    parser = FrameParser(None)
    frame = client_frame(OP_BINARY, b"z" * 1000)
    for _ in range(500):
        parser.feed(frame)
        assert parser.next_frame() == Frame(True, OP_BINARY, b"z" * 1000)
    assert len(parser._buf) <= 64 * 1024 + len(frame)


def test_fragments_summing_to_the_limit_are_accepted():
    data = client_frame(OP_TEXT, b"a" * 50, fin=False) + client_frame(OP_CONTINUATION, b"b" * 50)
    assert reader_for(data, max_message_size=100).read_message().payload == b"a" * 50 + b"b" * 50


def test_limit_applies_per_message_not_per_stream():
    data = client_frame(OP_TEXT, b"a" * 80) + client_frame(OP_TEXT, b"b" * 80)
    reader = reader_for(data, max_message_size=100)
    assert reader.read_message().payload == b"a" * 80
    assert reader.read_message().payload == b"b" * 80


def test_control_frames_do_not_count_against_the_message_limit():
    data = (
        client_frame(OP_TEXT, b"a" * 10, fin=False)
        + client_frame(OP_PING, b"p" * 125)
        + client_frame(OP_CONTINUATION, b"b" * 10)
    )
    reader = reader_for(data, max_message_size=20)
    assert reader.read_message() == Frame(True, OP_PING, b"p" * 125)
    assert reader.read_message().payload == b"a" * 10 + b"b" * 10


def test_no_limit_when_max_message_size_is_none():
    payload = b"q" * 200_000
    assert reader_for(client_frame(OP_BINARY, payload), max_message_size=None).read_message().payload == payload


# -- close payloads ----------------------------------------------------------------------


def test_close_payload_roundtrip():
    assert decode_close_payload(encode_close_payload(1000)) == (1000, "")
    assert decode_close_payload(encode_close_payload(4000, "bye")) == (4000, "bye")
    assert decode_close_payload(encode_close_payload(1001, "héllo")) == (1001, "héllo")


def test_empty_close_payload_means_no_status():
    assert decode_close_payload(b"") == (None, None)


def test_close_payload_is_capped_at_125_bytes():
    payload = encode_close_payload(1000, "r" * 500)
    assert len(payload) == 125
    assert payload[:2] == b"\x03\xe8"


def test_one_byte_close_payload_is_1002():
    with pytest.raises(ProtocolError) as info:
        decode_close_payload(b"\x03")
    assert info.value.code == 1002


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_invalid_close_codes_are_1002(code):
    assert not is_valid_close_code(code)
    with pytest.raises(ProtocolError) as info:
        decode_close_payload(struct.pack("!H", code))
    assert info.value.code == 1002


@pytest.mark.parametrize(
    "code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4000, 4999]
)
def test_valid_close_codes(code):
    assert is_valid_close_code(code)
    assert decode_close_payload(struct.pack("!H", code) + b"why") == (code, "why")


def test_close_reason_that_is_not_utf8_is_1007():
    with pytest.raises(ProtocolError) as info:
        decode_close_payload(b"\x03\xe8\xff\xfe")
    assert info.value.code == 1007


def test_long_close_reason_is_cut_on_a_character_boundary():
    from syncws.protocol import decode_close_payload, encode_close_payload

    payload = encode_close_payload(4000, "é" * 100)  # 200 bytes of UTF-8
    assert len(payload) <= 125
    code, reason = decode_close_payload(payload)  # would raise 1007 on a cut character
    assert code == 4000 and reason == "é" * 61


def test_a_large_buffer_is_let_go_once_everything_in_it_is_consumed():
    parser = FrameParser(None)
    parser.feed(client_frame(OP_BINARY, bytes(60_000)))
    assert parser.next_frame() == Frame(True, OP_BINARY, bytes(60_000))
    assert sys.getsizeof(parser._buf) < 200  # a fresh, empty buffer: not 60 KB kept until the next read
    small = FrameParser(None)
    small.feed(client_frame(OP_TEXT, b"hi") + client_frame(OP_TEXT, b"ho"))
    assert small.next_frame() == Frame(True, OP_TEXT, b"hi")
    assert small.next_frame() == Frame(True, OP_TEXT, b"ho")


def test_release_drops_a_half_assembled_message():
    parser = FrameParser(None)
    parser.feed(client_frame(OP_TEXT, b"half", fin=False) + client_frame(OP_CONTINUATION, b"ab")[:8])
    assert parser.next_frame() is None and parser.buffered
    parser.release()
    assert parser.buffered == 0 and parser._message == [] and parser.inflater is None
