"""The syncws ``App`` over real HTTP: routing, errors, sockets (view return types: test_responses.py)."""

from __future__ import annotations

import http.client
import json
import socket
import struct

import pytest
import requests
from werkzeug.exceptions import abort

from syncws import App, define_websocket_handler
from syncws.protocol import OP_CLOSE, OP_TEXT, encode_close_payload

from ..conftest import connect, raw_request, wait_until
from ..support import RawClient, answered_without_upgrade, client_frame, parse_frames, status_of


def get(server, path, **kwargs):
    kwargs.setdefault("timeout", 5)
    return requests.get(server.url + path, **kwargs)


def body_of(data: bytes) -> bytes:
    return data.partition(b"\r\n\r\n")[2]


# -- registration and methods -------------------------------------------------------------


@pytest.fixture
def crud_server(start_server):
    app = App()

    @app.get("/items")
    def list_items(request):
        return "list"

    @app.post("/items")
    def create_item(request):
        return f"created {request.get_data(as_text=True)}", 201

    def replace_item(request, item):
        return f"replaced {item} with {request.get_data(as_text=True)}"

    def delete_item(request, item):
        return None

    app.put("/items/<item>", replace_item)  # direct form
    app.delete("/items/<item>", delete_item)
    app.route("/multi", lambda request: request.method, methods=("GET", "PATCH"))
    return start_server(app)


def test_get_post_put_delete(crud_server):
    url = crud_server.url
    r = requests.get(url + "/items", timeout=5)
    assert (r.status_code, r.text) == (200, "list")
    r = requests.post(url + "/items", data="apple", timeout=5)
    assert (r.status_code, r.text) == (201, "created apple")
    r = requests.put(url + "/items/7", data="pear", timeout=5)
    assert (r.status_code, r.text) == (200, "replaced 7 with pear")
    r = requests.delete(url + "/items/7", timeout=5)
    assert r.status_code == 204
    assert r.content == b""
    assert requests.patch(url + "/multi", timeout=5).text == "PATCH"
    assert requests.get(url + "/multi", timeout=5).text == "GET"


def test_decorator_returns_the_view_and_direct_form_returns_handler():
    app = App()

    def view(request):
        return "x"

    assert app.get("/a")(view) is view
    assert app.post("/b", view) is view


def test_duplicate_registration_is_refused():
    app = App()
    app.get("/a", lambda request: "x")
    with pytest.raises(ValueError):
        app.get("/a", lambda request: "y")
    handler = define_websocket_handler()
    app.get("/a", handler)  # a WebSocket handler may share the path with a GET view
    with pytest.raises(ValueError):
        app.get("/a", define_websocket_handler())
    with pytest.raises(ValueError):
        app.post("/ws", define_websocket_handler())
    with pytest.raises(TypeError):
        app.get("/c", "not callable")


def test_404_and_405(crud_server):
    r = requests.get(crud_server.url + "/nope", timeout=5)
    assert r.status_code == 404
    r = requests.post(crud_server.url + "/items/3", timeout=5)
    assert r.status_code == 405
    allowed = {m.strip() for m in r.headers["Allow"].split(",")}
    assert {"PUT", "DELETE"} <= allowed
    assert "POST" not in allowed


def test_head_uses_the_get_view(crud_server):
    r = requests.head(crud_server.url + "/items", timeout=5)
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["Content-Length"] == "4"


# -- dynamic segments ----------------------------------------------------------------------


def test_url_values_are_passed_as_kwargs_and_view_args(start_server):
    app = App()

    @app.get("/rooms/<room>")
    def room(request, room):
        return {"kwarg": room, "view_args": request.view_args}

    @app.get("/rooms/<room>/users/<int:user>")
    def user(request, room, user):
        return {"room": room, "user": user, "type": type(user).__name__}

    server = start_server(app)
    assert get(server, "/rooms/lobby").json() == {"kwarg": "lobby", "view_args": {"room": "lobby"}}
    assert get(server, "/rooms/caf%C3%A9").json()["kwarg"] == "café"
    assert get(server, "/rooms/game/users/42").json() == {"room": "game", "user": 42, "type": "int"}
    assert get(server, "/rooms/game/users/abc").status_code == 404


# -- return types --------------------------------------------------------------------------


