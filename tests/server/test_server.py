"""``serve(..., background=True)`` and the Server object it returns."""

from __future__ import annotations

import socket
import threading

import pytest
import requests

import syncws
from syncws import App, Server, define_websocket_handler, serve

from ..conftest import connect, wait_until
from ..support import assert_nothing_received, recv_close


def make_app(closes=None, opened=None):
    app = App()
    app.get("/", lambda request: "home")

    def on_open(peer):
        if opened is not None:
            opened.append(peer)
        peer.subscribe("news")
        peer.send("ready")

    def on_close(peer, details):
        if closes is not None:
            closes.append((peer.namespace, details.code, details.reason))

    handler = define_websocket_handler(
        open=on_open,
        message=lambda peer, msg: peer.send(msg),
        close=on_close,
    )
    app.get("/_ws", handler)
    app.get("/rooms/<room>", handler)
    return app


def open_client(server, path="/_ws"):
    client = connect(server, path)
    assert client.recv() == "ready"
    return client


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_background_serve_returns_a_running_server(start_server):
    server = start_server(make_app())
    assert isinstance(server, Server)
    assert server.port != 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    for name in ("publish", "close_all", "stop"):
        assert callable(getattr(server, name))
    assert server.peers == frozenset()
    r = requests.get(server.url + "/", timeout=5)
    assert (r.status_code, r.text) == (200, "home")


def test_peers_is_a_snapshot_of_every_connected_peer(start_server):
    opened = []
    closes = []
    server = start_server(make_app(closes, opened))
    a = open_client(server, "/_ws")
    b = open_client(server, "/rooms/x")
    try:
        assert wait_until(lambda: len(server.peers) == 2)
        snapshot = server.peers
        assert {p.id for p in snapshot} == {p.id for p in opened}
        assert {p.namespace for p in snapshot} == {"/_ws", "/rooms/x"}
        assert all(p.server is server for p in snapshot)
        a.close()
        assert wait_until(lambda: len(server.peers) == 1)
        assert len(snapshot) == 2  # a snapshot does not change afterwards
        assert [p.namespace for p in server.peers] == ["/rooms/x"]
    finally:
        a.close()
        b.close()
    assert wait_until(lambda: server.peers == frozenset())


def test_publish_from_a_plain_thread(start_server):
    server = start_server(make_app())
    a = open_client(server, "/_ws")
    b = open_client(server, "/rooms/x")
    try:
        t = threading.Thread(target=server.publish, args=("news", {"n": 1}))
        t.start()
        t.join(5)
        assert a.recv() == '{"n":1}'
        assert b.recv() == '{"n":1}'
        server.publish("news", "only /_ws", namespace="/_ws")
        assert a.recv() == "only /_ws"
        assert_nothing_received(b)
    finally:
        a.close()
        b.close()


def test_close_all_closes_every_peer_with_the_code(start_server):
    closes = []
    server = start_server(make_app(closes))
    clients = [open_client(server, path) for path in ("/_ws", "/_ws", "/rooms/a")]
    try:
        assert wait_until(lambda: len(server.peers) == 3)
        server.close_all(4000, "bye")
        for client in clients:
            assert recv_close(client) == (4000, "bye")
        assert wait_until(lambda: len(closes) == 3)
        assert sorted(closes) == sorted([("/_ws", 4000, "bye"), ("/_ws", 4000, "bye"), ("/rooms/a", 4000, "bye")])
        assert wait_until(lambda: server.peers == frozenset())
    finally:
        for client in clients:
            client.close()
    # The server itself keeps running and accepting.
    again = open_client(server)
    again.send("after close_all")
    assert again.recv() == "after close_all"
    again.close()


def test_stop_closes_peers_with_1001_and_stops_accepting(start_server):
    closes = []
    server = start_server(make_app(closes))
    port = server.port
    a = open_client(server, "/_ws")
    b = open_client(server, "/rooms/z")
    assert wait_until(lambda: len(server.peers) == 2)

    stopper = threading.Thread(target=server.stop, kwargs={"timeout": 3})
    stopper.start()
    try:
        assert recv_close(a)[0] == 1001
        assert recv_close(b)[0] == 1001
    finally:
        stopper.join(10)
        a.close()
        b.close()
    assert not stopper.is_alive()
    assert sorted(code for _, code, _ in closes) == [1001, 1001]
    assert wait_until(lambda: refused(port), timeout=3)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/", timeout=2)
    server.stop()  # a second stop is harmless


def test_stop_without_peers_releases_the_port(start_server):
    server = start_server(make_app())
    port = server.port
    assert requests.get(server.url + "/", timeout=5).text == "home"
    server.stop(timeout=2)
    assert refused(port)
    # The port can be bound again at once.
    again = start_server(make_app())
    assert again.port != 0
    assert requests.get(again.url + "/", timeout=5).text == "home"


