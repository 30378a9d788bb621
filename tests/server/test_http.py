"""Limits: message size, the HTTP request head, the head deadline, malformed handshakes.

Every case must end in a clear answer (an HTTP status with a short body, or a
close code) and leave the server serving everyone else.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time

import pytest
import requests

from syncws import App, define_websocket_handler
from syncws.protocol import OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_TEXT

from ..conftest import connect, raw_request, wait_until
from ..support import KEY, RawClient, parse_response, status_of, upgrade_request

SHORT_BODY = 512  # bytes: "a short body", never an error page or a traceback


def echo_app(**handler_options) -> tuple[App, list]:
    """Echo on /_ws (server limits), plus /small and /unlimited with per-handler limits."""
    messages: list = []

    def on_message(peer, message):
        messages.append((peer.request.path, len(message.bytes())))
        peer.send(message.bytes() if message.is_binary else message.text())

    app = App()
    app.get("/", lambda request: "home")
    app.get("/_ws", define_websocket_handler(message=on_message, **handler_options))
    app.get("/small", define_websocket_handler(message=on_message, max_message_size=100))
    app.get("/unlimited", define_websocket_handler(message=on_message, max_message_size=None))
    return app, messages


def close_code(frames: list) -> int | None:
    """The code of the close frame among ``frames`` (None if there is none)."""
    for opcode, payload in frames:
        if opcode == OP_CLOSE:
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
    return None


def assert_still_serving(server) -> None:
    assert requests.get(server.url + "/", timeout=5).text == "home"
    client = connect(server)
    try:
        client.send("still here")
        assert client.recv() == "still here"
    finally:
        client.close()


def assert_short_answer(data: bytes, status: int) -> tuple[dict, bytes]:
    code, headers, body = parse_response(data)
    assert code == status, data[:300]
    assert len(body) < SHORT_BODY, body
    assert b"Traceback" not in data
    assert b"Sec-WebSocket-Accept" not in data
    return headers, body


# -- max_message_size ---------------------------------------------------------------


@pytest.mark.parametrize("length", [2**63 - 1, 2**63], ids=["2^63-1", "2^63"])
def test_a_frame_header_announcing_a_huge_payload_is_closed_at_once(start_server, length):
    app, messages = echo_app()
    server = start_server(app)
    with RawClient(server) as client:
        # Only the header and a mask: the server must answer from the header alone.
        client.sock.sendall(bytes([0x80 | OP_BINARY, 0x80 | 127]) + struct.pack("!Q", length) + b"mask")
        frames = client.read_all_frames()  # returns at EOF: the server hung up
    assert close_code(frames) in (1009, 1002)
    if length < 2**63:
        assert close_code(frames) == 1009
    assert messages == []
    assert_still_serving(server)


def test_an_oversized_fragmented_message_is_closed_with_1009(start_server):
    app, messages = echo_app()
    server = start_server(app, max_message_size=1000)
    with RawClient(server) as client:
        client.send_frame(OP_TEXT, b"a" * 400, fin=False)
        client.send_frame(OP_CONTINUATION, b"b" * 400, fin=False)
        client.send_frame(OP_CONTINUATION, b"c" * 400, fin=True)  # 1200 > 1000
        frames = client.read_all_frames()
    assert close_code(frames) == 1009
    assert messages == []
    assert_still_serving(server)


def test_a_fragmented_message_at_the_limit_is_delivered(start_server):
    app, messages = echo_app()
    server = start_server(app, max_message_size=1000)
    with RawClient(server) as client:
        client.send_frame(OP_BINARY, b"a" * 500, fin=False)
        client.send_frame(OP_CONTINUATION, b"b" * 500, fin=True)
        assert client.read_frame() == (OP_BINARY, b"a" * 500 + b"b" * 500)
    assert messages == [("/_ws", 1000)]


def test_max_message_size_per_handler_overrides_the_server(start_server):
    app, messages = echo_app()
    server = start_server(app, max_message_size=1000)
    # /small allows 100 bytes although the server allows 1000.
    with RawClient(server, "/small") as client:
        client.send_frame(OP_BINARY, b"x" * 100)
        assert client.read_frame() == (OP_BINARY, b"x" * 100)
        client.send_frame(OP_BINARY, b"x" * 101)
        assert close_code(client.read_all_frames()) == 1009
    # /unlimited (None) takes more than the server's 1000.
    with RawClient(server, "/unlimited") as client:
        client.send_frame(OP_BINARY, b"y" * 5000)
        assert client.read_frame() == (OP_BINARY, b"y" * 5000)
    # The server-wide limit still applies elsewhere.
    with RawClient(server) as client:
        client.send_frame(OP_BINARY, b"z" * 1001)
        assert close_code(client.read_all_frames()) == 1009
    assert messages == [("/small", 100), ("/unlimited", 5000)]


def test_bad_limit_values_are_refused():
    for bad in (0, -1, 1.5, "1MiB", True):
        with pytest.raises(ValueError):
            define_websocket_handler(max_message_size=bad)
    for name in ("ping_interval", "ping_timeout"):
        for bad in (0, -1, float("nan"), float("inf"), "20"):
            with pytest.raises(ValueError):
                define_websocket_handler(**{name: bad})
    with pytest.raises(TypeError):
        define_websocket_handler(max_size=10)  # an unknown keyword is an unknown hook


@pytest.mark.parametrize(
    "options",
    [
        {"max_request_line": 0},
        {"max_header_size": -1},
        {"max_header_count": 0},
        {"max_header_count": None},
        {"handshake_timeout": 0},
        {"ping_interval": -1},
        {"ping_timeout": float("nan")},
        {"close_timeout": None},
        {"shutdown_timeout": 0},
        {"allowed_origins": 42},
        {"allowed_origins": ["https://ok.example", ""]},
    ],
)
def test_bad_server_options_are_refused(options):
    from syncws.base.options import ServerOptions

    with pytest.raises(ValueError):
        ServerOptions(**options)


# -- the request head ----------------------------------------------------------------


def test_a_request_line_too_long_gets_414(start_server):
    app, _ = echo_app()
    server = start_server(app)
    data = raw_request(server, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_short_answer(data, 414)
    assert_still_serving(server)


def test_max_request_line_is_configurable(start_server):
    app, _ = echo_app()
    server = start_server(app, max_request_line=100)
    line = b"GET /" + b"a" * 70 + b" HTTP/1.1"  # 84 bytes: under the limit
    assert status_of(raw_request(server, line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")) == 404
    long_line = b"GET /" + b"a" * 100 + b" HTTP/1.1"
    assert_short_answer(raw_request(server, long_line + b"\r\nHost: x\r\n\r\n"), 414)
    # A WebSocket upgrade is an ordinary request head: the same limit applies.
    assert_short_answer(raw_request(server, upgrade_request("/" + "a" * 120)), 414)


def test_too_many_headers_get_431(start_server):
    app, _ = echo_app()
    server = start_server(app)
    headers = b"".join(b"X-Filler-%d: y\r\n" % i for i in range(101))
    data = raw_request(server, b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert_short_answer(data, 431)
    # 98 more headers (100 in all) are fine.
    headers = b"".join(b"X-Filler-%d: y\r\n" % i for i in range(98))
    data = raw_request(server, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n")
    assert status_of(data) == 200
    assert_still_serving(server)


def test_too_large_headers_get_431(start_server):
    app, _ = echo_app()
    server = start_server(app)
    # One huge header line.
    data = raw_request(server, b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 20000 + b"\r\n\r\n")
    assert_short_answer(data, 431)
    # Many lines that are small one by one but too large together.
    headers = b"".join(b"X-Part-%d: %s\r\n" % (i, b"p" * 300) for i in range(60))
    data = raw_request(server, b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert_short_answer(data, 431)
    assert_still_serving(server)


def test_header_limits_are_configurable_and_apply_to_upgrades(start_server):
    app, _ = echo_app()
    server = start_server(app, max_header_count=7, max_header_size=1024)
    # upgrade_request has 5 header lines: two more are allowed, a third is not.
    ok = upgrade_request(extra="X-A: 1\r\nX-B: 2\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(ok)
        assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")
    assert_short_answer(raw_request(server, upgrade_request(extra="X-A: 1\r\nX-B: 2\r\nX-C: 3\r\n")), 431)
    assert_short_answer(raw_request(server, upgrade_request(extra="X-Big: " + "b" * 1100 + "\r\n")), 431)


# -- the head deadline (slowloris) ---------------------------------------------------------


def trickle(server, data: bytes, delay: float, stop: threading.Event) -> tuple[bytes, float]:
    """Send ``data`` one byte per ``delay`` s; return what the server answered and when it closed."""
    started = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.settimeout(delay)
        for i in range(len(data)):
            if stop.is_set():
                break
            try:
                sock.sendall(data[i : i + 1])
            except OSError:
                break  # the server hung up
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            answer += chunk
            if not chunk:
                break
        sock.settimeout(5)
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except OSError:
            pass
    return answer, time.monotonic() - started


def test_a_slowloris_client_is_cut_off_while_others_are_served(start_server):
    app, _ = echo_app()
    server = start_server(app, handshake_timeout=0.6)
    stop = threading.Event()
    results: list = []
    slow = threading.Thread(target=lambda: results.append(trickle(server, upgrade_request(), 0.1, stop)), daemon=True)
    slow.start()
    try:
        # Meanwhile the server answers others, HTTP and WebSocket alike.
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            assert_still_serving(server)
        slow.join(timeout=5)
        assert not slow.is_alive(), "the trickling client was never cut off"
    finally:
        stop.set()
    answer, elapsed = results[0]
    assert_short_answer(answer, 408)
    assert elapsed < 3.0
    assert_still_serving(server)


def test_a_connection_that_sends_nothing_is_closed_quietly(start_server):
    app, _ = echo_app()
    server = start_server(app, handshake_timeout=0.3)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        started = time.monotonic()
        assert sock.recv(4096) == b""  # closed, and no 408 to a client that asked nothing
        assert time.monotonic() - started < 3.0


def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(start_server):
    app, _ = echo_app()
    server = start_server(app, handshake_timeout=0.3)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while not data.endswith(b"home"):
            data += sock.recv(4096)
        assert status_of(data) == 200
        assert sock.recv(4096) == b""  # idle: closed without an answer


def test_a_slow_but_timely_request_head_is_served(start_server):
    app, _ = echo_app()
    server = start_server(app, handshake_timeout=1.0)
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        for piece in (request[:10], request[10:25], request[25:]):
            sock.sendall(piece)
            time.sleep(0.15)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert status_of(data) == 200 and data.endswith(b"home")


def test_the_head_deadline_does_not_limit_an_upgraded_session(start_server):
    app, _ = echo_app()
    server = start_server(app, handshake_timeout=0.3, ping_interval=None)
    client = connect(server)
    try:
        time.sleep(0.8)
        client.send("later")
        assert client.recv() == "later"
    finally:
        client.close()


def test_handshake_timeout_none_disables_the_deadline(start_server):
    app, _ = echo_app()
    server = start_server(app, handshake_timeout=None)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            sock.recv(4096)  # still waiting for the rest of the head
        sock.settimeout(5)
        sock.sendall(b"Host: x\r\nConnection: close\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")


# -- malformed handshakes --------------------------------------------------------------


def plain_wsgi(handler):
    """A plain WSGI app that hands every request to the handler (no App routing)."""

    def app(environ, start_response):
        return handler(environ, start_response)

    return app


MALFORMED = [
    ("bad key", upgrade_request(key="not base64!"), 400, {}),
    ("short key", upgrade_request(key="c2hvcnQ="), 400, {}),
    ("missing key", upgrade_request(key=None), 400, {}),
    ("version 8", upgrade_request(version="8"), 426, {"sec-websocket-version": "13"}),
    ("missing version", upgrade_request(version=None), 426, {"sec-websocket-version": "13"}),
    ("POST", upgrade_request(method="POST"), 405, {}),
    ("HTTP/1.0", upgrade_request(proto="HTTP/1.0"), 400, {}),
    ("garbage request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, {}),
    ("bad HTTP version", b"GET /_ws HTTP/9.x\r\nHost: x\r\n\r\n", 400, {}),
    ("negative Content-Length", upgrade_request(extra="Content-Length: -1\r\n"), 400, {}),
    ("non-numeric Content-Length", upgrade_request(extra="Content-Length: lots\r\n"), 400, {}),
    ("no Connection: Upgrade", upgrade_request().replace(b"Connection: Upgrade", b"Connection: keep-alive"), 426, {}),
]


@pytest.mark.parametrize("request_bytes,status,headers", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
@pytest.mark.parametrize("routing", ["App", "plain WSGI"])
def test_malformed_handshakes_get_a_short_4xx(start_server, request_bytes, status, headers, routing):
    opened: list = []
    handler = define_websocket_handler(open=opened.append)
    if routing == "App":
        app = App()
        app.get("/_ws", handler)
        app.get("/", lambda request: "home")
    else:
        app = plain_wsgi(handler)
    server = start_server(app)
    data = raw_request(server, request_bytes)
    got_headers, _body = assert_short_answer(data, status)
    for name, value in headers.items():
        assert got_headers.get(name) == value
    assert opened == []
    client = connect(server)  # and the server still upgrades well-formed requests
    client.close()


def test_a_well_formed_handshake_still_upgrades(start_server):
    app, _ = echo_app()
    server = start_server(app)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(upgrade_request(key=KEY))
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head


def test_a_client_that_leaves_mid_head_is_forgotten(start_server):
    app, _ = echo_app()
    server = start_server(app)
    for partial in (b"GET /_ws HT", b"GET / HTTP/1.1\r\nHost: x\r\nX-Half: ab"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(partial)
    assert_still_serving(server)


# -- header lines ----------------------------------------------------------------------


def _echo_headers_app() -> App:
    app = App()
    app.get("/h", lambda request: {"x": request.headers.get("X-Folded"), "a": request.headers.get("X-A")})
    return app


def test_header_values_are_parsed_as_before_and_folded_lines_join_with_a_space(start_server):
    server = start_server(_echo_headers_app())
    head = (
        "GET /h HTTP/1.1\r\nHost: x\r\nX-A:   padded value  \r\n"
        "X-Folded: first\r\n   second\r\n\tthird\r\nConnection: close\r\n\r\n"
    )
    status, _, body = parse_response(raw_request(server, head.encode("latin-1")))
    assert status == 200
    # Before, the folded value kept its CRLFs ("first\r\n   second..."), a header-injection risk.
    assert body == b'{"x":"first second third","a":"padded value"}'


def test_the_headers_gevent_asks_for_are_found_in_any_case_and_a_dropped_one_is_gone(start_server):
    """gevent reads Transfer-Encoding, Content-Length and Connection itself, and drops the length beside chunked."""
    app = App()
    app.post("/body", lambda request: f"{request.get_data().decode()}|{request.headers.get('Content-Length')}")
    server = start_server(app)
    head = (
        "POST /body HTTP/1.1\r\nHost: x\r\ntransfer-ENCODING: Chunked\r\nContent-Length: 999\r\n"
        "CONNECTION: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    started = time.monotonic()
    status, headers, body = parse_response(raw_request(server, head.encode("latin-1")))
    assert status == 200 and body == b"hello|None" and "content-length" in headers
    assert time.monotonic() - started < 0.4  # closed by the server: raw_request did not wait for an idle 0.5 s


@pytest.mark.parametrize(
    "lines",
    [
        "Host: x\r\nno colon here\r\n",  # a line without a colon
        "Host: x\r\n: no name\r\n",  # an empty name
        " folded: before any header\r\nHost: x\r\n",  # a continuation line first
    ],
)
def test_malformed_header_lines_get_400(start_server, lines):
    server = start_server(_echo_headers_app())
    data = raw_request(server, f"GET /h HTTP/1.1\r\n{lines}Connection: close\r\n\r\n".encode("latin-1"))
    assert status_of(data) == 400


@pytest.mark.parametrize("access_log", [True, False])
def test_the_access_line_is_formatted_only_when_the_access_log_is_on(start_server, monkeypatch, caplog, access_log):
    from syncws.server.http import ConnectionHandler

    caplog.set_level(logging.INFO, logger="syncws.access")

    formatted: list = []
    original = ConnectionHandler.format_request

    def counting(self):
        formatted.append(self.path)
        return original(self)

    monkeypatch.setattr(ConnectionHandler, "format_request", counting)
    app = App()
    app.get("/", lambda request: "hi")
    server = start_server(app, access_log=access_log)
    assert requests.get(server.url + "/", timeout=5).text == "hi"
    if access_log:
        assert wait_until(lambda: formatted == ["/"])  # formatted after the response went out
        line = next(record for record in caplog.records if record.name == "syncws.access")
        assert (line.method, line.path, line.status, line.remote) == ("GET", "/", 200, "127.0.0.1")
        assert line.bytes > len("hi") and 0 <= line.duration < 5  # gevent counts the head too
    else:
        time.sleep(0.2)
        assert formatted == []


def test_the_access_line_is_not_formatted_when_its_logger_would_drop_it(start_server, monkeypatch, caplog):
    from syncws.server.http import ConnectionHandler

    caplog.set_level(logging.WARNING, logger="syncws.access")
    formatted: list = []
    monkeypatch.setattr(ConnectionHandler, "format_request", lambda self: formatted.append(self.path) or "")
    app = App()
    app.get("/", lambda request: "hi")
    server = start_server(app, access_log=True)
    assert requests.get(server.url + "/", timeout=5).text == "hi"
    time.sleep(0.2)
    assert formatted == []


def test_a_body_larger_than_the_socket_buffer_arrives_whole_to_a_slow_reader(start_server):
    """The handler's own write loop (no getsockopt per write): partial sends are resumed, in order."""
    body = bytes(range(256)) * (16 * 1024)  # 4 MiB, far past a socket buffer

    app = App()
    app.get("/big", lambda request: body)
    server = start_server(app)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        time.sleep(0.3)  # the server's writes fill the buffers and wait
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
    head, _, got = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and got == body
