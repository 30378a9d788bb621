"""Sans-I/O tests of permessage-deflate: negotiation, compressing, inflating, limits."""

from __future__ import annotations

import os
import zlib

import pytest

from syncws import HandshakeError, ProtocolError
from syncws.protocol.deflate import MAX_EXTENSIONS_LENGTH, Agreement, Inflater, compress, negotiate, parse_extensions
from syncws.protocol.frames import OP_BINARY, OP_CONTINUATION, OP_PING, OP_TEXT, Frame, FrameParser, encode_frame
from syncws.protocol.payload import Outgoing

from ..support import MASK

TAIL = b"\x00\x00\xff\xff"


def agree(header: str, cap: int = 15) -> Agreement | None:
    return negotiate(parse_extensions([header]), cap)


# -- parsing the header ----------------------------------------------------------------


def test_offers_are_parsed_in_order_with_their_parameters():
    offers = parse_extensions(
        ['permessage-deflate; client_max_window_bits; server_max_window_bits="10", x-foo', "Permessage-Deflate"]
    )
    assert offers == [
        ("permessage-deflate", [("client_max_window_bits", None), ("server_max_window_bits", "10")]),
        ("x-foo", []),
        ("permessage-deflate", []),
    ]


def test_empty_list_elements_are_skipped_and_quoted_values_unescaped():
    offers = parse_extensions(['permessage-deflate, , x-foo; a="q\\"uo;ted,"'])
    assert offers == [("permessage-deflate", []), ("x-foo", [("a", 'q"uo;ted,')])]


@pytest.mark.parametrize(
    "header",
    ["permessage-deflate; =10", "permessage-deflate;; x", "per message", "a; b=c d", 'a; b="unterminated'],
)
def test_a_header_that_does_not_parse_fails_the_handshake_with_400(header):
    with pytest.raises(HandshakeError) as info:
        parse_extensions([header])
    assert info.value.status == 400


def test_padding_is_allowed_around_every_part_and_refused_inside_one():
    offers = parse_extensions(["  permessage-deflate  ;  client_max_window_bits  =  10  ,  x-foo  "])
    assert offers == [("permessage-deflate", [("client_max_window_bits", "10")]), ("x-foo", [])]
    with pytest.raises(HandshakeError) as info:
        parse_extensions(["permessage-deflate; a" + " " * 4000 + "@"])  # linear: no two \\s* side by side
    assert info.value.status == 400
    assert len(str(info.value)) < 200  # the value is not echoed whole


def test_a_value_longer_than_the_bound_is_refused_before_parsing():
    within = "permessage-deflate; client_max_window_bits" + " " * (MAX_EXTENSIONS_LENGTH - 42)
    assert parse_extensions([within]) == [("permessage-deflate", [("client_max_window_bits", None)])]
    with pytest.raises(HandshakeError, match="longer than 4096") as info:
        parse_extensions([within, " "])  # the bound is on every header line together
    assert info.value.status == 400


# -- negotiating -----------------------------------------------------------------------


def test_a_bare_offer_is_accepted_without_server_context_takeover():
    agreement = agree("permessage-deflate")
    assert agreement is not None
    assert agreement.header == "permessage-deflate; server_no_context_takeover"
    assert (agreement.server_max_window_bits, agreement.client_max_window_bits) == (15, 15)
    assert not agreement.client_no_context_takeover


def test_the_server_window_is_capped_and_said_so():
    assert agree("permessage-deflate", cap=12).header == (
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
    )
    assert agree("permessage-deflate; server_max_window_bits=10", cap=12).server_max_window_bits == 10
    assert agree("permessage-deflate; server_max_window_bits=14", cap=12).header.endswith("server_max_window_bits=12")


def test_the_client_window_is_set_only_when_the_client_allows_it():
    # Without client_max_window_bits in the offer the server must not limit the client.
    assert "client_max_window_bits" not in agree("permessage-deflate", cap=10).header
    assert agree("permessage-deflate; client_max_window_bits", cap=10).header.endswith("client_max_window_bits=10")
    agreement = agree("permessage-deflate; client_max_window_bits=9", cap=12)
    assert agreement.client_max_window_bits == 9 and agreement.header.endswith("client_max_window_bits=9")
    assert "client_max_window_bits" not in agree("permessage-deflate; client_max_window_bits", cap=15).header