def test_publish_and_close_all_after_stop_raise(start_server):
    server = start_server(make_app())
    server.stop(timeout=2)
    with pytest.raises(RuntimeError):
        server.publish("news", "too late")
    with pytest.raises(RuntimeError):
        server.close_all(1000, "")


def test_two_servers_are_independent(start_server):
    closes_a, closes_b = [], []
    a = start_server(make_app(closes_a))
    b = start_server(make_app(closes_b))
    assert a.port != b.port
    ca = open_client(a)
    cb = open_client(b)
    try:
        assert wait_until(lambda: len(a.peers) == 1 and len(b.peers) == 1)
        assert a.peers.isdisjoint(b.peers)

        a.publish("news", "from a")
        assert ca.recv() == "from a"
        b.publish("news", "from b")
        assert cb.recv() == "from b"
        for client in (ca, cb):  # neither got the other's publish
            assert_nothing_received(client)

        a.close_all(4001, "only a")
        assert recv_close(ca) == (4001, "only a")
        cb.send("b is unaffected")
        assert cb.recv() == "b is unaffected"

        a.stop(timeout=2)
        assert refused(a.port)
        cb.send("b still runs")
        assert cb.recv() == "b still runs"
        b.publish("news", "b publishes")
        assert cb.recv() == "b publishes"
        assert requests.get(b.url + "/", timeout=5).text == "home"
    finally:
        ca.close()
        cb.close()
    assert [code for _, code, _ in closes_a] == [4001]
    assert all(code != 4001 for _, code, _ in closes_b)


def test_module_publish_targets_the_most_recently_started_server(start_server):
    first = start_server(make_app())
    c1 = open_client(first)
    second = start_server(make_app())
    c2 = open_client(second)
    try:
        assert syncws.current_server() is second
        syncws.publish("news", "to the latest")
        assert c2.recv() == "to the latest"
        assert_nothing_received(c1)

        third = start_server(make_app())
        c3 = open_client(third)
        try:
            syncws.publish("news", [1, 2])
            assert c3.recv() == "[1,2]"
            assert_nothing_received(c2)
        finally:
            c3.close()
    finally:
        c1.close()
        c2.close()


def test_module_publish_without_a_running_server_raises(start_server):
    server = start_server(make_app())
    server.stop(timeout=2)
    with pytest.raises(RuntimeError):
        syncws.publish("news", "nobody is serving")


def test_module_publish_from_a_plain_thread(start_server):
    server = start_server(make_app())
    client = open_client(server)
    errors = []

    def worker():
        try:
            syncws.publish("news", {"from": "thread"})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    try:
        t = threading.Thread(target=worker)
        t.start()
        t.join(5)
        assert errors == []
        assert client.recv() == '{"from":"thread"}'
    finally:
        client.close()


def test_server_is_reachable_from_a_hook(start_server):
    seen = []
    app = App()
    app.get("/_ws", define_websocket_handler(open=lambda peer: (seen.append(peer.server), peer.send("x"))))
    server = start_server(app)
    client = connect(server)
    try:
        assert client.recv() == "x"
    finally:
        client.close()
    assert seen == [server]


def test_serve_rejects_bad_options_and_apps():
    with pytest.raises(TypeError):
        serve("not an app", port=0, background=True)
    with pytest.raises(ValueError):
        serve(make_app(), port=0, background=True, max_message_size=0)
    with pytest.raises(ValueError):
        serve(make_app(), port=0, background=True, overflow="explode")


def test_port_in_use_raises_at_start(start_server):
    server = start_server(make_app())
    with pytest.raises(OSError):
        serve(make_app(), host="127.0.0.1", port=server.port, background=True, access_log=False)
    # The running server is not disturbed.
    assert requests.get(server.url + "/", timeout=5).text == "home"


# -- what a new user sees (issue 21) ----------------------------------------------------------


def test_a_background_server_logs_where_it_listens(caplog):
    import logging

    from syncws import App, serve

    with caplog.at_level(logging.INFO, logger="syncws"):
        server = serve(App(), port=0, background=True, access_log=False)
    try:
        assert f"syncws: serving on {server.url} (in a background thread" in caplog.text
    finally:
        server.stop(timeout=1)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ("serve", "serve() got an unknown option 'max_mesage_size' (did you mean 'max_message_size'?)"),
        ("Server", "Server() got an unknown option 'max_mesage_size' (did you mean 'max_message_size'?)"),
    ],
)
def test_an_unknown_keyword_names_the_call_and_the_closest_option(call, expected):
    import syncws

    with pytest.raises(TypeError) as info:
        getattr(syncws, call)(syncws.App(), port=0, max_mesage_size=10)
    assert str(info.value).startswith(expected)


def test_a_command_line_option_given_to_serve_says_where_it_belongs():
    import syncws

    with pytest.raises(TypeError, match=r"workers is for the command line only: --workers"):
        syncws.serve(syncws.App(), port=0, workers=2)
