"""How Python values become payloads: the rules, byte for byte."""

from __future__ import annotations

import base64
import json

import pytest

from syncws.protocol.frames import OP_BINARY, OP_TEXT, encode_frame
from syncws.protocol.payload import Outgoing, as_text, encode, to_json


@pytest.mark.parametrize(
    "value, expected",
    [
        ("héllo", (OP_TEXT, "héllo".encode())),
        (b"\x00\x01", (OP_BINARY, b"\x00\x01")),
        (bytearray(b"ab"), (OP_BINARY, b"ab")),
        (memoryview(b"cd"), (OP_BINARY, b"cd")),
        (None, (OP_TEXT, b"")),
        ({"a": 1, "b": [True, None]}, (OP_TEXT, b'{"a":1,"b":[true,null]}')),
        ([1, "é"], (OP_TEXT, '[1,"é"]'.encode())),
        ((1, 2), (OP_TEXT, b"[1,2]")),
        (True, (OP_TEXT, b"true")),
        (3, (OP_TEXT, b"3")),
        (2.5, (OP_TEXT, b"2.5")),
    ],
)
def test_values_are_encoded_as_json_stringify_would(value, expected):
    assert encode(value) == expected


def test_anything_else_is_a_type_error():
    with pytest.raises(TypeError, match="cannot send object"):
        encode(object())


def test_json_is_compact_and_keeps_non_ascii():
    assert to_json({"k": "ü", "n": [1, 2]}) == '{"k":"ü","n":[1,2]}'


def test_outgoing_serialises_and_frames_once():
    outgoing = Outgoing({"a": 1})
    assert (outgoing.opcode, outgoing.payload, outgoing.is_binary) == (OP_TEXT, b'{"a":1}', False)
    frame = outgoing.frame
    assert frame == encode_frame(OP_TEXT, b'{"a":1}')
    assert outgoing.frame is frame  # framed once, whatever the number of recipients
    assert outgoing.text == '{"a":1}'
    built = []
    form = outgoing.memo("sse", lambda o: built.append(o) or "event")
    assert form == "event" and outgoing.memo("sse", lambda o: built.append(o) or "again") == "event"
    assert built == [outgoing]  # another wire form, built once too


def test_a_relayed_payload_is_taken_as_it_is():
    outgoing = Outgoing.from_payload(OP_BINARY, b"\x07\x08")
    assert outgoing.is_binary and outgoing.payload == b"\x07\x08"
    assert outgoing.text == base64.b64encode(b"\x07\x08").decode()
    assert outgoing.frame == encode_frame(OP_BINARY, b"\x07\x08")
    assert outgoing.memo("k", lambda o: 1) == 1


def test_as_text_is_the_text_form_of_any_value():
    assert as_text("plain") == "plain"
    assert as_text({"a": [1]}) == '{"a":[1]}'
    assert as_text(b"\xff") == base64.b64encode(b"\xff").decode()
    assert as_text(None) == ""


@pytest.mark.parametrize(
    "data, body",
    [
        ({"a": [1, "é"]}, '"data":{"a":[1,"é"]}'),
        (3.5, '"data":3.5'),
        (True, '"data":true'),
        ('say "hi"\n', '"data":"say \\"hi\\"\\n"'),
        ("", '"data":""'),
        (None, '"data":""'),
        (b"\x00\xff", '"data":"AP8=","encoding":"base64"'),
    ],
)
def test_an_envelope_embeds_json_values_strings_and_base64(data, body):
    stamped = Outgoing(data).stamped("news", "12-3")
    envelope = stamped.envelope
    assert envelope.opcode == OP_TEXT
    text = envelope.payload.decode("utf-8")
    assert text == '{"topic":"news","offset":"12-3",' + body + "}"
    assert json.loads(text)["topic"] == "news"
    assert stamped.envelope is envelope  # built once, whatever the number of recipients


def test_an_unstamped_envelope_says_offset_null():
    outgoing = Outgoing("x")
    outgoing.topic = "t"
    assert json.loads(outgoing.envelope.payload) == {"topic": "t", "offset": None, "data": "x"}
