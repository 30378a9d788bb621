"""A real Flask application served by syncws: views return WebSocket handlers."""

from __future__ import annotations

import functools
import json

import flask
import pytest
import requests
import websocket
from flask import Blueprint, Flask, abort, current_app, g, request

from syncws import define_websocket_handler
from syncws.protocol import OP_CLOSE, encode_close_payload

from ..conftest import connect, wait_until
from ..support import RawClient, answered_without_upgrade, assert_nothing_received


@pytest.fixture
def flask_server(start_server):
    app = Flask("flask_under_test")
    app.config["GREETING"] = "hi from config"
    events: list = []

    @app.before_request
    def require_token():
        if request.path.startswith("/secure"):
            token = request.args.get("token") or request.headers.get("X-Token")
            if token != "s3cret":
                abort(401)
            g.user = "alice"

    @app.get("/")
    def index():
        return "flask index"

    @app.get("/json")
    def as_json():
        return {"flask": True}

    @app.post("/form")
    def form():
        return f"posted {request.form['x']}"

    echo = define_websocket_handler(message=lambda peer, msg: peer.send(msg))

    @app.get("/_ws")
    def ws_view():
        return echo

    def secure_open(peer):
        events.append(("open", current_app.name, g.user, request.path, request.args.get("token")))
        peer.send(f"{current_app.config['GREETING']}, {g.user}")

    def secure_message(peer, message):
        events.append(("message", current_app.name, g.user, request.path))
        peer.send(f"{g.user}@{request.path}: {message}")

    secure = define_websocket_handler(open=secure_open, message=secure_message)

    @app.get("/secure/ws")
    def secure_ws():
        return secure

    def login_required(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            if request.cookies.get("session") != "valid":
                return "login required", 403
            return view(*args, **kwargs)

        return wrapper

    guarded_opened = []

    @app.get("/guarded")
    @login_required
    def guarded():
        return define_websocket_handler(open=lambda peer: (guarded_opened.append(peer.id), peer.send("welcome")))

    rooms = Blueprint("rooms", __name__, url_prefix="/rooms")

    def room_open(peer):
        peer.subscribe("chat")
        peer.send(json.dumps({"namespace": peer.namespace, "room": request.view_args["room"]}))

    def room_message(peer, message):
        peer.publish("chat", f"{request.view_args['room']}: {message}")

    room_handler = define_websocket_handler(open=room_open, message=room_message)

    @rooms.get("/<room>")
    def room_ws(room):
        return room_handler

    @rooms.get("/<room>/info")
    def room_info(room):
        return {"room": room}

    app.register_blueprint(rooms)

    server = start_server(app)
    server.events = events
    server.guarded_opened = guarded_opened
    return server


def test_normal_flask_routes_keep_working(flask_server):
    url = flask_server.url
    r = requests.get(url + "/", timeout=5)
    assert (r.status_code, r.text) == (200, "flask index")
    assert requests.get(url + "/json", timeout=5).json() == {"flask": True}
    assert requests.post(url + "/form", data={"x": "42"}, timeout=5).text == "posted 42"
    assert requests.get(url + "/missing", timeout=5).status_code == 404
    assert requests.get(url + "/rooms/lobby/info", timeout=5).json() == {"room": "lobby"}


def test_view_returning_a_handler_upgrades(flask_server):
    client = connect(flask_server, "/_ws")
    try:
        client.send("hello flask")
        assert client.recv() == "hello flask"
        client.send_binary(b"\x00\x01")
        assert client.recv() == b"\x00\x01"
        # HTTP keeps working while the socket is open.
        assert requests.get(flask_server.url + "/", timeout=5).text == "flask index"
    finally:
        client.close()


def test_upgrade_to_http_only_flask_route_is_answered_normally(flask_server):
    # Not werkzeug's WebsocketMismatch 400: the route answers, nothing is upgraded.
    data = answered_without_upgrade(flask_server, "/", 200)
    assert data.endswith(b"flask index")
    data = answered_without_upgrade(flask_server, "/rooms/lobby/info", 200)
    assert data.endswith(b'{"room":"lobby"}\n')


def test_upgrade_to_unknown_flask_path_is_404(flask_server):
    answered_without_upgrade(flask_server, "/no/such/path", 404)
    assert flask_server.peers == frozenset()


def test_plain_get_to_a_handler_view_is_426(flask_server):
    r = requests.get(flask_server.url + "/_ws", timeout=5)
    assert r.status_code == 426


def test_blueprint_room_namespace_and_isolation(flask_server):
    lobby1 = connect(flask_server, "/rooms/lobby")
    lobby2 = connect(flask_server, "/rooms/lobby")
    game = connect(flask_server, "/rooms/game")
    try:
        assert json.loads(lobby1.recv()) == {"namespace": "/rooms/lobby", "room": "lobby"}
        assert json.loads(lobby2.recv()) == {"namespace": "/rooms/lobby", "room": "lobby"}
        assert json.loads(game.recv()) == {"namespace": "/rooms/game", "room": "game"}
        assert wait_until(lambda: len(flask_server.peers) == 3)

        lobby1.send("hello lobby")
        assert lobby2.recv() == "lobby: hello lobby"
        game.send("hello game")
        # The game room has nobody else; the lobby must not see the game's message.
        lobby1.send("second")
        assert lobby2.recv() == "lobby: second"
        for client in (game, lobby1, lobby2):
            assert_nothing_received(client)
    finally:
        for c in (lobby1, lobby2, game):
            c.close()


def test_before_request_abort_refuses_the_upgrade(flask_server):
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        connect(flask_server, "/secure/ws")
    assert info.value.status_code == 401
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        connect(flask_server, "/secure/ws?token=wrong")
    assert info.value.status_code == 401

    data = answered_without_upgrade(flask_server, "/secure/ws", 401)
    assert b" 101 " not in data
    assert flask_server.events == []
    assert flask_server.peers == frozenset()


def test_login_required_decorator_refuses_the_upgrade(flask_server):
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        connect(flask_server, "/guarded")
    assert info.value.status_code == 403
    data = answered_without_upgrade(flask_server, "/guarded", 403)
    assert data.endswith(b"login required")
    assert flask_server.guarded_opened == []

    client = connect(flask_server, "/guarded", cookie="session=valid")
    try:
        assert client.recv() == "welcome"
    finally:
        client.close()
    assert len(flask_server.guarded_opened) == 1


def test_hooks_see_current_app_g_and_request(flask_server):
    client = connect(flask_server, "/secure/ws?token=s3cret")
    try:
        assert client.recv() == "hi from config, alice"
        client.send("one")
        assert client.recv() == "alice@/secure/ws: one"
        client.send("two")
        assert client.recv() == "alice@/secure/ws: two"
    finally:
        client.close()
    assert flask_server.events == [
        ("open", "flask_under_test", "alice", "/secure/ws", "s3cret"),
        ("message", "flask_under_test", "alice", "/secure/ws"),
        ("message", "flask_under_test", "alice", "/secure/ws"),
    ]


def test_header_token_also_works(flask_server):
    client = connect(flask_server, "/secure/ws", header=["X-Token: s3cret"])
    try:
        assert client.recv() == "hi from config, alice"
    finally:
        client.close()


def test_each_connection_gets_its_own_flask_g(flask_server):
    a = connect(flask_server, "/secure/ws?token=s3cret")
    b = connect(flask_server, "/secure/ws?token=s3cret")
    try:
        assert a.recv() == b.recv() == "hi from config, alice"
        a.send("from a")
        b.send("from b")
        assert a.recv() == "alice@/secure/ws: from a"
        assert b.recv() == "alice@/secure/ws: from b"
    finally:
        a.close()
        b.close()


def test_nothing_written_after_close_frame_through_flask(flask_server):
    with RawClient(flask_server, "/_ws") as raw:  # asserts the 101
        raw.send_frame(OP_CLOSE, encode_close_payload(1000))
        rest = raw.read_to_eof()
    # Flask turns the view's return into a Response that unwinds after the
    # session; none of it may reach the wire.
    assert rest == b"\x88\x02\x03\xe8"


def test_flask_hook_error_closes_1011_and_app_keeps_serving(start_server):
    app = Flask("failing")
    errors = []

    def on_message(peer, message):
        raise ValueError("bad hook")

    handler = define_websocket_handler(message=on_message, error=lambda peer, err: errors.append(err))

    @app.get("/_ws")
    def ws():
        return handler

    @app.get("/")
    def index():
        return "still here"

    server = start_server(app)
    client = connect(server)
    try:
        client.send("x")
        opcode, frame = client.recv_data_frame(True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(frame.data[:2], "big") == 1011
    finally:
        client.close()
    assert wait_until(lambda: len(errors) == 1)
    assert isinstance(errors[0], ValueError)
    assert requests.get(server.url + "/", timeout=5).text == "still here"


def test_flask_is_the_real_flask():
    # Guard against a stub shadowing Flask in this environment.
    assert hasattr(flask, "Flask") and Flask.__module__.startswith("flask")


@pytest.mark.slow  # a fresh interpreter
def test_importing_syncws_patches_nothing():
    """Flask is patched when a server is built or a handler defined, never by an import."""
    import subprocess
    import sys
    import textwrap

    program = textwrap.dedent(
        """
        import flask
        original = flask.Flask.create_url_adapter
        import syncws
        assert flask.Flask.create_url_adapter is original, "patched at import"
        syncws.define_websocket_handler(message=lambda peer, message: None)
        assert flask.Flask.create_url_adapter is not original, "not patched by a handler"
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
