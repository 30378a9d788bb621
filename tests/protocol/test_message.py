"""The Message a ``message`` hook receives: every accessor, on bytes."""

from __future__ import annotations

import pytest

from syncws import Message
from syncws.protocol.frames import OP_BINARY, OP_TEXT
from syncws.protocol.payload import encode


def test_a_text_message():
    message = Message('{"n": 1, "é": true}'.encode(), False)
    assert not message.is_binary
    assert message.text() == str(message) == '{"n": 1, "é": true}'
    assert message.text() is message.text()  # decoded once
    assert message.raw_data == message.text()
    assert message.json() == {"n": 1, "é": True}
    assert len(message) == len('{"n": 1, "é": true}'.encode())
    assert repr(message) == f"<Message text {len(message)} bytes>"
    assert encode(message) == (OP_TEXT, '{"n": 1, "é": true}'.encode())  # resent as text


def test_a_binary_message():
    message = Message(b"\x00\xff\x10", True)
    assert message.is_binary
    assert message.raw_data == message.bytes() == b"\x00\xff\x10"
    assert message.uint8_array() == message.array_buffer() == b"\x00\xff\x10"
    assert message.blob().read() == b"\x00\xff\x10"
    assert repr(message) == "<Message binary 3 bytes>"
    assert encode(message) == (OP_BINARY, b"\x00\xff\x10")  # binary stays binary


def test_json_that_is_not_json_is_a_value_error():
    with pytest.raises(ValueError):
        Message(b"not json", False).json()
