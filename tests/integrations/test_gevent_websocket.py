"""Apps written for gevent-websocket run unchanged on the syncws server.

The apps below never import syncws: they read ``environ["wsgi.websocket"]``
and loop over ``receive()``/``send()`` as gevent-websocket (and Flask-Sockets)
apps do.  ``serve(app, gevent_websocket=True)`` (or wrapping the app with
``syncws.compat.gevent_websocket``) gives them syncws's limits, keepalive,
close handshake and graceful shutdown.
"""

from __future__ import annotations

import struct
import threading

import pytest
import requests
import websocket
from flask import Flask
from geventwebsocket.exceptions import WebSocketError as GeventWebSocketError
from werkzeug.exceptions import NotFound
from werkzeug.routing import Map, Rule

from syncws.compat import WebSocketError, gevent_websocket
from syncws.protocol import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT

from ..conftest import connect, wait_until
from ..support import RawClient, recv_close


def close_code(frames: list) -> int | None:
    for opcode, payload in frames:
        if opcode == OP_CLOSE:
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
    return None


def legacy_echo_app(log: list):
    """A gevent-websocket app: echo until closed; plain HTTP gets a page."""

    def app(environ, start_response):
        ws = environ.get("wsgi.websocket")
        if ws is None:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"home"]
        log.append(("version", environ["wsgi.websocket_version"]))
        while not ws.closed:
            message = ws.receive()
            if message is None:
                break
            log.append(type(message).__name__)
            if message == "bye":
                ws.close()
                break
            if message == "return":
                break  # returning ends the connection (1000)
            ws.send(message)
        log.append("done")
        return []

    return app


@pytest.fixture
def echo(start_server):
    log: list = []
    server = start_server(legacy_echo_app(log), gevent_websocket=True)
    return server, log


def test_echo_text_and_binary_keep_their_types(echo):
    server, log = echo
    client = connect(server, "/anything")
    client.send("héllo")
    assert client.recv() == "héllo"
    client.send_binary(b"\x00\xffbin")
    opcode, data = client.recv_data()
    assert (opcode, data) == (websocket.ABNF.OPCODE_BINARY, b"\x00\xffbin")
    client.close()
    assert wait_until(lambda: "done" in log)
    assert log == [("version", "13"), "str", "bytes", "done"]


def test_plain_http_still_reaches_the_app(echo):
    server, _ = echo
    response = requests.get(server.url + "/", timeout=5)
    assert (response.status_code, response.text) == (200, "home")


def test_client_close_ends_the_receive_loop_with_1000(echo):
    server, log = echo
    client = connect(server)
    client.send("one")
    assert client.recv() == "one"
    client.send_close(1000)
    assert recv_close(client)[0] == 1000
    assert wait_until(lambda: "done" in log)
    assert len(server.peers) == 0 or wait_until(lambda: not server.peers)


def test_app_close_and_app_return_close_with_1000(echo):
    server, log = echo
    for word in ("bye", "return"):
        client = connect(server)
        client.send(word)
        assert recv_close(client)[0] == 1000
        client.close()
    assert wait_until(lambda: log.count("done") == 2)


def test_oversized_message_is_closed_with_1009(start_server):
    log: list = []
    server = start_server(legacy_echo_app(log), gevent_websocket=True, max_message_size=100)
    with RawClient(server) as client:
        client.send_frame(OP_TEXT, b"x" * 100)
        assert client.read_frame() == (OP_TEXT, b"x" * 100)
        client.send_frame(OP_BINARY, b"y" * 101)
        assert close_code(client.read_all_frames()) == 1009
    assert wait_until(lambda: "done" in log)


def test_keepalive_pings_a_silent_client(start_server):
    server = start_server(legacy_echo_app([]), gevent_websocket=True, ping_interval=0.2, ping_timeout=5)
    with RawClient(server) as client:
        assert client.read_frame() == (OP_PING, b"")


