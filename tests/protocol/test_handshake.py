"""The opening handshake: the sans-I/O helpers, then malformed upgrades on real sockets."""

from __future__ import annotations

import base64

import pytest

from syncws import define_websocket_handler
from syncws.protocol import handshake
from syncws.protocol.handshake import HandshakeError, accept_key, is_upgrade_request, validate

from ..conftest import connect, raw_request
from ..support import KEY as RFC_KEY
from ..support import app_with, parse_response, upgrade_request

RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def upgrade_environ(**overrides):
    environ = {
        "REQUEST_METHOD": "GET",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "example.com",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
        "HTTP_SEC_WEBSOCKET_KEY": RFC_KEY,
    }
    for name, value in overrides.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    return environ


# -- unit ------------------------------------------------------------------------------


def test_accept_key_rfc_example():
    assert accept_key(RFC_KEY) == RFC_ACCEPT


def test_validate_returns_the_key():
    assert validate(upgrade_environ()) == RFC_KEY
    assert validate(upgrade_environ(HTTP_SEC_WEBSOCKET_KEY=f"  {RFC_KEY} ")) == RFC_KEY


@pytest.mark.parametrize(
    "upgrade, connection, expected",
    [
        ("websocket", "Upgrade", True),
        ("WebSocket", "keep-alive, Upgrade", True),
        ("websocket", "upgrade,keep-alive", True),
        ("h2c, websocket", "Upgrade", True),
        ("websocket", "keep-alive", False),
        ("h2c", "Upgrade", False),
        (None, "Upgrade", False),
        ("websocket", None, False),
        (None, None, False),
    ],
)
def test_is_upgrade_request(upgrade, connection, expected):
    environ = upgrade_environ(HTTP_UPGRADE=upgrade, HTTP_CONNECTION=connection)
    assert is_upgrade_request(environ) is expected


@pytest.mark.parametrize(
    "key",
    [
        None,
        "",
        "abc",
        "not base64 at all!",
        base64.b64encode(b"x" * 15).decode(),  # decodes, but not 16 bytes
        base64.b64encode(b"x" * 17).decode(),
        "dGhlIHNhbXBsZSBub25jZQ",  # missing padding
        "dGhlIHNhbXBsZSBub25jZQ==\u00e9",
    ],
)
def test_validate_rejects_bad_keys_with_400(key):
    with pytest.raises(HandshakeError) as info:
        validate(upgrade_environ(HTTP_SEC_WEBSOCKET_KEY=key))
    assert info.value.status == 400


@pytest.mark.parametrize("version", [None, "", "8", "12", "14", "13, 8"])
def test_validate_rejects_other_versions_with_426(version):
    with pytest.raises(HandshakeError) as info:
        validate(upgrade_environ(HTTP_SEC_WEBSOCKET_VERSION=version))
    assert info.value.status == 426
    assert ("Sec-WebSocket-Version", "13") in info.value.headers


@pytest.mark.parametrize("method", ["POST", "PUT", "HEAD", "DELETE"])
def test_validate_rejects_other_methods(method):
    with pytest.raises(HandshakeError) as info:
        validate(upgrade_environ(REQUEST_METHOD=method))
    assert info.value.status == 405
    assert ("Allow", "GET") in info.value.headers


def test_validate_rejects_http_1_0():
    with pytest.raises(HandshakeError) as info:
        validate(upgrade_environ(SERVER_PROTOCOL="HTTP/1.0"))
    assert info.value.status == 400


@pytest.mark.parametrize("host", [None, "", "  "])
def test_validate_rejects_a_missing_or_empty_host(host):
    with pytest.raises(HandshakeError) as info:
        validate(upgrade_environ(HTTP_HOST=host))
    assert info.value.status == 400


@pytest.mark.parametrize(
    "body",
    [
        {"CONTENT_LENGTH": "10"},
        {"CONTENT_LENGTH": "01"},
        {"HTTP_TRANSFER_ENCODING": "chunked"},
        {"HTTP_TRANSFER_ENCODING": "identity"},
    ],
)
def test_validate_rejects_any_body(body):
    with pytest.raises(HandshakeError) as info:
        validate(upgrade_environ(**body))
    assert info.value.status == 400
    assert "body" in info.value.message


@pytest.mark.parametrize("length", ["0", "00", "", None])
def test_validate_accepts_an_empty_body(length):
    assert validate(upgrade_environ(CONTENT_LENGTH=length)) == RFC_KEY


