"""The channels wire protocol's rules, with plain values (no sockets)."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncws.protocol import channels as wire
from syncws.protocol.channels import BadRequest, Close, ErrorCode, Request


def test_a_request_is_parsed_into_its_type_id_and_body():
    request = wire.parse_request('{"type":"subscribe","id":7,"topic":"t"}')
    assert request.type is Request.SUBSCRIBE
    assert request.id == 7
    assert wire.field(request, "topic", str) == "t"
    assert wire.parse_request('{"type":"pong"}').id is None


@pytest.mark.parametrize(
    ("text", "message", "request_id"),
    [
        ("not json", "not JSON", None),
        ("[1, 2]", "a request is a JSON object", None),
        ('{"id": 1}', "unknown type null", 1),
        ('{"type": "fly", "id": "a"}', 'unknown type "fly"', "a"),
        ('{"type": 3}', "unknown type 3", None),
        ('{"type": "rpc", "id": true}', "id must be a string or an integer", None),
        ('{"type": "rpc", "id": ""}', "id must be a string or an integer", None),
        ('{"type": "rpc", "id": "' + "x" * 65 + '"}', "id must be a string or an integer", None),
        ('{"type": "rpc", "id": ' + "9" * 65 + "}", "id must be a string or an integer", None),
        ('{"type": "rpc", "id": 1.5}', "id must be a string or an integer", None),
    ],
)
def test_malformed_requests_say_what_is_wrong(text, message, request_id):
    with pytest.raises(BadRequest) as caught:
        wire.parse_request(text)
    assert str(caught.value).startswith(message)
    assert caught.value.id == request_id


def test_a_long_unknown_type_is_quoted_short():
    with pytest.raises(BadRequest) as caught:
        wire.parse_request(json.dumps({"type": "x" * 500}))
    assert len(str(caught.value)) < 60


def test_fields_are_checked_for_their_type_and_bool_is_not_an_int():
    request = wire.parse_request('{"type":"history","id":1,"limit":true,"topic":5,"since":null}')
    with pytest.raises(BadRequest, match="limit must be int"):
        wire.field(request, "limit", int)
    with pytest.raises(BadRequest, match="topic must be str") as caught:
        wire.field(request, "topic", str)
    assert caught.value.id == 1
    assert wire.field(request, "since", str) is None  # null is absent
    assert wire.field(request, "missing", bool, False) is False
    assert wire.field(wire.parse_request('{"type":"subscribe","presence_events":true}'), "presence_events", bool)


def test_replies_and_errors():
    assert wire.reply(3, {"a": 1}) == {"id": 3, "result": {"a": 1}}
    assert wire.error("x", ErrorCode.FORBIDDEN, "no") == {"id": "x", "error": {"code": "forbidden", "message": "no"}}


@pytest.mark.parametrize(
    ("code", "can_refresh", "again"),
    [
        (None, False, True),  # dropped without a close frame
        (1001, False, True),  # the server is stopping or restarting
        (1006, False, True),
        (1008, False, True),  # rate limit or a full outbound buffer: back off, come back
        (1011, False, True),
        (1012, False, True),
        (1013, False, True),
        (1000, False, False),
        (1002, False, False),
        (1007, False, False),
        (1009, False, False),
        (Close.PROTOCOL_ERROR, True, False),
        (Close.UNAUTHORIZED, True, False),
        (Close.DISCONNECTED, True, False),
        (Close.EXPIRED, True, True),
        (Close.EXPIRED, False, False),
        (4100, True, False),  # an application's own code
    ],
)
def test_which_close_codes_a_client_reconnects_after(code, can_refresh, again):
    assert wire.should_reconnect(code, can_refresh) is again


@given(st.integers(min_value=0, max_value=10_000), st.floats(min_value=0, max_value=0.999999))
def test_backoff_is_full_jitter_under_a_capped_exponential(attempt, draw):
    delay = wire.backoff_delay(attempt, 0.5, 30.0, draw)
    assert 0 <= delay <= min(30.0, 0.5 * 2 ** min(attempt, 32))
    assert delay == pytest.approx(min(30.0, 0.5 * 2.0 ** min(attempt, 32)) * draw)


def test_backoff_grows_then_stops_at_the_cap():
    bounds = [wire.backoff_delay(n, 0.5, 30.0, 0.999999) for n in range(10)]
    assert bounds[:3] == pytest.approx([0.5, 1.0, 2.0], rel=1e-5)
    assert bounds[-1] == pytest.approx(30.0, rel=1e-5)


def test_json_nested_past_the_interpreters_depth_is_not_json():
    with pytest.raises(BadRequest, match="not JSON"):
        wire.parse_request("[" * 100_000 + "]" * 100_000)