def test_server_stop_closes_with_1001_and_the_app_returns(start_server):
    log: list = []
    server = start_server(legacy_echo_app(log), gevent_websocket=True)
    client = connect(server)
    client.send("x")
    assert client.recv() == "x"
    stopper = threading.Thread(target=server.stop, kwargs={"timeout": 3})
    stopper.start()
    assert recv_close(client)[0] == 1001
    client.send_close(1001)
    stopper.join(10)
    assert not stopper.is_alive()
    assert "done" in log


def test_send_after_close_raises_gevent_websockets_error(start_server):
    outcome: list = []

    def app(environ, start_response):
        ws = environ["wsgi.websocket"]
        ws.close()
        assert ws.closed and ws.receive() is None
        try:
            ws.send("late")
        except GeventWebSocketError as exc:  # what gevent-websocket apps catch
            outcome.append(type(exc))
        return []

    server = start_server(app, gevent_websocket=True)
    client = connect(server)
    assert recv_close(client)[0] == 1000
    assert wait_until(lambda: outcome == [WebSocketError])


def test_the_peer_behind_the_socket_gets_publishes(start_server):
    def app(environ, start_response):
        ws = environ["wsgi.websocket"]
        ws.peer.subscribe("news")
        ws.send("subscribed")
        while ws.receive() is not None:
            pass
        return []

    server = start_server(app, gevent_websocket=True)
    client = connect(server)
    assert client.recv() == "subscribed"
    server.publish("news", {"n": 1})
    assert client.recv() == '{"n":1}'


# -- Flask-Sockets style -------------------------------------------------------------


class Sockets:
    """Flask-Sockets' essentials, as in flask_sockets.py: routes called with the socket."""

    def __init__(self, app: Flask) -> None:
        self.url_map = Map()
        self.app = app
        app.wsgi_app = self._middleware(app.wsgi_app)  # type: ignore[method-assign]  # Flask's middleware pattern

    def route(self, rule: str):
        def decorator(view):
            # websocket=True: Werkzeug >= 1.0 matches upgrade requests only to
            # such rules (the maintained Flask-Sockets forks pass it too).
            self.url_map.add(Rule(rule, endpoint=view, websocket=True))
            return view

        return decorator

    def _middleware(self, wsgi_app):
        def middleware(environ, start_response):
            adapter = self.url_map.bind_to_environ(environ)
            try:
                handler, values = adapter.match()
                ws = environ["wsgi.websocket"]
                with self.app.app_context(), self.app.request_context(environ):
                    handler(ws, **values)
                    return []
            except (NotFound, KeyError):
                return wsgi_app(environ, start_response)

        return middleware


def test_a_flask_sockets_style_app(start_server):
    app = Flask(__name__)
    sockets = Sockets(app)

    @sockets.route("/echo/<name>")
    def echo_socket(ws, name):
        from flask import request

        while not ws.closed:
            message = ws.receive()
            if message is None:
                break
            ws.send(f"{name}:{request.path}:{message}")

    @app.route("/")
    def index():
        return "flask home"

    server = start_server(app, gevent_websocket=True)
    client = connect(server, "/echo/bob")
    client.send("hi")
    assert client.recv() == "bob:/echo/bob:hi"
    client.close()
    assert requests.get(server.url + "/", timeout=5).text == "flask home"


def test_the_wrapper_takes_handler_overrides_and_passes_other_requests(start_server):
    log: list = []
    wrapped = gevent_websocket(legacy_echo_app(log), max_message_size=10)
    server = start_server(wrapped)
    with RawClient(server) as client:
        client.send_frame(OP_TEXT, b"z" * 11)
        assert close_code(client.read_all_frames()) == 1009
    assert requests.get(server.url + "/", timeout=5).text == "home"
    with pytest.raises(TypeError):
        gevent_websocket(legacy_echo_app(log), bogus=1)