def test_response_101_head():
    head = handshake.response_101(RFC_KEY, "chat", [("X-Extra", "1")])
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert head.endswith(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert "Upgrade: websocket" in lines
    assert "Connection: Upgrade" in lines
    assert f"Sec-WebSocket-Accept: {RFC_ACCEPT}" in lines
    assert "Sec-WebSocket-Protocol: chat" in lines
    assert "X-Extra: 1" in lines
    assert head.count(b"\r\n\r\n") == 1


def test_response_101_without_protocol_has_no_protocol_header():
    head = handshake.response_101(RFC_KEY, None, [])
    assert b"Sec-WebSocket-Protocol" not in head


def test_normalize_headers_accepts_dict_and_pairs_and_refuses_line_breaks():
    assert handshake.normalize_headers({"A": "1"}) == [("A", "1")]
    assert handshake.normalize_headers([("A", "1"), ("A", "2")]) == [("A", "1"), ("A", "2")]
    assert handshake.normalize_headers(None) == []
    with pytest.raises(ValueError):
        handshake.normalize_headers({"X": "a\r\nSet-Cookie: evil=1"})


def test_offered_protocols():
    assert handshake.offered_protocols(upgrade_environ(HTTP_SEC_WEBSOCKET_PROTOCOL="a, b ,c")) == ["a", "b", "c"]
    assert handshake.offered_protocols(upgrade_environ()) == []


# -- real sockets ----------------------------------------------------------------------


@pytest.fixture
def echo_server(start_server):
    opened = []

    def on_open(peer):
        opened.append(peer)

    server = start_server(app_with(open=on_open, message=lambda peer, msg: peer.send(msg)))
    server.opened = opened
    return server


def assert_refused(data: bytes, status: int):
    assert not data.startswith(b"HTTP/1.1 101"), data
    assert b" 101 " not in data.split(b"\r\n", 1)[0]
    got, headers, body = parse_response(data)
    assert got == status, data
    assert got != 500
    assert len(body) < 1024
    assert int(headers["content-length"]) == len(body)
    return headers, body


@pytest.mark.parametrize("key", [None, "", "abc", base64.b64encode(b"y" * 20).decode(), "!!!!!!!!!!!!!!!!!!!!!!=="])
def test_missing_or_bad_key_gets_400(echo_server, key):
    data = raw_request(echo_server, upgrade_request(key=key))
    assert_refused(data, 400)
    assert echo_server.opened == []
    assert echo_server.peers == frozenset()


@pytest.mark.parametrize("version", ["8", "7", None])
def test_unsupported_version_gets_426_with_version_header(echo_server, version):
    data = raw_request(echo_server, upgrade_request(version=version))
    headers, _ = assert_refused(data, 426)
    assert headers["sec-websocket-version"] == "13"
    assert echo_server.opened == []


def test_post_upgrade_is_not_upgraded(echo_server):
    data = raw_request(echo_server, upgrade_request(method="POST"))
    # The route only exists for GET: werkzeug answers 405.
    headers, _ = assert_refused(data, 405)
    assert "GET" in headers["allow"]
    assert echo_server.opened == []


def test_post_upgrade_to_a_plain_wsgi_handler_is_not_upgraded(start_server):
    handler = define_websocket_handler(message=lambda peer, msg: peer.send(msg))
    server = start_server(handler)  # the handler itself is the WSGI app: every method reaches it
    data = raw_request(server, upgrade_request(method="POST"))
    headers, _ = assert_refused(data, 405)
    assert headers["allow"] == "GET"


def test_http_1_0_upgrade_is_not_upgraded(echo_server):
    data = raw_request(echo_server, upgrade_request(proto="HTTP/1.0"))
    assert_refused(data, 400)


def test_valid_raw_handshake_gets_the_rfc_accept_value(echo_server):
    data = raw_request(echo_server, upgrade_request() + bytes([0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xE8 ^ 2]))
    status, headers, rest = parse_response(data)
    assert status == 101
    assert headers["sec-websocket-accept"] == RFC_ACCEPT
    assert headers["upgrade"].lower() == "websocket"
    assert headers["connection"].lower() == "upgrade"
    assert rest == b"\x88\x02\x03\xe8"  # the echoed close frame, nothing else


def test_server_still_upgrades_after_refusals(echo_server):
    for key in (None, "abc"):
        assert_refused(raw_request(echo_server, upgrade_request(key=key)), 400)
    assert_refused(raw_request(echo_server, upgrade_request(version="8")), 426)
    client = connect(echo_server)
    try:
        client.send("still alive")
        assert client.recv() == "still alive"
    finally:
        client.close()
