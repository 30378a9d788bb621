"""allowed_origins: checked before the upgrade hook; a refused Origin gets 403, never a 101."""

from __future__ import annotations

import gc
import logging

import pytest
import websocket

from syncws import App, define_websocket_handler, mount

from ..conftest import wait_until, ws_url
from ..support import app_with, http_exchange, parse_response, upgrade_request

GOOD = "https://good.example"
EVIL = "https://evil.example"


def origin_app(upgrades: list, **handler_options) -> App:
    def on_upgrade(request):
        upgrades.append(request.headers.get("Origin"))

    def on_message(peer, message):
        peer.send(message.text())

    app = App()
    app.get("/_ws", define_websocket_handler(upgrade=on_upgrade, message=on_message, **handler_options))
    return app


def handshake(server, origin: str | None, path: str = "/_ws") -> tuple[int, dict, bytes]:
    extra = f"Origin: {origin}\r\n" if origin is not None else ""
    return parse_response(http_exchange(server, upgrade_request(path, extra=extra)))


def assert_refused(server, origin: str | None, path: str = "/_ws") -> None:
    status, headers, body = handshake(server, origin, path)
    assert status == 403, (status, body)
    assert "sec-websocket-accept" not in headers
    assert len(body) < 200 and b"Origin" in body


def assert_upgraded(server, origin: str | None, path: str = "/_ws") -> None:
    status, headers, _ = handshake(server, origin, path)
    assert status == 101
    assert "sec-websocket-accept" in headers


def test_a_list_of_origins(start_server):
    upgrades: list = []
    server = start_server(origin_app(upgrades), allowed_origins=[GOOD, "http://localhost:8080"])
    assert_upgraded(server, GOOD)
    assert_upgraded(server, "HTTPS://Good.Example")  # scheme and host are case-insensitive
    assert_upgraded(server, "http://localhost:8080")
    for origin in (EVIL, "http://good.example", "https://good.example:8443", "https://good.example.evil", "null", ""):
        assert_refused(server, origin)
    # The upgrade hook saw only the accepted ones: the check runs before it.
    assert upgrades == [GOOD, "HTTPS://Good.Example", "http://localhost:8080"]


def test_a_refused_origin_with_a_real_client(start_server):
    upgrades: list = []
    server = start_server(origin_app(upgrades), allowed_origins=[GOOD])
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(ws_url(server), origin=EVIL, timeout=5)
    assert info.value.status_code == 403
    client = websocket.create_connection(ws_url(server), origin=GOOD, timeout=5)
    try:
        client.send("hello")
        assert client.recv() == "hello"
    finally:
        client.close()
    assert upgrades == [GOOD]


def test_requests_without_an_origin_header_are_allowed(start_server):
    """Browsers always send Origin on a WebSocket handshake; other clients may not, and could forge it."""
    upgrades: list = []
    server = start_server(origin_app(upgrades), allowed_origins=[GOOD])
    assert_upgraded(server, None)
    assert upgrades == [None]


def test_a_callable(start_server):
    upgrades: list = []
    seen: list = []

    def check(origin):
        seen.append(origin)
        return origin.endswith(".trusted.example")

    server = start_server(origin_app(upgrades), allowed_origins=check)
    assert_upgraded(server, "https://app.trusted.example")
    assert_refused(server, EVIL)
    assert_upgraded(server, None)  # not called without an Origin
    assert seen == ["https://app.trusted.example", EVIL]
    assert upgrades == ["https://app.trusted.example", None]


def test_a_callable_that_raises_refuses(start_server, caplog):
    upgrades: list = []

    def check(origin):
        raise RuntimeError("origin database down")

    server = start_server(origin_app(upgrades), allowed_origins=check)
    with caplog.at_level(logging.ERROR, logger="syncws"):
        assert_refused(server, GOOD)
    assert upgrades == []
    assert "origin database down" in caplog.text


def test_star_and_none_allow_every_origin(start_server):
    for policy in ("*", ["*"], None):
        upgrades: list = []
        server = start_server(origin_app(upgrades), allowed_origins=policy)
        assert_upgraded(server, EVIL)
        assert_upgraded(server, "null")