def test_abort_and_exceptions(start_server):
    app = App()
    calls = []

    @app.get("/forbidden")
    def forbidden(request):
        abort(403)

    @app.get("/boom")
    def boom(request):
        calls.append("boom")
        raise RuntimeError("secret internal detail")

    app.get("/ok", lambda request: "ok")
    server = start_server(app)

    assert get(server, "/forbidden").status_code == 403
    r = get(server, "/boom")
    assert r.status_code == 500
    assert "secret internal detail" not in r.text
    assert "Traceback" not in r.text
    # The server keeps serving, the failing view included.
    assert get(server, "/ok").text == "ok"
    assert get(server, "/boom").status_code == 500
    assert calls == ["boom", "boom"]
    assert get(server, "/ok").text == "ok"


# -- HTTP and WebSocket on the same routes -------------------------------------------------


def test_same_path_view_and_websocket(start_server):
    app = App()
    app.get("/chat", lambda request: "the chat page")
    app.get("/chat", define_websocket_handler(open=lambda peer: peer.send("ws hello")))
    server = start_server(app)

    r = get(server, "/chat")
    assert (r.status_code, r.text) == (200, "the chat page")
    client = connect(server, "/chat")
    try:
        assert client.recv() == "ws hello"
    finally:
        client.close()
    # The view still answers afterwards.
    assert get(server, "/chat").text == "the chat page"


def test_websocket_only_route_answers_plain_get_with_426(start_server):
    app = App()
    opened = []
    app.get("/_ws", define_websocket_handler(open=lambda peer: opened.append(peer)))
    server = start_server(app)

    r = get(server, "/_ws")
    assert r.status_code == 426
    assert r.status_code != 101
    assert len(r.content) < 1024
    # A raw request too, so nothing hides a 101 behind the client library.
    data = raw_request(server, b"GET /_ws HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(data) == 426
    assert b"101" not in data.split(b"\r\n", 1)[0]
    assert opened == []


def test_upgrade_to_http_only_route_is_answered_normally(start_server):
    app = App()
    app.get("/page", lambda request: "plain page")
    server = start_server(app)

    data = answered_without_upgrade(server, "/page", 200)
    assert body_of(data) == b"plain page"
    assert server.peers == frozenset()


def test_upgrade_to_unknown_path_is_404(start_server):
    app = App()
    app.get("/_ws", define_websocket_handler())
    server = start_server(app)

    answered_without_upgrade(server, "/elsewhere", 404)
    assert server.peers == frozenset()


def test_upgrade_to_post_only_route_is_405_not_upgraded(start_server):
    app = App()
    app.post("/submit", lambda request: "posted")
    server = start_server(app)
    answered_without_upgrade(server, "/submit", 405)


# -- connections ---------------------------------------------------------------------------


def test_keep_alive_while_a_websocket_is_connected(start_server):
    app = App()
    app.get("/port", lambda request: str(request.environ["REMOTE_PORT"]))
    app.post("/echo", lambda request: request.get_data())
    app.get("/_ws", define_websocket_handler(message=lambda peer, msg: peer.send(msg)))
    server = start_server(app)

    ws = connect(server)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        try:
            ports = set()
            for i in range(5):
                conn.request("GET", "/port")
                resp = conn.getresponse()
                assert resp.status == 200
                ports.add(resp.read().decode())
                conn.request("POST", "/echo", body=f"body {i}".encode())
                resp = conn.getresponse()
                assert resp.read() == f"body {i}".encode()
                ws.send(f"msg {i}")
                assert ws.recv() == f"msg {i}"
            local_port = conn.sock.getsockname()[1]
            # One TCP connection served every request.
            assert ports == {str(local_port)}
        finally:
            conn.close()

        with requests.Session() as session:
            seen = {session.get(server.url + "/port", timeout=5).text for _ in range(4)}
        assert len(seen) == 1
        ws.send("still there")
        assert ws.recv() == "still there"
    finally:
        ws.close()


def test_tcp_nodelay_on_websocket_and_http_connections(start_server):
    app = App()

    def on_open(peer):
        sock = peer.websocket.socket
        peer.send({"nodelay": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)})

    def http_view(request):
        sock = request.environ["syncws.transport"].socket
        return {"nodelay": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)}

    app.get("/_ws", define_websocket_handler(open=on_open))
    app.get("/http", http_view)
    server = start_server(app)

    client = connect(server)
    try:
        assert json.loads(client.recv())["nodelay"] != 0
    finally:
        client.close()
    assert get(server, "/http").json()["nodelay"] != 0


