"""Unit tests of the ``text/event-stream`` wire format (no I/O).

The output is checked byte for byte and also read back with the WHATWG parser
from ``test_sse``, so every assertion is also about what ``EventSource`` sees.
"""

from __future__ import annotations

import itertools
import random
from types import MappingProxyType

import pytest

import syncws
from syncws.protocol.sse import (
    HEADERS,
    EventStreamMessage,
    format_comment,
    format_event,
    format_retry,
    to_message,
)

from ..support.sse import SSEEvent, parse


def events_of(text: str) -> list[SSEEvent]:
    return parse(text.encode("utf-8")).events


# -- plain messages ------------------------------------------------------------


def test_a_string_is_the_data():
    assert format_event("hello") == "data: hello\n\n"
    assert events_of(format_event("hello")) == [SSEEvent("message", "hello", "")]


def test_empty_data_is_one_empty_data_line():
    assert format_event("") == "data: \n\n"
    assert format_event({}) == "data: \n\n"
    assert format_event(EventStreamMessage()) == "data: \n\n"
    assert events_of(format_event("")) == [SSEEvent("message", "", "")]


def test_all_fields_in_h3_order_whatever_the_dict_order():
    message = {"data": "d", "retry": 3000, "event": "update", "id": "42"}
    expected = "id: 42\nevent: update\nretry: 3000\ndata: d\n\n"
    assert format_event(message) == expected
    assert format_event(EventStreamMessage(retry=3000, data="d", id="42", event="update")) == expected
    assert format_event(MappingProxyType(message)) == expected  # any Mapping
    parser = parse(expected.encode())
    assert parser.events == [SSEEvent("update", "d", "42")]
    assert parser.retry == 3000


@pytest.mark.parametrize(
    "fields",
    [
        dict(zip(("id", "event", "retry"), combo, strict=False))
        for combo in itertools.product(("7", None), ("ev", None), (250, None))
    ],
    ids=lambda f: "+".join(k for k, v in f.items() if v is not None) or "data-only",
)
def test_every_combination_of_optional_fields(fields):
    message = {k: v for k, v in fields.items() if v is not None}
    message["data"] = "payload"
    expected = ""
    if fields["id"] is not None:
        expected += "id: 7\n"
    if fields["event"] is not None:
        expected += "event: ev\n"
    if fields["retry"] is not None:
        expected += "retry: 250\n"
    expected += "data: payload\n\n"
    assert format_event(message) == expected
    assert format_event(EventStreamMessage(**message)) == expected
    parser = parse(expected.encode())
    assert parser.events == [SSEEvent(fields["event"] or "message", "payload", fields["id"] or "")]
    assert parser.retry == fields["retry"]


def test_message_passes_through_to_message():
    message = EventStreamMessage(data="x", id="1")
    assert to_message(message) is message
    assert to_message("x") == EventStreamMessage(data="x")
    assert to_message({"data": "x", "event": "e"}) == EventStreamMessage(data="x", event="e")


def test_event_stream_message_is_exported_and_keyword_only():
    assert syncws.EventStreamMessage is EventStreamMessage
    message = EventStreamMessage(data="d", event="e", id="i", retry=5)
    assert (message.data, message.event, message.id, message.retry) == ("d", "e", "i", 5)
    default = EventStreamMessage()
    assert (default.data, default.event, default.id, default.retry) == ("", None, None, None)
    with pytest.raises(TypeError):
        EventStreamMessage("positional")


# -- line breaks and injection ---------------------------------------------------


@pytest.mark.parametrize(
    "data, lines",
    [
        ("a\nb", ["a", "b"]),
        ("a\r\nb", ["a", "b"]),
        ("a\rb", ["a", "b"]),
        ("a\r\n\r\nb", ["a", "", "b"]),
        ("a\n\rb", ["a", "", "b"]),  # LF then CR: two breaks
        ("a\r\r\nb", ["a", "", "b"]),
        ("trailing\n", ["trailing", ""]),
        ("\nleading", ["", "leading"]),
        ("\r\n", ["", ""]),
    ],
)
def test_data_is_split_on_every_line_ending(data, lines):
    text = format_event(data)
    assert text == "".join(f"data: {line}\n" for line in lines) + "\n"
    normalised = data.replace("\r\n", "\n").replace("\r", "\n")
    assert events_of(text) == [SSEEvent("message", normalised, "")]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"])
def test_only_cr_and_lf_are_line_breaks(separator):
    # str.splitlines() would split on these; the event-stream format does not
    data = f"one{separator}line"
    assert format_event(data) == f"data: {data}\n\n"
    assert format_comment(data) == f": {data}\n\n"
    assert events_of(format_event(data)) == [SSEEvent("message", data, "")]


