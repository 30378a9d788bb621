"""Running with the wrong server: a WebSocket route or an event stream reached through a
server that cannot upgrade (wsgiref, werkzeug's development server as ``flask run`` uses)
answers a clear 500 naming ``python -m syncws module:app``, logs it once, and neither
hangs nor logs a traceback.  Real servers in threads, raw sockets."""

from __future__ import annotations

import logging
import socket
import threading
import wsgiref.simple_server
from typing import Any

import pytest
from flask import Flask, request
from werkzeug.serving import make_server

import syncws.server.handler
import syncws.server.streams
from syncws import App, create_event_stream, define_websocket_handler

from ..support import upgrade_request

COMMAND = "python -m syncws module:app"


class QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch, caplog):
    """Each test starts as a new process would: nothing warned yet."""
    monkeypatch.setattr(syncws.server.handler, "_warned_no_transport", False)
    monkeypatch.setattr(syncws.server.streams, "_warned_no_transport", False)
    caplog.set_level(logging.INFO)


def start(kind: str, app):
    """Serve ``app`` with wsgiref or werkzeug's development server in a thread; (port, stop)."""
    server: Any
    if kind == "wsgiref":
        server = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=QuietHandler)
    else:
        server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return server.server_port, stop


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send a request and read the whole answer; the server must close the connection in time."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks: list[bytes] = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                pytest.fail(f"no complete answer within {timeout} s (a hang): {b''.join(chunks)!r}")
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def get(port: int, path: str) -> bytes:
    return exchange(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def no_transport_records(caplog, what: str) -> list:
    return [r for r in caplog.records if r.name == "syncws" and what in r.getMessage()]


def assert_no_traceback(caplog, capfd) -> None:
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


def syncws_app() -> App:
    app = App()
    app.get("/", lambda req: "plain page")
    app.get("/_ws", define_websocket_handler(message=lambda peer, message: peer.send(message)))
    app.get("/sse", lambda req: create_event_stream(req))
    return app


@pytest.mark.parametrize("kind", ["wsgiref", "werkzeug"])
def test_syncws_app_websocket_route_answers_a_clear_500_logged_once(kind, caplog, capfd):
    port, stop = start(kind, syncws_app())
    try:
        for _ in range(3):
            answer = exchange(port, upgrade_request("/_ws", extra="Connection: close\r\n"))
            assert status_of(answer) == 500, answer
            head, _, body = answer.partition(b"\r\n\r\n")
            assert b"101" not in head.split(b"\r\n")[0]
            text = body.decode()
            assert "WebSocket upgrade needs the syncws server" in text and COMMAND in text
        assert get(port, "/").endswith(b"plain page")  # the server goes on serving
    finally:
        stop()
    records = no_transport_records(caplog, "WebSocket upgrade needs the syncws server")
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].levelno == logging.ERROR and COMMAND in records[0].getMessage()
    assert_no_traceback(caplog, capfd)


@pytest.mark.parametrize("kind", ["wsgiref", "werkzeug"])
def test_syncws_app_event_stream_answers_a_clear_500_logged_once(kind, caplog, capfd):
    port, stop = start(kind, syncws_app())
    try:
        for _ in range(3):
            answer = get(port, "/sse")
            assert status_of(answer) == 500, answer
            assert COMMAND in answer.decode() and b"text/event-stream" not in answer
    finally:
        stop()
    records = no_transport_records(caplog, "event streams need the syncws server")
    assert len(records) == 1 and COMMAND in records[0].getMessage()
    assert_no_traceback(caplog, capfd)


def test_create_event_stream_error_is_still_a_runtime_error():
    with pytest.raises(RuntimeError, match=COMMAND):
        create_event_stream({"PATH_INFO": "/sse"})


def flask_app() -> Flask:
    app = Flask(__name__)
    chat = define_websocket_handler(message=lambda peer, message: peer.send(message))

    @app.get("/")
    def index():
        return "flask page"

    @app.get("/_ws")
    def ws():
        return chat

    @app.get("/sse")
    def sse():
        return create_event_stream(request)

    return app


def test_flask_event_stream_under_the_development_server(caplog, capfd):
    port, stop = start("werkzeug", flask_app())
    try:
        for _ in range(3):
            answer = get(port, "/sse")
            assert status_of(answer) == 500, answer
            assert COMMAND in answer.decode()
        assert get(port, "/").endswith(b"flask page")
    finally:
        stop()
    assert len(no_transport_records(caplog, "event streams need the syncws server")) == 1
    assert not [r for r in caplog.records if "Exception on" in r.getMessage()]  # Flask logged no traceback
    assert_no_traceback(caplog, capfd)


def test_flask_websocket_route_under_the_development_server(caplog, capfd):
    port, stop = start("werkzeug", flask_app())
    try:
        answers = [exchange(port, upgrade_request("/_ws", extra="Connection: close\r\n")) for _ in range(3)]
    finally:
        stop()
    for answer in answers:
        assert status_of(answer) == 500, answer
        assert COMMAND in answer.decode()
    assert len(no_transport_records(caplog, "WebSocket upgrade needs the syncws server")) == 1
    assert_no_traceback(caplog, capfd)


def test_the_flask_routing_fix_leaves_apps_with_websocket_rules_alone():
    """Only upgrades werkzeug would refuse anyway change: a Flask-Sockets-style app keeps its routing."""
    app = Flask("with_ws_rules")
    app.add_url_rule("/ws", "ws", lambda: "websocket rule", websocket=True)
    app.add_url_rule("/page", "page", lambda: "page")
    define_websocket_handler()  # what a syncws user's module does: patches Flask once
    port, stop = start("werkzeug", app)
    try:
        page = exchange(port, upgrade_request("/page", extra="Connection: close\r\n"))
        plain = exchange(port, b"GET /page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        stop()
    assert status_of(page) == 400  # werkzeug's WebsocketMismatch, as without syncws
    assert status_of(plain) == 200


def test_an_upgrade_to_an_ordinary_flask_view_gets_the_view_under_the_development_server():
    app = Flask("plain_views")
    app.add_url_rule("/page", "page", lambda: "just a page")
    define_websocket_handler()
    port, stop = start("werkzeug", app)
    try:
        answer = exchange(port, upgrade_request("/page", extra="Connection: close\r\n"))
    finally:
        stop()
    assert status_of(answer) == 200 and b"just a page" in answer  # answered like any request, never 101