def test_server_no_context_takeover_in_the_offer_is_what_we_do_anyway():
    agreement = agree("permessage-deflate; server_no_context_takeover")
    assert agreement.header == "permessage-deflate; server_no_context_takeover"


def test_client_no_context_takeover_is_echoed_and_remembered():
    agreement = agree("permessage-deflate; client_no_context_takeover")
    assert agreement.client_no_context_takeover
    assert "client_no_context_takeover" in agreement.header


@pytest.mark.parametrize(
    "bad",
    [
        "permessage-deflate; server_max_window_bits=8",  # zlib cannot compress with 256 bytes
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=x",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; mystery",
    ],
)
def test_an_offer_the_rfc_says_to_decline_is_declined_and_the_next_one_tried(bad):
    assert agree(bad) is None
    fallback = agree(f"{bad}, permessage-deflate; client_no_context_takeover")
    assert fallback is not None and fallback.client_no_context_takeover


def test_other_extensions_are_ignored():
    assert agree("x-webkit-deflate-frame") is None
    assert negotiate([]) is None


# -- compressing and inflating ---------------------------------------------------------


def client_compressor(bits: int = 15):
    return zlib.compressobj(6, zlib.DEFLATED, -bits)


def client_message(compressor, payload: bytes) -> bytes:
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(TAIL)
    return data[:-4]


def test_our_compressed_messages_inflate_on_their_own():
    for payload in (b"", b"a", b"hello hello hello hello " * 50):
        data = compress(payload, 12)
        assert zlib.decompressobj(-12).decompress(data + TAIL) == payload


def test_the_client_context_is_kept_across_messages_unless_it_agreed_otherwise():
    agreement = agree("permessage-deflate")
    inflater = Inflater(agreement)
    compressor = client_compressor()
    for i in range(3):
        payload = f"message {i}: the same words again and again".encode()
        assert inflater.inflate(client_message(compressor, payload), True, None) == payload

    no_takeover = Inflater(agree("permessage-deflate; client_no_context_takeover"))
    for i in range(3):
        payload = f"message {i}: the same words again and again".encode()
        assert no_takeover.inflate(client_message(client_compressor(), payload), True, None) == payload


def test_a_small_frame_that_inflates_far_past_the_limit_stops_at_the_limit():
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    bomb = b"".join(compressor.compress(zeros) for _ in range(64)) + compressor.flush(zlib.Z_SYNC_FLUSH)[:-4]
    assert len(bomb) < 100_000  # 64 MiB of zeros
    inflater = Inflater(agree("permessage-deflate"))
    with pytest.raises(ProtocolError) as info:
        inflater.inflate(bomb, True, 1 << 20)
    assert info.value.code == 1009
    assert inflater._produced <= (1 << 20) + 1  # never asked zlib for more than the room left


def test_data_that_does_not_inflate_is_1007():
    with pytest.raises(ProtocolError) as info:
        Inflater(agree("permessage-deflate")).inflate(b"\xff\xff\xff not deflate", True, None)
    assert info.value.code == 1007


# -- the parser with an inflater -------------------------------------------------------


def rsv1_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return encode_frame(opcode, payload, fin=fin, mask=MASK, rsv1=True)


def plain_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return encode_frame(opcode, payload, fin=fin, mask=MASK)


def parse_all(parser: FrameParser, data: bytes, step: int = 7) -> list[Frame]:
    frames = []
    for i in range(0, len(data), step):
        parser.feed(data[i : i + step])
        while (frame := parser.next_frame()) is not None or not parser.needs_data:
            if frame is not None:
                frames.append(frame)
    return frames


def violation(parser: FrameParser, data: bytes) -> int:
    with pytest.raises(ProtocolError) as info:
        parse_all(parser, data, step=len(data))
    return info.value.code


def deflating_parser(limit: int | None = None, header: str = "permessage-deflate") -> FrameParser:
    agreement = agree(header)
    assert agreement is not None
    return FrameParser(limit, Inflater(agreement))


def test_compressed_and_plain_messages_interleave():
    compressor = client_compressor()
    text = "héllo, compressed world " * 20
    first = client_message(compressor, text.encode())
    second = client_message(compressor, b"\x00\x01" * 100)
    stream = rsv1_frame(OP_TEXT, first) + plain_frame(OP_TEXT, b"plain") + rsv1_frame(OP_BINARY, second)
    frames = parse_all(deflating_parser(), stream)
    assert frames == [
        Frame(True, OP_TEXT, text.encode()),
        Frame(True, OP_TEXT, b"plain"),
        Frame(True, OP_BINARY, b"\x00\x01" * 100),
    ]