def test_data_cannot_inject_fields_or_end_the_event():
    attack = "x\n\nid: 666\nevent: evil\nretry: 1\n\ndata: second event\r\rdata: third"
    text = format_event({"data": attack, "event": "safe", "id": "1"})
    assert text == (
        "id: 1\nevent: safe\n"
        "data: x\ndata: \ndata: id: 666\ndata: event: evil\ndata: retry: 1\ndata: \n"
        "data: data: second event\ndata: \ndata: data: third\n\n"
    )
    parser = parse(text.encode())
    assert parser.events == [
        SSEEvent("safe", attack.replace("\r", "\n"), "1"),
    ]
    assert parser.retry is None


def test_cr_and_lf_are_removed_from_id_and_event():
    text = format_event({"id": "1\r\nevent: evil", "event": "up\rdate\n\ndata: evil", "data": "ok"})
    assert text == "id: 1event: evil\nevent: updatedata: evil\ndata: ok\n\n"
    assert events_of(text) == [SSEEvent("updatedata: evil", "ok", "1event: evil")]


def test_id_and_event_are_strings():
    assert format_event({"id": 5, "data": "x"}) == "id: 5\ndata: x\n\n"
    assert events_of(format_event({"id": 5, "data": "x"})) == [SSEEvent("message", "x", "5")]


@pytest.mark.parametrize("retry", [1.5, "3000", True, False, None, 3000.0])
def test_retry_is_written_only_when_an_integer(retry):
    assert format_event({"data": "x", "retry": retry}) == "data: x\n\n"


@pytest.mark.parametrize("retry", [0, 1, 3000, 10**9])
def test_integer_retry(retry):
    text = format_event({"data": "x", "retry": retry})
    assert text == f"retry: {retry}\ndata: x\n\n"
    assert parse(text.encode()).retry == retry


def test_random_messages_read_back_as_pushed():
    """Whatever the strings, a browser sees exactly one event with the pushed fields."""
    rng = random.Random(20240607)
    alphabet = ["a", "b", " ", ":", "\r", "\n", "\r\n", "data", "id", "event", "retry", "é", "😀", "\u2028", "\t"]

    def text(length):
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(length)))

    for _ in range(2000):
        data, event, event_id = text(12), text(6), text(6)
        message = {"data": data}
        if rng.random() < 0.7:
            message["event"] = event
        if rng.random() < 0.7:
            message["id"] = event_id
        if rng.random() < 0.3:
            message["retry"] = rng.randrange(10000)
        wire = format_event(message)
        parser = parse(wire.encode("utf-8"))
        expected_type = message.get("event", "").replace("\r", "").replace("\n", "") or "message"
        expected_id = message.get("id", "").replace("\r", "").replace("\n", "")
        expected_data = data.replace("\r\n", "\n").replace("\r", "\n")
        assert parser.events == [SSEEvent(expected_type, expected_data, expected_id)], (message, wire)
        assert parser.retry == message.get("retry")
        assert parser.comments == []
        assert wire.endswith("\n\n") and "\r" not in wire


# -- comments, retry, headers --------------------------------------------------------


def test_comment_format():
    assert format_comment("keep-alive") == ": keep-alive\n\n"
    assert format_comment("") == ": \n\n"
    assert format_comment("a\nb\r\nc\rd") == ": a\n: b\n: c\n: d\n\n"
    parser = parse(format_comment("a\ndata: injected\n\nevent: x").encode())
    assert parser.events == []
    assert parser.comments == ["a", "data: injected", "", "event: x"]


def test_retry_line():
    assert format_retry(3000) == "retry: 3000\n\n"
    parser = parse(format_retry(3000).encode())
    assert parser.retry == 3000
    assert parser.events == []  # a retry on its own dispatches nothing


def test_headers():
    assert HEADERS == [
        ("Content-Type", "text/event-stream"),
        ("Cache-Control", "private, no-cache, no-store, no-transform, must-revalidate, max-age=0"),
        ("X-Accel-Buffering", "no"),
    ]


def test_utf8_text():
    text = format_event({"data": "héllo ✓ 😀", "event": "ünï", "id": "ид"})
    assert text == "id: ид\nevent: ünï\ndata: héllo ✓ 😀\n\n"
    assert events_of(text) == [SSEEvent("ünï", "héllo ✓ 😀", "ид")]


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [object(), 42, 1.5, b"bytes", None, ("tuple",)])
def test_unsupported_types_raise_type_error(bad):
    with pytest.raises(TypeError):
        format_event(bad)
    with pytest.raises(TypeError):
        to_message(bad)


@pytest.mark.parametrize("bad", [{"data": "x", "bogus": 1}, {"name": "x"}, {"data": "x", "ID": "1"}])
def test_unknown_fields_raise_value_error(bad):
    with pytest.raises(ValueError):
        format_event(bad)


def test_a_json_object_pushed_as_fields_says_how_to_send_it():
    with pytest.raises(ValueError) as info:
        format_event({"hello": 1})
    message = str(info.value)
    assert message.startswith("unknown event field(s): hello; a dict given to push() is one event's fields: data, id")
    assert 'push({"data": {...}})' in message
    assert format_event({"data": {"hello": 1}}) == 'data: {"hello":1}\n\n'  # what the message suggests works