# -- nothing written after the close frame --------------------------------------------------


def test_nothing_after_close_frame_when_client_closes(start_server):
    app = App()
    closed = []
    app.get("/_ws", define_websocket_handler(close=lambda peer, details: closed.append(details)))
    server = start_server(app)

    with RawClient(server) as raw:  # asserts the 101
        raw.send_frame(OP_CLOSE, encode_close_payload(1000, "done"))
        rest = raw.read_to_eof()
    # Exactly one close frame (the echo of our code), no HTTP response after it.
    assert rest == b"\x88\x02\x03\xe8"
    assert wait_until(lambda: len(closed) == 1)
    assert (closed[0].code, closed[0].reason) == (1000, "done")


def test_nothing_after_close_frame_when_server_closes(start_server):
    app = App()
    app.get("/_ws", define_websocket_handler(open=lambda peer: peer.close(4001, "go away")))
    server = start_server(app)

    with RawClient(server) as raw:
        # Wait for the server's close frame, answer it, then read to EOF.
        first = raw.read_frame()
        assert first is not None, "connection closed before the close frame arrived"
        raw.send_frame(OP_CLOSE, encode_close_payload(4001))
        rest = raw.read_to_eof()
    assert [first, *parse_frames(rest)] == [(0x8, encode_close_payload(4001, "go away"))]


def test_nothing_after_close_frame_when_a_hook_fails(start_server):
    app = App()

    def on_message(peer, message):
        raise RuntimeError("hook failure")

    app.get("/_ws", define_websocket_handler(message=on_message))
    server = start_server(app)

    with RawClient(server) as raw:
        raw.send_frame(OP_TEXT, b"trigger")
        first = raw.read_frame()
        assert first is not None
        raw.send_frame(OP_CLOSE, encode_close_payload(1011))
        rest = raw.read_to_eof()
    frames = [first, *parse_frames(rest)]
    assert len(frames) == 1
    opcode, payload = frames[0]
    assert opcode == 0x8
    assert struct.unpack("!H", payload[:2])[0] == 1011
    assert b"HTTP/" not in rest
    # And the server is fine afterwards.
    assert status_of(raw_request(server, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")) == 404


def test_nothing_after_close_frame_through_wsgi_middleware(start_server):
    """A middleware that wraps the response (as Flask or Sentry do) cannot add bytes."""
    inner = App()
    inner.get("/_ws", define_websocket_handler(message=lambda peer, msg: peer.send(msg)))

    def middleware(environ, start_response):
        def wrapped_start_response(status, headers, exc_info=None):
            return start_response(status, [*headers, ("X-Middleware", "1")], exc_info)

        result = inner(environ, wrapped_start_response)
        return [*list(result), b"middleware trailer"]

    server = start_server(middleware)
    with RawClient(server) as raw:
        raw.sock.sendall(client_frame(OP_TEXT, b"hi") + client_frame(OP_CLOSE, encode_close_payload(1000)))
        rest = raw.read_to_eof()
    assert parse_frames(rest) == [(0x1, b"hi"), (0x8, b"\x03\xe8")]
    assert b"middleware trailer" not in rest


def test_static_and_dynamic_websocket_routes_give_the_upgrade_hook_the_same_request(start_server):
    # Static WebSocket paths skip werkzeug's routing; what the hooks see must not change.
    seen: list = []

    def upgrade(request):
        seen.append((request.path, request.view_args))

    app = App()
    app.get("/live", define_websocket_handler(upgrade=upgrade))
    app.get("/rooms/<room>", define_websocket_handler(upgrade=upgrade))
    server = start_server(app)
    connect(server, "/live?x=1").close()
    connect(server, "/rooms/lobby").close()
    assert wait_until(lambda: len(seen) == 2)
    assert seen == [("/live", {}), ("/rooms/lobby", {"room": "lobby"})]
    # A near miss still goes through werkzeug, which answers it (404), as before.
    assert status_of(raw_request(server, b"GET /live/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 404