def test_a_fragmented_compressed_message_is_inflated_as_it_arrives():
    data = client_message(client_compressor(), b"fragmented and compressed " * 40)
    third = len(data) // 3
    stream = (
        rsv1_frame(OP_TEXT, data[:third], fin=False)
        + plain_frame(OP_CONTINUATION, data[third : 2 * third], fin=False)
        + plain_frame(OP_PING, b"in between")
        + plain_frame(OP_CONTINUATION, data[2 * third :])
    )
    frames = parse_all(deflating_parser(), stream)
    assert frames == [Frame(True, OP_PING, b"in between"), Frame(True, OP_TEXT, b"fragmented and compressed " * 40)]


def test_rsv1_is_refused_without_the_extension_and_where_it_may_not_appear():
    data = client_message(client_compressor(), b"x" * 50)
    assert violation(FrameParser(None), rsv1_frame(OP_TEXT, data)) == 1002
    assert violation(deflating_parser(), rsv1_frame(OP_PING, b"")) == 1002
    continuation = plain_frame(OP_TEXT, b"a", fin=False) + rsv1_frame(OP_CONTINUATION, b"b")
    assert violation(deflating_parser(), continuation) == 1002
    rsv2 = bytearray(plain_frame(OP_TEXT, b"a"))
    rsv2[0] |= 0x20
    assert violation(deflating_parser(), bytes(rsv2)) == 1002


def test_the_limit_applies_to_the_inflated_size():
    data = client_message(client_compressor(), b"a" * 5000)
    assert len(data) < 100
    assert violation(deflating_parser(limit=4096), rsv1_frame(OP_BINARY, data)) == 1009
    assert parse_all(deflating_parser(limit=5000), rsv1_frame(OP_BINARY, data)) == [Frame(True, OP_BINARY, b"a" * 5000)]


def test_the_parser_counts_what_it_inflates():
    data = client_message(client_compressor(), b"a" * 5000)
    parser = deflating_parser(limit=None)
    assert (
        parse_all(parser, rsv1_frame(OP_BINARY, data) + rsv1_frame(OP_BINARY, data))
        == [Frame(True, OP_BINARY, b"a" * 5000)] * 2
    )
    assert parser.inflated == 10_000  # the work, where the wire shows under 200 bytes


def test_inflated_text_must_be_utf8():
    data = client_message(client_compressor(), b"ok \xff not utf-8")
    assert violation(deflating_parser(), rsv1_frame(OP_TEXT, data)) == 1007


# -- outgoing frames -------------------------------------------------------------------


def unframe(frame: bytes) -> tuple[int, bytes]:
    """(first byte, payload) of an unmasked server frame."""
    length = frame[1] & 0x7F
    start = {126: 4, 127: 10}.get(length, 2)
    return frame[0], frame[start:]


def test_outgoing_frames_follow_the_threshold_and_the_compress_flag():
    agreement = agree("permessage-deflate", cap=12)
    big = "compress me, compress me, compress me " * 10
    first, payload = unframe(Outgoing(big).frame_for(agreement, 128))
    assert first == 0xC1  # FIN, RSV1, text
    assert zlib.decompressobj(-12).decompress(payload + TAIL) == big.encode()
    assert Outgoing("tiny").frame_for(agreement, 128) == Outgoing("tiny").frame  # under the threshold
    assert Outgoing(big, compress=False).frame_for(agreement, 128) == Outgoing(big).frame
    forced = Outgoing("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", compress=True).frame_for(agreement, 128)
    assert unframe(forced)[0] == 0xC1
    noise = os.urandom(512)  # does not get smaller: sent as it is
    assert Outgoing(noise, compress=True).frame_for(agreement, 128) == Outgoing(noise).frame


def test_a_message_is_compressed_once_per_window_size():
    outgoing = Outgoing("shared by every subscriber " * 20)
    a = agree("permessage-deflate", cap=12)
    b = agree("permessage-deflate; client_no_context_takeover", cap=12)  # another agreement, same window
    c = agree("permessage-deflate", cap=10)
    assert outgoing.frame_for(a, 128) is outgoing.frame_for(b, 128)
    assert outgoing.frame_for(c, 128) is not outgoing.frame_for(a, 128)