def test_per_handler_allowed_origins_override_the_server(start_server):
    upgrades: list = []
    app = origin_app(upgrades)  # /_ws: the server's policy
    app.get("/strict", define_websocket_handler(allowed_origins=["https://other.example"]))
    app.get("/open", define_websocket_handler(allowed_origins=None))
    app.get("/picky", define_websocket_handler(allowed_origins=lambda origin: origin == EVIL))
    server = start_server(app, allowed_origins=[GOOD])
    assert_upgraded(server, GOOD)
    assert_refused(server, EVIL)
    assert_refused(server, GOOD, "/strict")
    assert_upgraded(server, "https://other.example", "/strict")
    assert_upgraded(server, EVIL, "/open")
    assert_upgraded(server, EVIL, "/picky")
    assert_refused(server, GOOD, "/picky")


def test_handler_origins_apply_without_a_server_policy(start_server):
    app = App()
    app.get("/_ws", define_websocket_handler(allowed_origins=[GOOD]))
    server = start_server(app)
    assert_upgraded(server, GOOD)
    assert_refused(server, EVIL)


def test_the_origin_check_does_not_touch_plain_http(start_server):
    app = origin_app([])
    app.get("/", lambda request: "home")
    server = start_server(app, allowed_origins=[GOOD])
    data = http_exchange(
        server, b"GET / HTTP/1.1\r\nHost: x\r\nOrigin: " + EVIL.encode() + b"\r\nConnection: close\r\n\r\n"
    )
    assert parse_response(data)[0] == 200


@pytest.mark.parametrize("bad", [42, [GOOD, 7], [""], object()])
def test_bad_allowed_origins_are_refused(bad):
    with pytest.raises(ValueError):
        define_websocket_handler(allowed_origins=bad)


# -- where the session runs ----------------------------------------------------------


def _live_http_handlers() -> int:
    from syncws.server.http import ConnectionHandler

    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, ConnectionHandler))


def _echo_handler():
    return define_websocket_handler(message=lambda peer, message: peer.send(message.text()))


@pytest.mark.parametrize(
    ("how", "threads", "handed_over"),
    [
        ("app", "off", True),
        ("mount", "off", True),
        ("plain wsgi", "off", False),
        ("app", "on", True),
        ("plain wsgi", "on", True),
    ],
)
def test_app_and_mount_hand_the_session_over_a_plain_wsgi_caller_keeps_it(start_server, how, threads, handed_over):
    # syncws's App and mount() let the HTTP handler's greenlet end at the
    # upgrade (cheaper idle connections); a caller of our own may have set up
    # something around the call (Flask's request context), so it keeps the session,
    # unless it runs in the thread pool: then the session always moves to the hub
    # (the hooks keep the caller's context variables).
    handler = _echo_handler()
    if how == "app":
        app = App()
        app.get("/_ws", handler)
    elif how == "mount":
        app = mount(lambda environ, start_response: [], {"/_ws": handler})
    else:

        def app(environ, start_response):
            return handler(environ, start_response)

    server = start_server(app, threads=threads)
    before = _live_http_handlers()
    clients = [websocket.create_connection(ws_url(server), timeout=5) for _ in range(5)]
    for i, client in enumerate(clients):
        client.send(f"hi {i}")
        assert client.recv() == f"hi {i}"
    assert len(server.sessions) == 5
    assert _live_http_handlers() - before == (0 if handed_over else 5)
    for client in clients:
        client.close()


def test_a_session_that_fails_after_the_hand_over_is_logged_and_its_socket_closed(start_server, monkeypatch, caplog):
    from syncws.server.session import Session

    def broken_run(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(Session, "run", broken_run)
    server = start_server(app_with(message=lambda peer, message: None))
    client = websocket.create_connection(ws_url(server), timeout=5)
    with caplog.at_level(logging.ERROR, logger="syncws"):
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            client.recv()  # the server closed the connection
    assert wait_until(lambda: "error in a WebSocket session" in caplog.text)
    client.close()


def test_a_server_wide_option_given_to_a_handler_says_where_to_set_it():
    with pytest.raises(TypeError) as info:
        define_websocket_handler(max_buffer_size=1024)
    message = str(info.value)
    assert message.startswith("max_buffer_size is a server-wide option, not a per-handler one: set it on serve(")
    assert "--max-buffer-size" in message and "SYNCWS_MAX_BUFFER_SIZE" in message


def test_a_misspelled_hook_suggests_the_closest_name():
    with pytest.raises(TypeError, match=r"unknown hook or option name\(s\): mesage \(did you mean 'message'\?\)"):
        define_websocket_handler(mesage=print)
